"""The whybox error tree.

Every error subclasses :class:`WhyboxError` and the builtin it resembles, so ``except ValueError``
keeps working. Messages name the parameter, what came in, and what to do instead.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

__all__ = [
    "AmbiguousLayoutWarning",
    "BatchCouplingWarning",
    "DataFormatError",
    "DatasetNotFoundError",
    "InvalidInputError",
    "InvalidParameterError",
    "InvalidTargetError",
    "LayerError",
    "MissingExtraError",
    "ModelOutputError",
    "NotDifferentiableError",
    "UnderdeterminedWarning",
    "UnknownCategoryError",
    "UnknownNameError",
    "WhyboxError",
    "did_you_mean",
]


def check_bool(name: str, value: object) -> bool:
    """``value`` as a bool, for an on/off option: ``True`` or ``False`` only (NumPy's too). ``bool("False")`` is
    True, so a string (a command line's ``False``) is an error, not a quiet yes."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise InvalidParameterError(f"{name} must be True or False; got {value!r}.")


def did_you_mean(value: Any, choices: Iterable[str], n: int = 1, cutoff: float = 0.6) -> str:
    """`` Did you mean 'x'?`` for the choices closest to a mistyped string (up to ``n``), or ``""``: the hint every
    "not a known name" error appends."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [str(c) for c in choices], n=n, cutoff=cutoff)
    return f" Did you mean {', '.join(map(repr, close))}?" if close else ""


class WhyboxError(Exception):
    """Base class of every error whybox raises on purpose."""


class InvalidParameterError(WhyboxError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


class InvalidInputError(WhyboxError, ValueError):
    """The inputs to explain have the wrong rank, dtype or non-finite values."""


class UnknownCategoryError(WhyboxError, ValueError):
    """A scikit-learn estimator refused a category it was not fitted on, and whybox cannot tell which table of the
    call (the inputs, a fill row, background rows) brought it in: the message quotes the estimator's refusal and
    lists the candidates. Where one table did, the error is that table's (:class:`InvalidInputError` for the
    inputs, :class:`InvalidParameterError` for an option)."""


class InvalidTargetError(WhyboxError, ValueError):
    """The target to explain is out of range or of the wrong kind."""


class UnknownNameError(WhyboxError, KeyError):
    """A registry name (method, metric, layer, model) is not known; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would repr() the message and show quotes
        return str(self.args[0]) if self.args else ""


class LayerError(WhyboxError, ValueError):
    """A layer cannot be tapped (unknown, reused without a call index, non-tensor output, ...)."""


class ModelOutputError(WhyboxError, TypeError):
    """The model's output is not a (B, K) score tensor and no ``output=`` selector says how to get one."""


class NotDifferentiableError(WhyboxError, TypeError):
    """A gradient method was asked of a model whose scores carry no gradient."""


class MissingExtraError(WhyboxError, ImportError):
    """An optional dependency group (a pip "extra") is not installed; the message says how to add it."""


class DatasetNotFoundError(WhyboxError, FileNotFoundError):
    """A dataset's files are not on disk; the message lists the paths searched and how to install them."""


class DataFormatError(WhyboxError, ValueError):
    """A data file exists but its content is not in the expected format (truncated, wrong magic, ...)."""


class AmbiguousLayoutWarning(UserWarning):
    """3-D inputs ``(B, N, N)`` of a model whose first ``nn.Conv1d`` reads ``N`` channels fit both a 1-D signal
    ``(B, C, L)`` and a sequence ``(B, T, D)`` the model permutes, and whybox could not probe the model to tell (a
    TorchScript model, one that does not run on one row): they are read as signals."""


class BatchCouplingWarning(UserWarning):
    """The model's output for a row depends on the other rows of its batch (a BatchNorm without running
    statistics normalises every forward pass with that batch's statistics, in eval mode too): results change with
    ``batch_size`` and with what is explained beside a row."""


class UnderdeterminedWarning(UserWarning):
    """A fit had fewer independent equations than unknowns (Kernel SHAP's paired draws at a small ``n_samples``): its
    values are one of many that fit the evaluations (the minimum-norm one), not estimates of the Shapley values."""
