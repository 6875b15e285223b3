"""CAM-family identities (ATTRIBUTION.md §2.8), float64 models, ``normalize="none"``, ``upsample=False``.

conv → ReLU → GAP → Linear(W, b) makes every gradient constant over positions (g^k = W_ck / Z), so the
CAM variants reduce to closed forms of the activations A; a flatten head makes HiResCAM complete; Score-CAM
with one channel or shifted scores has known weights; all-zero activations give zeros and a flag.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import whybox
from whybox.errors import InvalidParameterError
from whybox.explainers.cam.base import CAM

M = TypeVar("M", bound=nn.Module)
F64 = torch.float64
CAM_METHODS = [m for m in whybox.methods() if issubclass(whybox.get_explainer(m), CAM)]
GRADIENT_CAMS = [m for m in CAM_METHODS if whybox.get_explainer(m).uses_gradients]
KCH, NCLS = 6, 4
RAW: dict[str, Any] = {"normalize": "none", "upsample": False}


def _seeded(build: Callable[[], M], seed: int) -> M:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def gap_model(k: int = KCH, seed: int = 0) -> nn.Sequential:
    """conv(stride 2) → ReLU → GAP → Linear: layer "1" is A (B, k, 6, 6) for 12×12 inputs."""
    return (
        _seeded(
            lambda: nn.Sequential(
                nn.Conv2d(3, k, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(k, NCLS),
            ),
            seed,
        )
        .to(F64)
        .eval()
    )


def flatten_model(seed: int = 1) -> nn.Sequential:
    return (
        _seeded(
            lambda: nn.Sequential(
                nn.Conv2d(3, KCH, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(KCH * 36, NCLS)
            ),
            seed,
        )
        .to(F64)
        .eval()
    )


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 12, 12, generator=g, dtype=F64) * 2 - 0.5


def acts(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model[1](model[0](x))


def cam(model: nn.Module, x: torch.Tensor, method: str, **kw: Any) -> whybox.Explanation:
    return whybox.explain(model, x, method, **kw)


TARGETS = torch.tensor([0, 1, 3])


def _weights(model: nn.Sequential) -> torch.Tensor:
    return model[4].weight.detach()[TARGETS]  # (B, K): W_c for each row's class


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "xgradcam"])
@pytest.mark.parametrize("relu", [True, False])
def test_gap_head_reduces_to_class_activation_map(method: str, relu: bool) -> None:
    model, x = gap_model(), images()
    a = acts(model, x)
    z = a.shape[2] * a.shape[3]
    expected = torch.einsum("bk,bkhw->bhw", _weights(model), a) / z
    if relu:
        expected = expected.clamp_min(0)
    e = cam(model, x, method, layer="1", target=TARGETS, relu=relu, **RAW)
    assert e.attributions.shape == (3, 1, 6, 6)
    torch.testing.assert_close(e.attributions[:, 0], expected, rtol=1e-6, atol=1e-9)
    assert float(expected.abs().amax()) > 1e-3


def test_gap_head_layercam_uses_positive_weights_only() -> None:
    model, x = gap_model(), images()
    a = acts(model, x)
    z = a.shape[2] * a.shape[3]
    expected = (torch.einsum("bk,bkhw->bhw", _weights(model).clamp_min(0), a) / z).clamp_min(0)
    e = cam(model, x, "layercam", layer="1", target=TARGETS, **RAW)
    torch.testing.assert_close(e.attributions[:, 0], expected, rtol=1e-6, atol=1e-9)


def test_gap_head_gradcam_pp_weights() -> None:
    model, x = gap_model(), images()
    a = acts(model, x)
    z = a.shape[2] * a.shape[3]
    c = _weights(model) / z
    s = a.sum((2, 3))
    w = z * c.clamp_min(0) / (2 + c * s)  # w_k = Z·ReLU(c_k) / (2 + c_k Σ_ij A_ij^k)
    expected = torch.einsum("bk,bkhw->bhw", w, a).clamp_min(0)
    e = cam(model, x, "gradcam_pp", layer="1", target=TARGETS, **RAW)
    torch.testing.assert_close(e.attributions[:, 0], expected, rtol=1e-6, atol=1e-9)
    assert float(expected.amax()) > 0


def test_flatten_head_hirescam_is_complete() -> None:
    model, x = flatten_model(), images()
    e = cam(model, x, "hirescam", layer="1", target=TARGETS, relu=False, **RAW)
    with torch.no_grad():
        f = model(x).gather(1, TARGETS.view(-1, 1)).squeeze(1)
    b = model[3].bias.detach()[TARGETS]
    torch.testing.assert_close(e.attributions.sum((1, 2, 3)), f - b, rtol=1e-10, atol=1e-12)
    # and position by position it is Σ_k W_c,(k,i,j) A^k_ij
    a = acts(model, x)
    w = model[3].weight.detach()[TARGETS].view(3, KCH, 6, 6)
    torch.testing.assert_close(e.attributions[:, 0], (w * a).sum(1), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------ reference on a deeper net
def _reference_raw_map(method: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Formulas of §2.1–2.5 written out, from activations and gradients (B, K, h, w)."""
    if method == "gradcam":
        return (g.mean((2, 3), keepdim=True) * a).sum(1)
    if method == "hirescam":
        return (g * a).sum(1)
    if method == "layercam":
        return (g.clamp_min(0) * a).sum(1)
    if method == "xgradcam":
        return ((a * g).sum((2, 3), keepdim=True) / a.sum((2, 3), keepdim=True) * a).sum(1)
    if method == "gradcam_pp":
        alpha = g**2 / (2 * g**2 + a.sum((2, 3), keepdim=True) * g**3)
        alpha = torch.nan_to_num(alpha, nan=0.0)
        return ((alpha * g.clamp_min(0)).sum((2, 3), keepdim=True) * a).sum(1)
    raise KeyError(method)


@pytest.mark.parametrize("layer", ["1", "3"])
@pytest.mark.parametrize("method", GRADIENT_CAMS)
def test_gradient_cams_match_a_direct_autograd_reference(
    method: str, layer: str, make_cnn: Callable[..., nn.Module]
) -> None:
    model = make_cnn(dtype=F64, seed=2)
    x = images(seed=3)
    cut = int(layer) + 1
    with torch.enable_grad():
        a = model[:cut](x).detach().requires_grad_(True)
        f = model[cut:](a).gather(1, TARGETS.view(-1, 1)).sum()
        (g,) = torch.autograd.grad(f, a)
    try:
        expected = _reference_raw_map(method, a.detach(), g)
    except KeyError:
        pytest.skip(f"no reference formula written for {method!r}")
    e = cam(model, x, method, layer=layer, target=TARGETS, relu=False, **RAW)
    torch.testing.assert_close(e.attributions[:, 0], expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_several_layers_average_the_per_layer_minmax_maps(method: str, make_cnn: Callable[..., nn.Module]) -> None:
    """Maps min-max scaled per layer, averaged, scaled again; the first layer's gradient passes the second tap."""
    model = make_cnn(dtype=F64, seed=2)
    x = images(seed=4)
    singles = [cam(model, x, method, layer=lay, target=TARGETS).attributions for lay in ("1", "3")]
    both = cam(model, x, method, layer=["1", "3"], target=TARGETS)
    mean = (singles[0] + singles[1]) / 2
    flat = mean.flatten(1)
    lo, hi = flat.amin(1).view(-1, 1, 1, 1), flat.amax(1).view(-1, 1, 1, 1)
    torch.testing.assert_close(both.attributions, (mean - lo) / (hi - lo), rtol=1e-6, atol=1e-9)
    assert both.meta["layer"] == ["1", "3"]


# ------------------------------------------------------------------------------------------ Score-CAM
def test_scorecam_single_channel_has_weight_one() -> None:
    model, x = gap_model(k=1, seed=5), images(seed=6)
    a = acts(model, x)[:, 0]
    e = cam(model, x, "scorecam", layer="1", **RAW)
    # softmax over one channel = 1 (to float64 rounding: whybox runs CPU images channels-last, the reference not)
    torch.testing.assert_close(e.attributions[:, 0], a, rtol=1e-13, atol=1e-13)
    assert float(a.amax()) > 0
    scaled = cam(model, x, "scorecam", layer="1", upsample=False).attributions[:, 0]  # minmax(ReLU(A))
    flat = a.flatten(1)
    lo, hi = flat.amin(1).view(-1, 1, 1), flat.amax(1).view(-1, 1, 1)
    torch.testing.assert_close(scaled, (a - lo) / (hi - lo), rtol=1e-12, atol=1e-12)


class ShiftLogits(nn.Module):
    """The same classifier with a constant added to every logit: every channel score shifts by it."""

    def __init__(self, inner: nn.Module, shift: float) -> None:
        super().__init__()
        self.inner = inner
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + self.shift


def test_scorecam_softmax_ignores_a_constant_shift_of_the_scores() -> None:
    model, x = gap_model(seed=7), images(seed=8)
    shifted = ShiftLogits(model, 37.5)
    e = cam(model, x, "scorecam", layer="1", target=TARGETS, **RAW)
    e_shift = cam(shifted, x, "scorecam", layer="inner.1", target=TARGETS, **RAW)
    torch.testing.assert_close(e_shift.attributions, e.attributions, rtol=1e-10, atol=1e-12)
    assert float(e.attributions.amax()) > 0
    # the raw (un-softmaxed) weighting does see the shift: the invariance is the softmax's
    raw = cam(model, x, "scorecam", layer="1", target=TARGETS, weighting="raw", **RAW).attributions
    raw_shift = cam(shifted, x, "scorecam", layer="inner.1", target=TARGETS, weighting="raw", **RAW).attributions
    assert not torch.allclose(raw, raw_shift)


def test_scorecam_weights_are_the_softmax_of_masked_scores() -> None:
    """s_k = f_c(x ⊙ minmax(Up(A^k))) (zero baseline), α = softmax_k(s), map = ReLU(Σ α_k A^k)."""
    model, x = gap_model(seed=9), images(seed=10)
    a = acts(model, x)
    up = F.interpolate(a, size=(12, 12), mode="bilinear", align_corners=False)
    flat = up.flatten(2)
    lo, hi = flat.amin(2)[..., None, None], flat.amax(2)[..., None, None]
    masks = (up - lo) / (hi - lo + 1e-8)
    with torch.no_grad():
        s = torch.stack([model(x * masks[:, k : k + 1]).gather(1, TARGETS.view(-1, 1))[:, 0] for k in range(KCH)], 1)
    expected = torch.einsum("bk,bkhw->bhw", s.softmax(1), a).clamp_min(0)
    e = cam(model, x, "scorecam", layer="1", target=TARGETS, **RAW)
    torch.testing.assert_close(e.attributions[:, 0], expected, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------ degenerate maps
def dead_model() -> nn.Sequential:
    model = gap_model(seed=11)
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(-1.0)  # ReLU(−1) = 0 everywhere: A ≡ 0
    return model


@pytest.mark.parametrize("normalize", ["minmax", "max", "none"])
@pytest.mark.parametrize("method", CAM_METHODS)
def test_zero_activations_give_zeros_and_a_flag(method: str, normalize: str) -> None:
    x = images(seed=12)
    e = cam(dead_model(), x, method, layer="1", normalize=normalize)
    assert torch.equal(e.attributions, torch.zeros(3, 1, 12, 12, dtype=F64))  # no NaN, no inf
    assert e.meta["degenerate"] == [True] * 3
    assert e.meta["finite"] == [True] * 3


@pytest.mark.parametrize("method", CAM_METHODS)
def test_constant_nonzero_map_becomes_zeros_with_minmax(method: str) -> None:
    """A positive constant activation gives a constant map: min-max scaling makes it zeros plus the flag."""
    model = gap_model(k=1, seed=13)
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(0.5)
        model[4].weight.fill_(1.0)  # every class gains from the one channel: a positive map
    e = cam(model, images(seed=14), method, layer="1")
    assert torch.equal(e.attributions, torch.zeros_like(e.attributions))
    assert e.meta["degenerate"] == [True] * 3
    raw = cam(model, images(seed=14), method, layer="1", normalize="none").attributions
    assert bool((raw > 0).all()) and float(raw.amax() - raw.amin()) <= 1e-15


def test_gradcam_pp_weights_skip_a_vanishing_denominator() -> None:
    """Where 2 + S_k g = 0 exactly, alpha is 0 (the position adds nothing), both with and without normalisation."""
    from whybox.explainers.cam.gradcam_pp import GradCAMPlusPlus

    a = torch.zeros(1, 2, 2, 2, dtype=F64)
    a[0, 0] = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # S_0 = 4
    a[0, 1] = torch.tensor([[0.5, 0.0], [0.0, 0.5]])  # S_1 = 1
    g = torch.tensor([[[[-0.5, 1.0], [2.0, 0.0]], [[3.0, -2.0], [1.0, 0.5]]]], dtype=F64)  # (0,0,0): 2 + 4(-0.5) = 0
    expected = _reference_raw_map("gradcam_pp", a, g)
    assert torch.isfinite(expected).all()
    pp = GradCAMPlusPlus.__new__(GradCAMPlusPlus)
    pp.alpha_normalize = False
    torch.testing.assert_close(pp.raw_map(a, g), expected)
    a[0, 1] = -a[0, 1]  # S_1 = -1: at g = 2 the denominator vanishes where ReLU(g) > 0 (x / 0 = inf)
    g[0, 1, 1, 0] = 2.0
    g_without = g.clone()
    g_without[0, 1, 1, 0] = 0.0  # alpha = 0 there: the same as a position that adds nothing
    torch.testing.assert_close(pp.raw_map(a, g), _reference_raw_map("gradcam_pp", a, g_without))
    pp.alpha_normalize = True
    assert torch.isfinite(pp.raw_map(a, g)).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", CAM_METHODS)
def test_half_precision_model_gives_the_float32_map(method: str, dtype: torch.dtype) -> None:
    """A float16 / bfloat16 model gives the float32 model's map up to the model's own rounding, and never NaN. The
    model has a dead channel (bias -100: its activation is constant 0), whose Score-CAM mask is 0 / (0 + 1e-8):
    in float16 the 1e-8 guard rounds to 0 and the mask was 0 / 0 = NaN before the masks were scaled in float32."""
    model = gap_model(seed=2).float()
    with torch.no_grad():
        model[0].bias[0] = -100.0
    x, target = images().float(), TARGETS
    ref = cam(model, x, method, target=target)
    low = cam(model.to(dtype), x.to(dtype), method, target=target)
    assert low.attributions.dtype == dtype and bool(torch.isfinite(low.attributions).all())
    assert low.meta["degenerate"] == ref.meta["degenerate"] == [False, False, False]
    torch.testing.assert_close(low.attributions.float(), ref.attributions, rtol=0, atol=0.05)


class _TwoHeads(nn.Module):
    """One stem, two heads on their own branches: head 0 reads branch ``a``, head 1 branch ``b``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fa, self.fb = nn.Linear(8, 3), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.stem(x)
        return self.fa(self.a(h).relu().mean((2, 3))), self.fb(self.b(h).relu().mean((2, 3)))


@pytest.mark.parametrize("method", ["gradcam", "scorecam"])
def test_the_automatic_layer_of_one_head_is_not_reused_for_another(method: str) -> None:
    """The automatic layer was cached per model and input shape, not per output: after head 0 (branch a), head 1
    got branch a's layer (Grad-CAM: LayerError; Score-CAM: a map of the wrong branch, 0.94 off)."""
    torch.manual_seed(0)
    model = _TwoHeads().eval()
    x = torch.rand(2, 3, 8, 8)
    first = whybox.explain(whybox.adapt(model, output=0), x, method)
    second = whybox.explain(whybox.adapt(model, output=1), x, method)
    assert first.meta["layer"] == ["a"] and second.meta["layer"] == ["b"]
    alone = whybox.explain(whybox.adapt(model, output=1), x, method, layer="b")
    torch.testing.assert_close(second.attributions, alone.attributions, rtol=0, atol=0)


def test_under_inference_mode_every_family_and_the_metrics_work() -> None:
    """torch.inference_mode() (enable_grad cannot undo it) made Grad-CAM blame the layer it had chosen and the
    gradient methods suggest a detach in the model; inputs made there could not take gradients. Now the calls run
    outside it and give the results they give anywhere else."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    x = torch.rand(2, 3, 8, 8)
    methods = ("gradcam", "saliency", "integrated_gradients", "occlusion")
    want = {m: whybox.explain(model.eval(), x, m).attributions for m in methods}
    sens = whybox.evaluate(model, x, "saliency", "max_sensitivity", seed=0).scores
    with torch.inference_mode():
        xi = x.clone()  # an inference tensor
        for m in methods:
            torch.testing.assert_close(whybox.explain(model, xi, m).attributions, want[m], rtol=0, atol=0)
        torch.testing.assert_close(whybox.evaluate(model, xi, "saliency", "max_sensitivity", seed=0).scores, sens)


def test_layers_of_different_sizes_without_upsampling_are_named() -> None:
    """upsample=False with layers of two resolutions raised torch.stack's size error."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )  # fmt: skip
    with pytest.raises(InvalidParameterError, match=r"different resolutions \('1' \(8, 8\), '4' \(4, 4\)\)"):
        whybox.explain(model, torch.rand(2, 3, 8, 8), "gradcam", layer=["1", "4"], upsample=False)
    assert whybox.explain(model, torch.rand(2, 3, 8, 8), "gradcam", layer=["1", "4"]).attributions.shape == (2, 1, 8, 8)
