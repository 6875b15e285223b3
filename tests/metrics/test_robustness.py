"""Infidelity and max-sensitivity: closed forms on linear and quadratic models, and agreement with captum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import whybox
from whybox.metrics.robustness import MaxSensitivity, squares

from ._models import HalfSquare, Linear, cnn1, randn, seeded


def _linear(seed: int = 0, d: int = 12, k: int = 3) -> tuple[Linear, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(k, d, generator=g, dtype=torch.float64)
    x = torch.randn(2, d, generator=g, dtype=torch.float64)
    return Linear(w), w, x


@pytest.mark.parametrize("perturbation", ["noisy_baseline", "square"])
def test_infidelity_of_exact_linear_attribution_is_zero(perturbation: str) -> None:
    """f(x) = w^T x, a = w: I^T a = f(x) - f(x - I) for every I, so INFD = 0 with or without normalisation."""
    if perturbation == "square":
        g = torch.Generator().manual_seed(1)
        w = torch.randn(1, 2 * 5 * 5, generator=g, dtype=torch.float64)
        model, x = Linear(w), torch.randn(2, 2, 5, 5, generator=g, dtype=torch.float64)
        a = w.view(1, 2, 5, 5).expand(2, -1, -1, -1)
    else:
        model, w, x = _linear()
        a = w[:1].expand(2, -1)
    for normalize in (False, True):
        r = whybox.evaluate(
            model,
            x,
            a,
            "infidelity",
            target=0,
            score="logit",
            perturbation=perturbation,
            normalize=normalize,
            **({"max_square": 3} if perturbation == "square" else {"n_samples": 30}),
        )
        torch.testing.assert_close(r.scores, torch.zeros(2, dtype=torch.float64), atol=1e-20, rtol=0)


def test_infidelity_of_doubled_attribution_is_the_mean_square_and_zero_after_beta() -> None:
    """a = 2w: INFD = E[(w^T I)^2] > 0 while INFD_beta = 0 (beta = 1/2)."""
    model, w, x = _linear(2)
    a = 2 * w[:1].expand(2, -1)
    raw = whybox.evaluate(model, x, a, "infidelity", target=0, score="logit", n_samples=40, normalize=False)
    drop = raw.curves["drop"]  # = w^T I
    torch.testing.assert_close(raw.scores, (drop**2).mean(1))
    assert bool((raw.scores > 0).all())
    beta = whybox.evaluate(model, x, a, "infidelity", target=0, score="logit", n_samples=40)
    torch.testing.assert_close(beta.scores, torch.zeros(2, dtype=torch.float64), atol=1e-20, rtol=0)
    torch.testing.assert_close(beta.meta["beta"], torch.full((2,), 0.5, dtype=torch.float64))


def test_infidelity_of_zero_attribution_is_nan_when_normalised() -> None:
    model, _, x = _linear(3)
    r = whybox.evaluate(model, x, torch.zeros(2, 12), "infidelity", target=0, n_samples=5)
    assert torch.isnan(r.scores).all() and r.n_nan == 2


def test_square_perturbations_cover_every_square() -> None:
    sq = squares(4, 5, 10)
    assert sq.shape[0] == sum((4 - s + 1) * (5 - s + 1) for s in range(1, 5))
    assert int(sq[:, 0].max()) == 4


def test_infidelity_square_agrees_with_captum() -> None:
    """captum's ``infidelity`` with a perturb_func that yields our squares (I = x on the square), logits, beta."""
    metrics = pytest.importorskip("captum.metrics")
    model, x = cnn1(), randn(2, 1, 8, 8, seed=1)
    a = randn(2, 1, 8, 8, seed=2)
    y = model(x).argmax(1)
    sq = squares(8, 8, 3)
    n = sq.shape[0]

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inside = torch.zeros_like(inputs)
        for i in range(inputs.shape[0]):  # captum repeat_interleaves the rows: copy j of a row gets square j
            s, t, left = sq[i % n].tolist()
            inside[i, :, t : t + s, left : left + s] = 1
        pert = inputs * inside
        return pert, inputs - pert

    ref = metrics.infidelity(model, perturb, x, a, target=y, n_perturb_samples=n, normalize=True)
    r = whybox.evaluate(model, x, a, "infidelity", target=y, score="logit", perturbation="square", max_square=3)
    np.testing.assert_allclose(r.scores.numpy(), ref.detach().double().numpy(), rtol=2e-4, atol=1e-7)


def test_max_sensitivity_of_half_square_gradient_is_bounded_by_r_sqrt_d_over_norm() -> None:
    """Gradient of 0.5 ||x||^2 is x, so relative SENS = max ||delta||_2 / ||x|| <= r sqrt(d) / ||x||."""
    x = randn(3, 20, seed=3, dtype=torch.float64) + 2.0
    e = whybox.explain(HalfSquare(), x, "saliency", target=0, abs=False)
    torch.testing.assert_close(e.attributions, x)
    r = whybox.evaluate(HalfSquare(), x, e, "max_sensitivity", radius=0.1, n_samples=20)
    bound = 0.1 * math.sqrt(20) / x.norm(dim=1)
    assert bool((r.scores <= bound).all()) and bool((r.scores > 0.4 * bound).all())
    abs_r = whybox.evaluate(HalfSquare(), x, e, "max_sensitivity", radius=0.1, n_samples=20, relative=False)
    torch.testing.assert_close(abs_r.scores, r.scores * x.norm(dim=1))


def test_max_sensitivity_of_a_linear_model_gradient_is_zero() -> None:
    model, _, x = _linear(4)
    e = whybox.explain(model, x, "saliency", target=1, abs=False)
    r = whybox.evaluate(model, x, e, "max_sensitivity", n_samples=8)
    torch.testing.assert_close(r.scores, torch.zeros(2, dtype=torch.float64))


def test_max_sensitivity_skips_draws_that_change_the_label() -> None:
    """A radius so large that most draws flip the prediction of a near-tie: those draws are left out (NaN)."""
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    x = torch.tensor([[1.0, 0.999]], dtype=torch.float64)
    e = whybox.explain(Linear(w), x, "saliency", target=0, abs=False)
    r = whybox.evaluate(Linear(w), x, e, "max_sensitivity", radius=0.5, n_samples=30)
    n_skip = int(r.meta["n_skipped"][0])
    assert 0 < n_skip < 30 and int(torch.isnan(r.curves["sensitivity"]).sum()) == n_skip
    keep = whybox.evaluate(Linear(w), x, e, "max_sensitivity", radius=0.5, n_samples=30, skip_label_change=False)
    assert int(keep.meta["n_skipped"][0]) == 0


def test_max_sensitivity_agrees_with_captum_on_the_same_draws() -> None:
    """captum's ``sensitivity_max`` with a perturb_func replaying whybox's draws (rows repeat_interleaved),
    no label-change skipping, relative Frobenius norm."""
    metrics = pytest.importorskip("captum.metrics")
    model, x = cnn1(), randn(2, 1, 8, 8, seed=5)
    y = model(x).argmax(1)
    n = 6
    metric = MaxSensitivity(radius=0.05, n_samples=n, skip_label_change=False, explainer="saliency")

    def explain(inputs: torch.Tensor | tuple[torch.Tensor, ...], target: torch.Tensor) -> tuple[torch.Tensor]:
        if isinstance(inputs, tuple):  # captum passes inputs as 1-tuples and expects tuples back
            (inputs,) = inputs
        return (whybox.explain(model, inputs, "saliency", target=target).attributions,)

    def perturb(inputs: torch.Tensor) -> torch.Tensor:
        i = torch.arange(inputs.shape[0])  # captum repeats each row n times: pair (i // n, i % n)
        return inputs + metric._draws(i // n, i % n, x)  # (draws keyed by the sample x[i // n] itself)

    ref = metrics.sensitivity_max(explain, x, perturb_func=perturb, n_perturb_samples=n, target=y)
    r = metric(model, x, explain(x, y)[0], target=y)
    np.testing.assert_allclose(r.scores.numpy(), ref.detach().double().numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings("ignore::UserWarning:quantus")
def test_max_sensitivity_agrees_with_quantus_on_its_own_draws(quantus) -> None:
    """Quantus' MaxSensitivity adds np.random uniform noise in [-lower_bound, lower_bound] to the whole batch per
    step; replayed as deltas (its defaults: difference, Frobenius norms, nanmax, no label-change check), with the
    same explainer on both sides, the scores agree. Without the label check whybox runs no clean pass: both make
    one explanation per row and draw."""
    model, x = cnn1(seed=4), randn(3, 1, 8, 8, seed=12)
    y = model(x).argmax(1)
    n, r = 5, 0.1

    def explain_func(model: torch.nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: object) -> np.ndarray:
        t = torch.as_tensor(inputs)
        return whybox.explain(model, t, "saliency", target=torch.as_tensor(targets)).attributions.numpy()

    a = explain_func(model, x.numpy(), y.numpy())
    ms = quantus.MaxSensitivity(nr_samples=n, lower_bound=r, disable_warnings=True, display_progressbar=False)
    np.random.seed(7)
    q = np.asarray(ms(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a, explain_func=explain_func,
                      explain_func_kwargs={}, device="cpu", channel_first=True))  # fmt: skip
    np.random.seed(7)  # the same draws: one (B, d) array per step
    steps = [np.random.uniform(-r, r, size=(x.shape[0], x[0].numel())) for _ in range(n)]
    deltas = torch.from_numpy(np.stack(steps, 1)).reshape(x.shape[0], n, *x.shape[1:]).float()
    res = whybox.evaluate(model, x, a, "max_sensitivity", target=y, explainer="saliency", n_samples=n,
                          skip_label_change=False, deltas=deltas)  # fmt: skip
    np.testing.assert_allclose(res.scores.numpy(), q, rtol=1e-5, atol=1e-7)
    assert res.meta["n_forward"] == x.shape[0] * n and res.meta["n_backward"] == x.shape[0] * n


def test_max_sensitivity_deltas_are_checked_and_shared_deltas_broadcast() -> None:
    model, x = cnn1(), randn(2, 1, 8, 8, seed=5)
    e = whybox.explain(model, x, "saliency")
    d = randn(3, 1, 8, 8, seed=6) * 0.05
    shared = whybox.evaluate(model, x, e, "max_sensitivity", n_samples=3, deltas=d)
    per_row = whybox.evaluate(model, x, e, "max_sensitivity", n_samples=3, deltas=d.expand(2, 3, 1, 8, 8).clone())
    torch.testing.assert_close(shared.curves["sensitivity"], per_row.curves["sensitivity"])
    with pytest.raises(whybox.WhyboxError, match=r"deltas must have shape \(2, 4, 1, 8, 8\) or \(4, 1, 8, 8\)"):
        whybox.evaluate(model, x, e, "max_sensitivity", n_samples=4, deltas=d)
    with pytest.raises(whybox.WhyboxError, match=r"deltas must be a float tensor"):
        whybox.evaluate(model, x, e, "max_sensitivity", n_samples=3, deltas=d.numpy())
    bad = d.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(whybox.WhyboxError, match="deltas hold NaN"):
        whybox.evaluate(model, x, e, "max_sensitivity", n_samples=3, deltas=bad)


def test_max_sensitivity_of_a_channel_pooled_map_pools_the_new_maps_alike() -> None:
    """A (B, 1, H, W) explanation of RGB inputs (channels summed) against the explainer's (B, 3, H, W) maps: the
    same scores as re-explaining with a callable that sums the channels itself."""
    model = cnn1(classes=4)
    model[0] = seeded(lambda: torch.nn.Conv2d(3, 4, 3, padding=1), 1)
    x = randn(2, 3, 8, 8, seed=9)
    pooled = whybox.explain(model, x, "saliency").attributions.sum(1, keepdim=True)

    def summed(m: torch.nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return whybox.explain(m, inputs, "saliency", target=target).attributions.sum(1, keepdim=True)

    kw = {"n_samples": 3, "skip_label_change": False}
    by_name = whybox.evaluate(model, x, pooled, "max_sensitivity", explainer="saliency", **kw)
    by_callable = whybox.evaluate(model, x, pooled, "max_sensitivity", explainer=summed, **kw)
    torch.testing.assert_close(by_name.curves["sensitivity"], by_callable.curves["sensitivity"])
