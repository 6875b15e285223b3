"""Feature groups: a map from every input element to one of M interpretable features.

``FeatureGroups.groups`` is ``(B, *G)`` int64 with values in ``0..M-1`` where ``G`` broadcasts to one
input row (``(1, H, W)`` for image regions shared by all channels, ``(F,)`` for tabular columns).
Different rows may use fewer than M groups (superpixels); unused ids simply cover nothing.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import torch

from whybox.errors import InvalidInputError, InvalidParameterError

__all__ = [
    "AmbiguousIdsWarning",
    "FeatureGroups",
    "broadcast_ids",
    "cells",
    "columns",
    "grid",
    "pixels",
    "segments",
    "step_ids",
    "superpixels",
]


@dataclass(frozen=True)
class FeatureGroups:
    groups: torch.Tensor  # (B, *G) int64
    n_groups: int  # M (max over rows)
    kind: str

    def expand(self, masks: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Element masks for group masks ``masks`` ``(n, M)`` of input rows ``rows`` ``(n,)`` -> ``(n, *G)``."""
        g = self.groups[rows]  # (n, *G)
        flat = g.reshape(g.shape[0], -1)
        out = masks.gather(1, flat)
        return out.reshape(g.shape)

    def sizes(self) -> torch.Tensor:
        """``(B, M)`` number of elements in each group."""
        flat = self.groups.reshape(self.groups.shape[0], -1)
        out = torch.zeros(flat.shape[0], self.n_groups, dtype=torch.int64, device=flat.device)
        return out.scatter_add_(1, flat, torch.ones_like(flat))


def groups_touched(groups: FeatureGroups, changed: torch.Tensor) -> torch.Tensor:
    """``(B, M)`` bool: the groups holding at least one element where ``changed`` (bool, shaped like the input
    ``(B, *S)``) holds; e.g. ``changed = x != fill`` marks the groups whose perturbation changes the input."""
    b = changed.shape[0]
    g = groups.groups.to(changed.device)
    g_full = g.expand(changed.shape) if g.shape != changed.shape else g
    out = torch.zeros(b, groups.n_groups, dtype=torch.int64, device=changed.device)
    out.scatter_add_(1, g_full.reshape(b, -1), changed.reshape(b, -1).to(torch.int64))
    return out > 0


def _disjoint(g: torch.Tensor) -> bool:
    """Whether the id sets of ``g``'s first-axis slices are pairwise disjoint (a per-channel feature mask)."""
    seen: set[int] = set()
    for part in g:
        ids = set(torch.unique(part).tolist())
        if seen & ids:
            return False
        seen |= ids
    return True


class AmbiguousIdsWarning(UserWarning):
    """Feature ids ``(B, H, W)`` given with as many rows as channels: per-row maps or one per-channel map."""


def broadcast_ids(ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """Integer ids ``(B, *G)``, ``(1, *G)`` or ``(*G)`` (images also ``(H, W)`` and ``(B, H, W)``, 1-D signals ``(L,)``
    and ``(B, L)``: shared by the channels) as ``(B, *G)`` int64 on x's device,
    G broadcasting to one input row; ``None`` when they do not fit ``x`` (callers word the error)."""
    g = ids.to(device=x.device, dtype=torch.int64)
    if x.ndim >= 3 and g.ndim == x.ndim - 1 and g.shape[0] == x.shape[0] and tuple(g.shape[1:]) == tuple(x.shape[2:]):
        if x.shape[0] == x.shape[1] > 1 and _disjoint(g):  # per-channel groups (each channel its own ids, unlike
            # per-row maps, which reuse one id range) that also read as per-row maps: say which reading is taken
            import warnings

            warnings.warn(
                f"feature ids of shape {tuple(ids.shape)} for {x.shape[0]} inputs of {x.shape[1]} channels are read as "
                f"one map per input row, shared by its channels; for one per-channel map shared by every row pass "
                f"them as (1, {', '.join(map(str, g.shape))}), for one map per row as ({x.shape[0]}, 1, "
                f"{', '.join(map(str, g.shape[1:]))}) (either silences this).",
                AmbiguousIdsWarning,
                stacklevel=3,
            )
        g = g.unsqueeze(1)  # (B, H, W) of images, (B, L) of signals: one map per row, shared by its channels
    elif 1 <= g.ndim < x.ndim - 1:
        g = g.view(*([1] * (x.ndim - g.ndim)), *g.shape)  # (H, W) of images, (L,) of signals: shared by all
    if g.ndim == x.ndim - 1:
        g = g.unsqueeze(0)
    if g.ndim != x.ndim or g.shape[0] not in (1, x.shape[0]):
        return None
    if any(gs not in (1, xs) for gs, xs in zip(g.shape[1:], x.shape[1:], strict=True)):
        return None
    return g.expand(x.shape[0], *g.shape[1:]).contiguous()


def step_ids(ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """Region ids of a sequence ``x`` ``(B, T, D)`` given one per time step, ``(T,)``, ``(1, T)`` or ``(B, T)``, as
    ``(n, T, 1)`` (shared by the step's D features); ``None`` for ids of another form (``(B, T, 1)``, per element
    ``(T, D)`` or ``(B, T, D)``, per feature ``(1, 1, D)``), which broadcast as they are. Where T == D a 1-D,
    one-row or (B, T) map could also be per feature: it is read per step, with an :class:`AmbiguousIdsWarning`."""
    t, d = x.shape[1], x.shape[2]
    one_row = ids.ndim == 1 or (ids.ndim == 2 and ids.shape[0] == 1)
    if not (
        (ids.ndim == 1 and ids.shape[0] == t)
        or (ids.ndim == 2 and ids.shape[1] == t and ids.shape[0] in (1, x.shape[0]))
    ):
        return None
    if t == d and (one_row or ids.shape[0] == x.shape[0]):  # (B, T) or (B, D): either reading fits
        import warnings

        from whybox.models._guard import _user_stacklevel

        warnings.warn(
            f"region ids of shape {tuple(ids.shape)} for sequences of {t} steps of {d} features are read one per time "
            f"step; for ids per feature, shared by the steps, pass them as (1, 1, {d}) (one map for all rows) or "
            f"({x.shape[0]}, 1, {d}) (one per row).",
            AmbiguousIdsWarning,
            stacklevel=_user_stacklevel(),
        )
    return ids.reshape(-1, t, 1)


def _image(x: torch.Tensor, what: str) -> None:
    if x.ndim != 4:
        raise InvalidInputError(f"{what} needs images (B, C, H, W); got inputs of shape {tuple(x.shape)}.")


def _int_pair(name: str, value: Any) -> tuple[int, int]:
    """``value`` as ``(rows, cols)``: an int >= 1 for both, or a pair of them."""
    pair = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    ok = len(pair) == 2 and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= 1 for v in pair
    )
    if not ok:
        raise InvalidParameterError(f"{name} must be an int >= 1 or a pair (rows, cols) of them; got {value!r}.")
    return int(pair[0]), int(pair[1])


def pixels(x: torch.Tensor) -> FeatureGroups:
    """One group per pixel position (all channels together)."""
    _image(x, "pixels()")
    b, _, h, w = x.shape
    g = torch.arange(h * w, device=x.device).view(1, 1, h, w).expand(b, 1, h, w).contiguous()
    return FeatureGroups(g, h * w, "pixels")


def grid(x: torch.Tensor, *, patch: int | tuple[int, int]) -> FeatureGroups:
    """Square (or ``(ph, pw)``) patches in raster order; border patches are cut."""
    _image(x, "grid()")
    ph, pw = _int_pair("patch", patch)
    b, _, h, w = x.shape
    rows = torch.arange(h, device=x.device) // ph
    cols = torch.arange(w, device=x.device) // pw
    ncols = (w + pw - 1) // pw
    g = (rows.view(-1, 1) * ncols + cols.view(1, -1)).view(1, 1, h, w).expand(b, 1, h, w).contiguous()
    return FeatureGroups(g, int(((h + ph - 1) // ph) * ncols), "grid")


def cells(x: torch.Tensor, *, n: int | tuple[int, int]) -> FeatureGroups:
    """An ``n x n`` (or ``(nh, nw)``) grid of near-equal cells covering the image, in raster order.

    Pixel row ``i`` belongs to cell row ``floor(i * nh / H)`` (likewise for columns), so every cell has
    ``floor`` or ``ceil`` of ``H / nh`` rows; ``nh`` and ``nw`` are clamped to ``H`` and ``W``.
    """
    _image(x, "cells()")
    nh, nw = _int_pair("n", n)
    b, _, h, w = x.shape
    nh, nw = min(nh, h), min(nw, w)
    rows = torch.arange(h, device=x.device) * nh // h
    cols = torch.arange(w, device=x.device) * nw // w
    g = (rows.view(-1, 1) * nw + cols.view(1, -1)).view(1, 1, h, w).expand(b, 1, h, w).contiguous()
    return FeatureGroups(g, nh * nw, "cells")


def slic_options(n_segments: Any, compactness: Any) -> tuple[int, float]:
    """SLIC's ``n_segments`` (an int >= 1) and ``compactness`` (a number > 0) checked, as Python numbers: the check
    of :func:`superpixels` and of the explainers' options of the same names."""
    if isinstance(n_segments, bool) or not isinstance(n_segments, numbers.Integral) or n_segments < 1:
        raise InvalidParameterError(f"n_segments must be an int >= 1; got {n_segments!r}.")
    if isinstance(compactness, bool) or not isinstance(compactness, numbers.Real) or not float(compactness) > 0:
        raise InvalidParameterError(f"compactness must be a number > 0; got {compactness!r}.")
    return int(n_segments), float(compactness)


def superpixels(
    x: torch.Tensor,
    *,
    n_segments: int = 50,
    compactness: float = 10.0,
    slic_zero: bool = False,
    image: torch.Tensor | None = None,
) -> FeatureGroups:
    """SLIC (or SLICO with ``slic_zero=True``) superpixels from scikit-image, one segmentation per row.

    ``image`` is the picture to segment, ``(B, C, H, W)`` in any range (defaults to ``x``); each row is
    min-max scaled before segmentation.

    On noise (``torch.rand`` test images, grainy textures) SLIC's colour distances dominate and its connectivity
    step merges everything into a segment or two, which leaves an explainer one feature. A row that gets fewer
    than ``max(2, n_segments // 10)`` segments is segmented again with ``compactness`` x 10, then x 100 (space
    weighs more, the segments come out near-square), keeping the first that reaches it. Natural images keep
    ``compactness`` as given.

    Raises
    ------
    InvalidParameterError
        ``n_segments`` not an int >= 1, ``compactness`` not a number > 0, or ``image`` not the inputs' pictures.
    """
    _image(x, "superpixels()")
    n_segments, compactness = slic_options(n_segments, compactness)
    import numpy as np
    from skimage.segmentation import slic

    if image is not None:
        if not isinstance(image, torch.Tensor) or image.ndim != 4:
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise InvalidParameterError(f"image must be a tensor (B, C, H, W) to segment; got {got}.")
        if (image.shape[0], *image.shape[2:]) != (x.shape[0], *x.shape[2:]):
            raise InvalidParameterError(
                f"image must be the inputs' pictures, {x.shape[0]} of {x.shape[2]} x {x.shape[3]} pixels (any "
                f"channels), for groups that fit the inputs {tuple(x.shape)}; got {tuple(image.shape)}."
            )
    src = (image if image is not None else x).detach().to("cpu", torch.float64)
    out = []
    for row in src:
        lo, hi = row.min(), row.max()
        arr = ((row - lo) / (hi - lo + 1e-12)).permute(1, 2, 0).numpy()
        ch = arr.shape[2]
        enough = max(2, n_segments // 10)
        for c in (compactness, compactness * 10, compactness * 100):
            seg = slic(
                arr if ch in (1, 3) else arr.mean(2, keepdims=True),
                n_segments=n_segments,
                compactness=c,
                slic_zero=slic_zero,
                start_label=0,
                channel_axis=-1,
                enforce_connectivity=True,
            )
            if slic_zero or len(np.unique(seg)) >= enough:
                break
        _, seg = np.unique(seg, return_inverse=True)  # consecutive ids 0..m-1
        out.append(torch.from_numpy(seg.reshape(arr.shape[:2]).astype(np.int64)))
    g = torch.stack(out).unsqueeze(1).to(x.device)
    return FeatureGroups(g, int(g.max().item()) + 1, "superpixels")


def segments(
    x: torch.Tensor, *, n: int = 16, length: int | None = None, time_axis: int = 2, name: str = "length"
) -> FeatureGroups:
    """Contiguous windows of time steps, each shared by all channels: along the last axis of 1-D signals
    ``(B, C, L)`` (``time_axis=2``, groups ``(B, 1, L)``), or along axis 1 of sequences ``(B, T, D)`` of features per
    time step, as an RNN or a transformer reads them (``time_axis=1``, groups ``(B, T, 1)``).

    ``length`` steps per window (the last one cut at the end), else ``n`` near-equal windows: step ``i`` belongs to
    window ``floor(i * n / L)`` (``n`` clamped to the number of steps). ``name`` is what an error calls ``length``
    (the option a caller took it from, e.g. an explainer's ``patch``)."""
    if x.ndim != 3 or time_axis not in (1, 2):
        raise InvalidInputError(
            f"segments() needs 1-D signals (B, C, L) or sequences (B, T, D); got inputs of shape {tuple(x.shape)}."
        )
    b, l_ = x.shape[0], x.shape[time_axis]
    if length is not None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise InvalidParameterError(f"{name} (the window length for segments) must be an int >= 1; got {length!r}.")
        ids = torch.arange(l_, device=x.device) // length
        m = -(-l_ // length)
    else:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidParameterError(f"n must be an int >= 1; got {n!r}.")
        m = min(n, l_)
        ids = torch.arange(l_, device=x.device) * m // l_
    shape = (b, 1, l_) if time_axis == 2 else (b, l_, 1)
    return FeatureGroups(ids.view(1, *shape[1:]).expand(shape).contiguous(), int(m), "segments")


def columns(x: torch.Tensor, *, groups: torch.Tensor | None = None) -> FeatureGroups:
    """Tabular rows ``(B, F)``: one group per column, or the column-to-group map ``groups`` ``(F,)``."""
    if x.ndim != 2:
        raise InvalidInputError(f"columns() needs tabular rows (B, F); got inputs of shape {tuple(x.shape)}.")
    b, f = x.shape
    if f == 0:
        raise InvalidInputError(
            f"columns() needs rows of at least one column (feature) to group; got inputs of shape {tuple(x.shape)}."
        )
    if groups is None:
        g = torch.arange(f, device=x.device)
    else:
        raw = torch.as_tensor(groups, device=x.device)
        if raw.is_floating_point() or raw.is_complex() or raw.dtype == torch.bool:
            raise InvalidParameterError(f"groups must hold integer group ids, one per column; got dtype {raw.dtype}.")
        g = raw.to(torch.int64)
        if g.shape != (f,):
            raise InvalidParameterError(f"groups must have shape ({f},); got {tuple(g.shape)}.")
        if int(g.min()) < 0:
            raise InvalidParameterError(
                f"groups must be ids >= 0 (column j belongs to group groups[j]); got {g.tolist()[:20]}. Number the "
                "groups 0, 1, 2, ..."
            )
    return FeatureGroups(g.unsqueeze(0).expand(b, f).contiguous(), int(g.max().item()) + 1, "columns")
