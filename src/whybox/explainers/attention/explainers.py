"""Registered attention explainers for text classifiers: ``raw_attention``, ``attention_rollout`` and
``attention_relevance`` (Chefer, Gur & Wolf ICCV 2021, single stream).

They take the packed inputs of a :class:`~whybox.models.text.TextClassifierAdapter` (``(B, T, D + 1)``: word
embeddings and the attention mask), run the Hugging Face model once under eager attention
(:func:`~whybox.explainers.attention.collect.collect_attentions`) and read one row of the token-to-token matrix: the
CLS row (``readout="cls"``), the mean over attended tokens (``"mean"``) or the last attended token's row (``"last"``);
by default the row the model reads, ``"mean"`` for a mean-pooled sentence encoder (``adapt_text(...,
kind="embedding")``, whose scores, the similarities of its pooled embedding to the references, take the place of
logits) and for a classifier whose head reads the mean of the tokens (a model that sets ``pooling = "mean"``, as
whybox.data's MiniLM sentiment model; BEiT's ``config.use_mean_pooling``: on images the mean is over the patch rows,
the CLS row left out, as BEiT's pooler ``layernorm(hidden[:, 1:].mean(1))`` reads them; a text encoder's mean is over
every attended token, the CLS row included, as a sentence encoder's mean pooling), ``"last"`` for a decoder's
classifier (GPT-2's, which scores the last token; its first row, under causal attention, reads only itself) and for
a CLIP text tower pooled by the model itself (``pooling="model"``, the default there: CLIP reads the end-of-text
token, the last attended one), and ``"cls"`` otherwise. The attributions are ``(B, T, 1)``: one value per token (it broadcasts to the inputs), pads 0.
Rollout and raw attention ignore the target (class-agnostic); relevance weights each head by the gradient of the
target logit.

Vision transformers: ``whybox.adapt(vit)`` of a Hugging Face ``ViTForImageClassification``-like model (a config with
``patch_size``, or a classifier on a two-tower config's image tower with it in ``config.vision_config``,
``CLIPForImageClassification``; images ``(B, C, H, W)`` as ``pixel_values``) works too: the readout row (the CLS row;
the mean over the patch rows, prefix tokens left out, for a model without a CLS token, SigLIP's image tower, whose
tokens are its patches, and for a classifier averaging them, BEiT's and CLIP's) without its prefix columns, reshaped
row-major to the ``(H // P, W // P)`` patch grid and repeated over each patch's pixels (no interpolation: every pixel
carries its patch's value; 0 on a border no patch reads), ``(B, 1, H, W)``. The model runs as the adapter runs it: its
``preprocess`` first (a resizing one gets the map back at the input's size, nearest neighbour), its ``output=``, and
an embedding adapter's similarities as the scores (a CLIP image tower against class embeddings). These methods are
listed under ``whybox.methods("text")`` only: on images they need a transformer, which most image models are not (a
run of ``whybox compare`` on a vision transformer's images adds them to its default methods).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, ClassVar

import torch

from whybox.errors import InvalidInputError, InvalidParameterError, did_you_mean
from whybox.explainers.attention.collect import collect_attentions
from whybox.explainers.attention.relevance import gradient_weighted_relevance
from whybox.explainers.attention.rollout import attention_rollout, raw_attention, readout, to_grid
from whybox.explainers.base import Explainer
from whybox.masking.engine import MaskingEngine
from whybox.models._embeds import takes_inputs_embeds
from whybox.models.targets import Target, TargetLike, resolve_target
from whybox.registry import EXPLAINERS

__all__ = ["AttentionExplainer", "AttentionRelevance", "AttentionRollout", "RawAttention"]

READOUTS = ("cls", "mean", "last")
FUSIONS = ("mean", "max", "min")


def _patch_size(adapter: Any) -> int | None:
    """The patch size of a Hugging Face vision transformer with global attention over one token grid behind
    ``adapter`` (ViT, DeiT, DINOv2, CLIP's and SigLIP's image towers, BEiT); ``None`` for anything else, also for
    models whose config has a patch size but no such grid: stages of other sizes (``depths``, ``hidden_sizes``:
    ConvNeXt, Swin) or windowed attention (``window_size``). A classifier on a two-tower config's image tower
    (``CLIPForImageClassification``) keeps it in ``config.vision_config``: read there when the model's forward takes
    ``pixel_values`` and no ``input_ids`` (a model of both towers, CLIPModel, needs text too)."""
    model = getattr(adapter, "model", None)
    cfg = getattr(model, "config", None)
    p = getattr(cfg, "patch_size", None)
    vision = getattr(cfg, "vision_config", None)
    if p is None and vision is not None and _image_only(model):
        cfg, p = vision, getattr(vision, "patch_size", None)
    if any(getattr(cfg, k, None) is not None for k in ("depths", "hidden_sizes", "window_size")):
        return None
    return int(p) if isinstance(p, int) and p > 0 else None


def _image_only(model: Any) -> bool:
    """Whether ``model``'s forward takes ``pixel_values`` and no ``input_ids``."""
    try:
        names = inspect.signature(model.forward).parameters
    except (AttributeError, TypeError, ValueError):
        return False
    return "pixel_values" in names and "input_ids" not in names


def _check_start(start_layer: Any) -> int:
    if isinstance(start_layer, bool) or not isinstance(start_layer, int) or start_layer < 0:
        raise InvalidParameterError(f"start_layer must be a non-negative int; got {start_layer!r}.")
    return start_layer


class AttentionExplainer(Explainer):
    """Shared plumbing: text adapter check, one collection pass, the readout, ``(B, T, 1)`` output."""

    input_kinds: ClassVar[tuple[str, ...]] = ("text",)
    with_grads: ClassVar[bool] = False

    def __init__(self, model: Any, *, readout: str | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        from whybox.models.text import TextClassifierAdapter, TextEncoderAdapter

        if self.mode != "eval":
            raise InvalidParameterError(
                f"{self.name!r} reads the attentions of the model in eval mode (dropout on attention would make "
                f"them random); mode={self.mode!r} does not apply. Leave mode out."
            )

        text = isinstance(self.adapter, (TextClassifierAdapter, TextEncoderAdapter))
        self._vision = not text and _patch_size(self.adapter) is not None
        if not (text or self._vision):
            raise InvalidParameterError(
                f"{self.name!r} reads a transformer's attention: pass a text adapter from "
                f"whybox.adapt_text(model, tokenizer) (a classifier, or kind='embedding' for a sentence encoder), "
                "or a Hugging Face vision transformer with global attention over one patch grid (ViT, DeiT, DINOv2, "
                f"CLIP's image tower; not Swin's windows or a ConvNeXt); got {type(self.adapter).__name__}."
            )
        if readout is None:  # the row the model itself reads: a mean-pooled sentence encoder reads every token
            mean_pooled = isinstance(self.adapter, TextEncoderAdapter) and self.adapter.pooling == "mean"
            pooled = callable(getattr(self.adapter, "scores_from_output", None))  # SAE features pooled over tokens
            last = isinstance(self.adapter, TextClassifierAdapter) and self.adapter.last_token  # a decoder's classifier
            # an encoder pooled by the model itself: a CLIP text tower (no inputs_embeds) pools its end-of-text token,
            # the last attended one; a model given inputs_embeds (BERT's pooler, AltCLIP's) its first token
            own_pool = isinstance(self.adapter, TextEncoderAdapter) and self.adapter.pooling == "model"
            last = last or (own_pool and not takes_inputs_embeds(self.adapter.model))
            # a classifier head over the mean of the tokens: one that says so (``model.pooling = "mean"``, as
            # whybox.data's MiniLM sentiment model), or a Hugging Face vision model pooling its patches (BEiT's
            # ``config.use_mean_pooling``; a classifier on a two-tower config's image tower, whose patch size sits in
            # ``config.vision_config``: CLIP's, MetaCLIP 2's and SigLIP's *ForImageClassification average the patch
            # tokens; on images the mean is over the patch rows, the prefix tokens' rows left out, as those pool)
            model = getattr(self.adapter, "model", None)
            config = getattr(model, "config", None)
            said = getattr(model, "pooling", None) == "mean"
            config_mean = self._vision and (
                getattr(config, "use_mean_pooling", False) is True or getattr(config, "patch_size", None) is None
            )
            readout = "mean" if mean_pooled or pooled or said or config_mean else "last" if last else "cls"
            # a vision model without a CLS token reads the mean of its patch rows instead (known at the first call)
            self._cls_chosen = False
        else:
            self._cls_chosen = readout == "cls"
        if readout not in READOUTS:
            raise InvalidParameterError(
                f"readout must be one of {READOUTS}; got {readout!r}.{did_you_mean(readout, READOUTS)}"
            )
        self.readout = readout
        self.start_layer = 0

    def _matrix_row(
        self,
        attentions: list[torch.Tensor],
        grads: list[torch.Tensor] | None,
        mask: torch.Tensor,
        how: str,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:  # pragma: no cover - interface
        """Row ``how`` of the method's token-by-token matrix; ``rows`` (default ``mask``) marks the rows a ``"mean"``
        readout averages (on images the patch rows) and the columns kept."""
        raise NotImplementedError

    def _image_readout(self, tokens: int, h: int, w: int) -> str:
        """The readout on a vision model of ``tokens`` tokens for an ``h x w`` patch grid: ``self.readout``, but
        the mean of the patch rows where no prefix token precedes them (SigLIP's image tower: no CLS row to read;
        its classifier averages the patch tokens; the tower's attention-pooling head weighs them by a probe's
        attention, which ``output_attentions`` does not return, so the uniform mean stands in for it)."""
        if tokens != h * w or self.readout != "cls":
            return self.readout
        if self._cls_chosen:
            raise InvalidParameterError(
                f"readout='cls' reads the CLS token's row, but {type(self.adapter.model).__name__} has no CLS token: "
                f"its {tokens} tokens are its {h}x{w} patches. Pass readout='mean' (the mean over the patch rows, "
                "what SigLIP's classifier pools) or leave readout out."
            )
        return "mean"

    def _explain(
        self, x: torch.Tensor, target: TargetLike, engine: MaskingEngine, n_backward: list[int]
    ) -> tuple[torch.Tensor, Target, dict[str, Any]]:
        if self._vision:
            return self._explain_images(x, target, engine, n_backward)
        if x.ndim != 3:
            raise InvalidInputError(
                f"{self.name!r} takes the packed text inputs (B, T, D + 1) of adapter.encode(texts); got "
                f"{tuple(x.shape)}."
            )
        from whybox.models.text import TextClassifierAdapter, TextEncoderAdapter

        b, t = x.shape[:2]
        mask = (x[..., -1] > 0.5).to(torch.long)
        encoder = self.adapter if isinstance(self.adapter, TextEncoderAdapter) else None
        own = getattr(self.adapter, "scores_from_output", None)  # an adapter whose scores are not the logits
        # an adapter that keeps its block's output itself (an SAE adapter's capture()) needs no hidden states: a model
        # whose forward does not take output_hidden_states (MiniLMSentiment) then works too
        keeps = callable(getattr(self.adapter, "capture", None))
        extra = {"output_hidden_states": True} if callable(own) and not keeps else {}
        # a decoder's classifier reads its last position (GPT-2 cannot find the last token from inputs_embeds): each
        # token length's rows run cut after their last token, exact under causal attention, as adapter.scores does
        ends = torch.full((b,), t, dtype=torch.long, device=x.device)
        if isinstance(self.adapter, TextClassifierAdapter) and self.adapter.last_token:
            positions = torch.arange(1, t + 1, device=x.device)
            ends = torch.where(mask.bool(), positions, 0).amax(1).clamp_min(1)
        rows_out = x.new_zeros(b, t, dtype=torch.float64)
        logits_out: torch.Tensor | None = None
        n_layers = 0
        groups = [  # rows of one token length, at most batch_size per model call
            chunk
            for end in torch.unique(ends).tolist()
            for chunk in (ends == end).nonzero().flatten().split(self.batch_size)
        ]
        for rows in groups:
            end = int(ends[rows[0]])
            part_mask = mask[rows, :end]
            # a sentence encoder has no head: its scores are the pooled embedding's similarities
            if encoder is not None:
                read: Any = lambda out, m=part_mask: encoder.similarities(encoder.pool(out, m))  # noqa: E731
            else:  # an SAE adapter's features at its block, pooled (None: the classifier's logits)
                read = (lambda out, m=part_mask: own(out, m)) if callable(own) else None
            capture = getattr(self.adapter, "capture", None)  # an SAE adapter keeps its block's raw output
            with capture() if callable(capture) else contextlib.nullcontext():
                logits, attentions, grads = collect_attentions(
                    self.adapter.model,
                    target=_rows_of(target, rows, b),
                    with_grads=self.with_grads,
                    scores=read,
                    space=self.score,
                    inputs_embeds=x[rows, :end, :-1],
                    attention_mask=part_mask,
                    **extra,
                )
            if callable(own):  # an SAE adapter's feature at block `layer`: the layers after it never reach it
                upto = int(getattr(self.adapter, "layer", len(attentions) - 1)) + 1
                attentions = attentions[:upto]
                grads = None if grads is None else grads[:upto]
            n_layers = self._check_layers(attentions)
            row = self._matrix_row(attentions, grads, part_mask, self.readout) * part_mask.to(attentions[0].dtype)
            rows_out[rows, :end] = row.detach().to(torch.float64)
            if logits_out is None:
                logits_out = logits.new_zeros(b, logits.shape[1])
            logits_out[rows] = logits.detach()
        engine.n_forward += b
        if self.with_grads:
            n_backward[0] += b
        if logits_out is None:  # no rows: _validate refuses an empty batch before this
            raise InvalidInputError(f"{self.name!r} needs at least one row.")
        tgt = resolve_target(target, logits_out)
        meta = {"readout": self.readout, "n_layers": n_layers}
        return rows_out.unsqueeze(-1).to(x.dtype), tgt, meta

    def _check_layers(self, attentions: list[torch.Tensor]) -> int:
        if self.start_layer >= len(attentions):
            raise InvalidParameterError(
                f"start_layer={self.start_layer} but the model has {len(attentions)} attention layers."
            )
        return len(attentions)

    def _explain_images(
        self, x: torch.Tensor, target: TargetLike, engine: MaskingEngine, n_backward: list[int]
    ) -> tuple[torch.Tensor, Target, dict[str, Any]]:
        """A vision transformer: the model the adapter runs (its ``preprocess``, its ``output``, an embedding
        adapter's similarities), the CLS row on the patch grid, each patch's value over its pixels (0 on a border the
        patches do not cover), at the input's size (nearest neighbour when ``preprocess`` resizes)."""
        from whybox.models.adapter import EmbeddingAdapter, TorchAdapter

        if x.ndim != 4:
            raise InvalidInputError(
                f"{self.name!r} on a vision transformer takes images (B, C, H, W); got {tuple(x.shape)}."
            )
        adapter = self.adapter
        pre = getattr(adapter, "preprocess", None)
        pixels = pre(x.clone()) if callable(pre) else x  # a preprocess may write into its input (as forward's)
        if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4:
            got = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise InvalidInputError(
                f"{self.name!r} feeds the vision transformer pixel_values (B, C, H, W); the adapter's preprocess "
                f"returned {got}."
            )
        p = _patch_size(adapter) or 1  # set: the explainer took the model as a vision transformer
        height, width = pixels.shape[-2:]
        h, w = height // p, width // p
        parts, logit_parts = [], []
        n_layers = 0
        how = self.readout
        for start in range(0, x.shape[0], self.batch_size):  # at most batch_size images per model call
            chunk = pixels[start : start + self.batch_size]
            n = chunk.shape[0]
            read: Any = None  # the output's .logits
            if isinstance(adapter, EmbeddingAdapter):
                read = lambda out: adapter.similarities(adapter.embed_output(out))  # noqa: E731
            elif isinstance(adapter, TorchAdapter) and adapter.output is not None:
                read = lambda out, n=n: adapter._check(adapter.select(out), n)  # noqa: E731
            logits, attentions, grads = collect_attentions(
                adapter.model, target=_rows_of(target, torch.arange(start, start + n), x.shape[0]),
                with_grads=self.with_grads, scores=read, space=self.score, pixel_values=chunk,
            )  # fmt: skip
            n_layers = self._check_layers(attentions)
            tokens = attentions[0].shape[-1]
            how = self._image_readout(tokens, h, w)
            mask = torch.ones(n, tokens, dtype=torch.long, device=x.device)
            rows = mask.clone()
            rows[:, : max(tokens - h * w, 0)] = 0  # "mean" averages the patch rows: no image model's pooler reads CLS
            parts.append(self._matrix_row(attentions, grads, mask, how, rows).detach())
            logit_parts.append(logits.detach())
        engine.n_forward += x.shape[0]
        if self.with_grads:
            n_backward[0] += x.shape[0]
        row = torch.cat(parts)
        tgt = resolve_target(target, torch.cat(logit_parts))
        grid = to_grid(row, prefix=row.shape[1] - h * w, h=h, w=w)  # CLS (and distillation) columns dropped
        meta = {"readout": how, "n_layers": n_layers, "grid": grid.detach().cpu()}
        full = grid.repeat_interleave(p, dim=1).repeat_interleave(p, dim=2)
        full = torch.nn.functional.pad(full, (0, width - w * p, 0, height - h * p))  # pixels no patch reads: 0
        if tuple(full.shape[-2:]) != tuple(x.shape[-2:]):  # a resizing preprocess: back to the input's pixels
            full = torch.nn.functional.interpolate(full.unsqueeze(1), size=tuple(x.shape[-2:]), mode="nearest")[:, 0]
        return full.unsqueeze(1).to(x.dtype), tgt, meta


def _rows_of(target: TargetLike, rows: torch.Tensor, batch: int) -> TargetLike:
    """The part of ``target`` for ``rows`` of a batch of ``batch``: one target per row is cut, the rest applies
    to every row as it is (an int, a callable, ``None``)."""
    if target is None or isinstance(target, int) or callable(target):
        return target
    try:
        t = torch.as_tensor(target)
    except (TypeError, ValueError, RuntimeError):
        return target  # not a target: resolve_target names it
    if t.ndim == 1 and t.shape[0] == batch:
        return t[rows.cpu()]
    return target


@EXPLAINERS.register("raw_attention")
class RawAttention(AttentionExplainer):
    """One layer's head-fused attention row (default the last layer, mean over heads): ``F^(l)[readout, :]``.
    Class-agnostic."""

    class_agnostic = True

    def __init__(self, model: Any, *, layer: int = -1, head_fusion: str = "mean", **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if head_fusion not in FUSIONS:
            raise InvalidParameterError(
                f"head_fusion must be one of {FUSIONS}; got {head_fusion!r}.{did_you_mean(head_fusion, FUSIONS)}"
            )
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise InvalidParameterError(f"layer must be an int (negative counts from the last); got {layer!r}.")
        self.layer = layer
        self.head_fusion = head_fusion

    def _matrix_row(
        self,
        attentions: list[torch.Tensor],
        grads: list[torch.Tensor] | None,
        mask: torch.Tensor,
        how: str,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not -len(attentions) <= self.layer < len(attentions):
            raise InvalidParameterError(f"layer={self.layer} but the model has {len(attentions)} attention layers.")
        return raw_attention(
            attentions, layer=self.layer, head_fusion=self.head_fusion, readout=how, mask=mask if rows is None else rows
        )


@EXPLAINERS.register("attention_rollout")
class AttentionRollout(AttentionExplainer):
    """Attention rollout (Abnar & Zuidema 2020): ``R = Â^(L) ... Â^(s)``, ``Â = rownorm(fuse(A) + I)``; the
    readout row of R. Class-agnostic."""

    class_agnostic = True

    def __init__(
        self, model: Any, *, head_fusion: str = "mean", discard_ratio: float = 0.0, start_layer: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        self.start_layer = _check_start(start_layer)
        if head_fusion not in FUSIONS:
            raise InvalidParameterError(
                f"head_fusion must be one of {FUSIONS}; got {head_fusion!r}.{did_you_mean(head_fusion, FUSIONS)}"
            )
        if not isinstance(discard_ratio, (int, float)) or isinstance(discard_ratio, bool) or not 0 <= discard_ratio < 1:
            raise InvalidParameterError(f"discard_ratio must be in [0, 1); got {discard_ratio!r}.")
        self.head_fusion = head_fusion
        self.discard_ratio = float(discard_ratio)

    def _matrix_row(
        self,
        attentions: list[torch.Tensor],
        grads: list[torch.Tensor] | None,
        mask: torch.Tensor,
        how: str,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r = attention_rollout(
            attentions,
            head_fusion=self.head_fusion,
            discard_ratio=self.discard_ratio,
            start_layer=self.start_layer,
            mask=mask,
        )
        return readout(r, how, mask=mask if rows is None else rows)


@EXPLAINERS.register("attention_relevance")
class AttentionRelevance(AttentionExplainer):
    """Gradient-weighted attention relevance (Chefer, Gur & Wolf ICCV 2021): ``Ā = E_h[(∇A ⊙ A)^+]``, ``R = I``,
    ``R ← R + Ā R`` per layer from ``start_layer``; the readout row of R. One forward and one backward pass per
    row."""

    with_grads: ClassVar[bool] = True

    def __init__(self, model: Any, *, start_layer: int = 0, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.start_layer = _check_start(start_layer)

    def _matrix_row(
        self,
        attentions: list[torch.Tensor],
        grads: list[torch.Tensor] | None,
        mask: torch.Tensor,
        how: str,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if grads is None:  # pragma: no cover - with_grads is set
            raise InvalidParameterError("attention_relevance needs the attention gradients.")
        r = gradient_weighted_relevance(attentions, grads, start_layer=self.start_layer)
        return readout(r, how, mask=mask if rows is None else rows)
