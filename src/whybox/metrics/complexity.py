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
from whybox.metrics.base import Context, Metric, check_map_shape, present_features, reads_sequence
from whybox.registry import METRICS

__all__ = ["Complexity", "Sparseness", "entropy", "gini"]


def _abs64(v: torch.Tensor | np.ndarray) -> np.ndarray:
    """``|v|`` as a new float64 NumPy array on the CPU."""
    if isinstance(v, torch.Tensor):
        t = v.detach().cpu()
        v = (t if t.dtype in (torch.float32, torch.float64) else t.to(torch.float64)).numpy()
    return np.abs(v, dtype=np.float64)  # casts on the way: one pass, one new array


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


def gini(v: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Gini index of ``|v|`` per row: ``sum_k (2k - d - 1) v_(k) / (d sum v)`` (ascending sort, k = 1..d).

    In [0, 1 - 1/d]; NaN for an all-zero row (no epsilon is added). Computed in NumPy (float64): its sort is
    several times faster than torch's on the CPU.
    """
    return torch.from_numpy(_gini(_abs64(v)))


def _gini(a: np.ndarray) -> np.ndarray:
    """:func:`gini` of ``a`` = ``|v|`` ``(B, d)`` float64, sorted in place (the caller's array is consumed)."""
    a.sort(axis=1)
    d = a.shape[1]
    total = a.sum(1)
    ok = total > 0
    if np.count_nonzero(ok) == ok.size:
        return (a @ _gini_weights(d)) / (d * total)
    return np.where(ok, (a @ _gini_weights(d)) / (max(d, 1) * np.where(ok, total, 1.0)), math.nan)


def entropy(v: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``H = -sum p ln p`` with ``p = |v| / sum |v|`` per row (``0 ln 0 = 0``); NaN for an all-zero row."""
    return torch.from_numpy(_entropy(_abs64(v)))


def _entropy(a: np.ndarray) -> np.ndarray:
    """:func:`entropy` of ``a`` = ``|v|`` ``(B, d)`` float64.

    A map without zeros is computed as ``H = ln T - sum(a ln a) / T`` (``T = sum a``; the same as ``-sum p ln p``,
    ``p = a / T``): no division of the whole map. Any other goes by its shares, ``0 ln 0 = 0``.
    """
    if a.size and a.min() > 0:  # no zero, no NaN (the common case): one log of the map, no mask
        total = a.sum(1)
        return np.log(total) - np.einsum("ij,ij->i", a, np.log(a)) / total
    t = a.sum(1)
    p = a / np.where(t > 0, t, 1.0)[:, None]
    lp = np.log(p, out=np.zeros_like(p), where=p > 0)  # 0 ln 0 = 0
    return np.where(t > 0, -np.einsum("ij,ij->i", p, lp), math.nan)


class _Flat(Metric):
    """Shared body: the statistic of ``|a|`` per row, over its elements or, given ``regions``, over its features.

    Parameters
    ----------
    regions
        ``None``: every element of the map. A :class:`~whybox.masking.FeatureGroups` or an integer label map
        ``(B, *G)``: one value per feature, the ``pool`` of its elements' ``|a|``, over the features a row has
        (a text's words: ``whybox.evaluate`` on texts passes them, so a text's score does not change with the pads
        and word-vector dimensions of its batch; on a text adapter's inputs the never-changing group of CLS, SEP
        and the pads is left out).
    pool
        ``"sum"`` or ``"mean"`` of a feature's elements (the mean for a map that copies one value per feature).
    """

    needs_model = False

    def __init__(self, *, regions: Any = None, pool: str = "sum", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from whybox.metrics.eraser import _check_pool, check_regions

        self.regions = check_regions(regions, "every element")
        self.pool = _check_pool(pool)

    def _rows(self, ctx: Context) -> list[np.ndarray] | np.ndarray:
        """``|a|`` per row: flattened, ``(B, D)`` float64 NumPy; with ``regions``, each row's feature values."""
        a = ctx.attributions
        if a is None:
            raise InvalidParameterError(f"{self.name} needs attributions.")
        check_map_shape(a, ctx.x, signal=ctx.signal)
        if self.regions is None:
            return _abs64(a).reshape(a.shape[0], -1)
        from whybox.metrics.eraser import pool_attributions, resolve_regions

        groups = resolve_regions(self.regions, ctx.x, signal=ctx.signal, sequence=reads_sequence(ctx))
        values = pool_attributions(a, groups, ctx.x, pool=self.pool, abs=True, signal=ctx.signal).cpu().numpy()
        present = present_features(ctx, groups).cpu().numpy()  # a text's words, not its specials and pads
        return [values[r][present[r]] for r in range(values.shape[0])]

    def _per_row(self, ctx: Context, stat: Any) -> torch.Tensor:
        rows = self._rows(ctx)
        if isinstance(rows, np.ndarray):
            return torch.from_numpy(stat(rows))
        return torch.from_numpy(np.concatenate([stat(v[None, :]) for v in rows]))


@METRICS.register("sparseness")
class Sparseness(_Flat):
    """Sparseness as the Gini index of the flattened ``|a|`` (Chalasani et al. 2020). Higher = sparser (better),
    range [0, 1 - 1/d]. An all-zero map is NaN (Quantus adds 1e-7 to every entry and reports 0). The inputs are
    not modified.
    """

    higher_is_better = True

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        return self._per_row(ctx, _gini), {}, {}


@METRICS.register("complexity")
class Complexity(_Flat):
    """Complexity as the entropy of the attribution shares ``p_i = |a_i| / sum |a|`` (Bhatt et al. 2020), natural
    log. Lower is better, range [0, ln d]; NaN for an all-zero map.
    """

    higher_is_better = False

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        return self._per_row(ctx, _entropy), {}, {}
