"""The facade: ``explain``, ``methods``, ``get_explainer``, ``evaluate``, ``metrics``."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from whybox import explainers as _explainers  # noqa: F401  (fills the registry)
from whybox import metrics as _metrics  # noqa: F401  (fills the metric registry)
from whybox.errors import InvalidParameterError
from whybox.explanation import _ROW_OPTIONS, Explanation
from whybox.metrics.base import MetricResult
from whybox.models.adapter import coder_of
from whybox.models.inputs import (
    as_tensor_inputs,
    coded_later,
    is_text_adapter,
    is_texts,
    label_map_option,
    python_number,
    tensor_option,
)
from whybox.models.packed import packed_option
from whybox.models.targets import TargetLike
from whybox.registry import EXPLAINERS, METRICS

__all__ = ["evaluate", "explain", "get_explainer", "methods", "metrics"]


#: The kinds of input a method can apply to (``Explainer.input_kinds``).
INPUT_KINDS = ("image", "signal", "sequence", "tabular", "text")


def methods(kind: str | None = None) -> list[str]:
    """Registered explainer names, sorted; with ``kind`` (``"image"``, ``"signal"``, ``"sequence"``, ``"tabular"``
    or ``"text"``) only the methods that apply to that kind of input (CAMs and RISE: images and 1-D signals
    ``(B, C, L)`` of a model with an ``nn.Conv1d``; attention methods: text; sequences ``(B, T, D)`` of a recurrent
    or transformer model over time: the gradient and perturbation methods and LIMA)."""
    if kind is None:
        return EXPLAINERS.names()
    if kind not in INPUT_KINDS:
        from whybox.errors import InvalidParameterError

        raise InvalidParameterError(f"kind must be one of {INPUT_KINDS} or None; got {kind!r}.")
    return [n for n in EXPLAINERS.names() if kind in getattr(EXPLAINERS.get(n), "input_kinds", INPUT_KINDS)]


def get_explainer(name: str) -> type:
    """The explainer class registered under ``name``; unknown names list the known ones."""
    return EXPLAINERS.get(name)


def metrics() -> list[str]:
    """Registered metric names, sorted."""
    return METRICS.names()


def _text_evaluation(
    model: Any, inputs: Any, explanation: Any, metric: str, params: dict[str, Any], target: Any
) -> tuple[Any, Any, dict[str, Any]]:
    """Texts given to a text adapter become its packed inputs, and an :func:`explain_text` result its
    explanation; a method name is explained as :func:`explain_text` explains it (``stability``, which re-runs the
    method itself, gets those text options)."""
    from whybox.models.text import TextAttribution, explain_text, text_defaults

    if isinstance(explanation, TextAttribution):
        explanation = explanation.explanation
    if not is_texts(inputs) or not is_text_adapter(model):
        return inputs, explanation, params  # not texts, or not a text adapter (a HF model's or a function of strings)
    batch = _padded_as_explained(model, inputs, model.encode(inputs), explanation)
    if isinstance(explanation, str):
        reruns_itself = not getattr(METRICS.get(metric), "needs_attributions", True)
        if reruns_itself:  # stability: runs the method itself, with the text options
            params = {
                **params,
                "explainer_params": {**text_defaults(explanation, batch), **params.get("explainer_params", {})},
            }
        else:  # the explanation explain_text gives (its options follow the rows a metric re-runs)
            explanation = explain_text(model, inputs, explanation, target=target).explanation
    options = _options(METRICS.get(metric))
    if "regions" in options and "regions" not in params:  # words, as explain_text's
        params = {**params, "regions": batch.word_features()}
    return batch.inputs, explanation, params


def _padded_as_explained(model: Any, texts: Any, batch: Any, explanation: Any) -> Any:
    """The texts' ``batch`` padded to the length of the explanation's rows when it is longer (a slice of the
    explanation of a batch with a longer text keeps that batch's padding: ``out.explanation[1:2]``), so the metric
    reads the rows exactly as they were explained; the extra positions must then be pads there, with 0 attribution (a
    black box: its pad columns and index column).

    Raises
    ------
    InvalidInputError
        The explanation has fewer positions than the texts, non-zero values beyond them, or more than the adapter's
        ``max_length``: it explains other texts."""
    from whybox.errors import InvalidInputError
    from whybox.models.blackbox_text import BlackBoxText

    a = explanation.attributions if isinstance(explanation, Explanation) else explanation
    if not isinstance(a, (torch.Tensor, np.ndarray)) or a.ndim < 2 or a.shape[0] != batch.inputs.shape[0]:
        return batch  # a method name, or another row count (the metric's error)
    have, want = int(batch.inputs.shape[1]), int(a.shape[1])
    if want == have:
        return batch
    blackbox = isinstance(batch, BlackBoxText)
    unit = "columns (words, then the text index)" if blackbox else "token positions"
    fix = "evaluate it on the texts it explains, or explain these texts (whybox.explain_text)"
    if want < have:
        raise InvalidInputError(
            f"the explanation's rows cover {want} {unit}, these texts {have}: it explains other (shorter) texts; {fix}."
        )
    extra = a[:, have - 1 :] if blackbox else a[:, have:]  # a black box: the pad columns and the index column
    rows = [r for r in range(int(a.shape[0])) if bool((extra[r] != 0).any())]
    if rows:
        raise InvalidInputError(
            f"the explanation's rows cover {want} {unit}, these texts {have}, and rows {rows[:8]} hold non-zero "
            f"values beyond them, where these texts have only pads (which get exactly 0): it explains other texts; "
            f"{fix}."
        )
    padded = model._encode(texts, want)
    if int(padded.inputs.shape[1]) != want:
        raise InvalidInputError(
            f"the explanation's rows cover {want} {unit}, more than this adapter reads (max_length="
            f"{getattr(model, 'max_length', None)}): it was made by another adapter; {fix}."
        )
    return padded


def _text_pool(model: Any, explanation: Any, cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """A text adapter's regions (its words, given or by default) pooled as :func:`explain_text` reads a word:
    the sum of its tokens' values for a gradient method, the mean for one that copies a value onto every token."""
    from whybox.models.text import word_pool

    if params.get("regions") is None or "pool" in params or "pool" not in _options(cls):
        return params
    method = explanation.method if isinstance(explanation, Explanation) else explanation
    pool = word_pool(model, method)
    return params if pool is None else {**params, "pool": pool}


def _text_fill(model: Any, inputs: torch.Tensor, fill: Any) -> Any:
    """A metric's fill on a text adapter's packed inputs: what a removed word becomes, specials, pads and the control
    column never touched. ``None``: [MASK] (else [UNK], pad, zero vectors), or the word dropped for a function of
    strings; a token name (``"mask"``, ``"unk"``, ``"pad"``), ``"zero"`` or a number: as
    :func:`~whybox.models.text.text_replacement` reads it (:func:`explain_text`'s ``fill=`` alike); a tensor or a
    callable as given. Other names ("mean", "blur", ...) would rewrite the specials, the attention-mask column or a
    black box's text index (rows scored on another text's words): refused."""
    from whybox.models.text import text_replacement

    if fill is None:
        return model.packed_fill(inputs)  # words become [MASK] (or are dropped), never zeros
    return text_replacement(model, inputs, fill, option="fill")


def _blackbox_text_options(model: Any, inputs: torch.Tensor, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` of ``method`` on a black-box text model's presence rows: a ``fill`` (or ``baseline``) left out is
    every word dropped with the text index kept (``packed_fill``, the metrics' default); a name or number is read as
    :func:`explain_text` reads it. The methods' own zero fill set the index column to 0, and a row whose words were
    removed was scored on text 0's words: their values leaked into this text's (an ignored word got +0.5, and the
    values no longer added up to f(x) - f(fill)). Beside ``background=`` rows nothing is added."""
    from whybox.explainers.base import _keyword_options
    from whybox.models.text import read_text_fills

    takes = set(_keyword_options(EXPLAINERS.get(method)))
    out = read_text_fills(model, inputs, method, params)
    if params.get("background") is None:
        for k in ("fill", "baseline"):
            if k in takes and out.get(k) is None:
                out[k] = model.packed_fill(inputs)
    return out


def _options(cls: type) -> list[str]:
    import inspect

    return sorted(
        {
            p.name
            for c in cls.__mro__
            if "__init__" in c.__dict__
            for p in inspect.signature(c.__dict__["__init__"]).parameters.values()
            if p.kind is p.KEYWORD_ONLY
        }
    )


def _unknown_option(what: str, exc: TypeError, cls: type, own: tuple[str, ...]) -> Exception:
    """The error for a keyword ``cls`` does not take: its name, the closest option (or one of ``own``, the
    keywords of explain/evaluate themselves, which a typo may have missed), and every option."""
    import re

    from whybox.errors import InvalidParameterError, did_you_mean

    options = _options(cls)
    found = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
    if found is None:
        return InvalidParameterError(f"{what} got an unknown option ({exc}). Its options are: {', '.join(options)}.")
    name = found.group(1)
    hint = did_you_mean(name, [*options, *own])
    return InvalidParameterError(f"{what} got an unknown option {name!r}.{hint} Its options are: {', '.join(options)}.")


def explain(
    model: Any, inputs: torch.Tensor, method: str, /, *, target: TargetLike = None, **params: Any
) -> Explanation:
    """Explain ``inputs`` with ``method``.

    Parameters
    ----------
    model
        A ``torch.nn.Module`` (adapted on the fly as a classifier), a fitted scikit-learn estimator, a function
        ``inputs -> scores (B, K)`` (a black box), or a :class:`~whybox.models.ModelAdapter` from
        :func:`whybox.adapt`.
    inputs
        ``(B, ...)`` tensor with a leading batch dimension, or a numeric numpy array or pandas DataFrame (copied
        to a tensor; a DataFrame's column names go to ``meta["feature_names"]`` and must match the columns a
        scikit-learn model was fitted on).
    method
        A name from :func:`methods`.
    target
        ``None`` (each row's predicted class), an int, per-row ints ``(B,)`` or a callable
        ``scores (B, K) -> (B,)``; for a scikit-learn classifier also labels of its ``classes_``
        (``"virginica"``, or one per row).
    **params
        The method's keyword options (see ``get_explainer(method)``). ``model``, ``inputs`` and ``method``
        are positional-only, so an option may share their names (Integrated Gradients' ``method=``
        quadrature rule). On a :class:`~whybox.explainers.llm.generation.CausalLMAdapter`'s packed step rows the
        options left out take :func:`~whybox.explainers.llm.generation.attribute_generation`'s defaults for the
        method (:func:`~whybox.explainers.llm.generation.step_explain_options`: a baseline and fill that replace only
        each step's attributed word vectors, keeping the attention-mask and read-position channels, the specials and
        each step's future; token features), so with ``target=batch.targets`` (the continuation's tokens) the result
        equals ``attribute_generation(...).explanation`` (``target=None`` explains each step's argmax token instead);
        a ``fill`` or ``baseline`` given as a name or a number is read the same way.

    Returns
    -------
    Explanation
    """
    from whybox.explainers.llm.generation import CausalLMAdapter, step_explain_options
    from whybox.models.blackbox_text import BlackBoxTextAdapter

    cls = EXPLAINERS.get(method)
    params = {k: _python_scalar(v) for k, v in params.items()}
    if isinstance(model, CausalLMAdapter):  # step rows: attribute_generation's defaults, read on these rows
        inputs = as_tensor_inputs(inputs)[0]
        params = step_explain_options(model, inputs, method, params)
    elif isinstance(model, BlackBoxTextAdapter) and not is_texts(inputs):
        # presence rows: a removed word is dropped, the text index kept
        inputs = as_tensor_inputs(inputs)[0]
        params = _blackbox_text_options(model, inputs, method, params)
    try:
        explainer = cls(model, **params)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise _unknown_option(repr(method), exc, cls, ("target",)) from None
    out = explainer.explain(inputs, target=target)
    # what out.params can only describe (a tensor, a callable; a list of numbers it records as the tensor it became);
    # None asks for the default, which out.params records as resolved (batch_size=None -> 64): nothing to keep
    described = {
        k: v for k, v in params.items() if v is not None and (not _plain(v) or not _same(out.params.get(k, v), v))
    }
    for k, v in params.items():  # rows of values (one fill or id map per input): kept, to follow their rows
        if (
            k in _ROW_OPTIONS
            and k not in described
            and isinstance(v, (list, tuple))
            and v
            and isinstance(v[0], (list, tuple))
        ):
            described[k] = v
    coder = coder_of(explainer.adapter)
    for k, v in described.items():
        if coder is not None and coder.categories and coded_later(v):  # kept coded, as the method read it (and saves)
            described[k] = tensor_option(v, k, coder)
            continue
        if getattr(explainer.adapter, "packing", None) is not None:  # one per input: packed, as the method read it
            v = described[k] = packed_option(v, explainer.adapter, k)
        if k in ("features", "regions"):  # ids as the integer tensor the method read (lists, NumPy arrays)
            described[k] = label_map_option(v, k)
        elif k in _ROW_OPTIONS and isinstance(v, (list, tuple, np.ndarray)):  # a fill / baseline as its tensor
            with contextlib.suppress(InvalidParameterError):  # not an array of numbers: kept as the method read it
                described[k] = tensor_option(v, k)
    if described:
        out.options.update(described)
        out.meta["described_options"] = sorted(described)
    return out


def _python_scalar(value: Any) -> Any:
    """A NumPy scalar option (``np.int64(8)`` from a config grid or an array) as the Python number it holds, so the
    options' checks read it as they read ``8`` (:func:`~whybox.models.inputs.python_number`; NumPy's bool as
    ``True``); anything else unchanged. A sequence of numbers (``fractions=``, ``window=``) is read by its option's
    own check (:func:`~whybox.models.inputs.python_numbers`), so the classes take NumPy values too."""
    if isinstance(value, np.generic) and value.dtype.kind == "b":
        return value.item()
    return python_number(value) if isinstance(value, np.generic) else value


def _listed(value: Any) -> Any:
    """Tuples as lists, all the way down (``Explanation.params`` records a tuple option as a list)."""
    return [_listed(v) for v in value] if isinstance(value, (list, tuple)) else value


def _same(recorded: Any, given: Any) -> bool:
    """Whether ``Explanation.params`` recorded the plain option ``given`` as it is: tuples become lists, and a
    name the method keeps as a one-item list (a CAM's ``layer="features.7"``) means the same."""
    return _listed(recorded) == _listed(given) or (isinstance(given, str) and recorded == [given])


def _plain(value: Any) -> bool:
    """True for an option value that ``Explanation.params`` records as it is (JSON scalars and lists of them)."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):  # a nested method's options (LIMA's prior_options)
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float, str))


def evaluate(
    model: Any,
    inputs: torch.Tensor,
    explanation: Explanation | torch.Tensor | np.ndarray | str | None,
    metric: str,
    /,
    *,
    target: TargetLike = None,
    masks: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    **params: Any,
) -> MetricResult:
    """Score an explanation of ``inputs`` with ``metric``.

    Parameters
    ----------
    model
        The model that was explained (``None`` for metrics that read only the attributions: ``sparseness``,
        ``complexity`` and the localisation metrics).
    inputs
        ``(B, ...)`` tensor with a leading batch dimension, or a numeric numpy array or pandas DataFrame; for a text
        adapter (:func:`adapt_text`) also the texts themselves, which it encodes (padded to the explanation's rows
        where they are longer: a slice of a batch's explanation, ``out.explanation[1:2]``, scores ``texts[1:2]`` as
        that row scored in the batch).
    explanation
        An :class:`Explanation`, an attribution tensor or NumPy array ``(B, ...)``, what :func:`explain_text`
        returned, or a method name (explained first; for ``stability`` the method to run repeatedly, e.g.
        ``evaluate(model, x, "lime", "stability", n_runs=10)``; texts are explained as :func:`explain_text`
        explains them, with its text options).
    metric
        A name from :func:`metrics`.
    target
        ``None`` = the explanation's target; an int, per-row ints or a callable ``scores (B, K) -> (B,)``.
    masks, labels
        Ground-truth masks ``(B, H, W)`` (localisation) and true labels ``(B,)`` (ROAD accuracy).
    **params
        The metric's keyword options (every metric takes ``score``, ``seed``, ``batch_size`` and ``mode``). On a
        :class:`~whybox.explainers.llm.generation.CausalLMAdapter`'s packed step rows a ``fill`` (default
        ``"zero"``) or a re-run's ``fill``/``baseline`` given as a name or a number replaces only the word vectors
        of the tokens each step attributes: the attention-mask and read-position channels, the specials and each
        step's future tokens are kept (:meth:`~whybox.explainers.llm.generation.CausalLMAdapter.packed_fill`, as
        ``batch.fill()`` of :func:`~whybox.explainers.llm.generation.attribute_generation`), for the rows as a tensor
        or a NumPy array alike; a method name (the explanation, ``explainer=``) runs with
        :func:`explain`'s defaults there (those of ``attribute_generation``; give ``target=batch.targets`` to explain
        and score the continuation's tokens as ``attribute_generation`` does: ``target=None`` takes each step's
        argmax token). ``regions`` left out (or ``None``) of a metric that perturbs (``deletion``, ``insertion``,
        ``highest_confidence``, ``aopc``, ``mufidelity``, ``comprehensiveness``, ``sufficiency``) is one region per
        token, ``batch.token_features()``, so each step's future tokens and specials, which its fill keeps, are none
        of its features. ``infidelity``, whose noise rewrites every element, is refused there.

    Returns
    -------
    MetricResult
        Per-sample ``scores`` ``(B,)``, ``curves`` where the metric has them, ``higher_is_better``, ``params``.
    """
    from whybox.explainers.llm.generation import CausalLMAdapter, PackedSteps, step_metric_options

    cls = METRICS.get(metric)
    if isinstance(inputs, (str, list, tuple)) or hasattr(explanation, "words"):  # texts, or an explain_text result
        inputs, explanation, params = _text_evaluation(model, inputs, explanation, metric, params, target)
    if (is_text_adapter(model) or isinstance(model, CausalLMAdapter)) and isinstance(inputs, np.ndarray):
        # packed rows as an array: the tensor the metric would read, so its fill below is made for them alike
        inputs = as_tensor_inputs(inputs)[0]
    if is_text_adapter(model) and isinstance(inputs, torch.Tensor):
        if "fill" in _options(cls):
            params = {**params, "fill": _text_fill(model, inputs, params.get("fill"))}
        rerun = params.get("explainer_params")
        if isinstance(rerun, dict) and any(k in rerun for k in ("fill", "baseline")):  # the re-runs' fill alike
            from whybox.models.text import rerun_fills

            params = {**params, "explainer_params": rerun_fills(model, inputs, rerun)}
        params = _text_pool(model, explanation, cls, params)
    elif isinstance(inputs, torch.Tensor) and isinstance(model, CausalLMAdapter):
        # a fill that keeps the control channels (each row's read position, its attention mask), the specials and
        # each step's future, as attribute_generation's fills do; the metrics' own default would zero them all
        params = step_metric_options(model, inputs, _options(cls), params)
        options = _options(cls)
        if "regions" in options and "fill" in options and params.get("regions") is None:
            # one region per token, as attribute_generation's token features: each step's future tokens and specials,
            # which its fill keeps, leave the curves and subsets (element steps would count them, and each
            # word-vector dimension, as features)
            params = {**params, "regions": PackedSteps(model, inputs).token_features()}
    params = {k: _python_scalar(v) for k, v in params.items()}
    try:
        m = cls(**params)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise _unknown_option(f"metric {metric!r}", exc, cls, ("target", "masks", "labels")) from None
    return m.evaluate(model, inputs, explanation, target=target, masks=masks, labels=labels)
