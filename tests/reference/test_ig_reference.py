"""Integrated Gradients against a slow reference written from the definition (ATTRIBUTION.md §1.3).

The reference walks the path one step and one row at a time in float64 with plain ``torch.autograd``:
IG_i ≈ (x_i - x'_i) Σ_k w_k ∂f_c(x' + α_k (x - x'))/∂x_i, with the nodes and weights of each rule written
out from the table in §1.3 (plain Python floats; Gauss-Legendre from numpy's leggauss). whybox must match
it to 1e-10 in float64, and its ``meta["delta"]`` must be the signed completeness gap Σ IG - (f(x) - f(x')).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from whybox.explainers.gradient import IntegratedGradients

from ._models import DigitsCNN, SmallCNN, build, images

RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "trapezoid", "riemann_trapezoid")
F64 = torch.float64


def rule(name: str, n: int) -> tuple[list[float], list[float]]:
    """(α_k, w_k), k = 0..n-1, straight from the table."""
    if name == "riemann_left":
        return [k / n for k in range(n)], [1 / n] * n
    if name == "riemann_right":
        return [(k + 1) / n for k in range(n)], [1 / n] * n
    if name == "riemann_middle":
        return [(k + 0.5) / n for k in range(n)], [1 / n] * n
    if name == "trapezoid":  # the composite rule: weights sum to 1
        w = [1 / (n - 1)] * n
        w[0] = w[-1] = 1 / (2 * (n - 1))
        return [k / (n - 1) for k in range(n)], w
    if name == "riemann_trapezoid":  # captum's rule of that name: weights sum to (n-1)/n
        w = [1 / n] * n
        w[0] = w[-1] = 1 / (2 * n)
        return [k / (n - 1) for k in range(n)], w
    assert name == "gausslegendre"
    t, om = np.polynomial.legendre.leggauss(n)
    return [float((1 + tk) / 2) for tk in t], [float(o / 2) for o in om]


def score(model: nn.Module, x: torch.Tensor, c: int) -> torch.Tensor:
    return model(x.unsqueeze(0))[0, c]


def ig_reference(
    model: nn.Module, x: torch.Tensor, base: torch.Tensor, target: list[int], name: str, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(IG (B, *S), delta (B,)): one row, one step, one backward at a time."""
    alphas, weights = rule(name, n)
    out = torch.zeros_like(x, dtype=F64)
    delta = torch.zeros(x.shape[0], dtype=F64)
    for i in range(x.shape[0]):
        integral = torch.zeros_like(x[i], dtype=F64)
        for a, w in zip(alphas, weights, strict=True):
            p = (base[i] + a * (x[i] - base[i])).detach().requires_grad_(True)
            (g,) = torch.autograd.grad(score(model, p, target[i]), p)
            integral += w * g
        out[i] = (x[i] - base[i]) * integral
        with torch.no_grad():
            gap = score(model, x[i], target[i]) - score(model, base[i], target[i])
        delta[i] = out[i].sum() - gap
    return out, delta


@pytest.fixture(scope="module", params=["small", "digits"])
def case(request: pytest.FixtureRequest) -> tuple[nn.Module, torch.Tensor, list[int]]:
    if request.param == "small":
        return build(SmallCNN, seed=10, dtype=F64, act="tanh"), images((2, 3, 16, 16), seed=11, dtype=F64), [4, 1]
    return build(DigitsCNN, seed=12, dtype=F64), images((3, 1, 8, 8), seed=13, dtype=F64), [3, 9, 0]


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("baseline", ["zero", "tensor"])
def test_ig_matches_slow_reference_float64(case, name: str, baseline: str) -> None:
    model, x, target = case
    n = 9
    base = torch.zeros_like(x) if baseline == "zero" else 0.5 * images(tuple(x.shape), seed=14, dtype=F64)
    ref, ref_delta = ig_reference(model, x, base, target, name, n)
    # batch_size 5 does not divide B * n: chunks cut across rows and steps
    exp = IntegratedGradients(
        model, method=name, n_steps=n, baseline="zero" if baseline == "zero" else base, batch_size=5
    ).explain(x, torch.tensor(target))
    assert exp.attributions.dtype == F64
    torch.testing.assert_close(exp.attributions, ref, atol=1e-10, rtol=0)
    # completeness gap as defined: signed, Σ IG - (f(x) - f(x'))
    torch.testing.assert_close(exp.meta["delta"], ref_delta, atol=1e-10, rtol=0)
    with torch.no_grad():
        fx = torch.stack([score(model, x[i], c) for i, c in enumerate(target)])
        fb = torch.stack([score(model, base[i], c) for i, c in enumerate(target)])
    torch.testing.assert_close(exp.meta["f_x"], fx, atol=1e-12, rtol=0)
    torch.testing.assert_close(exp.meta["f_baseline"], fb, atol=1e-12, rtol=0)
    torch.testing.assert_close(exp.meta["delta_rel"], ref_delta.abs() / (fx - fb).abs(), atol=1e-10, rtol=1e-9)
    assert exp.target.tolist() == target


@pytest.mark.parametrize("name", RULES)
def test_ig_default_target_is_fixed_argmax(name: str) -> None:
    """target=None: the clean input's argmax, held fixed along the whole path (§0)."""
    model = build(DigitsCNN, seed=15, dtype=F64)
    x = images((2, 1, 8, 8), seed=16, dtype=F64)
    with torch.no_grad():
        pred = model(x).argmax(1).tolist()
    ref, _ = ig_reference(model, x, torch.zeros_like(x), pred, name, 6)
    exp = IntegratedGradients(model, method=name, n_steps=6).explain(x)
    assert exp.target.tolist() == pred
    torch.testing.assert_close(exp.attributions, ref, atol=1e-10, rtol=0)


def _tanh_mlp() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(17)
        mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    return mlp.to(F64).eval()


def test_ig_completeness_smooth_model_gausslegendre() -> None:
    """§1.3 test (c): float64 tanh MLP (analytic along the path), GL n = 50 ⇒ |delta| ≤ 1e-6·max(1, |Δ|)."""
    model = _tanh_mlp()
    x = 2 * images((4, 12), seed=18, dtype=F64)
    exp = IntegratedGradients(model, n_steps=50).explain(x, torch.tensor([0, 1, 2, 0]))
    gap = (exp.meta["f_x"] - exp.meta["f_baseline"]).abs()
    assert (exp.meta["delta"].abs() <= 1e-6 * gap.clamp_min(1.0)).all(), exp.meta["delta"]


def test_ig_rule_bias_on_a_linear_model() -> None:
    """On f = w·x + b the integrand is constant: every rule whose weights sum to 1 is exact (delta 0);
    captum's riemann_trapezoid (weights sum to (n-1)/n) misses by exactly -Δ/n."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(19)
        model = nn.Sequential(nn.Flatten(), nn.Linear(10, 4)).to(F64).eval()
    x = images((3, 10), seed=20, dtype=F64)
    n = 7
    for name in RULES:
        exp = IntegratedGradients(model, method=name, n_steps=n).explain(x, 2)
        gap = exp.meta["f_x"] - exp.meta["f_baseline"]
        expected = -gap / n if name == "riemann_trapezoid" else torch.zeros_like(gap)
        torch.testing.assert_close(exp.meta["delta"], expected, atol=1e-12, rtol=0, msg=name)
