"""Input x Gradient (Shrikumar et al. 2016)."""

from __future__ import annotations

from typing import Any

import torch

from whybox.explainers.base import GradientExplainer
from whybox.masking.engine import MaskingEngine
from whybox.models.targets import Target, TargetLike
from whybox.registry import EXPLAINERS

__all__ = ["InputXGradient"]


@EXPLAINERS.register("input_x_gradient")
class InputXGradient(GradientExplainer):
    """``x * d f_c / d x``, signed; equals zero-baseline Integrated Gradients on linear models.

    Shapes
    ------
    inputs ``(B, *S)`` -> attributions ``(B, *S)``.
    """

    def _explain(
        self, x: torch.Tensor, target: TargetLike, engine: MaskingEngine, n_backward: list[int]
    ) -> tuple[torch.Tensor, Target, dict[str, Any]]:
        rows = torch.arange(x.shape[0], device=x.device)
        g, _, tgt = self._grads(x, rows, target, engine, n_backward)
        return x * g, tgt, {}
