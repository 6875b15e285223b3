"""What to explain: an int, per-row ints, or a callable ``scores (B, K) -> (B,)``; ``None`` = prediction."""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from whybox.errors import InvalidInputError, InvalidParameterError, InvalidTargetError, did_you_mean

__all__ = [
    "SCORE_SPACES",
    "SOFTMAX_SPACES",
    "Target",
    "TargetLike",
    "apply_score_space",
    "class_indexer",
    "class_label_target",
    "resolve_score",
    "resolve_target",
    "true_class_indices",
]

TargetLike = int | Sequence[int] | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None
SCORE_SPACES = ("logit", "prob", "log_prob", "sigmoid", "log_sigmoid")
#: the score spaces over one set of mutually exclusive classes (a language model's vocabulary)
SOFTMAX_SPACES = ("logit", "prob", "log_prob")


def _class_names(model: object) -> Any:
    """The class names of ``model`` in output order: an adapter's own ``output_names`` (an SAE adapter's latents),
    else those of the model inside it: a scikit-learn classifier's ``classes_``, or a Hugging Face model's
    ``config.id2label`` (or its own ``id2label``); ``None`` when it names none."""
    if hasattr(model, "output_names"):  # a ModelAdapter
        if model.output_names is not None:
            return list(model.output_names)
        if getattr(model, "kind", None) == "embedding":  # outputs are references, not the model's classes
            return None
        model = getattr(model, "model", None)
    classes = getattr(model, "classes_", None)
    if classes is not None:
        if _one_decision_score(model, classes):
            return [classes[1]]  # the one score is the evidence for classes_[1]
        return classes
    for holder in (model, getattr(model, "config", None)):
        names = getattr(holder, "id2label", None)
        if isinstance(names, dict) and names and sorted(names) == list(range(len(names))):
            return [names[i] for i in range(len(names))]
    return None


def estimator_classes(model: object) -> list[Any] | None:
    """A scikit-learn classifier's ``classes_`` (also inside an adapter) as a list, or ``None``."""
    inner = getattr(model, "model", model) if hasattr(model, "output_names") else model
    if isinstance(inner, torch.nn.Module):
        return None
    classes = getattr(inner, "classes_", None)
    return None if classes is None else list(classes.tolist() if hasattr(classes, "tolist") else classes)


def _label_key(value: Any) -> Any:
    """One key for a class label however it is written: a number (``1``, ``1.0``, ``np.int64(1)``, the CSV cell
    ``"1"``) as its float value, any other text as its stripped string."""
    if isinstance(value, (bool, np.bool_)):
        return ("bool", bool(value))
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        return text


def class_indexer(model: object, what: str = "labels") -> Callable[[Any], int] | None:
    """A function from a true label written as a scikit-learn classifier's class value (``classes_``: ``[1, 2, 3]``,
    ``["no", "yes"]``, a cell of a CSV's label column) to its output index; ``None`` for a model without
    ``classes_`` (its labels are output indices). Where every class is text, an integer label in ``0..K-1`` is an
    index. A label that is not a class is an :class:`InvalidInputError` naming them."""
    classes = estimator_classes(model)
    if classes is None:
        return None
    lookup: dict[Any, int] = {}
    for i, c in enumerate(classes):
        lookup.setdefault(_label_key(c), i)
    named = not any(isinstance(k, float) for k in lookup)  # classes of text only: a number can only be an index

    def index(v: Any) -> int:
        key = _label_key(v)
        found = lookup.get(key)
        if found is None and named and isinstance(key, float) and key.is_integer() and 0 <= key < len(classes):
            found = int(key)  # classes_ ['no', 'yes'] and a label 1: its index, as whybox reads ints elsewhere
        if found is None:
            shown = classes if len(classes) <= 20 else [*classes[:20], "..."]
            raise InvalidInputError(
                f"{what}: {v!r} is not one of the model's classes {shown} (its classes_); give each row's true class "
                "as the estimator names it."
            )
        return found

    return index


def true_class_indices(model: object, labels: Sequence[Any], what: str = "labels") -> list[int] | None:
    """:func:`class_indexer` over ``labels``; ``None`` for a model without ``classes_``."""
    index = class_indexer(model, what)
    return None if index is None else [index(v) for v in labels]


def _one_decision_score(estimator: object, classes: Any) -> bool:
    """Whether a scikit-learn classifier of two classes is read through ``decision_function`` (no
    ``predict_proba``: LinearSVC, SVC without probability, RidgeClassifier): one score per row, for ``classes_[1]``."""
    return (
        len(classes) == 2
        and not callable(getattr(estimator, "predict_proba", None))
        and callable(getattr(estimator, "decision_function", None))
    )


def name_hint(value: object, names: Sequence[str]) -> str:
    """`` Did you mean ...?`` for a mistyped name among many: the names that contain it (``"tabby"`` ->
    ``"tabby cat"``), else the closest by spelling; ``""`` when none is close."""
    key = str(value).lower()
    close = [n for n in names if key in n.lower()][:3]
    return f" Did you mean {', '.join(map(repr, close))}?" if close else did_you_mean(value, names, n=3)


def class_names(model: object) -> list[str] | None:
    """The names of ``model``'s outputs in order, as strings (:func:`_class_names`: an adapter's ``output_names``,
    ``classes_``, ``id2label``), or ``None`` when it names none."""
    names = _class_names(model)
    if names is None:
        return None
    return [str(n) for n in (names.tolist() if hasattr(names, "tolist") else names)]


def class_label_target(model: object, target: Any) -> Any:
    """``target`` with output names replaced by their output indices: an adapter's ``output_names`` (an SAE
    adapter's ``"latent 12"``), else the class labels of the model (inside the adapter): a scikit-learn classifier's
    ``classes_``, e.g. ``"virginica"`` or ``["no", "yes"]``, a Hugging Face classifier's ``config.id2label``, e.g.
    ``"POSITIVE"``. Ints stay indices (also where the labels are ints), except in a pandas Series: ``y_test`` holds
    the classifier's labels, so a Series of ints is read as its ``classes_``; anything else unchanged. An unknown name is
    an :class:`InvalidTargetError` listing the names."""
    if isinstance(target, int) and not isinstance(target, bool):
        classes = estimator_classes(model)
        if classes is not None and not 0 <= target < len(classes) and target in classes:
            raise InvalidTargetError(
                f"target={target} is an output index, out of range for {len(classes)} classes; the class labelled "
                f"{target} is classes_[{classes.index(target)}]: pass target={classes.index(target)}."
            )
    import numpy as np

    classes = estimator_classes(model)
    # classes_ of bools or floats ([False, True] from a bool y, [0.0, 1.0] from a float y): a bool or float target
    # is one of those labels, never an index
    valued = classes is not None and any(isinstance(c, (bool, float)) for c in classes)
    if valued and isinstance(target, (bool, float, np.bool_, np.floating)):
        target = [target]
        scalar = True
    else:
        scalar = False
    if isinstance(target, (torch.Tensor, int)) or target is None or callable(target):
        return target
    series = type(target).__module__.split(".")[0] == "pandas" and hasattr(target, "to_numpy")
    if series:
        target = np.array(target.to_numpy())  # a Series of labels (y_test rows): its values (a writable copy)
    labels = class_names(model)
    if labels is None:
        return target
    int_classes = classes is not None and all(
        isinstance(c, (int, np.integer)) and not isinstance(c, (bool, np.bool_)) for c in classes
    )
    if series and int_classes:  # y_test of int classes_ [1, 2, 3]: labels, not indices (text classes_: indices)
        given = np.asarray(target, dtype=object).reshape(-1).tolist()
        if all(isinstance(t, (int, np.integer)) and not isinstance(t, (bool, np.bool_)) for t in given):
            target = [str(t) for t in given]  # matched by name below (a label's str is its class name)
    raw = _class_names(model)
    keys = [_label_key(c) for c in (raw.tolist() if hasattr(raw, "tolist") else raw)]

    what = "outputs" if getattr(model, "output_names", None) is not None else "classes"

    inner = getattr(model, "model", model) if hasattr(model, "output_names") else model
    classes = getattr(inner, "classes_", None)
    negative = str(classes[0]) if classes is not None and _one_decision_score(inner, classes) else None

    def index(label: object) -> int:
        if negative is not None and str(label) == negative:
            raise InvalidTargetError(
                f"target {label!r} is classes_[0] of {type(inner).__name__}, whose decision_function gives one score "
                f"per row, the evidence for {labels[0]!r} (classes_[1]); {label!r} is its negative side. Explain "
                f"{labels[0]!r} ({label!r}'s attributions are their negatives), or use a classifier with predict_proba "
                "(SVC(probability=True), CalibratedClassifierCV)."
            )
        hits = [i for i, n in enumerate(labels) if n == str(label)]
        if not hits and classes is not None:  # a label written another way: 1 or "1" for the class 1.0, np.True_
            hits = [i for i, k in enumerate(keys) if k == _label_key(label)]
        if len(hits) > 1:  # ImageNet names two classes 'missile' and two 'sunglasses'
            raise InvalidTargetError(
                f"target {label!r} names {len(hits)} of the model's {what} ({', '.join(map(str, hits))}); give the index."
            )
        if not hits:
            if len(labels) <= 20:
                raise InvalidTargetError(f"target {label!r} is not one of the model's {what} {labels}.")
            raise InvalidTargetError(
                f"target {label!r} is not one of the model's {len(labels)} {what} ({', '.join(map(repr, labels[:5]))}, "
                f"...).{name_hint(label, labels)}"
            )
        return hits[0]

    if isinstance(target, str):
        return index(target)
    if isinstance(target, (list, tuple, np.ndarray)):
        items = np.asarray(target, dtype=object).reshape(-1).tolist() if isinstance(target, np.ndarray) else target
        label_types: tuple[type, ...] = (str, np.str_, bool, float, np.bool_, np.floating) if valued else (str, np.str_)
        if any(isinstance(t, label_types) for t in items):
            out = [
                t if isinstance(t, (int, np.integer)) and not isinstance(t, (bool, np.bool_)) else index(t)
                for t in items
            ]
            return out[0] if scalar else out
    return target


def resolve_score(space: str | None, n_outputs: int) -> str:
    """The score space ``None`` stands for: ``"prob"``, or ``"logit"`` (the raw score) on a model with one output
    (a regressor, a binary classifier's single logit, one reference embedding), whose softmax is always 1. A named
    space is returned as it is."""
    if space is None:
        return "logit" if n_outputs == 1 else "prob"
    return space


def apply_score_space(scores: torch.Tensor, space: str | None) -> torch.Tensor:
    """Map raw model scores (B, K) into the score space an explainer reads.

    ``None`` is the probability where the model has several outputs and the raw score where it has one
    (:func:`resolve_score`). ``"prob"`` and ``"log_prob"`` named on a model with one output (K = 1) are an error:
    a softmax over one score is always 1, so every perturbation would look like it changes nothing.
    ``"sigmoid"`` and ``"log_sigmoid"`` read each output as the logit of its own label: the probability of a
    multi-label classifier's labels, or of a binary classifier's single logit. Half-precision scores (float16,
    bfloat16) are read in float32."""
    if space is None:
        space = resolve_score(space, int(scores.shape[-1]) if scores.ndim >= 1 else 1)
    if scores.dtype in (torch.float16, torch.bfloat16):  # a half-precision model: softmax etc. in float32, so
        scores = scores.float()  # probabilities are not rounded to 8 or 11 bits (bf16 drops came out all equal)
    if space == "logit":
        return scores
    if space == "sigmoid":
        return scores.sigmoid()
    if space == "log_sigmoid":
        return torch.nn.functional.logsigmoid(scores)
    if space in ("prob", "log_prob") and scores.ndim >= 1 and scores.shape[-1] == 1:
        raise InvalidParameterError(
            f"score={space!r} needs a model with several outputs: this one gives K = 1 score per row (a regressor, "
            "a binary classifier's single logit, one reference embedding), whose softmax is always 1. Pass "
            "score='logit' to use the raw score, or score='sigmoid' for a binary classifier's probability sigmoid(z)."
        )
    if space in ("prob", "log_prob"):
        _warn_if_probabilities(scores, space)
        return scores.softmax(-1) if space == "prob" else scores.log_softmax(-1)
    raise InvalidParameterError(
        f"score must be one of {SCORE_SPACES}; got {space!r}.{did_you_mean(space, SCORE_SPACES)}"
    )


class ProbabilityOutputWarning(UserWarning):
    """A softmax is about to be applied to model outputs that are already probabilities."""


def distribution_rows(scores: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """``(B,)`` bool: the rows of ``scores`` ``(B, K)`` that are probability distributions within rounding (every
    entry non-negative, summing to 1 within 1e-3, plus up to 5e-4 a class for probabilities rounded to 3 decimals by an
    API, plus ``eps`` a class for probabilities in a coarse dtype: a bfloat16 softmax sums to 1 +- 3e-3). The one
    test whybox uses to tell probabilities from scores."""
    k = scores.shape[1]
    tol = 1e-3 + min(k, 20) * 5e-4 + k * (1.2e-7 + (eps if eps > 1e-4 else 0.0))
    s = scores.detach()
    return (s >= 0).all(1) & ((s.sum(1) - 1).abs() <= tol)


#: set by :func:`probability_check_over_chunks`: the chunks' verdicts gathered instead of a warning per chunk
_CHUNKS: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("whybox_probability_chunks", default=None)


@contextlib.contextmanager
def probability_check_over_chunks() -> Iterator[None]:
    """Within it, :func:`apply_score_space` does not warn per call that its scores look like probabilities: the
    warning is given once at the end, when every reading's rows looked so (the masking engine's chunks of one input's
    perturbations can look like probabilities by chance where the whole call does not: no warning that depends on
    ``batch_size``). Nested in another (an explanation made inside a metric's call), the outermost one decides:
    one warning per public call."""
    if _CHUNKS.get() is not None:  # inside an outer call's check (a metric that explains): that call warns
        yield
        return
    seen: list[Any] = []
    token = _CHUNKS.set(seen)
    try:
        yield
    finally:
        _CHUNKS.reset(token)
    if seen and all(looks for looks, _ in seen):
        _probability_warning(seen[0][1], stacklevel=4)


def _warn_if_probabilities(scores: torch.Tensor, space: str) -> None:
    """Warn when ``scores`` (B, K) already look like probabilities (a model that ends in a softmax): every row
    non-negative and summing to 1. A softmax over them compresses them (``[0.9, 0.1]`` reads as ``[0.69, 0.31]``).
    Checked on the CPU only (on a GPU the check would wait for the device at every chunk)."""
    if scores.device.type != "cpu" or scores.ndim != 2 or scores.shape[1] < 2 or not scores.is_floating_point():
        return
    looks = bool(distribution_rows(scores).all())
    gathered = _CHUNKS.get()
    if gathered is not None:
        gathered.append((looks, space))
    elif looks:
        _probability_warning(space, stacklevel=4)


def _probability_warning(space: str, stacklevel: int) -> None:
    """The warning, at the user's line: the first frame outside whybox (and contextlib, whose ``__exit__`` ends a
    :func:`probability_check_over_chunks`); ``stacklevel`` where no such frame is found."""
    import sys

    frame: Any = sys._getframe(1)
    level = 2
    while frame is not None and str(frame.f_globals.get("__name__", "")).split(".")[0] in ("whybox", "contextlib"):
        frame, level = frame.f_back, level + 1
    warnings.warn(
        f"score={space!r} applies a softmax to the model's outputs, but they already look like probabilities "
        "(every row non-negative, summing to 1: a model that ends in a softmax), and a softmax of probabilities "
        "compresses them ([0.9, 0.1] reads as [0.69, 0.31]). Adapt the model to their log, "
        "whybox.adapt(model, output=torch.log), so that score='prob' gives them back; or pass score='logit' to "
        "read them as they are.",
        ProbabilityOutputWarning,
        stacklevel=level if frame is not None else stacklevel,
    )


@dataclass(frozen=True)
class Target:
    """A normalised target: per-row class indices (``-1`` where ``fn`` decides) and an optional callable."""

    index: torch.Tensor  # (B,) int64
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    checked: bool = True  # False: indices not yet compared with the model's number of outputs

    def select(self, scores: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The explained scalar per row of ``scores`` (n, K); ``rows`` (n,) maps each to its input row."""
        if not self.checked and self.fn is None:
            _check_range(self.index, scores.shape[1])
        if self.fn is not None:
            out = self.fn(scores)
            if not isinstance(out, torch.Tensor) or out.shape != scores.shape[:1]:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise InvalidTargetError(
                    f"a callable target must map scores {tuple(scores.shape)} to shape ({scores.shape[0]},); "
                    f"it returned {got}. Return one scalar per row, e.g. lambda s: s[:, 3] - s[:, 5]."
                )
            if out.is_complex():
                raise InvalidTargetError(
                    "a callable target must return one real score per row, the quantity explained; it returned "
                    f"{out.dtype} values. Return a real part or a magnitude, e.g. lambda s: s[:, 3].real."
                )
            if not out.is_floating_point():
                raise InvalidTargetError(
                    f"a callable target must return one score per row (floating point), the quantity explained; it "
                    f"returned {out.dtype} values, which look like class indices (e.g. s.argmin(1)). Return the "
                    "scores themselves, e.g. lambda s: s[:, 3] - s[:, 5], or pass the class indices as target= "
                    "(an int or one per row)."
                )
            return out
        idx = self.index.to(scores.device)
        if idx.is_inference():  # made under torch.inference_mode: a gather under autograd cannot save it
            idx = idx.clone()
        if rows is not None:
            idx = idx[rows.to(scores.device)]
        return scores.gather(1, idx.view(-1, 1)).squeeze(1)


def _check_range(idx: torch.Tensor, k: int) -> None:
    bad = (idx < 0) | (idx >= k)
    if bool(bad.any()):
        raise InvalidTargetError(
            f"target={idx[bad][0].item()} is out of range for a model with {k} outputs; "
            f"use a class index in 0..{k - 1}, or target=None for the predicted class."
        )


def per_row(target: TargetLike, batch: int) -> TargetLike:
    """An explicit sequence or tensor target as a checked ``(batch,)`` int64 tensor, ready to slice by chunk;
    ``None``, an int, a callable and a resolved :class:`Target` pass through unchanged."""
    if (
        target is None
        or isinstance(target, (int, Target))
        or (callable(target) and not isinstance(target, torch.Tensor))
    ):
        return target
    return resolve_target(target, None, batch=batch).index


def resolve_target(target: TargetLike, clean_scores: torch.Tensor | None, *, batch: int | None = None) -> Target:
    """Normalise ``target`` against the clean scores ``(B, K)``; ``None`` means the argmax, fixed once.

    With ``clean_scores=None`` (and ``batch`` given) an explicit target is normalised without a forward
    pass; its range is checked the first time it selects from real scores.
    """
    if clean_scores is None:
        if target is None or batch is None:
            raise ValueError("resolve_target needs clean_scores for target=None")  # internal misuse
        b, k = batch, None
    else:
        b, k = clean_scores.shape
    if target is None:
        return Target(clean_scores.argmax(1).to(torch.int64).cpu())  # type: ignore[union-attr]
    if callable(target) and not isinstance(target, torch.Tensor):
        return Target(torch.full((b,), -1, dtype=torch.int64), fn=target)
    if isinstance(target, bool):
        raise InvalidTargetError(f"target must be an int class index; got {target!r}.")
    if isinstance(target, int):
        idx = torch.full((b,), target, dtype=torch.int64)
    else:
        try:
            t = torch.as_tensor(target)
        except (TypeError, ValueError, RuntimeError):
            named = isinstance(target, str) or (
                isinstance(target, (list, tuple)) and any(isinstance(t, str) for t in target)
            )
            raise InvalidTargetError(
                f"target must be None, an int class index, one int per row (a sequence or tensor) or a callable "
                f"scores -> (B,); got {type(target).__name__} {target!r}."
                + (
                    " A class name needs the model's output names: whybox.adapt(model, labels=[...]) (a scikit-learn "
                    "classifier's classes_ and a Hugging Face config's id2label give them already)."
                    if named
                    else ""
                )
            ) from None
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise InvalidTargetError(
                f"target must hold integer class indices; got dtype {t.dtype}. Pass e.g. torch.tensor([3, 1])."
            )
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise InvalidTargetError(
                f"target must be an int or hold one class per row, shape ({b},); got shape {tuple(t.shape)}."
            )
        idx = t.to(torch.int64).cpu()
    if k is None:
        return Target(idx, checked=False)
    _check_range(idx, k)
    return Target(idx)
