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

from whybox.errors import InvalidParameterError
from whybox.metrics.base import Context, Metric, check_choice, check_int, make_explain_fn, tie_order
from whybox.registry import METRICS

__all__ = ["Stability", "kendall_tau_b", "topk_sets"]

MEASURES = ("jaccard", "kendall", "vsi")


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


@METRICS.register("stability")
class Stability(Metric):
    """Run the same explainer ``n_runs`` times with seeds ``seed .. seed + n_runs - 1`` and measure agreement.

    ``explanation`` may be a method name (``whybox.evaluate(model, x, "lime", "stability")``) or an
    Explanation (its method and params are re-run); ``explainer=`` (a registry name or a callable
    ``(model, inputs, target) -> attributions``, which then gets no seed) and ``explainer_params`` override them.
    Features (``features``): ``"auto"`` uses the per-region weights ``meta["values"]`` ``(B, M)`` when the
    explainer reports them (LIME, Kernel SHAP, Shapley on superpixels: the same segmentation in every run), else
    the attributions; ``"attributions"`` always ranks image pixels (channels summed) or input elements. Ranking by
    ``|weight|`` (``abs=True``).

    Per row, averaged over the ``R (R - 1) / 2`` pairs of runs: top-``k`` Jaccard ``|T_a & T_b| / |T_a | T_b|``
    (ties by the seeded rule), Kendall tau-b on the full vectors, and VSI ``= 100 * mean |S_a & S_b| / k``
    (Visani's variable stability index with S = the top-``k`` features of a call). Scores: ``measure`` (default
    ``"jaccard"``); higher is more stable; a deterministic explainer gives J = tau = 1, VSI = 100. CSI needs the
    local model's confidence intervals, which the explainers do not expose, so it is not computed.

    Curves: none. ``meta``: ``"jaccard"``, ``"kendall"``, ``"vsi"``, ``"mean_std"`` ``(B,)`` and ``"std"``
    (per-feature standard deviation over the runs, ddof 1, shaped like the attributions).
    """

    higher_is_better = True
    needs_attributions = False

    def __init__(
        self,
        *,
        n_runs: int = 10,
        k: int = 10,
        measure: str = "jaccard",
        abs: bool = True,
        explainer: Any = None,
        explainer_params: dict[str, Any] | None = None,
        features: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.features = check_choice("features", features, ("auto", "attributions"))
        self.n_runs = check_int("n_runs", n_runs, 2)
        self.k = check_int("k", k)
        self.measure = check_choice("measure", measure, MEASURES)
        self.abs = bool(abs)
        self.explainer = explainer
        self.explainer_params = dict(explainer_params or {})

    def _compute(self, ctx: Context) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
        if ctx.target is None or ctx.adapter is None:
            raise InvalidParameterError("stability needs a model.")
        spec = self.explainer if self.explainer is not None else (None if ctx.explanation is not None else ctx.method)
        fn, name = make_explain_fn(spec, ctx.explanation, self.explainer_params)
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
        if use_values:
            feats = torch.stack([v.detach().to("cpu", torch.float64) for v in values])  # (R, B, M)
        else:
            maps = stack.sum(2) if (x.ndim == 4 and stack.ndim == 5) else stack
            feats = maps.reshape(self.n_runs, b, -1)
        rank_vals = feats.abs() if self.abs else feats
        k = min(self.k, feats.shape[2])
        tops = [topk_sets(rank_vals[r], k, self.seed) for r in range(self.n_runs)]
        jac, ovl, tau = [], [], []
        for i, j in itertools.combinations(range(self.n_runs), 2):
            inter = (tops[i] & tops[j]).sum(1).to(torch.float64)
            union = (tops[i] | tops[j]).sum(1).to(torch.float64)
            jac.append(inter / union)
            ovl.append(inter / k)
            tau.append(kendall_tau_b(feats[i], feats[j]))
        jaccard = torch.stack(jac, 1).mean(1)
        vsi = 100 * torch.stack(ovl, 1).mean(1)
        taus = torch.stack(tau, 1)
        ok = ~torch.isnan(taus)
        kendall = torch.where(
            ok.any(1),
            torch.where(ok, taus, 0).sum(1) / ok.sum(1).clamp_min(1),
            torch.full((b,), math.nan, dtype=torch.float64),
        )
        table = {"jaccard": jaccard, "kendall": kendall, "vsi": vsi}
        meta: dict[str, Any] = {
            **table,
            "mean_std": std.reshape(b, -1).mean(1),
            "std": std,
            "k": k,
            "features": "values" if use_values else "attributions",
            "seeds": list(range(self.seed, self.seed + self.n_runs)),
            "explainer": name,
        }
        return table[self.measure], {}, meta
