"""Explainers; importing this package fills the registry."""

from whybox.explainers import cam, gradient, lima, perturbation
from whybox.explainers.attention import explainers as _attention  # noqa: F401  (registers the attention methods)
from whybox.explainers.base import Explainer, GradientExplainer

__all__ = ["Explainer", "GradientExplainer", "cam", "gradient", "lima", "perturbation"]
