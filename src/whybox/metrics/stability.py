"""Stability of a stochastic explainer over repeated runs (LIME, Kernel SHAP, RISE, SmoothGrad, ...).

References
----------
Visani, Bagli, Chesani, Poluzzi & Capuzzo, "Statistical stability indices for LIME: obtaining reliable
explanations for machine learning models", JORS 2022.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch

from whybox.errors import InvalidParameterError, check_bool
from whybox.metrics.base import (
    Context,
    Metric,
    check_choice,
    check_int,
    check_options,
    make_explain_fn,
    reads_sequence,
    tie_order,
)
from whybox.registry import METRICS

__all__ = ["Stability", "ci_overlap", "csi_scores", "kendall_tau_b", "topk_sets"]

MEASURES = ("jaccard", "kendall", "vsi", "csi")
CI_Z = 1.96  # two-sided 95 % normal quantile, Visani's CI = beta +- 1.96 sd


def topk_sets(values: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """``(B, N)`` -> ``(B, N)`` bool: the ``k`` largest of each row, ties by the seeded stable rule."""
    order = tie_order(values, seed)[:, :k]
    return torch.zeros_like(values, dtype=torch.bool).scatter_(1, order, True)


def kendall_tau_b(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Kendall tau-b (``scipy.stats.kendalltau``, which handles ties); NaN for a constant row."""
    from scipy.stats import kendalltau

    an, bn = a.detach().cpu().double().numpy(), b.detach().cpu().double().numpy()
    out = []
    for u, v in zip(an, bn, strict=True):
        if np.ptp(u) == 0 or np.ptp(v) == 0:
            out.append(math.nan)
        else:
            out.append(float(kendalltau(u, v).statistic))
    return torch.tensor(out, dtype=torch.float64)


def ci_overlap(lo_a: torch.Tensor, hi_a: torch.Tensor, lo_b: torch.Tensor, hi_b: torch.Tensor) -> torch.Tensor:
    """Element-wise: do the intervals ``[lo_a, hi_a]`` and ``[lo_b, hi_b]`` overlap strictly?

    ``max(lo) < min(hi)``: intervals that only touch do not overlap. Two identical intervals always do, even of
    zero width (a surrogate that fits exactly gives ``sd = 0``, and identical calls must agree).
    """
    strict = torch.maximum(lo_a, lo_b) < torch.minimum(hi_a, hi_b)
    return strict | ((lo_a == lo_b) & (hi_a == hi_b))


def csi_scores(
    values: torch.Tensor, sd: torch.Tensor, selected: torch.Tensor, *, z: float = CI_Z
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Visani's coefficient stability index from ``R`` calls.

    Parameters
    ----------
    values, sd
        ``(R, B, M)`` coefficients and their standard deviations; CI_j = ``values ± z · sd``.
    selected
        ``(R, B, M)`` bool: the features each call selected (its top-``k``). A feature with a non-finite value
        or sd counts as not selected.

    Returns
    -------
    ``csi`` ``(B,)``: the mean over the kept features of CSI_j = 100 · share of the pairs of calls that both
    selected j whose CIs overlap (:func:`ci_overlap`); NaN when no feature is kept. ``per_feature`` ``(B, M)``:
    CSI_j, NaN for features selected fewer than twice. ``dropped`` ``(B,)`` int64: the features selected by
    exactly one call (left out, since they form no pair).
    """
    sel = selected & torch.isfinite(values) & torch.isfinite(sd)
    lo, hi = values - z * sd, values + z * sd
    pairs = torch.zeros(sel.shape[1:], dtype=torch.float64)
    agree = torch.zeros(sel.shape[1:], dtype=torch.float64)
    for a, b in itertools.combinations(range(sel.shape[0]), 2):
        both = sel[a] & sel[b]
        pairs += both.to(torch.float64)
        agree += (both & ci_overlap(lo[a], hi[a], lo[b], hi[b])).to(torch.float64)
    n_sel = sel.sum(0)
    kept = n_sel >= 2
    per_feature = torch.where(kept, 100 * agree / pairs.clamp_min(1), torch.full_like(agree, math.nan))
    n_kept = kept.sum(1)
    csi = torch.where(
        n_kept > 0,
        torch.where(kept, per_feature, 0).sum(1) / n_kept.clamp_min(1),
        torch.full((sel.shape[1],), math.nan, dtype=torch.float64),
    )
    return csi, per_feature, (n_sel == 1).sum(1).to(torch.int64)


def _row_widths(expls: list[Any], b: int, m: int) -> list[int]:
    """Each row's own number of features: ``meta["n_features"]`` when every run reports the same ``b`` counts
    (at most ``m``, the padded width of ``meta["values"]``), else ``m`` for every row."""
    counts = [e.meta.get("n_features") for e in expls]
    first = counts[0]
    if (
        isinstance(first, (list, tuple))
        and len(first) == b
        and all(isinstance(n, int) and 1 <= n <= m for n in first)
        and all(c == first for c in counts)
    ):
        return list(first)
    return [m] * b


@METRICS.register("stability")
class Stability(Metric):
    """Run the same explainer ``n_runs`` times with seeds ``seed .. seed + n_runs - 1`` and measure agreement.

    ``explanation`` may be a method name (``whybox.evaluate(model, x, "lime", "stability")``) or an
    Explanation (its method and params are re-run); ``explainer=`` (a registry name or a callable
    ``(model, inputs, target) -> attributions``, which then gets no seed) and ``explainer_params`` override them.
    Features (``features``): ``"auto"`` uses the per-region weights ``meta["values"]`` ``(B, M)`` when the
    explainer reports them (LIME, Kernel SHAP, Shapley on superpixels: the same segmentation in every run), else
    the attributions; ``"attributions"`` always ranks image pixels (channels summed) or input elements. ``regions``
    (a label map, as the other metrics') ranks the map pooled over them instead (``pool``: ``"sum"`` or ``"mean"``);
    on texts given to a text adapter they are its words, pooled as :func:`~whybox.explain_text` pools them, so a
    text scores over its own words (not its pads, specials and embedding elements). Ranking by ``|weight|``
    (``abs=True``).

    Per row, averaged over the ``R (R - 1) / 2`` pairs of runs: top-``k`` Jaccard ``|T_a & T_b| / |T_a | T_b|``
    (ties by the seeded rule), Kendall tau-b on the full vectors (|weight| with abs=True), and VSI ``= 100 * mean |S_a & S_b| / k``
    (Visani's variable stability index with S = the top-``k`` features of a call); ``k`` defaults to 10, or half
    the features when there are fewer than 20 (a top-k of every feature would agree by construction). A row is
    scored over its own features (``meta["n_features"]`` of a batch of superpixel maps of different counts), so
    ``meta["k"]`` is a list where rows differ. CSI (Visani's coefficient stability index, :func:`csi_scores`)
    when the explainer reports the standard deviations of its per-feature weights (``meta["coef_sd"]`` ``(B, M)``
    next to ``meta["values"]``: LIME with its ridge surrogate): per feature, CI = beta ± 1.96 sd of each call,
    CSI_j = 100 · share of the pairs of calls that both selected j (top-``k``) whose CIs overlap strictly;
    features selected fewer than twice are dropped; CSI = their mean.
    Scores: ``measure`` (default ``"jaccard"``); higher is more stable; a deterministic explainer gives
    J = tau = 1, VSI = 100 (and CSI = 100). ``measure="csi"`` with an explainer that reports no ``coef_sd``
    raises :class:`~whybox.InvalidParameterError`.

    Curves: none. ``meta``: ``"jaccard"``, ``"kendall"``, ``"vsi"``, ``"csi"`` (NaN, with ``"csi_note"``
    saying why, when it cannot be computed), ``"csi_dropped"`` (features selected by one call only, int64),
    ``"csi_features"`` ``(B, M)`` (CSI_j, NaN where dropped or never selected; ``None`` without CSI),
    ``"mean_std"`` ``(B,)``, ``"std"`` (per-feature standard deviation over the runs, ddof 1, shaped like the
    attributions) and ``"mean"`` (the mean attributions over the runs, same shape).
    """

    higher_is_better = True
    needs_attributions = False
    reads_clean = False

    def __init__(
        self,
        *,
        n_runs: int = 10,
        k: int | None = None,
        measure: str = "jaccard",
        abs: bool = True,
        explainer: Any = None,
        explainer_params: dict[str, Any] | None = None,
        features: str = "auto",
        regions: Any = None,
        pool: str = "sum",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from whybox.metrics.eraser import _check_pool, check_regions

        self.features = check_choice("features", features, ("auto", "attributions"))
        self.regions = check_regions(regions, "the attributions' own features")
        self.pool = _check_pool(pool)
        self.n_runs = check_int("n_runs", n_runs, 2)
        self.k = None if k is None else check_int("k", k)
        self.measure = check_choice("measure", measure, MEASURES)
        self.abs = check_bool("abs", abs)
        self.explainer = explainer
        self.explainer_params = check_options("explainer_params", explainer_params)

    def _top_k(self, m: int) -> int:
        """The top-``k`` size for ``m`` features: ``k`` as given, else 10 or half the features when fewer than 20.
        A ``k`` that selects every feature makes the top-k agreement 1 by construction: refused for the measures
        that read it."""
        if self.k is None:
            return max(1, min(10, m // 2))
        if self.k >= m and m > 1 and self.measure in ("jaccard", "vsi"):
            raise InvalidParameterError(
                f"k={self.k} selects all {m} features, so every pair of runs agrees on its top-k by construction "
                f"(measure={self.measure!r} would read 1). Give k below {m} (e.g. k={max(1, m // 2)}), or leave k "
                "out (10, or half the features when fewer than 20), or measure='kendall'."
            )
        return min(self.k, m)

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        if ctx.target is None or ctx.adapter is None:
            raise InvalidParameterError("stability needs a model.")
        spec = self.explainer if self.explainer is not None else (None if ctx.explanation is not None else ctx.method)
        fn, name = make_explain_fn(spec, ctx.explanation, self.explainer_params, ctx.passes)
        x = ctx.x
        b = x.shape[0]
        expls = [fn(ctx.adapter, x, ctx.target, self.seed + r) for r in range(self.n_runs)]
        stack = torch.stack([e.attributions.detach().to("cpu", torch.float64) for e in expls])  # (R, B, ...)
        std = stack.std(0, unbiased=True)
        values = [v for e in expls if isinstance(v := e.meta.get("values"), torch.Tensor) and v.ndim == 2]
        use_values = (
            self.features == "auto"
            and len(values) == self.n_runs
            and all(v.shape == values[0].shape and v.shape[0] == b for v in values)
        )
        widths: list[int] | None = None
        kept: torch.Tensor | None = None
        if use_values:
            feats = torch.stack([v.detach().to("cpu", torch.float64) for v in values])  # (R, B, M)
            first_kept = expls[0].meta.get("kept_features")
            if isinstance(first_kept, torch.Tensor) and tuple(first_kept.shape) == tuple(feats.shape[1:]):
                # each row's own features first, in id order (ids with gaps, a user's segmentation {0, 2, 5}),
                # so a row of n features is scored over them, not over the first n columns
                kept = first_kept.detach().cpu().to(torch.bool)
                first = torch.argsort((~kept).to(torch.int8), dim=1, stable=True)
                feats = feats.gather(2, first.unsqueeze(0).expand(self.n_runs, -1, -1))
                widths = [max(1, int(c)) for c in kept.sum(1).tolist()]
        elif self.regions is not None:  # the map pooled over regions (a text's words: explain_text's word values)
            from whybox.metrics.base import present_features
            from whybox.metrics.eraser import pool_attributions, resolve_regions

            groups = resolve_regions(self.regions, x, signal=ctx.signal, sequence=reads_sequence(ctx))
            feats = torch.stack(
                [
                    pool_attributions(e.attributions, groups, x, pool=self.pool, signal=ctx.signal)
                    .cpu()
                    .nan_to_num(0.0)
                    for e in expls
                ]
            )
            # each row scored over its own regions alone (ids a map leaves unused, a text's specials and pads left
            # out): its present regions moved first, in id order, and the row cut to their count
            present = present_features(ctx, groups).cpu()
            first = torch.argsort((~present).to(torch.int8), dim=1, stable=True)
            feats = feats.gather(2, first.unsqueeze(0).expand(self.n_runs, -1, -1))
            widths = [max(1, int(c)) for c in present.sum(1).tolist()]
        else:
            pooled = (
                x.ndim == 4 and stack.ndim == 5
            )  # (R, B, C, H, W): channels summed (|.| first with abs, METRICS.md)
            maps = (stack.abs() if self.abs else stack).sum(2) if pooled else stack
            feats = maps.reshape(self.n_runs, b, -1)
        sds = [v for e in expls if isinstance(v := e.meta.get("coef_sd"), torch.Tensor)]
        has_sd = use_values and len(sds) == self.n_runs and all(s.shape == feats.shape[1:] for s in sds)
        sd = torch.stack([s.detach().to("cpu", torch.float64) for s in sds]) if has_sd else None
        if sd is not None and kept is not None:  # the same columns as the coefficients
            sd = sd.gather(2, torch.argsort((~kept).to(torch.int8), dim=1, stable=True).unsqueeze(0).expand_as(sd))
        # Rows of fewer features (superpixels, a per-row label map) are padded to the widest in meta["values"]:
        # each row is scored over its own features, so its score is the one it gets alone.
        if widths is None:
            widths = _row_widths(expls, b, feats.shape[2]) if use_values else [feats.shape[2]] * b
        nan = torch.full((b,), math.nan, dtype=torch.float64)
        jaccard, vsi, kendall, csi = nan.clone(), nan.clone(), nan.clone(), nan.clone()
        per_feature = torch.full(feats.shape[1:], math.nan, dtype=torch.float64)
        dropped = torch.zeros(b, dtype=torch.int64)
        ks = [0] * b
        for w in sorted(set(widths)):
            rows = torch.tensor([i for i in range(b) if widths[i] == w])
            f = feats[:, rows, :w]
            k = self._top_k(w)
            for i in rows.tolist():
                ks[i] = k
            rank_vals = f.abs() if self.abs else f
            tops = torch.stack([topk_sets(rank_vals[r], k, self.seed) for r in range(self.n_runs)])
            jac, ovl, tau = [], [], []
            for i, j in itertools.combinations(range(self.n_runs), 2):
                inter = (tops[i] & tops[j]).sum(1).to(torch.float64)
                union = (tops[i] | tops[j]).sum(1).to(torch.float64)
                jac.append(inter / union)
                ovl.append(inter / k)
                tau.append(kendall_tau_b(rank_vals[i], rank_vals[j]))  # the ranking abs= sets, as the top-k
            jaccard[rows] = torch.stack(jac, 1).mean(1)
            vsi[rows] = 100 * torch.stack(ovl, 1).mean(1)
            taus = torch.stack(tau, 1)
            ok = ~torch.isnan(taus)
            kendall[rows] = torch.where(
                ok.any(1), torch.where(ok, taus, 0).sum(1) / ok.sum(1).clamp_min(1), math.nan
            ).to(torch.float64)
            if sd is not None:
                c, pf, dr = csi_scores(f, sd[:, rows, :w], tops)
                csi[rows], dropped[rows] = c, dr
                per_feature[rows, :w] = pf
        csi_meta: dict[str, Any]
        if kept is not None:  # per feature id again (the columns of meta["values"])
            back = torch.argsort((~kept).to(torch.int8), dim=1, stable=True)
            per_feature = torch.full_like(per_feature, math.nan).scatter_(1, back, per_feature)
        if sd is not None:
            csi_meta = {"csi_dropped": dropped, "csi_features": per_feature}
            if bool(torch.isnan(csi).any()):
                csi_meta["csi_note"] = (
                    "CSI is NaN where the surrogate's coefficient standard deviations are undefined: no residual degrees "
                    "of freedom (n_samples at most the number of features) or a perfect fit. Give the explainer more "
                    "samples than features (n_samples=...), or use measure='jaccard', 'kendall' or 'vsi'."
                )
        else:
            why = (
                f"explainer {name!r} reports no coefficient standard deviations (meta['coef_sd'] next to "
                "meta['values'])"
                if use_values or self.features == "auto"
                else "features='attributions' has no coefficient standard deviations"
            )
            if self.measure == "csi":
                raise InvalidParameterError(
                    f"measure='csi' needs the local model's confidence intervals, but {why}; use LIME with its "
                    "ridge surrogate (surrogate='ridge', features='auto'), or measure='jaccard', 'kendall' or 'vsi'."
                )
            csi_meta = {"csi_dropped": dropped, "csi_features": None, "csi_note": why}
        k_meta: int | list[int] = ks[0] if len(set(ks)) == 1 else ks
        table = {"jaccard": jaccard, "kendall": kendall, "vsi": vsi, "csi": csi}
        meta: dict[str, Any] = {
            **table,
            **csi_meta,
            "mean_std": std.reshape(b, -1).mean(1),
            "std": std,
            "mean": stack.mean(0),
            "k": k_meta,
            "features": "values" if use_values else "attributions",
            "seeds": list(range(self.seed, self.seed + self.n_runs)),
            "explainer": name,
        }
        return table[self.measure], {}, meta
