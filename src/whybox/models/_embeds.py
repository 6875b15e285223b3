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
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from whybox.errors import NotDifferentiableError

__all__ = ["embedding_module", "embedding_output", "stand_in_ids", "takes_inputs_embeds"]


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
    """``(B, T)`` ids for a model given its word vectors through :func:`embedding_output`: the end-of-text id
    (``config.eos_token_id``) at each row's last attended token, where CLIP pools, and ``0`` elsewhere (``1`` when
    the end-of-text id is 0). So CLIP's pooling (the first end-of-text id; the largest id for ``eos_token_id=2``)
    reads the same position as for the row's own ids. Without an int ``eos_token_id``: zeros."""
    mask = attention_mask > 0.5 if attention_mask.is_floating_point() else attention_mask != 0
    eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    fill = 1 if eos == 0 else 0
    ids = torch.full(mask.shape, fill, dtype=torch.long, device=mask.device)
    if isinstance(eos, int) and not isinstance(eos, bool):
        t = mask.shape[-1]
        positions = torch.arange(t, device=mask.device).expand_as(mask)
        last = torch.where(mask, positions, -1).amax(-1).clamp_min(0)  # a row of no attended token: position 0
        ids.scatter_(-1, last.unsqueeze(-1), eos)
    return ids
