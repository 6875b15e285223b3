"""The masking engine: masks -> rendered inputs -> scores, chunked by one ``batch_size``.

This is the only perturbation loop in whybox. Every method that scores modified inputs (Score-CAM
here; occlusion, RISE, LIME, Kernel SHAP, the subset search and the insertion/deletion metrics later)
calls :meth:`MaskingEngine.scores`, so memory stays bounded by ``batch_size`` rows of input and the
forward passes are counted in one place.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from whybox.errors import InvalidParameterError
from whybox.masking.features import FeatureGroups
from whybox.models.adapter import ModelAdapter
from whybox.models.targets import Target, apply_score_space

__all__ = ["MaskSource", "MaskingEngine", "check_batch_size"]

# (rows (n,), ks (n,)) -> element masks (n, *G): bool keeps x where True; float m gives fill + m (x - fill)
MaskSource = torch.Tensor | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidParameterError(f"batch_size must be a positive int (rows per forward pass); got {batch_size!r}.")
    return batch_size


class MaskingEngine:
    """Score masked versions of input rows in chunks of ``batch_size`` rows.

    Parameters
    ----------
    adapter
        The model.
    batch_size
        Model input rows per forward pass. Its meaning is the same in every method: it bounds memory
        and changes no number.

    Attributes
    ----------
    n_forward
        Input rows passed through the model so far (one "forward pass" per row).
    n_batches
        Model calls made so far.
    """

    def __init__(self, adapter: ModelAdapter, *, batch_size: int = 64) -> None:
        self.adapter = adapter
        self.batch_size = check_batch_size(batch_size)
        self.n_forward = 0
        self.n_batches = 0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw scores ``(n, K)`` of ``x``, chunked."""
        outs = []
        for s in range(0, x.shape[0], self.batch_size):
            chunk = x[s : s + self.batch_size]
            outs.append(self.adapter.scores(chunk))
            self.n_forward += chunk.shape[0]
            self.n_batches += 1
        return torch.cat(outs)

    @torch.no_grad()
    def scores(
        self,
        x: torch.Tensor,
        masks: MaskSource,
        *,
        n_masks: int | None = None,
        fill: torch.Tensor,
        target: Target,
        groups: FeatureGroups | None = None,
        score: str = "logit",
    ) -> torch.Tensor:
        """Scores of the explained target for every (row, mask) pair.

        Parameters
        ----------
        x
            Input rows ``(B, *S)``.
        masks
            ``(B, N, M)`` group masks with ``groups``; ``(B, N, *G)`` element masks (``G`` broadcasting to
            ``S``); or a callable ``(rows, ks) -> (n, *G)`` making element masks on demand (for masks
            too large to hold, as RISE's or Score-CAM's), with ``n_masks`` = N.
        fill
            Replacement values shaped like ``x``.
        target
            The resolved target (row ``i`` is scored on its own class).
        score
            ``"logit"``, ``"prob"`` or ``"log_prob"``.

        Returns
        -------
        Tensor ``(B, N)`` float64 on the model's device.
        """
        b = x.shape[0]
        render: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
        if isinstance(masks, torch.Tensor):
            n = masks.shape[1]
            if groups is not None:
                mt, fg = masks, groups

                def render(rows: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
                    return fg.expand(mt[rows, ks], rows)
            else:
                mt = masks

                def render(rows: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
                    return mt[rows, ks]
        else:
            if n_masks is None:
                raise InvalidParameterError("n_masks is required when masks is a callable.")
            n = n_masks
            render = masks
        total = b * n
        out = torch.empty(total, dtype=torch.float64, device=x.device)
        for s in range(0, total, self.batch_size):
            idx = torch.arange(s, min(s + self.batch_size, total), device=x.device)
            rows, ks = idx // n, idx % n
            m = render(rows, ks).to(x.device)
            xr, fr = x[rows], fill[rows]
            if m.dtype == torch.bool:
                inp = torch.where(m, xr, fr)
            else:
                inp = fr + m.to(x.dtype) * (xr - fr)
            raw = self.adapter.scores(inp)
            self.n_forward += inp.shape[0]
            self.n_batches += 1
            out[s : s + inp.shape[0]] = target.select(apply_score_space(raw, score), rows).to(torch.float64)
        return out.view(b, n)
