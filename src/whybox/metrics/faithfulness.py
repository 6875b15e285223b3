"""Faithfulness by perturbation: deletion, insertion, highest confidence, AOPC and MuFidelity.

Every curve is scored by the masking engine: the masks of a row are rendered on demand from the row's feature
ranks, so memory is bounded by ``batch_size`` whatever ``steps`` is.

References
----------
Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box Models", BMVC 2018.
Samek et al., "Evaluating the visualization of what a deep neural network has learned", IEEE TNNLS 2017.
Chen et al., "Less is More: Fewer Interpretable Region via Submodular Subset Selection", ICLR 2024.
Bhatt, Weller & Moura, "Evaluating and Aggregating Feature-based Model Explanations", IJCAI 2020.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from whybox.errors import InvalidInputError, InvalidParameterError, check_bool
from whybox.masking.engine import repeat_last
from whybox.masking.features import FeatureGroups, broadcast_ids, cells, groups_touched, step_ids
from whybox.masking.fills import FillLike, make_fill
from whybox.metrics.base import (
    Context,
    Metric,
    boundaries,
    check_choice,
    check_float,
    check_int,
    derive_generator,
    feature_scores,
    feature_values,
    pearson,
    reads_sequence,
    row_keys,
    row_widths,
    spearman,
    text_positions,
    tie_order,
    trapezoid,
)
from whybox.models.inputs import coded_later, is_text_adapter, label_map_option, note_option_columns, tensor_option
from whybox.models.targets import apply_score_space
from whybox.registry import METRICS

__all__ = [
    "AOPC",
    "Deletion",
    "HighestConfidence",
    "Insertion",
    "MuFidelity",
    "curve_points",
    "resolve_fill",
    "rise_blur",
]

PADDINGS = ("zero", "reflect")
HC_BUDGETS = (0.25, 0.5, 0.75, 1.0)
_UNIFORM_KEY = 1_000_003
_SUBSET_KEY = 1_000_033


# ---------------------------------------------------------------------------------------------- fills
@functools.lru_cache(maxsize=8)
def _rise_kernel(klen: int, sigma: float) -> torch.Tensor:
    """RISE's blur kernel: ``scipy.ndimage.gaussian_filter`` of a centred delta on a ``klen x klen`` grid."""
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1.0
    return torch.from_numpy(gaussian_filter(delta, sigma))


def rise_blur(x: torch.Tensor, *, klen: int = 11, sigma: float = 5.0, padding: str = "zero") -> torch.Tensor:
    """Blur images ``(B, C, H, W)`` with RISE's kernel, per channel.

    ``padding="zero"`` is RISE's ``conv2d(..., padding=klen // 2)`` (the border darkens towards the zero of the
    input space); ``"reflect"`` mirrors the image instead (``"replicate"`` where the image is smaller than the
    kernel radius).
    """
    if x.ndim != 4:
        raise InvalidInputError(f"fill='blur' needs images (B, C, H, W); got {tuple(x.shape)}. Use fill='zero'.")
    c = x.shape[1]
    k = _rise_kernel(klen, sigma).to(device=x.device, dtype=x.dtype).view(1, 1, klen, klen).repeat(c, 1, 1, 1)
    r = klen // 2
    if padding == "zero":
        return F.conv2d(x, k, padding=r, groups=c)
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    return F.conv2d(F.pad(x, (r, r, r, r), mode=mode), k, groups=c)


def resolve_fill(
    fill: FillLike,
    x: torch.Tensor,
    *,
    seed: int,
    klen: int = 11,
    sigma: float = 5.0,
    padding: str = "zero",
    packing: Any = None,
) -> torch.Tensor:
    """The replacement values for ``x`` ``(B, ...)``.

    ``"auto"`` (``"blur"`` for images ``(B, C, H, W)``, ``"zero"`` for other inputs: tables, token
    embeddings), ``"zero"``, ``"mean"`` (per-row, per-channel), ``"blur"`` (RISE kernel, :func:`rise_blur`), ``"min"``
    (each row's minimum: Quantus's ``"black"``), ``"uniform"`` (uniform noise over each row's value range; row
    ``i`` draws from ``(seed, i)``), a number, a tensor broadcastable to ``x``, or a callable ``x -> tensor``.
    With ``packing`` (a model of several inputs), ``"mean"``, ``"min"`` and ``"uniform"`` are each input's own.
    """
    if isinstance(fill, str):
        if fill == "auto":
            fill = "blur" if x.ndim == 4 else "zero"
        if fill == "blur":
            return rise_blur(x, klen=klen, sigma=sigma, padding=padding)
        if fill in ("min", "uniform"):
            lo, hi = _row_range(x, packing)
            if fill == "min":
                return lo.expand_as(x).clone()
            out = torch.empty_like(x)
            for i, key in enumerate(row_keys(x)):
                u = torch.rand(x.shape[1:], generator=derive_generator(seed, _UNIFORM_KEY, key), dtype=torch.float64)
                out[i] = lo[i] + (hi[i] - lo[i]) * u.to(device=x.device, dtype=x.dtype)
            return out
    return make_fill(fill, x, packing=packing)


def _row_range(x: torch.Tensor, packing: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's minimum and maximum, broadcasting to ``x``: over the row, or with ``packing`` (a model of several
    inputs, ``x`` its packed rows ``(B, F)``) over each input's own part, spread over its columns."""
    if packing is not None and x.ndim == 2:
        parts = x.split(packing.sizes, 1)
        lo = torch.cat([p.amin(1, keepdim=True).expand_as(p) for p in parts], 1)
        hi = torch.cat([p.amax(1, keepdim=True).expand_as(p) for p in parts], 1)
        return lo, hi
    flat = x.reshape(x.shape[0], -1)
    view = (-1, *([1] * (x.ndim - 1)))
    return flat.amin(1).view(view), flat.amax(1).view(view)


def _check_fill(fill: Any) -> Any:
    if coded_later(fill):
        return fill  # a reference row as a Series (or a list with text): read when evaluate() knows the model (an estimator codes text)
    if isinstance(fill, tuple) and fill and not all(isinstance(v, str) for v in fill):
        return fill  # one per input of a model of several inputs ((0.0, 50.0)), or a row: read in evaluate()
    fill = tensor_option(fill, "fill")  # a numpy array or a pandas Series, as a tensor
    if isinstance(fill, str) and fill not in ("auto", "zero", "mean", "blur", "min", "uniform"):
        raise InvalidParameterError(
            "fill must be 'auto', 'zero', 'mean', 'blur', 'min', 'uniform', a number, a tensor or a callable; got "
            f"{fill!r}."
        )
    return fill


# ---------------------------------------------------------------------------------------------- curves
def _region_groups(regions: Any, x: torch.Tensor, *, signal: bool = False, sequence: bool = False) -> FeatureGroups:
    """The curve's regions as feature groups; on 1-D signals ``(B, C, L)`` (``signal``) ids per time step ``(B, 1, L)``,
    shared by the channels, as the signal's per-time-step map values are; on sequences ``(B, T, D)`` (``sequence``)
    ids per time step ``(B, T)``, ``(1, T)`` or ``(T,)`` are shared by the step's D features (as ``(B, T, 1)``)."""
    if sequence and isinstance(regions, (FeatureGroups, torch.Tensor)):
        ids = regions.groups if isinstance(regions, FeatureGroups) else regions
        per_step = step_ids(ids, x)
        if per_step is not None:
            if ids.is_floating_point():
                raise InvalidParameterError(f"regions must hold integer region ids; got dtype {ids.dtype}.")
            g = broadcast_ids(per_step, x)
            if g is None or bool((g < 0).any()):
                raise InvalidParameterError(
                    f"regions of a sequence must be non-negative ids per time step, ({x.shape[0]}, {x.shape[1]}), "
                    f"(1, {x.shape[1]}) or ({x.shape[1]},), or per element ({x.shape[0]}, {x.shape[1]}, "
                    f"{x.shape[2]}); got {tuple(ids.shape)}."
                )
            n = regions.n_groups if isinstance(regions, FeatureGroups) else int(g.max()) + 1
            return FeatureGroups(g.expand(x.shape).contiguous(), n, getattr(regions, "kind", "regions"))
    if signal and isinstance(regions, (FeatureGroups, torch.Tensor)):
        ids = regions.groups if isinstance(regions, FeatureGroups) else regions
        if ids.is_floating_point():
            raise InvalidParameterError(f"regions must hold integer region ids; got dtype {ids.dtype}.")
        g = broadcast_ids(ids.reshape(-1, 1, ids.shape[-1]) if ids.ndim in (1, 2) else ids, x[:, :1])
        if g is None or bool((g < 0).any()):
            raise InvalidParameterError(
                f"regions of a signal must be non-negative ids per time step, ({x.shape[0]}, 1, {x.shape[-1]}), "
                f"(1, {x.shape[-1]}) or ({x.shape[-1]},); got {tuple(ids.shape)}."
            )
        n = regions.n_groups if isinstance(regions, FeatureGroups) else int(g.max()) + 1
        return FeatureGroups(g.contiguous(), n, getattr(regions, "kind", "regions"))
    if isinstance(regions, FeatureGroups):
        if x.ndim != 4 and regions.groups.shape[1:] != x.shape[1:]:  # e.g. (B, T, 1) token ids of (B, T, D + 1)
            g = broadcast_ids(regions.groups, x)
            if g is None:
                raise InvalidParameterError(
                    f"regions of shape {tuple(regions.groups.shape)} do not broadcast to the inputs {tuple(x.shape)}."
                )
            return FeatureGroups(g.expand(x.shape).contiguous(), regions.n_groups, regions.kind)
        if x.ndim == 4 and regions.groups.ndim == 3 and tuple(regions.groups.shape) == (x.shape[0], *x.shape[2:]):
            # one (H, W) map per image, as a tensor label map is read: shared by the channels
            return FeatureGroups(regions.groups.unsqueeze(1), regions.n_groups, regions.kind)
        return regions
    if isinstance(regions, tuple) and x.ndim == 4:  # (h, w) patches, checked in _CurveMetric
        from whybox.masking.features import grid

        return grid(x, patch=regions)
    if isinstance(regions, int) and not isinstance(regions, bool):
        from whybox.masking.features import grid, segments

        if x.ndim == 3 and signal:  # windows of a 1-D signal's time steps (its last axis), shared by the channels
            return segments(x, length=regions, name="regions")
        if x.ndim == 3:  # a sequence (B, T, D): windows along axis 1 with all D features, one id per element
            s = segments(x, length=regions, time_axis=1, name="regions")
            return FeatureGroups(s.groups.expand(x.shape).contiguous(), s.n_groups, s.kind)
        return grid(x, patch=regions)
    if isinstance(regions, torch.Tensor) and not regions.is_floating_point() and x.ndim != 4:
        # any other input: region ids that broadcast to a row, e.g. TextBatch.word_features() (B, T, 1)
        gb = broadcast_ids(regions, x)
        if gb is None or bool((gb < 0).any()):
            raise InvalidParameterError(
                f"regions must be non-negative region ids broadcasting to the inputs {tuple(x.shape)}, e.g. "
                f"({x.shape[0]}, *G); got {tuple(regions.shape)}."
            )
        return FeatureGroups(gb.expand(x.shape).contiguous(), int(gb.max()) + 1, "regions")
    if isinstance(regions, torch.Tensor) and not regions.is_floating_point():
        g = regions.to(device=x.device, dtype=torch.int64)
        b, _, h, w = x.shape
        if g.ndim == 2 and g.shape == (h, w):
            g = g.expand(b, h, w)
        if g.ndim == 3:
            g = g.unsqueeze(1)
        if g.ndim == 4 and tuple(g.shape) == (1, 1, h, w):  # one map for all, (1, H, W) or (1, 1, H, W)
            g = g.expand(b, 1, h, w)
        if g.shape != (b, 1, h, w) or bool((g < 0).any()):
            raise InvalidParameterError(
                f"regions must be non-negative region ids of shape ({b}, 1, {h}, {w}), ({b}, {h}, {w}) or ({h}, {w}) "
                f"(one map for all: also (1, {h}, {w}) or (1, 1, {h}, {w})); "
                f"got {tuple(regions.shape)}."
            )
        return FeatureGroups(g.contiguous(), int(g.max()) + 1, "regions")
    raise InvalidParameterError(
        "regions must be None (pixel steps), a FeatureGroups, an int patch size (or (h, w)) or an integer segmentation "
        f"(B, H, W); got {type(regions).__name__}."
    )


def curve_points(
    values: torch.Tensor,
    groups: FeatureGroups,
    *,
    steps: int | None,
    seed: int,
    descending: bool = True,
    region_values: bool = False,
    pixel_values: torch.Tensor | None = None,
    null: torch.Tensor | None = None,
    region_pool: str = "mean",
    x: torch.Tensor | None = None,
    adapter: Any = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Feature ranks, per-step feature counts and x-coordinates of a perturbation curve.

    Parameters
    ----------
    values
        ``(B, N)`` per-feature relevance (ignored when ``region_values``).
    groups
        The features; with ``region_values`` the regions, ranked by the mean (``region_pool="sum"``: the sum) of
        ``pixel_values`` ``(B, P)`` over each region's pixels (a region map painted back on the pixels gives its own
        values by the mean; a text's words, each token its own value, rank by the sum).
    steps
        Pixel-step protocol: ``steps`` equal-count steps (boundaries ``floor(i N / steps)``). ``None``: region
        steps, one region per step, empty regions last (their steps add no area).
    null
        ``(B, M)`` bool, region steps only: regions that never change (every element equal to the fill), counted
        as empty: last, and no area (text: CLS, SEP and pads, so padding changes nothing).
    x, adapter
        The inputs and their adapter: a text's rows break ties within its own tokens
        (:func:`~whybox.metrics.base.row_widths`).

    Returns
    -------
    ranks ``(B, M)`` (position of each feature in the order), counts ``(B, P)`` (features perturbed at each
    point) and x ``(B, P)`` (fraction of the input's elements perturbed).
    """
    sizes = groups.sizes().to(torch.float64)  # (B, M) elements per feature (per input row)
    widths = row_widths(sizes, x, adapter, groups)  # ties broken within a row's own features, not the batch's padding
    if null is not None:
        sizes = sizes.masked_fill(null.to(sizes.device), 0.0)
    b, m = sizes.shape
    if region_values:
        if pixel_values is None:
            raise InvalidParameterError("region_values needs pixel_values.")
        flat = groups.groups.reshape(b, -1)
        sums = torch.zeros(b, m, dtype=torch.float64, device=flat.device).scatter_add_(
            1, flat, pixel_values.to(flat.device, torch.float64)
        )
        pooled = sums if region_pool == "sum" else sums / sizes.clamp_min(1)
        values = torch.where(sizes > 0, pooled, torch.full_like(sums, -math.inf))
    order = tie_order(values, seed, descending=descending, widths=widths).cpu()
    if region_values:  # empty regions (unused ids) last, whatever the direction
        empty = (sizes.cpu() == 0).gather(1, order).to(torch.int64)
        order = order.gather(1, torch.sort(empty, dim=1, stable=True).indices)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(m).expand(b, m).contiguous())
    sizes_c = sizes.cpu()
    if steps is None:
        counts = torch.arange(m + 1).expand(b, m + 1).contiguous()
    else:
        counts = torch.tensor(boundaries(m, steps)).expand(b, -1).contiguous()
    cum = torch.cat([torch.zeros(b, 1, dtype=torch.float64), sizes_c.gather(1, order).cumsum(1)], 1)
    total = cum[:, -1:].clamp_min(1)
    xs = cum.gather(1, counts) / total
    if steps is not None and bool((sizes_c == sizes_c[:, :1]).all()):
        xs = counts.to(torch.float64) / m  # equal features: x = b_i / N exactly
    return ranks, counts, xs


def changed_points(
    x: torch.Tensor, fill: torch.Tensor, groups: FeatureGroups, ranks: torch.Tensor, counts: torch.Tensor
) -> torch.Tensor | None:
    """``(B, P)`` bool: whether the input at curve point ``k`` differs from the one at point ``k - 1`` (point 0
    always counts as changed).

    Between two points only the features ranked in ``[counts[k-1], counts[k])`` change hands between ``x`` and the
    fill, in deletion and insertion alike, so the input stays the same exactly when every element of those
    features already equals its fill (a digit's black background under a zero or minimum fill).
    """
    b = x.shape[0]
    live = groups_touched(groups, x != fill).to(torch.int64)
    in_order = torch.zeros_like(live).scatter_(1, ranks, live)
    cum = torch.cat([torch.zeros(b, 1, dtype=torch.int64, device=x.device), in_order.cumsum(1)], 1)
    changed = cum.gather(1, counts[:, 1:]) > cum.gather(1, counts[:, :-1])
    return torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device), changed], 1)


class _CurveMetric(Metric):
    """Insertion/deletion-style curves: ``steps + 1`` scores along a feature order."""

    reads_clean = False  # the curve scores its own points

    _insertion: bool = False
    _descending: bool = True
    _default_fill: str = "zero"

    def __init__(
        self,
        *,
        steps: int | None = None,
        fill: FillLike | None = None,
        abs: bool = False,
        regions: Any = None,
        blur_klen: int = 11,
        blur_sigma: float = 5.0,
        padding: str = "zero",
        pool: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from whybox.metrics.eraser import _check_pool

        if pool is not None and regions is None:
            raise InvalidParameterError(
                f"pool={pool!r} ranks regions by their elements' values; it applies with regions= only (pixel steps "
                "rank each pixel by its own value). Leave pool out, or give regions."
            )
        self.pool = "mean" if pool is None else _check_pool(pool)
        if steps is not None and regions is not None:  # one step per region: a steps count would not apply
            raise InvalidParameterError(
                f"steps={steps!r} applies to element steps; with regions (on texts their words where regions is left "
                "out; on a causal LM's step rows their tokens, always) the curve takes one step per region (each "
                "row's own count). Leave steps out; for element steps (not on step rows) give regions=None."
            )
        self.steps = None if regions is not None else 100 if steps is None else check_int("steps", steps)
        note_option_columns(self, "fill", fill)
        self.fill = _check_fill(self._default_fill if fill is None else fill)
        if not isinstance(abs, bool):
            raise InvalidParameterError(f"abs must be True or False; got {abs!r}.")
        self.abs = abs
        patch = (
            isinstance(regions, tuple)
            and len(regions) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in regions)
        )  # (h, w): a patch size, not a label map
        # a label map written as lists (a config, --metric-option)
        self.regions = regions if patch else label_map_option(regions, "regions")
        self.blur_klen = check_int("blur_klen", blur_klen)
        if self.blur_klen % 2 == 0:  # an even kernel has no centre: the blurred image would come out a pixel larger
            raise InvalidParameterError(
                f"blur_klen must be an odd kernel length (a centre pixel and as many on each side); got {blur_klen}."
            )
        self.blur_sigma = check_float("blur_sigma", blur_sigma, 0.0, lo_open=True)
        self.padding = check_choice("padding", padding, PADDINGS)

    def fill_values(self, x: torch.Tensor, adapter: Any = None) -> torch.Tensor:
        """What a removed feature of ``x`` becomes along this metric's curve (its ``fill`` resolved on ``x``, as the
        curve resolves it): the hidden state an explainer's baseline can share (``find_mistakes``)."""
        return resolve_fill(
            self.fill, x, seed=self.seed, klen=self.blur_klen, sigma=self.blur_sigma, padding=self.padding,
            packing=getattr(adapter, "packing", None),
        )  # fmt: skip

    def _curve(self, ctx: Context) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """``(x (B, P), y (B, P), meta)`` of the insertion (or deletion) curve."""
        if ctx.attributions is None or ctx.engine is None or ctx.target is None:
            raise InvalidParameterError(f"metric {self.name!r} needs attributions and a model.")
        x = ctx.x
        values, groups = feature_scores(
            ctx.attributions, x, abs=self.abs, signal=ctx.signal, sequence=reads_sequence(ctx)
        )
        flat_rows = (values.amax(1) == values.amin(1)).cpu()
        region_steps = self.regions is not None
        fill = self.fill_values(x, ctx.adapter)
        if region_steps:
            groups = _region_groups(self.regions, x, signal=ctx.signal, sequence=reads_sequence(ctx))
            if groups.groups.shape[0] != x.shape[0]:
                raise InvalidParameterError(f"regions hold {groups.groups.shape[0]} rows for {x.shape[0]} inputs.")
            null = None
            if _null_regions(ctx.adapter):  # a text's regions equal to the fill everywhere (CLS, SEP, pads) leave
                # the curve; elsewhere (a table's column that happens to equal its reference row) a region keeps its
                # share of the input
                g = groups.groups.reshape(x.shape[0], -1)
                moved = (x != fill).any(1) if ctx.signal else (x != fill)  # a signal's: per time step
                differ = moved.reshape(x.shape[0], -1).to(torch.int64)
                changes = torch.zeros(x.shape[0], groups.n_groups, dtype=torch.int64, device=g.device)
                null = changes.scatter_add_(1, g, differ) == 0
            ranks, counts, xs = curve_points(
                values,
                groups,
                steps=None,
                seed=self.seed,
                descending=self._descending,
                region_values=True,
                # per element, as the regions' ids lie (a sequence's per-step value on each of its D elements)
                pixel_values=values
                if groups.groups[0].numel() == values.shape[1]
                else feature_values(ctx.attributions, x, abs=self.abs, signal=ctx.signal),
                null=null,
                region_pool=self.pool,
                x=x,
                adapter=ctx.adapter,
            )
        else:
            ranks, counts, xs = curve_points(
                values,
                groups,
                steps=self.steps or 100,
                seed=self.seed,
                descending=self._descending,
                x=x,
                adapter=ctx.adapter,
            )
        ranks, counts = ranks.to(x.device), counts.to(x.device)
        insertion = self._insertion

        def masks(rows: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
            done = ranks[rows] < counts[rows, ks].unsqueeze(1)  # (n, M) features perturbed at this point
            keep = done if insertion else ~done
            return groups.expand(keep, rows)

        # the points whose input changed are scored; the others repeat the score of the point before
        changed = changed_points(x, fill, groups, ranks, counts) if ctx.engine.deterministic() else None
        y = ctx.engine.scores(
            x, masks, n_masks=counts.shape[1], fill=fill, target=ctx.target, score=self.score, live=changed
        )
        n_same = 0
        if changed is not None:
            y = repeat_last(y, changed)
            n_same = int((~changed).sum())
        meta: dict[str, Any] = {
            "protocol": "region_steps" if region_steps else "pixel_steps",
            "n_features": int(groups.n_groups),
            "flat_map": flat_rows.tolist(),
            "n_unchanged_points": n_same,
        }
        if region_steps:  # (B, M) the region ids in the order the curve moved them (point k: the first k)
            meta["region_order"] = torch.argsort(ranks, dim=1).cpu()
        if bool(flat_rows.any()):
            meta["note"] = "rows with a flat map are ordered by the seeded tie rule alone"
        return xs, y.cpu(), meta


def _undefined(score: torch.Tensor, xs: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
    """``score`` with NaN for the rows that have nothing to remove (a text of no words: its curve never moves), whose
    area and confidence are undefined (METRICS.md: NaN, never silently a number)."""
    empty = xs[:, -1] <= 0
    if not bool(empty.any()):
        return score
    meta["note"] = "; ".join([*([meta["note"]] if "note" in meta else []), "rows with no features to remove score NaN"])
    return torch.where(empty.to(score.device), torch.full_like(score, math.nan), score)


@METRICS.register("deletion")
class Deletion(_CurveMetric):
    """Deletion (Petsiuk et al. 2018): remove features in relevance order; area under the target score.

    x^(i) = x with the top ``b_i`` features replaced by the fill; ``b_i = floor(i N / steps)``, ``i = 0..steps``;
    AUC by the trapezoid rule over the fraction actually removed. Lower is better.

    Parameters
    ----------
    steps
        Curve steps (``steps + 1`` points; clamped to the number of features; default 100). Pixel-step protocol only:
        with ``regions`` the curve takes one step per region, and ``steps`` is refused.
    pool
        With ``regions``: a region's rank is the ``"mean"`` (default) or ``"sum"`` of its elements' attributions
        (texts: ``"sum"`` for gradient and attention methods, whose tokens each carry their own value, as
        :func:`~whybox.explain_text`'s words).
    fill
        What a removed pixel becomes: ``"zero"`` (default; the dataset mean in normalised space, as RISE),
        ``"mean"``, ``"blur"``, ``"min"``, ``"uniform"``, a number, a tensor or a callable.
    abs
        Rank by ``|a|`` (channels pooled after ``|.|``).
    regions
        Region-step protocol: a :class:`~whybox.masking.FeatureGroups`, an integer segmentation ``(B, H, W)`` or
        an int patch size (on 1-D signals ``(B, C, L)`` and sequences ``(B, T, D)``: windows of that many time
        steps, the last axis of a signal, axis 1 of a sequence). One region per step, regions ranked by their mean attribution (a region map painted
        back on the pixels gives its own values); x = the area fraction removed (unequal steps).
    blur_klen, blur_sigma, padding
        RISE's blur kernel for ``fill="blur"`` (11, 5, zero padding).

    Notes
    -----
    Ties are broken by the seeded stable rule (:func:`~whybox.metrics.base.tie_order`); a flat map is ordered
    by it alone (``meta["flat_map"]``). Quantus' ``PixelFlipping`` leaves the unperturbed point out of its curve
    and orders tied pixels by an unstable argsort.

    A step that moves only pixels already equal to the fill (a digit's black background under ``"zero"`` or
    ``"min"``) leaves the input as it was: that point is not scored again but repeats the score before it
    (:func:`changed_points`; ``meta["n_unchanged_points"]``, and ``n_forward`` counts the passes made). The same
    holds for every curve metric here.

    Curves: ``"x"`` ``(B, P)`` fraction removed, ``"y"`` ``(B, P)`` target score. Scores: AUC in [0, 1] for
    probabilities.
    """

    higher_is_better = False

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        xs, y, meta = self._curve(ctx)
        return _undefined(trapezoid(xs, y), xs, meta), {"x": xs, "y": y}, meta


@METRICS.register("insertion")
class Insertion(_CurveMetric):
    """Insertion (Petsiuk et al. 2018): start from the blurred input, reveal features in relevance order.

    x^(i) = fill with the top ``b_i`` features taken from x. Higher is better. ``fill`` defaults to ``"auto"``:
    ``"blur"`` (RISE's 11 x 11, sigma 5 kernel with zero padding) for images, ``"zero"`` for other inputs, which
    have no blur (for tables a reference row such as the training means is the better fill); other options as
    :class:`Deletion`.

    Curves: ``"x"`` ``(B, P)`` fraction revealed, ``"y"`` ``(B, P)`` target score.
    """

    higher_is_better = True
    _insertion = True
    _default_fill = "auto"  # blur for images, zero for tables and token embeddings

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        xs, y, meta = self._curve(ctx)
        return _undefined(trapezoid(xs, y), xs, meta), {"x": xs, "y": y}, meta


def highest_confidence(xs: torch.Tensor, y: torch.Tensor, budget: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``HC(beta) = max{ y_k : x_k <= beta }`` per row and the smallest ``x_k`` at which it is reached."""
    ok = xs <= budget + 1e-12
    masked = torch.where(ok, y, torch.full_like(y, -math.inf))
    hc = masked.amax(1)
    first = (ok & (masked == hc.unsqueeze(1))).to(torch.int64).argmax(1)
    return hc, xs.gather(1, first.unsqueeze(1)).squeeze(1)


@METRICS.register("highest_confidence")
class HighestConfidence(_CurveMetric):
    """Highest confidence along insertion (Chen et al. ICLR 2024): the best target score reached while at most
    ``budget`` of the input is revealed.

    Scores: ``HC(budget)``. ``meta["hc"]`` and ``meta["hc_area"]`` ``(B, 4)`` give the value and the area at
    which it is first reached for the budgets 0.25, 0.5, 0.75 and 1.0. Use with ``regions=`` for the region-step
    protocol, typically on misclassified samples explaining the true class. Higher is better.
    """

    higher_is_better = True
    _insertion = True
    _default_fill = "auto"  # blur for images, zero for tables and token embeddings

    def __init__(self, *, budget: float = 0.25, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.budget = check_float("budget", budget, 0.0, 1.0, lo_open=True)

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        xs, y, meta = self._curve(ctx)
        hc, _ = highest_confidence(xs, y, self.budget)
        table = [highest_confidence(xs, y, b) for b in HC_BUDGETS]
        meta["budgets"] = list(HC_BUDGETS)
        empty = (xs[:, -1] <= 0).unsqueeze(1)
        meta["hc"] = torch.stack([t[0] for t in table], 1).masked_fill(empty, math.nan)
        meta["hc_area"] = torch.stack([t[1] for t in table], 1).to(torch.float64).masked_fill(empty, math.nan)
        meta["auc"] = _undefined(trapezoid(xs, y), xs, {})
        return _undefined(hc, xs, meta), {"x": xs, "y": y}, meta


def _null_regions(adapter: Any) -> bool:
    """Whether regions the fill leaves as they are count as none of a row's features: a text's specials and pads, a
    language model's generation step's future tokens and specials (an adapter that declares ``null_regions``)."""
    return is_text_adapter(adapter) or bool(getattr(adapter, "null_regions", False))


@METRICS.register("aopc")
class AOPC(_CurveMetric):
    """Area over the perturbation curve (Samek et al. 2017): ``1/(L+1) sum_k (f(x^(0)) - f(x^(k)))``.

    Pixel flipping in MoRF (most relevant first; higher is better) or LeRF (least relevant first; lower is
    better) order with ``steps = L`` (100). The fill defaults to ``"uniform"`` noise over each row's value range
    (Samek), seeded. ``regions=(h, w)`` as an int patch size flips a non-overlapping grid of patches from the
    top-left corner, ranked by their mean attribution, one patch a step, instead of Samek's overlapping 9 x 9
    windows (Quantus' ``RegionPerturbation`` gives the same curve where the patches tile the image; elsewhere it
    centres its grid on padding and ranks patches by their sum). A random order is not an option:
    pass a random attribution map as the baseline instead (its direction would be undefined).

    Curves: ``"x"``, ``"y"`` as :class:`Deletion`.
    """

    _default_fill = "uniform"

    def __init__(self, *, order: str = "morf", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.order = check_choice("order", order, ("morf", "lerf"))
        self._descending = self.order == "morf"

    def result_direction(self) -> bool:
        return self.order == "morf"

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        xs, y, meta = self._curve(ctx)
        drop = y[:, :1] - y
        if self.regions is None:
            aopc = drop.mean(1)
        else:  # L = the row's own regions: the points past them (ids it lacks, empty regions) repeat the last
            real = torch.cat([torch.ones_like(xs[:, :1], dtype=torch.bool), xs[:, 1:] > xs[:, :-1]], 1).to(y.device)
            aopc = (drop * real).sum(1) / real.sum(1)
        meta["order"] = self.order
        return _undefined(aopc, xs, meta), {"x": xs, "y": y}, meta


# ---------------------------------------------------------------------------------------------- MuFidelity
@METRICS.register("mufidelity")
class MuFidelity(Metric):
    """Faithfulness correlation, muF (Bhatt et al. 2020).

    ``muF = corr_S( sum_{i in S} a_i , f(x) - f(x with x_S = fill) )`` over ``n_samples`` random subsets S of
    features. Image features are the cells of a ``grid_size x grid_size`` grid (:func:`~whybox.masking.cells`);
    other inputs use one feature per element. Exactly ``round(subset_fraction * M)`` features per subset
    (``bernoulli=True``: each feature independently with that probability, xplique's rule), ``M`` the row's features:
    the grid's cells, or the regions present in that row (a text's words: its specials and pads, which the fill
    never changes, are none of them). Row ``i`` draws its subsets from ``(seed, i)``. Higher is better, range
    [-1, 1]; NaN when either side is constant (a saturated model). A subset whose features all equal the fill
    already (a black corner) stays in the draw but leaves the input as it was: its drop is 0, with no pass; the same
    partition given as ``grid_size`` or as a ``regions`` label map gives the same subsets and score.

    Parameters
    ----------
    grid_size, subset_fraction, n_samples
        9, 0.2, 200 (``grid_size``: images without ``regions``).
    regions, pool
        Features of your own (a label map, a patch size, ...: as :class:`Deletion`'s ``regions``) instead of the
        grid; a feature's attribution is the ``pool`` (``"sum"``, default, or ``"mean"``) of its elements' values,
        over regions or grid cells alike.
    fill
        ``"zero"`` (default) or any fill of :class:`Deletion`.
    corr
        ``"pearson"`` (the paper) or ``"spearman"``.
    subsets
        Optional explicit subsets (True = perturbed), ``(n_samples, M)`` bool shared by every row or
        ``(B, n_samples, M)`` per row, for paired comparisons; overrides the random draws.

    Curves: ``"attribution_sum"`` and ``"drop"`` ``(B, n_samples)``.
    """

    higher_is_better = True

    def __init__(
        self,
        *,
        grid_size: int | None = None,
        subset_fraction: float = 0.2,
        n_samples: int = 200,
        fill: FillLike = "zero",
        corr: str = "pearson",
        bernoulli: bool = False,
        abs: bool = False,
        subsets: torch.Tensor | None = None,
        regions: Any = None,
        pool: str = "sum",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from whybox.metrics.eraser import _check_pool, check_regions

        patch = (isinstance(regions, int) and not isinstance(regions, bool) and regions >= 1) or (
            isinstance(regions, tuple)
            and len(regions) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in regions)
        )  # a patch size, as Deletion's regions: windows of time steps, or (h, w) patches of images
        self.regions = regions if patch else check_regions(regions, "the grid cells of an image, else every element")
        self.pool = _check_pool(pool)
        if grid_size is not None and regions is not None:  # the regions are the features: no grid
            raise InvalidParameterError(
                f"grid_size={grid_size!r} sets the grid cells of images; with regions= the regions are the features. "
                "Leave grid_size out, or regions out for the grid."
            )
        self.grid_size = None if regions is not None else 9 if grid_size is None else check_int("grid_size", grid_size)
        # a grid_size other than the default on inputs without images is refused at compute time; the default, which
        # every result's params record, is accepted anywhere (evaluate(..., **result.params) re-runs it)
        self._grid_given = grid_size is not None and self.grid_size != 9
        self.subset_fraction = check_float("subset_fraction", subset_fraction, 0.0, 1.0, lo_open=True)
        self.n_samples = check_int("n_samples", n_samples, 2)
        note_option_columns(self, "fill", fill)
        self.fill = _check_fill(fill)
        self.corr = check_choice("corr", corr, ("pearson", "spearman"))
        self.bernoulli = check_bool("bernoulli", bernoulli)
        self.abs = check_bool("abs", abs)
        if subsets is not None and (not isinstance(subsets, torch.Tensor) or subsets.ndim not in (2, 3)):
            raise InvalidParameterError("subsets must be a (n_samples, M) or (B, n_samples, M) bool tensor, or None.")
        self.subsets = subsets

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        if ctx.attributions is None or ctx.engine is None or ctx.target is None or ctx.clean is None:
            raise InvalidParameterError("mufidelity needs attributions and a model.")
        x = ctx.x
        fill = resolve_fill(self.fill, x, seed=self.seed, packing=getattr(ctx.adapter, "packing", None))
        own: torch.Tensor | None = None  # with regions: (B, M) the features of each row, the ones its draws pick from
        if self.regions is not None:
            from whybox.metrics.eraser import pool_attributions, resolve_regions

            groups = (
                _region_groups(self.regions, x, signal=ctx.signal, sequence=reads_sequence(ctx))
                if isinstance(self.regions, (int, tuple))
                else resolve_regions(self.regions, x, signal=ctx.signal, sequence=reads_sequence(ctx))
            )
            feat = pool_attributions(
                ctx.attributions, groups, x, pool=self.pool, abs=self.abs, signal=ctx.signal
            ).nan_to_num(0.0)
            # a row's features are the regions it has (a label id absent from that row, e.g. a shorter text's word
            # ids beyond its own, is none of its features); on a text, whose specials and pads share one region the
            # fill never changes, that region is none of the text's words either (so its pads change nothing).
            # Elsewhere a region that merely equals the fill (a black corner) stays in the draw, as a grid cell does:
            # its subsets are kept, with the clean score and no pass
            own = groups.sizes() > 0
            if _null_regions(ctx.adapter):  # (a generation step's future tokens and specials too)
                own = own & groups_touched(groups, x != fill)
            own = own.cpu()
        else:
            values, px_groups = feature_scores(
                ctx.attributions, x, abs=self.abs, signal=ctx.signal, sequence=reads_sequence(ctx)
            )
            if x.ndim == 4:
                groups = cells(x, n=self.grid_size or 9)
                flat = groups.groups.reshape(x.shape[0], -1)
                feat = torch.zeros(x.shape[0], groups.n_groups, dtype=torch.float64, device=flat.device).scatter_add_(
                    1, flat, values.to(flat.device)
                )
                if (
                    self.pool == "mean"
                ):  # a cell's mean attribution (cells of unequal size where the grid does not tile)
                    count = torch.zeros_like(feat).scatter_add_(1, flat, torch.ones_like(values, device=flat.device))
                    feat = feat / count.clamp_min(1)
            else:  # the features themselves (a signal's or a sequence's time steps, a table's columns): their values
                if self._grid_given:
                    raise InvalidParameterError(
                        f"grid_size={self.grid_size!r} sets the grid cells of images; inputs of shape {tuple(x.shape)} "
                        "are not images, and their features are their own (time steps, columns, tokens). Leave "
                        "grid_size out, or pass regions= (an int: windows of that many time steps, or region ids)."
                    )
                groups, feat = px_groups, values
        b, m = x.shape[0], groups.n_groups
        if self.subsets is not None:
            given = self.subsets.to(torch.bool)
            if given.ndim == 2:
                given = given.unsqueeze(0).expand(b, -1, -1)
            if given.shape[0] != b or given.shape[2] != m:
                raise InvalidParameterError(
                    f"subsets must have shape (n_samples, {m}) or ({b}, n_samples, {m}); got {tuple(self.subsets.shape)}."
                )
            sub = given.contiguous()
        else:
            sub = torch.zeros(b, self.n_samples, m, dtype=torch.bool)
            keys = row_keys(x, text_positions(ctx.adapter, x))  # a text: keyed by its tokens, not its pads
            for i, key in enumerate(keys):  # keyed by the sample, not its place in the batch
                g = derive_generator(self.seed, _SUBSET_KEY, key)
                cols = torch.arange(m) if own is None else own[i].nonzero().flatten()  # the row's own features
                mi = int(cols.shape[0])
                if mi == 0:
                    continue
                k = min(max(1, round(self.subset_fraction * mi)), mi)
                if self.bernoulli:
                    drawn = torch.rand(self.n_samples, mi, generator=g, dtype=torch.float64) < self.subset_fraction
                else:
                    pick = torch.rand(self.n_samples, mi, generator=g, dtype=torch.float64).argsort(1)[:, :k]
                    drawn = torch.zeros(self.n_samples, mi, dtype=torch.bool).scatter_(1, pick, True)
                sub[i][:, cols] = drawn
        sub = sub.to(x.device)
        # a subset of features already equal to the fill everywhere leaves the input as it was: its score is the
        # clean one, with no pass
        live = (sub & groups_touched(groups, x != fill).unsqueeze(1)).any(2)
        perturbed = ctx.engine.scores(x, ~sub, fill=fill, target=ctx.target, groups=groups, score=self.score, live=live)
        clean = ctx.target.select(apply_score_space(ctx.clean, self.score)).to(torch.float64)
        perturbed = torch.where(live, perturbed, clean.unsqueeze(1))
        drop = (clean.unsqueeze(1) - perturbed).cpu()
        att = torch.einsum("bnm,bm->bn", sub.to(torch.float64), feat).cpu()
        r = pearson(att, drop) if self.corr == "pearson" else spearman(att, drop)
        return r, {"attribution_sum": att, "drop": drop}, {"n_features": m}
