"""Titled PNG figures (one overlay, or a grid of them) drawn with matplotlib's object API and Agg canvas.

No pyplot: figures are never registered with a GUI, and the global backend is left alone. Titles are
drawn with ``parse_math=False`` so a ``$`` in a class name or method name is shown literally.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from whybox.errors import InvalidInputError

__all__ = ["save_grid_figure", "save_titled_png"]

_PANEL_INCHES = 2.6
_DPI = 100


def _check_rgb(array: np.ndarray) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InvalidInputError(f"panel images must have shape (H, W, 3); got {arr.shape}.")
    return arr


def _draw(ax: Axes, rgb: np.ndarray, title: str, fontsize: float) -> None:
    small = max(rgb.shape[:2]) < 64  # e.g. 8 x 8 digits: show crisp pixels, not a blur
    ax.imshow(rgb, interpolation="nearest" if small else "antialiased")
    ax.set_title(title, fontsize=fontsize, parse_math=False, wrap=True)
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
