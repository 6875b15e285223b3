"""whybox on a DEVICE device gives what it gives on the CPU (RELIABILITY.md: results do not depend on where they run).

Every registered image method, every LIMA search, every metric and the text methods run once on the CPU and once
with the model and inputs on ``cuda``: the result lives on the inputs' device, equals the CPU result up to float64
rounding (random draws come from seeded CPU generators, so they are the same numbers on both devices), the pass
counts are the same, and the model leaves as it came, the DEVICE RNG state included.

CI has no GPU: every test here is skipped there with that reason. Run them on a GPU machine with
``pytest tests/contract/test_cuda.py``.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import pytest
import torch
from torch import nn

import whybox
from whybox.explainers.lima.search import SEARCHES

# WHYBOX_TEST_DEVICE=cpu runs the same comparisons CPU against CPU: a dry run of this file's own mechanics.
DEVICE = torch.device(os.environ.get("WHYBOX_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(
    DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="no CUDA device on this machine"
)

METHODS = whybox.methods("image")
B, C, H, W, K = 3, 3, 12, 12, 5
FAST: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 8},
    "smoothgrad": {"n_samples": 6},
    "lima": {"regions": "grid", "n_regions": 16},
}
# Options with their own code paths on a device: baselines and fills drawn or computed on the input's device.
VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("integrated_gradients", {"baseline": "blur"}),
    ("integrated_gradients", {"baseline": "uniform"}),
    ("integrated_gradients", {"baseline": "gaussian"}),
    ("integrated_gradients", {"baseline": "mean", "method": "riemann_trapezoid"}),
    ("integrated_gradients", {"method": "adaptive"}),
    ("smoothgrad", {"variant": "var"}),
    ("occlusion", {"fill": "blur"}),
    ("occlusion", {"fill": "mean"}),
    ("rise", {"fill": "uniform"}),
    ("lime", {"fill": "mean"}),
    ("lima", {"regions": "superpixels", "n_regions": 9}),
    ("lima", {"regions": "prior", "prior_grid": 4, "prior_cells": 2}),
    ("lima", {"regions": "seeds", "n_regions": 9, "fill": "blur"}),
    *[("lima", {"regions": "grid", "n_regions": 9, "search": s}) for s in SEARCHES],
]


def small_cnn(seed: int = 0) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(C, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.5),
            nn.Linear(8, K),
        )
        model[1].running_mean.normal_(0.0, 0.2)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.to(torch.float64).train()  # train mode: the call must run it in eval and give train back


def inputs(seed: int = 0, n: int = B) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, C, H, W, generator=g, dtype=torch.float64) * 2 - 0.5


def on_cuda(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(DEVICE)


def state(model: nn.Module) -> dict[str, Any]:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "tensors": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "devices": {p.device for p in model.parameters()},
        "cuda_rng": torch.cuda.get_rng_state() if DEVICE.type == "cuda" else torch.empty(0),
        "cpu_rng": torch.get_rng_state(),
    }


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["training"] == b["training"] and a["requires_grad"] == b["requires_grad"]
    assert all(g is None for g in b["grads"])
    assert a["devices"] == b["devices"]
    assert a["tensors"].keys() == b["tensors"].keys()
    assert all(torch.equal(a["tensors"][k], b["tensors"][k]) for k in a["tensors"]), "parameters or buffers changed"
    assert torch.equal(a["cuda_rng"], b["cuda_rng"]), "the CUDA RNG state changed"
    assert torch.equal(a["cpu_rng"], b["cpu_rng"]), "the CPU RNG state changed"


def assert_close(gpu: torch.Tensor, cpu: torch.Tensor, rtol: float = 1e-7, what: str = "") -> None:
    """Equal up to ``rtol`` relative to the map's scale (elements near 0 differ by more than rtol of themselves)."""
    assert gpu.device.type == DEVICE.type, f"the result is on {gpu.device}, not on the inputs' device"
    g = gpu.detach().cpu()
    scale = max(float(cpu.abs().nan_to_num().max()), 1e-30)
    torch.testing.assert_close(g, cpu, rtol=rtol, atol=rtol * scale, equal_nan=True, msg=lambda m: f"{what}: {m}")


def compare(name: str, options: dict[str, Any]) -> tuple[whybox.Explanation, whybox.Explanation]:
    model, x = small_cnn(), inputs()
    opts = {**FAST.get(name, {}), **options}
    e_cpu = whybox.explain(model, x, name, seed=3, **opts)
    gpu_model = on_cuda(model)
    before = state(gpu_model)
    e_gpu = whybox.explain(gpu_model, x.to(DEVICE), name, seed=3, **opts)
    assert_same_state(before, state(gpu_model))
    assert e_gpu.target.tolist() == e_cpu.target.tolist()
    assert e_gpu.attributions.dtype == e_cpu.attributions.dtype and e_gpu.attributions.shape == e_cpu.attributions.shape
    assert_close(e_gpu.attributions, e_cpu.attributions, what=name)
    for key in ("n_forward", "n_backward", "finite"):
        assert e_gpu.meta[key] == e_cpu.meta[key], key
    return e_gpu, e_cpu


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_on_cuda_what_it_gives_on_the_cpu(method: str) -> None:
    compare(method, {})


@pytest.mark.parametrize(("method", "options"), VARIANTS, ids=[f"{m}-{o}" for m, o in VARIANTS])
def test_device_sensitive_options_give_the_cpu_result(method: str, options: dict[str, Any]) -> None:
    e_gpu, e_cpu = compare(method, options)
    if method == "lima":
        assert torch.equal(e_gpu.meta["order"].cpu(), e_cpu.meta["order"])
    if method == "integrated_gradients":
        assert_close(torch.as_tensor(e_gpu.meta["delta"]).to(DEVICE), torch.as_tensor(e_cpu.meta["delta"]), rtol=1e-6)


def test_float32_channels_last_model_on_cuda_runs_every_method() -> None:
    """The real-model path: float32 weights in channels-last memory; the maps agree with the CPU's to float32 and
    TF32 rounding (cuDNN's convolutions run in TF32 by default: 10-bit mantissas; on an H100 the largest difference
    was about 3e-3 of the map's scale, above the 2e-3 first allowed)."""
    model = small_cnn().float().eval()
    x = inputs().float()
    gpu_model = on_cuda(model).to(memory_format=torch.channels_last)
    for method in METHODS:
        e_cpu = whybox.explain(model, x, method, seed=1, **FAST.get(method, {}))
        e_gpu = whybox.explain(gpu_model, x.to(DEVICE), method, seed=1, **FAST.get(method, {}))
        assert e_gpu.attributions.device.type == DEVICE.type and e_gpu.attributions.dtype == torch.float32, method
        if method == "lima":  # an order: float32 near-ties may swap two regions; the first pick is robust
            assert torch.equal(e_gpu.meta["order"][:, 0].cpu(), e_cpu.meta["order"][:, 0]), method
        elif method == "smoothgrad":  # a noisy copy near a ReLU's kink may take the other side under TF32 (an H200
            # run: 5 of 1296 elements off by 2 % of the map's scale): the maps agree as wholes
            g, c = e_gpu.attributions.cpu().double(), e_cpu.attributions.double()
            assert float((g - c).norm() / c.norm()) < 1e-2, method
        else:
            assert_close(e_gpu.attributions, e_cpu.attributions, rtol=1e-2, what=method)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_on_cuda_runs_every_method(dtype: torch.dtype) -> None:
    """What GPU users run: a float16 / bfloat16 model. Every method returns finite maps in the model's dtype on the
    inputs' device, for the predicted classes of the float32 model (the scores differ by rounding only)."""
    model = small_cnn().float().eval()
    x = inputs().float()
    target = model(x).argmax(1)
    low = on_cuda(model).to(dtype)
    for method in METHODS:
        e = whybox.explain(low, x.to(DEVICE, dtype), method, target=target.to(DEVICE), seed=1, **FAST.get(method, {}))
        assert e.attributions.dtype == dtype and e.attributions.device.type == DEVICE.type, method
        assert bool(torch.isfinite(e.attributions).all()) and e.meta["finite"] == [True] * B, method


MASKS = ("pointing_game", "energy_pointing_game", "relevance_mass", "relevance_rank")
METRIC_FAST: dict[str, dict[str, Any]] = {
    "deletion": {"steps": 5},
    "insertion": {"steps": 5},
    "highest_confidence": {"steps": 5},
    "aopc": {"steps": 5},
    "mufidelity": {"n_samples": 12},
    "road": {"fractions": (0.2, 0.6)},
    "infidelity": {"n_samples": 8},
    "max_sensitivity": {"n_samples": 3},
    "stability": {"n_runs": 2, "explainer": "smoothgrad", "explainer_params": {"n_samples": 2}},
}


@pytest.mark.parametrize("name", whybox.metrics())
def test_every_metric_gives_on_cuda_what_it_gives_on_the_cpu(name: str) -> None:
    model, x = small_cnn(), inputs()
    e = whybox.explain(model, x, "saliency", target=[1, 2, 0])
    masks = torch.zeros(B, H, W, dtype=torch.bool)
    masks[:, 2:6, 3:8] = True
    kw = {**({"masks": masks} if name in MASKS else {}), **METRIC_FAST.get(name, {})}
    compare_metric(model, x, e, name, kw)


def compare_metric(model: nn.Module, x: torch.Tensor, e: whybox.Explanation, name: str, kw: dict[str, Any]) -> None:
    """The metric on the CPU and with the model, inputs, explanation and tensor options on DEVICE: the same scores
    and curves, the model as it came."""
    r_cpu = whybox.evaluate(model, x, e, name, seed=4, **kw)
    gpu_model = on_cuda(model)
    before = state(gpu_model)
    e_gpu = whybox.Explanation(
        attributions=e.attributions.to(DEVICE), target=e.target.to(DEVICE), method=e.method, params=e.params,
        meta=e.meta,
    )  # fmt: skip
    kw_gpu = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    r_gpu = whybox.evaluate(gpu_model, x.to(DEVICE), e_gpu, name, seed=4, **kw_gpu)
    assert_same_state(before, state(gpu_model))
    torch.testing.assert_close(r_gpu.scores.cpu(), r_cpu.scores, rtol=1e-6, atol=1e-9, equal_nan=True)
    assert r_gpu.curves.keys() == r_cpu.curves.keys()
    for k, v in r_cpu.curves.items():
        torch.testing.assert_close(r_gpu.curves[k].cpu(), v, rtol=1e-6, atol=1e-9, equal_nan=True, msg=k)


@pytest.mark.parametrize("method", METHODS)
def test_model_on_cuda_with_inputs_on_the_cpu(method: str) -> None:
    """Inputs on another device than the model: moved to the model for the work, the result (attributions, target
    and every tensor in meta) handed back on the inputs' device."""
    model, x = small_cnn(), inputs()
    ref = whybox.explain(model, x, method, seed=5, **FAST.get(method, {}))
    e = whybox.explain(on_cuda(model), x, method, seed=5, **FAST.get(method, {}))
    assert e.attributions.device == x.device and e.target.device == x.device
    for k, v in e.meta.items():
        assert not isinstance(v, torch.Tensor) or v.device == x.device, k
    scale = float(ref.attributions.abs().max())
    torch.testing.assert_close(e.attributions, ref.attributions, rtol=1e-7, atol=1e-7 * scale)


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "occlusion", "lima"])
def test_model_on_cuda_with_a_numpy_array(method: str) -> None:
    """A numpy array has no device: the result comes back on the CPU, equal to the CPU tensor's."""
    model, x = small_cnn(), inputs()
    ref = whybox.explain(model, x, method, seed=5, **FAST.get(method, {}))
    e = whybox.explain(on_cuda(model), x.numpy(), method, seed=5, **FAST.get(method, {}))
    assert e.attributions.device.type == "cpu" and e.target.device.type == "cpu"
    for k, v in e.meta.items():
        assert not isinstance(v, torch.Tensor) or v.device.type == "cpu", k
    scale = float(ref.attributions.abs().max())
    torch.testing.assert_close(e.attributions, ref.attributions, rtol=1e-7, atol=1e-7 * scale)


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "lime", "raw_attention", "attention_rollout",
                                    "attention_relevance", "lima"])  # fmt: skip
def test_text_methods_on_cuda(method: str, make_text_classifier: Any) -> None:
    pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
    from whybox.models.text import text_defaults

    texts = ["the movie was great", "it was not a good film but the acting was fun"]
    clf = make_text_classifier()
    batch = clf.encode(texts)
    opts = {**text_defaults(method, batch), **({"n_steps": 16} if method == "integrated_gradients" else {})}
    e_cpu = whybox.explain(clf, batch.inputs, method, target=1, seed=2, **opts)
    clf.model.to(DEVICE)
    try:
        gpu_inputs = batch.inputs.to(DEVICE)
        opts_gpu = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in opts.items()}
        e_gpu = whybox.explain(clf, gpu_inputs, method, target=1, seed=2, **opts_gpu)
    finally:
        clf.model.to("cpu")
    assert_close(e_gpu.attributions, e_cpu.attributions, rtol=1e-6)


def test_the_command_line_on_cuda_writes_the_cpu_explanation(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``whybox explain --device cuda``: the model runs on the GPU, the inputs and the written explanation stay on
    the CPU and equal the CPU run's (digits CNN, float32: to float rounding)."""
    from click.testing import CliRunner

    from whybox.cli.main import main as cli

    monkeypatch.setenv("WHYBOX_CACHE_DIR", str(tmp_path / "cache"))
    saved = []
    for device in ("cpu", DEVICE.type):
        out = tmp_path / device
        args = ["explain", "--model", "digits-cnn", "digits-test", "--limit", "8", "--method", "integrated_gradients",
                "--option", "n_steps=16", "--device", device, "--out", str(out)]  # fmt: skip
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        saved.append(whybox.Explanation.load(out / "explanation.safetensors"))
    assert saved[1].target.tolist() == saved[0].target.tolist()
    scale = float(saved[0].attributions.abs().max())
    torch.testing.assert_close(saved[1].attributions, saved[0].attributions, rtol=1e-2, atol=1e-2 * scale)


def test_find_mistakes_on_cuda_gives_the_cpu_report() -> None:
    """``whybox.find_mistakes`` with the model on the GPU and the inputs and labels on the CPU."""
    model, x = small_cnn().eval(), inputs(seed=7, n=12)
    labels = torch.arange(12) % K  # a random model gets most of these wrong
    ref = whybox.find_mistakes(model, x, labels, method="lima", regions="grid", n_regions=9)
    rep = whybox.find_mistakes(on_cuda(model), x, labels, method="lima", regions="grid", n_regions=9)
    assert rep.n_wrong == ref.n_wrong > 0
    for a, b in zip(rep.mistakes, ref.mistakes, strict=True):
        assert (a.index, a.label, a.predicted, a.culprits) == (b.index, b.label, b.predicted, b.culprits)
        assert a.hc == pytest.approx(b.hc, rel=1e-6, abs=1e-9)
        assert a.attribution.device.type == "cpu" and torch.equal(a.culprit_mask, b.culprit_mask)


def test_a_run_on_cuda_stores_the_cpu_run(tmp_path: Any) -> None:
    """``run_job`` (what ``whybox compare`` runs) with the model on the GPU: the stored attributions and metric
    values equal the CPU run's to float64 rounding."""
    from whybox.runs.job import Job, run_job
    from whybox.runs.store import RunStore

    model, x = small_cnn().eval(), inputs(seed=8, n=6)
    job = Job(methods=("saliency", "lime"), metrics=("deletion", "road"), shard_size=4,
              method_options={"lime": {"n_samples": 64}}, metric_options={"road": {"fractions": (0.2, 0.6)}})  # fmt: skip
    for name, m in (("cpu", model), ("gpu", on_cuda(model))):
        run_job(job, m, x, tmp_path / name)
    stores = [RunStore.open_existing(tmp_path / name) for name in ("cpu", "gpu")]
    try:
        cpu_values, gpu_values = (sorted(s.rows("metric_values")) for s in stores)
        assert len(cpu_values) == len(gpu_values) == 6 * 2 * 2
        for a, b in zip(cpu_values, gpu_values, strict=True):  # (idx, method, metric, value, curve, reason)
            assert a[:3] == b[:3] and a[5] == b[5] and (a[3] is None) == (b[3] is None)
            assert a[3] is None or b[3] == pytest.approx(a[3], rel=1e-6, abs=1e-9)
            if a[4] is not None:  # the curve: {"x": [...], "y": [...]}
                ca, cb = json.loads(a[4]), json.loads(b[4])
                assert ca.keys() == cb.keys()
                for key in ca:
                    assert cb[key] == pytest.approx(ca[key], rel=1e-6, abs=1e-9, nan_ok=True), key
        for method in job.methods:
            for i in range(6):
                a, b = (s.load_array(method, i) for s in stores)
                assert a is not None and b is not None
                assert b == pytest.approx(a, rel=1e-6, abs=1e-9 * float(abs(a).max()))
    finally:
        for s in stores:
            s.close()


@pytest.mark.skipif(DEVICE.type != "cuda", reason="chunks are padded on CUDA only")
def test_cuda_scoring_chunks_come_in_a_few_padded_shapes() -> None:
    """On CUDA the engine pads scoring chunks to a short series of sizes (cuDNN plans a new shape at a cost): a LIMA
    search that sends a new batch size at every step gives the model a few shapes, and the CPU's passes and order."""
    from whybox.masking.engine import padded_rows

    seen: dict[str, list[int]] = {"cpu": [], "cuda": []}
    results = {}
    for where, model, x in (("cpu", small_cnn(), inputs()), ("cuda", on_cuda(small_cnn()), inputs().to(DEVICE))):
        hook = model.register_forward_pre_hook(lambda _m, args, w=where: seen[w].append(int(args[0].shape[0])))
        try:
            results[where] = whybox.explain(
                model, x, "lima", regions="grid", n_regions=16, search="naive", batch_size=1024
            )
        finally:
            hook.remove()
    assert len(set(seen["cpu"])) == 17  # 2 (16 - k) 3 rows at step k, and the empty and full inputs (3 rows)
    assert sorted(set(seen["cuda"])) == sorted({padded_rows(n, 1024) for n in seen["cpu"]}) == [16, 24, 32, 48, 64, 96]
    assert sum(seen["cuda"]) < 1.5 * sum(seen["cpu"])
    assert results["cuda"].meta["n_forward"] == results["cpu"].meta["n_forward"] == sum(seen["cpu"])
    assert torch.equal(results["cuda"].meta["order"].cpu(), results["cpu"].meta["order"])


# Kinds beyond images: the same comparison on a Conv1d signal model (B, C, L), recurrent and attention models over
# time (B, T, D), a tabular MLP (B, F) and a model of two inputs packed into one row (image and metadata).
KIND_FAST: dict[str, dict[str, Any]] = {
    **FAST,
    "lima": {},
    "exact_shapley": {"features": "grid"},
    "kernel_shap": {"n_samples": 160},
    "shapley_sampling": {"n_permutations": 4},
    "lime": {"n_samples": 64},
}


class _GRUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(4, 6, batch_first=True)
        self.head = nn.Linear(6, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


class _AttentionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return self.head(self.attn(h, h, h, need_weights=False)[0].mean(1))


class _ImageAndMeta(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.meta = nn.Linear(5, 4)
        self.head = nn.Linear(8, K)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.conv(image).relu().mean((2, 3)), self.meta(meta).tanh()], 1))


def kind_case(kind: str, seed: int = 0) -> tuple[Any, Any]:
    """A float64 model of the kind (train mode where it has Dropout or BatchNorm) and a batch of B inputs."""
    g = torch.Generator().manual_seed(seed + 11)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "signal":
            model: nn.Module = nn.Sequential(
                nn.Conv1d(2, 6, 5, padding=2), nn.BatchNorm1d(6), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                nn.Dropout(0.5), nn.Linear(6, K),
            )  # fmt: skip
            x: Any = torch.randn(B, 2, 24, generator=g, dtype=torch.float64)
        elif kind in ("sequence", "attention_sequence"):
            model = _GRUNet() if kind == "sequence" else _AttentionNet()
            x = torch.randn(B, 10, 4, generator=g, dtype=torch.float64)
        elif kind == "tabular":
            model = nn.Sequential(nn.Linear(7, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.3), nn.Linear(16, K))
            x = torch.randn(B, 7, generator=g, dtype=torch.float64)
        else:  # packed: an image and a metadata vector
            model = _ImageAndMeta()
            x = (
                torch.rand(B, 3, 6, 6, generator=g, dtype=torch.float64),
                torch.randn(B, 5, generator=g, dtype=torch.float64),
            )
    return model.to(torch.float64).train(), x


def _adapted(kind: str, model: nn.Module) -> Any:
    return whybox.adapt(model, input_shapes=[(3, 6, 6), (5,)]) if kind == "packed" else model


def _to(x: Any, device: torch.device) -> Any:
    return tuple(t.to(device) for t in x) if isinstance(x, tuple) else x.to(device)


KIND_LISTS = (("signal", "signal"), ("sequence", "sequence"), ("attention_sequence", "sequence"), ("tabular", "tabular"),
              ("packed", "tabular"))  # fmt: skip
KIND_METHODS = [
    (kind, m)
    for kind, listed in KIND_LISTS
    for m in whybox.methods(listed)
    if not (kind == "packed" and m == "exact_shapley")  # 2**123 coalitions of single features: refused on both
]


@pytest.mark.parametrize(("kind", "method"), KIND_METHODS, ids=[f"{k}-{m}" for k, m in KIND_METHODS])
def test_every_method_of_the_other_kinds_gives_on_cuda_what_it_gives_on_the_cpu(kind: str, method: str) -> None:
    model, x = kind_case(kind)
    opts = {**KIND_FAST.get(method, {}), "seed": 3}
    if method == "exact_shapley" and kind != "signal":
        opts["features"] = "segments" if "sequence" in kind else "columns"
    e_cpu = whybox.explain(_adapted(kind, model), x, method, **opts)
    gpu_model = on_cuda(model)
    before = state(gpu_model)
    e_gpu = whybox.explain(_adapted(kind, gpu_model), _to(x, DEVICE), method, **opts)
    assert_same_state(before, state(gpu_model))
    assert e_gpu.target.tolist() == e_cpu.target.tolist()
    assert e_gpu.attributions.shape == e_cpu.attributions.shape and e_gpu.attributions.dtype == e_cpu.attributions.dtype
    assert_close(e_gpu.attributions, e_cpu.attributions, what=f"{kind} {method}")
    for key in ("n_forward", "n_backward", "finite"):
        assert e_gpu.meta[key] == e_cpu.meta[key], key
    if method == "lima":
        assert torch.equal(e_gpu.meta["order"].cpu(), e_cpu.meta["order"])


SEQUENCE_METRICS = [m for m in whybox.metrics() if m not in MASKS and m != "randomization"] + ["randomization"]


@pytest.mark.parametrize("name", SEQUENCE_METRICS)
def test_every_metric_on_a_recurrent_model_gives_on_cuda_what_it_gives_on_the_cpu(name: str) -> None:
    """Metrics of a GRU's sequence explanations (B, T, D) on cuda: the CPU's scores and curves."""
    model, x = kind_case("sequence")
    model.eval()
    e = whybox.explain(model, x, "saliency", target=[1, 2, 0])
    compare_metric(model, x, e, name, METRIC_FAST.get(name, {}))


class _StackedLSTM(nn.Module):
    """Two LSTM layers with dropout between them: in training mode another function, so its CUDA gradient passes
    run in training mode with that dropout at 0; the packed variant feeds it a PackedSequence of unequal lengths."""

    def __init__(self, packed: bool = False) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 6, num_layers=2, dropout=0.3, batch_first=True)
        self.head = nn.Linear(6, K)
        self.packed = packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed:
            lengths = torch.tensor([x.shape[1] - i % 3 for i in range(x.shape[0])])
            seq = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            return self.head(self.rnn(seq)[1][0][-1])
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "smoothgrad"])
def test_gradients_of_a_stacked_lstm_with_dropout_on_cuda(method: str, packed: bool) -> None:
    """The layer whose training mode differs (dropout between layers) takes its gradient passes in training mode with
    its dropout at 0: the CPU's maps, cuDNN's switch, the layer's mode and dropout as they were."""
    torch.manual_seed(0)
    model = _StackedLSTM(packed).double().eval()
    x = torch.randn(B, 7, 4, dtype=torch.float64)
    opts = {**FAST.get(method, {}), "seed": 2}
    e_cpu = whybox.explain(model, x, method, **opts)
    gpu_model = on_cuda(model)
    before = state(gpu_model)
    flag = torch.backends.cudnn.enabled
    e_gpu = whybox.explain(gpu_model, x.to(DEVICE), method, **opts)
    assert torch.backends.cudnn.enabled == flag
    assert_same_state(before, state(gpu_model))
    assert_close(e_gpu.attributions, e_cpu.attributions, what=method)


@pytest.mark.parametrize("hw", [(1, 1), (2, 9), (8, 8), (13, 40)])
def test_the_blur_fill_on_cuda_is_scipys_mirror_gaussian_at_any_size(hw: tuple[int, int]) -> None:
    """The blur gathers mirrored indices on the image's own device (session 32): on CUDA it equals scipy's
    ``gaussian_filter(mode="mirror", truncate=3)`` in float64, also where the kernel is longer than the image."""
    from scipy.ndimage import gaussian_filter

    from whybox.masking.fills import gaussian_blur

    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for sigma in (0.7, 5.0):
        got = gaussian_blur(x.to(DEVICE), sigma)
        assert got.device.type == DEVICE.type
        want = torch.stack(
            [torch.stack([torch.from_numpy(gaussian_filter(c.numpy(), sigma, mode="mirror", truncate=3)) for c in r])
             for r in x]
        )  # fmt: skip
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-12)


def test_a_swin_cam_behind_a_resize_on_cuda_gives_the_cpu_map() -> None:
    """Grad-CAM on a Hugging Face Swin behind a resizing preprocess (session 32: the token grid of the image the
    model sees, one preprocess call on one row to tell it): the same layer, grid and map on the GPU as on the CPU."""
    transformers = pytest.importorskip("transformers", reason="the text extra (transformers) is not installed")
    cfg = transformers.SwinConfig(image_size=(32, 80), patch_size=4, embed_dim=8, depths=[1, 1, 1],
                                  num_heads=[1, 1, 1], window_size=2, num_labels=3)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.SwinForImageClassification(cfg).double().eval()

    def resize(x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, size=(32, 80), mode="bilinear", align_corners=False)

    x = torch.rand(2, 3, 80, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    opts = {"target": 1, "normalize": "none"}
    ref = whybox.explain(whybox.adapt(model, output="logits", preprocess=resize), x, "gradcam", **opts)
    model.to(DEVICE)
    try:
        e = whybox.explain(whybox.adapt(model, output="logits", preprocess=resize), x.to(DEVICE), "gradcam", **opts)
    finally:
        model.to("cpu")
    assert e.meta["layer"] == ref.meta["layer"] == ["swin.layernorm"]
    assert e.meta["layer_shape"] == ref.meta["layer_shape"] == [[32, 2, 5]]
    assert e.attributions.device.type == DEVICE.type
    torch.testing.assert_close(e.attributions.cpu(), ref.attributions, rtol=1e-9, atol=1e-9)
