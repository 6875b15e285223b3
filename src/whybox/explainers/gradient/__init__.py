"""Gradient family."""

from whybox.explainers.gradient.input_x_gradient import InputXGradient
from whybox.explainers.gradient.integrated_gradients import IntegratedGradients
from whybox.explainers.gradient.saliency import Saliency
from whybox.explainers.gradient.smoothgrad import SmoothGrad

__all__ = ["InputXGradient", "IntegratedGradients", "Saliency", "SmoothGrad"]
