"""Eighth review, vision: a hierarchical transformer's (Swin's) token grids on non-square images, baselines and fills
that require grad, and the error for a per-channel baseline written flat. The Swin models are tiny Hugging Face
models built from configs (random weights, float64, no downloads); Hugging Face's own ``reshaped_hidden_states``
are the oracle for the grids."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import whybox
from whybox.errors import InvalidParameterError, LayerError
from whybox.masking.fills import make_fill
from whybox.models.layers import grid_options, to_grid, token_grid

# --- Swin on non-square images: one token grid per stage, no class token ----------------------------------------------


def _swin(kind: str = "swin", head: bool = False) -> nn.Module:
    transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
    config_cls, model_cls = {
        "swin": ("SwinConfig", "SwinForImageClassification" if head else "SwinModel"),
        "swinv2": ("Swinv2Config", "Swinv2Model"),
        "focalnet": ("FocalNetConfig", "FocalNetModel"),
    }[kind]
    kw: dict[str, Any] = {} if kind == "focalnet" else {"num_heads": [1, 1, 1], "window_size": 2}
    cfg = getattr(transformers, config_cls)(
        image_size=(32, 80), patch_size=4, embed_dim=8, depths=[1, 1, 1], num_labels=3, **kw
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return getattr(transformers, model_cls)(cfg).double().eval()


def _images(h: int, w: int) -> torch.Tensor:
    return torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


SIZES = [(32, 80), (32, 64), (36, 84), (32, 32)]  # the config's; other stage grids; padded to whole patches; square


@pytest.mark.parametrize("kind", ["swin", "swinv2", "focalnet"])
@pytest.mark.parametrize("hw", SIZES)
def test_hierarchical_token_grids_are_hugging_faces_reshaped_hidden_states(kind: str, hw: tuple[int, int]) -> None:
    """Every stage's tokens laid out as the model itself lays them out: 32 x 80 at 4-pixel patches is 8 x 20, 4 x 10
    and 2 x 5 with no class token (the last stage was read as a class token and 3 x 3); 32 x 64's 4 x 8 and 2 x 4
    fitted no layout; 36 x 84 pads to 9 x 21, 5 x 11, 3 x 6."""
    model = _swin(kind)
    x = _images(*hw)
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
    options = grid_options(model)
    assert options["hierarchical"]
    for tokens, want in zip(out.hidden_states, out.reshaped_hidden_states, strict=True):
        torch.testing.assert_close(to_grid(tokens, "stage", hw=hw, **options), want, rtol=0, atol=0)


def _gradcam_oracle(model: nn.Module, x: torch.Tensor, target: int, grid: tuple[int, int]) -> torch.Tensor:
    """Grad-CAM by hand on ``swin.layernorm``'s tokens laid out on ``grid`` (no ReLU, no normalization)."""
    return _hand_gradcam(model, model.swin.layernorm, x, target, grid)  # type: ignore[union-attr,arg-type]


@pytest.mark.parametrize("hw", SIZES)
def test_swin_gradcam_on_any_image_equals_the_hand_oracle(hw: tuple[int, int]) -> None:
    """The default layer is the last stage's norm on every image shape (32 x 64 fell back to stage 1), its map is
    laid out on the grid Hugging Face reports, and naming the layer gives the same (it was refused at 32 x 64)."""
    model = _swin(head=True)
    x = _images(*hw)
    with torch.no_grad():
        grid = tuple(model(pixel_values=x, output_hidden_states=True).reshaped_hidden_states[-1].shape[-2:])
    want = _gradcam_oracle(model, x, 1, grid)  # type: ignore[arg-type]
    ad = whybox.adapt(model, output="logits")
    opts = {"target": 1, "normalize": "none", "upsample": False, "relu": False}
    e = whybox.explain(ad, x, "gradcam", **opts)
    assert e.meta["layer"] == ["swin.layernorm"]
    assert [tuple(s) for s in e.meta["layer_shape"]] == [(32, *grid)]
    torch.testing.assert_close(e.attributions, want)
    named = whybox.explain(ad, x, "gradcam", layer="swin.layernorm", **opts)
    torch.testing.assert_close(named.attributions, want)


def test_swin_tokens_no_stage_has_are_refused_and_a_pooled_output_is_no_grid() -> None:
    """A token count no stage of the image (nor of the config's 32 x 80, what a resizing preprocess gives) has gets
    an error naming the stage rule, not a square guess with a class token (17 tokens were CLS + 4 x 4); the pooler's (B, C, 1), whose C = 32 equals stage 2's 4 x 8
    tokens on a 32 x 64 image, is not a token grid."""
    from whybox.models.layers import _is_spatial

    options = grid_options(_swin())
    assert token_grid(17, (32, 32), **options) is None
    assert token_grid(10, (32, 80), **options) == (0, 2, 5)
    assert token_grid(10, (64, 64), **options) == (0, 2, 5)  # the config's grid behind a resize
    with pytest.raises(LayerError, match=r"count 17 is no patch grid of a 32 x 32 image at any stage of this hier"):
        to_grid(torch.zeros(1, 17, 8), "swin.layernorm", hw=(32, 32), **options)
    assert _is_spatial((1, 32, 8), (32, 64), **options)
    assert not _is_spatial((1, 32, 1), (32, 64), **options)


def test_a_plain_vit_is_not_hierarchical() -> None:
    """A ViT keeps its single declared grid and its class token."""
    transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
    vit = transformers.ViTModel(transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=16,
                                                       num_hidden_layers=1, num_attention_heads=2,
                                                       intermediate_size=32))  # fmt: skip
    options = grid_options(vit)
    assert options == {"grids": [(4, 4)], "patches": [(8, 8)], "hierarchical": False}
    assert token_grid(17, (32, 32), **options) == (1, 4, 4)


# --- Swin behind a resizing preprocess: the grids of the image the model sees, one row per input -----------------------


def _resize(size: tuple[int, int]) -> Any:
    return lambda x: nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _hand_gradcam(model: nn.Module, module: nn.Module, x: torch.Tensor, target: int, grid: tuple[int, int]) -> Any:
    """Grad-CAM by hand on ``module``'s tokens laid out on ``grid`` (no ReLU, no normalization)."""
    acts: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda mod, i, o: acts.append(o))
    try:
        logits = model(pixel_values=x).logits
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits[:, target].sum(), acts[0])
    a = acts[0].detach().transpose(1, 2).reshape(x.shape[0], -1, *grid)
    g = grad.transpose(1, 2).reshape(x.shape[0], -1, *grid)
    return (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)


STAGES = [f"swin.encoder.layers.{k}.blocks.0.layernorm_after" for k in range(3)] + ["swin.layernorm"]


@pytest.mark.parametrize(
    ("raw", "seen"),
    [((80, 32), (32, 80)), ((16, 160), (32, 80)), ((60, 90), (48, 48))],
    ids=["portrait-to-config", "wide-to-config", "to-another-size"],
)
def test_swin_behind_a_resize_lays_every_stage_on_the_grid_of_what_it_sees(
    raw: tuple[int, int], seen: tuple[int, int]
) -> None:
    """The grids are those of the image the model sees, not the raw one's: a portrait 80 x 32 image resized to the
    config's 32 x 80 was laid out transposed (the last stage's 2 x 5 tokens as 5 x 2, stage 1's 4 x 10 as 10 x 4:
    a stage's count matched the raw image by chance), a wide 16 x 160 one as 1 x 10, 2 x 20 and 4 x 40; and behind a resize to 48 x 48 (not
    the config's size) the last stage's 3 x 3 fitted no grid of the raw 60 x 90: the default layer then was a
    windowed attention's batch of windows and failed with a raw broadcast error. The default layer and every named
    stage give Hugging Face's reshaped_hidden_states grids and the hand Grad-CAM on them."""
    model = _swin(head=True)
    x = _images(*raw)
    pre = _resize(seen)
    with torch.no_grad():
        grids = [
            tuple(h.shape[-2:]) for h in model(pixel_values=pre(x), output_hidden_states=True).reshaped_hidden_states
        ]
    ad = whybox.adapt(model, output="logits", preprocess=pre)
    opts = {"target": 1, "normalize": "none", "upsample": False, "relu": False}
    e = whybox.explain(ad, x, "gradcam", **opts)
    assert e.meta["layer"] == ["swin.layernorm"]
    modules = dict(model.named_modules())
    for name, grid in zip(STAGES, [*grids[:3], grids[2]], strict=True):
        got = whybox.explain(ad, x, "gradcam", layer=name, **opts)
        assert [tuple(s[1:]) for s in got.meta["layer_shape"]] == [grid], name
        want = _hand_gradcam(model, modules[name], pre(x), 1, grid)  # type: ignore[arg-type]
        torch.testing.assert_close(got.attributions, want, msg=name)
        if name == "swin.layernorm":
            torch.testing.assert_close(e.attributions, want)


def test_a_windowed_attention_output_is_refused_as_a_cam_layer() -> None:
    """A Swin block's windowed attention puts a batch of windows first (80 rows of 2 x 2 tokens for 2 images of 8 x
    20 patches): no map of each input, so naming it is an error that says so (it broke later as a raw broadcast
    error, or laid windows out as an image)."""
    model = _swin(head=True)
    x = _images(32, 80)
    rows: dict[str, int] = {}  # the first axis of each module output of the first block (its names vary by version)

    def record(name: str) -> Any:
        def hook(mod: nn.Module, i: object, o: object) -> None:
            if isinstance(o, torch.Tensor):
                rows.setdefault(name, o.shape[0])

        return hook

    block = model.swin.encoder.layers[0].blocks[0]
    handles = [mod.register_forward_hook(record(n)) for n, mod in block.named_modules() if n]
    try:
        with torch.no_grad():
            model(pixel_values=x)
    finally:
        for h in handles:
            h.remove()
    name = "swin.encoder.layers.0.blocks.0." + next(
        n for n, r in rows.items() if r == 80 and n.startswith("attention.")
    )
    with pytest.raises(LayerError) as err:
        whybox.explain(whybox.adapt(model, output="logits"), x, "gradcam", target=1, layer=name)
    assert str(err.value).startswith(
        f"layer '{name}' outputs shape (80, 4, 8), whose first axis holds 80 rows for a batch of 2 inputs: no map of "
        "each input (the model folds something into the batch there: a windowed attention's windows"
    )


class _Windows(nn.Module):
    """(B, C, H, W) as a batch of its four quadrants (4B, C, H/2, W/2), as a windowed attention cuts an image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5).reshape(4 * b, c, h // 2, w // 2)


class _Merge(nn.Module):
    """The windows of each input back as one row of features (B, 4 C h w)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0] // 4, -1)


def test_the_default_cam_layer_has_one_row_per_input() -> None:
    """The last spatial output of this CNN is a batch of windows (4 rows per input), which the default layer choice
    took and then failed on; it is passed over for the convolution before it, whose map is that of naming it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), _Windows(), _Merge(), nn.Linear(64, 3)).eval()
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    e = whybox.explain(model, x, "gradcam", target=1)
    assert e.meta["layer"] == ["1"]
    torch.testing.assert_close(e.attributions, whybox.explain(model, x, "gradcam", target=1, layer="1").attributions)
    with pytest.raises(
        LayerError, match=r"layer '2' outputs shape \(8, 4, 2, 2\), whose first axis holds 8 rows for a"
    ):
        whybox.explain(model, x, "gradcam", target=1, layer="2")


# --- a baseline, fill or background that requires grad ------------------------------------------------------------------


def _smooth() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 5, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4)
        ).eval()


def _graphs(obj: object, path: str = "") -> list[str]:
    """The paths of the tensors in ``obj`` (nested dicts, lists, tuples) that are attached to an autograd graph."""
    if isinstance(obj, torch.Tensor):
        return [path] if obj.requires_grad else []
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _graphs(v, f"{path}.{k}")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in _graphs(v, f"{path}[{i}]")]
    return []


X = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("method", "kw", "learned"),
    [
        ("integrated_gradients", {"n_steps": 8}, {"baseline": torch.zeros(1, 3, 8, 8)}),
        ("integrated_gradients", {"n_steps": 4, "n_baselines": 3}, {"baseline": torch.rand(3, 3, 8, 8)}),
        ("feature_ablation", {"patch": 4}, {"fill": torch.full((1, 3, 8, 8), 0.5)}),
        ("rise", {"n_masks": 16}, {"fill": torch.full((1, 3, 8, 8), 0.5)}),
    ],
)
def test_a_baseline_that_requires_grad_gives_the_plain_tensors_result(
    method: str, kw: dict[str, Any], learned: dict[str, torch.Tensor]
) -> None:
    """A baseline learned elsewhere (an nn.Parameter) gives the result of its plain values, and nothing in the
    result is attached to an autograd graph (meta["delta"] and ["delta_rel"] were: .numpy() failed)."""
    model = _smooth()
    params = {k: nn.Parameter(v.clone()) for k, v in learned.items()}
    got = whybox.explain(model, X, method, target=1, **kw, **params)
    want = whybox.explain(model, X, method, target=1, **kw, **learned)
    assert _graphs(got.attributions, "attributions") + _graphs(got.meta, "meta") == []
    torch.testing.assert_close(got.attributions, want.attributions, rtol=0, atol=0)
    if method == "integrated_gradients":
        torch.testing.assert_close(got.meta["delta"], want.meta["delta"], rtol=0, atol=0)
        got.meta["delta"].numpy()


def test_fills_keep_no_graph() -> None:
    """make_fill (behind every fill=, baseline= and metric fill) returns data: a Parameter's values, a callable's
    output, without their graphs; a deletion curve with a learned fill is the plain fill's."""
    p = nn.Parameter(torch.full((1, 3, 1, 1), 0.25))
    assert not make_fill(p, X).requires_grad
    assert not make_fill(lambda t: t * p, X).requires_grad
    e = whybox.explain(_smooth(), X, "integrated_gradients", target=1, baseline=lambda t: t * p, n_steps=4)
    assert _graphs(e.meta, "meta") == []
    a = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    got = whybox.evaluate(_smooth(), X, a, "deletion", target=1, fill=p)
    want = whybox.evaluate(_smooth(), X, a, "deletion", target=1, fill=p.detach().clone())
    assert not got.scores.requires_grad
    torch.testing.assert_close(got.scores, want.scores, rtol=0, atol=0)


# --- a per-channel baseline written flat ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "option", "value"),
    [
        ("integrated_gradients", "baseline", [0.1, 0.2, 0.3]),
        ("integrated_gradients", "baseline", torch.tensor([0.1, 0.2, 0.3])),
        ("occlusion", "fill", [0.1, 0.2, 0.3]),
    ],
)
def test_a_flat_per_channel_baseline_gets_the_shape_that_works(method: str, option: str, value: object) -> None:
    """(3,) on (B, 3, H, W) lines up with the width, not the channels: the error says to give (3, 1, 1), and that
    shape works (as the full tensor it stands for)."""
    model = _smooth()
    with pytest.raises(InvalidParameterError) as err:
        whybox.explain(model, X, method, target=1, **{option: value})
    assert str(err.value) == (
        f"{option} tensor of shape (3,) does not broadcast to the inputs (2, 3, 8, 8). Shapes line up from the last "
        "dimension, which is 8 in the inputs; for one value per channel give shape (3, 1, 1), e.g. "
        "torch.tensor(values).view(3, 1, 1)."
    )
    per_channel = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)
    got = whybox.explain(model, X, method, target=1, **{option: per_channel})
    want = whybox.explain(model, X, method, target=1, **{option: per_channel.expand(1, 3, 8, 8).clone()})
    torch.testing.assert_close(got.attributions, want.attributions, rtol=0, atol=0)


def test_a_flat_baseline_of_another_length_gets_no_channel_hint() -> None:
    """Only a length equal to the channel count is read as one value per channel; what broadcasts is unchanged
    ((8,) lines up with the width)."""
    model = _smooth()
    with pytest.raises(InvalidParameterError) as err:
        whybox.explain(model, X, "integrated_gradients", target=1, baseline=torch.zeros(5))
    assert str(err.value) == "baseline tensor of shape (5,) does not broadcast to the inputs (2, 3, 8, 8)."
    row = torch.linspace(0, 1, 8)
    got = whybox.explain(model, X, "integrated_gradients", target=1, baseline=row, n_steps=4)
    want = whybox.explain(model, X, "integrated_gradients", target=1, baseline=row.expand(1, 3, 8, 8), n_steps=4)
    torch.testing.assert_close(got.attributions, want.attributions, rtol=0, atol=0)


def test_a_model_that_folds_copies_into_the_batch_gets_errors_that_say_so() -> None:
    """A test-time-augmentation model (the input and its mirror image in one batch) has no spatial layer of one
    row per input: the default layer's error says its spatial outputs hold more rows than inputs and points to the
    other methods; a named one names the folding (not Swin's windows alone)."""
    from whybox.errors import LayerError

    class Augmented(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            both = self.conv(torch.cat([x, x.flip(-1)]))  # (2B, 4, H, W)
            pooled = both.mean((2, 3))
            return self.head((pooled[: len(x)] + pooled[len(x) :]) / 2)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Augmented().eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(LayerError) as info:
        whybox.explain(model, x, "gradcam")
    assert str(info.value) == (
        "no layer of Augmented produces a spatial (B, C, h, w) output of one row per input (1 spatial outputs, e.g. "
        "'conv' of shape (2, 4, 8, 8) for one input, hold more than one row per input: the model folds frames, "
        "windows or augmented copies into the batch there, so none is a map of each input); use a gradient or "
        "perturbation method (saliency, integrated_gradients, occlusion, rise, lima)."
    )
    with pytest.raises(LayerError, match=r"4 rows for a batch of 2 inputs: .* test-time augmented copies"):
        whybox.explain(model, x, "gradcam", layer="conv")
    assert whybox.explain(model, x, "saliency").attributions.shape == x.shape


def test_the_signed_layer_warning_fires_where_a_channel_cancels_and_not_after_a_relu() -> None:
    """Grad-CAM++ and XGrad-CAM divide by a channel's activation sum: a conv layer whose channel's signed
    activations sum to about 0 warns; the same model's ReLU output (non-negative) does not. (The check reads the
    minimum, one reduction, instead of a mask's any(): 27 us against 351 us on a digits batch.)"""
    import warnings

    conv = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 1.0]).view(2, 1, 1, 1))
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, :2] = 1.0
    x[0, 0, 2:] = -1.0  # the conv's channels sum to 0 over the image: its weights divide by ~0
    for method in ("gradcam_pp", "xgradcam"):
        with pytest.warns(UserWarning, match=r"has signed activations, and in 2 channel\(s\) they all but cancel"):
            whybox.explain(model, x, method, layer="0", target=0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            whybox.explain(model, x, method, layer="1", target=0)
