"""Bi-modal and encoder-decoder forms of the generic gradient-weighted relevance (Chefer, Gur & Wolf, ICCV 2021).

Every modality pair ``(s, q)`` carries a relevance matrix: ``R^{ss} = I`` and ``R^{sq} = 0`` to start. With
``Ā = E_h[(∇A ⊙ A)^+]`` (:func:`~whybox.explainers.attention.relevance.gradient_weighted_attention`):

- self-attention over ``s`` (:func:`self_attention_update`): ``R^{ss} += Ā·R^{ss}``; ``R^{sq} += Ā·R^{sq}``;
- co-attention, queries from ``s`` and keys from ``q`` (:func:`co_attention_update`):
  ``R^{sq} += (R̄^{ss})ᵀ·Ā·R̄^{qq}``; ``R^{ss} += Ā·R^{qs}``, with ``R̄`` the residual normalisation
  (:func:`~whybox.explainers.attention.relevance.normalize_residual`).

:func:`bimodal_relevance` applies them in LXMERT's order, :func:`encoder_decoder_relevance` in the order of an
encoder-decoder (DETR, BART, T5). Both are batched (``transpose(-1, -2)`` where the reference code, which runs
one sample at a time, uses ``.t()``). :func:`collect_encoder_decoder_attentions` feeds the latter from a
Hugging Face encoder-decoder, leaving the model as it came.

Inputs are ``(attention, grad)`` pairs: ``attention`` the post-softmax probabilities ``A (B, H, n_s, n_q)`` of
one layer (rows = queries), ``grad`` the gradient ``∇A`` of the explained score (same shape).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, TypeGuard

import torch
from torch import nn

from whybox.errors import (
    InvalidInputError,
    InvalidParameterError,
    InvalidTargetError,
    ModelOutputError,
    NotDifferentiableError,
)
from whybox.explainers.attention.collect import DIFFERENTIABLE_INPUTS, eager_attention
from whybox.explainers.attention.relevance import gradient_weighted_attention, normalize_residual
from whybox.models._guard import preserved

__all__ = [
    "AttentionAndGrad",
    "BimodalRelevance",
    "CrossModalLayer",
    "EncoderDecoderAttentions",
    "EncoderDecoderRelevance",
    "bimodal_readout",
    "bimodal_relevance",
    "check_self_relevance",
    "co_attention_update",
    "collect_encoder_decoder_attentions",
    "encoder_decoder_readout",
    "encoder_decoder_relevance",
    "self_attention_update",
]

#: one layer's ``(A, ∇A)``: post-softmax attention probabilities ``(B, H, n_queries, n_keys)`` and their gradient
AttentionAndGrad = tuple[torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------------------------------------- update rules


def check_self_relevance(relevance: torch.Tensor, name: str = "relevance") -> None:
    """The reference code's invariant for a self-relevance matrix: ``diag(R - I) >= 0``.

    It holds whenever every ``Ā`` was non-negative (``R`` starts at ``I`` and only non-negative terms are
    added), so a violation means NaN or negative values reached ``R``: a NaN gradient, or an ``R`` that was
    not built by these rules.

    Parameters
    ----------
    relevance
        A self-relevance matrix ``R^{ss}``.
    name
        The name the error message gives ``relevance``.

    Raises
    ------
    InvalidInputError
        ``relevance`` is not ``(B, T, T)``, or some ``R[b, i, i] - 1`` is negative or NaN.

    Shapes
    ------
    ``(B, T, T)``
    """
    _check_matrix(relevance, name, (None, None, None), "(B, T, T)")
    if relevance.shape[1] != relevance.shape[2]:
        raise InvalidInputError(f"{name} must be a square (B, T, T) tensor; got {tuple(relevance.shape)}.")
    diagonal = relevance.diagonal(dim1=-2, dim2=-1) - 1
    if not bool((diagonal >= 0).all()):
        bad = diagonal[~(diagonal >= 0)]
        raise InvalidInputError(
            f"{name} must satisfy diag({name} - I) >= 0, which holds when every Ā = E_h[(∇A ⊙ A)^+] is "
            f"non-negative; got {bad.numel()} entries such as {float(bad[0])!r}. Check the attentions and "
            "gradients for NaN."
        )


def self_attention_update(
    r_ss: torch.Tensor, r_sq: torch.Tensor, a_bar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention over ``s`` (ICCV 2021 eqs. 6-7): ``R^{ss} += Ā·R^{ss}``; ``R^{sq} += Ā·R^{sq}``.

    Parameters
    ----------
    r_ss
        ``R^{ss}``, the relevance of ``s`` tokens for ``s`` tokens.
    r_sq
        ``R^{sq}``, the relevance of ``q`` tokens for ``s`` tokens.
    a_bar
        ``Ā`` of one self-attention layer over ``s``.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        The updated ``(R^{ss}, R^{sq})``; the inputs are not modified.

    Raises
    ------
    InvalidInputError
        A shape does not match.

    Shapes
    ------
    ``r_ss (B, n_s, n_s)``, ``r_sq (B, n_s, n_q)``, ``a_bar (B, n_s, n_s)`` -> ``(B, n_s, n_s)``, ``(B, n_s, n_q)``
    """
    _check_matrix(r_sq, "r_sq", (None, None, None), "(B, n_s, n_q)")
    b, n_s, _ = r_sq.shape
    _check_matrix(r_ss, "r_ss", (b, n_s, n_s), "(B, n_s, n_s)")
    _check_matrix(a_bar, "a_bar", (b, n_s, n_s), "(B, n_s, n_s)")
    return r_ss + a_bar @ r_ss, r_sq + a_bar @ r_sq


def co_attention_update(
    r_ss: torch.Tensor,
    r_sq: torch.Tensor,
    r_qq: torch.Tensor,
    r_qs: torch.Tensor,
    a_bar: torch.Tensor,
    *,
    check: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Co-attention, queries from ``s`` and keys from ``q`` (ICCV 2021 eqs. 10-11).

    ``R^{sq} += (R̄^{ss})ᵀ·Ā·R̄^{qq}`` and ``R^{ss} += Ā·R^{qs}``, both from the state passed in, with
    ``R̄ = normalize_residual(R)``. To apply two co-attentions of one layer "from the same pre-layer state"
    (LXMERT), pass the same old matrices to both calls.

    Parameters
    ----------
    r_ss, r_sq, r_qq, r_qs
        The relevance matrices ``R^{ss}``, ``R^{sq}``, ``R^{qq}``, ``R^{qs}`` before this layer.
    a_bar
        ``Ā`` of the co-attention layer (rows = ``s`` queries, columns = ``q`` keys).
    check
        Check :func:`check_self_relevance` on ``r_ss`` and ``r_qq`` first, as the reference code asserts.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        The updated ``(R^{ss}, R^{sq})``; the inputs are not modified.

    Raises
    ------
    InvalidInputError
        A shape does not match, or (with ``check``) ``diag(R - I) >= 0`` fails for ``r_ss`` or ``r_qq``.

    Shapes
    ------
    ``r_ss (B, n_s, n_s)``, ``r_sq (B, n_s, n_q)``, ``r_qq (B, n_q, n_q)``, ``r_qs (B, n_q, n_s)``,
    ``a_bar (B, n_s, n_q)`` -> ``(B, n_s, n_s)``, ``(B, n_s, n_q)``
    """
    _check_matrix(a_bar, "a_bar", (None, None, None), "(B, n_s, n_q)")
    b, n_s, n_q = a_bar.shape
    _check_matrix(r_ss, "r_ss", (b, n_s, n_s), "(B, n_s, n_s)")
    _check_matrix(r_sq, "r_sq", (b, n_s, n_q), "(B, n_s, n_q)")
    _check_matrix(r_qq, "r_qq", (b, n_q, n_q), "(B, n_q, n_q)")
    _check_matrix(r_qs, "r_qs", (b, n_q, n_s), "(B, n_q, n_s)")
    if check:
        check_self_relevance(r_ss, "r_ss")
        check_self_relevance(r_qq, "r_qq")
    r_sq_new = r_sq + normalize_residual(r_ss).transpose(-1, -2) @ a_bar @ normalize_residual(r_qq)
    return r_ss + a_bar @ r_qs, r_sq_new


# ---------------------------------------------------------------------------------------------- bi-modal


@dataclass(frozen=True)
class CrossModalLayer:
    """The attentions of one LXMERT-style cross-modality layer, each an ``(A, ∇A)`` pair.

    A cross layer runs both co-attentions on its input (text queries over image keys, and image queries over
    text keys), then a self-attention per modality. Shapes use ``T_t`` text tokens and ``T_i`` image regions.

    Attributes
    ----------
    text_image
        Co-attention with text queries and image keys, ``(B, H, T_t, T_i)`` (LXMERT's ``visual_attention``
        called on the language stream).
    text_self
        The layer's text self-attention, ``(B, H, T_t, T_t)`` (``lang_self_att``).
    image_text
        Co-attention with image queries and text keys, ``(B, H, T_i, T_t)``. Required in every layer but the
        last, where it is ignored (and may be ``None``): only the text branch reaches a CLS token there.
    image_self
        The layer's image self-attention, ``(B, H, T_i, T_i)`` (``visn_self_att``); required and ignored
        like ``image_text``.
    """

    text_image: AttentionAndGrad
    text_self: AttentionAndGrad
    image_text: AttentionAndGrad | None = None
    image_self: AttentionAndGrad | None = None


@dataclass(frozen=True)
class BimodalRelevance:
    """The four relevance matrices of a text-image model after :func:`bimodal_relevance`.

    ``text_text`` and ``text_image`` include the last cross layer; ``image_image`` and ``image_text`` stop
    before it (the reference code skips the image branch there). The matrices are returned as computed: the
    CLS self entry is zeroed by :func:`bimodal_readout`, not here.

    Attributes
    ----------
    text_text
        ``R^{tt} (B, T_t, T_t)``.
    text_image
        ``R^{ti} (B, T_t, T_i)``: relevance of the image regions for each text token.
    image_image
        ``R^{ii} (B, T_i, T_i)``.
    image_text
        ``R^{it} (B, T_i, T_t)``.
    """

    text_text: torch.Tensor
    text_image: torch.Tensor
    image_image: torch.Tensor
    image_text: torch.Tensor


def bimodal_relevance(
    text_self: Sequence[AttentionAndGrad],
    image_self: Sequence[AttentionAndGrad],
    cross_layers: Sequence[CrossModalLayer],
    *,
    check: bool = True,
) -> BimodalRelevance:
    """Relevance of a two-stream, co-attention model in LXMERT's order (ICCV 2021 §3, the reference's order).

    ``R^{tt} = I``, ``R^{ii} = I``, ``R^{ti} = 0``, ``R^{it} = 0``; then

    1. each text-only layer: self-attention update of ``(R^{tt}, R^{ti})``;
    2. each image-only layer: self-attention update of ``(R^{ii}, R^{it})``;
    3. each cross layer but the last: both co-attention updates computed from the same pre-layer state and
       added, then the text self-attention update, then the image self-attention update;
    4. the last cross layer: the text co-attention update and the text self-attention update only.

    Parameters
    ----------
    text_self
        ``(A, ∇A)`` of each text-only self-attention layer, ``(B, H, T_t, T_t)``, in forward order (may be empty).
    image_self
        ``(A, ∇A)`` of each image-only self-attention layer, ``(B, H, T_i, T_i)`` (may be empty).
    cross_layers
        One :class:`CrossModalLayer` per cross-modality layer, in forward order (at least one).
    check
        Check ``diag(R - I) >= 0`` on the self matrices before each co-attention (:func:`check_self_relevance`).

    Returns
    -------
    BimodalRelevance
        ``R^{tt}``, ``R^{ti}``, ``R^{ii}``, ``R^{it}``; read the maps with :func:`bimodal_readout`.

    Raises
    ------
    InvalidInputError
        A layer is not an ``(A, ∇A)`` pair of equally shaped ``(B, H, n_s, n_q)`` tensors with the sizes above,
        ``cross_layers`` is empty or not made of :class:`CrossModalLayer`, a cross layer but the last lacks its
        image branch, or (with ``check``) the invariant fails.

    Shapes
    ------
    ``L_t × (B, H, T_t, T_t)``, ``L_i × (B, H, T_i, T_i)``, ``L_x`` cross layers -> ``R^{tt} (B, T_t, T_t)``,
    ``R^{ti} (B, T_t, T_i)``, ``R^{ii} (B, T_i, T_i)``, ``R^{it} (B, T_i, T_t)``

    References
    ----------
    Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
    Transformers", ICCV 2021 (eqs. 5-11; hila-chefer/Transformer-MM-Explainability, ``lxmert``).
    """
    if isinstance(cross_layers, CrossModalLayer) or not isinstance(cross_layers, Sequence) or not cross_layers:
        raise InvalidInputError(
            f"cross_layers must be a non-empty sequence of CrossModalLayer, one per cross layer; got {_describe(cross_layers)}."
        )
    for i, layer in enumerate(cross_layers):
        if not isinstance(layer, CrossModalLayer):
            raise InvalidInputError(f"cross_layers[{i}] must be a CrossModalLayer; got {type(layer).__name__}.")
    first = _pair(cross_layers[0].text_image, "cross_layers[0].text_image")
    b, _, n_t, n_i = first[0].shape
    like = first[0]
    texts = _a_bars(text_self, "text_self", b, n_t, n_t)
    images = _a_bars(image_self, "image_self", b, n_i, n_i)
    last = len(cross_layers) - 1
    cross: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []
    for i, layer in enumerate(cross_layers):
        name = f"cross_layers[{i}]"
        text_image = _a_bar(layer.text_image, f"{name}.text_image", b, n_t, n_i)
        text_self_bar = _a_bar(layer.text_self, f"{name}.text_self", b, n_t, n_t)
        if i == last:  # ignored: the image branch of the last cross layer cannot reach the CLS token
            cross.append((text_image, text_self_bar, None, None))
            continue
        for field in ("image_text", "image_self"):
            if getattr(layer, field) is None:
                raise InvalidInputError(f"{name}.{field} is required in every cross layer but the last; got None.")
        image_text = _a_bar(layer.image_text, f"{name}.image_text", b, n_i, n_t)
        image_self_bar = _a_bar(layer.image_self, f"{name}.image_self", b, n_i, n_i)
        cross.append((text_image, text_self_bar, image_text, image_self_bar))

    r_tt, r_ii = _eye(b, n_t, like), _eye(b, n_i, like)
    r_ti, r_it = like.new_zeros(b, n_t, n_i), like.new_zeros(b, n_i, n_t)
    for a in texts:
        r_tt, r_ti = self_attention_update(r_tt, r_ti, a)
    for a in images:
        r_ii, r_it = self_attention_update(r_ii, r_it, a)
    for a_ti, a_tt, a_it, a_ii in cross:
        # both co-attentions from the same pre-layer state (the image one in every cross layer but the last)
        text = co_attention_update(r_tt, r_ti, r_ii, r_it, a_ti, check=check)
        image = None if a_it is None else co_attention_update(r_ii, r_it, r_tt, r_ti, a_it, check=check)
        r_tt, r_ti = self_attention_update(*text, a_tt)
        if image is not None and a_ii is not None:
            r_ii, r_it = self_attention_update(*image, a_ii)
    return BimodalRelevance(text_text=r_tt, text_image=r_ti, image_image=r_ii, image_text=r_it)


def bimodal_readout(relevance: BimodalRelevance, cls: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The text and image maps of the CLS token: ``R^{tt}[cls]`` with its self entry set to 0, and ``R^{ti}[cls]``.

    Parameters
    ----------
    relevance
        The result of :func:`bimodal_relevance`.
    cls
        Index of the CLS token among the text tokens (0 for LXMERT).

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        ``(text_map, image_map)``; new tensors (``relevance`` is not modified).

    Raises
    ------
    InvalidParameterError
        ``cls`` is not an int in ``[0, T_t)``.

    Shapes
    ------
    ``R^{tt} (B, T_t, T_t)``, ``R^{ti} (B, T_t, T_i)`` -> ``(B, T_t)``, ``(B, T_i)``
    """
    if not isinstance(relevance, BimodalRelevance):
        raise InvalidInputError(f"relevance must be a BimodalRelevance; got {type(relevance).__name__}.")
    n_t = relevance.text_text.shape[1]
    if isinstance(cls, bool) or not isinstance(cls, int) or not 0 <= cls < n_t:
        raise InvalidParameterError(f"cls must be an int in [0, {n_t - 1}]; got {cls!r}.")
    text = relevance.text_text[:, cls, :].clone()
    text[:, cls] = 0
    return text, relevance.text_image[:, cls, :].clone()


# ---------------------------------------------------------------------------------------------- encoder-decoder


@dataclass(frozen=True)
class EncoderDecoderRelevance:
    """The relevance matrices of an encoder-decoder after :func:`encoder_decoder_relevance`.

    ``R^{ed}`` is identically 0 (the encoder never attends to the decoder) and is not returned.

    Attributes
    ----------
    encoder_encoder
        ``R^{ee} (B, T_e, T_e)``, from the encoder self-attention only.
    decoder_decoder
        ``R^{dd} (B, T_d, T_d)``.
    decoder_encoder
        ``R^{de} (B, T_d, T_e)``: relevance of the encoder tokens for each decoder position; read it with
        :func:`encoder_decoder_readout`.
    """

    encoder_encoder: torch.Tensor
    decoder_decoder: torch.Tensor
    decoder_encoder: torch.Tensor


def encoder_decoder_relevance(
    encoder_self: Sequence[AttentionAndGrad],
    decoder_self: Sequence[AttentionAndGrad],
    cross: Sequence[AttentionAndGrad],
    *,
    check: bool = True,
) -> EncoderDecoderRelevance:
    """Relevance of an encoder-decoder (DETR, BART, T5): ICCV 2021 §3 in the reference's order.

    ``R^{ee} = I``, ``R^{dd} = I``, ``R^{de} = 0``; each encoder layer: ``R^{ee} += Ā·R^{ee}``; then per
    decoder layer ``l``: the self-attention update of ``(R^{dd}, R^{de})`` with ``decoder_self[l]``, then the
    co-attention update with ``cross[l]``: ``R^{de} += (R̄^{dd})ᵀ·Ā·R̄^{ee}`` (its other half,
    ``R^{dd} += Ā·R^{ed}``, adds 0 because ``R^{ed} = 0``).

    Parameters
    ----------
    encoder_self
        ``(A, ∇A)`` of each encoder self-attention layer, ``(B, H, T_e, T_e)``, in forward order (may be empty).
    decoder_self
        ``(A, ∇A)`` of each decoder self-attention layer, ``(B, H, T_d, T_d)`` (at least one).
    cross
        ``(A, ∇A)`` of each decoder layer's cross-attention (decoder queries, encoder keys), ``(B, H, T_d, T_e)``;
        one per decoder layer.
    check
        Check ``diag(R - I) >= 0`` on ``R^{dd}`` and ``R^{ee}`` before each cross-attention.

    Returns
    -------
    EncoderDecoderRelevance
        ``R^{ee}``, ``R^{dd}``, ``R^{de}``.

    Raises
    ------
    InvalidInputError
        A layer is not an ``(A, ∇A)`` pair of equally shaped tensors with the sizes above, ``decoder_self`` is
        empty, ``cross`` has another length, or (with ``check``) the invariant fails.

    Shapes
    ------
    ``L_e × (B, H, T_e, T_e)``, ``L_d × (B, H, T_d, T_d)``, ``L_d × (B, H, T_d, T_e)`` ->
    ``R^{ee} (B, T_e, T_e)``, ``R^{dd} (B, T_d, T_d)``, ``R^{de} (B, T_d, T_e)``

    References
    ----------
    Chefer, Gur & Wolf, ICCV 2021 (eqs. 5-11; hila-chefer/Transformer-MM-Explainability, ``DETR``).
    """
    if not _is_pair_sequence(decoder_self) or not decoder_self:
        raise InvalidInputError(
            "decoder_self must be a non-empty sequence of (attention, grad) pairs, one per decoder layer; "
            f"got {_describe(decoder_self)}."
        )
    if not _is_pair_sequence(cross) or len(cross) != len(decoder_self):
        raise InvalidInputError(
            f"cross must hold one (attention, grad) pair per decoder layer ({len(decoder_self)}); "
            f"got {_describe(cross)}."
        )
    first = _pair(cross[0], "cross[0]")
    b, _, n_d, n_e = first[0].shape
    like = first[0]
    encoders = _a_bars(encoder_self, "encoder_self", b, n_e, n_e)
    decoders = _a_bars(decoder_self, "decoder_self", b, n_d, n_d)
    crosses = _a_bars(cross, "cross", b, n_d, n_e)

    r_ee, r_dd = _eye(b, n_e, like), _eye(b, n_d, like)
    r_de, r_ed = like.new_zeros(b, n_d, n_e), like.new_zeros(b, n_e, n_d)
    for a in encoders:
        r_ee = r_ee + a @ r_ee
    for a_dd, a_de in zip(decoders, crosses, strict=True):
        r_dd, r_de = self_attention_update(r_dd, r_de, a_dd)
        r_dd, r_de = co_attention_update(r_dd, r_de, r_ee, r_ed, a_de, check=check)
    return EncoderDecoderRelevance(encoder_encoder=r_ee, decoder_decoder=r_dd, decoder_encoder=r_de)


def encoder_decoder_readout(relevance: EncoderDecoderRelevance, position: int | torch.Tensor) -> torch.Tensor:
    """The map of one decoder position over the encoder tokens: ``R^{de}[position]``.

    Parameters
    ----------
    relevance
        The result of :func:`encoder_decoder_relevance`.
    position
        The explained decoder position (the DETR query, the generated token's position): an int, or one per
        row as a ``(B,)`` integer tensor.

    Returns
    -------
    torch.Tensor
        A new tensor (``relevance`` is not modified).

    Raises
    ------
    InvalidParameterError
        ``position`` is not an int or ``(B,)`` integer tensor in ``[0, T_d)``.

    Shapes
    ------
    ``R^{de} (B, T_d, T_e)`` -> ``(B, T_e)``
    """
    if not isinstance(relevance, EncoderDecoderRelevance):
        raise InvalidInputError(f"relevance must be an EncoderDecoderRelevance; got {type(relevance).__name__}.")
    r_de = relevance.decoder_encoder
    b, n_d, _ = r_de.shape
    index = _rows(position, "position", b, n_d, r_de.device, InvalidParameterError)
    return r_de[torch.arange(b, device=r_de.device), index, :].clone()


# ---------------------------------------------------------------------------------------------- Hugging Face


@dataclass(frozen=True)
class EncoderDecoderAttentions:
    """What :func:`collect_encoder_decoder_attentions` returns: logits and ``(A, ∇A)`` of every attention layer.

    ``encoder_decoder_relevance(c.encoder_self, c.decoder_self, c.cross)`` takes them as they are.

    Attributes
    ----------
    logits
        ``(B, T_d, K)``, detached.
    encoder_self
        ``L_e × (A, ∇A)``, ``(B, H, T_e, T_e)`` (HF ``encoder_attentions``).
    decoder_self
        ``L_d × (A, ∇A)``, ``(B, H, T_d, T_d)`` (HF ``decoder_attentions``).
    cross
        ``L_d × (A, ∇A)``, ``(B, H, T_d, T_e)`` (HF ``cross_attentions``).
    """

    logits: torch.Tensor
    encoder_self: list[AttentionAndGrad]
    decoder_self: list[AttentionAndGrad]
    cross: list[AttentionAndGrad]


def collect_encoder_decoder_attentions(
    model: nn.Module,
    *,
    target_position: int | Sequence[int] | torch.Tensor,
    target_token: int | Sequence[int] | torch.Tensor,
    **model_inputs: Any,
) -> EncoderDecoderAttentions:
    """One forward and one backward pass of a Hugging Face encoder-decoder: logits, attentions and ``∇A``.

    The score is the logit ``logits[b, target_position_b, target_token_b]``; ``∇A`` of every encoder,
    decoder and cross-attention layer is ``autograd.grad`` of the scores summed over rows (rows are
    independent in eval mode). The call runs in eval mode with ``output_attentions=True`` on eager attention
    (and ``use_cache=False`` where the forward takes it). ``input_ids`` and ``decoder_input_ids`` become
    ``inputs_embeds`` and ``decoder_inputs_embeds`` (from the encoder's and decoder's input embeddings) made
    to require grad, so frozen models build a graph and the first decoder layer's self-attention has one too.
    The model leaves exactly as it came (see :func:`whybox.explainers.attention.collect.collect_attentions`).

    Parameters
    ----------
    model
        A transformers encoder-decoder whose output has ``.logits (B, T_d, K)``, ``.encoder_attentions``,
        ``.decoder_attentions`` and ``.cross_attentions`` (e.g. ``BartForConditionalGeneration``,
        ``T5ForConditionalGeneration``).
    target_position
        The decoder position whose logit is explained: an int, or one per row.
    target_token
        The vocabulary entry (class) whose logit is explained: an int, or one per row.
    **model_inputs
        Passed to ``model(...)``: ``input_ids``/``inputs_embeds``, ``attention_mask``, and
        ``decoder_input_ids``/``decoder_inputs_embeds`` (required: the decoder must see a differentiable input).

    Returns
    -------
    EncoderDecoderAttentions
        Detached logits and ``(A, ∇A)`` pairs, ready for :func:`encoder_decoder_relevance`.

    Raises
    ------
    InvalidInputError
        ``output_attentions`` was passed, or neither ``decoder_input_ids`` nor ``decoder_inputs_embeds`` was.
    InvalidTargetError
        ``target_position`` or ``target_token`` is out of range or of the wrong kind (after the forward pass;
        the model is restored).
    ModelOutputError
        The output has no ``(B, T_d, K)`` logits or lacks one of the three attention lists.
    NotDifferentiableError
        An input could not be embedded, or an attention tensor carries no graph.

    Shapes
    ------
    ``input_ids (B, T_e)``, ``decoder_input_ids (B, T_d)`` -> ``(B, T_d, K)``, ``L_e × (B, H, T_e, T_e)``,
    ``L_d × (B, H, T_d, T_d)``, ``L_d × (B, H, T_d, T_e)``
    """
    if "output_attentions" in model_inputs:
        raise InvalidInputError("collect_encoder_decoder_attentions sets output_attentions itself; do not pass it.")
    if model_inputs.get("decoder_input_ids") is None and model_inputs.get("decoder_inputs_embeds") is None:
        raise InvalidInputError(
            "collect_encoder_decoder_attentions needs decoder_input_ids or decoder_inputs_embeds (the decoder tokens "
            "up to and including the explained position); got neither."
        )
    inputs = dict(model_inputs)
    if _accepts(model, "use_cache"):
        inputs.setdefault("use_cache", False)
    with ExitStack() as stack:
        stack.enter_context(preserved(model, "eval"))
        stack.enter_context(eager_attention(model))
        stack.enter_context(torch.enable_grad())
        inputs = _embedded_inputs(model, inputs)
        output = model(**inputs, output_attentions=True, return_dict=True)
        logits = getattr(output, "logits", None)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ModelOutputError(
                f"collect_encoder_decoder_attentions needs (B, T_d, K) logits (the output's .logits); got {got}."
            )
        b, n_d, k = logits.shape
        groups = {key: _output_attentions(output, key, model) for key in _ATTENTION_KEYS}
        position = _rows(target_position, "target_position", b, n_d, logits.device, InvalidTargetError)
        token = _rows(target_token, "target_token", b, k, logits.device, InvalidTargetError)
        score = logits[torch.arange(b, device=logits.device), position, token]
        for key, attentions in groups.items():
            for i, a in enumerate(attentions):
                if not a.requires_grad:
                    raise NotDifferentiableError(
                        f"{key}[{i}] of {type(model).__name__} carries no gradient: pass input_ids or inputs_embeds "
                        "and decoder_input_ids or decoder_inputs_embeds so that they can be made to require grad."
                    )
        flat = [a for attentions in groups.values() for a in attentions]
        grads = torch.autograd.grad(score.sum(), flat, allow_unused=True, materialize_grads=True)
        pairs = [(a.detach(), g.detach()) for a, g in zip(flat, grads, strict=True)]
        n_e, n_dd = len(groups["encoder_attentions"]), len(groups["decoder_attentions"])
        return EncoderDecoderAttentions(
            logits=logits.detach(),
            encoder_self=pairs[:n_e],
            decoder_self=pairs[n_e : n_e + n_dd],
            cross=pairs[n_e + n_dd :],
        )


_ATTENTION_KEYS = ("encoder_attentions", "decoder_attentions", "cross_attentions")


def _output_attentions(output: Any, key: str, model: nn.Module) -> list[torch.Tensor]:
    attentions = getattr(output, key, None)
    if not attentions or any(not isinstance(a, torch.Tensor) for a in attentions):
        raise ModelOutputError(
            f"{type(model).__name__} returned no {key} with output_attentions=True under eager attention "
            f"(got {type(attentions).__name__}); it must be a transformers encoder-decoder whose output has "
            f"{', '.join(_ATTENTION_KEYS)}."
        )
    return list(attentions)


def _embedding(model: nn.Module, part: str) -> nn.Module | None:
    """The input embedding of ``model.get_encoder()`` / ``get_decoder()``, else ``model.get_input_embeddings()``."""
    get_part = getattr(model, part, None)
    owners = [get_part(), model] if callable(get_part) else [model]
    for owner in owners:
        getter = getattr(owner, "get_input_embeddings", None)
        embeddings = getter() if callable(getter) else None
        if isinstance(embeddings, nn.Module):
            return embeddings
    return None


def _embedded_inputs(model: nn.Module, inputs: dict[str, Any]) -> dict[str, Any]:
    """``input_ids``/``decoder_input_ids`` -> grad-requiring ``inputs_embeds``/``decoder_inputs_embeds``."""
    out = dict(inputs)
    for ids, embeds, part in (
        ("input_ids", "inputs_embeds", "get_encoder"),
        ("decoder_input_ids", "decoder_inputs_embeds", "get_decoder"),
    ):
        if out.get(ids) is not None and out.get(embeds) is None:
            embeddings = _embedding(model, part)
            if embeddings is None:
                raise NotDifferentiableError(
                    f"{type(model).__name__} has no input embedding module, so {ids} cannot become a "
                    f"grad-requiring {embeds}; pass {embeds} yourself."
                )
            out[embeds] = embeddings(out.pop(ids))
    for key in ("decoder_inputs_embeds", *DIFFERENTIABLE_INPUTS):  # the latter include inputs_embeds
        value = out.get(key)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            out[key] = value.detach().requires_grad_(True)
    return out


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------- checks


def _eye(b: int, n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.eye(n, dtype=like.dtype, device=like.device).expand(b, n, n).clone()


def _check_matrix(x: object, name: str, dims: tuple[int | None, int | None, int | None], label: str) -> None:
    """``x`` is a floating-point 3-D tensor whose sizes equal ``dims`` where given; ``label`` names them."""
    if not isinstance(x, torch.Tensor) or x.ndim != 3 or not x.is_floating_point():
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidInputError(f"{name} must be a floating-point {label} tensor; got {got}.")
    if any(d is not None and d != n for d, n in zip(dims, x.shape, strict=True)):
        want = ", ".join("*" if d is None else str(d) for d in dims)
        raise InvalidInputError(f"{name} must have shape {label} = ({want}); got {tuple(x.shape)}.")


def _is_pair_sequence(pairs: object) -> TypeGuard[Sequence[Any]]:
    return isinstance(pairs, Sequence) and not isinstance(pairs, str)


def _describe(pairs: object) -> str:
    if isinstance(pairs, torch.Tensor):
        return f"a tensor of shape {tuple(pairs.shape)}"
    if _is_pair_sequence(pairs):
        return f"{len(pairs)} entries"
    return type(pairs).__name__


def _pair(pair: object, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check one ``(A, ∇A)`` pair: two equally shaped floating-point ``(B, H, n_s, n_q)`` tensors."""
    if (
        not isinstance(pair, Sequence)
        or isinstance(pair, torch.Tensor)
        or len(pair) != 2
        or not all(isinstance(x, torch.Tensor) for x in pair)
    ):
        got = f"a tensor of shape {tuple(pair.shape)}" if isinstance(pair, torch.Tensor) else type(pair).__name__
        raise InvalidInputError(f"{name} must be an (attention, grad) pair of (B, H, n_s, n_q) tensors; got {got}.")
    attention, grad = pair
    if attention.ndim != 4 or not attention.is_floating_point():
        raise InvalidInputError(
            f"{name} attention must be a floating-point (B, H, n_s, n_q) tensor; got {tuple(attention.shape)} "
            f"{attention.dtype}."
        )
    if grad.shape != attention.shape:
        raise InvalidInputError(
            f"{name} grad must have the shape of its attention {tuple(attention.shape)}; got {tuple(grad.shape)}."
        )
    return attention, grad


def _a_bar(pair: object, name: str, b: int, rows: int, cols: int) -> torch.Tensor:
    attention, grad = _pair(pair, name)
    if (attention.shape[0], attention.shape[2], attention.shape[3]) != (b, rows, cols):
        raise InvalidInputError(f"{name} must have shape ({b}, H, {rows}, {cols}); got {tuple(attention.shape)}.")
    return gradient_weighted_attention(attention, grad)


def _a_bars(pairs: object, name: str, b: int, rows: int, cols: int) -> list[torch.Tensor]:
    if not _is_pair_sequence(pairs):
        raise InvalidInputError(
            f"{name} must be a sequence (list or tuple) of (attention, grad) pairs, one per layer; "
            f"got {_describe(pairs)}."
        )
    return [_a_bar(pair, f"{name}[{i}]", b, rows, cols) for i, pair in enumerate(pairs)]


def _rows(value: object, name: str, b: int, n: int, device: torch.device, error: type[Exception]) -> torch.Tensor:
    """An int or one int per row (sequence or integer tensor) -> a ``(B,)`` int64 index in ``[0, n)``."""
    if isinstance(value, bool):
        raise error(f"{name} must be an int, {b} ints or a ({b},) integer tensor; got {value!r}.")
    if isinstance(value, int):
        index = torch.full((b,), value, dtype=torch.int64, device=device)
    elif isinstance(value, torch.Tensor) and value.shape == (b,) and not value.is_floating_point():
        index = value.to(device=device, dtype=torch.int64)
    elif (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == b
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        index = torch.tensor(list(value), dtype=torch.int64, device=device)
    else:
        got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)
        raise error(f"{name} must be an int, {b} ints or a ({b},) integer tensor; got {got}.")
    if bool(((index < 0) | (index >= n)).any()):
        raise error(f"{name} must be in [0, {n - 1}]; got {index.tolist()}.")
    return index
