"""CAM taps hand the model the activation leaf itself, and a copy only where the model writes into it downstream.

The copy was made on every call (a full pass over the activation: 174 us of a 4.4 ms Grad-CAM++ call on the digits
CNN). A write into the leaf is either refused by autograd (grad mode) or moves the tensor's version (under no_grad):
both make the chunk run again with a copy, once per layer module, and the rerun is counted in ``n_forward``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import whybox
from whybox.models import layers

CAMS = ["gradcam", "gradcam_pp", "xgradcam", "layercam", "hirescam"]


class Net(nn.Module):
    """conv -> conv -> sigmoid (tapped) -> what follows it -> pool -> linear; ``after`` picks how the model treats
    the tap."""

    def __init__(self, after: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.act = nn.Sigmoid()  # the tapped layer: positive activations (no signed-layer warning)
        self.after = after
        self.relu = nn.ReLU(inplace=after == "inplace_relu")
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv2(torch.tanh(self.conv1(x))))
        if self.after == "nograd_write":
            with torch.no_grad():
                h.mul_(0.5)  # a write autograd does not see: only the version counter tells
            h = self.relu(h)
        else:
            h = self.relu(h)
        return self.fc(h.mean((2, 3)))


def _twin(after: str) -> Net:
    m = Net(after).eval()
    return m


@pytest.fixture
def x() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, 1, 7, 9, generator=g)


@pytest.mark.parametrize("method", CAMS)
def test_inplace_relu_after_the_layer_gives_the_out_of_place_maps(method: str, x: torch.Tensor) -> None:
    plain, inplace = _twin("relu"), _twin("inplace_relu")
    ref = whybox.explain(plain, x, method, layer="act", target=1)
    first = whybox.explain(inplace, x, method, layer="act", target=1)
    torch.testing.assert_close(first.attributions, ref.attributions, rtol=0, atol=0)
    # the refused forward is run again with a copy, and counted; later calls copy from the start
    assert first.meta["n_forward"] == ref.meta["n_forward"] + x.shape[0]
    assert inplace.act in layers._WRITTEN_DOWNSTREAM
    again = whybox.explain(inplace, x, method, layer="act", target=1)
    torch.testing.assert_close(again.attributions, ref.attributions, rtol=0, atol=0)
    assert again.meta["n_forward"] == ref.meta["n_forward"]
    assert plain.act not in layers._WRITTEN_DOWNSTREAM  # no copy where the model never writes


@pytest.mark.parametrize("method", CAMS)
def test_a_write_under_no_grad_does_not_reach_the_activation(method: str, x: torch.Tensor) -> None:
    # oracle: the same model with its layer marked as written downstream from the start (every tap copies), which
    # reads the layer's output as it came out, before the model halved it
    copied, fresh = _twin("nograd_write"), _twin("nograd_write")
    layers._WRITTEN_DOWNSTREAM.add(copied.act)
    ref = whybox.explain(copied, x, method, layer="act", target=2)
    got = whybox.explain(fresh, x, method, layer="act", target=2)
    torch.testing.assert_close(got.attributions, ref.attributions, rtol=0, atol=0)
    assert got.meta["n_forward"] == ref.meta["n_forward"] + x.shape[0]
    assert fresh.act in layers._WRITTEN_DOWNSTREAM


def test_the_maps_match_a_hand_grad_cam_of_the_uncopied_tap(x: torch.Tensor) -> None:
    m = _twin("relu")
    out = whybox.explain(m, x, "gradcam", layer="act", target=0, normalize="none", upsample=False)
    acts: list[torch.Tensor] = []
    h = m.act.register_forward_hook(lambda _m, _a, o: acts.append(o))
    try:
        s = m(x)[:, 0].sum()
    finally:
        h.remove()
    (g,) = torch.autograd.grad(s, acts[0])
    cam = torch.relu((g.mean((2, 3), keepdim=True) * acts[0]).sum(1)).detach()
    torch.testing.assert_close(out.attributions[:, 0], cam, rtol=1e-6, atol=1e-7)


class DropNet(Net):
    """Dropout before the tapped layer and an in-place ReLU after it: the rerun must draw the first forward's mask."""

    def __init__(self) -> None:
        super().__init__("inplace_relu")
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.act(self.conv2(self.drop(torch.tanh(self.conv1(x))))))
        return self.fc(h.mean((2, 3)))


def test_the_rerun_draws_what_the_first_forward_drew(x: torch.Tensor) -> None:
    m = DropNet().train()
    first = whybox.explain(m, x, "gradcam", layer="act", target=0, mode="as_is", seed=3)
    assert m.act in layers._WRITTEN_DOWNSTREAM
    again = whybox.explain(m, x, "gradcam", layer="act", target=0, mode="as_is", seed=3)
    torch.testing.assert_close(first.attributions, again.attributions, rtol=0, atol=0)
    other = whybox.explain(m, x, "gradcam", layer="act", target=0, mode="as_is", seed=4)
    assert not torch.equal(other.attributions, first.attributions)  # the dropout mask does matter here
