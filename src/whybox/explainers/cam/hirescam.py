"""HiResCAM (Draelos & Carin 2020)."""

from __future__ import annotations

import torch

from whybox.explainers.cam.base import CAM
from whybox.registry import EXPLAINERS

__all__ = ["HiResCAM"]


@EXPLAINERS.register("hirescam")
class HiResCAM(CAM):
    """L = ReLU(sum_k g^k * A^k): gradients multiplied elementwise, not averaged."""

    def raw_map(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return (g * a).sum(1)
