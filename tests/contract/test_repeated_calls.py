"""100 repeated calls do not grow memory (RELIABILITY.md, Resources); the check is tests/conftest.py's
``assert_no_growth``, the metrics' half is in tests/metrics/test_metric_bookkeeping.py.

After a few warm-up calls (lazy imports, first-use caches), a hundred more calls of every registered image method
leave behind no tensor, no tensor byte and no garbage-collected Python object that the warm-up had not: nothing a
call makes is kept by the model (hooks, attributes), by a module-level cache, or by a reference cycle the garbage
collector cannot free. The model is the contract suite's BatchNorm + Dropout CNN in train mode, so each call also
switches modes and restores them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from test_contract import FAST, bn_dropout_cnn, inputs

import whybox

SMALL: dict[str, dict[str, Any]] = {  # fewer samples: the property does not depend on their number
    "lima": {"n_regions": 9},
    "rise": {"n_masks": 32},
    "kernel_shap": {"n_samples": 64},  # 2M and more for M <= 32 (fewer paired draws leave the fit undetermined)
    "lime": {"n_samples": 32},
    "shapley_sampling": {"n_permutations": 1},
}


@pytest.mark.parametrize("method", whybox.methods("image"))
def test_a_hundred_explain_calls_leave_nothing_behind(
    method: str, assert_no_growth: Callable[[Callable[[], Any]], None]
) -> None:
    model, x = bn_dropout_cnn(), inputs(n=2)
    opts = {**FAST.get(method, {}), **SMALL.get(method, {})}
    assert_no_growth(lambda: whybox.explain(model, x, method, **opts))
