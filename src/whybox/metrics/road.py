"""ROAD: RemOve And Debias (Rong et al., ICML 2022) with noisy linear imputation.

References
----------
Rong, Leemann, Borisov, Kasneci & Kasneci, "A Consistent and Efficient Evaluation Strategy for Attribution
Methods", ICML 2022 (github.com/tleemann/road_evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from whybox.errors import InvalidInputError, InvalidParameterError
from whybox.metrics.base import (
    Context,
    Metric,
    check_choice,
    check_float,
    derive_generator,
    feature_scores,
    tie_order,
)
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


def noisy_linear_imputation(
    image: torch.Tensor, removed: torch.Tensor, *, noise: float = 0.01, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Fill the ``removed`` pixels of ``image`` ``(C, H, W)`` by noisy linear imputation.

    Each removed pixel equals the weighted mean of its 8 neighbours (known or themselves removed):
    ``(sum_{j valid} w_j) v_i - sum_{j removed} w_j v_j = sum_{j known} w_j x_j`` with w = 1/6 (edges) and
    1/12 (diagonals); neighbours outside the image are dropped, so their weight leaves the diagonal. One sparse
    system with C right-hand sides (``scipy.sparse.linalg.spsolve``), then ``v += noise * N(0, 1)`` drawn from
    ``generator`` (``(n_removed, C)`` draws, removed pixels in raster order). With nothing known (every pixel
    removed) the system is singular: the result is NaN.

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
    """:func:`noisy_linear_imputation` of ``n`` images at once: their systems form one block-diagonal sparse
    system, solved by one ``spsolve`` (same solution as one by one; image ``i`` draws its noise from
    ``generators[i]``).

    Shapes
    ------
    images ``(n, C, H, W)``, removed ``(n, H, W)`` bool -> ``(n, C, H, W)``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    nimg, c, h, w = images.shape
    hw = h * w
    gens = generators if generators is not None else [None] * nimg
    rem_all = removed.detach().cpu().numpy().astype(bool).reshape(nimg, hw)
    imgs = images.detach().cpu().double().numpy().reshape(nimg, c, hw)
    out = imgs.copy()
    n_rem = rem_all.sum(1)
    out[n_rem == hw] = math.nan  # nothing known: singular
    solvable = (n_rem > 0) & (n_rem < hw)
    rem = rem_all & solvable[:, None]  # the unknowns of every solvable image, numbered in (image, raster) order
    flat = np.flatnonzero(rem)  # global pixel ids i * HW + p
    n = flat.size
    if n:
        var = np.full(nimg * hw, -1, dtype=np.int64)
        var[flat] = np.arange(n)
        img_of, pix = flat // hw, flat % hw
        r, col = pix // w, pix % w
        diag = np.zeros(n)
        rhs = np.zeros((n, c))
        pixels = imgs.transpose(0, 2, 1).reshape(nimg * hw, c)  # (global pixel, channel)
        rows, cols, vals = [np.arange(n)], [np.arange(n)], []
        for dr, dc, wt in _NEIGHBOURS:  # all images at once: 8 vectorised passes
            rr, cc = r + dr, col + dc
            valid = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            diag[valid] += wt
            u = np.flatnonzero(valid)
            nb = img_of[u] * hw + rr[u] * w + cc[u]
            is_rem = rem.reshape(-1)[nb]
            rows.append(u[is_rem])
            cols.append(var[nb[is_rem]])
            vals.append(np.full(int(is_rem.sum()), -wt))
            known = u[~is_rem]
            rhs[known] += wt * pixels[nb[~is_rem]]  # each unknown appears once per offset: no repeated index
        vals.insert(0, diag)
        a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsc()
        sol = np.asarray(spsolve(a, rhs)).reshape(n, c)
        starts = np.concatenate([[0], np.cumsum(rem.sum(1))])
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
    score before removal cancels). Higher is better. Removed count = ``floor(p N)`` pixels, ranked with the
    seeded tie rule; ``p = 1`` leaves no known pixel (singular system), so that point is NaN and the means skip
    it. Imputation and noise (``noise``, absolute, in the model's input space; ROAD's repository imputes in
    [0, 1] pixel space, where the same sigma is smaller by the normalisation's std) run per removed mask, row
    ``i`` at point ``k`` drawing from ``(seed, i, k)``.

    Parameters
    ----------
    fractions
        Shares removed (0.1 ... 0.9). Both orders use the same fractions: LeRF(p) removes the p least relevant.
    noise
        sigma of the imputation noise (0.01).
    quantity
        ``"score"`` (the target score in ``score`` space, default probability) or ``"accuracy"`` for ``scores``.
    abs
        Rank by ``|a|``.

    Curves: ``"x"`` ``(B, F)`` fractions, ``"morf_score"``, ``"lerf_score"``, ``"morf_accuracy"``,
    ``"lerf_accuracy"`` ``(B, F)``. ``labels=`` (default: the target) decides accuracy.
    """

    higher_is_better = True

    def __init__(
        self,
        *,
        fractions: tuple[float, ...] | list[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
        noise: float = 0.01,
        quantity: str = "score",
        abs: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(fractions, (str, bytes)) or not isinstance(fractions, (tuple, list)):
            raise InvalidParameterError(f"fractions must be a list of shares in (0, 1]; got {fractions!r}.")
        fr = tuple(fractions)
        if not fr:
            raise InvalidParameterError("fractions must hold at least one share in (0, 1].")
        self.fractions = tuple(check_float("fractions", p, 0.0, 1.0, lo_open=True) for p in fr)
        self.noise = check_float("noise", noise, 0.0)
        self.quantity = check_choice("quantity", quantity, ("score", "accuracy"))
        self.abs = bool(abs)

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        if ctx.attributions is None or ctx.engine is None or ctx.target is None:
            raise InvalidParameterError("road needs attributions and a model.")
        x = ctx.x
        if x.ndim != 4:
            raise InvalidInputError(f"road needs images (B, C, H, W); got inputs of shape {tuple(x.shape)}.")
        b, _, h, w = x.shape
        n = h * w
        values, groups = feature_scores(ctx.attributions, x, abs=self.abs)
        order = tie_order(values, self.seed).cpu()
        ranks = torch.empty_like(order)
        ranks.scatter_(1, order, torch.arange(n).expand(b, n).contiguous())
        ranks = ranks.to(x.device)
        nf = len(self.fractions)
        counts = torch.tensor([math.floor(p * n + 1e-9) for p in self.fractions] * 2, device=x.device)
        lerf = torch.arange(2 * nf, device=x.device) >= nf

        def removed(rows: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
            r = ranks[rows]
            c = counts[ks].unsqueeze(1)
            return torch.where(lerf[ks].unsqueeze(1), r >= n - c, r < c)

        def masks(rows: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
            return groups.expand(~removed(rows, ks), rows)

        noise = self.noise

        def fill(rows: torch.Tensor, ks: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            gens = [
                derive_generator(self.seed, _NOISE_KEY, r, k) for r, k in zip(rows.tolist(), ks.tolist(), strict=True)
            ]
            imgs = noisy_linear_imputation_batch(x[rows], ~m[:, 0], noise=noise, generators=gens)
            return torch.nan_to_num(imgs)  # p = 1: scored on zeros, reported as NaN below

        pred = torch.empty(b, 2 * nf, dtype=torch.int64)

        def record(raw: torch.Tensor, rows: torch.Tensor, ks: torch.Tensor) -> None:
            pred[rows.cpu(), ks.cpu()] = raw.argmax(1).cpu()

        y = ctx.engine.scores(
            x, masks, n_masks=2 * nf, fill=fill, target=ctx.target, score=self.score, on_scores=record
        ).cpu()
        labels = ctx.labels if ctx.labels is not None else ctx.target.index
        if bool((labels < 0).any()):
            raise InvalidParameterError("road with a callable target needs labels= (the true classes).")
        acc = (pred == labels.cpu().view(-1, 1)).to(torch.float64)
        singular = (counts >= n).cpu().unsqueeze(0).expand(b, -1)
        y = torch.where(singular, torch.full_like(y, math.nan), y)
        acc = torch.where(singular, torch.full_like(acc, math.nan), acc)
        q = y if self.quantity == "score" else acc
        morf, lerf_q = q[:, :nf], q[:, nf:]
        scores = (lerf_q.nanmean(1) - morf.nanmean(1)) / 2
        xs = torch.tensor(self.fractions, dtype=torch.float64).expand(b, -1).contiguous()
        curves = {
            "x": xs,
            "morf_score": y[:, :nf],
            "lerf_score": y[:, nf:],
            "morf_accuracy": acc[:, :nf],
            "lerf_accuracy": acc[:, nf:],
        }
        return scores, curves, {"removed_counts": counts[:nf].tolist()}
