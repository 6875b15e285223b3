"""Smaller cases a second audit found: a CAM's mixed layer list saves; Grad-CAM++ and XGrad-CAM warn at a signed
layer where a channel's activations sum to <= 0 (ATTRIBUTION.md §2.0); IG's blur baseline on rows names baseline=;
1-D signals take (L,) and (B, L) feature ids; exact Shapley's 3 x 3 grid has 9 features on any side of 3+ pixels;
NumPy scalar options read as the numbers they hold."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from whybox.errors import InvalidParameterError


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def test_a_cam_with_a_mixed_layer_list_saves(tmp_path: Path) -> None:
    net = _Net()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e = whybox.explain(net, x, "gradcam", layer=["block", net.stem])
    e.save(tmp_path / "e.safetensors")
    assert torch.equal(whybox.Explanation.load(tmp_path / "e.safetensors").attributions, e.attributions)


@pytest.mark.parametrize("method", ["xgradcam", "gradcam_pp"])
def test_sum_dividing_cams_warn_where_a_signed_channel_cancels(method: str) -> None:
    net = _Net()
    with torch.no_grad():  # stem channel 0 copies input channel 0: +1 on the left half, -1 on the right (sum 0)
        net.stem.weight.zero_()
        net.stem.bias.zero_()
        net.stem.weight[0, 0, 1, 1] = 1.0
        net.stem.weight[1:, 1, 1, 1] = 1.0
    x = torch.ones(2, 3, 8, 8)
    x[:, 0, :, 4:] = -1.0
    with pytest.warns(UserWarning, match=rf"{method}: layer 'stem' has signed activations, and in 1 channel"):
        whybox.explain(net, x, method, layer="stem")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # after the ReLU: no warning
        whybox.explain(net, x, method, layer="block")


def test_ig_blur_baseline_on_rows_names_baseline() -> None:
    with pytest.raises(InvalidParameterError, match=r"baseline='blur' needs images .* Use baseline='zero'"):
        whybox.explain(nn.Linear(6, 2), torch.rand(4, 6), "integrated_gradients", baseline="blur")


def test_signals_take_ids_per_time_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 35, 2)).eval()
    x = torch.rand(2, 2, 37, generator=torch.Generator().manual_seed(2))
    ids = torch.arange(37) // 5
    flat = whybox.explain(model, x, "feature_ablation", features=ids)
    shaped = whybox.explain(model, x, "feature_ablation", features=ids.view(1, 1, 37))
    assert torch.equal(flat.attributions, shaped.attributions)
    per_row = whybox.explain(model, x, "feature_ablation", features=torch.stack([ids, ids // 2]))  # (B, L), B == C
    alone = whybox.explain(model, x[1:], "feature_ablation", features=(ids // 2).view(1, 1, 37))
    assert torch.allclose(per_row.attributions[1:], alone.attributions)


def test_exact_shapley_s_grid_has_nine_cells() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 12, 2))
    e = whybox.explain(model, torch.rand(1, 3, 4, 12), "exact_shapley")
    assert e.meta["n_features"] == [9]


def test_numpy_scalar_options_are_numbers() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    x = torch.rand(2, 3, 2, 2)
    assert whybox.explain(model, x, "integrated_gradients", n_steps=np.int64(4)).params["n_steps"] == 4
    assert whybox.explain(model, x, "occlusion", fill=np.float64(0.25)).params["fill"] == 0.25
    e = whybox.explain(model, x, "saliency")
    assert whybox.evaluate(model, x, e, "deletion", steps=np.int64(4)).params["steps"] == 4
