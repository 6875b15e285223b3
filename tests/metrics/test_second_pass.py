"""Metric defects a second audit found: AOPC over per-image regions (its own L, whatever the batch), AOPC's
``regions=(h, w)``, the randomisation similarities' ``sum_c |a_c|`` maps and channel-pooled explanations, and
LeRF's ties taken in the reverse of MoRF's order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

import whybox
from whybox.masking.features import grid
from whybox.metrics.base import tie_order
from whybox.metrics.faithfulness import AOPC
from whybox.metrics.randomization import map_similarities


def _cnn(side: int = 6) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * side * side, 3)).eval()


def test_aopc_over_regions_counts_each_image_s_own_regions() -> None:
    model = _cnn()
    g = torch.Generator().manual_seed(0)
    x, a, t = torch.randn(2, 3, 6, 6, generator=g), torch.randn(2, 3, 6, 6, generator=g), torch.tensor([0, 1])
    seg = torch.zeros(2, 6, 6, dtype=torch.long)
    seg[0, :3] = 1
    seg[0, :, 4:] = 2  # image 0: 3 regions
    seg[1] = torch.arange(36).view(6, 6) // 6  # image 1: 6 regions
    both = AOPC(regions=seg, fill="zero").evaluate(model, x, a, target=t)
    alone = AOPC(regions=seg[:1], fill="zero").evaluate(model, x[:1], a[:1], target=t[:1])
    y = alone.curves["y"][0]
    assert y.shape[0] == 4  # L = 3 regions, L + 1 points
    assert float(alone.scores[0]) == pytest.approx(float((y[0] - y).mean()), abs=1e-12)  # 1/(L+1) sum (f0 - fk)
    assert float(both.scores[0]) == pytest.approx(float(alone.scores[0]), abs=1e-12)
    gaps = seg[:1].clone()
    gaps[gaps == 2] = 7  # the same regions under ids {0, 1, 7}
    renamed = AOPC(regions=gaps, fill="zero").evaluate(model, x[:1], a[:1], target=t[:1])
    assert float(renamed.scores[0]) == pytest.approx(float(alone.scores[0]), abs=1e-12)


def test_aopc_takes_a_patch_size_pair() -> None:
    model = _cnn(9)
    g = torch.Generator().manual_seed(1)
    x, a = torch.randn(2, 3, 9, 9, generator=g), torch.randn(2, 3, 9, 9, generator=g)
    pair = AOPC(regions=(3, 9), fill="zero").evaluate(model, x, a, target=0)
    given = AOPC(regions=grid(x, patch=(3, 9)), fill="zero").evaluate(model, x, a, target=0)
    assert torch.equal(pair.scores, given.scores)
    assert torch.equal(AOPC(regions=(3, 3)).evaluate(model, x, a, target=0).scores,
                       AOPC(regions=3).evaluate(model, x, a, target=0).scores)  # fmt: skip


def test_spearman_abs_ranks_the_channel_sum_of_magnitudes() -> None:
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(1, 3, 10, 10, generator=g), torch.randn(1, 3, 10, 10, generator=g)
    got = map_similarities(a, b, clip_percentile=None, which=("spearman_abs",))["spearman_abs"]
    oracle = spearmanr(a.abs().sum(1).flatten().numpy(), b.abs().sum(1).flatten().numpy()).statistic
    assert float(got[0]) == pytest.approx(oracle, abs=1e-12)


@pytest.mark.parametrize("metric", ["randomization", "random_logit"])
def test_a_channel_pooled_map_is_compared_with_new_maps_pooled_alike(metric: str) -> None:
    model = _cnn(8)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    e = whybox.explain(model, x, "input_x_gradient", target=[0, 1])
    pooled = e.attributions.sum(1)  # (B, H, W)
    kept = e.attributions.sum(1, keepdim=True)  # (B, 1, H, W)
    opts = {"explainer": "input_x_gradient", "similarity": "spearman"}
    r3 = whybox.evaluate(model, x, pooled, metric, target=[0, 1], **opts)
    r4 = whybox.evaluate(model, x, kept, metric, target=[0, 1], **opts)
    assert torch.equal(r3.scores, r4.scores)
    ssim = whybox.evaluate(model, x, pooled, metric, target=[0, 1], explainer="input_x_gradient", similarity="ssim")
    assert ssim.scores.isfinite().all()  # a channel-less image map is an image map


def test_lerf_takes_ties_in_the_reverse_of_morf() -> None:
    v = torch.tensor([[0.0, 1.0, 1.0, 1.0, 2.0, 0.0]])
    morf = tie_order(v, seed=3).tolist()[0]
    lerf = tie_order(v, seed=3, descending=False).tolist()[0]
    assert lerf == morf[::-1]
    flat = torch.zeros(1, 7)
    assert tie_order(flat, seed=1, descending=False).tolist()[0] == tie_order(flat, seed=1).tolist()[0][::-1]
    rows = torch.tensor(np.random.default_rng(0).integers(0, 3, (20, 9)), dtype=torch.float64)
    assert torch.equal(tie_order(rows, 5, descending=False), tie_order(rows, 5).flip(1))
