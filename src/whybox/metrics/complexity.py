"""Complexity of an attribution: sparseness (Gini index) and entropy.

References
----------
Chalasani, Chen, Chowdhury, Wu & Jha, "Concise Explanations of Neural Networks using Adversarial Training",
ICML 2020. Bhatt, Weller & Moura, "Evaluating and Aggregating Feature-based Model Explanations", IJCAI 2020.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from whybox.errors import InvalidParameterError
from whybox.metrics.base import Context, Metric
from whybox.registry import METRICS

__all__ = ["Complexity", "Sparseness", "entropy", "gini"]


def _abs64(v: torch.Tensor) -> np.ndarray:
    return np.abs(v.detach().to("cpu", torch.float64).numpy())


_GINI_WEIGHTS: dict[int, np.ndarray] = {}


def _gini_weights(d: int) -> np.ndarray:
    """``2k - d - 1`` for k = 1..d, made once per length (read-only)."""
    w = _GINI_WEIGHTS.get(d)
    if w is None:
        w = 2.0 * np.arange(1, d + 1) - d - 1
        w.flags.writeable = False
        if len(_GINI_WEIGHTS) < 64:
            _GINI_WEIGHTS[d] = w
    return w


def gini(v: torch.Tensor) -> torch.Tensor:
    """Gini index of ``|v|`` per row: ``sum_k (2k - d - 1) v_(k) / (d sum v)`` (ascending sort, k = 1..d).

    In [0, 1 - 1/d]; NaN for an all-zero row (no epsilon is added). Computed in NumPy (float64): its sort is
    several times faster than torch's on the CPU.
    """
    s = np.sort(_abs64(v), axis=1)
    d = s.shape[1]
    total = s.sum(1)
    g = s @ _gini_weights(d) / (d * np.where(total > 0, total, 1.0))
    return torch.from_numpy(np.where(total > 0, g, math.nan))


def entropy(v: torch.Tensor) -> torch.Tensor:
    """``H = -sum p ln p`` with ``p = |v| / sum |v|`` per row (``0 ln 0 = 0``); NaN for an all-zero row."""
    a = _abs64(v)
    total = a.sum(1, keepdims=True)
    p = a / np.where(total > 0, total, 1.0)
    h = -(p * np.log(np.where(p > 0, p, 1.0))).sum(1)  # 0 ln 1 = 0 where p = 0
    return torch.from_numpy(np.where(total[:, 0] > 0, h, math.nan))


class _Flat(Metric):
    needs_model = False

    def _flat(self, ctx: Context) -> torch.Tensor:
        if ctx.attributions is None:
            raise InvalidParameterError(f"{self.name} needs attributions.")
        return ctx.attributions.reshape(ctx.attributions.shape[0], -1)


@METRICS.register("sparseness")
class Sparseness(_Flat):
    """Sparseness as the Gini index of the flattened ``|a|`` (Chalasani et al. 2020). Higher = sparser (better),
    range [0, 1 - 1/d]. An all-zero map is NaN (Quantus adds 1e-7 to every entry and reports 0). The inputs are
    not modified.
    """

    higher_is_better = True

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        return gini(self._flat(ctx)), {}, {}


@METRICS.register("complexity")
class Complexity(_Flat):
    """Complexity as the entropy of the attribution shares ``p_i = |a_i| / sum |a|`` (Bhatt et al. 2020), natural
    log. Lower is better, range [0, ln d]; NaN for an all-zero map.
    """

    higher_is_better = False

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        return entropy(self._flat(ctx)), {}, {}
