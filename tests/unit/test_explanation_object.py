"""The Explanation object as a user handles it: slices keep what describes the whole explanation, ``to_map`` reduces
channel-less maps, equality after a save/load round trip, arrays in ``meta``, empty row lists, and the figures'
literal ``$`` in titles; the overlay's "relative" reading ignores a map's offset whatever its sign."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from whybox.report.figures import save_grid_figure, save_stability_figure, save_titled_png
from whybox.report.overlay import to_heatmap


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(2 + 4, 3)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([self.conv(image).mean((2, 3)), meta], 1))


def test_a_slice_keeps_the_model_s_input_shapes_and_layer_shapes_whole() -> None:
    torch.manual_seed(0)
    a = whybox.adapt(_TwoInputs(), input_shapes=[(3, 6, 6), (4,)])
    e = whybox.explain(a, (torch.rand(2, 3, 6, 6), torch.rand(2, 4)), "saliency")
    assert len(e.meta["input_shapes"]) == 2 == len(e)  # as many inputs as rows: the case a slice cut
    assert e[0].meta["input_shapes"] == e.meta["input_shapes"]
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(),
                        nn.Linear(4 * 64, 3))  # fmt: skip
    cam = whybox.explain(cnn, torch.rand(2, 3, 8, 8), "layercam", layer=["0", "2"])
    assert len(cam.meta["layer_shape"]) == 2
    assert cam[1].meta["layer_shape"] == cam.meta["layer_shape"]


def test_to_map_reduces_channel_less_maps() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    e = whybox.explain(model, torch.rand(2, 6, 6), "input_x_gradient")
    a = e.attributions
    assert a.ndim == 3 and bool((a < 0).any())
    assert torch.equal(e.to_map("sum"), a)
    assert torch.equal(e.to_map("abs_sum"), a.abs())
    assert torch.equal(e.to_map("max_abs"), a.abs())


def test_a_loaded_explanation_equals_the_saved_one(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 64, 3))
    e = whybox.explain(model, torch.rand(2, 3, 8, 8), "integrated_gradients", n_steps=4)
    e.meta["class_ids"] = np.array([3, 7])  # an array a user adds to meta
    e.meta["note"] = ("a", float("nan"))
    e.save(tmp_path / "e.safetensors")
    loaded = whybox.Explanation.load(tmp_path / "e.safetensors")
    assert loaded.meta["class_ids"] == [3, 7]
    assert loaded == e
    other = whybox.Explanation.load(tmp_path / "e.safetensors")
    other.attributions = other.attributions.clone()
    other.attributions[0, 0, 0, 0] += 1
    assert other != e
    assert e != "not an explanation"


def test_an_empty_list_picks_no_rows() -> None:
    torch.manual_seed(0)
    e = whybox.explain(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.rand(3, 3, 2, 2), "saliency")
    assert len(e[[]]) == 0 == len(e[1:1])


def test_relative_reading_ignores_the_offset_whatever_its_sign() -> None:
    m = np.random.default_rng(0).random((8, 8))
    base = to_heatmap(m, reading="relative")
    for shift in (-5.0, -0.5, 3.0):
        np.testing.assert_allclose(to_heatmap(m + shift, reading="relative"), base, atol=1e-6)
    assert to_heatmap(m - 5.0, reading="positive")[..., 3].max() == 0  # "positive" still counts negatives as 0


@pytest.mark.parametrize("text", ["price $\\q$", "x $^$", "$5 and $6", "a " * 60 + "$\\alpha$"])
def test_figures_draw_a_dollar_literally(tmp_path: Path, text: str) -> None:
    rgb = np.random.default_rng(0).random((16, 16, 3))
    assert save_titled_png(tmp_path / "a.png", rgb, text).stat().st_size > 0
    assert save_grid_figure(tmp_path / "b.png", [(rgb, text), (rgb, "b")], title=text).stat().st_size > 0
    out = save_stability_figure(
        tmp_path / "c.png", rgb, np.zeros((16, 16)), np.zeros((16, 16)), lines=[text], title=text
    )
    assert out.stat().st_size > 0
