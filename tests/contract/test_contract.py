"""The contract every registered explainer keeps (parametrised over ``whybox.methods()``).

A new method is covered as soon as it is registered. Properties (RELIABILITY.md, ATTRIBUTION.md §0):
the Explanation contract (shapes, dtype, device, target), batched = one-by-one, chunk size changes
nothing, the model leaves every call exactly as it came (also when the call raises), same seed same
output, meta bookkeeping, save/load round trip, per-row targets, and module reuse (EfficientNet-Lite's
single ReLU6) giving the same answer as the plain network or a clear error.
"""

from __future__ import annotations

import copy
import hashlib
import json
import struct
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import torch
from torch import nn
from torch.nn.modules import module as torch_module

import whybox
from whybox.errors import LayerError
from whybox.explainers.base import GradientExplainer
from whybox.explainers.cam.base import CAM

M = TypeVar("M", bound=nn.Module)
METHODS = whybox.methods("image")  # text-only methods (attention) have their own suite: test_text_contract.py
CAM_METHODS = [m for m in METHODS if issubclass(whybox.get_explainer(m), CAM)]
B, C, H, W, K = 3, 3, 12, 12, 5
CHANNELS = 8

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)
_GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_forward_hooks_always_called",
    "_global_forward_hooks_with_kwargs",
)


# ---------------------------------------------------------------------------------------------- models
def _seeded(build: Callable[[], M], seed: int) -> M:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def small_cnn(seed: int = 0, dtype: torch.dtype = torch.float32, inplace: bool = False) -> nn.Sequential:
    def build() -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(C, CHANNELS, 3, padding=1),
            nn.ReLU(inplace=inplace),
            nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1),
            nn.ReLU(inplace=inplace),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(CHANNELS, K),
        )

    return _seeded(build, seed).to(dtype).eval()


def bn_dropout_cnn(seed: int = 1) -> nn.Sequential:
    """BatchNorm with non-trivial running statistics and a Dropout before the head; returned in train mode."""

    def build() -> nn.Sequential:
        m = nn.Sequential(
            nn.Conv2d(C, CHANNELS, 3, padding=1),
            nn.BatchNorm2d(CHANNELS),
            nn.ReLU(),
            nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1),
            nn.BatchNorm2d(CHANNELS),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.5),
            nn.Linear(CHANNELS, K),
        )
        for bn in (m[1], m[4]):
            bn.running_mean.normal_(0.0, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.normal_(0.0, 0.1)
        return m

    return _seeded(build, seed).train()


MODELS: dict[str, Callable[[], nn.Module]] = {"cnn": small_cnn, "bn_dropout": bn_dropout_cnn}


def inputs(seed: int = 0, n: int = B, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, C, H, W, generator=g, dtype=torch.float64) * 2 - 0.5).to(dtype)


# Fewer IG steps and SmoothGrad draws keep the suite fast; no contract property depends on their number
# (test_explanation_contract runs every method at its defaults).
FAST: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 8},
    "smoothgrad": {"n_samples": 6},
    "lima": {"regions": "grid", "n_regions": 16},  # 4 x 4 cells: N(N+1) = 272 passes per row
}


def run(model: Any, x: torch.Tensor, method: str, **kw: Any) -> whybox.Explanation:
    return whybox.explain(model, x, method, **{**FAST.get(method, {}), **kw})


def assert_same(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> None:
    """Equal up to ``rtol`` relative to the larger map's scale (float32 kernels differ by batch shape)."""
    scale = max(float(a.abs().max()), float(b.abs().max()), 1e-30)
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * scale)


# ---------------------------------------------------------------------------------------------- state
def hook_keys(model: nn.Module) -> list[dict[str, list[int]]]:
    return [{a: sorted(getattr(m, a, {}).keys()) for a in _HOOK_DICTS} for m in model.modules()]


def global_hook_counts() -> dict[str, int]:
    return {a: len(getattr(torch_module, a, {})) for a in _GLOBAL_HOOK_DICTS}


def param_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():  # parameters and buffers (BatchNorm running statistics)
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def snapshot(model: nn.Module) -> dict[str, Any]:
    params = list(model.parameters())
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in params],
        "grad_ids": [None if p.grad is None else id(p.grad) for p in params],
        "grads": [None if p.grad is None else p.grad.clone() for p in params],
        "digest": param_digest(model),
        "rng": torch.get_rng_state(),
        "hooks": hook_keys(model),
        "global_hooks": global_hook_counts(),
        "param_hooks": [bool(getattr(p, "_backward_hooks", None)) for p in params],
    }


def assert_restored(model: nn.Module, before: dict[str, Any]) -> None:
    after = snapshot(model)
    assert after["training"] == before["training"], "train/eval flags changed"
    assert after["requires_grad"] == before["requires_grad"], "requires_grad flags changed"
    assert after["grad_ids"] == before["grad_ids"], ".grad tensors were replaced"
    for g0, g1 in zip(before["grads"], after["grads"], strict=True):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1), ".grad values changed"
    assert after["digest"] == before["digest"], "parameters or buffers changed"
    assert torch.equal(after["rng"], before["rng"]), "global torch RNG state changed"
    assert after["hooks"] == before["hooks"], "module hooks left behind or removed"
    assert after["global_hooks"] == before["global_hooks"], "global module hooks left behind"
    assert after["param_hooks"] == before["param_hooks"], "tensor hooks left on parameters"


def prepare_user_state(model: nn.Module) -> list[int]:
    """Freeze some parameters, give others existing .grad tensors and add a user hook; returns a call log."""
    params = list(model.parameters())
    g = torch.Generator().manual_seed(5)
    for i, p in enumerate(params):
        if i % 3 == 0:
            p.requires_grad_(False)
        elif i % 3 == 1:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
    calls: list[int] = []
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    first.register_forward_hook(lambda mod, args, out: calls.append(out.shape[0]))
    return calls


# ---------------------------------------------------------------------------------------------- shapes
def expected_shape(method: str, x: torch.Tensor) -> set[tuple[int, ...]]:
    cls = whybox.get_explainer(method)
    b, c, h, w = x.shape
    if issubclass(cls, GradientExplainer):
        return {(b, c, h, w)}
    if issubclass(cls, CAM):
        return {(b, 1, h, w)}
    return {(b, c, h, w), (b, 1, h, w)}  # a future family: input-shaped or a spatial map


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", METHODS)
def test_explanation_contract(method: str, dtype: torch.dtype) -> None:
    model = small_cnn(dtype=dtype)
    x = inputs(dtype=dtype)
    x_before = x.clone()
    e = whybox.explain(model, x, method, seed=3)  # every option at its default
    assert torch.equal(x, x_before)  # the caller's inputs are not modified
    assert isinstance(e, whybox.Explanation)
    assert e.method == method
    assert tuple(e.attributions.shape) in expected_shape(method, x)
    assert e.attributions.dtype == dtype
    assert e.attributions.device == x.device
    assert not e.attributions.requires_grad
    # target=None is the argmax of the clean scores, (B,) int64
    assert e.target.shape == (B,) and e.target.dtype == torch.int64
    with torch.no_grad():
        assert torch.equal(e.target, model(x).argmax(1))
    # meta bookkeeping
    meta = e.meta
    assert isinstance(meta["n_forward"], int) and meta["n_forward"] >= B
    assert isinstance(meta["n_backward"], int) and meta["n_backward"] >= 0
    assert meta["seed"] == 3
    assert meta["finite"] == [True] * B
    assert torch.isfinite(e.attributions).all()
    json.dumps(e.params)  # params are JSON values
    assert e.to_map().shape == (B, H, W)
    if issubclass(whybox.get_explainer(method), CAM):
        assert meta["degenerate"] == [False] * B
        assert float(e.attributions.min()) >= 0.0 and float(e.attributions.max()) <= 1.0  # minmax default


@pytest.mark.parametrize("model_kind", sorted(MODELS))
@pytest.mark.parametrize("method", METHODS)
def test_batched_equals_one_by_one(method: str, model_kind: str) -> None:
    model = MODELS[model_kind]()  # the BatchNorm/Dropout model comes in train mode: rows must stay independent
    x = inputs(seed=1)
    e = run(model, x, method)
    for i in range(B):
        ei = run(model, x[i : i + 1], method)
        assert_same(e.attributions[i], ei.attributions[0])
        assert int(e.target[i]) == int(ei.target[0])


@pytest.mark.parametrize("method", METHODS)
def test_chunk_size_changes_nothing(method: str) -> None:
    model = small_cnn()
    x = inputs(seed=2)
    ref = run(model, x, method, batch_size=64)
    for bs in (1, 3):
        e = run(model, x, method, batch_size=bs)
        assert_same(e.attributions, ref.attributions)
        assert torch.equal(e.target, ref.target)


@pytest.mark.parametrize("method", METHODS)
def test_no_hook_left_and_user_hooks_kept(method: str) -> None:
    model = small_cnn()
    calls: list[int] = []
    model[0].register_forward_hook(lambda mod, args, out: calls.append(out.shape[0]))
    before = hook_keys(model)
    globals_before = global_hook_counts()
    run(model, inputs(), method)
    assert hook_keys(model) == before
    assert global_hook_counts() == globals_before
    assert calls, "the user's own hook was removed or bypassed during the call"
    n = len(calls)
    with torch.no_grad():
        model(inputs())
    assert len(calls) == n + 1, "the user's own hook no longer fires after the call"


class RaisesOnSecondForward(nn.Module):
    """Runs its features (so layer taps fire), then raises on the 2nd forward and every one after it."""

    def __init__(self) -> None:
        super().__init__()
        base = bn_dropout_cnn()
        self.features = base[:6]
        self.head = base[6:]
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = self.features(x)
        if self.calls >= 2:
            raise RuntimeError("boom on the second forward")
        return self.head(h)


@pytest.mark.parametrize("method", METHODS)
def test_model_restored_when_forward_raises(method: str) -> None:
    model = RaisesOnSecondForward().train()
    prepare_user_state(model)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom on the second forward"):
        run(model, inputs(), method, batch_size=1)
    # A CAM's second forward is its first channels-last one: a failure there is tried once more in the layout the
    # user gave (a model may refuse channels-last with any error), where the model raises as it would anyway.
    cams = {"gradcam", "gradcam_pp", "hirescam", "layercam", "scorecam", "xgradcam"}
    assert model.calls == (3 if method in cams else 2)
    assert_restored(model, before)


@pytest.mark.parametrize("method", METHODS)
def test_model_state_restored(method: str) -> None:
    model = bn_dropout_cnn()  # train mode, BatchNorm running statistics, Dropout
    model[4].eval()  # a mixed train/eval state must come back as it was
    calls = prepare_user_state(model)
    before = snapshot(model)
    run(model, inputs(), method)
    assert_restored(model, before)
    assert calls, "the user's hook did not fire during the call"


@pytest.mark.parametrize("method", METHODS)
def test_state_restored_with_mode_as_is(method: str) -> None:
    model = bn_dropout_cnn().eval()
    model[8].train()  # only Dropout in train mode: rows stay independent, the global RNG is consumed
    prepare_user_state(model)
    before = snapshot(model)
    e = run(model, inputs(n=1), method, mode="as_is")
    assert e.params["mode"] == "as_is"
    assert_restored(model, before)


@pytest.mark.parametrize("method", METHODS)
def test_eval_mode_makes_dropout_model_deterministic(method: str) -> None:
    model = bn_dropout_cnn()  # train mode
    twin = copy.deepcopy(model).eval()
    x = inputs(seed=4)
    e1 = run(model, x, method)
    e2 = run(model, x, method)
    assert torch.equal(e1.attributions, e2.attributions)
    assert_same(e1.attributions, run(twin, x, method).attributions, rtol=1e-6)
    assert model.training and model[8].training  # and the caller's mode is back


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_output(method: str) -> None:
    model = small_cnn()
    x = inputs(seed=5)
    e1 = run(model, x, method, seed=11)
    e2 = run(model, x, method, seed=11)
    assert torch.equal(e1.attributions, e2.attributions)
    assert torch.equal(e1.target, e2.target)
    assert e1.meta["seed"] == e2.meta["seed"] == 11
    assert e1.params["seed"] == 11


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("smoothgrad", {}),
        ("integrated_gradients", {"baseline": "uniform"}),
        ("integrated_gradients", {"baseline": "gaussian"}),
    ],
)
def test_seed_drives_the_random_draws(method: str, options: dict[str, Any]) -> None:
    model = small_cnn()
    x = inputs(seed=6)
    a = run(model, x, method, seed=1, **options).attributions
    b = run(model, x, method, seed=2, **options).attributions
    assert not torch.allclose(a, b), "changing the seed did not change the draws"
    state = torch.get_rng_state()
    torch.manual_seed(12345)  # the global RNG plays no part
    c = run(model, x, method, seed=1, **options).attributions
    torch.set_rng_state(state)
    assert torch.equal(a, c)


def _expected_counts(method: str, b: int) -> tuple[int, int] | None:
    """(n_forward, n_backward) for the known methods (options as in FAST, explicit layer); None if unknown."""
    cls = whybox.get_explainer(method)
    if method in ("saliency", "input_x_gradient"):
        return b, b
    if method == "integrated_gradients":
        n = FAST[method]["n_steps"]
        return (n + 2) * b, n * b
    if method == "smoothgrad":
        n = FAST[method]["n_samples"]
        return b + n * b, n * b
    if method == "scorecam":
        return b + CHANNELS * b, 0
    if issubclass(cls, CAM):
        return b, b
    return None


@pytest.mark.parametrize("method", METHODS)
def test_meta_counts_forward_and_backward_rows(method: str) -> None:
    expected = _expected_counts(method, B)
    if expected is None:
        pytest.skip(f"no forward/backward count formula written for {method!r} yet")
    opts = {"layer": "3"} if method in CAM_METHODS else {}
    for bs in (1, 64):  # counts are rows, independent of chunking
        e = run(small_cnn(), inputs(), method, batch_size=bs, **opts)
        assert (e.meta["n_forward"], e.meta["n_backward"]) == expected


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip(method: str, tmp_path: Any) -> None:
    e = run(small_cnn(), inputs(), method, seed=9)
    path = e.save(tmp_path / "sub" / f"{method}.safetensors")
    raw = path.read_bytes()
    # safetensors layout: u64 little-endian header length, then a JSON header; never a pickle (whose protocol 2+
    # stream starts with 0x80, as a header length of 128 + 256 k also does: the JSON header read below tells them
    # apart) nor a zip (torch.save's format)
    assert not raw.startswith(b"PK")
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert header["__metadata__"]["format"] == "whybox.explanation/1"
    assert {"attributions", "target"} <= set(header)
    loaded = whybox.Explanation.load(path)
    assert torch.equal(loaded.attributions, e.attributions) and loaded.attributions.dtype == e.attributions.dtype
    assert torch.equal(loaded.target, e.target) and loaded.target.dtype == torch.int64
    assert loaded.method == e.method
    assert loaded.params == e.params
    assert set(loaded.meta) == set(e.meta)
    for k, v in e.meta.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(loaded.meta[k], v), k
        else:
            assert loaded.meta[k] == v, k


@pytest.mark.parametrize("method", METHODS)
def test_each_row_uses_its_own_target(method: str) -> None:
    model = small_cnn()
    x = inputs(seed=7)
    tgt = torch.tensor([4, 0, 2])
    e = run(model, x, method, target=tgt)
    assert torch.equal(e.target, tgt)
    for i in range(B):
        ei = run(model, x[i : i + 1], method, target=int(tgt[i]))
        assert_same(e.attributions[i], ei.attributions[0])
    # a plain list means the same
    assert torch.equal(run(model, x, method, target=tgt.tolist()).attributions, e.attributions)
    # and a target differing from the prediction gives a different explanation for that row
    other = run(model, x, method, target=(tgt + 1) % K)
    assert not torch.allclose(other.attributions, e.attributions)


@pytest.mark.parametrize("method", METHODS)
def test_callable_target_equivalent_to_a_class_index(method: str) -> None:
    model = small_cnn()
    x = inputs(seed=11)
    e = run(model, x, method, target=lambda s: s[:, 2])
    assert torch.equal(e.target, torch.full((B,), -1))  # -1: a callable decided
    assert_same(e.attributions, run(model, x, method, target=2).attributions, rtol=1e-6)
    assert_same(e.attributions[1], run(model, x[1:2], method, target=lambda s: s[:, 2]).attributions[0])


@pytest.mark.parametrize("method", METHODS)
def test_inplace_activations_give_the_plain_answer(method: str) -> None:
    plain, inplace = small_cnn(), small_cnn(inplace=True)
    x = inputs(seed=8)
    assert_same(run(inplace, x, method).attributions, run(plain, x, method).attributions, rtol=1e-6)
    if method in CAM_METHODS:  # a tap on the conv feeding an in-place ReLU sees the pre-activation
        a = run(inplace, x, method, layer="2", relu=False, normalize="none").attributions
        b = run(plain, x, method, layer="2", relu=False, normalize="none").attributions
        assert_same(a, b, rtol=1e-6)


class _ShiftsItsInput(nn.Module):
    """``small_cnn`` behind an input normalisation written in place (``x -= 0.5``), or out of place."""

    def __init__(self, inplace: bool, channels: int = 3) -> None:
        super().__init__()
        self.inplace = inplace
        self.net = small_cnn()
        if channels != 3:
            first = self.net[0]
            self.net[0] = nn.Conv2d(channels, first.out_channels, first.kernel_size, padding=first.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            x -= 0.5
        else:
            x = x - 0.5
        return self.net(x)


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("method", METHODS)
def test_a_model_that_writes_into_its_input_leaves_the_inputs_and_gets_the_plain_answer(
    method: str, channels: int
) -> None:
    """A model normalising its input in place (x -= 0.5) changed the caller's inputs (1-channel images, where no
    channels-last copy hid it), doubled the shift in Score-CAM's masked copies (0.05 off), and failed gradient
    methods and the automatic CAM layer on a leaf that requires grad. The model now gets a copy of every batch."""
    inplace = _ShiftsItsInput(inplace=True, channels=channels)
    plain = _ShiftsItsInput(inplace=False, channels=channels)
    plain.load_state_dict(inplace.state_dict())
    x = inputs(seed=9)[:, :channels].contiguous()
    before = x.clone()
    got = run(inplace, x, method).attributions
    assert torch.equal(x, before)
    assert_same(got, run(plain, x, method).attributions, rtol=1e-6)


def test_nonfinite_results_are_flagged_per_row() -> None:
    class Sqrt(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1).clamp_min(0).sqrt().sum(1, keepdim=True)

    x = torch.ones(3, 1, 2, 2)
    x[1, 0, 0, 0] = 0.0  # d sqrt / dx = inf at 0
    e = run(Sqrt(), x, "saliency")
    assert e.meta["finite"] == [True, False, True]


# ---------------------------------------------------------------------------------------------- module reuse
class SharedAct(nn.Module):
    """EfficientNet-Lite style: ONE ``nn.ReLU6`` instance applied after every layer (also in the head).

    With ``shared=False`` the same network with one ReLU6 per use (``a0`` .. ``a3``): the plain twin.
    """

    def __init__(self, shared: bool = True) -> None:
        super().__init__()
        self.stem = nn.Conv2d(C, CHANNELS, 3, padding=1)
        self.dw = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, groups=CHANNELS)
        self.pw = nn.Conv2d(CHANNELS, CHANNELS, 1)
        self.fc1 = nn.Linear(CHANNELS, 6)
        self.fc2 = nn.Linear(6, K)
        self.shared = shared
        if shared:
            self.act = nn.ReLU6()
        else:
            self.a0, self.a1, self.a2, self.a3 = nn.ReLU6(), nn.ReLU6(), nn.ReLU6(), nn.ReLU6()

    def _act(self, i: int) -> nn.Module:
        return self.act if self.shared else getattr(self, f"a{i}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._act(0)(self.stem(x))
        x = self._act(1)(self.dw(x))
        x = self._act(2)(self.pw(x))
        x = self._act(3)(self.fc1(x.mean((2, 3))))
        return self.fc2(x)


def reuse_pair() -> tuple[nn.Module, nn.Module]:
    shared = _seeded(lambda: SharedAct(True), 3).eval()
    plain = SharedAct(False).eval()
    plain.load_state_dict(shared.state_dict())
    return shared, plain


@pytest.mark.parametrize("method", METHODS)
def test_module_reuse_default_layer_matches_plain_network(method: str) -> None:
    shared, plain = reuse_pair()
    x = inputs(seed=9) * 3  # reach the ReLU6 ceiling too
    e = run(shared, x, method)
    if method in CAM_METHODS:
        assert e.meta["layer"] == ["act@2"]  # the last call with a spatial output
        ref = run(plain, x, method, layer="a2")
    else:
        ref = run(plain, x, method)
    assert torch.equal(e.target, ref.target)
    assert_same(e.attributions, ref.attributions, rtol=1e-6)
    assert e.meta["finite"] == [True] * B
    if method in CAM_METHODS:  # the raw maps too (the default ReLU may zero an all-negative map)
        raw = run(shared, x, method, relu=False, normalize="none").attributions
        raw_ref = run(plain, x, method, layer="a2", relu=False, normalize="none").attributions
        assert_same(raw, raw_ref, rtol=1e-6)
        assert float(raw_ref.abs().amax()) > 0


@pytest.mark.parametrize("method", CAM_METHODS)
def test_module_reuse_call_index_matches_plain_network(method: str) -> None:
    shared, plain = reuse_pair()
    x = inputs(seed=10)
    for k in (0, 1):  # earlier calls: gradients must flow through the later calls of the same module
        e = run(shared, x, method, layer=f"act@{k}", relu=False, normalize="none")
        ref = run(plain, x, method, layer=f"a{k}", relu=False, normalize="none")
        assert e.meta["layer"] == [f"act@{k}"]
        assert_same(e.attributions, ref.attributions, rtol=1e-6)
        assert float(ref.attributions.abs().amax()) > 0


@pytest.mark.parametrize("method", CAM_METHODS)
def test_module_reuse_without_call_index_is_an_error(method: str) -> None:
    shared, _ = reuse_pair()
    with pytest.raises(LayerError, match=r"layer 'act' \(ReLU6\) runs 4 times.*e\.g\. 'act@\d+'"):
        run(shared, inputs(), method, layer="act")
    with pytest.raises(LayerError, match=r"'act@7'.*runs 4 times.*0\.\.3"):
        run(shared, inputs(), method, layer="act@7")
