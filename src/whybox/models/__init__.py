"""Model adapters, targets and layer taps."""

from whybox.models.adapter import EmbeddingAdapter, ModelAdapter, SklearnAdapter, TorchAdapter, adapt
from whybox.models.targets import Target, resolve_target

__all__ = [
    "EmbeddingAdapter",
    "ModelAdapter",
    "SklearnAdapter",
    "Target",
    "TorchAdapter",
    "adapt",
    "resolve_target",
]
