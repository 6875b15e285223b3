"""whybox vs captum on the same model, inputs, targets and settings (ATTRIBUTION.md §1, §2, §5).

captum is the peer for the gradient family and for Grad-CAM. Everything here runs in float32 (captum's
working precision), so the exact comparisons use atol 1e-6 (one backward pass) or 1e-5 (sums over
quadrature steps); the noise-averaged methods draw different noise and are compared in expectation.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

captum_attr = pytest.importorskip("captum.attr", reason="captum is not installed (pip install captum)")

from whybox.explainers.cam import GradCAM  # noqa: E402
from whybox.explainers.gradient import InputXGradient, IntegratedGradients, Saliency, SmoothGrad  # noqa: E402

from ._models import DigitsCNN, Quadratic, SmallCNN, build, images  # noqa: E402

CAPTUM_RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


@pytest.fixture(scope="module", params=["small", "digits"])
def case(request: pytest.FixtureRequest) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """(model, inputs, per-row targets): a 3x16x16 CNN with 5 classes or a 1x8x8 digits-like one with 10."""
    if request.param == "small":
        model = build(SmallCNN, seed=0)
        x = images((3, 3, 16, 16), seed=1)
        t = torch.tensor([0, 3, 4])
    else:
        model = build(DigitsCNN, seed=2)
        x = images((3, 1, 8, 8), seed=3)
        t = torch.tensor([7, 0, 2])
    return model, x, t


def _close_scaled(ours: torch.Tensor, theirs: torch.Tensor, atol: float) -> None:
    """assert_close after dividing both by the reference's largest magnitude: CAM maps of these small models
    peak at ~0.05-0.2, so an absolute 1e-5 would be a loose relative tolerance there."""
    scale = float(theirs.abs().max())
    assert scale > 0, "the reference map is identically zero: the comparison would be vacuous"
    torch.testing.assert_close(ours / scale, theirs / scale, atol=atol, rtol=0)


def _leaf(x: torch.Tensor) -> torch.Tensor:
    # captum warns (UserWarning, an error under this suite) when its inputs do not already require grad
    return x.clone().requires_grad_(True)


# ---------------------------------------------------------------- Saliency and Input x Gradient (§1.1, §1.2)
@pytest.mark.parametrize("use_abs", [True, False])
def test_saliency_matches_captum(case, use_abs: bool) -> None:
    model, x, t = case
    ours = Saliency(model, abs=use_abs).explain(x, t).attributions
    theirs = captum_attr.Saliency(model).attribute(_leaf(x), target=t, abs=use_abs).detach()
    assert ours.shape == theirs.shape == x.shape
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    if not use_abs:
        assert (ours < 0).any()  # the signed map really is signed on this model


def test_input_x_gradient_matches_captum(case) -> None:
    model, x, t = case
    ours = InputXGradient(model).explain(x, t).attributions
    theirs = captum_attr.InputXGradient(model).attribute(_leaf(x), target=t).detach()
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- Integrated Gradients (§1.3)
@pytest.mark.parametrize("n_steps", [16, 50])
@pytest.mark.parametrize("method", CAPTUM_RULES)
def test_integrated_gradients_matches_captum(case, method: str, n_steps: int) -> None:
    model, x, t = case
    exp = IntegratedGradients(model, method=method, n_steps=n_steps, baseline="zero", batch_size=37).explain(x, t)
    attr, delta = captum_attr.IntegratedGradients(model).attribute(
        x, baselines=torch.zeros_like(x), target=t, method=method, n_steps=n_steps, return_convergence_delta=True
    )
    # captum builds its nodes in float32 (torch.linspace) or casts the GL weights to float32 and sums the
    # steps in float32; we build the rule in float64 and accumulate in float64: agreement to float32 level.
    torch.testing.assert_close(exp.attributions, attr.detach(), atol=1e-5, rtol=1e-5)
    # Both deltas are signed per row with the same convention: sum(attr) - (f(x) - f(x')). captum sums its
    # float32 attributions; our delta comes from float64 sums, hence the float32-level tolerance.
    ours_delta = exp.meta["delta"]
    assert ours_delta.dtype == torch.float64
    torch.testing.assert_close(ours_delta, delta.detach().to(torch.float64), atol=2e-5, rtol=1e-4)
    # and the convention itself: delta = sum(attr) - (f(x) - f(x'))
    with torch.no_grad():
        gap = model(x)[torch.arange(3), t] - model(torch.zeros_like(x))[torch.arange(3), t]
    torch.testing.assert_close(ours_delta, attr.detach().flatten(1).sum(1).double() - gap.double(), atol=2e-5, rtol=0)


@pytest.mark.parametrize("n_steps", [4, 50])
def test_our_trapezoid_is_captums_riemann_trapezoid_rescaled(case, n_steps: int) -> None:
    """Same nodes k/(n-1); captum's weights are 1/n (ends 1/(2n)) and ours 1/(n-1) (ends 1/(2(n-1))), so
    captum = (n-1)/n * ours exactly (captum's rule is biased: a linear model misses completeness by Δ/n)."""
    model, x, t = case
    ours = IntegratedGradients(model, method="trapezoid", n_steps=n_steps).explain(x, t).attributions
    theirs = captum_attr.IntegratedGradients(model).attribute(x, target=t, method="riemann_trapezoid", n_steps=n_steps)
    torch.testing.assert_close(ours * (n_steps - 1) / n_steps, theirs.detach(), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- NoiseTunnel / SmoothGrad (§1.4)
NT = {"mean": "smoothgrad", "square": "smoothgrad_sq", "var": "vargrad"}


def _captum_nt(model, x, t, base: str, variant: str, n: int, sigma: float, seed: int) -> torch.Tensor:
    """captum's NoiseTunnel around a signed gradient (Saliency abs=False; a wrapped Saliency keeps its default
    abs=True and would average |g|, which our SmoothGrad never does) or around InputXGradient. captum draws
    its noise from torch's global RNG: seeded here inside fork_rng so the suite's RNG is untouched."""
    inner = captum_attr.Saliency(model) if base == "gradient" else captum_attr.InputXGradient(model)
    kwargs = {"abs": False} if base == "gradient" else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = captum_attr.NoiseTunnel(inner).attribute(
            x, nt_type=NT[variant], nt_samples=n, stdevs=float(sigma), target=t, **kwargs
        )
    return out.detach()


@pytest.mark.parametrize("base", ["gradient", "input_x_gradient"])
@pytest.mark.parametrize("variant", ["mean", "square", "var"])
def test_smoothgrad_sigma_zero_matches_captum_exactly(case, variant: str, base: str) -> None:
    """With σ = 0 every draw is the clean input: both libraries reduce to the same deterministic map."""
    model, x, t = case
    ours = SmoothGrad(model, sigma=0.0, n_samples=4, variant=variant, base=base).explain(x, t).attributions
    theirs = _captum_nt(model, x, t, base, variant, n=4, sigma=0.0, seed=0)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    if variant == "var":
        assert ours.abs().max() <= 1e-6


@pytest.mark.parametrize("variant", ["mean", "square", "var"])
def test_smoothgrad_expectation_closed_form_both_libraries(variant: str) -> None:
    """f = Σ x_i² (class 0): E = 2(x + ε) ~ N(2x, s²) per element with s² = 4σ², independent across elements.

    Expected value and per-draw variance of each statistic over n draws (Gaussian moments):
      mean:   E = 2x,              Var(E) = s²                          -> SE = s/√n
      square: E = 4x² + s²,        Var(E²) = 2s⁴ + 4(2x)²s²             -> SE = √(Var/n)
      var:    E = (n-1)/n · s²     (ddof 0), Var = 2(n-1)s⁴/n²          -> exact for Gaussian draws
    Each element of each library must lie within 5 SE (two-sided normal tail 5.7e-7 per element; 144
    elements x 2 libraries). A wrong σ convention (relative instead of absolute, variance for std) or a
    wrong ddof moves the VarGrad mean by many SE at n = 400 (SE 7% of s²).
    """
    model = build(Quadratic, seed=0)
    x = images((2, 1, 6, 6), seed=5)
    t = torch.tensor([0, 0])
    n, sigma = 400, 0.3
    s2 = 4 * sigma**2
    mu = 2 * x.double()
    if variant == "mean":
        expected, se = mu, torch.full_like(mu, math.sqrt(s2 / n))
    elif variant == "square":
        expected, se = mu**2 + s2, torch.sqrt((2 * s2**2 + 4 * mu**2 * s2) / n)
    else:
        expected = torch.full_like(mu, (n - 1) / n * s2)
        se = torch.full_like(mu, math.sqrt(2 * (n - 1) * s2**2 / n**2))
    ours = SmoothGrad(model, sigma=sigma, n_samples=n, variant=variant, seed=11).explain(x, t).attributions
    theirs = _captum_nt(model, x, t, "gradient", variant, n=n, sigma=sigma, seed=12)
    for name, got in (("whybox", ours), ("captum", theirs)):
        z = (got.double() - expected) / se
        assert z.abs().max() < 5, f"{name} {variant}: max |z| = {z.abs().max():.2f}"


def _draw_reference(model, x, t, sigma: float, n: int, seed: int) -> torch.Tensor:
    """n independent noisy gradients per row, (n, B, *S), drawn with our own generator and plain autograd."""
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn((n, *x.shape), generator=gen, dtype=torch.float64).to(x.dtype) * sigma
    pts = (x[None] + eps).reshape(n * x.shape[0], *x.shape[1:]).requires_grad_(True)
    rows = torch.arange(x.shape[0]).repeat(n)
    (g,) = torch.autograd.grad(model(pts)[torch.arange(pts.shape[0]), t[rows]].sum(), pts)
    return g.reshape(n, *x.shape).double()


@pytest.mark.parametrize("variant", ["mean", "square", "var"])
def test_smoothgrad_statistically_equal_to_captum_on_cnn(variant: str) -> None:
    """Different noise draws, same estimator: per element |ours - captum| <= 5 SE of the difference.

    The SE of the difference of two independent n-draw estimates is √(V (1/n₁ + 1/n₂)), V the per-draw
    variance of the averaged quantity: Var(g) for SmoothGrad, Var(g²) for SG², and (μ₄ - σ⁴) for VarGrad
    (delta method for a sample variance). V is estimated per element from 600 independent reference draws.
    A smooth (tanh) model keeps the per-element distributions free of rare jumps; 768 elements.
    """
    model = build(SmallCNN, seed=4, act="tanh")
    x = images((2, 3, 16, 16), seed=6)
    t = torch.tensor([1, 2])
    n, sigma = 256, 0.5
    ref = _draw_reference(model, x, t, sigma, n=600, seed=99)
    if variant == "mean":
        v = ref.var(0)
    elif variant == "square":
        v = (ref**2).var(0)
    else:
        c = ref - ref.mean(0)
        v = ((c**4).mean(0) - (c**2).mean(0) ** 2).clamp_min(0)
    se = torch.sqrt(v * (2 / n))
    ours = SmoothGrad(model, sigma=sigma, n_samples=n, variant=variant, seed=3).explain(x, t).attributions.double()
    theirs = _captum_nt(model, x, t, "gradient", variant, n=n, sigma=sigma, seed=4).double()
    excess = (ours - theirs).abs() - 5 * se
    assert excess.max() <= 1e-6, f"{variant}: worst |diff| - 5 SE = {excess.max():.3g}"
    # and the two are genuinely different draws (the test is not vacuous)
    assert (ours - theirs).abs().max() > 1e-6


# ---------------------------------------------------------------- LayerGradCam (§2.0, §2.1)
LAYERS = {"small": ("act2", "pool2"), "digits": ("act2", "pool")}


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("which", [0, 1])
def test_gradcam_matches_captum_layergradcam(case, which: int, relu: bool) -> None:
    """captum LayerGradCam returns (B, 1, h, w), unscaled, not upsampled; relu_attributions=False by default."""
    model, x, t = case
    layer = LAYERS["small" if x.shape[1] == 3 else "digits"][which]
    exp = GradCAM(model, layer=layer, relu=relu, normalize="none", upsample=False).explain(x, t)
    theirs = captum_attr.LayerGradCam(model, model.get_submodule(layer)).attribute(x, target=t, relu_attributions=relu)
    assert exp.attributions.shape == theirs.shape
    _close_scaled(exp.attributions, theirs.detach(), atol=1e-5)
    if not relu:
        assert (exp.attributions < 0).any()  # signed raw map: the ReLU really matters on this model


def test_gradcam_upsampled_matches_captum_bilinear_interpolate(case) -> None:
    """Upsampling: ours is bilinear with half-pixel centres (align_corners=False, = OpenCV INTER_LINEAR).

    captum's LayerAttribution.interpolate calls F.interpolate(attr, size, mode=...) with no align_corners,
    so with interpolate_mode="bilinear" it uses the same half-pixel convention and agrees exactly. What
    differs by design: captum's default mode is "nearest", and pytorch-grad-cam's Score-CAM masks use
    align_corners=True (UpsamplingBilinear2d); both give different maps, checked below so that this test
    can tell the conventions apart.
    """
    model, x, t = case
    layer = LAYERS["small" if x.shape[1] == 3 else "digits"][1]  # the coarser layer: 4x4 -> input size
    size = tuple(x.shape[-2:])
    ours = GradCAM(model, layer=layer, normalize="none", upsample=True).explain(x, t).attributions
    lowres = captum_attr.LayerGradCam(model, model.get_submodule(layer)).attribute(x, target=t, relu_attributions=True)
    up = captum_attr.LayerAttribution.interpolate(lowres, size, "bilinear").detach()
    assert ours.shape == up.shape == (x.shape[0], 1, *size)
    _close_scaled(ours, up, atol=1e-5)
    nearest = captum_attr.LayerAttribution.interpolate(lowres, size).detach()  # captum's default
    corners = F.interpolate(lowres.detach(), size=size, mode="bilinear", align_corners=True)
    scale = float(up.abs().max())
    assert (ours - nearest).abs().max() > 1e-2 * scale
    assert (ours - corners).abs().max() > 1e-2 * scale
