"""Shared machinery of the perturbation family (ATTRIBUTION.md §3): feature specs, fills, coalition values.

Every model evaluation of a perturbed input goes through :meth:`MaskingEngine.scores`; this module only
prepares what the engine needs (per-row feature groups, fills, the target) and turns the scores back
into maps. Rows are independent: a row's features, draws and results never depend on its batch
neighbours, so ``explain(X)[i] == explain(X[i:i+1])[0]``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch

from whybox.errors import InvalidInputError, InvalidParameterError, did_you_mean
from whybox.explainers.base import Explainer
from whybox.masking import features as F
from whybox.masking.engine import MaskingEngine
from whybox.masking.features import FeatureGroups, groups_touched
from whybox.masking.fills import FILLS, FillLike, make_fill
from whybox.models.adapter import coder_of, is_sequence, is_signal
from whybox.models.inputs import (
    coded_later,
    label_map_option,
    note_option_columns,
    python_number,
    python_numbers,
    tensor_option,
)
from whybox.models.packed import packed_option
from whybox.models.targets import Target, TargetLike, apply_score_space, resolve_target

__all__ = [
    "FEATURE_SPECS",
    "PerturbationExplainer",
    "RegionExplainer",
    "Regions",
    "ShapleyExplainer",
    "quickshift",
    "segment_mean",
    "shapley_weights",
]

FEATURE_SPECS = ("auto", "superpixels", "quickshift", "grid", "segments", "pixels", "columns", "elements")
SIGNAL_SEGMENTS = 16  # windows of a signal's (or a sequence's) time steps (exact Shapley: 8, 256 coalitions)
FeaturesLike = str | FeatureGroups | torch.Tensor
DEFAULT_MAX_EVALUATIONS = 1_000_000
F64 = torch.float64


# ---------------------------------------------------------------------------------------------- features
def quickshift(x: torch.Tensor, *, kernel_size: float = 4, max_dist: float = 200, ratio: float = 0.2) -> FeatureGroups:
    """Quickshift segments with lime_image's settings, one segmentation per row of ``(B, C, H, W)`` images.

    Each row is min-max scaled to [0, 1]; one or more than three channels are averaged to grey and
    repeated to RGB (lime_image does ``gray2rgb``). On very small images quickshift may return a single
    segment; SLIC (``features="superpixels"``) is the default for that reason.
    """
    if x.ndim != 4:
        raise InvalidInputError(f"quickshift needs images (B, C, H, W); got inputs of shape {tuple(x.shape)}.")
    import numpy as np
    from skimage.segmentation import quickshift as _qs

    out = []
    for row in x.detach().to("cpu", F64):
        lo, hi = row.min(), row.max()
        r = (row - lo) / (hi - lo + 1e-12)
        if r.shape[0] != 3:
            r = r.mean(0, keepdim=True).expand(3, -1, -1)
        arr = np.ascontiguousarray(r.permute(1, 2, 0).numpy())
        seg = _qs(arr, kernel_size=kernel_size, max_dist=max_dist, ratio=ratio)
        _, seg = np.unique(seg, return_inverse=True)
        out.append(torch.from_numpy(seg.reshape(arr.shape[:2]).astype(np.int64)))
    g = torch.stack(out).unsqueeze(1).to(x.device)
    return FeatureGroups(g, int(g.max().item()) + 1, "quickshift")


def elements(x: torch.Tensor) -> FeatureGroups:
    """One group per scalar of a row (captum's ``feature_mask=None``)."""
    b = x.shape[0]
    n = math.prod(x.shape[1:])
    g = torch.arange(n, device=x.device).view(1, *x.shape[1:]).expand(b, *x.shape[1:]).contiguous()
    return FeatureGroups(g, n, "elements")


def _from_tensor(mask: torch.Tensor, x: torch.Tensor, kind: str = "user", *, sequence: bool = False) -> FeatureGroups:
    """An integer mask ``(B, *G)``, ``(1, *G)`` or ``(*G)`` (``(H, W)`` for images) as feature groups; for sequences
    ``(B, T, D)`` of a model that reads time steps (``sequence``) also ids per step ``(T,)``, ``(1, T)`` or ``(B, T)``,
    shared by the step's D features (:func:`whybox.masking.step_ids`, as the metrics and LIMA read them)."""
    if mask.is_floating_point() or mask.is_complex() or mask.dtype == torch.bool:
        raise InvalidParameterError(f"a feature mask must hold integer group ids; got dtype {mask.dtype}.")
    per_step = F.step_ids(mask, x) if sequence and x.ndim == 3 else None
    g = F.broadcast_ids(mask if per_step is None else per_step, x)
    if g is None:
        if sequence and x.ndim == 3:
            t, d = x.shape[1], x.shape[2]
            forms = (
                f"one per time step ({t},), (1, {t}) or ({x.shape[0]}, {t}) (shared by the step's {d} features), per "
                f"feature (1, 1, {d}) or per element ({t}, {d}) / ({x.shape[0]}, {t}, {d})"
            )
            raise InvalidParameterError(
                f"features mask of shape {tuple(mask.shape)} does not fit sequences {tuple(x.shape)} (B, T, D); pass "
                f"integer group ids: {forms}."
            )
        raise InvalidParameterError(
            f"features mask of shape {tuple(mask.shape)} does not fit inputs {tuple(x.shape)}; pass (B, *G) or "
            "(*G) integer group ids with G broadcasting to one input row (e.g. (1, H, W) for image regions)."
        )
    if g.numel() and int(g.min()) < 0:
        raise InvalidParameterError(f"feature group ids must be >= 0; got {int(g.min())}.")
    return FeatureGroups(g, int(g.max().item()) + 1 if g.numel() else 0, kind)


def resolve_features(
    spec: FeaturesLike,
    x: torch.Tensor,
    *,
    auto: str,
    n_segments: int,
    compactness: float,
    patch: int | tuple[int, int] | None,
    signal: bool = False,
    sequence: bool = False,
) -> FeatureGroups:
    """Turn the ``features`` option into :class:`FeatureGroups` for ``x``; ``signal``: ``x`` is 1-D signals
    ``(B, C, L)`` (:func:`~whybox.models.adapter.is_signal`), on which ``"auto"`` and ``"grid"`` are segments
    (``patch`` samples long, else 16 windows; 8 for exact Shapley) and ``"pixels"`` one group per time step;
    ``sequence``: ``x`` is sequences ``(B, T, D)`` of a model that reads time steps
    (:func:`~whybox.models.adapter.is_sequence`), whose integer masks may also give one id per step."""
    if isinstance(spec, FeatureGroups):
        return _from_tensor(spec.groups, x, spec.kind, sequence=sequence)
    if isinstance(spec, torch.Tensor):
        return _from_tensor(spec, x, sequence=sequence)
    if signal and isinstance(spec, str) and spec in ("auto", "grid", "grid3", "pixels", "segments"):
        if spec == "pixels":
            return F.segments(x, length=1)
        if isinstance(patch, (tuple, list)):
            raise InvalidParameterError(f"patch is a window length on 1-D signals (one int); got {patch!r}.")
        n = SIGNAL_SEGMENTS // 2 if (spec == "auto" and auto == "grid3") else SIGNAL_SEGMENTS
        return F.segments(x, n=n, length=patch, name="patch")
    if spec == "segments":
        if x.ndim != 3:
            raise InvalidInputError(
                "features='segments' cuts 1-D signals (B, C, L) or sequences (B, T, D) into windows of time steps; "
                f"got inputs of shape {tuple(x.shape)}."
            )
        if isinstance(patch, (tuple, list)):
            raise InvalidParameterError(f"patch is a window length for segments (one int); got {patch!r}.")
        # not a Conv1d's signal: a sequence (B, T, D) of features per time step (an RNN's, a transformer's)
        return F.segments(x, n=SIGNAL_SEGMENTS, length=patch, time_axis=1, name="patch")
    if spec == "auto":
        spec = auto if x.ndim == 4 else ("columns" if x.ndim == 2 else "elements")
    if spec == "superpixels":
        return F.superpixels(x, n_segments=n_segments, compactness=compactness)
    if spec == "quickshift":
        return quickshift(x)
    if spec == "grid3":  # a 3 x 3 grid of near-equal cells (exact Shapley's default on images): 9 features on any
        # side of 3 pixels or more (ceil-sized patches cut a 4-pixel side in 2)
        return F.cells(x, n=3)
    if spec == "grid":
        return F.grid(x, patch=patch if patch is not None else max(1, -(-min(x.shape[-2:]) // 8)))
    if spec == "pixels":
        return F.pixels(x)
    if spec == "columns":
        return F.columns(x)
    if spec == "elements":
        return elements(x)
    raise InvalidParameterError(
        f"features must be one of {FEATURE_SPECS}, a FeatureGroups or an integer mask tensor; got {spec!r}."
    )


class Regions:
    """Per-row interpretable features: original group ids compacted to ``0..M_r-1`` per row.

    ``keep`` ``(B, n_groups)`` marks the groups that are features of each row (present, and not null players
    equal to every fill in all their elements); ``local`` ``(B, *G)`` holds the compact ids, in increasing
    order of the original ones; dropped groups map to id 0, which renders identically either way.
    """

    def __init__(self, groups: FeatureGroups, keep: torch.Tensor) -> None:
        self.groups = groups
        self.keep = keep
        b = keep.shape[0]
        lut = keep.cumsum(1) - 1
        flat = groups.groups.reshape(b, -1)
        self.local = torch.where(keep.gather(1, flat), lut.gather(1, flat), 0).view(groups.groups.shape)
        self.sizes: list[int] = keep.sum(1).tolist()
        self._by_size: dict[int, list[int]] = {}
        for r, m in enumerate(self.sizes):
            self._by_size.setdefault(m, []).append(r)

    def by_size(self) -> dict[int, list[int]]:
        """Rows grouped by their number of features (rows of a size share their draws)."""
        return self._by_size

    def kept(self) -> torch.Tensor:
        """``(B, n_groups)`` bool: which feature ids are each row's features (the columns of ``meta["values"]`` its
        ``meta["n_features"]`` counts; ids a row lacks, or whose elements all equal every fill, are not)."""
        return self.keep[:, : self.groups.n_groups].clone()

    def paint(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Compact per-row values ``(B, M_max)`` (row r uses its first M_r) -> (map ``(B, *G)``, ``(B, M)``)."""
        b = self.keep.shape[0]
        keep = self.keep.to(values.device)
        full = torch.zeros(b, keep.shape[1], dtype=values.dtype, device=values.device)
        valid = (
            torch.arange(values.shape[1], device=values.device)
            < torch.tensor(self.sizes, device=values.device)[:, None]
        )
        full[keep] = values[valid]  # both row-major: row r's kept ids ascending <-> its compact ids 0..M_r-1
        g = self.groups.groups.to(values.device)
        attr = full.gather(1, g.reshape(b, -1)).view(g.shape)
        return attr, full[:, : self.groups.n_groups]


def make_regions(groups: FeatureGroups, x: torch.Tensor, fills: torch.Tensor | None) -> Regions:
    """Compact each row's group ids; with ``fills`` ``(B, R, *S)`` drop groups equal to every fill row."""
    b = x.shape[0]
    n = max(groups.n_groups, 1)
    g_own = groups.groups.reshape(b, -1)
    keep = torch.zeros(b, n, dtype=torch.bool, device=g_own.device).scatter_(1, g_own, True)
    if fills is not None:
        keep[:, : groups.n_groups] &= groups_touched(groups, (x.unsqueeze(1) != fills).any(1))
    return Regions(groups, keep)


def segment_mean(x: torch.Tensor, groups: FeatureGroups) -> torch.Tensor:
    """lime_image's ``hide_color=None``: each element becomes the mean of its group, per channel for images."""
    b = x.shape[0]
    g = groups.groups.expand(b, *x.shape[1:]) if groups.groups.shape[1:] != x.shape[1:] else groups.groups
    n = max(groups.n_groups, 1)
    key = g
    per_channel = x.ndim == 4 and groups.groups.shape[1] == 1 and x.shape[1] > 1
    if per_channel:
        ch = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
        key = g * x.shape[1] + ch
        n = n * x.shape[1]
    key = key.reshape(b, -1)
    vals = x.reshape(b, -1).to(F64)
    sums = torch.zeros(b, n, dtype=F64, device=x.device).scatter_add_(1, key, vals)
    cnt = torch.zeros(b, n, dtype=F64, device=x.device).scatter_add_(1, key, torch.ones_like(vals))
    mean = sums / cnt.clamp_min(1)
    return mean.gather(1, key).view(x.shape).to(x.dtype)


class FirstMaskTarget:
    """The explained class of each row, fixed from the scores of the row's mask 0 (the unperturbed row).

    Methods whose mask 0 leaves the input as it is (occlusion, ablation) need no separate clean pass: the
    engine calls ``on_scores`` with every chunk's raw scores before it selects the target scores, and a row's
    mask 0 is scored no later than its other masks, so the class is known before it is first used. ``None``
    becomes the argmax of the clean scores; ints and per-row indices are validated against K on the first
    chunk; a callable target needs nothing.
    """

    def __init__(self, target: TargetLike, b: int) -> None:
        self.target = target
        self.b = b
        self.fn = target if (target is not None and callable(target) and not isinstance(target, torch.Tensor)) else None
        self.index = torch.full((b,), -1, dtype=torch.int64)
        self.seen = torch.zeros(b, dtype=torch.bool) if self.fn is None else torch.ones(b, dtype=torch.bool)
        self._given: torch.Tensor | None = None

    def engine_target(self, rows: torch.Tensor) -> tuple[Target, Callable[..., None] | None]:
        """(Target, on_scores hook) for an engine call whose row i is input row ``rows[i]``."""
        if self.fn is not None:
            return Target(torch.full((rows.shape[0],), -1, dtype=torch.int64), self.fn), None
        rows = rows.cpu()
        local = torch.zeros(rows.shape[0], dtype=torch.int64)

        def hook(raw: torch.Tensor, vr: torch.Tensor, ks: torch.Tensor) -> None:
            first = (ks == 0).cpu()
            if not bool(first.any()):
                return
            vr0 = vr.cpu()[first]
            orig = rows[vr0]
            if self.target is None:
                cls = raw[first.to(raw.device)].argmax(1).to(torch.int64).cpu()
            else:
                if self._given is None:  # validates dtype, shape and range against the model's K
                    self._given = resolve_target(self.target, torch.zeros(1, 1).expand(self.b, raw.shape[1])).index
                cls = self._given[orig]
            local[vr0] = cls
            self.index[orig] = cls
            self.seen[orig] = True

        return Target(local), hook

    def finish(self, x: torch.Tensor, engine: MaskingEngine) -> Target:
        """The resolved target; rows no engine call scored (nothing to perturb) get one clean pass."""
        if self.fn is not None:
            return Target(self.index, self.fn)
        missing = (~self.seen).nonzero().flatten()
        if missing.numel():
            raw = engine.forward(x[missing.to(x.device)])
            full = torch.zeros(self.b, raw.shape[1], dtype=raw.dtype, device=raw.device)
            full[missing.to(raw.device)] = raw
            self.index[missing] = resolve_target(self.target, full).index[missing]
        return Target(self.index)


# ---------------------------------------------------------------------------------------------- explainers
def _check_int(name: str, v: Any, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise InvalidParameterError(f"{name} must be an int >= {lo}; got {v!r}.")
    return v


def _describe(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return f"tensor{tuple(v.shape)}"
    if isinstance(v, FeatureGroups):
        return f"FeatureGroups({v.kind}, {tuple(v.groups.shape)}, n_groups={v.n_groups})"
    if isinstance(v, tuple):
        return [_describe(i) for i in v]
    if callable(v) and not isinstance(v, str):
        return getattr(v, "__name__", type(v).__name__)
    return v


def _json_plain(value: Any) -> bool:
    """Whether ``value`` is JSON as it is (numbers, text, None, lists, dicts with text keys): saved and loaded back
    unchanged, so ``Explanation.params`` may hold it."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_json_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


class PerturbationExplainer(Explainer):
    """Base of the perturbation family: cost limit, clean forward and target, fills.

    Parameters
    ----------
    fill
        What a removed feature becomes: ``"zero"`` (default), ``"mean"``, ``"blur"``, ``"uniform"`` (drawn per
        row from ``seed``), a number, a tensor broadcastable to the inputs, or a callable ``x -> tensor``.
    max_evaluations
        The most forward passes one call may spend (all rows together); a request estimated beyond it is
        refused before any model evaluation, with the estimate. ``None``: no limit.
    """

    fill_options: ClassVar[tuple[str, ...]] = FILLS

    def __init__(
        self,
        model: Any,
        *,
        fill: FillLike = "zero",
        max_evaluations: int | None = DEFAULT_MAX_EVALUATIONS,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        fill = packed_option(fill, self.adapter, "fill")  # per input, for a model of several inputs
        note_option_columns(self, "fill", fill)
        if not (coded_later(fill) and coder_of(self.adapter) is not None):  # an estimator's: coded with the inputs
            fill = tensor_option(fill, "fill")  # e.g. fill=X_train.mean(0) as a numpy array or a pandas Series
        if isinstance(fill, str) and fill not in self.fill_options:
            raise InvalidParameterError(
                f"fill must be one of {self.fill_options}, a number, a tensor or a callable; got {fill!r}."
                f"{did_you_mean(fill, self.fill_options)}"
            )
        if max_evaluations is not None:
            _check_int("max_evaluations", max_evaluations)
        self.fill = fill
        self.max_evaluations = max_evaluations

    def _code_options(self, coder: Any) -> None:
        """A reference row given as a pandas Series for an estimator, coded once the inputs have set which columns
        hold text (a Series row may read a category column's values as numbers)."""
        if coded_later(self.fill):
            self.fill = tensor_option(self.fill, "fill", coder)

    def params(self) -> dict[str, Any]:
        """As :meth:`Explainer.params`, with tensors, feature groups and callables described (never printed in
        full) and tuples as lists (a JSON round trip gives the same value back)."""
        out: dict[str, Any] = {}
        for cls in type(self).__mro__:
            init = cls.__dict__.get("__init__")
            if init is None:
                continue
            for p in inspect.signature(init).parameters.values():
                if p.kind is p.KEYWORD_ONLY and p.name not in out and hasattr(self, p.name):
                    v = getattr(self, p.name)
                    if isinstance(v, (bool, int, float, str, type(None), list)):
                        out[p.name] = v
                    elif isinstance(v, dict) and _json_plain(v):  # options of a nested method (LIMA's prior_options)
                        out[p.name] = dict(v)
                    elif isinstance(v, (torch.Tensor, FeatureGroups, tuple)) or callable(v):
                        out[p.name] = _describe(v)
                    else:
                        out[p.name] = repr(v)
        return out

    # ------------------------------------------------------------------ helpers
    def row_generator(self) -> torch.Generator:
        """A fresh generator from this call's seed: every row draws the same stream, whatever its neighbours."""
        return torch.Generator().manual_seed(self._call_seed)

    def _fills(self, x: torch.Tensor, fill: FillLike | None = None) -> torch.Tensor:
        """Fill values shaped like ``x``; random fills are drawn per row from a fresh seeded generator."""
        fill = self.fill if fill is None else fill
        packing = getattr(self.adapter, "packing", None)  # several inputs: each one's own mean / range
        if isinstance(fill, str) and fill == "uniform":
            return torch.cat(
                [make_fill(fill, x[r : r + 1], generator=self.row_generator(), packing=packing) for r in range(len(x))]
            )
        return make_fill(fill, x, packing=packing)

    def _check_cost(self, n: int, what: str) -> None:
        if self.max_evaluations is not None and n > self.max_evaluations:
            raise InvalidParameterError(
                f"{self.name!r} would need about {n:,} forward passes ({what}), more than "
                f"max_evaluations={self.max_evaluations:,}; lower the sample count or the number of features, "
                "or raise max_evaluations (None: no limit)."
            )

    def _clean(self, x: torch.Tensor, target: TargetLike, engine: MaskingEngine) -> tuple[Target, torch.Tensor]:
        """Resolve the target on one clean forward; returns it with the clean scores ``f_c(x)`` ``(B,)`` float64."""
        raw = engine.forward(x)
        tgt = resolve_target(target, raw)
        return tgt, tgt.select(apply_score_space(raw, self.score)).to(F64)


class RegionExplainer(PerturbationExplainer):
    """A perturbation method over interpretable features (regions, columns, token spans).

    Parameters
    ----------
    features
        ``"auto"`` (the method's default on images; ``"columns"`` on ``(B, F)`` rows; on the packed rows of a model
        of several inputs with an image among them, the image in ``patch``-pixel squares and every other value its
        own feature, :meth:`~whybox.models.packed.InputPacking.region_groups`, or for exact Shapley one feature per
        input; one group per scalar otherwise), ``"superpixels"`` (SLIC, ``n_segments``/``compactness``), ``"quickshift"`` (lime_image's
        segmentation), ``"grid"`` (square patches of ``patch`` pixels; default ``ceil(min(H, W) / 8)``),
        ``"pixels"``, ``"columns"``, ``"elements"`` (one group per scalar), a :class:`FeatureGroups`, or an
        integer mask ``(B, *G)``/``(*G)`` with ``G`` broadcasting to one row (``(1, H, W)`` or ``(H, W)``
        for image regions, ``(F,)`` for column groups or token spans; for sequences ``(B, T, D)`` of a model that
        reads time steps (:func:`~whybox.models.adapter.is_sequence`) also one id per step, ``(T,)``, ``(1, T)`` or
        ``(B, T)``, shared by the step's D features, as the metrics and LIMA read region ids: where T == D such a map
        is read per step, with an :class:`~whybox.masking.features.AmbiguousIdsWarning`; per feature is
        ``(1, 1, D)``).
    n_segments, compactness
        SLIC options for ``features="superpixels"``.
    patch
        Patch side (or ``(h, w)``) for ``features="grid"``.

    Shapes
    ------
    Per-feature values come back painted onto the groups: ``(B, 1, H, W)`` for image regions, ``(B, F)``
    for tabular rows; ``meta["values"]`` holds them per feature ``(B, M)`` (M = the largest group id + 1).
    """

    auto_features: ClassVar[str] = "superpixels"
    drops_null_features: ClassVar[bool] = True  # groups equal to the fill everywhere get exactly 0

    def __init__(
        self,
        model: Any,
        *,
        features: FeaturesLike = "auto",
        n_segments: int = 50,
        compactness: float = 10.0,
        patch: int | tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        features = label_map_option(features, "features")  # a mask written as lists (a config, --option)
        if isinstance(features, str) and features not in FEATURE_SPECS:
            raise InvalidParameterError(
                f"features must be one of {FEATURE_SPECS}, a FeatureGroups or an integer mask tensor; got {features!r}."
            )
        if not isinstance(features, (str, FeatureGroups, torch.Tensor)):
            raise InvalidParameterError(
                f"features must be one of {FEATURE_SPECS}, a FeatureGroups or an integer mask tensor; "
                f"got {type(features).__name__}."
            )
        patch = python_numbers(python_number(patch))  # NumPy ints, a pair as an array or a tensor: Python ints
        if patch is not None and not (
            (isinstance(patch, int) and not isinstance(patch, bool) and patch >= 1)
            or (
                isinstance(patch, (tuple, list))
                and len(patch) == 2
                and all(isinstance(p, int) and p >= 1 for p in patch)
            )
        ):
            raise InvalidParameterError(f"patch must be an int >= 1 or a pair of them; got {patch!r}.")
        self.features = features
        self.n_segments, self.compactness = F.slic_options(n_segments, compactness)
        self.patch = tuple(patch) if isinstance(patch, list) else patch

    def _groups(self, x: torch.Tensor) -> FeatureGroups:
        packing = getattr(self.adapter, "packing", None)
        if isinstance(self.features, str) and self.features == "auto" and packing is not None and packing.has_image:
            # a model of several inputs with an image among them: the image in patches, the others value by value;
            # exact Shapley (whose images get a 3 x 3 grid) over the inputs themselves, which input mattered
            ids = packing.input_groups() if self.auto_features == "grid3" else packing.region_groups(self.patch)
            return F.columns(x, groups=ids.to(x.device))
        if isinstance(self.features, str) and packing is not None and packing.has_image and x.ndim == 2:
            if self.features == "grid":  # the image in squares of `patch` pixels, the other inputs value by value
                return F.columns(x, groups=packing.region_groups(self.patch).to(x.device))
            if self.features in ("superpixels", "quickshift", "pixels", "segments"):
                raise InvalidParameterError(
                    f"features={self.features!r} segments images (B, C, H, W); these are the packed rows of a model "
                    "of several inputs: use features='grid' (its image in squares of patch= pixels, the other inputs "
                    "value by value), leave features out, or pass adapter.packing.region_groups(patch) or "
                    "adapter.packing.input_groups()."
                )
        if isinstance(self.features, str) and self.features == "segments" and hasattr(self.adapter, "tokenizer"):
            raise InvalidParameterError(
                "features='segments' cuts time series; a text model's features are its words: use "
                "whybox.explain_text(adapter, texts, method), or pass batch.word_features() as features=."
            )
        return resolve_features(
            self.features,
            x,
            auto=self.auto_features,
            n_segments=self.n_segments,
            compactness=self.compactness,
            patch=self.patch,
            signal=is_signal(self.adapter, x),
            sequence=isinstance(self.features, (torch.Tensor, FeatureGroups)) and is_sequence(self.adapter, x),
        )

    def _regions(self, x: torch.Tensor, fills: torch.Tensor, groups: FeatureGroups | None = None) -> Regions:
        """Feature groups of ``x`` compacted per row (and null features dropped where the method allows)."""
        groups = self._groups(x) if groups is None else groups
        return make_regions(groups, x, fills if self._drops_null() else None)

    def _drops_null(self) -> bool:
        """Whether features equal to the fill everywhere are left out (exactly 0); LIME's ``keep_null`` decides."""
        return self.drops_null_features

    def _region_scores(
        self,
        engine: MaskingEngine,
        x: torch.Tensor,
        fills: torch.Tensor,
        tgt: Target | FirstMaskTarget,
        regions: Regions,
        designs: Mapping[int, tuple[int, Callable[..., torch.Tensor]]],
    ) -> dict[int, torch.Tensor]:
        """Score every row's coalitions in one engine call: rows with different M share chunks (ragged counts).

        ``designs[m] = (n_m, fn)``: a row with M_r = m is scored on the group masks ``fn(ks)`` ``(n, m)`` bool
        for ``ks < n_m`` (draws shared by every row of that size). ``fills`` is ``(B, R, *S)``: with R > 1 (a
        background set) each coalition is scored against every fill row and the scores are averaged. ``tgt`` is
        a resolved target, or a :class:`FirstMaskTarget` when every design's mask 0 is the unperturbed row.

        Returns ``{m: (len(rows), n_m) float64}``, rows in the order of ``regions.by_size()[m]``.
        """
        sizes = regions.sizes
        rows = [r for r, m in enumerate(sizes) if m > 0 and designs.get(m, (0,))[0] > 0]
        if not rows:
            return {}
        dev, rep = x.device, fills.shape[1]
        idx = torch.as_tensor(rows, device=dev)
        xs = x[idx].repeat_interleave(rep, 0) if rep > 1 else x[idx]
        fs = fills[idx].flatten(0, 1)
        hook = None
        if isinstance(tgt, FirstMaskTarget):
            t, hook = tgt.engine_target(idx.repeat_interleave(rep) if rep > 1 else idx)
        else:
            t_idx = tgt.index[idx.cpu()]
            t = Target(t_idx.repeat_interleave(rep) if rep > 1 else t_idx, tgt.fn)
        m_row = torch.tensor([sizes[r] for r in rows]).repeat_interleave(rep)
        counts = torch.tensor([designs[sizes[r]][0] for r in rows]).repeat_interleave(rep)
        local = regions.local[idx].repeat_interleave(rep, 0) if rep > 1 else regions.local[idx]
        mmax = max(sizes[r] for r in rows)
        fg = FeatureGroups(local, mmax, regions.groups.kind)

        def render(vr: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
            ms = m_row[vr.cpu()]
            gm = torch.ones(vr.shape[0], mmax, dtype=torch.bool, device=dev)
            for m in torch.unique(ms).tolist():  # usually one size per chunk
                sel = (ms == m).nonzero().flatten().to(dev)
                gm[sel, :m] = designs[m][1](ks[sel]).to(dev)
            return fg.expand(gm, vr)

        s = engine.scores(xs, render, n_masks=counts, fill=fs, target=t, score=self.score, on_scores=hook)
        if rep > 1:
            s = s.view(len(rows), rep, -1).mean(1)
        pos = {r: i for i, r in enumerate(rows)}
        return {
            m: s[[pos[r] for r in rs], : designs[m][0]]
            for m, rs in regions.by_size().items()
            if m > 0 and designs.get(m, (0,))[0] > 0
        }


def _checked_background(background: Any) -> torch.Tensor | None:
    """``background`` as reference rows ``(R, *S)``, finite, or an error naming it."""
    if background is None:
        return None
    if not isinstance(background, torch.Tensor) or background.ndim < 2 or background.shape[0] < 1:
        got = tuple(background.shape) if isinstance(background, torch.Tensor) else type(background).__name__
        raise InvalidParameterError(f"background must be a tensor of reference rows (R, *S) with R >= 1; got {got}.")
    if not bool(torch.isfinite(background).all()):
        raise InvalidParameterError("background contains non-finite values (NaN or inf).")
    return background


class ShapleyExplainer(RegionExplainer):
    """Shapley-value methods over interpretable features, v(S) = f_c(x_S, b_S̄).

    Parameters
    ----------
    fill
        The baseline b (baseline Shapley, captum's semantics); zero by default.
    background
        ``(R, *S)`` reference rows instead (a tensor, numpy array or DataFrame): v(S) is the mean over them of
        f_c(x_S, b^(r)_S̄) (interventional, as ``shap.KernelExplainer(model, data)``); every coalition then costs
        R forward passes.

    Features equal to the baseline (to every background row) in all their elements are null players: they
    get exactly 0 and are left out of M, as shap does.
    """

    def __init__(self, model: Any, *, background: torch.Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        background = packed_option(
            background, self.adapter, "background"
        )  # rows per input, for a model of several inputs
        note_option_columns(self, "background", background)
        # an estimator's DataFrame (or list with text) is coded with the inputs, in _code_options
        if not (coded_later(background) and coder_of(self.adapter) is not None):
            background = _checked_background(tensor_option(background, "background"))  # e.g. X_train[:50]
        if background is not None and not (isinstance(self.fill, str) and self.fill == "zero"):
            raise InvalidParameterError("pass either fill= (one baseline) or background= (reference rows), not both.")
        self.background = background

    def _code_options(self, coder: Any) -> None:
        super()._code_options(coder)
        # a DataFrame (or a list with text) of reference rows for an estimator, coded as the inputs are
        if coded_later(self.background):
            self.background = _checked_background(tensor_option(self.background, "background", coder))

    def _value_fills(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, R, *S)``: the baseline (R = 1) or the background rows, for every input row."""
        if self.background is None:
            return self._fills(x).unsqueeze(1)
        bg = self.background.to(device=x.device, dtype=x.dtype)
        if tuple(bg.shape[1:]) != tuple(x.shape[1:]):
            raise InvalidParameterError(
                f"background rows have shape {tuple(bg.shape[1:])} but input rows {tuple(x.shape[1:])}."
            )
        return bg.unsqueeze(0).expand(x.shape[0], *bg.shape)


def shapley_weights(m: int) -> torch.Tensor:
    """``(m,)`` float64: |S|!(m-|S|-1)!/m! for |S| = 0..m-1, via lgamma."""
    s = torch.arange(m, dtype=F64)
    return torch.exp(torch.lgamma(s + 1) + torch.lgamma(m - s) - math.lgamma(m + 1))
