"""Eighth-pass audit of LIMA on images: the options' errors and the mask-stack forms its docstring promises."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import whybox
from whybox.errors import InvalidParameterError


def _cnn() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3)).eval()


def _masks() -> torch.Tensor:
    labels = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]] * 4 + [[4, 4, 5, 5, 6, 6, 7, 7]] * 4)
    return torch.stack([labels == i for i in range(8)])  # (N, H, W) bool


@pytest.mark.parametrize("score", ["softmax", "log_prob", "log_sigmoid"])
def test_a_score_lima_does_not_take_gets_lima_s_own_list(score: str) -> None:
    """The base class's list offered 'log_prob' and 'log_sigmoid', which LIMA then refused: the first error lists
    what LIMA takes."""
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InvalidParameterError) as info:
        whybox.explain(_cnn(), x, "lima", score=score)
    assert str(info.value).startswith("score must be one of ('prob', 'logit', 'sigmoid') for 'lima'")


@pytest.mark.parametrize("batch", [2, 8])
def test_a_mask_stack_in_the_image_form_n_1_h_w_is_the_n_h_w_stack(batch: int) -> None:
    """(N, 1, H, W) bool masks (the (1, H, W) image form of each mask) give the explanation of (N, H, W); with
    N == B too, where it was read as B rows of one mask each."""
    model, masks = _cnn(), _masks()
    x = torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    want = whybox.explain(model, x, "lima", search="naive", regions=masks)
    got = whybox.explain(model, x, "lima", search="naive", regions=masks[:, None])
    assert got.meta["n_regions"] == [8] * batch
    torch.testing.assert_close(got.attributions, want.attributions, rtol=0, atol=0)
