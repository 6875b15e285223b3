"""Feature groups, fills and the one perturbation loop (the masking engine)."""

from whybox.masking.engine import MaskingEngine
from whybox.masking.features import FeatureGroups, cells, columns, grid, pixels, segments, step_ids, superpixels
from whybox.masking.fills import FILLS, gaussian_blur, make_fill

__all__ = [
    "FILLS",
    "FeatureGroups",
    "MaskingEngine",
    "cells",
    "columns",
    "gaussian_blur",
    "grid",
    "make_fill",
    "pixels",
    "segments",
    "step_ids",
    "superpixels",
]
