"""Perturbation explainers (ATTRIBUTION.md §3), all scored through the masking engine."""

from whybox.explainers.perturbation.exact_shapley import ExactShapley
from whybox.explainers.perturbation.feature_ablation import FeatureAblation
from whybox.explainers.perturbation.kernel_shap import KernelShap
from whybox.explainers.perturbation.lime import Lime
from whybox.explainers.perturbation.occlusion import Occlusion
from whybox.explainers.perturbation.rise import Rise
from whybox.explainers.perturbation.shapley_sampling import ShapleySampling

__all__ = ["ExactShapley", "FeatureAblation", "KernelShap", "Lime", "Occlusion", "Rise", "ShapleySampling"]
