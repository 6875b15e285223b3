"""Grad-CAM++ (Chattopadhay et al. 2018)."""

from __future__ import annotations

from typing import Any

import torch

from whybox.errors import check_bool
from whybox.explainers.cam.base import CAM
from whybox.registry import EXPLAINERS

__all__ = ["GradCAMPlusPlus"]


@EXPLAINERS.register("gradcam_pp")
class GradCAMPlusPlus(CAM):
    """w_k = sum_ij alpha_ij^k ReLU(g_ij^k), alpha = g^2 / (2 g^2 + (sum_ab A_ab^k) g^3) (exp-score shortcut).

    alpha is 0 where its denominator is 0 (and so where g = 0); no epsilon is added (pytorch-grad-cam
    adds 1e-6). ``alpha_normalize=True`` divides alpha by its per-channel spatial sum, as the authors'
    official code does.
    """

    divides_by_activation_sum = True

    def __init__(self, model: Any, *, alpha_normalize: bool = False, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.alpha_normalize = check_bool("alpha_normalize", alpha_normalize)

    def raw_map(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        # alpha = g^2 / (g^2 (2 + S g)) = 1 / (2 + S g) where g != 0, so alpha * ReLU(g) = ReLU(g) / (2 + S g):
        # the same weights with a third of the temporaries
        d = g * a.sum((2, 3), keepdim=True)
        d.add_(2)
        if self.alpha_normalize:
            zero = d == 0  # denominator 2 g^2 + S g^3 vanishes: alpha is 0 there
            alpha = (1.0 / d).masked_fill_(zero | (g == 0), 0.0)
            tot = alpha.sum((2, 3), keepdim=True)
            alpha = alpha / torch.where(tot != 0, tot, torch.ones_like(tot))
            w = (alpha * g.clamp_min(0)).sum((2, 3))
        else:
            w = torch.relu(g).div_(d).sum((2, 3))
            if not bool(torch.isfinite(w).all()):
                # a vanishing denominator (d == 0) gave inf or nan: alpha is 0 there. Checked on the (B, K)
                # weights so the common case pays no full-size mask
                w = torch.relu(g).div_(d).masked_fill_(d == 0, 0.0).sum((2, 3))
        return torch.einsum("bk,bkhw->bhw", w, a)
