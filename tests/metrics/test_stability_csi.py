"""Visani's coefficient stability index (CSI) and the LIME coefficient standard deviations it is built on:
identical calls score VSI = CSI = 100, a hand-built set of intervals gives its known overlap share, ``coef_sd``
equals a slow numpy re-derivation of the sandwich formula, and more LIME samples give narrower intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from whybox.explainers.perturbation.lime import Lime, cosine_kernel, lime_samples
from whybox.metrics.stability import ci_overlap, csi_scores
from whybox.registry import EXPLAINERS

from ._models import cnn3, randn, seeded

F64 = torch.float64


class _SameDrawsLime(Lime):
    """LIME whose coalitions ignore the seed: every call of the stability loop is the same call."""

    def row_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(123)


def _numpy_coef_sd(z: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray:
    """The formula written out on the uncentred design with an explicit, unpenalised intercept column:
    H = X1ᵀWX1 + α·diag(0, 1, ..., 1), Cov = σ² H⁻¹ X1ᵀWX1 H⁻¹, σ² = Σ w r² / (n − p) of plain WLS."""
    n, m = z.shape
    x1 = np.hstack([np.ones((n, 1)), z])
    xtwx = x1.T @ (w[:, None] * x1)
    beta_wls = np.linalg.solve(xtwx, x1.T @ (w * y))
    resid = y - x1 @ beta_wls
    sigma2 = float(np.sum(w * resid**2)) / (n - (m + 1))
    pen = alpha * np.diag([0.0] + [1.0] * m)
    h_inv = np.linalg.inv(xtwx + pen)
    cov = sigma2 * h_inv @ xtwx @ h_inv
    return np.sqrt(np.diag(cov)[1:])


# ---------------------------------------------------------------------------------------------- the index
def test_identical_calls_score_vsi_and_csi_100(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_SameDrawsLime, "name", "same_draws_lime", raising=False)
    monkeypatch.setitem(EXPLAINERS._items, "same_draws_lime", _SameDrawsLime)
    model, x = cnn3(), randn(2, 3, 16, 16, seed=5)
    params = {"n_samples": 80, "features": "grid", "patch": 4}
    r = whybox.evaluate(model, x, "same_draws_lime", "stability", n_runs=4, k=5, measure="csi", explainer_params=params)
    torch.testing.assert_close(r.scores, torch.full((2,), 100.0, dtype=F64))
    torch.testing.assert_close(r.meta["vsi"], torch.full((2,), 100.0, dtype=F64))
    assert r.meta["csi_dropped"].tolist() == [0, 0]  # the same 5 features every time
    assert (r.meta["csi_features"] == 100).sum(1).tolist() == [5, 5]
    # a surrogate that fits exactly has sd = 0: identical point intervals still agree
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=F64)
    lin = nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(w.view(1, -1))
    r0 = whybox.evaluate(lin, torch.ones(1, 4, dtype=F64), "same_draws_lime", "stability", n_runs=3, k=2,
                         score="logit", explainer_params={"score": "logit", "alpha": 0.0})  # fmt: skip
    assert r0.meta["csi"].item() == 100.0


def test_csi_on_hand_built_intervals() -> None:
    """Three calls, sd = 0.5 / 1.96 so each CI is beta ± 0.5, all features selected unless noted.

    f0: [0, 1], [0.7, 1.7], [1.6, 2.6]: pairs (0,1) and (1,2) overlap, (0,2) not -> 200/3.
    f1: selected by calls 0 and 1 only, [3, 4] and [3.2, 4.2] -> 100.
    f2: selected once -> dropped.
    f3: [0, 1] and [1, 2] touch only -> 0 (strict overlap); call 2 does not select it.
    CSI = mean(200/3, 100, 0).
    """
    values = torch.tensor([[0.5, 3.5, 9.0, 0.5], [1.2, 3.7, 9.0, 1.5], [2.1, 0.0, 9.0, 7.0]], dtype=F64)
    sd = torch.full_like(values, 0.5 / 1.96)
    sel = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 1], [1, 0, 0, 0]], dtype=torch.bool)
    csi, per, dropped = csi_scores(values[:, None], sd[:, None], sel[:, None])
    torch.testing.assert_close(per[0, :2], torch.tensor([200 / 3, 100.0], dtype=F64))
    assert math.isnan(per[0, 2]) and per[0, 3].item() == 0.0
    assert csi.item() == pytest.approx((200 / 3 + 100 + 0) / 3)
    assert dropped.tolist() == [1]
    # a non-finite sd is never "selected"; nothing selected twice -> NaN
    sd_nan = sd.clone()
    sd_nan[1:] = math.nan
    assert math.isnan(csi_scores(values[:, None], sd_nan[:, None], sel[:, None])[0].item())


def test_ci_overlap_is_strict_and_symmetric() -> None:
    t = lambda *v: torch.tensor(v, dtype=F64)  # noqa: E731
    lo_a, hi_a = t(0, 0, 0, 2, 1), t(1, 1, 1, 2, 1)
    lo_b, hi_b = t(0.5, 1, 2, 2, 1.5), t(2, 2, 3, 2, 1.5)
    expected = [True, False, False, True, False]  # overlap, touch, apart, same point, different points
    assert ci_overlap(lo_a, hi_a, lo_b, hi_b).tolist() == expected
    assert ci_overlap(lo_b, hi_b, lo_a, hi_a).tolist() == expected


# ---------------------------------------------------------------------------------------------- coef_sd
def test_coef_sd_equals_a_numpy_rederivation_on_a_small_linear_model() -> None:
    m, n, seed, width = 5, 400, 11, 0.25
    model = seeded(lambda: nn.Linear(m, 3).double(), 3)
    x = randn(2, m, seed=12).double()
    for alpha in (1.0, 0.0, 7.5):
        e = whybox.explain(model, x, "lime", target=1, n_samples=n, seed=seed, kernel_width=width, alpha=alpha)
        z = lime_samples(m, n, torch.Generator().manual_seed(seed))
        w = cosine_kernel(z, width).numpy()
        for r in range(2):
            with torch.no_grad():
                y = model(x[r] * z.to(F64)).softmax(1)[:, 1].numpy()  # fill zero on (B, F) rows; prob score
            ref = _numpy_coef_sd(z.numpy().astype(np.float64), y, w, alpha)
            np.testing.assert_allclose(e.meta["coef_sd"][r].numpy(), ref, rtol=1e-7, atol=1e-14)
    assert bool((e.meta["coef_sd"] > 0).all())  # softmax of a linear model is not linear in z


def test_more_lime_samples_give_narrower_intervals() -> None:
    model, x = cnn3(), randn(1, 3, 16, 16, seed=6)
    kw = {"features": "grid", "patch": 4, "target": 0, "seed": 2}
    few = whybox.explain(model, x, "lime", n_samples=100, **kw).meta["coef_sd"]
    many = whybox.explain(model, x, "lime", n_samples=1600, **kw).meta["coef_sd"]
    assert few.shape == many.shape == (1, 16)
    assert bool((many < few).all())  # sd ~ 1 / sqrt(n): 16 x the samples, about a quarter of the width
    assert float((many / few).median()) < 0.5


def test_lime_stability_reports_csi_and_other_explainers_refuse_measure_csi() -> None:
    model, x = cnn3(), randn(1, 3, 16, 16, seed=4)
    params = {"n_samples": 60, "features": "grid", "patch": 4}
    r = whybox.evaluate(model, x, "lime", "stability", n_runs=5, k=5, measure="csi", explainer_params=params)
    assert 0 <= r.scores.item() <= 100 and r.scores.item() == r.meta["csi"].item()
    kept = ~torch.isnan(r.meta["csi_features"])
    assert r.scores.item() == pytest.approx(float(r.meta["csi_features"][kept].mean()))
    lasso = {**params, "surrogate": "lasso"}
    assert "coef_sd" not in whybox.explain(model, x, "lime", **lasso).meta
    jac = whybox.evaluate(model, x, "lime", "stability", n_runs=2, explainer_params=lasso)
    assert math.isnan(jac.meta["csi"].item()) and "'lime'" in jac.meta["csi_note"]
    with pytest.raises(whybox.InvalidParameterError, match=r"measure='csi' needs .*explainer 'lime' reports no"):
        whybox.evaluate(model, x, "lime", "stability", n_runs=2, measure="csi", explainer_params=lasso)
    with pytest.raises(whybox.InvalidParameterError, match=r"explainer 'saliency' reports no coefficient"):
        whybox.evaluate(model, x, "saliency", "stability", n_runs=2, measure="csi")


def test_coef_sd_of_a_wide_design_reads_its_rank_from_the_small_gram_matrix() -> None:
    """With no more samples than coefficients (n <= M + 1) the plain WLS fit has no residual degrees of freedom
    unless the design is rank deficient; the rank is read from the (n, n) Gram matrix (two (M + 1)-sized
    eigendecompositions took 2.3 s at M = 3,077): all NaN at full rank, finite where rows repeat."""
    from whybox.explainers.perturbation.lime import ridge_coef_sd

    gen = torch.Generator().manual_seed(0)
    z = lime_samples(30, 20, gen).to(torch.float64)  # n = 20 distinct rows, M = 30
    w = cosine_kernel(z, 0.25)
    y = torch.rand(2, 20, generator=gen, dtype=torch.float64)
    assert bool(ridge_coef_sd(z, y, w, 1.0).isnan().all())
    few = lime_samples(30, 3, gen).to(torch.float64).repeat(5, 1)  # 15 rows, rank 3 (+ the intercept): 11 dof left
    sd = ridge_coef_sd(few, torch.rand(2, 15, generator=gen, dtype=torch.float64), cosine_kernel(few, 0.25), 1.0)
    assert bool(sd.isfinite().all()) and bool((sd >= 0).all())
    # a 0/1 design given as bool takes the float32 Z Zᵀ (exact); the same numbers as the float64 design
    yb = torch.rand(2, 15, generator=gen, dtype=torch.float64)
    wb = cosine_kernel(few, 0.25)
    torch.testing.assert_close(
        ridge_coef_sd(few.bool(), yb, wb, 1.0), ridge_coef_sd(few, yb, wb, 1.0), rtol=1e-9, atol=0
    )
    assert bool(ridge_coef_sd(z.bool(), y, w, 1.0).isnan().all())
