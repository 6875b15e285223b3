"""Searches for an order of the regions by greedily maximising F (LIMA.md, Searches).

Every search is one function ``run(scorer, options) -> list[SearchResult]`` (one result per image) and is
listed in :data:`SEARCHES` with an upper bound on its forward passes (used to refuse over-budget requests
before any compute). To add a search: write the function against :class:`~.objective.SubsetScorer` (call
``scorer.score`` with a list of ``(K_b, N_b)`` bool subsets, one entry per image, so that all images share
model batches), build its results with :func:`make_result`, and add one line to :data:`SEARCHES`.

Conventions shared by all searches (so that their results compare):

- ``S_i`` = the first ``i + 1`` regions of the order; ``kept[i]`` = p_c(merge(S_i)), ``removed[i]`` =
  p_c(comp(S_i)), ``objective[i]`` = F(S_i), ``gains[i]`` = F(S_i) - F(S_{i-1}) with S_{-1} = {}.
- A choice among candidates takes the largest F, ties to the lowest region id.
- When a single region remains its prefix is the whole input, whose readings are known
  (``scorer.full``): only ``naive`` still scores it, to keep the reference cost N(N+1) of the papers.

Forward passes per image with N regions (2 per scored subset):

- ``naive``: N(N+1) exactly.
- ``bidirectional``: per round with r >= 2 regions left, 2r (front) + 2 min(p, r - 1) (back, when r - 1 >= 2);
  :func:`bidirectional_passes` gives the exact count (1608 at N = 49, p = 8: 1.5x fewer than naive).
- ``lazy``: at most N(N+1) - 2; usually far fewer (2N for the first step, then a few per step).
- ``stochastic``: sum over r = 2..N of 2 min(r, s), s = ceil(N / k * ln(1 / eps)) (exact).
- ``predictive``: 2N for the first step, then per step with r regions left at least 2 min(r, m + q) (m
  ``n_predicted``, q ``n_refresh``), 2 per touching region re-scored (``n_neighbours``), 1 per kept-side read
  (up to ``n_kept`` regions near the one just chosen), and 2 per candidate predicted to beat the best measured
  value (less ``slack`` x the measured error), 1 where its kept side was read at this S; at most N(N+1) - 2
  (no candidate is read twice on one side at one S).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from whybox.explainers.lima.objective import Scored, SubsetScorer

__all__ = [
    "SEARCHES",
    "Search",
    "SearchOptions",
    "SearchResult",
    "bidirectional",
    "bidirectional_passes",
    "lazy",
    "make_result",
    "naive",
    "naive_passes",
    "predictive",
    "stochastic",
    "stochastic_passes",
    "stochastic_sample_size",
]

F64 = torch.float64
TOL = 1e-12  # relative: lazy greedy treats F values this close as ties


@dataclass(frozen=True)
class SearchOptions:
    """Options the searches read (each ignores the others').

    n_weakest
        ``bidirectional``: p, the weakest front candidates re-scored on the removal side each round.
    eps, k
        ``stochastic``: sample size ceil(N / k * ln(1 / eps)) per step; ``k=None`` means k = N (a full order).
    lazy_batch
        ``lazy``: stale candidates re-scored together per round (1 = classic lazy greedy, fewest passes).
    n_predicted, n_refresh, n_neighbours, n_kept, slack
        ``predictive``: m, the candidates with the best predicted F scored each step; q, the candidates scored
        longest ago re-scored each step to keep every prediction recent; up to this many regions touching the
        region just chosen re-scored on both sides; up to ``n_kept`` regions near the region just chosen (its
        neighbours, then theirs) read on the kept side only, 1 pass each (their effects change most: shared or
        completed evidence; the kept side carries the larger weight); and the safety margin, in units of the
        predictions' measured error at the current S, by which a stale candidate's prediction may fall short of
        the best measured F and still be scored (0: it must beat it).
    ties
        ``predictive``: measured values within ``ties`` times the predictions' measured error of the best one count
        as ties, broken by the larger logit gain w_a + v_a (0, the default: exact ties only, broken by the lowest id).
    seed
        Seed of the per-image generators (``stochastic``); every image draws the same stream.
    """

    n_weakest: int = 8
    eps: float = 0.1
    k: int | None = None
    lazy_batch: int = 1
    n_predicted: int = 3
    n_refresh: int = 0
    n_neighbours: int = 0
    slack: float = 0.0
    ties: float = 0.0
    n_kept: int = 16
    seed: int = 0


@dataclass
class SearchResult:
    """One image's order and the per-step curves (see the module docstring), ``(N,)`` each."""

    order: torch.Tensor  # int64
    kept: torch.Tensor  # float64
    removed: torch.Tensor
    objective: torch.Tensor
    gains: torch.Tensor
    n_forward: int  # passes this search spent on this image


SearchFn = Callable[[SubsetScorer, SearchOptions], list[SearchResult]]


def naive_passes(n: int, options: SearchOptions) -> int:
    return n * (n + 1)


@dataclass(frozen=True)
class Search:
    """A registered search: the function and an upper bound on its passes for N regions (default N(N+1))."""

    run: SearchFn
    max_passes: Callable[[int, SearchOptions], int] = field(default=naive_passes)


# ---------------------------------------------------------------------------------------------- helpers
def make_result(order: list[int], steps: list[Scored], empty: Scored, n_forward: int) -> SearchResult:
    """A result from the order and the readings of each prefix ``steps[i]`` = readings of S_i."""
    s = Scored.cat(steps)
    prev = torch.cat([empty.value, s.value[:-1]])
    return SearchResult(
        order=torch.tensor(order, dtype=torch.int64),
        kept=s.kept.clone(),
        removed=s.removed.clone(),
        objective=s.value.clone(),
        gains=s.value - prev,
        n_forward=n_forward,
    )


def _pick(values: torch.Tensor, ids: list[int]) -> int:
    """Position of the largest value (NaN counts as -inf), ties to the lowest id."""
    v = torch.nan_to_num(values, nan=-math.inf)
    best = float(v.max())
    return min((i for i in range(len(ids)) if float(v[i]) == best), key=lambda i: ids[i])


def _with(base: torch.Tensor, cands: list[int]) -> torch.Tensor:
    """``(len(cands), N)`` bool: ``base`` plus each candidate in turn."""
    s = base.unsqueeze(0).repeat(len(cands), 1)
    s[torch.arange(len(cands)), torch.tensor(cands, dtype=torch.int64)] = True
    return s


def _without(base: torch.Tensor, cands: list[int]) -> torch.Tensor:
    """``(len(cands), N)`` bool: ``base`` minus each candidate in turn."""
    s = base.unsqueeze(0).repeat(len(cands), 1)
    s[torch.arange(len(cands)), torch.tensor(cands, dtype=torch.int64)] = False
    return s


# ---------------------------------------------------------------------------------------------- naive
def naive(scorer: SubsetScorer, options: SearchOptions) -> list[SearchResult]:
    """The reference greedy: each step scores S ∪ {a} for every remaining a and adds the best.

    N(N+1) passes per image (N - i candidates at step i, 2 passes each, the last step included).
    """
    ns = scorer.n_regions
    chosen: list[list[int]] = [[] for _ in ns]
    steps: list[list[Scored]] = [[] for _ in ns]
    rem = [list(range(n)) for n in ns]
    masks = [torch.zeros(n, dtype=torch.bool) for n in ns]
    passes = [0] * len(ns)
    for _ in range(max(ns)):
        subsets = [_with(masks[r], rem[r]) if rem[r] else None for r in range(len(ns))]
        res = scorer.score(subsets)
        for r, sc in enumerate(res):
            if sc is None:
                continue
            passes[r] += 2 * len(sc)
            pos = _pick(sc.value, rem[r])
            a = rem[r].pop(pos)
            chosen[r].append(a)
            masks[r][a] = True
            steps[r].append(sc[pos])
    return [make_result(chosen[r], steps[r], scorer.empty[r], passes[r]) for r in range(len(ns))]


# ---------------------------------------------------------------------------------------------- bidirectional
def bidirectional_passes(n: int, options: SearchOptions) -> int:
    """Exact pass count of :func:`bidirectional` for N regions."""
    p, r, total = options.n_weakest, n, 0
    while r >= 2:
        total += 2 * r
        r -= 1
        if r >= 2:
            total += 2 * min(p, r)
            r -= 1
    return total


def bidirectional(scorer: SubsetScorer, options: SearchOptions) -> list[SearchResult]:
    """LiMA's bidirectional greedy: a front set grown as in :func:`naive`, and a back set grown from the end.

    Each round (with r >= 2 regions left): score S_front ∪ {a} for every remaining a and move the best to the
    front; then take the ``n_weakest`` (p) candidates with the lowest front scores (ties: lowest id), score each
    on the removal side, T_b = all regions except the back set and b, and move the b whose removal keeps F
    highest (the least important) to the back set. Final order = front + reversed back, so the back set fills
    the order from its end. The readings of a back prefix V minus {back_0..back_{k-1}} are those of T scored
    when back_{k-1} was chosen (and of the whole input for k = 0), so the curves need no extra passes.
    """
    ns = scorer.n_regions
    b = len(ns)
    p = options.n_weakest
    front: list[list[int]] = [[] for _ in ns]
    front_sc: list[list[Scored]] = [[] for _ in ns]
    back: list[list[int]] = [[] for _ in ns]
    back_sc: list[list[Scored]] = [[] for _ in ns]
    rem = [list(range(n)) for n in ns]
    fmask = [torch.zeros(n, dtype=torch.bool) for n in ns]
    kmask = [torch.ones(n, dtype=torch.bool) for n in ns]  # all regions but the back set
    passes = [0] * b

    def close_single(r: int) -> None:  # one region left: its prefix is V minus the back set, already scored
        a = rem[r].pop()
        front[r].append(a)
        front_sc[r].append(back_sc[r][-1] if back[r] else scorer.full[r])

    while any(rem):
        for r in range(b):
            if len(rem[r]) == 1:
                close_single(r)
        subsets = [_with(fmask[r], rem[r]) if len(rem[r]) >= 2 else None for r in range(b)]
        res = scorer.score(subsets)
        weak: list[list[int] | None] = [None] * b
        for r, sc in enumerate(res):
            if sc is None:
                continue
            passes[r] += 2 * len(sc)
            pos = _pick(sc.value, rem[r])
            a = rem[r][pos]
            front[r].append(a)
            front_sc[r].append(sc[pos])
            fmask[r][a] = True
            others = [(float(torch.nan_to_num(sc.value[i], nan=-math.inf)), c) for i, c in enumerate(rem[r]) if c != a]
            rem[r].remove(a)
            if len(rem[r]) >= 2:
                weak[r] = sorted(c for _, c in sorted(others)[:p])
        subsets = [_without(kmask[r], w) if w is not None else None for r, w in enumerate(weak)]
        res = scorer.score(subsets)
        for r, sc in enumerate(res):
            w = weak[r]
            if sc is None or w is None:
                continue
            passes[r] += 2 * len(sc)
            pos = _pick(sc.value, w)
            c = w[pos]
            back[r].append(c)
            back_sc[r].append(sc[pos])
            kmask[r][c] = False
            rem[r].remove(c)
    results = []
    for r in range(b):
        order = front[r] + back[r][::-1]
        # back[k] sits at position N-1-k; its prefix is V minus back[0..k-1]
        tail = [back_sc[r][k - 1] if k > 0 else scorer.full[r] for k in range(len(back[r]))][::-1]
        results.append(make_result(order, front_sc[r] + tail, scorer.empty[r], passes[r]))
    return results


# ---------------------------------------------------------------------------------------------- lazy
def lazy_passes(n: int, options: SearchOptions) -> int:
    return max(0, n * (n + 1) - 2)


def lazy(scorer: SubsetScorer, options: SearchOptions) -> list[SearchResult]:
    """Lazy greedy (Minoux): stale marginal gains are upper bounds; re-score only candidates that can still win.

    Step 0 scores every region. Later steps keep each candidate's last gain u_a = F(S' ∪ {a}) - F(S') from an
    earlier S' ⊂ S; for a submodular F it bounds the current gain. Each round re-scores the ``lazy_batch``
    stale candidates with the highest bounds among those that could still win: bound F(S) + u_a above the best
    fresh value, or equal to it with a lower region id (equal within ``TOL`` relative); when none is left the
    best fresh candidate is taken (ties: lowest id). For a submodular F the order is exactly :func:`naive`'s
    (up to values closer than ``TOL``); for a real network F is not guaranteed submodular, and lazy greedy is
    then a heuristic that may differ from naive.
    """
    ns = scorer.n_regions
    b = len(ns)
    batch = options.lazy_batch
    chosen: list[list[int]] = [[] for _ in ns]
    steps: list[list[Scored]] = [[] for _ in ns]
    rem = [list(range(n)) for n in ns]
    masks = [torch.zeros(n, dtype=torch.bool) for n in ns]
    f_s = [float(scorer.empty[r].value[0]) for r in range(b)]
    bound: list[dict[int, float]] = [{} for _ in ns]
    fresh: list[dict[int, Scored]] = [{} for _ in ns]  # candidates scored at the current S
    passes = [0] * b

    def take(r: int, a: int, sc: Scored) -> None:
        rem[r].remove(a)
        chosen[r].append(a)
        masks[r][a] = True
        steps[r].append(sc)
        f_s[r] = float(sc.value[0])
        fresh[r].clear()

    def request(r: int) -> list[int] | None:
        """Advance image r as far as possible without scoring; return the candidates to score, or None."""
        while rem[r]:
            if len(rem[r]) == 1:
                take(r, rem[r][0], scorer.full[r])
                continue
            if not chosen[r] and not fresh[r]:
                return list(rem[r])  # step 0: no bounds yet
            best = None
            if fresh[r]:
                ids = sorted(fresh[r])
                vals = torch.cat([fresh[r][a].value for a in ids])
                best = ids[_pick(vals, ids)]
            stale = [a for a in rem[r] if a not in fresh[r]]
            if best is not None:
                # a stale candidate can only win if its bound beats the best fresh value, or ties it with a lower
                # id (naive breaks ties to the lowest id); TOL absorbs the rounding of F(S) + u_a
                bv = float(fresh[r][best].value[0])
                tol = TOL * max(1.0, abs(bv))
                stale = [
                    a
                    for a in stale
                    if not (f_s[r] + bound[r][a] < bv - tol or (f_s[r] + bound[r][a] <= bv + tol and a > best))
                ]
            if not stale and best is not None:  # every other candidate is bounded below the best fresh one
                take(r, best, fresh[r][best])
                continue
            stale.sort(key=lambda a: (-bound[r][a], a))
            return sorted(stale[:batch])
        return None

    while True:
        want = [request(r) for r in range(b)]
        if all(w is None for w in want):
            break
        res = scorer.score([_with(masks[r], w) if w else None for r, w in enumerate(want)])
        for r, sc in enumerate(res):
            w = want[r]
            if sc is None or w is None:
                continue
            passes[r] += 2 * len(sc)
            for i, a in enumerate(w):
                fresh[r][a] = sc[i]
                bound[r][a] = float(sc.value[i]) - f_s[r]
    return [make_result(chosen[r], steps[r], scorer.empty[r], passes[r]) for r in range(b)]


# ---------------------------------------------------------------------------------------------- stochastic
def stochastic_sample_size(n: int, options: SearchOptions) -> int:
    """s = ceil(N / k * ln(1 / eps)) (Mirzasoleiman et al. 2015), at least 1."""
    k = n if options.k is None else min(options.k, n)
    return max(1, math.ceil(n / max(k, 1) * math.log(1.0 / options.eps)))


def stochastic_passes(n: int, options: SearchOptions) -> int:
    """Exact pass count of :func:`stochastic` for N regions."""
    s = stochastic_sample_size(n, options)
    return sum(2 * min(r, s) for r in range(2, n + 1))


def stochastic(scorer: SubsetScorer, options: SearchOptions) -> list[SearchResult]:
    """Stochastic greedy: each step scores a uniform sample of s remaining candidates and adds the best.

    Image b draws from its own generator seeded with ``options.seed`` (the same stream for every image, so a
    row's result does not depend on its batch neighbours). With s >= N every candidate is scored and the
    order is :func:`naive`'s.
    """
    ns = scorer.n_regions
    b = len(ns)
    gens = [torch.Generator().manual_seed(options.seed) for _ in ns]
    sizes = [stochastic_sample_size(n, options) for n in ns]
    chosen: list[list[int]] = [[] for _ in ns]
    steps: list[list[Scored]] = [[] for _ in ns]
    rem = [list(range(n)) for n in ns]
    masks = [torch.zeros(n, dtype=torch.bool) for n in ns]
    passes = [0] * b
    while any(rem):
        cands: list[list[int] | None] = [None] * b
        for r in range(b):
            if len(rem[r]) == 1:
                a = rem[r].pop()
                chosen[r].append(a)
                steps[r].append(scorer.full[r])
            elif rem[r]:
                pick = torch.randperm(len(rem[r]), generator=gens[r])[: sizes[r]]
                cands[r] = sorted(rem[r][i] for i in pick.tolist())
        res = scorer.score([_with(masks[r], c) if c else None for r, c in enumerate(cands)])
        for r, sc in enumerate(res):
            c = cands[r]
            if sc is None or c is None:
                continue
            passes[r] += 2 * len(sc)
            pos = _pick(sc.value, c)
            a = c[pos]
            rem[r].remove(a)
            chosen[r].append(a)
            masks[r][a] = True
            steps[r].append(sc[pos])
    return [make_result(chosen[r], steps[r], scorer.empty[r], passes[r]) for r in range(b)]


# ---------------------------------------------------------------------------------------------- predictive
P_CLAMP = 1e-12  # probabilities are clamped to [P_CLAMP, 1 - P_CLAMP] before the logit


def _logit(p: float) -> float:
    p = min(max(p, P_CLAMP), 1.0 - P_CLAMP)
    return math.log(p) - math.log1p(-p)


def _sigmoid(z: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(z)


class _Predicted:
    """One image's state in :func:`predictive`: the last measured effect of every candidate on both sides."""

    def __init__(self, scorer: SubsetScorer, r: int) -> None:
        n = scorer.n_regions[r]
        self.scorer, self.r = scorer, r
        self.rem = list(range(n))
        self.mask = torch.zeros(n, dtype=torch.bool)
        self.chosen: list[int] = []
        self.steps: list[Scored] = []
        self.kept = float(scorer.empty[r].kept[0])  # readings of the current S
        self.removed = float(scorer.empty[r].removed[0])
        self.w = torch.zeros(n, dtype=F64)  # kept-side effect of adding a (logit or raw units)
        self.v = torch.zeros(n, dtype=F64)  # removed-side effect (a drop)
        self.conf = torch.zeros(n, dtype=F64)  # s_conf of S' + a at its last scoring
        self.age = torch.full((n,), -1, dtype=torch.int64)  # round of the last scoring (-1: never)
        self.fresh: dict[int, Scored] = {}  # candidates scored at the current S
        self.half: dict[int, tuple[float, float]] = {}  # kept side only read at the current S: (p_c, s_conf)
        self.ask_kept: list[int] = []  # kept-side reads asked with the last request
        self.errors: list[float] = []  # |predicted - measured| F of the candidates scored at the current S
        self.passes = 0

    def _link(self, p: float) -> float:
        return _logit(p) if self.scorer.probabilities else p

    def _inv(self, z: torch.Tensor) -> torch.Tensor:
        return _sigmoid(z) if self.scorer.probabilities else z

    def predict(self, cands: list[int]) -> torch.Tensor:
        """Predicted F(S + a) of ``cands``: each side moved by the candidate's last measured effect."""
        wt = self.scorer.weights
        idx = torch.tensor(cands, dtype=torch.int64)
        kept = self._inv(self._link(self.kept) + self.w[idx])
        removed = self._inv(self._link(self.removed) - self.v[idx])
        value = wt.cons * kept + wt.colla * (1.0 - removed) + wt.conf * self.conf[idx]
        if wt.eff > 0:
            value = value + wt.eff * self.scorer.effectiveness_of(self.r, _with(self.mask, cands))
        return value

    def take(self, a: int, sc: Scored) -> None:
        self.rem.remove(a)
        self.chosen.append(a)
        self.mask[a] = True
        self.steps.append(sc)
        self.kept, self.removed = float(sc.kept[0]), float(sc.removed[0])
        self.fresh.clear()
        self.half.clear()
        self.errors.clear()

    def zone(self, options: SearchOptions, ranked: list[int], skip: set[int]) -> list[int]:
        """Up to ``n_kept`` unscored regions near the one just chosen: its neighbours, then theirs, best predicted
        first within each ring (``ranked``: best predicted first; ``skip``: scored in full this round)."""
        if not options.n_kept or not self.chosen:
            return []
        adj = self.scorer.neighbours(self.r)
        last = self.chosen[-1]
        ring1 = set(adj.get(last, ()))
        ring2 = {b for a in ring1 for b in adj.get(a, ())} - ring1 - {last}
        near = [a for a in ranked if a in ring1 and a not in skip]
        near += [a for a in ranked if a in ring2 and a not in skip]
        return near[: options.n_kept]

    def request(self, options: SearchOptions) -> list[int] | None:
        """Advance without scoring as far as possible; return the candidates to score next, or None when done."""
        while self.rem:
            if len(self.rem) == 1:  # its prefix is the whole input
                self.take(self.rem[0], self.scorer.full[self.r])
                continue
            if not self.chosen and not self.fresh:
                self.ask_kept = []
                return list(self.rem)  # the first step measures every effect
            stale = [a for a in self.rem if a not in self.fresh]
            pred = self.predict(stale) if stale else torch.zeros(0, dtype=F64)
            ranked = sorted(range(len(stale)), key=lambda i: (-float(pred[i]), stale[i]))
            if self.fresh:
                ids = sorted(self.fresh)
                best = ids[_pick(torch.cat([self.fresh[a].value for a in ids]), ids)]
                bv = float(self.fresh[best].value[0])
                # a stale candidate is scored when its prediction beats the best measured value (by more than
                # rounding), less the safety margin: slack times the predictions' error measured at this S
                bar = bv + TOL * max(1.0, abs(bv))
                if options.slack > 0 and self.errors:
                    bar -= options.slack * self._rms_error()
                can_win = [stale[i] for i in ranked if float(pred[i]) > bar]
                if not can_win:
                    self.take(*self._settle(best, options))
                    continue
                self.ask_kept = []
                return sorted(can_win[: options.n_predicted])
            top = [stale[i] for i in ranked[: options.n_predicted]]
            # the regions touching the one just chosen, best predicted first: their effects moved most
            near = set(self.scorer.neighbours(self.r).get(self.chosen[-1], ())) if self.chosen else set()
            touching = [stale[i] for i in ranked if stale[i] in near and stale[i] not in top][: options.n_neighbours]
            rest = [a for a in stale if a not in top and a not in touching]
            oldest = sorted(rest, key=lambda a: (int(self.age[a]), a))[: options.n_refresh]
            full = top + touching + oldest
            self.ask_kept = sorted(self.zone(options, [stale[i] for i in ranked], set(full)))
            return sorted(full)
        return None

    def _rms_error(self) -> float:
        """RMS of |predicted - measured| F over the candidates scored at the current S (call when any were)."""
        return math.sqrt(sum(e * e for e in self.errors) / len(self.errors))

    def _settle(self, best: int, options: SearchOptions) -> tuple[int, Scored]:
        """The candidate to take: ``best``, or among the measured candidates whose F is within ``ties`` times the
        predictions' measured error of it (differences this search cannot resolve: it has not scored every
        candidate) the one with the largest logit gain w_a + v_a (ties: lowest id)."""
        if options.ties > 0 and self.errors and len(self.fresh) > 1:
            bv = float(self.fresh[best].value[0])
            window = options.ties * self._rms_error()
            near = sorted(a for a, sc in self.fresh.items() if float(sc.value[0]) >= bv - window)
            if len(near) > 1:
                best = max(near, key=lambda a: (float(self.w[a] + self.v[a]), -a))
        return best, self.fresh[best]

    def record_kept(self, cands: list[int], kept: torch.Tensor, conf: torch.Tensor) -> None:
        """Kept-side readings at the current S (1 pass each): the kept effects and s_conf move, the removed stay."""
        self.passes += len(cands)
        k0 = self._link(self.kept)
        for i, a in enumerate(cands):
            self.w[a] = self._link(float(kept[i])) - k0
            self.conf[a] = float(conf[i])
            self.half[a] = (float(kept[i]), float(conf[i]))

    def record(self, cands: list[int], sc: Scored, tick: int, passes: int | None = None) -> None:
        self.passes += 2 * len(sc) if passes is None else passes
        if self.chosen or self.fresh:  # not the first step: the predictions made before this scoring, checked
            pred = self.predict(cands)
            self.errors.extend(abs(float(pred[i]) - float(sc.value[i])) for i in range(len(cands)))
        k0, r0 = self._link(self.kept), self._link(self.removed)
        for i, a in enumerate(cands):
            self.w[a] = self._link(float(sc.kept[i])) - k0
            self.v[a] = r0 - self._link(float(sc.removed[i]))
            self.conf[a] = float(sc.confidence[i])
            self.age[a] = tick
            self.fresh[a] = sc[i]


def predictive(scorer: SubsetScorer, options: SearchOptions) -> list[SearchResult]:
    """Greedy that predicts F(S + a) from the subsets already scored and scores only candidates that can win.

    F's two heavy terms read p_c of merge(S + a) and comp(S + a). On real networks p_c follows a sigmoid of
    an evidence score, so marginal gains in probability are far from constant (small while the evidence is
    weak, large at the tipping point: the reason plain lazy greedy fails there), while the effect of a region
    on the *logit* of p_c changes slowly. Each candidate keeps its last measured logit effects w_a (showing
    a) and v_a (removing a); F(S + a) is predicted from the current readings of S moved by those effects
    (s_conf from the candidate's last scoring, s_eff exactly). Each step scores the ``n_predicted`` best
    predictions, the ``n_refresh`` candidates measured longest ago and up to ``n_neighbours`` regions touching
    the one just chosen, and reads the kept side alone of up to ``n_kept`` regions near the one just chosen;
    then it keeps scoring (``n_predicted`` at a time, 1 pass for a candidate whose kept side is fresh) while an
    unscored candidate's prediction beats the best measured value less ``slack`` times the predictions' RMS
    error at this S; it then takes the best measured candidate. With ``score="logit"`` the effects are raw
    differences.

    Kept-side reads: a region's effect changes most when a region near it is chosen (it completes or shares
    evidence), and the best candidates the search missed were mostly within two regions of the last one chosen
    (bench/results/lima_slack.md, session 12: along naive's trajectory on EfficientNet-Lite0, 10 of 25 misses sat
    at Chebyshev distance 2 and none at 1, where the touching regions were re-scored). The kept side, p_c of
    merge(S + a), carries the larger weight (20 against 5) and costs 1 pass, so reading that side of the 16
    nearest regions (neighbours first) costs what re-scoring 8 costs in full. Measured at N = 49 against
    per-image naive runs: the defaults (``3:0:0`` with ``n_kept=16``) spend the passes of the former defaults
    (``n_refresh=1, n_neighbours=8, n_kept=0``) and on EfficientNet-Lite0 give insertion 0.015 ± 0.008 below
    naive's instead of 0.019 ± 0.006 on 63 photos and 0.011 ± 0.006 instead of 0.026 ± 0.006 on 32 others,
    with deletion 0.008 / 0.004 above naive's; with the default superpixel regions (32 photos, 3.53x fewer passes)
    insertion 0.004 above and deletion 0.008 above naive's (the former defaults: 0.029 below, 0.014 above); on the
    digits CNN (256 test images) insertion 0.022 above naive's (the former: 0.001 below), deletion 0.003 above,
    3.44x fewer passes.

    Slack: the default 0 scores only candidates predicted to win. A margin buys passes, not AUC: at N = 49 with
    ``n_predicted=2``, on the digits CNN (256 test images) slack 0, 0.25, 0.5 and 1 cost 657, 975, 1045 and 1157
    passes per image with insertion AUC within 0.006 of naive's for all four; on EfficientNet-Lite0 at 224 px (16
    photos) slack 0, 0.25 and 0.5 cost 687, 718 and 779 passes with insertion 0.045, 0.035 and 0.045 below
    naive's. A third predicted candidate per step (``n_predicted=3``) was the better use of passes there: 747
    passes, insertion 0.034 below, deletion 0.004 above (bench/results/lima_slack.md; these runs predate the
    kept-side reads).

    Ties: measured values closer to the best than ``ties`` times the predictions' measured error at this S are
    differences the search cannot resolve (it did not score every candidate); among them it takes the largest
    logit gain w_a + v_a (then the lowest id). This matters on plateaus, where p_c of merge(S) is near 0 and of
    comp(S) near 0 or 1: F's differences there are tiny and set by the saturated probabilities, while the logit
    gains still say which region moves the evidence most. Naive, which follows those tiny differences, can stay
    on a plateau for many steps. Measured at N = 49 (bench/lima.py, bench/results/lima_slack.md): on the digits
    CNN (256 test images) ``ties=1`` lifts insertion AUC from 0.001 above naive's to 0.046 above it and deletion
    from 0.0002 above to 0.005 below, for 727 passes instead of 719; on EfficientNet-Lite0 at 224 px (measured
    with the earlier scoring rule, lima_ties.md) it traded insertion for deletion. Off by default.

    When the effects are exactly additive in the logit (a logistic model of the regions) every prediction is
    exact and the order is :func:`naive`'s; on real networks it is a heuristic, measured in bench/lima.py.
    """
    states = [_Predicted(scorer, r) for r in range(len(scorer.n_regions))]
    tick = 0
    while True:
        want = [st.request(options) for st in states]
        if all(w is None for w in want):
            break
        _round(scorer, states, want, tick)
        tick += 1
    return [make_result(st.chosen, st.steps, scorer.empty[st.r], st.passes) for st in states]


def _round(scorer: SubsetScorer, states: list[_Predicted], want: list[list[int] | None], tick: int) -> None:
    """One model call for a round of ``predictive``, all images together. Per image: the candidates to score (both
    sides, or only the removed side where the kept side was read at this S already), then the kept-side reads."""
    rows: list[torch.Tensor | None] = []
    plans = []
    for st, w in zip(states, want, strict=True):
        w = w or []
        both = [a for a in w if a not in st.half]  # both sides to read
        rem_only = [a for a in w if a in st.half]  # the removed side only
        ask = st.ask_kept if w else []
        parts = []
        if both:
            parts += [_with(st.mask, both), ~_with(st.mask, both)]
        if rem_only:
            parts.append(~_with(st.mask, rem_only))
        if ask:
            parts.append(_with(st.mask, ask))
        rows.append(torch.cat(parts) if parts else None)
        plans.append((w, both, rem_only, ask))
    res = scorer.read(rows)
    wt = scorer.weights
    for st, (w, both, rem_only, ask), got in zip(states, plans, res, strict=True):
        if got is None:
            continue
        val, conf = got
        i, nf, nr = 0, len(both), len(rem_only)
        kept = {a: (float(val[i + j]), float(conf[i + j])) for j, a in enumerate(both)}
        removed = {a: float(val[i + nf + j]) for j, a in enumerate(both)}
        i += 2 * nf
        removed.update({a: float(val[i + j]) for j, a in enumerate(rem_only)})
        kept.update({a: st.half[a] for a in rem_only})
        i += nr
        if w:
            k_ = torch.tensor([kept[a][0] for a in w], dtype=F64)
            r_ = torch.tensor([removed[a] for a in w], dtype=F64)
            c_ = torch.tensor([kept[a][1] for a in w], dtype=F64)
            e_ = scorer.effectiveness_of(st.r, _with(st.mask, w))  # zeros when s_eff has no weight
            st.record(w, Scored(k_, r_, c_, e_, wt.value(k_, r_, c_, e_)), tick, passes=2 * nf + nr)
        if ask:
            st.record_kept(ask, val[i : i + len(ask)], conf[i : i + len(ask)])


SEARCHES: dict[str, Search] = {
    "naive": Search(naive, naive_passes),
    "bidirectional": Search(bidirectional, bidirectional_passes),
    "lazy": Search(lazy, lazy_passes),
    "stochastic": Search(stochastic, stochastic_passes),
    "predictive": Search(predictive, lazy_passes),
}
