"""ERASER's comprehensiveness and sufficiency (DeYoung et al. 2020), over any feature groups.

For each bin ``k`` of ``fractions`` the top ``ceil(k M)`` features by attribution are removed (comprehensiveness:
set to the fill, the rest kept) or kept alone (sufficiency: everything else set to the fill); the score is the
mean over the bins of the drop of the target score, ``f(x) - f(x_k)`` (ERASER's AOPC: its reference code averages
the per-bin drops, with no ``k = 0`` term). ``M`` counts only the features that the fill changes: special tokens,
pads and any other feature already equal to its fill are *null* features, never counted and never selected.

Features are pixels (channels pooled) for images ``(B, C, H, W)``, columns for tables ``(B, F)``, token
positions for 3-D inputs ``(B, T, D)`` (the text adapters' packed ``(B, T, D + 1)``), elements otherwise, or any
label map given as ``regions=`` (e.g. ``TextBatch.word_features()``, superpixels).

References
----------
DeYoung, Jain, Rajani, Lehman, Xiong, Socher & Wallace, "ERASER: A Benchmark to Evaluate Rationalized NLP
Models", ACL 2020 (reference code: ``jayded/eraserbenchmark``, ``rationale_benchmark/metrics.py``).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch

from whybox.errors import InvalidInputError, InvalidParameterError, did_you_mean
from whybox.masking.engine import repeat_last
from whybox.masking.features import FeatureGroups, broadcast_ids, groups_touched, segments, step_ids
from whybox.masking.fills import FillLike
from whybox.metrics.base import Context, Metric, reads_sequence, row_widths, tie_order
from whybox.metrics.faithfulness import _check_fill, resolve_fill
from whybox.models.inputs import label_map_option, note_option_columns, python_numbers
from whybox.models.targets import apply_score_space
from whybox.registry import METRICS

__all__ = [
    "ERASER_FRACTIONS",
    "Comprehensiveness",
    "Sufficiency",
    "bin_counts",
    "default_features",
    "null_features",
    "pool_attributions",
    "resolve_regions",
]

#: ERASER's AOPC bins: 1, 5, 10, 20 and 50 % of the features.
ERASER_FRACTIONS = (0.01, 0.05, 0.1, 0.2, 0.5)
POOLS = ("sum", "mean")


# ---------------------------------------------------------------------------------------------- pure functions
def default_features(x: torch.Tensor, *, signal: bool = False) -> FeatureGroups:
    """The default features of ``x``: pixels of images ``(B, C, H, W)`` (channels together), columns of tables
    ``(B, F)``, time steps of 1-D signals ``(B, C, L)`` (``signal``: channels together), positions of sequences
    ``(B, T, D)`` (a token with its ``D`` channels, as the text adapters pack them), one per element otherwise."""
    b = x.shape[0]
    if signal and x.ndim == 3:
        return segments(x, length=1)
    if x.ndim == 4:
        h, w = x.shape[-2:]
        g = torch.arange(h * w, device=x.device).view(1, 1, h, w).expand(b, 1, h, w).contiguous()
        return FeatureGroups(g, h * w, "pixels")
    if x.ndim == 2:
        f = x.shape[1]
        return FeatureGroups(torch.arange(f, device=x.device).expand(b, f).contiguous(), f, "columns")
    if x.ndim == 3:
        t = x.shape[1]
        return FeatureGroups(
            torch.arange(t, device=x.device).view(1, t, 1).expand(b, t, 1).contiguous(), t, "positions"
        )
    n = math.prod(x.shape[1:])
    g = torch.arange(n, device=x.device).view(1, *x.shape[1:]).expand(b, *x.shape[1:]).contiguous()
    return FeatureGroups(g, n, "elements")


def resolve_regions(regions: Any, x: torch.Tensor, *, signal: bool = False, sequence: bool = False) -> FeatureGroups:
    """``regions`` (``None``, a :class:`~whybox.masking.FeatureGroups` or an integer label map) as feature groups
    of ``x`` ``(B, *S)``: ids ``(B, *G)`` with ``G`` broadcasting to one input row.

    A label map may be ``(B, *G)``, ``(1, *G)`` or ``(*G)`` (``(H, W)`` for images); e.g. ``(B, T, 1)`` word ids
    for packed text, ``(B, 1, H, W)`` or ``(B, H, W)`` superpixels, ``(F,)`` column groups; for sequences
    ``(B, T, D)`` of a model that reads time steps (``sequence``) also ids per step ``(B, T)``, ``(1, T)`` or ``(T,)``,
    shared by the step's D features.
    """
    if regions is None:
        return default_features(x, signal=signal)
    kind = "regions"
    if isinstance(regions, FeatureGroups):
        kind, regions = regions.kind, regions.groups
    if not isinstance(regions, torch.Tensor):
        raise InvalidParameterError(
            "regions must be None (the default features), a FeatureGroups or an integer label map (B, *G); "
            f"got {type(regions).__name__}."
        )
    if regions.is_floating_point() or regions.is_complex() or regions.dtype == torch.bool:
        raise InvalidParameterError(f"regions must hold integer feature ids; got dtype {regions.dtype}.")
    ids = regions
    if sequence and x.ndim == 3 and (per_step := step_ids(ids, x)) is not None:
        ids = per_step  # one id per time step, shared by its D features
    if x.ndim == 4 and ids.ndim == 3 and ids.shape[0] in (1, x.shape[0]) and ids.shape[1:] == x.shape[-2:]:
        ids = ids.unsqueeze(1)  # (B, H, W) segmentation shared by the channels
    g = broadcast_ids(ids, x)
    if g is None:
        raise InvalidParameterError(
            f"regions of shape {tuple(regions.shape)} do not fit inputs {tuple(x.shape)}; pass (B, *G) or (*G) "
            "integer feature ids with G broadcasting to one input row (e.g. (B, T, 1) word ids for text, "
            "(B, H, W) or (H, W) for images)."
        )
    if g.numel() and int(g.min()) < 0:
        raise InvalidParameterError(f"regions must hold feature ids >= 0; got {int(g.min())}.")
    return FeatureGroups(g, int(g.max()) + 1 if g.numel() else 0, kind)


def pool_attributions(
    attributions: torch.Tensor,
    groups: FeatureGroups,
    x: torch.Tensor,
    *,
    pool: str = "sum",
    abs: bool = False,
    signal: bool = False,
) -> torch.Tensor:
    """Per-feature attribution ``(B, M)`` float64: the ``pool`` (sum or mean) of a feature's attribution elements.

    ``attributions`` are shaped like ``x`` or broadcast to one input row (``(B, 1, H, W)`` image maps, ``(B, T, 1)``
    token maps); ``(B, H, W)`` maps of images, ``(B, L)`` maps of 1-D signals (``signal``: one value per time step,
    shared by the channels, what ``Explanation.to_map()`` gives) and ``(B, T)`` maps of sequences are accepted as
    such. With images
    and pixel features the sum pools the channels (``|.|`` first when ``abs``), as METRICS.md asks. A feature
    with no attribution element gets NaN.
    """
    a = attributions.detach()
    b = x.shape[0]
    if (x.ndim == 4 and a.ndim == 3) or (signal and x.ndim == 3 and a.ndim == 2):
        a = a.unsqueeze(1)
    elif x.ndim == 3 and a.ndim == 2:
        a = a.unsqueeze(-1)
    fits = a.ndim == x.ndim and a.shape[0] == b
    fits = fits and all(s in (1, xs) for s, xs in zip(a.shape[1:], x.shape[1:], strict=True))
    if not fits:
        raise InvalidInputError(
            f"attributions of shape {tuple(attributions.shape)} do not fit inputs {tuple(x.shape)}; expected the "
            "input's shape or one broadcasting to it (e.g. (B, 1, H, W) or (B, H, W) for images, (B, T) or "
            "(B, T, 1) for token maps)."
        )
    if abs:
        a = a.abs()
    g = groups.groups.to(a.device)
    shape = (b, *torch.broadcast_shapes(tuple(a.shape[1:]), tuple(g.shape[1:])))
    flat_a = a.expand(shape).reshape(b, -1).to(torch.float64)
    flat_g = g.expand(shape).reshape(b, -1)
    m = groups.n_groups
    sums = torch.zeros(b, m, dtype=torch.float64, device=a.device).scatter_add_(1, flat_g, flat_a)
    counts = torch.zeros(b, m, dtype=torch.float64, device=a.device).scatter_add_(1, flat_g, torch.ones_like(flat_a))
    vals = sums if pool == "sum" else sums / counts.clamp_min(1)
    return torch.where(counts > 0, vals, torch.full_like(vals, math.nan))


def null_features(x: torch.Tensor, fill: torch.Tensor, groups: FeatureGroups) -> torch.Tensor:
    """``(B, M)`` bool: the features that the fill never changes (every element of ``x`` equals the fill there:
    special tokens and pads under ``TextBatch.fill``, a column already at the fill value) or that cover no
    element of the row. Such features are left out of ``M`` and never selected."""
    return ~groups_touched(groups, x != fill)


def bin_counts(n_features: torch.Tensor, fractions: tuple[float, ...]) -> torch.Tensor:
    """``(B, K)`` int64: ``ceil(k * M_i)`` features per bin ``k`` for rows with ``M_i`` (non-null) features.

    ``k * M`` is rounded to 9 decimals first, so ``0.07 * 100`` gives 7 and not 8.
    """
    m = [int(v) for v in n_features.reshape(-1).tolist()]
    return torch.tensor([[math.ceil(round(k * mi, 9)) for k in fractions] for mi in m], dtype=torch.int64).reshape(
        len(m), len(fractions)
    )


def _check_fractions(fractions: Any) -> tuple[float, ...]:
    msg = f"fractions must be a non-empty increasing sequence of numbers in (0, 1]; got {fractions!r}."
    fractions = python_numbers(fractions)  # a NumPy array or a tensor of shares, NumPy scalars in a list
    if isinstance(fractions, (str, bytes)) or not hasattr(fractions, "__iter__"):
        raise InvalidParameterError(msg)
    vals = list(fractions)
    ok = bool(vals) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v <= 1 for v in vals
    )
    if not ok or any(b <= a for a, b in itertools.pairwise(vals)):
        raise InvalidParameterError(msg)
    return tuple(float(v) for v in vals)


def check_regions(regions: Any, default: str) -> FeatureGroups | torch.Tensor | None:
    """A metric's ``regions`` option: ``None`` (``default``), a :class:`FeatureGroups` or an integer label map
    ``(B, *G)``, also written as nested lists (a config, ``--metric-option``)."""
    regions = label_map_option(regions, "regions")
    if regions is not None and not isinstance(regions, (FeatureGroups, torch.Tensor)):
        raise InvalidParameterError(
            f"regions must be None ({default}), a FeatureGroups or an integer label map (B, *G); "
            f"got {type(regions).__name__}."
        )
    return regions


def _check_pool(pool: Any) -> str:
    if pool not in POOLS:
        raise InvalidParameterError(f"pool must be one of {POOLS}; got {pool!r}.{did_you_mean(pool, POOLS)}")
    return str(pool)


# ---------------------------------------------------------------------------------------------- the metrics
class _Eraser(Metric):
    """Shared body: rank the non-null features, score the ``K`` bins through the masking engine."""

    _keep_top: bool = False  # sufficiency keeps the top features; comprehensiveness removes them

    def __init__(
        self,
        *,
        fractions: tuple[float, ...] = ERASER_FRACTIONS,
        fill: FillLike = "zero",
        regions: Any = None,
        pool: str = "sum",
        abs: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.fractions = _check_fractions(fractions)
        note_option_columns(self, "fill", fill)
        self.fill = _check_fill(fill)
        self.regions = check_regions(regions, "the default features")
        self.pool = _check_pool(pool)
        if not isinstance(abs, bool):
            raise InvalidParameterError(f"abs must be True or False; got {abs!r}.")
        self.abs = abs

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        if ctx.attributions is None or ctx.engine is None or ctx.target is None or ctx.clean is None:
            raise InvalidParameterError(f"metric {self.name!r} needs attributions and a model.")
        x = ctx.x
        b = x.shape[0]
        # (B, *G): one row per input (a shared map is expanded)
        groups = resolve_regions(self.regions, x, signal=ctx.signal, sequence=reads_sequence(ctx))
        fill = resolve_fill(self.fill, x, seed=self.seed, packing=getattr(ctx.adapter, "packing", None))
        values = pool_attributions(ctx.attributions, groups, x, pool=self.pool, abs=self.abs, signal=ctx.signal)
        null = null_features(x, fill, groups) | torch.isnan(values)
        ranked = torch.where(null, torch.full_like(values, -math.inf), values)
        # null features last; ties broken within a row's own features (not the batch's padding), as the curves do
        widths = row_widths(groups.sizes(), x, ctx.adapter, groups)
        order = tie_order(ranked, self.seed, widths=widths).to(x.device)
        ranks = torch.empty_like(order).scatter_(
            1, order, torch.arange(order.shape[1], device=x.device).expand_as(order)
        )
        n_feat = (~null).sum(1).cpu()
        counts = bin_counts(n_feat, self.fractions)  # (B, K)
        k = len(self.fractions)
        counts_dev = counts.to(x.device)
        keep_top = self._keep_top

        def masks(rows: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
            top = ranks[rows] < counts_dev[rows, ks].unsqueeze(1)  # (n, M) the selected features
            return groups.expand(top if keep_top else ~top, rows)

        # a bin selecting as many features as the bin before it (short rows: ceil(0.01 M) = ceil(0.05 M) = 1)
        # repeats that input, and its score; rows whose every feature is null are not scored (NaN)
        new_bin = torch.cat([torch.ones(b, 1, dtype=torch.bool), counts[:, 1:] != counts[:, :-1]], 1)
        if not ctx.engine.deterministic():  # a model that draws anew (dropout) is scored on every bin
            new_bin[:] = True
        live = new_bin & (n_feat > 0).unsqueeze(1)
        if bool(live.any()):
            y = ctx.engine.scores(
                x, masks, n_masks=k, fill=fill, target=ctx.target, score=self.score, live=live.to(x.device)
            ).cpu()
            y = repeat_last(y, live)  # rows with no feature stay NaN (their first bin was not live)
        else:
            y = torch.full((b, k), math.nan, dtype=torch.float64)
        clean = ctx.target.select(apply_score_space(ctx.clean, self.score)).to("cpu", torch.float64)
        drop = clean.unsqueeze(1) - y
        scores = drop.mean(1)
        xs = counts.to(torch.float64) / n_feat.clamp_min(1).to(torch.float64).unsqueeze(1)
        xs = torch.where(n_feat.unsqueeze(1) > 0, xs, torch.full_like(xs, math.nan))
        real = torch.where(null, torch.full_like(values, math.nan), values).cpu()
        flat = [
            bool(n > 1) and bool(torch.unique(r[~torch.isnan(r)]).numel() == 1)
            for r, n in zip(real, n_feat, strict=True)
        ]
        meta: dict[str, Any] = {
            "fractions": list(self.fractions),
            "features": groups.kind,
            "n_features": n_feat.tolist(),
            "n_null": null.sum(1).cpu().tolist(),
            "n_selected": counts,
            "clean_score": clean,
            "flat_map": flat,
        }
        if any(flat):
            meta["note"] = "rows with a flat map are ordered by the seeded tie rule alone"
        return scores, {"x": xs, "y": y, "drop": drop}, meta


@METRICS.register("comprehensiveness")
class Comprehensiveness(_Eraser):
    """ERASER comprehensiveness (DeYoung et al. 2020): the mean target-score drop when the top features are removed.

    ``mean_k [f(x) - f(x with its top ceil(k M) features set to the fill)]``. Higher is better: the features the
    explanation ranks first are the ones the model needs.

    Parameters
    ----------
    fractions
        The bins: shares of the (non-null) features selected, ``ceil(k * M)`` each; ERASER's
        ``(0.01, 0.05, 0.1, 0.2, 0.5)`` by default. A non-empty increasing sequence in (0, 1].
    fill
        What a removed feature becomes: ``"zero"`` (default), ``"mean"``, ``"blur"``, ``"min"``, ``"uniform"``,
        a number, a tensor shaped like the inputs or a callable. For text pass ``batch.fill("mask")`` (the
        [MASK] embedding; specials, pads and the mask channel kept, so they are null features).
    regions
        The features: ``None`` (pixels, columns, token positions of ``(B, T, D)`` inputs, elements), a
        :class:`~whybox.masking.FeatureGroups` or an integer label map ``(B, *G)`` broadcasting to one input row
        (``batch.word_features()`` for words, ``(B, H, W)`` superpixels).
    pool
        How a feature's attribution elements make its value: ``"sum"`` (default; channels and subwords summed,
        completeness kept) or ``"mean"`` (for maps that copy a feature's value onto each of its elements, as
        perturbation methods over the same features do, when features differ in size).
    abs
        Rank by ``|a|``.

    Notes
    -----
    Features whose elements all equal the fill (and features covering no element) are null: they are not counted
    in ``M`` and never selected. Ties are broken by the seeded stable rule (:func:`~whybox.metrics.base.tie_order`);
    a flat map is ordered by it alone (``meta["flat_map"]``). A row with no non-null feature scores NaN. Model
    calls: ``B`` clean rows plus one per distinct bin of each row (``meta["n_forward"]``): a bin selecting as many
    features as the bin before it (``ceil(0.01 M) = ceil(0.05 M) = 1`` for a short sentence) is the same input and
    repeats its score.

    Curves ``(B, K)``: ``"x"`` the share of non-null features selected (``ceil(k M) / M``), ``"y"`` the target
    score of the perturbed input, ``"drop"`` ``f(x) - y``. ``meta``: ``n_features`` (M per row), ``n_null``,
    ``n_selected`` ``(B, K)``, ``clean_score`` ``(B,)``, ``features`` (the kind), ``fractions``.

    ERASER removes a rationale's tokens from the sequence; here removed features take the fill, so that one
    masking engine serves text, images and tables alike. ERASER's paper writes the AOPC with ``1 / (|B| + 1)``;
    its reference code (``_instances_aopc``) averages the ``|B|`` per-bin drops, which is what is computed here.

    Shapes
    ------
    inputs ``(B, *S)``; attributions shaped like the inputs or broadcasting to them (``(B, T)`` and ``(B, H, W)``
    accepted); scores ``(B,)``; curves ``(B, K)``, ``K = len(fractions)``.

    References
    ----------
    DeYoung et al., "ERASER: A Benchmark to Evaluate Rationalized NLP Models", ACL 2020, section 4.2.
    """

    higher_is_better = True
    _keep_top = False


@METRICS.register("sufficiency")
class Sufficiency(_Eraser):
    """ERASER sufficiency (DeYoung et al. 2020): the mean target-score drop when only the top features are kept.

    ``mean_k [f(x) - f(x with all but its top ceil(k M) features set to the fill)]``. Lower is better: the
    features the explanation ranks first suffice for the prediction (it can be negative). Options, curves and
    ``meta`` as :class:`Comprehensiveness`.
    """

    higher_is_better = False
    _keep_top = True
