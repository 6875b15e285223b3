"""The metric facade and the contract every registered metric keeps: ``whybox.evaluate`` / ``whybox.metrics()``,
declared direction, recorded params, seeded reproducibility, the model left exactly as it came."""

from __future__ import annotations

import hashlib
import inspect
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import whybox
from whybox.errors import InvalidInputError
from whybox.metrics.base import Metric, MetricResult
from whybox.registry import METRICS

from ._models import cnn3, randn

MASKS = ("pointing_game", "energy_pointing_game", "relevance_mass", "relevance_rank")
FAST: dict[str, dict[str, Any]] = {
    "deletion": {"steps": 5},
    "insertion": {"steps": 5},
    "highest_confidence": {"steps": 5},
    "aopc": {"steps": 5},
    "mufidelity": {"n_samples": 12},
    "road": {"fractions": (0.2, 0.6)},
    "infidelity": {"n_samples": 8},
    "max_sensitivity": {"n_samples": 3},
    "stability": {"n_runs": 2, "explainer": "smoothgrad", "explainer_params": {"n_samples": 2}},
}


def test_metrics_lists_the_registry_and_every_issue_metric() -> None:
    assert whybox.metrics() == METRICS.names() == sorted(METRICS.names())
    for name in (
        "deletion",
        "insertion",
        "highest_confidence",
        "mufidelity",
        "road",
        "infidelity",
        "max_sensitivity",
        "randomization",
        "random_logit",
        "stability",
        "pointing_game",
        "energy_pointing_game",
        "sparseness",
    ):
        assert name in whybox.metrics()
    assert "evaluate" in whybox.__all__ and "metrics" in whybox.__all__
    import whybox.metrics.road as road_module  # the package is importable although whybox.metrics is callable

    assert road_module.ROAD.name == "road"


def test_unknown_metric_and_unknown_option_list_what_exists() -> None:
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(whybox.UnknownNameError, match="Known metrics: aopc, complexity") as exc:
        whybox.evaluate(None, x, x, "deletoin")
    assert "Did you mean 'deletion'" in str(exc.value)
    with pytest.raises(whybox.InvalidParameterError, match=r"Its options are: .*steps") as err:
        whybox.evaluate(cnn3(), x, x, "deletion", stepz=3)
    assert isinstance(err.value, ValueError)
    with pytest.raises(whybox.InvalidParameterError, match=r"steps must be an int >= 1; got 0"):
        whybox.evaluate(cnn3(), x, x, "deletion", steps=0)
    with pytest.raises(whybox.InvalidParameterError, match="score must be one of"):
        whybox.evaluate(cnn3(), x, x, "deletion", score="softmax")
    with pytest.raises(
        whybox.InvalidParameterError, match=r"score must be one of .*; got 'probs'\. Did you mean 'prob'\?$"
    ):
        whybox.evaluate(cnn3(), x, x, "deletion", score="probs")
    with pytest.raises(whybox.InvalidParameterError, match=r"got 'softmax'\.$"):  # nothing close: no guess
        whybox.evaluate(cnn3(), x, x, "deletion", score="softmax")
    with pytest.raises(whybox.InvalidParameterError, match=r"unknown option 'stepz'\. Did you mean 'steps'\?"):
        whybox.evaluate(cnn3(), x, x, "deletion", stepz=3)


@pytest.mark.parametrize("name", METRICS.names())
def test_every_metric_declares_direction_and_the_shared_options(name: str) -> None:
    cls = METRICS.get(name)
    assert issubclass(cls, Metric) and cls.name == name and isinstance(cls.higher_is_better, bool)
    opts = {
        p for c in cls.__mro__ if "__init__" in c.__dict__ for p in inspect.signature(c.__dict__["__init__"]).parameters
    }
    assert {"seed", "batch_size", "score", "mode"} <= opts
    params = cls(seed=3, batch_size=5).params()
    # score None: "prob", or the raw score of a one-output model
    assert params["seed"] == 3 and params["batch_size"] == 5 and params["score"] is None


def _fingerprint(model: torch.nn.Module) -> tuple:
    h = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    return h, [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


@pytest.mark.parametrize("name", METRICS.names())
def test_metric_contract(name: str) -> None:
    """Per-sample scores (B,), seeded reproducibility, the model run in eval mode and left as it came."""
    model = cnn3()
    model.train()
    seen: list[bool] = []
    model[0].register_forward_pre_hook(lambda m, i: seen.append(m.training))
    before = _fingerprint(model)
    x = randn(2, 3, 8, 8, seed=1)
    e = whybox.explain(model, x, "saliency", target=[1, 2])
    model.train()
    seen.clear()
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 2:5, 2:5] = True
    kw = {"masks": masks} if name in MASKS else {}
    r1 = whybox.evaluate(model, x, e, name, seed=4, **kw, **FAST.get(name, {}))
    r2 = whybox.evaluate(model, x, e, name, seed=4, **kw, **FAST.get(name, {}))
    assert isinstance(r1, MetricResult) and r1.metric == name
    assert r1.scores.shape == (2,) and r1.scores.dtype == torch.float64
    torch.testing.assert_close(r1.scores, r2.scores, equal_nan=True)
    assert r1.params["seed"] == 4 and r1.meta["n_nan"] == int(torch.isnan(r1.scores).sum())
    assert isinstance(r1.higher_is_better, bool)
    for k, v in r1.curves.items():
        assert v.shape[0] == 2, k
    if METRICS.get(name).needs_model:
        assert seen and not any(seen), "the model must run in eval mode"
        assert r1.meta["target"].tolist() == [1, 2]  # the explanation's target by default
    assert _fingerprint(model) == before


@pytest.mark.parametrize("name", METRICS.names())
def test_batched_equals_one_by_one(name: str) -> None:
    """RELIABILITY: a sample's score does not depend on its place in the batch. The maps are plateaus (every value
    tied four times), so the tie rule decides the orders; random draws (subsets, noise, perturbations, the other
    class) are keyed by the sample, not its row index."""
    model = cnn3().eval()
    x = randn(3, 3, 8, 8, seed=1)
    a = (
        torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(2))
        .repeat_interleave(2, 2)
        .repeat_interleave(2, 3)
    )
    e = whybox.Explanation(a, torch.tensor([0, 1, 2]), "saliency", {"abs": True})
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 1:5] = True
    kw = {"masks": masks} if name in MASKS else {}
    opts = {**FAST.get(name, {}), "seed": 3}
    together = whybox.evaluate(model, x, e, name, **kw, **opts).scores
    for i in range(3):
        alone = whybox.evaluate(
            model, x[i : i + 1], e[i : i + 1], name, **{k: v[i : i + 1] for k, v in kw.items()}, **opts
        )
        torch.testing.assert_close(alone.scores, together[i : i + 1], rtol=1e-5, atol=1e-7, equal_nan=True)
    flipped = whybox.evaluate(model, x.flip(0), e[[2, 1, 0]], name, **{k: v.flip(0) for k, v in kw.items()}, **opts)
    torch.testing.assert_close(flipped.scores.flip(0), together, rtol=1e-5, atol=1e-7, equal_nan=True)


@pytest.mark.parametrize("name", ["mufidelity", "deletion", "insertion"])
def test_a_half_precision_model_is_scored_in_float32(name: str) -> None:
    """A bfloat16 model's logits are read in float32 before the softmax: the same scores as a float32 wrapper
    around the same bfloat16 logits (probabilities rounded to 8 bits made mufidelity's drops all equal: NaN)."""
    model = cnn3().to(torch.bfloat16).eval()
    x = randn(2, 3, 8, 8, seed=5)
    a = randn(2, 1, 8, 8, seed=6)
    opts = {**FAST.get(name, {}), "seed": 3, "target": 1}
    half = whybox.evaluate(model, x, a, name, **opts).scores
    wide = whybox.evaluate(lambda v: model(v).float(), x.to(torch.bfloat16), a, name, **opts).scores
    torch.testing.assert_close(half, wide, rtol=0, atol=0)
    assert bool(torch.isfinite(half).all())


def test_bare_attribution_tensor_explains_the_predicted_class() -> None:
    model, x = cnn3(), randn(3, 3, 8, 8, seed=2)
    r = whybox.evaluate(model, x, randn(3, 1, 8, 8, seed=3), "deletion", steps=4)
    assert r.meta["target"].tolist() == model(x).argmax(1).tolist()


def test_method_name_as_explanation_is_explained_first() -> None:
    model, x = cnn3(), randn(2, 3, 8, 8, seed=4)
    by_name = whybox.evaluate(model, x, "saliency", "deletion", steps=4, target=1)
    e = whybox.explain(model, x, "saliency", target=1)
    torch.testing.assert_close(by_name.scores, whybox.evaluate(model, x, e, "deletion", steps=4).scores)
    assert by_name.meta["method"] == "saliency"


def test_a_numpy_attribution_array_scores_as_the_tensor_and_is_left_untouched() -> None:
    """A map from another library (Quantus' ``a_batch`` is a NumPy array) needs no conversion by the caller: the
    same scores as the tensor, for a metric that runs the model and one that reads only the map; any layout
    (reversed strides, a read-only array) and real dtype; the array itself never written."""
    import numpy as np

    model, x = cnn3(), randn(2, 3, 8, 8, seed=5)
    a = randn(2, 1, 8, 8, seed=6)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 1:5] = True
    flipped = np.ascontiguousarray(a.numpy()[:, :, ::-1])[:, :, ::-1]  # the same values, negative strides
    frozen = a.numpy().astype(np.float64)
    frozen.flags.writeable = False
    for model_or_none, metric, kw in [(model, "deletion", {"steps": 4}), (None, "relevance_rank", {"masks": masks})]:
        want = whybox.evaluate(model_or_none, x, a, metric, target=[0, 1], **kw).scores
        for arr in (a.numpy(), flipped, frozen, a.numpy().astype(np.float16).astype(np.float32)):
            before = arr.copy()
            got = whybox.evaluate(model_or_none, x, arr, metric, target=[0, 1], **kw).scores
            if arr.dtype == np.float32 and np.array_equal(arr, a.numpy()):
                torch.testing.assert_close(got, want, rtol=0, atol=0)
            assert np.array_equal(arr, before)
    with pytest.raises(whybox.InvalidInputError, match="must hold real numbers; got dtype object"):
        whybox.evaluate(model, x, np.empty((2, 1, 8, 8), dtype=object), "deletion", target=0)


def test_an_explanation_of_other_inputs_is_refused(tmp_path: Path) -> None:
    """Scoring an explanation against inputs it does not explain (rows shuffled between the two calls, another
    batch) gave numbers with no error: the map of one image was read on another. The explanation now keeps a digest
    of each row it explains, and the metrics refuse other rows, naming them; the same inputs in float64, a slice
    with its rows, a saved and loaded explanation and the bare attributions all still score."""
    model, x = cnn3(), randn(4, 3, 8, 8, seed=7)
    e = whybox.explain(model, x, "saliency", target=1)
    want = whybox.evaluate(model, x, e, "deletion", steps=4).scores
    with pytest.raises(InvalidInputError, match=r"made for other inputs than these: rows \[0, 1\] of 4 differ"):
        whybox.evaluate(model, x[[1, 0, 2, 3]], e, "deletion", steps=4)
    with pytest.raises(InvalidInputError, match=r"rows \[0, 1, 2, 3\] of 4 .* or its attributions"):
        whybox.evaluate(model, randn(4, 3, 8, 8, seed=8), e, "mufidelity", n_samples=4)
    torch.testing.assert_close(whybox.evaluate(model, x.double(), e, "deletion", steps=4).scores, want)
    torch.testing.assert_close(whybox.evaluate(model, x[1:3], e[1:3], "deletion", steps=4).scores, want[1:3])
    e.save(tmp_path / "e.safetensors")
    loaded = whybox.Explanation.load(tmp_path / "e.safetensors")
    torch.testing.assert_close(whybox.evaluate(model, x, loaded, "deletion", steps=4).scores, want)
    with pytest.raises(InvalidInputError, match="made for other inputs"):
        whybox.evaluate(model, x.flip(0), loaded, "deletion", steps=4)
    whybox.evaluate(model, x.flip(0), e.attributions, "deletion", steps=4, target=1)  # a map: the caller's call


def test_input_errors_name_the_problem() -> None:
    model = cnn3()
    with pytest.raises(whybox.InvalidInputError, match="leading batch dimension"):
        whybox.evaluate(model, torch.zeros(3), torch.zeros(3), "deletion")
    with pytest.raises(whybox.InvalidInputError, match="one row per input"):
        whybox.evaluate(model, torch.zeros(2, 3, 4, 4), torch.zeros(3, 1, 4, 4), "deletion")
    with pytest.raises(whybox.InvalidInputError, match="do not match images"):
        whybox.evaluate(model, torch.zeros(2, 3, 4, 4), torch.zeros(2, 2, 4, 4), "deletion")
    with pytest.raises(whybox.InvalidParameterError, match="needs ground-truth masks"):
        whybox.evaluate(None, torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), "pointing_game")
    with pytest.raises(whybox.InvalidParameterError, match="needs a model"):
        whybox.evaluate(None, torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), "deletion")


def test_result_mean_ignores_nan_and_reports_it() -> None:
    r = MetricResult("m", torch.tensor([1.0, math.nan, 3.0], dtype=torch.float64), True)
    assert r.mean() == 2.0 and r.n_nan == 1 and len(r) == 3 and "n_nan=1" in repr(r)


def test_sources_never_call_np_trapz() -> None:
    src = Path(whybox.__file__).parent / "metrics"
    for f in src.glob("*.py"):
        assert "np.trapz(" not in f.read_text(), f


def test_sklearn_probabilities_are_not_softmaxed_again() -> None:
    """A predict_proba model: score="prob" reads its probabilities as they are (the deletion curve's first point
    is predict_proba of the clean row)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(100, 5))
    clf = LogisticRegression().fit(features, (features[:, 0] > 0).astype(int))
    x = torch.tensor(features[:3])
    r = whybox.evaluate(clf, x, x.abs(), "deletion", target=1, steps=5)
    np.testing.assert_allclose(r.curves["y"][:, 0].numpy(), clf.predict_proba(features[:3])[:, 1], rtol=1e-12)


def test_per_class_maps_in_shaps_layout_are_refused_with_the_indexing_that_picks_each_rows_class() -> None:
    import re

    import numpy as np

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3).eval()
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    values = np.random.default_rng(2).normal(size=(3, 4, 3))  # (B, F, K), as shap's multi-output values
    target = model(x).argmax(1).numpy()
    with pytest.raises(
        InvalidInputError, match=re.escape("pass each row's class, e.g. values[np.arange(3), ..., target]")
    ):
        whybox.evaluate(model, x, values, "deletion", target=torch.as_tensor(target))
    picked = values[np.arange(3), ..., target]  # the indexing the message names
    r = whybox.evaluate(model, x, picked, "deletion", target=torch.as_tensor(target))
    rows = [
        whybox.evaluate(model, x[i : i + 1], values[i : i + 1, :, target[i]], "deletion", target=int(target[i]))
        for i in range(3)
    ]
    torch.testing.assert_close(r.scores, torch.cat([q.scores for q in rows]))
