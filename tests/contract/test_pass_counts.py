"""Forward-pass counts of the perturbation explainers: ``meta["n_forward"]`` equals each method's documented cost.

The costs stated in the explainers' docstrings (B rows, R fill rows: 1 for a single baseline):

- occlusion: ``B (1 + P)``, P = prod_d (ceil((D_d - w_d) / s_d) + 1) window positions;
- feature_ablation: ``sum_r (1 + M_r)``; a row with no feature (M_r = 0) still costs its clean pass;
- rise: ``B (1 + N)`` for N masks;
- lime: ``B n_samples`` (the original coalition is the clean pass);
- kernel_shap: ``B + R sum_{r: M_r > 0} (n_r + 1)``, n_r = the row's coalitions besides the empty and full sets
  (``meta["n_samples"]``: at most n_samples and at most 2^M_r - 2);
- shapley_sampling: ``B + R sum_{r: M_r > 0} (1 + W (M_r - 1))``, W walks (twice the permutations when antithetic);
- exact_shapley: ``B + R sum_r (2^M_r - 1)``;
- lima: ``sum_r (2 + P(N_r) + [lambda_eff > 0] N_r)`` with N_r the row's regions and P the search's passes:
  naive N(N+1), bidirectional and stochastic their exact formulas, predictive between 2N + sum_{r=2}^{N-1}
  2 min(r, m + q) and N(N+1) - 2 (data-dependent: checked against ``meta["search_passes"]``).

M_r counts row r's groups that are not null players: a group equal to the fill (to every background row) in all
its elements is left out. The tests compute M_r from the inputs they build, not from the explainer. Every count is
checked against the rows the model actually received (a forward hook), for several chunk sizes, and a 10x larger
``batch_size`` must give the same explanation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from test_contract import C, H, K, W, assert_same, inputs, small_cnn
from torch import nn

import whybox

F = 6  # tabular columns
PATCH = 4  # grid patch: a 3 x 3 grid on the 12 x 12 test images


# ---------------------------------------------------------------------------------------------- models and inputs
def mlp(n_in: int, seed: int = 0) -> nn.Module:
    """A seeded Flatten-Linear-ReLU-Linear classifier on rows of ``n_in`` elements (any row shape)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(n_in, 16), nn.ReLU(), nn.Linear(16, K)).eval()


def rows(n: int, *shape: int, seed: int = 0) -> torch.Tensor:
    """Rows in [-0.5, 1.5): no element equals 0 (the zero fill), so every group is a feature unless zeroed."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g) * 2 - 0.5


def grid_ids(h: int = H, w: int = W, patch: int = PATCH) -> torch.Tensor:
    """``(H, W)`` raster-order ids of ``patch x patch`` cells (border cells cut)."""
    ncols = -(-w // patch)
    return (torch.arange(h).view(-1, 1) // patch) * ncols + torch.arange(w).view(1, -1) // patch


def images_with_null_cells(n_null: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Images whose row r has its first ``n_null[r]`` grid cells set to zero in every channel."""
    x = inputs(seed=seed, n=len(n_null))
    ids = grid_ids()
    for r, k in enumerate(n_null):
        x[r, :, ids < k] = 0.0
    return x


def n_features(x: torch.Tensor, ids: torch.Tensor, fills: torch.Tensor) -> list[int]:
    """M_r: the group ids present in row r, less those equal to every fill row in all their elements.

    ``ids`` broadcasts to one row (``(H, W)`` or ``(1, H, W)`` for images, ``(F,)`` for columns) or holds one
    such map per row; ``fills`` is ``(R, *S)``.
    """
    out = []
    for r in range(x.shape[0]):
        row = x[r]
        g = ids[r] if ids.ndim == x.ndim else ids
        g = g.expand(row.shape) if g.ndim == row.ndim else g.expand(row.shape[-g.ndim :]).expand(row.shape)
        differ = (row.unsqueeze(0) != fills).any(0)
        out.append(int(torch.unique(g[differ]).numel()))
    return out


# ---------------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    id: str
    method: str
    model: Callable[[], nn.Module]
    x: Callable[[], torch.Tensor]
    options: dict[str, Any] = field(default_factory=dict)
    # the group ids of each row and the fill rows (R, *S) for M_r; None where the cost does not depend on M_r
    ids: Callable[[torch.Tensor], torch.Tensor] | None = None
    fills: Callable[[torch.Tensor], torch.Tensor] | None = None
    target: Any = None


def positions(d: int, w: int, s: int) -> int:
    """Window positions along one dimension: ceil((D - w) / s) + 1 (the last window is cut at the border)."""
    return math.ceil((d - w) / s) + 1


def occlusion_cost(case: Case, x: torch.Tensor, e: whybox.Explanation) -> int:
    b, shape = x.shape[0], tuple(x.shape[1:])
    window, stride = case.options.get("window"), case.options.get("stride")
    if len(shape) == 3:  # images: the window spans every channel (one position), (h, w) slide
        if window is None:
            window = (-(-shape[1] // 8), -(-shape[2] // 8))
        window = (window, window) if isinstance(window, int) else tuple(window)[-2:]
        if stride is None:
            stride = tuple(d if w == d else max(1, w // 2) for w, d in zip(window, shape[1:], strict=True))
        stride = (stride, stride) if isinstance(stride, int) else tuple(stride)[-2:]
        dims = shape[1:]
    else:  # other rows: one element by default, one extent per dimension
        window = (1,) * len(shape) if window is None else (window,) if isinstance(window, int) else tuple(window)
        if stride is None:
            stride = tuple(d if w == d else max(1, w // 2) for w, d in zip(window, shape, strict=True))
        stride = (stride,) if isinstance(stride, int) else tuple(stride)
        dims = shape
    p = math.prod(positions(d, w, s) for d, w, s in zip(dims, window, stride, strict=True))
    return b * (1 + p)


def _sizes(case: Case, x: torch.Tensor) -> list[int]:
    assert case.ids is not None and case.fills is not None
    return n_features(x, case.ids(x), case.fills(x))


def ablation_cost(case: Case, x: torch.Tensor, e: whybox.Explanation) -> int:
    return sum(1 + m for m in _sizes(case, x))


def rise_cost(case: Case, x: torch.Tensor, e: whybox.Explanation) -> int:
    return x.shape[0] * (1 + case.options["n_masks"])


def lime_cost(case: Case, x: torch.Tensor, e: whybox.Explanation) -> int:
    return x.shape[0] * case.options["n_samples"]


def _r(case: Case, x: torch.Tensor) -> int:
    return case.fills(x).shape[0] if case.fills is not None else 1


def kernel_shap_cost(case: Case, x: torch.Tensor, e: whybox.Explanation) -> int:
    sizes = _sizes(case, x)
    n_rows = e.meta["n_samples"]
    asked = case.options.get("n_samples", "auto")
    for m, n in zip(sizes, n_rows, strict=True):  # n_r: within the budget; every coalition when the budget covers all
        cap = 2**m - 2 if m >= 2 else 0
        budget = min(2 * m + 2048 if asked == "auto" else asked, cap)
        assert n <= budget
        assert n == cap if budget == cap else n >= 1
    return x.shape[0] + _r(case, x) * sum(n + 1 for m, n in zip(sizes, n_rows, strict=True) if m > 0)


def walks(case: Case) -> int:
    return case.options.get("n_permutations", 25) * (2 if case.options.get("antithetic", True) else 1)


def shapley_sampling_cost(case: Case, x: torch.Tensor, e: whybox.Explanation) -> int:
    w = walks(case)
    return x.shape[0] + _r(case, x) * sum(1 + w * (m - 1) for m in _sizes(case, x) if m > 0)


def exact_shapley_cost(case: Case, x: torch.Tensor, e: whybox.Explanation) -> int:
    return x.shape[0] + _r(case, x) * sum(2**m - 1 for m in _sizes(case, x))


def lima_cost(case: Case, x: torch.Tensor, e: whybox.Explanation) -> int:
    from whybox.explainers.lima.search import SearchOptions, bidirectional_passes, stochastic_passes

    assert case.ids is not None
    ids = case.ids(x)
    sizes = [int(torch.unique(ids[r] if ids.ndim == x.ndim else ids).numel()) for r in range(x.shape[0])]
    search = case.options.get("search", "naive")
    opts = SearchOptions(
        **{k: v for k, v in case.options.items() if k in ("n_weakest", "eps", "n_predicted", "n_refresh")}
    )
    per_row = []
    for n, spent in zip(sizes, e.meta["search_passes"], strict=True):
        if search == "naive":
            p = n * (n + 1)
        elif search == "bidirectional":
            p = bidirectional_passes(n, opts)
        elif search == "stochastic":
            p = stochastic_passes(n, opts)
        else:  # predictive
            q = opts.n_predicted + opts.n_refresh
            assert 2 * n + sum(2 * min(r, q) for r in range(2, n)) <= spent <= n * (n + 1) - 2
            p = spent
        assert spent == p
        per_row.append(2 + p + (n if case.options.get("lambda_eff", 0.0) > 0 else 0))
    return sum(per_row)


COST: dict[str, Callable[[Case, torch.Tensor, whybox.Explanation], int]] = {
    "occlusion": occlusion_cost,
    "feature_ablation": ablation_cost,
    "rise": rise_cost,
    "lime": lime_cost,
    "kernel_shap": kernel_shap_cost,
    "shapley_sampling": shapley_sampling_cost,
    "exact_shapley": exact_shapley_cost,
    "lima": lima_cost,
}

TAB_BACKGROUND = rows(2, F, seed=9)


def tabular_with_nulls() -> torch.Tensor:
    """Rows with M = 6, 5 (one zero column) and 0 (all zero)."""
    x = rows(3, F, seed=3)
    x[1, 2] = 0.0
    x[2] = 0.0
    return x


def tabular_with_background_nulls() -> torch.Tensor:
    """Row 1 equals both background rows in column 0 (a null player for R = 2); row 0 equals only one of them."""
    bg = TAB_BACKGROUND.clone()
    bg[1, 0] = bg[0, 0]
    x = rows(2, F, seed=4)
    x[1, 0] = bg[0, 0]
    x[0, 1] = bg[0, 1]  # equal to one background row only: still a feature
    return x


def background_rows() -> torch.Tensor:
    bg = TAB_BACKGROUND.clone()
    bg[1, 0] = bg[0, 0]
    return bg


def ragged_ids(x: torch.Tensor) -> torch.Tensor:
    """Per-row image masks ``(B, 1, H, W)`` with 4, 2 and 1 distinct ids (ids 0, 3 and 5 in row 1)."""
    g = grid_ids(patch=6)  # 2 x 2 cells: ids 0..3
    out = torch.stack([g, torch.where(g < 2, 0, 3), torch.full_like(g, 5)]).unsqueeze(1)
    return out[: x.shape[0]]


def zero_fill(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros(1, *x.shape[1:])


def grid(x: torch.Tensor) -> torch.Tensor:
    return grid_ids()


def cols(x: torch.Tensor) -> torch.Tensor:
    return torch.arange(x.shape[1])


RAGGED = ragged_ids(inputs(n=3))

CASES = [
    # occlusion: default window, square and rectangular windows, windows cut at the border, rows of 1 and 2 dims
    Case("occlusion-default", "occlusion", small_cnn, lambda: inputs(n=3)),
    Case("occlusion-w4s2", "occlusion", small_cnn, lambda: inputs(n=2), {"window": 4, "stride": 2}),
    Case("occlusion-w5s3-cut", "occlusion", small_cnn, lambda: inputs(n=3), {"window": 5, "stride": 3}),
    Case("occlusion-rect", "occlusion", small_cnn, lambda: inputs(n=2), {"window": (5, 3), "stride": (3, 3)}),
    Case("occlusion-tabular", "occlusion", lambda: mlp(7), lambda: rows(3, 7), {"window": 3, "stride": 2}),
    Case("occlusion-tabular-default", "occlusion", lambda: mlp(5), lambda: rows(2, 5)),
    Case(
        "occlusion-2d-rows", "occlusion", lambda: mlp(18), lambda: rows(2, 2, 9), {"window": (1, 4), "stride": (1, 2)}
    ),
    # feature ablation: null cells dropped per row, an all-null row, ragged per-row masks, tabular columns
    Case(
        "ablation-grid-nulls",
        "feature_ablation",
        small_cnn,
        lambda: images_with_null_cells((0, 3, 9)),
        {"features": "grid", "patch": PATCH},
        grid,
        zero_fill,
    ),
    Case(
        "ablation-grid-nulls-target",
        "feature_ablation",
        small_cnn,
        lambda: images_with_null_cells((2, 9)),
        {"features": grid_ids()},
        grid,
        zero_fill,
        target=1,
    ),
    Case(
        "ablation-ragged-mask",
        "feature_ablation",
        small_cnn,
        lambda: inputs(n=3),
        {"features": RAGGED},
        lambda x: RAGGED,
        zero_fill,
    ),
    Case("ablation-tabular", "feature_ablation", lambda: mlp(F), tabular_with_nulls, {}, cols, zero_fill),
    # RISE
    Case("rise-n7", "rise", small_cnn, lambda: inputs(n=3), {"n_masks": 7, "grid_size": 3}),
    Case("rise-n20", "rise", small_cnn, lambda: inputs(n=2), {"n_masks": 20, "grid_size": 4, "p_keep": 0.3}),
    Case("rise-target", "rise", small_cnn, lambda: inputs(n=2), {"n_masks": 9, "grid_size": 2}, target=3),
    # LIME: the cost does not depend on M
    Case("lime-grid", "lime", small_cnn, lambda: inputs(n=3), {"n_samples": 12, "features": "grid", "patch": PATCH}),
    Case("lime-ragged", "lime", small_cnn, lambda: inputs(n=3), {"n_samples": 2, "features": RAGGED}),
    Case("lime-tabular", "lime", lambda: mlp(F), tabular_with_nulls, {"n_samples": 25, "surrogate": "lasso"}),
    # Kernel SHAP: auto budget (all 2^M - 2 coalitions for M = 9, 6, 1), a small budget, unpaired, background
    Case(
        "kernel-auto-nulls",
        "kernel_shap",
        small_cnn,
        lambda: images_with_null_cells((0, 3, 8)),
        {"features": "grid", "patch": PATCH},
        grid,
        zero_fill,
    ),
    Case(
        "kernel-n10",
        "kernel_shap",
        small_cnn,
        lambda: images_with_null_cells((0, 5, 9)),
        {"features": grid_ids(), "n_samples": 18},  # 2M for M = 9: fewer paired draws leave the fit undetermined
        grid,
        zero_fill,
    ),
    Case(
        "kernel-unpaired-tab",
        "kernel_shap",
        lambda: mlp(F),
        tabular_with_nulls,
        {"n_samples": 20, "paired": False},
        cols,
        zero_fill,
    ),
    Case(
        "kernel-background",
        "kernel_shap",
        lambda: mlp(F),
        tabular_with_background_nulls,
        {"background": background_rows(), "n_samples": 9},
        cols,
        lambda x: background_rows(),
    ),
    # Shapley value sampling: antithetic and not, with nulls, ragged masks, background
    Case(
        "sampling-antithetic-nulls",
        "shapley_sampling",
        small_cnn,
        lambda: images_with_null_cells((0, 3, 8)),
        {"features": "grid", "patch": PATCH, "n_permutations": 3},
        grid,
        zero_fill,
    ),
    Case(
        "sampling-plain-ragged",
        "shapley_sampling",
        small_cnn,
        lambda: inputs(n=3),
        {"features": RAGGED, "n_permutations": 2, "antithetic": False},
        lambda x: RAGGED,
        zero_fill,
    ),
    Case(
        "sampling-tab-nulls",
        "shapley_sampling",
        lambda: mlp(F),
        tabular_with_nulls,
        {"n_permutations": 4},
        cols,
        zero_fill,
    ),
    Case(
        "sampling-background",
        "shapley_sampling",
        lambda: mlp(F),
        tabular_with_background_nulls,
        {"background": background_rows(), "n_permutations": 2},
        cols,
        lambda x: background_rows(),
    ),
    # exact Shapley: the 3 x 3 default grid, nulls down to M = 0, tabular, background
    Case("exact-default-grid3", "exact_shapley", small_cnn, lambda: inputs(n=2), {}, grid, zero_fill),
    Case(
        "exact-grid-nulls",
        "exact_shapley",
        small_cnn,
        lambda: images_with_null_cells((1, 4, 9)),
        {"features": "grid", "patch": PATCH},
        grid,
        zero_fill,
    ),
    Case("lima-naive", "lima", small_cnn, lambda: inputs(n=2), {"regions": grid_ids(), "search": "naive"}, grid),
    Case(
        "lima-bidir", "lima", small_cnn, lambda: inputs(n=3), {"regions": grid_ids(), "search": "bidirectional"}, grid
    ),
    Case(
        "lima-stochastic",
        "lima",
        small_cnn,
        lambda: inputs(n=2),
        {"regions": grid_ids(), "search": "stochastic", "eps": 0.3},
        grid,
    ),
    Case(
        "lima-predictive-eff",
        "lima",
        small_cnn,
        lambda: inputs(n=2),
        {"regions": grid_ids(), "search": "predictive", "lambda_eff": 0.1},
        grid,
    ),
    Case(
        "lima-tabular-predictive",
        "lima",
        lambda: mlp(F),
        lambda: rows(3, F),
        {"search": "predictive", "n_predicted": 1, "n_refresh": 0},
        cols,
    ),
    Case("exact-tab-nulls", "exact_shapley", lambda: mlp(F), tabular_with_nulls, {}, cols, zero_fill),
    Case(
        "exact-background",
        "exact_shapley",
        lambda: mlp(F),
        tabular_with_background_nulls,
        {"background": background_rows()},
        cols,
        lambda x: background_rows(),
    ),
]


def explain_counting(case: Case, x: torch.Tensor, batch_size: int) -> tuple[whybox.Explanation, int]:
    """The explanation and the number of input rows the model received (a forward hook on the model)."""
    model = case.model()
    seen = [0]
    model.register_forward_hook(lambda mod, args, out: seen.__setitem__(0, seen[0] + args[0].shape[0]))
    e = whybox.explain(model, x, case.method, target=case.target, batch_size=batch_size, seed=4, **case.options)
    return e, seen[0]


def test_every_perturbation_method_is_covered() -> None:
    """Every explainer of ``whybox.explainers.perturbation`` and ``lima`` has its cost formula and cases here."""
    family = {
        m
        for m in whybox.methods()
        if whybox.get_explainer(m).__module__.startswith(("whybox.explainers.perturbation.", "whybox.explainers.lima."))
    }
    assert family == set(COST), "a perturbation explainer without a documented pass count here"
    assert {c.method for c in CASES} == set(COST)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_n_forward_is_the_documented_cost(case: Case) -> None:
    x = case.x()
    expected = None
    for bs in (1, 4, 40):  # counts are rows, whatever the chunking
        e, seen = explain_counting(case, x, bs)
        cost = COST[case.method](case, x, e)
        assert e.meta["n_forward"] == seen, "meta['n_forward'] differs from the rows the model received"
        assert e.meta["n_forward"] == cost, f"batch_size={bs}: {e.meta['n_forward']} passes, documented {cost}"
        if expected is None:
            expected = cost
        assert cost == expected
        if case.ids is not None and "n_features" in e.meta and case.fills is not None:
            assert e.meta["n_features"] == _sizes(case, x)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_ten_times_the_batch_size_changes_nothing(case: Case) -> None:
    x = case.x()
    small, _ = explain_counting(case, x, 5)
    large, _ = explain_counting(case, x, 50)
    assert small.meta["n_forward"] == large.meta["n_forward"]
    assert torch.equal(small.target, large.target)
    assert_same(small.attributions, large.attributions)
    for key in ("values", "base_value", "se", "intercept", "local_pred"):
        if key in small.meta:
            a, b = small.meta[key], large.meta[key]
            finite = torch.isfinite(a)
            assert torch.equal(finite, torch.isfinite(b))
            assert_same(a[finite], b[finite])
    for key in ("n_features", "n_samples", "n_walks"):
        if key in small.meta:
            assert small.meta[key] == large.meta[key]


def test_case_inputs_have_the_intended_feature_counts() -> None:
    """The null cells really are null (M_r as designed), so the ragged-row paths are exercised."""
    x = images_with_null_cells((0, 3, 9))
    assert n_features(x, grid_ids(), torch.zeros(1, C, H, W)) == [9, 6, 0]
    assert n_features(tabular_with_nulls(), torch.arange(F), torch.zeros(1, F)) == [6, 5, 0]
    assert n_features(tabular_with_background_nulls(), torch.arange(F), background_rows()) == [6, 5]
    assert n_features(inputs(n=3), RAGGED, torch.zeros(1, C, H, W)) == [4, 2, 1]
