"""Every keyword option of every registered image method and metric, given a value of the wrong type or range, either
works or raises a WhyboxError: never a TypeError, a NumPy/LAPACK failure or an assertion from deep inside.

The values: a string, a negative int, a float where an int is expected, an empty list, an empty dict, NaN and a
bool. Options shared by every method or metric (seed, mode, score, batch_size) have their own tests in
test_errors.py and tests/metrics/test_api.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import whybox
from whybox.api import _options as keyword_options
from whybox.errors import WhyboxError
from whybox.registry import METRICS

VALUES: list[Any] = ["x", -1, 1.5, [], {}, float("nan"), True]
SHARED = {"seed", "mode", "score", "batch_size"}
FAST: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 4},
    "smoothgrad": {"n_samples": 2},
    "rise": {"n_masks": 20},
    "lime": {"n_samples": 20},
    "kernel_shap": {"n_samples": 20},
    "lima": {"regions": "grid", "n_regions": 4},
    "occlusion": {"window": 4, "stride": 4},
    "stability": {"n_runs": 2, "explainer": "saliency"},
    "mufidelity": {"n_samples": 5},
    "infidelity": {"n_samples": 3},
    "max_sensitivity": {"n_samples": 2},
}
MASKS = ("pointing_game", "energy_pointing_game", "relevance_mass", "relevance_rank")


def _options(cls: type) -> list[str]:
    return sorted(set(keyword_options(cls)) - SHARED)


def _model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
        ).eval()


def _misfits(call: Any, names: list[str]) -> list[str]:
    out = []
    for name in names:
        for value in VALUES:
            try:
                call(name, value)
            except WhyboxError:
                pass
            except Exception as exc:  # the property under test: nothing but a WhyboxError escapes
                out.append(f"{name}={value!r}: {type(exc).__name__}: {exc}")
    return out


@pytest.mark.parametrize("method", whybox.methods("image"))
def test_every_method_option_refuses_a_misfit_with_a_whybox_error(method: str) -> None:
    model, x = _model(), torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def call(name: str, value: Any) -> None:
        whybox.explain(model, x, method, **{**FAST.get(method, {}), name: value})

    assert _misfits(call, _options(whybox.get_explainer(method))) == []


@pytest.mark.parametrize("metric", whybox.metrics())
def test_every_metric_option_refuses_a_misfit_with_a_whybox_error(metric: str) -> None:
    g = torch.Generator().manual_seed(1)
    model, x, a = _model(), torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 2:5, 2:5] = True
    extra = {"masks": masks} if metric in MASKS else {}

    def call(name: str, value: Any) -> None:
        whybox.evaluate(model, x, a, metric, **{**FAST.get(metric, {}), **extra, name: value})

    assert _misfits(call, _options(METRICS.get(metric))) == []


def test_a_label_map_written_as_lists_is_the_same_option_as_its_tensor() -> None:
    """A config file or ``--option features=[...]`` can only write a label map as lists of ints, which features=,
    LIMA's regions= and the metrics' regions= refused ("got list"); they now read as the tensor, with the same
    numbers, and ragged rows are an error naming the option."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3)).eval()
    x = torch.randn(2, 6)
    ids = [0, 0, 1, 1, 2, 2]
    for method, key, extra in (
        ("exact_shapley", "features", {}),
        ("lima", "regions", {}),
        ("feature_ablation", "features", {}),
    ):
        as_list = whybox.explain(model, x, method, **{key: ids}, **extra)
        as_tensor = whybox.explain(model, x, method, **{key: torch.tensor(ids)}, **extra)
        assert torch.equal(as_list.attributions, as_tensor.attributions), method
    e = whybox.explain(model, x, "saliency")
    for metric in ("deletion", "comprehensiveness"):
        got = whybox.evaluate(model, x, e, metric, regions=ids).scores
        want = whybox.evaluate(model, x, e, metric, regions=torch.tensor(ids)).scores
        assert torch.allclose(got, want, equal_nan=True), metric
    with pytest.raises(WhyboxError, match=r"features as a list must be a row of ints or equal rows"):
        whybox.explain(model, x, "exact_shapley", features=[[0, 1], [0]])


ON_OFF = {
    "saliency": ["abs"], "gradcam": ["relu", "upsample"], "gradcam_pp": ["alpha_normalize"],
    "scorecam": ["mask_align_corners"], "exact_shapley": ["allow_large"], "kernel_shap": ["paired"],
    "shapley_sampling": ["antithetic"],
}  # fmt: skip
METRIC_ON_OFF = {
    "stability": ["abs"], "road": ["abs"], "infidelity": ["normalize"], "max_sensitivity": ["relative",
    "skip_label_change"], "mufidelity": ["bernoulli", "abs"], "randomization": ["include_norm"],
}  # fmt: skip


def test_an_on_off_option_takes_true_or_false_only() -> None:
    """bool('False') is True: abs='False' (a command line's Python spelling) gave absolute maps without a word.
    Every on/off option refuses anything but a bool, and the command line reads True / False as bools."""
    from whybox.cli.jobs import parse_options
    from whybox.registry import EXPLAINERS

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    adapter = whybox.adapt(model)
    for method, names in ON_OFF.items():
        for name in names:
            with pytest.raises(whybox.InvalidParameterError, match=rf"^{name} must be True or False; got 'False'\.$"):
                EXPLAINERS.get(method)(adapter, **{name: "False"})
    for metric, names in METRIC_ON_OFF.items():
        for name in names:
            with pytest.raises(whybox.InvalidParameterError, match=rf"^{name} must be True or False; got 'no'\.$"):
                METRICS.get(metric)(**{name: "no"})
    assert parse_options(("saliency.abs=False", "lime.n_samples=5", "x.y=None"), flag="--option", scoped=True) == {
        "saliency": {"abs": False}, "lime": {"n_samples": 5}, "x": {"y": None}
    }  # fmt: skip
