"""Grad-CAM (Selvaraju et al. 2017)."""

from __future__ import annotations

import torch

from whybox.explainers.cam.base import CAM
from whybox.registry import EXPLAINERS

__all__ = ["GradCAM"]


@EXPLAINERS.register("gradcam")
class GradCAM(CAM):
    """L = ReLU(sum_k w_k A^k) with w_k the spatial mean of d f_c / d A^k."""

    def raw_map(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        w = g.mean((2, 3), keepdim=True)
        return (w * a).sum(1)
