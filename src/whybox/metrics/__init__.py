"""Evaluation metrics; importing this package fills the ``METRICS`` registry (definitions: ``specs/METRICS.md``).

``whybox.metrics`` is this package and also the facade call ``whybox.metrics()`` (the registered metric names):
the module is callable, so both ``whybox.metrics()`` and ``import whybox.metrics.road`` work.
"""

import sys
import types

from whybox.metrics import (
    complexity,
    eraser,
    faithfulness,
    localisation,
    randomization,
    road,
    roar,
    robustness,
    stability,
)
from whybox.metrics.base import Metric, MetricResult
from whybox.registry import METRICS

__all__ = [
    "Metric",
    "MetricResult",
    "complexity",
    "eraser",
    "faithfulness",
    "localisation",
    "randomization",
    "road",
    "roar",
    "robustness",
    "stability",
]


class _MetricsModule(types.ModuleType):
    """This package, callable: ``whybox.metrics()`` returns the registered metric names, sorted."""

    def __call__(self) -> list[str]:
        return METRICS.names()


sys.modules[__name__].__class__ = _MetricsModule
