"""Word vectors into a Hugging Face text model whose forward takes no ``inputs_embeds`` (CLIP's text towers).

Most Hugging Face text models take ``inputs_embeds`` in place of ``input_ids``; whybox gives them the word vectors
that way (text adapters, attention methods). ``CLIPTextModel`` and ``CLIPTextModelWithProjection`` take
``input_ids`` only (an ``inputs_embeds=`` keyword vanishes into their ``**kwargs`` and the model raises "You have to
specify input_ids"). Such a model is called with ``input_ids`` and its word-embedding module
(``get_input_embeddings()``) made to return the word vectors by a forward hook, which exists only inside
:func:`embedding_output` (removed on every exit path). What the model reads from the ids themselves is where it pools:
CLIP's sentence embedding is the final state at the first end-of-text token (``config.eos_token_id``; at the largest
id for configs of ``eos_token_id=2``, those written before transformers' PR 24773), the last attended token of a
right-padded row. :func:`stand_in_ids` gives ids that mark it there, so word vectors without their ids run through
the model exactly as the ids they came from.

That holds only for a model that pools there. Which ones do is read from transformers' own source, class by class
(:data:`END_OF_TEXT_POOLED`), not guessed from the signature: other models whose forward takes no ``inputs_embeds``
(SigLIP's text towers read the last position, ``[:, -1]``, a pad once a shorter text shares the batch with a longer
one) are refused by :func:`check_word_vectors`, as their sentence embedding would change with the other texts of the
batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from whybox.errors import InvalidParameterError, NotDifferentiableError

__all__ = [
    "END_OF_TEXT_POOLED",
    "check_word_vectors",
    "embedding_module",
    "embedding_output",
    "end_of_text_pooling",
    "stand_in_ids",
    "takes_inputs_embeds",
]

#: transformers' text models whose forward takes ``input_ids`` and no ``inputs_embeds`` and whose sentence embedding
#: (``pooler_output``, and ``text_embeds`` projected from it) is the final state at the end-of-text token, each read
#: in transformers' source (4.40 to 5.x), with how the token is found: ``"eos"``, the first position of
#: ``config.eos_token_id`` (the largest id where that is 2, CLIP's configs from before transformers' PR 24773);
#: ``"argmax"``, the position of the largest id (OwlViT's and X-CLIP's text towers, whatever the config says). Each
#: runs its text under a causal mask built from ``attention_mask``, so that state does not read the pads after the
#: text. Left out on purpose: SigLIP and SigLIP 2 (they pool the last position, ``[:, -1]``) and Sam3LiteText (the
#: largest id, but after depthwise convolutions along the sequence that mix pads into the text); any other model
#: without ``inputs_embeds`` is left out until its pooling is read.
END_OF_TEXT_POOLED: dict[str, str] = {
    "CLIPTextModel": "eos",
    "CLIPTextModelWithProjection": "eos",
    "CLIPSegTextModel": "eos",
    "GroupViTTextModel": "eos",
    "GroupViTTextTransformer": "eos",
    "MetaClip2TextModel": "eos",
    "MetaClip2TextModelWithProjection": "eos",
    "Aimv2TextModel": "eos",
    "OwlViTTextModel": "argmax",
    "OwlViTTextTransformer": "argmax",
    "Owlv2TextModel": "argmax",
    "Owlv2TextTransformer": "argmax",
    "XCLIPTextModel": "argmax",
}

#: where models whybox refuses pool instead, for their message
_POOLS_ELSEWHERE = {
    "SiglipTextModel": "the last position ([:, -1]), a pad once a text shares its batch with a longer one",
    "Siglip2TextModel": "the last position ([:, -1]), a pad once a text shares its batch with a longer one",
}


def takes_inputs_embeds(model: nn.Module) -> bool:
    """Whether ``model`` is given word vectors as ``inputs_embeds=``: ``False`` only when its forward names
    ``input_ids`` and no ``inputs_embeds`` parameter (``**kwargs`` does not count: CLIP's text towers take
    ``**kwargs`` and drop it there) and it has a word-embedding module to hook; ``True`` for a forward of other names
    (a wrapper passing ``**kwargs`` on), a model without ``get_input_embeddings()`` (as before: the call tells) or a
    signature that cannot be read."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return True
    return "inputs_embeds" in params or "input_ids" not in params or embedding_module(model) is None


def end_of_text_pooling(model: nn.Module) -> str | None:
    """How ``model`` finds the end-of-text token it pools (``"eos"`` or ``"argmax"``, :data:`END_OF_TEXT_POOLED`), for
    a transformers class of that list or a subclass of one; ``None`` for any other model."""
    for cls in type(model).__mro__:
        if cls.__module__.startswith("transformers.") and cls.__name__ in END_OF_TEXT_POOLED:
            return END_OF_TEXT_POOLED[cls.__name__]
    return None


def _eos_id(model: nn.Module) -> object:
    eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return eos


def check_word_vectors(model: nn.Module) -> None:
    """Refuse to give word vectors to a model whose forward takes no ``inputs_embeds`` unless it pools the
    end-of-text token as CLIP does (:data:`END_OF_TEXT_POOLED`), the one place :func:`stand_in_ids` can mark; a model
    that takes ``inputs_embeds`` passes.

    Raises
    ------
    InvalidParameterError
        ``model`` takes no ``inputs_embeds`` and is not on that list, or is on it as one pooling at
        ``config.eos_token_id`` but has no int there.
    """
    if takes_inputs_embeds(model):
        return
    name = type(model).__name__
    rule = end_of_text_pooling(model)
    if rule is None:
        where = _POOLS_ELSEWHERE.get(name, "in a way whybox has not checked")
        known = ", ".join(sorted(END_OF_TEXT_POOLED))
        raise InvalidParameterError(
            f"model: {name}.forward takes input_ids and no inputs_embeds, so whybox can give it word vectors only "
            "through its embedding module with stand-in ids, which mark the end-of-text token of each text; that is "
            f"exact only for a model that pools there, as CLIP's text towers do ({known}). {name} pools {where}, so "
            "its sentence embeddings, scores and explanations would depend on which other texts share the batch. "
            f"Explaining {name} is not supported yet; use a model whose forward takes inputs_embeds, or one of those "
            "text towers."
        )
    eos = _eos_id(model)
    if rule == "eos" and (isinstance(eos, bool) or not isinstance(eos, int)):
        raise InvalidParameterError(
            f"model: {name} pools the final state at its end-of-text token, config.eos_token_id, which is {eos!r}; "
            "set model.config.eos_token_id (and the model's eos_token_id) to the tokenizer's end-of-text id."
        )


def embedding_module(model: nn.Module) -> nn.Module | None:
    """``model.get_input_embeddings()`` when it is a module, else ``None`` (also for transformers' two-tower models,
    whose ``get_input_embeddings`` raises ``NotImplementedError``)."""
    get = getattr(model, "get_input_embeddings", None)
    try:
        emb = get() if callable(get) else None
    except NotImplementedError:
        return None
    return emb if isinstance(emb, nn.Module) else None


@contextmanager
def embedding_output(model: nn.Module, replace: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the block, ``model``'s word-embedding module returns ``replace(its output)``; the hook is removed on
    every exit path.

    Raises
    ------
    NotDifferentiableError
        ``model`` has no ``get_input_embeddings()`` module.
    """
    emb = embedding_module(model)
    if emb is None:
        raise NotDifferentiableError(
            f"{type(model).__name__} takes no inputs_embeds and has no get_input_embeddings() module, so whybox "
            "cannot give it word vectors or take gradients at them; pass a model whose forward takes inputs_embeds."
        )
    handle = emb.register_forward_hook(lambda _m, _i, out: replace(out))
    try:
        yield
    finally:
        handle.remove()


def stand_in_ids(model: nn.Module, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` ids for a model given its word vectors through :func:`embedding_output`: an end-of-text mark at each
    row's last attended token, where the models of :data:`END_OF_TEXT_POOLED` pool, and ``0`` elsewhere. The mark is
    ``config.eos_token_id`` (the fill is ``1`` when that is 0), so CLIP's pooling (the first end-of-text id; the
    largest id for ``eos_token_id=2``) reads the same position as for the row's own ids; for a model that pools the
    largest id (``"argmax"``) it is that id where it is positive, else ``1``. Without an int ``eos_token_id``
    (refused by :func:`check_word_vectors` where the model reads it): zeros, or the mark ``1`` for ``"argmax"``."""
    mask = attention_mask > 0.5 if attention_mask.is_floating_point() else attention_mask != 0
    eos = _eos_id(model)
    if isinstance(eos, bool) or not isinstance(eos, int):
        eos = None
    if end_of_text_pooling(model) == "argmax" and (eos is None or eos <= 0):
        eos = 1  # the largest id of the row: any positive id above the fill 0
    fill = 1 if eos == 0 else 0
    ids = torch.full(mask.shape, fill, dtype=torch.long, device=mask.device)
    if eos is not None:
        t = mask.shape[-1]
        positions = torch.arange(t, device=mask.device).expand_as(mask)
        last = torch.where(mask, positions, -1).amax(-1).clamp_min(0)  # a row of no attended token: position 0
        ids.scatter_(-1, last.unsqueeze(-1), eos)
    return ids
