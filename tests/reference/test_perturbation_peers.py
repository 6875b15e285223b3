"""whybox's perturbation family against captum, shap and lime (ATTRIBUTION.md §3, §5).

Exact agreement where the estimators coincide: occlusion and feature ablation vs captum (float32, same
windows, strides, masks and baselines); exact Shapley vs captum ``ShapleyValues`` (all permutations);
Kernel SHAP at full enumeration vs ``shap.KernelExplainer(f, b[None], l1_reg=False)``; our LIME surrogate
re-fitted by lime's own ``LimeBase`` on our samples and kernel, and our lasso vs scikit-learn's. lime_image,
which draws its own samples, is compared by rank correlation of the superpixel weights.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from whybox.explainers.perturbation.lime import cosine_kernel, lime_samples, weighted_lasso, weighted_ridge
from whybox.masking import grid

from ._models import SmallCNN, build, images

captum_attr = pytest.importorskip("captum.attr", reason="captum is not installed (pip install captum)")

F64 = torch.float64


def _close_scaled(ours: torch.Tensor, theirs: torch.Tensor, atol: float) -> None:
    scale = float(theirs.abs().max())
    assert scale > 0, "the reference is identically zero: the comparison would be vacuous"
    torch.testing.assert_close(ours.to(theirs.dtype) / scale, theirs / scale, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def cnn_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = build(SmallCNN, seed=0)
    return model, images((3, 3, 16, 16), seed=1), torch.tensor([0, 3, 4])


def tab_mlp(n_in: int, n_out: int = 3, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(n_in, 12), nn.Tanh(), nn.Linear(12, n_out))
    return net.to(F64).eval()


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64) * 2 - 1


# ---------------------------------------------------------------------------------------------- captum
@pytest.mark.parametrize(
    ("window", "stride"),
    [
        ((3, 4, 4), (3, 2, 2)),
        ((1, 3, 3), (1, 2, 2)),
        ((3, 5, 5), (3, 3, 3)),
        ((2, 3, 2), (1, 3, 2)),
        ((3, 16, 16), (3, 16, 16)),
    ],
)
@pytest.mark.parametrize("baseline", ["zero", "tensor"])
def test_occlusion_matches_captum(cnn_case: tuple, window: tuple, stride: tuple, baseline: str) -> None:
    model, x, t = cnn_case
    b = torch.zeros(1, 3, 16, 16) if baseline == "zero" else images((1, 3, 16, 16), seed=2) * 0.5
    ours = whybox.explain(model, x, "occlusion", target=t, window=window, stride=stride, fill=b, batch_size=50)
    theirs = captum_attr.Occlusion(model).attribute(
        x, sliding_window_shapes=window, strides=stride, baselines=b, target=t, perturbations_per_eval=50
    )
    _close_scaled(ours.attributions, theirs, atol=1e-5)


@pytest.mark.parametrize("features", ["grid", "elements"])
def test_feature_ablation_matches_captum(cnn_case: tuple, features: str) -> None:
    model, x, t = cnn_case
    b = images((1, 3, 16, 16), seed=3) * 0.5
    if features == "grid":
        mask = grid(x, patch=4).groups  # (B, 1, H, W): a region spans all channels
        ours = whybox.explain(model, x, "feature_ablation", target=t, features=mask, fill=b)
        theirs = captum_attr.FeatureAblation(model).attribute(
            x, baselines=b, target=t, feature_mask=mask, perturbations_per_eval=64
        )
    else:  # captum's feature_mask=None: one feature per scalar
        ours = whybox.explain(model, x, "feature_ablation", target=t, features="elements", fill=b, batch_size=256)
        theirs = captum_attr.FeatureAblation(model).attribute(x, baselines=b, target=t, perturbations_per_eval=256)
    _close_scaled(ours.attributions, theirs, atol=1e-5)


def test_exact_shapley_matches_captum_shapley_values(cnn_case: tuple) -> None:
    model, x, t = cnn_case
    mask = grid(x, patch=(8, 6)).groups  # 2 x 3 = 6 regions: captum walks all 6! = 720 orders
    b = images((1, 3, 16, 16), seed=4) * 0.5
    ours = whybox.explain(model, x, "exact_shapley", target=t, features=mask, fill=b)
    theirs = captum_attr.ShapleyValues(model).attribute(
        x, baselines=b, target=t, feature_mask=mask, perturbations_per_eval=64
    )
    _close_scaled(ours.attributions.expand_as(theirs), theirs, atol=1e-5)


# ---------------------------------------------------------------------------------------------- shap
def test_kernel_shap_full_enumeration_matches_shap_kernel_explainer() -> None:
    shap = pytest.importorskip("shap")
    m = 7
    model = tab_mlp(m, seed=1)
    x, b = rand(3, m, seed=5), rand(m, seed=6)
    t = 2

    def f(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.asarray(a, dtype=np.float64)))[:, t].numpy()

    explainer = shap.KernelExplainer(f, b.numpy()[None], l1_reg=False)
    theirs = torch.from_numpy(np.asarray(explainer.shap_values(x.numpy(), nsamples=2**m - 2, silent=True)))
    ours = whybox.explain(model, x, "kernel_shap", target=t, fill=b)
    torch.testing.assert_close(ours.meta["values"], theirs, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.meta["base_value"], torch.full((3,), float(explainer.expected_value), dtype=F64))


# ---------------------------------------------------------------------------------------------- lime
def test_lime_surrogate_equals_lime_base_refit_on_our_samples() -> None:
    """lime's own LimeBase (Ridge(alpha=1), sklearn cosine distances, its kernel) on our coalitions and model
    values gives our coefficients, intercept, R² and local prediction."""
    lime_base = pytest.importorskip("lime.lime_base")
    from sklearn.metrics import pairwise_distances

    m, n, seed, t, width = 8, 300, 7, 1, 0.25
    model = tab_mlp(m, seed=2)
    x = rand(1, m, seed=8)
    ours = whybox.explain(model, x, "lime", target=t, n_samples=n, seed=seed, kernel_width=width)
    z = lime_samples(m, n, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        labels = model(x * z.to(F64)).softmax(1).numpy()  # fill zero on (B, F) rows
    data = z.numpy().astype(np.float64)
    dist = pairwise_distances(data, data[0].reshape(1, -1), metric="cosine").ravel()
    base = lime_base.LimeBase(lambda d: np.sqrt(np.exp(-(d**2) / width**2)))
    intercept, exp, score, local = base.explain_instance_with_data(data, labels, dist, t, m, feature_selection="none")
    coef = torch.zeros(m, dtype=F64)
    for i, w in exp:
        coef[i] = w
    torch.testing.assert_close(ours.meta["values"][0], coef, atol=1e-9, rtol=0)
    assert ours.meta["intercept"][0].item() == pytest.approx(float(intercept), abs=1e-9)
    assert ours.meta["r2"][0].item() == pytest.approx(float(score), abs=1e-9)
    assert ours.meta["local_pred"][0].item() == pytest.approx(float(local[0]), abs=1e-9)
    torch.testing.assert_close(cosine_kernel(z, width), torch.from_numpy(base.kernel_fn(dist)), atol=1e-12, rtol=0)


def test_weighted_ridge_and_lasso_match_scikit_learn() -> None:
    from sklearn.linear_model import Lasso, Ridge

    z = lime_samples(6, 200, torch.Generator().manual_seed(0))
    w = cosine_kernel(z, 0.4)
    y = torch.stack([z.to(F64) @ rand(6, seed=9) + 0.1 * rand(200, seed=10), z.to(F64) @ rand(6, seed=11)])
    zn, wn = z.numpy().astype(np.float64), w.numpy()
    for alpha in (0.0, 0.5, 3.0):
        coef, b0, r2, _ = weighted_ridge(z, y, w, alpha)
        for r in range(2):
            ref = Ridge(alpha=alpha, fit_intercept=True, solver="svd").fit(zn, y[r].numpy(), sample_weight=wn)
            torch.testing.assert_close(coef[r], torch.from_numpy(ref.coef_), atol=1e-9, rtol=0)
            assert float(b0[r]) == pytest.approx(float(ref.intercept_), abs=1e-9)
            assert float(r2[r]) == pytest.approx(ref.score(zn, y[r].numpy(), sample_weight=wn), abs=1e-9)
    # fewer samples than features (the dual form, (AAᵀ + αI)⁻¹, n x n) and more (the primal, M x M), both by Cholesky
    for m, n in ((40, 25), (12, 300)):
        zw = lime_samples(m, n, torch.Generator().manual_seed(1))
        ww = cosine_kernel(zw, 0.4)
        yw = torch.stack([zw.to(F64) @ rand(m, seed=3) + 0.1 * rand(n, seed=4), zw.to(F64) @ rand(m, seed=5)])
        zwn = zw.numpy().astype(np.float64)
        for alpha in (0.01, 1.0):
            coef, b0, _, _ = weighted_ridge(zw, yw, ww, alpha)
            for r in range(2):
                ref = Ridge(alpha=alpha, fit_intercept=True, solver="svd").fit(
                    zwn, yw[r].numpy(), sample_weight=ww.numpy()
                )
                torch.testing.assert_close(coef[r], torch.from_numpy(ref.coef_), atol=1e-9, rtol=0)
                assert float(b0[r]) == pytest.approx(float(ref.intercept_), abs=1e-9)
    for alpha in (0.001, 0.01, 0.05):
        coef, b0, _, _ = weighted_lasso(z, y, w, alpha)
        for r in range(2):
            ref = Lasso(alpha=alpha, fit_intercept=True, tol=1e-14, max_iter=200_000).fit(
                zn, y[r].numpy(), sample_weight=wn
            )
            torch.testing.assert_close(coef[r], torch.from_numpy(ref.coef_), atol=1e-7, rtol=0)
            assert float(b0[r]) == pytest.approx(float(ref.intercept_), abs=1e-7)


def test_lime_agrees_with_lime_image_explainer(cnn_case: tuple) -> None:
    """Same segments, same fill (segment mean, lime_image's hide_color=None), same kernel, different random
    draws: with 2000 samples each the superpixel weights agree in rank (Spearman) and closely in value."""
    lime_image = pytest.importorskip("lime.lime_image")
    from scipy.stats import spearmanr

    model, x, t = cnn_case
    x1, t1 = x[:1], int(t[0])
    seg = grid(x1, patch=4).groups  # 16 regions
    ours = whybox.explain(model, x1, "lime", target=t1, features=seg, n_samples=2000, seed=0)

    def classifier_fn(imgs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(imgs).permute(0, 3, 1, 2).float()).softmax(1).double().numpy()

    exp = lime_image.LimeImageExplainer(random_state=0).explain_instance(
        x1[0].permute(1, 2, 0).double().numpy(),
        classifier_fn,
        labels=(t1,),
        top_labels=None,
        hide_color=None,
        num_samples=2000,
        batch_size=200,
        segmentation_fn=lambda _img: seg[0, 0].numpy(),
        random_seed=0,
    )
    theirs = torch.zeros(16, dtype=F64)
    for i, w in exp.local_exp[t1]:
        theirs[i] = w
    beta = ours.meta["values"][0]
    assert spearmanr(beta.numpy(), theirs.numpy()).statistic > 0.9
    assert float((beta - theirs).abs().max()) <= 0.25 * float(theirs.abs().max())
    assert math.isclose(float(ours.meta["intercept"][0]), float(exp.intercept[t1]), rel_tol=0.1, abs_tol=0.02)


def test_kernel_shap_solve_by_cholesky_equals_svd_least_squares_and_estimates_cond_closely() -> None:
    """The normal equations solved by Cholesky give SVD least squares' values, and the condition number estimated by
    power and inverse iteration is within a few percent of the eigenvalues' ratio, on designs from 5 to 400 features."""
    from whybox.explainers.perturbation.kernel_shap import kernel_design, kernel_shap_solve

    for m, n in ((5, 30), (38, 100), (64, 200), (400, 2848)):
        d = kernel_design(m, n, generator=torch.Generator().manual_seed(0))
        z, w = d.z.to(F64), d.w.to(F64)
        gen = torch.Generator().manual_seed(m)
        y = torch.rand(2, z.shape[0], generator=gen, dtype=F64)
        v0, v1 = torch.rand(2, generator=gen, dtype=F64), torch.rand(2, generator=gen, dtype=F64)
        phi, cond = kernel_shap_solve(d.z, d.w, y, v0, v1)
        x = z[:, :-1] - z[:, -1:]
        a = w.sqrt().view(-1, 1) * x
        yt = y - v0.view(-1, 1) - z[:, -1].view(1, -1) * (v1 - v0).view(-1, 1)
        want = torch.linalg.lstsq(a, w.sqrt().view(-1, 1) * yt.T, driver="gelsd").solution.T
        torch.testing.assert_close(phi[:, :-1], want, atol=1e-10, rtol=1e-8)
        torch.testing.assert_close(phi.sum(1), v1 - v0, atol=1e-12, rtol=0)  # efficiency, exactly
        lam = torch.linalg.eigvalsh(a.T @ a)
        assert cond == pytest.approx(float(lam[-1] / lam[0]), rel=5e-2), m  # from below: 2 % low at M = 400
