"""``whybox explain``, ``evaluate``, ``compare``, ``report`` and ``metrics``, driven in process.

Every bad flag, path and config exits with code 2 and a message naming what was wrong; the files the commands
write equal what the public API returns for the same options; a config file's tables reach the stored run under
the command line's flags; the Ray backend gives the local backend's rows and bytes; a sample the model cannot
take costs exit code 1 and shows up, escaped, in the report; hostile file names neither leave the output folder
nor become markup.
"""

from __future__ import annotations

import html.parser
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import markupsafe
import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

import whybox
from whybox.api import _options
from whybox.cli.main import main as cli
from whybox.data._cache import resolve_cache_dir
from whybox.registry import METRICS
from whybox.runs.loaders import BUILTIN_DATASETS, load_model
from whybox.runs.store import RunStore

# A seeded tiny CNN on (B, 1, 8, 8), 3 classes; the global RNG is left as it was.
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

SENTINEL = 7.0
REASON = "sentinel <b>&</b> in the input"

# The same CNN, raising on any input that holds SENTINEL. ``WHEN`` is when it raises: while gradients are on
# (explaining: prediction works, the method fails) or always (the prediction fails too).
PICKY_PY = """
import torch
from torch import nn

SENTINEL = {sentinel!r}
WHEN = {when!r}


class Picky(nn.Module):
    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net = nn.Sequential(
                nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3),
            )

    def forward(self, x):
        armed = WHEN == "always" or torch.is_grad_enabled()
        if armed and bool((x == SENTINEL).any()):
            raise RuntimeError({reason!r})
        return self.net(x)


def build():
    return Picky().eval()
"""

IRIS_PY = """
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression


def build():
    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=500).fit(x, y)
"""

RIDGE_PY = """
import numpy as np
from sklearn.linear_model import Ridge


def build():
    gen = np.random.default_rng(0)
    x = gen.normal(size=(200, 3))
    return Ridge().fit(x, x @ np.array([3.0, -2.0, 0.5]) + 10.0)
"""

VIT_PY = """
import torch
import transformers

import whybox


def build():
    cfg = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16,
        patch_size=8, num_labels=3, id2label={0: "cat", 1: "dog", 2: "fox"}, label2id={"cat": 0, "dog": 1, "fox": 2},
    )
    torch.manual_seed(0)
    return whybox.adapt(transformers.ViTForImageClassification(cfg), output="logits")
"""


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private cache for the digits CNN: seeded from the user's cache when it holds the trained weights (so
    nothing is trained and the user's cache is never written), else the CNN is trained there once."""
    cache = tmp_path_factory.mktemp("whybox-cache")
    for p in resolve_cache_dir().glob("digits_cnn-*.safetensors"):
        shutil.copy(p, cache / p.name)
    return cache


@pytest.fixture
def runner(cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """The command line with the private cache, run from ``tmp_path`` (default output folders land there)."""
    monkeypatch.setenv("WHYBOX_CACHE_DIR", str(cache_dir))
    monkeypatch.chdir(tmp_path)
    return CliRunner()


@dataclass(frozen=True)
class Files:
    tmp: Path
    model: Path  # model.py with build()
    x: Path  # x.npy, (6, 1, 8, 8) in [0, 1)

    @property
    def spec(self) -> str:
        return f"{self.model}:build"


@pytest.fixture
def files(tmp_path: Path) -> Files:
    (tmp_path / "model.py").write_text(MODEL_PY)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((6, 1, 8, 8)).astype(np.float32))
    return Files(tmp_path, tmp_path / "model.py", tmp_path / "x.npy")


def invoke(runner: CliRunner, args: list[object]) -> Result:
    return runner.invoke(cli, [str(a) for a in args])


def error_of(result: Result, code: int = 2) -> str:
    """The last line of stderr of a command that must exit with ``code`` without a traceback."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a clean exit, not a traceback
    return result.stderr.strip().splitlines()[-1]


def known(names: list[str]) -> str:
    return ", ".join(names)


def snapshot(run_dir: Path) -> tuple[dict[str, list[tuple[object, ...]]], dict[str, bytes]]:
    store = RunStore.open_existing(run_dir)
    try:
        return store.contents()
    finally:
        store.close()


def stored_config(run_dir: Path) -> dict[str, object]:
    store = RunStore.open_existing(run_dir)
    try:
        return store.config()
    finally:
        store.close()


def leaderboard_methods(stdout: str) -> list[str]:
    """The method column of the leaderboard `compare` prints (the rows after the ``method ...`` header)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["method"])
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("wrote ") or " units computed, " in line:
            break
        rows.append(line.split()[0])
    return rows


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


def start_tags(page: str) -> list[str]:
    p = _Tags()
    p.feed(page)
    return p.tags


# ---------------------------------------------------------------------------------------------- 1. bad input
def toml(f: Files, name: str, text: str) -> Path:
    path = f.tmp / name
    path.write_text(text)
    return path


def _no_labels(f: Files) -> str:
    return (
        "Error: --target label needs true labels; these inputs have none (use a labelled dataset or CSV "
        "--label-column)."
    )


# (id, arguments, the exact last line of stderr)
BAD: list[tuple[str, Callable[[Files], list[object]], Callable[[Files], str]]] = [
    (
        "unknown-method-near-miss",
        lambda f: ["compare", "--model", f.spec, f.x, "--methods", "saliency,salency", "--out", f.tmp / "o"],
        lambda f: f"Error: --methods: unknown 'salency'. Did you mean 'saliency'? Known: {known(whybox.methods())}.",
    ),
    (
        "unknown-method-explain",
        lambda f: ["explain", "--model", f.spec, f.x, "--method", "gradcamm"],
        lambda f: (
            "Error: --method: unknown 'gradcamm'. Did you mean 'gradcam', 'xgradcam', 'gradcam_pp'? "
            f"Known: {known(whybox.methods())}."
        ),
    ),
    (
        "unknown-metric",
        lambda f: ["evaluate", "--model", f.spec, f.x, "--method", "saliency", "--metrics", "deletion,insertoin"],
        lambda f: f"Error: --metrics: unknown 'insertoin'. Did you mean 'insertion'? Known: {known(METRICS.names())}.",
    ),
    (
        "option-without-equals",
        lambda f: ["explain", "--model", f.spec, f.x, "--method", "rise", "--option", "n_masks"],
        lambda f: "Error: --option takes KEY=VALUE; got 'n_masks'.",
    ),
    (
        "scoped-option-without-dot",
        lambda f: ["compare", "--model", f.spec, f.x, "--methods", "lime", "--option", "n_samples=3"],
        lambda f: "Error: --option takes NAME.KEY=VALUE (e.g. lime.n_samples=200); got 'n_samples=3'.",
    ),
    (
        "option-for-a-method-not-in-the-job",
        lambda f: ["compare", "--model", f.spec, f.x, "--methods", "saliency", "--option", "lime.n_samples=3"],
        lambda f: (
            "Error: method_options has options for 'lime', which is not in this job (saliency); add it to the job "
            "or remove its options."
        ),
    ),
    (
        "unknown-option-key-compare",
        lambda f: ["compare", "--model", f.spec, f.x, "--methods", "saliency", "--option", "saliency.bogus=1"],
        lambda f: (
            "Error: method_options['saliency'] has unknown option(s) 'bogus'. 'saliency' takes: "
            f"{known(_options(whybox.get_explainer('saliency')))}."
        ),
    ),
    (
        "unknown-option-key-explain",
        lambda f: ["explain", "--model", f.spec, f.x, "--method", "saliency", "--option", "bogus=1"],
        lambda f: (
            "Error: saliency: 'saliency' got an unknown option 'bogus'. Its options are: "
            f"{known(_options(whybox.get_explainer('saliency')))}."
        ),
    ),
    (
        "metric-option-for-a-metric-not-in-metrics",
        lambda f: ["evaluate", "--model", f.spec, f.x, "--method", "saliency", "--metric-option", "road.steps=3"],
        lambda f: "Error: --metric-option sets options of 'road', which is not in --metrics (deletion, insertion).",
    ),
    (
        "missing-model",
        lambda f: ["compare", f.x, "--methods", "saliency"],
        lambda f: "Error: --model is required (a built-in name such as digits-cnn, or path/to/file.py:factory).",
    ),
    (
        "no-inputs",
        lambda f: ["explain", "--model", f.spec, "--method", "saliency"],
        lambda f: (
            "Error: give at least one input: a dataset name (photos, digits-test, sentiment-test), image files or "
            "folders, .npy, .csv or .txt files (or --text for a text model)."
        ),
    ),
    (
        "nonexistent-input",
        lambda f: ["compare", "--model", f.spec, f.tmp / "nope.npy", "--methods", "saliency"],
        lambda f: (
            f"Error: inputs: input '{f.tmp / 'nope.npy'}' is not a builtin dataset ({', '.join(BUILTIN_DATASETS)}) "
            f"and no such file or folder exists (looked at {(f.tmp / 'nope.npy').resolve()})."
        ),
    ),
    (
        "nonexistent-model-file",
        lambda f: ["compare", "--model", f"{f.tmp / 'nope.py'}:build", f.x, "--methods", "saliency"],
        lambda f: (
            f"Error: --model '{f.tmp / 'nope.py'}:build': model '{f.tmp / 'nope.py'}:build': the file "
            f"'{f.tmp / 'nope.py'}' does not exist (looked at {(f.tmp / 'nope.py').resolve()}); give the path of a "
            "Python file."
        ),
    ),
    (
        "missing-factory",
        lambda f: ["explain", "--model", f"{f.model}:missing_factory", f.x, "--method", "saliency"],
        lambda f: (
            f"Error: --model '{f.model}:missing_factory': model '{f.model}:missing_factory': '{f.model}' defines no "
            "'missing_factory'; functions and classes defined there: build."
        ),
    ),
    (
        "missing-weights",
        lambda f: ["compare", "--model", f.spec, "--weights", f.tmp / "w.safetensors", f.x, "--methods", "saliency"],
        lambda f: (
            f"Error: --model '{f.spec}': weights='{f.tmp / 'w.safetensors'}': no such file (looked at "
            f"{(f.tmp / 'w.safetensors').resolve()})."
        ),
    ),
    (
        "target-label-without-labels-explain",
        lambda f: ["explain", "--model", f.spec, f.x, "--method", "saliency", "--target", "label"],
        _no_labels,
    ),
    (
        "target-label-without-labels-compare",
        lambda f: ["compare", "--model", f.spec, f.x, "--methods", "saliency", "--target", "label"],
        _no_labels,
    ),
    (
        "config-missing",
        lambda f: ["compare", "--config", f.tmp / "nope.toml", "--model", f.spec, f.x],
        lambda f: (
            f"Error: --config: cannot read the config file '{f.tmp / 'nope.toml'}': No such file or directory "
            f"(looked at {(f.tmp / 'nope.toml').resolve()})."
        ),
    ),
    (
        "config-unknown-keys",
        lambda f: [
            "compare",
            "--config",
            toml(f, "c.toml", 'methods = ["saliency"]\nbogus = 1\nalso-bad = "x"\nmetrix = ["deletion"]\n'),
            "--model",
            f.spec,
            f.x,
        ],
        lambda f: (
            f"Error: --config: config '{f.tmp / 'c.toml'}' has unknown keys: 'bogus', 'also-bad', 'metrix' (did you "
            "mean 'metrics'?); allowed keys: "
            "backend, batch_size, budget, device, inputs, label_column, limit, methods, metric_options, metrics, model, "
            "options, out, ray_address, seed, shard_size, target, weights (dashes or underscores)."
        ),
    ),
    (
        "config-wrong-type",
        lambda f: [
            "compare",
            "--config",
            toml(f, "c.toml", 'methods = ["saliency"]\nshard-size = "four"\n'),
            "--model",
            f.spec,
            f.x,
        ],
        lambda f: f"Error: --config: config '{f.tmp / 'c.toml'}': 'shard-size' must be int; got str 'four'.",
    ),
    (
        "config-toml-syntax-error",
        lambda f: [
            "explain",
            "--config",
            toml(f, "c.toml", 'method = "saliency"\nseed = = 1\n'),
            "--model",
            f.spec,
            f.x,
        ],
        lambda f: (
            f"Error: --config: the config file '{f.tmp / 'c.toml'}' is not valid TOML: Invalid value "
            "(at line 2, column 8)."
        ),
    ),
    (
        "config-imports-no-code",
        lambda f: [
            "compare",
            "--config",
            toml(f, "c.toml", f'model = "{f.spec}"\nmethods = ["saliency"]\n'),
            f.x,
        ],
        lambda f: (
            f"Error: --config '{f.tmp / 'c.toml'}': model = '{f.spec}' names a Python file; a config never makes "
            "whybox import code. Give file models on the command line (--model path/to/file.py:factory)."
        ),
    ),
    (
        "out-is-a-file-explain",
        lambda f: ["explain", "--model", f.spec, f.x, "--method", "saliency", "--out", f.x],
        lambda f: f"Error: Invalid value for '--out': Directory '{f.x}' is a file.",
    ),
    (
        "out-is-a-file-compare",
        lambda f: ["compare", "--model", f.spec, f.x, "--methods", "saliency", "--out", f.x],
        lambda f: f"Error: Invalid value for '--out': Directory '{f.x}' is a file.",
    ),
    (
        "out-is-a-file-from-config",
        lambda f: [
            "compare",
            "--config",
            toml(f, "c.toml", f'out = "{f.x}"\nmethods = ["saliency"]\n'),
            "--model",
            f.spec,
            f.x,
        ],
        lambda f: f"Error: the run directory '{f.x}' is a file; choose a folder (new or holding a run).",
    ),
    (
        "device-unknown",
        lambda f: ["explain", "--model", f.spec, f.x, "--method", "saliency", "--device", "tpu"],
        lambda f: (
            "Error: --device: device must be 'cpu', 'auto' (cuda where torch sees a GPU, else cpu), 'cuda', 'cuda:N' "
            "or 'mps'; got 'tpu'."
        ),
    ),
    (
        "device-unknown-compare",
        lambda f: ["compare", "--model", f.spec, f.x, "--methods", "saliency", "--device", "gpu0"],
        lambda f: (
            "Error: --device: device must be 'cpu', 'auto' (cuda where torch sees a GPU, else cpu), 'cuda', 'cuda:N' "
            "or 'mps'; got 'gpu0'."
        ),
    ),
    *(
        []
        if torch.cuda.is_available()
        else [
            (
                "device-cuda-without-a-gpu",
                lambda f: ["evaluate", "--model", f.spec, f.x, "--method", "saliency", "--device", "cuda"],
                lambda f: (
                    "Error: --device: device 'cuda': torch sees no CUDA device on this machine "
                    "(torch.cuda.is_available() is False); use 'cpu', or 'auto' to use a GPU only where there is one."
                ),
            )
        ]
    ),
    (
        "report-on-a-folder-without-a-run",
        lambda f: ["report", f.tmp],
        lambda f: (
            f"Error: RUN_DIR: '{f.tmp}' holds no run (run.sqlite is missing); pass a directory written by "
            "`whybox compare`."
        ),
    ),
]


@pytest.mark.parametrize(("args", "message"), [pytest.param(a, m, id=i) for i, a, m in BAD])
def test_every_bad_flag_path_and_config_exits_2_naming_it(
    runner: CliRunner, files: Files, args: Callable[[Files], list[object]], message: Callable[[Files], str]
) -> None:
    argv = args(files)
    before = sorted(files.tmp.rglob("*"))
    result = invoke(runner, argv)
    assert error_of(result) == message(files)
    assert "units computed" not in result.stdout  # refused before any work
    assert not (files.tmp / "o").exists()
    if argv[0] == "compare":
        assert sorted(files.tmp.rglob("*")) == before  # nothing written (no run directory, no whybox-run)


def test_a_rerun_of_a_different_job_into_the_same_out_is_refused_until_overwrite(
    runner: CliRunner, files: Files
) -> None:
    out = files.tmp / "run"
    base = ["compare", "--model", files.spec, files.x, "--metrics", "deletion", "--out", out, "--no-report"]
    assert invoke(runner, [*base, "--methods", "saliency"]).exit_code == 0
    before = snapshot(out)

    refused = invoke(runner, [*base, "--methods", "saliency,gradcam"])
    message = error_of(refused)
    assert message.startswith(
        f"Error: '{out}' holds a run of a different job (changed: config; config: methods stored "
        '["saliency"], now ["saliency", "gradcam"]). '
    )
    assert message.endswith(
        "Resuming would mix results; write to a new directory, or pass overwrite=True (--overwrite) to delete the "
        "old run."
    )
    assert snapshot(out) == before  # the old run is untouched

    again = invoke(runner, [*base, "--methods", "saliency,gradcam", "--overwrite"])
    assert again.exit_code == 0, again.output
    assert "2 units computed, 0 already done, 2 in all" in again.stdout
    assert stored_config(out)["job"]["methods"] == ["saliency", "gradcam"]  # type: ignore[index]


# ---------------------------------------------------------------------------------------------- 2. explain
def test_explain_writes_the_api_explanation_and_one_overlay_per_image(runner: CliRunner, files: Files) -> None:
    out = files.tmp / "e"
    args = ["explain", "--model", files.spec, files.x, "--method", "rise", "--option", "n_masks=64"]
    result = invoke(runner, [*args, "--seed", "3", "--batch-size", "16", "--out", out])
    assert result.exit_code == 0, result.output

    saved = whybox.Explanation.load(out / "explanation.safetensors")
    x = torch.from_numpy(np.load(files.x))
    direct = whybox.explain(load_model(files.spec).module, x, "rise", n_masks=64, seed=3, batch_size=16)
    assert torch.equal(saved.attributions, direct.attributions)
    assert torch.equal(saved.target, direct.target)
    assert saved.method == "rise" and saved.params == direct.params

    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [f"{i:04d}_x-{i}_rise.png" for i in range(6)]
    for i in range(6):
        assert f"  x-{i}: explained '{int(direct.target[i])}' " in result.stdout
        assert result.stdout.count(f"-> {i:04d}_x-{i}_rise.png") == 1
        with Image.open(out / pngs[i]) as im:  # an 8 x 8 overlay, each pixel a 16 x 16 block (it was 8 x 8 pixels)
            assert im.size == (128, 128)
            pixels = np.asarray(im.convert("RGB"))
        assert (pixels[::16, ::16].repeat(16, 0).repeat(16, 1) == pixels).all()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*pngs, "explanation.safetensors", ".whybox-explain-files.json"]
    )


FLAT_PY = """
import torch
from torch import nn


def build():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
"""


def _flat(f: Files) -> tuple[str, Path]:
    """A model on (B, 8, 8) arrays: image inputs (3 dims) without a channel axis, which no overlay can show."""
    (f.tmp / "flat.py").write_text(FLAT_PY)
    np.save(f.tmp / "x3.npy", np.random.default_rng(0).random((3, 8, 8)).astype(np.float32))
    return f"{f.tmp / 'flat.py'}:build", f.tmp / "x3.npy"


def test_explain_on_arrays_no_overlay_can_show_writes_the_explanation_and_says_why(
    runner: CliRunner, files: Files
) -> None:
    spec, x = _flat(files)
    out = files.tmp / "e"
    result = invoke(runner, ["explain", "--model", spec, x, "--method", "saliency", "--out", out])
    assert result.exit_code == 0, result.output
    assert result.stderr == "no overlay PNGs: display takes one model input of shape (C, H, W), got (8, 8).\n"
    saved = whybox.Explanation.load(out / "explanation.safetensors")
    direct = whybox.explain(load_model(spec).module, torch.from_numpy(np.load(x)), "saliency", batch_size=64)
    assert torch.equal(saved.attributions, direct.attributions)
    assert sorted(p.name for p in out.iterdir()) == [".whybox-explain-files.json", "explanation.safetensors"]


SIGNAL_PY = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(2, 4, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()
"""


def test_explain_on_1d_signals_writes_one_plot_per_signal(runner: CliRunner, files: Files) -> None:
    (files.tmp / "sig.py").write_text(SIGNAL_PY)
    x = files.tmp / "sig.npy"
    np.save(x, np.random.default_rng(0).standard_normal((3, 2, 40)).astype(np.float32))
    out = files.tmp / "e"
    result = invoke(
        runner, ["explain", "--model", f"{files.tmp / 'sig.py'}:build", x, "--method", "gradcam", "--out", out]
    )
    assert result.exit_code == 0, result.output
    saved = whybox.Explanation.load(out / "explanation.safetensors")
    assert saved.attributions.shape == (3, 1, 40) and saved.meta["signal"] is True
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["0000_sig-0_gradcam.png", "0001_sig-1_gradcam.png", "0002_sig-2_gradcam.png"]
    assert all(f"-> {p}" in result.output for p in pngs)

    # a run over them: every method for signals, and the report draws each signal along time with its maps
    run = files.tmp / "run"
    cmp = invoke(
        runner, ["compare", "--model", f"{files.tmp / 'sig.py'}:build", x, "--metrics", "deletion", "--out", run]
    )
    assert cmp.exit_code == 0, cmp.output
    assert f"3 inputs x {len(whybox.methods('signal'))} methods" in cmp.output
    from whybox.runs.report_data import load_run_report

    report = load_run_report(run)
    assert len(report.samples) == 3
    assert report.samples[0].image.shape == (96, 288, 3)
    assert all(m is not None and m.shape == (1, 40) for m in report.samples[0].maps.values())


def test_compare_on_arrays_without_a_channel_axis_writes_its_report(runner: CliRunner, files: Files) -> None:
    spec, x = _flat(files)
    result = invoke(runner, ["compare", "--model", spec, x, "--methods", "saliency", "--out", files.tmp / "run"])
    assert result.exit_code == 0, result.output
    assert (files.tmp / "run" / "report.html").is_file()


def test_explain_on_a_csv_with_a_scikit_learn_factory_prints_the_top_features(runner: CliRunner, files: Files) -> None:
    from sklearn.datasets import load_iris

    iris = load_iris()
    columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    rows = iris.data[[0, 60, 120]]
    (files.tmp / "iris.py").write_text(IRIS_PY)
    csv = files.tmp / "iris.csv"
    csv.write_text(",".join(columns) + "\n" + "".join(",".join(map(repr, r.tolist())) + "\n" for r in rows))
    out = files.tmp / "e"
    spec = f"{files.tmp / 'iris.py'}:build"
    result = invoke(runner, ["explain", "--model", spec, csv, "--method", "kernel_shap", "--out", out])
    assert result.exit_code == 0, result.output

    saved = whybox.Explanation.load(out / "explanation.safetensors")
    x = torch.tensor(rows, dtype=torch.float64)  # a table is read in float64 for an estimator, as the API reads it
    direct = whybox.explain(load_model(spec).module, x, "kernel_shap", seed=0, batch_size=64)
    assert torch.equal(saved.attributions, direct.attributions)
    assert saved.params["batch_size"] == 4096  # no --batch-size: an estimator's default (a torch model's is 64)
    assert saved.meta["feature_names"] == columns
    assert direct.target.tolist() == [0, 1, 2]  # the classifier gets these three right
    assert sorted(p.name for p in out.iterdir()) == [
        ".whybox-explain-files.json",
        "explanation.safetensors",
    ]  # no images for a table
    for i in range(3):
        line = next(line for line in result.stdout.splitlines() if line.startswith(f"  iris-{i}: "))
        assert line.startswith(f"  iris-{i}: explained '{i}' (p=")
        printed = [item.split("=") for item in line.split("; top features: ")[1].split(", ")]
        a = saved.attributions[i]
        assert [name for name, _ in printed] == [columns[j] for j in torch.argsort(a.abs(), descending=True)]
        for name, value in printed:
            assert float(value) == pytest.approx(float(a[columns.index(name)]), rel=1e-2, abs=1e-6)


CHURN_PY = """
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler


def frame(n=200, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "age": rng.integers(18, 80, n).astype(float),
        "city": rng.choice(["paris", "oslo", "rome"], n),
        "income": rng.normal(50, 10, n).round(2),
        "plan": rng.choice(["basic", "pro"], n),
    })
    return df, ((df.age > 40) ^ (df.city == "oslo")).astype(int)


def build():
    df, y = frame()
    encode = ColumnTransformer([("num", StandardScaler(), ["age", "income"]), ("cat", OneHotEncoder(), ["city", "plan"])])
    return make_pipeline(encode, LogisticRegression()).fit(df, y)
"""


def test_a_csv_with_text_columns_is_explained_evaluated_and_compared_for_a_pipeline_fitted_on_them(
    runner: CliRunner, files: Files
) -> None:
    """A CSV whose text columns a Pipeline one-hot encodes (it used to be refused: 'not a finite number'): the
    columns are coded by the estimator's adapter as a DataFrame would be through the API, a reference row with text
    is given as a list, and the numbers equal the API's on the same frame; a fill by name is refused naming the list
    form, a blank text cell is named."""
    import importlib.util

    (files.tmp / "churn.py").write_text(CHURN_PY)
    spec_mod = importlib.util.spec_from_file_location("churn_for_test", files.tmp / "churn.py")
    churn = importlib.util.module_from_spec(spec_mod)
    spec_mod.loader.exec_module(churn)
    df, y = churn.frame(6, seed=1)
    csv = files.tmp / "rows.csv"
    df[["plan", "income", "age", "city"]].assign(churn=y).to_csv(csv, index=False)  # columns in another order
    spec = f"{files.tmp / 'churn.py'}:build"
    ref = [40, "oslo", 50, "basic"]
    fill = 'fill=[40, "oslo", 50, "basic"]'
    out = files.tmp / "e"
    args = ["explain", "--model", spec, csv, "--label-column", "churn", "--method", "kernel_shap"]
    result = invoke(runner, [*args, "--option", fill, "--out", out])
    assert result.exit_code == 0, result.output
    saved = whybox.Explanation.load(out / "explanation.safetensors")
    direct = whybox.explain(churn.build(), df.astype({"age": "float32", "income": "float32"}), "kernel_shap", fill=ref)
    torch.testing.assert_close(
        saved.attributions, direct.attributions.to(saved.attributions.dtype), rtol=1e-5, atol=1e-6
    )
    assert saved.meta["feature_names"] == ["age", "city", "income", "plan"]
    assert saved.meta["categories"] == {"city": ["oslo", "paris", "rome"], "plan": ["basic", "pro"]}
    assert "top features: " in result.stdout and "city=" in result.stdout

    refused = invoke(runner, [*args, "--out", files.tmp / "e2"])
    assert refused.exit_code == 2
    assert "inputs have text or categorical columns ('city', 'plan')" in refused.output
    assert "--option 'fill=[...]' on the command line" in refused.output

    ev = invoke(
        runner,
        ["evaluate", "--model", spec, csv, "--label-column", "churn", "--method", "occlusion", "--option", fill,
         "--metric-option", f"deletion.{fill}", "--metrics", "deletion", "--json", files.tmp / "ev.json"],
    )  # fmt: skip
    assert ev.exit_code == 0, ev.output
    e = whybox.explain(churn.build(), df.astype({"age": "float32", "income": "float32"}), "occlusion", fill=ref)
    want = whybox.evaluate(churn.build(), df.astype({"age": "float32", "income": "float32"}), e, "deletion", fill=ref)
    got = json.loads((files.tmp / "ev.json").read_text())
    assert got["metrics"]["deletion"]["scores"] == pytest.approx(want.scores.tolist(), rel=1e-6)

    run = files.tmp / "run"
    cmp = invoke(
        runner,
        ["compare", "--model", spec, csv, "--label-column", "churn", "--methods", "occlusion,lime",
         "--option", f"occlusion.{fill}", "--option", f"lime.{fill}", "--metric-option", f"deletion.{fill}",
         "--metrics", "deletion", "--out", run],
    )  # fmt: skip
    assert cmp.exit_code == 0, cmp.output
    assert (run / "report.html").is_file()
    # the report shows each row as column=value cells (a text column's text) coloured by each method's values
    from whybox.runs.report_data import load_run_report

    report = load_run_report(run)
    assert len(report.samples) == 6
    for i, sample in enumerate(report.samples):
        r = df.iloc[i]
        assert sample.words == [f"age={r.age:.4g}", f"city={r.city}", f"income={r.income:.4g}", f"plan={r.plan}"]
        np.testing.assert_allclose(sample.maps["occlusion"], e.attributions[i].numpy(), rtol=1e-5, atol=1e-6)
    page = (run / "report.html").read_text(encoding="utf-8")
    assert page.count('<td class="words" data-method=') == 6 * 2 and "city=oslo" in page
    # what a Ray worker builds: the estimator's adapter with the run's vocabulary decodes the coded inputs alike
    from whybox.cli.jobs import _coded_model

    coded = torch.from_numpy(np.load(run / "inputs.npy"))
    worker = _coded_model(lambda: load_model(spec), saved.meta["categories"])
    again = whybox.explain(worker, coded, "occlusion", fill=saved.options["fill"])
    torch.testing.assert_close(again.attributions, e.attributions.to(again.attributions.dtype), rtol=1e-5, atol=1e-6)

    blank = files.tmp / "blank.csv"
    text = csv.read_text().splitlines()
    cells = text[2].split(",")
    cells[3] = ""  # the city of the second row
    blank.write_text("\n".join([text[0], text[1], ",".join(cells), *text[3:]]) + "\n")
    bad = invoke(runner, ["explain", "--model", spec, blank, "--label-column", "churn", "--method", "lime"])
    assert bad.exit_code == 2
    assert "line 3, column 'city': '' is not a finite number; fill it in (e.g. with a 'missing' category)" in bad.output


def test_a_scikit_learn_regressor_is_explained_evaluated_and_compared_by_its_output(
    runner: CliRunner, files: Files
) -> None:
    """A regressor from a factory (it used to be refused for lacking predict_proba): its one output is what every
    method and metric reads (a regressor's default score is its value, score='logit'), the lines print that output, and
    --label-column drops the target column (blank or fractional cells included) without reading it as classes."""
    (files.tmp / "ridge.py").write_text(RIDGE_PY)
    spec = f"{files.tmp / 'ridge.py'}:build"
    rows = np.array([[1.0, 0.5, -1.0], [-0.5, 2.0, 0.0], [0.0, 0.0, 3.0]])
    csv = files.tmp / "rows.csv"
    csv.write_text(
        "a,y,b,c\n"
        + "".join(f"{r[0]!r},{y},{r[1]!r},{r[2]!r}\n" for r, y in zip(rows.tolist(), ["1.5", "", "7"], strict=True))
    )
    out = files.tmp / "e"
    fill = "--option=fill=zero"
    result = invoke(runner, ["explain", "--model", spec, csv, "--label-column", "y", "--method", "lime", fill,
                             "--out", out])  # fmt: skip
    assert result.exit_code == 0, result.output
    model = load_model(spec).module
    saved = whybox.Explanation.load(out / "explanation.safetensors")
    assert saved.meta["feature_names"] == ["a", "b", "c"] and saved.params["score"] == "logit"
    terms = torch.from_numpy(model.coef_ * rows)  # a linear model's exact attributions against the zero row
    torch.testing.assert_close(saved.attributions.double(), terms, atol=0.03 * float(terms.abs().max()), rtol=0)
    for i, value in enumerate(model.predict(rows)):
        assert f"  rows-{i}: output {value:.6g}; top features: " in result.stdout
    result = invoke(runner, ["evaluate", "--model", spec, csv, "--label-column", "y", "--method", "kernel_shap",
                             "--metrics", "deletion", "--json", files.tmp / "s.json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    scores = json.loads((files.tmp / "s.json").read_text())
    e = whybox.explain(model, torch.tensor(rows, dtype=torch.float32), "kernel_shap", batch_size=4096)
    direct = whybox.evaluate(model, torch.tensor(rows, dtype=torch.float32), e, "deletion", score="logit")
    assert scores["metrics"]["deletion"]["scores"] == pytest.approx(direct.scores.tolist(), rel=1e-12)
    result = invoke(runner, ["compare", "--model", spec, csv, "--label-column", "y", "--methods", "lime,occlusion",
                             "--metrics", "insertion", "--out", files.tmp / "run"])  # fmt: skip
    assert result.exit_code == 0, result.output
    page = (files.tmp / "run" / "report.html").read_text()
    for value in model.predict(rows):  # the regressor's value as its output, not a probability (it read p = 150.0%)
        assert f"output = {value:.4g}<br>" in page
    assert "p = " not in page
    result = invoke(runner, ["explain", "--model", spec, csv, "--label-column", "y", "--method", "lime", "--target",
                             "label", "--out", out])  # fmt: skip
    assert result.exit_code == 2
    assert "--target label explains each input's true class, but Ridge is a regressor" in result.output


def test_a_factory_may_return_a_whybox_adapter_for_a_model_whose_output_is_a_model_output(
    runner: CliRunner, files: Files
) -> None:
    """A Hugging Face classifier returns a ModelOutput, which needs adapt(model, output="logits"); the command line
    had no way to say so (a factory returning the adapter was refused). Now the adapter is taken as the model, its
    classes are named from config.id2label, and the explanation is the API's."""
    pytest.importorskip("transformers")
    (files.tmp / "vit.py").write_text(VIT_PY)
    spec = f"{files.tmp / 'vit.py'}:build"
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    np.save(files.tmp / "x.npy", x.numpy())
    out = files.tmp / "e"
    result = invoke(runner, ["explain", "--model", spec, files.tmp / "x.npy", "--method", "gradcam", "--out", out])
    assert result.exit_code == 0, result.output
    lm = load_model(spec)
    assert lm.labels == ["cat", "dog", "fox"] and not lm.module.model.training
    saved = whybox.Explanation.load(out / "explanation.safetensors")
    direct = whybox.explain(lm.module, x, "gradcam")
    assert torch.equal(saved.attributions, direct.attributions)
    names = [lm.labels[int(t)] for t in direct.target]
    for i in range(2):
        assert f"  x-{i}: explained {names[i]!r} (p=" in result.stdout


def test_device_auto_on_a_machine_without_a_gpu_gives_the_cpu_run(runner: CliRunner, files: Files) -> None:
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has a GPU: auto picks it (tests/contract/test_cuda.py covers that)")
    outs = []
    for device in ("cpu", "auto"):
        out = files.tmp / device
        result = invoke(runner, ["explain", "--model", files.spec, files.x, "--method", "saliency", "--device", device,
                                 "--out", out])  # fmt: skip
        assert result.exit_code == 0, result.output
        outs.append(whybox.Explanation.load(out / "explanation.safetensors").attributions)
    assert torch.equal(outs[0], outs[1])


def test_device_refusals_that_need_a_gpu_to_reach(
    runner: CliRunner, files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With torch claiming a GPU: a scikit-learn estimator refuses one, and the Ray backend refuses one before any
    work (its workers load their own model on the CPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    (files.tmp / "iris.py").write_text(IRIS_PY)
    csv = files.tmp / "iris.csv"
    csv.write_text("a,b,c,d\n5.1,3.5,1.4,0.2\n")
    spec = f"{files.tmp / 'iris.py'}:build"
    result = invoke(runner, ["explain", "--model", spec, csv, "--method", "kernel_shap", "--device", "cuda"])
    assert error_of(result) == (
        f"Error: --model {spec!r}: device 'cuda' given for model {spec!r}, a LogisticRegression: estimators run on "
        "the CPU; drop the device (or pass 'cpu')."
    )
    before = sorted(files.tmp.rglob("*"))
    result = invoke(runner, ["compare", "--model", files.spec, files.x, "--methods", "saliency", "--backend", "ray",
                             "--device", "cuda", "--out", files.tmp / "o"])  # fmt: skip
    assert error_of(result) == (
        "Error: --device cuda with --backend ray: Ray's workers load their own model on the CPU (their tasks ask Ray "
        "for no GPU); use --backend local to run on this machine's GPU."
    )
    assert sorted(files.tmp.rglob("*")) == before


# ---------------------------------------------------------------------------------------------- 3. evaluate
def test_evaluate_json_holds_the_scores_of_the_api(runner: CliRunner, tmp_path: Path) -> None:
    report = tmp_path / "scores.json"
    args = [
        "evaluate", "--model", "digits-cnn", "digits-test", "--limit", "6", "--method", "lime",
        "--option", "n_samples=40", "--option", "fill=zero", "--metrics", "deletion,road",
        "--metric-option", "deletion.steps=4", "--target", "label", "--seed", "3", "--batch-size", "16",
        "--json", report,
    ]  # fmt: skip
    result = invoke(runner, args)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["samples"] == [f"digits-test-{i:04d}" for i in range(6)]

    from whybox.data import digits_cnn, load_digits

    x, y = load_digits("test")
    x, y = x[:6], y[:6]
    model = digits_cnn()
    e = whybox.explain(model, x, "lime", target=y, n_samples=40, fill="zero", seed=3, batch_size=16)
    steps: dict[str, dict[str, int]] = {"deletion": {"steps": 4}, "road": {}}
    for metric, extra in steps.items():
        labels = y if metric == "road" else None  # true classes: the metric that reads them
        res = whybox.evaluate(model, x, e, metric, labels=labels, seed=3, batch_size=16, **extra)  # type: ignore[arg-type]
        assert data["metrics"][metric]["scores"] == res.scores.tolist()
        assert data["metrics"][metric]["higher_is_better"] == res.higher_is_better
        mean = float(res.scores.mean())
        assert f"  {metric:<18} mean {mean:.4f}" in result.stdout


MARKED_PY = (
    MODEL_PY
    + """

class Picky(nn.Module):
    \"\"\"The tiny CNN, raising on the marked sample (pixels of 0.5) once a pixel of it has been removed (0).\"\"\"

    def __init__(self):
        super().__init__()
        self.net = build()

    def forward(self, x):
        marked, lost = (x == 0.5).flatten(1).any(1), (x == 0).flatten(1).any(1)
        if bool((marked & lost).any()):
            raise ValueError("the marked sample lost a pixel")
        return self.net(x)


def picky():
    return Picky().eval()
"""
)


def test_a_metric_failing_on_one_sample_costs_only_that_sample(runner: CliRunner, files: Files) -> None:
    """A metric that raised on one sample of a shard recorded that error for every sample of it, and the run said
    '0 failed', exit 0, 'No failures'. The shard is scored sample by sample then: the others keep the values
    whybox.evaluate gives them, the one failure is counted (exit 1) and listed in the report."""
    (files.tmp / "marked.py").write_text(MARKED_PY)
    x = np.load(files.x)
    x[2, 0, [0, 4, 7], [0, 4, 7]] = 0.5
    np.save(files.tmp / "marked.npy", x)
    out = files.tmp / "run"
    result = invoke(runner, ["compare", "--model", f"{files.tmp / 'marked.py'}:picky", files.tmp / "marked.npy",
                             "--methods", "saliency", "--metrics", "deletion", "--out", out])  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "0 failed (sample, method) pairs, 1 failed metric values" in result.output
    import sqlite3

    rows = dict(
        (i, (v, why))
        for i, v, why in sqlite3.connect(out / "run.sqlite").execute(
            "SELECT idx, value, reason FROM metric_values WHERE metric = 'deletion'"
        )
    )
    assert rows[2] == (None, "ValueError: the marked sample lost a pixel")
    model = load_model(f"{files.tmp / 'marked.py'}:picky").module
    keep = [0, 1, 3, 4, 5]
    xt = torch.from_numpy(x[keep])
    e = whybox.explain(model, xt, "saliency")
    want = whybox.evaluate(model, xt, e, "deletion").scores.tolist()
    assert [rows[i][0] for i in keep] == pytest.approx(want, rel=1e-12)
    page = (out / "report.html").read_text()
    assert "deletion: ValueError: the marked sample lost a pixel" in page


def test_a_table_wider_than_the_estimator_names_the_label_column_fix(runner: CliRunner, files: Files) -> None:
    """A CSV whose label column was left in (no --label-column) failed every sample with scikit-learn's 'X has 5
    features, but LogisticRegression is expecting 4'; it is refused before any work, naming the flag."""
    (files.tmp / "iris.py").write_text(IRIS_PY)
    spec = f"{files.tmp / 'iris.py'}:build"
    csv = files.tmp / "iris.csv"
    csv.write_text("a,b,c,d,y\n5.1,3.5,1.4,0.2,0\n6.3,3.3,6.0,2.5,2\n")
    for command in ("explain", "evaluate", "compare"):
        flag = "--methods" if command == "compare" else "--method"
        result = invoke(runner, [command, "--model", spec, csv, flag, "occlusion", "--out" if command != "evaluate"
                                 else "--json", files.tmp / command])  # fmt: skip
        assert error_of(result) == (
            "Error: inputs: 5 columns (a, b, c, d, y), but LogisticRegression takes 4 features (n_features_in_); "
            "name the label column with --label-column (it is not a feature)."
        ), command
    result = invoke(runner, ["explain", "--model", spec, csv, "--label-column", "y", "--method", "occlusion",
                             "--out", files.tmp / "ok"])  # fmt: skip
    assert result.exit_code == 0, result.output


def test_evaluate_reads_ground_truth_masks_for_the_localisation_metrics(runner: CliRunner, tmp_path: Path) -> None:
    """--masks feeds the localisation metrics (the first rows with --limit): the numbers of the API; without it they
    are refused before any work, and a file that does not fit is named."""
    g = np.random.default_rng(1)
    masks = g.random((10, 8, 8)) < 0.3
    np.save(tmp_path / "m.npy", masks)
    np.savez(tmp_path / "m.npz", masks=masks[:4])
    report = tmp_path / "s.json"
    base = ["evaluate", "--model", "digits-cnn", "digits-test", "--limit", "4", "--method", "saliency"]
    for given in ("m.npy", "m.npz"):
        metrics = "deletion,pointing_game,relevance_rank"
        result = invoke(runner, [*base, "--metrics", metrics, "--masks", given, "--json", report])
        assert result.exit_code == 0, result.output
        data = json.loads(report.read_text())
        from whybox.data import digits_cnn, load_digits

        x = load_digits("test")[0][:4]
        e = whybox.explain(digits_cnn(), x, "saliency")
        for metric in ("pointing_game", "relevance_rank"):
            res = whybox.evaluate(None, x, e, metric, masks=torch.from_numpy(masks[:4]))
            assert data["metrics"][metric]["scores"] == res.scores.tolist()
    cases = [
        (["--metrics", "deletion,pointing_game"], "Error: pointing_game needs ground-truth masks: give --masks "
         "masks.npy, (N, H, W) bool, row i the mask of input i."),
        (["--metrics", "deletion", "--masks", "m.npy"], "Error: --masks is read by the localisation metrics "
         "(pointing_game, energy_pointing_game, relevance_mass, relevance_rank); --metrics has none of them."),
        (["--metrics", "relevance_mass", "--masks", "none.npy"], "Error: --masks 'none.npy': no such file."),
    ]  # fmt: skip
    np.save(tmp_path / "few.npy", masks[:3])
    np.save(tmp_path / "small.npy", masks[:4, :4, :4])
    cases.append((["--metrics", "relevance_mass", "--masks", "few.npy"], "Error: --masks 'few.npy': 3 masks for 4 inputs; give one mask per input, in their order."))  # fmt: skip
    cases.append((["--metrics", "relevance_mass", "--masks", "small.npy"], "Error: relevance_mass: --masks: masks must have shape (4, 8, 8) or (4, 1, 8, 8); got (4, 4, 4)."))  # fmt: skip
    for extra, message in cases:
        result = invoke(runner, [*base, *extra])
        assert result.exit_code == 2 and message in result.output, (extra, result.output)


def test_evaluate_scores_a_saved_explanation_of_the_same_inputs_only(runner: CliRunner, tmp_path: Path) -> None:
    """--explanation: the file explain wrote is scored as it is (the numbers --method gives, stability re-running it
    with its saved options), never on other inputs (rows in another order: refused, naming them), and never with a
    --method beside it."""
    base = ["--model", "digits-cnn", "digits-test", "--limit", "5"]
    made = invoke(runner, ["explain", *base, "--method", "lime", "--option", "n_samples=60", "--out", tmp_path / "e"])
    assert made.exit_code == 0, made.output
    saved = tmp_path / "e" / "explanation.safetensors"
    metrics = ["--metrics", "deletion,insertion,stability", "--metric-option", "stability.n_runs=2"]
    again = invoke(runner, ["evaluate", *base, "--explanation", saved, *metrics, "--json", tmp_path / "a.json"])
    fresh = invoke(runner, ["evaluate", *base, "--method", "lime", "--option", "n_samples=60", *metrics, "--json",
                            tmp_path / "b.json"])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert fresh.exit_code == 0, fresh.output
    a, b = (json.loads((tmp_path / n).read_text())["metrics"] for n in ("a.json", "b.json"))
    assert {k: v["scores"] for k, v in a.items()} == {k: v["scores"] for k, v in b.items()}

    from whybox.data import load_digits

    np.save(tmp_path / "shuffled.npy", load_digits("test")[0][:5].numpy()[[1, 0, 2, 3, 4]])
    other = invoke(runner, ["evaluate", "--model", "digits-cnn", tmp_path / "shuffled.npy", "--explanation", saved])
    assert other.exit_code == 2 and "made for other inputs than these: rows [0, 1] of 5 differ" in other.output
    both = invoke(runner, ["evaluate", *base, "--explanation", saved, "--method", "lime"])
    assert both.exit_code == 2 and "drop --method and --option" in both.output
    # one config for explain and evaluate: its method, options and target say how to explain; --explanation wins
    cfg = tmp_path / "run.toml"
    cfg.write_text('method = "lime"\ntarget = "3"\n[options]\nn_samples = 60\n')
    configured = invoke(runner, ["evaluate", *base, "--config", cfg, "--explanation", saved, *metrics, "--json",
                                 tmp_path / "c.json"])  # fmt: skip
    assert configured.exit_code == 0, configured.output
    c = json.loads((tmp_path / "c.json").read_text())["metrics"]
    assert {k: v["scores"] for k, v in c.items()} == {k: v["scores"] for k, v in a.items()}


# ---------------------------------------------------------------------------------------------- 4. compare
def test_explain_and_evaluate_take_their_methods_table_of_a_compare_config(runner: CliRunner, files: Files) -> None:
    """[options.lime] (the per-method tables compare reads) gives explain and evaluate lime's options and leaves the
    other methods' tables alone; it was read as an option named 'lime'. Flat [options] keys still apply."""
    cfg = files.tmp / "run.toml"
    cfg.write_text("[options.lime]\nn_samples = 30\n[options.occlusion]\nwindow = 2\n")
    flat = files.tmp / "flat.toml"
    flat.write_text("[options]\nn_samples = 30\n")
    for path in (cfg, flat):
        out = files.tmp / path.stem
        result = invoke(runner, ["explain", "--model", files.spec, files.x, "--limit", "2", "--method", "lime",
                                 "--config", path, "--out", out])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert whybox.Explanation.load(out / "explanation.safetensors").params["n_samples"] == 30
    result = invoke(runner, ["evaluate", "--model", files.spec, files.x, "--limit", "2", "--method", "occlusion",
                             "--config", cfg, "--metrics", "sparseness", "--json", files.tmp / "s.json"])  # fmt: skip
    assert result.exit_code == 0, result.output


def test_compare_from_a_config_lets_flags_win_resumes_and_reports_every_method(runner: CliRunner, files: Files) -> None:
    out = files.tmp / "run"
    config = toml(
        files,
        "job.toml",
        f"""
methods = ["saliency", "lime", "occlusion"]
metrics = ["deletion", "insertion"]
shard-size = 4
seed = 5
out = "{out}"

[options.lime]
n_samples = 40
fill = "zero"

[options.occlusion]
window = 4

[metric_options.deletion]
steps = 5
""",
    )
    args = ["compare", "--config", config, "--model", files.spec, files.x, "--option", "lime.n_samples=24"]
    args += ["--shard-size", "3"]
    first = invoke(runner, args)
    assert first.exit_code == 0, first.output
    assert "6 units computed, 0 already done, 6 in all; 0 failed (sample, method) pairs" in first.stdout

    job = stored_config(out)["job"]
    assert job["method_options"] == {"lime": {"n_samples": 24, "fill": "zero"}, "occlusion": {"window": 4}}  # type: ignore[index]
    assert job["metric_options"] == {"deletion": {"steps": 5}}  # type: ignore[index]
    assert job["shard_size"] == 3 and job["seed"] == 5  # type: ignore[index]
    assert job["methods"] == ["saliency", "lime", "occlusion"]  # type: ignore[index]
    assert sorted(leaderboard_methods(first.stdout)) == ["lime", "occlusion", "saliency"]
    page = (out / "report.html").read_text(encoding="utf-8")
    for method in ("saliency", "lime", "occlusion"):
        assert method in page

    before = snapshot(out)
    again = invoke(runner, args)
    assert again.exit_code == 0, again.output
    assert "0 units computed, 6 already done, 6 in all" in again.stdout
    assert f"resuming {out}: 6 of 6 units already done, 0 to go" in again.stderr
    assert snapshot(out) == before


# ---------------------------------------------------------------------------------------------- 5. Ray
def test_compare_on_ray_equals_the_local_backend(runner: CliRunner, files: Files) -> None:
    try:
        import ray
    except ImportError:
        if os.environ.get("WHYBOX_REQUIRE_RAY") == "1":
            raise
        pytest.skip("the ray extra is not installed (set WHYBOX_REQUIRE_RAY=1 to make this a failure)")
    was_running = ray.is_initialized()  # normally not: the command starts a local cluster over this machine's CPUs
    base = ["compare", "--model", files.spec, files.x, "--methods", "saliency,lime,gradcam"]
    base += ["--option", "lime.n_samples=32", "--shard-size", "2", "--no-report"]
    local = invoke(runner, [*base, "--out", files.tmp / "local"])
    assert local.exit_code == 0, local.output
    dist = invoke(runner, [*base, "--out", files.tmp / "ray", "--backend", "ray"])
    assert dist.exit_code == 0, dist.output
    assert ray.is_initialized() == was_running  # a cluster the command started, it shut down
    assert "9 units computed, 0 already done, 9 in all" in dist.stdout
    assert snapshot(files.tmp / "ray") == snapshot(files.tmp / "local")
    # a black-box text model: its presence rows name texts by index, which each worker's fresh adapter must know
    (files.tmp / "bb.py").write_text(BLACKBOX_TEXT_PY)
    (files.tmp / "r.txt").write_text("a good film\ngood but bad plot\nbad\n")
    base = ["compare", "--model", f"{files.tmp / 'bb.py'}:build", files.tmp / "r.txt", "--methods", "occlusion,lime"]
    base += ["--option", "lime.n_samples=16", "--shard-size", "2", "--no-report"]
    local = invoke(runner, [*base, "--out", files.tmp / "tlocal"])
    dist = invoke(runner, [*base, "--out", files.tmp / "tray", "--backend", "ray"])
    assert local.exit_code == dist.exit_code == 0, dist.output
    assert "0 failed (sample, method) pairs" in dist.stdout
    assert snapshot(files.tmp / "tray") == snapshot(files.tmp / "tlocal")


# ---------------------------------------------------------------------------------------------- 6. failures
def _picky(f: Files, when: str) -> tuple[str, Path]:
    (f.tmp / "picky.py").write_text(PICKY_PY.format(sentinel=SENTINEL, when=when, reason=REASON))
    x = np.load(f.x)
    x[2, 0, 3, 3] = SENTINEL
    np.save(f.tmp / "xs.npy", x)
    return f"{f.tmp / 'picky.py'}:build", f.tmp / "xs.npy"


def test_a_sample_the_model_rejects_exits_1_and_its_reason_is_in_the_report_escaped(
    runner: CliRunner, files: Files
) -> None:
    spec, x = _picky(files, "grad")
    out = files.tmp / "run"
    result = invoke(runner, ["compare", "--model", spec, x, "--methods", "saliency,occlusion", "--out", out])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    # the run is complete: every unit done; only saliency (gradients on) failed, on the sentinel sample
    assert "2 units computed, 0 already done, 2 in all; 1 failed (sample, method) pairs" in result.stdout
    store = RunStore.open_existing(out)
    try:
        failed = [r for r in store.rows("results") if r[2] == "failed"]
    finally:
        store.close()
    assert failed == [(2, "saliency", "failed", f"RuntimeError: {REASON}", None, None)]

    page_path = files.tmp / "report.html"
    report = invoke(runner, ["report", out, "--out", page_path])
    assert report.exit_code == 0, report.output
    assert report.stdout == f"wrote {page_path}\n"
    page = page_path.read_text(encoding="utf-8")
    assert f"RuntimeError: {markupsafe.escape(REASON)}" in page
    assert REASON not in page


def test_explain_on_a_model_that_raises_exits_1_with_the_reason_not_a_traceback(
    runner: CliRunner, files: Files
) -> None:
    spec, x = _picky(files, "always")
    result = invoke(runner, ["explain", "--model", spec, x, "--method", "saliency", "--out", files.tmp / "e"])
    assert error_of(result, code=1) == f"Error: saliency failed: RuntimeError: {REASON}"


def test_a_sample_whose_prediction_fails_shows_the_models_reason_in_the_report(runner: CliRunner, files: Files) -> None:
    spec, x = _picky(files, "always")
    out = files.tmp / "run"
    result = invoke(runner, ["compare", "--model", spec, x, "--methods", "saliency", "--out", out])
    assert result.exit_code == 1, result.output
    page = (out / "report.html").read_text(encoding="utf-8")
    assert f"RuntimeError: {markupsafe.escape(REASON)}" in page


# ---------------------------------------------------------------------------------------------- 7. metrics
def test_metrics_lists_every_registered_metric_with_its_direction(runner: CliRunner) -> None:
    result = invoke(runner, ["metrics"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == METRICS.names()
    for line, name in zip(lines, METRICS.names(), strict=True):
        hib = METRICS.get(name).higher_is_better  # type: ignore[attr-defined]
        direction = "higher is better" if hib else "lower is better"
        assert line.split(None, 1)[1].startswith(direction + "  ")


# ---------------------------------------------------------------------------------------------- 8. hostile names
HOSTILE = ["<script>alert(1)<script>.png", 'a"b<tr>.png', "x\\..\\..\\evil.png", "-rf ~ $(id) 'x'&amp;.png"]


def test_hostile_file_names_stay_inside_out_and_never_become_markup(runner: CliRunner, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in HOSTILE:
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(images / name)
    outside = sorted(p for p in tmp_path.rglob("*"))

    out = tmp_path / "e"
    result = invoke(runner, ["explain", "--model", "digits-cnn", images, "--method", "saliency", "--out", out])
    assert result.exit_code == 0, result.output
    written = [p for p in out.rglob("*")]
    assert len(written) == len(HOSTILE) + 2  # one PNG per image, the explanation and the list of its files
    for p in written:
        assert p.resolve().parent == out.resolve() and p.is_file()
    assert sorted(p for p in tmp_path.rglob("*") if out not in p.parents and p != out) == outside

    run = tmp_path / "run"
    compared = invoke(runner, ["compare", "--model", "digits-cnn", images, "--methods", "saliency", "--out", run])
    assert compared.exit_code == 0, compared.output
    reported = invoke(runner, ["report", run])
    assert reported.exit_code == 0, reported.output
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "script" not in start_tags(page)
    assert "<tr>.png" not in page
    for name in HOSTILE:
        assert str(markupsafe.escape(name)) in page


def test_relative_inputs_in_a_config_are_relative_to_the_config_s_folder(
    runner: CliRunner, files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config in conf/ naming "../x.npy" reads tmp/x.npy whatever the working directory; a built-in dataset name
    stays a name."""
    (files.tmp / "conf").mkdir()
    (files.tmp / "elsewhere").mkdir()
    cfg = files.tmp / "conf" / "run.toml"
    cfg.write_text('inputs = ["../x.npy"]\nmethods = ["saliency"]\nmetrics = []\n')
    monkeypatch.chdir(files.tmp / "elsewhere")
    out = files.tmp / "run"
    result = invoke(runner, ["compare", "--model", files.spec, "--config", cfg, "--out", out, "--no-report"])
    assert result.exit_code == 0, result.output
    stored = np.load(out / "inputs.npy")
    np.testing.assert_array_equal(stored, np.load(files.x))


def test_ctrl_c_exits_130_from_every_command(runner: CliRunner, files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupt during the work exits with the shell's 130, not click's generic 1."""
    import whybox

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(whybox, "explain", interrupted)
    result = invoke(
        runner, ["explain", "--model", files.spec, files.x, "--method", "saliency", "--out", files.tmp / "e"]
    )
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.stderr


IRIS_NAMES_PY = """
import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression


def build():
    data = load_iris()
    return LogisticRegression(max_iter=500).fit(data.data, np.asarray(data.target_names)[data.target])
"""


def test_explain_target_by_class_name(runner: CliRunner, files: Files) -> None:
    """--target may name one of the model's classes (its labels): the same explanation as its index; a name
    that is not a class is refused with an example of one."""
    from sklearn.datasets import load_iris

    (files.tmp / "iris_names.py").write_text(IRIS_NAMES_PY)
    csv = files.tmp / "iris4.csv"
    rows = load_iris().data[[0, 60]]
    csv.write_text("a,b,c,d\n" + "".join(",".join(map(repr, r.tolist())) + "\n" for r in rows))
    spec = f"{files.tmp / 'iris_names.py'}:build"
    saved = []
    for target in ("virginica", "2"):
        out = files.tmp / f"t-{target}"
        result = invoke(runner, ["explain", "--model", spec, csv, "--method", "occlusion", "--target", target,
                                 "--out", out])  # fmt: skip
        assert result.exit_code == 0, result.output
        saved.append(whybox.Explanation.load(out / "explanation.safetensors"))
    assert saved[0].target.tolist() == [2, 2] and torch.equal(saved[0].attributions, saved[1].attributions)
    result = invoke(runner, ["explain", "--model", spec, csv, "--method", "occlusion", "--target", "rose"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: --target must be 'prediction', 'label', a class index, or one of the model's class names "
        "(e.g. 'setosa'); got 'rose'."
    )
    result = invoke(runner, ["explain", "--model", spec, csv, "--method", "occlusion", "--target", "virginca"])
    assert result.stderr.strip().splitlines()[-1].endswith("got 'virginca'. Did you mean 'virginica'?")


FUNCTIONS_PY = """
import numpy as np
import torch

from model import build

NET = build()


def numpy_rows():
    w = np.arange(12, dtype=np.float64).reshape(4, 3) / 10.0
    return lambda x: x.detach().numpy() @ w


def torch_images():
    return lambda x: NET(x)
"""


def test_compare_by_default_runs_only_the_methods_the_model_can_run(runner: CliRunner, files: Files) -> None:
    """Without --methods, compare leaves out (and says so) the gradient methods for a model that gives no gradients
    (a scikit-learn-like NumPy function) and the CAMs for a function (it has no layers), so no unit fails for a
    reason known in advance; a torch function keeps the gradient methods."""
    (files.tmp / "functions.py").write_text(FUNCTIONS_PY)
    np.save(files.tmp / "rows.npy", np.random.default_rng(1).random((5, 4)))
    rows = invoke(runner, ["compare", "--model", f"{files.tmp / 'functions.py'}:numpy_rows", files.tmp / "rows.npy",
                           "--metrics", "deletion", "--out", files.tmp / "r1", "--no-report"])  # fmt: skip
    assert rows.exit_code == 0, rows.output
    assert "left out: input_x_gradient, integrated_gradients, saliency, smoothgrad (the model gives no gradients)" in (
        rows.stderr
    )
    assert "0 failed (sample, method) pairs" in rows.stdout
    assert "kernel_shap" in rows.stdout and "saliency " not in rows.stdout
    images = invoke(runner, ["compare", "--model", f"{files.tmp / 'functions.py'}:torch_images", files.x,
                             "--metrics", "deletion", "--out", files.tmp / "r2", "--no-report"])  # fmt: skip
    assert images.exit_code == 0, images.output
    assert "left out: gradcam, gradcam_pp, hirescam, layercam, scorecam, xgradcam (a function has no layers)" in (
        images.stderr
    )
    assert "0 failed (sample, method) pairs" in images.stdout and "saliency " in images.stdout
    module = invoke(runner, ["compare", "--model", files.spec, files.x, "--metrics", "deletion", "--out",
                             files.tmp / "r3", "--no-report"])  # fmt: skip
    assert module.exit_code == 0 and "left out" not in module.stderr and "gradcam " in module.stdout


def test_compare_by_default_leaves_out_exact_shapley_where_the_inputs_have_too_many_features(
    runner: CliRunner, files: Files
) -> None:
    """Exact Shapley is refused above 16 features (2^M coalitions), so a default run over 20-column rows failed it on
    every row (exit 1, a blank leaderboard row); it is left out, saying why and how to run it anyway, and with
    features in fewer groups (--option exact_shapley.features=...) it runs and passes the limit."""
    (files.tmp / "wide.py").write_text("import torch\n\ndef build():\n    return lambda x: x @ torch.ones(20, 2)\n")
    np.save(files.tmp / "wide.npy", np.random.default_rng(1).random((3, 20)).astype(np.float32))
    spec = f"{files.tmp / 'wide.py'}:build"
    run = invoke(runner, ["compare", "--model", spec, files.tmp / "wide.npy", "--metrics", "deletion", "--out",
                          files.tmp / "r1", "--no-report"])  # fmt: skip
    assert run.exit_code == 0, run.output
    assert (
        "exact_shapley (the inputs have more than 16 features, up to 20: 2^M coalitions each; name it in --methods "
        "with fewer features (--option exact_shapley.features=...) or --option exact_shapley.allow_large=true)"
    ) in run.stderr
    assert "0 failed (sample, method) pairs" in run.stdout and "exact_shapley" not in run.stdout
    groups = json.dumps([i // 4 for i in range(20)])  # 5 groups of 4 columns
    grouped = invoke(runner, ["compare", "--model", spec, files.tmp / "wide.npy", "--metrics", "deletion", "--out",
                              files.tmp / "r2", "--no-report", "--option", f"exact_shapley.features={groups}"])  # fmt: skip
    assert grouped.exit_code == 0, grouped.output
    assert "left out" not in grouped.stderr and "exact_shapley " in grouped.stdout
    assert "0 failed (sample, method) pairs" in grouped.stdout


def test_compare_by_default_runs_the_attention_readers_on_a_vision_transformer(runner: CliRunner, files: Files) -> None:
    """The attention readers run on a Hugging Face ViT's images but are listed under text (most image models have no
    attention), so compare without --methods left them out of a ViT's run; now they are in it (and still not in a
    CNN's, test above), with the numbers whybox.explain gives."""
    pytest.importorskip("transformers")
    (files.tmp / "vit.py").write_text(VIT_PY)
    spec = f"{files.tmp / 'vit.py'}:build"
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    np.save(files.tmp / "x.npy", x.numpy())
    run = invoke(runner, ["compare", "--model", spec, files.tmp / "x.npy", "--metrics", "sparseness", "--out",
                          files.tmp / "r", "--no-report"])  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "0 failed (sample, method) pairs" in run.stdout and "left out" not in run.stderr
    for name in ("attention_rollout", "attention_relevance", "raw_attention", "gradcam", "lime"):
        assert f"{name} " in run.stdout
    store = RunStore.open_existing(files.tmp / "r")
    want = whybox.explain(load_model(spec).module, x, "attention_rollout").attributions
    for i in range(2):
        assert np.allclose(store.load_array("attention_rollout", i), want[i].numpy(), atol=1e-6)


BLACKBOX_TEXT_PY = """
import torch

from whybox.models.blackbox_text import BlackBoxTextAdapter


def score(texts):
    z = torch.tensor([t.split().count("good") - 2.0 * t.split().count("bad") for t in texts], dtype=torch.float64)
    return torch.stack([-z, z], 1)


def build():
    return BlackBoxTextAdapter(score, labels=["neg", "pos"])
"""


def test_a_black_box_text_model_from_a_file_explains_compares_and_evaluates_texts(
    runner: CliRunner, files: Files
) -> None:
    """A model file may return a function of strings (BlackBoxTextAdapter): --text and .txt inputs reach it, its
    labels name the classes, compare leaves out what it cannot run (gradient and attention methods) and the run's
    values equal explain_text / evaluate on the texts."""
    (files.tmp / "bb.py").write_text(BLACKBOX_TEXT_PY)
    spec = f"{files.tmp / 'bb.py'}:build"
    texts = ["a good film", "good but bad plot"]
    (files.tmp / "r.txt").write_text("\n".join(texts) + "\n")
    result = invoke(runner, ["explain", "--model", spec, "--text", texts[1], "--method", "exact_shapley",
                             "--out", files.tmp / "e"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "explained 'neg'" in result.output
    run = files.tmp / "run"
    result = invoke(runner, ["compare", "--model", spec, files.tmp / "r.txt", "--out", run, "--no-report"])
    assert result.exit_code == 0, result.output
    assert "(the model is not a transformer whybox reads attention from)" in result.output
    assert "0 failed (sample, method) pairs" in result.output
    from whybox.runs.loaders import load_model
    from whybox.runs.store import RunStore

    ad = load_model(spec).module
    out = whybox.explain_text(ad, texts, "exact_shapley")
    on_texts = whybox.evaluate(ad, texts, out, "deletion", seed=0).scores.tolist()
    store = RunStore.open_existing(run)
    try:
        for i in range(2):
            got = store.load_array("exact_shapley", i)
            assert got is not None
            n = len(texts[i].split())
            assert got[:n].tolist() == pytest.approx([v for _, v in out.words[i]], abs=1e-9)
        stored = {i: v for i, m, k, v, *_ in store.rows("metric_values") if m == "exact_shapley" and k == "deletion"}
        assert [stored[i] for i in range(2)] == pytest.approx(on_texts, rel=1e-6)
    finally:
        store.close()


PACKED_PY = """
import torch
from torch import nn

import whybox


class ImageAndMeta(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.meta = nn.Linear(5, 4)
        self.head = nn.Linear(8, 3)

    def forward(self, image, meta):
        return self.head(torch.cat([self.conv(image).relu().mean((2, 3)), self.meta(meta).tanh()], 1))


def build():
    torch.manual_seed(0)
    return whybox.adapt(ImageAndMeta().eval(), input_shapes={"image": (3, 6, 6), "meta": (5,)})
"""


def test_a_model_of_several_inputs_reads_them_from_an_npz_by_argument_name(runner: CliRunner, files: Files) -> None:
    """A factory returning adapt(model, input_shapes={...}) reads its inputs from an .npz under their argument names
    (the archive had to hold one packed 'x'); the features are named by input and position, the numbers are the
    API's on the tuple, and an archive without one of them, or with unequal rows, says what to save."""
    from whybox.runs.loaders import load_model

    (files.tmp / "packed.py").write_text(PACKED_PY)
    spec = f"{files.tmp / 'packed.py'}:build"
    gen = np.random.default_rng(0)
    img, meta = gen.normal(size=(4, 3, 6, 6)).astype(np.float32), gen.normal(size=(4, 5)).astype(np.float32)
    np.savez(files.tmp / "mm.npz", image=img, meta=meta, y=np.array([0, 1, 2, 0]))
    out = files.tmp / "expl"
    result = invoke(runner, ["explain", "--model", spec, files.tmp / "mm.npz", "--method", "integrated_gradients",
                             "--out", out])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "top features: meta[" in result.stdout
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:04d}_mm-{i}_integrated_gradients.png" for i in range(4)]
    saved = whybox.Explanation.load(out / "explanation.safetensors")
    clf = load_model(spec).module
    want = whybox.explain(clf, (torch.from_numpy(img), torch.from_numpy(meta)), "integrated_gradients")
    assert torch.allclose(saved.attributions, want.attributions, atol=1e-6)
    assert saved.meta["feature_names"][108] == "meta[0]" and saved.meta["input_shapes"] == {"image": [3, 6, 6],
                                                                                             "meta": [5]}  # fmt: skip
    run = invoke(runner, ["compare", "--model", spec, files.tmp / "mm.npz", "--methods", "saliency,lime",
                          "--metrics", "deletion", "--out", files.tmp / "run", "--no-report"])  # fmt: skip
    assert run.exit_code == 0 and "0 failed (sample, method) pairs" in run.stdout, run.output
    np.savez(files.tmp / "half.npz", image=img)
    bad = invoke(runner, ["explain", "--model", spec, files.tmp / "half.npz", "--method", "saliency"])
    assert error_of(bad).endswith(
        "has no array 'x' (it holds: image); this model takes 2 inputs: save them as np.savez(path, image=..., "
        "meta=..., y=labels)."
    )
    np.savez(files.tmp / "ragged.npz", image=img, meta=meta[:3])
    bad = invoke(runner, ["explain", "--model", spec, files.tmp / "ragged.npz", "--method", "saliency"])
    assert error_of(bad).endswith(
        "the arrays 'image', 'meta' hold different numbers of rows (4, 3); give every input one row per sample."
    )


def test_compare_exits_2_when_every_sample_refuses_a_method_s_options(runner: CliRunner, files: Files) -> None:
    """An option value only the inputs can refuse (a features mask of 5 columns for 4) was stored as a failure of
    every sample and the run exited 1 ("done with failed samples"), where explain exits 2 ("bad input"). It exits 2
    now, naming the method and the explainer's message."""
    (files.tmp / "iris.py").write_text(IRIS_PY)
    csv = files.tmp / "iris.csv"
    csv.write_text("a,b,c,d\n5.1,3.5,1.4,0.2\n6.2,2.9,4.3,1.3\n")
    spec = f"{files.tmp / 'iris.py'}:build"
    result = invoke(runner, ["compare", "--model", spec, csv, "--methods", "exact_shapley,occlusion",
                             "--option", "exact_shapley.features=[0,0,1,1,2]", "--out", files.tmp / "run"])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "exact_shapley: every sample refused its options (features" in result.output
    assert "occlusion: every sample refused" not in result.output  # its samples ran


def test_an_option_naming_an_argument_set_by_a_flag_is_a_usage_error(runner: CliRunner, tmp_path: Path) -> None:
    """--option target=1 (or model=, and a metric's labels=) clashed with the call's own argument: a raw TypeError
    and exit 1 (a model failure); now exit 2 naming the flag that sets it."""
    base = ["--model", "digits-cnn", "digits-test", "--limit", "2"]
    cases = [
        (["explain", *base, "--method", "saliency", "--option", "target=1", "--out", tmp_path / "e"],
         "--option target=...: target is set by --target"),
        (["evaluate", *base, "--method", "saliency", "--option", "model=3", "--metrics", "deletion"],
         "--option model=...: model is set by --model"),
        (["evaluate", *base, "--method", "saliency", "--metrics", "deletion", "--metric-option", "deletion.labels=1"],
         "--metric-option deletion.labels=...: labels is set by the inputs' labels"),
        (["debug", *base, "--option", "target=1", "--out", tmp_path / "d"], "target= is set by the inputs' labels"),
    ]  # fmt: skip
    for args, message in cases:
        result = invoke(runner, args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)


def test_a_csv_of_bool_int_and_text_columns_explains_as_its_dataframe_does(runner: CliRunner, tmp_path: Path) -> None:
    """DataFrame.to_csv writes bools as True/False and ints as whole numbers: the CLI reads them back in those
    types for an estimator fitted on the frame (True/False were text its OneHotEncoder never saw: a raw ValueError;
    an int cast to text saw '3.0'), so `explain` on the CSV equals whybox.explain on the frame."""
    (tmp_path / "frame_model.py").write_text(
        "import numpy as np, pandas as pd\n"
        "from sklearn.compose import ColumnTransformer\n"
        "from sklearn.linear_model import LogisticRegression\n"
        "from sklearn.pipeline import make_pipeline\n"
        "from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler\n"
        "def data():\n"
        "    g = np.random.default_rng(0); n = 200\n"
        "    return pd.DataFrame({'vip': g.random(n) > 0.5, 'city': g.choice(['oslo', 'lima'], n),\n"
        "                         'kids': g.integers(0, 4, n), 'inc': g.normal(50, 10, n)})\n"
        "def make():\n"
        "    df = data(); y = (df.vip | (df.city == 'lima') | (df.kids > 2)).astype(int)\n"
        "    as_text = make_pipeline(FunctionTransformer(lambda t: t.astype(str)), OneHotEncoder())\n"
        "    pre = ColumnTransformer([('oh', OneHotEncoder(), ['vip', 'city']), ('k', as_text, ['kids']),\n"
        "                             ('n', StandardScaler(), ['inc'])])\n"
        "    return make_pipeline(pre, LogisticRegression()).fit(df, y)\n",
        encoding="utf-8",
    )
    import importlib.util

    spec = importlib.util.spec_from_file_location("frame_model_t", tmp_path / "frame_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    frame = module.data().iloc[:4]
    frame.to_csv(tmp_path / "rows.csv", index=False)
    result = invoke(runner, ["explain", "--model", f"{tmp_path / 'frame_model.py'}:make", tmp_path / "rows.csv",
                             "--method", "occlusion", "--option", 'fill=[false, "oslo", 0, 50.0]', "--out",
                             tmp_path / "e"])  # fmt: skip
    assert result.exit_code == 0, result.output
    got = whybox.Explanation.load(tmp_path / "e" / "explanation.safetensors").attributions
    import pandas as pd

    want = whybox.explain(
        module.make(), frame, "occlusion", fill=pd.Series({"vip": False, "city": "oslo", "kids": 0, "inc": 50.0})
    )
    torch.testing.assert_close(got.double(), want.attributions.double(), rtol=1e-5, atol=1e-6)
    assert bool((want.attributions[:, 2].abs() > 0).any())  # kids, read as an int, has its share


def test_a_csv_of_bool_and_int_columns_alone_keeps_their_types(runner: CliRunner, tmp_path: Path) -> None:
    """Without a text column the CLI dropped the adapter that knew the int and bool columns' types: the estimator
    saw 1.0 and 3.0 and gave those columns exactly 0."""
    (tmp_path / "typed_model.py").write_text(
        "import numpy as np, pandas as pd\n"
        "from sklearn.compose import ColumnTransformer\n"
        "from sklearn.linear_model import LogisticRegression\n"
        "from sklearn.pipeline import make_pipeline\n"
        "from sklearn.preprocessing import FunctionTransformer, OneHotEncoder\n"
        "def data():\n"
        "    g = np.random.default_rng(0); n = 200\n"
        "    return pd.DataFrame({'vip': g.random(n) > 0.5, 'kids': g.integers(0, 4, n), 'inc': g.normal(50, 10, n)})\n"
        "def make():\n"
        "    df = data(); y = (df.vip ^ (df.kids > 1)).astype(int)\n"
        "    as_text = make_pipeline(FunctionTransformer(lambda t: t.astype(str)), OneHotEncoder())\n"
        "    pre = ColumnTransformer([('t', as_text, ['vip', 'kids'])], remainder='passthrough')\n"
        "    return make_pipeline(pre, LogisticRegression()).fit(df, y)\n",
        encoding="utf-8",
    )
    import importlib.util

    spec = importlib.util.spec_from_file_location("typed_model_t", tmp_path / "typed_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    frame = module.data().iloc[:4]
    frame.to_csv(tmp_path / "rows.csv", index=False)
    result = invoke(runner, ["explain", "--model", f"{tmp_path / 'typed_model.py'}:make", tmp_path / "rows.csv",
                             "--method", "occlusion", "--option", "fill=0", "--out", tmp_path / "e"])  # fmt: skip
    assert result.exit_code == 0, result.output
    got = whybox.Explanation.load(tmp_path / "e" / "explanation.safetensors").attributions
    want = whybox.explain(module.make(), frame, "occlusion", fill=0).attributions
    torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-6)
