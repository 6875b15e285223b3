"""ONNX models, eighth pass: a model given as an ``onnxruntime.InferenceSession`` fingerprints a run by its graph's
bytes, as a path-made one does (a re-exported file of new weights no longer resumes a stale run); an integer graph
input refuses the non-whole values a fill, baseline or background makes (NumPy's cast cut them toward zero without a
word); a gradient method and a CAM name the ONNX graph; pickling keeps ``threads=``; a graph whose weights are in
external data files loads from its path, fingerprints them too and pickles by its path."""

from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from whybox.errors import DataFormatError, InvalidInputError, InvalidParameterError, LayerError, NotDifferentiableError
from whybox.models.onnx import OnnxModel
from whybox.runs.job import Job, fingerprints, run_job
from whybox.runs.store import FingerprintMismatchError

ort = pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")
pytest.importorskip("onnx", reason="exporting the test models needs the onnx package (dev extra)")

X = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))


def _export(module: nn.Module, path: Path, x: torch.Tensor, n_out: int = 1) -> Path:
    outputs = ["y", "z"][:n_out]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation notices
        torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["c"], output_names=outputs,
                          dynamic_axes={n: {0: "b"} for n in ["c", *outputs]})  # fmt: skip
    return path


def linear(seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(6, 3).eval()


# ------------------------------------------------------------------ 1. a session's run is fingerprinted by its graph
def test_a_session_made_model_refuses_a_run_after_its_file_got_new_weights(tmp_path: Path) -> None:
    path, run = tmp_path / "model.onnx", tmp_path / "run"
    job = Job(methods=("occlusion",))
    _export(linear(1), path, X)
    assert run_job(job, whybox.adapt(ort.InferenceSession(str(path))), X, run).n_computed == 1
    again = run_job(job, whybox.adapt(ort.InferenceSession(str(path))), X, run)  # the same weights: resumes
    assert (again.n_computed, again.n_skipped) == (0, 1)
    _export(linear(2), path, X)  # retrained, re-exported to the same file
    with pytest.raises(FingerprintMismatchError, match="changed: weights"):
        run_job(job, whybox.adapt(ort.InferenceSession(str(path))), X, run)


def test_a_session_fingerprint_is_the_bytes_it_was_made_from(tmp_path: Path) -> None:
    """A session from the file, one from its bytes and the path itself: one fingerprint, the bytes' SHA-256; the
    graph is read when the model is made (the session runs those weights, whatever the file holds later)."""
    path = _export(linear(1), tmp_path / "model.onnx", X)
    data = path.read_bytes()
    made = OnnxModel(ort.InferenceSession(str(path)))
    digests = {
        made.fingerprint,
        OnnxModel(ort.InferenceSession(data)).fingerprint,
        OnnxModel(path).fingerprint,
        hashlib.sha256(data).hexdigest(),
    }
    assert len(digests) == 1
    _export(linear(2), path, X)
    assert made.fingerprint == hashlib.sha256(data).hexdigest() != OnnxModel(path).fingerprint


def test_a_session_whose_graph_is_gone_cannot_fingerprint_a_run(tmp_path: Path) -> None:
    path = _export(linear(1), tmp_path / "model.onnx", X)
    session = ort.InferenceSession(str(path))
    path.unlink()
    model = whybox.adapt(session)
    assert np.allclose(model.scores(X).numpy(), linear(1)(X).detach().numpy(), atol=1e-5)  # it still scores
    with pytest.raises(InvalidParameterError, match=r"cannot fingerprint its weights; make the model from the \.onnx"):
        run_job(Job(methods=("occlusion",)), model, X, tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = linear(1), linear(2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(x), self.b(x)


def test_the_graph_output_and_a_closure_over_the_graph_enter_the_weights_fingerprint(tmp_path: Path) -> None:
    job = Job(methods=("occlusion",))
    two = _export(TwoHeads(), tmp_path / "two.onnx", X, n_out=2)

    def weights(model: object) -> str:
        return fingerprints(job, whybox.adapt(model), X, [], None)["weights"]

    session = ort.InferenceSession(str(two))
    assert weights(whybox.adapt(session, output="y")) != weights(whybox.adapt(session, output="z"))
    one = _export(linear(1), tmp_path / "one.onnx", X)
    first = OnnxModel(ort.InferenceSession(str(one)))
    before = weights(lambda x: first(x) * 2)
    _export(linear(2), one, X)
    second = OnnxModel(ort.InferenceSession(str(one)))
    assert weights(lambda x: second(x) * 2) != before


# ------------------------------------------------------------------ 2. an integer input refuses non-whole values
class Counts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 3)
        with torch.no_grad():
            self.lin.weight.copy_(torch.linspace(-1, 1, 15).reshape(3, 5))
            self.lin.bias.zero_()

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.lin(c.float())


COUNTS = torch.tensor([[1, 2, 4, 6, 8], [3, 0, 2, 5, 1]])


@pytest.fixture(params=[torch.int64, torch.int32], ids=["int64", "int32"])
def counts_graph(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    dtype = request.param
    return _export(Counts().eval(), tmp_path / "counts.onnx", COUNTS.to(dtype)), str(dtype).removeprefix("torch.")


@pytest.mark.parametrize(("fill", "seen", "read"), [(2.5, "2.5", "2"), (-0.7, "-0.7", "0"), ("mean", "4.2", "4")])
def test_a_non_whole_fill_for_an_integer_graph_input_is_refused(
    counts_graph: tuple[Path, str], fill: object, seen: str, read: str
) -> None:
    path, kind = counts_graph
    with pytest.raises(InvalidInputError) as info:
        whybox.explain(whybox.adapt(path), COUNTS, "occlusion", target=0, fill=fill)
    message = str(info.value)
    assert f"reads input 'c' as {kind} (whole numbers)" in message
    assert f"holds {seen}, which it would read as {read}" in message
    assert "fill=0" in message and "export the graph with a float input" in message


def test_a_non_whole_background_for_an_integer_graph_input_is_refused(counts_graph: tuple[Path, str]) -> None:
    path, _ = counts_graph
    background = COUNTS.float().mean(0, keepdim=True)  # (2, 1, 3, 5.5, 4.5)
    for method in ("kernel_shap", "shapley_sampling"):
        with pytest.raises(InvalidInputError, match=r"holds 5\.5, which it would read as 5"):
            whybox.explain(whybox.adapt(path), COUNTS, method, target=0, background=background)


def test_whole_valued_floats_reach_an_integer_graph_as_the_torch_module_reads_them(
    counts_graph: tuple[Path, str],
) -> None:
    """Whole fills given as floats (4.0, a tensor of whole values, the rounded mean) pass, and the graph's map is
    the torch module's."""
    path, _ = counts_graph
    model = whybox.adapt(path)
    for fill in (4.0, COUNTS.float().mean(0).round()):
        got = whybox.explain(model, COUNTS, "occlusion", target=0, fill=fill).attributions
        want = whybox.explain(Counts().eval(), COUNTS, "occlusion", target=0, fill=fill).attributions
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    graph = OnnxModel(path)
    np.testing.assert_array_equal(graph(COUNTS.double()), graph(COUNTS))


def test_values_an_integer_graph_input_cannot_hold_are_refused(counts_graph: tuple[Path, str]) -> None:
    path, kind = counts_graph
    graph = OnnxModel(path)
    for bad in (1e30, float("inf"), float("nan")):
        x = COUNTS.double().clone()
        x[1, 3] = bad
        with pytest.raises(InvalidInputError, match=rf"which {kind} cannot hold \(at \[1, 3\] of a batch of 2 rows\)"):
            graph(x)


# ------------------------------------------------------------------ 3. smaller ones
def test_a_gradient_method_on_an_onnx_graph_names_the_graph(tmp_path: Path) -> None:
    path = _export(linear(1), tmp_path / "net.onnx", X)
    for method in ("saliency", "integrated_gradients"):
        with pytest.raises(
            NotDifferentiableError,
            match=rf"method '{method}' needs gradients, but ONNX model 'net.onnx' runs in ONNX Runtime, outside torch",
        ):
            whybox.explain(str(path), X, method, target=0)


def test_a_pickled_onnx_model_keeps_its_threads_and_a_session_refuses_threads(tmp_path: Path) -> None:
    path = _export(linear(1), tmp_path / "net.onnx", X)
    model = OnnxModel(path, threads=1)
    again = pickle.loads(pickle.dumps(model))
    assert again.threads == 1 and again.session.get_session_options().intra_op_num_threads == 1
    np.testing.assert_array_equal(again(X), model(X))
    with pytest.raises(InvalidParameterError, match=r"threads=2 cannot apply to an onnxruntime\.InferenceSession"):
        OnnxModel(ort.InferenceSession(str(path)), threads=2)


def test_a_cam_on_an_onnx_graph_names_the_graph(tmp_path: Path) -> None:
    """A CAM said 'no layer of FunctionModel produces a spatial output; a function has no layers' on an ONNX graph;
    it names the graph and why, as the gradient methods do."""
    path = _export(linear(1), tmp_path / "net.onnx", X)
    for method in ("gradcam", "scorecam"):
        with pytest.raises(
            LayerError,
            match=rf"method '{method}' taps a layer of a torch model, but ONNX model 'net\.onnx' runs in ONNX Runtime",
        ):
            whybox.explain(str(path), X, method, target=0)


# ------------------------------------------------------------------ 4. weights in external data files
def _export_external(folder: Path, seed: int, *, constant: bool = False) -> np.ndarray:
    """A graph y = x @ W saved with W in ``model.onnx.data`` (``save_as_external_data``): W an initializer, or with
    ``constant`` a Constant node's value (an attribute tensor); returns W."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).standard_normal((6, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["c", "W"], ["y"])]
    if constant:
        nodes.insert(0, helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w, "W")))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["b", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])],
        [] if constant else [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / "model.onnx.data").unlink(missing_ok=True)
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0, convert_attribute=True)  # fmt: skip
    return w


@pytest.mark.parametrize("constant", [False, True], ids=["initializer", "constant"])
def test_weights_in_external_data_enter_the_fingerprint(tmp_path: Path, constant: bool) -> None:
    """A re-export of new weights leaves model.onnx's bytes as they were (the weights are in model.onnx.data): the
    fingerprint, of a session made from the file and of the path, now reads the data file too, so a run refuses
    to resume onto the new weights (it resumed stale) and resumes onto the same ones; the path-made model loads
    (ONNX Runtime refused its bytes: 'escapes working directory') and scores x @ W."""
    path, run, job = tmp_path / "model.onnx", tmp_path / "run", Job(methods=("occlusion",))
    w1 = _export_external(tmp_path, 1, constant=constant)
    graph = path.read_bytes()
    np.testing.assert_allclose(whybox.adapt(path).scores(X).numpy(), X.numpy() @ w1, rtol=1e-5, atol=1e-5)
    first = {OnnxModel(path).fingerprint, OnnxModel(ort.InferenceSession(str(path))).fingerprint}
    assert len(first) == 1 and first != {hashlib.sha256(graph).hexdigest()}
    assert run_job(job, whybox.adapt(ort.InferenceSession(str(path))), X, run).n_computed == 1
    assert run_job(job, whybox.adapt(path), X, run).n_skipped == 1  # the same weights: resumes
    _export_external(tmp_path, 2, constant=constant)  # retrained, re-exported to the same files
    assert path.read_bytes() == graph
    second = {OnnxModel(path).fingerprint, OnnxModel(ort.InferenceSession(str(path))).fingerprint}
    assert len(second) == 1 and second != first
    for model in (ort.InferenceSession(str(path)), path):
        with pytest.raises(FingerprintMismatchError, match="changed: weights"):
            run_job(job, whybox.adapt(model), X, run)


def test_a_graph_whose_external_data_cannot_be_read_or_listed_cannot_fingerprint_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rather than a fingerprint of the graph without its weights: a session whose data file is gone. Without the
    onnx package the external data entries are read from the graph's bytes: the same fingerprint as with it, and a
    graph whose output is named 'location' (no external data) fingerprints by its bytes."""
    path = tmp_path / "model.onnx"
    _export_external(tmp_path, 1)
    session = ort.InferenceSession(str(path))
    (tmp_path / "model.onnx.data").rename(tmp_path / "moved.data")
    with pytest.raises(InvalidParameterError, match=r"keeps weights in the external data file 'model\.onnx\.data', wh"):
        run_job(Job(methods=("occlusion",)), whybox.adapt(session), X, tmp_path / "run")
    (tmp_path / "moved.data").rename(tmp_path / "model.onnx.data")
    plain = _export(linear(1), tmp_path / "plain.onnx", X)
    named = tmp_path / "named.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation notices
        torch.onnx.export(linear(2), (X,), str(named), dynamo=False, input_names=["c"], output_names=["location"],
                          dynamic_axes={"c": {0: "b"}, "location": {0: "b"}})  # fmt: skip
    assert b"location" in named.read_bytes()
    with_onnx = OnnxModel(path).fingerprint
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # import onnx raises ImportError
    assert OnnxModel(path).fingerprint == with_onnx != hashlib.sha256(path.read_bytes()).hexdigest()
    assert OnnxModel(plain).fingerprint == hashlib.sha256(plain.read_bytes()).hexdigest()
    assert OnnxModel(named).fingerprint == hashlib.sha256(named.read_bytes()).hexdigest()


def test_an_external_data_graph_from_bytes_says_to_pass_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime finds the data file of a graph given as bytes only in the working directory; elsewhere the
    error says which file the graph names and to pass the path."""
    _export_external(tmp_path, 1)
    data = (tmp_path / "model.onnx").read_bytes()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(DataFormatError, match=r"external data file\(s\) 'model\.onnx\.data'.* made from its path"):
        OnnxModel(data)


def test_an_external_data_model_pickles_by_its_path_and_refuses_other_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its bytes would not carry its weights: pickled by its path, rebuilt there with the same fingerprint and
    scores, refused when the files there changed; one made from bytes (data read from the working directory) is
    refused pickling."""
    path = tmp_path / "model.onnx"
    _export_external(tmp_path, 1)
    model = OnnxModel(path, threads=1)
    blob = pickle.dumps(model)
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again(X), model(X))
    assert (again.fingerprint, again.name, again.threads) == (model.fingerprint, "model.onnx", 1)
    _export_external(tmp_path, 2)
    with pytest.raises(InvalidParameterError, match=r"the files there now hold another graph or other weights"):
        pickle.loads(blob)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match=r"made from bytes whose weights are in external data files \('model\.onnx\.da"):
        pickle.dumps(OnnxModel(path.read_bytes()))


def test_without_onnx_the_bytes_give_the_external_files_the_package_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The byte-level reading (no onnx package) finds the same files as the package: a non-ASCII name (its byte
    length is not its character count) and one file per tensor; a node whose last input is named "location",
    followed by its output's name, is no external data entry, even where a file of that name lies beside it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from whybox.models.onnx import _external_files

    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((6, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["c", "Wé ü"], ["m"]), helper.make_node("Add", ["m", "B✓"], ["y"])],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["b", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3])],
        [numpy_helper.from_array(w, "Wé ü"), numpy_helper.from_array(b, "B✓")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)  # fmt: skip
    data = (tmp_path / "m.onnx").read_bytes()
    listed = _external_files(data, tmp_path)
    assert len(listed) == 2 and any(not name.isascii() for name in listed)
    decoy = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["location"], ["feats"])],
            "d",
            [helper.make_tensor_value_info("location", TensorProto.FLOAT, ["b", 3])],
            [helper.make_tensor_value_info("feats", TensorProto.FLOAT, ["b", 3])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    (tmp_path / "feats").write_text("notes")
    decoy_bytes = decoy.SerializeToString()
    assert _external_files(decoy_bytes, tmp_path) == []
    with_onnx = OnnxModel(tmp_path / "m.onnx").fingerprint
    monkeypatch.setitem(__import__("sys").modules, "onnx", None)  # import onnx raises ImportError
    assert _external_files(data, tmp_path) == listed
    assert _external_files(decoy_bytes, tmp_path) == []
    assert OnnxModel(tmp_path / "m.onnx").fingerprint == with_onnx
