"""Grad-CAM++ (Chattopadhay et al. 2018)."""

from __future__ import annotations

from typing import Any

import torch

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

    def __init__(self, model: Any, *, alpha_normalize: bool = False, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.alpha_normalize = bool(alpha_normalize)

    def raw_map(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        g2 = g * g
        g3 = g2 * g
        denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g3
        safe = torch.where(denom != 0, denom, torch.ones_like(denom))
        alpha = torch.where(denom != 0, g2 / safe, torch.zeros_like(g2))
        if self.alpha_normalize:
            tot = alpha.sum((2, 3), keepdim=True)
            alpha = alpha / torch.where(tot != 0, tot, torch.ones_like(tot))
        w = (alpha * g.clamp_min(0)).sum((2, 3), keepdim=True)
        return (w * a).sum(1)
