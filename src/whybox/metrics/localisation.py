"""Localisation against ground-truth masks: pointing game, energy pointing game, relevance mass and rank.

References
----------
Zhang, Bargal, Lin, Brandt, Shen & Sclaroff, "Top-down Neural Attention by Excitation Backprop", IJCV 2018 (ECCV 2016).
Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks", CVPR-W 2020.
Arras, Osman & Samek, "CLEVR-XAI: A benchmark dataset for the ground truth evaluation of neural network
explanations", Information Fusion 2022.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from whybox.errors import InvalidInputError, InvalidParameterError
from whybox.metrics.base import Context, Metric, _ranking_values, _tie_first, _tie_top, check_float, feature_array
from whybox.registry import METRICS

__all__ = ["EnergyPointingGame", "PointingGame", "RelevanceMass", "RelevanceRank"]

PAPER_TOLERANCE = 15.0  # pixels, Zhang et al. 2016 on 224-pixel images
SIGNAL_SHARE = PAPER_TOLERANCE / 224  # a signal's default tolerance per time step of its length


class _Localisation(Metric):
    higher_is_better = True
    needs_model = False
    reads_masks = True

    def _maps(self, ctx: Context) -> tuple[np.ndarray, np.ndarray]:
        """Channel-summed maps ``(B, N)`` float64 and masks ``(B, N)`` bool, both NumPy (on the CPU): a few
        small array operations each, where the same in torch would cost a dispatch apiece."""
        if ctx.attributions is None:
            raise InvalidParameterError(f"{self.name} needs attributions.")
        if ctx.masks is None:
            raise InvalidParameterError(
                f"{self.name} needs ground-truth masks: pass masks= (B, H, W) bool, the pixels of the target class "
                "(for 1-D signals (B, C, L): (B, L), its time steps; for sequences (B, T, D): (B, T))."
            )
        m = (ctx.masks if ctx.masks.is_cpu else ctx.masks.cpu()).numpy()
        if ctx.sequence:  # a sequence (B, T, D): one value per time step, its D features summed
            a, t = ctx.attributions, ctx.x.shape[1]
            if a.ndim == 2 and a.shape[1] == t:  # one value per step, what Explanation.to_map() gives
                a = a.unsqueeze(2)
            if a.ndim != 3 or a.shape[1] != t or a.shape[2] not in (1, ctx.x.shape[2]):
                raise InvalidInputError(
                    f"{self.name} on sequences {tuple(ctx.x.shape)} needs a map over their {t} time steps, (B, {t}), "
                    f"(B, {t}, 1) or (B, {t}, {ctx.x.shape[2]}); got {tuple(a.shape)}."
                )
            values = a.detach().to("cpu", torch.float64).sum(2).numpy()
            return values, m.reshape(m.shape[0], -1)
        return feature_array(ctx.attributions, ctx.x, signal=ctx.signal), m.reshape(m.shape[0], -1)


@METRICS.register("pointing_game")
class PointingGame(_Localisation):
    """Pointing game (Zhang et al. 2016): a hit when the map's maximum lies within ``tolerance`` pixels of the
    ground-truth mask of the target class.

    The point is the argmax of the channel-summed map (ties by the seeded stable rule); its Euclidean distance to
    the nearest mask pixel must be strictly below ``tolerance`` (a point on the mask, distance 0, is always a hit,
    also at ``tolerance=0``); by default 15 pixels (the paper's, on 224-pixel images), and on a 1-D signal the same
    share of its length, ``15 L / 224`` steps (15 steps covered most of a short signal); ``meta["tolerance"]``.
    Points are (u, v) = (column, row). Scores: 1.0 hit, 0.0 miss, NaN for an empty mask
    or a flat map (one value everywhere, e.g. an all-zero Grad-CAM: no maximum to point with; ``meta["flat_map"]``;
    Quantus hits when any tied maximum lies in the mask, so its flat map always hits).
    ``meta["class_accuracy"]`` maps each target class to hits / (hits + misses) and ``meta["class_mean"]`` is
    their mean (the paper's summary). Higher is better.
    """

    def __init__(self, *, tolerance: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tolerance = None if tolerance is None else check_float("tolerance", tolerance, 0.0)

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        values, m = self._maps(ctx)
        line = ctx.signal or ctx.sequence  # one row of time steps
        h, w = (1, ctx.x.shape[1] if ctx.sequence else ctx.x.shape[-1]) if line else ctx.x.shape[-2:]
        tolerance = self.tolerance
        if tolerance is None:  # the paper's 15 px (of 224); on a signal or sequence the same share of its length
            tolerance = SIGNAL_SHARE * w if line else PAPER_TOLERANCE
        b, n = m.shape
        p = _tie_first(values, self.seed)
        # The Euclidean distance from the point to its nearest mask pixel (what a distance transform of ~mask
        # holds at the point), every row at once: sqrt of the least squared pixel distance over the mask.
        if tolerance > 0:
            rows, cols = np.divmod(np.arange(h * w), w)
            d2 = np.empty(m.shape[0], dtype=np.int64)
            step = max(1, (1 << 22) // (h * w))  # rows per block: at most 4M squared distances held at once
            for i in range(0, m.shape[0], step):
                pr, pc = (p[i : i + step] // w)[:, None], (p[i : i + step] % w)[:, None]
                dd = (rows[None, :] - pr) ** 2 + (cols[None, :] - pc) ** 2
                d2[i : i + step] = np.where(m[i : i + step], dd, np.iinfo(np.int64).max).min(1)
            dist = np.sqrt(d2.astype(np.float64))
            hit = (dist == 0.0) | (dist < tolerance)
        else:  # tolerance 0: a hit only on the mask itself
            hit = m.ravel()[p + np.arange(0, b * n, n)]  # each row's point in the flat masks
        hits = hit.astype(np.float64)
        filled = m.any(1)
        if np.count_nonzero(filled) < b:
            hits[~filled] = math.nan  # an empty mask
        flat = _flat_rows(values)
        if flat.any():
            hits[flat] = math.nan  # a flat map points nowhere
        uv = np.empty((b, 2), dtype=np.int64)
        np.divmod(p, w, out=(uv[:, 1], uv[:, 0]))  # (row, column) = (v, u)
        meta: dict[str, Any] = {"point": torch.from_numpy(uv), "tolerance": tolerance, **_flat_meta(flat)}  # (u, v)
        if ctx.target is not None:
            acc: dict[int, float] = {}
            t = ctx.target.index.cpu().numpy()
            ok = hits == hits  # not NaN
            for c in np.unique(t[ok]).tolist():  # the classes with a defined score, ascending
                acc[int(c)] = float(hits[ok & (t == c)].mean())
            meta["class_accuracy"] = acc
            meta["class_mean"] = float(np.mean(list(acc.values()))) if acc else math.nan
        return torch.from_numpy(hits), {}, meta


@METRICS.register("energy_pointing_game")
class EnergyPointingGame(_Localisation):
    """Energy-based pointing game (Wang et al. 2020): ``E = sum_{in mask} L+ / sum_{all} L+``, ``L+ = max(L, 0)``
    of the channel-summed map, masks = the union of the target class's boxes. No min-max shift (it would change
    E). NaN for an all-zero positive map or an empty mask. Higher is better, range [0, 1].
    """

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        values, m = self._maps(ctx)
        pos = np.maximum(values, 0.0, out=values)  # _maps' array is the metric's own
        total = pos.sum(1)
        inside = (pos * m).sum(1)
        filled = m.any(1)
        if total.min() > 0 and np.count_nonzero(filled) == filled.size:  # the common case: nothing undefined
            return torch.from_numpy(inside / total), {}, {}
        bad = (total <= 0) | ~filled  # NaN totals (a NaN map) stay NaN below
        return torch.from_numpy(np.where(bad, math.nan, inside / np.where(bad, 1.0, total))), {}, {}


@METRICS.register("relevance_mass")
class RelevanceMass(EnergyPointingGame):
    """Relevance mass accuracy (Arras et al. 2022): the share of the positive relevance of the channel-summed map
    that falls inside the ground-truth mask (the same quantity as the energy pointing game, on pixel masks).
    Quantus sums signed values instead (scores can leave [0, 1]). NaN for zero positive relevance or an empty
    mask. Higher is better.
    """


@METRICS.register("relevance_rank")
class RelevanceRank(_Localisation):
    """Relevance rank accuracy (Arras et al. 2022): with K = |GT| pixels in the mask, the share of the K
    highest-ranked pixels (ties by the seeded stable rule) inside it. NaN for an empty mask or a flat map (no
    ranking; ``meta["flat_map"]``). Higher is better.
    """

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        values, m = self._maps(ctx)
        k = m.sum(1)
        flat = _flat_rows(values)
        top = _tie_top(_ranking_values(values), self.seed, k)  # the K highest-ranked pixels, K = |GT|
        inside = (top & m).sum(1)
        if k.min() > 0 and not flat.any():
            return torch.from_numpy(inside / k), {}, {}
        scores = np.where((k > 0) & ~flat, inside / np.maximum(k, 1), math.nan)
        return torch.from_numpy(scores), {}, _flat_meta(flat)


def _flat_rows(values: np.ndarray) -> np.ndarray:
    """``(B,)`` bool: the rows of ``values`` ``(B, N)`` whose map is one value everywhere (an all-zero Grad-CAM):
    no point and no ranking to score."""
    return values.max(1) == values.min(1)


def _flat_meta(flat: np.ndarray) -> dict[str, Any]:
    if not flat.any():
        return {}
    return {"flat_map": flat.tolist(), "note": "rows with a flat map (one value everywhere) score NaN"}
