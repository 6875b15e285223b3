"""Every metric's bookkeeping: ``meta["n_forward"]`` and ``meta["n_backward"]`` count every pass it made through
the model, and 100 repeated calls do not grow memory (RELIABILITY.md, Resources; the check is tests/conftest.py's
``assert_no_growth``).

Metrics that re-run an explainer (stability, max_sensitivity, random_logit, randomization) used to report only the
passes of their own masking engine; the explainers' passes, and randomization's run that finds the layers, went
uncounted (4.0 passes per sample seen by hooks against 1 reported for MPRT on the digits CNN, bench/results/metrics.md).
The model has a BatchNorm and a Dropout and comes in train mode, so each call also switches modes and restores them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import whybox
from whybox.registry import METRICS

B, K = 2, 3
OPTIONS: dict[str, dict[str, Any]] = {  # few samples: no property here depends on their number
    "stability": {"explainer": "saliency", "n_runs": 3},
    "infidelity": {"n_samples": 4},
    "max_sensitivity": {"n_samples": 3},
    "mufidelity": {"n_samples": 8},
}
NEEDS_MASKS = ("pointing_game", "energy_pointing_game", "relevance_mass", "relevance_rank")
# backward passes of the saliency runs each metric makes: one per row per run (randomization: 2 layers with weights)
BACKWARD = {"stability": 3 * B, "max_sensitivity": 3 * B, "random_logit": B, "randomization": 2 * B}


def model_and_inputs() -> tuple[nn.Module, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                              nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, K)).double()  # fmt: skip
        model[1].running_var.uniform_(0.5, 2.0)
        x = torch.rand(B, 3, 8, 8, dtype=torch.float64)
    return model.train(), x


def call_of(metric: str) -> tuple[nn.Module, Callable[[], whybox.MetricResult]]:
    """The model and a call of ``metric`` on a saliency explanation of the inputs."""
    model, x = model_and_inputs()
    e = whybox.explain(model, x, "saliency")
    opts = dict(OPTIONS.get(metric, {}))
    if metric in NEEDS_MASKS:
        masks = torch.zeros(B, 8, 8, dtype=torch.bool)
        masks[:, :4] = True
        opts["masks"] = masks
    return model, lambda: whybox.evaluate(model, x, e, metric, **opts)


@pytest.mark.parametrize("metric", whybox.metrics())
def test_meta_counts_every_pass_the_model_ran(metric: str) -> None:
    model, call = call_of(metric)
    rows: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, args: rows.append(int(args[0].shape[0])))
    try:
        r = call()
    finally:
        handle.remove()
    assert r.meta["n_forward"] == sum(rows)  # randomization's copy of the model carries the hook along
    assert r.meta["n_backward"] == BACKWARD.get(metric, 0)


def test_a_callable_explainers_forward_passes_are_counted_by_rows() -> None:
    model, x = model_and_inputs()

    def occlude_left(m: nn.Module, inp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            m(inp)  # one forward pass per row, as a real explainer would make
        a = torch.zeros_like(inp)
        a[..., :4] = 1.0
        return a

    r = whybox.evaluate(model, x, None, "stability", explainer=occlude_left, n_runs=3)
    assert r.meta["n_forward"] == B + 3 * B  # the clean rows, then each run's rows
    assert r.meta["n_backward"] == 0


@pytest.mark.parametrize("metric", whybox.metrics())
def test_a_hundred_evaluate_calls_leave_nothing_behind(
    metric: str, assert_no_growth: Callable[[Callable[[], Any]], None]
) -> None:
    assert_no_growth(call_of(metric)[1])


def test_finite_checks_see_through_an_overflowing_sum() -> None:
    """all_finite and finite_rows answer from a sum when it is finite; a sum that overflows (finite values) or
    holds a NaN or inf is checked value by value. (A CPU float tensor is read through NumPy, value by value; one
    that requires grad takes the sum.)"""
    from whybox.metrics.base import all_finite, finite_rows

    big = torch.full((3, 4), 3e38, dtype=torch.float32)  # each row's sum overflows float32
    assert all_finite(big) and finite_rows(big).all()
    assert all_finite(big.clone().requires_grad_())
    bad = big.clone()
    bad[1, 2] = float("nan")
    bad[2, 0] = float("-inf")
    assert not all_finite(bad) and not all_finite(bad.clone().requires_grad_())
    assert finite_rows(bad).tolist() == [True, False, False]
    assert all_finite(torch.arange(5)) and finite_rows(torch.arange(6).view(2, 3)).all()


def test_nan_inputs_are_an_error_where_the_metric_reads_them() -> None:
    """A metric that runs the model refuses NaN inputs; one that reads only the map uses the inputs for their
    shape, so a NaN there changes nothing (same scores as with clean inputs)."""
    from ._models import cnn1

    x = torch.rand(2, 1, 8, 8)
    a = torch.rand(2, 1, 8, 8)
    dirty = x.clone()
    dirty[1, 0, 2, 2] = float("nan")
    model = cnn1()
    assert whybox.evaluate(model, x, a, "deletion", target=0, steps=4).n_nan == 0
    with pytest.raises(whybox.WhyboxError, match="non-finite"):
        whybox.evaluate(model, dirty, a, "deletion", target=0, steps=4)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True
    for name, kw in [("sparseness", {}), ("complexity", {}), ("pointing_game", {"masks": masks})]:
        clean = whybox.evaluate(None, x, a, name, **kw).scores
        assert torch.equal(whybox.evaluate(None, dirty, a, name, **kw).scores, clean)


# the metrics whose scores never read the model's scores of the unperturbed inputs (reads_clean = False)
NO_CLEAN = {"aopc", "deletion", "highest_confidence", "insertion", "randomization", "road", "stability"}


@pytest.mark.parametrize("metric", [m for m in whybox.metrics() if METRICS.get(m).needs_model])
def test_the_clean_pass_runs_only_where_the_scores_or_the_target_need_it(
    metric: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A metric that does not read the clean scores skips their forward pass when the target is known (from
    ``target=`` or the explanation); forcing the pass changes nothing but the count, by one pass per row."""
    cls = METRICS.get(metric)
    assert cls.reads_clean is (metric not in NO_CLEAN)
    _model, call = call_of(metric)
    skipped = call()
    monkeypatch.setattr(cls, "reads_clean", True)
    forced = call()
    assert torch.equal(skipped.scores.isnan(), forced.scores.isnan())
    assert torch.equal(skipped.scores.nan_to_num(), forced.scores.nan_to_num())
    assert forced.meta["n_forward"] - skipped.meta["n_forward"] == (B if metric in NO_CLEAN else 0)


@pytest.mark.parametrize("metric", sorted(NO_CLEAN))
def test_a_target_out_of_range_is_refused_without_the_clean_pass(metric: str) -> None:
    """Without the clean pass the target's range is checked where it first meets the model's scores: the same
    error, naming the value and the range."""
    model, x = model_and_inputs()
    a = whybox.explain(model, x, "saliency").attributions
    opts = (
        {"explainer": "saliency", **OPTIONS.get(metric, {})} if metric == "randomization" else OPTIONS.get(metric, {})
    )
    with pytest.raises(whybox.WhyboxError, match=rf"target={K} is out of range for a model with {K} outputs"):
        whybox.evaluate(model, x, a, metric, target=K, **opts)
    for p in model.parameters():
        assert p.grad is None
