"""Perturbation-family axioms and closed forms (ATTRIBUTION.md §3, §4).

Float64 toy models where exactness is asserted: exact Shapley by brute force (linear, x₁x₂, max, efficiency,
symmetry, dummy, linearity), Kernel SHAP (additivity for any seed and budget, exact at full enumeration,
convergence), Shapley sampling (telescoping efficiency, null features, 5 SE), LIME (a model linear in z' is
recovered exactly with alpha = 0), occlusion and ablation against brute-force oracles, RISE against f ≡ c,
cost refusal before any forward pass, and a flat memory peak under a 10x larger sample count.
"""

from __future__ import annotations

import itertools
import math
import re
import sys
from collections.abc import Callable

import pytest
import torch
from torch import nn

import whybox
from whybox import masking
from whybox.errors import InvalidParameterError, InvalidTargetError
from whybox.explainers.perturbation._common import quickshift
from whybox.explainers.perturbation.exact_shapley import shapley_from_values
from whybox.explainers.perturbation.kernel_shap import kernel_design
from whybox.explainers.perturbation.rise import RiseMasks
from whybox.masking.engine import MaskingEngine
from whybox.models.targets import Target

F64 = torch.float64


class Fn(nn.Module):
    """A model given by a function of the rows: one output (explain ``target=0``); counts its rows."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.fn(x).unsqueeze(1)


def rand(*shape: int, seed: int = 0, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=F64)


def mlp(n_in: int, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(n_in, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
    return net.to(F64).eval()


def values(method: str, model: nn.Module, x: torch.Tensor, **kw: object) -> tuple[torch.Tensor, whybox.Explanation]:
    e = whybox.explain(model, x, method, target=0, **kw)
    return e.meta["values"], e


def f_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)[:, 0].to(F64)


def brute_shapley(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """φ of one row by the permutation definition (all M! orders), independent of the code under test."""
    m = x.shape[0]
    phi = torch.zeros(m, dtype=F64)
    perms = list(itertools.permutations(range(m)))
    for p in perms:
        cur = b.clone()
        prev = float(fn(cur.view(1, -1)))
        for i in p:
            cur[i] = x[i]
            now = float(fn(cur.view(1, -1)))
            phi[i] += now - prev
            prev = now
    return phi / len(perms)


# ---------------------------------------------------------------------------------------------- exact Shapley
def test_exact_shapley_linear_closed_form() -> None:
    w = rand(6, seed=1) * 3
    x, b = rand(4, 6, seed=2), rand(6, seed=3)
    model = Fn(lambda z: z @ w + 0.5)
    phi, e = values("exact_shapley", model, x, fill=b)
    torch.testing.assert_close(phi, w * (x - b), atol=1e-12, rtol=0)
    torch.testing.assert_close(e.attributions, (w * (x - b)).to(x.dtype), atol=1e-12, rtol=0)


def test_exact_shapley_product_and_max_closed_forms() -> None:
    x = rand(3, 2, seed=4, lo=0.5, hi=2.0)
    phi, _ = values("exact_shapley", Fn(lambda z: z[:, 0] * z[:, 1]), x)
    half = (x[:, 0] * x[:, 1] / 2).view(-1, 1).expand(-1, 2)
    torch.testing.assert_close(phi, half, atol=1e-14, rtol=0)
    phi, _ = values("exact_shapley", Fn(lambda z: z.amax(1)), torch.tensor([[1.0, 2.0]], dtype=F64))
    torch.testing.assert_close(phi, torch.tensor([[0.5, 1.5]], dtype=F64), atol=1e-14, rtol=0)


def test_exact_shapley_matches_the_permutation_definition_and_axioms() -> None:
    model = mlp(5, seed=5)
    x, b = rand(2, 5, seed=6), rand(5, seed=7)
    phi, e = values("exact_shapley", model, x, fill=b)
    for r in range(2):
        torch.testing.assert_close(phi[r], brute_shapley(lambda z: f_of(model, z), x[r], b), atol=1e-12, rtol=0)
    # efficiency: base value + Σφ = f(x), base value = f(b)
    torch.testing.assert_close(e.meta["base_value"] + phi.sum(1), f_of(model, x), atol=1e-12, rtol=0)
    torch.testing.assert_close(e.meta["base_value"], f_of(model, b.expand(2, -1)), atol=1e-12, rtol=0)


def test_exact_shapley_symmetry_dummy_and_linearity() -> None:
    f = Fn(lambda z: torch.tanh(z[:, 0] * z[:, 1] + z[:, 0] + z[:, 1]) * z[:, 2] + z[:, 2] ** 2)  # ignores z[:, 3]
    g = Fn(lambda z: torch.sin(z[:, 0] - 2 * z[:, 3]) + z[:, 1] * z[:, 2])
    fg = Fn(lambda z: f.fn(z) + g.fn(z))
    x = rand(3, 4, seed=8)
    x[:, 1] = x[:, 0]  # players 0 and 1 are symmetric in f (equal values, equal baselines)
    pf, _ = values("exact_shapley", f, x)
    pg, _ = values("exact_shapley", g, x)
    pfg, _ = values("exact_shapley", fg, x)
    torch.testing.assert_close(pf[:, 0], pf[:, 1], atol=1e-14, rtol=0)
    assert torch.equal(pf[:, 3], torch.zeros(3, dtype=F64))  # dummy: exactly zero
    torch.testing.assert_close(pfg, pf + pg, atol=1e-13, rtol=0)


def test_shapley_from_values_on_a_game_table() -> None:
    """Glove game: players 0, 1 hold left gloves, 2 a right one; v = number of pairs. φ = (1/6, 1/6, 2/3)."""
    v = torch.tensor([[min(((s >> 0) & 1) + ((s >> 1) & 1), (s >> 2) & 1) for s in range(8)]], dtype=F64)
    torch.testing.assert_close(shapley_from_values(v, 3), torch.tensor([[1 / 6, 1 / 6, 2 / 3]], dtype=F64))


def test_exact_shapley_refuses_large_m_before_any_forward() -> None:
    model = Fn(lambda z: z.sum(1))
    x = rand(1, 17, seed=9)
    with pytest.raises(InvalidParameterError, match=r"M=17 features would cost 131,072 forward passes.*allow_large"):
        whybox.explain(model, x, "exact_shapley", target=0)
    with pytest.raises(InvalidParameterError, match=r"about 131,072 forward passes.*max_evaluations=1,000"):
        whybox.explain(model, x, "exact_shapley", target=0, allow_large=True, max_evaluations=1000)
    assert model.rows == 0


# ---------------------------------------------------------------------------------------------- Kernel SHAP
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("budget", [9, 12, 20, 100, 600])  # >= M - 1 = 9 unknowns: fewer is refused
@pytest.mark.filterwarnings(
    "ignore::whybox.errors.UnderdeterminedWarning"
)  # 9, 12 paired: minimum-norm, still additive
def test_kernel_shap_additivity_holds_for_any_seed_and_budget(seed: int, budget: int) -> None:
    model = mlp(10, seed=3)
    x, b = rand(2, 10, seed=10) * 2, rand(10, seed=11)
    phi, e = values("kernel_shap", model, x, fill=b, n_samples=budget, seed=seed, batch_size=1024)
    fx = f_of(model, x)
    delta = fx - e.meta["base_value"]
    assert torch.all((phi.sum(1) - delta).abs() <= 1e-9 * delta.abs().clamp_min(1.0))
    assert e.meta["n_samples"] == [min(budget, 2**10 - 2)] * 2


@pytest.mark.parametrize("paired", [True, False])
def test_kernel_shap_full_enumeration_is_exact_shapley(paired: bool) -> None:
    model = mlp(7, seed=4)
    x, b = rand(3, 7, seed=12), rand(7, seed=13)
    exact, _ = values("exact_shapley", model, x, fill=b)
    for budget in (2**7 - 2, 500):  # capped at the 126 coalitions that exist
        phi, e = values("kernel_shap", model, x, fill=b, n_samples=budget, paired=paired)
        torch.testing.assert_close(phi, exact, atol=1e-8, rtol=0)
        assert e.meta["n_samples"] == [126] * 3 and e.meta["enumerated_sizes"][0] == [1, 2, 3, 4, 5, 6]


def test_kernel_shap_design_weights_follow_the_shapley_kernel() -> None:
    """At full enumeration each coalition of size s weighs (M-1)/(C(M,s) s (M-s)), normalised."""
    m = 6
    d = kernel_design(m, 2**m - 2, generator=torch.Generator().manual_seed(0))
    s = d.z.sum(1).to(F64)
    kern = (m - 1) / (torch.tensor([math.comb(m, int(k)) for k in s], dtype=F64) * s * (m - s))
    torch.testing.assert_close(d.w, kern / kern.sum(), atol=1e-15, rtol=0)
    assert len({tuple(r.tolist()) for r in d.z}) == 2**m - 2  # every coalition once, no ∅ and no full set


def test_kernel_shap_converges_to_exact_shapley() -> None:
    model = mlp(12, seed=6)
    x, b = rand(1, 12, seed=14) * 2, rand(12, seed=15)
    exact, _ = values("exact_shapley", model, x, fill=b, batch_size=4096)
    errs = []
    for budget in (48, 256, 1500):
        e = [
            (values("kernel_shap", model, x, fill=b, n_samples=budget, seed=s, batch_size=4096)[0] - exact).abs().mean()
            for s in range(4)
        ]
        errs.append(float(torch.stack(e).mean()))
    assert errs[2] < errs[1] < errs[0], errs
    assert errs[2] < errs[0] / 3, errs


def test_kernel_shap_dummy_symmetric_and_null_features() -> None:
    fn = Fn(lambda z: torch.tanh(z[:, 0] + z[:, 1]) * z[:, 2] + z[:, 4] ** 3)  # ignores feature 3
    x = rand(2, 6, seed=16)
    x[:, 1] = x[:, 0]  # 0 and 1 symmetric
    x[:, 5] = 0.0  # equal to the (zero) baseline: a null player, dropped from M
    phi, e = values("kernel_shap", fn, x)
    assert e.meta["n_features"] == [5, 5]
    assert torch.equal(phi[:, 5], torch.zeros(2, dtype=F64))
    assert float(phi[:, 3].abs().max()) <= 1e-10  # dummy: zero at full enumeration (2^5 - 2 fits the budget)
    torch.testing.assert_close(phi[:, 0], phi[:, 1], atol=1e-10, rtol=0)


def test_kernel_shap_linear_model_is_exact_from_a_small_sample() -> None:
    w = rand(10, seed=17) * 2
    x, b = rand(2, 10, seed=18), rand(10, seed=19)
    phi, e = values("kernel_shap", Fn(lambda z: z @ w - 1.0), x, fill=b, n_samples=30)
    assert e.meta["enumerated_sizes"] == [[], []] and e.meta["n_samples"] == [30, 30]
    torch.testing.assert_close(phi, w * (x - b), atol=1e-8, rtol=0)


def test_kernel_shap_background_is_the_mean_over_reference_rows() -> None:
    """Interventional values: with R background rows, v(S) averages R baselines, so φ = mean_r φ(b_r) for exact
    Shapley's linearity in v, and base_value = mean_r f(b_r)."""
    model = mlp(5, seed=7)
    x, bg = rand(2, 5, seed=20), rand(3, 5, seed=21)
    phi, e = values("kernel_shap", model, x, background=bg)
    per = torch.stack([values("exact_shapley", model, x, fill=bg[r])[0] for r in range(3)]).mean(0)
    torch.testing.assert_close(phi, per, atol=1e-10, rtol=0)
    torch.testing.assert_close(e.meta["base_value"], f_of(model, bg).mean().expand(2), atol=1e-12, rtol=0)


def test_kernel_shap_refuses_before_any_forward() -> None:
    model = Fn(lambda z: z.sum(1))
    with pytest.raises(InvalidParameterError, match=r"'kernel_shap' would need about 4,180 forward passes"):
        whybox.explain(model, rand(2, 20, seed=22), "kernel_shap", target=0, max_evaluations=4000)
    assert model.rows == 0


# ---------------------------------------------------------------------------------------------- Shapley sampling
@pytest.mark.parametrize("antithetic", [True, False])
def test_shapley_sampling_efficiency_is_exact_and_null_features_get_zero(antithetic: bool) -> None:
    fn = Fn(lambda z: torch.sin(z[:, 0] * z[:, 1]) + z[:, 2] * z[:, 4])  # ignores feature 3
    x = rand(3, 5, seed=23)
    for m in (1, 3):
        phi, e = values("shapley_sampling", fn, x, n_permutations=m, antithetic=antithetic)
        delta = f_of(fn, x) - e.meta["base_value"]
        assert torch.all((phi.sum(1) - delta).abs() <= 1e-12 * delta.abs().clamp_min(1.0))
        assert torch.equal(phi[:, 3], torch.zeros(3, dtype=F64))
        assert e.meta["n_forward"] == 3 + 3 * (1 + e.meta["n_walks"] * 4)


def test_shapley_sampling_linear_is_exact_with_one_permutation() -> None:
    w = rand(7, seed=24)
    x, b = rand(2, 7, seed=25), rand(7, seed=26)
    phi, _ = values("shapley_sampling", Fn(lambda z: z @ w), x, fill=b, n_permutations=1, antithetic=False)
    torch.testing.assert_close(phi, w * (x - b), atol=1e-13, rtol=0)


def test_shapley_sampling_converges_within_five_standard_errors() -> None:
    model = mlp(8, seed=8)
    x, b = rand(1, 8, seed=27) * 2, rand(8, seed=28)
    exact, _ = values("exact_shapley", model, x, fill=b)
    errs = []
    for m in (4, 16, 64):
        phi, e = values("shapley_sampling", model, x, fill=b, n_permutations=m, seed=m, batch_size=2048)
        assert torch.all((phi - exact).abs() <= 5 * e.meta["se"] + 1e-12), (phi - exact) / e.meta["se"]
        errs.append(float((phi - exact).abs().mean()))
    assert errs[2] < errs[0], errs


# ---------------------------------------------------------------------------------------------- LIME
class LinearImage(nn.Module):
    def __init__(self, shape: tuple[int, ...], seed: int) -> None:
        super().__init__()
        self.w = nn.Parameter(rand(*shape, seed=seed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.w).flatten(1).sum(1) + 0.25
        return torch.stack([s, -s], 1)


def test_lime_recovers_a_model_linear_in_z_exactly() -> None:
    """Linear net, zero fill: f(z) = 0.25 + Σ_g z_g Σ_{u∈g} w_u x_u, so alpha = 0 gives β exactly under any
    positive kernel, R² = 1, intercept f(∅)."""
    model = LinearImage((3, 8, 8), seed=30)
    x = rand(2, 3, 8, 8, seed=31)
    grid = masking.grid(x, patch=2)
    contrib = (x * model.w.detach()).sum(1).flatten(1)  # (B, 64) per pixel
    beta = torch.zeros(2, 16, dtype=F64).scatter_add_(1, grid.groups.flatten(1), contrib)
    for kw in (0.25, 5.0):
        e = whybox.explain(
            model, x, "lime", target=0, features="grid", patch=2, fill="zero", score="logit", alpha=0.0,
            n_samples=200, kernel_width=kw,
        )  # fmt: skip
        torch.testing.assert_close(e.meta["values"], beta, atol=1e-10, rtol=0)
        torch.testing.assert_close(e.meta["r2"], torch.ones(2, dtype=F64), atol=1e-12, rtol=0)
        torch.testing.assert_close(e.meta["intercept"], torch.full((2,), 0.25, dtype=F64), atol=1e-10, rtol=0)
        torch.testing.assert_close(e.meta["local_pred"], f_of(model, x), atol=1e-10, rtol=0)
        assert e.attributions.shape == (2, 1, 8, 8)


def test_lime_ridge_shrinks_monotonically_in_alpha() -> None:
    model = LinearImage((3, 8, 8), seed=32)
    x = rand(1, 3, 8, 8, seed=33)
    norms = [
        float(
            whybox.explain(model, x, "lime", target=0, features="grid", patch=4, score="logit", alpha=a)
            .meta["values"]
            .norm()
        )
        for a in (0.0, 0.1, 1.0, 10.0, 100.0)
    ]
    assert all(a > b for a, b in itertools.pairwise(norms)), norms


def test_lime_on_a_linear_tabular_model_recovers_signs_and_order() -> None:
    w = torch.tensor([3.0, -2.0, 1.2, 0.5, -0.3, 0.1], dtype=F64)
    x = torch.ones(1, 6, dtype=F64)
    e = whybox.explain(Fn(lambda z: z @ w), x, "lime", target=0, score="logit")  # default ridge, alpha = 1
    beta = e.meta["values"][0]
    assert torch.equal(beta.sign(), w.sign())
    assert torch.equal(beta.argsort(), w.argsort())
    assert float(e.meta["r2"][0]) > 0.99


def test_lime_default_fill_perturbs_images_whose_segments_are_single_pixels() -> None:
    """SLIC on an 8 x 8 digit gives one pixel per superpixel, so lime_image's segment-mean fill (LIME's default on
    images) left every coalition equal to the input: every coefficient 0 and R² 0, from 1000 passes a row (what
    ``whybox explain --model digits-cnn digits-test --method lime`` wrote). Such a row gets the zero fill under
    ``"auto"``, named in meta; a row whose segments do vary keeps the segment mean; an explicit segment-mean fill
    that changes nothing warns."""
    model = LinearImage((1, 8, 8), seed=34)
    x = rand(2, 1, 8, 8, seed=35)
    pixels = masking.pixels(x)
    e = whybox.explain(model, x, "lime", target=0, features=pixels, score="logit", n_samples=300)
    zero = whybox.explain(model, x, "lime", target=0, features=pixels, score="logit", n_samples=300, fill="zero")
    assert e.meta["fill"] == ["zero", "zero"]
    assert torch.equal(e.attributions, zero.attributions)
    assert bool((e.meta["r2"] > 0.5).all())
    # 2 x 2 cells: their means differ from their pixels, so the default stays lime_image's
    cells = whybox.explain(model, x, "lime", target=0, features="grid", patch=2, score="logit", n_samples=300)
    mean = whybox.explain(
        model, x, "lime", target=0, features="grid", patch=2, score="logit", n_samples=300, fill="segment_mean"
    )
    assert "fill" not in cells.meta and torch.equal(cells.attributions, mean.attributions)
    with pytest.warns(UserWarning, match=r"fill='segment_mean' leaves rows \[0, 1\] exactly as they are"):
        whybox.explain(model, x, "lime", target=0, features=pixels, n_samples=20, fill="segment_mean")


def test_lime_lasso_zeroes_small_coefficients() -> None:
    w = torch.tensor([3.0, -2.0, 0.0, 0.0, 1.0], dtype=F64)
    e = whybox.explain(Fn(lambda z: z @ w), torch.ones(1, 5, dtype=F64), "lime", target=0, score="logit",
                       surrogate="lasso", alpha=0.05)  # fmt: skip
    beta = e.meta["values"][0]
    assert torch.equal(beta[2:4], torch.zeros(2, dtype=F64))
    assert torch.equal(beta.sign(), w.sign())


# ---------------------------------------------------------------------------------------------- occlusion
def brute_occlusion(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, b: torch.Tensor, window: tuple, stride: tuple
) -> torch.Tensor:
    """Coverage average by explicit loops over every window position (one row)."""
    shape = x.shape
    starts = [range(0, -(-(d - w) // s) * s + 1, s) for d, w, s in zip(shape, window, stride, strict=True)]
    total = torch.zeros(shape, dtype=F64)
    count = torch.zeros(shape, dtype=F64)
    fx = float(fn(x.unsqueeze(0)))
    for start in itertools.product(*starts):
        sl = tuple(slice(s0, min(s0 + w, d)) for s0, w, d in zip(start, window, shape, strict=True))
        xp = x.clone()
        xp[sl] = b[sl]
        total[sl] += fx - float(fn(xp.unsqueeze(0)))
        count[sl] += 1
    return total / count


def test_occlusion_one_by_one_window_on_a_linear_model_is_w_times_x_minus_b() -> None:
    model = LinearImage((2, 5, 6), seed=34)
    x, b = rand(2, 2, 5, 6, seed=35), rand(2, 5, 6, seed=36)
    e = whybox.explain(model, x, "occlusion", target=0, window=(1, 1, 1), stride=1, fill=b)
    torch.testing.assert_close(e.attributions, model.w.detach() * (x - b), atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("window", "stride"),
    [((2, 2, 3), (1, 2, 2)), ((1, 3, 3), (1, 2, 2)), ((2, 4, 3), (2, 3, 3)), ((2, 5, 6), (2, 5, 6))],
)
def test_occlusion_matches_the_brute_force_coverage_average(window: tuple, stride: tuple) -> None:
    """Also where row 0's corner equals the fill: the windows inside it are not scored (their drop is 0)."""
    net = mlp(60, seed=9)
    model = Fn(lambda z: net(z.flatten(1))[:, 0])
    x, b = rand(2, 2, 5, 6, seed=37), rand(2, 5, 6, seed=38)
    x[0, :, :4, :4] = b[:, :4, :4]
    e = whybox.explain(model, x, "occlusion", target=0, window=window, stride=stride, fill=b)
    dead = 0
    for r in range(2):
        with torch.no_grad():
            ref = brute_occlusion(model.fn, x[r], b, window, stride)
        torch.testing.assert_close(e.attributions[r], ref, atol=1e-12, rtol=0)
        starts = [range(0, -(-(d - w) // s) * s + 1, s) for d, w, s in zip(x.shape[1:], window, stride, strict=True)]
        for start in itertools.product(*starts):
            sl = tuple(slice(s0, s0 + w) for s0, w in zip(start, window, strict=True))
            dead += bool(torch.equal(x[r][sl], b[sl]))
    n_windows = math.prod(
        len(range(0, -(-(d - w) // s) * s + 1, s)) for d, w, s in zip(x.shape[1:], window, stride, strict=True)
    )
    assert e.meta["n_unchanged_windows"] == dead and e.meta["n_forward"] == 2 * (1 + n_windows) - dead


# ---------------------------------------------------------------------------------------------- ablation
def test_feature_ablation_of_an_additive_model_is_exact_shapley() -> None:
    groups = torch.tensor([0, 0, 1, 2, 2, 3])
    fn = Fn(lambda z: torch.sin(z[:, 0] * z[:, 1]) + z[:, 2] ** 2 + torch.tanh(z[:, 3] - z[:, 4]) + 0 * z[:, 5])
    x, b = rand(3, 6, seed=39), rand(6, seed=40)
    abl, e = values("feature_ablation", fn, x, features=groups, fill=b)
    exact, _ = values("exact_shapley", fn, x, features=groups, fill=b)
    torch.testing.assert_close(abl, exact, atol=1e-13, rtol=0)
    assert torch.equal(abl[:, 3], torch.zeros(3, dtype=F64))  # the ignored column
    torch.testing.assert_close(e.attributions, abl[:, groups], atol=0, rtol=0)  # painted onto the columns


def test_occlusion_and_ablation_fix_the_target_from_the_unperturbed_mask() -> None:
    """No separate clean pass: B (1 + windows) and B + Σ_r (1 + M_r) forward passes (captum's counts) where every
    window changes its row; the target is still each row's argmax; a row with nothing to occlude or ablate (equal
    to the fill everywhere) gets one clean pass for its target and nothing else."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 5)).to(F64).eval()
    x = rand(3, 3, 6, 6, seed=48)
    x[2] = 0.0  # equal to the zero fill everywhere: no feature to ablate
    with torch.no_grad():
        argmax = model(x).argmax(1)
    e = whybox.explain(model, x, "occlusion", window=3, stride=3, batch_size=5)
    assert e.meta["n_forward"] == 2 * (1 + 4) + 1 and e.meta["n_unchanged_windows"] == 4
    assert torch.equal(e.target, argmax) and torch.equal(e.attributions[2], torch.zeros_like(x[2]))
    e = whybox.explain(model, x, "feature_ablation", features="grid", patch=3, batch_size=5)
    assert e.meta["n_features"] == [4, 4, 0] and e.meta["n_forward"] == 2 * (1 + 4) + 1
    assert torch.equal(e.target, argmax) and torch.equal(e.meta["values"][2], torch.zeros(4, dtype=F64))
    with pytest.raises(InvalidTargetError, match="target=7 is out of range for a model with 5 outputs"):
        whybox.explain(model, x, "occlusion", window=3, target=7)


# ---------------------------------------------------------------------------------------------- RISE
def test_rise_masks_have_mean_p_per_pixel() -> None:
    n, p = 3000, 0.3
    masks = RiseMasks(n, (20, 17), 5, p, torch.Generator().manual_seed(0))(torch.arange(n))
    assert masks.shape == (n, 20, 17) and float(masks.min()) >= 0 and float(masks.max()) <= 1
    mean, se = masks.mean(0), masks.std(0) / math.sqrt(n)
    assert torch.all((mean - p).abs() <= 5 * se)


def test_rise_masks_are_the_authors_skimage_upsampling_cropped_at_the_shift() -> None:
    """Mask i = skimage resize(grid, ((s + 1) C, (s + 1) C), order=1, mode="reflect") (the authors' code), cropped to
    H x W at its offset. whybox held the edge values (F.interpolate), up to 0.4 off in the outer half cells."""
    from skimage.transform import resize

    rm = RiseMasks(12, (20, 17), (5, 4), 0.5, torch.Generator().manual_seed(3))
    masks = rm(torch.arange(12))
    (ch, cw) = rm.cell
    for i in range(12):
        big = resize(rm.grids[i].numpy(), (6 * ch, 5 * cw), order=1, mode="reflect", anti_aliasing=False)
        oy, ox = int(rm.oy[i]), int(rm.ox[i])
        want = torch.from_numpy(big[oy : oy + 20, ox : ox + 17])
        torch.testing.assert_close(masks[i], want, rtol=0, atol=1e-12)


def test_rise_of_a_constant_model_is_that_constant_within_five_se() -> None:
    c, n, p = 0.7, 600, 0.5
    model = Fn(lambda z: torch.full((z.shape[0],), c, dtype=z.dtype))
    x = rand(2, 3, 12, 12, seed=41)
    e = whybox.explain(model, x, "rise", target=0, score="logit", n_masks=n, p_keep=p, seed=5)
    masks = RiseMasks(n, (12, 12), 7, p, torch.Generator().manual_seed(5))(torch.arange(n))
    se = c * masks.std(0) / (math.sqrt(n) * p)
    assert torch.all((e.attributions[:, 0] - c).abs() <= 5 * se)
    # the same masks for every row, and exactly c times the mask mean over p
    torch.testing.assert_close(e.attributions[:, 0], (c * masks.mean(0) / p).expand(2, -1, -1), atol=1e-12, rtol=0)


def test_rise_probabilities_are_non_negative() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 10 * 10, 4)).eval()
    e = whybox.explain(model, rand(2, 3, 10, 10, seed=45).float(), "rise", n_masks=64)
    assert float(e.attributions.min()) >= 0


# ---------------------------------------------------------------------------------------------- seeds and errors
@pytest.mark.parametrize(
    ("method", "opts"),
    [
        ("rise", {"n_masks": 50, "score": "logit"}),
        ("lime", {"n_samples": 50, "score": "logit", "fill": "zero"}),
        ("kernel_shap", {"n_samples": 40}),
        ("shapley_sampling", {"n_permutations": 2}),
        ("occlusion", {"fill": "uniform"}),
    ],
)
def test_seed_drives_every_draw(method: str, opts: dict) -> None:
    model = mlp(48, seed=10)
    img = Fn(lambda z: model(z.flatten(1))[:, 0])
    x = rand(2, 3, 4, 4, seed=42)
    feats = {} if method in ("rise", "occlusion") else {"features": "pixels"}
    a = whybox.explain(img, x, method, target=0, seed=1, **feats, **opts).attributions
    b = whybox.explain(img, x, method, target=0, seed=2, **feats, **opts).attributions
    assert not torch.allclose(a, b)
    torch.manual_seed(123)  # the global RNG plays no part
    c = whybox.explain(img, x, method, target=0, seed=1, **feats, **opts).attributions
    assert torch.equal(a, c)


def test_errors_name_the_parameter() -> None:
    model = Fn(lambda z: z.flatten(1).sum(1))
    x = rand(1, 3, 6, 6, seed=43)
    with pytest.raises(InvalidParameterError, match=re.escape("p_keep must be in (0, 1); got 1.5.")):
        whybox.explain(model, x, "rise", p_keep=1.5)
    with pytest.raises(InvalidParameterError, match=r"features must be one of \('auto', 'superpixels'"):
        whybox.explain(model, x, "kernel_shap", features="slic")
    with pytest.raises(InvalidParameterError, match=r"features mask of shape \(5, 5\) does not fit inputs"):
        whybox.explain(model, x, "lime", features=torch.zeros(5, 5, dtype=torch.int64))
    with pytest.raises(InvalidParameterError, match=r"pass either fill= .* or background="):
        whybox.explain(model, x, "kernel_shap", fill="mean", background=x)
    with pytest.raises(InvalidParameterError, match=r"window=\(3, 7, 2\) is larger than a row \(3, 6, 6\)"):
        whybox.explain(model, x, "occlusion", window=(7, 2))
    with pytest.raises(InvalidParameterError, match=r"stride=\(1, 3, 3\) is larger than window=\(1, 2, 2\)"):
        whybox.explain(model, x, "occlusion", window=(1, 2, 2), stride=(1, 3, 3))
    with pytest.raises(InvalidParameterError, match=r"'occlusion' would need about 37 forward passes"):
        whybox.explain(model, x, "occlusion", window=1, max_evaluations=10)
    assert model.rows == 0


# ---------------------------------------------------------------------------------------------- features and engine
def test_quickshift_features_are_lime_images_segmentation() -> None:
    from skimage.segmentation import quickshift as sk_quickshift

    x = rand(1, 3, 32, 32, seed=46, lo=0.0, hi=0.1)
    x[:, 0, :16] += 0.8  # four colour blocks
    x[:, 2, :, 16:] += 0.8
    ours = quickshift(x).groups[0, 0]
    img = ((x[0] - x[0].min()) / (x[0].max() - x[0].min() + 1e-12)).permute(1, 2, 0).numpy()
    ref = torch.from_numpy(sk_quickshift(img, kernel_size=4, max_dist=200, ratio=0.2))
    pairs = {(int(a), int(b)) for a, b in zip(ours.flatten(), ref.flatten(), strict=True)}
    assert len(pairs) == len(ours.unique()) == len(ref.unique()) >= 4  # the same partition, relabelled
    e = whybox.explain(
        Fn(lambda z: z.flatten(1).sum(1)), x, "lime", target=0, features="quickshift", n_samples=40, score="logit"
    )
    assert e.meta["n_features"] == [len(ours.unique())]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 64])
def test_engine_ragged_counts_score_exactly_the_requested_pairs(batch_size: int) -> None:
    """Per-row mask counts: chunks span rows, every (row, k < count) pair is scored once, NaN beyond."""
    x = rand(3, 4, seed=47)
    counts = torch.tensor([2, 0, 5])
    engine = MaskingEngine(whybox.adapt(Fn(lambda z: z.sum(1))), batch_size=batch_size)
    s = engine.scores(
        x,
        lambda rows, ks: ks.view(-1, 1) > torch.arange(4),  # mask k keeps the first k columns
        n_masks=counts,
        fill=torch.zeros_like(x),
        target=Target(torch.zeros(3, dtype=torch.int64)),
    )
    assert s.shape == (3, 5) and engine.n_forward == 7
    for r in range(3):
        for k in range(int(counts[r])):
            assert float(s[r, k]) == pytest.approx(float(x[r, : min(k, 4)].sum()), abs=1e-15)
        assert bool(s[r, int(counts[r]) :].isnan().all())


# ---------------------------------------------------------------------------------------------- memory
def _hwm_kib() -> tuple[int, int]:
    with open("/proc/self/status") as fh:
        status = fh.read()
    hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return hwm, rss


def _peak_growth_mib(fn: Callable[[], object]) -> float:
    """Peak resident memory during ``fn`` above the resident memory before it (Linux: VmHWM reset by clear_refs)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    _, rss0 = _hwm_kib()
    fn()
    hwm, _ = _hwm_kib()
    return (hwm - rss0) / 1024


def _can_reset_hwm() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _can_reset_hwm(), reason="needs Linux /proc/self/clear_refs to reset the peak RSS")
@pytest.mark.parametrize(
    ("method", "key", "n"),
    [("rise", "n_masks", 150), ("lime", "n_samples", 150), ("kernel_shap", "n_samples", 150),
     ("shapley_sampling", "n_permutations", 2)],
)  # fmt: skip
def test_memory_peak_stays_flat_with_ten_times_the_samples(method: str, key: str, n: int) -> None:
    """At batch_size 8, 10x the samples must not raise the peak: rendering all (row, sample) pairs of the large run
    at once would take 10n x 110 KiB (3x96x96 float32) = 160+ MiB more."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 4, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(4, 3)).eval()  # fmt: skip
    x = rand(1, 3, 96, 96, seed=44).float()
    feats = {} if method == "rise" else {"features": "grid", "patch": 12}  # 64 regions

    def run(k: int) -> None:
        whybox.explain(model, x, method, batch_size=8, **feats, **{key: k})

    run(n)  # warm-up: lazy imports and allocator pools
    small = _peak_growth_mib(lambda: run(n))
    large = _peak_growth_mib(lambda: run(10 * n))
    assert large <= small + 24, (small, large)
