"""Layer-CAM (Jiang et al. 2021)."""

from __future__ import annotations

from typing import Any

import torch

from whybox.errors import InvalidParameterError
from whybox.explainers.cam.base import CAM
from whybox.registry import EXPLAINERS

__all__ = ["LayerCAM"]


@EXPLAINERS.register("layercam")
class LayerCAM(CAM):
    """L = ReLU(sum_k ReLU(g^k) * A^k): per-position weights.

    ``gamma`` (e.g. 2.0, the paper's value for fusing shallow layers) rescales the map by
    tanh(gamma * L / max L); ``None`` (default, as pytorch-grad-cam) skips it.
    """

    def __init__(self, model: Any, *, gamma: float | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if gamma is not None and (isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0):
            raise InvalidParameterError(f"gamma must be a number > 0 or None; got {gamma!r}.")
        self.gamma = gamma

    def raw_map(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        m = (g.clamp_min(0) * a).sum(1)
        if self.gamma is not None:
            peak = m.flatten(1).amax(1).view(-1, 1, 1)
            m = torch.where(peak > 0, torch.tanh(self.gamma * m / torch.where(peak > 0, peak, 1.0)), m)
        return m
