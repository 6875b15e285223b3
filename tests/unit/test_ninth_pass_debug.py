"""find_mistakes and ``whybox debug`` (ninth pass): a fill by name refused on coded categorical rows also when they
come coded (the command line's CSV), background= rows for the Shapley methods, a fill of one row per input in any
form, and a model of several inputs stepped over the explainer's own regions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import whybox
from whybox.cli.main import main as cli
from whybox.errors import InvalidParameterError
from whybox.models.inputs import as_tensor_inputs

F64 = torch.float64

PIPELINE_PY = """
import numpy as np, pandas as pd
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder


def make():
    rng = np.random.default_rng(0)
    n = 200
    df = pd.DataFrame({"age": rng.normal(40, 10, n), "city": rng.choice(["Zurich", "new york", "Paris"], n),
                       "kids": rng.integers(0, 4, n)})
    y = np.where(df.city == "Paris", "yes", "no")
    ct = make_column_transformer((OneHotEncoder(handle_unknown="ignore"), ["city"]), remainder="passthrough")
    return make_pipeline(ct, LogisticRegression(max_iter=1000)).fit(df, y)
"""


def _pipeline_csv(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "pipe.py"
    model.write_text(PIPELINE_PY, encoding="utf-8")
    rng = np.random.default_rng(1)
    lines = ["age,city,kids,label"]
    for _ in range(30):  # the label by age: the model (which reads the city) gets many wrong
        age = rng.normal(40, 10)
        city = rng.choice(["Zurich", "new york", "Paris"])
        lines.append(f"{age:.3f},{city},{int(rng.integers(0, 4))},{'yes' if age > 40 else 'no'}")
    csv = tmp_path / "rows.csv"
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return model, csv


def test_debug_on_a_csv_with_a_text_column_refuses_a_fill_by_name_and_takes_a_reference_row(tmp_path: Path) -> None:
    """The command line codes a CSV's text columns before find_mistakes sees them: its default fill 'zero' set every
    hidden city to code 0 (one arbitrary city) and named it the culprit, where explain refuses that fill. Now it is
    refused as explain refuses it, and --option 'fill=[...]' (a reference row in the model's column order) runs: the
    same mistakes and culprits as the API on the DataFrame with that row as a Series."""
    pytest.importorskip("sklearn")
    pd = pytest.importorskip("pandas")
    model, csv = _pipeline_csv(tmp_path)
    base = ["debug", "--model", f"{model}:make", str(csv), "--label-column", "label", "--method", "feature_ablation"]
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "a")])
    assert res.exit_code != 0
    assert "inputs have text or categorical columns ('city'), which fill='zero' would set to an arbitrary value" in (
        res.output
    )
    assert "--option 'fill=[...]'" in res.output
    assert not (tmp_path / "a" / "mistakes.json").exists()
    res = CliRunner().invoke(cli, [*base, "--option", 'fill=[40, "Zurich", 1]', "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "b" / "mistakes.json").read_text(encoding="utf-8"))
    import importlib.util

    spec = importlib.util.spec_from_file_location("ninth_pass_pipe", model)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    frame = pd.read_csv(csv)
    ref = pd.Series({"age": 40.0, "city": "Zurich", "kids": 1})
    report = whybox.find_mistakes(
        module.make(), frame.drop(columns="label"), frame["label"], method="feature_ablation", fill=ref
    )
    assert [r["index"] for r in got] == [m.index for m in report.mistakes]
    assert [r["culprits"] for r in got] == [m.culprits for m in report.mistakes]
    np.testing.assert_allclose([r["hc"] for r in got], [m.hc for m in report.mistakes], rtol=0, atol=1e-9)


def test_find_mistakes_refuses_a_fill_by_name_or_number_on_already_coded_categorical_rows() -> None:
    """The API given the rows the adapter has coded (a tensor, as the command line passes them) refuses a fill by
    name or number as on the DataFrame: explain's rule, checked on the adapter's coded columns, not the rows' type."""
    pytest.importorskip("sklearn")
    pd = pytest.importorskip("pandas")
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"age": rng.normal(40, 10, 80), "city": rng.choice(["a", "b", "c"], 80)})
    pipe = make_pipeline(
        make_column_transformer((OneHotEncoder(), ["city"]), remainder="passthrough"), LogisticRegression()
    ).fit(df, np.where(df.city == "a", "yes", "no"))
    adapter = whybox.adapt(pipe)
    coded, _ = as_tensor_inputs(df, adapter)  # the rows as the command line hands them over: coded by the adapter
    labels = np.where(df.age > 40, "yes", "no")
    for fill in (None, "mean", 0.0):
        with pytest.raises(InvalidParameterError, match=r"inputs have text or categorical columns \('city'\)"):
            whybox.find_mistakes(
                adapter, coded, labels, method="feature_ablation", **({} if fill is None else {"fill": fill})
            )
    ref = torch.tensor([40.0, float(list(adapter.categories["city"].values).index("b"))], dtype=F64)
    on_codes = whybox.find_mistakes(adapter, coded, labels, method="feature_ablation", fill=ref)
    on_frame = whybox.find_mistakes(
        adapter, df, labels, method="feature_ablation", fill=pd.Series({"age": 40.0, "city": "b"})
    )
    assert on_codes.n_wrong == on_frame.n_wrong > 0
    assert [m.culprits for m in on_codes.mistakes] == [m.culprits for m in on_frame.mistakes]


class Linear(nn.Module):
    """Logits (-z, z), z = 2 x0 + 3 x3: x1, x2 and x4 are never read."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = 2 * x[:, 0] + 3 * x[:, 3]
        return torch.stack([-z, z], 1)


def _rows() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 5, generator=g, dtype=F64)
    return x, (x[:, 0] > 0).long(), torch.randn(10, 5, generator=g, dtype=F64)


@pytest.mark.parametrize("method", ["kernel_shap", "exact_shapley", "shapley_sampling"])
def test_background_rows_explain_the_mistakes_as_explain_does(method: str) -> None:
    """find_mistakes(background=bg) was refused ('pass either fill= or background=') though no fill was given: its
    own default fill went to the explainer too. Now the explanation is explain's with background=bg on the mistakes'
    rows for their true class, and the insertion steps still hide with find_mistakes' fill (zero by default)."""
    x, y, bg = _rows()
    extra = {"kernel_shap": {"n_samples": 200}, "shapley_sampling": {"n_permutations": 20}}.get(method, {})
    report = whybox.find_mistakes(Linear(), x, y, method=method, background=bg, **extra)
    rows = [m.index for m in report.mistakes]
    assert report.n_wrong == len(rows) > 0
    ref = whybox.explain(Linear(), x[rows], method, background=bg, target=[m.label for m in report.mistakes], **extra)
    assert report.explanation is not None
    torch.testing.assert_close(report.explanation.attributions, ref.attributions)
    steps = whybox.evaluate(
        Linear(), x[rows], report.explanation, "highest_confidence", target=[m.label for m in report.mistakes],
        regions=torch.arange(5), fill="zero",
    )  # fmt: skip
    np.testing.assert_allclose([m.hc for m in report.mistakes], steps.meta["hc"].numpy(), rtol=0, atol=1e-9)


def test_background_with_categorical_rows_needs_find_mistakes_own_fill_and_then_explains_by_the_rows() -> None:
    """On a frame with a text column, background= alone is refused with a message that names find_mistakes' own
    fill (the insertion steps still need one reference row); with fill= given too, the explanation is explain's with
    background= only, and the steps use that row."""
    pytest.importorskip("sklearn")
    pd = pytest.importorskip("pandas")
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"age": rng.normal(40, 10, 120), "city": rng.choice(["Zurich", "new york", "Paris"], 120)})
    pipe = make_pipeline(
        make_column_transformer((OneHotEncoder(), ["city"]), remainder="passthrough"), LogisticRegression()
    ).fit(df, np.where(df.city == "Paris", "yes", "no"))
    test, bg = df.iloc[:20], df.iloc[60:80]
    labels = np.where(test.age > 40, "yes", "no")
    with pytest.raises(
        InvalidParameterError,
        match=r"^background= is read by the explanation only; the insertion steps hide regions with find_mistakes' "
        r"own fill= \(default 'zero'\), and inputs have text or categorical columns \('city'\)",
    ):
        whybox.find_mistakes(pipe, test, labels, method="exact_shapley", background=bg)
    ref = df.mode().iloc[0]
    report = whybox.find_mistakes(pipe, test, labels, method="exact_shapley", fill=ref, background=bg)
    assert report.n_wrong > 0 and report.explanation is not None
    rows = [m.index for m in report.mistakes]
    alone = whybox.explain(
        pipe, test.iloc[rows], "exact_shapley", background=bg, target=[m.label for m in report.mistakes]
    )
    torch.testing.assert_close(report.explanation.attributions, alone.attributions)


@pytest.mark.parametrize("form", ["tensor", "numpy", "list", "dataframe"])
def test_a_fill_of_one_row_per_input_in_any_form_is_cut_to_the_mistakes(form: str) -> None:
    """A fill of one row per input, as a NumPy array, a list of rows or a DataFrame (as explain and evaluate take it),
    was refused ('fill tensor of shape (30, 5) does not broadcast to the inputs (k, 5)', the mistakes' rows); each
    now gives exactly the report of the same rows as a tensor, whose explanation is explain's with the mistakes'
    fill rows."""
    pd = pytest.importorskip("pandas")
    x, y, _ = _rows()
    fill = torch.randn(30, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    given = {
        "tensor": fill,
        "numpy": fill.numpy(),
        "list": fill.tolist(),
        "dataframe": pd.DataFrame(fill.numpy()),
    }[form]
    report = whybox.find_mistakes(Linear(), x, y, method="feature_ablation", fill=given)
    rows = [m.index for m in report.mistakes]
    assert report.n_wrong == len(rows) > 0
    ref = whybox.explain(
        Linear(), x[rows], "feature_ablation", fill=fill[rows], target=[m.label for m in report.mistakes]
    )
    assert report.explanation is not None
    torch.testing.assert_close(report.explanation.attributions, ref.attributions)
    steps = whybox.evaluate(
        Linear(), x[rows], ref, "highest_confidence", target=[m.label for m in report.mistakes],
        regions=torch.arange(5), fill=fill[rows],
    )  # fmt: skip
    np.testing.assert_allclose([m.hc for m in report.mistakes], steps.meta["hc"].numpy(), rtol=0, atol=1e-9)


def test_a_fill_that_fits_neither_one_input_nor_every_input_is_said_of_the_inputs_given() -> None:
    """Seven fill rows for 30 inputs: the error names the inputs' shape (30, 5), not the mistakes' rows."""
    x, y, _ = _rows()
    with pytest.raises(
        InvalidParameterError,
        match=r"^fill of shape \(7, 5\) does not fit the inputs \(30, 5\): give values that broadcast to one input "
        r"\(5,\) \(a reference row, a value per channel\) or one row per input, \(30, 5\)\.$",
    ):
        whybox.find_mistakes(Linear(), x, y, method="feature_ablation", fill=np.zeros((7, 5)))


class Watermark(nn.Module):
    """Reads a 2 x 2 corner of the image (its mean, times 3) and a little of meta[0]."""

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        z = 3 * image[:, :, :2, :2].mean((1, 2, 3)) + 0.01 * meta[:, 0]
        return torch.stack([-z, z], 1)


@pytest.mark.parametrize("method", ["feature_ablation", "integrated_gradients"])
def test_a_model_of_several_inputs_is_stepped_over_the_explainer_s_squares(method: str) -> None:
    """The insertion steps and culprits of a model of an image (3, 8, 8) and metadata (4,) used one region per packed
    value (196: each channel of each pixel apart); now the explainers' default features, the image in 1 x 1 squares
    shared by the channels and each metadata value (68 regions), so a pixel's culprit holds its 3 channels."""
    clf = whybox.adapt(Watermark(), input_shapes=[(3, 8, 8), (4,)])
    g = torch.Generator().manual_seed(0)
    img, meta = torch.rand(6, 3, 8, 8, generator=g), torch.randn(6, 4, generator=g)
    report = whybox.find_mistakes(clf, (img, meta), torch.zeros(6, dtype=torch.long), method=method)
    assert report.n_wrong == 6
    groups = clf.packing.region_groups()
    assert int(groups.max()) + 1 == 68
    for m in report.mistakes:
        assert torch.equal(m.regions, groups)
        assert m.culprits and set(m.culprits) <= {0, 1, 8, 9}  # the 2 x 2 watermark's pixels
        for c in m.culprits:
            assert int(m.culprit_mask.sum()) >= 3 and bool(m.culprit_mask[groups == c].all())
