"""Region builders for LIMA: every one returns a checked partition of each input row (LIMA.md, Regions).

A partition is an integer label map ``(B, *G)`` (``G`` broadcasting to one input row: ``(1, H, W)`` for image
regions shared by the channels, ``(F,)`` for columns or token spans) with the ids ``0..N_b-1`` of row ``b``
all used. One label per element makes the regions disjoint, and every element having a label in range makes
them cover the input: :func:`check_partition` verifies both, and every builder ends with it. The reference
code's overlapping (SAM-style) masks made ``I - merge(S)`` underflow; :func:`from_masks` refuses them.

Builders
--------
``superpixels``
    SLICO (scikit-image ``slic(..., slic_zero=True)``), about ``n_regions`` (default 49) per image.
``seeds``
    A SEEDS-like partition written here (scikit-image has no SEEDS): it starts from the regular grid of
    ``round(sqrt(n_regions))**2`` blocks and moves boundary pixels to the adjacent region whose mean colour
    (plus a small SLIC-like distance term to its centroid) is closest, for a few checkerboard sweeps. It is
    *not* the SEEDS algorithm (no colour histograms, no block-level moves, connectivity not enforced);
    it keeps what SEEDS is used for in LIMA: a near-regular count of colour-coherent regions.
``prior``
    Prior-guided patches (the ICLR setting): a cheap prior map, resized to a ``G x G`` grid of cells,
    cells sorted by prior value (highest first), region ``k`` = cells ``k*d .. k*d + d - 1`` (regions may
    be non-contiguous). Defaults here: ``G = 14``, ``d = 4`` -> 49 regions (the ICLR paper used CUB
    ``G = 10, d = 4`` and faces ``G = 28, d = 8``).
``grid``
    ``round(sqrt(n_regions))`` x ``round(sqrt(n_regions))`` near-equal cells (7 x 7 = 49 by default).
``columns``
    Tabular rows ``(B, F)``: one region per column, or column groups ``(F,)``.
``spans``
    Token rows ``(B, T)``: explicit spans ``[(start, stop), ...]`` or per-token group ids ``(T,)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from whybox.errors import InvalidInputError, InvalidParameterError
from whybox.masking import features as F

__all__ = [
    "REGION_BUILDERS",
    "RegionMap",
    "check_partition",
    "columns",
    "from_label_map",
    "from_masks",
    "grid",
    "prior_patches",
    "seeds",
    "segments",
    "spans",
    "superpixels",
]

REGION_BUILDERS = ("auto", "superpixels", "seeds", "prior", "grid", "segments", "columns", "spans")


@dataclass(frozen=True)
class RegionMap:
    """A checked partition: ``labels`` ``(B, *G)`` int64 with ids ``0..n_regions[b]-1`` in row ``b``, all used."""

    labels: torch.Tensor
    n_regions: list[int]
    kind: str

    @property
    def n_max(self) -> int:
        return max(self.n_regions)


# ---------------------------------------------------------------------------------------------- checks
def _compact(labels: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Per row, map the used ids to ``0..n-1`` in increasing order; returns (labels, counts)."""
    out = torch.empty_like(labels)
    counts = []
    for b in range(labels.shape[0]):
        uniq, inv = torch.unique(labels[b], return_inverse=True)
        out[b] = inv
        counts.append(int(uniq.numel()))
    return out, counts


def check_partition(labels: torch.Tensor, n_regions: Sequence[int], x: torch.Tensor, kind: str = "regions") -> None:
    """Raise unless ``labels`` ``(B, *G)`` is a partition of every row of ``x``: ``G`` broadcasts to one row,
    every label of row ``b`` lies in ``0..n_regions[b]-1`` (covering: no element left out) and every such id
    is used (no empty region). Disjointness holds by construction (one label per element)."""
    if labels.dtype != torch.int64:
        raise InvalidParameterError(f"{kind}: a label map must be int64; got {labels.dtype}.")
    b = x.shape[0]
    ok = labels.ndim == x.ndim and labels.shape[0] == b and len(n_regions) == b
    if ok:
        try:
            ok = torch.broadcast_shapes(tuple(labels.shape[1:]), tuple(x.shape[1:])) == tuple(x.shape[1:])
        except RuntimeError:
            ok = False
    if not ok:
        raise InvalidParameterError(
            f"{kind}: label map of shape {tuple(labels.shape)} does not fit inputs {tuple(x.shape)}; it must be "
            "(B, *G) with G broadcasting to one input row, e.g. (B, 1, H, W) for image regions."
        )
    flat = labels.reshape(b, -1)
    for r in range(b):
        n = int(n_regions[r])
        lo, hi = int(flat[r].min()), int(flat[r].max())
        if n < 1 or lo < 0 or hi >= n:
            raise InvalidParameterError(
                f"{kind}: row {r} has labels in {lo}..{hi} but {n} regions; every element needs a label in "
                f"0..{n - 1} (regions must cover the input)."
            )
        used = torch.zeros(n, dtype=torch.bool, device=flat.device)
        used[flat[r]] = True
        if not bool(used.all()):
            empty = (~used).nonzero().flatten().tolist()
            raise InvalidParameterError(
                f"{kind}: row {r} has empty regions {empty[:10]}; ids must be 0..{n - 1}, all used."
            )


def _finish(labels: torch.Tensor, x: torch.Tensor, kind: str) -> RegionMap:
    labels, counts = _compact(labels.to(torch.int64))
    check_partition(labels, counts, x, kind)
    return RegionMap(labels, counts, kind)


def merge_null(region_map: RegionMap, x: torch.Tensor, fills: torch.Tensor) -> tuple[RegionMap, torch.Tensor]:
    """``(region_map with each row's null regions merged into its first other region, null elements (B, *G))``.

    A null region is one whose every element already equals its fill (a text's CLS, SEP and pads, which the fill
    keeps): keeping or removing it leaves the input as it is, so the search's scores are the same with it merged
    into another region, and it is no candidate (no passes, no rank). Its elements get attribution 0 (the caller
    zeroes ``null``). A row whose regions are all null is left as it is."""
    labels = region_map.labels
    b = labels.shape[0]
    groups = F.FeatureGroups(labels, region_map.n_max, "regions")
    touched = F.groups_touched(groups, x != fills).cpu()  # (B, M): regions the fill changes
    flat = labels.reshape(b, -1)
    null_elements = torch.zeros_like(flat, dtype=torch.bool)
    merged = flat.clone()
    for r, n in enumerate(region_map.n_regions):
        live = touched[r, :n]
        if bool(live.all()) or not bool(live.any()):
            continue
        first = int(live.nonzero()[0])
        dead = (~live).nonzero().flatten().to(flat.device)
        hit = torch.isin(flat[r], dead)
        null_elements[r] = hit
        merged[r] = torch.where(hit, torch.full_like(flat[r], first), flat[r])
    if not bool(null_elements.any()):
        return region_map, null_elements.view(labels.shape)
    return _finish(merged.view(labels.shape), x, region_map.kind), null_elements.view(labels.shape)


def from_label_map(labels: Any, x: torch.Tensor, *, sequence: bool = False) -> RegionMap:
    """A user's integer label map as a checked partition.

    Accepts ``(B, *G)``, ``(*G)`` (shared by the rows) or ``(H, W)`` for images, and for sequences ``(B, T, D)``
    (``sequence``) ids per time step ``(B, T)``, ``(1, T)`` or ``(T,)`` (:func:`whybox.masking.step_ids`, as the
    metrics read them); ids are compacted per row to
    ``0..N_b-1`` in increasing order (``meta["regions"]`` holds the compacted map). Negative ids mean an
    element belongs to no region and are refused, as are maps that do not fit the inputs.
    """
    if not isinstance(labels, torch.Tensor):
        raise InvalidParameterError(
            f"regions must be a builder name {REGION_BUILDERS}, an integer label map or a bool mask stack; "
            f"got {type(labels).__name__}."
        )
    if labels.dtype == torch.bool:
        return from_masks(labels, x)
    if labels.is_floating_point() or labels.is_complex():
        raise InvalidParameterError(f"regions: a label map must hold integer region ids; got dtype {labels.dtype}.")
    per_step = F.step_ids(labels, x) if sequence and x.ndim == 3 else None
    g = F.broadcast_ids(labels if per_step is None else per_step, x)
    if g is None:
        raise InvalidParameterError(
            f"regions: label map of shape {tuple(labels.shape)} does not fit inputs {tuple(x.shape)}; pass "
            "(B, *G) or (*G) region ids with G broadcasting to one input row ((H, W) or (1, H, W) for images)."
        )
    if g.numel() and int(g.min()) < 0:
        raise InvalidParameterError(
            f"regions: label map has negative ids (min {int(g.min())}), i.e. elements in no region; regions must "
            "cover the input: give every element an id >= 0."
        )
    return _finish(g, x, "user")


def from_masks(masks: torch.Tensor, x: torch.Tensor) -> RegionMap:
    """Region masks ``(N, *G)`` (shared; for images ``(N, H, W)`` or ``(N, 1, H, W)``) or ``(B, N, *G)`` bool as a
    partition; refused unless every element is in exactly one mask (overlapping masks, e.g. from SAM, would make ``I - merge(S)`` meaningless)."""
    m = masks.to(x.device)
    if x.ndim == 4 and m.ndim == 4 and m.shape[1] == 1 and m.shape[0] > 1:
        m = m[:, 0]  # (N, 1, H, W): N masks in the label maps' image form (B, 1, H, W) would be one mask per row
    if x.ndim == 4 and m.ndim in (3, 4):  # (N, H, W) or (B, N, H, W): one channel-shared region map
        m = m.unsqueeze(-3)
    if m.ndim == x.ndim:
        m = m.unsqueeze(0)
    fits = m.ndim == x.ndim + 1 and m.shape[0] in (1, x.shape[0])
    if fits:
        try:
            fits = torch.broadcast_shapes(tuple(m.shape[2:]), tuple(x.shape[1:])) == tuple(x.shape[1:])
        except RuntimeError:
            fits = False
    if not fits:
        raise InvalidParameterError(
            f"regions: mask stack of shape {tuple(masks.shape)} does not fit inputs {tuple(x.shape)}; pass "
            "(N, *G) or (B, N, *G) bool masks ((N, H, W) or (N, 1, H, W) for images)."
        )
    count = m.sum(1)
    over, under = int((count > 1).sum()), int((count == 0).sum())
    if over or under:
        raise InvalidParameterError(
            f"regions: the masks must be disjoint and cover the input; {over} elements are in several masks and "
            f"{under} in none. Make them a partition (e.g. assign each element to one mask, add a 'rest' mask)."
        )
    labels = m.to(torch.int64).argmax(1).expand(x.shape[0], *m.shape[2:]).contiguous()
    return _finish(labels, x, "masks")


# ---------------------------------------------------------------------------------------------- signals
def segments(x: torch.Tensor, *, n_regions: int = 49, time_axis: int = 2) -> RegionMap:
    """``n_regions`` near-equal windows of time steps, shared by all channels (clamped to the number of steps): along
    the last axis of 1-D signals ``(B, C, L)``, or along axis 1 of sequences ``(B, T, D)`` with ``time_axis=1``."""
    if x.ndim != 3:
        raise InvalidInputError(
            f"regions='segments' needs 1-D signals (B, C, L) or sequences (B, T, D); got inputs of shape "
            f"{tuple(x.shape)}."
        )
    return _finish(F.segments(x, n=_check_n(n_regions), time_axis=time_axis).groups, x, "segments")


# ---------------------------------------------------------------------------------------------- images
def _image(x: torch.Tensor, what: str) -> None:
    if x.ndim != 4:
        raise InvalidInputError(
            f"regions={what!r} needs images (B, C, H, W); got inputs of shape {tuple(x.shape)}. Use "
            + (
                "regions='segments' (windows along time; 'grid' is the same there) for 1-D signals and sequences, "
                "'spans' for a text's tokens, or pass a label map."
                if x.ndim == 3
                else "regions='columns' or 'spans' for (B, F) rows, or pass a label map."
            )
        )


def _check_n(n_regions: Any) -> int:
    if isinstance(n_regions, bool) or not isinstance(n_regions, int) or n_regions < 1:
        raise InvalidParameterError(f"n_regions must be an int >= 1; got {n_regions!r}.")
    return n_regions


def superpixels(x: torch.Tensor, *, n_regions: int = 49, compactness: float = 10.0) -> RegionMap:
    """SLICO superpixels (``slic(..., slic_zero=True)``) of each row, min-max scaled; about ``n_regions``."""
    _image(x, "superpixels")
    groups = F.superpixels(x, n_segments=_check_n(n_regions), compactness=compactness, slic_zero=True)
    return _finish(groups.groups, x, "superpixels")


def grid(x: torch.Tensor, *, n_regions: int = 49) -> RegionMap:
    """``n x n`` near-equal cells with ``n = round(sqrt(n_regions))`` (clamped to the image size)."""
    _image(x, "grid")
    n = max(1, round(math.sqrt(_check_n(n_regions))))
    return _finish(F.cells(x, n=n).groups, x, "grid")


def _row01(row: torch.Tensor) -> torch.Tensor:
    lo, hi = row.min(), row.max()
    return (row - lo) / (hi - lo + 1e-12)


def seeds(x: torch.Tensor, *, n_regions: int = 49, n_iter: int = 6, compactness: float = 10.0) -> RegionMap:
    """SEEDS-like regions: grid blocks refined by moving boundary pixels to the closest adjacent region.

    Not SEEDS itself (see the module docstring): each sweep computes every region's mean colour and centroid,
    and each pixel of one checkerboard colour takes, among its own label and its 4 neighbours', the label
    minimising ``|colour - mean|^2 + (compactness / 100)^2 * (distance to centroid / S)^2`` (``S`` = the initial
    block side). Colours are each row min-max scaled to [0, 1]. Deterministic; about ``n_regions`` regions
    (never more than the initial blocks; a region emptied by the moves disappears).
    """
    _image(x, "seeds")
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
        raise InvalidParameterError(f"n_iter must be an int >= 0; got {n_iter!r}.")
    init = F.cells(x, n=max(1, round(math.sqrt(_check_n(n_regions))))).groups[:, 0]  # (B, H, W)
    _, _, h, w = x.shape
    step = math.sqrt(h * w / max(1, int(init.max()) + 1))
    wd = (compactness / 100.0) ** 2 / (step * step)
    ys = torch.arange(h, dtype=torch.float64).view(h, 1).expand(h, w)
    xs = torch.arange(w, dtype=torch.float64).view(1, w).expand(h, w)
    pos = torch.stack([ys, xs])  # (2, H, W)
    parity = ((torch.arange(h).view(h, 1) + torch.arange(w).view(1, w)) % 2).bool()
    out = []
    for r in range(x.shape[0]):
        img = _row01(x[r].detach().to("cpu", torch.float64))  # (C, H, W)
        lab = init[r].to("cpu").clone()
        n = int(lab.max()) + 1
        feats = torch.cat([img, pos]).reshape(img.shape[0] + 2, -1)  # (C + 2, HW)
        for _ in range(n_iter):
            for par in (False, True):
                flat = lab.reshape(-1)
                cnt = torch.zeros(n, dtype=torch.float64).index_add_(0, flat, torch.ones(h * w, dtype=torch.float64))
                sums = torch.zeros(n, feats.shape[0], dtype=torch.float64).index_add_(0, flat, feats.T)
                mean = sums / cnt.clamp_min(1).view(-1, 1)  # (n, C + 2)
                pad = torch.nn.functional.pad(lab.view(1, 1, h, w).double(), (1, 1, 1, 1), mode="replicate")[0, 0]
                cand = torch.stack(
                    [lab, pad[:-2, 1:-1].long(), pad[2:, 1:-1].long(), pad[1:-1, :-2].long(), pad[1:-1, 2:].long()]
                )  # (5, H, W): own label first, so ties keep it
                mc = mean[cand]  # (5, H, W, C + 2)
                col = (img.permute(1, 2, 0).unsqueeze(0) - mc[..., :-2]).pow(2).sum(-1)
                dist = (pos.permute(1, 2, 0).unsqueeze(0) - mc[..., -2:]).pow(2).sum(-1)
                best = (col + wd * dist).argmin(0, keepdim=True)
                new = cand.gather(0, best)[0]
                lab = torch.where(parity == par, new, lab)
        out.append(lab)
    labels = torch.stack(out).unsqueeze(1).to(x.device)
    return _finish(labels, x, "seeds")


def prior_patches(prior: torch.Tensor, x: torch.Tensor, *, grid_size: int = 14, cells_per_region: int = 4) -> RegionMap:
    """Prior-guided patches: ``G x G`` cells sorted by the prior (highest first), ``d`` cells per region.

    Parameters
    ----------
    prior
        ``(B, H', W')``, ``(B, 1, H', W')`` or ``(B, C, H', W')`` (channels summed in absolute value) prior
        map of each row; higher = more important. Resized to the cells by area averaging.
    grid_size, cells_per_region
        ``G`` and ``d``; ``N = ceil(G'^2 / d)`` regions where ``G'`` is ``G`` clamped to the image size.
        Ties in the prior keep raster order (a stable sort).
    """
    _image(x, "prior")
    for name, v in (("prior_grid", grid_size), ("prior_cells", cells_per_region)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InvalidParameterError(f"{name} must be an int >= 1; got {v!r}.")
    p = prior.detach().to(torch.float64)
    if p.ndim == 3:
        p = p.unsqueeze(1)
    if p.ndim != 4 or p.shape[0] != x.shape[0]:
        raise InvalidParameterError(
            f"the prior map must be (B, H, W) or (B, C, H, W) with B = {x.shape[0]}; got {tuple(prior.shape)}."
        )
    if p.shape[1] > 1:
        p = p.abs().sum(1, keepdim=True)
    cells = F.cells(x, n=grid_size).groups[:, 0]  # (B, H, W) raster ids of the G' x G' cells
    _, _, h, w = x.shape
    gh, gw = min(grid_size, h), min(grid_size, w)
    if tuple(p.shape[-2:]) != (h, w):  # onto the pixels by area: each pixel takes the prior cell it lies in (a
        # coarser prior), or the mean of the prior cells it covers (a finer one); bilinear would mix neighbours
        up = p.shape[-2] <= h and p.shape[-1] <= w
        p = torch.nn.functional.interpolate(p, size=(h, w), mode="nearest-exact" if up else "area")
    p = p[:, 0]
    b = x.shape[0]
    flat = cells.reshape(b, -1).to(p.device)
    sums = torch.zeros(b, gh * gw, dtype=torch.float64, device=p.device).scatter_add_(1, flat, p.reshape(b, -1))
    cnt = torch.zeros_like(sums).scatter_add_(1, flat, torch.ones_like(p.reshape(b, -1)))
    cell_prior = sums / cnt.clamp_min(1)
    cell_prior = torch.nan_to_num(cell_prior, nan=0.0)
    rank = torch.argsort(-cell_prior, dim=1, stable=True).argsort(1)  # (B, G'^2): rank of each cell
    region_of_cell = rank // cells_per_region
    labels = region_of_cell.gather(1, flat).view(b, 1, h, w).to(x.device)
    return _finish(labels, x, "prior")


# ---------------------------------------------------------------------------------------------- rows
def columns(x: torch.Tensor, *, groups: Any = None) -> RegionMap:
    """Tabular rows ``(B, F)``: one region per column, or ``groups`` ``(F,)`` column-group ids."""
    if x.ndim != 2:
        raise InvalidInputError(
            f"regions='columns' needs tabular rows (B, F); got inputs of shape {tuple(x.shape)}. Use a spatial "
            "builder for images or pass a label map."
        )
    if groups is None:
        g = torch.arange(x.shape[1], device=x.device)
    else:
        g = _ids(groups, x.shape[1], "groups")
    return _finish(g.to(x.device).unsqueeze(0).expand(x.shape[0], -1).contiguous(), x, "columns")


def _ids(groups: Any, n: int, what: str) -> torch.Tensor:
    try:
        g = torch.as_tensor(groups)
    except (TypeError, ValueError, RuntimeError):
        raise InvalidParameterError(f"{what} must be {n} integer group ids; got {groups!r}.") from None
    if g.is_floating_point() or g.is_complex() or g.dtype == torch.bool or g.shape != (n,):
        raise InvalidParameterError(f"{what} must be {n} integer group ids (shape ({n},)); got shape {tuple(g.shape)}.")
    if int(g.min()) < 0:
        raise InvalidParameterError(f"{what} ids must be >= 0 (every element in a region); got {int(g.min())}.")
    return g.to(torch.int64)


def spans(x: torch.Tensor, *, groups: Any) -> RegionMap:
    """Token rows ``(B, T)``, or the packed token rows ``(B, T, ...)`` of a text adapter: regions from explicit
    spans ``[(start, stop), ...]`` (half-open, disjoint, covering ``0..T-1``) or from per-token group ids ``(T,)``
    (on packed rows ``(B, T, 1)``, each position's channels together)."""
    if x.ndim not in (2, 3):
        raise InvalidInputError(
            f"regions='spans' needs token rows (B, T) or a text adapter's packed rows (B, T, ...); got inputs of "
            f"shape {tuple(x.shape)}. Pass a label map for other layouts."
        )
    t = x.shape[1]
    if groups is None:
        raise InvalidParameterError(
            "regions='spans' needs groups=: a list of (start, stop) token spans covering 0..T-1, or (T,) ids."
        )
    is_spans = isinstance(groups, (list, tuple)) and all(isinstance(s, (list, tuple)) for s in groups) and groups
    if is_spans:
        lab = torch.full((t,), -1, dtype=torch.int64)
        for k, s in enumerate(groups):
            if len(s) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in s):
                raise InvalidParameterError(f"groups: span {k} must be a pair of ints (start, stop); got {s!r}.")
            a, z = s
            if not 0 <= a < z <= t:
                raise InvalidParameterError(f"groups: span {k} = {s!r} must satisfy 0 <= start < stop <= {t}.")
            if bool((lab[a:z] >= 0).any()):
                raise InvalidParameterError(
                    f"groups: span {k} = {s!r} overlaps an earlier span; spans must be disjoint."
                )
            lab[a:z] = k
        missing = (lab < 0).nonzero().flatten().tolist()
        if missing:
            raise InvalidParameterError(
                f"groups: the spans leave tokens {missing[:10]} uncovered; spans must cover 0..{t - 1} "
                "(add a span for the rest)."
            )
    else:
        lab = _ids(groups, t, "groups")
    lab = lab.to(x.device).unsqueeze(0).expand(x.shape[0], -1)
    return _finish((lab.unsqueeze(2) if x.ndim == 3 else lab).contiguous(), x, "spans")
