"""whybox: explain PyTorch, scikit-learn and Hugging Face models, and measure how far to trust it."""

from whybox import metrics  # the metrics package, callable: whybox.metrics() lists the metric names
from whybox.api import evaluate, explain, get_explainer, methods
from whybox.debug import find_mistakes
from whybox.errors import (
    InvalidInputError,
    InvalidParameterError,
    InvalidTargetError,
    LayerError,
    ModelOutputError,
    NotDifferentiableError,
    UnknownNameError,
    WhyboxError,
)
from whybox.explainers.base import Explainer
from whybox.explanation import Explanation
from whybox.masking.engine import MaskingEngine
from whybox.models.adapter import ModelAdapter, adapt
from whybox.models.text import adapt_text, explain_text  # no transformers import: the caller brings model, tokenizer

__version__ = "0.1.0"

__all__ = [
    "Explainer",
    "Explanation",
    "InvalidInputError",
    "InvalidParameterError",
    "InvalidTargetError",
    "LayerError",
    "MaskingEngine",
    "ModelAdapter",
    "ModelOutputError",
    "NotDifferentiableError",
    "UnknownNameError",
    "WhyboxError",
    "__version__",
    "adapt",
    "adapt_text",
    "evaluate",
    "explain",
    "explain_text",
    "find_mistakes",
    "get_explainer",
    "methods",
    "metrics",
]
