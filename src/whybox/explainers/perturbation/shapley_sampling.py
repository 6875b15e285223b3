"""Shapley value sampling (Castro, Gómez & Tejada 2009): average marginal contributions over permutations."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from whybox.errors import check_bool
from whybox.explainers.perturbation._common import F64, ShapleyExplainer, _check_int
from whybox.masking.engine import MaskingEngine
from whybox.models.targets import Target, TargetLike
from whybox.registry import EXPLAINERS

__all__ = ["ShapleySampling", "permutation_contributions", "permutations"]


def permutations(m: int, n: int, *, antithetic: bool, generator: torch.Generator) -> torch.Tensor:
    """``(W, m)`` feature orders: n uniform permutations, each followed by its reverse when ``antithetic``."""
    perms = torch.stack([torch.randperm(m, generator=generator) for _ in range(n)])
    if antithetic:
        perms = torch.stack([perms, perms.flip(1)], 1).flatten(0, 1)
    return perms


def permutation_contributions(
    perms: torch.Tensor, v0: torch.Tensor, mid: torch.Tensor, v1: torch.Tensor
) -> torch.Tensor:
    """Marginal contributions ``(B, W, m)`` per walk and feature.

    Walk w adds the features in the order ``perms[w]``; ``mid`` ``(B, W, m-1)`` holds the values after
    1..m-1 additions, ``v0``/``v1`` ``(B,)`` the values of ∅ and of the full set. The contributions of a walk
    telescope to v1 - v0 exactly.
    """
    b, w = mid.shape[0], perms.shape[0]
    chain = torch.cat([v0.view(-1, 1, 1).expand(b, w, 1), mid, v1.view(-1, 1, 1).expand(b, w, 1)], 2).to(F64)
    diffs = chain[..., 1:] - chain[..., :-1]
    out = torch.empty_like(diffs)
    return out.scatter_(2, perms.to(diffs.device).unsqueeze(0).expand(b, -1, -1), diffs)


@EXPLAINERS.register("shapley_sampling")
class ShapleySampling(ShapleyExplainer):
    """φ̂_i = mean over random feature orders of v(Pre_i ∪ {i}) - v(Pre_i), each order a walk from ∅ to N.

    Parameters
    ----------
    n_permutations
        Random orders m; with ``antithetic`` each is also walked in reverse (2m walks).
    antithetic
        Pair each order with its reverse (Mitchell et al. 2022): lower variance at the same cost per walk.
    fill, background
        The value function (see :class:`ShapleyExplainer`).
    features
        See :class:`RegionExplainer`; ``"auto"`` = SLIC superpixels on images.

    Efficiency is exact for any m (each walk telescopes); a feature the model ignores gets exactly 0.

    Shapes
    ------
    inputs ``(B, *S)`` -> φ̂ painted on the groups; meta: ``values`` and ``se`` (standard error, from the
    per-walk, or per antithetic pair, contributions) ``(B, M)``, ``base_value`` ``(B,)``, ``n_features``.
    Cost: ``B + Σ_rows R (1 + W (M - 1))`` forward passes (W walks).

    References
    ----------
    Castro, Gómez & Tejada, "Polynomial calculation of the Shapley value based on sampling", Computers &
    Operations Research 2009; Mitchell et al., "Sampling Permutations for Shapley Value Estimation", JMLR 2022.
    """

    def __init__(self, model: Any, *, n_permutations: int = 25, antithetic: bool = True, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.n_permutations = _check_int("n_permutations", n_permutations)
        self.antithetic = check_bool("antithetic", antithetic)

    def _explain(
        self, x: torch.Tensor, target: TargetLike, engine: MaskingEngine, n_backward: list[int]
    ) -> tuple[torch.Tensor, Target, dict[str, Any]]:
        fills = self._value_fills(x)
        regions = self._regions(x, fills)
        sizes = regions.sizes
        r, b = fills.shape[1], x.shape[0]
        walks = self.n_permutations * (2 if self.antithetic else 1)
        cost = b + sum(r * (1 + walks * (m - 1)) for m in sizes if m > 0)
        self._check_cost(cost, f"{b} clean passes + per row (1 + {walks} walks x (M - 1)) x {r} fill row(s)")
        tgt, fx = self._clean(x, target, engine)
        mmax = max(max(sizes), 1)
        values = torch.zeros(b, mmax, dtype=F64, device=x.device)
        se = torch.zeros(b, mmax, dtype=F64, device=x.device)
        base = fx.clone()
        perms = {
            m: permutations(m, self.n_permutations, antithetic=self.antithetic, generator=self.row_generator())
            for m in set(sizes)
            if m > 0
        }

        def design(ks: torch.Tensor, ranks: torch.Tensor, steps: int) -> torch.Tensor:
            """Mask 0 is ∅; mask 1 + w (M-1) + (j-1) holds the first j features of walk w."""
            w = (ks - 1).clamp_min(0) // steps
            j = (ks - 1).clamp_min(0) % steps + 1
            return (ranks[w] < j.view(-1, 1)) & (ks > 0).view(-1, 1)

        ranks = {m: p.argsort(1).to(x.device) for m, p in perms.items()}  # ranks[w, i]: the step adding i in walk w
        designs = {
            m: (1 + walks * (m - 1), functools.partial(design, ranks=r, steps=max(m - 1, 1))) for m, r in ranks.items()
        }
        scores = self._region_scores(engine, x, fills, tgt, regions, designs)
        for m, s in scores.items():
            rows = regions.by_size()[m]
            contrib = permutation_contributions(perms[m], s[:, 0], s[:, 1:].reshape(len(rows), walks, m - 1), fx[rows])
            values[rows, :m] = contrib.mean(1)
            units = contrib.view(len(rows), self.n_permutations, 2, m).mean(2) if self.antithetic else contrib
            k = units.shape[1]
            se[rows, :m] = units.std(1, correction=1) / math.sqrt(k) if k > 1 else math.inf
            base[rows] = s[:, 0]
        attr, full = regions.paint(values)
        _, full_se = regions.paint(se)
        meta = {
            "values": full,
            "se": full_se,
            "base_value": base,
            "n_features": sizes,
            "n_walks": walks,
            "kept_features": regions.kept(),
        }
        return attr.to(x.dtype), tgt, meta
