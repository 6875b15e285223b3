"""Titled PNG figures (one overlay, or a grid of them) drawn with matplotlib's object API and Agg canvas.

No pyplot: figures are never registered with a GUI, and the global backend is left alone. Titles are
drawn with ``parse_math=False`` so a ``$`` in a class name or method name is shown literally.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from whybox.errors import InvalidInputError

__all__ = ["save_grid_figure", "save_stability_figure", "save_titled_png"]

_PANEL_INCHES = 2.6
_DPI = 100


def _check_rgb(array: np.ndarray) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InvalidInputError(f"panel images must have shape (H, W, 3); got {arr.shape}.")
    return arr


def _wrapped(text: str, ax: Axes, fontsize: float) -> str:
    """``text`` broken into lines that fit ``ax``'s width: matplotlib's own ``wrap=True`` re-reads the text as
    mathtext whatever ``parse_math`` says (a ``$`` in a class name then fails to draw)."""
    fig = ax.get_figure(root=True)
    inches = ax.get_position().width * (fig.get_figwidth() if fig is not None else 4.0)
    chars = max(8, int(inches * 72 / (0.6 * fontsize)))  # an average glyph is about 0.6 em wide
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def _draw(ax: Axes, rgb: np.ndarray, title: str, fontsize: float) -> None:
    small = max(rgb.shape[:2]) < 64  # e.g. 8 x 8 digits: show crisp pixels, not a blur
    ax.imshow(rgb, interpolation="nearest" if small else "antialiased")
    ax.set_title(_wrapped(title, ax, fontsize), fontsize=fontsize, parse_math=False)
    ax.set_axis_off()


def save_titled_png(path: str | os.PathLike[str], rgb: np.ndarray, title: str) -> Path:
    """Save one ``(H, W, 3)`` image with ``title`` above it as a PNG; returns the path."""
    rgb = _check_rgb(rgb)
    fig = Figure(figsize=(_PANEL_INCHES * 1.3, _PANEL_INCHES * 1.3 + 0.45), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.84))
    _draw(ax, rgb, title, fontsize=9)
    path = Path(path)
    fig.savefig(path, format="png", dpi=_DPI)
    return path


def save_grid_figure(
    path: str | os.PathLike[str],
    panels: Sequence[tuple[np.ndarray, str]],
    *,
    title: str = "",
    ncols: int = 4,
) -> Path:
    """Save ``panels`` (``(rgb (H, W, 3), caption)`` pairs) as a grid PNG with an optional overall title."""
    if not panels:
        raise InvalidInputError("panels must hold at least one (image, caption) pair.")
    ncols = max(1, min(ncols, len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(_PANEL_INCHES * ncols, _PANEL_INCHES * nrows + 0.5), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k < len(panels):
            rgb, caption = panels[k]
            _draw(ax, _check_rgb(rgb), caption, fontsize=8)
        else:
            ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10, parse_math=False)
    path = Path(path)
    fig.savefig(path, format="png", dpi=_DPI)
    return path


def _map_array(m: object, what: str) -> np.ndarray:
    if isinstance(m, torch.Tensor):
        m = m.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(m, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise InvalidInputError(f"{what} must have shape (H, W) (or (1, H, W)); got {arr.shape}.")
    return np.where(np.isfinite(arr), arr, 0.0)


def save_stability_figure(
    path: str | os.PathLike[str],
    rgb: np.ndarray,
    mean_map: object,
    std_map: object,
    *,
    title: str = "",
    lines: Sequence[str] = (),
) -> Path:
    """Save the picture of a repeated-runs stability check as a PNG; returns the path.

    Four panels: the input, the mean attribution over the runs (diverging colormap centred on zero), the
    per-feature standard deviation over the runs on the *same* scale (so a std as large as the weights looks as
    bright as they do), and ``lines`` of text (the stability numbers). Non-finite values are drawn as 0.

    Parameters
    ----------
    rgb
        ``(H, W, 3)`` input image.
    mean_map, std_map
        ``(H, W)`` (or ``(1, H, W)``) tensors or arrays, e.g. ``meta["mean"][i]`` and ``meta["std"][i]`` of the
        ``stability`` metric.
    """
    from whybox.report.overlay import DIVERGING_CMAP, SEQUENTIAL_CMAP

    rgb = _check_rgb(rgb)
    mean = _map_array(mean_map, "mean_map")
    std = _map_array(std_map, "std_map")
    scale = max(float(np.abs(mean).max(initial=0.0)), float(std.max(initial=0.0))) or 1.0
    small = max(mean.shape) < 64
    interp = "nearest" if small else "antialiased"
    fig = Figure(figsize=(_PANEL_INCHES * 4 + 1.0, _PANEL_INCHES + 0.9), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4, squeeze=True)
    _draw(axes[0], rgb, "input", fontsize=8)
    im = axes[1].imshow(mean, cmap=DIVERGING_CMAP, vmin=-scale, vmax=scale, interpolation=interp)
    axes[1].set_title("mean weight over the runs", fontsize=8, parse_math=False)
    fig.colorbar(im, ax=axes[1], shrink=0.8)
    im = axes[2].imshow(std, cmap=SEQUENTIAL_CMAP, vmin=0.0, vmax=scale, interpolation=interp)
    axes[2].set_title("std over the runs (same scale)", fontsize=8, parse_math=False)
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    for ax in axes[1:3]:
        ax.set_axis_off()
    axes[3].set_axis_off()
    axes[3].text(0.0, 1.0, _wrapped("\n".join(lines), axes[3], 8), va="top", ha="left", fontsize=8,
                 family="monospace", parse_math=False, transform=axes[3].transAxes)  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=10, parse_math=False)
    path = Path(path)
    fig.savefig(path, format="png", dpi=_DPI)
    return path
