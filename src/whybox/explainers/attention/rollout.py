"""Raw attention and attention rollout (Abnar & Zuidema 2020) as pure tensor functions.

Every function here takes post-softmax attention probabilities ``A (B, H, T, T)`` (rows = queries,
columns = keys), one tensor per layer in forward order, and works on the tensors' own device and dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from whybox.errors import InvalidInputError, InvalidParameterError, did_you_mean

__all__ = [
    "HEAD_FUSIONS",
    "READOUTS",
    "attention_rollout",
    "discard_smallest",
    "fuse_heads",
    "raw_attention",
    "readout",
    "to_grid",
]

HEAD_FUSIONS = ("mean", "max", "min")
READOUTS = ("cls", "mean", "last")
ReadoutLike = str | int | torch.Tensor


def fuse_heads(attention: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """Fuse the heads of one layer's attention: ``F = mean_h A`` (the paper), ``max_h A`` or ``min_h A``.

    Parameters
    ----------
    attention
        Post-softmax attention probabilities of one layer.
    how
        ``"mean"`` (default), ``"max"`` or ``"min"`` (the last two from vit-explain).

    Returns
    -------
    torch.Tensor
        The fused attention ``F``. Rows sum to 1 only for ``"mean"``.

    Raises
    ------
    InvalidParameterError
        ``how`` is not one of :data:`HEAD_FUSIONS`.
    InvalidInputError
        ``attention`` is not ``(B, H, T, T)``.

    Shapes
    ------
    ``(B, H, T, T) -> (B, T, T)``
    """
    _check_layer(attention, "attention")
    if how == "mean":
        return attention.mean(dim=1)
    if how == "max":
        return attention.amax(dim=1)
    if how == "min":
        return attention.amin(dim=1)
    raise InvalidParameterError(
        f"head_fusion must be one of {HEAD_FUSIONS}; got {how!r}.{did_you_mean(how, HEAD_FUSIONS)}"
    )


def discard_smallest(fused: torch.Tensor, ratio: float, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Zero, per sample, the ``floor(ratio * n**2)`` smallest entries of ``fused``, never the ``(cls, cls)`` entry.

    ``n`` is the number of real tokens of the sample (``T`` without ``mask``); only entries between two real
    tokens are candidates, and ``(0, 0)`` never is, so exactly ``min(floor(ratio * n**2), n**2 - 1)`` entries
    are zeroed. Ties are broken by position (row-major, stable sort). vit-explain instead picks the smallest
    ``k`` entries of batch item 0 only and then spares ``(0, 0)`` if it was among them (zeroing ``k - 1``).

    Parameters
    ----------
    fused
        Head-fused attention ``F``.
    ratio
        The discard ratio ``rho`` in ``[0, 1)``.
    mask
        ``1``/``True`` for real tokens, ``0``/``False`` for pads; ``None`` = all real.

    Returns
    -------
    torch.Tensor
        A new tensor; ``fused`` is not modified.

    Shapes
    ------
    ``(B, T, T)``, ``mask (B, T)`` -> ``(B, T, T)``
    """
    _check_ratio(ratio)
    if fused.ndim != 3 or fused.shape[1] != fused.shape[2]:
        raise InvalidInputError(f"fused attention must have shape (B, T, T); got {tuple(fused.shape)}.")
    b, t, _ = fused.shape
    m = _check_mask(mask, b, t, fused.device)
    if ratio == 0.0:
        return fused.clone()
    valid = (m[:, :, None] & m[:, None, :]).reshape(b, t * t)
    candidate = valid.clone()
    candidate[:, 0] = False
    n = m.sum(dim=1).to(torch.float64)
    k = torch.minimum(torch.floor(ratio * n * n).to(torch.int64), candidate.sum(dim=1))
    flat = fused.reshape(b, t * t)
    key = flat.masked_fill(~candidate, float("inf"))
    order = key.argsort(dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(t * t, device=fused.device).expand(b, -1).contiguous())
    drop = (rank < k[:, None]) & candidate
    return flat.masked_fill(drop, 0.0).reshape(b, t, t)


def attention_rollout(
    attentions: Sequence[torch.Tensor],
    *,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention rollout ``R = Â^(L) · Â^(L-1) · … · Â^(s)`` with ``Â = rownorm(F + I)``.

    Per layer the heads are fused (:func:`fuse_heads`), optionally the smallest entries are discarded per
    sample (:func:`discard_smallest`), the residual identity is added and the rows are renormalised to sum
    to 1 (always, so that max/min fusion and discarding still give a row-stochastic ``Â``). Later layers
    multiply on the left.

    With ``mask``, entries of ``F`` in a pad row or a pad column are zeroed first: each pad token then
    only attends to itself (its row of ``Â`` is ``e_pad``) and no real token receives mass from a pad, so
    the real-token block of ``R`` equals the rollout of the unpadded sample.

    Parameters
    ----------
    attentions
        One post-softmax attention tensor per layer, in forward order.
    head_fusion
        ``"mean"`` (paper, default), ``"max"`` or ``"min"``.
    discard_ratio
        Fraction ``rho`` of the smallest fused entries to zero per layer and sample (vit-explain; default
        0.0, i.e. the paper's rollout).
    start_layer
        First layer ``s`` in the product (0-based, default 0).
    mask
        ``1``/``True`` for real tokens, ``0``/``False`` for pads (HF ``attention_mask``); ``None`` = all real.

    Returns
    -------
    torch.Tensor
        ``R``; every row sums to 1.

    Raises
    ------
    InvalidInputError
        ``attentions`` is empty or its tensors are not all ``(B, H, T, T)`` of one shape; bad ``mask``.
    InvalidParameterError
        ``head_fusion``, ``discard_ratio`` or ``start_layer`` out of range.

    Shapes
    ------
    ``L × (B, H, T, T)``, ``mask (B, T)`` -> ``R (B, T, T)``

    References
    ----------
    Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020.
    jacobgil/vit-explain (head fusion options and discarding).
    """
    layers = _check_attentions(attentions, "attentions")
    s = _check_start_layer(start_layer, len(layers))
    b, _, t, _ = layers[0].shape
    m = _check_mask(mask, b, t, layers[0].device)
    if head_fusion not in HEAD_FUSIONS:
        raise InvalidParameterError(
            f"head_fusion must be one of {HEAD_FUSIONS}; got {head_fusion!r}.{did_you_mean(head_fusion, HEAD_FUSIONS)}"
        )
    _check_ratio(discard_ratio)
    valid = (m[:, :, None] & m[:, None, :]).to(layers[0].dtype)
    eye = torch.eye(t, dtype=layers[0].dtype, device=layers[0].device).expand(b, t, t)
    rollout = eye.clone()
    for a in layers[s:]:
        fused = fuse_heads(a, head_fusion) * valid
        if discard_ratio > 0:
            fused = discard_smallest(fused, discard_ratio, mask=m)
        a_hat = fused + eye
        a_hat = a_hat / a_hat.sum(dim=-1, keepdim=True)
        rollout = a_hat @ rollout
    return rollout


def readout(matrix: torch.Tensor, how: ReadoutLike = "cls", *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Read one relevance row per sample out of a token-by-token matrix, with pad columns zeroed.

    ``"cls"`` -> row 0 (encoders with CLS, ViT); ``"mean"`` -> the average of the real-token rows
    (mean-pooled encoders); ``"last"`` -> the last real token's row (causal LMs; row ``T-1`` without
    ``mask``); an ``int`` or a per-sample ``(B,)`` integer tensor -> that row (e.g. CLIP's EOT index).

    Parameters
    ----------
    matrix
        A rollout or relevance matrix ``R`` (or one layer's fused attention).
    how
        Which query row(s) to read.
    mask
        ``1``/``True`` for real tokens, ``0``/``False`` for pads; ``None`` = all real.

    Returns
    -------
    torch.Tensor
        ``r`` with ``r[b, j] = 0`` wherever token ``j`` is a pad.

    Shapes
    ------
    ``(B, T, T)``, ``mask (B, T)`` -> ``(B, T)``
    """
    if matrix.ndim != 3 or matrix.shape[1] != matrix.shape[2]:
        raise InvalidInputError(f"matrix must have shape (B, T, T); got {tuple(matrix.shape)}.")
    b, t, _ = matrix.shape
    m = _check_mask(mask, b, t, matrix.device)
    rows = torch.arange(b, device=matrix.device)
    if isinstance(how, str):
        if how == "cls":
            out = matrix[:, 0, :]
        elif how == "last":
            positions = torch.arange(t, device=matrix.device).expand(b, t)
            last = positions.masked_fill(~m, -1).amax(dim=1).clamp(min=0)
            out = matrix[rows, last, :]
        elif how == "mean":
            w = m.to(matrix.dtype)
            out = (w[:, :, None] * matrix).sum(dim=1) / w.sum(dim=1, keepdim=True).clamp(min=1)
        else:
            raise InvalidParameterError(
                f"readout must be one of {READOUTS}, an int or a (B,) index tensor; got {how!r}."
            )
    else:
        index = _check_index(how, b, t, matrix.device)
        out = matrix[rows, index, :]
    return out * m.to(matrix.dtype)


_readout = readout  # raw_attention's ``readout`` keyword shadows the function


def raw_attention(
    attentions: Sequence[torch.Tensor],
    *,
    layer: int = -1,
    head_fusion: str = "mean",
    readout: ReadoutLike = "cls",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Raw attention: the head-fused attention of one layer read at one query row, ``F^(l)[readout, :]``.

    Parameters
    ----------
    attentions
        One post-softmax attention tensor per layer, in forward order.
    layer
        Which layer (Python indexing; default ``-1``, the last).
    head_fusion
        ``"mean"``, ``"max"`` or ``"min"``.
    readout
        ``"cls"``, ``"mean"``, ``"last"``, an int or a ``(B,)`` index tensor (see :func:`readout`).
    mask
        ``1``/``True`` for real tokens; pad columns of the result are zero.

    Returns
    -------
    torch.Tensor
        The attention the readout token pays to every token.

    Shapes
    ------
    ``L × (B, H, T, T)`` -> ``(B, T)``
    """
    layers = _check_attentions(attentions, "attentions")
    if isinstance(layer, bool) or not isinstance(layer, int) or not -len(layers) <= layer < len(layers):
        raise InvalidParameterError(
            f"layer must be an int in [{-len(layers)}, {len(layers)}) for {len(layers)} layers; got {layer!r}."
        )
    return _readout(fuse_heads(layers[layer], head_fusion), readout, mask=mask)


def to_grid(r: torch.Tensor, *, prefix: int = 1, h: int | None = None, w: int | None = None) -> torch.Tensor:
    """Drop the prefix tokens (CLS, distillation, registers) and reshape patch tokens row-major to ``(h, w)``.

    The row-major order is the one of a ViT patch embedding's ``conv(x).flatten(2)``.

    Parameters
    ----------
    r
        Per-token relevance.
    prefix
        How many leading non-patch tokens to drop (1 for ViT, 2 for DeiT with distillation).
    h, w
        Grid size (image height and width over the patch size); both ``None`` = a square grid.

    Returns
    -------
    torch.Tensor
        ``grid[b, i, j] = r[b, prefix + i * w + j]``.

    Shapes
    ------
    ``(B, T)`` -> ``(B, h, w)`` with ``T = prefix + h * w``
    """
    if r.ndim != 2:
        raise InvalidInputError(f"r must have shape (B, T); got {tuple(r.shape)}.")
    if isinstance(prefix, bool) or not isinstance(prefix, int) or not 0 <= prefix <= r.shape[1]:
        raise InvalidParameterError(f"prefix must be an int in [0, {r.shape[1]}]; got {prefix!r}.")
    n = r.shape[1] - prefix
    for name, value in (("h", h), ("w", w)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise InvalidParameterError(f"{name} must be a positive int or None; got {value!r}.")
    if h is not None:
        rows = h
        cols = w if w is not None else n // h
    elif w is not None:
        rows, cols = n // w, w
    else:
        rows = cols = round(n**0.5)
    if rows * cols != n:
        raise InvalidParameterError(
            f"a {rows}x{cols} grid needs {rows * cols} patch tokens but r has {n} after dropping prefix={prefix} "
            f"(T={r.shape[1]}); pass h and w (image size / patch size) and the right prefix."
        )
    return r[:, prefix:].reshape(r.shape[0], rows, cols)


# --------------------------------------------------------------------------------------------------------------
# validation shared with relevance.py


def _check_layer(a: object, name: str) -> torch.Tensor:
    if not isinstance(a, torch.Tensor) or a.ndim != 4 or a.shape[-1] != a.shape[-2]:
        got = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
        raise InvalidInputError(f"{name} must be a (B, H, T, T) tensor; got {got}.")
    if not a.is_floating_point():
        raise InvalidInputError(f"{name} must be floating point; got dtype {a.dtype}.")
    return a


def _check_attentions(attentions: Sequence[torch.Tensor], name: str) -> list[torch.Tensor]:
    if isinstance(attentions, torch.Tensor) or not isinstance(attentions, Sequence) or len(attentions) == 0:
        got = (
            f"a tensor of shape {tuple(attentions.shape)}" if isinstance(attentions, torch.Tensor) else repr(attentions)
        )
        raise InvalidInputError(
            f"{name} must be a non-empty sequence (list or tuple) of (B, H, T, T) tensors, one per layer; got {got}."
        )
    layers = [_check_layer(a, f"{name}[{i}]") for i, a in enumerate(attentions)]
    shape = layers[0].shape
    for i, a in enumerate(layers):
        if a.shape != shape:
            raise InvalidInputError(
                f"every tensor in {name} must have one shape; {name}[0] is {tuple(shape)} but {name}[{i}] is "
                f"{tuple(a.shape)}."
            )
    return layers


def _check_ratio(ratio: float) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise InvalidParameterError(f"discard_ratio must be a float in [0, 1); got {ratio!r}.")


def _check_start_layer(start_layer: int, n_layers: int) -> int:
    if isinstance(start_layer, bool) or not isinstance(start_layer, int) or not 0 <= start_layer < n_layers:
        raise InvalidParameterError(
            f"start_layer must be an int in [0, {n_layers - 1}] for {n_layers} layers; got {start_layer!r}."
        )
    return start_layer


def _check_mask(mask: torch.Tensor | None, b: int, t: int, device: torch.device) -> torch.Tensor:
    if mask is None:
        return torch.ones(b, t, dtype=torch.bool, device=device)
    if not isinstance(mask, torch.Tensor) or mask.shape != (b, t):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InvalidInputError(f"mask must be a ({b}, {t}) tensor (1 = real token, 0 = pad); got {got}.")
    return mask.to(device=device) != 0


def _check_index(index: int | torch.Tensor, b: int, t: int, device: torch.device) -> torch.Tensor:
    if isinstance(index, bool):
        raise InvalidParameterError(f"readout index must be an int; got {index!r}.")
    if isinstance(index, int):
        idx = torch.full((b,), index, dtype=torch.int64, device=device)
    elif isinstance(index, torch.Tensor) and index.shape == (b,) and not index.is_floating_point():
        idx = index.to(device=device, dtype=torch.int64)
    else:
        got = tuple(index.shape) if isinstance(index, torch.Tensor) else repr(index)
        raise InvalidParameterError(f"readout must be one of {READOUTS}, an int or a ({b},) integer tensor; got {got}.")
    if bool(((idx < 0) | (idx >= t)).any()):
        raise InvalidParameterError(f"readout index must be in [0, {t - 1}]; got {idx.tolist()}.")
    return idx
