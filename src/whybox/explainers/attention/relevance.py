"""Generic gradient-weighted attention relevance (Chefer, Gur & Wolf, ICCV 2021), as pure tensor functions.

Single-stream form (ViT, BERT, GPT-2, each CLIP tower): ``R = I``; per layer ``Ā = E_h[(∇A ⊙ A)^+]`` and
``R ← R + Ā · R``; the map is ``R[readout, prefix:]`` (see :func:`whybox.explainers.attention.rollout.readout`).
The bi-modal and encoder-decoder forms build on :func:`normalize_residual`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from whybox.errors import InvalidInputError
from whybox.explainers.attention.rollout import _check_attentions, _check_start_layer

__all__ = ["gradient_weighted_attention", "gradient_weighted_relevance", "normalize_residual"]


def gradient_weighted_attention(attention: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """One layer's gradient-weighted attention ``Ā = E_h[(∇A ⊙ A)^+]``: positive part first, then the head mean.

    Parameters
    ----------
    attention
        Post-softmax attention probabilities ``A`` of one layer.
    grad
        ``∇A``, the gradient of the explained score with respect to ``A`` (same shape).

    Returns
    -------
    torch.Tensor
        ``Ā``, non-negative.

    Shapes
    ------
    ``(B, H, T, T)``, ``(B, H, T, T)`` -> ``(B, T, T)``
    """
    if grad.shape != attention.shape:
        raise InvalidInputError(
            f"grad must have the shape of its attention tensor {tuple(attention.shape)}; got {tuple(grad.shape)}."
        )
    return (grad * attention).clamp(min=0).mean(dim=1)


def gradient_weighted_relevance(
    attentions: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], *, start_layer: int = 0
) -> torch.Tensor:
    """Single-stream relevance ``R = I``, then ``R ← R + Ā^(l) · R`` for ``l = s, …, L-1``.

    Parameters
    ----------
    attentions
        One post-softmax attention tensor ``A^(l)`` per layer, in forward order.
    grads
        ``∇A^(l)`` of the explained score (one per layer, same shapes), e.g. from
        :func:`whybox.explainers.attention.collect.collect_attentions`.
    start_layer
        First layer ``s`` that updates ``R`` (0-based, default 0 as the paper; CLIP's reference notebook
        uses ``L - 1``).

    Returns
    -------
    torch.Tensor
        ``R``; read the map with ``readout(R, "cls")`` (or ``"last"`` for GPT-2) and :func:`to_grid` for ViT.
        ``R - I`` is non-negative.

    Raises
    ------
    InvalidInputError
        ``attentions`` or ``grads`` are not equally long lists of equally shaped ``(B, H, T, T)`` tensors.
    InvalidParameterError
        ``start_layer`` out of range.

    Shapes
    ------
    ``L × (B, H, T, T)``, ``L × (B, H, T, T)`` -> ``R (B, T, T)``

    References
    ----------
    Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and
    Encoder-Decoder Transformers", ICCV 2021 (eqs. 5-7; hila-chefer/Transformer-MM-Explainability).
    """
    layers = _check_attentions(attentions, "attentions")
    gradients = _check_attentions(grads, "grads")
    if len(gradients) != len(layers):
        raise InvalidInputError(
            f"grads must hold one tensor per attention layer ({len(layers)}); got {len(gradients)}."
        )
    s = _check_start_layer(start_layer, len(layers))
    b, _, t, _ = layers[0].shape
    relevance = torch.eye(t, dtype=layers[0].dtype, device=layers[0].device).expand(b, t, t).clone()
    for a, g in zip(layers[s:], gradients[s:], strict=True):
        a_bar = gradient_weighted_attention(a, g)
        relevance = relevance + a_bar @ relevance
    return relevance


def normalize_residual(relevance: torch.Tensor) -> torch.Tensor:
    """Residual normalisation (ICCV 2021 eqs. 8-9): ``R̂ = R - I``; ``R̄ = R̂ ⊘ rowsum(R̂) + I``.

    A row of ``R̂`` that sums to 0 (``R`` still ``I`` there, e.g. before any self-attention) is left at 0
    (so that row of ``R̄`` is the identity's) instead of becoming NaN; the reference DETR code zeroes NaNs
    afterwards, which gives the same result.

    Parameters
    ----------
    relevance
        A square self-relevance matrix ``R^{ss}``.

    Returns
    -------
    torch.Tensor
        ``R̄``; every row of ``R̄ - I`` sums to 1 except the zero rows.

    Shapes
    ------
    ``(B, T, T) -> (B, T, T)``
    """
    if relevance.ndim != 3 or relevance.shape[1] != relevance.shape[2]:
        raise InvalidInputError(f"relevance must have shape (B, T, T); got {tuple(relevance.shape)}.")
    t = relevance.shape[-1]
    eye = torch.eye(t, dtype=relevance.dtype, device=relevance.device)
    r_hat = relevance - eye
    sums = r_hat.sum(dim=-1, keepdim=True)
    zero = sums == 0
    r_hat = torch.where(zero, torch.zeros_like(r_hat), r_hat / torch.where(zero, torch.ones_like(sums), sums))
    return r_hat + eye
