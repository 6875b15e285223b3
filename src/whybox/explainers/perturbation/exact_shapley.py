"""Exact Shapley values by enumerating all 2^M coalitions (the oracle of the sampling methods)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from whybox.errors import InvalidParameterError, check_bool
from whybox.explainers.perturbation._common import F64, ShapleyExplainer, shapley_weights
from whybox.masking.engine import MaskingEngine
from whybox.models.targets import Target, TargetLike
from whybox.registry import EXPLAINERS

__all__ = ["MAX_EXACT_FEATURES", "ExactShapley", "coalition_masks", "shapley_from_values"]

MAX_EXACT_FEATURES = 16  # 65,536 coalitions per row


def coalition_masks(ks: torch.Tensor, m: int) -> torch.Tensor:
    """Coalition k as ``(n, m)`` bool: feature i is present when bit i of k is set."""
    return ((ks.view(-1, 1) >> torch.arange(m, device=ks.device)) & 1).bool()


def shapley_from_values(v: torch.Tensor, m: int) -> torch.Tensor:
    """φ_i = Σ_{S ∌ i} |S|!(m-|S|-1)!/m! [v(S ∪ {i}) - v(S)] from ``v`` ``(B, 2^m)`` indexed by coalition bits.

    Returns ``(B, m)`` float64.
    """
    v = v.to(F64)
    all_s = torch.arange(2**m, device=v.device)
    size = coalition_masks(all_s, m).sum(1)
    w = shapley_weights(m).to(v.device)
    out = torch.empty(v.shape[0], m, dtype=F64, device=v.device)
    for i in range(m):
        without = all_s[((all_s >> i) & 1) == 0]
        out[:, i] = (v[:, without | (1 << i)] - v[:, without]) @ w[size[without]]
    return out


@EXPLAINERS.register("exact_shapley")
class ExactShapley(ShapleyExplainer):
    """Shapley values of M features from all 2^M coalitions, each evaluated once (batched by the engine).

    Parameters
    ----------
    allow_large
        Features beyond 16 (65,536 coalitions per row) are refused unless this is set; the error quotes the
        cost. ``max_evaluations`` applies in any case.
    fill, background
        The value function (see :class:`ShapleyExplainer`).
    features
        See :class:`RegionExplainer`; ``"auto"`` = a 3 x 3 grid on images (9 features, 512 coalitions).

    Shapes
    ------
    inputs ``(B, *S)`` -> φ painted on the groups; meta ``values`` ``(B, M)``, ``base_value`` ``(B,)``,
    ``n_features``. Cost: ``B + Σ_rows R (2^M - 1)`` forward passes.
    """

    auto_features: ClassVar[str] = "grid3"

    def __init__(self, model: Any, *, allow_large: bool = False, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.allow_large = check_bool("allow_large", allow_large)

    def feature_counts(self, inputs: Any) -> list[int]:
        """Each row's M, the features the enumeration covers (2^M coalitions), without a model pass: what the cost
        check before compute reads (a run that picks its methods leaves this one out above the limit)."""
        x = self._validate(inputs)
        if not hasattr(self, "_call_seed"):  # a random fill's draws are seeded per call
            self._call_seed = self.seed if self.seed is not None else 0
        return list(self._regions(x, self._value_fills(x)).sizes)

    def _explain(
        self, x: torch.Tensor, target: TargetLike, engine: MaskingEngine, n_backward: list[int]
    ) -> tuple[torch.Tensor, Target, dict[str, Any]]:
        fills = self._value_fills(x)
        regions = self._regions(x, fills)
        sizes = regions.sizes
        r, b = fills.shape[1], x.shape[0]
        big = max(sizes)
        cost = b + sum(r * (2**m - 1) for m in sizes if m > 0)
        if big > MAX_EXACT_FEATURES and not self.allow_large:
            fewer = (
                "features='grid' with a larger patch=, or a feature mask"
                if x.ndim == 4
                else "features='segments' with a longer patch=, or a feature mask"
                if x.ndim == 3
                else "a feature mask grouping the columns, e.g. features=[0, 0, 1, 1, 2, ...]"
            )
            raise InvalidParameterError(
                f"exact_shapley enumerates 2^M coalitions: M={big} features would cost {cost:,} forward passes "
                f"({2**big:,} per row); it is refused above M={MAX_EXACT_FEATURES}. Use fewer features "
                f"({fewer}), kernel_shap or shapley_sampling, or pass allow_large=True."
            )
        self._check_cost(cost, f"{b} clean passes + per row (2^M - 1) x {r} fill row(s)")
        tgt, fx = self._clean(x, target, engine)
        values = torch.zeros(b, max(big, 1), dtype=F64, device=x.device)
        base = fx.clone()
        designs = {m: (2**m - 1, lambda ks, m=m: coalition_masks(ks, m)) for m in set(sizes) if m > 0}
        for m, s in self._region_scores(engine, x, fills, tgt, regions, designs).items():  # the full set is f(x)
            rows = regions.by_size()[m]
            v = torch.cat([s, fx[rows].view(-1, 1)], 1)
            values[rows, :m] = shapley_from_values(v, m)
            base[rows] = s[:, 0]
        attr, full = regions.paint(values)
        return (
            attr.to(x.dtype),
            tgt,
            {"values": full, "base_value": base, "n_features": sizes, "kept_features": regions.kept()},
        )
