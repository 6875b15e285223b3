"""LIMA searches and the explainer: agreement with a slow reference written from LIMA.md, exactness of lazy
greedy on submodular functions, pass-count formulas, determinism, targets and option errors."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from torch import nn

import whybox
from whybox.errors import InvalidInputError, InvalidParameterError, InvalidTargetError, UnknownNameError
from whybox.explainers.lima.objective import (
    Scored,
    SubsetScorer,
    Weights,
    effectiveness,
    region_adjacency,
    region_angles,
)
from whybox.explainers.lima.search import (
    SEARCHES,
    SearchOptions,
    SearchResult,
    _Predicted,
    bidirectional_passes,
    stochastic_passes,
    stochastic_sample_size,
)

F64 = torch.float64
WEIGHTS = {"lambda_cons": 20.0, "lambda_colla": 5.0, "lambda_conf": 0.01, "lambda_eff": 0.0}


def small_cnn(seed: int = 0, classes: int = 4) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(6, 6, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(24, classes),
        )
    return m.double().eval()


def images(b: int = 2, h: int = 10, w: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g, dtype=F64) * 2 - 0.5


def irregular_labels(h: int = 10, w: int = 10) -> torch.Tensor:
    """Nine irregular regions (not a grid): bands of a diagonal ramp folded by parity."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((xx + 2 * yy) % 9).to(torch.int64)


# ---------------------------------------------------------------------------------------------- the slow oracle
def reference_naive(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    labels: torch.Tensor,
    c: int,
    weights: dict[str, float],
    fill: float = 0.0,
    embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[list[int], list[float], list[float]]:
    """Naive greedy straight from LIMA.md for one image ``(C, H, W)`` and labels ``(H, W)``, one plain model call
    per image: returns (order, kept curve, removed curve)."""
    n = int(labels.max()) + 1
    filled = torch.full_like(x, fill)

    def probs(img: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(img.unsqueeze(0))[0].softmax(-1)

    def shown(s: list[int]) -> torch.Tensor:
        keep = torch.zeros(labels.shape, dtype=torch.bool)
        for i in s:
            keep |= labels == i
        return keep

    emb = []
    if weights["lambda_eff"] > 0:
        for i in range(n):
            with torch.no_grad():
                emb.append((embed or model)(torch.where(shown([i]), x, filled).unsqueeze(0))[0])

    def angle(i: int, j: int) -> float:
        cos = float(torch.dot(emb[i], emb[j]) / (emb[i].norm() * emb[j].norm()))
        return math.acos(max(-1.0, min(1.0, cos))) / math.pi

    def value(s: list[int]) -> tuple[float, float, float]:
        keep = shown(s)
        pm = probs(torch.where(keep, x, filled))
        pc = probs(torch.where(keep, filled, x))
        k = pm.shape[0]
        entropy = -sum(float(p) * math.log(float(p)) for p in pm if float(p) > 0)
        eff = 0.0
        if weights["lambda_eff"] > 0 and len(s) > 1:
            eff = sum(min(angle(i, j) for j in s if j != i) for i in s)
        f = (
            weights["lambda_cons"] * float(pm[c])
            + weights["lambda_colla"] * (1 - float(pc[c]))
            + weights["lambda_conf"] * (1 - entropy / math.log(k))
            + weights["lambda_eff"] * eff
        )
        return f, float(pm[c]), float(pc[c])

    order: list[int] = []
    kept: list[float] = []
    removed: list[float] = []
    while len(order) < n:
        best = None
        for a in range(n):  # increasing ids; strict > keeps the lowest id on ties
            if a in order:
                continue
            f, pk, pr = value([*order, a])
            if best is None or f > best[0]:
                best = (f, a, pk, pr)
        assert best is not None
        order.append(best[1])
        kept.append(best[2])
        removed.append(best[3])
    return order, kept, removed


def prefix_readings(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, c: int, order: list[int]) -> torch.Tensor:
    """(2, N): p_c(merge(S_i)) and p_c(comp(S_i)) of every prefix S_i of ``order``, by plain model calls."""
    out = []
    keep = torch.zeros(labels.shape, dtype=torch.bool)
    for a in order:
        keep |= labels == a
        with torch.no_grad():
            pm = model(torch.where(keep, x, 0.0).unsqueeze(0))[0].softmax(-1)[c]
            pc = model(torch.where(keep, 0.0, x).unsqueeze(0))[0].softmax(-1)[c]
        out.append(torch.stack([pm, pc]))
    return torch.stack(out, 1)


# ---------------------------------------------------------------------------------------------- naive = oracle
@pytest.mark.parametrize(
    "weights",
    [
        WEIGHTS,
        {"lambda_cons": 1.0, "lambda_colla": 1.0, "lambda_conf": 1.0, "lambda_eff": 0.5},
        {"lambda_cons": 0.0, "lambda_colla": 1.0, "lambda_conf": 0.0, "lambda_eff": 0.0},
    ],
)
def test_naive_equals_the_slow_reference_step_by_step(weights: dict[str, float]) -> None:
    model = small_cnn()
    x = images(b=2)
    labels = irregular_labels()
    e = whybox.explain(model, x, "lima", search="naive", regions=labels, batch_size=7, **weights)
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert torch.equal(e.target, pred)  # target=None is the prediction
    n = 9
    eff = weights["lambda_eff"] > 0
    assert e.meta["n_forward"] == 2 * (2 + n * (n + 1) + (n if eff else 0))
    assert e.meta["search_passes"] == [n * (n + 1)] * 2
    for r in range(2):
        order, kept, removed = reference_naive(model, x[r], labels, int(pred[r]), weights)
        assert e.meta["order"][r].tolist() == order
        torch.testing.assert_close(e.meta["curve_kept"][r], torch.tensor(kept, dtype=F64), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(e.meta["curve_removed"][r], torch.tensor(removed, dtype=F64), rtol=1e-9, atol=1e-12)
        # rank map: the region at rank i gets N - i, painted on its pixels
        ranks = torch.empty(n, dtype=F64)
        ranks[torch.tensor(order)] = torch.arange(n, 0, -1, dtype=F64)
        torch.testing.assert_close(e.attributions[r, 0], ranks[labels].to(e.attributions.dtype))


def test_naive_follows_an_explicit_target_per_row() -> None:
    model = small_cnn(seed=2)
    x = images(b=2, seed=4)
    labels = irregular_labels()
    tgt = torch.tensor([3, 1])
    e = whybox.explain(model, x, "lima", search="naive", regions=labels, target=tgt)
    assert torch.equal(e.target, tgt)
    for r in range(2):
        order, _, _ = reference_naive(model, x[r], labels, int(tgt[r]), WEIGHTS)
        assert e.meta["order"][r].tolist() == order
    with pytest.raises(InvalidTargetError, match="out of range for a model with 4 outputs"):
        whybox.explain(model, x, "lima", regions=labels, target=7)


def test_embedding_adapter_scores_and_effectiveness_follow_the_spec() -> None:
    torch.manual_seed(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        body = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        refs = torch.randn(3, 5, dtype=F64)
    body = body.double().eval()
    adapter = whybox.adapt(body, kind="embedding", references=refs, scale=100.0)
    x = images(b=1, seed=5)
    labels = irregular_labels()
    weights = {"lambda_cons": 20.0, "lambda_colla": 5.0, "lambda_conf": 0.01, "lambda_eff": 0.05}
    e = whybox.explain(adapter, x, "lima", search="naive", regions=labels, **weights)
    order, kept, _ = reference_naive(adapter.scores, x[0], labels, int(e.target[0]), weights, embed=adapter.embed)
    assert e.meta["order"][0].tolist() == order
    torch.testing.assert_close(e.meta["curve_kept"][0], torch.tensor(kept, dtype=F64), rtol=1e-9, atol=1e-12)
    assert e.meta["n_forward"] == 2 + 9 * 10 + 9  # the N embedding passes, once


# ---------------------------------------------------------------------------------------------- every search
@pytest.mark.parametrize("search", sorted(SEARCHES))
def test_every_search_logs_the_true_readings_of_its_prefixes(search: str) -> None:
    model = small_cnn(seed=1)
    x = images(b=2, seed=2)
    labels = irregular_labels()
    e = whybox.explain(model, x, "lima", search=search, regions=labels, batch_size=5)
    for r in range(2):
        order = e.meta["order"][r].tolist()
        assert sorted(order) == list(range(9))  # a permutation of the regions
        ref = prefix_readings(model, x[r], labels, int(e.target[r]), order)
        torch.testing.assert_close(e.meta["curve_kept"][r], ref[0], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(e.meta["curve_removed"][r], ref[1], rtol=1e-9, atol=1e-12)
        obj = e.meta["curve_objective"][r]
        gains = e.meta["gains"][r]
        torch.testing.assert_close(gains[1:], obj[1:] - obj[:-1])
    assert e.meta["n_forward"] == 4 + sum(e.meta["search_passes"])


def test_pass_counts_follow_the_formulas() -> None:
    model = small_cnn()
    x = images(b=1, h=14, w=14)
    lab = torch.arange(49).view(7, 7).repeat_interleave(2, 0).repeat_interleave(2, 1)  # 49 regions
    opts = SearchOptions()
    counts = {}
    for search in SEARCHES:
        e = whybox.explain(model, x, "lima", search=search, regions=lab, batch_size=64)
        counts[search] = e.meta["search_passes"][0]
    assert counts["naive"] == 49 * 50 == 2450
    assert counts["bidirectional"] == bidirectional_passes(49, opts) == 1608  # 1.5x fewer than naive
    assert counts["stochastic"] == stochastic_passes(49, opts)
    assert stochastic_sample_size(49, opts) == 3  # ceil(ln 10) with k = N
    assert stochastic_sample_size(49, SearchOptions(k=7)) == math.ceil(7 * math.log(10))
    assert counts["lazy"] < counts["naive"]
    # predictive: 2N for the first step, then at least 2 (m + q) per step while more than m + q remain
    m_q = opts.n_predicted + opts.n_refresh
    floor = 2 * 49 + sum(2 * min(r, m_q) for r in range(2, 49))
    assert floor <= counts["predictive"] < counts["naive"] // 3


# ---------------------------------------------------------------------------------------------- set functions
class SetFunctionScorer(SubsetScorer):
    """F(S) given by a Python set function (no model); counts 2 passes per scored subset like the real one.

    Its readings are F itself on the kept side (weights: consistency 1, the rest 0; raw values, not
    probabilities), so that ``predictive`` predicts F(S + a) as F(S) plus the last measured gain of a."""

    weights = Weights(cons=1.0, colla=0.0, conf=0.0, eff=0.0)
    probabilities = False

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], n: int) -> None:
        self.fn = fn
        self.n_regions = [n]
        self.empty = [self._scored(torch.zeros(1, n, dtype=torch.bool))]
        self.full = [self._scored(torch.ones(1, n, dtype=torch.bool))]
        self.passes = 0

    def _scored(self, s: torch.Tensor) -> Scored:
        v = self.fn(s).to(F64)
        z = torch.zeros_like(v)
        return Scored(v, z, z, z, v)

    def score(self, subsets: Sequence[torch.Tensor | None]) -> list[Scored | None]:
        out: list[Scored | None] = []
        for s in subsets:
            if s is None:
                out.append(None)
            else:
                self.passes += 2 * s.shape[0]
                out.append(self._scored(s))
        return out

    def read(self, subsets: Sequence[torch.Tensor | None]) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        """F of each row (1 pass each): the kept side reads F(S + a); the removed side reads F(~(S + a)), which
        F ignores (collaboration weight 0)."""
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for s in subsets:
            if s is None:
                out.append(None)
            else:
                self.passes += s.shape[0]
                v = self.fn(s).to(F64)
                out.append((v, torch.zeros_like(v)))
        return out


def coverage(n: int, n_concepts: int, seed: int, integer: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """A weighted coverage function: region i covers a random set of concepts; F(S) = weight of the union."""
    g = torch.Generator().manual_seed(seed)
    covers = torch.rand(n, n_concepts, generator=g) < 0.15
    w = torch.randint(1, 4, (n_concepts,), generator=g).to(F64) if integer else torch.rand(n_concepts, generator=g)

    def f(s: torch.Tensor) -> torch.Tensor:
        union = (s.to(F64) @ covers.to(F64)) > 0  # (K, concepts)
        return union.to(F64) @ w.to(F64)

    return f


def run(search: str, fn: Callable[[torch.Tensor], torch.Tensor], n: int, **opts: Any) -> tuple[SearchResult, int]:
    scorer = SetFunctionScorer(fn, n)
    (res,) = SEARCHES[search].run(scorer, SearchOptions(**opts))
    assert res.n_forward == scorer.passes
    return res, scorer.passes


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("integer", [False, True])  # integer weights: many exact ties, broken by the lowest id
def test_lazy_is_exactly_naive_on_a_coverage_function_with_fewer_passes(seed: int, integer: bool) -> None:
    n = 30
    fn = coverage(n, 60, seed, integer)
    ref, ref_passes = run("naive", fn, n)
    assert ref_passes == n * (n + 1)
    for batch in (1, 4):
        res, passes = run("lazy", fn, n, lazy_batch=batch)
        assert res.order.tolist() == ref.order.tolist()
        torch.testing.assert_close(res.objective, ref.objective)
        assert passes < ref_passes
    assert run("lazy", fn, n)[1] < run("lazy", fn, n, lazy_batch=4)[1]  # batching costs passes, never order


def test_on_a_modular_function_every_search_sorts_by_weight() -> None:
    g = torch.Generator().manual_seed(0)
    n = 25
    w = torch.randperm(n, generator=g).to(F64)  # distinct weights

    def fn(s: torch.Tensor) -> torch.Tensor:
        return s.to(F64) @ w

    expected = torch.argsort(w, descending=True).tolist()
    for search in SEARCHES:
        opts = {"eps": 1e-12} if search == "stochastic" else {}  # a sample as large as N: the naive choice
        res, _ = run(search, fn, n, **opts)
        assert res.order.tolist() == expected, search
        torch.testing.assert_close(res.gains, w[res.order])


def test_stochastic_with_a_full_sample_is_naive_and_is_seeded() -> None:
    n = 20
    fn = coverage(n, 40, seed=3)
    ref, _ = run("naive", fn, n)
    res, passes = run("stochastic", fn, n, eps=1e-12)
    assert res.order.tolist() == ref.order.tolist()
    assert passes == n * (n + 1) - 2  # the last region is the whole input, known without a pass
    a, pa = run("stochastic", fn, n, seed=5)
    b, _ = run("stochastic", fn, n, seed=5)
    assert torch.equal(a.order, b.order)
    assert pa == stochastic_passes(n, SearchOptions())
    others = {tuple(run("stochastic", fn, n, seed=s)[0].order.tolist()) for s in range(6)}
    assert len(others) > 1  # the seed drives the samples


def test_bidirectional_pass_count_is_exact_for_every_n() -> None:
    for n in (1, 2, 3, 5, 9, 17, 30):
        for p in (1, 3, 8):
            res, passes = run("bidirectional", coverage(n, 20, seed=n), n, n_weakest=p)
            assert passes == bidirectional_passes(n, SearchOptions(n_weakest=p))
            assert sorted(res.order.tolist()) == list(range(n))


# ---------------------------------------------------------------------------------------------- through a model
class ConceptCoverage(nn.Module):
    """Logits (a * cov(x) + b, 0) with cov = weight of the concepts with any visible pixel: p_0 = sigmoid(...) is a
    concave increasing function of a coverage function on the regions, hence submodular (b >= 0)."""

    def __init__(self, h: int, w: int, n_concepts: int = 12, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("masks", (torch.rand(n_concepts, h * w, generator=g) < 0.03).to(F64))
        self.register_buffer("w", torch.rand(n_concepts, generator=g, dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = (x.flatten(1).unsqueeze(1) * self.masks).amax(-1)  # (B, concepts): 1 if any pixel visible
        cov = seen @ self.w
        return torch.stack([0.8 * cov + 0.1, torch.zeros_like(cov)], 1)


def test_lazy_equals_naive_through_the_engine_on_a_submodular_model() -> None:
    h = w = 16
    model = ConceptCoverage(h, w).eval()
    x = torch.ones(2, 1, h, w, dtype=F64)
    cons_only = {"lambda_cons": 1.0, "lambda_colla": 0.0, "lambda_conf": 0.0}
    lab = torch.arange(64).view(8, 8).repeat_interleave(2, 0).repeat_interleave(2, 1)
    ref = whybox.explain(model, x, "lima", search="naive", regions=lab, **cons_only)
    lz = whybox.explain(model, x, "lima", search="lazy", regions=lab, **cons_only)
    assert torch.equal(lz.meta["order"], ref.meta["order"])
    torch.testing.assert_close(lz.meta["curve_kept"], ref.meta["curve_kept"])
    assert lz.meta["n_forward"] < ref.meta["n_forward"] // 4


# ---------------------------------------------------------------------------------------------- explainer
def test_tabular_columns_order_by_contribution() -> None:
    # logits (a . x, 0): without the confidence term F grows with the sum of the kept contributions a_i x_i
    # (fill 0), so naive greedy sorts the columns by them
    a = torch.randn(6, generator=torch.Generator().manual_seed(0), dtype=F64)

    class TwoClass(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = x @ a
            return torch.stack([z, torch.zeros_like(z)], 1)

    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    e = whybox.explain(TwoClass(), x, "lima", target=0, lambda_conf=0.0)
    assert e.attributions.shape == (3, 6)
    contrib = x * a
    for r in range(3):
        assert e.meta["order"][r].tolist() == torch.argsort(contrib[r], descending=True).tolist()


def test_token_spans_share_one_value() -> None:
    torch.manual_seed(0)
    model = nn.Linear(7, 3).double().eval()
    x = torch.randn(2, 7, dtype=F64)
    e = whybox.explain(model, x, "lima", regions="spans", groups=[(0, 2), (2, 3), (3, 7)])
    assert e.attributions.shape == (2, 7)
    a = e.attributions
    assert torch.equal(a[:, 0], a[:, 1]) and bool((a[:, 3:] == a[:, 3:4]).all())
    assert sorted(a[0, [0, 2, 3]].tolist()) == [1.0, 2.0, 3.0]


def test_gain_map_is_monotone_along_the_order_and_scaled() -> None:
    model = small_cnn()
    x = images(b=2)
    e = whybox.explain(model, x, "lima", regions=irregular_labels(), map="gain")
    for r in range(2):
        v = e.meta["values"][r][e.meta["order"][r]]
        assert bool((v[1:] <= v[:-1]).all())
        assert float(v.max()) == 1.0 and float(v.min()) == 0.0


def test_prior_regions_run_the_prior_explainer_and_count_its_passes() -> None:
    model = small_cnn()
    x = images(b=2, h=14, w=14)
    e = whybox.explain(model, x, "lima", regions="prior", prior_grid=7, n_regions=12, search="lazy")
    assert e.meta["n_regions"] == [math.ceil(49 / math.ceil(49 / 12))] * 2
    assert e.meta["n_backward"] == 2 + 1  # Grad-CAM: one backward per row, and one row to choose its layer
    assert e.meta["n_forward"] >= 2 + 4 + sum(e.meta["search_passes"])  # Grad-CAM's forwards (>= 1 per row) count
    fixed = torch.rand(2, 14, 14, generator=torch.Generator().manual_seed(0))
    e2 = whybox.explain(model, x, "lima", regions="prior", prior=fixed, prior_grid=7, prior_cells=4)
    assert e2.meta["n_backward"] == 0 and e2.meta["n_regions"] == [13, 13]
    assert e2.meta["n_forward"] == 4 + sum(e2.meta["search_passes"])  # a given prior map costs nothing


def test_prior_regions_on_an_image_smaller_than_the_prior_grid_aim_at_n_regions() -> None:
    """The G x G prior grid cannot be finer than the pixels: on 8 x 8 inputs it has 64 cells, so n_regions=9 takes
    ceil(64 / 9) = 8 cells a region and gives 8 regions (it used to divide G^2 = 196 cells and give 3)."""
    model = small_cnn()
    x = images(b=2, h=8, w=8)
    e = whybox.explain(model, x, "lima", regions="prior", n_regions=9, search="lazy")
    assert e.meta["n_regions"] == [math.ceil(64 / math.ceil(64 / 9))] * 2 == [8, 8]


def test_seeded_and_deterministic() -> None:
    model = small_cnn()
    x = images(b=2)
    a = whybox.explain(model, x, "lima", search="stochastic", regions=irregular_labels(), seed=4)
    b = whybox.explain(model, x, "lima", search="stochastic", regions=irregular_labels(), seed=4)
    assert torch.equal(a.attributions, b.attributions) and a.meta["seed"] == 4
    c = whybox.explain(model, x, "lima", regions="seeds", n_regions=9)
    d = whybox.explain(model, x, "lima", regions="seeds", n_regions=9)
    assert torch.equal(c.attributions, d.attributions)


def test_effectiveness_term_matches_its_definition() -> None:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(6, 4, generator=g, dtype=F64)
    ang = region_angles(emb)
    subsets = torch.rand(20, 6, generator=g) < 0.5
    subsets[0] = False
    subsets[1] = torch.tensor([True, False, False, False, False, False])
    got = effectiveness(subsets, ang)
    for k in range(20):
        s = subsets[k].nonzero().flatten().tolist()
        want = 0.0
        if len(s) > 1:
            for i in s:
                cos = [float(torch.cosine_similarity(emb[i], emb[j], 0)) for j in s if j != i]
                want += min(math.acos(max(-1.0, min(1.0, c))) / math.pi for c in cos)
        assert math.isclose(float(got[k]), want, rel_tol=1e-9, abs_tol=1e-12)


# ---------------------------------------------------------------------------------------------- errors
def _counting(model: nn.Module) -> tuple[nn.Module, list[int]]:
    calls: list[int] = []
    model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    return model, calls


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        (
            {"search": "greedy"},
            InvalidParameterError,
            r"search must be one of \('naive', 'bidirectional', 'lazy', 'stochastic', 'predictive'\); got 'greedy'",
        ),
        ({"regions": "slic"}, InvalidParameterError, r"regions must be one of \('auto', 'superpixels'.*got 'slic'"),
        ({"map": "heat"}, InvalidParameterError, r"map must be one of \('rank', 'gain'\); got 'heat'"),
        ({"lambda_colla": -1}, InvalidParameterError, "lambda_colla must be a finite number >= 0; got -1"),
        ({"lambda_cons": 0, "lambda_colla": 0, "lambda_conf": 0}, InvalidParameterError, "all 0"),
        ({"eps": 1.0}, InvalidParameterError, r"eps must be a number in \(0, 1\); got 1.0"),
        ({"n_weakest": 0}, InvalidParameterError, "n_weakest must be an int >= 1; got 0"),
        ({"lazy_batch": 0}, InvalidParameterError, "lazy_batch must be an int >= 1; got 0"),
        ({"score": "log_prob"}, InvalidParameterError, r"score must be one of \('prob', 'logit', 'sigmoid'\)"),
        ({"regions": "spans"}, InvalidParameterError, "regions='spans' needs groups="),
        ({"prior": "gradcamm"}, UnknownNameError, "^prior='gradcamm' is not a known explainer. Did you mean 'gradcam'"),
        ({"prior": "lima"}, InvalidParameterError, "would recurse"),
        ({"regions": "columns"}, InvalidInputError, r"regions='columns' needs tabular rows \(B, F\)"),
    ],
)
def test_bad_options_are_refused_before_any_model_call(options: dict[str, object], error: type, match: str) -> None:
    model, calls = _counting(small_cnn())
    with pytest.raises(error, match=match):
        whybox.explain(model, images(b=1), "lima", **options)
    assert calls == []


def test_over_budget_requests_are_refused_with_the_estimate() -> None:
    model, calls = _counting(small_cnn())
    x = images(b=2, h=20, w=20)
    lab = torch.arange(100).view(10, 10).repeat_interleave(2, 0).repeat_interleave(2, 1)
    with pytest.raises(InvalidParameterError, match=r"up to 20,204 forward passes .*max_evaluations=5,000.*'lazy'"):
        whybox.explain(model, x, "lima", search="naive", regions=lab, max_evaluations=5000)
    assert calls == []
    e = whybox.explain(model, x[:1], "lima", regions=lab, search="stochastic", max_evaluations=5000)
    assert e.meta["n_forward"] <= 5000


def test_a_prior_explainer_s_passes_count_against_max_evaluations() -> None:
    """regions='prior' with prior='occlusion': LIMA checked only its own bound (548 passes for 2 rows of 16 regions)
    and the prior's 130 passes ran past max_evaluations=548 (678 in all). Now the prior explainer runs first with
    what LIMA's bound leaves, and a request over the limit is refused before any model call."""
    model, calls = _counting(small_cnn())
    x = images(b=2, h=8, w=8)
    options = {"search": "naive", "regions": "prior", "prior": "occlusion", "prior_cells": 4, "fill": "zero"}
    own = 2 * (2 + 16 * 17)
    for limit, left in ((own, "0"), (own + 40, "40")):
        with pytest.raises(InvalidParameterError, match=f"need {own:,} of max_evaluations={limit:,} .* {left}"):
            whybox.explain(model, x, "lima", max_evaluations=limit, **options)
        assert calls == []
    e = whybox.explain(model, x, "lima", max_evaluations=own + 130, **options)
    assert e.meta["n_forward"] == sum(calls) == own + 130


def test_one_output_models_read_the_raw_score() -> None:
    """A probability named on a one-output model is an error (its softmax is 1); the default reads the raw score,
    the same search as score='logit'."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(300, 1)).double().eval()
    x = images(b=1)
    with pytest.raises(InvalidParameterError, match=r"K = 1 score per row.*score='logit'"):
        whybox.explain(model, x, "lima", regions=irregular_labels(), score="prob")
    e = whybox.explain(model, x, "lima", regions=irregular_labels(), score="logit")
    assert e.meta["finite"] == [True]
    default = whybox.explain(model, x, "lima", regions=irregular_labels())
    assert torch.equal(default.attributions, e.attributions) and torch.equal(default.meta["order"], e.meta["order"])


# ---------------------------------------------------------------------------------------------- predictive
class Logistic(nn.Module):
    """Logits (a . x + b, 0) on rows: with fill 0, p_0 of any subset is sigmoid(b + sum of its a_i x_i), so every
    region moves the logit of p_0 by the same amount whatever else is shown: predictive's model is exact."""

    def __init__(self, n: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("a", torch.randn(n, generator=g, dtype=F64) * 0.8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.a - 0.5
        return torch.stack([z, torch.zeros_like(z)], 1)


@pytest.mark.parametrize("eff", [0.0, 0.3])
def test_predictive_is_naive_when_logit_effects_are_additive(eff: float) -> None:
    """Non-submodular in probability (the sigmoid), exactly additive in the logit: the predictions are exact, so
    the order and curves are naive's, with a fraction of the passes (s_eff, when weighted, is computed exactly)."""
    n = 24
    model = Logistic(n).eval()
    x = torch.randn(3, n, generator=torch.Generator().manual_seed(1), dtype=F64)
    opts = {"target": 0, "lambda_conf": 0.0, "lambda_eff": eff}
    ref = whybox.explain(model, x, "lima", search="naive", **opts)
    pr = whybox.explain(model, x, "lima", search="predictive", **opts)
    assert torch.equal(pr.meta["order"], ref.meta["order"])
    torch.testing.assert_close(pr.meta["curve_objective"], ref.meta["curve_objective"])
    # exact predictions: no candidate ever needs scoring beyond the m + q of each step (2N for the first); table
    # columns have no neighbours
    o = SearchOptions()
    floor = 2 * n + sum(2 * min(r, o.n_predicted + o.n_refresh) for r in range(2, n))
    assert pr.meta["search_passes"] == [floor] * 3 == [178] * 3
    assert n * (n + 1) // 2 > 178  # under half of naive's N(N + 1)


def test_predictive_follows_naive_closely_on_a_cnn() -> None:
    """Measured agreement on small CNNs (36 grid regions, 8 images): insertion and deletion AUCs of the region-step
    curves within 0.005 of naive's on average (measured: equal to 1e-6), with at most half of naive's passes (the saving grows with N: 3x
    at N = 49 and 5x at N = 100 on EfficientNet-Lite0, bench/lima.py)."""
    model = small_cnn(seed=3)
    x = images(b=8, h=12, w=12, seed=5)
    lab = torch.arange(36).view(6, 6).repeat_interleave(2, 0).repeat_interleave(2, 1)
    ref = whybox.explain(model, x, "lima", search="naive", regions=lab)
    pr = whybox.explain(model, x, "lima", search="predictive", regions=lab)

    def aucs(e: whybox.Explanation) -> tuple[float, float]:
        ins = torch.cat([e.meta["empty_score"].view(-1, 1), e.meta["curve_kept"]], 1)
        dele = torch.cat([e.meta["full_score"].view(-1, 1), e.meta["curve_removed"]], 1)
        trap = lambda c: float(((c[:, 1:] + c[:, :-1]) / 2).mean())  # noqa: E731
        return trap(ins), trap(dele)

    (ri, rd), (pi, pd) = aucs(ref), aucs(pr)
    assert pi >= ri - 0.005 and pd <= rd + 0.005, (ri, pi, rd, pd)  # measured: equal to 1e-6
    assert sum(pr.meta["search_passes"]) <= 0.55 * sum(
        ref.meta["search_passes"]
    )  # the floor at N = 16: 2N + 2 (m + q) a step


def test_predictive_options_are_checked() -> None:
    model = small_cnn()
    x = images(b=1)
    with pytest.raises(InvalidParameterError, match="n_predicted must be"):
        whybox.explain(model, x, "lima", search="predictive", n_predicted=0)
    with pytest.raises(InvalidParameterError, match=r"n_refresh must be an int >= 0; got -1"):
        whybox.explain(model, x, "lima", search="predictive", n_refresh=-1)
    with pytest.raises(InvalidParameterError, match=r"n_kept must be an int >= 0; got 2.5"):
        whybox.explain(model, x, "lima", search="predictive", n_kept=2.5)


def test_region_adjacency_is_4_or_8_connected_and_empty_for_columns() -> None:
    g = torch.arange(9).view(3, 3).repeat_interleave(2, 0).repeat_interleave(2, 1)  # 3 x 3 cells
    four = region_adjacency(g, connectivity=4)
    eight = region_adjacency(g.unsqueeze(0))  # (1, H, W) as the engine stores image groups
    assert four[4] == [1, 3, 5, 7] and four[0] == [1, 3]
    assert eight[4] == [0, 1, 2, 3, 5, 6, 7, 8] and eight[0] == [1, 3, 4]
    assert all(a in eight[b] for b in eight for a in eight[b])  # symmetric
    assert region_adjacency(torch.arange(6)) == {}


class WithNeighbours(SetFunctionScorer):
    """F given by a set function on a 5 x 5 grid of regions (8-connected), every row it reads logged."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], n: int, adj: dict[int, list[int]]) -> None:
        super().__init__(fn, n)
        self.adj = adj
        self.rows: list[torch.Tensor] = []

    def neighbours(self, image: int) -> dict[int, list[int]]:
        return self.adj

    def read(self, subsets: Sequence[torch.Tensor | None]) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        self.rows.extend(r for s in subsets if s is not None for r in s)
        return super().read(subsets)


def first_requests(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[int], list[int], list[int]]]:
    """(regions chosen, candidates asked in full, kept-side reads asked) of the first request at each S."""
    log: list[tuple[list[int], list[int], list[int]]] = []
    plain = _Predicted.request

    def spy(self: _Predicted, options: SearchOptions) -> list[int] | None:
        out = plain(self, options)
        if out is not None and not self.fresh and self.chosen:
            log.append((list(self.chosen), list(out), list(self.ask_kept)))
        return out

    monkeypatch.setattr(_Predicted, "request", spy)
    return log


def grid_scorer(fn: Callable[[torch.Tensor], torch.Tensor]) -> WithNeighbours:
    return WithNeighbours(fn, 25, region_adjacency(torch.arange(25).view(5, 5)))


def test_predictive_rescores_the_neighbours_of_the_region_just_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    w = torch.rand(25, generator=torch.Generator().manual_seed(2), dtype=F64)
    scorer = grid_scorer(lambda s: s.to(F64) @ w)
    log = first_requests(monkeypatch)
    (res,) = SEARCHES["predictive"].run(scorer, SearchOptions(n_neighbours=8, n_kept=0))
    assert res.order.tolist() == torch.argsort(w, descending=True).tolist()  # modular: predictions exact
    assert len(log) == 23  # steps 1 to 23 (the last region is taken without a request)
    for chosen, full, ask in log:  # every remaining neighbour of the region just chosen is scored in full
        assert {a for a in scorer.adj[chosen[-1]] if a not in chosen} <= set(full), (chosen, full)
        assert ask == []
    assert res.n_forward == scorer.passes


def test_predictive_reads_the_kept_side_of_the_regions_near_the_one_just_chosen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Up to ``n_kept`` regions not scored in full: the chosen region's neighbours (best predicted first), then
    their neighbours; 1 pass each, counted."""
    w = torch.rand(25, generator=torch.Generator().manual_seed(3), dtype=F64)
    scorer = grid_scorer(lambda s: s.to(F64) @ w)
    log = first_requests(monkeypatch)
    (res,) = SEARCHES["predictive"].run(scorer, SearchOptions(n_kept=5))
    assert res.order.tolist() == torch.argsort(w, descending=True).tolist()
    for chosen, full, ask in log:
        last, left = chosen[-1], [a for a in range(25) if a not in chosen and a not in full]
        ring1 = [a for a in left if a in scorer.adj[last]]
        ring2 = [a for a in left if a not in ring1 and any(b in scorer.adj[last] for b in scorer.adj[a])]
        ranked = sorted(ring1, key=lambda a: -float(w[a])) + sorted(ring2, key=lambda a: -float(w[a]))
        assert ask == sorted(ranked[:5]), (chosen, full, ask)
    assert sum(len(ask) for _, _, ask in log) > 50  # the reads happened
    assert res.n_forward == scorer.passes


def test_a_region_read_on_the_kept_side_and_then_scored_costs_one_more_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Region 13 is worth little alone and much beside region 12: its stale prediction after 12 is chosen is low,
    the kept-side read at S = {12} reveals the gain, and only its removed side is read to score it (the order is
    naive's)."""
    w = torch.linspace(0.1, 0.9, 25, dtype=F64)
    w[12], w[13] = 5.0, 0.01

    def fn(s: torch.Tensor) -> torch.Tensor:
        sf = s.to(F64)
        return sf @ w + 10.0 * sf[:, 12] * sf[:, 13]

    scorer = grid_scorer(fn)
    log = first_requests(monkeypatch)
    (res,) = SEARCHES["predictive"].run(scorer, SearchOptions())
    ref, _ = run("naive", fn, 25)
    assert res.order.tolist() == ref.order.tolist() and res.order.tolist()[:2] == [12, 13]
    chosen, full, ask = log[0]
    assert chosen == [12] and 13 not in full and 13 in ask
    both = torch.zeros(25, dtype=torch.bool)
    both[[12, 13]] = True
    assert sum(bool(torch.equal(r, both)) for r in scorer.rows) == 1  # merge({12, 13}) read once
    assert sum(bool(torch.equal(r, ~both)) for r in scorer.rows) == 1  # and comp({12, 13}) once
    assert res.n_forward == scorer.passes


def test_predictive_curves_are_the_model_readings_of_its_prefixes() -> None:
    """With kept-side reads and removed-side completions assembled into F, every logged reading is still the
    model's p_c of merge(S_i) and comp(S_i), and F is recomputed from them."""
    model = small_cnn(seed=4)
    x = images(b=2, h=12, w=12, seed=6)
    lab = torch.arange(36).view(6, 6).repeat_interleave(2, 0).repeat_interleave(2, 1)
    e = whybox.explain(model, x, "lima", search="predictive", regions=lab, target=1)
    with torch.no_grad():
        for b in range(2):
            order = e.meta["order"][b].tolist()
            for i in range(36):
                keep = torch.isin(lab, torch.tensor(order[: i + 1]))
                pm = model(torch.where(keep, x[b], 0.0).unsqueeze(0))[0].softmax(-1)
                pc = model(torch.where(keep, 0.0, x[b]).unsqueeze(0))[0].softmax(-1)
                conf = 1 + float((pm * pm.log()).sum()) / math.log(4)
                assert float(e.meta["curve_kept"][b, i]) == pytest.approx(float(pm[1]), abs=1e-12)
                assert float(e.meta["curve_removed"][b, i]) == pytest.approx(float(pc[1]), abs=1e-12)
                f = 20 * float(pm[1]) + 5 * (1 - float(pc[1])) + 0.01 * conf
                assert float(e.meta["curve_objective"][b, i]) == pytest.approx(f, abs=1e-9)


class Saturated(SetFunctionScorer):
    """Probabilities on both sides (F = 20 kept + 5 (1 - removed), LiMA's weights without s_conf)."""

    weights = Weights(cons=20.0, colla=5.0, conf=0.0, eff=0.0)
    probabilities = True


def test_predictive_breaks_near_ties_by_the_logit_gain() -> None:
    """Measured values within ``ties`` x the predictions' RMS error of the best are ties, broken by the largest
    logit gain w_a + v_a; outside the window (or with ties=0) the best measured F wins."""
    scorer = Saturated(lambda s: torch.full((s.shape[0],), 1e-9, dtype=F64), 3)
    st = _Predicted(scorer, 0)
    z = torch.zeros(1, dtype=F64)
    # F of the three candidates: 5.0010 (best), 5.0002, 4.9; logit gains 0.5, 6.0, 9.0
    for a, (value, gain) in enumerate([(5.0010, 0.5), (5.0002, 6.0), (4.9, 9.0)]):
        st.fresh[a] = Scored(z, z, z, z, torch.tensor([value], dtype=F64))
        st.w[a], st.v[a] = gain / 2, gain / 2
    st.errors[:] = [0.002, 0.0]  # RMS 0.0014: the window holds candidates 0 and 1, not 2
    assert st._settle(0, SearchOptions(ties=1.0))[0] == 1
    assert st._settle(0, SearchOptions(ties=0.0))[0] == 0
    assert st._settle(0, SearchOptions(ties=0.5))[0] == 0  # window 0.0007 < 0.0008
    assert st._settle(0, SearchOptions(ties=100.0))[0] == 2
    st.errors.clear()  # nothing measured against a prediction at this S: no window
    assert st._settle(0, SearchOptions(ties=100.0))[0] == 0


def test_predictive_scores_the_stale_candidates_predicted_to_beat_the_best_less_the_slack() -> None:
    """A stale candidate is scored when its prediction beats the best measured F by more than rounding, less
    ``slack`` x the predictions' RMS error at this S; the rule is the same for every id (a predicted tie with a
    lower id than the best is not scored at ``slack=0``)."""
    scorer = SetFunctionScorer(lambda s: torch.zeros(s.shape[0], dtype=F64), 5)
    z = torch.zeros(1, dtype=F64)

    def scored(slack: float) -> list[int] | None:
        st = _Predicted(scorer, 0)  # raw readings: predicted F(S + a) = F(S) + w_a, F(S) = 0
        st.fresh[2] = Scored(z, z, z, z, torch.tensor([1.0], dtype=F64))  # the best measured: 1.0
        st.w[torch.tensor([0, 1, 3, 4])] = torch.tensor([1.0, 0.9, 1.2, 0.95], dtype=F64)
        st.errors[:] = [0.1]  # RMS 0.1
        return st.request(SearchOptions(slack=slack, n_predicted=5))

    assert scored(0.0) == [3]  # 1.2 beats 1.0; candidate 0's predicted tie is not scored
    assert scored(0.6) == [0, 3, 4]  # bar 0.94
    assert scored(2.0) == [0, 1, 3, 4]  # bar 0.8


def test_predictive_ties_option_is_checked() -> None:
    model = small_cnn()
    x = images(b=1)
    for bad in (-1.0, math.nan, True, "1"):
        with pytest.raises(
            InvalidParameterError, match=rf"ties must be a finite number >= 0; got {re.escape(repr(bad))}"
        ):
            whybox.explain(model, x, "lima", search="predictive", ties=bad)


def test_gain_map_gives_each_region_the_change_from_its_own_step_on() -> None:
    """map='gain': region at rank i gets sum_{j>=i} |g_j| (min-max scaled). One decisive region (all the change at
    its step) gets 1 and the inert ones 0, where -sum_{j<=i} |g_j| made them all tie (an all-zero map); a second
    decisive region stays above the inert ones."""
    from whybox.explainers.lima.explainer import gain_values
    from whybox.explainers.lima.search import SearchResult

    def result(kept: list[float], removed: list[float]) -> SearchResult:
        t = torch.tensor
        order = torch.tensor([2, 0, 3, 1])
        n = len(kept)
        return SearchResult(
            order, t(kept, dtype=F64), t(removed, dtype=F64), torch.zeros(n, dtype=F64), torch.zeros(n, dtype=F64), 0
        )

    # empty set: kept 0.5, removed 0.8 (level -0.3); the first region alone moves the level to 0.3, then nothing
    one = gain_values(result([0.8, 0.8, 0.8, 0.8], [0.5, 0.5, 0.5, 0.5]), 0.5, 0.8)
    assert one.tolist() == [0.0, 0.0, 1.0, 0.0]  # region 2 (rank 0) decisive, the rest inert
    # gains |g| = 0.6, 0.3, 0, 0 along the order: values 0.9, 0.3, 0, 0 scaled by 0.9
    two = gain_values(result([0.8, 0.95, 0.95, 0.95], [0.5, 0.35, 0.35, 0.35]), 0.5, 0.8)
    expect = torch.zeros(4, dtype=F64)
    expect[torch.tensor([2, 0, 3, 1])] = torch.tensor([0.9, 0.3, 0.0, 0.0], dtype=F64) / 0.9
    torch.testing.assert_close(two, expect, rtol=0, atol=1e-12)
