"""Deletion, insertion, highest confidence, AOPC and MuFidelity: known answers (METRICS.md "Test" lines),
invariances, memory, model state, and agreement with Quantus where the definitions match."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import whybox
from whybox.masking import MaskingEngine
from whybox.metrics.base import boundaries, tie_order, trapezoid
from whybox.metrics.faithfulness import highest_confidence

from ._memory import PeakBytes
from ._models import Additive, Linear, cnn1, cnn3, randn

W4 = [4.0, 3.0, 2.0, 1.0]


def _logit(**kw):
    return {"score": "logit", "fill": "zero", **kw}


# ------------------------------------------------------------------------------------------ the worked examples
def test_deletion_of_additive_model_matches_the_hand_computed_curve() -> None:
    x, a = torch.ones(1, 4), torch.tensor([W4])
    r = whybox.evaluate(Additive(W4), x, a, "deletion", target=0, steps=4, **_logit())
    assert r.curves["y"].tolist() == [[10.0, 6.0, 3.0, 1.0, 0.0]]
    assert r.curves["x"].tolist() == [[0.0, 0.25, 0.5, 0.75, 1.0]]
    assert r.scores.tolist() == [3.75] and r.higher_is_better is False


def test_insertion_of_additive_model_matches_the_hand_computed_curve() -> None:
    x, a = torch.ones(1, 4), torch.tensor([W4])
    r = whybox.evaluate(Additive(W4), x, a, "insertion", target=0, steps=4, **_logit())
    assert r.curves["y"].tolist() == [[0.0, 4.0, 7.0, 9.0, 10.0]]
    assert r.scores.tolist() == [6.25] and r.higher_is_better is True


def test_aopc_morf_and_lerf_of_additive_model() -> None:
    x, a = torch.ones(1, 4), torch.tensor([W4])
    morf = whybox.evaluate(Additive(W4), x, a, "aopc", target=0, steps=4, **_logit())
    lerf = whybox.evaluate(Additive(W4), x, a, "aopc", target=0, steps=4, order="lerf", **_logit())
    assert morf.scores.item() == pytest.approx((0 + 4 + 7 + 9 + 10) / 5) == 6.0
    assert lerf.scores.item() == pytest.approx((0 + 1 + 3 + 6 + 10) / 5) == 4.0
    assert morf.higher_is_better is True and lerf.higher_is_better is False


def test_boundaries_use_every_feature_once() -> None:
    assert boundaries(5, 2) == [0, 2, 5]
    assert boundaries(4, 4) == [0, 1, 2, 3, 4]
    assert boundaries(3, 10) == [0, 1, 2, 3]  # steps clamped to N


def test_steps_that_do_not_divide_the_feature_count() -> None:
    """N = 7, steps = 3: boundaries [0, 2, 4, 7]; x is the fraction actually removed, not i / steps."""
    w = [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    r = whybox.evaluate(Additive(w), torch.ones(1, 7), torch.tensor([w]), "deletion", target=0, steps=3, **_logit())
    assert r.curves["x"][0].tolist() == pytest.approx([0, 2 / 7, 4 / 7, 1])
    assert r.curves["y"][0].tolist() == [28.0, 15.0, 6.0, 0.0]
    n5 = whybox.evaluate(
        Additive([1.0] * 5), torch.ones(1, 5), torch.arange(5.0)[None], "deletion", target=0, steps=2, **_logit()
    )
    assert n5.curves["x"][0].tolist() == pytest.approx([0, 0.4, 1.0])


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 12),
    steps=st.integers(1, 15),
    seed=st.integers(0, 10_000),
)
def test_deletion_plus_insertion_auc_equals_f_of_x_plus_f_of_fill(n: int, steps: int, seed: int) -> None:
    """For an additive model with one shared fill: y_del(i) + y_ins(i) = f(x) + f(fill) at every point."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g, dtype=torch.float64)
    x = torch.randn(2, n, generator=g, dtype=torch.float64)
    fill = torch.randn(2, n, generator=g, dtype=torch.float64)
    a = torch.randn(2, n, generator=g, dtype=torch.float64).round()  # ties on purpose
    model = Additive(w)
    kw = {"steps": steps, "fill": fill, "score": "logit", "seed": seed}
    d = whybox.evaluate(model, x, a, "deletion", target=0, **kw)
    i = whybox.evaluate(model, x, a, "insertion", target=0, **kw)
    fx, ff = model(x)[:, 0].detach(), model(fill)[:, 0].detach()
    torch.testing.assert_close(d.scores + i.scores, fx + ff, rtol=1e-9, atol=1e-9)
    assert d.curves["y"].shape == (2, min(steps, n) + 1)


def test_oracle_order_minimises_deletion_auc_on_a_model_built_for_it() -> None:
    """Additive model with distinct positive weights, x = 1, fill 0: deleting by w descending removes the most
    score first, so the oracle map has the smallest deletion AUC (and the largest insertion AUC) of all orders."""
    w = torch.linspace(0.1, 2.0, 16, dtype=torch.float64)[
        torch.randperm(16, generator=torch.Generator().manual_seed(3))
    ]
    model, x = Additive(w), torch.ones(1, 16, dtype=torch.float64)
    oracle = whybox.evaluate(model, x, w[None], "deletion", target=0, steps=16, **_logit()).scores.item()
    ins = whybox.evaluate(model, x, w[None], "insertion", target=0, steps=16, **_logit()).scores.item()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        other = torch.randn(1, 16, generator=g, dtype=torch.float64)
        assert oracle <= whybox.evaluate(model, x, other, "deletion", target=0, steps=16, **_logit()).scores.item()
        assert ins >= whybox.evaluate(model, x, other, "insertion", target=0, steps=16, **_logit()).scores.item()
    worst = whybox.evaluate(model, x, -w[None], "deletion", target=0, steps=16, **_logit()).scores.item()
    assert oracle < worst


def test_region_step_protocol_auc_and_highest_confidence() -> None:
    """Two regions of 25 % and 75 % with insertion scores [0, 0.8, 1.0]: AUC = 0.25*0.4 + 0.75*0.9 = 0.775,
    HC(0.25) = HC(0.5) = 0.8, HC(1.0) = 1.0."""
    w = torch.tensor([0.8, 0.2 / 3, 0.2 / 3, 0.2 / 3], dtype=torch.float64)
    x = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    regions = torch.tensor([[[0, 1], [1, 1]]])
    a = torch.tensor([[[[5.0, 1.0], [1.0, 1.0]]]], dtype=torch.float64)  # region 0 first
    kw = {"target": 0, "regions": regions, "score": "logit", "fill": "zero"}
    ins = whybox.evaluate(Additive(w), x, a, "insertion", **kw)
    torch.testing.assert_close(ins.curves["y"], torch.tensor([[0.0, 0.8, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(ins.curves["x"], torch.tensor([[0.0, 0.25, 1.0]], dtype=torch.float64))
    assert ins.scores.item() == pytest.approx(0.775)
    hc = whybox.evaluate(Additive(w), x, a, "highest_confidence", **kw)
    assert hc.meta["budgets"] == [0.25, 0.5, 0.75, 1.0]
    torch.testing.assert_close(hc.meta["hc"], torch.tensor([[0.8, 0.8, 0.8, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(hc.meta["hc_area"], torch.tensor([[0.25, 0.25, 0.25, 1.0]], dtype=torch.float64))
    assert hc.scores.item() == pytest.approx(0.8)
    assert highest_confidence(torch.tensor([[0.0, 0.25, 1.0]]), torch.tensor([[0.0, 0.8, 1.0]]), 0.5)[0].item() == (
        pytest.approx(0.8)
    )


def test_region_steps_rank_regions_by_their_mean_attribution() -> None:
    """A 1-pixel region with value 3 beats a 3-pixel region with values summing to 6 (mean 2)."""
    w = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    x = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    a = torch.tensor([[[[3.0, 2.0], [2.0, 2.0]]]], dtype=torch.float64)
    r = whybox.evaluate(
        Additive(w), x, a, "deletion", target=0, regions=torch.tensor([[0, 1], [1, 1]]), score="logit", fill="zero"
    )
    assert r.curves["x"][0].tolist() == [0.0, 0.25, 1.0]
    assert r.meta["protocol"] == "region_steps"


# ------------------------------------------------------------------------------------------ ranges and ties
@pytest.mark.parametrize("metric", ["deletion", "insertion"])
@pytest.mark.parametrize("fill", ["zero", "mean", "blur"])
def test_aucs_of_probabilities_lie_in_unit_interval(metric: str, fill: str) -> None:
    model, x = cnn3(), randn(3, 3, 10, 10, seed=1)
    for seed in range(3):
        a = randn(3, 1, 10, 10, seed=10 + seed)
        r = whybox.evaluate(model, x, a, metric, target=[0, 1, 2], steps=7, fill=fill)
        assert bool(((r.scores >= 0) & (r.scores <= 1)).all())
        assert r.params["score"] is None  # the probability: this model has 3 outputs


def _slow_tie_order(values: list[float], rho: list[int]) -> list[int]:
    return sorted(range(len(values)), key=lambda i: (-values[i], rho[i]))


def test_tie_rule_is_a_stable_sort_on_minus_value_then_a_seeded_permutation() -> None:
    from whybox.metrics.base import _TIE_KEY, derive_generator

    v = torch.tensor([[1.0, 2.0, 1.0, 2.0, 0.0, 1.0, 2.0, 2.0], [0.0] * 8], dtype=torch.float64)
    order = tie_order(v, seed=5)
    rho = torch.randperm(8, generator=derive_generator(5, _TIE_KEY)).tolist()  # from the seed: one for every row
    for i in range(2):
        assert order[i].tolist() == _slow_tie_order(v[i].tolist(), rho)
    # a row's order does not depend on its place in the batch (RELIABILITY: batched equals one-by-one)
    assert tie_order(v.flip(0), seed=5).flip(0).tolist() == order.tolist()
    assert tie_order(v[1:], seed=5)[0].tolist() == order[1].tolist()
    torch.testing.assert_close(tie_order(v, seed=5), order)  # same seed, same order
    assert any(tie_order(v, seed=s)[1].tolist() != order[1].tolist() for s in range(6, 12))


@pytest.mark.parametrize("descending", [True, False])
def test_tie_rule_holds_on_rows_with_and_without_ties(descending: bool) -> None:
    """Rows without a tie skip the draw (any permutation gives their order); every row still follows the rule:
    tie-free rows, rows with one tie, with -0.0 beside 0.0, with NaNs (last) and with infinities."""
    from whybox.metrics.base import _TIE_KEY, derive_generator

    g = torch.Generator().manual_seed(0)
    v = torch.rand(7, 9, generator=g, dtype=torch.float64)
    v[1, 3] = v[1, 7]
    v[2, 0], v[2, 5] = 0.0, -0.0
    v[3, 2], v[3, 6] = math.nan, math.nan
    v[4, 1], v[4, 4] = math.inf, math.inf
    v[5] = 1.0
    v[6, 0], v[6, 3], v[6, 5], v[6, 8] = math.nan, -math.inf, math.inf, math.nan  # NaN after every infinity
    order = tie_order(v, seed=9, descending=descending)
    sign = 1.0 if descending else -1.0  # the oracle sorts on -row: NaN last either way
    big = torch.finfo(torch.float64).max
    for i in range(7):
        rho = torch.randperm(9, generator=derive_generator(9, _TIE_KEY)).tolist()
        if not descending:  # least relevant first: the reverse of the descending order, ties included
            rho = [8 - r for r in rho]
        row = [-math.inf if math.isnan(e) else min(max(sign * e, -big), big) for e in v[i].tolist()]
        assert order[i].tolist() == _slow_tie_order(row, rho), i


def test_tie_top_and_tie_first_follow_the_tie_order() -> None:
    """The top-k sets and the top feature the localisation metrics read equal the first k features of tie_order, ties straddling
    position k included (values drawn from a few levels, NaN and infinities among them)."""
    from whybox.metrics.base import tie_first, tie_top

    g = torch.Generator().manual_seed(11)
    levels = torch.tensor([0.0, -0.0, 1.0, 2.0, math.inf, -math.inf, math.nan], dtype=torch.float64)
    for trial in range(60):
        b, n = 4, int(torch.randint(1, 30, (1,), generator=g))
        v = torch.rand(b, n, generator=g, dtype=torch.float64)
        pick = torch.rand(b, n, generator=g) < 0.6
        v[pick] = levels[torch.randint(0, len(levels), (int(pick.sum()),), generator=g)]
        k = torch.randint(0, n + 1, (b,), generator=g)
        top = tie_top(v, trial, k)
        order = tie_order(v, trial)
        assert torch.equal(tie_first(v, trial), order[:, 0])
        for i in range(b):
            want = torch.zeros(n, dtype=torch.bool)
            want[order[i, : int(k[i])]] = True
            assert torch.equal(top[i], want), (trial, i)


def test_flat_map_is_ordered_by_the_tie_rule_and_says_so() -> None:
    model, x = cnn3(), randn(2, 3, 6, 6, seed=2)
    flat = torch.zeros(2, 1, 6, 6)
    r1 = whybox.evaluate(model, x, flat, "deletion", target=0, steps=6, seed=1)
    r2 = whybox.evaluate(model, x, flat, "deletion", target=0, steps=6, seed=1)
    torch.testing.assert_close(r1.scores, r2.scores)
    assert r1.meta["flat_map"] == [True, True] and "tie rule" in r1.meta["note"]


# ------------------------------------------------------------------------------------------ MuFidelity
@pytest.mark.parametrize("corr", ["pearson", "spearman"])
def test_mufidelity_is_one_for_exact_attribution_of_a_linear_model(corr: str) -> None:
    """f(x) = w^T x, fill b, a = w * (x - b): every drop equals the subset sum, so muF = 1; -a gives -1."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 30, generator=g, dtype=torch.float64)
    x = torch.randn(3, 30, generator=g, dtype=torch.float64)
    b = torch.full_like(x, 0.5)
    a = w * (x - b)
    kw = {"target": 0, "fill": b, "score": "logit", "n_samples": 50, "corr": corr}
    r = whybox.evaluate(Linear(w), x, a, "mufidelity", **kw)
    torch.testing.assert_close(r.scores, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(r.curves["drop"], r.curves["attribution_sum"])
    neg = whybox.evaluate(Linear(w), x, -a, "mufidelity", **kw)
    torch.testing.assert_close(neg.scores, -torch.ones(3, dtype=torch.float64))


def test_mufidelity_subsets_that_change_nothing_take_the_clean_score_without_a_pass() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(2, 6, generator=g, dtype=torch.float64)
    x = torch.randn(2, 6, generator=g, dtype=torch.float64)
    x[:, :3] = 0.0  # features 0-2 already at the zero fill
    a = torch.randn(2, 6, generator=g, dtype=torch.float64)
    subsets = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1]]).bool()
    kw = {"target": 1, "fill": "zero", "score": "logit", "subsets": subsets}
    r = whybox.evaluate(Linear(w), x, a, "mufidelity", **kw)
    assert r.meta["n_forward"] == 2 + 2 * 2  # the clean rows, then subsets 1 and 3 of each row
    assert torch.equal(r.curves["drop"][:, [0, 2]], torch.zeros(2, 2, dtype=torch.float64))
    # f = W x with a zero fill: the drop of subset S is sum_{i in S} w_1i x_i, and muF their Pearson with sum a_S
    want = (subsets.to(torch.float64).unsqueeze(0) * (w[1] * x).unsqueeze(1)).sum(2)
    torch.testing.assert_close(r.curves["drop"], want, rtol=0, atol=1e-12)
    att = (subsets.to(torch.float64).unsqueeze(0) * a.unsqueeze(1)).sum(2)
    torch.testing.assert_close(
        r.scores, torch.stack([torch.corrcoef(torch.stack([p, q]))[0, 1] for p, q in zip(att, want, strict=True)])
    )


def test_mufidelity_on_images_uses_grid_cells_and_is_one_for_exact_attribution() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(1, 3 * 18 * 18, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, 18, 18, generator=g, dtype=torch.float64)
    a = w.view(1, 3, 18, 18) * x
    r = whybox.evaluate(Linear(w), x, a, "mufidelity", target=0, score="logit", n_samples=40)
    torch.testing.assert_close(r.scores, torch.ones(2, dtype=torch.float64))
    assert r.meta["n_features"] == 81


def test_mufidelity_saturated_model_is_nan() -> None:
    """A constant model: every drop is 0, the correlation is undefined -> NaN, counted in n_nan."""
    w = torch.zeros(1, 10, dtype=torch.float64)
    r = whybox.evaluate(
        Linear(w),
        randn(2, 10, seed=3, dtype=torch.float64),
        randn(2, 10, seed=4),
        "mufidelity",
        target=0,
        score="logit",
        n_samples=20,
    )
    assert torch.isnan(r.scores).all() and r.meta["n_nan"] == 2 and r.n_nan == 2 and math.isnan(r.mean())


# ------------------------------------------------------------------------------------------ invariances and state
def test_batch_size_changes_no_number() -> None:
    model, x = cnn3(), randn(3, 3, 8, 8, seed=5)
    a = randn(3, 3, 8, 8, seed=6)
    ref = whybox.evaluate(model, x, a, "deletion", steps=9, batch_size=64)
    for bs in (1, 7):
        r = whybox.evaluate(model, x, a, "deletion", steps=9, batch_size=bs)
        torch.testing.assert_close(r.curves["y"], ref.curves["y"], rtol=1e-5, atol=1e-6)
    m1 = whybox.evaluate(model, x, a, "mufidelity", n_samples=30, batch_size=64)
    m2 = whybox.evaluate(model, x, a, "mufidelity", n_samples=30, batch_size=5)
    torch.testing.assert_close(m1.scores, m2.scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("metric", ["deletion", "insertion", "aopc"])
def test_points_whose_input_is_unchanged_reuse_the_score_before_them(metric: str, monkeypatch) -> None:
    """A step that moves only pixels already equal to the fill leaves the input as it was: the point is not
    scored again, and the curve equals the one that scores every point."""
    model = cnn3()
    x = randn(2, 3, 4, 4, seed=30)
    zero = [0, 1, 2, 5, 9, 10]  # raster positions black in every channel
    x.view(2, 3, 16)[:, :, zero] = 0.0
    x[1, 0, 3, 3] = 0.0  # one channel of a pixel: the pixel still changes under a zero fill
    a = torch.arange(16.0, 0.0, -1.0).view(1, 1, 4, 4).expand(2, 1, 4, 4).contiguous()  # raster order
    kw = {"target": 0, "fill": "zero", "batch_size": 5}
    runs = {}
    for steps in (16, 8):
        runs[steps] = whybox.evaluate(model, x, a, metric, steps=steps, **kw)
    # one pixel per step: the six black pixels' steps; two per step: only (0, 1) is black on both pixels
    assert [runs[s].meta["n_unchanged_points"] for s in (16, 8)] == [12, 2]
    assert [runs[s].meta["n_forward"] for s in (16, 8)] == [2 * 17 - 12, 2 * 9 - 2]
    monkeypatch.setattr(MaskingEngine, "deterministic", lambda self: False)  # score every point
    for steps, r in runs.items():
        full = whybox.evaluate(model, x, a, metric, steps=steps, **kw)
        assert full.meta["n_unchanged_points"] == 0 and full.meta["n_forward"] == 2 * (steps + 1)
        torch.testing.assert_close(r.curves["y"], full.curves["y"], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(r.scores, full.scores, rtol=1e-6, atol=1e-6)


def test_region_steps_skip_regions_equal_to_the_fill() -> None:
    model = cnn3()
    x = randn(1, 3, 4, 4, seed=31)
    x[:, :, :2, :2] = 0.0  # region 0 of a 2 x 2 grid
    a = torch.tensor([[4.0, 3.0], [2.0, 1.0]]).repeat_interleave(2, 0).repeat_interleave(2, 1).view(1, 1, 4, 4)
    r = whybox.evaluate(model, x, a, "deletion", regions=2, target=0, fill="zero")
    assert r.meta["n_unchanged_points"] == 1 and r.meta["n_forward"] == 4
    assert r.curves["y"][0, 1] == r.curves["y"][0, 0]


def test_engine_scores_recurring_inputs_once_only_for_a_model_in_eval_mode() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Dropout(0.5))
    engine = MaskingEngine(whybox.adapt(model))
    assert not engine.deterministic()  # dropout draws anew at every call
    model.eval()
    assert engine.deterministic()


def test_target_defaults_to_the_explanation_target() -> None:
    model, x = cnn3(), randn(2, 3, 8, 8, seed=7)
    e = whybox.explain(model, x, "saliency", target=[3, 1])
    r = whybox.evaluate(model, x, e, "deletion", steps=5)
    assert r.meta["target"].tolist() == [3, 1]
    other = whybox.evaluate(model, x, e, "deletion", steps=5, target=[0, 0])
    assert other.meta["target"].tolist() == [0, 0] and not torch.equal(other.scores, r.scores)


def _state(model: torch.nn.Module) -> tuple:
    h = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    return h, [m.training for m in model.modules()], [p.requires_grad for p in model.parameters()]


def test_metrics_run_in_eval_mode_and_restore_the_model() -> None:
    model = cnn3()
    model.train()
    seen: list[bool] = []
    model[0].register_forward_pre_hook(lambda m, i: seen.append(m.training))
    before = _state(model)
    rng = torch.get_rng_state()
    x = randn(2, 3, 8, 8, seed=8)
    for metric, kw in (
        ("deletion", {"steps": 4}),
        ("insertion", {"steps": 4}),
        ("aopc", {"steps": 4}),
        ("mufidelity", {"n_samples": 10}),
    ):
        whybox.evaluate(model, x, randn(2, 1, 8, 8, seed=9), metric, target=0, **kw)
    assert seen and not any(seen)
    assert _state(model) == before and torch.equal(torch.get_rng_state(), rng)


def test_nonfinite_attributions_are_flagged_nan() -> None:
    model, x = cnn3(), randn(2, 3, 6, 6, seed=10)
    a = randn(2, 1, 6, 6, seed=11)
    a[1, 0, 0, 0] = math.nan
    r = whybox.evaluate(model, x, a, "deletion", target=0, steps=4)
    assert math.isfinite(r.scores[0].item()) and math.isnan(r.scores[1].item())
    assert r.meta["nonfinite_attributions"] == [1]


def test_memory_is_bounded_by_batch_size_not_by_sample_count() -> None:
    """10x more curve points / subsets at the same batch_size: the peak of live tensor bytes stays flat."""
    model, x = cnn3(), randn(2, 3, 32, 32, seed=12)
    a = randn(2, 1, 32, 32, seed=13)

    def peak(metric: str, **kw: int) -> int:
        with PeakBytes() as p:
            whybox.evaluate(model, x, a, metric, target=0, batch_size=8, **kw)
        return p.peak

    for metric, small, large in (
        ("deletion", {"steps": 10}, {"steps": 100}),
        ("insertion", {"steps": 10}, {"steps": 100}),
        ("mufidelity", {"n_samples": 20}, {"n_samples": 200}),
    ):
        p_small, p_large = peak(metric, **small), peak(metric, **large)
        assert p_large <= 1.3 * p_small, (metric, p_small, p_large)


# ------------------------------------------------------------------------------------------ Quantus
@pytest.mark.filterwarnings("ignore::UserWarning:quantus")
def test_deletion_agrees_with_quantus_pixel_flipping_pointwise(quantus) -> None:
    """Same values where the definitions match: Quantus' PixelFlipping curve is our deletion curve without the
    unperturbed first point; its "black" fill is each row's minimum (our ``fill="min"``); 1-channel inputs and a
    map without ties, because Quantus ranks elements with an unstable argsort. AUCs are not compared: Quantus
    integrates in step units with np.trapz."""
    model, x = cnn1(), randn(4, 1, 8, 8, seed=14)
    a = randn(4, 1, 8, 8, seed=15)
    y = model(x).argmax(1)
    for step in (1, 4, 16):
        pf = quantus.PixelFlipping(
            features_in_step=step,
            perturb_baseline="black",
            abs=False,
            normalise=False,
            disable_warnings=True,
            display_progressbar=False,
        )
        q = np.asarray(
            pf(
                model=model,
                x_batch=x.numpy(),
                y_batch=y.numpy(),
                a_batch=a.numpy(),
                device="cpu",
                softmax=True,
                channel_first=True,
            )
        )
        r = whybox.evaluate(model, x, a, "deletion", target=y, steps=64 // step, fill="min")
        np.testing.assert_allclose(r.curves["y"][:, 1:].numpy(), q, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore::UserWarning:quantus")
def test_mufidelity_agrees_with_quantus_faithfulness_correlation_on_the_same_subsets(quantus) -> None:
    """Quantus draws subsets of single elements from the global np.random (unseeded): replay its draws (each run
    also draws one uniform value for its baseline table, used or not), pass them to whybox as explicit ``subsets``
    with one cell per pixel (grid 8 on 8 x 8), and compare per sample. Quantus' default is logits
    (softmax=False) and the row minimum as fill."""
    model, x = cnn1(), randn(3, 1, 8, 8, seed=16)
    a = randn(3, 1, 8, 8, seed=17)
    y = model(x).argmax(1)
    runs, size = 30, 10
    for i in range(3):
        fc = quantus.FaithfulnessCorrelation(
            nr_runs=runs,
            subset_size=size,
            perturb_baseline="black",
            abs=False,
            normalise=False,
            return_aggregate=False,
            disable_warnings=True,
        )
        np.random.seed(100 + i)
        q = fc(
            model=model,
            x_batch=x[i : i + 1].numpy(),
            y_batch=y[i : i + 1].numpy(),
            a_batch=a[i : i + 1].numpy(),
            device="cpu",
            channel_first=True,
        )
        np.random.seed(100 + i)
        sub = np.zeros((runs, 64), dtype=bool)
        for j in range(runs):
            sub[j, np.random.choice(64, size, replace=False)] = True
            np.random.uniform(size=1)
        r = whybox.evaluate(
            model,
            x[i : i + 1],
            a[i : i + 1],
            "mufidelity",
            target=y[i : i + 1],
            grid_size=8,
            subsets=torch.from_numpy(sub),
            fill="min",
            score="logit",
        )
        np.testing.assert_allclose(r.scores.numpy(), np.asarray(q), rtol=1e-5, atol=1e-6)


def test_trapezoid_is_written_out() -> None:
    xs = torch.tensor([[0.0, 0.25, 1.0]])
    ys = torch.tensor([[0.0, 0.8, 1.0]])
    assert trapezoid(xs, ys).item() == pytest.approx(0.775)


def test_cells_cover_the_image_with_near_equal_cells() -> None:
    from whybox.masking import cells

    g = cells(torch.zeros(1, 3, 18, 18), n=9)
    assert g.n_groups == 81 and bool((g.sizes() == 4).all())
    uneven = cells(torch.zeros(2, 1, 8, 7), n=3)
    assert uneven.n_groups == 9 and sorted(set(uneven.sizes()[0].tolist())) == [4, 6, 9]
    assert cells(torch.zeros(1, 1, 4, 4), n=9).n_groups == 16  # clamped to the image size


def test_blur_fill_is_rise_kernel_with_zero_padding() -> None:
    """Slow oracle: the 11 x 11 kernel = gaussian_filter of a centred delta (sigma 5), applied per channel with
    zero padding, as RISE's ``blur`` substrate."""
    from scipy.ndimage import gaussian_filter

    from whybox.metrics.faithfulness import rise_blur

    x = randn(1, 2, 9, 10, seed=20, dtype=torch.float64)
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    k = gaussian_filter(delta, 5)
    pad = np.pad(x.numpy(), ((0, 0), (0, 0), (5, 5), (5, 5)))
    want = np.zeros(x.shape)
    for c in range(2):
        for i in range(9):
            for j in range(10):
                want[0, c, i, j] = (pad[0, c, i : i + 11, j : j + 11] * k).sum()
    np.testing.assert_allclose(rise_blur(x).numpy(), want, rtol=1e-12, atol=1e-12)


def test_rankdata_equals_scipys_average_ranks() -> None:
    """Average ranks of runs of equal values (ties), -0.0 beside 0.0, infinities, NaN rows (scipy's propagate)
    and 1-D, 2-D and 3-D inputs, against scipy.stats.rankdata along the last axis."""
    from scipy.stats import rankdata as sp_rankdata

    from whybox.metrics.base import rankdata

    rng = np.random.default_rng(3)
    for t in range(300):
        shape = tuple(int(d) for d in rng.integers(1, 12, size=rng.integers(1, 4)))
        v = rng.integers(0, 4, size=shape).astype(float) if t % 2 else rng.random(shape)
        flat = v.reshape(-1)
        if t % 5 == 0:
            flat[rng.integers(0, flat.size)] = -0.0
        if t % 7 == 0:
            flat[rng.integers(0, flat.size)] = np.inf
        if t % 11 == 0:
            flat[rng.integers(0, flat.size)] = np.nan
        ours = rankdata(torch.from_numpy(v)).numpy()
        np.testing.assert_array_equal(ours, sp_rankdata(v, axis=-1))
