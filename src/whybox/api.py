"""The facade: ``explain``, ``methods``, ``get_explainer``."""

from __future__ import annotations

from typing import Any

import torch

from whybox import explainers as _explainers  # noqa: F401  (fills the registry)
from whybox.explanation import Explanation
from whybox.models.targets import TargetLike
from whybox.registry import EXPLAINERS

__all__ = ["explain", "get_explainer", "methods"]


def methods() -> list[str]:
    """Registered explainer names, sorted."""
    return EXPLAINERS.names()


def get_explainer(name: str) -> type:
    """The explainer class registered under ``name``; unknown names list the known ones."""
    return EXPLAINERS.get(name)


def explain(
    model: Any, inputs: torch.Tensor, method: str, /, *, target: TargetLike = None, **params: Any
) -> Explanation:
    """Explain ``inputs`` with ``method``.

    Parameters
    ----------
    model
        A ``torch.nn.Module`` (adapted on the fly as a classifier), a fitted scikit-learn estimator, or
        a :class:`~whybox.models.ModelAdapter` from :func:`whybox.adapt`.
    inputs
        ``(B, ...)`` tensor with a leading batch dimension.
    method
        A name from :func:`methods`.
    target
        ``None`` (each row's predicted class), an int, per-row ints ``(B,)`` or a callable
        ``scores (B, K) -> (B,)``.
    **params
        The method's keyword options (see ``get_explainer(method)``). ``model``, ``inputs`` and ``method``
        are positional-only, so an option may share their names (Integrated Gradients' ``method=``
        quadrature rule).

    Returns
    -------
    Explanation
    """
    cls = EXPLAINERS.get(method)
    try:
        explainer = cls(model, **params)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        import inspect

        names = sorted(
            {
                p.name
                for c in cls.__mro__
                if "__init__" in c.__dict__
                for p in inspect.signature(c.__dict__["__init__"]).parameters.values()
                if p.kind is p.KEYWORD_ONLY
            }
        )
        from whybox.errors import InvalidParameterError

        raise InvalidParameterError(
            f"{method!r} got an unknown option: {exc}. Its options are: {', '.join(names)}."
        ) from None
    return explainer.explain(inputs, target=target)
