"""ONNX models (RELIABILITY.md "Inputs from outside": model files include ONNX): an ``.onnx`` file exported from a
small torch network, run by ONNX Runtime as a black box, gives the torch module's numbers for the perturbation
methods and the metrics, through the API and the command line; its bytes fingerprint a run; what it cannot do
(gradients, layers) and what whybox cannot feed it (several inputs, other row shapes) are clear errors."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")
pytest.importorskip("onnx", reason="exporting the test models needs the onnx package (dev extra)")

import whybox
from whybox.cli.main import main as cli
from whybox.errors import InvalidInputError, InvalidParameterError, NotDifferentiableError
from whybox.models.onnx import OnnxModel
from whybox.runs.job import Job, run_job
from whybox.runs.store import FingerprintMismatchError


def cnn(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 4)
        ).eval()


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = cnn()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return x.mean((1, 2, 3)), logits


class TwoInputs(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :3] + y


def export(module: nn.Module, path: Path, args: tuple[torch.Tensor, ...], *, dynamic: bool = True) -> Path:
    n_out = 2 if isinstance(module, TwoOutputs) else 1
    inputs = ["x", "y"][: len(args)]
    outputs = ["mean", "logits"] if n_out == 2 else ["logits"]
    axes = {n: {0: "n"} for n in inputs + outputs} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation notices
        torch.onnx.export(module, args, str(path), dynamo=False, input_names=inputs, output_names=outputs,
                          dynamic_axes=axes)  # fmt: skip
    return path


def images(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("onnx")
    return {
        "dynamic": export(cnn(), d / "cnn.onnx", (images(2),)),
        "batch1": export(cnn(), d / "cnn_b1.onnx", (images(1),), dynamic=False),
        "other": export(cnn(seed=1), d / "other.onnx", (images(2),)),
        "two_outputs": export(TwoOutputs(), d / "two.onnx", (images(2),)),
        "two_inputs": export(TwoInputs(), d / "in2.onnx", (images(2), torch.rand(2, 3))),
    }


@pytest.mark.parametrize("graph", ["dynamic", "batch1"])
@pytest.mark.parametrize("method", ["occlusion", "kernel_shap", "lima", "rise"])
def test_an_onnx_file_gives_the_torch_module_s_numbers(graphs: dict[str, Path], graph: str, method: str) -> None:
    """The same network as a module and as an exported graph: equal maps (float32 rounding apart), for a graph with
    a free batch dimension and one traced at batch 1 (fed in chunks of 1)."""
    x = images()
    opts = {"n_samples": 200} if method == "kernel_shap" else {"n_masks": 50} if method == "rise" else {}
    got = whybox.explain(str(graphs[graph]), x, method, seed=0, **opts)
    want = whybox.explain(cnn(), x, method, seed=0, **opts)
    torch.testing.assert_close(got.attributions, want.attributions, atol=2e-5, rtol=1e-4)
    assert torch.equal(got.target, want.target)


def signal_cnn() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        return nn.Sequential(
            nn.Conv1d(2, 6, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(4), nn.Flatten(), nn.Linear(24, 3)
        ).eval()


@pytest.mark.parametrize("method", ["occlusion", "rise", "lima", "kernel_shap"])
def test_a_1d_cnn_exported_to_onnx_reads_signals_as_the_module_does(method: str, tmp_path: Path) -> None:
    """A 1-D CNN's graph takes (B, C, L) signals: its first Conv is 1-D, so whybox treats the inputs as signals (time
    windows, segments along L), as for the torch module; before, they were read as images and the defaults differed
    (RISE, LIMA and exact Shapley failed on every row of a command-line run)."""
    from whybox.models.adapter import is_signal

    module = signal_cnn()
    x = torch.rand(3, 2, 64, generator=torch.Generator().manual_seed(1))
    graph = whybox.adapt(export(module, tmp_path / "sig.onnx", (x[:2],)))
    assert is_signal(graph, x) and not is_signal(graph, x[:, :1])
    opts = {"n_masks": 40} if method == "rise" else {}
    got = whybox.explain(graph, x, method, seed=0, **opts)
    want = whybox.explain(module, x, method, seed=0, **opts)
    torch.testing.assert_close(got.attributions, want.attributions, atol=2e-5, rtol=1e-4)
    assert got.meta.get("signal") is True
    e = whybox.explain(module, x, "saliency")
    torch.testing.assert_close(whybox.evaluate(graph, x, e, "deletion").scores,
                               whybox.evaluate(module, x, e, "deletion").scores, atol=1e-5, rtol=1e-4)  # fmt: skip


def test_metrics_on_an_onnx_model_equal_the_module_s(graphs: dict[str, Path]) -> None:
    x = images()
    model = whybox.adapt(graphs["dynamic"])
    e = whybox.explain(cnn(), x, "saliency")
    for metric in ("deletion", "insertion", "mufidelity"):
        got = whybox.evaluate(model, x, e, metric).scores
        torch.testing.assert_close(got, whybox.evaluate(cnn(), x, e, metric).scores, atol=1e-5, rtol=1e-4)


def test_what_an_onnx_graph_cannot_do_or_be_fed_is_a_clear_error(graphs: dict[str, Path], tmp_path: Path) -> None:
    x = images(2)
    with pytest.raises(NotDifferentiableError, match="cannot run; use 'rise', 'lima' or a perturbation method"):
        whybox.explain(str(graphs["dynamic"]), x, "saliency")
    with pytest.raises(InvalidParameterError, match=r"has 2 outputs \(mean, logits\); pass output="):
        whybox.adapt(graphs["two_outputs"])
    by_name = whybox.explain(whybox.adapt(graphs["two_outputs"], output="logits"), x, "occlusion")
    torch.testing.assert_close(by_name.attributions, whybox.explain(cnn(), x, "occlusion").attributions, atol=2e-5,
                               rtol=1e-4)  # fmt: skip
    with pytest.raises(InvalidParameterError, match=r"output='logit' is not an output .* Did you mean 'logits'"):
        whybox.adapt(graphs["two_outputs"], output="logit")
    with pytest.raises(InvalidParameterError, match=r"takes 2 inputs \(x, y\); whybox explains a graph of one input"):
        whybox.adapt(graphs["two_inputs"])
    with pytest.raises(InvalidInputError, match=r"reads input 'x' of shape \(batch, 1, 8, 8\); got rows of shape"):
        whybox.explain(str(graphs["dynamic"]), torch.rand(2, 3, 8, 8), "occlusion")
    with pytest.raises(InvalidParameterError, match=r"no such ONNX file"):
        whybox.adapt(tmp_path / "missing.onnx")


def test_an_onnx_model_pickles_by_its_bytes(graphs: dict[str, Path]) -> None:
    """Ray ships models to its workers by pickling: the session is rebuilt from the graph's bytes."""
    model = OnnxModel(graphs["dynamic"])
    again = pickle.loads(pickle.dumps(model))
    x = images(3)
    assert np.array_equal(again(x), model(x)) and again.fingerprint == model.fingerprint


def test_command_line_onnx_model(graphs: dict[str, Path], tmp_path: Path) -> None:
    """--model model.onnx: explain writes the API's explanation; compare leaves out what a black box cannot run;
    --weights is refused (the weights are in the file); a run resumes only onto the same graph's bytes."""
    x = images(4)
    np.save(tmp_path / "x.npy", x.numpy())
    out = tmp_path / "e"
    res = CliRunner().invoke(cli, ["explain", "--model", str(graphs["dynamic"]), str(tmp_path / "x.npy"), "--method",
                                   "occlusion", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    saved = whybox.Explanation.load(out / "explanation.safetensors")
    assert torch.equal(saved.attributions, whybox.explain(str(graphs["dynamic"]), x, "occlusion").attributions)
    (tmp_path / "w.safetensors").write_bytes(b"")
    res = CliRunner().invoke(cli, ["explain", "--model", str(graphs["dynamic"]), "--weights", str(tmp_path / "w.safetensors"),
                                   str(tmp_path / "x.npy"), "--method", "occlusion", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 2 and "whose weights are in the file; drop --weights" in res.output
    res = CliRunner().invoke(cli, ["compare", "--model", str(graphs["dynamic"]), str(tmp_path / "x.npy"), "--metrics",
                                   "deletion", "--out", str(tmp_path / "run"), "--no-report"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "saliency" in res.stderr and "gradcam" in res.stderr and "0 failed (sample, method) pairs" in res.stdout

    job = Job(methods=("occlusion",), metrics=("deletion",), shard_size=2)
    run_job(job, whybox.adapt(graphs["dynamic"]), x, tmp_path / "r")
    with pytest.raises(FingerprintMismatchError, match=r"changed: weights"):
        run_job(job, whybox.adapt(graphs["other"]), x, tmp_path / "r")
    again = run_job(job, whybox.adapt(graphs["dynamic"]), x, tmp_path / "r")
    assert again.complete and again.n_computed == 0


def test_an_onnx_grayscale_cnn_reads_image_files_as_one_channel(tmp_path: Path) -> None:
    """Fourth-pass audit: the loader looked for an nn.Conv2d to choose grayscale image files, which an ONNX graph has
    none of, so a 1-channel ONNX CNN was given RGB rows and every method failed."""
    from whybox.runs.loaders import _gray_prepare, load_inputs, load_model

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(128, 3)).eval()
    path = export(cnn, tmp_path / "g.onnx", (images(2),))
    lm = load_model(str(path))
    assert lm.prepare_image is _gray_prepare
    ds = load_inputs(["digits-test"], lm, limit=2)
    assert tuple(ds.x.shape[1:]) == (1, 8, 8)
