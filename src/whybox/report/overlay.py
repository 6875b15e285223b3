"""Attribution maps as pictures: a coloured, semi-transparent heatmap laid over the image.

Pure functions of arrays; numpy and matplotlib live here (and in :mod:`whybox.cli`), never in the
explainers.

How a map is coloured
---------------------
``reading`` says what the numbers mean; the colours follow from it.

* ``"signed"``: attributions whose zero and sign mean something (Integrated Gradients, Input x Gradient,
  signed SmoothGrad, occlusion, LIME, the Shapley family, ...). Diverging colormap ``"RdBu_r"`` centred on
  zero: red raises the explained score, blue lowers it, even when every value has the same sign (so two
  methods' maps can be compared). Taking ``abs`` would hide the one thing these methods add over Saliency.
* ``"positive"``: non-negative magnitudes with a meaningful zero (Saliency's ``|gradient|``,
  SmoothGrad-squared). Sequential colormap ``"inferno"`` (dark purple low, yellow high) over ``[0, s]``;
  negative values count as 0.
* ``"relative"``: relevance maps whose offset carries no information (every CAM, min-max scaled; RISE,
  whose maps sit on a large constant). Sequential colormap over ``[min, min + s]``: without removing the
  offset RISE would paint the whole image. A constant map is shown blank.
* ``"auto"`` (default): ``"signed"`` if any value is negative, else ``"positive"``.

The colour scale ``s`` is the ``clip_percentile``-th percentile of the non-zero magnitudes (99.5 by
default): pixel-gradient maps have a few extreme pixels that would otherwise wash everything else out;
values beyond ``s`` saturate. The heatmap's opacity grows linearly with the magnitude over ``s`` up to
``max_alpha``, so pixels that do not matter leave the photo visible. The photo underneath is shown in
grayscale by default (``base="gray"``): a red attribution on a red saucer would otherwise be invisible,
and the photo's own colours could be read as attribution (compared side by side on the bundled photos).
Non-finite values are fully transparent and do not move the scale; an all-zero map is fully transparent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps

from whybox.errors import InvalidInputError, InvalidParameterError, did_you_mean

__all__ = ["BASES", "DIVERGING_CMAP", "READINGS", "SEQUENTIAL_CMAP", "overlay", "save_png", "to_heatmap"]

SEQUENTIAL_CMAP = "inferno"
DIVERGING_CMAP = "RdBu_r"
BASES = ("gray", "color")
READINGS = ("auto", "signed", "positive", "relative")
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma weights


def _as_array(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    if isinstance(x, np.ndarray):
        return x.astype(np.float64, copy=False)
    raise InvalidInputError(f"{what} must be a torch.Tensor or a numpy array; got {type(x).__name__}.")


def _range_hint(img: np.ndarray, dtype: Any) -> str:
    """The fix for a picture outside [0, 1]: divide a uint8 picture by 255; one whose values lie in [0, 255] may
    hold 0-255 values too (or be normalised); else undo the model's normalisation."""
    undo = "undo the model's normalisation (e.g. whybox.data.imagenet_unnormalize)"
    if dtype == torch.uint8 if isinstance(dtype, torch.dtype) else isinstance(dtype, np.dtype) and dtype == np.uint8:
        return f"A {dtype} picture holds 0-255 values: divide it by 255 first (image / 255, or image.float() / 255)."
    if bool(np.isfinite(img).all()) and img.min() >= 0.0 and img.max() <= 255.0:
        return f"If it holds 0-255 values, divide it by 255 first (image / 255); else {undo}."
    return f"{undo[0].upper()}{undo[1:]} first."


def _map_2d(attr_map: Any) -> np.ndarray:
    m = _as_array(attr_map, "map")
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise InvalidInputError(
            f"map must have shape (H, W) (or (1, H, W)); got {m.shape}. Use Explanation.to_map()[i] for row i."
        )
    return m


def _resized(m: np.ndarray, h: int, w: int) -> np.ndarray:
    """``m`` resized bilinearly to ``(h, w)``, its non-finite cells kept out: each pixel is the bilinear mean of
    the finite cells around it (their weights renormalised), and a pixel whose nearest cell is non-finite is NaN
    (transparent). Resizing ``m`` as it is would spread one NaN cell over every pixel it touches (a 2 x 2 CAM with
    one NaN cell left three quarters of the picture blank)."""
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float64))[None, None]
    finite = torch.isfinite(t)
    if bool(finite.all()):
        return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    weight = finite.to(t.dtype)
    sums = F.interpolate(torch.where(finite, t, 0.0), size=(h, w), mode="bilinear", align_corners=False)
    weights = F.interpolate(weight, size=(h, w), mode="bilinear", align_corners=False)
    near = F.interpolate(weight, size=(h, w), mode="nearest-exact")[0, 0] > 0.5  # the nearest cell is finite
    # where the nearest cell is finite it weighs at least 1/4 in the bilinear mean: weights > 0 there
    out = torch.where(near, sums[0, 0] / weights[0, 0].clamp_min(1e-12), torch.nan)
    return out.numpy()


def to_heatmap(
    attr_map: Any,
    *,
    reading: str = "auto",
    clip_percentile: float = 99.5,
    max_alpha: float = 0.7,
) -> np.ndarray:
    """Colour an attribution map as an RGBA image whose opacity follows the attribution's magnitude.

    Parameters
    ----------
    attr_map
        ``(H, W)`` (or ``(1, H, W)``) tensor or array.
    reading
        ``"auto"`` (default), ``"signed"``, ``"positive"`` or ``"relative"``: see the module docstring.
    clip_percentile
        Percentile of the non-zero magnitudes that sets the colour scale ``s``, in (0, 100].
    max_alpha
        Opacity at ``|value| >= s``, in [0, 1].

    Returns
    -------
    numpy.ndarray
        ``(H, W, 4)`` float32 RGBA in [0, 1].

    Raises
    ------
    InvalidInputError
        If ``attr_map`` is not a 2-D tensor or array.
    InvalidParameterError
        If ``reading`` is unknown or ``clip_percentile`` or ``max_alpha`` is out of range.
    """
    if reading not in READINGS:
        raise InvalidParameterError(
            f"reading must be one of {READINGS}; got {reading!r}.{did_you_mean(reading, READINGS)}"
        )
    if not 0 < clip_percentile <= 100:
        raise InvalidParameterError(f"clip_percentile must be in (0, 100]; got {clip_percentile!r}.")
    if not 0 <= max_alpha <= 1:
        raise InvalidParameterError(f"max_alpha must be in [0, 1]; got {max_alpha!r}.")
    raw = _map_2d(attr_map)
    finite = np.isfinite(raw)
    m = np.where(finite, raw, 0.0)
    if reading == "auto":
        reading = "signed" if bool((m < 0).any()) else "positive"
    signed = reading == "signed"
    if signed:
        mag = np.abs(m)
    elif reading == "relative":  # the offset carries nothing, whatever its sign: [min, min + s]
        lo = float(m[finite].min()) if finite.any() else 0.0
        mag = np.where(finite, m - lo, 0.0)
    else:  # "positive": negative values count as 0
        m = np.clip(m, 0.0, None)
        mag = m
    nonzero = mag[mag > 0]
    scale = float(np.percentile(nonzero, clip_percentile)) if nonzero.size else 0.0
    if scale <= 0.0:
        rgba = np.zeros((*m.shape, 4), dtype=np.float32)
        return rgba
    strength = np.clip(mag / scale, 0.0, 1.0)
    if signed:
        rgba = colormaps[DIVERGING_CMAP](0.5 + 0.5 * np.clip(m / scale, -1.0, 1.0))
    else:
        rgba = colormaps[SEQUENTIAL_CMAP](strength)
    rgba = np.asarray(rgba, dtype=np.float32)
    rgba[..., 3] = (max_alpha * strength).astype(np.float32)
    return rgba


def overlay(image: Any, attr_map: Any, *, base: str = "gray", **heatmap_options: Any) -> np.ndarray:
    """Lay the heatmap of ``attr_map`` over ``image``.

    Parameters
    ----------
    image
        ``(3, H, W)`` RGB (or ``(1, H, W)`` grayscale) tensor or array with values in [0, 1]
        (e.g. :func:`whybox.data.imagenet_unnormalize` of a model input).
    attr_map
        ``(H, W)`` map; a map of another size (a CAM at layer resolution) is resized bilinearly, over its finite
        cells only: a pixel whose nearest map cell is non-finite is transparent, the others are drawn.
    base
        ``"gray"`` (default): the image's luma under the heatmap; ``"color"``: the image as it is.
    **heatmap_options
        Passed to :func:`to_heatmap` (``reading``, ``clip_percentile``, ``max_alpha``).

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8 RGB.

    Raises
    ------
    InvalidInputError
        If the image is not ``(3 or 1, H, W)`` with ``H, W >= 1`` and finite values in [0, 1], or the map is not
        2-D.
    InvalidParameterError
        If ``base`` is not one of :data:`BASES` (or a heatmap option is out of range).
    """
    if base not in BASES:
        raise InvalidParameterError(f"base must be one of {BASES}; got {base!r}.{did_you_mean(base, BASES)}")
    dtype = getattr(image, "dtype", None)
    img = _as_array(image, "image")
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise InvalidInputError(f"image must have shape (3, H, W) or (1, H, W), channels first; got {img.shape}.")
    if img.shape[1] < 1 or img.shape[2] < 1:
        raise InvalidInputError(
            f"image must be at least 1 x 1 pixels; got shape {img.shape}. Pass a picture with a height and a width, "
            "(3, H, W) or (1, H, W)."
        )
    if not np.isfinite(img).all() or img.min() < 0.0 or img.max() > 1.0:
        raise InvalidInputError(
            "image must hold finite values in [0, 1]; got range "
            f"[{np.nanmin(img):.4g}, {np.nanmax(img):.4g}]. {_range_hint(img, dtype)}"
        )
    if img.shape[0] == 1:
        img = np.repeat(img, 3, axis=0)
    h, w = img.shape[1:]
    m = _map_2d(attr_map)
    if m.shape != (h, w):
        m = _resized(m, h, w)
    rgba = to_heatmap(m, **heatmap_options).astype(np.float64)
    under = img.transpose(1, 2, 0)
    if base == "gray":
        under = np.repeat((under @ _LUMA)[..., None], 3, axis=2)
    alpha = rgba[..., 3:4]
    out = under * (1.0 - alpha) + rgba[..., :3] * alpha
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def save_png(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write an ``(H, W, 3)`` or ``(H, W, 4)`` uint8 (or float in [0, 1]) array as a PNG, pixel for pixel.

    Uses :func:`matplotlib.image.imsave` (no GUI, no pyplot, the global backend untouched). Returns the path.
    An array of another shape, without pixels (a zero height or width), of another dtype or with floats outside
    [0, 1] raises :class:`~whybox.InvalidInputError`.
    """
    from matplotlib import image as mpimg

    arr = np.asarray(array)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise InvalidInputError(f"array must have shape (H, W, 3) or (H, W, 4); got {arr.shape}.")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InvalidInputError(
            f"array must be at least 1 x 1 pixels; got shape {arr.shape}. Pass an (H, W, 3) or (H, W, 4) array with "
            "a height and a width."
        )
    if arr.dtype != np.uint8:
        if arr.dtype.kind != "f":
            raise InvalidInputError(
                f"array must be uint8 (0-255) or float in [0, 1]; got dtype {arr.dtype}. Convert it, e.g. "
                "(a / a.max() * 255).astype(np.uint8)."
            )
        if not (np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0):
            raise InvalidInputError(
                f"array of floats must hold values in [0, 1]; got [{np.nanmin(arr):.4g}, {np.nanmax(arr):.4g}]"
                " (or NaN). Clip or rescale it first."
            )
    path = Path(path)
    mpimg.imsave(path, arr, format="png")
    return path
