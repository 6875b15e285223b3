"""Sixth-pass findings, each a property the earlier code broke: sequences (B, T, D) as a kind of input of their own
(methods, LIMA's regions, the CLI's pictures, runs and debug), ..."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import whybox
from whybox.cli.main import main as cli
from whybox.errors import InvalidParameterError
from whybox.models.adapter import is_sequence
from whybox.runs.loaders import load_inputs, load_model

GRU_PY = """
import torch
from torch import nn


class GRUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.fc(out[:, -1])


def build():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return GRUNet().eval()
"""


class GRUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.fc(out[:, -1])


def _gru() -> nn.Module:
    torch.manual_seed(0)
    return GRUNet().eval()


@pytest.fixture
def seq_files(tmp_path: Path) -> tuple[str, Path, Path]:
    (tmp_path / "gru.py").write_text(GRU_PY)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "seq.npy", rng.normal(size=(4, 12, 4)).astype(np.float32))
    np.savez(tmp_path / "seql.npz", x=rng.normal(size=(6, 12, 4)).astype(np.float32), y=np.array([0, 1, 2, 0, 1, 2]))
    return f"{tmp_path / 'gru.py'}:build", tmp_path / "seq.npy", tmp_path / "seql.npz"


# ---------------------------------------------------------------------------------------------- sequences (B, T, D)
def test_sequences_are_their_own_kind_with_the_methods_that_apply_to_them() -> None:
    names = whybox.methods("sequence")
    assert "lima" in names and "occlusion" in names and "integrated_gradients" in names
    assert not {"gradcam", "scorecam", "rise", "attention_rollout"} & set(names)
    x = torch.randn(2, 12, 4)
    assert is_sequence(whybox.adapt(_gru()), x)
    conv1d = nn.Sequential(nn.Conv1d(12, 2, 3), nn.Flatten(), nn.LazyLinear(3))
    assert not is_sequence(whybox.adapt(conv1d), x)  # a Conv1d reading 12 channels: a signal
    conv2d = nn.Sequential(nn.Unflatten(1, (1, 12)), nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(3))
    assert not is_sequence(whybox.adapt(conv2d), x)  # channel-less images (B, H, W) of a 2-D CNN
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    assert not is_sequence(whybox.adapt(mlp), x)  # nothing says it reads steps: gray images of an MLP
    assert not is_sequence(whybox.adapt(lambda t: _gru()(t)), x)  # a black box does not tell

    class Permuted(nn.Module):  # a 1-D CNN over time that takes (B, T, D) and permutes it
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(4, 5, 3)
            self.fc = nn.Linear(5, 3)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(t.transpose(1, 2)).mean(-1))

    assert is_sequence(whybox.adapt(Permuted()), x)
    encoder = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(4, 2, 8, batch_first=True), 1, enable_nested_tensor=False
    )
    assert is_sequence(whybox.adapt(nn.Sequential(encoder, nn.Flatten(), nn.Linear(48, 3))), x)
    for name in names:  # every listed method runs on a GRU's sequences (exact Shapley over fewer features)
        opts = {"features": torch.arange(12).view(12, 1).expand(12, 4) // 3} if name == "exact_shapley" else {}
        e = whybox.explain(_gru(), x, name, **opts)
        assert torch.isfinite(e.attributions).all() and e.meta["sequence"] is True, name


def test_lima_cuts_sequences_into_time_windows_by_default() -> None:
    model, x = _gru(), torch.randn(3, 12, 4, generator=torch.Generator().manual_seed(1))
    auto = whybox.explain(model, x, "lima", n_regions=6)
    segments = whybox.explain(model, x, "lima", regions="segments", n_regions=6)
    assert torch.equal(auto.attributions, segments.attributions) and auto.attributions.shape == (3, 12, 1)
    grid = whybox.explain(model, x, "lima", regions="grid", n_regions=6)
    assert torch.equal(grid.attributions, segments.attributions)
    flat_images = nn.Sequential(nn.Unflatten(1, (1, 12)), nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 10 * 2, 3))
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))  # an MLP on gray images (B, H, W): not a sequence either
    for images in (flat_images.eval(), mlp.eval()):
        with pytest.raises(InvalidParameterError, match=r"sequences \(B, T, D\) on a model with a recurrent layer"):
            whybox.explain(images, x, "lima")


def test_a_sequence_plot_draws_the_features_over_time_under_the_map() -> None:
    x = torch.randn(2, 12, 4)
    e = whybox.explain(_gru(), x, "saliency")
    fig = e.plot(x)
    axes = [ax for ax in fig.axes if ax.get_xlabel() == "time step"]
    assert len(axes) == 2 and all(len(ax.lines) == 4 for ax in axes)  # D = 4 features as lines over T = 12 steps
    assert np.allclose(axes[1].lines[2].get_ydata(), x[1, :, 2].numpy())
    band = axes[0].images[0].get_array()
    assert band.shape[:2] == (1, 12)  # one colour per time step
    with pytest.raises(whybox.errors.InvalidInputError, match=r"explained sequences \(B, T, D\) with B = 2 and T = 12"):
        e.plot(x.transpose(1, 2))


def test_the_cli_reads_3d_arrays_of_a_recurrent_model_as_sequences(seq_files: tuple[str, Path, Path]) -> None:
    spec, npy, npz = seq_files
    lm = load_model(spec)
    ds = load_inputs([str(npy)], lm)
    assert ds.kind == "sequence" and ds.x.shape == (4, 12, 4)
    runner = CliRunner()
    out = npy.parent / "run"
    res = runner.invoke(cli, ["compare", "--model", spec, str(npy), "--out", str(out), "--limit", "2"])
    assert res.exit_code == 0, res.output
    assert "0 failed (sample, method) pairs" in res.output  # CAMs, RISE and attention are not tried on sequences
    assert "left out: exact_shapley (the inputs have more than 16 features, up to 48" in res.stderr
    ran = {line.split()[0] for line in res.output.splitlines() if line[:1].isalpha() and "shard" not in line}
    assert set(whybox.methods("sequence")) - {"exact_shapley"} <= ran
    from whybox.runs.report_data import load_run_report

    report = load_run_report(out)
    sample = report.samples[0]
    assert sample.image is not None and sample.image.shape == (96, 288, 3)  # the 4 features over 12 steps
    assert all(m is not None and m.shape == (1, 12) for m in sample.maps.values())

    ex = npy.parent / "ex"
    res = runner.invoke(
        cli, ["explain", "--model", spec, str(npy), "--method", "lima", "--out", str(ex), "--limit", "2"]
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in ex.iterdir()) == [
        ".whybox-explain-files.json",
        "0000_seq-0_lima.png",
        "0001_seq-1_lima.png",
        "explanation.safetensors",
    ]

    dbg = npy.parent / "dbg"
    res = runner.invoke(cli, ["debug", "--model", spec, str(npz), "--method", "occlusion", "--out", str(dbg)])
    assert res.exit_code == 0, res.output
    import json

    records = json.loads((dbg / "mistakes.json").read_text())
    assert records and all("culprit_steps" in r for r in records)
    assert all(0 <= a <= b < 12 for r in records for a, b in r["culprit_steps"])


def test_a_sequence_run_from_python_is_drawn_as_sequences(tmp_path: Path) -> None:
    from whybox.runs.job import Job, run_job
    from whybox.runs.report_data import load_run_report

    x = torch.randn(3, 12, 4, generator=torch.Generator().manual_seed(2))
    run_job(Job(methods=("saliency",), metrics=()), _gru(), x, run_dir=tmp_path / "r")
    report = load_run_report(tmp_path / "r")
    assert report.samples[0].image.shape == (96, 288, 3) and report.samples[0].maps["saliency"].shape == (1, 12)


# ---------------------------------------------------------------------------------------------- CAMs
def _pooled_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)
    ).eval()


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "layercam", "xgradcam", "gradcam_pp"])
def test_a_1x1_layer_s_cam_is_flagged_constant_and_adds_nothing_to_a_list_of_layers(method: str) -> None:
    model, x = _pooled_cnn(), torch.randn(4, 3, 23, 31, generator=torch.Generator().manual_seed(0))
    e = whybox.explain(model, x, method, layer="2")  # one number per row, upsampled: rounding noise ~1e-9
    assert e.meta["degenerate"] == [True] * 4 and bool((e.attributions == 0).all())
    alone = whybox.explain(model, x, method, layer="1")
    both = whybox.explain(model, x, method, layer=["1", "2"])
    torch.testing.assert_close(both.attributions, alone.attributions, rtol=0, atol=1e-6)


def test_normalize_maps_keeps_real_contrast_at_any_magnitude() -> None:
    from whybox.explainers.cam.base import normalize_maps

    for scale in (1e-8, 1.0, 1e8):
        m = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float32) * scale
        out, deg = normalize_maps(m, "minmax")
        assert not bool(deg[0]) and out.tolist() == [[0.0, 0.5, 1.0]], scale
    m = torch.tensor([[1.0, 1.0 + 2e-7, 1.0]])  # within float32 rounding of a constant
    assert bool(normalize_maps(m, "minmax")[1][0]) and not bool(normalize_maps(m.double(), "minmax")[1][0])


def test_a_packed_image_cam_without_upsampling_is_refused_naming_the_fix() -> None:
    torch.manual_seed(0)

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU())
            self.fc = nn.Linear(4 + 4, 3)

        def forward(self, image: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.cat([self.conv(image).mean((2, 3)), extra], 1))

    adapter = whybox.adapt(Two().eval(), input_shapes=[(3, 9, 11), (4,)])
    x = adapter.packing.pack_inputs([torch.rand(2, 3, 9, 11), torch.rand(2, 4)])
    for method in ("gradcam", "hirescam"):
        with pytest.raises(InvalidParameterError, match=r"upsample=False .* at its size \(9, 11\); use upsample=True"):
            whybox.explain(adapter, x, method, layer="conv.1", upsample=False)
        assert whybox.explain(adapter, x, method, layer="conv.1").attributions.shape == x.shape


def test_a_second_name_of_a_reused_module_is_that_module() -> None:
    relu = nn.ReLU()
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), relu, nn.Conv2d(8, 6, 3, padding=1), relu, nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(6, 5),
    ).eval()  # fmt: skip
    x = torch.randn(2, 3, 10, 12)
    with pytest.raises(whybox.errors.LayerError, match=r"runs 2 times per forward pass.*'1@1' for the last"):
        whybox.explain(model, x, "gradcam", layer="3")
    by_alias = whybox.explain(model, x, "gradcam", layer="3@1")
    assert torch.equal(by_alias.attributions, whybox.explain(model, x, "gradcam", layer="1@1").attributions)


# ---------------------------------------------------------------------------------------------- LIMA
def test_lima_s_per_row_prior_map_follows_its_rows() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 4)
    ).eval()
    x, prior = torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8)
    e = whybox.explain(model, x, "lima", search="lazy", regions="prior", prior=prior, prior_cells=8)
    assert torch.equal(e[1:2].options["prior"], prior[1:2])
    alone = whybox.explain(model, x[1:2], "lima", search="lazy", regions="prior", prior=prior[1:2], prior_cells=8)
    assert torch.equal(alone.attributions, e.attributions[1:2])
    assert whybox.evaluate(model, x[1:2], e[1:2], "stability", n_runs=2).scores.tolist() == [1.0]
    assert whybox.evaluate(model, x, e, "max_sensitivity", n_samples=2, radius=1e-9).scores.shape == (2,)


def test_lima_takes_the_sigmoid_its_one_logit_error_advises() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(6, 1).eval()
    x = torch.randn(3, 6)
    with pytest.raises(InvalidParameterError, match=r"score='sigmoid' for a binary classifier"):
        whybox.explain(lin, x, "lima", search="naive", score="prob")
    a = whybox.explain(lin, x, "lima", search="naive", score="sigmoid")
    b = whybox.explain(lambda t: torch.sigmoid(lin(t)), x, "lima", search="naive", score="logit")  # p itself
    assert torch.equal(a.attributions, b.attributions)


# ---------------------------------------------------------------------------------------------- scikit-learn
def test_a_one_column_predict_proba_is_explained_as_the_probability_by_default() -> None:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 3))
    lr = LogisticRegression().fit(X, (X[:, 0] + X[:, 1] > 0).astype(int))

    class PositiveProba(ClassifierMixin, BaseEstimator):  # a wrapped model that returns P(y=1) only
        def fit(self, X: np.ndarray, y: np.ndarray) -> PositiveProba:
            self.n_features_in_ = X.shape[1]
            return self

        def predict_proba(self, X: np.ndarray) -> np.ndarray:
            return lr.predict_proba(X)[:, 1:]

    m = PositiveProba().fit(X, None)
    x, fill = X[:2], X.mean(0)
    fn = lambda t: lr.predict_proba(t.numpy())[:, 1:]  # noqa: E731 - the same scorer as a plain function
    p = lr.predict_proba(x)[:, 1]
    oracle = np.stack([p - lr.predict_proba(np.where(np.arange(3) == j, fill, x))[:, 1] for j in range(3)], 1)
    for score in (None, "logit"):
        e = whybox.explain(m, x, "occlusion", fill=fill, score=score)
        np.testing.assert_allclose(e.attributions.numpy(), oracle, rtol=1e-9, atol=1e-12)
    lime = whybox.explain(m, x, "lime", fill=fill, seed=0, n_samples=500)
    lime_fn = whybox.explain(fn, torch.tensor(x), "lime", fill=torch.tensor(fill), seed=0, n_samples=500)
    torch.testing.assert_close(lime.attributions, lime_fn.attributions.to(lime.attributions.dtype))
    e = whybox.explain(m, x, "exact_shapley", fill=fill)
    d = whybox.evaluate(m, x, e, "deletion", fill=fill).scores
    d_fn = whybox.evaluate(fn, torch.tensor(x), e, "deletion", fill=torch.tensor(fill)).scores
    torch.testing.assert_close(d, d_fn.to(d.dtype))
    assert bool(((d >= 0) & (d <= 1)).all())


def test_an_unfitted_estimator_is_a_whybox_error_saying_fit_it() -> None:
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(InvalidParameterError, match=r"this LogisticRegression is not fitted .*call \.fit\(X, y\)"):
        whybox.explain(LogisticRegression(), np.zeros((2, 3)), "occlusion")


# ---------------------------------------------------------------------------------------------- TorchScript models
def _gray_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 7, 3)).eval()


@pytest.mark.filterwarnings("ignore::UserWarning")  # loading a full model file says it runs the file's code
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script is deprecated, still common in use
def test_a_torchscript_gray_cnn_gets_one_channel_images_and_compare_leaves_the_cams_out(tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((5, 7)) * 255).astype(np.uint8), mode="L").save(tmp_path / "g.png")
    model = _gray_cnn()
    paths = {"script": tmp_path / "s.pt", "trace": tmp_path / "t.pt"}
    torch.jit.save(torch.jit.script(model), str(paths["script"]))
    torch.jit.save(torch.jit.trace(model, torch.rand(1, 1, 5, 7)), str(paths["trace"]))
    for path in paths.values():
        lm = load_model(str(path), trust_model_file=True)
        ds = load_inputs([str(tmp_path / "g.png")], lm)
        assert ds.x.shape == (1, 1, 5, 7), path
    out = tmp_path / "run"
    res = CliRunner().invoke(
        cli, ["compare", "--model", str(paths["script"]), "--trust-model-file", str(tmp_path / "g.png"),
              "--metrics", "sparseness", "--out", str(out), "--no-report"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "0 failed (sample, method) pairs" in res.output
    assert (
        "gradcam_pp, hirescam, layercam, scorecam, xgradcam (a TorchScript model takes no forward hooks" in res.stderr
    )
    from whybox.models.adapter import first_conv_channels

    conv1d = torch.jit.script(nn.Sequential(nn.Conv1d(2, 3, 3, groups=1), nn.Flatten()))
    assert first_conv_channels(conv1d, nn.Conv1d) == 2 and first_conv_channels(conv1d, nn.Conv2d) is None
    grouped = [
        (torch.jit.script(nn.Conv2d(4, 8, 3, groups=2)), 4),
        (torch.jit.trace(nn.Conv2d(4, 8, 3, groups=2), torch.rand(1, 4, 5, 5)), 4),  # no groups kept: its graph's
        (torch.jit.trace(nn.Sequential(nn.Conv2d(3, 6, 3, groups=3)), torch.rand(1, 3, 5, 5)), 3),
    ]
    assert [first_conv_channels(m, nn.Conv2d) for m, _ in grouped] == [c for _, c in grouped]
    traced_signal = torch.jit.trace(nn.Sequential(nn.Conv1d(4, 8, 3, groups=4)), torch.rand(2, 4, 12))
    assert first_conv_channels(traced_signal, nn.Conv1d) == 4
    assert not is_sequence(whybox.adapt(traced_signal), torch.rand(2, 4, 12))  # a signal of 4 channels


# ---------------------------------------------------------------------------------------------- saved explanations
def test_numpy_durations_in_meta_round_trip_in_their_own_units(tmp_path: Path) -> None:
    from whybox.explanation import Explanation

    values = [np.timedelta64(5, "D"), np.timedelta64("NaT", "s"), np.timedelta64(3, "25ms"), np.timedelta64(-7, "h")]
    e = Explanation(
        attributions=torch.zeros(1, 2), target=torch.zeros(1, dtype=torch.long), method="occlusion", params={},
        meta={"durations": values},
    )  # fmt: skip
    e.save(tmp_path / "e.safetensors")
    back = Explanation.load(tmp_path / "e.safetensors").meta["durations"]
    assert [type(v) for v in back] == [np.timedelta64] * 4 and [v.dtype for v in back] == [v.dtype for v in values]
    assert back[0] == values[0] and np.isnat(back[1]) and back[2] == values[2] and back[3] == values[3]


def test_a_sequence_s_map_is_one_value_per_time_step() -> None:
    x = torch.randn(2, 12, 4)
    e = whybox.explain(_gru(), x, "saliency")
    torch.testing.assert_close(e.to_map(), e.attributions.sum(-1))
    torch.testing.assert_close(e.to_map("max_abs"), e.attributions.abs().amax(-1))
    lima = whybox.explain(_gru(), x, "lima", n_regions=4)
    assert lima.to_map().shape == (2, 12)


def test_lima_s_coarse_per_row_prior_follows_its_rows_too() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 4)
    ).eval()
    x = torch.rand(2, 3, 8, 8)
    for prior in (torch.rand(2, 4, 4), torch.rand(2, 1, 4, 4)):
        e = whybox.explain(model, x, "lima", search="lazy", regions="prior", prior=prior, prior_cells=4)
        assert torch.equal(e[1:2].options["prior"], prior[1:2])
        assert whybox.evaluate(model, x[1:2], e[1:2], "stability", n_runs=2).scores.tolist() == [1.0]


def test_a_bfloat16_cam_with_real_contrast_is_not_flagged_constant() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()
    with torch.no_grad():  # every activation positive: a CAM of 5 to 12 % contrast on an offset
        model[0].weight.abs_()
        model[0].bias.fill_(8.0)
        model[4].weight.abs_()
    model = model.to(torch.bfloat16)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    for method in ("gradcam", "scorecam"):
        raw = whybox.explain(model, x, method, layer="1", normalize="none").attributions.float().flatten(1)
        contrast = (raw.amax(1) - raw.amin(1)) / raw.amax(1)
        assert bool((contrast > 0.04).all()), method  # real, if coarse: bf16 rounds at 0.8 %
        e = whybox.explain(model, x, method, layer="1")
        assert e.meta["degenerate"] == [False, False], method
        assert e.attributions.float().flatten(1).amax(1).tolist() == [1.0, 1.0], method


def test_the_one_column_predict_proba_score_errors_do_not_send_the_user_in_a_circle() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    lr = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
    with pytest.raises(InvalidParameterError, match=r"leave score out to explain them .*score='logit' where it is one"):
        whybox.explain(lr, X[:2], "occlusion", score="sigmoid")


@pytest.mark.parametrize("metric", ["relevance_mass", "pointing_game", "relevance_rank", "energy_pointing_game"])
def test_localisation_refuses_a_sequence_map_of_another_feature_width(metric: str) -> None:
    x = torch.randn(2, 8, 3, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, 8, dtype=torch.bool)
    masks[:, 5:] = True
    for width, ok in ((1, True), (3, True), (5, False)):
        a = torch.rand(2, 8, width, generator=torch.Generator().manual_seed(1))
        if ok:
            assert whybox.evaluate(_gru_d(3), x, a, metric, masks=masks, target=0).scores.shape == (2,)
        else:
            with pytest.raises(whybox.errors.InvalidInputError, match=r"\(B, 8, 1\) or \(B, 8, 3\); got \(2, 8, 5\)"):
                whybox.evaluate(_gru_d(3), x, a, metric, masks=masks, target=0)


def _gru_d(d: int) -> nn.Module:
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(d, 5, batch_first=True)
            self.fc = nn.Linear(5, 2)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.fc(self.gru(t)[0][:, -1])

    return Net().eval()


def test_a_one_step_sequence_plot_shows_its_features_as_markers() -> None:
    x = torch.randn(2, 1, 4)
    fig = whybox.explain(_gru(), x, "saliency").plot(x)
    lines = [line for ax in fig.axes for line in ax.lines]
    assert len(lines) == 8 and all(line.get_marker() == "o" for line in lines)


@pytest.mark.parametrize("metric", ["deletion", "insertion", "comprehensiveness", "sufficiency"])
def test_a_row_s_tied_features_are_ordered_as_alone_beside_a_row_of_more_regions(metric: str) -> None:
    torch.manual_seed(0)
    net = (
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))
        .double()
        .eval()
    )  # float64: a row scores the same in any batch, so only the tie order can differ
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    ids = torch.arange(64).reshape(8, 8)
    regions = torch.stack([(ids // 8 // 3) * 3 + (ids % 8) // 3, ((ids // 8) // 4) * 2 + (ids % 8) // 4])  # 9, 4
    flat = torch.ones(2, 3, 8, 8, dtype=torch.float64)  # every region tied: the seeded rule alone orders them
    for seed in range(3):
        both = whybox.evaluate(net, x, flat, metric, regions=regions, seed=seed, target=0).scores[1]
        alone = whybox.evaluate(net, x[1:], flat[1:], metric, regions=regions[1:], seed=seed, target=0).scores[0]
        torch.testing.assert_close(both, alone, rtol=0, atol=1e-12)


def test_an_unrolled_recurrent_cell_reads_a_sequence() -> None:
    class Cell(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.LSTMCell(4, 6)
            self.fc = nn.Linear(6, 3)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            h = c = t.new_zeros(t.shape[0], 6)
            for i in range(t.shape[1]):
                h, c = self.cell(t[:, i], (h, c))
            return self.fc(h)

    x = torch.randn(2, 12, 4)
    assert is_sequence(whybox.adapt(Cell().eval()), x)
    assert whybox.explain(Cell().eval(), x, "lima", n_regions=4).to_map().shape == (2, 12)


# ---------------------------------------------------------------------------------------------- find_mistakes
@pytest.mark.parametrize("shape", ["(T,)", "(T, 1)", "(1, T, 1)", "(N, T)", "(N, T, 1)"])
def test_find_mistakes_on_sequences_takes_every_documented_label_map_with_lima(shape: str) -> None:
    torch.manual_seed(0)
    model, x = _gru_d(3), torch.randn(10, 8, 3)
    y = (model(x).argmax(1) + 1) % 2  # every input a mistake
    steps = torch.arange(8) // 2  # 4 windows of 2 time steps
    regions = {
        "(T,)": steps, "(T, 1)": steps.view(8, 1), "(1, T, 1)": steps.view(1, 8, 1),
        "(N, T)": steps.expand(10, 8).clone(), "(N, T, 1)": steps.view(1, 8, 1).expand(10, 8, 1).clone(),
    }[shape]  # fmt: skip
    lima = whybox.find_mistakes(model, x, y, method="lima", regions=regions, max_mistakes=3)
    occ = whybox.find_mistakes(model, x, y, method="occlusion", regions=regions, max_mistakes=3)
    assert len(lima.mistakes) == len(occ.mistakes) == 3
    for m in lima.mistakes:
        assert torch.equal(m.regions.reshape(-1), steps) and m.attribution.shape[0] == 8
    direct = whybox.explain(model, x[:3], "lima", target=y[:3], regions=steps.view(8, 1), search="predictive")
    assert torch.equal(lima.explanation.attributions, direct.attributions)


def test_find_mistakes_names_labels_for_an_unknown_class_name() -> None:
    adapter = whybox.adapt(nn.Linear(3, 3), labels=["a", "b", "c"])
    with pytest.raises(whybox.errors.InvalidTargetError, match=r"^labels: 'zz' is not one of the model's outputs"):
        whybox.find_mistakes(adapter, torch.randn(4, 3), ["a", "b", "c", "zz"], method="occlusion")


def test_whybox_debug_refuses_n_regions_which_its_regions_flag_sets(tmp_path: Path) -> None:
    args = ["debug", "--limit", "1", "--method", "lima", "--option", "n_regions=25", "--out", str(tmp_path / "d")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2
    assert "n_regions= is set by --regions in whybox debug" in res.output


# ---------------------------------------------------------------------------------------------- several inputs
class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3 * 4 * 4, 2)
        self.b = nn.Linear(5, 2)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.a(image.flatten(1)) + self.b(meta)


def test_a_per_input_option_that_does_not_fit_is_said_of_that_option() -> None:
    torch.manual_seed(0)
    adapter = whybox.adapt(_TwoInputs(), input_shapes={"image": (3, 4, 4), "meta": (5,)})
    inputs = {"image": torch.randn(2, 3, 4, 4), "meta": torch.randn(2, 5)}
    with pytest.raises(InvalidParameterError, match=r"^fill= given per input must name each of the model's inputs "):
        whybox.explain(adapter, inputs, "feature_ablation", fill={"image": 0.0, "metadata": 1.0})
    with pytest.raises(InvalidParameterError, match=r"^fill= given per input must name .*; got 'image'\."):
        whybox.explain(adapter, inputs, "feature_ablation", fill={"image": 0.0})
    with pytest.raises(InvalidParameterError, match=r"^baseline= given per input does not fit the model's inputs"):
        whybox.explain(
            adapter, inputs, "integrated_gradients", baseline={"image": torch.zeros(3, 4, 4), "meta": torch.zeros(4)}
        )
    with pytest.raises(InvalidParameterError, match=r"^background= given per input must name"):
        whybox.explain(
            adapter, inputs, "kernel_shap", background={"image": torch.zeros(3, 3, 4, 4), "metaa": torch.zeros(3, 5)}
        )
    e = whybox.explain(adapter, inputs, "saliency")
    with pytest.raises(InvalidParameterError, match=r"^fill= given per input must name"):
        whybox.evaluate(adapter, inputs, e, "deletion", fill={"img": 0.0, "meta": 0.0})
    ok = whybox.explain(adapter, inputs, "feature_ablation", fill={"meta": 1.0, "image": 0.0})  # any key order
    assert torch.isfinite(ok.attributions).all()


def test_features_grid_on_several_inputs_cuts_the_image_in_squares() -> None:
    torch.manual_seed(0)
    adapter = whybox.adapt(_TwoInputs(), input_shapes=[(3, 4, 4), (5,)])
    x = (torch.randn(2, 3, 4, 4), torch.randn(2, 5))
    grid = whybox.explain(adapter, x, "feature_ablation", features="grid", patch=2)
    given = whybox.explain(adapter, x, "feature_ablation", features=adapter.packing.region_groups(2))
    assert torch.equal(grid.attributions, given.attributions)
    with pytest.raises(InvalidParameterError, match=r"features='superpixels' segments images .* use features='grid'"):
        whybox.explain(adapter, x, "feature_ablation", features="superpixels")


def test_load_says_which_format_a_newer_file_has_and_refuses_damaged_nested_options(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from whybox.explanation import Explanation

    e = whybox.explain(nn.Linear(4, 3).eval(), torch.randn(2, 4), "occlusion")
    e.save(tmp_path / "e.safetensors")
    with safe_open(str(tmp_path / "e.safetensors"), framework="pt") as f:
        header = f.metadata()
    tensors = load_file(str(tmp_path / "e.safetensors"))
    save_file(tensors, str(tmp_path / "future.safetensors"), metadata={**header, "format": "whybox.explanation/2"})
    with pytest.raises(whybox.errors.DataFormatError, match=r"format 'whybox.explanation/2', which this whybox"):
        Explanation.load(tmp_path / "future.safetensors")
    for key, why in (("optiondict.prior_options", "without its key"), ("option.fill", "beside a plain option")):
        extra = (
            {key: torch.zeros(1)}
            if key.startswith("optiondict")
            else {key: torch.zeros(1), "optiondict.fill/x": torch.zeros(1)}
        )
        save_file({**tensors, **extra}, str(tmp_path / "damaged.safetensors"), metadata=header)
        with pytest.raises(whybox.errors.DataFormatError, match=why):
            Explanation.load(tmp_path / "damaged.safetensors")


def test_cli_evaluate_of_a_file_from_another_method_says_so(tmp_path: Path) -> None:
    from whybox.explanation import Explanation

    (tmp_path / "gru.py").write_text(GRU_PY)
    x = np.random.default_rng(0).normal(size=(2, 12, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    e = whybox.explain(_gru(), torch.from_numpy(x), "saliency")
    Explanation(e.attributions, e.target, "my_shap", {}, dict(e.meta)).save(tmp_path / "mine.safetensors")
    res = CliRunner().invoke(
        cli, ["evaluate", "--model", f"{tmp_path / 'gru.py'}:build", str(tmp_path / "x.npy"),
              "--explanation", str(tmp_path / "mine.safetensors"), "--metrics", "deletion"],
    )  # fmt: skip
    assert res.exit_code == 2 and "was made by 'my_shap', not a whybox method" in res.output


def test_whybox_debug_takes_n_regions_on_sequences_where_it_sets_lima_s_time_windows(
    seq_files: tuple[str, Path, Path], tmp_path: Path
) -> None:
    import json

    spec, _npy, npz = seq_files
    spans = []
    for n in (3, 6):
        out = tmp_path / f"d{n}"
        args = ["debug", "--model", spec, str(npz), "--method", "lima", "--limit", "1", "--option", f"n_regions={n}"]
        res = CliRunner().invoke(cli, [*args, "--out", str(out)])
        assert res.exit_code == 0, res.output
        spans.append(
            [b - a + 1 for r in json.loads((out / "mistakes.json").read_text()) for a, b in r["culprit_steps"]]
        )
    assert max(spans[0]) == 4 and max(spans[1]) == 2  # 12 steps in 3 windows of 4, in 6 of 2


def test_find_mistakes_refuses_a_sequence_map_it_cannot_read_one_way() -> None:
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(8, 5, batch_first=True)
            self.fc = nn.Linear(5, 2)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.fc(self.gru(t)[0][:, -1])

    model, x = Net().eval(), torch.randn(8, 8, 8)
    y = (model(x).argmax(1) + 1) % 2
    per_element = (torch.arange(64).view(8, 8) // 16).contiguous()  # (T, D) = (N, T): 4 regions, or one per row?
    with pytest.raises(InvalidParameterError, match=r"give \(1, 8, 8\) for the first, \(8, 8, 1\) for the second"):
        whybox.find_mistakes(model, x, y, method="occlusion", regions=per_element)
    report = whybox.find_mistakes(model, x, y, method="occlusion", regions=per_element.view(1, 8, 8), max_mistakes=1)
    assert torch.equal(report.mistakes[0].regions.reshape(8, 8), per_element)


def test_nested_options_of_a_model_of_several_inputs_are_not_read_per_input() -> None:
    torch.manual_seed(0)
    named = whybox.adapt(_TwoInputs(), input_shapes={"image": (3, 4, 4), "meta": (5,)})
    inputs = {"image": torch.randn(2, 3, 4, 4), "meta": torch.randn(2, 5)}
    e = whybox.explain(named, inputs, "lima", seed=0, prior_options={"baseline": torch.zeros(53), "n_steps": 4})
    assert e.options["prior_options"]["n_steps"] == 4 and torch.isfinite(e.attributions).all()
    positional = whybox.adapt(_TwoInputs(), input_shapes=[(3, 4, 4), (5,)])
    x = (torch.randn(2, 3, 4, 4), torch.randn(2, 5))
    with pytest.raises(InvalidParameterError, match=r"fill= is a mapping, but this model's inputs have no names"):
        whybox.explain(positional, x, "feature_ablation", fill={0: 0.5, 1: 1.0})


@pytest.mark.parametrize("metric", ["comprehensiveness", "sufficiency"])
def test_a_text_s_tied_token_positions_are_ordered_as_alone_beside_a_longer_text(
    metric: str, make_text_classifier: Any
) -> None:
    clf = make_text_classifier()
    texts = ["the movie was great", "not a good film and the plot was very boring but fun"]
    batch, one = clf.encode(texts), clf.encode(texts[:1])
    n = one.inputs.shape[1]
    flat = torch.ones(2, batch.inputs.shape[1], dtype=torch.float64)  # every token tied
    for seed in range(3):  # token positions (no regions): the pads of the longer text are not this text's features
        both = whybox.evaluate(clf, batch.inputs, flat, metric, fill=batch.fill("mask"), target=1, seed=seed)
        alone = whybox.evaluate(clf, one.inputs, flat[:1, :n], metric, fill=one.fill("mask"), target=1, seed=seed)
        torch.testing.assert_close(both.scores[0], alone.scores[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("metric", ["deletion", "insertion", "highest_confidence"])
def test_curve_regions_as_feature_groups_of_one_map_per_image_read_as_the_tensor(metric: str) -> None:
    from whybox.masking.features import FeatureGroups

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)
    ).eval()
    x = torch.rand(2, 3, 8, 8)
    ids = (torch.arange(64).view(8, 8) // 16).expand(2, 8, 8).clone()
    by_groups = whybox.evaluate(net, x, "saliency", metric, regions=FeatureGroups(ids, 4, "regions"))
    by_tensor = whybox.evaluate(net, x, "saliency", metric, regions=ids)
    assert torch.equal(by_groups.scores, by_tensor.scores)


# ---------------------------------------------------------------------------------------------- README as written
def test_train_sae_takes_collect_activations_result_as_the_readme_writes_it() -> None:
    from whybox.explainers.llm.sae import SAEConfig, train_sae
    from whybox.explainers.llm.sae_text import TokenActivations

    acts = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    collected = TokenActivations(acts, [(0, i) for i in range(64)], ["w"] * 64)
    config = SAEConfig(d_in=8, d_sae=16, k=4, steps=5, batch_size=16)
    a, b = train_sae(collected, config), train_sae(acts, config)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True))


def test_lima_warns_of_probability_outputs_only_when_every_row_looks_like_them() -> None:
    import warnings

    from whybox.models.targets import ProbabilityOutputWarning, distribution_rows

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(3, 6, 5, padding=2), nn.ReLU(), nn.Conv1d(6, 8, 5, padding=2), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip
    x = torch.randn(2, 3, 100)
    assert distribution_rows(model(x)).tolist() == [True, False]  # raw logits whose first row sums to 1 by chance
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProbabilityOutputWarning)
        whybox.explain(model, x, "lima", n_regions=8)
    with pytest.warns(ProbabilityOutputWarning):
        whybox.explain(nn.Sequential(model, nn.Softmax(-1)).eval(), x, "lima", n_regions=8)


# ---------------------------------------------------------------------------------------------- fourth review
def test_probability_outputs_warn_by_the_whole_call_not_by_the_chunk() -> None:
    import warnings

    from whybox.models.targets import ProbabilityOutputWarning

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(3, 6, 5, padding=2), nn.ReLU(), nn.Conv1d(6, 8, 5, padding=2), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip
    x = torch.randn(2, 3, 100)  # raw logits whose first row sums to 1 by chance
    for batch_size in (1, 8, 64):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ProbabilityOutputWarning)
            e = whybox.explain(model, x, "lima", n_regions=8, batch_size=batch_size)
            whybox.evaluate(model, x, e, "deletion", batch_size=batch_size)
    softmax = nn.Sequential(model, nn.Softmax(-1)).eval()
    for batch_size in (1, 64):
        with pytest.warns(ProbabilityOutputWarning):
            whybox.evaluate(softmax, x, e, "deletion", batch_size=batch_size)


def test_text_ties_keep_the_seeded_rule_whatever_order_the_feature_ids_have(make_text_classifier: Any) -> None:
    from whybox.masking.features import FeatureGroups

    clf = make_text_classifier()
    batch = clf.encode(["the movie was great", "not a good film and the plot was very boring but fun"])
    t = batch.inputs.shape[1]
    reverse = FeatureGroups((t - 1 - torch.arange(t)).view(1, t, 1).expand(2, t, 1).contiguous(), t, "positions")
    flat = torch.ones(2, t, dtype=torch.float64)
    scores = {
        whybox.evaluate(clf, batch.inputs, flat, "comprehensiveness", fill=batch.fill("mask"), target=1, seed=s,
                        regions=reverse).scores[0].item()
        for s in range(4)
    }  # fmt: skip
    assert len(scores) > 1  # the seed still decides the order of the short text's tied tokens


def test_whybox_debug_refuses_n_regions_where_lima_s_regions_are_columns(tmp_path: Path) -> None:
    torch.manual_seed(0)
    (tmp_path / "mlp.py").write_text(
        "import torch\nfrom torch import nn\n\n\ndef build():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).eval()\n"
    )
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "t.npz", x=rng.normal(size=(12, 5)).astype(np.float32), y=rng.integers(0, 3, 12))
    args = ["debug", "--model", f"{tmp_path / 'mlp.py'}:build", str(tmp_path / "t.npz"), "--method", "lima"]
    res = CliRunner().invoke(cli, [*args, "--option", "n_regions=2", "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and "n_regions= has no effect on tabular inputs: their regions are their columns" in (
        res.output
    )


@pytest.mark.parametrize("metric", ["deletion", "insertion", "highest_confidence", "mufidelity"])
def test_one_region_map_for_all_images_is_taken_in_each_documented_form(metric: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)
    ).eval()
    x = torch.rand(2, 3, 8, 8)
    ids = torch.arange(64).view(8, 8) // 16
    opts = {"n_samples": 8, "seed": 0} if metric == "mufidelity" else {}
    want = whybox.evaluate(net, x, "saliency", metric, regions=ids, **opts).scores
    for shared in (ids[None], ids[None, None], ids.expand(2, 8, 8).clone()):  # as comprehensiveness takes them
        torch.testing.assert_close(whybox.evaluate(net, x, "saliency", metric, regions=shared, **opts).scores, want)


@pytest.mark.parametrize("method", ["lima", "lime", "rise"])
def test_a_softmax_model_gets_one_probability_warning_per_call_at_the_user_s_line(method: str) -> None:
    import warnings

    from whybox.models.targets import ProbabilityOutputWarning

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3),
        nn.Softmax(-1),
    ).eval()  # fmt: skip
    x = torch.rand(2, 3, 8, 8)
    opts = {"n_regions": 8} if method == "lima" else {}
    for call in (
        lambda: whybox.explain(model, x, method, **opts),
        lambda: whybox.evaluate(model, x, method, "insertion"),  # explains inside
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        ours = [w for w in caught if issubclass(w.category, ProbabilityOutputWarning)]
        assert len(ours) == 1 and ours[0].filename == __file__
