"""Collect post-softmax attentions and their gradients from a Hugging Face model, leaving the model as it came.

Hugging Face returns attention probabilities only under the eager attention implementation (SDPA and flash
log a warning and return none). :func:`collect_attentions` switches every config of the model to
``"eager"`` for the call, runs it in eval mode with ``output_attentions=True`` and restores everything
afterwards, errors included. A model that chose its attention modules when it was built (Data2VecVision)
returns ``None`` attentions all the same: it is refused, naming ``attn_implementation="eager"`` at build time. ``transformers`` is never imported here: the model is duck-typed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from whybox.errors import InvalidInputError, ModelOutputError, NotDifferentiableError
from whybox.models._embeds import (
    check_word_vectors,
    embedding_module,
    embedding_output,
    stand_in_ids,
    takes_inputs_embeds,
)
from whybox.models._guard import preserved
from whybox.models.targets import TargetLike, apply_score_space, resolve_target

__all__ = ["DIFFERENTIABLE_INPUTS", "collect_attentions", "eager_attention"]

#: floating-point model inputs made to require grad (after ``input_ids`` became ``inputs_embeds``)
DIFFERENTIABLE_INPUTS = ("inputs_embeds", "pixel_values", "input_values", "input_features")
_HOOKS_FLAG = "_output_capturing_hooks_installed"  # transformers >= 5: set once its capture hooks are installed
_MISSING = object()


def _configs(model: nn.Module) -> list[Any]:
    """Every HF config reachable from the model: each submodule's ``config`` and their ``sub_configs``."""
    seen: dict[int, Any] = {}
    stack = [m.__dict__.get("config") for m in model.modules()]
    while stack:
        cfg = stack.pop()
        if cfg is None or id(cfg) in seen or not hasattr(cfg, "_attn_implementation_internal"):
            continue
        seen[id(cfg)] = cfg
        stack.extend(getattr(cfg, key, None) for key in getattr(cfg, "sub_configs", None) or {})
    return list(seen.values())


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run a block with every config of ``model`` on ``attn_implementation="eager"``, then restore it.

    Restored on every exit path: each config's attention implementation, and transformers' per-model
    "capture hooks installed" flag (transformers 5 installs its output-capturing forward hooks lazily on the
    first ``output_attentions=True`` call and marks the model; :func:`whybox.models._guard.preserved` removes
    hooks added inside a block, so the mark must go with them or later calls would capture nothing).

    The implementation is set on the configs' ``_attn_implementation_internal`` directly rather than through
    ``model.set_attn_implementation``, which validates, may warn, and cannot be undone exactly.
    """
    configs = _configs(model)
    saved = [(cfg, cfg.__dict__.get("_attn_implementation_internal", _MISSING)) for cfg in configs]
    flags = [(m, m.__dict__.get(_HOOKS_FLAG, _MISSING)) for m in model.modules()]
    try:
        for cfg in configs:
            cfg._attn_implementation_internal = "eager"
        yield
    finally:
        for cfg, value in saved:
            if value is _MISSING:
                cfg.__dict__.pop("_attn_implementation_internal", None)
            else:
                cfg._attn_implementation_internal = value
        for m, flag in flags:
            if flag is _MISSING:
                m.__dict__.pop(_HOOKS_FLAG, None)
            else:
                setattr(m, _HOOKS_FLAG, flag)


def _differentiable_inputs(model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
    """Inputs from which the attentions get a graph even when every parameter is frozen.

    ``input_ids`` become ``inputs_embeds = model.get_input_embeddings()(input_ids)``; ``inputs_embeds`` and
    the other float inputs of :data:`DIFFERENTIABLE_INPUTS` become detached leaves that require grad.
    Parameters are never touched. (A model that takes no ``inputs_embeds`` keeps its ``input_ids``: :func:`_by_ids`.)
    """
    out = dict(inputs)
    if out.get("input_ids") is not None and out.get("inputs_embeds") is None:
        embeddings = embedding_module(model)
        if embeddings is None:  # transformers' get_input_embeddings of models of two towers (CLIPModel) raises
            raise NotDifferentiableError(
                f"{type(model).__name__} has no get_input_embeddings() module, so input_ids cannot become a "
                "grad-requiring inputs_embeds; pass inputs_embeds yourself or use with_grads=False."
            )
        out["inputs_embeds"] = embeddings(out.pop("input_ids"))
    for key in DIFFERENTIABLE_INPUTS:
        value = out.get(key)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            out[key] = value.detach().requires_grad_(True)
    return out


def _by_ids(model: nn.Module, inputs: dict[str, Any], with_grads: bool, stack: ExitStack) -> dict[str, Any]:
    """The inputs of a model whose forward takes ``input_ids`` and no ``inputs_embeds`` (CLIP's text towers, whose
    ``**kwargs`` would swallow ``inputs_embeds``): ``input_ids`` are kept, and with ``with_grads`` its word-embedding
    module's output becomes a detached leaf that requires grad (a forward hook inside ``stack``); ``inputs_embeds``
    become that output, with :func:`~whybox.models._embeds.stand_in_ids` from ``attention_mask`` (all attended when
    absent) marking each row's end-of-text token where the model pools: for a model of
    :data:`~whybox.models._embeds.END_OF_TEXT_POOLED` only, others are refused (their own ids are read as given)."""
    out = dict(inputs)
    given = out.pop("inputs_embeds", None)
    if given is None:
        if with_grads and out.get("input_ids") is not None:
            stack.enter_context(embedding_output(model, lambda e: e.detach().requires_grad_(True)))
        return out
    if out.get("input_ids") is not None:
        raise InvalidInputError("pass input_ids or inputs_embeds, not both.")
    check_word_vectors(model)  # stand-in ids are read right only by a model that pools its end-of-text token
    if not isinstance(given, torch.Tensor) or given.ndim != 3:
        got = tuple(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__
        raise InvalidInputError(f"inputs_embeds must be a (B, T, D) tensor; got {got}.")
    vectors = given.detach().requires_grad_(True) if with_grads else given
    mask = out.get("attention_mask")
    if mask is None:
        mask = torch.ones(given.shape[:2], dtype=torch.long, device=given.device)
    out["input_ids"] = stand_in_ids(model, mask)
    stack.enter_context(embedding_output(model, lambda e: vectors.to(e.dtype)))
    return out


def _logits(output: Any) -> torch.Tensor:
    logits = output if isinstance(output, torch.Tensor) else getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(output).__name__
        raise ModelOutputError(
            f"collect_attentions needs (B, K) logits (the output's .logits); got {got}. Sequence-level heads "
            "(e.g. *ForSequenceClassification, *ForImageClassification) give them."
        )
    return logits


def _attentions(output: Any, model: nn.Module) -> list[torch.Tensor]:
    attentions = getattr(output, "attentions", None)
    if isinstance(attentions, (tuple, list)) and attentions and any(a is None for a in attentions):
        # a model that picked its attention modules when it was built (Data2VecVision: SDPA by default) runs
        # them whatever its config says at call time, and they return no probabilities
        shown = "(" + ", ".join("None" if a is None else "tensor" for a in attentions[:4])
        shown += ", ...)" if len(attentions) > 4 else ")"
        raise ModelOutputError(
            f"{type(model).__name__} returned attentions {shown} with output_attentions=True although its config "
            "was set to eager attention for the call: it chose its attention modules when it was built (SDPA or "
            'flash attention return no probabilities). Build or load it with attn_implementation="eager" '
            '(Config(..., attn_implementation="eager") or from_pretrained(..., attn_implementation="eager")).'
        )
    if not attentions or any(not isinstance(a, torch.Tensor) for a in attentions):
        raise ModelOutputError(
            f"{type(model).__name__} returned no attention tensors with output_attentions=True under eager "
            f"attention (got {type(attentions).__name__}); it must be a transformers model whose output has "
            ".attentions."
        )
    return list(attentions)


def collect_attentions(
    model: nn.Module,
    *,
    target: TargetLike = None,
    with_grads: bool = True,
    scores: Callable[[Any], torch.Tensor] | None = None,
    space: str | None = "logit",
    **model_inputs: Any,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor] | None]:
    """One forward pass (and one backward) of a Hugging Face model: logits, attentions and ``∇A``.

    The call runs in eval mode with ``output_attentions=True`` on eager attention (and ``use_cache=False``
    where the forward takes it). With ``with_grads``, ``input_ids`` are replaced by
    ``inputs_embeds = model.get_input_embeddings()(input_ids)`` made to require grad (float inputs such as
    ``pixel_values`` are made to require grad directly), so frozen models build a graph too. A model whose forward
    takes ``input_ids`` and no ``inputs_embeds`` (CLIP's text towers) keeps its ``input_ids``, and its
    word-embedding module's output is made to require grad instead by a forward hook that lives for the call;
    ``inputs_embeds`` given to such a model reach it as that module's output, with stand-in ``input_ids`` that mark
    each row's last attended token (``attention_mask``) as its end-of-text token, where CLIP pools (a model that
    pools elsewhere, SigLIP's text tower, is refused ``inputs_embeds``: the stand-in ids would not say where). Then
    ``∇A^(l) = autograd.grad(logits[b, target_b].sum(), A^(l))``. Rows are independent (eval mode, no
    cross-row logits), so the summed score gives per-row gradients. The model leaves exactly as it came:
    train/eval flags, ``requires_grad`` and ``.grad`` of every parameter, hooks, global RNG and the
    attention implementation of every config, on every exit path.

    Parameters
    ----------
    model
        A transformers model with a sequence-level head whose output has ``.logits (B, K)`` and
        ``.attentions``.
    target
        Class to explain: an int, one int per row, a callable ``logits (B, K) -> (B,)``, or ``None`` for the
        predicted class of each row (the argmax of this very forward pass).
    with_grads
        Whether to compute ``∇A`` (one backward pass); without it, no graph is built.
    scores
        How to read the ``(B, K)`` scores from the model's output, for a model without a sequence-level head
        (a sentence encoder: pooled embeddings' similarity to references). Default: the output's ``.logits``.
    space
        The score space the gradients are taken in (``"logit"``, the default: the scores as they are; ``"prob"``,
        ``"log_prob"``, ``"sigmoid"``, ...; ``None`` as the explainers read it, :func:`~whybox.models.targets.
        apply_score_space`).
    **model_inputs
        Passed to ``model(...)``: ``input_ids``/``inputs_embeds``, ``attention_mask``, ``token_type_ids``,
        ``pixel_values``, ...

    Returns
    -------
    logits
        ``(B, K)``, detached.
    attentions
        ``L × (B, H, T, T)`` post-softmax attention probabilities, detached, in forward order.
    grads
        ``L × (B, H, T, T)`` gradients of the target logits with respect to them, or ``None`` without
        ``with_grads``.

    Raises
    ------
    InvalidTargetError
        ``target`` is out of range or of the wrong kind (raised after the forward pass; the model is restored).
    ModelOutputError
        The output has no ``(B, K)`` logits or no attentions.
    NotDifferentiableError
        No input could be made to require grad, so the attentions carry no graph.
    InvalidParameterError
        ``inputs_embeds`` for a model whose forward takes none and that does not pool its end-of-text token as CLIP
        does (SigLIP's text towers): :func:`~whybox.models._embeds.check_word_vectors`.

    Shapes
    ------
    ``input_ids (B, T)`` or ``pixel_values (B, C, H, W)`` -> ``(B, K)``, ``L × (B, H, T, T)``, ``L × (B, H, T, T)``
    """
    if "output_attentions" in model_inputs:
        raise InvalidInputError("collect_attentions sets output_attentions itself; do not pass it.")
    missing = [name for name in ("output_attentions", "return_dict") if not _takes(model, name)]
    if missing:
        name = type(model).__name__
        raise ModelOutputError(
            f"{name}.forward takes no {' and no '.join(missing)}: the attention methods call the model with "
            "output_attentions=True, return_dict=True and read the output's .attentions (one (B, H, T, T) tensor "
            f"per layer). Give {name}.forward output_attentions=False and return_dict=None parameters, pass them "
            "to the Hugging Face model inside and return its .attentions with the logits (e.g. "
            "SequenceClassifierOutput(logits=..., attentions=out.attentions)), or explain the Hugging Face model "
            "itself."
        )
    inputs = dict(model_inputs)
    if _accepts(model, "use_cache"):
        inputs.setdefault("use_cache", False)
    with ExitStack() as stack:
        stack.enter_context(preserved(model, "eval"))
        stack.enter_context(eager_attention(model))
        stack.enter_context(torch.enable_grad() if with_grads else torch.no_grad())
        if not takes_inputs_embeds(model):  # CLIP's text towers: input_ids, word vectors through a hook
            inputs = _by_ids(model, inputs, with_grads, stack)
        elif with_grads:
            inputs = _differentiable_inputs(model, inputs)
        output = model(**inputs, output_attentions=True, return_dict=True)
        logits = _logits(output if scores is None else scores(output))
        attentions = _attentions(output, model)
        resolved = resolve_target(target, logits.detach())
        if not with_grads:
            return logits.detach(), [a.detach() for a in attentions], None
        score = resolved.select(apply_score_space(logits, space))  # the explained score (logit, prob, ...)
        if not all(a.requires_grad for a in attentions) or not score.requires_grad:
            raise NotDifferentiableError(
                f"the attentions of {type(model).__name__} carry no gradient: pass input_ids, inputs_embeds or "
                f"a float input among {DIFFERENTIABLE_INPUTS} so that one can be made to require grad."
            )
        grads = torch.autograd.grad(score.sum(), attentions, allow_unused=True, materialize_grads=True)
        return logits.detach(), [a.detach() for a in attentions], [g.detach() for g in grads]


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _takes(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` can be given ``name``: a parameter of that name or ``**kwargs`` (True where the
    signature cannot be read: the call then tells)."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
