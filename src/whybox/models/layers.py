"""Layer taps: capture a layer's activation (and make it a gradient leaf) inside a ``with`` block.

A layer is named by its module path (``"features.3"``), optionally with a call index for a module
the forward pass runs more than once (``"_swish@1"`` = its second call, ``"_swish@-1"`` = its last).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypedDict

import torch
from torch import nn

from whybox.errors import LayerError, did_you_mean
from whybox.models.adapter import FunctionModel, LayerLike, TorchAdapter, is_signal

__all__ = ["LayerRef", "auto_layer", "resolve_layers", "tap", "to_grid"]


@dataclass(frozen=True)
class LayerRef:
    """A resolved layer: its name, the module and which call of it (``None`` = the only call)."""

    name: str
    module: nn.Module = field(compare=False)
    call: int | None = None

    @property
    def label(self) -> str:
        return self.name if self.call is None else f"{self.name}@{self.call}"


def _find(model: nn.Module, spec: LayerLike) -> LayerRef:
    if isinstance(spec, nn.Module):
        for name, mod in model.named_modules():
            if mod is spec:
                return LayerRef(name, mod)
        raise LayerError(
            f"layer={type(spec).__name__} module is not part of the model; pass one of its submodules "
            "or a name from dict(model.named_modules())."
        )
    if not isinstance(spec, str):
        raise LayerError(f"layer must be a module name or an nn.Module; got {type(spec).__name__}.")
    name, call = spec, None
    if "@" in spec:
        name, _, c = spec.rpartition("@")
        try:
            call = int(c)
        except ValueError:
            raise LayerError(
                f"layer={spec!r}: the part after '@' must be an integer call index, e.g. 'act@1'."
            ) from None
    modules = dict(model.named_modules())
    if name and name not in modules:  # a second name of a module registered twice (one ReLU at '1' and '3')
        alias = dict(model.named_modules(remove_duplicate=False)).get(name)
        first = next((n for n, mod in modules.items() if mod is alias), None) if alias is not None else None
        if first is not None:
            return LayerRef(first, modules[first], call)
    if name not in modules or name == "":
        names = [n for n in modules if n]
        hint = did_you_mean(name, names, n=3, cutoff=0.5)
        shown = ", ".join(names[-12:])
        raise LayerError(
            f"layer={spec!r} is not a module of {type(model).__name__}.{hint} "
            f"The last modules are: {shown} (all: dict(model.named_modules()))."
        )
    return LayerRef(name, modules[name], call)


def layer_spec(layers: Any) -> Any:
    """``layers`` with an int read as the name it writes (``layer=2``: an ``nn.Sequential``'s module ``'2'``, as
    ``--option layer=2`` parses), alone or in a list; anything else unchanged."""
    if isinstance(layers, int) and not isinstance(layers, bool):
        return str(layers)
    if isinstance(layers, (list, tuple)):
        return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in layers]
    return layers


def resolve_layers(adapter: TorchAdapter, layers: LayerLike | Sequence[LayerLike]) -> list[LayerRef]:
    """Resolve names/modules to :class:`LayerRef`; unknown names list the close and the last ones."""
    layers = layer_spec(layers)
    if not isinstance(layers, (str, nn.Module, list, tuple)):
        raise LayerError(
            f"layer must be a module name, an nn.Module or a list of them; got {type(layers).__name__} {layers!r}. "
            "Names are those of dict(model.named_modules())."
        )
    specs = [layers] if isinstance(layers, (str, nn.Module)) else list(layers)
    if not specs:
        raise LayerError("layers must name at least one layer; got an empty list.")
    return [_find(adapter.model, s) for s in specs]


#: leading tokens a ViT may put before its patches, in the order tried: a class token; none; class and
#: distillation tokens (DeiT); a class token and registers (DINOv2 with registers)
_PREFIXES = (1, 0, 2, 3, 4, 5)


def token_grid(
    n: int,
    hw: tuple[int, int] | None = None,
    grids: Sequence[tuple[int, int]] = (),
    patches: Sequence[tuple[int, int]] = (),
    *,
    hierarchical: bool = False,
) -> tuple[int, int, int] | None:
    """``(prefix, h, w)``: how ``n`` ViT tokens lay out as leading tokens and an ``h x w`` patch grid. First, given
    the image's ``hw``, a class token (or none) and the grid of the model's declared ``patches`` (else of any patch
    size dividing both sides) over it (a 16 x 64 image of 8-pixel patches is 2 x 8, not 4 x 4); then the model's own
    ``grids`` (its config's image size over its patch size: what it sees after a resizing preprocess); then a square
    grid of N - 1 or N tokens; then more leading tokens over the image. ``None`` when none fits.

    A ``hierarchical`` model (Swin: each stage merges 2 x 2 patches) has no leading token, and ``patches`` and
    ``grids`` list every stage's: stage ``k`` is the image over ``patch * 2**k``, rounded up (the model pads the
    image to whole patches, a stage to an even size), so a 32 x 80 image of 4-pixel patches is 8 x 20, 4 x 10 and
    2 x 5. Where the image's size is known and no stage fits, ``None``: a square guess there would lay a stage's
    tokens out wrong (2 x 5 tokens as 3 x 3 and a class token)."""
    prefixes = (0,) if hierarchical else _PREFIXES
    sizes: list[tuple[int, int]] = []
    known = hw is not None and hw[0] > 0 and hw[1] > 0
    if known and hierarchical:
        sizes = [(a, b) for a, b in patches if a > 0 and b > 0]  # padded to whole patches: any size fits
    elif known and hw is not None:
        # the model's own patch size where it declares one (another size dividing the image would be chance: a
        # 360 x 640 frame resized to a 384-px ViT is 18 x 32 patches of 20 px, the same count as its 24 x 24)
        sizes = [(a, b) for a, b in patches if a > 0 and b > 0 and hw[0] % a == 0 and hw[1] % b == 0]
        if not patches:
            sizes = [(p, p) for p in range(1, min(hw) + 1) if hw[0] % p == 0 and hw[1] % p == 0]

    def on_image(prefix: int) -> tuple[int, int, int] | None:
        height, width = hw or (0, 0)
        for a, b in sizes:  # (empty without hw)
            h, w = (-(-height // a), -(-width // b)) if hierarchical else (height // a, width // b)
            if n - prefix > 1 and h * w == n - prefix:
                return prefix, h, w
        return None

    # the declared grid (what the model sees behind a resizing preprocess) against the image's own (a model taking
    # other sizes than its config's: timm's dynamic size, interpolated position embeddings): where both fit with
    # the same leading tokens the image's is the model's; where they need different ones the image's is chance
    declared = next(
        ((prefix, h, w) for h, w in grids for prefix in prefixes if h * w > 1 and h * w == n - prefix), None
    )
    on = next((found for prefix in prefixes if (found := on_image(prefix)) is not None), None)
    if on is not None and (declared is None or on[0] == declared[0]) and (on[0] in (0, 1) or patches):
        return on
    if declared is not None:
        return declared
    if hierarchical and known:
        return None
    for prefix in (0,) if hierarchical else (1, 0):  # no declared grid: a square (a resizing preprocess), then more
        side = math.isqrt(max(n - prefix, 0))  # leading tokens
        if n - prefix > 0 and side * side == n - prefix:
            return prefix, side, side
    return on


#: Hugging Face model types whose stages each merge 2 x 2 patches (Swin's patch merging, FocalNet's downsampling)
#: and read no class token: their tokens lay out on one grid per stage (:func:`token_grid`)
_HIERARCHICAL = frozenset({"swin", "swinv2", "donut-swin", "maskformer-swin", "focalnet"})


def model_grids(model: Any) -> list[tuple[int, int]]:
    """The patch grids a vision transformer declares: a Hugging Face config's ``image_size`` over its
    ``patch_size`` (CLIP: its vision config's; Swin: each stage's), a timm model's ``patch_embed.grid_size``;
    empty for other models."""
    return [g for g, _ in _declared(model)]


def model_patches(model: Any) -> list[tuple[int, int]]:
    """The patch sizes ``(ph, pw)`` a vision transformer declares (as :func:`model_grids`; Swin: each stage's)."""
    return [p for _, p in _declared(model) if p[0] and p[1]]


def model_hierarchical(model: Any) -> bool:
    """Whether ``model`` is a hierarchical vision transformer (Swin, Swin V2, Donut's and MaskFormer's Swin,
    FocalNet: a Hugging Face config of one of those types), whose token grid halves at each stage."""
    return any(_stages(c) > 0 for c in _configs(model))


class GridOptions(TypedDict):
    """What :func:`token_grid` reads from a model (:func:`grid_options`)."""

    grids: list[tuple[int, int]]
    patches: list[tuple[int, int]]
    hierarchical: bool


def grid_options(model: Any) -> GridOptions:
    """The keyword arguments :func:`token_grid` (and :func:`to_grid`) take from ``model``: its declared ``grids``
    and ``patches`` and whether it is ``hierarchical``."""
    return {"grids": model_grids(model), "patches": model_patches(model), "hierarchical": model_hierarchical(model)}


def _configs(model: Any) -> list[Any]:
    cfg = getattr(model, "config", None)
    return [c for c in (cfg, getattr(cfg, "vision_config", None)) if c is not None]


def _stages(config: Any) -> int:
    """The number of stages of a hierarchical model's ``config`` (its ``depths``); 0 for other models."""
    if getattr(config, "model_type", None) not in _HIERARCHICAL:
        return 0
    depths = getattr(config, "depths", None)
    return len(depths) if isinstance(depths, (list, tuple)) else 0


def _declared(model: Any) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    out: list[tuple[tuple[int, int], tuple[int, int]]] = []
    for c in _configs(model):
        size, patch = getattr(c, "image_size", None), getattr(c, "patch_size", None)
        if size is None or patch is None:
            continue
        (hs, ws), (hp, wp) = _pair(size), _pair(patch)
        stages = _stages(c)
        if stages and hs and ws and hp and wp:  # stage k: patches of patch * 2**k, the image padded to whole ones
            for k in range(stages):
                ph, pw = hp << k, wp << k
                out.append(((-(-hs // ph), -(-ws // pw)), (ph, pw)))
        elif hs and ws and hp and wp and hs % hp == 0 and ws % wp == 0:
            out.append(((hs // hp, ws // wp), (hp, wp)))
    embed = getattr(model, "patch_embed", None)
    grid = getattr(embed, "grid_size", None)
    if grid is not None:
        pair = _pair(grid)
        if pair[0] and pair[1]:
            out.append((pair, _pair(getattr(embed, "patch_size", 0))))
    return out


def _pair(v: Any) -> tuple[int, int]:
    try:
        if isinstance(v, (int, float)):
            return int(v), int(v)
        a, b = tuple(v)[:2]
        return int(a), int(b)
    except (TypeError, ValueError):
        return 0, 0


def to_grid(
    a: torch.Tensor,
    label: str,
    *,
    signal: bool = False,
    hw: tuple[int, int] | None = None,
    grids: Sequence[tuple[int, int]] = (),
    patches: Sequence[tuple[int, int]] = (),
    hierarchical: bool = False,
) -> torch.Tensor:
    """Activations as ``(B, C, h, w)``: 4-D as is; ViT tokens ``(B, N, D)`` as their patch grid over an image of
    ``hw`` (:func:`token_grid`: leading class/distillation tokens dropped; a ``hierarchical`` model's stage grids);
    with ``signal`` (the inputs are 1-D signals) a Conv1d-style ``(B, C, L)`` output as a one-row grid ``(B, C, 1, L)``."""
    if signal:
        if a.ndim == 3:
            return a.unsqueeze(2)
        raise LayerError(
            f"layer {label!r} outputs shape {tuple(a.shape)}; on 1-D signals CAM methods need a layer whose output is "
            "(B, C, L) channels first, as an nn.Conv1d gives."
        )
    if a.ndim == 4:
        return a
    if a.ndim == 3:
        n = a.shape[1]
        layout = token_grid(n, hw, grids, patches, hierarchical=hierarchical)
        if layout is not None:
            prefix, h, w = layout
            return a[:, prefix:, :].transpose(1, 2).reshape(a.shape[0], a.shape[2], h, w)
        over = f" of a {hw[0]} x {hw[1]} image" if hw is not None else ""
        lead = (
            "at any stage of this hierarchical model (the image over the patch size times 2**stage, rounded up)"
            if hierarchical
            else f"(after up to {max(_PREFIXES)} class, distillation or register tokens)"
        )
        raise LayerError(
            f"layer {label!r} outputs tokens {tuple(a.shape)} whose count {n} is no patch grid{over} {lead}; "
            "choose a layer with a spatial output."
        )
    raise LayerError(
        f"layer {label!r} outputs shape {tuple(a.shape)}; CAM methods need (B, C, h, w) or ViT tokens (B, N, D). "
        "Choose a convolutional or transformer-block layer."
    )


class _Capture:
    def __init__(self, ref: LayerRef, leaf: bool) -> None:
        self.ref = ref
        self.leaf = leaf
        self.calls = 0
        self.outputs: dict[int, torch.Tensor] = {}

    def _wanted(self, k: int) -> bool:
        # a non-negative call index is known in advance: keep only that call (no graph for the others);
        # None (one call expected) and negative indices keep every call until the count is known
        c = self.ref.call
        return c is None or c < 0 or k == c

    def hook(self, module: nn.Module, args: object, out: object) -> object:
        k = self.calls
        self.calls += 1
        if not isinstance(out, torch.Tensor):
            raise LayerError(
                f"layer {self.ref.label!r} returns {type(out).__name__}, not a tensor; tap a module whose "
                "output is a tensor."
            )
        if not self._wanted(k):
            return None
        if self.leaf:
            a = out.detach().requires_grad_(True)
            self.outputs[k] = a
            if out.requires_grad:
                # an earlier tap (another layer, or an earlier call of this module) feeds ``out``: keep
                # that path open so its gradient is the total derivative, not cut here
                return a + (out - out.detach())
            return a.clone()  # downstream in-place ops act on the copy; gradients still reach ``a``
        self.outputs[k] = out.detach().clone()  # a copy: an in-place op downstream must not change it
        return None

    def activation(self) -> torch.Tensor:
        n = self.calls
        if n == 0:
            raise LayerError(
                f"layer {self.ref.label!r} did not run during the forward pass; choose a layer on the path "
                "from the input to the scores."
            )
        if self.ref.call is None:
            if n > 1:
                raise LayerError(
                    f"layer {self.ref.name!r} ({type(self.ref.module).__name__}) runs {n} times per forward pass "
                    f"(one module reused), so its activation is ambiguous. Name one call, e.g. "
                    f"'{self.ref.name}@{n - 1}' for the last, or tap the block that contains it."
                )
            return self.outputs[0]
        if not -n <= self.ref.call < n:
            raise LayerError(
                f"layer {self.ref.label!r}: the module runs {n} times per forward pass; use a call index in "
                f"0..{n - 1} (or negative from the end)."
            )
        return self.outputs[self.ref.call % n]


class Tap:
    """Activations captured during one forward; ``activations()`` in the order of the layer list."""

    def __init__(self, captures: list[_Capture]) -> None:
        self._captures = captures

    def activations(self) -> list[torch.Tensor]:
        return [c.activation() for c in self._captures]

    def reset(self) -> None:
        for c in self._captures:
            c.calls = 0
            c.outputs.clear()


def check_hookable(module: nn.Module, owner: nn.Module | None = None) -> None:
    """A :class:`LayerError` for a TorchScript module, on which forward hooks cannot be registered (torch raises a
    bare RuntimeError): CAM methods and layer taps need the model as Python code."""
    if isinstance(module, torch.jit.ScriptModule):
        what = type(owner if owner is not None else module).__name__
        raise LayerError(
            f"this method taps a layer with a forward hook, which TorchScript modules do not support ({what} was "
            "made by torch.jit.script or torch.jit.trace). Pass the original nn.Module (the one that was scripted), "
            "or use a method that needs no layer: saliency, input_x_gradient, integrated_gradients, smoothgrad, "
            "occlusion, rise, lime, kernel_shap, lima."
        )


@contextmanager
def tap(refs: Sequence[LayerRef], *, leaf: bool) -> Iterator[Tap]:
    """Capture the outputs of ``refs`` during forwards inside the block; hooks removed on every exit.

    With ``leaf=True`` each captured activation is a fresh autograd leaf, so
    ``torch.autograd.grad(score, activation)`` gives gradients to the layer only (nothing before the
    first tapped output is recorded, no weight gradients). A later tap, or a later call of a reused
    module, passes gradients on to earlier ones, so each gets the total derivative of the score.
    """
    captures = [_Capture(r, leaf) for r in refs]
    handles = []
    try:
        for c in captures:
            check_hookable(c.ref.module)
            handles.append(c.ref.module.register_forward_hook(c.hook))
        yield Tap(captures)
    finally:
        for h in handles:
            h.remove()


_AUTO: weakref.WeakKeyDictionary[nn.Module, dict[tuple[object, ...], tuple[str, int | None]]] = (
    weakref.WeakKeyDictionary()
)


def _scoring_key(adapter: TorchAdapter) -> tuple[object, ...] | None:
    """What decides which score the chosen layer must reach besides the model (two heads of one model have different
    layers): the output selected by name or index. ``None`` (not cached: an object's id may be reused once it is
    gone) for a callable output, a preprocess or an embedding adapter's references."""
    out = getattr(adapter, "output", None)
    if callable(out) or getattr(adapter, "preprocess", None) is not None or hasattr(adapter, "references"):
        return None
    return (repr(out),)


def auto_layer(adapter: TorchAdapter, x: torch.Tensor) -> tuple[LayerRef, int, int]:
    """The layer CAM methods use by default: the last module call (in finishing order) whose output is a
    spatial map ``(B, C, h, w)`` with ``h * w > 1`` or a ViT token grid (:func:`token_grid`, over the image the
    model sees: :func:`seen_hw`), one row per input (a Swin block's windowed attention puts a batch of windows
    first), and on whose grid the predicted class's score depends.

    The dependence matters for transformers: a ViT classifier reads only the class token after its last block,
    so the final LayerNorm's patch tokens (and the last block's own output) get no gradient and their CAM is 0
    everywhere; the layer chosen is then the last one in the last block whose patch tokens reach the class token
    through attention (in Hugging Face's ViT its value projection; pytorch-grad-cam advises that block's first
    LayerNorm, which feeds that projection). A CNN's last spatial layer is kept as before.

    A reused module gets a call index (EfficientNet-Lite's single ReLU6 gives ``"_swish@1"``).
    The choice is probed with one single-row forward and backward and remembered per (model, input shape, module
    count); returns ``(layer, forward passes spent, backward passes spent)`` (one row each the first time, 0 after).
    Where no gradient can be taken, the last spatial layer is used.
    """
    model = adapter.model
    check_hookable(model)
    modules = dict(model.named_modules())
    signal = is_signal(adapter, x)
    options = grid_options(model)
    scoring = _scoring_key(adapter)
    key = None if scoring is None else (tuple(x.shape[1:]), x.dtype, len(modules), type(adapter).__name__, *scoring)
    known = None if key is None else _AUTO.get(model, {}).get(key)
    if known is not None and known[0] in modules:
        return LayerRef(known[0], modules[known[0]], known[1]), 0, 0
    events: list[tuple[str, int, torch.Tensor]] = []
    counts: dict[str, int] = {}
    handles = []

    def make(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(module: nn.Module, args: object, out: object) -> None:
            k = counts.get(name, 0)
            counts[name] = k + 1
            if isinstance(out, torch.Tensor):
                events.append((name, k, out))

        return hook

    probe = x[:1].detach().clone()
    if probe.is_floating_point():
        probe.requires_grad_(True)  # a graph through every module, even with frozen weights
    try:
        for name, mod in model.named_modules():
            if name:
                handles.append(mod.register_forward_hook(make(name)))
        with torch.enable_grad():
            scores = adapter.scores(probe)
    finally:
        for h in handles:
            h.remove()
    fix = (
        "a function has no layers to read: pass the torch.nn.Module itself, or use 'rise' or a perturbation method "
        "(they need only the outputs)."
        if isinstance(model, FunctionModel)
        else "pass layer= explicitly."
    )
    hw = None if signal else seen_hw(adapter, x)  # the grid of what the model sees (behind a resizing preprocess)
    if signal:
        spatial = list(reversed(_signal_outputs(events, modules)))
        if not spatial:
            raise LayerError(
                f"no layer of {type(model).__name__} produces a (B, C, L) output with L > 1 after an nn.Conv1d; {fix}"
            )
    else:
        # one row per input (the probe's one): a windowed attention's batch of windows is no map of the input
        maps = [(name, k, t) for name, k, t in reversed(events) if _is_spatial(tuple(t.shape), hw, **options)]
        spatial = [(name, k, t) for name, k, t in maps if t.shape[0] == probe.shape[0]]
        if not spatial:
            folded = (
                f" ({len(maps)} spatial outputs, e.g. {maps[0][0]!r} of shape {tuple(maps[0][2].shape)} for one input, "
                "hold more than one row per input: the model folds frames, windows or augmented copies into the "
                "batch there, so none is a map of each input)"
                if maps
                else ""
            )
            if maps:  # a layer passed by name would be refused alike
                fix = "use a gradient or perturbation method (saliency, integrated_gradients, occlusion, rise, lima)."
            raise LayerError(
                f"no layer of {type(model).__name__} produces a spatial (B, C, h, w) output of one row per input"
                f"{folded}; {fix}"
            )
    chosen = spatial[0]
    reached = _reached(scores, [t for _, _, t in spatial], signal=signal, hw=hw, **options)
    if reached is not None and any(reached):
        chosen = spatial[reached.index(True)]
    name, k, _ = chosen
    call = k if counts[name] > 1 else None
    if key is not None:
        _AUTO.setdefault(model, {})[key] = (name, call)
    return LayerRef(name, modules[name], call), 1, int(reached is not None)


def _signal_outputs(
    events: list[tuple[str, int, torch.Tensor]], modules: dict[str, nn.Module]
) -> list[tuple[str, int, torch.Tensor]]:
    """The module calls, in finishing order, whose output is a Conv1d-style map ``(B, C, L)`` with ``L > 1``: an
    ``nn.Conv1d``'s, and those after it that keep its ``C`` channels (its norm, activation, pooling), so that a
    channels-last ``(B, T, D)`` output (a Linear or a transformer block on time steps) is never read as one."""
    out = []
    channels = None
    for name, k, t in events:
        if isinstance(modules[name], nn.Conv1d) and t.ndim == 3:
            channels = t.shape[1]
        if channels is not None and t.ndim == 3 and t.shape[1] == channels and t.shape[2] > 1:
            out.append((name, k, t))
    return out


def _is_spatial(
    shape: tuple[int, ...],
    hw: tuple[int, int] | None = None,
    grids: Sequence[tuple[int, int]] = (),
    patches: Sequence[tuple[int, int]] = (),
    hierarchical: bool = False,
) -> bool:
    """A ``(B, C, h, w)`` map with ``h * w > 1`` or ``(B, N, D)`` tokens of ``D > 1`` features that lay out as a
    patch grid of more than one patch (:func:`token_grid`). One feature per token is a pooled ``(B, C, 1)`` output
    (Swin's pooler), whose channel count may equal a stage's token count by chance."""
    if len(shape) == 4:
        return shape[2] * shape[3] > 1
    if len(shape) == 3 and shape[1] > 1 and shape[2] > 1:
        layout = token_grid(shape[1], hw, grids, patches, hierarchical=hierarchical)
        return layout is not None and layout[1] * layout[2] > 1
    return False


def image_hw(x: torch.Tensor) -> tuple[int, int] | None:
    """An image batch's ``(H, W)`` (the grid a ViT's tokens lay out on); ``None`` for other inputs."""
    return (int(x.shape[-2]), int(x.shape[-1])) if x.ndim == 4 else None


def seen_hw(adapter: Any, x: torch.Tensor) -> tuple[int, int] | None:
    """The ``(H, W)`` of the images ``adapter``'s model sees for inputs ``x``: behind a ``preprocess`` (a resize to
    the model's size, a channels-last to channels-first transpose) that of its output for the first row, where that
    is a 4-D image batch; else ``x``'s own (:func:`image_hw`). A ViT's tokens lay out on the grid of what it sees: a
    Swin behind a resize to 32 x 32 has a last stage of 2 x 2 whatever the raw image's size. One call of the
    preprocess on one row, no model pass (call it after the model ran on ``x``: a preprocess that fails has said so
    there)."""
    hw = image_hw(x)
    pre = getattr(adapter, "preprocess", None)
    if pre is None or getattr(adapter, "packing", None) is not None or x.ndim < 2:
        return hw  # a model of several inputs preprocesses its packed rows, not an image
    with torch.no_grad():
        seen = pre(x[:1].detach().clone())
    return image_hw(seen) if isinstance(seen, torch.Tensor) else hw


def _reached(
    scores: torch.Tensor,
    outputs: list[torch.Tensor],
    *,
    signal: bool = False,
    hw: tuple[int, int] | None = None,
    grids: Sequence[tuple[int, int]] = (),
    patches: Sequence[tuple[int, int]] = (),
    hierarchical: bool = False,
) -> list[bool] | None:
    """For each output, whether the predicted class's score has a non-zero gradient on its grid (a ViT's class
    token left out); None where the score has no gradient at all (no graph, or a model autograd cannot run)."""
    if not scores.requires_grad:
        return None
    score = scores[0, scores[0].argmax()]
    live = [t if t.requires_grad else None for t in outputs]
    used = [t for t in live if t is not None]
    if not used:
        return None
    try:
        grads = iter(torch.autograd.grad(score, used, allow_unused=True))
    except RuntimeError:
        return None
    out = []
    for t in live:
        g = next(grads) if t is not None else None
        out.append(
            g is not None
            and bool(
                to_grid(g, "", signal=signal, hw=hw, grids=grids, patches=patches, hierarchical=hierarchical)
                .abs()
                .amax()
                > 0
            )
        )
    return out
