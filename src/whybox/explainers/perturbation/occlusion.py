"""Occlusion (Zeiler & Fergus 2014): slide a window, set it to the fill, average the score drops."""

from __future__ import annotations

import math
from typing import Any

import torch

from whybox.errors import InvalidParameterError
from whybox.explainers.perturbation._common import F64, FirstMaskTarget, PerturbationExplainer
from whybox.masking.engine import MaskingEngine
from whybox.models.adapter import is_signal
from whybox.models.inputs import python_number, python_numbers
from whybox.models.targets import Target, TargetLike
from whybox.registry import EXPLAINERS

__all__ = ["Occlusion", "coverage_average", "window_hits", "window_positions"]

SizeLike = int | tuple[int, ...] | None


def window_positions(size: int, window: int, stride: int) -> torch.Tensor:
    """``(P, size)`` bool: which elements window position p covers along one dimension.

    P = ceil((size - window) / stride) + 1; position p starts at p * stride and is cut at the border.
    """
    n = -(-(size - window) // stride) + 1
    start = torch.arange(n).view(-1, 1) * stride
    idx = torch.arange(size).view(1, -1)
    return (idx >= start) & (idx < start + window)


def coverage_average(delta: torch.Tensor, inside: list[torch.Tensor]) -> torch.Tensor:
    """Mean of the window scores ``delta`` ``(B, P_1, ..., P_r)`` over the windows covering each element (0 where
    none does).

    ``inside[d]`` is :func:`window_positions` of dimension d; windows are products of per-dimension
    intervals, so the sums are separable contractions. Returns ``(B, D_1, ..., D_r)`` float64.
    """
    out = delta.to(F64)
    count = torch.ones((), dtype=F64, device=out.device)  # a 1-d CPU count would not broadcast with CUDA tensors
    for a in inside:
        a64 = a.to(device=out.device, dtype=F64)
        out = torch.tensordot(out, a64, dims=([1], [0]))  # contracts P_d, appends D_d at the end
        count = count.unsqueeze(-1) * a64.sum(0)
    return torch.where(count > 0, out / count.clamp_min(1), torch.zeros_like(out))


def window_hits(changed: torch.Tensor, inside: list[torch.Tensor]) -> torch.Tensor:
    """``(B, P_1 * ... * P_r)`` float64: how many elements where ``changed`` ``(B, D_1, ..., D_r)`` holds each window
    position covers (windows in raster order of their positions; ``inside`` as :func:`coverage_average`)."""
    out = changed.to(F64)
    for a in inside:
        out = torch.tensordot(out, a.to(device=out.device, dtype=F64), dims=([1], [1]))  # D_d -> P_d, at the end
    return out.reshape(changed.shape[0], -1)


@EXPLAINERS.register("occlusion")
class Occlusion(PerturbationExplainer):
    """Slide a ``window`` with ``stride`` over each row; element u gets the mean of f_c(x) - f_c(x with the
    window set to the fill) over the windows covering u.

    Parameters
    ----------
    window
        Window extent. An int ``k`` is ``(C, k, k)`` on images (all channels at once) and ``(k,)`` on
        ``(B, F)`` rows; a pair ``(h, w)`` on images is ``(C, h, w)``; or one extent per dimension of a row
        (as captum's ``sliding_window_shapes``). ``None``: ``(C, ceil(H/8), ceil(W/8))`` on images, ``(C, ceil(L/16))``
        on 1-D signals ``(B, C, L)`` (an int ``k`` or ``(k,)`` there is ``(C, k)``), one element elsewhere.
    stride
        Step per dimension (same forms as ``window``). ``None``: half the window (at least 1), and the full
        extent along dimensions the window spans entirely (channels); at most the window. Positions per
        dimension are ``ceil((D - w) / s) + 1``; the last window is cut at the border.
    fill
        The baseline a window is set to (default zero, as captum's ``baselines=None``).

    Shapes
    ------
    inputs ``(B, *S)`` -> attributions ``(B, *S)``. Cost: ``B * (1 + prod_d P_d)`` forward passes, as captum, less
    one for each window whose elements all equal the fill already (its drop is exactly 0; ``meta["n_unchanged_windows"]``).

    References
    ----------
    Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014.
    """

    def __init__(self, model: Any, *, window: SizeLike = None, stride: SizeLike = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        # NumPy ints, and sizes as a NumPy array or a tensor, read as the Python ints they hold
        window, stride = (python_numbers(python_number(v)) for v in (window, stride))
        for name, v in (("window", window), ("stride", stride)):
            ok = v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)
            ok = ok or (isinstance(v, (tuple, list)) and len(v) > 0 and all(isinstance(i, int) and i >= 1 for i in v))
            if not ok:
                raise InvalidParameterError(f"{name} must be an int >= 1 or a tuple of them; got {v!r}.")
        self.window = tuple(window) if isinstance(window, list) else window
        self.stride = tuple(stride) if isinstance(stride, list) else stride

    def _expand(
        self,
        v: int | tuple[int, ...],
        shape: tuple[int, ...],
        name: str,
        window: tuple[int, ...] | None,
        signal: bool = False,
    ) -> tuple[int, ...]:
        image = len(shape) == 3
        if isinstance(v, int):
            if image:
                v = (v, v)
            elif len(shape) == 1 or signal:
                v = (v,)
            else:
                raise InvalidParameterError(
                    f"{name} must give one extent per dimension of a row {shape} for these inputs; got {v!r}."
                )
        if (image and len(v) == 2) or (signal and len(v) == 1):  # spatial or time extents: all channels at once
            c = shape[0]
            lead = c if window is None or window[0] == c else 1
            v = (lead if name == "stride" else c, *v)
        if len(v) != len(shape):
            raise InvalidParameterError(
                f"{name}={v!r} has {len(v)} extents but a row has shape {shape} ({len(shape)} dimensions)."
            )
        if name == "window" and any(w > d for w, d in zip(v, shape, strict=True)):
            raise InvalidParameterError(f"window={v!r} is larger than a row {shape} along some dimension.")
        return tuple(v)

    def resolve(self, shape: tuple[int, ...], *, signal: bool = False) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The (window, stride) used on rows of ``shape`` (``signal``: a 1-D signal's ``(C, L)``)."""
        window: tuple[int, ...]
        if self.window is None:
            if signal:
                window = (shape[0], -(-shape[1] // 16))
            else:
                window = (shape[0], -(-shape[1] // 8), -(-shape[2] // 8)) if len(shape) == 3 else (1,) * len(shape)
        else:
            window = self._expand(self.window, shape, "window", None, signal)
        if self.stride is None:
            stride = tuple(d if w == d else max(1, w // 2) for w, d in zip(window, shape, strict=True))
        else:
            stride = self._expand(self.stride, shape, "stride", window, signal)
            if any(s > w for s, w in zip(stride, window, strict=True)):
                raise InvalidParameterError(
                    f"stride={stride!r} is larger than window={window!r} along some dimension, so some elements "
                    "would never be occluded; use a stride at most the window."
                )
        return window, stride

    def _explain(
        self, x: torch.Tensor, target: TargetLike, engine: MaskingEngine, n_backward: list[int]
    ) -> tuple[torch.Tensor, Target, dict[str, Any]]:
        shape = tuple(x.shape[1:])
        window, stride = self.resolve(shape, signal=is_signal(self.adapter, x))
        inside = [window_positions(d, w, s) for d, w, s in zip(shape, window, stride, strict=True)]
        counts = [int(a.shape[0]) for a in inside]
        n = math.prod(counts)
        b = x.shape[0]
        fill = self._fills(x)
        # a window whose every element already equals the fill leaves the row as it was: its drop is exactly 0,
        # and it is not scored (as feature_ablation's null groups), nor counted against max_evaluations
        live = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device), window_hits(x != fill, inside) > 0], 1)
        skipped = int((~live).sum())
        self._check_cost(
            b * (n + 1) - skipped,
            f"{b} rows x ({n} window positions + 1 clean pass)"
            + (f", less {skipped} windows equal to the fill" if skipped else ""),
        )
        dev_inside = [a.to(x.device) for a in inside]
        strides = torch.tensor([math.prod(counts[d + 1 :]) for d in range(len(counts))], device=x.device)
        view_all = [-1] + [1] * len(shape)

        def masks(rows: torch.Tensor, ks: torch.Tensor) -> torch.Tensor:
            win = (ks - 1).clamp_min(0)
            pos = (win.view(-1, 1) // strides) % torch.tensor(counts, device=x.device)
            cover = torch.ones(ks.shape[0], *shape, dtype=torch.bool, device=x.device)
            for d, a in enumerate(dev_inside):
                view = [ks.shape[0]] + [1] * len(shape)
                view[d + 1] = shape[d]
                cover &= a[pos[:, d]].view(view)
            return ~(cover & (ks > 0).view(view_all))

        # mask 0 is the unperturbed row: it fixes the target (no separate clean pass) and f_c(x) comes from the
        # same engine call as the windows, so each difference comes from one kernel path (a lone clean row takes
        # another route in float32 GEMM); masks 1..n are the windows
        first = FirstMaskTarget(target, b)
        tgt, hook = first.engine_target(torch.arange(b))
        s = engine.scores(x, masks, n_masks=n + 1, fill=fill, target=tgt, score=self.score, on_scores=hook, live=live)
        s = torch.where(live, s, s[:, :1])
        tgt = first.finish(x, engine)
        delta = (s[:, :1] - s[:, 1:]).view(b, *counts)
        attr = coverage_average(delta, inside)
        meta = {
            "occlusion": {"window": list(window), "stride": list(stride), "positions": counts},
            "n_unchanged_windows": skipped,
        }
        return attr.to(x.dtype), tgt, meta
