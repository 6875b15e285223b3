"""ROAD: RemOve And Debias (Rong et al., ICML 2022) with noisy linear imputation.

References
----------
Rong, Leemann, Borisov, Kasneci & Kasneci, "A Consistent and Efficient Evaluation Strategy for Attribution
Methods", ICML 2022 (github.com/tleemann/road_evaluation).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from whybox.errors import InvalidInputError, InvalidParameterError, check_bool
from whybox.metrics.base import (
    Context,
    Metric,
    check_choice,
    check_float,
    derive_generator,
    feature_scores,
    reads_sequence,
    row_keys,
    tie_order,
)
from whybox.models.inputs import python_numbers
from whybox.registry import METRICS

__all__ = ["ROAD", "noisy_linear_imputation", "noisy_linear_imputation_batch"]

# (row offset, column offset, weight): 1/6 for the 4 edge neighbours, 1/12 for the 4 diagonals (sum 1)
_NEIGHBOURS = (
    (-1, 0, 1 / 6),
    (1, 0, 1 / 6),
    (0, -1, 1 / 6),
    (0, 1, 1 / 6),
    (-1, -1, 1 / 12),
    (-1, 1, 1 / 12),
    (1, -1, 1 / 12),
    (1, 1, 1 / 12),
)
_NOISE_KEY = 2_000_003


#: Images with at most this many removed pixels solve their systems as one batch of dense matrices (padded with
#: identity rows to a multiple of 8), not one sparse LU. Measured on 96 images (1 thread) against the
#: nested-dissection LU: 10 x 10 with 80 removed 7.5 ms dense against 10.0 ms sparse, 11 x 11 with 100 removed 11.8
#: against 12.1, 12 x 12 with 127 removed 19.5 against 17.2; the digits' ROAD masks (8 x 8, 10-90 % removed, 288
#: images) 8.1 against 9.3.
DENSE_MAX = 96

#: A sparse batch with at least this many removed pixels in all factors its images on worker threads (below it a
#: thread's start costs about as much as the factorisations it would share: a 64 x 64 image with 1,000 removed
#: factors in about 1 ms).
PARALLEL_MIN = 4096


def _solve_blocks_dense(
    ri: np.ndarray,
    ci: np.ndarray,
    vi: np.ndarray,
    rhs: np.ndarray,
    img_of: np.ndarray,
    starts: np.ndarray,
    solvable: np.ndarray,
) -> np.ndarray:
    """The block-diagonal system (entries ``vi`` at ``(ri, ci)``, one block per solvable image, unknowns numbered
    image by image from ``starts``) solved as batches of dense systems: blocks grouped by size (padded with
    identity rows to the next multiple of 8), so that small holes are not padded to the largest."""
    sizes = np.diff(starts)
    local = np.arange(rhs.shape[0]) - starts[img_of]  # each unknown's index within its image's block
    sol = np.empty_like(rhs)
    blocks = np.flatnonzero(solvable)
    padded = np.maximum(8, -(-sizes[blocks] // 8) * 8)
    entry_img = img_of[ri]
    for m in np.unique(padded).tolist():
        group = blocks[padded == m]
        slot = np.full(len(solvable), -1, dtype=np.int64)
        slot[group] = np.arange(group.size)
        a = np.zeros((group.size, m, m))
        a[:, np.arange(m), np.arange(m)] = 1.0  # padding rows: x = 0 (a real row's diagonal is set next)
        mine = slot[entry_img] >= 0
        a[slot[entry_img[mine]], local[ri[mine]], local[ci[mine]]] = vi[mine]  # each (row, column) pair once
        unknowns = np.flatnonzero(slot[img_of] >= 0)
        b = np.zeros((group.size, m, rhs.shape[1]))
        b[slot[img_of[unknowns]], local[unknowns]] = rhs[unknowns]
        sol[unknowns] = np.linalg.solve(a, b)[slot[img_of[unknowns]], local[unknowns]]
    return sol


@functools.lru_cache(maxsize=16)
def _dissection_key(h: int, w: int) -> np.ndarray:
    """A nested-dissection key for the pixels of an ``h x w`` grid (``(h * w,)`` int64, raster order): sorting the
    unknowns by it orders the imputation system so that its LU factors stay sparse.

    The grid's box is split across its longer side by the middle row (or column), which separates the two halves
    for the 8-neighbour stencil; each half is split the same way, down to single pixels. A pixel's key holds one
    base-3 digit per level: 0 (first half), 1 (second half) or 2 (on the separator, where it stops), so both
    halves come before their separator, as nested dissection orders them. Pixels of one separator share a key
    (a stable sort keeps them in raster order)."""
    r, c = np.divmod(np.arange(h * w, dtype=np.int64), w)
    r0, r1 = np.zeros_like(r), np.full_like(r, h)
    c0, c1 = np.zeros_like(r), np.full_like(r, w)
    key = np.zeros_like(r)
    active = np.ones(h * w, dtype=bool)
    while active.any():  # one split per level, every box at once; at most 2 log2(max(h, w)) + 2 levels
        active &= (r1 - r0 > 1) | (c1 - c0 > 1)
        by_row = r1 - r0 >= c1 - c0
        mid = np.where(by_row, (r0 + r1) // 2, (c0 + c1) // 2)
        v = np.where(by_row, r, c)
        lo, hi = active & (v < mid), active & (v > mid)
        key = key * 3 + np.where(lo | ~active, 0, np.where(hi, 1, 2))
        r1, c1 = np.where(lo & by_row, mid, r1), np.where(lo & ~by_row, mid, c1)
        r0, c0 = np.where(hi & by_row, mid + 1, r0), np.where(hi & ~by_row, mid + 1, c0)
        active &= lo | hi
    key.flags.writeable = False
    return key


def noisy_linear_imputation(
    image: torch.Tensor, removed: torch.Tensor, *, noise: float = 0.01, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fill the ``removed`` pixels of ``image`` ``(C, H, W)`` by noisy linear imputation.

    Each removed pixel equals the weighted mean of its 8 neighbours (known or themselves removed):
    ``(sum_{j valid} w_j) v_i - sum_{j removed} w_j v_j = sum_{j known} w_j x_j`` with w = 1/6 (edges) and
    1/12 (diagonals); neighbours outside the image are dropped, so their weight leaves the diagonal. One sparse
    system with C right-hand sides (``scipy.sparse.linalg.splu`` with the unknowns in nested-dissection order),
    then ``v += noise * N(0, 1)`` drawn from ``generator`` (``(n_removed, C)`` draws, removed pixels in raster
    order). With nothing known (every pixel removed) the system is singular: the result is NaN.

    Shapes
    ------
    image ``(C, H, W)``, removed ``(H, W)`` bool -> ``(C, H, W)`` in the image's dtype and device.
    """
    return noisy_linear_imputation_batch(image[None], removed[None], noise=noise, generators=[generator])[0]


def noisy_linear_imputation_batch(
    images: torch.Tensor,
    removed: torch.Tensor,
    *,
    noise: float = 0.01,
    generators: Sequence[torch.Generator | None] | None = None,
) -> torch.Tensor:
    """:func:`noisy_linear_imputation` of ``n`` images at once: their systems are built together as one
    block-diagonal sparse system; each image's block is then factored by its own sparse LU, the images in
    parallel threads (four 224 x 224 images, 90 % removed at random, 1 torch thread on 2 cores: 392 ms, against
    526 ms one after the other and 562 ms for one LU of the whole matrix; the same values), or, when no image has
    more than :data:`DENSE_MAX` removed pixels, all are solved as one batch of dense systems (same solution as one
    by one; image ``i`` draws its noise from ``generators[i]``).

    Shapes
    ------
    images ``(n, C, H, W)``, removed ``(n, H, W)`` bool -> ``(n, C, H, W)``.
    """
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import splu

    nimg, c, h, w = images.shape
    hw = h * w
    gens = generators if generators is not None else [None] * nimg
    rem_all = removed.detach().cpu().numpy().astype(bool).reshape(nimg, hw)
    imgs = images.detach().cpu().double().numpy().reshape(nimg, c, hw)
    out = imgs.copy()
    n_rem = rem_all.sum(1)
    out[n_rem == hw] = math.nan  # nothing known: singular
    solvable = (n_rem > 0) & (n_rem < hw)
    rem = rem_all & solvable[:, None]  # the unknowns of every solvable image
    flat = np.flatnonzero(rem)  # global pixel ids i * HW + p, in (image, raster) order
    n = flat.size
    if n:
        img_of, pix = flat // hw, flat % hw
        dense = int(n_rem[solvable].max()) <= DENSE_MAX
        # Unknowns numbered image by image; for the sparse LU within an image in nested-dissection order (sparse
        # factors), for the dense blocks in raster order (any order solves them alike)
        order = np.arange(n) if dense else np.lexsort((_dissection_key(h, w)[pix], img_of))  # raster index of j
        flat_nd, pix_nd = flat[order], pix[order]
        # The grid padded by one pixel on every side: a neighbour's id is its pixel's id plus a fixed step
        hp, wp = h + 2, w + 2
        var = np.full((nimg, hp, wp), -1, dtype=np.int64)  # each unknown's number, -1 elsewhere
        r, col = pix_nd // w, pix_nd % w
        at = img_of[order] * (hp * wp) + (r + 1) * wp + (col + 1)  # the unknowns' padded ids
        var.reshape(-1)[at] = np.arange(n)
        inside = np.zeros((hp, wp))
        inside[1:-1, 1:-1] = 1.0
        known = np.zeros((nimg, c, hp, wp))  # the known pixels' values; 0 where removed or outside
        known[:, :, 1:-1, 1:-1] = (imgs * ~rem[:, None]).reshape(nimg, c, h, w)
        diag_grid = np.zeros((h, w))
        rhs_grid = np.zeros((nimg, c, h, w))
        # Row j's entries: slot 0 its diagonal, slot k its k-th neighbour (-w_k) where that neighbour is unknown
        table = np.empty((n, 1 + len(_NEIGHBOURS)), dtype=np.int64)  # the entries' columns; -1: no entry
        table[:, 0] = np.arange(n)
        for k, (dr, dc, wt) in enumerate(_NEIGHBOURS, start=1):  # every image at once
            rows, cols = slice(1 + dr, 1 + dr + h), slice(1 + dc, 1 + dc + w)
            diag_grid += wt * inside[rows, cols]  # neighbours outside the image are dropped
            rhs_grid += wt * known[:, :, rows, cols]
            table[:, k] = var.reshape(-1)[at + dr * wp + dc]
        diag = diag_grid.reshape(-1)[pix_nd]
        off = -np.array([0.0] + [wt for _, _, wt in _NEIGHBOURS])

        def values(slots: np.ndarray) -> np.ndarray:  # entries listed row by row, one diagonal slot per row
            v = off[slots]
            v[slots == 0] = diag
            return v

        rhs = rhs_grid.transpose(0, 2, 3, 1).reshape(nimg * hw, c)[flat_nd]
        starts = np.concatenate([[0], np.cumsum(rem.sum(1))])
        if dense:
            ri, slots = np.nonzero(table >= 0)
            sol_nd = _solve_blocks_dense(ri, table[ri, slots], values(slots), rhs, img_of, starts, solvable)
        else:
            # LU without pivoting in nested-dissection order: the matrix is a nonsingular M-matrix (symmetric,
            # weakly diagonally dominant, every unknown linked to a known pixel), so the diagonal pivots are
            # positive and stable. Symmetric, so each row's entries are its column's: built as CSC directly,
            # columns sorted within each row. On 224 x 224 with 90 % removed (45,158 unknowns, 1 thread) this solves
            # in 110 ms against 333 ms with SuperLU's default ordering, COLAMD (random removal; 114 against 231 ms
            # for a smooth map's top 90 %).
            keys = np.sort(table * 16 + np.arange(table.shape[1]), axis=1)  # column * 16 + slot; no entry < 0
            index = np.int32 if table.size < 2**31 else np.int64  # scipy's own choice; int32 saves a copy
            indptr = np.concatenate([[0], np.cumsum((keys >= 0).sum(1))]).astype(index)
            keys = keys[keys >= 0]  # row by row
            data, rows_of = values(keys & 15), (keys >> 4).astype(index)
            sol_nd = np.empty((n, c))

            def solve(i: int) -> None:  # image i's block: its columns hold only its own rows
                s, e = int(starts[i]), int(starts[i + 1])
                lo, hi = int(indptr[s]), int(indptr[e])
                a = csc_matrix((data[lo:hi], rows_of[lo:hi] - s, indptr[s : e + 1] - lo), shape=(e - s, e - s))
                a.has_sorted_indices = True
                lu = splu(a, permc_spec="NATURAL", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
                sol_nd[s:e] = np.asarray(lu.solve(rhs[s:e])).reshape(e - s, c)

            blocks = np.flatnonzero(solvable).tolist()
            workers = min(len(blocks), os.cpu_count() or 1)
            if workers > 1 and n >= PARALLEL_MIN:  # SuperLU releases the GIL: the images factor in parallel
                with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="whybox-road") as pool:
                    list(pool.map(solve, blocks))
            else:
                for i in blocks:
                    solve(i)
        sol = np.empty_like(sol_nd)
        sol[order] = sol_nd  # back to (image, raster) order, the order the noise is drawn in
        for i in np.flatnonzero(solvable).tolist():
            ids = pix[starts[i] : starts[i + 1]]
            v = sol[starts[i] : starts[i + 1]]
            if noise > 0:
                v = v + noise * torch.randn(ids.size, c, generator=gens[i], dtype=torch.float64).numpy()
            out[i][:, ids] = v.T
    return torch.from_numpy(out.reshape(nimg, c, h, w)).to(device=images.device, dtype=images.dtype)


@METRICS.register("road")
class ROAD(Metric):
    """Remove the top (MoRF) or bottom (LeRF) fraction p of pixels, impute them by noisy linear imputation,
    and read the target score and the accuracy (argmax = label) of the imputed input.

    Scores: ``(mean_p LeRF - mean_p MoRF) / 2`` of ``quantity`` (pytorch-grad-cam's ``ROADCombined``; the
    score before removal cancels), higher is better; with ``orders="morf"`` the mean MoRF value alone (lower is
    better: the scores fall fast when the top-ranked pixels go; what Quantus' ROAD curve holds), with
    ``orders="lerf"`` the mean LeRF value (higher is better). Removed count = ``floor(p N)`` pixels, ranked with the
    seeded tie rule; ``p = 1`` leaves no known pixel (singular system), so that point is NaN and the means skip
    it. Imputation and noise (``noise``, absolute, in the model's input space; ROAD's repository imputes in
    [0, 1] pixel space, where the same sigma is smaller by the normalisation's std) run per removed mask, row
    ``i`` at point ``k`` drawing from ``(seed, i, k)``.

    Parameters
    ----------
    fractions
        Shares removed (0.1 ... 0.9). Both orders use the same fractions: LeRF(p) removes the p least relevant.
    orders
        ``"both"`` (default), ``"morf"`` or ``"lerf"``: which removal orders to compute (one order costs half the
        imputations and passes).
    noise
        sigma of the imputation noise (0.01).
    quantity
        ``"score"`` (the target score in ``score`` space, default probability) or ``"accuracy"`` for ``scores``.
    abs
        Rank by ``|a|``.

    1-D signals ``(B, C, L)`` (:func:`~whybox.models.adapter.is_signal`) rank time steps (channels together) and
    impute them as a one-row image: a removed step is the mean of its two neighbours in time. Sequences ``(B, T, D)``
    of a model that reads time steps (a recurrent or attention model) rank their steps (a full map summed over D,
    ``|.|`` first with ``abs``; or one value per step, ``(B, T)``) and impute each removed step's D features alike,
    from the neighbouring steps.

    Curves: ``"x"`` ``(B, F)`` fractions, ``"morf_score"``, ``"lerf_score"``, ``"morf_accuracy"``,
    ``"lerf_accuracy"`` ``(B, F)`` (those of the computed orders). ``labels=`` (default: the target) decides accuracy.

    The next chunk's imputations run in a worker thread while the model scores this one (the engine's
    ``prefetch``; both release the GIL), and the images of a chunk are solved in parallel threads: on
    EfficientNet-Lite0 at 224 px, 2 photos, MoRF, batch 4, one torch thread on 2 cores, 0.55 s a photo against
    0.81 s with neither, the same values.
    """

    higher_is_better = True
    reads_labels = True
    reads_clean = False

    def __init__(
        self,
        *,
        fractions: tuple[float, ...] | list[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
        noise: float = 0.01,
        quantity: str = "score",
        abs: bool = False,
        orders: str = "both",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        fractions = python_numbers(fractions)  # a NumPy array or a tensor of shares, NumPy scalars in a list
        if isinstance(fractions, (str, bytes)) or not isinstance(fractions, (tuple, list)):
            raise InvalidParameterError(f"fractions must be a list of shares in (0, 1]; got {fractions!r}.")
        fr = tuple(fractions)
        if not fr:
            raise InvalidParameterError("fractions must hold at least one share in (0, 1].")
        self.fractions = tuple(check_float("fractions", p, 0.0, 1.0, lo_open=True) for p in fr)
        self.noise = check_float("noise", noise, 0.0)
        self.quantity = check_choice("quantity", quantity, ("score", "accuracy"))
        self.abs = check_bool("abs", abs)
        self.orders = check_choice("orders", orders, ("both", "morf", "lerf"))

    def result_direction(self) -> bool:
        return self.orders != "morf"

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        if ctx.attributions is None or ctx.engine is None or ctx.target is None:
            raise InvalidParameterError("road needs attributions and a model.")
        x = ctx.x
        signal = ctx.signal  # a 1-D signal (B, C, L) is imputed as a one-row image: each removed step from its two
        # neighbours in time (the other six fall outside the row); a sequence (B, T, D) as the signal (B, D, T)
        sequence = reads_sequence(ctx)
        if x.ndim != 4 and not signal and not sequence:
            raise InvalidInputError(
                f"road needs images (B, C, H, W), 1-D signals (B, C, L) of a model with an nn.Conv1d or sequences "
                f"(B, T, D) of a model that reads time steps; got inputs of shape {tuple(x.shape)}."
            )
        b = x.shape[0]
        n = x.shape[1] if sequence else (1 if signal else x.shape[-2]) * x.shape[-1]
        values, groups = feature_scores(ctx.attributions, x, abs=self.abs, signal=signal, sequence=sequence)
        order = tie_order(values, self.seed).cpu()
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(n).expand(b, n).contiguous())
        ranks = ranks.to(x.device)
        nf = len(self.fractions)
        names = {"both": ("morf", "lerf"), "morf": ("morf",), "lerf": ("lerf",)}[self.orders]
        no = len(names)  # the masks: each order's fractions in turn
        counts = torch.tensor([math.floor(p * n + 1e-9) for p in self.fractions] * no, device=x.device)
        lerf = torch.tensor([o == "lerf" for o in names for _ in range(nf)], device=x.device)

        def removed(rows: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
            r = ranks[rows]
            c = counts[ks].unsqueeze(1)
            return torch.where(lerf[ks].unsqueeze(1), r >= n - c, r < c)

        def masks(rows: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
            return groups.expand(~removed(rows, ks), rows)

        noise = self.noise
        keys = row_keys(x) if noise > 0 else []  # noise keyed by the sample, not its place in the batch
        key_offset = nf if self.orders == "lerf" else 0  # a mask draws the noise it draws with orders="both"

        def fill(rows: torch.Tensor, ks: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            gens = (
                [
                    derive_generator(self.seed, _NOISE_KEY, keys[r], k + key_offset)
                    for r, k in zip(rows.tolist(), ks.tolist(), strict=True)
                ]
                if noise > 0
                else None  # no noise is drawn
            )
            if sequence:  # (n, D, 1, T) images, (n, 1, T) removed time steps (each step's D features together)
                rem = ~m[:, :, 0]
                imgs = noisy_linear_imputation_batch(
                    x[rows].transpose(1, 2).unsqueeze(2), rem.unsqueeze(1), noise=noise, generators=gens
                )
                return torch.nan_to_num(imgs.squeeze(2).transpose(1, 2))
            if signal:  # (n, C, 1, L) images, (n, 1, L) removed time steps
                imgs = noisy_linear_imputation_batch(x[rows].unsqueeze(2), ~m, noise=noise, generators=gens)
                return torch.nan_to_num(imgs.squeeze(2))
            imgs = noisy_linear_imputation_batch(x[rows], ~m[:, 0], noise=noise, generators=gens)
            return torch.nan_to_num(imgs)  # p = 1: scored on zeros, reported as NaN below

        if ctx.labels is None and ctx.target.fn is not None:  # before any model call: accuracy needs classes
            raise InvalidParameterError(
                "road with a callable target needs labels= (the true classes), for the accuracy curves it records."
            )
        pred = torch.empty(b, no * nf, dtype=torch.int64)
        given = ctx.labels  # checked against the number of classes on the first chunk

        def record(raw: torch.Tensor, rows: torch.Tensor, ks: torch.Tensor) -> None:
            nonlocal given
            if given is not None:
                out, labels, given = (given < 0) | (given >= raw.shape[1]), given, None
                if bool(out.any()):
                    raise InvalidParameterError(
                        f"labels={labels[out][0].item()} is out of range for a model with {raw.shape[1]} outputs; "
                        f"give the true class of each row, 0..{raw.shape[1] - 1}."
                    )
            pred[rows.cpu(), ks.cpu()] = raw.argmax(1).cpu()

        y = ctx.engine.scores(
            x, masks, n_masks=no * nf, fill=fill, target=ctx.target, score=self.score, on_scores=record, prefetch=True
        ).cpu()
        labels = ctx.labels if ctx.labels is not None else ctx.target.index
        acc = (pred == labels.cpu().view(-1, 1)).to(torch.float64)
        singular = (counts >= n).cpu().unsqueeze(0).expand(b, -1)
        y = torch.where(singular, torch.full_like(y, math.nan), y)
        acc = torch.where(singular, torch.full_like(acc, math.nan), acc)
        q = y if self.quantity == "score" else acc
        part = {o: slice(j * nf, (j + 1) * nf) for j, o in enumerate(names)}
        if self.orders == "both":
            scores = (q[:, part["lerf"]].nanmean(1) - q[:, part["morf"]].nanmean(1)) / 2
        else:
            scores = q[:, part[self.orders]].nanmean(1)
        curves = {"x": torch.tensor(self.fractions, dtype=torch.float64).expand(b, -1).contiguous()}
        for o in names:
            curves[f"{o}_score"], curves[f"{o}_accuracy"] = y[:, part[o]], acc[:, part[o]]
        meta: dict[str, Any] = {"removed_counts": counts[:nf].tolist()}
        flat = (values.amax(1) == values.amin(1)).cpu()
        if bool(flat.any()):  # as deletion's: such a map orders its pixels by the seeded tie rule alone
            meta["flat_map"] = flat.tolist()
            meta["note"] = "rows with a flat map are ordered by the seeded tie rule alone"
        return scores, curves, meta
