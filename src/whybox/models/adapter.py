"""Model adapters: one seam between whybox and torch, embedding and scikit-learn models."""

from __future__ import annotations

import math
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from typing import Any

import numpy as np
import torch
from torch import nn

from whybox.errors import (
    AmbiguousLayoutWarning,
    InvalidInputError,
    InvalidParameterError,
    InvalidTargetError,
    LayerError,
    ModelOutputError,
    did_you_mean,
)
from whybox.models._guard import preserved
from whybox.models.categorical import decode_rows, refused_categories
from whybox.models.targets import distribution_rows

__all__ = [
    "EmbeddingAdapter",
    "LabelLogitScores",
    "ModelAdapter",
    "ProbabilityScores",
    "SklearnAdapter",
    "TorchAdapter",
    "adapt",
    "declares_multilabel",
    "is_signal",
    "output_probabilities",
    "scoring_adapter",
]

KINDS = ("classifier", "multilabel", "embedding")
OutputSelector = int | str | Callable[[Any], torch.Tensor] | None
LayerLike = str | nn.Module


class ModelAdapter:
    """What every explainer sees of a model.

    ``scores(x) -> (B, K)`` is the one call explainers make; ``guard(mode)`` is the context in which
    they make it, and it returns the model exactly as it came.
    """

    kind: str = "classifier"
    differentiable: bool = False
    #: True when the outputs are predicted values (a scikit-learn regressor's ``predict``), not class scores: the
    #: explained score is then the output itself (``score="logit"``), never a softmax over the outputs
    outputs_values: bool = False
    #: what the outputs are when ``outputs_values``, for messages
    values_described: str = "predicted values (its predict, not predict_proba)"
    #: names of the outputs in order, when they are not the model's classes (an SAE's latents); a string ``target``
    #: is looked up here first, then in the model's ``classes_`` / ``id2label``
    output_names: list[str] | None = None
    model: Any
    default_layers: list[LayerLike] | None = None
    #: the layout of packed rows for a torch model of several inputs (``adapt(model, input_shapes=...)``), else None
    packing: Any = None

    def scores(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def guard(self, mode: str = "eval") -> AbstractContextManager[None]:
        return nullcontext()

    def named_modules(self) -> Iterator[tuple[str, nn.Module]]:
        return iter(())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, kind={self.kind!r})"


def _describe(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"Tensor{tuple(out.shape)}"
    if isinstance(out, Mapping):
        return "dict with keys " + ", ".join(f"{k!r}: {_describe(v)}" for k, v in out.items())
    if isinstance(out, Sequence) and not isinstance(out, str):
        return f"{type(out).__name__} of " + ", ".join(f"[{i}] {_describe(v)}" for i, v in enumerate(out))
    return type(out).__name__


def check_output_names(adapter: ModelAdapter, k: int) -> None:
    """An error when ``adapt(labels=...)`` named another number of outputs than the model gives (``k``): the names
    would be read against the wrong outputs (``target="cat"``, ``meta["target_names"]``)."""
    names = adapter.output_names
    if names is not None and len(names) != k:
        raise InvalidParameterError(
            f"labels= names {len(names)} outputs ({', '.join(map(repr, names[:3]))}{', ...' if len(names) > 3 else ''})"
            f" but the model gives {k} scores per row; pass one name per output, in the model's output order."
        )


class FunctionModel(nn.Module):
    """A function ``x -> scores (B, K)`` as a module, so a black box (a NumPy model, a remote scorer, a lambda
    around a model that takes more arguments) is explained as a torch model is: its output may be a tensor or
    anything NumPy reads, and comes back as a tensor on the input's device. The perturbation methods and LIMA need
    nothing more; the gradient methods need the function to be differentiable torch code, and the CAMs a layer."""

    def __init__(self, fn: Callable[[torch.Tensor], Any]) -> None:
        super().__init__()
        self.fn = fn
        self.returns_numpy = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fn(x)
        if isinstance(out, (torch.Tensor, tuple, Mapping)):  # a tuple or dict (ModelOutput): output= selects from it
            return out  # type: ignore[return-value]
        import numpy as np

        self.returns_numpy = True
        arr = np.asarray(out)
        if not np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_:
            raise ModelOutputError(
                f"the function {getattr(self.fn, '__name__', type(self.fn).__name__)!r} returned {type(out).__name__} "
                f"of dtype {arr.dtype}; return class scores (B, K): a tensor or a numeric array."
            )
        return torch.from_numpy(np.array(arr, dtype=np.float64 if arr.dtype == np.float64 else np.float32)).to(x.device)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", type(self.fn).__name__)


class TorchAdapter(ModelAdapter):
    """A torch module whose (selected) output is ``(B, K)`` class scores (logits)."""

    differentiable = True

    def __init__(
        self,
        model: nn.Module,
        *,
        output: OutputSelector = None,
        layers: LayerLike | Sequence[LayerLike] | None = None,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidParameterError(
                f"model must be a torch.nn.Module for TorchAdapter; got {type(model).__name__}."
            )
        if preprocess is not None and not callable(preprocess):
            raise InvalidParameterError(f"preprocess must be callable or None; got {type(preprocess).__name__}.")
        self.model = model
        if isinstance(output, bool):  # True would select entry 1, False entry 0, without a word
            raise InvalidParameterError(
                f"output={output!r} is a flag, not an entry of the model's output; pass output= as a key, an index "
                "(an int) or a callable that returns the (B, K) scores."
            )
        self.output = output
        self.preprocess = preprocess
        from whybox.models.layers import layer_spec

        layers = layer_spec(layers)  # layers=2: the module named '2', as a CAM's layer=2
        if layers is None:
            self.default_layers = None
        elif isinstance(layers, (str, nn.Module)):
            self.default_layers = [layers]
        elif isinstance(layers, (list, tuple)):
            self.default_layers = list(layers)
        else:
            raise LayerError(
                f"layers must be a module name, an nn.Module or a list of them; got {type(layers).__name__} "
                f"{layers!r}. Names are those of dict(model.named_modules())."
            )

    @property
    def device(self) -> torch.device:
        for tensors in (self.model.parameters(), self.model.buffers()):
            for t in tensors:
                if t.device.type == "meta":
                    raise InvalidParameterError(
                        f"{type(self.model).__name__} has its weights on the 'meta' device (no data: made under "
                        "init_empty_weights or device='meta'); load its weights (model.to_empty(device='cpu') and "
                        "load_state_dict, or from_pretrained) before explaining it."
                    )
                return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model computes in: its first floating parameter's, else its first floating buffer's (a model
        whose weights are buffers), else float32."""
        return self.weights_dtype or torch.float32

    @property
    def weights_dtype(self) -> torch.dtype | None:
        """The dtype holding most of the model's floating parameter elements (a float32 network with one float64
        temperature runs in float32), else most of its floating buffers'; ``None`` for a model without floating
        weights (a pure function, which runs in its inputs' dtype)."""
        for tensors in (self.model.parameters(), self.model.buffers()):
            count: dict[torch.dtype, int] = {}
            for t in tensors:
                if isinstance(t, nn.parameter.UninitializedParameter | nn.parameter.UninitializedBuffer):
                    raise InvalidInputError(
                        f"the model {type(self.model).__name__} has uninitialised lazy parameters (nn.LazyLinear, "
                        "nn.LazyConv2d, ...); run one forward pass on an input of the right shape before explaining it."
                    )
                if t.is_floating_point():
                    count[t.dtype] = count.get(t.dtype, 0) + t.numel()
            if count:
                return max(count, key=lambda d: count[d])
        return None

    def guard(self, mode: str = "eval") -> AbstractContextManager[None]:
        return preserved(self.model, mode)

    def named_modules(self) -> Iterator[tuple[str, nn.Module]]:
        return iter(self.model.named_modules())

    def forward(self, x: torch.Tensor) -> Any:
        # a model may write into its input (x -= 0.5 in forward): a copy, so the caller's inputs and the rows whybox
        # builds its perturbations and paths from stay as they were (and a leaf that requires grad is not written)
        x = x.clone()
        if self.preprocess is not None:
            x = self.preprocess(x)
        if self.packing is not None:  # a model of several inputs: its packed rows cut back into them
            return self.packing.call(self.model, x)
        return self.model(x)

    def select(self, out: Any) -> torch.Tensor:
        """Pick the score tensor out of the model's raw output."""
        sel = self.output
        if sel is not None:
            try:
                if callable(sel):
                    out = sel(out)
                elif isinstance(sel, str):
                    out = out[sel] if isinstance(out, Mapping) else getattr(out, sel)
                else:
                    out = out[sel]
            except (KeyError, IndexError, AttributeError, TypeError) as exc:
                raise ModelOutputError(
                    f"output={sel!r} does not select anything from the model's output ({_describe(out)}): "
                    f"{exc}. Pass output= as a key, an index or a callable that returns the scores."
                ) from exc
        if not isinstance(out, torch.Tensor):
            raise ModelOutputError(
                f"the model returned {_describe(out)}; pass output= to adapt() (a key, an index or a "
                "callable) to say which entry holds the (B, K) scores."
            )
        return out

    def _check(self, scores: torch.Tensor, batch: int) -> torch.Tensor:
        if scores.ndim == 1 and scores.shape[0] == batch:
            scores = scores.unsqueeze(1)
        elif batch == 1 and scores.ndim in (0, 1):  # a forward ending in .squeeze(): one row's () or (K,)
            scores = scores.reshape(1, -1)
        if scores.ndim != 2 or scores.shape[0] != batch:
            raise ModelOutputError(
                f"the model's scores must have shape (B, K) = ({batch}, K); got {tuple(scores.shape)}. "
                "Select or reshape the output with adapt(model, output=...)."
            )
        check_output_names(self, scores.shape[1])
        return scores

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return self._check(self.select(self.forward(x)), x.shape[0])


def embeddings_tensor(references: Any) -> Any:
    """``references`` given as a NumPy array of numbers (what a sentence-transformers ``encode()`` returns by
    default) as a tensor of its dtype (a copy); anything else unchanged."""
    if isinstance(references, np.ndarray) and references.dtype.kind in "iuf":
        return torch.tensor(np.ascontiguousarray(references))
    return references


def described_type(value: Any) -> str:
    """What a wrong ``references=`` is, for an error: ``ndarray of dtype <U5``, ``list of float``, ``dict``."""
    if isinstance(value, np.ndarray):
        return f"ndarray of dtype {value.dtype} and shape {value.shape}"
    if isinstance(value, (list, tuple)):
        kinds = sorted({type(v).__name__ for v in value})
        return f"{type(value).__name__} of {', '.join(kinds)}" if kinds else f"an empty {type(value).__name__}"
    return type(value).__name__


def check_references(references: torch.Tensor) -> None:
    """An embedding adapter's ``references``: finite real embeddings ``(D,)`` or ``(K, D)``, K >= 1."""
    bad = references.is_complex() or references.dtype == torch.bool or references.numel() == 0
    if bad or not bool(torch.isfinite(references).all()):
        raise InvalidParameterError(
            f"references must be finite real embeddings, (D,) or (K, D) with K >= 1; got {references.dtype} of "
            f"shape {tuple(references.shape)}"
            + (" holding NaN or inf" if not bad else "")
            + ". Pass the embeddings of your target(s) or class prompts."
        )


class EmbeddingAdapter(TorchAdapter):
    """An embedding model turned into a scorer by similarity to reference embeddings.

    ``references`` is one target embedding ``(D,)`` (K = 1) or class embeddings ``(K, D)`` (for
    example text prompts for a CLIP-like model). Scores are cosine similarities times ``scale``
    (a CLIP ``logit_scale``, so that softmax over them is the zero-shot classifier), or dot products.
    """

    kind = "embedding"

    def __init__(
        self,
        model: nn.Module,
        *,
        references: torch.Tensor | np.ndarray,
        similarity: str = "cosine",
        scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        references = embeddings_tensor(references)  # a NumPy array of embeddings (a sentence encoder's encode())
        if not isinstance(references, torch.Tensor):
            raise InvalidParameterError(
                f"references must be embeddings for kind='embedding', a tensor or a NumPy array of numbers of shape "
                f"(D,) (one target) or (K, D) (one per class); got {described_type(references)}. Pass the model's "
                "embeddings of your target(s) or class prompts (torch.stack them, or torch.tensor(a list of numbers))."
            )
        if references.ndim not in (1, 2):
            raise InvalidParameterError(
                f"references must be embeddings of shape (D,) or (K, D) for kind='embedding'; got shape "
                f"{tuple(references.shape)}."
            )
        if similarity not in ("cosine", "dot"):
            raise InvalidParameterError(f"similarity must be 'cosine' or 'dot'; got {similarity!r}.")
        check_references(references)
        if isinstance(scale, torch.Tensor):  # a CLIP model's logit_scale.exp(): a one-element tensor
            number = scale.numel() == 1 and not scale.is_complex() and scale.dtype != torch.bool
        elif isinstance(scale, np.ndarray):
            number = scale.size == 1 and scale.dtype.kind in "iuf"
        else:
            number = isinstance(scale, (int, float, np.integer, np.floating)) and not isinstance(scale, bool)
        value = (
            float(scale.detach().reshape(()).item() if isinstance(scale, torch.Tensor) else np.asarray(scale).item())
            if number
            else math.nan
        )
        if not number or not (math.isfinite(value) and value > 0):
            raise InvalidParameterError(
                f"scale must be a finite number > 0 (a CLIP logit_scale.exp(), e.g. 100.0); got {scale!r}."
            )
        refs = references.detach()
        self.references = refs.unsqueeze(0) if refs.ndim == 1 else refs
        self.similarity = similarity
        self.scale = value

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_output(self.forward(x), batch=x.shape[0])

    def embed_output(self, out: Any, batch: int | None = None) -> torch.Tensor:
        """The embeddings ``(B, D)`` in the model's raw output (``output=`` selects them); for a ``batch`` of one
        row, a forward ending in ``.squeeze()`` may give ``(D,)`` (as classifiers' one-row ``(K,)`` is read)."""
        emb = self.select(out)
        if batch == 1 and emb.ndim == 1:
            emb = emb.unsqueeze(0)
        if emb.ndim != 2:
            raise ModelOutputError(
                f"an embedding model must return (B, D) embeddings; got {tuple(emb.shape)}. "
                "Select or pool the output with adapt(model, kind='embedding', output=...)."
            )
        return emb

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return self.similarities(self.embed(x))

    def similarities(self, emb: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, K)`` of embeddings ``(B, D)``: their similarity to the references, times ``scale``."""
        refs = self.references.to(device=emb.device, dtype=emb.dtype)
        if refs.shape[1] != emb.shape[1]:
            raise ModelOutputError(
                f"references have dimension {refs.shape[1]} but the model embeds into {emb.shape[1]}; "
                "pass reference embeddings made by the same model."
            )
        if self.similarity == "cosine":
            emb = torch.nn.functional.normalize(emb, dim=1)
            refs = torch.nn.functional.normalize(refs, dim=1)
        out = self.scale * emb @ refs.T
        check_output_names(self, out.shape[1])  # adapt(labels=): one name per reference
        return out


_CALL_TABLES = threading.local()  # SklearnAdapter.tables, per thread


class SklearnAdapter(ModelAdapter):
    """A scikit-learn estimator: ``predict_proba`` (or ``decision_function``/``predict``) on rows ``(B, F)``.

    Not differentiable: only perturbation methods apply.
    """

    differentiable = False

    def __init__(self, estimator: Any, *, preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None):
        for name in ("predict_proba", "decision_function", "predict"):
            fn = getattr(estimator, name, None)
            if callable(fn):
                self._fn = fn
                self.method_name = name
                break
        else:
            raise InvalidParameterError(
                f"model of type {type(estimator).__name__} has no predict_proba, decision_function or predict; "
                "pass a fitted scikit-learn estimator or a torch.nn.Module."
            )
        self.model = estimator
        self.preprocess = preprocess
        self.outputs_values = self.method_name == "predict"  # a regressor's values (or bare class labels)
        names = getattr(estimator, "feature_names_in_", None)
        #: the columns of the DataFrame the estimator was fitted on (None: fitted on an array); see :meth:`_named`
        #: for how rows reach such an estimator
        self.feature_names: list[str] | None = None if names is None else [str(c) for c in names]
        self._frames = False  # True once the estimator has refused an array: rows go to it as DataFrames
        #: vocabularies of the text and categorical columns coded for this estimator (whybox.models.categorical),
        #: and the columns seen holding numbers
        self.categories: dict[str, Any] = {}
        self.numeric_seen: set[str] = set()
        self.numeric_dtypes: dict[str, Any] = {}  # int/bool columns of the frames seen: given back in their dtype
        self._object_refused = False  # the estimator refused an object column of whole and non-whole cells

    @property
    def tables(self) -> dict[str, tuple[str, dict[str, list[Any]]]]:
        """The coded values each table of the current call brought in (table -> (kind, column -> values)), reset
        when a call reads its inputs (as_tensor_inputs): what names the table of a category the estimator refuses
        (whybox.models.categorical.refused_categories). Per thread: two threads' calls on one estimator keep
        their own (a refusal in one was blamed on the other's fill)."""
        # keyed by identity (an adapter subclass may define __eq__, and so no hash or a hash by value), with a weak
        # reference telling a reused id from this adapter; entries of adapters gone are dropped as new ones come
        mine: dict[int, tuple[weakref.ref[SklearnAdapter], dict[str, tuple[str, dict[str, list[Any]]]]]] = (
            _CALL_TABLES.__dict__.setdefault("by_id", {})
        )
        entry = mine.get(id(self))
        if entry is None or entry[0]() is not self:
            for k in [k for k, (ref, _) in mine.items() if ref() is None]:
                del mine[k]
            entry = mine[id(self)] = (weakref.ref(self), {})
        return entry[1]

    def stated_outputs(self) -> int | None:
        """The number of outputs the fitted estimator states without a call (``n_outputs_``: trees, forests,
        MLPs, a Pipeline's last step), or ``None`` where it states none (a linear model, a custom estimator)."""
        final = getattr(self.model, "_final_estimator", self.model)
        try:
            n = getattr(final, "n_outputs_", None)
        except (AttributeError, ValueError):  # a property of an unfitted estimator: ask the model instead
            return None
        if isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)) and n >= 1:
            return int(n)
        return None

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self._scores(x)
        except Exception as exc:
            if type(exc).__name__ == "NotFittedError" and isinstance(exc, (ValueError, AttributeError)):
                raise InvalidParameterError(
                    f"model: this {type(self.model).__name__} is not fitted ({exc}); call .fit(X, y) on it (or load a "
                    "fitted one) before explaining it."
                ) from exc
            raise

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        import numpy as np

        if self.preprocess is not None:
            x = self.preprocess(x)
        if x.ndim != 2:
            raise InvalidInputError(
                f"a scikit-learn model takes rows of shape (B, F); got inputs of shape {tuple(x.shape)}."
            )
        rows: Any = x.detach().cpu().numpy()
        if self.feature_names is None:
            n_in = getattr(self.model, "n_features_in_", None)
            if isinstance(n_in, (int, np.integer)) and rows.shape[1] != n_in:
                raise InvalidInputError(
                    f"the model was fitted on {n_in} columns; got inputs with {rows.shape[1]} columns. Pass rows "
                    "with the columns the estimator was fitted on, in that order."
                )
            out = self._fn(rows)
        else:
            if rows.shape[1] != len(self.feature_names):
                raise InvalidInputError(
                    f"the model was fitted on {len(self.feature_names)} named columns; got inputs with "
                    f"{rows.shape[1]} columns. Pass the columns in model.feature_names_in_, in that order."
                )
            # coded text/categorical columns decoded to their values; else the rows as they are
            try:
                out = self._decoded(rows) if self.categories or self.numeric_dtypes else self._named(rows)
            except ValueError as exc:
                if "unknown categor" in str(exc).lower() and self.categories:
                    # a category the estimator was not fitted on (where whybox could not read its encoder's
                    # beforehand, or a run's data row): whybox's error, naming the table, column and value
                    error = refused_categories(rows, self, exc)
                    if error is not None:
                        raise error from exc
                raise
        if isinstance(out, list) or np.ndim(out) > 2 or (np.ndim(out) >= 1 and len(out) != rows.shape[0]):
            shapes = [np.shape(o) for o in out] if isinstance(out, list) else np.shape(out)
            raise ModelOutputError(
                f"{type(self.model).__name__}.{self.method_name} returned {type(out).__name__} of shape(s) "
                f"{shapes!s:.120} for {rows.shape[0]} rows, not class scores (B, K): a multi-output (multi-label) "
                "estimator gives one array per output. Explain one output's estimator (e.g. model.estimators_[k] of "
                "a MultiOutputClassifier), or wrap the model in a function returning (B, K) scores."
            )
        arr = np.asarray(out)
        try:
            if arr.dtype.kind in "US":  # class labels as text ('yes'; also '1'): not scores
                raise ValueError
            values = arr.astype(np.float64)
        except (ValueError, TypeError):
            raise ModelOutputError(
                f"{type(self.model).__name__}.{self.method_name} returned {arr.dtype} values (e.g. "
                f"{arr.reshape(-1)[:3].tolist()!r}), not scores: class labels carry no score to explain. Give the "
                "model predict_proba or decision_function (a classifier), or wrap it in a function that returns "
                "class scores (B, K)."
            ) from None
        t = torch.from_numpy(values)
        t = t.unsqueeze(1) if t.ndim == 1 else t
        check_output_names(self, t.shape[1])
        return t

    def _decoded(self, rows: Any) -> Any:
        """The estimator on ``rows`` decoded to a DataFrame of its columns (:func:`decode_rows`): an int/bool column
        of whole and non-whole cells (a mean fill) goes as each cell holds (an object column, so a row reads the
        same whatever shares its call); an estimator that refuses object columns (``np.log1p``) gets them as floats
        from then on (numeric steps read 2 and 2.0 alike)."""
        if not self._object_refused:
            try:
                return self._fn(decode_rows(rows, self, mixed="object"))
            except Exception:  # retried with float columns below; its error, if any, is the one raised
                if not self._has_mixed(rows):
                    raise
                self._object_refused = True
        return self._fn(decode_rows(rows, self, mixed="float"))

    def _has_mixed(self, rows: Any) -> bool:
        """Whether an int/bool column of ``rows`` holds cells of both kinds (whole and not)."""
        from whybox.models.categorical import typed_ok

        for j, c in enumerate(self.feature_names or []):
            dtype = self.numeric_dtypes.get(c)
            if dtype is not None and c not in self.categories:
                ok = typed_ok(rows[:, j], dtype)
                if bool(ok.any()) and not bool(ok.all()):
                    return True
        return False

    def _named(self, rows: Any) -> Any:
        """The estimator (fitted on a DataFrame) on ``rows``: as an array while that works, the columns in the
        fitted order (sklearn's own positional reading; its feature-name warning silenced), which skips pandas'
        per-call validation (2.4x faster on a scaler + logistic regression at 64 rows per call); as a DataFrame
        with the fitted column names from the first call that fails on an array (e.g. a ColumnTransformer that
        picks columns by name) on."""
        if not self._frames:
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings(
                        "ignore", message="X does not have valid feature names", category=UserWarning
                    )
                    return self._fn(rows)
            except Exception:  # retried as a DataFrame below; its error, if any, is the one raised
                self._frames = True
        import pandas as pd  # the estimator was fitted on a DataFrame: pandas is installed

        return self._fn(pd.DataFrame(rows, columns=list(self.model.feature_names_in_)))

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64


class ProbabilityScores(ModelAdapter):
    """A scikit-learn ``predict_proba`` model seen through log-probabilities, so that a softmax gives back exactly
    its probabilities (``score="prob"``) instead of a softmax of probabilities, and ``"log_prob"`` their log. A
    ``predict_proba`` of one column (a wrapped model's P(positive) alone) is one score, read as it is: its
    probability, not its log (a softmax over one output is always 1; the default score of one output is the raw one)."""

    def __init__(self, inner: SklearnAdapter) -> None:
        self.inner = inner
        self.model = inner.model

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        p = self.inner.scores(x)
        if p.shape[1] == 1:
            return p
        if p.shape[1] > 1:
            off = ~distribution_rows(p)
            if bool(off.any()):  # not one distribution per row: a softmax of their log would renormalise them
                raise ModelOutputError(
                    f"{type(self.model).__name__}.predict_proba rows sum to {float(p[off][0].sum()):.4g}, not 1: each "
                    "output is its own label's probability (a multi-label estimator), which a softmax would make "
                    "compete. Adapt it with whybox.adapt(model, kind='multilabel') to explain each label's "
                    "probability, or pass score='logit' to read the outputs as they are."
                )
        return p.clamp_min(1e-300).log()

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype


class LabelLogitScores(ProbabilityScores):
    """A multi-label scikit-learn ``predict_proba`` (each output its own label's probability) seen through the
    labels' logits, log(p / (1 - p)), so that a sigmoid gives back exactly each label's probability
    (``score="prob"`` of ``kind="multilabel"``) and ``"log_sigmoid"`` its log."""

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        p = self.inner.scores(x).clamp(1e-300, 1.0)
        return p.log() - (-p).log1p().clamp_min(-1e300)  # a probability of 1 reads as a logit of +inf


def check_default_target(adapter: ModelAdapter | None, k: int) -> None:
    """Refuse ``target=None`` (the argmax) for a regressor of ``k > 1`` outputs: the largest predicted value is no
    predicted class, and rows of one batch would explain different outputs."""
    if k > 1 and isinstance(adapter, SklearnAdapter) and adapter.outputs_values:
        raise InvalidTargetError(
            f"{type(adapter.model).__name__} predicts {k} values per row (a regressor of several outputs), so there "
            f"is no predicted class to explain by default; pass target=j to explain output j (0..{k - 1})."
        )


def coder_of(adapter: ModelAdapter | None) -> SklearnAdapter | None:
    """The adapter that codes the text and categorical columns of DataFrames (:mod:`whybox.models.categorical`):
    a scikit-learn estimator's; ``None`` for any other model (a torch model takes numbers)."""
    return adapter if isinstance(adapter, SklearnAdapter) else None


def declares_multilabel(model: Any) -> bool:
    """True for a Hugging Face model whose config says its labels are independent
    (``problem_type="multi_label_classification"``, trained with a sigmoid per label)."""
    return getattr(getattr(model, "config", None), "problem_type", None) == "multi_label_classification"


def fitted_multilabel(estimator: Any) -> bool:
    """True for a scikit-learn estimator fitted on a label-indicator matrix whose ``predict_proba`` gives each
    label's own probability in one ``(B, K)`` array: a ``OneVsRestClassifier`` (``multilabel_``), an
    ``MLPClassifier`` (its label binarizer's ``y_type_``), a ``ClassifierChain``; the last step of a Pipeline."""
    final = getattr(estimator, "_final_estimator", estimator)  # a Pipeline's classifier
    try:
        if getattr(final, "multilabel_", False) is True:
            return True
    except (AttributeError, ValueError):  # an unfitted property
        return False
    if getattr(getattr(final, "_label_binarizer", None), "y_type_", "") == "multilabel-indicator":
        return True
    return type(final).__name__ == "ClassifierChain" and hasattr(final, "estimators_")


def is_conv(module: nn.Module, cls: type[nn.Module]) -> bool:
    """Whether ``module`` is a ``cls`` convolution (``nn.Conv1d``, ``nn.Conv2d``): the layer itself, or its
    TorchScript form (a scripted or traced model's submodules are script modules that keep the class's name)."""
    if isinstance(module, cls):
        return True
    return isinstance(module, torch.jit.ScriptModule) and getattr(module, "original_name", None) == cls.__name__


def first_conv_channels(model: nn.Module, cls: type[nn.Module]) -> int | None:
    """The input channels of ``model``'s first ``cls`` convolution (registration order; TorchScript too), or None
    without one (or where a traced module does not tell). A traced module keeps neither ``in_channels`` nor
    ``groups``: they are read from its weight ``(out, in / groups, ...)`` and the ``groups`` its graph's
    convolution call was traced with."""
    conv = next((m for m in model.modules() if is_conv(m, cls)), None)
    if conv is None:
        return None
    channels = getattr(conv, "in_channels", None)
    if isinstance(channels, int):
        return channels
    weight = getattr(conv, "weight", None)
    groups = getattr(conv, "groups", None)
    if not isinstance(groups, int):
        groups = _traced_groups(conv)
    if not isinstance(weight, torch.Tensor) or weight.ndim < 2 or groups is None:
        return None
    return int(weight.shape[1]) * groups


def _traced_groups(conv: Any) -> int | None:
    """The ``groups`` constant of a traced convolution's ``aten::_convolution`` call (its 9th input), or None."""
    try:
        node = conv.graph.findNode("aten::_convolution")
        value = list(node.inputs())[8]
        groups = value.toIValue() if value.node().kind() == "prim::Constant" else None
    except Exception:  # not a traced convolution's graph: unknown
        return None
    return groups if isinstance(groups, int) and not isinstance(groups, bool) and groups >= 1 else None


#: layers that read the steps of a sequence (B, T, D): recurrent layers and attention (also as TorchScript modules)
_STEP_LAYERS: tuple[type[nn.Module], ...] = (nn.RNNBase, nn.RNNCellBase, nn.MultiheadAttention)
_STEP_LAYER_NAMES = frozenset({"RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell", "MultiheadAttention"})


def is_signal(adapter: ModelAdapter | None, x: torch.Tensor) -> bool:
    """True for 1-D signals ``(B, C, L)``, channels first: 3-D inputs of a torch model (not a text adapter, whose
    packed inputs are 3-D too) whose first ``nn.Conv1d`` reads ``C`` channels, as a 1-D CNN on time series does, or
    of a black box whose function says it reads ``C`` channels (``fn.signal_channels``: an ONNX graph's first 1-D
    ``Conv``).
    Methods then treat the last axis as time: CAMs map it, RISE and the default features cut it into segments
    shared by all channels, and the metrics read one value per time step.

    The shapes alone do not settle it: a sequence ``(B, T, D)`` that the model permutes into ``(B, D, T)`` before
    that convolution also matches where ``T == D``, and so does one projected to ``H`` features per step first
    (``Linear(D, H)``, then the permute) where ``H == T``. One probe of the model's first row
    (:func:`_conv_reading`) shows which axis reaches the convolution's time axis: where it is axis 1 the inputs are
    no signals. Where the probe cannot tell (a TorchScript model, one that does not run on one row, an operation
    mixing both axes before the convolution) they are read as signals, as the shapes say; at ``T == D``, the one
    case where the shapes fit both readings as well, with an :class:`~whybox.errors.AmbiguousLayoutWarning` (once
    per model and input shape) saying so and how to choose."""
    if x.ndim != 3 or not isinstance(adapter, TorchAdapter) or hasattr(adapter, "tokenizer"):
        return False
    if isinstance(adapter.model, FunctionModel):  # a black box that says so: an ONNX graph whose first Conv is 1-D
        return getattr(adapter.model.fn, "signal_channels", None) == x.shape[1]
    channels = first_conv_channels(adapter.model, nn.Conv1d)
    if channels is None or channels != x.shape[1]:
        return False
    # (B, T, D) that the model permutes into (B, D, T), projected or not, is no signal (at T == D: is_sequence)
    return _conv_reading(adapter, x) != "time"


_TRANSPOSED: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], str | None]] = weakref.WeakKeyDictionary()


_TRANSPOSE_ADVICE = (
    ", or explain them as the signals the model sees, time last: pass x.transpose(1, 2) with "
    "whybox.adapt(model, preprocess=lambda z: z.transpose(1, 2))"
)


def _conv_reading(adapter: TorchAdapter, x: torch.Tensor) -> str | None:
    """Which axis of 3-D inputs reaches the first ``nn.Conv1d`` of ``adapter``'s model as its time axis: ``"time"``
    where axis 1 does (a sequence ``(B, T, D)`` permuted into ``(B, D, T)``, a 1-D CNN over a sequence, also behind
    a per-step projection ``Linear(D, H)``), ``"channels"`` where axis 1 reaches its channels (a signal
    ``(B, C, L)``), ``None`` where there is no telling. Two forward passes of one row, each stopped at that
    convolution (in eval mode, under the model's lock; not counted in ``n_forward``): the row, and the row with its
    first entry along axis 1 (``x[:, 0]``) changed. Where only the convolution's first time position changes, axis 1
    is time (a per-step LayerNorm or Linear before the permute keeps that); where only its first channel changes,
    axis 1 is channels; anything else (an operation mixing both axes, a model that does not run, a TorchScript model,
    whose modules take no hooks) is ``None``, which :func:`is_signal` reads as a signal, at ``T == D`` with an
    :class:`~whybox.errors.AmbiguousLayoutWarning`. Remembered per model, input shape and dtype (per adapter where
    it has a preprocess)."""
    key = (tuple(x.shape[1:]), x.dtype)
    # the answer is the model's, or with a preprocess (a transpose changes it) the adapter's own: kept on it, so it
    # goes with the adapter (no preprocess is hashed or kept alive)
    memo = (
        _TRANSPOSED.setdefault(adapter.model, {})
        if adapter.preprocess is None
        else adapter.__dict__.setdefault("_transposed_memo", {})
    )
    if key in memo:
        return memo[key]
    reading, why = _probe_conv_reading(adapter, x)
    if not _lazy(adapter.model):  # a lazy model's first forward pass changes it: probe it again then
        memo[key] = reading
    if reading is None and x.shape[1] == x.shape[2]:
        n = x.shape[1]
        # a scripted or traced model stays out of sight behind a transposing preprocess too: no advice that cannot work
        scripted = any(isinstance(m, torch.jit.ScriptModule) for m in adapter.model.modules())
        warnings.warn(
            f"inputs of shape {tuple(x.shape)} for {type(adapter.model).__name__}, whose first Conv1d reads {n} "
            f"channels, are read as 1-D signals (B, C, L) = (B, {n}, {n}), time along the last axis; they could as "
            f"well be sequences (B, T, D) that the model permutes into (B, D, T), time along axis 1, and {why}. If "
            "they are sequences, adapt the module itself (not a scripted or traced one) so that whybox sees the "
            f"permute{_TRANSPOSE_ADVICE if not scripted else ''}. Where the inputs are signals (B, C, L), this "
            "reading is right: filter AmbiguousLayoutWarning to silence it.",
            AmbiguousLayoutWarning,
            stacklevel=3,
        )
    return reading


def _probe_conv_reading(adapter: TorchAdapter, x: torch.Tensor) -> tuple[str | None, str]:
    """:func:`_conv_reading`'s probe, uncached: the reading, and where it is ``None`` why (for the warning)."""
    conv = next((m for m in adapter.model.modules() if isinstance(m, nn.Conv1d)), None)
    if conv is None:  # TorchScript: its modules take no hooks
        return None, "whybox cannot look inside a TorchScript model to tell"
    if _lazy(adapter.model):
        return None, "the model's lazy parameters are not initialised yet (run it once first)"
    row = x[:1].detach().to(device=adapter.device)
    if adapter.weights_dtype is not None:
        row = row.to(adapter.weights_dtype)
    if not row.is_floating_point():
        return None, f"whybox cannot probe {row.dtype} inputs to tell"
    moved = row.clone()
    # a change no rounding hides and no per-step normalisation undoes (it varies along the step's features)
    ramp = torch.linspace(1.0, 2.0, row.shape[2], device=row.device, dtype=row.dtype)
    moved[:, 0] = moved[:, 0] + ramp * (1.0 + moved[:, 0].abs())
    seen: list[torch.Tensor] = []

    def grab(_m: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], torch.Tensor):
            seen.append(args[0].detach())
        raise _Probed

    try:
        with adapter.guard("eval"), torch.no_grad():
            handle = conv.register_forward_pre_hook(grab)  # inside the lock: no other call on the model sees it
            try:
                for r in (row, moved):
                    with suppress(_Probed):
                        adapter.forward(r)
            finally:
                handle.remove()
    except Exception as exc:  # the model does not run on this row: no telling
        return None, f"the model does not run on one row to tell ({type(exc).__name__})"
    if len(seen) == 2 and seen[0].shape == seen[1].shape and seen[0].ndim == 3:
        changed = (seen[0] != seen[1])[0]  # (channels, time) of the convolution's input
        at_time = changed.any(0).nonzero().flatten().tolist()
        at_channel = changed.any(1).nonzero().flatten().tolist()
        # each answer needs the other axis to have more than one position: at one time position (L == 1) "only the
        # first time position changed" holds whatever the layout, as "only the first channel" does at one channel
        if at_time == [0] and len(at_channel) > 1 and changed.shape[1] > 1:
            return "time", ""
        if at_channel == [0] and len(at_time) > 1 and changed.shape[0] > 1:
            return "channels", ""
    return None, "changing the first row's x[:, 0] did not reach the Conv1d at one time step or at one channel"


def _lazy(model: nn.Module) -> bool:
    """Whether ``model`` has lazy parameters or buffers not initialised yet (``nn.LazyLinear`` before a pass)."""
    uninitialised = (nn.parameter.UninitializedParameter, nn.parameter.UninitializedBuffer)
    return any(isinstance(t, uninitialised) for t in (*model.parameters(), *model.buffers()))


class _Probed(Exception):
    """Stops the probe's forward pass at the first convolution (nothing after it runs)."""


def is_sequence(adapter: ModelAdapter | None, x: torch.Tensor) -> bool:
    """True for sequences ``(B, T, D)``: 3-D inputs of a torch model that reads time steps of ``D`` features, as it
    shows by its layers: a recurrent layer (``nn.RNN``, ``nn.GRU``, ``nn.LSTM``, or their cells unrolled over the
    steps), an ``nn.MultiheadAttention`` (a
    transformer over time), or an ``nn.Conv1d`` reading ``D`` channels (a 1-D CNN that permutes the steps into
    place); TorchScript forms of these too. Not a 1-D signal (:func:`is_signal`), not a text adapter's packed tokens,
    not a black box (a function, an ONNX graph: nothing tells), and not the channel-less images ``(B, H, W)`` of a
    model with an ``nn.Conv2d`` or of one without any of these layers (an MLP on gray images). Used to pick the
    methods and the pictures for such inputs (the ``sequence`` kind)."""
    if x.ndim != 3 or not isinstance(adapter, TorchAdapter) or hasattr(adapter, "tokenizer"):
        return False
    if isinstance(adapter.model, FunctionModel) or is_signal(adapter, x):
        return False
    modules = list(adapter.model.modules())
    if any(is_conv(m, nn.Conv2d) for m in modules):
        return False
    steps = any(
        isinstance(m, _STEP_LAYERS)
        or (isinstance(m, torch.jit.ScriptModule) and getattr(m, "original_name", None) in _STEP_LAYER_NAMES)
        for m in modules
    )
    return steps or first_conv_channels(adapter.model, nn.Conv1d) == x.shape[2]


def score_for(adapter: ModelAdapter, score: str | None) -> str | None:
    """``score`` as it applies to ``adapter``: where the outputs are predicted values (a scikit-learn regressor's
    ``predict``, :attr:`ModelAdapter.outputs_values`) the default ``None`` is ``"logit"``, the values themselves
    (a softmax over several regression targets would mix unrelated quantities), and a probability is an error;
    for a multi-label classifier (``kind="multilabel"``) the probability is each label's own, ``None`` and
    ``"prob"`` are ``"sigmoid"`` and ``"log_prob"`` is ``"log_sigmoid"`` (a softmax would make the labels compete);
    anything else unchanged (``None`` is then resolved on the number of outputs, see
    :func:`~whybox.models.targets.resolve_score`)."""
    if adapter.kind == "multilabel":
        return {None: "sigmoid", "prob": "sigmoid", "log_prob": "log_sigmoid"}.get(score, score)
    if score in ("sigmoid", "log_sigmoid") and isinstance(adapter, SklearnAdapter):
        if adapter.method_name == "predict_proba":
            raise InvalidParameterError(
                f"score={score!r} reads each output as a logit, but {type(adapter.model).__name__}'s predict_proba "
                "gives probabilities already: leave score out to explain them (or pass score='prob' where they are "
                "one column per class, score='logit' where it is one column)."
            )
        if adapter.outputs_values:
            raise InvalidParameterError(
                f"score={score!r} reads each output as a logit, but the outputs of {type(adapter.model).__name__} are "
                "predicted values (its predict): pass score='logit', or leave score out, to explain the value itself."
            )
    if not adapter.outputs_values:
        return score
    if score is None:
        return "logit"
    if score in ("prob", "log_prob"):
        raise InvalidParameterError(
            f"score={score!r} reads class probabilities, but the outputs of {type(adapter.model).__name__} are "
            f"{adapter.values_described}: pass score='logit', or leave score out, to explain the value itself."
        )
    return score


def output_probabilities(adapter: ModelAdapter, scores: torch.Tensor) -> torch.Tensor:
    """What a user reads as each output's probability, from raw scores ``(B, K)``: a multi-label classifier's
    label sigmoids, a scikit-learn model's outputs as they are (``predict_proba``, or a regressor's values), a
    one-output model's output (no softmax over one score), outputs that already are distributions (every row
    non-negative, summing to one) as they are, else the softmax."""
    if isinstance(adapter, SklearnAdapter):  # predict_proba (a multi-label one's too) or values, as they are
        return scores
    if adapter.kind == "multilabel":
        return scores.sigmoid()
    if scores.shape[1] == 1:
        return scores
    # outputs that already are distributions (a model ending in softmax, a black box returning probabilities) are
    # read as they are: their softmax would show [0.1, 0.9] as [0.31, 0.69]. One decision for the batch
    dtype = getattr(adapter, "weights_dtype", None)
    eps = torch.finfo(dtype).eps if isinstance(dtype, torch.dtype) and dtype.is_floating_point else 0.0
    if bool(distribution_rows(scores, eps).all()):
        return scores
    return scores.softmax(1)


def reads_probabilities(adapter: ModelAdapter, k: int) -> bool:
    """Whether :func:`output_probabilities` of ``k`` outputs are probabilities (a softmax, label sigmoids,
    ``predict_proba``), not a one-output model's or a scikit-learn regressor's raw output."""
    if adapter.kind == "multilabel":
        return True
    if isinstance(adapter, SklearnAdapter):
        return adapter.method_name == "predict_proba"
    return k > 1


def scoring_adapter(adapter: ModelAdapter, score: str | None) -> ModelAdapter:
    """The adapter whose raw scores ``score`` maps (:func:`~whybox.models.targets.apply_score_space`): for a
    scikit-learn classifier's ``predict_proba`` and ``score`` ``"prob"``, ``None`` or ``"log_prob"`` its log-probabilities
    (the softmax of probabilities is not them: ``[1.0, 0.0]`` would read as ``[0.73, 0.27]``), a multi-label one's
    label logits (each label's sigmoid is its probability), and the same for a black-box text model whose function
    returns probabilities; ``"logit"`` keeps the
    model's own outputs, the probabilities, as shap's KernelExplainer and lime read them. Any other adapter as is."""
    if score != "logit" and isinstance(adapter, SklearnAdapter) and adapter.method_name == "predict_proba":
        return LabelLogitScores(adapter) if adapter.kind == "multilabel" else ProbabilityScores(adapter)
    own = getattr(adapter, "probability_scores", None)  # a black-box text model that may return probabilities
    if score in (None, "prob", "log_prob") and callable(own):
        scorer: ModelAdapter = own()
        return scorer
    return adapter


def adapt(
    model: Any,
    *,
    kind: str = "classifier",
    output: OutputSelector = None,
    layers: LayerLike | Sequence[LayerLike] | None = None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    references: torch.Tensor | np.ndarray | None = None,
    similarity: str = "cosine",
    scale: float = 1.0,
    labels: Sequence[str] | None = None,
    input_shapes: Sequence[Sequence[int]] | Mapping[str, Sequence[int]] | None = None,
) -> ModelAdapter:
    """Wrap a model so every explainer can call it.

    Parameters
    ----------
    model
        A ``torch.nn.Module`` returning class logits, an embedding model (``kind="embedding"``), a
        fitted scikit-learn estimator, an ``.onnx`` file's path or an ``onnxruntime.InferenceSession`` (a black box
        run by ONNX Runtime, the ``onnx`` extra; ``output=`` names its output), a function
        ``inputs -> scores (B, K)`` (a black box: a tensor or any NumPy array back; see :class:`FunctionModel`; the
        modules it calls are not put in eval mode by whybox), or an existing :class:`ModelAdapter` (returned
        as it is: only ``labels=`` applies to it, setting its output names; ``input_shapes=`` and the other options
        are refused: adapt the module itself with them).
    kind
        ``"classifier"`` (scores are the model's outputs, logits of mutually exclusive classes),
        ``"multilabel"`` (the outputs are the logits of independent labels: the probability an explainer or metric
        reads is each label's sigmoid, not a softmax over the labels; also what a Hugging Face model whose config
        has ``problem_type="multi_label_classification"`` gets; for a scikit-learn estimator, a ``predict_proba``
        of each label's own probability, detected for one fitted on a label-indicator matrix) or ``"embedding"``
        (scores are similarities
        of the embedding to ``references``).
    output
        Selector for tuple, dict or ``ModelOutput`` outputs: an index, a key/attribute name or a callable.
    layers
        Default layer(s) for layer methods (CAM family): names (``"features.3"``, ``"act@1"`` for the
        second call of a reused module) or modules.
    preprocess
        Applied to inputs before the model (e.g. normalisation); attributions are taken w.r.t. the raw inputs.
        With ``input_shapes`` it receives the packed rows ``(B, F)`` (``adapter.packing.unpack`` cuts them into the
        inputs; return rows of the same shape), so an image normalisation must unpack, normalise and pack.
    references, similarity, scale
        For ``kind="embedding"``: target embedding ``(D,)`` or class embeddings ``(K, D)`` (a tensor, or a NumPy
        array of numbers such as a sentence encoder's ``encode()``, read as a tensor of its dtype), ``"cosine"`` or
        ``"dot"``, and a factor on the similarities.
    labels
        The outputs' names in order (``imagenet_labels()``; an embedding model's reference names): a string
        ``target=`` then names an output (``target="espresso"``). A scikit-learn classifier's ``classes_`` and a
        Hugging Face model's ``config.id2label`` name them without it.
    input_shapes
        For a torch model of several inputs, ``model(image, metadata)``: one sample's shape per input, in the order
        of its arguments (``[(3, 32, 32), (10,)]``), or by keyword (``{"image": (3, 32, 32), "metadata": (10,)}``).
        Every method and metric then takes the inputs as a tuple (or a mapping) of tensors ``(B, *shape)``, packed
        into rows ``(B, F)`` (:mod:`whybox.models.packed`); ``adapter.packing.unpack(explanation.attributions)``
        gives each input's attributions, ``features=adapter.packing.input_groups()`` one feature per input.

    Raises
    ------
    InvalidParameterError
        Unknown ``kind``, missing ``references`` for an embedding model, or an unsupported model type.
    """
    names = None
    if labels is not None:
        if isinstance(labels, str) or not isinstance(labels, Sequence) or not all(isinstance(n, str) for n in labels):
            raise InvalidParameterError(
                f"labels must be a list of strings, one per output in order (e.g. imagenet_labels()); got "
                f"{labels!r:.80}."
            )
        names = list(labels)
    adapter = _adapt(model, kind, output, layers, preprocess, references, similarity, scale)
    if names is not None:
        adapter.output_names = names
    if input_shapes is not None:
        from whybox.models.packed import InputPacking

        if model is adapter:
            raise InvalidParameterError(
                "input_shapes does not apply to an existing adapter (it would change how the adapter reads its "
                "inputs for everyone holding it); adapt the module itself: whybox.adapt(adapter.model, "
                "input_shapes=..., ...)."
            )
        if not isinstance(adapter, TorchAdapter) or isinstance(adapter.model, FunctionModel):
            raise InvalidParameterError(
                f"input_shapes applies to a torch.nn.Module of several inputs; got {type(model).__name__}. A function "
                "or an estimator takes one array: pack the inputs into it yourself."
            )
        adapter.packing = InputPacking(input_shapes)
    if isinstance(adapter, TorchAdapter) and adapter is not model and not isinstance(adapter.model, FunctionModel):
        _check_arguments(adapter.model, adapter.packing)
    return adapter


def _check_arguments(model: nn.Module, packing: Any) -> None:
    """Refuse, before any call, a module whose ``forward`` needs arguments whybox will not give it: more than one
    positional tensor without ``input_shapes``, or other ones than ``input_shapes`` names."""
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a builtin or C++ forward: nothing to read
        return
    empty = inspect.Parameter.empty
    positional = [
        p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is empty
    ]
    keyword = [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is empty]
    given = len(packing.shapes) if packing is not None and packing.names is None else 1
    names = set(packing.names) if packing is not None and packing.names is not None else set()
    missing = positional[given:] if not names else [n for n in positional if n not in names]
    missing += [n for n in keyword if n not in names]
    if not missing:
        return
    what = ", ".join(missing)
    raise InvalidParameterError(
        f"{type(model).__name__}.forward also needs {what}, which whybox does not pass: it calls the model with "
        + (
            "one tensor per name in input_shapes. Name every input in input_shapes."
            if names
            else (
                f"{given} tensor{'s' if given != 1 else ''} (input_shapes). List every input in input_shapes."
                if packing is not None
                else "one tensor (B, ...). For several inputs explained together, adapt(model, input_shapes=[...]) "
                "with each input's per-sample shape; for arguments held fixed, a function "
                "lambda x: model(x, extra) (a black box) or a wrapping module."
            )
        )
    )


def _adapt(
    model: Any,
    kind: str,
    output: OutputSelector,
    layers: LayerLike | Sequence[LayerLike] | None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None,
    references: torch.Tensor | np.ndarray | None,
    similarity: str,
    scale: float,
) -> ModelAdapter:
    if isinstance(model, ModelAdapter):
        given = {
            "kind": kind if kind != "classifier" else None,
            "output": output,
            "layers": layers,
            "preprocess": preprocess,
            "references": references,
            "similarity": similarity if similarity != "cosine" else None,
            "scale": scale if scale != 1.0 else None,
        }
        ignored = [k for k, v in given.items() if v is not None]
        if ignored:  # they would be dropped without a word: the adapter scores as it was made
            raise InvalidParameterError(
                f"model is already a whybox adapter ({type(model).__name__}), which adapt() returns as it is, so "
                f"{', '.join(f'{k}=' for k in ignored)} would not apply; pass them when the adapter is made (adapt() "
                "of the model itself), or for scores in another space pass score= to explain / evaluate "
                "(score='logit' reads a model's outputs as they are)."
            )
        return model
    from whybox.models.onnx import OnnxModel, is_onnx_path

    if is_onnx_path(model) or type(model).__name__ == "InferenceSession":  # an ONNX graph: a black box
        graph_output = output if isinstance(output, (str, int)) else None  # a callable applies to the scores after
        model = OnnxModel(model, output=graph_output)
        output = None if graph_output is not None else output
    if kind not in KINDS:
        raise InvalidParameterError(f"kind must be one of {KINDS}; got {kind!r}.{did_you_mean(kind, KINDS)}")
    embedding_options = {
        "references": references,
        "similarity": similarity if similarity != "cosine" else None,
        "scale": scale if scale != 1.0 else None,
    }
    stray = [k for k, v in embedding_options.items() if v is not None]
    if kind != "embedding" and stray:  # they would be dropped without a word: the outputs scored as they are
        raise InvalidParameterError(
            f"{', '.join(f'{k}=' for k in stray)} apply to embedding models only; pass kind='embedding' to score "
            f"similarities to the references, or leave them out (kind={kind!r} scores the model's outputs)."
        )
    if isinstance(model, nn.Module):
        if kind == "embedding":
            if references is None:
                raise InvalidParameterError(
                    "kind='embedding' needs references=: a target embedding (D,) or class embeddings (K, D)."
                )
            return EmbeddingAdapter(
                model,
                references=references,
                similarity=similarity,
                scale=scale,
                output=output,
                layers=layers,
                preprocess=preprocess,
            )
        adapter = TorchAdapter(model, output=output, layers=layers, preprocess=preprocess)
        adapter.kind = "multilabel" if declares_multilabel(model) else kind
        return adapter
    if hasattr(model, "fit") and any(hasattr(model, n) for n in ("predict_proba", "decision_function", "predict")):
        if kind not in ("classifier", "multilabel"):
            raise InvalidParameterError(f"scikit-learn models support kind='classifier' or 'multilabel'; got {kind!r}.")
        if kind == "multilabel" and not callable(getattr(model, "predict_proba", None)):
            raise InvalidParameterError(
                f"kind='multilabel' reads each label's probability from predict_proba, which {type(model).__name__} "
                "does not have; leave kind out to explain its decision_function or predict."
            )
        stray = [k for k, v in {"output": output, "layers": layers}.items() if v is not None]
        if stray:
            raise InvalidParameterError(
                f"{', '.join(f'{k}=' for k in stray)} do not apply to a scikit-learn estimator (its scores are "
                "predict_proba / decision_function, and it has no layers); leave them out, or wrap the estimator in "
                "a function returning the scores you want explained."
            )
        sk = SklearnAdapter(model, preprocess=preprocess)
        # labels of their own (an estimator fitted on a label-indicator matrix): each label's probability explained
        if sk.method_name == "predict_proba" and (kind == "multilabel" or fitted_multilabel(model)):
            sk.kind = "multilabel"
        return sk
    if callable(model) and not isinstance(model, type):  # a function x -> scores: wrapped as a module
        if kind == "embedding":
            raise InvalidParameterError(
                "kind='embedding' takes a torch.nn.Module; wrap the function in one, or return class scores (B, K)."
            )
        adapter = TorchAdapter(FunctionModel(model), output=output, layers=layers, preprocess=preprocess)
        adapter.kind = kind
        return adapter
    raise InvalidParameterError(
        f"model of type {type(model).__name__} is not supported; pass a torch.nn.Module, a fitted "
        "scikit-learn estimator, a function inputs -> scores (B, K) or a whybox ModelAdapter."
    )
