"""Gradient-family axioms and closed forms (ATTRIBUTION.md §1).

Toy models in float64 where exactness is asserted: f = Σx² and f = x₁x₂ (closed-form IG), a tanh MLP
(completeness), linear models (saliency = w, SmoothGrad = w), bias-free ReLU nets (Euler), a model that
never reads some inputs (dummy features get exactly zero), and the small CNN (completeness vs steps).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import torch
from torch import nn

import whybox
from whybox.errors import InvalidParameterError
from whybox.explainers.gradient.integrated_gradients import RULES, quadrature

M = TypeVar("M", bound=nn.Module)
F64 = torch.float64
EXACT_RULES = ("gausslegendre", "riemann_middle", "trapezoid")  # exact for integrands linear in alpha


def _seeded(build: Callable[[], M], seed: int) -> M:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class SumSquares(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * x).flatten(1).sum(1, keepdim=True)


class Product(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 0] * x[:, 1]).unsqueeze(1)


class ReadsFirstThree(nn.Module):
    """A tanh MLP that slices away features 3 and 4: they are dummies."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[:, :3])


def tanh_mlp(seed: int = 0) -> nn.Module:
    return _seeded(
        lambda: nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)), seed
    ).to(F64)


def rand(*shape: int, seed: int = 0, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=F64)


def ig(model: nn.Module, x: torch.Tensor, **kw: Any) -> whybox.Explanation:
    return whybox.explain(model, x, "integrated_gradients", **kw)


# ------------------------------------------------------------------------------------------ quadrature
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("n", [2, 3, 7, 50])
def test_quadrature_weights_and_nodes(rule: str, n: int) -> None:
    alphas, weights = quadrature(rule, n)
    assert alphas.dtype == weights.dtype == F64
    assert alphas.shape == weights.shape == (n,)
    assert float(alphas.min()) >= 0.0 and float(alphas.max()) <= 1.0
    assert bool((weights > 0).all())
    expected_sum = (n - 1) / n if rule == "riemann_trapezoid" else 1.0  # captum's biased trapezoid
    assert float(weights.sum()) == pytest.approx(expected_sum, rel=1e-14)
    # a rule exact for linear integrands integrates alpha to 1/2
    if rule in EXACT_RULES:
        assert float((weights * alphas).sum()) == pytest.approx(0.5, rel=1e-14)


def test_gauss_legendre_is_exact_to_degree_2n_minus_1() -> None:
    n = 5
    alphas, weights = quadrature("gausslegendre", n)
    for d in range(2 * n):
        assert float((weights * alphas**d).sum()) == pytest.approx(1 / (d + 1), rel=1e-12)


# ------------------------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("rule", EXACT_RULES)
@pytest.mark.parametrize("n", [2, 5, 17])
def test_ig_sum_of_squares_is_exact(rule: str, n: int) -> None:
    x = rand(4, 7, seed=1)
    base = rand(1, 7, seed=2)
    e = ig(SumSquares(), x, method=rule, n_steps=n, baseline=base)
    torch.testing.assert_close(e.attributions, x**2 - base**2, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(e.meta["delta"], torch.zeros(4, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("rule", EXACT_RULES)
def test_ig_product_with_zero_baseline_splits_evenly(rule: str) -> None:
    x = rand(5, 2, seed=3, lo=-2, hi=2)
    e = ig(Product(), x, method=rule, n_steps=4)
    half = (x[:, 0] * x[:, 1] / 2).unsqueeze(1).expand(5, 2)
    torch.testing.assert_close(e.attributions, half, rtol=1e-12, atol=1e-14)


def test_ig_riemann_trapezoid_misses_linear_completeness_by_delta_over_n() -> None:
    model = _seeded(lambda: nn.Linear(6, 3), 4).to(F64)
    x = rand(3, 6, seed=5)
    n = 10
    e = ig(model, x, method="riemann_trapezoid", n_steps=n)
    full = e.meta["f_x"] - e.meta["f_baseline"]
    torch.testing.assert_close(e.meta["delta"], -full / n, rtol=1e-10, atol=1e-14)
    exact = ig(model, x, method="trapezoid", n_steps=n)
    torch.testing.assert_close(exact.meta["delta"], torch.zeros(3, dtype=F64), rtol=0, atol=1e-13)


def test_ig_completeness_on_tanh_mlp_gauss_legendre_50() -> None:
    x = rand(6, 6, seed=6, lo=-2, hi=2)
    base = rand(1, 6, seed=7)
    e = ig(tanh_mlp(), x, n_steps=50, baseline=base)
    full = e.meta["f_x"] - e.meta["f_baseline"]
    delta = e.attributions.reshape(6, -1).sum(1) - full
    assert bool((delta.abs() <= 1e-6 * full.abs().clamp_min(1.0)).all()), delta
    torch.testing.assert_close(e.meta["delta"], delta, rtol=1e-9, atol=1e-12)  # meta["delta"] is that gap
    with torch.no_grad():  # and f_x, f_baseline are the model's own scores for the explained class
        torch.testing.assert_close(e.meta["f_x"], tanh_mlp()(x).gather(1, e.target.view(-1, 1)).squeeze(1))


def _cnn_case(make_cnn: Callable[..., nn.Module]) -> tuple[nn.Module, torch.Tensor]:
    model = make_cnn(dtype=F64, seed=0)
    x = rand(3, 3, 12, 12, seed=8, lo=-1, hi=3)
    return model, x


@pytest.mark.parametrize("rule", ["riemann_left", "riemann_right"])
def test_ig_completeness_error_shrinks_as_steps_grow(rule: str, make_cnn: Callable[..., nn.Module]) -> None:
    model, x = _cnn_case(make_cnn)
    errs = [float(ig(model, x, method=rule, n_steps=n).meta["delta_rel"].mean()) for n in (8, 16, 32, 64)]
    # a trend, not strict monotonicity (captum #1334): a clear fall overall, and most doublings help
    assert errs[-1] < 0.5 * errs[0], errs
    assert sum(b < a for a, b in itertools.pairwise(errs)) >= 2, errs


def test_ig_64_steps_within_one_percent_on_cnn(make_cnn: Callable[..., nn.Module]) -> None:
    model, x = _cnn_case(make_cnn)
    for dtype in (F64, torch.float32):
        e = ig(model.to(dtype), x.to(dtype), n_steps=64)
        full = (e.meta["f_x"] - e.meta["f_baseline"]).abs()
        assert bool((full > 1e-3).all())  # a non-trivial gap to explain
        gap = (e.attributions.to(F64).reshape(3, -1).sum(1) - (e.meta["f_x"] - e.meta["f_baseline"])).abs()
        assert bool((gap < 0.01 * full).all()), (gap / full).tolist()


def test_ig_zero_where_input_equals_baseline(make_cnn: Callable[..., nn.Module]) -> None:
    model, x = _cnn_case(make_cnn)
    same = rand(1, 3, 12, 12, seed=9) > 0.5
    base = torch.where(same, x, rand(3, 3, 12, 12, seed=10))
    for rule in ("gausslegendre", "riemann_right"):
        a = ig(model, x, baseline=base, method=rule, n_steps=8).attributions
        assert bool((a[same.expand_as(a)] == 0).all())
        assert bool((a[~same.expand_as(a)] != 0).any())


# ------------------------------------------------------------------------------------------ dummy features
@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("saliency", {}),
        ("saliency", {"abs": False}),
        ("input_x_gradient", {}),
        ("integrated_gradients", {"n_steps": 8}),
        ("integrated_gradients", {"n_steps": 8, "baseline": "uniform"}),
        ("smoothgrad", {"n_samples": 8}),
        ("smoothgrad", {"n_samples": 8, "variant": "square"}),
        ("smoothgrad", {"n_samples": 8, "variant": "var"}),
        ("smoothgrad", {"n_samples": 8, "base": "input_x_gradient"}),
    ],
)
def test_feature_the_model_never_reads_gets_exactly_zero(method: str, options: dict[str, Any]) -> None:
    model = _seeded(ReadsFirstThree, 11).to(F64)
    x = rand(4, 5, seed=12, lo=0.5, hi=2)
    a = whybox.explain(model, x, method, **options).attributions
    assert torch.equal(a[:, 3:], torch.zeros(4, 2, dtype=F64))
    assert bool((a[:, :3] != 0).any())


# ------------------------------------------------------------------------------------------ saliency, IxG
def test_saliency_on_linear_model_is_the_weight_row() -> None:
    model = _seeded(lambda: nn.Linear(6, 3), 13).to(F64)
    x = rand(4, 6, seed=14, lo=-3, hi=3)
    tgt = torch.tensor([0, 2, 1, 2])
    w = model.weight.detach()[tgt]
    signed = whybox.explain(model, x, "saliency", abs=False, target=tgt).attributions
    absolute = whybox.explain(model, x, "saliency", target=tgt).attributions
    torch.testing.assert_close(signed, w, rtol=1e-15, atol=0)
    torch.testing.assert_close(absolute, w.abs(), rtol=1e-15, atol=0)


def test_input_x_gradient_on_linear_model_equals_zero_baseline_ig() -> None:
    model = _seeded(lambda: nn.Linear(6, 3), 15).to(F64)
    x = rand(4, 6, seed=16)
    ixg = whybox.explain(model, x, "input_x_gradient").attributions
    torch.testing.assert_close(ixg, ig(model, x, n_steps=3).attributions, rtol=1e-12, atol=1e-14)


def _bias_free_relu_nets() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    mlp = _seeded(
        lambda: nn.Sequential(
            nn.Linear(6, 12, bias=False),
            nn.ReLU(),
            nn.Linear(12, 12, bias=False),
            nn.ReLU(),
            nn.Linear(12, 4, bias=False),
        ),
        17,
    ).to(F64)
    cnn = _seeded(
        lambda: nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(6, 6, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(6, 4, bias=False),
        ),
        18,
    ).to(F64)
    return {"mlp": (mlp, rand(5, 6, seed=19)), "cnn": (cnn, rand(3, 3, 8, 8, seed=20))}


@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_input_x_gradient_satisfies_euler_on_bias_free_relu_net(net: str) -> None:
    model, x = _bias_free_relu_nets()[net]
    b = x.shape[0]
    for tgt in (None, torch.arange(b) % 4):
        e = whybox.explain(model, x, "input_x_gradient", target=tgt)
        with torch.no_grad():
            f = model(x).gather(1, e.target.view(-1, 1)).squeeze(1)
        torch.testing.assert_close(e.attributions.reshape(b, -1).sum(1), f, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------ SmoothGrad
def test_smoothgrad_with_zero_noise_reproduces_the_base_exactly(make_cnn: Callable[..., nn.Module]) -> None:
    model = make_cnn()  # float32: the float64 mean of n identical float32 gradients is exact
    x = rand(3, 3, 12, 12, seed=21).float()
    grad = whybox.explain(model, x, "saliency", abs=False).attributions
    ixg = whybox.explain(model, x, "input_x_gradient").attributions
    for kw in ({"sigma": 0.0}, {"noise_level": 0.0}):
        sg = whybox.explain(model, x, "smoothgrad", n_samples=7, **kw).attributions
        assert torch.equal(sg, grad)
    sg_ixg = whybox.explain(model, x, "smoothgrad", n_samples=7, sigma=0.0, base="input_x_gradient").attributions
    assert torch.equal(sg_ixg, ixg)


def test_smoothgrad_on_linear_model() -> None:
    model = _seeded(lambda: nn.Linear(6, 3), 22).to(F64)
    x = rand(4, 6, seed=23)
    tgt = torch.tensor([2, 0, 1, 1])
    w = model.weight.detach()[tgt]
    kw: dict[str, Any] = {"n_samples": 20, "sigma": 0.7, "target": tgt}
    mean = whybox.explain(model, x, "smoothgrad", **kw).attributions
    var = whybox.explain(model, x, "smoothgrad", variant="var", **kw).attributions
    square = whybox.explain(model, x, "smoothgrad", variant="square", **kw).attributions
    torch.testing.assert_close(mean, w, rtol=1e-13, atol=0)
    torch.testing.assert_close(var, torch.zeros_like(w), rtol=0, atol=1e-13)
    torch.testing.assert_close(square, w * w, rtol=1e-13, atol=0)


def test_smoothgrad_on_sum_of_squares_matches_expectations_within_5_se() -> None:
    """E = ∇Σx² = 2(x + ε): E[SG] = 2x, E[VarGrad] = 4σ² (ddof 0: 4σ²(n−1)/n), E[SG²] = 4x² + 4σ²."""
    n, sigma = 4000, 0.5
    x = rand(1, 16, seed=24, lo=-2, hi=2)
    kw: dict[str, Any] = {"n_samples": n, "sigma": sigma, "batch_size": 1000, "seed": 3}
    sg = whybox.explain(SumSquares(), x, "smoothgrad", **kw).attributions
    var = whybox.explain(SumSquares(), x, "smoothgrad", variant="var", **kw).attributions
    sq = whybox.explain(SumSquares(), x, "smoothgrad", variant="square", **kw).attributions
    s2 = sigma**2
    # SE of the mean of E from the draws themselves: sqrt(VarGrad / n)
    se_mean = (var / n).sqrt()
    assert bool(((sg - 2 * x).abs() <= 5 * se_mean).all())
    # sample variance of a Gaussian with variance v = 4σ²: SE ≈ v·sqrt(2/n)
    v = 4 * s2
    assert bool(((var - v * (n - 1) / n).abs() <= 5 * v * (2 / n) ** 0.5).all())
    # E² = 4(x+ε)²: Var = 16·Var((x+ε)²) = 16(4x²σ² + 2σ⁴)
    se_sq = (16 * (4 * x**2 * s2 + 2 * s2**2) / n).sqrt()
    assert bool(((sq - (4 * x**2 + 4 * s2)).abs() <= 5 * se_sq).all())
    # and the variants are consistent with each other: SG² = VarGrad + SG²-of-the-mean
    torch.testing.assert_close(sq, var + sg * sg, rtol=1e-9, atol=1e-12)


def test_smoothgrad_sigma_is_the_noise_level_times_each_rows_range() -> None:
    x = rand(3, 5, seed=25)
    x[1] *= 4
    e = whybox.explain(SumSquares(), x, "smoothgrad", n_samples=2, noise_level=0.2)
    torch.testing.assert_close(e.meta["sigma"], 0.2 * (x.amax(1) - x.amin(1)), rtol=1e-15, atol=0)
    absolute = whybox.explain(SumSquares(), x, "smoothgrad", n_samples=2, noise_level=0.2, sigma=0.3)
    torch.testing.assert_close(absolute.meta["sigma"], torch.full((3,), 0.3, dtype=F64))


def test_smoothgrad_noise_mask_keeps_the_noise_off_the_unmasked_elements() -> None:
    """E = ∇Σx² = 2(x + ε·m): outside the mask every draw's gradient is exactly 2x; sigma from noise_level is the
    range of the masked elements of each row; a row whose mask is empty gets no noise; a mask for one input
    broadcasts over the rows, and the same mask as (B, F) gives the same result."""
    x = rand(3, 8, seed=26, lo=-2, hi=2)
    m = torch.zeros(3, 8, dtype=torch.bool)
    m[0, :3], m[1, 5:] = True, True  # row 2: nowhere
    e = whybox.explain(SumSquares(), x, "smoothgrad", n_samples=6, noise_level=0.3, noise_mask=m, seed=1)
    a = e.attributions
    torch.testing.assert_close(a[~m], 2 * x[~m], rtol=0, atol=1e-13)
    assert bool(((a[m] - 2 * x[m]).abs() > 1e-6).all())  # noise landed there
    on = [x[r][m[r]] for r in range(2)]
    torch.testing.assert_close(
        e.meta["sigma"], torch.tensor([0.3 * float(v.max() - v.min()) for v in on] + [0.0], dtype=F64)
    )
    one = torch.zeros(8, dtype=torch.bool)
    one[2:4] = True
    shared = whybox.explain(SumSquares(), x, "smoothgrad", n_samples=4, sigma=0.5, noise_mask=one, seed=2)
    rows = whybox.explain(SumSquares(), x, "smoothgrad", n_samples=4, sigma=0.5, noise_mask=one.expand(3, 8), seed=2)
    torch.testing.assert_close(shared.attributions, rows.attributions, rtol=0, atol=0)
    torch.testing.assert_close(shared.attributions[:, ~one], 2 * x[:, ~one], rtol=0, atol=1e-13)
    with pytest.raises(InvalidParameterError, match=re.escape("noise_mask must be broadcastable to the inputs (3, 8)")):
        whybox.explain(SumSquares(), x, "smoothgrad", noise_mask=torch.ones(2, 8, dtype=torch.bool))


# ------------------------------------------------------------------------------------------ adaptive rule
def _trapezoid_on(model: nn.Module, x: torch.Tensor, mesh: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Slow reference: the composite trapezoid rule on one row's given mesh, one gradient at a time (zero baseline)."""
    total = torch.zeros_like(x)
    a = mesh.tolist()
    for k, alpha in enumerate(a):
        w = ((a[k + 1] - alpha) if k + 1 < len(a) else 0.0) / 2 + ((alpha - a[k - 1]) if k > 0 else 0.0) / 2
        p = (alpha * x).requires_grad_(True)
        (g,) = torch.autograd.grad(model(p)[0, int(target)], p)
        total += w * g
    return x * total


def test_ig_adaptive_is_the_trapezoid_rule_on_its_own_mesh(make_cnn: Callable[..., nn.Module]) -> None:
    """The attributions are the composite trapezoid on ``meta["alphas"]``; the mesh holds n distinct sorted
    nodes with both ends and starts from n // 8 + 1 uniform points."""
    model, x = _cnn_case(make_cnn)
    e = ig(model, x, method="adaptive", n_steps=24)
    mesh = e.meta["alphas"]
    assert mesh.shape == (3, 24)
    for r in range(3):
        row = mesh[r]
        assert bool((row[1:] > row[:-1]).all()) and row[0] == 0.0 and row[-1] == 1.0
        assert {float(v) for v in torch.linspace(0, 1, 4, dtype=F64)} <= {float(v) for v in row}
        ref = _trapezoid_on(model, x[r : r + 1], row, e.target[r])
        torch.testing.assert_close(e.attributions[r : r + 1], ref, atol=1e-12, rtol=1e-10)
    assert e.meta["n_backward"] == 3 * 24 and e.meta["n_forward"] == 3 * 26


def test_ig_adaptive_refines_where_completeness_fails() -> None:
    """f(a) = relu-kinked path: the rule puts its extra nodes around the kink, where the trapezoid errs,
    and misses completeness by less than a fifth of the uniform trapezoid's with the same gradient count."""
    model = nn.Sequential(nn.Linear(2, 1, bias=True), nn.ReLU()).to(F64)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0]], dtype=F64))
        model[0].bias.fill_(-0.3137)  # the kink at alpha = 0.3137 / 2 for x = (1, 1)
    x = torch.ones(1, 2, dtype=F64)
    ad = ig(model, x, method="adaptive", n_steps=16, target=0)
    tr = ig(model, x, method="trapezoid", n_steps=16, target=0)
    kink = 0.3137 / 2
    mesh = ad.meta["alphas"][0]
    right = int(torch.searchsorted(mesh, torch.tensor([kink], dtype=F64)))
    assert float(mesh[right] - mesh[right - 1]) <= 1 / 128, mesh.tolist()  # the kink's segment bisected 7+ times
    assert float(ad.meta["delta_rel"][0]) < 0.2 * float(tr.meta["delta_rel"][0])


def test_ig_adaptive_on_linear_model_is_exact_and_flat() -> None:
    """A constant integrand: every segment's error is 0, so refinement bisects the longest first (ties to the
    lowest alpha) and completeness holds to rounding."""
    model = nn.Linear(5, 3).to(F64)
    x = rand(2, 5, seed=3)
    e = ig(model, x, method="adaptive", n_steps=17)
    torch.testing.assert_close(e.meta["delta"], torch.zeros(2, dtype=F64), atol=1e-12, rtol=0)
    # 3 uniform points, then 14 bisections spread evenly: a 17-point mesh with spacing 1/16
    torch.testing.assert_close(e.meta["alphas"][0], torch.linspace(0, 1, 17, dtype=F64))


def test_ig_adaptive_beats_gauss_legendre_on_cnn(make_cnn: Callable[..., nn.Module]) -> None:
    """On the small ReLU CNN the adaptive mesh misses completeness by less than Gauss-Legendre at 64 steps
    (rows summed) and stays within 1 % (at 16 steps Gauss-Legendre's high order wins on this smooth-ish path;
    on the digits CNN and EfficientNet-Lite0 the adaptive rule wins at 64: bench/ig_completeness.py)."""
    model, x = _cnn_case(make_cnn)
    gl = ig(model, x, method="gausslegendre", n_steps=64).meta["delta_rel"]
    ad = ig(model, x, method="adaptive", n_steps=64).meta["delta_rel"]
    assert float(ad.sum()) < float(gl.sum()), (ad.tolist(), gl.tolist())
    assert bool((ad < 0.01).all()), ad.tolist()


def test_ig_adaptive_batching_and_row_groups_change_nothing(
    make_cnn: Callable[..., nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One call on 3 rows equals three one-row calls, whatever the chunk size and the stored-gradient bound
    (which splits the rows into groups)."""
    import whybox.explainers.gradient.integrated_gradients as igm

    model, x = _cnn_case(make_cnn)
    whole = ig(model, x, method="adaptive", n_steps=12, batch_size=64)
    for r in range(3):
        one = ig(model, x[r : r + 1], method="adaptive", n_steps=12, batch_size=5)
        torch.testing.assert_close(one.attributions, whole.attributions[r : r + 1], atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(one.meta["alphas"], whole.meta["alphas"][r : r + 1])
    monkeypatch.setattr(igm, "ADAPTIVE_STORE", 12 * x[0].numel())  # one row per group
    grouped = ig(model, x, method="adaptive", n_steps=12, batch_size=7)
    torch.testing.assert_close(grouped.attributions, whole.attributions, atol=1e-12, rtol=1e-10)


def test_ig_adaptive_needs_two_steps() -> None:
    with pytest.raises(
        whybox.errors.InvalidParameterError, match=r"n_steps must be an int >= 2 for method='adaptive'; got 1"
    ):
        ig(nn.Linear(2, 2), torch.ones(1, 2), method="adaptive", n_steps=1)
