"""Saliency (Simonyan, Vedaldi & Zisserman 2014): the gradient of the target score w.r.t. the input."""

from __future__ import annotations

from typing import Any

import torch

from whybox.errors import check_bool
from whybox.explainers.base import GradientExplainer
from whybox.masking.engine import MaskingEngine
from whybox.models.targets import Target, TargetLike
from whybox.registry import EXPLAINERS

__all__ = ["Saliency"]


@EXPLAINERS.register("saliency")
class Saliency(GradientExplainer):
    """``|d f_c / d x|`` (``abs=True``, as captum's ``Saliency``) or the signed gradient.

    Shapes
    ------
    inputs ``(B, *S)`` -> attributions ``(B, *S)``; one forward and one backward per row.

    References
    ----------
    Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks", ICLR workshop 2014.
    """

    def __init__(self, model: Any, *, abs: bool = True, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.abs = check_bool("abs", abs)

    def _explain(
        self, x: torch.Tensor, target: TargetLike, engine: MaskingEngine, n_backward: list[int]
    ) -> tuple[torch.Tensor, Target, dict[str, Any]]:
        rows = torch.arange(x.shape[0], device=x.device)
        g, _, tgt = self._grads(x, rows, target, engine, n_backward)
        return (g.abs() if self.abs else g), tgt, {}
