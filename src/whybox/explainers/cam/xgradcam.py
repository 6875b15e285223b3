"""XGrad-CAM (Fu et al. 2020)."""

from __future__ import annotations

import torch

from whybox.explainers.cam.base import CAM
from whybox.registry import EXPLAINERS

__all__ = ["XGradCAM"]


@EXPLAINERS.register("xgradcam")
class XGradCAM(CAM):
    """w_k = sum_ij (A_ij^k / sum_ab A_ab^k) g_ij^k; channels whose activations sum to 0 get weight 0."""

    divides_by_activation_sum = True

    def raw_map(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        tot = a.sum((2, 3), keepdim=True)
        safe = torch.where(tot != 0, tot, torch.ones_like(tot))
        w = torch.where(tot != 0, (a * g).sum((2, 3), keepdim=True) / safe, torch.zeros_like(tot))
        return (w * a).sum(1)
