"""Hugging Face text models as whybox adapters: explanations over tokens through the word embeddings.

The model's inputs are *packed*: a float tensor ``(B, T, D + 1)`` holding each token's word embedding
(``model.get_input_embeddings()(input_ids)``) and, in the last channel, the attention mask. The adapter unpacks
it and calls the model with ``inputs_embeds`` and ``attention_mask``; position and token-type embeddings are
added by the model as usual. A model whose forward takes ``input_ids`` and no ``inputs_embeds`` (CLIP's text towers)
gets the word vectors as its embedding module's output instead (a forward hook for the call), with stand-in
``input_ids`` that mark each row's last attended token as its end-of-text token, where CLIP pools
(:mod:`whybox.models._embeds`); other models without ``inputs_embeds``, which pool elsewhere (SigLIP's text towers
read the last position, a pad in a padded row), are refused. So every whybox method works on text unchanged:

- gradient methods differentiate at the word-embedding output (TRANSFORMERS.md §4; captum's
  ``LayerIntegratedGradients`` on ``get_input_embeddings()`` is the same quantity), and a baseline
  (:meth:`TextBatch.baseline`) keeps the special tokens and the mask channel identical to the input, so they
  get exactly zero;
- perturbation methods mask tokens or words (:meth:`TextBatch.token_features`, :meth:`TextBatch.word_features`)
  by replacing their embeddings with a fill (:meth:`TextBatch.fill`: the ``[MASK]``, ``[UNK]`` or pad
  embedding) through the masking engine; special tokens and pads are filled with themselves, so they never
  change and get exactly zero;
- the mask channel is a control, not a feature (``control_channels = 1``): every method's per-element attributions
  hold exactly 0 there (occlusion and feature ablation, which copy a token's or word's value onto its elements, would
  put it there; the models read the mask only as ``> 0.5``, so its gradient is 0 anyway), also where a fill given to
  :func:`whybox.explain` rewrites it (its own zero fill, element by element): the text options never do;
- :meth:`TextBatch.token_attributions` reduces ``(B, T, D + 1)`` attributions to ``(B, T)`` (sum over D:
  completeness is kept) and :meth:`TextBatch.word_attributions` aggregates subwords into words.

Nothing downloads: models and tokenizers are objects the caller loaded (from local folders).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from whybox.errors import InvalidInputError, InvalidParameterError, ModelOutputError, check_bool, did_you_mean
from whybox.explanation import Explanation
from whybox.models._embeds import check_word_vectors, embedding_output, stand_in_ids, takes_inputs_embeds
from whybox.models.adapter import (
    EmbeddingAdapter,
    TorchAdapter,
    check_references,
    declares_multilabel,
    described_type,
    embeddings_tensor,
)
from whybox.models.blackbox_text import BlackBoxText, BlackBoxTextAdapter
from whybox.models.targets import class_names

__all__ = [
    "BASELINES",
    "POOLINGS",
    "TextAttribution",
    "TextBatch",
    "TextClassifierAdapter",
    "TextEncoderAdapter",
    "TruncatedTextWarning",
    "adapt_text",
    "explain_text",
    "explain_text_options",
    "read_text_fills",
    "text_defaults",
    "text_replacement",
]

#: Replacement tokens for baselines and fills (``zero``: zero word vectors).
BASELINES = ("pad", "mask", "unk", "zero")
#: Sentence embeddings of an encoder: mean over attended tokens, the first token, the model's own pooled output.
POOLINGS = ("mean", "cls", "model")
_WORD_REDUCE = ("sum", "mean", "absmax")


@dataclass(frozen=True)
class TextBatch:
    """Tokenised texts and their packed model inputs.

    Shapes
    ------
    inputs: ``(B, T, D + 1)``; input_ids, attention_mask, special_mask: ``(B, T)``.
    """

    inputs: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    special_mask: torch.Tensor  # True at CLS/SEP/BOS/EOS and pads: never perturbed, attribution 0
    tokens: list[list[str]]
    word_ids: list[list[int | None]]
    texts: list[str]
    replacement_ids: dict[str, int | None]  # token id of "pad", "mask", "unk" (None when the tokenizer has none)
    embeddings: nn.Module  # the model's word-embedding module (for baselines and fills)
    word_texts: list[dict[int, str]] | None = None  # per row, each word's text as written (a fast tokenizer's)

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def _replace(self, kind: str | float, what: str) -> torch.Tensor:
        return replace_tokens(
            self.inputs, kind, self.replacement_ids, self.embeddings, self.special_mask, n_control=1, what=what
        )

    def baseline(self, kind: str = "pad") -> torch.Tensor:
        """An Integrated Gradients baseline ``(B, T, D + 1)``: every ordinary token replaced by the ``kind`` token's
        embedding (``"zero"``: a zero vector); specials, pads and the mask channel kept identical."""
        return self._replace(kind, "baseline")

    def fill(self, kind: str = "mask") -> torch.Tensor:
        """A masking-engine fill ``(B, T, D + 1)``: what a masked token becomes (as :meth:`baseline`)."""
        return self._replace(kind, "fill")

    def noise_mask(self) -> torch.Tensor:
        """``(B, T, D + 1)`` bool: the word vectors of the ordinary tokens, where SmoothGrad's noise may land (the
        specials, pads and the attention-mask channel stay as they are: noise on the mask channel would switch
        tokens on and off)."""
        out = torch.zeros(self.inputs.shape, dtype=torch.bool, device=self.inputs.device)
        out[..., :-1] = ~self.special_mask.to(self.inputs.device).unsqueeze(-1)
        return out

    def token_features(self) -> torch.Tensor:
        """Feature ids ``(B, T, 1)`` for perturbation methods: one feature per ordinary token (its position); the
        specials and pads of a row share one more feature (id ``T``), which never changes (the fill keeps them), so
        a padded row has the same features, in the same order, as the row alone."""
        t = self.inputs.shape[1]
        ids = torch.arange(t, device=self.inputs.device).view(1, t).expand(len(self), t)
        ids = torch.where(self.special_mask.to(self.inputs.device), torch.full_like(ids, t), ids)
        return ids.unsqueeze(-1).contiguous()

    def word_features(self) -> torch.Tensor:
        """Feature ids ``(B, T, 1)``: the subwords of a word share one feature (words ``0..W-1`` in reading order);
        specials and pads share one more (id ``W``), which never changes, so padding changes nothing."""
        t = self.inputs.shape[1]
        out = torch.empty(len(self), t, 1, dtype=torch.int64)
        for r, wids in enumerate(self.word_ids):
            n_words = 1 + max((w for w in wids if w is not None), default=-1)
            for i in range(t):
                w = wids[i] if i < len(wids) else None
                out[r, i, 0] = n_words if (w is None or bool(self.special_mask[r, i])) else w
        return out.to(self.inputs.device)

    def token_attributions(self, explanation: Explanation | torch.Tensor, reduce: str = "sum") -> torch.Tensor:
        """``(B, T)`` per-token attributions. Gradient methods: ``sum`` over the embedding dimensions (signed;
        completeness kept) or ``l2`` (unsigned norm), the mask channel left out. Perturbation methods over token or
        word features: the feature's value (copied onto its elements). Pads are 0. A plain tensor is read as
        per-element attributions unless its last dimension is 1."""
        a = explanation.attributions if isinstance(explanation, Explanation) else explanation
        if a.ndim != 3 or a.shape[:2] != self.inputs.shape[:2]:
            raise InvalidInputError(
                f"attributions must be (B, T, D + 1) or (B, T, 1) for this batch {tuple(self.inputs.shape)}; "
                f"got {tuple(a.shape)}."
            )
        if a.shape[-1] == 1 or (isinstance(explanation, Explanation) and _copies_values(explanation.method)):
            # perturbation methods over token or word features: every element of a token holds its feature's value
            out = a[..., 0]
        elif reduce == "sum":
            out = a[..., :-1].sum(-1)
        elif reduce == "l2":
            out = a[..., :-1].norm(dim=-1)
        else:
            raise InvalidParameterError(f"reduce must be 'sum' or 'l2'; got {reduce!r}.")
        return out * self.attention_mask.to(out.device, out.dtype)

    def word_spans(self) -> list[list[tuple[str, list[int]]]]:
        """Per row, its words in reading order, each with the positions of its tokens (specials left out); a
        word's text is its subwords joined ("##" dropped)."""
        rows = []
        for r, wids in enumerate(self.word_ids):
            groups: dict[int, list[int]] = {}
            for i, w in enumerate(wids):
                if w is not None and not bool(self.special_mask[r, i]):
                    groups.setdefault(w, []).append(i)
            rows.append([(self._word_text(r, w, groups[w]), groups[w]) for w in sorted(groups)])
        return rows

    def _word_text(self, r: int, w: int, positions: list[int]) -> str:
        """Word ``w`` of row ``r`` as written in the text (a fast tokenizer's character span: no byte-level BPE
        markers, no [UNK]), else its subwords joined ("##" dropped)."""
        spans = self.word_texts[r] if self.word_texts is not None and r < len(self.word_texts) else None
        if spans is not None and w in spans:
            return spans[w]
        return "".join(self.tokens[r][i].removeprefix("##") for i in positions)

    def word_attributions(
        self, explanation: Explanation | torch.Tensor, how: str | None = None, reduce: str = "sum"
    ) -> list[list[tuple[str, float]]]:
        """Per row, ``(word, value)`` pairs in order: subword values combined by ``how`` (``sum`` keeps
        completeness, ``mean``, ``absmax`` = the value of largest magnitude); specials left out. ``None``: as
        :func:`explain_text` combines them, ``sum`` for a method that gives each token its own value (gradients,
        attention, occlusion), a plain tensor or an unregistered method, ``mean`` for one that copies a word's value onto
        its tokens."""
        if how is None:
            method = explanation.method if isinstance(explanation, Explanation) else None
            how = "mean" if method is not None and _copies_values(method) and not _sums_tokens(method) else "sum"
        if how not in _WORD_REDUCE:
            raise InvalidParameterError(
                f"how must be one of {_WORD_REDUCE}; got {how!r}.{did_you_mean(how, _WORD_REDUCE)}"
            )
        tok = self.token_attributions(explanation, reduce=reduce).detach().to("cpu", torch.float64)
        rows = []
        for r, spans in enumerate(self.word_spans()):
            words = []
            for text, idx in spans:
                vals = tok[r, idx]
                if how == "sum":
                    v = float(vals.sum())
                elif how == "mean":
                    v = float(vals.mean())
                else:
                    v = float(vals[vals.abs().argmax()])
                words.append((text, v))
            rows.append(words)
        return rows


def _per_element(method: str) -> bool:
    """Whether ``method`` attributes every input element (gradient methods: sum them over D) or every token
    (attention methods) on its own, rather than copying one value per feature onto the feature's elements
    (perturbation methods): a word's value is then the sum over its subwords, not their mean."""
    from whybox.explainers.attention.explainers import AttentionExplainer
    from whybox.explainers.base import GradientExplainer
    from whybox.registry import EXPLAINERS

    return method in EXPLAINERS and issubclass(EXPLAINERS.get(method), (GradientExplainer, AttentionExplainer))


def _copies_values(method: str) -> bool:
    """Whether ``method`` is a registered method that copies one value onto every element of its feature (the
    perturbation methods); an unregistered one (a custom explainer's, a wrapped captum map) is read element by
    element, as a plain tensor."""
    from whybox.registry import EXPLAINERS

    return method in EXPLAINERS and not _per_element(method)


def _sums_tokens(method: str) -> bool:
    """Whether a word's value is the sum of its tokens' values under ``method``: every token carries its own value
    (gradient and attention methods, and occlusion, whose window is one token on text), rather than its word's copied
    value (the perturbation methods over word features)."""
    return _per_element(method) or method == "occlusion"


def word_pool(model: Any, method: Any) -> str | None:
    """How a metric pools a word's attribution elements into the word's value on ``model``'s packed text, as
    :func:`explain_text` reads the word: ``"mean"`` for a method that copies one value onto every element of its
    word (perturbation methods over word features: a sum would count a word of two subwords twice), ``"sum"`` for a
    gradient or attention method or occlusion (each token its own value) or a black box's presence rows (one
    element per word); ``None``
    for an explanation not made by a named method (the metric's default)."""
    from whybox.models.blackbox_text import BlackBoxTextAdapter

    if isinstance(model, BlackBoxTextAdapter):
        return "sum"
    if not isinstance(method, str):
        return None
    return "mean" if _copies_values(method) and not _sums_tokens(method) else "sum"


def replace_tokens(
    x: torch.Tensor,
    kind: str | float,
    replacement_ids: dict[str, int | None],
    embeddings: nn.Module,
    keep: torch.Tensor,
    *,
    n_control: int,
    what: str,
) -> torch.Tensor:
    """Packed inputs ``x`` ``(B, T, D + n_control)`` with every word vector replaced by the ``kind`` token's
    embedding (``"zero"``: zero vectors; a number: vectors of that number), except where ``keep`` (``(B, T)`` or
    ``(T,)`` bool) holds; the control channels (mask, read position) are left as they are. Shared by text batches
    and generation steps."""
    if not isinstance(kind, str) and not isinstance(kind, bool):  # a number: every element of the word vectors
        vec = torch.full((x.shape[-1] - n_control,), float(kind), dtype=x.dtype, device=x.device)
        return _replaced(x, vec, keep, n_control)
    if kind not in BASELINES:
        raise InvalidParameterError(
            f"{what} must be one of {BASELINES}; got {kind!r}.{did_you_mean(str(kind), BASELINES)}"
        )
    d = x.shape[-1] - n_control
    if kind == "zero":
        vec = torch.zeros(d, dtype=x.dtype, device=x.device)
    else:
        tok = replacement_ids.get(kind)
        if tok is None:
            have = [k for k, v in replacement_ids.items() if v is not None] + ["zero"]
            raise InvalidParameterError(
                f"{what}={kind!r} needs a {kind} token, which this tokenizer does not have; use one of {have}."
            )
        with torch.no_grad():
            vec = embeddings(torch.tensor([tok], device=x.device))[0].to(x.dtype)
    return _replaced(x, vec, keep, n_control)


def _replaced(x: torch.Tensor, vec: torch.Tensor, keep: torch.Tensor, n_control: int) -> torch.Tensor:
    """``x`` with every word vector ``vec`` except where ``keep`` holds, the control channels as they are."""
    d = x.shape[-1] - n_control
    out = x.clone()
    k = keep.to(x.device).unsqueeze(-1)
    out[..., :d] = torch.where(k, x[..., :d], vec.expand_as(x[..., :d]))
    return out


def check_pad_token(tokenizer: Any) -> None:
    """Refuse a tokenizer without a padding token, which whybox pads a batch of texts with (Hugging Face would raise
    its own ValueError in the middle of the call).

    Raises
    ------
    InvalidParameterError
        ``tokenizer.pad_token`` is ``None``; the message says how to set one.
    """
    if getattr(tokenizer, "pad_token", "") is None:
        raise InvalidParameterError(
            f"the tokenizer ({type(tokenizer).__name__}) has no padding token, which whybox pads texts with; "
            "set one, e.g. tokenizer.pad_token = tokenizer.eos_token (as Hugging Face does for GPT-2)."
        )


@contextmanager
def right_padded(tokenizer: Any) -> Iterator[None]:
    """Pad after each text within the block, whatever the tokenizer's ``padding_side`` (restored after).

    A left-padded row would shift its tokens' positions by its padding (the models read embeddings, or ids without
    position ids, so nothing offsets them from the mask: a text's scores would change with its batch), and a
    decoder's classifier reads each text's last token where its right padding starts."""
    side = getattr(tokenizer, "padding_side", "right")
    if side == "right":
        yield
        return
    tokenizer.padding_side = "right"
    try:
        yield
    finally:
        tokenizer.padding_side = side


def special_span(tokenizer: Any) -> tuple[int, int]:
    """How many special tokens a single text gets before and after its own tokens (BERT: 1 and 1; GPT-2: 0, 0)."""
    enc = tokenizer("a", return_special_tokens_mask=True)
    special = list(enc["special_tokens_mask"])
    pre = next((i for i, s in enumerate(special) if not s), len(special))
    suf = next((i for i, s in enumerate(reversed(special)) if not s), 0)
    return pre, suf


def ordinary_positions(mask: torch.Tensor, pre: int, suf: int) -> torch.Tensor:
    """(B, T) bool: attended positions other than the first ``pre`` and the last ``suf`` attended ones."""
    m = mask > 0.5
    rank = m.long().cumsum(1) - 1
    n = m.sum(1, keepdim=True)
    return m & (rank >= pre) & (rank < n - suf)


def _word_texts(enc: Any, texts: list[str], word_ids: list[list[int | None]]) -> list[dict[int, str]] | None:
    """Per row, each word's text as written, from a fast tokenizer's character spans (``None``: a slow tokenizer)."""
    to_chars = getattr(enc, "word_to_chars", None)
    if not callable(to_chars):
        return None
    out: list[dict[int, str]] = []
    try:
        for r, wids in enumerate(word_ids):
            row: dict[int, str] = {}
            for w in {w for w in wids if w is not None}:
                span = to_chars(r, w)
                if span is not None:
                    row[w] = texts[r][span.start : span.end].strip()
            out.append(row)
    except (ValueError, AttributeError, TypeError, IndexError):  # no character spans (a slow tokenizer)
        return None
    return out


class TruncatedTextWarning(UserWarning):
    """A text was cut at the adapter's ``max_length`` tokens: its end is neither read nor explained."""


class _TextMixin:
    """Tokenise, pack and unpack (shared by the classifier and the encoder adapters)."""

    model: nn.Module
    tokenizer: Any
    max_length: int
    #: the attention-mask channel is a control, not a feature: every method's per-element attributions are exactly 0
    #: there (occlusion and feature ablation would copy the token's value onto it)
    control_channels: ClassVar[int] = 1

    def _embeddings(self) -> nn.Module:
        get = getattr(self.model, "get_input_embeddings", None)
        emb = get() if callable(get) else None
        if not isinstance(emb, nn.Module):
            raise InvalidParameterError(
                f"{type(self.model).__name__} has no get_input_embeddings(); text adapters need a Hugging Face "
                "model (or one that provides it)."
            )
        return emb

    def encode(self, texts: str | Sequence[str]) -> TextBatch:
        """Tokenise ``texts`` (padded to the longest, truncated at ``max_length``) into a :class:`TextBatch`."""
        return self._encode(texts)

    def _encode(self, texts: str | Sequence[str], length: int | None = None) -> TextBatch:
        """:meth:`encode`, padded to ``length`` tokens when that is more than the longest text's (what these rows are
        in a batch with a longer text: a slice of that batch's explanation fits them)."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
            got = texts if not isinstance(texts, (list, tuple)) else [type(t).__name__ for t in texts][:5]
            raise InvalidInputError(f"texts must be a string or a non-empty list of strings; got {got!r}.")
        texts = list(texts)
        check_pad_token(self.tokenizer)
        with right_padded(self.tokenizer):
            enc = self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
                return_special_tokens_mask=True,
            )
            if length is not None and enc["input_ids"].shape[1] < length <= self.max_length:  # shorter texts: none cut
                enc = self.tokenizer(
                    texts,
                    padding="max_length",
                    truncation=True,
                    max_length=length,
                    return_tensors="pt",
                    return_special_tokens_mask=True,
                )
        self._warn_truncated(enc, texts)
        emb = self._embeddings()
        device = next(iter(emb.parameters())).device
        ids = enc["input_ids"].to(device)
        mask = enc["attention_mask"].to(device)
        special = enc["special_tokens_mask"].to(device).bool() | (mask == 0)
        with torch.no_grad():
            e = emb(ids)
        inputs = torch.cat([e, mask.unsqueeze(-1).to(e.dtype)], dim=-1).detach()
        try:
            word_ids = [list(enc.word_ids(i)) for i in range(len(texts))]
        except (ValueError, AttributeError):  # a slow tokenizer: every token its own word
            word_ids = [[None if bool(s) else i for i, s in enumerate(row)] for row in special.tolist()]
        tokens = [self.tokenizer.convert_ids_to_tokens(row) for row in enc["input_ids"].tolist()]
        word_texts = _word_texts(enc, texts, word_ids)
        return TextBatch(
            inputs, ids, mask, special, tokens, word_ids, texts, self._replacement_ids(), emb, word_texts=word_texts
        )

    def _replacement_ids(self) -> dict[str, int | None]:
        """The token ids of ``"pad"``, ``"mask"`` and ``"unk"`` (``None`` where the tokenizer has none)."""
        return {
            "pad": getattr(self.tokenizer, "pad_token_id", None),
            "mask": getattr(self.tokenizer, "mask_token_id", None),
            "unk": getattr(self.tokenizer, "unk_token_id", None),
        }

    def _special_span(self) -> tuple[int, int]:
        """:func:`special_span` of the tokenizer, worked out once (a metric call would tokenise again)."""
        span = getattr(self, "_span", None)
        if span is None:
            span = self._span = special_span(self.tokenizer)
        return span

    def packed_fill(self, x: torch.Tensor, kind: str | float | None = None) -> torch.Tensor:
        """The fill of packed inputs ``x`` ``(B, T, D + 1)`` that :meth:`TextBatch.fill` gives for their texts:
        every ordinary token's word vector replaced by the ``kind`` token's (default: [MASK], else [UNK], pad or
        zero vectors; a number: vectors of that number), specials, pads and the mask channel kept. Specials are
        told apart by position (the first and last attended tokens, as many as the tokenizer adds to one text), so
        the texts are not needed: the metrics' default fill for a text adapter."""
        if x.ndim != 3:
            raise InvalidInputError(f"packed inputs must be (B, T, D + 1); got shape {tuple(x.shape)}.")
        repl = self._replacement_ids()
        if kind is None:
            kind = next((k for k in ("mask", "unk", "pad") if repl[k] is not None), "zero")
        keep = ~ordinary_positions(x[..., -1], *self._special_span())
        return replace_tokens(x, kind, repl, self._embeddings(), keep, n_control=1, what="fill")

    def packed_noise_mask(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, D + 1)`` bool: where noise may land on packed inputs ``x``, the ordinary tokens' word vectors
        (specials by position, as :meth:`packed_fill`); never the mask channel, the specials or the pads."""
        if x.ndim != 3:
            raise InvalidInputError(f"packed inputs must be (B, T, D + 1); got shape {tuple(x.shape)}.")
        out = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
        out[..., :-1] = ordinary_positions(x[..., -1], *self._special_span()).unsqueeze(-1)
        return out

    def _warn_truncated(self, enc: Any, texts: list[str]) -> None:
        """Warn about texts cut at ``max_length`` tokens (a fast tokenizer keeps what it cut): their ends are neither
        read by the model nor explained."""
        cut = [i for i, e in enumerate(getattr(enc, "encodings", None) or []) if getattr(e, "overflowing", None)]
        if not cut:
            return
        limit = token_limit(self.model)
        if isinstance(limit, int) and limit <= self.max_length:
            fix = f"This model reads at most {limit} tokens (its position table): split the texts."
        else:
            most = f" (this model reads up to {limit})" if isinstance(limit, int) else ""
            fix = f"Pass a larger max_length to adapt_text{most}, or split the texts."
        warnings.warn(
            f"{len(cut)} of {len(texts)} texts (rows {cut[:10]}) are longer than max_length={self.max_length} tokens: "
            f"only their first {self.max_length} tokens are read and explained, the rest is dropped. {fix}",
            TruncatedTextWarning,
            stacklevel=3,
        )

    def _call(self, x: torch.Tensor) -> Any:
        if x.ndim != 3:
            raise InvalidInputError(
                f"a text adapter takes packed inputs (B, T, D + 1) from adapter.encode(texts); got {tuple(x.shape)}."
            )
        e, m = x[..., :-1], (x[..., -1] > 0.5).to(torch.long)
        if takes_inputs_embeds(self.model):
            return self.model(inputs_embeds=e, attention_mask=m)
        # CLIP's text towers take no inputs_embeds: the word vectors come out of their embedding module instead, and
        # stand-in ids mark each row's last attended token as its end-of-text token, where CLIP pools (a model that
        # pools elsewhere, SigLIP's text tower, is refused: its embedding would depend on the batch's padding)
        check_word_vectors(self.model)
        with embedding_output(self.model, lambda out: e.to(out.dtype)):
            return self.model(input_ids=stand_in_ids(self.model, m), attention_mask=m)


def reads_last_token(model: Any) -> bool:
    """Whether a Hugging Face sequence classifier is a decoder's (GPT-2, Llama, ...: a causal LM family, not a
    masked LM one), which scores each text at its last token: found from ``input_ids``, which whybox does not pass
    (it passes word embeddings), so a padded row would be read at a pad."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if not isinstance(model_type, str) or not type(model).__name__.endswith("ForSequenceClassification"):
        return False
    try:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        )
    except ImportError:  # pragma: no cover - transformers is there whenever such a model is
        return False
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def token_limit(model: Any) -> int | None:
    """The most tokens ``model`` can read: its position table (``config.max_position_embeddings``) less the positions
    an embedding with a ``padding_idx`` skips (RoBERTa's start at ``padding_idx + 1``); that of its ``encoder`` for
    a wrapper without a config (whybox's MiniLM sentiment model); ``None`` when unknown."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if (
        limit is None
        and getattr(model, "config", None) is None
        and isinstance(getattr(model, "encoder", None), nn.Module)
    ):
        return token_limit(model.encoder)
    if not isinstance(limit, int) or isinstance(limit, bool) or not isinstance(model, nn.Module):
        return None
    for m in model.modules():
        pad = getattr(m, "padding_idx", None)
        if hasattr(m, "position_embeddings") and isinstance(pad, int) and not isinstance(pad, bool):
            return max(1, limit - (pad + 1))
    return limit


class TextClassifierAdapter(_TextMixin, TorchAdapter):
    """A Hugging Face sequence classifier (``...ForSequenceClassification``) and its tokenizer; scores are the
    logits ``(B, K)``. A decoder's classifier (:func:`reads_last_token`) is scored at each text's last token: rows
    of one length at a time, cut after their last token (exact under causal attention, which never reads ahead)."""

    def __init__(self, model: nn.Module, tokenizer: Any, *, output: Any = "logits", max_length: int = 128) -> None:
        super().__init__(model, output=output)
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.last_token = reads_last_token(model)

    def forward(self, x: torch.Tensor) -> Any:
        return self._call(x)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        if not self.last_token or x.ndim != 3:
            return super().scores(x)
        attended = x[..., -1] > 0.5
        t = x.shape[1]
        ends = torch.where(attended, torch.arange(1, t + 1, device=x.device), 0).amax(1).clamp_min(1)  # (B,)
        if bool((ends == t).all()):
            return super().scores(x)
        parts, order = [], []
        for end in torch.unique(ends).tolist():
            rows = (ends == end).nonzero().flatten()
            parts.append(super().scores(x[rows, :end]))
            order.append(rows)
        out = torch.cat(parts)
        return out[torch.argsort(torch.cat(order))]


class TextEncoderAdapter(_TextMixin, EmbeddingAdapter):
    """A sentence encoder (a Hugging Face ``AutoModel``) with sentence-transformers pooling, or the model's own
    (``pooling="model"``: a CLIP text tower's ``text_embeds``); scores are the cosine similarities of the sentence
    embedding to ``references`` (a reference sentence's embedding, or several)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        references: torch.Tensor,
        pooling: str = "mean",
        normalize: bool = True,
        max_length: int = 128,
    ) -> None:
        super().__init__(model, references=references, similarity="cosine")
        if pooling not in POOLINGS:
            raise InvalidParameterError(
                f"pooling must be one of {POOLINGS}; got {pooling!r}.{did_you_mean(str(pooling), POOLINGS)}"
            )
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = check_bool("normalize", normalize)
        self.max_length = int(max_length)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self._call(x), (x[..., -1] > 0.5).to(torch.long))

    def pool(self, output: Any, attention_mask: torch.Tensor) -> torch.Tensor:
        """The sentence embeddings ``(B, D)`` of the encoder's ``output``: its ``last_hidden_state`` pooled (``"mean"``,
        ``"cls"``), or (``"model"``) its own ``text_embeds`` (CLIPTextModelWithProjection: the projection of the
        end-of-text token's final state), else its ``pooler_output`` (CLIPTextModel: that state itself)."""
        if self.pooling == "model":
            u = next(
                (v for v in (getattr(output, k, None) for k in ("text_embeds", "pooler_output")) if v is not None),
                None,
            )
            if not isinstance(u, torch.Tensor) or u.ndim != 2:
                raise ModelOutputError(
                    f"pooling='model' reads the encoder's own sentence embedding (text_embeds or pooler_output), but "
                    f"{type(self.model).__name__} returned {type(output).__name__} without a (B, D) one; pass "
                    "pooling='mean' or 'cls' to pool its last_hidden_state."
                )
            return torch.nn.functional.normalize(u, dim=-1) if self.normalize else u
        h = getattr(output, "last_hidden_state", None)
        if h is None:
            raise ModelOutputError(f"the encoder returned {type(output).__name__} without last_hidden_state.")
        if self.pooling == "cls":
            u = h[:, 0]
        else:  # sentence-transformers mean pooling over attended tokens (CLS and SEP included)
            m = attention_mask.to(h.dtype).unsqueeze(-1)
            u = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(u, dim=-1) if self.normalize else u


def adapt_text(
    model: nn.Module,
    tokenizer: Any,
    *,
    kind: str = "classifier",
    references: str | Sequence[str] | torch.Tensor | np.ndarray | None = None,
    pooling: str | None = None,
    max_length: int = 128,
) -> TextClassifierAdapter | TextEncoderAdapter:
    """Wrap a Hugging Face text model and its tokenizer.

    Parameters
    ----------
    model, tokenizer
        Loaded by the caller (``from_pretrained`` on a local folder; nothing downloads here).
    kind
        ``"classifier"``: scores are the model's logits. ``"multilabel"``: logits of independent labels (each label's
        sigmoid is its probability; also what a model whose config has ``problem_type="multi_label_classification"``
        gets). ``"embedding"``: a sentence encoder; scores are cosine similarities of the (pooled) sentence embedding
        to ``references``.
    references
        For ``kind="embedding"``: a sentence (or sentences, one score each) whose embeddings are the targets, or
        embeddings ``(D,)`` / ``(K, D)``: a tensor, or a NumPy array of numbers (what a sentence-transformers
        ``encode()`` returns), read as a tensor of its dtype. A NumPy array of strings holds sentences. A reference sentence also names its score: ``target="a sad story"``.
    pooling
        Sentence embedding of an encoder: ``"mean"`` over attended tokens (sentence-transformers), ``"cls"``, or
        ``"model"``: the model's own, its output's ``text_embeds`` (CLIPTextModelWithProjection: the projection of the
        end-of-text token's final state, what CLIP compares with images), else its ``pooler_output``
        (CLIPTextModel: that state). ``None`` (default): ``"model"`` for a model whose forward takes ``input_ids``
        and no ``inputs_embeds`` (CLIP's text towers, which whybox gives word vectors through their embedding
        module), ``"mean"`` otherwise.
    max_length
        Truncation length of :meth:`encode`.

    Raises
    ------
    InvalidParameterError
        Among others: ``model``'s forward takes no ``inputs_embeds`` and it does not pool the end-of-text token as
        CLIP does (:data:`whybox.models._embeds.END_OF_TEXT_POOLED`: the text towers of CLIP, CLIPSeg, GroupViT,
        OwlViT, OWLv2, X-CLIP, MetaCLIP 2 and AIMv2). SigLIP's text towers, which pool the last position (a pad in a
        padded row), are not supported yet.
    """
    if not isinstance(model, nn.Module):
        raise InvalidParameterError(
            f"model must be a torch.nn.Module (a Hugging Face model); got {type(model).__name__}."
        )
    if not callable(tokenizer):
        raise InvalidParameterError(f"tokenizer must be a Hugging Face tokenizer; got {type(tokenizer).__name__}.")
    check_word_vectors(model)  # a model without inputs_embeds: only one pooling where stand-in ids mark the text's end
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise InvalidParameterError(
            f"max_length must be a positive int, the number of tokens a text is cut to; got {max_length!r}."
        )
    count = getattr(tokenizer, "num_special_tokens_to_add", None)
    specials = int(count(pair=False)) if callable(count) else 0
    if max_length <= specials:  # the tokenizer would then not cut at all (and no warning would say so)
        raise InvalidParameterError(
            f"max_length={max_length} leaves no room for a token beside the tokenizer's {specials} special tokens; "
            f"pass at least {specials + 1} (the default is 128)."
        )
    limit = token_limit(model)
    if limit is not None and max_length > limit:  # the position table ends there: longer texts are cut (and warned)
        max_length = limit
    if kind in ("classifier", "multilabel") and (references is not None or pooling not in (None, "mean")):
        given = ", ".join(
            f"{k}={v!r}" for k, v in (("references", references), ("pooling", pooling)) if v not in (None, "mean")
        )
        raise InvalidParameterError(
            f"{given}: references= and pooling= apply to kind='embedding' (a sentence encoder) only; a "
            f"kind={kind!r} model's scores are its logits. Leave them out, or pass kind='embedding'."
        )
    if kind in ("classifier", "multilabel"):
        adapter = TextClassifierAdapter(model, tokenizer, max_length=max_length)
        adapter.kind = "multilabel" if kind == "multilabel" or declares_multilabel(model) else "classifier"
        return adapter
    if kind != "embedding":
        raise InvalidParameterError(f"kind must be 'classifier', 'multilabel' or 'embedding'; got {kind!r}.")
    if references is None:
        raise InvalidParameterError(
            "kind='embedding' needs references=: a reference sentence, several, or their embeddings (D,) / (K, D)."
        )
    if isinstance(references, np.ndarray) and references.dtype.kind in "US":  # sentences in an array
        references = references.tolist()
    references = embeddings_tensor(references)  # a NumPy array of embeddings (a sentence encoder's encode())
    sentences: str | list[str] | None = None
    if isinstance(references, str):
        sentences = references
    elif isinstance(references, (list, tuple)) and references and all(isinstance(r, str) for r in references):
        sentences = list(references)
    if not isinstance(references, torch.Tensor) and sentences is None:
        raise InvalidParameterError(
            "references must be a reference sentence, a non-empty list of sentences, or their embeddings (D,) / "
            f"(K, D) as a tensor or a NumPy array of numbers; got {described_type(references)}. Pass the sentences "
            "themselves, or the encoder's embeddings of them (torch.tensor of a list of numbers)."
        )
    if pooling is None:  # CLIP's text towers: their own sentence embedding (the end-of-text token's, projected)
        pooling = "mean" if takes_inputs_embeds(model) else "model"
    placeholder = torch.zeros(1)
    enc = TextEncoderAdapter(model, tokenizer, references=placeholder, pooling=pooling, max_length=max_length)
    if sentences is not None:
        batch = enc.encode(sentences)
        with enc.guard("eval"), torch.no_grad():
            refs = enc.embed(batch.inputs)
        enc.output_names = [sentences] if isinstance(sentences, str) else sentences
    else:
        refs = torch.as_tensor(references)  # a tensor already (refused above otherwise)
    if refs.ndim not in (1, 2):
        raise InvalidParameterError(
            f"references must be text(s) or embeddings of shape (D,) or (K, D); got shape {tuple(refs.shape)}."
        )
    check_references(refs)
    enc.references = (refs.unsqueeze(0) if refs.ndim == 1 else refs).detach()
    return enc


@dataclass(frozen=True)
class TextAttribution:
    """What :func:`explain_text` returns: the explanation of the packed inputs, the batch, and per-row
    ``(word, value)`` pairs (``tokens``: ``(token, value)`` pairs) in reading order, specials left out (a black-box
    text model's words are its tokens)."""

    explanation: Explanation
    batch: TextBatch | BlackBoxText
    words: list[list[tuple[str, float]]]
    tokens: list[list[tuple[str, float]]]
    #: the model's output names (``config.id2label``, a black box's labels), for display; ``None``: indices only
    labels: list[str] | None = None

    def _rows(self) -> list[tuple[str, list[str], list[float]]]:
        def name(t: int) -> str:
            known = self.labels is not None and 0 <= t < len(self.labels)
            return f"class {t} ({self.labels[t]})" if known else f"class {t}"  # type: ignore[index]

        target = self.explanation.target.tolist()
        return [
            (f"text {r}, {name(target[r])}", [w for w, _ in row], [v for _, v in row])
            for r, row in enumerate(self.words)
        ]

    def to_html(self, *, title: str | None = None, scale: float | None = None) -> str:
        """A self-contained page of every text's words coloured by their values (red: for the explained class,
        blue: against it; :func:`whybox.report.render_tokens_page`); ``scale``: one scale for every text."""
        from whybox.report.tokens import render_tokens_page

        return render_tokens_page(
            self._rows(), title=title or f"{self.explanation.method}: word attributions", scale=scale, words=True
        )

    def _repr_html_(self) -> str:
        """What a notebook shows: each text's words coloured by their values."""
        from whybox.report.tokens import render_tokens_html

        return "".join(render_tokens_html(t, v, title=h, words=True) for h, t, v in self._rows())


def text_defaults(method: str, batch: TextBatch | BlackBoxText, *, replace: str | None = None) -> dict[str, Any]:
    """The options that make ``method`` act on text: a baseline for Integrated Gradients (``replace``, default the
    pad token, else zero vectors); word features (LIMA: word regions) and a fill (``replace``, default [MASK],
    else [UNK]/pad/zero) for methods that take ``features`` / ``regions`` and ``fill``; occlusion slides a
    one-token window (TRANSFORMERS.md §4: window 1, stride 1); SmoothGrad adds its noise to the ordinary tokens'
    word vectors only (:meth:`TextBatch.noise_mask`) and averages gradient × input: the sum over the embedding
    dimensions of a signed gradient is 0 wherever a LayerNorm reads the word vectors first (BERT and its kin),
    so a plain SmoothGrad would give every word 0. For a black-box text model's :class:`BlackBoxText`: its words
    as features (LIMA: regions) and every word removed as the fill."""
    import inspect

    from whybox.registry import EXPLAINERS

    cls = EXPLAINERS.get(method)
    names = {
        p.name
        for c in cls.__mro__
        if "__init__" in c.__dict__
        for p in inspect.signature(c.__dict__["__init__"]).parameters.values()
    }
    if isinstance(batch, BlackBoxText):  # a function of strings: presence rows, one feature per word
        opts: dict[str, Any] = {}
        if "features" in names:
            opts["features"] = batch.features
        if "keep_null" in names:  # LIME: the pads and the index column (never perturbed) out of the surrogate
            opts["keep_null"] = False
        if "regions" in names:
            opts["regions"] = batch.features
            if "map" in names:
                opts["map"] = "gain"
        if "fill" in names:
            opts["fill"] = batch.fill()
        return opts
    have = [k for k in ("mask", "unk", "pad") if batch.replacement_ids.get(k) is not None] + ["zero"]
    out: dict[str, Any] = {}
    if "baseline" in names:
        kind = replace or ("pad" if "pad" in have else "zero")
        out["baseline"] = batch.baseline(kind)
    if "features" in names:
        out["features"] = batch.word_features()
    if "keep_null" in names:  # LIME: the specials and pads (never perturbed) out of the surrogate
        out["keep_null"] = False
    if "regions" in names:  # LIMA: words are the regions of the subset search, valued by their marginal gain
        out["regions"] = batch.word_features()  # (a rank map would also rank the never-changing CLS and SEP)
        if "map" in names:
            out["map"] = "gain"
    if "fill" in names:
        out["fill"] = batch.fill(replace or have[0])
    if "window" in names and "stride" in names:  # occlusion: one token at a time (window 1, stride 1 over tokens)
        width = int(batch.inputs.shape[-1])
        out["window"] = (1, width)
        out["stride"] = (1, width)
    if "noise_mask" in names:  # SmoothGrad
        out["noise_mask"] = batch.noise_mask()
        out["base"] = "input_x_gradient"
    return out


def text_replacement(
    adapter: Any, x: torch.Tensor, value: Any, *, option: str = "fill", batch: TextBatch | None = None, via: str = ""
) -> Any:
    """What a removed word becomes on a text adapter's packed inputs ``x`` when ``option`` (a perturbation method's
    or a metric's ``fill``, Integrated Gradients' ``baseline``) is given as a name or a number, as every text option
    reads it: a token name (``"mask"``, ``"unk"``, ``"pad"``) or ``"zero"``: that token's word vector (zeros) in place
    of each ordinary token's; a number: word vectors of that number; CLS, SEP, the pads and the attention-mask column
    kept (they never change, and get exactly 0). ``batch``: the texts' :class:`TextBatch` (its specials as the
    tokenizer marks them; else told apart by position, :meth:`~_TextMixin.packed_fill`). A tensor, a callable or a
    row per input is returned as given (the caller's own fill).

    Raises
    ------
    InvalidParameterError
        Another name (``"mean"``, ``"blur"``, ...) or a non-finite number, which would rewrite the specials, the pads
        and the mask column; any name or number on a function of strings (it would rewrite its rows' text index, so
        they would read another text's words). ``via`` names the option the message points to instead
        (:func:`explain_text`'s ``"replace"``).
    """
    from whybox.models.inputs import python_number

    value = python_number(value)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return value
    if isinstance(adapter, BlackBoxTextAdapter):
        raise InvalidParameterError(
            f"{option}={value!r} on a function of strings would rewrite its rows' text index (they would read another "
            f"text's words); its removed words are dropped from the text: leave {option} out."
        )
    if (isinstance(value, str) and value not in BASELINES) or (isinstance(value, float) and not np.isfinite(value)):
        tensor = f"batch.{'baseline' if option == 'baseline' else 'fill'}('unk')"
        if via:
            fix = (
                f"say what a removed word becomes with {via}= one of {BASELINES} (that token's word vector; 'zero': "
                f"zero vectors), or pass {option}= one of those, a number (each element of its word vector) or a "
                f"tensor such as {tensor}"
            )
        else:
            fix = (
                f"a removed word becomes one of {BASELINES} (that token's word vector; 'zero': zeros), a number (each "
                f"element of its word vector), or pass a tensor such as {tensor}"
            )
        hint = did_you_mean(value, BASELINES) if isinstance(value, str) else ""
        raise InvalidParameterError(
            f"{option}={value!r} on a text model would also rewrite CLS, SEP, the pads and the attention-mask column; "
            f"{fix}.{hint}"
        )
    if batch is not None:
        return batch._replace(value, option)
    return adapter.packed_fill(x, kind=value)


def _check_replace(replace: Any, method: str, batch: TextBatch | BlackBoxText) -> None:
    """``replace=`` of :func:`explain_text`: a token name the method reads (as its baseline or fill), never ignored."""
    from whybox.explainers.base import _keyword_options
    from whybox.registry import EXPLAINERS

    if isinstance(batch, BlackBoxText):
        raise InvalidParameterError(
            f"replace={replace!r} does not apply to a function of strings: its removed words are dropped from the "
            "text. Leave replace out."
        )
    if replace not in BASELINES:
        raise InvalidParameterError(
            f"replace must be one of {BASELINES} (the token a removed word becomes); got {replace!r}."
            f"{did_you_mean(str(replace), BASELINES)}"
        )
    names = set(_keyword_options(EXPLAINERS.get(method)))
    if not {"baseline", "fill"} & names:
        raise InvalidParameterError(
            f"replace={replace!r} sets the token a removed word becomes, but {method!r} removes no word (it has no "
            "baseline or fill); leave replace out."
        )


def _check_replace_agrees(replace: str, method: str, params: dict[str, Any]) -> None:
    """``replace=`` beside a ``fill=`` or ``baseline=`` of ``method``: both say what a removed word becomes, so a name
    or number that means another word vector than ``replace`` (``fill="zero"`` beside ``replace="unk"``), a tensor
    or a callable is refused; a name or number that means the same (``"unk"`` and ``"unk"``, ``"zero"`` and
    ``0.0``) passes."""
    from whybox.explainers.base import _keyword_options
    from whybox.models.inputs import python_number
    from whybox.registry import EXPLAINERS

    takes = set(_keyword_options(EXPLAINERS.get(method)))
    for k in ("fill", "baseline"):
        v = python_number(params.get(k))
        if k not in takes or v is None:
            continue  # not given, or None (the text default: replace's)
        if isinstance(v, torch.Tensor) or callable(v):  # its own vectors: replace= would be dropped without a word
            raise InvalidParameterError(
                f"replace={replace!r} and {k}= (a {'tensor' if isinstance(v, torch.Tensor) else 'callable'}) both say "
                f"what a removed word becomes; give one of them (the {k} alone, or replace= alone: one of "
                f"{BASELINES})."
            )
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            continue  # refused by the fill's own check
        same = v == replace if isinstance(v, str) else (replace == "zero" and v == 0)
        if not same:
            raise InvalidParameterError(
                f"replace={replace!r} and {k}={v!r} both say what a removed word becomes, and they differ; give "
                f"one of them (replace= one of {BASELINES}, or {k}= one of those names, a number or a tensor)."
            )


def explain_text_options(
    adapter: Any,
    method: str,
    batch: TextBatch | BlackBoxText,
    params: dict[str, Any],
    /,
    replace: str | None = None,
) -> dict[str, Any]:
    """The options :func:`explain_text` explains ``batch`` (``adapter.encode(texts)``) with: the text options
    (:func:`text_defaults`, ``replace=`` as it reads it) under the method's ``params``, a ``fill`` or ``baseline``
    name or number among them read as :func:`text_replacement` reads it (``None``: the text default). The command
    line explains a text file with them, so ``whybox evaluate`` scores what ``whybox explain --text`` explains.

    Raises
    ------
    InvalidParameterError
        ``replace`` that is no token name or that the method does not read, or that differs from a ``fill`` or
        ``baseline`` name or number also given; a ``fill`` or ``baseline`` that :func:`text_replacement` refuses.
    """
    if replace is not None:
        _check_replace(replace, method, batch)
        _check_replace_agrees(replace, method, params)
    return {**text_defaults(method, batch, replace=replace), **_text_options(adapter, method, batch, params)}


def read_text_fills(adapter: Any, x: torch.Tensor, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` of ``method`` on a text adapter's packed rows ``x`` with a ``fill`` or ``baseline`` name or number
    read as :func:`explain_text` reads it (:func:`text_replacement` on those rows: the removed words' vectors only);
    other values, ``None`` among them, as they are. A run's method options (``whybox compare``) on its shards."""
    from whybox.explainers.base import _keyword_options
    from whybox.registry import EXPLAINERS

    takes = set(_keyword_options(EXPLAINERS.get(method)))
    out = dict(params)
    for k in ("fill", "baseline"):
        if k in out and k in takes and out[k] is not None:
            out[k] = text_replacement(adapter, x, out[k], option=k)
    return out


@dataclass(frozen=True)
class ReRunFill:
    """A ``fill`` or ``baseline`` name or number of a metric's re-runs of a method on an adapter's packed rows
    (``explainer_params``), read on the rows each re-run explains by ``replace`` (:func:`text_replacement` for a text
    adapter, a causal LM's ``step_replacement`` for its step rows), however many."""

    adapter: Any
    value: str | float
    option: str
    replace: Callable[..., Any] = text_replacement

    def __call__(self, x: torch.Tensor) -> Any:
        return self.replace(self.adapter, x, self.value, option=self.option)

    def __repr__(self) -> str:
        return repr(self.value)


def rerun_fills(
    adapter: Any, x: torch.Tensor, rerun: dict[str, Any], replace: Callable[..., Any] = text_replacement
) -> dict[str, Any]:
    """``explainer_params`` of a metric that re-runs a method on ``adapter``'s packed rows ``x``: a ``fill`` or
    ``baseline`` name or number read by ``replace`` (checked now, not in the first re-run), on the rows of each
    re-run (:class:`ReRunFill`); other values as they are."""
    from whybox.models.inputs import python_number

    out = dict(rerun)
    for k in ("fill", "baseline"):
        v = python_number(out.get(k))
        if isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            replace(adapter, x, v, option=k)
            out[k] = ReRunFill(adapter, v, k, replace)
    return out


def _text_options(adapter: Any, method: str, batch: TextBatch | BlackBoxText, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` of :func:`explain_text` with a ``fill`` or ``baseline`` of ``method`` given as a name or a number
    read as the text options read it (:func:`text_replacement`: the removed words' vectors only, the specials, pads
    and mask column kept), and one given as ``None`` left to the text default (the method's own default would rewrite
    them)."""
    from whybox.explainers.base import _keyword_options
    from whybox.registry import EXPLAINERS

    out = dict(params)
    takes = set(_keyword_options(EXPLAINERS.get(method)))
    for k in ("fill", "baseline"):
        if k not in out or k not in takes:  # an option the method does not take: its unknown-option error
            continue
        if out[k] is None:
            del out[k]
            continue
        text_batch = batch if isinstance(batch, TextBatch) else None
        out[k] = text_replacement(adapter, batch.inputs, out[k], option=k, batch=text_batch, via="replace")
    return out


def explain_text(
    adapter: TextClassifierAdapter | TextEncoderAdapter | BlackBoxTextAdapter,
    texts: str | Sequence[str],
    method: str,
    /,
    *,
    target: Any = None,
    replace: str | None = None,
    **params: Any,
) -> TextAttribution:
    """Explain ``texts`` with ``method`` through ``adapter`` (from :func:`adapt_text`): tokenise, fill in the text
    options (:func:`text_defaults`; ``params`` win), explain, reduce to tokens and words (``sum`` over
    subwords for gradient methods; one value per word for perturbation methods). For an encoder with one reference
    sentence the score is the similarity itself: ``score=None``, every method's default where it is not ``"logit"``,
    reads the raw score of a one-output model (a probability over one reference would be 1 whatever the words).
    A :class:`~whybox.models.blackbox_text.BlackBoxTextAdapter` (a function of strings) is explained over its words
    with the perturbation methods.

    What a removed word becomes is ``replace=`` (a token name or ``"zero"``); a method's ``fill=`` or ``baseline=``
    given as one of those names or a number means the same (:func:`text_replacement`: ``fill="zero"`` is
    ``replace="zero"``, ``fill=0.5`` word vectors of 0.5), so CLS, SEP, the pads and the attention-mask column never
    change and get exactly 0; other names (``"mean"``, ``"blur"``) are refused, as is any name or number on a function
    of strings (its removed words are dropped from the text). ``None`` is the text default; a tensor is used as
    given. ``replace=`` beside a ``fill=`` or ``baseline=`` name or number that means another word vector is refused
    (one of them would be dropped); one that means the same (``replace="zero"``, ``fill=0.0``) passes."""
    from whybox.api import explain

    batch = adapter.encode(texts)
    opts = explain_text_options(adapter, method, batch, params, replace)
    e = explain(adapter, batch.inputs, method, target=target, **opts)
    labels = class_names(adapter)
    if isinstance(batch, BlackBoxText):
        words = batch.word_values(e)
        return TextAttribution(e, batch, words, words, labels)
    words = batch.word_attributions(e)  # as the method gives a word its value
    tok = batch.token_attributions(e).detach().to("cpu", torch.float64)
    tokens = [
        [(batch.tokens[r][i], float(tok[r, i])) for i in range(tok.shape[1]) if not bool(batch.special_mask[r, i])]
        for r in range(len(batch))
    ]
    return TextAttribution(e, batch, words, tokens, labels)
