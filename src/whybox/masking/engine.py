"""The masking engine: masks -> rendered inputs -> scores, chunked by one ``batch_size``.

This is the only perturbation loop in whybox. Every method that scores modified inputs (Score-CAM
here; occlusion, RISE, LIME, Kernel SHAP, the subset search and the insertion/deletion metrics later)
calls :meth:`MaskingEngine.scores`, so memory stays bounded by ``batch_size`` rows of input and the
forward passes are counted in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from torch import nn

from whybox.errors import InvalidInputError, InvalidParameterError, WhyboxError
from whybox.masking.features import FeatureGroups
from whybox.models.adapter import ModelAdapter, SklearnAdapter
from whybox.models.targets import Target, apply_score_space, probability_check_over_chunks

__all__ = [
    "FillSource",
    "MaskSource",
    "MaskingEngine",
    "ScoresHook",
    "check_batch_size",
    "padded_rows",
    "repeat_last",
    "resolve_batch_size",
]

# (rows (n,), ks (n,)) -> element masks (n, *G): bool keeps x where True; float m gives fill + m (x - fill)
MaskSource = torch.Tensor | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# a tensor shaped like x, or (rows (n,), ks (n,), element masks (n, *G)) -> fill rows (n, *S) for those masks
FillSource = torch.Tensor | Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# called with every chunk's raw model scores (n, K), its rows (n,) and mask indices (n,)
ScoresHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]
R = TypeVar("R")


def repeat_last(scores: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` scores where each pair that was not live (see :meth:`MaskingEngine.scores`) takes the score of the
    last live pair before it in its row: for masks that repeat the input of the mask before them."""
    steps = torch.arange(live.shape[1], device=live.device)
    return scores.gather(1, torch.where(live, steps, 0).cummax(1).values.to(scores.device))


#: rows per model call when ``batch_size=None``: torch models (bounded by activation memory), and scikit-learn
#: estimators, whose rows are small and whose calls cost much more than a row (a random forest's predict_proba:
#: 5 ms a call; Kernel SHAP on 20 rows, 500 samples, 100 trees: 0.82 s at 64 rows a call, 0.08 s at 1,024)
DEFAULT_BATCH_SIZE = 64
ESTIMATOR_BATCH_SIZE = 4096


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidParameterError(f"batch_size must be a positive int (rows per forward pass); got {batch_size!r}.")
    return batch_size


def resolve_batch_size(batch_size: int | None, adapter: ModelAdapter | None) -> int:
    """``batch_size``, or for ``None`` the default for the adapter's kind of model (:data:`DEFAULT_BATCH_SIZE` rows,
    :data:`ESTIMATOR_BATCH_SIZE` for a scikit-learn estimator)."""
    if batch_size is None:
        return ESTIMATOR_BATCH_SIZE if isinstance(adapter, SklearnAdapter) else DEFAULT_BATCH_SIZE
    return check_batch_size(batch_size)


PAD_MAX_ROWS = 256  # chunks padded on CUDA only up to this size (see padded_rows)


def padded_rows(n: int, batch_size: int) -> int:
    """Rows a scoring chunk of ``n`` rows is padded to on CUDA: the next size of the series 16, 24, 32, 48, 64, 96,
    128, 192, 256 (powers of two and one and a half times them), at most ``batch_size``; larger chunks keep ``n``.

    cuDNN plans every new input shape, at a CPU cost on each convolution the first time a shape is seen: about 24 ms
    per new batch shape on EfficientNet-Lite0 (an H200, where the model runs about 7,000 images/s). A search that sends a
    batch of a new size at every step (LIMA's, 2 (N - k) B rows at step k) pays it at every step. Padding small
    chunks to the series leaves a handful of shapes for under 1.5 times their rows; chunks above 256 rows keep their
    size, because there the padded rows cost GPU time again and again while a plan is made once (measured in
    bench/results/cuda.md: LIMA's predictive search 1.6 to 2.2x faster the first time, naive steady at the unpadded
    speed, where padding every size cost it 13 to 16 %).
    """
    if n >= batch_size:
        return n
    size = 16
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size // 3 * 4
    return n if size > PAD_MAX_ROWS else min(size, batch_size)


_NOTE_MARK = "whybox: raised while running the model on a batch of shape"


def _channel_fix(model: Any, inp: torch.Tensor) -> str:
    """Where the model's first convolution reads another channel count than ``inp`` has in dim 1, what to do
    (channels-last inputs: permute them); "" otherwise."""
    kinds = ((nn.Conv1d, 1), (nn.Conv2d, 2), (nn.Conv3d, 3))
    modules = model.modules() if isinstance(model, nn.Module) else ()
    found = next(((m, d) for m in modules for kind, d in kinds if isinstance(m, kind)), None)
    if found is None or inp.ndim != found[1] + 2 or inp.shape[1] == found[0].in_channels:
        return ""
    conv, n = found[0], found[0].in_channels
    reads = f"The model's first layer, {type(conv).__name__}, reads {n} channel{'s' if n != 1 else ''} in dim 1"
    if inp.shape[-1] == n:
        order = ", ".join(map(str, range(1, inp.ndim - 1)))
        return f"{reads}; these samples look channels-last: pass inputs.permute(0, {inp.ndim - 1}, {order})."
    return f"{reads}; these samples have {inp.shape[1]}."


def _note_batch_shape(err: BaseException, inp: torch.Tensor, model: Any = None) -> None:
    """Add (once) a note to the model's own error: the batch it got, how whybox reads ``inputs``, and the likely
    fix (a sample without its batch dimension, or channels last)."""
    add_note = getattr(err, "add_note", None)  # PEP 678, Python >= 3.11
    if add_note is None or any(_NOTE_MARK in n for n in getattr(err, "__notes__", ())):
        return
    shape, sample = tuple(inp.shape), tuple(inp.shape[1:])
    fix = _channel_fix(model, inp) or (
        # only a 3-D batch can be one sample whose first axis was read as the batch: one (C, H, W) image
        "If inputs is a single sample (e.g. one (C, H, W) image), add the batch dimension with inputs.unsqueeze(0)."
        if inp.ndim == 3
        else ""
    )
    add_note(
        f"{_NOTE_MARK} {shape}, built from `inputs`. whybox reads dim 0 of inputs as the batch, so each sample has "
        f"shape {sample}." + (f" {fix}" if fix else "")
    )


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

    On CUDA, scoring chunks (:meth:`scores`, :meth:`forward`) of floating inputs up to 256 rows are padded, by
    repeating their last row, to one of a few sizes (:func:`padded_rows`) when no module of the model is in training mode (rows
    are then independent, so the padded rows change nothing): cuDNN then sees a handful of batch shapes instead
    of a new one at every step of a search. The padded rows' outputs are dropped and not counted as passes.
    ``pad=False`` turns this off; ``pad=True`` pads on any device.

    Image batches ``(n, C, H, W)`` on the CPU reach the model in channels-last memory layout (the same values,
    strided channel-innermost): oneDNN's convolutions run 1.4x faster per image that way on EfficientNet-Lite0 at
    224 px (bench/results/lima.md); outputs agree with the default layout to float rounding. A model that cannot
    take such a tensor (e.g. it calls ``x.view`` on it) fails on the first chunk; the engine then passes that chunk
    and every later one in the default layout, so such models work unchanged. Gradient and CAM methods run their
    forward and backward passes through :meth:`call` too (1.4 to 1.6x faster per image there).
    """

    def __init__(self, adapter: ModelAdapter, *, batch_size: int = 64, pad: bool | None = None) -> None:
        self.adapter = adapter
        self.batch_size = check_batch_size(batch_size)
        if pad not in (None, True, False):
            raise InvalidParameterError(f"pad must be None (pad on CUDA only), True or False; got {pad!r}.")
        self.pad = pad  # None: on CUDA only (see the class)
        self.n_forward = 0
        self.n_batches = 0
        self.n_outputs: int | None = None  # K of the scores seen (what a default score space resolves on)
        self._channels_last: bool | None = None  # None: not tried yet; False: the model refused it

    def _score_chunk(self, inp: torch.Tensor) -> torch.Tensor:
        """The adapter's raw scores of one chunk, padded first where the class says so."""
        n = inp.shape[0]
        size = padded_rows(n, self.batch_size) if self._pads(inp) else n
        if size == n:
            out = self.call(self.adapter.scores, inp)
        else:
            full = torch.cat([inp, inp[-1:].expand(size - n, *inp.shape[1:])])
            out = self.call(self.adapter.scores, full)[:n]
        if out.ndim == 2:
            self.n_outputs = int(out.shape[1])
        return out

    def _pads(self, inp: torch.Tensor) -> bool:
        if self.pad is False or (self.pad is None and inp.device.type != "cuda") or not inp.is_floating_point():
            return False
        # a module in training mode (BatchNorm's batch statistics) couples the rows: padding would change them
        return self.deterministic()

    def deterministic(self) -> bool:
        """Whether a row's scores depend on that row alone, the same at every call: no module of a torch model in
        training mode (dropout draws anew, batch statistics couple the rows). Callers then score an input once
        where it recurs."""
        from whybox.models._guard import batchnorm_couples_rows

        model = getattr(self.adapter, "model", None)
        return not (
            isinstance(model, torch.nn.Module) and any(m.training or batchnorm_couples_rows(m) for m in model.modules())
        )

    def call(self, fn: Callable[[torch.Tensor], R], inp: torch.Tensor) -> R:
        """``fn(inp)`` with ``inp`` in channels-last layout where that applies (see the class).

        ``fn`` runs the model on its argument (and may take gradients through it: the layout change is
        differentiable). When its first channels-last call raises (``x.view`` on such a tensor, a model's own
        contiguity check, whatever it raises), the engine calls it again on ``inp`` as it came and keeps the default
        layout from then on, so ``fn`` must be safe to repeat after a failure (count passes outside it). An error
        in the default layout too propagates as the model raised it (same type and message), with a note
        (Python >= 3.11) naming the batch shape the model was given and the usual fix for a sample passed without
        its batch dimension.
        """
        try:
            return self._call(fn, inp)
        except WhyboxError:
            raise
        except Exception as err:
            _note_batch_shape(err, inp, getattr(self.adapter, "model", None))
            raise

    def _call(self, fn: Callable[[torch.Tensor], R], inp: torch.Tensor) -> R:
        if (
            self._channels_last is False
            or inp.dim() != 4
            or inp.device.type != "cpu"
            or not inp.is_floating_point()
            or inp.shape[1] < 2  # one channel: channels-last is the same layout, skip the work
        ):
            return fn(inp)
        cl = inp.contiguous(memory_format=torch.channels_last)
        if self._channels_last:
            return fn(cl)
        try:
            out = fn(cl)
        except WhyboxError:
            raise
        except Exception:  # any refusal of the layout (a contiguity check may raise anything)
            out = fn(inp)  # a genuine error raises again here, in the layout the user gave
            self._channels_last = False  # the model needs the default layout
            return out
        self._channels_last = True
        return out

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw scores ``(n, K)`` of ``x``, chunked. ``x`` with no rows gives scores of no rows ``(0, K)``: the
        model is asked for them once (a torch model answers an empty batch; one that cannot gets an
        :class:`~whybox.errors.InvalidInputError`)."""
        if x.shape[0] == 0:
            return self._forward_empty(x)
        outs = []
        for s in range(0, x.shape[0], self.batch_size):
            chunk = x[s : s + self.batch_size]
            outs.append(self._score_chunk(chunk))
            self.n_forward += chunk.shape[0]
            self.n_batches += 1
        return torch.cat(outs)

    def _forward_empty(self, x: torch.Tensor) -> torch.Tensor:
        try:
            out = self._score_chunk(x)
        except WhyboxError:
            raise
        except Exception as err:
            raise InvalidInputError(
                f"x holds no rows (shape {tuple(x.shape)}) and the model cannot score an empty batch to say how many "
                f"outputs it has ({type(err).__name__}: {err}); pass at least one row."
            ) from err
        self.n_batches += 1
        return out

    @staticmethod
    def _run_chunks(starts: range, prepare: Callable[[int], Any], run: Callable[..., None], prefetch: bool) -> None:
        """Score every chunk of :meth:`scores`: ``prepare`` renders chunk ``s``, ``run`` scores it; with
        ``prefetch`` the next chunk renders in a worker thread while the model scores this one."""
        if prefetch and len(starts) > 1:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="whybox-render") as pool:
                ahead = pool.submit(prepare, starts[0])
                try:
                    for j, s in enumerate(starts):
                        ready = ahead.result()
                        if j + 1 < len(starts):
                            ahead = pool.submit(prepare, starts[j + 1])
                        run(s, *ready)
                except BaseException:
                    ahead.cancel()  # a chunk still queued is dropped; one already rendering finishes first
                    raise
        else:
            for s in starts:
                run(s, *prepare(s))

    @torch.no_grad()
    def scores(
        self,
        x: torch.Tensor,
        masks: MaskSource,
        *,
        n_masks: int | torch.Tensor | None = None,
        fill: FillSource,
        target: Target,
        groups: FeatureGroups | None = None,
        score: str | None = "logit",
        on_scores: ScoresHook | None = None,
        prefetch: bool = False,
        live: torch.Tensor | None = None,
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
        n_masks
            N for a callable ``masks``; or a ``(B,)`` int tensor of per-row counts (ragged: row i is scored on
            masks ``0..n_masks[i]-1``, chunks still span rows, and the result holds NaN beyond each row's count).
        fill
            Replacement values shaped like ``x``; or a callable ``(rows, ks, element_masks) -> (n, *S)`` giving
            the fill of each rendered mask on demand (a fill that depends on the mask, such as ROAD's noisy
            linear imputation, or one drawn per mask, such as Infidelity's noisy baselines).
        target
            The resolved target (row ``i`` is scored on its own class).
        score
            ``"logit"``, ``"prob"``, ``"log_prob"`` or ``None`` (``"prob"``, the raw score where K = 1).
        on_scores
            Optional callback ``(raw_scores (n, K), rows (n,), ks (n,))`` called once per chunk with the model's
            raw scores, for callers that need more than the target score (e.g. the predicted class).
        prefetch
            Render the next chunk (its masks and fill) in a worker thread while the model scores this one: for a
            costly fill computed off the model (ROAD's sparse solves release the GIL, as the model's kernels do).
            The chunks are rendered one at a time in their usual order, so the values do not change; ``masks``
            and ``fill`` must not read what ``on_scores`` writes. At most two chunks are held at once.
        live
            Optional ``(B, N)`` bool: score only these (row, mask) pairs (e.g. those whose input differs from
            another pair's, known to score the same); the others are never rendered and come back NaN. ``masks``,
            ``fill`` and ``on_scores`` see the pairs' own mask indices. Not with per-row ``n_masks``.

        Returns
        -------
        Tensor ``(B, N)`` float64 on the model's device (N = the largest count when ``n_masks`` is a tensor).
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
            n = 0 if isinstance(n_masks, torch.Tensor) else n_masks
            render = masks
        ragged: tuple[torch.Tensor, torch.Tensor] | None = None  # (counts, ends) of per-row mask counts
        picks: torch.Tensor | None = None  # with live: row i's j-th scored pair is mask picks[i, j]
        if live is not None:
            if isinstance(n_masks, torch.Tensor):
                raise InvalidParameterError("live and per-row n_masks cannot be combined.")
            live = live.to(device=x.device, dtype=torch.bool)
            if live.shape != (b, n):
                raise InvalidParameterError(f"live must be ({b}, {n}) bool (rows x masks); got {tuple(live.shape)}.")
            if bool(live.all()):
                live = None  # every pair: the plain path
        if live is not None:
            picks = torch.sort((~live).to(torch.uint8), dim=1, stable=True).indices  # live masks first, in order
            counts = live.sum(1)
            ragged = (counts, counts.cumsum(0))
            total = int(ragged[1][-1])
        elif isinstance(n_masks, torch.Tensor):  # the (row, k) pairs of all rows, flattened row by row
            counts = n_masks.to(device=x.device, dtype=torch.int64).reshape(-1)
            if counts.shape[0] != b or bool((counts < 0).any()):
                raise InvalidParameterError(f"n_masks as a tensor must hold {b} non-negative per-row counts.")
            ragged = (counts, counts.cumsum(0))
            n, total = int(counts.max()), int(ragged[1][-1])
        else:
            total = b * n
        out = torch.empty(total, dtype=torch.float64, device=x.device)

        @torch.no_grad()  # grad mode is per thread: the worker's too
        def prepare(s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            idx = torch.arange(s, min(s + self.batch_size, total), device=x.device)
            if ragged is None:
                rows, ks = idx // n, idx % n
            else:
                rows = torch.searchsorted(ragged[1], idx, right=True)
                ks = idx - ragged[1][rows] + ragged[0][rows]
                if picks is not None:
                    ks = picks[rows, ks]
            m = render(rows, ks).to(x.device)
            if m.ndim < x.ndim:  # G broadcasts to S from the right: (n, H, W) masks for (C, H, W) rows
                m = m.view(m.shape[0], *(1,) * (x.ndim - m.ndim), *m.shape[1:])
            # a chunk of one input row (the common case) broadcasts that row instead of copying it per mask
            src = rows[:1] if bool((rows == rows[0]).all()) else rows
            xr = x[src]
            fr = fill(rows, ks, m) if callable(fill) else fill[src]
            if m.dtype == torch.bool:
                return torch.where(m, xr, fr), rows, ks
            return fr + m.to(x.dtype) * (xr - fr), rows, ks

        def run(s: int, inp: torch.Tensor, rows: torch.Tensor, ks: torch.Tensor) -> None:
            raw = self._score_chunk(inp)
            self.n_forward += inp.shape[0]
            self.n_batches += 1
            if on_scores is not None:
                on_scores(raw, rows, ks)
            out[s : s + inp.shape[0]] = target.select(apply_score_space(raw, score), rows).to(torch.float64)

        starts = range(0, total, self.batch_size)
        with probability_check_over_chunks():  # one warning for the call, whatever batch_size cuts it into
            self._run_chunks(starts, prepare, run, prefetch)
        if ragged is None:
            return out.view(b, n)
        if live is not None:
            full = torch.full((b, n), float("nan"), dtype=torch.float64, device=x.device)
            full[live] = out  # both row by row, masks in order
            return full
        padded = torch.full((b, n), float("nan"), dtype=torch.float64, device=x.device)
        padded[torch.arange(n, device=x.device) < ragged[0].view(-1, 1)] = out
        return padded
