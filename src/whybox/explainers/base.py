"""The Explainer template: validate at the boundary, guard the model, compute, package the result."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from whybox.errors import InvalidInputError, InvalidParameterError, NotDifferentiableError, did_you_mean
from whybox.explanation import Explanation, input_digest
from whybox.masking.engine import MaskingEngine, resolve_batch_size
from whybox.masking.fills import one_value_per_column
from whybox.models._guard import (
    MODES,
    has_train_mode_batchnorm,
    instance_lock,
    public_call,
    seed_global_rngs,
    warn_batch_statistics,
)
from whybox.models.adapter import (
    FunctionModel,
    ModelAdapter,
    SklearnAdapter,
    TorchAdapter,
    adapt,
    check_default_target,
    coder_of,
    first_conv_channels,
    is_sequence,
    is_signal,
    score_for,
    scoring_adapter,
)
from whybox.models.categorical import vocabularies
from whybox.models.inputs import (
    as_tensor_inputs,
    check_feature_names,
    check_option_columns,
    is_text_adapter,
    is_texts,
)
from whybox.models.onnx import OnnxModel
from whybox.models.targets import (
    SCORE_SPACES,
    Target,
    TargetLike,
    apply_score_space,
    class_label_target,
    class_names,
    per_row,
    probability_check_over_chunks,
    resolve_target,
)

__all__ = ["Explainer", "GradientExplainer"]

PERTURBATION_HINT = "a perturbation method (e.g. 'scorecam' for images, or the perturbation explainers)"


def rows_finite(flat: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: whether every value of each row of ``flat`` ``(B, N)`` is finite. A finite row sum proves it (a
    NaN or an infinity makes the sum NaN or infinite), so only rows whose sum is not finite (a non-finite value, or
    finite values that overflow the sum) are checked element by element: one reduction where a map is clean."""
    if not flat.is_floating_point() and not flat.is_complex():
        return torch.ones(flat.shape[0], dtype=torch.bool, device=flat.device)
    ok = torch.isfinite(flat.sum(1))
    if not bool(ok.all()):
        rows = (~ok).nonzero().flatten()
        ok[rows] = torch.isfinite(flat[rows]).all(1)
    return ok


def _conv1d_channels(adapter: ModelAdapter) -> int | None:
    """The channels the first ``nn.Conv1d`` of a torch model reads; None without one."""
    if not isinstance(adapter, TorchAdapter):
        return None
    return first_conv_channels(adapter.model, torch.nn.Conv1d)


@functools.cache
def _keyword_options(cls: type) -> tuple[str, ...]:
    """Keyword-only ``__init__`` options along the MRO (cached: ``inspect.signature`` is slow)."""
    names: list[str] = []
    for c in cls.__mro__:
        init = c.__dict__.get("__init__")
        if init is None or not inspect.isfunction(init):
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.KEYWORD_ONLY and p.name not in names:
                names.append(p.name)
    return tuple(names)


def _black_box_hint(adapter: ModelAdapter) -> str:
    """The methods that need only the outputs of ``adapter``'s model, by what it reads: rows of features (a
    scikit-learn estimator) or texts (a black-box text scorer); otherwise the general hint."""
    from whybox.api import methods
    from whybox.explainers.attention.explainers import AttentionExplainer
    from whybox.models.blackbox_text import BlackBoxTextAdapter
    from whybox.registry import EXPLAINERS

    kind = (
        "tabular"
        if isinstance(adapter, SklearnAdapter)
        else "text"
        if isinstance(adapter, BlackBoxTextAdapter)
        else None
    )
    if kind is None:
        return PERTURBATION_HINT
    names = [
        n
        for n in methods(kind)
        if not getattr(EXPLAINERS.get(n), "needs_grad", False) and not issubclass(EXPLAINERS.get(n), AttentionExplainer)
    ]
    return "a method that needs only the model's outputs: " + ", ".join(map(repr, names))


#: what one call keeps on its explainer object (its seed, the inputs' column names)
_CALL_STATE = ("_call_seed", "_feature_names")


def _home_device(inputs: Any) -> torch.device:
    """Where an explanation of ``inputs`` comes back: a tensor's device; the one device of the tensors of a tuple,
    list or mapping (a model of several inputs, given its inputs apart); the CPU for arrays and frames (no device)
    and for tensors on several devices."""
    if isinstance(inputs, torch.Tensor):
        return inputs.device
    parts = inputs.values() if isinstance(inputs, Mapping) else inputs if isinstance(inputs, (tuple, list)) else ()
    devices = {t.device for t in parts if isinstance(t, torch.Tensor)}
    return devices.pop() if len(devices) == 1 else torch.device("cpu")


class Explainer:
    """Base class of every explainer.

    Subclasses store keyword-only options in ``__init__`` (no work there) and implement
    :meth:`_explain`. :meth:`explain` validates inputs, runs the computation inside the model guard
    (eval mode, parameters frozen, everything restored on exit), and returns one :class:`Explanation`.

    Options every explainer takes: ``batch_size`` (model input rows per call; ``None``, the default, is 64 for a
    torch model and 4,096 for a scikit-learn estimator, whose calls cost far more than its small rows), ``mode``
    (``"eval"`` or ``"as_is"``), ``score`` (``"logit"``, ``"prob"``, ``"log_prob"``, ``"sigmoid"`` and ``"log_sigmoid"``
    (each output as its own label's logit: multi-label classifiers, a binary classifier's single logit), or ``None``:
    ``"prob"``, the raw score where the model has one output, ``"sigmoid"`` for ``adapt(model, kind="multilabel")``;
    defaults differ by method)
    and ``seed``.
    """

    name: ClassVar[str] = "explainer"
    needs_grad: ClassVar[bool] = False
    image_only: ClassVar[bool] = False
    takes_signals: ClassVar[bool] = False  # an image_only method that also maps 1-D signals (B, C, L)
    #: an image_only method that also maps the image input of a model of several inputs (packed rows)
    takes_packed_images: ClassVar[bool] = False
    #: The kinds of input the method applies to (``whybox.methods(kind)``).
    input_kinds: ClassVar[tuple[str, ...]] = ("image", "signal", "sequence", "tabular", "text")
    #: whether the map ignores the target (attention rollout, raw attention): the random-logit sanity check, which
    #: compares a class's map with another class's, does not apply and is skipped
    class_agnostic: ClassVar[bool] = False

    def __init__(
        self,
        model: Any,
        *,
        batch_size: int | None = None,
        mode: str = "eval",
        score: str | None = "logit",
        seed: int | None = 0,
    ) -> None:
        self.adapter: ModelAdapter = adapt(model)
        self.batch_size = resolve_batch_size(batch_size, self.adapter)
        if mode not in MODES:
            raise InvalidParameterError(f"mode must be one of {MODES}; got {mode!r}.{did_you_mean(mode, MODES)}")
        if score is not None and score not in SCORE_SPACES:
            raise InvalidParameterError(
                f"score must be one of {SCORE_SPACES}; got {score!r}.{did_you_mean(score, SCORE_SPACES)}"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise InvalidParameterError(f"seed must be a non-negative int or None; got {seed!r}.")
        self.mode = mode
        self.score = score_for(self.adapter, score)  # a regressor's values are read as they are
        self.seed = seed
        if self.needs_grad and not self.adapter.differentiable:
            raise NotDifferentiableError(
                f"method {self.name!r} needs gradients, but {type(self.adapter.model).__name__} is not a "
                f"differentiable torch model; use {_black_box_hint(self.adapter)}."
            )
        graph = getattr(getattr(self.adapter, "model", None), "fn", None)
        if self.needs_grad and isinstance(graph, OnnxModel):  # a FunctionModel would only say "NumPy values" later
            raise NotDifferentiableError(
                f"method {self.name!r} needs gradients, but ONNX model {graph.name!r} runs in ONNX Runtime, outside "
                "torch, so no gradient reaches its inputs and it cannot run; use 'rise', 'lima' or a perturbation "
                "method (they need only the outputs), or explain the torch module the graph was exported from."
            )

    # ------------------------------------------------------------------ configuration
    def params(self) -> dict[str, Any]:
        """The explainer's options (every keyword of ``__init__``), JSON-friendly."""
        out: dict[str, Any] = {}
        cls: Any = type(self)  # mypy does not see classes as Hashable cache keys
        for name in _keyword_options(cls):
            if hasattr(self, name):
                v = getattr(self, name)
                out[name] = v if isinstance(v, (bool, int, float, str, type(None), list, tuple)) else repr(v)
        return out

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({opts})"

    # ------------------------------------------------------------------ the call
    def explain(self, inputs: torch.Tensor, target: TargetLike = None) -> Explanation:
        """Explain ``inputs`` ``(B, ...)`` for ``target`` (``None`` = the predicted class of each row).

        Shapes
        ------
        inputs: ``(B, *S)``; returns attributions ``(B, *S)``, ``(B, 1, H, W)`` or ``(B, F)`` per method.
        """
        if torch.is_inference_mode_enabled():  # gradients cannot be taken there, and enable_grad does not undo it
            with torch.inference_mode(False):
                return self.explain(inputs, target)
        # a call's own state (its seed, the inputs' columns) lives on the explainer
        with instance_lock(self), public_call(), probability_check_over_chunks():  # one probability warning a call
            # a call made from inside this one (a target callable that explains again with this object) leaves
            # the outer call's state as it found it
            state = {k: self.__dict__[k] for k in _CALL_STATE if k in self.__dict__}
            try:
                return self._explain_call(inputs, target)
            finally:
                for k in _CALL_STATE:
                    if k in state:
                        self.__dict__[k] = state[k]
                    else:
                        self.__dict__.pop(k, None)

    def _explain_call(self, inputs: torch.Tensor, target: TargetLike) -> Explanation:
        x = self._validate(inputs)
        target = class_label_target(self.adapter, target)  # class labels, an SAE adapter's latents
        engine = MaskingEngine(scoring_adapter(self.adapter, self.score), batch_size=self.batch_size)
        if target is None and isinstance(self.adapter, SklearnAdapter) and self.adapter.outputs_values and len(x):
            # a regressor's outputs are values, not classes: several of them leave no default to explain. The
            # estimator's n_outputs_ says how many without a call; else one row's predict, through the engine so
            # that meta["n_forward"] counts it (it is a row the model scores)
            k = self.adapter.stated_outputs()
            check_default_target(self.adapter, k if k is not None else int(engine.forward(x[:1]).shape[1]))
        # seed=None draws a fresh seed per call (from the OS, global RNGs untouched); it is recorded in meta
        self._call_seed = self.seed if self.seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
        engine_backward = [0]
        with self.adapter.guard(self.mode):
            if self.mode == "as_is" and isinstance(self.adapter, TorchAdapter):  # Dropout in training mode draws
                seed_global_rngs(self._call_seed, self.adapter.device)
            if (
                self.mode == "as_is"
                and self.batch_size > 1
                and isinstance(self.adapter, TorchAdapter)
                and has_train_mode_batchnorm(self.adapter.model)
            ):
                raise InvalidParameterError(
                    "mode='as_is' with a BatchNorm in training mode couples the rows of every forward pass "
                    "(inputs, path points, noisy copies or masked copies), so results would mix rows; use "
                    "mode='eval' (the default) or batch_size=1."
                )
            if isinstance(self.adapter, TorchAdapter):
                warn_batch_statistics(self.adapter.model, self.batch_size, "the attributions")
            attr, tgt, meta = self._explain(x, target, engine, engine_backward)
        attr = _controls_zeroed(attr, x, getattr(self.adapter, "control_channels", 0))
        # the result comes back where the caller's inputs are (the work ran on the model's device)
        home = _home_device(inputs)
        attr = attr.detach().to(home)
        meta = {k: v.to(home) if isinstance(v, torch.Tensor) else v for k, v in meta.items()}
        flat = attr.reshape(attr.shape[0], -1)
        finite = rows_finite(flat)
        meta = {
            "n_forward": engine.n_forward,
            "n_backward": engine_backward[0],
            "seed": self._call_seed,
            "finite": [bool(v) for v in finite.tolist()],
            "input_digest": input_digest(
                x, self.adapter
            ),  # a metric given this explanation checks that it explains its inputs
            **meta,
        }
        names = getattr(self, "_feature_names", None)
        if names is not None:  # a DataFrame's columns, in the order of the attribution columns
            meta["feature_names"] = list(names)
        out_names = class_names(self.adapter)
        if out_names is not None:  # each row's explained output by name (classes_, id2label, adapt(labels=))
            meta["target_names"] = [out_names[t] if 0 <= t < len(out_names) else None for t in tgt.index.tolist()]
        vocab = vocabularies(coder_of(self.adapter))
        if vocab:  # what the coded cells of the options (a reference row, background rows) stand for
            meta["categories"] = vocab
        if is_signal(self.adapter, x):  # 1-D signals (B, C, L): plot() draws them over time
            meta["signal"] = True
        elif attr.ndim == 3 and is_sequence(self.adapter, x):  # sequences (B, T, D): plot() draws them over time too
            meta["sequence"] = True
        elif attr.ndim == 3 and getattr(self.adapter, "tokenizer", None) is not None:
            meta["tokens"] = True  # token attributions (B, T, D): not a channel-less image, no map
        elif attr.ndim == 2 and callable(getattr(self.adapter, "row_words", None)):
            meta["word_presence"] = True  # a black-box text model's word-presence rows (B, W + 1): words, not a table
        packing = getattr(self.adapter, "packing", None)
        # packed rows of several inputs: InputPacking(meta["input_shapes"]).unpack(attributions) cuts them back
        if packing is not None:
            shapes = [list(s) for s in packing.shapes]
            meta["input_shapes"] = dict(zip(packing.names, shapes, strict=True)) if packing.names else shapes
        return Explanation(
            attributions=attr, target=tgt.index.to(home, copy=True), method=self.name, params=self.params(), meta=meta
        )

    def _explain(
        self, x: torch.Tensor, target: TargetLike, engine: MaskingEngine, n_backward: list[int]
    ) -> tuple[torch.Tensor, Target, dict[str, Any]]:  # pragma: no cover - interface
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers
    def _code_options(self, coder: Any) -> None:
        """Code the array-valued options given as pandas objects for a scikit-learn estimator, now that the inputs
        have set which columns hold text (:mod:`whybox.models.categorical`); the perturbation explainers' fill and
        background."""

    def generator(self) -> torch.Generator:
        """A fresh CPU generator seeded with this call's seed (``seed``, or the one drawn for ``seed=None``)."""
        return torch.Generator().manual_seed(getattr(self, "_call_seed", self.seed or 0))

    def _validate(self, inputs: Any) -> torch.Tensor:
        if is_texts(inputs) and is_text_adapter(self.adapter):
            packed = "packed inputs (B, T, D + 1)" if hasattr(self.adapter, "tokenizer") else "presence rows (B, W + 1)"
            raise InvalidInputError(
                f"inputs are text, but {self.name!r} takes the text adapter's {packed}: use "
                "whybox.explain_text(adapter, texts, method) (word attributions, the text options filled "
                "in), or pass adapter.encode(texts).inputs."
            )
        coder = coder_of(self.adapter)
        # numpy arrays and DataFrames (tabular models) become tensors; a model of several inputs takes them packed
        x, names = as_tensor_inputs(inputs, coder, getattr(self.adapter, "packing", None))
        check_feature_names(names, getattr(self.adapter, "feature_names", None))
        self._feature_names = names
        if coder is not None:
            self._code_options(coder)
        check_option_columns(getattr(self, "_option_columns", {}), names)  # a pandas fill read by position
        coded = list(coder.categories) if coder is not None else None  # text columns, coded here or before
        fill = getattr(self, "fill", None)
        if coded and one_value_per_column(fill) and getattr(self, "background", None) is None:
            raise InvalidParameterError(
                f"inputs have text or categorical columns ({', '.join(map(repr, coded[:5]))}), which a fill of "
                f"{fill!r} would set to an arbitrary value; pass a reference row as fill= (a Series "
                "with every column, e.g. X_train.mode().iloc[0], or a list of its values in the model's column "
                "order: --option 'fill=[...]' on the command line, --option 'METHOD.fill=[...]' in compare), or "
                "for the Shapley methods background= rows (e.g. X_train[:50])."
            )
        if x.ndim < 2:
            raise InvalidInputError(
                f"inputs must have a leading batch dimension (B, ...); got shape {tuple(x.shape)}. "
                "Add one with inputs[None] (a tensor or an array; inputs.unsqueeze(0) for a tensor)."
            )
        packed_image = (
            self.takes_packed_images
            and getattr(self.adapter, "packing", None) is not None
            and self.adapter.packing.has_image
        )
        if (
            self.image_only
            and x.ndim != 4
            and not (self.takes_signals and is_signal(self.adapter, x))
            and not packed_image
        ):
            if hasattr(self.adapter, "tokenizer"):
                fix = " These are a text model's token embeddings: use a method of whybox.methods('text')."
            elif getattr(self.adapter, "packing", None) is not None:
                fix = (
                    " A model of several inputs (adapt(input_shapes=...)) is explained on its packed rows (B, F): use "
                    "a method of whybox.methods('tabular')"
                    + (" (the gradient CAMs map an image input)." if self.takes_packed_images else ".")
                )
            elif x.ndim == 3 and self.takes_signals and isinstance(getattr(self.adapter, "model", None), FunctionModel):
                fix = (
                    " If these are 1-D signals (B, C, L): a function reads them when it says so, "
                    f"fn.signal_channels = {x.shape[1]} (then adapt(fn) again); if one (C, H, W) image, add the batch "
                    "dimension with inputs.unsqueeze(0)."
                )
            elif x.ndim == 3:
                fix = " If this is one (C, H, W) image, add the batch dimension with inputs.unsqueeze(0)." + (
                    " 1-D signals (B, C, L) need a model whose first nn.Conv1d reads their C channels "
                    f"(this one reads {_conv1d_channels(self.adapter)})."
                    if self.takes_signals and _conv1d_channels(self.adapter) is not None
                    else (
                        " It also takes 1-D signals (B, C, L) for a model with an nn.Conv1d."
                        if self.takes_signals
                        else ""
                    )
                )
            else:
                fix = " For rows of features use a method of whybox.methods('tabular')." if x.ndim == 2 else ""
            text = hasattr(self.adapter, "tokenizer")
            shapes = "images of shape (B, C, H, W)" + (
                " or signals (B, C, L)" if self.takes_signals and not text else ""
            )
            raise InvalidInputError(f"inputs for {self.name!r} must be {shapes}; got shape {tuple(x.shape)}.{fix}")
        if x.shape[0] == 0:
            raise InvalidInputError("inputs hold no rows (batch size 0); pass at least one row.")
        if not x.is_floating_point():
            if self.needs_grad:
                raise InvalidInputError(
                    f"inputs have integer dtype {x.dtype}, which has no gradient; {self.name!r} needs float "
                    "inputs. For token ids, attribute at the embedding layer (pass the embeddings as inputs)."
                )
            if isinstance(self.adapter, TorchAdapter) and any(
                isinstance(m, nn.Embedding) for m in self.adapter.model.modules()
            ):
                raise InvalidInputError(
                    f"inputs have integer dtype {x.dtype} and the model embeds them (an nn.Embedding): token ids, "
                    f"which {self.name!r} would perturb as numbers. Explain a Hugging Face text model over words "
                    "with whybox.explain_text(whybox.adapt_text(model, tokenizer), texts, method), or pass the "
                    "embeddings as inputs (a model that takes inputs_embeds)."
                )
            x = x.to(self.adapter.dtype)  # float64 for an estimator: int64 ids and timestamps stay exact
        if not bool(rows_finite(x.reshape(x.shape[0], -1)).all()):
            bad = ~torch.isfinite(x)
            rows = bad.reshape(x.shape[0], -1).any(1).nonzero().flatten().tolist()
            raise InvalidInputError(
                f"inputs contain {int(bad.sum())} non-finite values (NaN or inf) in rows {rows[:10]}; "
                "clean or impute them before explaining."
            )
        dtype = x.dtype  # a model without floating weights (a pure function) runs in the input's dtype
        if isinstance(self.adapter, TorchAdapter):
            dtype = self.adapter.weights_dtype or dtype  # one walk over the weights: it runs on every call
        x = x.detach().to(device=self.adapter.device, dtype=dtype)
        return x.clone() if x.is_inference() else x  # made under torch.inference_mode: a copy can take gradients


class GradientExplainer(Explainer):
    """Shared machinery for methods built on ``d score / d input``."""

    needs_grad = True

    def _grads(
        self,
        xs: torch.Tensor,
        rows: torch.Tensor,
        target: Target | TargetLike,
        engine: MaskingEngine,
        n_backward: list[int],
    ) -> tuple[torch.Tensor, torch.Tensor, Target]:
        """Gradients of each row's target score w.r.t. ``xs`` ``(n, *S)``: one forward and one backward
        per ``batch_size`` rows.

        ``target`` is a resolved :class:`Target` indexed by ``rows``, or, when ``xs`` are the clean
        inputs themselves (``rows == arange(n)``), an unresolved target that is resolved chunk by chunk
        from the same forward (no extra pass). Returns ``(grads, target scores (n,), target)``.
        """
        if not isinstance(target, Target):
            target = per_row(target, xs.shape[0])  # a sequence of the wrong length fails here, not chunk by chunk
        one = xs.shape[0] <= self.batch_size  # one chunk: its gradient is the result (no copy into a buffer)
        grads = xs if one else torch.empty_like(xs)
        scores = torch.empty(xs.shape[0], dtype=torch.float64, device=xs.device)
        resolved: list[Target] = []
        for s in range(0, xs.shape[0], self.batch_size):
            xi = xs[s : s + self.batch_size].detach().requires_grad_(True)
            r = rows[s : s + xi.shape[0]]
            with torch.enable_grad():
                try:
                    raw = engine.call(self.adapter.scores, xi)  # CPU images: channels-last, the gradient comes back
                except RuntimeError as err:
                    if "numpy()" not in str(err) or not hasattr(self.adapter.model, "returns_numpy"):
                        raise
                    raise NotDifferentiableError(  # a function of NumPy arrays: np.asarray(x) on a graph tensor
                        f"{type(self.adapter.model).__name__} turns its inputs into NumPy arrays, so no gradient "
                        f"reaches them and {self.name!r} cannot run; use 'rise', 'lima' or a perturbation method "
                        "(they need only the outputs)."
                    ) from None
                engine.n_forward += xi.shape[0]
                engine.n_batches += 1
                if not raw.requires_grad:
                    numpy = getattr(self.adapter.model, "returns_numpy", False)  # a FunctionModel's NumPy scores
                    raise NotDifferentiableError(
                        f"the scores of {type(self.adapter.model).__name__} carry no gradient ("
                        + (
                            "the function returns NumPy values, not torch tensors"
                            if numpy
                            else "an argmax, a detach or torch.no_grad inside the model?"
                        )
                        + f"), so {self.name!r} cannot run; use "
                        + (
                            "'rise', 'lima' or a perturbation method (they need only the outputs)."
                            if numpy
                            else f"{PERTURBATION_HINT}."
                        )
                    )
                space = apply_score_space(raw, self.score)
                if isinstance(target, Target):
                    sel = target.select(space, r)
                else:
                    t = target
                    if isinstance(t, torch.Tensor):
                        t = t[s : s + xi.shape[0]]
                    tc = resolve_target(t, raw.detach())
                    resolved.append(tc)
                    sel = tc.select(space)
                (g,) = torch.autograd.grad(sel.sum(), xi)
            n_backward[0] += xi.shape[0]
            if one:
                grads = g if g.is_contiguous() else g.contiguous()  # (a channels-last gradient: standard layout)
            else:
                grads[s : s + xi.shape[0]] = g
            scores[s : s + xi.shape[0]] = sel.detach().to(torch.float64)
        if not isinstance(target, Target):
            target = Target(torch.cat([t.index for t in resolved]), resolved[0].fn)
        return grads, scores, target

    def _resolve(self, target: TargetLike, x: torch.Tensor, engine: MaskingEngine) -> Target:
        """Resolve ``target``; only ``None`` costs a clean forward (an explicit class index is range-checked
        against the model's outputs on the first scored chunk, see :meth:`Target.select`)."""
        if target is None:
            return resolve_target(None, engine.forward(x))
        return resolve_target(target, None, batch=x.shape[0])


def _controls_zeroed(attr: torch.Tensor, x: torch.Tensor, n_control: Any) -> torch.Tensor:
    """``attr`` with 0 in the last ``n_control`` channels of per-element attributions (``attr`` shaped as the inputs
    ``x``), which an adapter declares as control channels rather than features (a :class:`~whybox.explainers.llm.
    generation.CausalLMAdapter`'s attention mask and read position, a text adapter's attention mask, a black-box text
    adapter's text index): a method that copies one value onto every element of its window or feature (occlusion,
    feature ablation) would put the token's value there, and a metric ranking elements would read them as features.
    Attributions of another shape (one value per feature) as they are."""
    if not isinstance(n_control, int) or isinstance(n_control, bool) or n_control <= 0:
        return attr
    if attr.shape != x.shape or attr.ndim < 2 or attr.shape[-1] <= n_control:
        return attr
    out = attr.clone()
    out[..., -n_control:] = 0
    return out
