"""Seventh-pass findings on tables and run reports, each a property the earlier code broke: the command line reads a
table in the precision the API gives an estimator, a reference row may hold a DataFrame's bools, the run report's legend says which class its maps explain, and a map's NaN cell stays its
own when the map is resized for an overlay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression
from torch import nn

import whybox
from whybox.cli.main import main as cli
from whybox.errors import InvalidParameterError
from whybox.report import overlay
from whybox.report.run_report import ReportSample, RunReport, render_run_report
from whybox.runs.loaders import LoadedModel, load_inputs, load_model

MODELS_PY = """
import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression, LogisticRegression


def stamps():
    # 'ts': epoch seconds; the target is seconds since 1_700_000_000 (float32 holds ts only to 128 s)
    ts = np.array([1_699_999_990 + 7 * i for i in range(20)], dtype=np.int64)
    X = pd.DataFrame({"ts": ts, "x": (np.arange(20) % 3).astype(float)})
    return LinearRegression().fit(X, (ts - 1_700_000_000).astype(float))


def pressure():
    rng = np.random.RandomState(0)
    X = np.c_[rng.randn(50) * 0.01 + 1000.0, rng.randn(50)]  # a pressure in hPa near 1000
    return LinearRegression().fit(X, 1e6 * (X[:, 0] - 1000.0) + X[:, 1])


def owners():
    rng = np.random.RandomState(1)
    n = 200
    df = pd.DataFrame({"n kids": rng.randint(0, 4, n), "owner": rng.rand(n) > 0.5, "w": rng.randn(n)})
    return LogisticRegression().fit(df, ((df["n kids"] > 1) ^ df.owner).astype(int))
"""


@pytest.fixture
def models(tmp_path: Path) -> Path:
    path = tmp_path / "tab_models.py"
    path.write_text(MODELS_PY, encoding="utf-8")
    return path


def _owners() -> LogisticRegression:
    rng = np.random.RandomState(1)
    n = 200
    df = pd.DataFrame({"n kids": rng.randint(0, 4, n), "owner": rng.rand(n) > 0.5, "w": rng.randn(n)})
    return LogisticRegression().fit(df, ((df["n kids"] > 1) ^ df.owner).astype(int))


def _cli(*args: str) -> str:
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


# ---------------------------------------------------------------------------------------------- 1. CLI tables
def test_the_cli_explains_a_csv_for_an_estimator_exactly_as_the_api_explains_its_dataframe(
    models: Path, tmp_path: Path
) -> None:
    """The CSV was read in float32: epoch seconds 1700000001 and 1700000063 both became 1700000000, so ablating
    'ts' changed nothing and the CLI gave [[0, 0], [0, 0]] where the API gives [[11, 0], [73, 0]]."""
    csv = tmp_path / "stamps.csv"
    csv.write_text("ts,x\n1700000001,1\n1700000063,1\n", encoding="utf-8")
    spec = f"{models}:stamps"
    _cli("explain", "--model", spec, csv, "--method", "feature_ablation", "--option", "fill=[1699999990, 1]",
         "--out", tmp_path / "e")  # fmt: skip
    saved = whybox.Explanation.load(tmp_path / "e" / "explanation.safetensors")
    api = whybox.explain(load_model(spec).module, pd.read_csv(csv), "feature_ablation", fill=[1_699_999_990, 1])
    assert torch.equal(saved.attributions, api.attributions)
    assert saved.attributions.tolist() == [[11.0, 0.0], [73.0, 0.0]]  # the closed form: coef 1 x (ts - fill)


def test_the_cli_explains_a_float64_npy_for_an_estimator_exactly_as_the_api_explains_the_array(
    models: Path, tmp_path: Path
) -> None:
    x = np.array([[1000.00001, 0.0], [999.99999, 0.0]])
    np.save(tmp_path / "p.npy", x)
    spec = f"{models}:pressure"
    _cli("explain", "--model", spec, tmp_path / "p.npy", "--method", "feature_ablation", "--option",
         "fill=[1000.0, 0.0]", "--out", tmp_path / "e")  # fmt: skip
    saved = whybox.Explanation.load(tmp_path / "e" / "explanation.safetensors")
    api = whybox.explain(load_model(spec).module, x, "feature_ablation", fill=[1000.0, 0.0])
    assert torch.equal(saved.attributions, api.attributions)
    assert np.allclose(saved.attributions.numpy(), [[10.0, 0.0], [-10.0, 0.0]], atol=1e-3)  # float32 read 0s


def test_tables_are_read_in_the_dtype_the_model_computes_in_and_images_stay_float32(
    models: Path, tmp_path: Path
) -> None:
    """An estimator's table is float64 (as the API reads a DataFrame for it; a file of float32 numbers stays float32,
    as the API gives such an array to an estimator that may need it), a float32 torch model's float32 (as
    before: it computes in its weights' dtype), a float64 one's float64; arrays of images stay float32."""
    np.save(tmp_path / "t.npy", np.array([[1.25, 2.5], [3.0, 4.0]]))
    np.save(tmp_path / "img.npy", np.zeros((2, 1, 4, 4)))
    estimator = load_model(f"{models}:pressure")
    f32 = LoadedModel(nn.Linear(2, 2), "f32", None, None, lambda t: t.numpy())
    f64 = LoadedModel(nn.Linear(2, 2).double(), "f64", None, None, lambda t: t.numpy())
    assert load_inputs([tmp_path / "t.npy"], estimator).x.dtype == torch.float64
    np.save(tmp_path / "t32.npy", np.array([[1.25, 2.5], [3.0, 4.0]], dtype=np.float32))  # the user's choice: kept
    assert load_inputs([tmp_path / "t32.npy"], estimator).x.dtype == torch.float32
    assert load_inputs([tmp_path / "t.npy"], f32).x.dtype == torch.float32
    assert load_inputs([tmp_path / "t.npy"], f64).x.dtype == torch.float64
    conv = LoadedModel(nn.Conv2d(1, 1, 3), "conv", None, None, lambda t: t.numpy())
    assert load_inputs([tmp_path / "img.npy"], conv).x.dtype == torch.float32


# ---------------------------------------------------------------------------------------------- 2. bools in rows
def test_a_reference_row_may_hold_a_dataframes_bools_as_0_and_1() -> None:
    """fill=[1, True, 0.0] (or df.mode().iloc[0].tolist()) was refused as not one of the fill names; it is the
    row [1, 1, 0.0], and a Series with the same values gives the same attributions."""
    clf = _owners()
    xs = pd.DataFrame({"n kids": [2, 0], "owner": [True, False], "w": [0.5, -1.0]})
    ones = whybox.explain(clf, xs, "feature_ablation", fill=[1, 1, 0.0], target=1)
    series = whybox.explain(
        clf, xs, "feature_ablation", fill=pd.Series({"n kids": 1, "owner": True, "w": 0.0}), target=1
    )
    for fill in ([1, True, 0.0], (1, np.bool_(True), 0.0)):
        e = whybox.explain(clf, xs, "feature_ablation", fill=fill, target=1)
        assert torch.equal(e.attributions, ones.attributions)
        assert torch.equal(e.attributions, series.attributions)


def test_background_rows_and_metric_fills_may_hold_bools_too() -> None:
    clf = _owners()
    xs = pd.DataFrame({"n kids": [2, 0], "owner": [True, False], "w": [0.5, -1.0]})
    rows = whybox.explain(clf, xs, "kernel_shap", background=[[1, True, 0.0], [0, False, 1.0]], target=1)
    frame = pd.DataFrame({"n kids": [1, 0], "owner": [True, False], "w": [0.0, 1.0]})
    assert torch.equal(
        rows.attributions, whybox.explain(clf, xs, "kernel_shap", background=frame, target=1).attributions
    )
    a = np.array([[1.0, 0.5, 0.25], [0.25, 1.0, 0.5]])
    listed = whybox.evaluate(clf, xs, a, "deletion", fill=[1, True, 0.0], target=1)
    numbers = whybox.evaluate(clf, xs, a, "deletion", fill=[1, 1, 0.0], target=1)
    assert torch.equal(listed.scores, numbers.scores) and torch.equal(listed.curves["y"], numbers.curves["y"])


def test_a_bare_true_is_still_no_fill() -> None:
    clf = _owners()
    xs = pd.DataFrame({"n kids": [2, 0], "owner": [True, False], "w": [0.5, -1.0]})
    with pytest.raises(InvalidParameterError, match=r"fill must be one of .*; got True\."):
        whybox.explain(clf, xs, "feature_ablation", fill=True, target=1)


def test_the_cli_reads_true_in_a_fill_row(models: Path, tmp_path: Path) -> None:
    csv = tmp_path / "owners.csv"
    xs = pd.DataFrame({"n kids": [2, 0], "owner": [True, False], "w": [0.5, -1.0]})
    xs.to_csv(csv, index=False)
    spec = f"{models}:owners"
    _cli("explain", "--model", spec, csv, "--method", "feature_ablation", "--option", "fill=[1, true, 0.0]",
         "--out", tmp_path / "e")  # fmt: skip
    saved = whybox.Explanation.load(tmp_path / "e" / "explanation.safetensors")
    api = whybox.explain(load_model(spec).module, xs, "feature_ablation", fill=[1, 1, 0.0])
    assert torch.equal(saved.attributions, api.attributions)


# ---------------------------------------------------------------------------------------------- 4. the legend
def _page(target: str) -> str:
    sample = ReportSample("s0", np.full((4, 4, 3), 0.5), "cat", 0.9, "dog", {"m": np.zeros((4, 4))}, {})
    return render_run_report(RunReport("t", [], [], [], {}, {}, [sample], [], [], target=target))


def test_the_legend_says_the_maps_explain_the_label_in_a_run_with_target_label() -> None:
    label, prediction = _page("label"), _page("prediction")
    assert "evidence for the predicted class" not in label + prediction
    assert "red for evidence for the explained class" in label
    assert "this run explains each sample's true label, not the model's prediction" in label
    assert "this run explains each sample's predicted class" in prediction and "true label, not" not in prediction


def test_a_run_with_target_label_reports_it(tmp_path: Path) -> None:
    from whybox.runs.job import Job, run_job
    from whybox.runs.report_data import load_run_report

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    x = torch.rand(2, 1, 4, 4)
    run_job(Job(methods=("saliency",), metrics=(), target="label"), net, x, tmp_path / "r",
            labels=torch.tensor([0, 1]))  # fmt: skip
    assert load_run_report(tmp_path / "r").target == "label"


# ---------------------------------------------------------------------------------------------- 5. NaN in overlays
def _uncoloured(o: np.ndarray, image: np.ndarray) -> np.ndarray:
    bare = overlay(image, np.zeros(image.shape[1:]))  # an all-zero map is fully transparent: the image alone
    return (o == bare).all(-1)


@pytest.mark.parametrize(("size", "cells"), [((8, 8), (2, 2)), ((7, 10), (3, 3)), ((5, 5), (4, 2))])
def test_a_non_finite_map_cell_blanks_only_the_pixels_it_is_nearest_to(
    size: tuple[int, int], cells: tuple[int, int]
) -> None:
    """A 2 x 2 map [[1, nan], [0.5, -1]] over 8 x 8 left 48 pixels uncoloured (the NaN spread by the bilinear
    resize); only the pixels whose nearest map cell (pixel centres, as a nearest resize maps them) is non-finite
    are transparent, and every other one is coloured."""
    h, w = size
    rng = np.random.default_rng(0)
    m = rng.uniform(0.3, 1.0, cells) * rng.choice([-1.0, 1.0], cells)  # every finite cell far from zero
    m[0, -1] = np.nan
    m[-1, 0] = np.inf
    image = np.full((3, h, w), 0.5)
    o = overlay(image, m, reading="signed")
    rows = np.minimum(np.floor((np.arange(h) + 0.5) * cells[0] / h), cells[0] - 1).astype(int)
    cols = np.minimum(np.floor((np.arange(w) + 0.5) * cells[1] / w), cells[1] - 1).astype(int)
    nearest_bad = ~np.isfinite(m)[rows[:, None], cols[None, :]]
    assert np.array_equal(_uncoloured(o, image), nearest_bad)


def test_a_finite_map_is_resized_as_before() -> None:
    m = np.array([[1.0, -0.5], [0.25, -1.0]])
    image = np.full((3, 8, 8), 0.5)
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(m)[None, None], size=(8, 8), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    assert np.array_equal(overlay(image, m, reading="signed"), overlay(image, resized, reading="signed"))
