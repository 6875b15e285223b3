"""Explainers; importing this package fills the registry."""

from whybox.explainers import cam, gradient, perturbation
from whybox.explainers.base import Explainer, GradientExplainer

__all__ = ["Explainer", "GradientExplainer", "cam", "gradient", "perturbation"]
