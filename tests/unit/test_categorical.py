"""Text and categorical columns of a DataFrame for a scikit-learn estimator fitted on them: whybox codes them for
the masking engine and decodes them before every call of the estimator. Held to a brute-force Shapley oracle
computed on DataFrames alone, to shap's KernelExplainer on the same raw frames, to closed forms for occlusion and
the deletion curve's ends, and to exact errors for what cannot be coded."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pd = pytest.importorskip("pandas")
pytest.importorskip("sklearn")

from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import OneHotEncoder, StandardScaler  # noqa: E402

import whybox  # noqa: E402
from whybox.errors import InvalidInputError, InvalidParameterError  # noqa: E402
from whybox.models.categorical import decode_rows, register_vocabularies  # noqa: E402

COLUMNS = ["age", "city", "income", "plan"]


@pytest.fixture(scope="module")
def data() -> tuple[Any, Any]:
    gen = np.random.default_rng(0)
    n = 300
    df = pd.DataFrame(
        {
            "age": gen.integers(20, 70, n).astype(float),
            "city": gen.choice(["oslo", "lima", "pune"], n),
            "income": gen.normal(50, 10, n),
            "plan": gen.choice(["basic", "pro"], n),
        }
    )
    y = ((df.age > 40).astype(int) ^ (df.city == "lima").astype(int)) | (df.plan == "pro").astype(int)
    pipe = make_pipeline(
        ColumnTransformer([("oh", OneHotEncoder(), ["city", "plan"]), ("num", StandardScaler(), ["age", "income"])]),
        LogisticRegression(),
    ).fit(df, y)
    return pipe, df


def _p(pipe: Any, frame: Any, c: int) -> np.ndarray:
    return pipe.predict_proba(frame)[:, c]


def _exact_shapley(pipe: Any, row: Any, background: Any, c: int) -> np.ndarray:
    """Brute force on DataFrames: v(S) = mean over background rows of f(x_S, b_rest); Shapley's formula."""
    m = len(COLUMNS)

    def v(s: tuple[int, ...]) -> float:
        frame = background.copy()
        for j in s:
            frame[COLUMNS[j]] = row[COLUMNS[j]]
        return float(_p(pipe, frame[COLUMNS], c).mean())

    phi = np.zeros(m)
    for j in range(m):
        others = [k for k in range(m) if k != j]
        for r in range(m):
            for s in itertools.combinations(others, r):
                w = math.factorial(r) * math.factorial(m - r - 1) / math.factorial(m)
                phi[j] += w * (v(tuple(sorted((*s, j)))) - v(s))
    return phi


def test_exact_shapley_on_raw_text_columns_equals_brute_force_on_frames(data: tuple[Any, Any]) -> None:
    pipe, df = data
    rows, background = df.iloc[:3], df.iloc[100:120]
    e = whybox.explain(pipe, rows, "exact_shapley", background=background, score="logit")
    assert e.meta["feature_names"] == COLUMNS
    # codes by first sight (the inputs, then the background), sorted within each table
    assert {c: sorted(v) for c, v in e.meta["categories"].items()} == {
        "city": ["lima", "oslo", "pune"],
        "plan": ["basic", "pro"],
    }
    for i in range(3):
        want = _exact_shapley(pipe, rows.iloc[i], background, int(e.target[i]))
        np.testing.assert_allclose(e.attributions[i].numpy(), want, rtol=0, atol=1e-12)


def test_kernel_shap_on_raw_text_columns_is_shap_s_and_adds_up(data: tuple[Any, Any]) -> None:
    shap = pytest.importorskip("shap")
    pipe, df = data
    rows, background = df.iloc[:2], df.iloc[100:110]
    e = whybox.explain(pipe, rows, "kernel_shap", background=background, score="logit", target=1, n_samples=64)
    base = _p(pipe, background, 1).mean()
    np.testing.assert_allclose(e.attributions.sum(1).numpy() + base, _p(pipe, rows, 1), rtol=0, atol=1e-10)
    explainer = shap.KernelExplainer(
        lambda a: pipe.predict_proba(pd.DataFrame(a, columns=COLUMNS).infer_objects()), background.to_numpy()
    )
    theirs = np.asarray(explainer.shap_values(rows.to_numpy(), nsamples=64, silent=True))[..., 1]
    np.testing.assert_allclose(e.attributions.numpy(), theirs, rtol=0, atol=1e-8)  # 4 features: both exact


def test_occlusion_with_a_reference_row_replaces_whole_cells(data: tuple[Any, Any]) -> None:
    pipe, df = data
    ref = df.mode().iloc[0]  # a Series mixing numbers and text
    rows = df.iloc[:4]
    e = whybox.explain(pipe, rows, "occlusion", fill=ref, target=1)
    for j, c in enumerate(COLUMNS):
        moved = rows.copy()
        moved[c] = ref[c]
        np.testing.assert_allclose(
            e.attributions[:, j].numpy(), _p(pipe, rows, 1) - _p(pipe, moved, 1), rtol=0, atol=1e-12
        )
    assert isinstance(e.options["fill"], torch.Tensor)  # kept coded, so the explanation saves


def test_a_category_dtype_column_reaches_the_estimator_as_that_dtype() -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    gen = np.random.default_rng(1)
    kind = pd.CategoricalDtype(["x", "y", "z", "never-seen"])
    df = pd.DataFrame({"a": gen.normal(size=200), "k": pd.Categorical(gen.choice(["x", "y", "z"], 200), dtype=kind)})
    y = (df.k == "y").astype(int) ^ (df.a > 0).astype(int)
    model = HistGradientBoostingClassifier(categorical_features="from_dtype", max_iter=20, random_state=0).fit(df, y)
    ref = df.iloc[[5]].iloc[0]
    coder = whybox.adapt(model)
    e = whybox.explain(coder, df.iloc[:3], "occlusion", fill=ref, target=1)
    assert sorted(e.meta["categories"]["k"]) == ["never-seen", "x", "y", "z"]  # every category of the dtype
    assert decode_rows(np.zeros((2, 2)), coder)["k"].dtype == kind  # as the estimator was fitted
    moved = df.iloc[:3].copy()
    moved["k"] = pd.Categorical([ref["k"]] * 3, dtype=kind)
    want = _p(model, df.iloc[:3], 1) - _p(model, moved, 1)
    np.testing.assert_allclose(e.attributions[:, 1].numpy(), want, rtol=0, atol=1e-12)


def test_deletion_on_text_columns_runs_from_the_row_to_the_reference(data: tuple[Any, Any]) -> None:
    pipe, df = data
    ref, rows = df.mode().iloc[0], df.iloc[:3]
    e = whybox.explain(pipe, rows, "kernel_shap", background=df.iloc[100:110])
    r = whybox.evaluate(pipe, rows, e, "deletion", fill=ref, steps=4)
    t = e.target.numpy()
    np.testing.assert_allclose(r.curves["y"][:, 0].numpy(), pipe.predict_proba(rows)[np.arange(3), t], atol=1e-12)
    everything = pd.DataFrame([ref] * 3)[COLUMNS].infer_objects()
    np.testing.assert_allclose(
        r.curves["y"][:, -1].numpy(), pipe.predict_proba(everything)[np.arange(3), t], rtol=0, atol=1e-12
    )


def test_a_saved_explanation_s_coded_options_read_the_same_after_loading(data: tuple[Any, Any], tmp_path: Path) -> None:
    pipe, df = data
    rows = df.iloc[:3]
    e = whybox.explain(pipe, rows, "kernel_shap", background=df.iloc[100:110], n_samples=32)
    e.save(tmp_path / "e.safetensors")
    loaded = whybox.Explanation.load(tmp_path / "e.safetensors")
    assert loaded.meta["categories"] == e.meta["categories"]
    a = whybox.evaluate(pipe, rows, e, "stability", n_runs=2)
    b = whybox.evaluate(pipe, rows, loaded, "stability", n_runs=2)
    torch.testing.assert_close(a.scores, b.scores, rtol=0, atol=0)
    coder = whybox.adapt(pipe)  # an adapter that already codes 'city' otherwise
    register_vocabularies(coder, {"city": ["pune", "lima"]})
    with pytest.raises(InvalidParameterError, match=r"the explanation coded column 'city' as \['[a-z]+', '[a-z]+', '"):
        whybox.evaluate(coder, rows, loaded, "stability", n_runs=2)


def test_an_adapter_that_coded_fewer_values_takes_up_the_explanation_s_longer_vocabulary(
    data: tuple[Any, Any],
) -> None:
    """The command line codes a CSV's rows before it reads a saved explanation: when the explanation's reference row
    held a city the rows do not ('pune' after 'oslo', 'lima'), the adapter's vocabulary begins the explanation's
    and is extended (it was refused), scoring as the estimator itself does."""
    pipe, df = data
    rows = df[df.city != "pune"].iloc[:4]
    fill = pd.Series({"age": 40.0, "city": "pune", "income": 50.0, "plan": "basic"})
    e = whybox.explain(pipe, rows, "kernel_shap", fill=fill, n_samples=32)
    coder = whybox.adapt(pipe)
    whybox.evaluate(coder, rows, e.attributions, "sparseness")  # codes the rows: 'pune' is not among them
    assert set(coder.categories["city"].values) == set(rows.city)
    by_coder = whybox.evaluate(coder, rows, e, "deletion", fill=fill)
    torch.testing.assert_close(by_coder.scores, whybox.evaluate(pipe, rows, e, "deletion", fill=fill).scores)


def test_what_cannot_be_coded_is_refused_naming_the_fix(data: tuple[Any, Any]) -> None:
    pipe, df = data
    rows = df.iloc[:2]
    with pytest.raises(InvalidParameterError, match=r"text or categorical columns \('city', 'plan'\), which a fill "):
        whybox.explain(pipe, rows, "lime")
    e = whybox.explain(pipe, rows, "kernel_shap", background=df.iloc[100:110])
    with pytest.raises(InvalidParameterError, match=r"'deletion' with fill='zero' would set to an arbitrary value"):
        whybox.evaluate(pipe, rows, e, "deletion")
    # one number for every column set each coded one to its first category ('blue'), silently
    with pytest.raises(InvalidParameterError, match=r"'comprehensiveness' with fill=0 would set to an arbitrary value"):
        whybox.evaluate(pipe, rows, e, "comprehensiveness", fill=0)
    with pytest.raises(InvalidParameterError, match=r"text or categorical columns \('city', 'plan'\), which a fill "):
        whybox.explain(pipe, rows, "occlusion", fill=0.0)
    for metric in ("infidelity", "max_sensitivity"):  # noise on the codes picked arbitrary categories, silently
        with pytest.raises(InvalidParameterError) as err:
            whybox.evaluate(pipe, rows, e, metric)
        assert str(err.value) == (
            f"{metric!r} adds noise to every input value, which on the coded text or categorical columns ('city', "
            "'plan') picks arbitrary categories; score this model with the metrics that replace features by a "
            "reference row (deletion, insertion, mufidelity, comprehensiveness with fill= a row of the training data)."
        )
    coder = whybox.adapt(pipe)  # the coded rows as a tensor: the adapter still knows which columns are text
    codes = whybox.explain(coder, rows, "occlusion", fill=df.mode().iloc[0]).options["fill"]
    assert codes.shape == (4,)
    with pytest.raises(InvalidParameterError, match=r"text or categorical columns \('city', 'plan'\), which a fill "):
        whybox.explain(coder, torch.zeros(2, 4, dtype=torch.float64), "occlusion")
    with pytest.raises(InvalidParameterError, match=r"'deletion' with fill='zero' would set to an arbitrary value"):
        whybox.evaluate(coder, torch.zeros(2, 4, dtype=torch.float64), e.attributions[:2], "deletion")
    with pytest.raises(InvalidInputError, match=r"fitted on 4 named columns; got inputs with 3 columns"):
        coder.scores(torch.zeros(2, 3, dtype=torch.float64))  # coded rows of the wrong width: named, not an IndexError
    gaps = rows.copy()
    gaps.loc[gaps.index[1], "city"] = None
    with pytest.raises(InvalidInputError, match=r"inputs: column 'city' has missing values in rows \[1\]"):
        whybox.explain(pipe, gaps, "occlusion", fill=df.mode().iloc[0])
    net = torch.nn.Linear(4, 2)  # a torch model takes numbers only
    with pytest.raises(InvalidInputError, match=r"inputs \(a DataFrame\) has non-numeric columns 'city', 'plan'"):
        whybox.explain(net, rows, "occlusion")
    on_arrays = LogisticRegression().fit(np.random.default_rng(0).normal(size=(20, 4)), np.arange(20) % 2)
    with pytest.raises(InvalidInputError, match=r"codes such columns only for a scikit-learn estimator fitted on a Da"):
        whybox.explain(on_arrays, rows, "occlusion")
    with pytest.raises(
        InvalidInputError, match=r"got dtype object\. .* pass the rows as such a DataFrame \(whybox cod"
    ):
        whybox.explain(pipe, rows.to_numpy(), "occlusion")  # the same rows as an object array: the frame is named
    numbers = df.iloc[100:110].assign(city=1.0)  # text in the inputs, numbers in the background's column
    with pytest.raises(InvalidInputError, match=r"background: column 'city' holds numbers, but another table of this"):
        whybox.explain(pipe, rows, "kernel_shap", background=numbers)


def test_a_reference_row_reads_a_category_of_ints_by_its_value_not_as_a_number() -> None:
    """A Series row loses a column's category dtype (its ints read as numbers), and was coded before the inputs:
    category 20 went in as the number 20.0, which decoded as the last category's code (30). Now the row is coded after
    the inputs, by value: occlusion against it is the oracle's on DataFrames."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    gen = np.random.default_rng(2)
    kind = pd.CategoricalDtype([10, 20, 30])
    df = pd.DataFrame({"a": gen.normal(size=300), "k": pd.Categorical(gen.choice([10, 20, 30], 300), dtype=kind)})
    y = ((df.k == 20) | (df.a > 1)).astype(int)
    model = HistGradientBoostingClassifier(categorical_features="from_dtype", max_iter=30, random_state=0).fit(df, y)
    rows = df[df.k != 20].iloc[:4]
    ref = df[df.k == 20].iloc[0]  # a Series: k reads as the number 20
    e = whybox.explain(model, rows, "occlusion", fill=ref, target=1)
    moved = rows.copy()
    moved["k"] = pd.Categorical([20] * len(rows), dtype=kind)
    want = _p(model, rows, 1) - _p(model, moved, 1)
    assert np.abs(want).max() > 0.05  # the category matters to the model
    np.testing.assert_allclose(e.attributions[:, 1].numpy(), want, rtol=0, atol=1e-12)
    r = whybox.evaluate(model, rows, e, "deletion", fill=ref, steps=2)
    everything = pd.DataFrame({"a": [ref["a"]] * len(rows), "k": pd.Categorical([20] * len(rows), dtype=kind)})
    np.testing.assert_allclose(r.curves["y"][:, -1].numpy(), _p(model, everything, 1), rtol=0, atol=1e-12)


def test_a_reference_row_or_background_rows_given_as_lists_with_text_are_the_same_as_frames(
    data: tuple[Any, Any],
) -> None:
    """The command line's --option fill=[...] / background=[[...], ...]: lists in the model's column order read as
    the Series and DataFrame of the same values."""
    pipe, df = data
    rows = df.iloc[:3]
    ref = df.mode().iloc[0]
    as_list = [float(ref["age"]), str(ref["city"]), float(ref["income"]), str(ref["plan"])]
    a = whybox.explain(pipe, rows, "occlusion", fill=as_list, target=1)
    b = whybox.explain(pipe, rows, "occlusion", fill=ref, target=1)
    assert torch.equal(a.attributions, b.attributions)
    back = df.iloc[10:14]
    c = whybox.explain(pipe, rows, "exact_shapley", background=back.values.tolist(), target=1)
    d = whybox.explain(pipe, rows, "exact_shapley", background=back, target=1)
    torch.testing.assert_close(c.attributions, d.attributions, rtol=0, atol=1e-12)
    r1 = whybox.evaluate(pipe, rows, b, "deletion", fill=as_list)
    r2 = whybox.evaluate(pipe, rows, b, "deletion", fill=ref)
    assert torch.equal(r1.scores, r2.scores)
    with pytest.raises(
        InvalidParameterError, match=r"fill as a list with text must be a row of the estimator's columns"
    ):
        whybox.explain(pipe, rows, "occlusion", fill=["oslo", 40.0], target=1)


def test_text_in_a_reference_row_for_a_model_that_takes_numbers_is_refused(data: tuple[Any, Any]) -> None:
    _, df = data
    torch_model = torch.nn.Linear(3, 2)
    with pytest.raises(InvalidParameterError, match="text values are read only for a scikit-learn estimator fitted on"):
        whybox.explain(torch_model, torch.rand(2, 3), "occlusion", fill=[1.0, "a", 2.0])
    with pytest.raises(InvalidParameterError, match="text values are read only for a scikit-learn estimator fitted on"):
        whybox.evaluate(torch_model, torch.rand(2, 3), "saliency", "deletion", fill=[1.0, "a", 2.0])
    on_array = LogisticRegression().fit(df[["age", "income"]].to_numpy(), (df.age > 40).to_numpy())
    with pytest.raises(InvalidParameterError, match="was not fitted on a DataFrame, so its inputs are numbers"):
        whybox.explain(on_array, df[["age", "income"]].to_numpy()[:2], "occlusion", fill=[40.0, "x"])
