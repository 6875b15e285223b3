"""Score-CAM (Wang et al. 2020), scored through the masking engine."""

from __future__ import annotations

from typing import Any

import torch

from whybox.errors import InvalidParameterError, check_bool, did_you_mean
from whybox.explainers.cam.base import CAM, upsample
from whybox.masking.engine import MaskingEngine
from whybox.models.targets import Target
from whybox.registry import EXPLAINERS

__all__ = ["ScoreCAM"]

WEIGHTINGS = ("softmax", "raw")


@EXPLAINERS.register("scorecam")
class ScoreCAM(CAM):
    """Weight channel k by the score of the input masked with its upsampled, min-max scaled activation.

    s_k = f_c(x * H^k) with H^k = minmax(Up(A^k)); L = ReLU(sum_k alpha_k A^k), alpha = softmax_k(s)
    (``weighting="softmax"``, as pytorch-grad-cam) or s itself (``"raw"``; with ``score="prob"`` that is
    the authors' official code). Gradient-free: K forward passes per row, chunked by ``batch_size``
    through the masking engine (masks are made per chunk, never all at once).

    Parameters
    ----------
    weighting
        ``"softmax"`` or ``"raw"``.
    mask_align_corners
        Upsample the masks with ``align_corners=True`` (pytorch-grad-cam uses ``UpsamplingBilinear2d``);
        ``False`` (default) uses half-pixel centres like the final map.
    """

    uses_gradients = False
    takes_packed_images = False  # it masks the input with its maps: images only

    def __init__(
        self, model: Any, *, weighting: str = "softmax", mask_align_corners: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(model, **kwargs)
        if weighting not in WEIGHTINGS:
            raise InvalidParameterError(
                f"weighting must be one of {WEIGHTINGS}; got {weighting!r}.{did_you_mean(weighting, WEIGHTINGS)}"
            )
        self.weighting = weighting
        self.mask_align_corners = check_bool("mask_align_corners", mask_align_corners)

    def _layer_maps(
        self,
        x: torch.Tensor,
        acts: list[torch.Tensor],
        grads: list[torch.Tensor] | None,
        tgt: Target,
        engine: MaskingEngine,
    ) -> list[torch.Tensor]:
        signal = x.ndim == 3  # 1-D signals (B, C, L): one-row grids, masks (n, 1, L)
        size = (1, int(x.shape[-1])) if signal else (int(x.shape[-2]), int(x.shape[-1]))
        zero = torch.zeros_like(x)
        out = []
        for a in acts:
            k = a.shape[1]

            def masks(rows: torch.Tensor, ks: torch.Tensor, a: torch.Tensor = a) -> torch.Tensor:
                # scaled in float32 at least, then cast to the input's dtype: in half precision the 1e-8 guard
                # rounds to 0 and a constant channel gave 0 / 0 = NaN
                work = torch.promote_types(a.dtype, torch.float32)
                m = upsample(a[rows, ks].unsqueeze(1).to(work), size, align_corners=self.mask_align_corners)
                flat = m.flatten(1)
                lo, hi = flat.amin(1).view(-1, 1, 1, 1), flat.amax(1).view(-1, 1, 1, 1)
                m = ((m - lo) / (hi - lo + 1e-8)).to(x.dtype)
                return m.squeeze(2) if signal else m

            s = engine.scores(x, masks, n_masks=k, fill=zero, target=tgt, score=self.score)
            w = s.softmax(1) if self.weighting == "softmax" else s
            out.append((w.to(a.dtype).view(a.shape[0], k, 1, 1) * a).sum(1))
        return out
