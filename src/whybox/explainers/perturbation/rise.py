"""RISE (Petsiuk, Das & Saenko 2018): score random upsampled masks, average the masks weighted by score."""

from __future__ import annotations

import math
from typing import Any

import torch

from whybox.errors import InvalidParameterError
from whybox.explainers.perturbation._common import F64, PerturbationExplainer, _check_int
from whybox.masking.engine import MaskingEngine
from whybox.models.targets import Target, TargetLike
from whybox.registry import EXPLAINERS

__all__ = ["Rise", "RiseMasks", "interpolation_matrix"]


def interpolation_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)`` float64: linear upsampling with half-pixel centres, as the RISE authors' skimage
    ``resize(order=1, mode="reflect")``: output ``j`` reads the grid at ``(j + 0.5) n_in / n_out - 0.5``, and beyond
    the first and last cell centres the grid is mirrored about them (``c b | a b c | b a``: scipy's ``"mirror"``),
    so the outer half cells lean toward the neighbouring cell's value instead of holding the edge one (bilinear
    ``F.interpolate`` holds it: up to 0.4 apart there, in the part of a mask the random shift often crops in)."""
    out = torch.zeros(n_out, n_in, dtype=F64)
    period = 2 * (n_in - 1)
    for j in range(n_out):
        src = (j + 0.5) * n_in / n_out - 0.5
        i0 = math.floor(src)
        frac = src - i0
        for idx, weight in ((i0, 1.0 - frac), (i0 + 1, frac)):
            if period == 0:
                idx = 0
            else:
                idx %= period
                if idx > n_in - 1:
                    idx = period - idx
            out[j, idx] += weight
    return out


class RiseMasks:
    """RISE's N masks for ``(H, W)`` images, drawn once as small grids and offsets, rendered on demand.

    Mask i: an ``s x s`` grid (``grid_size`` may also be ``(sh, sw)``; 1-D signals use ``(1, s)``) with each cell kept with probability ``p``; cell size ``C = ceil(H / s)`` (and
    ``ceil(W / s)``); bilinear upsampling to ``(s + 1) * C``; an ``H x W`` crop at an offset uniform in
    ``0..C-1`` per axis. Upsampling is separable and linear, so a mask is ``U_h[oy:oy+H] @ G @ U_w[ox:ox+W]^T``:
    only the ``N x s x s`` grids are stored, never N full-size masks.
    """

    def __init__(
        self,
        n: int,
        size: tuple[int, int],
        grid_size: int | tuple[int, int],
        p_keep: float,
        generator: torch.Generator,
    ) -> None:
        h, w = size
        sh, sw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
        self.size = size
        self.cell = (-(-h // sh), -(-w // sw))
        self.grids = (torch.rand(n, sh, sw, generator=generator, dtype=F64) < p_keep).to(F64)
        self.oy = torch.randint(0, self.cell[0], (n,), generator=generator)
        self.ox = torch.randint(0, self.cell[1], (n,), generator=generator)
        self.uh = interpolation_matrix(sh, (sh + 1) * self.cell[0])
        self.uw = interpolation_matrix(sw, (sw + 1) * self.cell[1])

    def __len__(self) -> int:
        return int(self.grids.shape[0])

    def __call__(self, ks: torch.Tensor) -> torch.Tensor:
        """Masks ``ks`` as ``(n, H, W)`` float64 in [0, 1]."""
        ks = ks.cpu()
        h, w = self.size
        rows = self.uh[self.oy[ks].view(-1, 1) + torch.arange(h)]  # (n, H, s)
        cols = self.uw[self.ox[ks].view(-1, 1) + torch.arange(w)]  # (n, W, s)
        return rows @ self.grids[ks] @ cols.transpose(1, 2)


@EXPLAINERS.register("rise")
class Rise(PerturbationExplainer):
    """S(λ) = 1/(N p) Σ_i f_c(x ⊙ M_i) M_i(λ), the score-weighted mean of random smooth masks.

    Parameters
    ----------
    n_masks
        N, the number of masks (each one forward pass per row).
    grid_size
        s, the side of the random binary grid before upsampling.
    p_keep
        p, the probability that a grid cell is kept.
    fill
        What a masked pixel moves towards: ``fill + M (x - fill)``; zero (the paper) by default.
    score
        ``None`` (the default): the softmax probability (``"prob"``, the authors' setting; maps are then
        non-negative), or the raw score of a model with one output.

    Masks are the same for every row (one seeded draw), made per chunk of ``batch_size``, never all at once.

    Shapes
    ------
    inputs ``(B, C, H, W)`` -> attributions ``(B, 1, H, W)``; 1-D signals ``(B, C, L)`` of a model with an
    ``nn.Conv1d`` (:func:`~whybox.models.adapter.is_signal`) -> ``(B, 1, L)``, from ``s`` random cells along L,
    upsampled linearly and shifted as on images. Cost: ``B * (1 + N)`` forward passes.

    References
    ----------
    Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box Models", BMVC 2018.
    """

    image_only = True
    takes_signals = True
    input_kinds = ("image", "signal")

    def __init__(
        self,
        model: Any,
        *,
        n_masks: int = 4000,
        grid_size: int = 7,
        p_keep: float = 0.5,
        score: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, score=score, **kwargs)
        _check_int("n_masks", n_masks)
        _check_int("grid_size", grid_size)
        if isinstance(p_keep, bool) or not isinstance(p_keep, (int, float)) or not 0 < p_keep < 1:
            raise InvalidParameterError(f"p_keep must be in (0, 1); got {p_keep!r}.")
        self.n_masks = n_masks
        self.grid_size = grid_size
        self.p_keep = float(p_keep)

    def _explain(
        self, x: torch.Tensor, target: TargetLike, engine: MaskingEngine, n_backward: list[int]
    ) -> tuple[torch.Tensor, Target, dict[str, Any]]:
        signal = x.ndim == 3  # 1-D signals (B, C, L): one-row masks (1, L) from a (1, s) grid
        b, h, w = x.shape[0], (1 if signal else x.shape[-2]), x.shape[-1]
        n = self.n_masks
        self._check_cost(b * (n + 1), f"{b} rows x ({n} masks + 1 clean pass)")
        grid = (1, self.grid_size) if signal else self.grid_size
        masks = RiseMasks(n, (h, w), grid, self.p_keep, self.row_generator())
        fill = self._fills(x)
        tgt, _ = self._clean(x, target, engine)

        def render(rows: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
            m = masks(ks).to(device=x.device, dtype=x.dtype)
            return m if signal else m.unsqueeze(1)  # (n, 1, L) for signals, (n, 1, H, W) for images

        s = engine.scores(x, render, n_masks=n, fill=fill, target=tgt, score=self.score)
        sal = torch.zeros(b, h * w, dtype=F64, device=x.device)
        for start in range(0, n, self.batch_size):  # masks again, chunk by chunk: memory stays bounded
            ks = torch.arange(start, min(start + self.batch_size, n))
            sal += s[:, ks.to(x.device)] @ masks(ks).to(x.device).view(len(ks), -1)
        sal /= n * self.p_keep
        meta = {"rise": {"n_masks": n, "grid_size": self.grid_size, "p_keep": self.p_keep, "cell": list(masks.cell)}}
        return sal.view((b, 1, w) if signal else (b, 1, h, w)).to(x.dtype), tgt, meta
