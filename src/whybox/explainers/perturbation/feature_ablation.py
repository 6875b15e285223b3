"""Feature ablation: remove one feature group at a time and record the score drop."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from whybox.explainers.perturbation._common import F64, RegionExplainer
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
    inputs ``(B, *S)`` -> attributions ``(B, *S)``; ``meta["values"]`` ``(B, M)``. Cost: ``B * (2 + M)`` forward
    passes (the clean row once to fix the target, once beside the ablations).
    """

    auto_features: ClassVar[str] = "grid"

    def _explain(
        self, x: torch.Tensor, target: TargetLike, engine: MaskingEngine, n_backward: list[int]
    ) -> tuple[torch.Tensor, Target, dict[str, Any]]:
        fill = self._fills(x)
        regions = self._regions(x, fill.unsqueeze(1))
        sizes = regions.sizes
        n_clean = len(sizes) + sum(1 for m in sizes if m)
        self._check_cost(n_clean + sum(sizes), f"{n_clean} clean passes + {sum(sizes)} ablated groups")
        tgt, _ = self._clean(x, target, engine)
        values = torch.zeros(x.shape[0], max(max(sizes), 1), dtype=F64, device=x.device)
        # mask m of each design removes nothing: f_c(x) is scored beside the ablations (one kernel path)
        eyes = {m: torch.eye(m + 1, m, dtype=torch.bool, device=x.device) for m in set(sizes) if m > 0}
        designs = {m: (m + 1, lambda ks, eye=eye: ~eye[ks]) for m, eye in eyes.items()}
        scores = self._region_scores(engine, x, fill.unsqueeze(1), tgt, regions, designs)
        for m, s in scores.items():
            values[regions.by_size()[m], :m] = s[:, m : m + 1] - s[:, :m]
        attr, full = regions.paint(values)
        attr = attr.expand(x.shape).contiguous() if attr.shape != x.shape else attr
        return attr.to(x.dtype), tgt, {"values": full, "n_features": sizes}
