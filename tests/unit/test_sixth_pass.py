"""Sixth-pass findings, each a property the earlier code broke: sequences (B, T, D) as a kind of input of their own
(methods, LIMA's regions, the CLI's pictures, runs and debug), ..."""

from __future__ import annotations

from pathlib import Path

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
    with pytest.raises(InvalidParameterError, match=r"sequences \(B, T, D\) on a model without an nn.Conv2d"):
        whybox.explain(flat_images.eval(), x, "lima")


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
