"""100 repeated calls do not grow memory (RELIABILITY.md, Resources).

After a few warm-up calls (lazy imports, first-use caches), a hundred more calls of every registered image method
and every metric leave behind no tensor, no tensor byte and no garbage-collected Python object that the warm-up had not: nothing a
call makes is kept by the model (hooks, attributes), by a module-level cache, or by a reference cycle the garbage
collector cannot free. The model is the contract suite's BatchNorm + Dropout CNN in train mode, so each call also
switches modes and restores them.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import pytest
import torch
from test_contract import FAST, bn_dropout_cnn, inputs

import whybox

CALLS = 100
WARM_UP = 5
OBJECT_SLACK = 5  # a leak of one object per call leaves 100


def live() -> tuple[set[int], int, int]:
    """(ids of the objects the collector tracks, live tensors, bytes of their storages) after a full collection.

    Storage objects are left out of the ids: reading a tensor's storage here makes its Python object.
    """
    gc.collect()
    objects = gc.get_objects()
    tensors = [o for o in objects if issubclass(type(o), torch.Tensor)]  # type(): no attribute lookups on o
    ids = {id(o) for o in objects if not issubclass(type(o), torch.UntypedStorage)}
    return ids, len(tensors), sum(t.untyped_storage().nbytes() for t in tensors)


def assert_no_growth(call: Callable[[], Any]) -> None:
    """No more live tensors or tensor bytes, and no growth in the objects the collector tracks (containers,
    instances, closures: what a cache, a kept hook or a reference cycle would hold; a str or a dict of numbers is
    not tracked, so a leak of those alone goes unseen here).

    Object growth is objects made by the calls that are still alive *and* a larger count. Neither alone: the count
    moves when the collector starts tracking an existing dict or tuple (it tracks them lazily), and new objects
    survive where a cache keeps only the latest value (torch.manual_seed without CUDA queues one seeding callback
    for a later CUDA start, replacing the one before: about 20 objects, however many calls).
    """
    for _ in range(WARM_UP):
        call()
    before = live()
    for _ in range(CALLS):
        call()
    after = live()
    assert after[1:] == before[1:], f"live tensors / bytes grew over {CALLS} calls: {before[1:]} -> {after[1:]}"
    survivors = len(after[0] - before[0])
    grown = len(after[0]) - len(before[0])
    assert survivors <= OBJECT_SLACK or grown <= OBJECT_SLACK, (
        f"{survivors} Python objects made by {CALLS} calls are still alive, {grown} more in all"
    )


SMALL: dict[str, dict[str, Any]] = {  # fewer samples: the property does not depend on their number
    "lima": {"n_regions": 9},
    "rise": {"n_masks": 32},
    "kernel_shap": {"n_samples": 32},
    "lime": {"n_samples": 32},
    "shapley_sampling": {"n_permutations": 1},
}


@pytest.mark.parametrize("method", whybox.methods("image"))
def test_a_hundred_explain_calls_leave_nothing_behind(method: str) -> None:
    model, x = bn_dropout_cnn(), inputs(n=2)
    opts = {**FAST.get(method, {}), **SMALL.get(method, {})}
    assert_no_growth(lambda: whybox.explain(model, x, method, **opts))


METRIC_OPTIONS: dict[str, dict[str, Any]] = {
    "stability": {"explainer": "saliency", "n_runs": 2},
    "infidelity": {"n_samples": 4},
    "max_sensitivity": {"n_samples": 2},
    "mufidelity": {"n_samples": 8},
}
NEEDS_MASKS = ("pointing_game", "energy_pointing_game", "relevance_mass", "relevance_rank")


@pytest.mark.parametrize("metric", whybox.metrics())
def test_a_hundred_evaluate_calls_leave_nothing_behind(metric: str) -> None:
    model, x = bn_dropout_cnn(), inputs(n=2)
    e = whybox.explain(model, x, "saliency")
    opts = dict(METRIC_OPTIONS.get(metric, {}))
    if metric in NEEDS_MASKS:
        masks = torch.zeros(2, x.shape[-2], x.shape[-1], dtype=torch.bool)
        masks[:, : x.shape[-2] // 2] = True
        opts["masks"] = masks
    assert_no_growth(lambda: whybox.evaluate(model, x, e, metric, **opts))
