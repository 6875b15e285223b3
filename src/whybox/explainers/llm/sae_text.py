"""Sparse-autoencoder features of a Hugging Face text model: activations, contexts, and attribution both ways.

The plumbing around :mod:`whybox.explainers.llm.sae` (spec TRANSFORMERS.md §6) for a text adapter from
:func:`whybox.adapt_text` (a BERT-style classifier or encoder, or :class:`~whybox.data.text.MiniLMSentiment`):

- :func:`collect_activations`: the residual stream after transformer block ``layer`` (Hugging Face's
  ``hidden_states[layer + 1]``) at every ordinary token of a corpus, as rows for :func:`~.sae.train_sae`;
- :func:`feature_contexts`: per latent, its top-activating tokens with the words around them;
- :class:`SAEFeatureAdapter`: a whybox adapter whose scores are SAE features pooled over a text's tokens, so any
  whybox method (Integrated Gradients from the [PAD] baseline, occlusion, ...) attributes a *feature* to the
  input tokens;
- :func:`prediction_to_features`: the classifier's logit attributed to the SAE features at ``layer``
  (gradient × activation through a splice that leaves the forward pass unchanged), with the error term's share.

The block output is read with a forward hook on block ``layer`` of the model's ``ModuleList`` of
``config.num_hidden_layers`` blocks (BERT ``encoder.layer``, GPT-2 ``h``); for BERT it equals
``hidden_states[layer + 1]`` (tested), for GPT-2's last block it is the raw residual, not ``hidden_states[-1]``
(which has ``ln_f`` applied; spec §0). Reading activations stops the forward pass right after that block (the
later blocks would be wasted work). Hooks live inside ``with`` blocks and the model leaves every call as it came
(:meth:`TorchAdapter.guard`).

"Ordinary" tokens are the attended tokens that are not special (``[CLS]``, ``[SEP]``, BOS, EOS): the SAE is
trained, read and spliced only there (spec §6: skip BOS).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from whybox.errors import (
    InvalidInputError,
    InvalidParameterError,
    InvalidTargetError,
    LayerError,
    ModelOutputError,
    did_you_mean,
)
from whybox.explainers.llm.sae import SparseAutoencoder, top_activating
from whybox.explainers.llm.sae import _check_sae as _check_sae_type
from whybox.models._guard import preserved
from whybox.models.inputs import python_number, python_numbers
from whybox.models.text import (
    TextClassifierAdapter,
    TextEncoderAdapter,
    check_pad_token,
    ordinary_positions,
    right_padded,
    special_span,
)

__all__ = [
    "POOLS",
    "READOUTS",
    "LatentContexts",
    "PredictionFeatures",
    "SAEFeatureAdapter",
    "TokenActivations",
    "collect_activations",
    "feature_contexts",
    "prediction_to_features",
    "transformer_blocks",
]

#: How :class:`SAEFeatureAdapter` pools a feature over a text's ordinary tokens.
POOLS = ("max", "mean", "sum")
#: What :class:`SAEFeatureAdapter` reads: the feature ``f_i``, ``ReLU(z_i)`` (no TopK gate) or ``z_i``.
READOUTS = ("activation", "relu", "pre_activation")
TextAdapter = TextClassifierAdapter | TextEncoderAdapter


# ---------------------------------------------------------------------------------------------- helpers
def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's transformer blocks: the first ``nn.ModuleList`` with ``config.num_hidden_layers`` entries.

    ``config`` is read from the model or, for a wrapper such as ``MiniLMSentiment``, from the first submodule that
    has one. BERT: ``encoder.layer``; GPT-2: ``h``.

    Raises
    ------
    LayerError
        No ``config.num_hidden_layers``, or no ``ModuleList`` of that length.
    """
    n = None
    for m in model.modules():
        n = getattr(getattr(m, "config", None), "num_hidden_layers", None)
        if isinstance(n, int):
            break
    if not isinstance(n, int):
        raise LayerError(
            f"{type(model).__name__} has no config.num_hidden_layers, so its transformer blocks cannot be found; "
            "pass a Hugging Face model (or a wrapper around one)."
        )
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and len(m) == n:
            return m
    raise LayerError(f"{type(model).__name__} has no nn.ModuleList of its {n} transformer blocks.")


def _block(model: nn.Module, layer: Any) -> nn.Module:
    blocks = transformer_blocks(model)
    n = len(blocks)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise LayerError(f"layer must be an int in [0, {n - 1}] (the model has {n} transformer blocks); got {layer!r}.")
    return blocks[layer]


class _Stop(Exception):
    """Raised by a reading hook to end the forward pass after the block it reads."""


@contextmanager
def _read_block(block: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Within the block, the first call of ``block`` stores its hidden-state output in ``box["h"]`` and ends the
    forward pass (the body's model call returns early; nothing after it in the body runs)."""
    box: dict[str, Tensor] = {}

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        box["h"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handle = block.register_forward_hook(hook)
    try:
        yield box
    except _Stop:
        pass
    finally:
        handle.remove()


@contextmanager
def _replace_block(block: nn.Module, fn: Any) -> Iterator[None]:
    """Within the block, ``block``'s hidden-state output ``h`` is replaced by ``fn(h)``."""

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        return fn(output)

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _check_adapter(adapter: Any) -> TextAdapter:
    if not isinstance(adapter, (TextClassifierAdapter, TextEncoderAdapter)):
        raise InvalidParameterError(
            f"adapter must be a text adapter from whybox.adapt_text(model, tokenizer); got {type(adapter).__name__}."
        )
    return adapter


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, Sequence) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidInputError("texts must be a string or a non-empty list of strings.")
    return list(texts)


def _check_pos_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidParameterError(f"{name} must be an int >= 1; got {value!r}.")
    return value


def _check_sae(sae: Any, d_model: int | None = None) -> SparseAutoencoder:
    sae = _check_sae_type(sae)
    if d_model is not None and sae.d_in != d_model:
        raise InvalidParameterError(
            f"sae reads {sae.d_in}-dimensional activations but the model's hidden size is {d_model}; train the SAE "
            "on this model's activations (collect_activations)."
        )
    return sae


def _hidden_size(model: nn.Module) -> int | None:
    for m in model.modules():
        d = getattr(getattr(m, "config", None), "hidden_size", None)
        if isinstance(d, int):
            return d
    return None


# ---------------------------------------------------------------------------------------------- activations
class TokenActivations(NamedTuple):
    """What :func:`collect_activations` returns (a tuple: ``acts, token_refs, tokens = ...``).

    Attributes
    ----------
    acts
        (N, D): one row per ordinary token, texts in order, positions in order within a text.
    token_refs
        N pairs ``(text_index, position)``: the text and the token's index in its tokenised sequence (``[CLS]``
        at 0).
    tokens
        N token strings (``convert_ids_to_tokens``: word pieces keep their ``##``).
    """

    acts: Tensor
    token_refs: list[tuple[int, int]]
    tokens: list[str]


def collect_activations(
    adapter: TextAdapter,
    texts: Sequence[str],
    *,
    layer: int,
    batch_size: int = 32,
    max_length: int = 128,
) -> TokenActivations:
    """The hidden states after transformer block ``layer`` at every ordinary token of ``texts``.

    Texts are tokenised (truncated at ``max_length`` tokens), batched by length (``batch_size`` a forward pass,
    padding within a batch only) and run without gradients up to block ``layer``, inside ``adapter.guard("eval")``
    (the model comes back in the mode it had). Special tokens and pads are left out.

    Parameters
    ----------
    adapter
        A text adapter from :func:`whybox.adapt_text` (for ``MiniLMSentiment`` the encoder inside it runs).
    texts
        The corpus.
    layer
        Block index, 0-based: ``layer`` = 3 reads the output of the fourth block, ``hidden_states[4]``.
    batch_size, max_length
        Texts a forward pass; truncation length in tokens.

    Returns
    -------
    TokenActivations
        ``(acts (N, D), token_refs, tokens)`` on the model's device, in the model's dtype.

    Raises
    ------
    InvalidParameterError, InvalidInputError, LayerError
        Not a text adapter, a tokenizer without a padding token, bad texts or sizes, ``layer`` out of range.
    """
    adapter = _check_adapter(adapter)
    texts = _check_texts(texts)
    _check_pos_int("batch_size", batch_size)
    _check_pos_int("max_length", max_length)
    model = adapter.model
    block = _block(model, layer)
    check_pad_token(adapter.tokenizer)  # texts are padded within a batch
    device = adapter.device
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    per_text: dict[int, tuple[Tensor, list[int], list[str]]] = {}
    with adapter.guard("eval"), torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            with right_padded(adapter.tokenizer):  # positions from 0 in every row (no position ids are passed)
                enc = adapter.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                    return_special_tokens_mask=True,
                )
            ids = enc["input_ids"].to(device)
            mask = enc["attention_mask"].to(device)
            keep = (mask == 1) & ~enc["special_tokens_mask"].to(device).bool()
            with _read_block(block) as box:
                model(input_ids=ids, attention_mask=mask)
            if "h" not in box:
                raise LayerError(f"block {layer} of {type(model).__name__} did not run in the forward pass.")
            h = box["h"]
            id_rows = enc["input_ids"].tolist()
            keep_cpu = keep.cpu()
            for r, i in enumerate(idx):
                pos = torch.nonzero(keep_cpu[r]).flatten().tolist()
                toks = adapter.tokenizer.convert_ids_to_tokens([id_rows[r][p] for p in pos])
                per_text[i] = (h[r, pos], pos, list(toks))
    rows: list[Tensor] = []
    refs: list[tuple[int, int]] = []
    tokens: list[str] = []
    for i in range(len(texts)):
        a, pos, toks = per_text[i]
        rows.append(a)
        refs.extend((i, p) for p in pos)
        tokens.extend(toks)
    return TokenActivations(torch.cat(rows).detach(), refs, tokens)


# ---------------------------------------------------------------------------------------------- contexts
@dataclass(frozen=True)
class LatentContexts:
    """One latent's top-activating tokens (from :func:`feature_contexts`), strongest first.

    Attributes
    ----------
    latent
        The latent id.
    density
        Fraction of the rows on which it is active (``f > 0``).
    values
        (n,): its activations at those tokens (``n <= k``: rows where it is 0 are left out).
    rows
        The rows of ``acts``.
    token_refs
        ``(text_index, position)`` of each.
    tokens
        The token strings.
    contexts
        The token's word marked ``«like this»`` (a word piece marked inside its word: ``play«ing»``), with
        ``window`` words either side.
    """

    latent: int
    density: float
    values: Tensor
    rows: list[int]
    token_refs: list[tuple[int, int]]
    tokens: list[str]
    contexts: list[str]


def _words(tokens: list[str]) -> tuple[list[list[int]], list[int]]:
    """Group a text's tokens into words: ``##`` continues a word (WordPiece); where the tokens mark word starts
    (byte-level BPE's ``Ġ``, SentencePiece's ``▁``), a piece without the mark continues the word before it
    (``Ġgame`` ``playing``), except after a special token (``<|endoftext|>``, ``[CLS]``); otherwise every token
    starts one. Returns the words (lists of token indices) and each token's word index."""

    def special(t: str) -> bool:
        return (t.startswith("<") and t.endswith(">")) or (t.startswith("[") and t.endswith("]") and len(t) > 2)

    marks = any(t.startswith(("Ġ", "▁")) for t in tokens[1:])
    words: list[list[int]] = []
    word_of: list[int] = []
    for j, t in enumerate(tokens):
        if words and t.startswith("##"):
            cont = True
        elif words and marks:
            cont = not t.startswith(("Ġ", "▁")) and not special(t) and not special(tokens[j - 1])
        else:
            cont = False
        if cont:
            words[-1].append(j)
        else:
            words.append([j])
        word_of.append(len(words) - 1)
    return words, word_of


def _piece(t: str) -> str:
    return t[2:] if t.startswith("##") else t.lstrip("Ġ▁")


def _context(tokens: list[str], j: int, window: int) -> str:
    words, word_of = _words(tokens)
    w = word_of[j]
    lo, hi = max(0, w - window), min(len(words), w + window + 1)
    out = []
    for v in range(lo, hi):
        if v == w:
            out.append("".join(f"«{_piece(tokens[q])}»" if q == j else _piece(tokens[q]) for q in words[v]))
        else:
            out.append("".join(_piece(tokens[q]) for q in words[v]))
    return ("… " if lo > 0 else "") + " ".join(out) + (" …" if hi < len(words) else "")


def feature_contexts(
    sae: SparseAutoencoder,
    acts: Tensor,
    token_refs: Sequence[tuple[int, int]],
    texts: Sequence[str],
    tokens: Sequence[str],
    *,
    k: int = 10,
    latents: Sequence[int] | None = None,
    window: int = 8,
) -> list[LatentContexts]:
    """Per latent, the ``k`` tokens of the corpus on which it is largest, each shown in its context.

    The top rows come from :func:`~.sae.top_activating` (one chunked scan over ``acts``); contexts are built for
    those rows only, from the tokens of the same text (``token_refs`` groups rows by text).

    Parameters
    ----------
    sae
        The autoencoder.
    acts, token_refs, tokens
        From :func:`collect_activations` (N rows, N refs, N tokens).
    texts
        The corpus ``collect_activations`` read (its length bounds the text indices in ``token_refs``).
    k
        Tokens a latent.
    latents
        Which latents (ids in ``[0, d_sae)``); ``None`` means all of them, in id order.
    window
        Words shown either side of the token's word.

    Returns
    -------
    list of LatentContexts
        One per latent, in the order asked.

    Raises
    ------
    InvalidInputError, InvalidParameterError
        Mismatched lengths, a text index out of range, bad ``k``/``window``/``latents``.
    """
    if not isinstance(sae, SparseAutoencoder):
        raise InvalidParameterError(f"sae must be a SparseAutoencoder; got {type(sae).__name__}.")
    n = int(acts.shape[0]) if isinstance(acts, Tensor) else -1
    if len(token_refs) != n or len(tokens) != n:
        raise InvalidInputError(
            f"acts, token_refs and tokens must have one entry per token row; got {n}, {len(token_refs)} and "
            f"{len(tokens)}. Pass what collect_activations returned."
        )
    _check_pos_int("k", k)
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise InvalidParameterError(f"window must be an int >= 0; got {window!r}.")
    if latents is None:
        lat = list(range(sae.d_sae))
    else:
        lat = list(latents)
        bad = [i for i in lat if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < sae.d_sae]
        if bad or not lat:
            raise InvalidParameterError(
                f"latents must be a non-empty list of ints in [0, {sae.d_sae}); got {list(latents)!r}."
            )
    by_text: dict[int, list[tuple[int, int]]] = {}
    for row, (t, p) in enumerate(token_refs):
        if not 0 <= t < len(texts):
            raise InvalidInputError(f"token_refs[{row}] names text {t}, but there are {len(texts)} texts.")
        by_text.setdefault(t, []).append((p, row))
    place: dict[int, tuple[int, int]] = {}  # row -> (text, index within the text's row list)
    for t, items in by_text.items():
        items.sort()
        for j, (_, row) in enumerate(items):
            place[row] = (t, j)

    top = top_activating(sae, acts, k=k)  # one scan for every latent (a scan per asked latent costs more)
    out = []
    for latent in lat:
        vals = top.values[latent]
        live = vals > 0
        rows = top.indices[latent][live].tolist()
        ctx = []
        for row in rows:
            t, j = place[row]
            text_tokens = [tokens[r] for _, r in by_text[t]]
            ctx.append(_context(text_tokens, j, window))
        out.append(
            LatentContexts(
                latent=latent,
                density=float(top.density[latent]),
                values=vals[live],
                rows=rows,
                token_refs=[(int(token_refs[r][0]), int(token_refs[r][1])) for r in rows],
                tokens=[tokens[r] for r in rows],
                contexts=ctx,
            )
        )
    return out


# ---------------------------------------------------------------------------------------------- feature adapter
class SAEFeatureAdapter(TextClassifierAdapter):
    """A text model read through an SAE: scores are SAE features at block ``layer``, pooled over a text's tokens.

    Inputs are the packed ``(B, T, D + 1)`` tensors of :meth:`encode` (word embeddings + attention mask), as for
    :class:`~whybox.models.text.TextClassifierAdapter`, so ``whybox.explain(adapter, batch.inputs,
    "integrated_gradients", baseline=batch.baseline("pad"), target=j)`` attributes feature ``features[j]`` to
    the tokens (specials keep their embedding in the baseline and get exactly 0); ``target="latent i"`` names
    the column of latent i. Score column j is

    ``pool_{p ∈ ordinary tokens} f_{features[j]}(h_p)``, with ``h_p`` the output of block ``layer`` at token p.

    The ordinary tokens are told apart from the specials by position alone (the first and last attended tokens,
    as many as the tokenizer adds to one text: BERT 1 and 1), so the pooled set stays the same along an
    Integrated Gradients path whatever the path's token vectors are.

    Parameters
    ----------
    model, tokenizer
        As for :func:`whybox.adapt_text` (``from_text_adapter`` takes them from an adapter).
    sae
        The autoencoder; ``d_in`` must equal the model's hidden size.
    layer
        Block whose output the SAE reads (0-based; ``hidden_states[layer + 1]``).
    features
        A latent id (scores ``(B, 1)``) or several (``(B, n)``, one column each, in this order).
    pool
        ``"max"`` (default: a feature usually fires on a few tokens), ``"mean"`` or ``"sum"`` over the ordinary
        tokens (a text without one scores 0).
    readout
        ``"activation"``: ``f_i``, what the SAE outputs. A ReLU SAE's ``f_i`` is continuous with kinks, so
        Integrated Gradients converges more slowly (tiny BERT, 200 Gauss-Legendre steps: ``|δ|`` up to 0.6 % of
        ``f(x) − f(x′)`` with ``pool="mean"``, 2 % with ``"max"``, whose arg-max switches along the path); a TopK
        SAE's ``f_i`` *jumps* where latent i enters or leaves the top k, and gradients miss jumps (``|δ|`` up to
        96 % there). ``"relu"``: ``ReLU(z_i)``, the TopK gate dropped: continuous, and equal to ``f_i`` wherever
        latent i is among the top k (for a ReLU SAE it is ``f_i``): use it to attribute a TopK feature.
        ``"pre_activation"``: ``z_i = w_i·(h − b_d) + b_e,i``: smooth and signed, IG complete to rounding (spec
        §6: use it for "why did it not fire").
    max_length
        Truncation length of :meth:`encode`.

    The scores are feature values, not logits: the perturbation methods and metrics explain each value as it is
    (``score="logit"``, their default here), never a softmax over the features, and refuse ``score="prob"``.

    Shapes
    ------
    scores: (B, T, D + 1) -> (B, len(features)).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        sae: SparseAutoencoder,
        *,
        layer: int,
        features: int | Sequence[int] = 0,
        pool: str = "max",
        readout: str = "activation",
        max_length: int = 128,
    ) -> None:
        super().__init__(model, tokenizer, max_length=max_length)
        self.sae = _check_sae(sae, _hidden_size(model))
        self.block = _block(model, layer)
        self.layer = layer
        features = python_numbers(python_number(features))  # NumPy ids, ids as an array or a tensor: Python ints
        feats = [features] if isinstance(features, int) and not isinstance(features, bool) else features
        if (
            not isinstance(feats, Sequence)
            or not feats
            or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < sae.d_sae for i in feats)
        ):
            raise InvalidParameterError(
                f"features must be a latent id or a non-empty list of ids in [0, {sae.d_sae}); got {features!r}."
            )
        self.features = tuple(int(i) for i in feats)
        if pool not in POOLS:
            raise InvalidParameterError(f"pool must be one of {POOLS}; got {pool!r}.{did_you_mean(pool, POOLS)}")
        if readout not in READOUTS:
            raise InvalidParameterError(
                f"readout must be one of {READOUTS}; got {readout!r}.{did_you_mean(readout, READOUTS)}"
            )
        self.pool = pool
        self.readout = readout
        self.special_span = special_span(tokenizer)
        # the outputs are feature values, not class logits: the explained score is each value itself (never a
        # softmax over the features), and a string target names a latent, not one of the classifier's classes
        self.outputs_values = True
        self.values_described = f"SAE feature values (latents {list(self.features)} at block {layer})"
        self.output_names = [f"latent {i}" for i in self.features]

    @classmethod
    def from_text_adapter(cls, adapter: TextAdapter, sae: SparseAutoencoder, **kwargs: Any) -> SAEFeatureAdapter:
        """The same model and tokenizer as ``adapter`` (and its ``max_length`` unless given)."""
        adapter = _check_adapter(adapter)
        kwargs.setdefault("max_length", adapter.max_length)
        return cls(adapter.model, adapter.tokenizer, sae, **kwargs)

    def guard(self, mode: str = "eval") -> AbstractContextManager[None]:
        """The model's guard and the SAE's: both come back as they were (modes, ``requires_grad``, hooks)."""

        @contextmanager
        def both() -> Iterator[None]:
            with ExitStack() as stack:
                stack.enter_context(preserved(self.model, mode))
                stack.enter_context(preserved(self.sae, mode))
                yield

        return both()

    def feature_map(self, x: Tensor) -> Tensor:
        """Per-token readouts ``(B, T, n_features)`` (before pooling) at block ``layer``; 0 at specials and pads."""
        if x.ndim != 3:
            raise InvalidInputError(
                f"a text adapter takes packed inputs (B, T, D + 1) from adapter.encode(texts); got {tuple(x.shape)}."
            )
        e, m = x[..., :-1], x[..., -1]
        with _read_block(self.block) as box:
            self.model(inputs_embeds=e, attention_mask=(m > 0.5).to(torch.long))
        if "h" not in box:
            raise LayerError(f"block {self.layer} of {type(self.model).__name__} did not run in the forward pass.")
        return self._features(box["h"], m)

    def _features(self, h: Tensor, m: Tensor) -> Tensor:
        """Per-token readouts ``(B, T, n_features)`` of block outputs ``h`` ``(B, T, D)`` (mask channel ``m``)."""
        w = self.sae.W_d
        rows = h.reshape(-1, h.shape[-1]).to(w.dtype)
        z = self.sae.pre_activation(rows)
        if self.readout == "activation":
            val = self.sae.activate(z)
        elif self.readout == "relu":
            val = torch.relu(z)
        else:
            val = z
        idx = torch.tensor(self.features, device=val.device)
        val = val.index_select(1, idx).reshape(*h.shape[:2], len(self.features))
        keep = ordinary_positions(m, *self.special_span).unsqueeze(-1)
        return val * keep

    def scores(self, x: Tensor) -> Tensor:
        return self._pooled(self.feature_map(x), x[..., -1])

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Within the block, a forward pass of the model keeps block ``layer``'s output for
        :meth:`scores_from_output` (the raw block output that :meth:`scores` reads: GPT-2's last
        ``hidden_states`` entry comes after ``ln_f``)."""
        box: dict[str, Tensor] = {}

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            box.setdefault("h", output[0] if isinstance(output, tuple) else output)

        handle = self.block.register_forward_hook(hook)
        self._captured: dict[str, Tensor] | None = box
        try:
            yield
        finally:
            handle.remove()
            self._captured = None

    def scores_from_output(self, output: Any, mask: Tensor) -> Tensor:
        """The scores ``(B, n_features)`` from a full forward pass's output with ``output_hidden_states=True``: the
        block output kept by :meth:`capture` when the pass ran inside it, else ``hidden_states[layer + 1]`` (the
        block's output in BERT-style models): how the attention methods read this adapter's score (attention
        relevance follows the feature, not the classifier's logits)."""
        kept = getattr(self, "_captured", None)
        if kept and "h" in kept:
            h = kept["h"]
        else:
            hidden = getattr(output, "hidden_states", None)
            if hidden is None or len(hidden) <= self.layer + 1:
                raise ModelOutputError(
                    f"{type(self.model).__name__} returned no hidden_states[{self.layer + 1}] with "
                    "output_hidden_states=True."
                )
            h = hidden[self.layer + 1]
        m = mask.to(h.dtype)
        return self._pooled(self._features(h, m), m)

    def _pooled(self, val: Tensor, m: Tensor) -> Tensor:
        keep = ordinary_positions(m, *self.special_span).unsqueeze(-1)
        if self.pool == "sum":
            return val.sum(1)
        if self.pool == "mean":
            return val.sum(1) / keep.sum(1).clamp_min(1)
        top = val.masked_fill(~keep, -torch.inf).amax(1)
        return torch.where(keep.any(1), top, torch.zeros_like(top))


# ---------------------------------------------------------------------------------------------- logit -> features
@dataclass(frozen=True)
class PredictionFeatures:
    """One text's logit attributed to the SAE features at one layer (from :func:`prediction_to_features`).

    With ``m`` the target logit, ``x_p`` the output of block ``layer`` at ordinary token p, ``g_p = ∂m/∂x_p``,
    ``f_p`` the SAE features of ``x_p``, ``x̂_p`` its reconstruction and ``ε_p = x_p − x̂_p``:

    - ``attributions[j] = Σ_p f_{p,i} · ∂m/∂f_{p,i} = Σ_p f_{p,i} (d_i · g_p)`` for ``i = features[j]``;
    - ``bias = Σ_p b_d · g_p``; ``error = Σ_p ε_p · g_p``; ``special = Σ_{specials s} x_s · g_s``.

    Identity (exact up to rounding, since ``Σ_i f_{p,i} d_i = x̂_p − b_d``)::

        Σ_j attributions[j] + bias + error = Σ_p x_p · g_p       (ordinary tokens)
        ... + special                      = Σ_{attended t} x_t · g_t   (gradient × activation at the layer)

    Attributes
    ----------
    text, target, logit
        The text, the class explained and its logit.
    features
        (n,) long: every latent active on some ordinary token, by ``|attribution|`` descending (ties: lower id
        first); inactive latents have exactly 0 and are left out.
    attributions
        (n,) in the same order.
    bias, error, special
        The other terms above.
    error_share
        ``|error| / (Σ_j |attributions[j]| + |bias| + |error|)``: how much of the attribution mass at the
        ordinary tokens the SAE does not explain.
    """

    text: str
    target: int
    logit: float
    features: Tensor
    attributions: Tensor
    bias: float
    error: float
    special: float
    error_share: float


def prediction_to_features(
    adapter: TextClassifierAdapter,
    texts: str | Sequence[str],
    sae: SparseAutoencoder,
    *,
    layer: int,
    target: int | Sequence[int] | Tensor | None = None,
    batch_size: int = 16,
) -> list[PredictionFeatures]:
    """Attribute a classifier's logit to the SAE features at block ``layer`` (spec §6, "attribution to latents").

    The output of block ``layer`` is spliced at every ordinary token: ``x = W_d f + b_d + ε`` with ``f =
    encode(x)`` a leaf and ``ε = x − x̂`` held as a constant leaf, so the forward pass is unchanged (to one
    rounding) and one backward pass gives ``∂m/∂f_{p,i} = d_i · g_p`` and ``∂m/∂ε_p = g_p``. Feature i's
    attribution is gradient × activation summed over tokens, ``Σ_p f_{p,i} d_i · g_p`` (Marks et al. 2024's
    linear attribution to SAE features); :class:`PredictionFeatures` states the completeness identity.

    Parameters
    ----------
    adapter
        A classifier adapter from :func:`whybox.adapt_text` (e.g. ``MiniLMSentiment``); its scores are logits.
    texts
        One text or several.
    sae
        An SAE trained on this model's block-``layer`` activations (:func:`collect_activations`).
    layer
        The block.
    target
        The class: an int, one per text, or ``None`` for each text's predicted class.
    batch_size
        Texts a forward/backward pass.

    Returns
    -------
    list of PredictionFeatures
        One per text.

    Raises
    ------
    InvalidParameterError, InvalidInputError, InvalidTargetError, LayerError
        Bad arguments; a target out of range.

    References
    ----------
    Marks et al. 2024, "Sparse Feature Circuits"; Syed, Rager & Conmy 2023, "Attribution Patching Outperforms
    Automated Circuit Discovery".
    """
    if not isinstance(adapter, TextClassifierAdapter) or isinstance(adapter, SAEFeatureAdapter):
        raise InvalidParameterError(
            "adapter must be a classifier adapter from whybox.adapt_text(model, tokenizer) (its scores are the "
            f"logits); got {type(adapter).__name__}."
        )
    texts = _check_texts(texts)
    sae = _check_sae(sae, _hidden_size(adapter.model))
    block = _block(adapter.model, layer)
    _check_pos_int("batch_size", batch_size)
    targets: list[int] | None
    if target is None:
        targets = None
    elif isinstance(target, bool) or not isinstance(target, (int, Sequence, Tensor)):
        raise InvalidTargetError(f"target must be None, a class index or one per text; got {target!r}.")
    elif isinstance(target, int):
        targets = [target] * len(texts)
    else:
        targets = [int(t) for t in (target.reshape(-1).tolist() if isinstance(target, Tensor) else target)]
        if len(targets) != len(texts):
            raise InvalidTargetError(f"target must be an int or one per text ({len(texts)}); got {len(targets)}.")
    out: list[PredictionFeatures] = []
    with ExitStack() as stack:
        stack.enter_context(adapter.guard("eval"))
        stack.enter_context(preserved(sae, "eval"))
        stack.enter_context(torch.enable_grad())
        for s in range(0, len(texts), batch_size):
            chunk = texts[s : s + batch_size]
            tg = None if targets is None else targets[s : s + batch_size]
            if not getattr(adapter, "last_token", False):
                out.extend(_prediction_features_batch(adapter, block, sae, chunk, tg))
                continue
            # a decoder's classifier is scored one token length at a time (each row cut after its last token):
            # splice the SAE into one length's rows at a time, so the block sees the rows the mask indexes
            lengths = adapter.encode(chunk).attention_mask.sum(1).tolist()
            empty = [s + i for i, m in enumerate(lengths) if m == 0]
            if empty:  # no last token to read the class from
                raise InvalidInputError(
                    f"texts {empty[:8]} hold no tokens once tokenised (e.g. ''): a decoder's classifier reads its "
                    "class at a text's last token, so they have no prediction to explain; leave them out."
                )
            done: dict[int, PredictionFeatures] = {}
            for n in sorted(set(lengths)):
                rows = [i for i, m in enumerate(lengths) if m == n]
                part = _prediction_features_batch(
                    adapter, block, sae, [chunk[i] for i in rows], None if tg is None else [tg[i] for i in rows]
                )
                done.update(zip(rows, part, strict=True))
            out.extend(done[i] for i in range(len(chunk)))
    return out


def _prediction_features_batch(
    adapter: TextClassifierAdapter,
    block: nn.Module,
    sae: SparseAutoencoder,
    texts: list[str],
    targets: list[int] | None,
) -> list[PredictionFeatures]:
    batch = adapter.encode(texts)
    ordinary = ~batch.special_mask  # attended, not special
    special = batch.special_mask & (batch.attention_mask == 1)
    leaves: dict[str, Tensor] = {}
    w_d = sae.W_d.detach()
    b_d = sae.b_d.detach()

    def splice(h: Tensor) -> Tensor:
        u = h.detach().requires_grad_(True)  # specials keep their value; u's gradient is g there
        rows = u.detach()[ordinary]
        f = sae.encode(rows.to(w_d.dtype)).detach().requires_grad_(True)
        x_hat = (f @ w_d.T + b_d).to(h.dtype)
        err = (rows - x_hat).detach().requires_grad_(True)
        bi, ti = torch.nonzero(ordinary, as_tuple=True)
        spliced = torch.zeros_like(u).index_put((bi, ti), x_hat + err)
        leaves.update(u=u, f=f, err=err, bi=bi)
        return torch.where(ordinary.unsqueeze(-1), spliced, u)

    with _replace_block(block, splice):
        logits = adapter.scores(batch.inputs)
    k = logits.shape[1]
    if targets is None:
        tgt = logits.detach().argmax(1)
    else:
        bad = [t for t in targets if not 0 <= t < k]
        if bad:
            raise InvalidTargetError(f"target must be a class index in [0, {k - 1}]; got {bad[0]}.")
        tgt = torch.tensor(targets, device=logits.device)
    m = logits.gather(1, tgt[:, None]).squeeze(1)
    u, f, err, bi = leaves["u"], leaves["f"], leaves["err"], leaves["bi"]
    g_u, g_f, g_err = torch.autograd.grad(m.sum(), [u, f, err], allow_unused=True)
    m, u, f, err = m.detach(), u.detach(), f.detach(), err.detach()
    g_u = torch.zeros_like(u) if g_u is None else g_u
    g_f = torch.zeros_like(f) if g_f is None else g_f
    g_err = torch.zeros_like(err) if g_err is None else g_err
    b = len(texts)
    acc = torch.float64
    feat = torch.zeros(b, sae.d_sae, dtype=acc, device=f.device).index_add_(0, bi, (f * g_f).to(acc))
    bias = torch.zeros(b, dtype=acc, device=f.device).index_add_(0, bi, (g_err @ b_d.to(g_err.dtype)).to(acc))
    error = torch.zeros(b, dtype=acc, device=f.device).index_add_(0, bi, (err * g_err).sum(-1).to(acc))
    spec = ((u * g_u).sum(-1) * special).to(acc).sum(1)
    fired = torch.zeros(b, sae.d_sae, dtype=torch.long, device=f.device).index_add_(0, bi, (f > 0).long())
    results = []
    for r in range(b):
        ids = torch.nonzero(fired[r]).flatten()  # ascending ids; the stable sort keeps lower ids first on ties
        vals = feat[r, ids]
        o = torch.sort(-vals.abs(), stable=True).indices
        ids, vals = ids[o], vals[o]
        mass = float(vals.abs().sum()) + abs(float(bias[r])) + abs(float(error[r]))
        results.append(
            PredictionFeatures(
                text=texts[r],
                target=int(tgt[r]),
                logit=float(m[r]),
                features=ids,
                attributions=vals,
                bias=float(bias[r]),
                error=float(error[r]),
                special=float(spec[r]),
                error_share=abs(float(error[r])) / mass if mass > 0 else 0.0,
            )
        )
    return results
