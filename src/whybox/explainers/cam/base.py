"""The CAM template: tap a layer, turn (activations, gradients) into a map, ReLU, upsample, normalise.

Each variant overrides :meth:`CAM.raw_map` (or, for gradient-free variants, :meth:`CAM._layer_maps`).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from whybox.errors import InvalidParameterError, LayerError, check_bool, did_you_mean
from whybox.explainers.base import Explainer
from whybox.masking.engine import MaskingEngine
from whybox.models.adapter import LayerLike, TorchAdapter, is_signal
from whybox.models.layers import (
    LayerRef,
    auto_layer,
    grid_options,
    layer_spec,
    resolve_layers,
    seen_hw,
    tap,
    to_grid,
)
from whybox.models.onnx import OnnxModel
from whybox.models.targets import Target, TargetLike, apply_score_space, per_row, resolve_target

__all__ = ["CAM", "NORMALIZATIONS", "normalize_maps", "upsample"]

NORMALIZATIONS = ("minmax", "max", "none")


def upsample(maps: torch.Tensor, size: tuple[int, int], *, align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of ``(B, C, h, w)``; half-pixel centres by default (OpenCV ``INTER_LINEAR``)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=align_corners)


def normalize_maps(maps: torch.Tensor, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scaling of ``(B, ...)`` maps; returns ``(maps, degenerate (B,) bool)``.

    A constant row becomes zeros and is flagged; never NaN. Constant means max - min within the rounding of the
    maps' dtype: at most ``max(1e-12, 4 eps) * max(|max|, |min|)`` (eps of the dtype: 4.8e-7 relative in float32,
    where a 1 x 1 layer's map upsampled differs from a constant by about one eps, 1.3e-7; 3 % in bfloat16, whose
    values are that coarse; 1e-12 in float64), and at least 1e-12 absolute.
    """
    b = maps.shape[0]
    flat = maps.reshape(b, -1)
    hi, lo = flat.amax(1), flat.amin(1)
    rel = max(1e-12, 4 * torch.finfo(flat.dtype).eps) if flat.is_floating_point() else 1e-12
    tol = (rel * torch.maximum(hi.abs(), lo.abs())).clamp_min(1e-12)
    degenerate = (hi - lo) <= tol
    if how == "minmax":
        scale = torch.where(degenerate, torch.ones_like(hi), hi - lo)
        out = (flat - lo[:, None]) / scale[:, None]
    elif how == "max":  # by the largest |value|: a signed map (relu=False) keeps its signs and order
        top = torch.maximum(hi.abs(), lo.abs())
        degenerate = degenerate | (top <= tol)
        scale = torch.where(degenerate, torch.ones_like(top), top)
        out = flat / scale[:, None]
    elif how == "none":
        return maps, degenerate
    else:
        raise InvalidParameterError(
            f"normalize must be one of {NORMALIZATIONS}; got {how!r}.{did_you_mean(how, NORMALIZATIONS)}"
        )
    out = torch.where(degenerate[:, None], torch.zeros_like(out), out)
    return out.view_as(maps), degenerate


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)  # one chunk: no copy


class CAM(Explainer):
    """Class activation maps at one or more layers.

    Parameters
    ----------
    layer
        A module name (``"features.3"``; ``"act@1"`` for the second call of a reused module), a module, a
        list of them (maps min-max scaled per layer unless ``normalize="none"``, then averaged), or ``None``: the
        adapter's
        ``layers`` or else the last layer with a spatial output (reported in ``meta["layer"]``).
    relu
        Apply ReLU to the raw map (the papers and pytorch-grad-cam do).
    normalize
        ``"minmax"`` (default), ``"max"`` (divided by the row's largest ``|value|``: in [-1, 1], signs kept) or
        ``"none"``, per row after upsampling.
    upsample
        Resize to the input's H x W (bilinear, half-pixel centres); ``False`` keeps the layer's resolution.

    Shapes
    ------
    inputs ``(B, C, H, W)`` -> attributions ``(B, 1, H, W)`` (or ``(B, 1, h, w)`` with ``upsample=False``);
    1-D signals ``(B, C, L)`` of a model with an ``nn.Conv1d`` (:func:`~whybox.models.adapter.is_signal`) ->
    ``(B, 1, L)``, from a layer output ``(B, K, L')`` read channels first and resized linearly along L.
    """

    image_only = True
    takes_signals = True
    takes_packed_images = True  # a model of several inputs: the map of its image input (gradient CAMs)
    input_kinds = ("image", "signal")
    uses_gradients = True
    #: whether the weights divide by a channel's activation sum (Grad-CAM++, XGrad-CAM): warned at a signed layer
    divides_by_activation_sum: ClassVar[bool] = False

    def __init__(
        self,
        model: Any,
        *,
        layer: LayerLike | Sequence[LayerLike] | None = None,
        relu: bool = True,
        normalize: str = "minmax",
        upsample: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if not isinstance(self.adapter, TorchAdapter):
            raise InvalidParameterError(
                f"method {self.name!r} taps a layer of a torch model; {type(self.adapter.model).__name__} has "
                "none. Use a method that needs only the model's outputs: 'occlusion', 'feature_ablation', "
                "'kernel_shap' or 'lime' (and 'rise' on images)."
            )
        graph = getattr(self.adapter.model, "fn", None)
        if isinstance(graph, OnnxModel):  # a FunctionModel would only say "a function has no layers" later
            raise LayerError(
                f"method {self.name!r} taps a layer of a torch model, but ONNX model {graph.name!r} runs in ONNX "
                "Runtime, outside torch, so whybox can hook none of its layers; use 'rise', 'lima' or a perturbation "
                "method (they need only the outputs), or explain the torch module the graph was exported from."
            )
        if normalize not in NORMALIZATIONS:
            raise InvalidParameterError(
                f"normalize must be one of {NORMALIZATIONS}; got {normalize!r}.{did_you_mean(normalize, NORMALIZATIONS)}"
            )
        self.layer = layer_spec(layer)  # layer=2: the module named '2'
        self.relu = check_bool("relu", relu)
        self.normalize = normalize
        self.upsample = check_bool("upsample", upsample)

    def params(self) -> dict[str, Any]:
        p = super().params()
        lay = self.layer
        if lay is not None:
            items = [lay] if isinstance(lay, (str, torch.nn.Module)) else list(lay)
            p["layer"] = [i if isinstance(i, str) else type(i).__name__ for i in items]
        return p

    # ------------------------------------------------------------------ to override
    def raw_map(self, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Map before ReLU, ``(B, h, w)``, from activations and gradients ``(B, K, h, w)``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ pipeline
    def _refs(self, x: torch.Tensor, engine: MaskingEngine, n_backward: list[int]) -> list[LayerRef]:
        adapter = self.adapter
        if not isinstance(adapter, TorchAdapter):  # pragma: no cover - checked in __init__
            raise LayerError("CAM methods need a torch model.")
        spec = self.layer if self.layer is not None else adapter.default_layers
        if spec is None:
            ref, forwards, backwards = auto_layer(adapter, x)
            engine.n_forward += forwards
            n_backward[0] += backwards
            return [ref]
        return resolve_layers(adapter, spec)

    def _chunk(
        self, xi: torch.Tensor, refs: list[LayerRef], t: TargetLike, labels: list[str]
    ) -> tuple[list[torch.Tensor], tuple[torch.Tensor | None, ...] | None, Target]:
        """One chunk's activations at ``refs``, their gradients (methods that use them; else None) and target.

        Safe to repeat after a failure (the engine retries a chunk the model refused in channels-last layout):
        the hooks live for this call only, and passes are counted by the caller."""
        with tap(refs, leaf=self.uses_gradients) as tp:
            if not self.uses_gradients:
                with torch.no_grad():
                    raw = self.adapter.scores(xi)
                return tp.activations(), None, resolve_target(t, raw)
            with torch.enable_grad():
                raw = self.adapter.scores(xi)
                a = tp.activations()
                tc = resolve_target(t, raw.detach())
                sel = tc.select(apply_score_space(raw, self.score))
                if not sel.requires_grad:
                    raise LayerError(
                        f"the target score does not depend on layer(s) {labels} (no gradient path); "
                        "choose a layer between the input and the scores."
                    )
                g = torch.autograd.grad(sel.sum(), a, allow_unused=True)
            return a, g, tc

    def _activations(
        self, x: torch.Tensor, refs: list[LayerRef], target: TargetLike, engine: MaskingEngine, n_backward: list[int]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, Target]:
        """Activations (and gradients when the method uses them) at ``refs`` for all rows, chunked."""
        acts: list[list[torch.Tensor]] = [[] for _ in refs]
        grads: list[list[torch.Tensor]] = [[] for _ in refs]
        idx: list[torch.Tensor] = []
        fn = None
        labels = [r.label for r in refs]
        target = per_row(target, x.shape[0])  # a sequence of the wrong length fails here, not chunk by chunk
        for s in range(0, x.shape[0], self.batch_size):
            xi = x[s : s + self.batch_size]
            t = target
            if isinstance(t, torch.Tensor):
                t = t[s : s + xi.shape[0]]
            a, g, tc = engine.call(functools.partial(self._chunk, refs=refs, t=t, labels=labels), xi)
            if g is not None:
                n_backward[0] += xi.shape[0]
                for j, (gj, aj) in enumerate(zip(g, a, strict=True)):
                    grads[j].append(torch.zeros_like(aj) if gj is None else gj)
            engine.n_forward += xi.shape[0]
            engine.n_batches += 1
            for j, aj in enumerate(a):
                if aj.ndim > 0 and aj.shape[0] != xi.shape[0]:
                    raise LayerError(
                        f"layer {labels[j]!r} outputs shape {tuple(aj.shape)}, whose first axis holds "
                        f"{aj.shape[0]} rows for a batch of {xi.shape[0]} inputs: no map of each input (the model "
                        "folds something into the batch there: a windowed attention's windows, as inside a Swin "
                        "block, a video's frames, test-time augmented copies, or it is a sequence-first (N, B, D) "
                        "output); choose a layer after the rows are folded back into one per input (a Swin block's "
                        "output or its layernorm_after, a stage's output; for frames, the layer after they are "
                        "pooled or reshaped back)."
                    )
                acts[j].append(aj.detach())
            idx.append(tc.index)
            fn = tc.fn
        tgt = Target(_cat(idx), fn)
        sig = is_signal(self.adapter, x)
        hw = seen_hw(self.adapter, x)  # a ViT's tokens lay out on the image its model sees (behind a resize)
        model = getattr(self.adapter, "model", None)
        lay = functools.partial(to_grid, signal=sig, hw=hw, **grid_options(model))
        a_all = [lay(_cat(v), lab) for v, lab in zip(acts, labels, strict=True)]
        g_all = [lay(_cat(v), lab) for v, lab in zip(grads, labels, strict=True)] if self.uses_gradients else None
        return a_all, g_all, tgt

    def _layer_maps(
        self,
        x: torch.Tensor,
        acts: list[torch.Tensor],
        grads: list[torch.Tensor] | None,
        tgt: Target,
        engine: MaskingEngine,
    ) -> list[torch.Tensor]:
        if grads is None:  # pragma: no cover - gradient CAMs always collect gradients
            raise RuntimeError(f"{self.name}: gradients were not collected.")
        return [self.raw_map(a, g) for a, g in zip(acts, grads, strict=True)]

    def _explain(
        self, x: torch.Tensor, target: TargetLike, engine: MaskingEngine, n_backward: list[int]
    ) -> tuple[torch.Tensor, Target, dict[str, Any]]:
        packing: Any = getattr(self.adapter, "packing", None)
        image = None if packing is None else _packed_image(packing, self.name)  # before any model call
        if image is not None and not self.upsample:
            raise InvalidParameterError(
                f"upsample=False keeps {self.name}'s map at the layer's grid, but the rows of a model of several inputs "
                f"get the map painted on their image input at its size {tuple(packing.shapes[image][1:])}; use "
                "upsample=True (the default)."
            )
        refs = self._refs(x, engine, n_backward)
        acts, grads, tgt = self._activations(x, refs, target, engine, n_backward)
        if self.divides_by_activation_sum:
            for ref, a in zip(refs, acts, strict=True):
                _warn_signed(a, ref.label, self.name)
        raw_maps = self._layer_maps(x, acts, grads, tgt, engine)
        signal = x.ndim == 3  # a 1-D signal (B, C, L): its maps are one-row grids (B, 1, 1, L'), resized along L
        size = (1, x.shape[-1]) if signal else tuple(x.shape[-2:])
        if image is not None:  # packed rows of several inputs: the map of the image input, at its size
            size = packing.shapes[image][1:]
        maps = []
        all_negative = torch.zeros(x.shape[0], dtype=torch.bool)
        degenerate = torch.zeros(x.shape[0], dtype=torch.bool)
        for m in raw_maps:
            m = m.unsqueeze(1)
            all_negative |= (m.reshape(m.shape[0], -1).amax(1) <= 0).cpu()
            if self.relu:
                m = m.clamp_min(0)
            if self.upsample:
                m = upsample(m, size)  # type: ignore[arg-type]
            if len(raw_maps) > 1 and self.normalize != "none":
                m, _ = normalize_maps(m, "minmax")
            maps.append(m)
        if len({tuple(m.shape) for m in maps}) > 1:  # only with upsample=False: the layers' own grids differ
            grids = ", ".join(f"{r.label!r} {tuple(m.shape[-2:])}" for r, m in zip(refs, maps, strict=True))
            raise InvalidParameterError(
                f"layer= names layers of different resolutions ({grids}), whose maps upsample=False cannot average; "
                "use upsample=True (the input's size), or layers of one resolution."
            )
        out = torch.stack(maps).mean(0) if len(maps) > 1 else maps[0]
        out, deg = normalize_maps(out, self.normalize)
        if signal:
            out = out.squeeze(2)
        if image is not None:  # painted on the image input's values (every channel of a pixel), 0 on the others
            out = _paint_packed(out, packing, image)
        degenerate |= deg.cpu()
        meta: dict[str, Any] = {
            "layer": [r.label for r in refs],
            "layer_shape": [[a.shape[1], a.shape[3]] if signal else list(a.shape[1:]) for a in acts],
            "degenerate": [bool(v) for v in degenerate.tolist()],
            "all_negative": [bool(v) for v in all_negative.tolist()],
        }
        return out, tgt, meta


#: a channel's |sum of activations| below this share of its sum of |activations| counts as cancelled (_warn_signed)
CANCEL_SHARE = 1e-3


def _warn_signed(a: torch.Tensor, layer: str, method: str) -> None:
    """Warn where ``method`` divides by a channel's activation sum (Grad-CAM++, XGrad-CAM assume post-ReLU
    activations, ATTRIBUTION.md §2.0) at a layer with negative activations where a channel's sum all but cancels
    (below :data:`CANCEL_SHARE` of its magnitude): its weight is unbounded there, and that one channel can decide
    the map. (A signed layer alone is common, a ViT's tokens: it is the cancellation that breaks the weights.)"""
    if a.numel() == 0 or not bool(a.amin() < 0):  # one reduction (a mask's any() took 13x as long: every call)
        return
    sums = a.sum((2, 3))
    mass = a.abs().sum((2, 3))
    bad = (sums.abs() <= CANCEL_SHARE * mass) & (mass > 0)  # a channel whose signed activations all but cancel
    if bool(bad.any()):
        warnings.warn(
            f"{method}: layer {layer!r} has signed activations, and in {int(bad.any(0).sum())} channel(s) they all "
            "but cancel; its weights divide by that sum (unbounded: one channel can decide the map). Choose a layer "
            "after its activation function (e.g. the ReLU module), or use 'gradcam' or 'layercam'.",
            stacklevel=4,
        )


def _packed_image(packing: Any, method: str) -> int:
    """The index of the one image input ``(C, H, W)`` of a model of several inputs, which a CAM maps."""
    images = packing.images
    if len(images) != 1:
        raise InvalidParameterError(
            f"{method!r} maps the one image input of a model of several inputs; this one has {len(images)} "
            f"({packing.shapes}). Use a method of whybox.methods('tabular') on its packed rows."
        )
    return images[0]


def _paint_packed(maps: torch.Tensor, packing: Any, image: int) -> torch.Tensor:
    """CAM maps ``(B, 1, H, W)`` as packed attributions ``(B, F)``: each pixel's value on every channel of the image
    input, 0 on the other inputs."""
    b = maps.shape[0]
    parts = [
        maps.expand(b, *packing.shapes[i]).reshape(b, -1) if i == image else maps.new_zeros(b, packing.sizes[i])
        for i in range(len(packing.shapes))
    ]
    return torch.cat(parts, 1)
