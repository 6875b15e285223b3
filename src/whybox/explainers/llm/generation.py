"""Generation attribution for causal language models (TRANSFORMERS.md §5, inseq-style), with any whybox method.

A sequence z = prompt (P tokens) ⊕ continuation y (G tokens). Step t (0-based) scores the token y_t = z[P + t] from
the next-token logits at position p − 1 = P + t − 1 and attributes that score to the earlier tokens z_{<P+t}. The
causal mask makes logits[p − 1] independent of z_{≥p}, so the G steps become G *rows* of one batch (z repeated,
row t reading position P + t − 1) and every registered method explains them at once, chunked by its
``batch_size`` as usual:

- :class:`CausalLMAdapter` takes *packed* inputs ``(B, T, D + 2)``: the word embeddings, the attention mask and a
  *read-position channel* (the same value in every token of a row: the index p − 1 whose next-token logits the row
  is scored on). Its scores are the chosen score space over the vocabulary at each row's read position, ``(B, V)``
  (``log_prob`` = log-softmax, the default; ``prob``; ``logit``), minus the contrast token's score when contrastive.
- :class:`GenerationBatch` holds the G rows; its baselines and fills change only the word vectors of the tokens a
  row attributes to (never special tokens, the tokens at or after the row's target, nor the two control channels),
  so everything they keep gets exactly zero.
- :func:`attribute_generation` tokenises (or generates once, greedily), explains and returns the ``(P + G, G)``
  attribution matrix, NaN where a position is at or after the step's target (undefined).

Contrastive attribution (Yin & Neubig 2022; inseq ``contrast_prob_diff`` / ``contrast_logits_diff``): with a
contrast continuation c of the same length, step t scores s(y_t) − s(c_t); in ``log_prob`` and ``logit`` spaces both
equal logit(y_t) − logit(c_t) (the normaliser cancels). A callable target cannot do this: it sees a chunk of scores
without knowing which step each row belongs to (integrated-gradient path points and masked copies are mixed in
chunks), so the adapter subtracts the contrast score itself, finding each row's contrast token by its read
position.

Nothing downloads: models and tokenizers are objects the caller loaded.

References
----------
Sarti et al. 2023, "Inseq: An Interpretability Toolkit for Sequence Generation Models"; Yin & Neubig 2022,
"Interpreting Language Models with Contrastive Explanations".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from whybox.errors import InvalidInputError, InvalidParameterError, ModelOutputError, did_you_mean
from whybox.explanation import Explanation
from whybox.models.adapter import TorchAdapter
from whybox.models.targets import SOFTMAX_SPACES, apply_score_space
from whybox.models.text import BASELINES, _copies_values, replace_tokens, rerun_fills

__all__ = [
    "CausalLMAdapter",
    "GenerationAttribution",
    "GenerationBatch",
    "attribute_generation",
    "generation_defaults",
]

#: Largest SmoothGrad ``sigma`` accepted on packed inputs with ``noise_mask=None``: the noise then lands on the mask
#: channel (read as ``> 0.5``) and on the read-position channel (read as the rounded row mean), which must not flip
#: (5 sigma margin).
MAX_NOISE_SIGMA = 0.1

TokensLike = str | Sequence[int] | torch.Tensor | np.ndarray


# ---------------------------------------------------------------------------------------------- the adapter
class CausalLMAdapter(TorchAdapter):
    """A Hugging Face causal LM (``...ForCausalLM``, GPT-2 style) and its tokenizer, scored on next tokens.

    Parameters
    ----------
    model, tokenizer
        Loaded by the caller; the model must have ``get_input_embeddings()`` and accept ``inputs_embeds``,
        ``attention_mask`` and ``position_ids``, returning ``logits`` ``(B, T, V)``.
    score
        The score space over the vocabulary: ``"log_prob"`` (log-softmax, default), ``"prob"`` or ``"logit"``.
        Explainers should read these scores as they are (their own ``score="logit"``, the identity).
        :func:`whybox.explain` and the metrics' re-runs of a method on this adapter fill in the options left out
        as :func:`attribute_generation` does (:func:`step_explain_options`); an explainer class built on it
        directly (``IntegratedGradients(adapter)``) keeps its own defaults, which rewrite the control channels.
    contrast
        Contrastive scores: ``{read position: contrast token id}``. A row reading position q returns
        ``s − s[contrast[q]]`` over the vocabulary, so the target y gives s(y) − s(c). ``None``: plain scores.

    Shapes
    ------
    inputs: packed ``(B, T, D + 2)`` = word embeddings ``(B, T, D)``, attention mask ``(B, T)``, read position
    ``(B, T)`` (one value per row, repeated); scores: ``(B, V)``.
    """

    #: LIMA leaves out regions its fill keeps as they are (each step's specials and future tokens): no candidates
    null_regions: ClassVar[bool] = True
    #: the attention-mask and read-position channels are controls, not features: every method's per-element
    #: attributions are exactly 0 there (occlusion and feature ablation would copy the token's value onto them)
    control_channels: ClassVar[int] = 2

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        score: str = "log_prob",
        contrast: Mapping[int, int] | None = None,
    ) -> None:
        super().__init__(model)
        if score not in SOFTMAX_SPACES:
            raise InvalidParameterError(
                f"score must be one of {SOFTMAX_SPACES}; got {score!r}.{did_you_mean(score, SOFTMAX_SPACES)}"
            )
        if contrast is not None and not isinstance(contrast, Mapping):
            raise InvalidParameterError(
                f"contrast must map read positions to contrast token ids (a dict) or be None; "
                f"got {type(contrast).__name__}."
            )
        self.tokenizer = tokenizer
        self.score = score
        self.contrast = None if contrast is None else {int(k): int(v) for k, v in contrast.items()}

    # ------------------------------------------------------------------ embeddings and packing
    def embeddings(self) -> nn.Module:
        """The model's word-embedding module (``get_input_embeddings()``)."""
        get = getattr(self.model, "get_input_embeddings", None)
        emb = get() if callable(get) else None
        if not isinstance(emb, nn.Module):
            raise InvalidParameterError(
                f"{type(self.model).__name__} has no get_input_embeddings(); CausalLMAdapter needs a Hugging Face "
                "causal LM (or a model that provides it)."
            )
        return emb

    @property
    def vocab_size(self) -> int:
        """V: the number of token ids the word embeddings take."""
        emb = self.embeddings()
        n = getattr(emb, "num_embeddings", None)
        if not isinstance(n, int):
            n = getattr(getattr(self.model, "config", None), "vocab_size", None)
        if not isinstance(n, int):
            raise InvalidParameterError(
                f"cannot tell the vocabulary size of {type(self.model).__name__}: its input embeddings are not an "
                "nn.Embedding and its config has no vocab_size."
            )
        return n

    def pack(
        self,
        input_ids: torch.Tensor,
        read_positions: torch.Tensor | Sequence[int],
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Packed inputs ``(B, T, D + 2)`` for token ids ``(B, T)``, each row read at ``read_positions[b]``.

        ``attention_mask`` ``(B, T)`` (default all ones) may hold left padding: positions are counted from the first
        attended token (``position_ids = clamp(cumsum(mask) − 1, 0)``).
        """
        emb = self.embeddings()
        device = self.device
        ids = torch.as_tensor(input_ids, device=device)
        if ids.ndim != 2 or ids.shape[1] == 0 or ids.is_floating_point():
            raise InvalidInputError(f"input_ids must be integer token ids (B, T) with T >= 1; got {tuple(ids.shape)}.")
        b, t = ids.shape
        mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask, device=device)
        if tuple(mask.shape) != (b, t):
            raise InvalidInputError(f"attention_mask must have shape {(b, t)}; got {tuple(mask.shape)}.")
        read = torch.as_tensor(read_positions, device=device).to(torch.int64).reshape(-1)
        if read.shape[0] != b or bool(((read < 0) | (read >= t)).any()):
            raise InvalidInputError(
                f"read_positions must hold one position in 0..{t - 1} per row ({b}); got {read.tolist()}."
            )
        with torch.no_grad():
            e = emb(ids)
        _check_exact(t, e.dtype)
        control = torch.stack([mask.to(e.dtype), read.view(b, 1).expand(b, t).to(e.dtype)], dim=-1)
        return torch.cat([e, control], dim=-1).detach()

    # ------------------------------------------------------------------ the call
    def forward(self, x: torch.Tensor) -> Any:
        if x.ndim != 3 or x.shape[-1] < 3:
            raise InvalidInputError(
                "a CausalLMAdapter takes packed inputs (B, T, D + 2) from adapter.pack(ids, read_positions) "
                f"(embeddings, attention mask, read position); got {tuple(x.shape)}."
            )
        e = x[..., :-2]
        mask = (x[..., -2] > 0.5).to(torch.long)
        position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
        return self.model(inputs_embeds=e, attention_mask=mask, position_ids=position_ids, use_cache=False)

    def read_positions(self, x: torch.Tensor) -> torch.Tensor:
        """``(B,)`` int64: the position each packed row is read at (the rounded row mean of the channel)."""
        t = x.shape[1]
        read = x[..., -1].detach().to(torch.float64).mean(1).round().to(torch.int64)
        if bool(((read < 0) | (read >= t)).any()):
            raise InvalidInputError(
                f"the read-position channel must hold a position in 0..{t - 1} per row; got {read.tolist()}. "
                "Build inputs with adapter.pack(ids, read_positions)."
            )
        return read

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The raw next-token logits ``(B, V)`` at each row's read position (no score space, no contrast)."""
        out = self.forward(x)
        logits = getattr(out, "logits", None)
        if logits is None and isinstance(out, (tuple, list)) and out:
            logits = out[0]
        if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or logits.shape[:2] != x.shape[:2]:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(out).__name__
            raise ModelOutputError(
                f"a causal LM must return logits (B, T, V) = ({x.shape[0]}, {x.shape[1]}, V); got {got}."
            )
        read = self.read_positions(x).to(logits.device)
        return logits[torch.arange(x.shape[0], device=logits.device), read]

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        s = apply_score_space(self.logits(x), self.score)
        if self.contrast is not None:
            read = self.read_positions(x).tolist()
            c = [self.contrast.get(q, -1) for q in read]
            if min(c) < 0:
                raise InvalidInputError(
                    f"a row reads position {read[c.index(min(c))]}, which has no contrast token; contrast covers "
                    f"read positions {sorted(self.contrast)}."
                )
            s = s - s.gather(1, torch.tensor(c, dtype=torch.int64, device=s.device).view(-1, 1))
        return s

    # ------------------------------------------------------------------ steps and generation
    def steps(self, token_ids: Sequence[int], prompt_length: int) -> GenerationBatch:
        """The G = len(token_ids) − prompt_length step rows of z = ``token_ids``: row t reads P + t − 1."""
        ids = [int(i) for i in token_ids]
        p = int(prompt_length)
        g = len(ids) - p
        if p < 1 or g < 1:
            raise InvalidInputError(
                f"steps need a prompt of at least 1 token and a continuation of at least 1; got {p} and {g}."
            )
        z = torch.tensor(ids, dtype=torch.int64, device=self.device)
        inputs = self.pack(z.view(1, -1).expand(g, -1), torch.arange(p - 1, p - 1 + g))
        specials = set(self._special_ids())
        special = torch.tensor([i in specials for i in ids], dtype=torch.bool, device=self.device)
        tokens = list(self.tokenizer.convert_ids_to_tokens(ids))
        return GenerationBatch(inputs, z, p, special, tokens, self._replacement_ids(), self.embeddings())

    def _special_ids(self) -> list[int]:
        """The tokenizer's special token ids (BOS, EOS, ...): never replaced by a baseline or fill."""
        return [int(i) for i in (getattr(self.tokenizer, "all_special_ids", None) or [])]

    def _replacement_ids(self) -> dict[str, int | None]:
        """The token ids of ``"pad"``, ``"mask"`` and ``"unk"`` (``None`` where the tokenizer has none)."""
        return {
            "pad": getattr(self.tokenizer, "pad_token_id", None),
            "mask": getattr(self.tokenizer, "mask_token_id", None),
            "unk": getattr(self.tokenizer, "unk_token_id", None),
        }

    def fixed_positions(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` bool: the tokens of packed rows ``x`` that a fill keeps, told from ``x`` alone: the positions
        after each row's read position (the future, which its score does not depend on), the padding (attention
        mask 0) and the special tokens (a word vector equal to a special token's embedding, as :meth:`pack` wrote
        it). For the rows of :meth:`steps`, :meth:`GenerationBatch.fixed_mask`."""
        if x.ndim != 3 or x.shape[-1] < 3:
            raise InvalidInputError(f"packed inputs must be (B, T, D + 2); got shape {tuple(x.shape)}.")
        t = x.shape[1]
        read = self.read_positions(x).to(x.device)
        keep = torch.arange(t, device=x.device).view(1, t) > read.view(-1, 1)
        keep |= x[..., -2] <= 0.5
        ids = self._special_ids()
        if ids:
            with torch.no_grad():
                vecs = self.embeddings()(torch.tensor(ids, dtype=torch.int64, device=x.device)).to(x.dtype)
            words = x[..., :-2]
            for v in vecs:
                keep |= (words == v).all(-1)
        return keep

    def packed_fill(self, x: torch.Tensor, kind: str | float = "zero") -> torch.Tensor:
        """The fill of packed rows ``x`` ``(B, T, D + 2)`` that :meth:`GenerationBatch.fill` gives for the rows of
        :meth:`steps`: the word vector of every token a row attributes replaced by the ``kind`` token's (``"zero"``:
        zero vectors, the default of :func:`attribute_generation`; ``"unk"``, ``"pad"``, ``"mask"``; a number:
        vectors of that number), the tokens of :meth:`fixed_positions` and the two control channels kept. The
        metrics' default fill on a causal LM (:func:`whybox.evaluate`)."""
        return replace_tokens(
            x, kind, self._replacement_ids(), self.embeddings(), self.fixed_positions(x), n_control=2, what="fill"
        )

    def packed_noise_mask(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, D + 2)`` bool: where noise may land on packed rows ``x``: the word vectors of the tokens each row
        attributes (not :meth:`fixed_positions`), never the two control channels; for the rows of :meth:`steps`,
        :meth:`GenerationBatch.noise_mask`. ``max_sensitivity``'s noise lands there."""
        out = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
        out[..., :-2] = ~self.fixed_positions(x).unsqueeze(-1)
        return out

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, *, mode: str = "eval") -> list[int]:
        """Greedy decoding (argmax at every step, no sampling), once: the ids after the prompt.

        Stops after ``max_new_tokens`` or after the tokenizer's EOS token (kept). Full forwards without a cache:
        a few passes, negligible beside the attribution that follows. Runs inside :meth:`guard` (``mode``).
        """
        eos = getattr(self.tokenizer, "eos_token_id", None)
        ids = [int(i) for i in prompt_ids]
        new: list[int] = []
        with self.guard(mode):
            for _ in range(max_new_tokens):
                x = self.pack(torch.tensor([ids + new]), [len(ids) + len(new) - 1])
                tok = int(self.logits(x).argmax(1)[0])
                new.append(tok)
                if eos is not None and tok == eos:
                    break
        return new


def step_replacement(adapter: CausalLMAdapter, x: torch.Tensor, value: Any, *, option: str = "fill") -> Any:
    """What an attributed token becomes on a causal LM's packed step rows ``x`` when a metric's ``fill`` (or a
    re-run method's ``fill`` or ``baseline``) is a name or a number: :meth:`CausalLMAdapter.packed_fill` of that kind
    (each step's specials, future tokens and control channels kept, as :func:`attribute_generation` reads its
    ``baseline``); ``None``: the ``"zero"`` fill; a tensor or a callable as given (the caller's own).

    Raises
    ------
    InvalidParameterError
        Another name (``"mean"``, ``"blur"``, ...) or a non-finite number, which would also rewrite the control
        channels (steps then scored at other positions), the specials and each step's future tokens.
    """
    from whybox.models.inputs import python_number

    value = python_number(value)
    if value is None:
        return adapter.packed_fill(x)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return value
    if (isinstance(value, str) and value not in BASELINES) or (isinstance(value, float) and not math.isfinite(value)):
        hint = did_you_mean(value, BASELINES) if isinstance(value, str) else ""
        raise InvalidParameterError(
            f"{option}={value!r} on a causal LM's step rows would also rewrite their attention-mask and "
            "read-position channels (each step would be scored at another position), the special tokens and each "
            f"step's future tokens; pass one of {BASELINES} (that token's word vector; 'zero': zeros), a number (each "
            f"element of the word vector), or a tensor such as batch.{'baseline' if option == 'baseline' else 'fill'}"
            f"('unk') of batch = adapter.steps(ids, prompt_length).{hint}"
        )
    return adapter.packed_fill(x, value)


@dataclass(frozen=True)
class PackedSteps:
    """Step rows ``inputs`` ``(B, T, D + 2)`` of a :class:`CausalLMAdapter` read from the rows alone (the fixed tokens
    by :meth:`CausalLMAdapter.fixed_positions`), with the helpers of :class:`GenerationBatch` that
    :func:`generation_defaults` reads; for the rows of :meth:`CausalLMAdapter.steps` they give what the batch gives."""

    adapter: CausalLMAdapter
    inputs: torch.Tensor

    def fixed_mask(self) -> torch.Tensor:
        """``(B, T)`` bool: the tokens a baseline or fill keeps (:meth:`CausalLMAdapter.fixed_positions`)."""
        return self.adapter.fixed_positions(self.inputs)

    def noise_mask(self) -> torch.Tensor:
        """``(B, T, D + 2)`` bool: :meth:`CausalLMAdapter.packed_noise_mask`."""
        return self.adapter.packed_noise_mask(self.inputs)

    def baseline(self, kind: str = "zero") -> torch.Tensor:
        """:meth:`GenerationBatch.baseline` of these rows."""
        return self._replace(kind, "baseline")

    def fill(self, kind: str = "zero") -> torch.Tensor:
        """:meth:`GenerationBatch.fill` of these rows (:meth:`CausalLMAdapter.packed_fill`)."""
        return self._replace(kind, "fill")

    def _replace(self, kind: str, what: str) -> torch.Tensor:
        a = self.adapter
        return replace_tokens(
            self.inputs, kind, a._replacement_ids(), a.embeddings(), self.fixed_mask(), n_control=2, what=what
        )

    def token_features(self) -> torch.Tensor:
        """Feature ids ``(B, T, 1)``: one feature per token position (:meth:`GenerationBatch.token_features`)."""
        b, t = self.inputs.shape[:2]
        return torch.arange(t, device=self.inputs.device).view(1, t, 1).expand(b, t, 1).contiguous()


def step_explain_options(
    adapter: CausalLMAdapter, x: torch.Tensor, method: str, params: dict[str, Any]
) -> dict[str, Any]:
    """A method's options on a causal LM's packed step rows ``x``: ``params`` as given, and for every option left out
    the default :func:`attribute_generation` gives that method (:func:`generation_defaults` with
    ``baseline="zero"``: the Integrated Gradients baseline and the perturbation fill replace only each step's
    attributed word vectors, token features, a one-token occlusion window, SmoothGrad's noise on the attributed word
    vectors); a ``fill`` or ``baseline`` of ``None``, a name or a number as :func:`step_replacement` reads it. The
    methods' own defaults (a zero baseline or fill of every element) would rewrite the attention-mask and
    read-position channels (each step explained at other positions), the specials and each step's future. What
    :func:`whybox.explain` and the metrics' re-runs of a method on a :class:`CausalLMAdapter` use.

    Raises
    ------
    InvalidParameterError
        A ``fill`` or ``baseline`` name other than ``"zero"``, ``"unk"``, ``"pad"``, ``"mask"``
        (:func:`step_replacement`).
    InvalidInputError
        ``x`` is not packed rows ``(B, T, D + 2)`` with a read position in ``0..T-1``.
    """
    from whybox.models.inputs import python_number

    out = dict(params)
    for k, v in generation_defaults(method, PackedSteps(adapter, x)).items():
        if k == "fill" and out.get("background") is not None:
            continue  # the Shapley methods' background rows stand for the removed tokens: no fill beside them
        if k not in out or (k in ("fill", "baseline") and out[k] is None):
            out[k] = v
    for k in ("fill", "baseline"):
        v = python_number(out.get(k))
        if isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool)):
            out[k] = step_replacement(adapter, x, v, option=k)
    return out


def step_metric_options(
    adapter: CausalLMAdapter, x: torch.Tensor, options: list[str], params: dict[str, Any]
) -> dict[str, Any]:
    """A metric's ``params`` on a causal LM's packed step rows ``x``: its ``fill`` (default included) as
    :func:`step_replacement` reads it, and a re-run method's ``fill`` or ``baseline`` name or number
    (``explainer_params``) alike. With the re-runs' other defaults (:func:`step_explain_options` on each re-run's
    rows), ``max_sensitivity``'s noise on the attributed word vectors only
    (:meth:`CausalLMAdapter.packed_noise_mask`) and ``infidelity`` refused (its noise covers every element), no
    metric rewrites the control channels, the specials or a step's future unless given tensors or ``deltas=`` that
    do. ``options``: the metric's keyword options."""
    out = dict(params)
    if "fill" in options:
        out["fill"] = step_replacement(adapter, x, out.get("fill"))
    rerun = out.get("explainer_params")
    if isinstance(rerun, dict):  # a name or number read on each re-run's rows, as a text adapter's are
        out["explainer_params"] = rerun_fills(adapter, x, rerun, replace=step_replacement)
    return out


def _check_exact(t: int, dtype: torch.dtype) -> None:
    """The read-position channel holds integers up to t − 1: refuse a dtype that cannot represent them exactly."""
    if t > 1 and dtype.is_floating_point:
        top = torch.tensor(float(t - 1), dtype=dtype)
        if float(top) != float(t - 1) or float(top - 1) != float(t - 2):
            raise InvalidInputError(
                f"sequences of {t} tokens do not fit the read-position channel in {dtype} (positions up to {t - 1} "
                "are not exact); run the model in float32 or float64, or shorten the sequence."
            )


# ---------------------------------------------------------------------------------------------- the steps
@dataclass(frozen=True)
class GenerationBatch:
    """The G step rows of one sequence z (prompt ⊕ continuation) and the helpers that make methods act on them.

    Shapes
    ------
    inputs: ``(G, T, D + 2)`` with T = P + G; token_ids, special_mask: ``(T,)``; :meth:`future_mask`: ``(G, T)``.
    """

    inputs: torch.Tensor
    token_ids: torch.Tensor
    prompt_length: int
    special_mask: torch.Tensor  # True at special tokens (BOS/EOS): never perturbed, attribution 0
    tokens: list[str]
    replacement_ids: dict[str, int | None]
    embeddings: nn.Module

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def targets(self) -> torch.Tensor:
        """``(G,)`` int64: the token each step scores, y_t = z[P + t]."""
        return self.token_ids[self.prompt_length :].clone()

    def future_mask(self) -> torch.Tensor:
        """``(G, T)`` bool: True at positions ≥ P + t, which step t's score does not depend on (undefined)."""
        g, t = self.inputs.shape[:2]
        pos = torch.arange(t, device=self.inputs.device).view(1, t)
        first = self.prompt_length + torch.arange(g, device=self.inputs.device).view(g, 1)
        return pos >= first

    def fixed_mask(self) -> torch.Tensor:
        """``(G, T)`` bool: tokens a baseline or fill keeps (specials and the future of each row)."""
        return self.future_mask() | self.special_mask.view(1, -1)

    def noise_mask(self) -> torch.Tensor:
        """``(G, T, D + 2)`` bool: the word vectors of the tokens each step attributes, where SmoothGrad's noise may
        land (never the specials, a row's future or the two control channels, which noise could flip)."""
        out = torch.zeros(self.inputs.shape, dtype=torch.bool, device=self.inputs.device)
        out[..., :-2] = ~self.fixed_mask().to(self.inputs.device).unsqueeze(-1)
        return out

    def _replace(self, kind: str, what: str) -> torch.Tensor:
        return replace_tokens(
            self.inputs, kind, self.replacement_ids, self.embeddings, self.fixed_mask(), n_control=2, what=what
        )

    def baseline(self, kind: str = "zero") -> torch.Tensor:
        """An Integrated Gradients baseline ``(G, T, D + 2)``: the attributed tokens' word vectors replaced by the
        ``kind`` token's embedding (``"zero"``: zero vectors; ``"unk"``: GPT-2's ``<|endoftext|>``, as inseq);
        specials, each row's future and the two control channels identical to the input."""
        return self._replace(kind, "baseline")

    def fill(self, kind: str = "zero") -> torch.Tensor:
        """A masking-engine fill ``(G, T, D + 2)``: what a masked token becomes (as :meth:`baseline`)."""
        return self._replace(kind, "fill")

    def token_features(self) -> torch.Tensor:
        """Feature ids ``(G, T, 1)`` for perturbation methods: one feature per token position."""
        g, t = self.inputs.shape[:2]
        return torch.arange(t, device=self.inputs.device).view(1, t, 1).expand(g, t, 1).contiguous()

    def step_attributions(self, explanation: Explanation | torch.Tensor) -> torch.Tensor:
        """``(G, T)`` float64: per-token attributions of each step, NaN at positions ≥ P + t.

        Gradient methods: the sum over the embedding dimensions (signed; completeness kept), control channels left
        out. Perturbation methods over token features: the feature's value. A plain tensor is read as per-element
        attributions unless its last dimension is 1. Special tokens (BOS) get 0, as they do from every method that
        perturbs: a gradient method's gradient there is not an attribution to a token the explanation keeps.
        """
        a = explanation.attributions if isinstance(explanation, Explanation) else explanation
        if a.ndim != 3 or a.shape[:2] != self.inputs.shape[:2] or a.shape[-1] not in (1, self.inputs.shape[-1]):
            raise InvalidInputError(
                f"attributions must be (G, T, D + 2) or (G, T, 1) for these steps {tuple(self.inputs.shape)}; "
                f"got {tuple(a.shape)}. attribute_generation needs a method that attributes input elements or "
                "token features."
            )
        if a.shape[-1] == 1 or (isinstance(explanation, Explanation) and _copies_values(explanation.method)):
            out = a[..., 0]
        else:
            out = a[..., :-2].sum(-1)
        out = out.detach().to(torch.float64)
        # a special token is never perturbed: 0, also where a gradient method finds a gradient (saliency, x·grad)
        out = out.masked_fill(self.special_mask.to(out.device).view(1, -1), 0.0)
        return out.masked_fill(self.future_mask().to(out.device), math.nan)


def generation_defaults(
    method: str, batch: GenerationBatch | PackedSteps, *, baseline: str = "zero", noise_level: float = 0.15
) -> dict[str, Any]:
    """The options that make ``method`` act on generation steps: a baseline for Integrated Gradients, token features
    (LIMA: token regions valued by their gain) and a fill (both ``baseline``) for perturbation methods, a one-token
    occlusion window, and for SmoothGrad a sigma of ``noise_level`` times the range of each step's attributed word
    vectors (its prefix's, as a call on that prefix alone reads it; never the control channels), noise on them only
    (:meth:`GenerationBatch.noise_mask`) and gradient × input averaged (as :func:`~whybox.models.text.text_defaults`).
    Explainers read the adapter's scores as they are (``score="logit"``, the identity)."""
    from whybox.explainers.base import _keyword_options
    from whybox.registry import EXPLAINERS

    names = set(_keyword_options(EXPLAINERS.get(method)))
    out: dict[str, Any] = {"score": "logit"}
    if "baseline" in names:
        out["baseline"] = batch.baseline(baseline)
    if "features" in names:
        out["features"] = batch.token_features()
    if "keep_null" in names:  # LIME: a step's fixed future (and specials) out of the surrogate
        out["keep_null"] = False
    if "regions" in names:
        out["regions"] = batch.token_features()
        if "map" in names:
            out["map"] = "gain"
    if "fill" in names:
        out["fill"] = batch.fill(baseline)
    if "window" in names and "stride" in names:
        width = int(batch.inputs.shape[-1])
        out["window"] = (1, width)
        out["stride"] = (1, width)
    if "noise_level" in names:  # each step's sigma from its own attributed tokens (the noise mask): its prefix alone
        out["noise_level"] = float(noise_level)
    if "noise_mask" in names:  # SmoothGrad: noise on the attributed tokens' word vectors, gradient x input
        out["noise_mask"] = batch.noise_mask()
        out["base"] = "input_x_gradient"
    return out


# ---------------------------------------------------------------------------------------------- the facade
@dataclass(frozen=True)
class GenerationAttribution:
    """What :func:`attribute_generation` returns.

    Attributes
    ----------
    tokens
        The P + G tokens of z = prompt ⊕ continuation (the tokenizer's strings).
    token_ids
        Their ids.
    prompt_length
        P.
    matrix
        ``(P + G, G)`` float64 (CPU): column t holds step t's attributions to each earlier token (gradient methods:
        summed over the embedding dimensions; perturbation methods: the token's value); NaN at positions ≥ P + t.
    step_scores
        ``(G,)`` float64: each step's explained score on the unperturbed sequence (contrastive: s(y_t) − s(c_t)).
    explanation
        The raw whybox explanation of the ``(G, P + G, D + 2)`` packed step rows (targets: the continuation ids).
    method, score
        The method and score space.
    contrast_tokens
        The contrast tokens c_t (``None`` when not contrastive).
    """

    tokens: list[str]
    token_ids: list[int]
    prompt_length: int
    matrix: torch.Tensor
    step_scores: torch.Tensor
    explanation: Explanation
    method: str
    score: str
    contrast_tokens: list[str] | None = None
    #: each token's own text, as the tokenizer decodes it alone (GPT-2's "Ġthe" is " the"): what :meth:`to_html`
    #: shows; ``None``: the tokens as they are
    token_texts: list[str] | None = None

    @property
    def continuation(self) -> list[str]:
        """The G generated (or given) tokens."""
        return self.tokens[self.prompt_length :]

    @property
    def whole_continuation(self) -> torch.Tensor:
        """``(P + G,)``: attributions of the whole continuation's score ``sum_t s_t`` (e.g. its log-likelihood) to
        every token: the row sums of :attr:`matrix`, a token's own and later steps counting 0 (causality: step t
        cannot depend on tokens at or after P + t). Exact for every method that is linear in the score it
        explains: gradients, Integrated Gradients, occlusion and ablation, Shapley values, and the LIME and
        Kernel SHAP regressions (their fits are linear in the targets, given the same draws)."""
        return torch.nan_to_num(torch.as_tensor(self.matrix), nan=0.0).sum(1)

    def _rows(self) -> list[tuple[str, list[str], list[float]]]:
        p = self.prompt_length
        shown = self.token_texts if self.token_texts is not None else self.tokens
        rows = [
            (f"step {t}: {shown[p + t]!r}", shown[: p + t], self.matrix[: p + t, t].tolist())
            for t in range(len(self.continuation))
        ]
        return [*rows, ("whole continuation", shown, self.whole_continuation.tolist())]

    def to_html(self, *, title: str | None = None, scale: float | None = None) -> str:
        """A self-contained page: one row per generated token showing the tokens before it coloured by their
        attribution to it (red: for it, blue: against it), then the whole continuation's row
        (:func:`whybox.report.render_tokens_page`); tokens as :attr:`token_texts` shows them (GPT-2's "Ġthe" as
        " the"); ``scale``: one scale for every row."""
        from whybox.report.tokens import render_tokens_page

        return render_tokens_page(self._rows(), title=title or f"{self.method}: generation attribution", scale=scale)

    def _repr_html_(self) -> str:
        """What a notebook shows: the rows of :meth:`to_html`."""
        from whybox.report.tokens import render_tokens_html

        return "".join(render_tokens_html(t, v, title=h) for h, t, v in self._rows())


def _token_ids(tokenizer: Any, value: Any, name: str, *, special: bool) -> list[int]:
    """Token ids of a string (tokenised; ``special``: with the tokenizer's special tokens) or of given ids: a list of
    ints (NumPy integers and 0-d integer tensors read as the ints they hold), or a 1-d integer tensor or NumPy array,
    or a ``(1, P)`` one (what ``tokenizer(text, return_tensors="pt")["input_ids"]`` returns: its row)."""
    from whybox.models.inputs import python_number

    if isinstance(value, str):
        raw = tokenizer(value, add_special_tokens=special)["input_ids"] if value else []
        raw = raw.tolist() if hasattr(raw, "tolist") else list(raw)  # a tensor or array from a tokenizer that batches
        ids = raw[0] if len(raw) == 1 and isinstance(raw[0], list) else raw  # a batch of one: its row
    elif isinstance(value, (torch.Tensor, np.ndarray)):
        integer = (
            value.dtype.kind in "iu"
            if isinstance(value, np.ndarray)
            else not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)
        )
        shape = tuple(value.shape)
        if not integer or not (len(shape) == 1 or (len(shape) == 2 and shape[0] == 1)):
            kind = type(value).__name__
            raise InvalidParameterError(
                f"{name} must be a string or token ids (a list of ints, or a 1-d or (1, P) integer tensor or array); "
                f"got a {kind} of dtype {value.dtype} and shape {shape}. attribute_generation explains one sequence: "
                "pass one row of integer ids (ids[0] of a batch)."
            )
        ids = [int(i) for i in value.reshape(-1).tolist()]
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        ids = [python_number(i) for i in value]  # NumPy integers (list(np.array(ids))) as Python ints
        bad = next((k for k, v in enumerate(ids) if isinstance(v, bool) or not isinstance(v, int)), None)
        if bad is not None:
            raise InvalidParameterError(
                f"{name} must be a string or token ids (a list of ints, or a 1-d or (1, P) integer tensor or array); "
                f"got a {type(value).__name__} holding {value[bad]!r} ({type(value[bad]).__name__}) at index {bad}."
            )
    else:
        raise InvalidParameterError(
            f"{name} must be a string or token ids (a list of ints, or a 1-d or (1, P) integer tensor or array); "
            f"got {type(value).__name__}."
        )
    if not ids:
        raise InvalidParameterError(f"{name} must be a non-empty string or hold at least one token id; got {value!r}.")
    return ids


def attribute_generation(
    model: nn.Module,
    tokenizer: Any,
    prompt: TokensLike,
    *,
    continuation: TokensLike | None = None,
    max_new_tokens: int = 8,
    method: str = "integrated_gradients",
    score: str = "log_prob",
    contrast: TokensLike | None = None,
    baseline: str = "zero",
    integration: str | None = None,
    **method_options: Any,
) -> GenerationAttribution:
    """Attribute every generated token of a causal LM to the prompt and the earlier generated tokens.

    Parameters
    ----------
    model, tokenizer
        A Hugging Face causal LM (GPT-2 style) and its tokenizer, loaded by the caller. The model comes back exactly
        as it came (modes, ``requires_grad``, config), also when the call raises.
    prompt
        A string (tokenised with the tokenizer's special tokens) or token ids: a list of ints (NumPy integers too), a
        1-d integer tensor or array, or a ``(1, P)`` one (``tokenizer(text, return_tensors="pt")["input_ids"]``).
    continuation
        The G tokens to attribute (teacher forcing: used as they are): a string, tokenised on its own without
        special tokens (it is the text *after* the prompt; a GPT-2 word starts with its space, " world"), or ids.
        ``None``: generated once, greedily (argmax), up to ``max_new_tokens`` or the tokenizer's EOS (kept).
        For sampled continuations, generate them yourself and pass the ids.
    max_new_tokens
        Tokens to generate when ``continuation`` is ``None``.
    method
        A text method of :func:`whybox.methods` (``methods("text")``) other than the attention methods (which read a
        classifier's or encoder's attention rows through :func:`whybox.adapt_text`); gradient methods differentiate
        at the word embeddings, perturbation methods and LIMA mask single tokens through the masking engine.
    score
        Step t's score: ``"log_prob"`` (log softmax(logits[P + t − 1])[y_t], default), ``"prob"`` or ``"logit"``.
    contrast
        Contrastive attribution: G alternative tokens c_t (string or ids, as ``continuation``); step t then scores
        s(y_t) − s(c_t), which equals logit(y_t) − logit(c_t) in ``log_prob`` and ``logit`` spaces.
    baseline
        What an attributed token becomes in the Integrated Gradients baseline and in perturbation fills: ``"zero"``
        (zero word vectors; GPT-2 has no pad or mask token), ``"unk"`` (GPT-2: ``<|endoftext|>``, as inseq),
        ``"pad"`` or ``"mask"`` when the tokenizer has them. Special tokens are never replaced.
    integration
        Integrated Gradients' own ``method`` option (its rule: ``"gausslegendre"``, ``"riemann_trapezoid"``,
        ``"adaptive"``, ...), which cannot be passed by that name here (``method=`` names the explainer).
    **method_options
        The method's options (``n_steps``, ``batch_size`` for the rows per forward pass, ...); they win over the
        defaults of :func:`generation_defaults`. SmoothGrad's sigma defaults to ``noise_level`` times the range of
        each step's attributed word vectors, its noise lands on the attributed tokens' word vectors only and it averages
        gradient × input; with ``noise_mask=None`` the noise also lands on the control channels, sigma defaults to
        ``noise_level`` times the range of the embedding matrix and must stay ≤ ``MAX_NOISE_SIGMA``.

    Returns
    -------
    GenerationAttribution

    Raises
    ------
    InvalidParameterError
        An empty prompt or continuation, a contrast of another length, an unknown score or baseline, a bad
        ``max_new_tokens``, an unknown method (the message lists the known ones).
    InvalidInputError
        Token ids outside the vocabulary, or a sequence longer than the model's positions.

    Shapes
    ------
    matrix ``(P + G, G)``; step_scores ``(G,)``; explanation.attributions ``(G, P + G, D + 2)`` (or per feature).
    """
    from whybox.api import explain
    from whybox.explainers.base import _keyword_options
    from whybox.masking.engine import MaskingEngine, resolve_batch_size
    from whybox.registry import EXPLAINERS

    if not isinstance(model, nn.Module):
        raise InvalidParameterError(f"model must be a torch.nn.Module (a causal LM); got {type(model).__name__}.")
    if not callable(tokenizer):
        raise InvalidParameterError(f"tokenizer must be a Hugging Face tokenizer; got {type(tokenizer).__name__}.")
    if score not in SOFTMAX_SPACES:
        raise InvalidParameterError(
            f"score must be one of {SOFTMAX_SPACES}; got {score!r}.{did_you_mean(score, SOFTMAX_SPACES)}"
        )
    if baseline not in BASELINES:
        raise InvalidParameterError(
            f"baseline must be one of {BASELINES}; got {baseline!r}.{did_you_mean(baseline, BASELINES)}"
        )
    cls = EXPLAINERS.get(method)  # an unknown name lists the known ones
    from whybox.api import methods as _methods
    from whybox.explainers.attention.explainers import AttentionExplainer

    usable = [n for n in _methods("text") if not issubclass(EXPLAINERS.get(n), AttentionExplainer)]
    if method not in usable:
        why = (
            "reads a classifier's or encoder's attention rows (through whybox.adapt_text), not a generation step's"
            if issubclass(cls, AttentionExplainer)
            else "does not apply to text"
        )
        raise InvalidParameterError(f"method={method!r} {why}; attribute_generation takes one of {usable}.")
    if "score" in method_options:  # unreachable through the signature; kept for **dict callers
        raise InvalidParameterError("pass score= to attribute_generation, not as a method option.")
    if "target" in method_options:
        raise InvalidParameterError(
            "target= is not an option of attribute_generation: step t explains its own token y_t (pass contrast= "
            "to explain y_t against another token)."
        )
    if integration is not None:
        if "method" not in _keyword_options(cls):
            raise InvalidParameterError(
                f"integration= is Integrated Gradients' rule; {method!r} has none. Leave integration out."
            )
        from whybox.explainers.gradient.integrated_gradients import METHODS as IG_RULES

        if integration not in IG_RULES:
            raise InvalidParameterError(
                f"integration must be one of {IG_RULES}; got {integration!r}.{did_you_mean(str(integration), IG_RULES)}"
            )
        method_options = {**method_options, "method": integration}
    mode = method_options.get("mode", "eval")
    adapter = CausalLMAdapter(model, tokenizer, score=score)
    vocab = adapter.vocab_size

    def check_vocab(ids: list[int], name: str) -> None:
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise InvalidInputError(
                f"{name} holds token id {bad[0]}, outside the model's vocabulary 0..{vocab - 1}; "
                "use the tokenizer that belongs to the model."
            )

    prompt_ids = _token_ids(tokenizer, prompt, "prompt", special=True)
    check_vocab(prompt_ids, "prompt")
    config = getattr(model, "config", None)
    limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if continuation is None:
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InvalidParameterError(f"max_new_tokens must be an int >= 1; got {max_new_tokens!r}.")
        if isinstance(limit, int) and len(prompt_ids) + max_new_tokens > limit:  # before any generation pass
            raise InvalidInputError(
                f"prompt ({len(prompt_ids)} tokens) and max_new_tokens={max_new_tokens} exceed the model's {limit} "
                f"positions; shorten the prompt or generate at most {max(limit - len(prompt_ids), 0)} tokens."
            )
        cont_ids = adapter.generate(prompt_ids, max_new_tokens, mode=mode)
    else:
        cont_ids = _token_ids(tokenizer, continuation, "continuation", special=False)
        check_vocab(cont_ids, "continuation")
    p, g = len(prompt_ids), len(cont_ids)
    if isinstance(limit, int) and p + g > limit:
        raise InvalidInputError(
            f"prompt ({p} tokens) and continuation ({g}) exceed the model's {limit} positions; shorten them."
        )
    contrast_ids: list[int] | None = None
    if contrast is not None:
        contrast_ids = _token_ids(tokenizer, contrast, "contrast", special=False)
        if len(contrast_ids) != g:
            raise InvalidParameterError(
                f"contrast must have as many tokens as the continuation ({g}); got {len(contrast_ids)}."
            )
        check_vocab(contrast_ids, "contrast")
        adapter = CausalLMAdapter(
            model, tokenizer, score=score, contrast={p - 1 + t: c for t, c in enumerate(contrast_ids)}
        )
    batch = adapter.steps(prompt_ids + cont_ids, p)
    noise_level = method_options.get("noise_level", 0.15)
    opts = generation_defaults(method, batch, baseline=baseline, noise_level=noise_level)
    opts.update({k: v for k, v in method_options.items() if not (k == "sigma" and v is None)})
    noisy_controls = "noise_level" in _keyword_options(cls) and opts.get("noise_mask") is None
    if noisy_controls and opts.get("sigma") is None:
        # noise everywhere: the row range would count the control channels (the read position grows with the
        # step), so sigma comes from the model's embedding matrix (no step's tokens: the same whatever follows)
        # and must stay small
        w = getattr(batch.embeddings, "weight", torch.zeros(1)).detach()
        opts["sigma"] = float(noise_level) * float(w.max() - w.min())
    sigma = opts.get("sigma")
    if noisy_controls and isinstance(sigma, (int, float)) and sigma > MAX_NOISE_SIGMA:
        raise InvalidParameterError(
            f"sigma must be <= {MAX_NOISE_SIGMA} for generation attribution with noise_mask=None (the noise then "
            f"also lands on the attention-mask and read-position channels); got {sigma!r}. Pass a smaller sigma= "
            "or noise_level=, or leave noise_mask out (noise on the word vectors only)."
        )
    targets = batch.targets
    explanation = explain(adapter, batch.inputs, method, target=targets, **opts)
    engine = MaskingEngine(adapter, batch_size=resolve_batch_size(opts.get("batch_size"), adapter))
    with adapter.guard(mode):
        clean = engine.forward(batch.inputs)
    step_scores = clean.gather(1, targets.to(clean.device).view(-1, 1)).squeeze(1).to("cpu", torch.float64)
    matrix = batch.step_attributions(explanation).T.contiguous().cpu()
    return GenerationAttribution(
        tokens=batch.tokens,
        token_ids=prompt_ids + cont_ids,
        prompt_length=p,
        matrix=matrix,
        step_scores=step_scores,
        explanation=explanation,
        method=method,
        score=score,
        contrast_tokens=None if contrast_ids is None else list(tokenizer.convert_ids_to_tokens(contrast_ids)),
        token_texts=_decoded(tokenizer, prompt_ids + cont_ids),
    )


def _decoded(tokenizer: Any, ids: list[int]) -> list[str] | None:
    """Each token decoded alone (byte-level markers as the characters they stand for), or ``None`` where the
    tokenizer cannot decode one id at a time."""
    decode = getattr(tokenizer, "decode", None)
    if not callable(decode):
        return None
    try:
        texts = [decode([i]) for i in ids]
    except (TypeError, ValueError, KeyError, IndexError):
        return None
    return texts if all(isinstance(t, str) for t in texts) else None
