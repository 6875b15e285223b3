"""CAM reads a layer's output as it came out, whatever the model then does to that tensor in place.

The tap hands the model a copy of the activation leaf. A session tried handing on the leaf itself (a 4 % faster call
on the digits CNN) and rerunning with a copy when the model wrote into it: a review found writes that neither autograd
refuses nor the version counter shows (``h.data.clamp_()``), so the copy stays; these tests pin the behaviour.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import whybox

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
        elif self.after == "data_write":
            h.data.mul_(0.5)  # a write neither autograd nor the version counter sees
            h = self.relu(h)
        elif self.after == "mark_dirty":
            h = self.relu(_InplaceHalf.apply(h))
        else:
            h = self.relu(h)
        return self.fc(h.mean((2, 3)))


def _twin(after: str) -> Net:
    m = Net(after).eval()
    return m


class _InplaceHalf(torch.autograd.Function):
    """An in-place op autograd records (InplaceABN style, ``mark_dirty``): halves its input where it lies."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        x.mul_(0.5)
        ctx.mark_dirty(x)
        return x

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return g * 0.5


def _act_grad(m: nn.Module, x: torch.Tensor, target: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's output A as it came out, and the gradient autograd gives at it when the model goes on with
    ``scale * A`` written unrecorded (the gradient at the written tensor)."""
    acts: list[torch.Tensor] = []
    h = m.act.register_forward_hook(lambda _m, _a, o: acts.append(o.detach()))
    try:
        with torch.no_grad():
            m(x)
    finally:
        h.remove()
    a = acts[0]
    written = (scale * a).requires_grad_(True)
    score = m.fc(m.relu(written).mean((2, 3)))[:, target].sum()
    (g,) = torch.autograd.grad(score, written)
    return a, g


def _hand(method: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The five gradient CAMs from their papers' formulas (ReLU of the weighted sum), no upsampling or scaling."""
    s = a.sum((2, 3), keepdim=True)
    if method == "gradcam":
        m = (g.mean((2, 3), keepdim=True) * a).sum(1)
    elif method == "gradcam_pp":
        d = 2 * g**2 + s * g**3
        alpha = torch.where(d != 0, g**2 / torch.where(d != 0, d, 1.0), 0.0)
        m = ((alpha * torch.relu(g)).sum((2, 3), keepdim=True) * a).sum(1)
    elif method == "xgradcam":
        m = (((a * g).sum((2, 3), keepdim=True) / s) * a).sum(1)
    elif method == "layercam":
        m = (torch.relu(g) * a).sum(1)
    else:  # hirescam
        m = (g * a).sum(1)
    return torch.relu(m)


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
    assert first.meta["n_forward"] == ref.meta["n_forward"] == x.shape[0]


@pytest.mark.parametrize("mode", ["nograd_write", "data_write"])
@pytest.mark.parametrize("method", CAMS)
def test_a_write_autograd_does_not_see_does_not_reach_the_activation(method: str, mode: str, x: torch.Tensor) -> None:
    # oracle: a hand Grad-CAM family map from the layer's output as it came out (before the model halved it) and the
    # gradient autograd gives at it (the halving is unrecorded, so the gradient is that of the unhalved path)
    got = whybox.explain(_twin(mode), x, method, layer="act", target=2, normalize="none", upsample=False)
    m = _twin("relu")  # the same weights, nothing written: its tap reads what the written model's layer produced
    a, g = _act_grad(m, x, 2, scale=0.5)
    torch.testing.assert_close(got.attributions[:, 0], _hand(method, a, g), rtol=1e-5, atol=1e-7)


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


@pytest.mark.parametrize("method", CAMS)
def test_an_in_place_op_autograd_records_after_the_layer_gives_the_out_of_place_maps(
    method: str, x: torch.Tensor
) -> None:
    # a custom Function writing into the tapped tensor (mark_dirty) is the out-of-place halving to autograd
    got = whybox.explain(_twin("mark_dirty"), x, method, layer="act", target=0, normalize="none", upsample=False)
    a, g = _act_grad(_twin("relu"), x, 0, scale=0.5)
    torch.testing.assert_close(got.attributions[:, 0], _hand(method, a, g * 0.5), rtol=1e-5, atol=1e-7)
