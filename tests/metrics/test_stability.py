"""Stability over repeated runs: the Jaccard / VSI / Kendall formulas on preset runs, deterministic explainers
score 1, seeded explainers are reproducible, and "run LIME 10 times on one instance" is one call."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import kendalltau

import whybox

from ._models import cnn1, cnn3, randn


def test_topk_jaccard_vsi_and_kendall_on_preset_runs() -> None:
    """Top-3 sets {a, b, c} and {a, b, d}: J = 2 / 4 = 0.5 and VSI = 100 * 2 / 3; tau-b as scipy's."""
    runs = [torch.tensor([[3.0, 2.0, 1.0, 0.0, -0.5]]), torch.tensor([[3.0, 2.0, 0.0, 1.0, -0.5]])]
    calls = itertools.count()

    def preset(model: torch.nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return runs[next(calls) % 2]

    model = torch.nn.Sequential(torch.nn.Linear(5, 2))
    r = whybox.evaluate(model, torch.zeros(1, 5), None, "stability", explainer=preset, n_runs=2, k=3, abs=False)
    assert r.scores.item() == pytest.approx(0.5)
    assert r.meta["vsi"].item() == pytest.approx(100 * 2 / 3)
    assert r.meta["kendall"].item() == pytest.approx(kendalltau(runs[0][0], runs[1][0]).statistic)
    torch.testing.assert_close(r.meta["std"], torch.stack(runs).std(0, unbiased=True).double())


def test_deterministic_explainer_is_perfectly_stable() -> None:
    model, x = cnn3(), randn(2, 3, 8, 8, seed=1)
    for measure, value in (("jaccard", 1.0), ("kendall", 1.0), ("vsi", 100.0)):
        r = whybox.evaluate(model, x, "saliency", "stability", n_runs=3, measure=measure)
        torch.testing.assert_close(r.scores, torch.full((2,), value, dtype=torch.float64))
    assert float(r.meta["mean_std"].abs().max()) == 0.0


def test_smoothgrad_runs_differ_by_seed_and_the_metric_is_reproducible() -> None:
    model, x = cnn1(), randn(2, 1, 8, 8, seed=2)
    kw = {"n_runs": 4, "explainer_params": {"n_samples": 3}}
    r1 = whybox.evaluate(model, x, "smoothgrad", "stability", **kw)
    r2 = whybox.evaluate(model, x, "smoothgrad", "stability", **kw)
    torch.testing.assert_close(r1.scores, r2.scores)
    assert r1.meta["seeds"] == [0, 1, 2, 3]
    assert bool((r1.scores < 1).all()) and bool((r1.meta["mean_std"] > 0).all())
    more = whybox.evaluate(model, x, "smoothgrad", "stability", n_runs=4, explainer_params={"n_samples": 40})
    assert bool((more.meta["kendall"] > r1.meta["kendall"]).all())  # more noise samples, more stable maps


def test_stability_of_an_explanation_reruns_its_method_and_params() -> None:
    model, x = cnn1(), randn(1, 1, 8, 8, seed=3)
    e = whybox.explain(model, x, "smoothgrad", n_samples=3, target=2)
    r = whybox.evaluate(model, x, e, "stability", n_runs=3)
    assert r.meta["explainer"] == "smoothgrad" and r.meta["target"].tolist() == [2]
    direct = whybox.evaluate(model, x, "smoothgrad", "stability", n_runs=3, target=2, explainer_params={"n_samples": 3})
    torch.testing.assert_close(r.scores, direct.scores)


def test_lime_ten_times_on_one_instance_is_one_call() -> None:
    if "lime" not in whybox.methods():
        pytest.skip("the lime explainer is not registered yet")
    model, x = cnn3(), randn(1, 3, 16, 16, seed=4)
    params = {"n_samples": 60, "features": "grid", "patch": 4}  # 16 square regions
    r = whybox.evaluate(model, x, "lime", "stability", n_runs=10, k=5, explainer_params=params)
    assert r.meta["features"] == "values" and r.meta["seeds"] == list(range(10))
    assert 0 <= r.scores.item() <= 1 and 0 <= r.meta["vsi"].item() <= 100
    assert r.meta["std"].shape == (1, 1, 16, 16)
    again = whybox.evaluate(model, x, "lime", "stability", n_runs=10, k=5, explainer_params=params)
    torch.testing.assert_close(again.scores, r.scores)


def test_few_features_take_a_top_k_of_half_of_them() -> None:
    """With 6 features the default k=10 would select every feature, so every pair of runs would agree (J = 1,
    VSI = 100) however unstable LIME is: the default is half the features, and a k that selects all is refused."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = randn(1, 6, seed=4)
    kw = {"n_runs": 10, "explainer_params": {"n_samples": 20}}
    r = whybox.evaluate(model, x, "lime", "stability", **kw)
    assert r.meta["k"] == 3
    three = whybox.evaluate(model, x, "lime", "stability", k=3, **kw)
    torch.testing.assert_close(r.scores, three.scores)
    assert float(r.scores) < 0.9 and float(r.meta["vsi"]) < 90
    with pytest.raises(whybox.InvalidParameterError) as err:
        whybox.evaluate(model, x, "lime", "stability", k=6, **kw)
    assert str(err.value) == (
        "k=6 selects all 6 features, so every pair of runs agrees on its top-k by construction (measure='jaccard' "
        "would read 1). Give k below 6 (e.g. k=3), or leave k out (10, or half the features when fewer than 20), or "
        "measure='kendall'."
    )
    tau = whybox.evaluate(model, x, "lime", "stability", k=6, measure="kendall", **kw)
    torch.testing.assert_close(tau.scores, r.meta["kendall"])


def test_an_unknown_explainer_option_names_the_closest() -> None:
    model, x = cnn1(), randn(1, 1, 8, 8, seed=5)
    for metric in ("stability", "max_sensitivity", "random_logit", "randomization"):
        with pytest.raises(
            whybox.InvalidParameterError,
            match=r"^explainer_params: 'smoothgrad' got an unknown "
            r"option 'n_sample'\. Did you mean 'n_samples'\? Its options are: ",
        ):
            whybox.evaluate(model, x, "smoothgrad", metric, explainer_params={"n_sample": 3})


def test_a_row_of_fewer_features_scores_as_it_does_alone() -> None:
    """LIME on a per-row label map of 9 and 36 regions: meta['values'] pads row 0 to 36 with zeros; the padding is
    neither ranked nor counted, so each row's scores are the ones it gets alone (they were J = 1 for row 0)."""
    model, x = cnn3(), randn(2, 3, 12, 12, seed=6)
    coarse = torch.arange(9).view(3, 3).repeat_interleave(4, 0).repeat_interleave(4, 1)
    fine = torch.arange(36).view(6, 6).repeat_interleave(2, 0).repeat_interleave(2, 1)
    labels = torch.stack([coarse, fine]).unsqueeze(1)
    e = whybox.explain(model, x, "lime", n_samples=30, features=labels)
    assert e.meta["values"].shape == (2, 36) and e.meta["n_features"] == [9, 36]
    both = whybox.evaluate(model, x, e, "stability", n_runs=4)
    assert both.meta["k"] == [4, 10]
    for i in range(2):
        alone = whybox.evaluate(model, x[i : i + 1], e[i], "stability", n_runs=4)
        for key in ("jaccard", "kendall", "vsi", "csi"):
            torch.testing.assert_close(both.meta[key][i : i + 1], alone.meta[key], equal_nan=True)
        w = e.meta["n_features"][i]
        torch.testing.assert_close(both.meta["csi_features"][i : i + 1, :w], alone.meta["csi_features"], equal_nan=True)
    assert float(both.meta["jaccard"][0]) < 1
