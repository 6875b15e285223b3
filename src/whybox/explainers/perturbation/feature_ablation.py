"""Feature ablation: remove one feature group at a time and record the score drop."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from whybox.explainers.perturbation._common import F64, FirstMaskTarget, RegionExplainer
from whybox.masking.engine import MaskingEngine
from whybox.models.targets import Target, TargetLike
from whybox.registry import EXPLAINERS

__all__ = ["FeatureAblation"]


@EXPLAINERS.register("feature_ablation")
class FeatureAblation(RegionExplainer):
    """attr(G_j) = f_c(x) - f_c(x with group G_j set to the fill), copied to every element of G_j.

    As captum's ``FeatureAblation`` with a ``feature_mask``. ``features="auto"`` is a grid of
    ``ceil(min(H, W) / 8)``-pixel patches on images (all channels together), one group per column on
    ``(B, F)`` rows and one per scalar otherwise (captum's ``feature_mask=None``). Groups equal to the fill
    in every element get exactly 0 without a forward pass.

    Shapes
    ------
    inputs ``(B, *S)`` -> attributions ``(B, *S)``; ``meta["values"]`` ``(B, M)``. Cost: ``B * (1 + M)`` forward
    passes, as captum.
    """

    auto_features: ClassVar[str] = "grid"

    def _explain(
        self, x: torch.Tensor, target: TargetLike, engine: MaskingEngine, n_backward: list[int]
    ) -> tuple[torch.Tensor, Target, dict[str, Any]]:
        fill = self._fills(x)
        regions = self._regions(x, fill.unsqueeze(1))
        sizes = regions.sizes
        b = len(sizes)
        self._check_cost(b + sum(sizes), f"{b} clean passes + {sum(sizes)} ablated groups")
        values = torch.zeros(b, max(max(sizes), 1), dtype=F64, device=x.device)
        # mask 0 of each design removes nothing: it fixes the row's target (no separate clean pass) and f_c(x)
        # comes from the same engine call as the ablations (one kernel path); mask j removes feature j - 1
        eyes = {
            m: torch.cat([torch.zeros(1, m, dtype=torch.bool), torch.eye(m, dtype=torch.bool)]).to(x.device)
            for m in set(sizes)
            if m > 0
        }
        designs = {m: (m + 1, lambda ks, eye=eye: ~eye[ks]) for m, eye in eyes.items()}
        first = FirstMaskTarget(target, b)
        scores = self._region_scores(engine, x, fill.unsqueeze(1), first, regions, designs)
        tgt = first.finish(x, engine)
        for m, s in scores.items():
            values[regions.by_size()[m], :m] = s[:, :1] - s[:, 1:]
        attr, full = regions.paint(values)
        attr = attr.expand(x.shape).contiguous() if attr.shape != x.shape else attr
        return attr.to(x.dtype), tgt, {"values": full, "n_features": sizes, "kept_features": regions.kept()}
