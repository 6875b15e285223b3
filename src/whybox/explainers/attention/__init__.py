"""Attention explanations for transformers: pure tensor functions plus the Hugging Face plumbing that feeds them.

- :mod:`~whybox.explainers.attention.rollout`: raw attention and attention rollout (Abnar & Zuidema 2020),
  readouts (``cls``/``mean``/``last``) and :func:`to_grid` for ViT patch maps.
- :mod:`~whybox.explainers.attention.relevance`: the generic gradient-weighted relevance of Chefer, Gur &
  Wolf (ICCV 2021), single-stream form, and its residual normalisation.
- :mod:`~whybox.explainers.attention.multimodal`: the bi-modal (LXMERT order) and encoder-decoder (DETR,
  BART, T5) forms of that relevance, their update rules and readouts, and
  :func:`collect_encoder_decoder_attentions` for Hugging Face encoder-decoders.
- :mod:`~whybox.explainers.attention.collect`: :func:`collect_attentions` runs a Hugging Face model once on
  eager attention and returns logits, attentions and their gradients, leaving the model as it came.

Shapes: ``L × (B, H, T, T)`` attentions -> ``R (B, T, T)`` -> ``r (B, T)`` -> ``(B, h, w)`` for ViT.
"""

from whybox.explainers.attention.collect import collect_attentions, eager_attention
from whybox.explainers.attention.multimodal import (
    AttentionAndGrad,
    BimodalRelevance,
    CrossModalLayer,
    EncoderDecoderAttentions,
    EncoderDecoderRelevance,
    bimodal_readout,
    bimodal_relevance,
    check_self_relevance,
    co_attention_update,
    collect_encoder_decoder_attentions,
    encoder_decoder_readout,
    encoder_decoder_relevance,
    self_attention_update,
)
from whybox.explainers.attention.relevance import (
    gradient_weighted_attention,
    gradient_weighted_relevance,
    normalize_residual,
)
from whybox.explainers.attention.rollout import (
    attention_rollout,
    discard_smallest,
    fuse_heads,
    raw_attention,
    readout,
    to_grid,
)

__all__ = [
    "AttentionAndGrad",
    "BimodalRelevance",
    "CrossModalLayer",
    "EncoderDecoderAttentions",
    "EncoderDecoderRelevance",
    "attention_rollout",
    "bimodal_readout",
    "bimodal_relevance",
    "check_self_relevance",
    "co_attention_update",
    "collect_attentions",
    "collect_encoder_decoder_attentions",
    "discard_smallest",
    "eager_attention",
    "encoder_decoder_readout",
    "encoder_decoder_relevance",
    "fuse_heads",
    "gradient_weighted_attention",
    "gradient_weighted_relevance",
    "normalize_residual",
    "raw_attention",
    "readout",
    "self_attention_update",
    "to_grid",
]
