"""LIMA: attribution as an order of regions found by greedy submodular subset selection (LIMA.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from whybox.errors import InvalidParameterError, did_you_mean
from whybox.explainers.base import _keyword_options
from whybox.explainers.lima import regions as R
from whybox.explainers.lima.objective import EngineScorer, Weights
from whybox.explainers.lima.search import SEARCHES, SearchOptions, SearchResult
from whybox.explainers.perturbation._common import F64, PerturbationExplainer, _check_int
from whybox.masking.engine import MaskingEngine
from whybox.masking.fills import FillLike
from whybox.models.adapter import is_sequence, is_signal
from whybox.models.inputs import is_text_adapter, label_map_option
from whybox.models.targets import Target, TargetLike, apply_score_space, resolve_score, resolve_target
from whybox.registry import EXPLAINERS

__all__ = ["MAPS", "Lima", "gain_values", "rank_values"]

MAPS = ("rank", "gain")
SCORES = ("prob", "logit", "sigmoid")


def rank_values(order: torch.Tensor, n: int) -> torch.Tensor:
    """``(N,)`` float64: the region at rank i (0-based) of ``order`` gets N - i."""
    v = torch.empty(n, dtype=F64)
    v[order] = torch.arange(n, 0, -1, dtype=F64)
    return v


def gain_values(result: SearchResult, empty_kept: float, empty_removed: float) -> torch.Tensor:
    """``(N,)`` float64 marginal-gain map: the region at rank i gets sum_{j>=i} |g_j|, the change still to come
    from its own step on, with g the step-to-step change of s_cons + s_colla along the order (g_0 from the empty
    set), min-max scaled to [0, 1] (a constant map becomes zeros).

    LIMA.md states -sum_{j<=i} |g_j|, which is this up to a constant but one step later: it leaves out region
    i's own gain, so a region whose step carries all the change left ties with the regions that change nothing
    (a text whose one decisive word makes the whole difference got an all-zero map) and the second of two
    decisive regions scored as the inert ones."""
    level = result.kept - result.removed  # s_cons + s_colla - 1
    prev = torch.cat([torch.tensor([empty_kept - empty_removed], dtype=F64), level[:-1]])
    steps = (level - prev).abs()
    ranked = steps.flip(0).cumsum(0).flip(0)
    lo, hi = ranked.min(), ranked.max()
    span = float(hi - lo)
    scaled = torch.zeros_like(ranked) if not span > 1e-12 * max(1.0, float(hi.abs())) else (ranked - lo) / span
    v = torch.empty_like(scaled)
    v[result.order] = scaled
    return v


def _positive(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise InvalidParameterError(f"{name} must be a positive number; got {v!r}.")
    return float(v)


@EXPLAINERS.register("lima")
class Lima(PerturbationExplainer):
    """Order N disjoint regions by greedily maximising the LIMA set function; paint the order as the map.

    "Less is More" (Chen et al., ICLR 2024) and its bidirectional search (LiMA). The input is split into
    regions that are disjoint and cover it; a search grows the subset S region by region, maximising
    F(S) = lambda_cons s_cons + lambda_colla s_colla + lambda_conf s_conf + lambda_eff s_eff (see
    :mod:`whybox.explainers.lima.objective`), and the resulting order is the explanation. Every subset is
    scored through the masking engine, in chunks of ``batch_size`` rows, all images of the call together.

    Parameters
    ----------
    search
        ``"predictive"`` (default: predicts F(S + a) from the logit effects already measured and scores only the
        candidates predicted to win, plus the neighbours of the region just chosen; with 49 regions 3.3x fewer
        passes than naive on EfficientNet-Lite0 at 224 px, insertion AUC 0.034 lower and deletion 0.004 higher,
        and 3.4x fewer on the digits CNN, both AUCs within 0.002; bench/results/lima_slack.md),
        ``"naive"`` (the reference greedy, N(N+1) passes per image), ``"bidirectional"`` (LiMA; about 1.5x
        fewer passes), ``"lazy"`` (lazy greedy: exact naive order when F is submodular, a heuristic otherwise)
        or ``"stochastic"`` (stochastic greedy, seeded). See :mod:`whybox.explainers.lima.search`.
    regions
        ``"auto"`` (``"superpixels"`` on images, ``"columns"`` on ``(B, F)`` rows (a model of several inputs with an
        image among them: its image in squares, :meth:`~whybox.models.packed.InputPacking.region_groups`),
        ``"segments"`` on 1-D signals
        ``(B, C, L)``: ``n_regions`` windows along L shared by all channels, and on sequences ``(B, T, D)``:
        windows along T shared by the D features), ``"superpixels"`` (SLICO),
        ``"seeds"`` (a SEEDS-like variant, see :func:`~whybox.explainers.lima.regions.seeds`), ``"prior"``
        (prior-guided patches), ``"grid"`` (segments on signals and sequences), ``"segments"``, ``"columns"``, ``"spans"``; or an
        integer label map ``(B, *G)`` /
        ``(*G)`` (``(H, W)`` for images), or a bool mask stack ``(N, *G)`` that must be disjoint and covering.
    n_regions
        About how many regions ``"superpixels"``, ``"seeds"``, ``"grid"`` and ``"segments"`` make (default 49; SLICO's count
        varies per image), and the count ``"prior"`` aims at when ``prior_cells`` is None.
    compactness
        SLIC's compactness (and the spatial weight of ``"seeds"``).
    groups
        ``"columns"``: optional column-group ids ``(F,)``; ``"spans"``: token spans ``[(start, stop), ...]``
        covering ``0..T-1``, or per-token ids ``(T,)``.
    prior
        ``"prior"`` regions: a registered explainer name (default ``"gradcam"``, run on the same target; its
        passes count in ``n_forward``/``n_backward``) or a prior map ``(B, H, W)``.
    prior_grid, prior_cells
        G and d: the prior map on a G x G grid (default 14; no finer than the image's pixels), d cells per region
        (default ceil(cells / n_regions): 4 on 224 x 224 images, so 49 regions; on 8 x 8 digits, 64 cells).
    prior_options
        Options for the prior explainer (e.g. ``{"layer": "features.3"}``).
    lambda_cons, lambda_colla, lambda_conf, lambda_eff
        The weights of consistency, collaboration, confidence and effectiveness: LiMA's classifier values
        20, 5, 0.01 and 0 by default (``lambda_eff > 0`` costs N more passes per image).
    map
        ``"rank"`` (default: the region at rank i gets N - i) or ``"gain"`` (region at rank i gets
        sum_{j>=i} |g_j|, the change of s_cons + s_colla still to come from its own step on, min-max scaled; see
        :func:`gain_values`).
    n_weakest
        ``"bidirectional"``: p, candidates re-scored on the removal side per round (default 8).
    eps, k
        ``"stochastic"``: sample size ceil(N / k * ln(1 / eps)) per step; ``k=None`` means N.
    lazy_batch
        ``"lazy"``: stale candidates re-scored together per round (default 1, the fewest passes).
    n_predicted, n_refresh, n_neighbours, n_kept, slack, ties
        ``"predictive"``: candidates with the best predicted F scored per step (default 3), candidates measured
        longest ago re-scored per step (default 0), regions touching the one just chosen re-scored on both sides
        per step (default 0; images only), regions near the one just chosen (its neighbours, then theirs, best
        predicted first) read on the kept side only, 1 pass each, per step (default 16; images only: a region
        whose fresh kept side makes it a predicted winner then costs 1 more pass to score), the margin, in units of
        the predictions' measured error, by which a stale candidate's prediction may fall short of the best measured
        value and still be scored (default 0: only candidates predicted to beat it; a margin costs passes and
        bought no AUC in bench/lima.py), and the window, in the same units, within which measured values count as
        ties, broken by the larger logit gain of p_c on both sides (default 0: exact ties, lowest id; 1 helps both
        curves on the digits CNN; on EfficientNet-Lite0 it traded insertion for deletion under an earlier
        scoring rule; bench/results/lima_slack.md and lima_ties.md).
    fill
        What removed regions become (the masking engine's fills): ``"zero"`` by default, which on inputs
        normalised with a dataset mean is that mean colour (the reference code blacked pixels before
        normalisation: pass that value as a number or tensor to reproduce it); ``"mean"``, ``"blur"``, a
        number, a tensor or a callable.
    score
        ``"prob"`` (p_c = softmax probability, the spec), ``"logit"`` (p_c = the raw score: for a model with
        one output, e.g. an embedding adapter with one target embedding or a regressor) or ``"sigmoid"`` (p_c =
        sigmoid of each output: a binary classifier with one logit, or a multi-label one); ``None`` (the default):
        ``"prob"``, or ``"logit"`` where the model has one output.
    max_evaluations
        Requests whose pass count bound (see below) exceeds it are refused before any model call.

    Shapes
    ------
    inputs ``(B, *S)`` -> the region values painted on the regions: ``(B, 1, H, W)`` for images, ``(B, F)`` for
    rows. meta: ``order`` ``(B, N)`` int64 (region ids, best first; -1 pads rows with fewer regions),
    ``curve_kept`` / ``curve_removed`` ``(B, N)`` float64 (p_c(merge(S_i)) and p_c(comp(S_i)) of the first
    i + 1 regions; NaN pads), ``curve_objective`` and ``gains`` ``(B, N)`` (F(S_i), F(S_i) - F(S_{i-1})),
    ``values`` ``(B, N)`` (the map value of each region id), ``regions`` (the label map), ``n_regions`` and
    ``search_passes`` per row, ``full_score`` / ``empty_score`` ``(B,)`` (p_c of the input and of the
    all-filled input), plus the base ``n_forward``, ``n_backward``, ``seed``, ``finite``.

    Cost (forward passes): per image 2 reference passes (the input, which also resolves ``target=None``, and
    the all-filled input) + the search's (naive N(N+1), predictive data-dependent and at most N(N+1) - 2;
    see the search module) + N if ``lambda_eff > 0``,
    plus the prior explainer's for ``regions="prior"`` (it runs first, on the same ``target``; one that takes
    ``max_evaluations``, as the perturbation methods do, gets what LIMA's own bound leaves of it, and is refused
    before any model call beyond that).

    References
    ----------
    Chen et al., "Less is More: Fewer Interpretable Region via Submodular Subset Selection", ICLR 2024;
    Chen et al., "Less is More: Efficient Black-box Attribution via Minimal Interpretable Subset Selection"
    (LiMA), arXiv 2504.00470.
    """

    def __init__(
        self,
        model: Any,
        *,
        search: str = "predictive",
        regions: str | torch.Tensor = "auto",
        n_regions: int = 49,
        compactness: float = 10.0,
        groups: Any = None,
        prior: str | torch.Tensor = "gradcam",
        prior_grid: int = 14,
        prior_cells: int | None = None,
        prior_options: Mapping[str, Any] | None = None,
        lambda_cons: float = 20.0,
        lambda_colla: float = 5.0,
        lambda_conf: float = 0.01,
        lambda_eff: float = 0.0,
        map: str = "rank",
        n_weakest: int = 8,
        eps: float = 0.1,
        k: int | None = None,
        lazy_batch: int = 1,
        n_predicted: int = 3,
        n_refresh: int = 0,
        n_neighbours: int = 0,
        n_kept: int = 16,
        slack: float = 0.0,
        ties: float = 0.0,
        fill: FillLike = "zero",
        score: str | None = None,
        **kwargs: Any,
    ) -> None:
        if score is not None and score not in SCORES:  # before the base class's check, which lists every space
            raise InvalidParameterError(
                f"score must be one of {SCORES} for 'lima' (p_c is a probability, the raw score of a one-output "
                f"model, or a one-logit classifier's sigmoid); got {score!r}.{did_you_mean(str(score), SCORES)}"
            )
        super().__init__(model, fill=fill, score=score, **kwargs)
        if not isinstance(search, str) or search not in SEARCHES:
            raise InvalidParameterError(
                f"search must be one of {tuple(SEARCHES)}; got {search!r}.{did_you_mean(search, SEARCHES)}"
            )
        regions = label_map_option(regions, "regions")  # a label map written as lists (a config, --option)
        if isinstance(regions, str):
            if regions not in R.REGION_BUILDERS:
                raise InvalidParameterError(
                    f"regions must be one of {R.REGION_BUILDERS}, an integer label map or a bool mask stack; "
                    f"got {regions!r}.{did_you_mean(regions, R.REGION_BUILDERS)}"
                )
        elif not isinstance(regions, torch.Tensor):
            raise InvalidParameterError(
                f"regions must be one of {R.REGION_BUILDERS}, an integer label map or a bool mask stack; "
                f"got {type(regions).__name__}."
            )
        _check_int("n_regions", n_regions)
        if regions == "spans" and groups is None:
            raise InvalidParameterError(
                "regions='spans' needs groups=: a list of (start, stop) token spans covering 0..T-1, or (T,) ids."
            )
        if isinstance(prior, str):
            if prior == "lima":
                raise InvalidParameterError("prior='lima' would recurse; use a cheap explainer such as 'gradcam'.")
            EXPLAINERS.get(prior, param="prior")  # unknown names list the known ones
        elif isinstance(prior, torch.Tensor) and prior.is_floating_point() and not bool(torch.isfinite(prior).all()):
            bad = int((~torch.isfinite(prior)).sum())
            raise InvalidParameterError(
                f"prior map holds {bad} non-finite values (NaN or inf), which cannot rank the patches; replace them "
                "(e.g. torch.nan_to_num(prior, nan=0.0, posinf=..., neginf=...)) before passing prior=."
            )
        elif not isinstance(prior, torch.Tensor):
            raise InvalidParameterError(
                f"prior must be a registered explainer name or a prior map tensor; got {type(prior).__name__}."
            )
        _check_int("prior_grid", prior_grid)
        if prior_cells is not None:
            _check_int("prior_cells", prior_cells)
        if prior_options is not None and not isinstance(prior_options, Mapping):
            raise InvalidParameterError(
                f"prior_options must be a dict of the prior explainer's options; got {type(prior_options).__name__}."
            )
        self._weights = Weights(lambda_cons, lambda_colla, lambda_conf, lambda_eff)
        if map not in MAPS:
            raise InvalidParameterError(f"map must be one of {MAPS}; got {map!r}.{did_you_mean(map, MAPS)}")
        _check_int("n_weakest", n_weakest)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise InvalidParameterError(f"eps must be a number in (0, 1); got {eps!r}.")
        if k is not None:
            _check_int("k", k)
        _check_int("lazy_batch", lazy_batch)
        _check_int("n_predicted", n_predicted)
        if isinstance(n_refresh, bool) or not isinstance(n_refresh, int) or n_refresh < 0:
            raise InvalidParameterError(f"n_refresh must be an int >= 0; got {n_refresh!r}.")
        self.search = search
        self.regions = regions
        self.n_regions = n_regions
        self.compactness = _positive("compactness", compactness)
        self.groups = [list(s) if isinstance(s, tuple) else s for s in groups] if isinstance(groups, list) else groups
        self.prior = prior
        self.prior_grid = prior_grid
        self.prior_cells = prior_cells
        self.prior_options = dict(prior_options) if prior_options is not None else None
        self.lambda_cons = float(lambda_cons)
        self.lambda_colla = float(lambda_colla)
        self.lambda_conf = float(lambda_conf)
        self.lambda_eff = float(lambda_eff)
        self.map = map
        self.n_weakest = n_weakest
        self.eps = float(eps)
        self.k = k
        self.lazy_batch = lazy_batch
        self.n_predicted = n_predicted
        self.n_refresh = n_refresh
        if isinstance(n_neighbours, bool) or not isinstance(n_neighbours, int) or n_neighbours < 0:
            raise InvalidParameterError(f"n_neighbours must be an int >= 0; got {n_neighbours!r}.")
        self.n_neighbours = n_neighbours
        if isinstance(n_kept, bool) or not isinstance(n_kept, int) or n_kept < 0:
            raise InvalidParameterError(f"n_kept must be an int >= 0; got {n_kept!r}.")
        self.n_kept = n_kept
        if isinstance(slack, bool) or not isinstance(slack, (int, float)) or not math.isfinite(slack) or slack < 0:
            raise InvalidParameterError(f"slack must be a finite number >= 0; got {slack!r}.")
        self.slack = float(slack)
        if isinstance(ties, bool) or not isinstance(ties, (int, float)) or not math.isfinite(ties) or ties < 0:
            raise InvalidParameterError(f"ties must be a finite number >= 0; got {ties!r}.")
        self.ties = float(ties)

    # ------------------------------------------------------------------ regions
    def _kind(self, x: torch.Tensor) -> str | None:
        if not isinstance(self.regions, str):
            return None
        timed = is_signal(self.adapter, x) or is_sequence(self.adapter, x)  # both cut into windows along time
        if self.regions == "auto":
            if x.ndim == 4:
                return "superpixels"
            if x.ndim == 2:
                return "columns"
            if timed:
                return "segments"
            hint = (
                " If inputs is one (C, H, W) image, add the batch dimension with inputs.unsqueeze(0); 1-D signals "
                "(B, C, L) get segments by default on a model whose first nn.Conv1d reads their C channels (a "
                f"function: when it says so, fn.signal_channels = {x.shape[1]}); sequences (B, T, D) on a model with a "
                "recurrent layer, an nn.MultiheadAttention or a Conv1d reading D channels, else with "
                "regions='segments' (windows along T)."
                if x.ndim == 3
                else ""
            )
            raise InvalidParameterError(
                f"regions='auto' has no default for inputs of shape {tuple(x.shape)} (superpixels for (B, C, H, W) "
                f"images, columns for (B, F) tables, segments for 1-D signals and sequences); pass a label map (B, *G) or (*G) as "
                f"regions=.{hint}"
            )
        if self.regions == "grid" and timed:
            return "segments"
        return self.regions

    def _build(self, kind: str | None, x: torch.Tensor) -> R.RegionMap:
        if kind is None:
            return R.from_label_map(self.regions, x, sequence=is_sequence(self.adapter, x))
        packing = getattr(self.adapter, "packing", None)
        if self.regions == "auto" and packing is not None and packing.has_image:
            # a model of several inputs with an image among them: the image in patches, the others value by value
            return R.columns(x, groups=packing.region_groups().to(x.device))
        if kind == "superpixels":
            return R.superpixels(x, n_regions=self.n_regions, compactness=self.compactness)
        if kind == "seeds":
            return R.seeds(x, n_regions=self.n_regions, compactness=self.compactness)
        if kind == "grid":
            return R.grid(x, n_regions=self.n_regions)
        if kind == "segments":  # a Conv1d's signal (B, C, L), else a sequence (B, T, D) of features per time step
            if hasattr(self.adapter, "tokenizer"):
                raise InvalidParameterError(
                    "regions='segments' cuts time series; a text model's regions are its words: use "
                    "whybox.explain_text(adapter, texts, 'lima')."
                )
            return R.segments(x, n_regions=self.n_regions, time_axis=2 if is_signal(self.adapter, x) else 1)
        if kind == "columns":
            return R.columns(x, groups=self.groups)
        return R.spans(x, groups=self.groups)

    def _cells(self, x: torch.Tensor) -> int:
        """d, the grid cells per region: ``prior_cells``, or enough for about ``n_regions`` regions on the grid the
        image allows (G x G, no finer than its pixels: an 8 x 8 digit has 64 cells, not 196)."""
        if self.prior_cells is not None:
            return self.prior_cells
        return max(1, math.ceil(self._grid_cells(x) / self.n_regions))

    def _grid_cells(self, x: torch.Tensor) -> int:
        return min(self.prior_grid, x.shape[-2]) * min(self.prior_grid, x.shape[-1])

    def _prior_count(self, x: torch.Tensor) -> int:
        R._image(x, "prior")
        return math.ceil(self._grid_cells(x) / self._cells(x))

    def _prior_regions(
        self, x: torch.Tensor, target: TargetLike, engine: MaskingEngine, n_backward: list[int], left: int | None
    ) -> R.RegionMap:
        """The prior-guided regions: the prior map given, or the prior explainer's on ``target`` (run before LIMA's
        own passes; one that takes ``max_evaluations`` gets ``left``, what LIMA's own bound leaves of the limit)."""
        if isinstance(self.prior, torch.Tensor):
            prior_map = self.prior.to(x.device)
        else:
            cls = EXPLAINERS.get(self.prior, param="prior")
            opts: dict[str, Any] = {"batch_size": self.batch_size, "mode": self.mode, "seed": self._call_seed}
            bounded = "max_evaluations" in _keyword_options(cls) and "max_evaluations" not in (self.prior_options or {})

            def over(reason: str) -> InvalidParameterError:
                total = self.max_evaluations or 0  # set whenever left is
                cheaper = "a cheaper prior (e.g. 'gradcam'), " if self.prior != "gradcam" else ""
                return InvalidParameterError(
                    f"'lima' with regions='prior': its own search may need {total - (left or 0):,} of "
                    f"max_evaluations={total:,} forward passes, which leaves the prior explainer {self.prior!r} "
                    f"{left:,}{reason}. Use {cheaper}fewer regions, or raise "
                    "max_evaluations (prior_options={'max_evaluations': ...} sets the prior's own limit)."
                )

            if left is not None and bounded:
                if left < 1:
                    raise over("")
                opts["max_evaluations"] = left
            if left is not None and not bounded and left < x.shape[0]:  # any prior reads each row at least once
                raise over(f", fewer than the {x.shape[0]:,} (one per row) any prior needs")
            opts.update(self.prior_options or {})
            try:
                explainer = cls(self.adapter, **opts)
            except TypeError as exc:
                raise InvalidParameterError(
                    f"prior_options do not fit the prior explainer {self.prior!r}: {exc}."
                ) from None
            try:
                e = explainer.explain(x, target=target)
            except InvalidParameterError as exc:
                if left is None or not bounded or "max_evaluations" not in str(exc):
                    raise
                raise over(f": {str(exc).rstrip('.')}") from None
            engine.n_forward += int(e.meta["n_forward"])
            n_backward[0] += int(e.meta["n_backward"])
            if left is not None and not bounded and int(e.meta["n_forward"]) > left:
                # a prior without a limit of its own (gradients, CAMs): its passes and LIMA's bound must fit too
                raise over(f", but it ran {int(e.meta['n_forward']):,}")
            prior_map = e.attributions
        return R.prior_patches(prior_map, x, grid_size=self.prior_grid, cells_per_region=self._cells(x))

    # ------------------------------------------------------------------ the call
    def _explain(
        self, x: torch.Tensor, target: TargetLike, engine: MaskingEngine, n_backward: list[int]
    ) -> tuple[torch.Tensor, Target, dict[str, Any]]:
        b = x.shape[0]
        kind = self._kind(x)
        region_map = None if kind == "prior" else self._build(kind, x)
        fills = self._fills(x)
        null = None  # a text's CLS, SEP and pads: never candidates, attribution 0
        # (a causal LM's generation steps too: each step's specials and future tokens, which its fill keeps)
        if region_map is not None and (is_text_adapter(self.adapter) or getattr(self.adapter, "null_regions", False)):
            region_map, null = R.merge_null(region_map, x, fills)
        counts = region_map.n_regions if region_map is not None else [self._prior_count(x)] * b
        search = SEARCHES[self.search]
        options = SearchOptions(
            n_weakest=self.n_weakest,
            eps=self.eps,
            k=self.k,
            lazy_batch=self.lazy_batch,
            n_predicted=self.n_predicted,
            n_refresh=self.n_refresh,
            n_neighbours=self.n_neighbours,
            n_kept=self.n_kept,
            slack=self.slack,
            ties=self.ties,
            seed=self._call_seed,
        )
        eff = self.lambda_eff > 0
        cost = sum(2 + search.max_passes(n, options) + (n if eff else 0) for n in counts)
        if self.max_evaluations is not None and cost > self.max_evaluations:
            raise InvalidParameterError(
                f"'lima' with search={self.search!r} would need up to {cost:,} forward passes ({b} rows, "
                f"{max(counts)} regions), more than max_evaluations={self.max_evaluations:,}; use fewer regions "
                "(n_regions=), a cheaper search ('bidirectional', 'lazy' or 'stochastic'), or raise "
                "max_evaluations (None: no limit)."
            )
        if region_map is None:  # the prior explainer first: refused (if it must be) before any model call
            left = None if self.max_evaluations is None else self.max_evaluations - cost
            region_map = self._prior_regions(x, target, engine, n_backward, left)
        raw_x = engine.forward(x)
        tgt = resolve_target(target, raw_x)
        score = resolve_score(self.score, raw_x.shape[-1])
        # K = 1 with score='prob' is an error before the fill's pass; outputs that already look like probabilities
        # warn on every row, as the metrics read them (one row of raw logits can sum to 1 by chance)
        apply_score_space(raw_x, score)
        raw_fill = engine.forward(fills)
        scorer = EngineScorer(
            engine,
            x,
            fills,
            region_map.labels,
            region_map.n_regions,
            tgt,
            self._weights,
            score,
            raw_x,
            raw_fill,
        )
        results = search.run(scorer, options)
        nmax = region_map.n_max
        order = torch.full((b, nmax), -1, dtype=torch.int64)
        curves = {
            name: torch.full((b, nmax), math.nan, dtype=F64) for name in ("kept", "removed", "objective", "gains")
        }
        values = torch.zeros(b, nmax, dtype=F64)
        for r, res in enumerate(results):
            n = region_map.n_regions[r]
            order[r, :n] = res.order
            curves["kept"][r, :n] = res.kept
            curves["removed"][r, :n] = res.removed
            curves["objective"][r, :n] = res.objective
            curves["gains"][r, :n] = res.gains
            if self.map == "rank":
                values[r, :n] = rank_values(res.order, n)
            else:
                e = scorer.empty[r]
                values[r, :n] = gain_values(res, float(e.kept[0]), float(e.removed[0]))
        labels = region_map.labels
        vals_dev = values.to(labels.device)
        attr = vals_dev.gather(1, labels.reshape(b, -1)).view(labels.shape)
        if null is not None:
            attr = attr.masked_fill(null.to(attr.device), 0.0)
        # a label map shared along the time or space axes (feature groups (1, 1, D) of a sequence, channel groups
        # (1, C, 1) of a signal) is painted over them: the map reads as every other of its kind ((B, T, D), (B, C, L))
        along = (
            range(2, x.ndim) if x.ndim >= 4 else ((2,) if is_signal(self.adapter, x) else (1,)) if x.ndim == 3 else (1,)
        )
        if attr.ndim == x.ndim and any(attr.shape[a] == 1 < x.shape[a] for a in along):  # those axes alone: an
            # image map shared by the channels stays (B, 1, H, W)
            attr = attr.expand(*(x.shape[a] if a in along else attr.shape[a] for a in range(x.ndim))).contiguous()
        dev = x.device
        meta = {
            "order": order.to(dev),
            "curve_kept": curves["kept"].to(dev),
            "curve_removed": curves["removed"].to(dev),
            "curve_objective": curves["objective"].to(dev),
            "gains": curves["gains"].to(dev),
            "values": values.to(dev),
            "regions": labels,
            "n_regions": list(region_map.n_regions),
            "n_features": list(region_map.n_regions),  # each row's regions, ids 0..n-1 (stability reads this)
            "search_passes": [res.n_forward for res in results],
            "full_score": torch.cat([s.kept for s in scorer.full]).to(dev),
            "empty_score": torch.cat([s.kept for s in scorer.empty]).to(dev),
        }
        return attr.to(x.dtype), tgt, meta
