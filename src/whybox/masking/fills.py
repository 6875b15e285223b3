"""Fills: what a removed feature becomes. Each returns a tensor shaped like the input rows."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from whybox.errors import InvalidInputError, InvalidParameterError, did_you_mean

__all__ = ["FILLS", "FillLike", "gaussian_blur", "make_fill"]

FILLS = ("zero", "mean", "blur", "uniform")
FillLike = str | float | int | torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


def _mirror_indices(n: int, radius: int, taps: int, device: torch.device) -> torch.Tensor:
    """Positions ``-radius .. n - 1 - radius + taps - 1`` of an axis of ``n >= 2`` samples, mirrored into
    ``0 .. n - 1`` about the first and last sample (``d c b | a b c d | c b a``): scipy's ``mode="mirror"``, periodic
    with period ``2 (n - 1)``, so a kernel longer than the axis reads each sample as often as scipy does."""
    period = 2 * (n - 1)
    u = torch.remainder(torch.arange(-radius, n - radius + taps - 1, device=device), period)
    return torch.where(u < n, u, period - u)


def _blur_axis(x: torch.Tensor, k: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` ``(B, C, H, W)`` correlated with the odd kernel ``k`` (float64, centred) along ``dim`` (2 or 3), mirror
    padded. Taps further apart than the mirror's period read the same samples, so they are summed first: the kernel
    never has more than ``2 (n - 1)`` taps, whatever its radius."""
    n = x.shape[dim]
    if n == 1:  # the mirror of one sample is that sample: a kernel summing to 1 leaves it as it is
        return x
    radius = (k.numel() - 1) // 2
    taps = min(k.numel(), 2 * (n - 1))
    folded = torch.zeros(taps, dtype=torch.float64, device=x.device)
    folded.index_add_(0, torch.arange(k.numel(), device=x.device) % taps, k)
    padded = x.index_select(dim, _mirror_indices(n, radius, taps, x.device))
    c = x.shape[1]
    shape = (c, 1, 1, taps) if dim == 3 else (c, 1, taps, 1)
    return torch.nn.functional.conv2d(padded, folded.to(x.dtype).view(1, 1, *shape[2:]).expand(shape), groups=c)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of images ``(B, C, H, W)`` with standard deviation ``sigma`` pixels, per channel.

    The kernel has radius ``int(3 sigma + 0.5)`` and sums to 1; the image is mirrored at its border
    (``d c b | a b c d | c b a``) as far as the kernel reaches, also beyond the image's own size (8 x 8 digits at
    ``sigma=5``): each channel equals ``scipy.ndimage.gaussian_filter(channel, sigma, mode="mirror", truncate=3)``.
    ``sigma=0`` returns a copy.

    Raises
    ------
    InvalidParameterError
        ``sigma`` is not a finite number >= 0.
    """
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not 0 <= sigma < math.inf:
        raise InvalidParameterError(
            f"sigma (the blur's standard deviation in pixels) must be a finite number >= 0; got {sigma!r}."
        )
    radius = int(3.0 * sigma + 0.5)
    if radius == 0 or x.numel() == 0:
        return x.clone()
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    out = _blur_axis(_blur_axis(x, k, 3), k, 2)
    return x.clone() if out is x else out  # 1 x 1 images: left as they are, in a tensor of their own


def one_value_per_column(fill: object) -> bool:
    """Whether ``fill`` sets every column alike, by name (``"zero"``, ``"mean"``) or as one number: on a model with
    coded categorical columns it would set each to an arbitrary code (``0``: its first category). A NumPy scalar, a
    0-d NumPy array or a 0-d tensor holding a number is such a number (it broadcasts to every column alike)."""
    import numpy as np

    from whybox.models.inputs import python_number

    if isinstance(fill, np.ndarray) and fill.ndim == 0:
        fill = fill[()]  # its NumPy scalar
    fill = python_number(fill)  # a real NumPy scalar or 0-d tensor as its Python number; a bool one stays a bool
    return isinstance(fill, str) or (isinstance(fill, (int, float)) and not isinstance(fill, (bool, np.bool_)))


def make_fill(
    fill: FillLike,
    x: torch.Tensor,
    *,
    sigma: float = 5.0,
    generator: torch.Generator | None = None,
    name: str = "fill",
    packing: Any = None,
) -> torch.Tensor:
    """The replacement values for ``x`` ``(B, ...)``, same shape, dtype and device.

    Parameters
    ----------
    fill
        ``"zero"``; ``"mean"`` (inputs of 3 or more dimensions are read channels first, ``(B, C, ...)``: each
        row's mean per channel over the rest, for images ``(B, C, H, W)`` and signals ``(B, C, L)``; rows
        ``(B, F)``: each row's mean; a sequence ``(B, T, D)`` would get each position's mean over its D values, so
        give it a tensor fill);
        ``"blur"`` (Gaussian blur with ``sigma`` pixels, images only); ``"uniform"`` (noise drawn
        uniformly between each row's min and max, from ``generator``); a number; a finite tensor
        broadcastable to ``x``, or a numpy array or pandas Series read as one (as the explainers and metrics read
        it), e.g. the training means ``X.mean()`` of tabular rows: ``"mean"`` is the row's own mean, which mixes the
        units of different columns; or a callable ``x -> tensor``. A tensor's (or a callable's) values are used, not its
        graph: a baseline learned elsewhere (an ``nn.Parameter``) leaves nothing in the result that requires grad.
    packing
        The :class:`~whybox.models.packed.InputPacking` of a model of several inputs, whose packed rows ``x``
        ``(B, F)`` are: ``"mean"`` and ``"uniform"`` are then each input's own (an image's per-channel means, a
        metadata vector's mean and range), not one statistic over the packed row.

    Inputs with no rows (or rows of no values) get an empty fill.

    Raises
    ------
    InvalidParameterError
        An unknown ``fill`` name; a tensor (or array) ``fill`` that holds NaN or inf or does not broadcast to ``x``;
        ``sigma`` of ``"blur"`` not a finite number >= 0.
    InvalidInputError
        ``"mean"``, ``"blur"`` or ``"uniform"`` of integer inputs (convert them to float, as the explainers do).
    """
    from whybox.models.inputs import tensor_option

    fill = tensor_option(fill, name)  # a numpy array or a pandas Series (training means), as the explainers take it
    if isinstance(fill, str) and fill in ("mean", "blur", "uniform") and not x.is_floating_point():
        raise InvalidInputError(
            f"{name}={fill!r} is computed from the inputs' values in floating point; got inputs of dtype {x.dtype}. "
            f"Pass x.float() (the explainers convert integer inputs to the model's float dtype first), or give "
            f"{name} as a number or a tensor."
        )
    if packing is not None and x.ndim == 2 and isinstance(fill, str) and fill in ("mean", "uniform"):
        parts = [make_fill(fill, p, generator=generator, name=name) for p in packing.unpack(x)]
        return torch.cat([p.reshape(x.shape[0], -1) for p in parts], 1)
    if isinstance(fill, torch.Tensor):
        if fill.is_floating_point() and not bool(torch.isfinite(fill).all()):
            bad = int((~torch.isfinite(fill)).sum())
            raise InvalidParameterError(
                f"{name} tensor holds {bad} non-finite values (NaN or inf), which the model would be asked to score; "
                f"impute them (e.g. training means with NaN columns filled) before passing {name}."
            )
        try:
            return torch.broadcast_to(fill.detach().to(device=x.device, dtype=x.dtype), x.shape).clone()
        except RuntimeError:
            hint = ""
            if x.ndim >= 3 and fill.numel() == x.shape[1] > 1:  # one value per channel, written flat: (C,)
                per = (x.shape[1],) + (1,) * (x.ndim - 2)
                view = ", ".join(map(str, per))
                hint = (
                    f" Shapes line up from the last dimension, which is {x.shape[-1]} in the inputs; for one value per "
                    f"channel give shape ({view}), e.g. torch.tensor(values).view({view})."
                )
            raise InvalidParameterError(
                f"{name} tensor of shape {tuple(fill.shape)} does not broadcast to the inputs {tuple(x.shape)}.{hint}"
            ) from None
    if callable(fill):
        out = fill(x)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            raise InvalidParameterError(
                f"a callable {name} must return a tensor shaped like the inputs {tuple(x.shape)}."
            )
        return out.detach().to(device=x.device, dtype=x.dtype)
    if isinstance(fill, (int, float)) and not isinstance(fill, bool):
        if not math.isfinite(fill):
            raise InvalidParameterError(f"{name} as a number must be finite; got {fill!r}.")
        return torch.full_like(x, float(fill))
    if fill == "zero":
        return torch.zeros_like(x)
    if fill == "mean":
        if x.numel() == 0:  # no rows, or rows of no values: nothing to fill
            return torch.empty_like(x)
        dims = tuple(range(2, x.ndim)) if x.ndim >= 3 else tuple(range(1, x.ndim))
        return x.mean(dim=dims, keepdim=True).expand_as(x).clone()
    if fill == "blur":
        if x.ndim != 4:
            raise InvalidParameterError(
                f"{name}='blur' needs images (B, C, H, W); got inputs of shape {tuple(x.shape)}. Use {name}='zero', "
                f"{name}='mean' or a tensor."
            )
        return gaussian_blur(x, sigma)
    if fill == "uniform":
        if x.numel() == 0:
            return torch.empty_like(x)
        flat = x.reshape(x.shape[0], -1)
        lo = flat.amin(1).view(-1, *([1] * (x.ndim - 1)))
        hi = flat.amax(1).view(-1, *([1] * (x.ndim - 1)))
        u = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
        return lo + (hi - lo) * u
    raise InvalidParameterError(
        f"{name} must be one of {FILLS}, a number, a tensor or a callable; got {fill!r}."
        f"{did_you_mean(fill, FILLS) if isinstance(fill, str) else ''}"
    )
