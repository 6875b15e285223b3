"""Complexity of an attribution: sparseness (Gini index) and entropy.

References
----------
Chalasani, Chen, Chowdhury, Wu & Jha, "Concise Explanations of Neural Networks using Adversarial Training",
ICML 2020. Bhatt, Weller & Moura, "Evaluating and Aggregating Feature-based Model Explanations", IJCAI 2020.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from whybox.errors import InvalidParameterError
from whybox.metrics.base import Context, Metric
from whybox.registry import METRICS

__all__ = ["Complexity", "Sparseness", "entropy", "gini"]


def gini(v: torch.Tensor) -> torch.Tensor:
    """Gini index of ``|v|`` per row: ``sum_k (2k - d - 1) v_(k) / (d sum v)`` (ascending sort, k = 1..d).

    In [0, 1 - 1/d]; NaN for an all-zero row (no epsilon is added).
    """
    s = v.detach().to("cpu", torch.float64).abs().sort(1).values
    d = s.shape[1]
    k = torch.arange(1, d + 1, dtype=torch.float64)
    total = s.sum(1)
    g = ((2 * k - d - 1) * s).sum(1) / (d * torch.where(total > 0, total, torch.ones_like(total)))
    return torch.where(total > 0, g, torch.full_like(g, math.nan))


def entropy(v: torch.Tensor) -> torch.Tensor:
    """``H = -sum p ln p`` with ``p = |v| / sum |v|`` per row (``0 ln 0 = 0``); NaN for an all-zero row."""
    a = v.detach().to("cpu", torch.float64).abs()
    total = a.sum(1, keepdim=True)
    p = a / torch.where(total > 0, total, torch.ones_like(total))
    h = -torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p)).sum(1)
    return torch.where(total.squeeze(1) > 0, h, torch.full_like(h, math.nan))


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
