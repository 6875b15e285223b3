"""Tabular inputs as scikit-learn users hold them: numpy arrays and pandas DataFrames give the same attributions
and metric scores as the tensor of the same rows; an estimator fitted on a DataFrame gets its rows as a DataFrame
with its column names (no feature-name warnings, ColumnTransformer by name works); bad frames are refused with the
fix."""

from __future__ import annotations

import re
import warnings
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from whybox.errors import InvalidInputError

pd = pytest.importorskip("pandas")
from sklearn.compose import ColumnTransformer  # noqa: E402
from sklearn.datasets import load_breast_cancer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

METHODS = ["kernel_shap", "lime", "occlusion", "feature_ablation", "shapley_sampling", "exact_shapley", "lima"]
OPTIONS = {"kernel_shap": {"n_samples": 64}, "lime": {"n_samples": 64}, "shapley_sampling": {"n_permutations": 2}}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    data = load_breast_cancer(as_frame=True)
    return data.data.iloc[:, :8].assign(target=data.target)


def _fit(x: object, y: object) -> object:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)


@pytest.mark.parametrize("method", METHODS)
def test_array_frame_and_tensor_give_the_same_attributions(method: str, frame: pd.DataFrame) -> None:
    x, y = frame.drop(columns="target"), frame["target"]
    on_frame, on_array = _fit(x, y), _fit(x.to_numpy(), y.to_numpy())
    rows = x.iloc[:3]
    opts = {"seed": 0, **OPTIONS.get(method, {})}
    ref = whybox.explain(on_array, torch.tensor(rows.to_numpy()), method, **opts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "X does not have valid feature names" from the frame-fitted model
        by_frame = whybox.explain(on_frame, rows, method, **opts)
        by_array = whybox.explain(on_array, rows.to_numpy(), method, **opts)
        by_tensor = whybox.explain(on_frame, torch.tensor(rows.to_numpy()), method, **opts)
    for e in (by_frame, by_array, by_tensor):  # the two fits agree to float64 rounding (5e-16 seen)
        torch.testing.assert_close(e.attributions, ref.attributions, rtol=1e-9, atol=1e-12)
        assert torch.equal(e.target, ref.target)
    assert by_frame.meta["feature_names"] == list(x.columns)
    assert "feature_names" not in by_array.meta and "feature_names" not in by_tensor.meta


def test_column_transformer_selecting_by_name(frame: pd.DataFrame) -> None:
    """A pipeline that picks columns by name only runs on a DataFrame: whybox's rows reach it as one, and the
    attributions equal those of the same pipeline picking the columns by position, fitted on the array."""
    x, y = frame.drop(columns="target"), frame["target"]
    names = ["mean radius", "mean texture", "mean area"]
    pos = [list(x.columns).index(c) for c in names]

    def pipe(cols: list[object]) -> object:
        ct = ColumnTransformer([("s", StandardScaler(), cols)], remainder="passthrough")
        return make_pipeline(ct, LogisticRegression(max_iter=3000))

    by_name = pipe(list(names)).fit(x, y)
    by_pos = pipe(list(pos)).fit(x.to_numpy(), y.to_numpy())
    a = whybox.explain(by_name, x.iloc[:2], "kernel_shap", n_samples=64, seed=1)
    b = whybox.explain(by_pos, x.to_numpy()[:2], "kernel_shap", n_samples=64, seed=1)
    torch.testing.assert_close(a.attributions, b.attributions, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("metric", ["deletion", "insertion", "infidelity"])
def test_metrics_take_arrays_and_frames(metric: str, frame: pd.DataFrame) -> None:
    x, y = frame.drop(columns="target"), frame["target"]
    model = _fit(x, y)
    e = whybox.explain(model, x.iloc[:3], "occlusion")
    opts = {"fill": "mean"} if metric == "insertion" else {}  # insertion's default blur is for images
    ref = whybox.evaluate(model, torch.tensor(x.iloc[:3].to_numpy()), e, metric, seed=0, **opts)
    for rows in (x.iloc[:3], x.iloc[:3].to_numpy()):
        got = whybox.evaluate(model, rows, e, metric, seed=0, **opts)
        torch.testing.assert_close(got.scores, ref.scores, rtol=0, atol=0)


def test_torch_model_takes_a_numpy_array() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    before = x.copy()
    a = whybox.explain(model, x, "integrated_gradients", n_steps=16)
    b = whybox.explain(model, torch.from_numpy(before.copy()), "integrated_gradients", n_steps=16)
    torch.testing.assert_close(a.attributions, b.attributions, rtol=0, atol=0)
    assert a.attributions.dtype == torch.float32 and a.attributions.device.type == "cpu"
    np.testing.assert_array_equal(x, before)  # the caller's array is left as it came


def _refused(match: str, fn: object) -> None:
    with pytest.raises(InvalidInputError, match=match):
        fn()  # type: ignore[operator]


def test_bad_frames_and_arrays_are_refused_with_the_fix(frame: pd.DataFrame) -> None:
    x, y = frame.drop(columns="target"), frame["target"]
    model = _fit(x, y)
    rows = x.iloc[:2]
    _refused(
        r"inputs \(a DataFrame\) has the model's columns in another order; whybox reads them by position\. "
        r"Pass inputs\[model\.feature_names_in_\]\.",
        lambda: whybox.explain(model, rows[list(reversed(x.columns))], "lime"),
    )
    _refused(
        re.escape("inputs (a DataFrame) has columns the model was not fitted on: missing ['mean smoothness', ")
        + r".*unexpected \[\]\. Pass the columns in model\.feature_names_in_, in that order\.",
        lambda: whybox.explain(model, rows.iloc[:, :4], "lime"),
    )
    _refused(
        # a text column is coded for an estimator fitted on a frame with it; this one was not
        r"inputs \(a DataFrame\) has columns the model was not fitted on: missing \[\], unexpected \['colour'\]",
        lambda: whybox.explain(model, rows.assign(colour="red"), "lime"),
    )
    _refused(
        r"inputs as a numpy array must be numeric \(bool, int or float\); got dtype <U3\.",
        lambda: whybox.explain(model, np.array([["red"] * 8]), "lime"),
    )
    _refused(
        r"the model was fitted on 8 named columns; got inputs with 5 columns\. "
        r"Pass the columns in model\.feature_names_in_, in that order\.",
        lambda: whybox.explain(model, torch.rand(2, 5, dtype=torch.float64), "lime"),
    )
    _refused(
        r"inputs \(a DataFrame\) has the model's columns in another order",
        lambda: whybox.evaluate(model, rows[list(reversed(x.columns))], torch.rand(2, 8), "deletion"),
    )
    _refused(
        r"inputs must be a torch\.Tensor, a numpy array or a pandas DataFrame with a leading batch dimension; "
        r"got dict\.",
        lambda: whybox.explain(model, {"a": 1}, "lime"),
    )
    _refused(
        r"inputs must be rows \(B, F\); got a pandas Series of 8 values, one row or one column\. Pass rows as a "
        r"DataFrame: X\.iloc\[\[0\]\] \(a one-row frame\) instead of X\.iloc\[0\]\.",
        lambda: whybox.explain(model, rows.iloc[0], "lime"),
    )


@pytest.mark.parametrize("method", METHODS)
def test_fill_as_a_series_or_an_array_is_the_fill_as_a_tensor(method: str, frame: pd.DataFrame) -> None:
    """fill=X.mean() (a pandas Series) or X.mean(0) (a numpy array), the usual tabular reference, is that tensor."""
    x, y = frame.drop(columns="target"), frame["target"]
    model = _fit(x, y)
    mu = x.mean()
    opts = {"seed": 0, **OPTIONS.get(method, {})}
    ref = whybox.explain(model, x.iloc[:2], method, fill=torch.tensor(mu.to_numpy()), **opts)
    for fill in (mu, mu.to_numpy(), x.to_numpy().mean(0)):
        e = whybox.explain(model, x.iloc[:2], method, fill=fill, **opts)
        torch.testing.assert_close(e.attributions, ref.attributions, rtol=1e-12, atol=1e-12)
    by_zero = whybox.explain(model, x.iloc[:2], method, **opts)
    assert not torch.allclose(by_zero.attributions, ref.attributions)  # the fill was used, not ignored


def test_a_reference_row_or_rows_naming_the_columns_in_another_order_are_refused(frame: pd.DataFrame) -> None:
    """A fill Series (by its index) or a background DataFrame whose names are the model's columns in another order
    was read by position, giving other attributions and metric scores without a word; it is refused as inputs in
    another order are. A Series without names (a default index) is read by position."""
    x, y = frame.drop(columns="target"), frame["target"]
    model = _fit(x, y)
    mu, back = x.mean(), x.iloc[:6]
    order = list(x.columns[::-1])
    e = whybox.explain(model, x.iloc[:2], "exact_shapley", fill=mu)
    for kwargs, what in (
        ({"fill": mu[order]}, "fill (a Series, by its index)"),
        ({"background": back[order]}, "background (a DataFrame)"),
    ):
        with pytest.raises(InvalidInputError) as err:
            whybox.explain(model, x.iloc[:2], "exact_shapley", **kwargs)
        name = what.split(" ")[0]
        assert str(err.value) == (
            f"{what} has the model's columns in another order; whybox reads them by position. "
            f"Pass {name}[model.feature_names_in_]."
        )
    with pytest.raises(InvalidInputError, match=r"^fill \(a Series, by its index\) has the model's columns in another"):
        whybox.evaluate(model, x.iloc[:2], e, "deletion", fill=mu[order])
    positional = pd.Series(mu.to_numpy())
    same = whybox.explain(model, x.iloc[:2], "exact_shapley", fill=positional)
    torch.testing.assert_close(same.attributions, e.attributions)


def test_array_fill_in_metrics_and_baseline_in_integrated_gradients(frame: pd.DataFrame) -> None:
    x, y = frame.drop(columns="target"), frame["target"]
    model = _fit(x, y)
    mu = x.mean()
    e = whybox.explain(model, x.iloc[:3], "occlusion")
    ref = whybox.evaluate(model, x.iloc[:3], e, "deletion", fill=torch.tensor(mu.to_numpy()))
    for fill in (mu, mu.to_numpy()):
        torch.testing.assert_close(whybox.evaluate(model, x.iloc[:3], e, "deletion", fill=fill).scores, ref.scores)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    rows = x.iloc[:2].to_numpy()
    a = whybox.explain(net, rows, "integrated_gradients", baseline=mu, n_steps=8)
    b = whybox.explain(net, rows, "integrated_gradients", baseline=torch.tensor(mu.to_numpy()), n_steps=8)
    torch.testing.assert_close(a.attributions, b.attributions, rtol=0, atol=0)


def test_non_numeric_array_options_are_refused(frame: pd.DataFrame) -> None:
    x, y = frame.drop(columns="target"), frame["target"]
    model = _fit(x, y)
    with pytest.raises(whybox.InvalidInputError, match=r"fill \(a DataFrame\) has columns the model was not fitted"):
        whybox.explain(model, x.iloc[:2], "occlusion", fill=pd.Series(["a"] * 8))  # a text row is coded by name
    with pytest.raises(whybox.InvalidParameterError, match=r"fill as a pandas Series must hold numbers only"):
        whybox.explain(torch.nn.Linear(8, 2), x.iloc[:2], "occlusion", fill=pd.Series(["a"] * 8))
    # a background frame with text where the inputs hold numbers: the column is named (text columns are coded for
    # an estimator fitted on a frame, but one kind of value per column); for a torch model, the fix is to encode
    background = x.iloc[:5].assign(**{str(x.columns[1]): "low"})
    with pytest.raises(
        whybox.InvalidInputError,
        match=rf"background: column '{x.columns[1]}' holds text, but another table of this call \(the inputs, a "
        r"fill row or background rows\) holds numbers there",
    ):
        whybox.explain(model, x.iloc[:2], "kernel_shap", background=background)
    with pytest.raises(
        whybox.InvalidParameterError,
        match=rf"background as a pandas DataFrame must hold numbers only \(one per feature\) \(not numbers: "
        rf"'{x.columns[1]}'\); whybox perturbs numbers: encode the other columns",
    ):
        whybox.explain(torch.nn.Linear(8, 2), x.iloc[:2], "kernel_shap", background=background)
    with pytest.raises(whybox.InvalidParameterError, match=r"fill as a numpy array must be numeric; got dtype <U1"):
        whybox.evaluate(model, x.iloc[:2], torch.rand(2, 8), "deletion", fill=np.array(["a"] * 8))


def test_class_labels_as_targets_of_a_scikit_learn_classifier(frame: pd.DataFrame) -> None:
    """target= may name classes_ labels (one, or one per row, mixed with indices): the same as their indices in
    explain and evaluate; ints stay output indices even where the labels are ints; an unknown label is refused."""
    x = frame.drop(columns="target")
    labels = np.where(frame["target"].to_numpy() == 1, "benign", "malignant")
    model = _fit(x, labels)
    assert list(model.classes_) == ["benign", "malignant"]
    rows = x.iloc[:3]
    ref = whybox.explain(model, rows, "kernel_shap", target=[1, 0, 1], n_samples=64, seed=0)
    for target in (["malignant", "benign", "malignant"], np.array(["malignant", "benign", "malignant"]),
                   ["malignant", 0, 1], pd.Series(["malignant", "benign", "malignant"], index=[5, 9, 2])):  # fmt: skip
        e = whybox.explain(model, rows, "kernel_shap", target=target, n_samples=64, seed=0)
        assert e.target.tolist() == [1, 0, 1]
        torch.testing.assert_close(e.attributions, ref.attributions, rtol=0, atol=0)
    one = whybox.explain(model, rows, "occlusion", target="benign")
    assert one.target.tolist() == [0, 0, 0]
    r = whybox.evaluate(model, rows, ref, "deletion", target="benign")
    torch.testing.assert_close(r.scores, whybox.evaluate(model, rows, ref, "deletion", target=0).scores)
    with pytest.raises(whybox.InvalidTargetError, match=r"target 'cyst' is not one of the model's classes "):
        whybox.explain(model, rows, "occlusion", target="cyst")
    by_int = _fit(x, np.where(frame["target"].to_numpy() == 1, 7, 3))  # classes_ [3, 7]: target=1 is index 1
    assert whybox.explain(by_int, rows, "occlusion", target=1).target.tolist() == [1, 1, 1]
    with pytest.raises(whybox.InvalidTargetError) as err:  # a class value out of range as an index: which to pass
        whybox.explain(by_int, rows, "occlusion", target=7)
    assert str(err.value) == (
        "target=7 is an output index, out of range for 2 classes; the class labelled 7 is classes_[1]: pass target=1."
    )


@pytest.mark.parametrize("metric", ["insertion", "highest_confidence"])
def test_insertion_default_fill_is_blur_for_images_and_zero_otherwise(metric: str, frame: pd.DataFrame) -> None:
    """Tables have no blur: the default ("auto") inserts into zeros there, and into the RISE blur for images."""
    x, y = frame.drop(columns="target"), frame["target"]
    model = _fit(x, y)
    e = whybox.explain(model, x.iloc[:3], "occlusion")
    got = whybox.evaluate(model, x.iloc[:3], e, metric)
    assert got.params["fill"] == "auto"
    torch.testing.assert_close(got.scores, whybox.evaluate(model, x.iloc[:3], e, metric, fill="zero").scores)
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    img = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    a = whybox.explain(cnn, img, "saliency")
    by_default = whybox.evaluate(cnn, img, a, metric, steps=8).scores
    torch.testing.assert_close(by_default, whybox.evaluate(cnn, img, a, metric, steps=8, fill="blur").scores)
    assert not torch.allclose(by_default, whybox.evaluate(cnn, img, a, metric, steps=8, fill="zero").scores)


def test_randomization_names_the_users_model_and_the_alternative(frame: pd.DataFrame) -> None:
    x, y = frame.drop(columns="target"), frame["target"]
    model = _fit(x, y)
    with pytest.raises(
        whybox.InvalidParameterError,
        match=r"randomization re-initialises the layers of a torch model; got a Pipeline model\. For other models "
        r"use random_logit",
    ):
        whybox.evaluate(model, x.iloc[:2], "occlusion", "randomization")


def test_background_set_as_a_frame_or_array_matches_shap(frame: pd.DataFrame) -> None:
    """background= may be a DataFrame or a numpy array (the training rows a tabular user holds); exact Shapley
    values against it equal shap.KernelExplainer's with the same background at full enumeration (the oracle)."""
    shap = pytest.importorskip("shap")
    x, y = frame.drop(columns="target").iloc[:, :4], frame["target"]
    model = _fit(x.to_numpy(), y.to_numpy())
    bg, rows = x.iloc[:12], x.iloc[100:103]
    ref = whybox.explain(model, rows.to_numpy(), "exact_shapley", background=torch.tensor(bg.to_numpy()))
    for background in (bg, bg.to_numpy()):
        e = whybox.explain(model, rows.to_numpy(), "exact_shapley", background=background)
        torch.testing.assert_close(e.attributions, ref.attributions, rtol=0, atol=0)
    explainer = shap.KernelExplainer(model.predict_proba, bg.to_numpy())
    values = np.asarray(explainer.shap_values(rows.to_numpy(), nsamples=2**4, silent=True))
    if values.shape[0] != 3:  # older shap: one (rows, M) array per class
        values = np.moveaxis(values, 0, -1)
    want = values[np.arange(3), :, ref.target.numpy()]
    np.testing.assert_allclose(ref.attributions.numpy(), want, rtol=1e-6, atol=1e-9)


def test_evaluate_refuses_a_frame_whose_columns_are_not_the_explained_ones(frame: pd.DataFrame) -> None:
    """An explanation made on a DataFrame records its columns; evaluating it on a frame with other columns (here
    reordered, for a torch model that has no fitted names to check against) would pair attributions with the
    wrong columns: refused, naming both."""
    x = frame.drop(columns="target")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    e = whybox.explain(net, x.iloc[:2], "saliency")
    whybox.evaluate(net, x.iloc[:2], e, "deletion")  # the same columns: fine
    swapped = x.iloc[:2][[x.columns[1], x.columns[0], *x.columns[2:]]]
    with pytest.raises(
        InvalidInputError,
        match=r"inputs \(a DataFrame\) and the explanation name different columns \(mean texture, mean radius, "
        r"mean perimeter, mean area and 4 more vs mean radius, mean texture, .*\); evaluate the rows",
    ):
        whybox.evaluate(net, swapped, e, "deletion")


def test_frame_fitted_estimators_get_arrays_until_one_refuses_them(
    frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Arrays skip pandas' per-call validation, so an estimator fitted on a DataFrame gets arrays (columns in the
    fitted order, its feature-name warning silenced) while it takes them; one that refuses an array (picking
    columns by name) gets DataFrames from then on, with the same results as a direct call on a DataFrame."""
    x, y = frame.drop(columns="target"), frame["target"]
    seen: list[type] = []

    def recording(model: object) -> object:
        original = model.predict_proba  # type: ignore[attr-defined]

        def predict_proba(rows: object) -> object:
            seen.append(type(rows))
            return original(rows)

        monkeypatch.setattr(model, "predict_proba", predict_proba)
        return model

    plain = recording(_fit(x, y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whybox.explain(plain, x.iloc[:2], "kernel_shap", n_samples=64, batch_size=16)
    assert seen and set(seen) == {np.ndarray}
    seen.clear()
    by_name = make_pipeline(
        ColumnTransformer([("s", StandardScaler(), ["mean radius"])], remainder="passthrough"),
        LogisticRegression(max_iter=3000),
    ).fit(x, y)
    picky = recording(by_name)
    e = whybox.explain(picky, x.iloc[:2], "occlusion", batch_size=4)
    assert seen[0] is np.ndarray and set(seen[1:]) == {pd.DataFrame} and len(seen) > 2
    want = by_name.predict_proba(x.iloc[:2])[np.arange(2), e.target.numpy()]
    got = whybox.adapt(by_name).scores(torch.tensor(x.iloc[:2].to_numpy()))[torch.arange(2), e.target]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_non_finite_reference_rows_are_refused_naming_the_option(frame: pd.DataFrame) -> None:
    """Training means of a column with a missing value are NaN: as a fill (explainers and metrics) or an IG
    baseline they would reach the model; refused at the shared fill step, naming the option."""
    x, y = frame.drop(columns="target"), frame["target"]
    model = _fit(x, y)
    mu = x.mean().to_numpy().copy()
    mu[2] = np.nan
    msg = r"{} tensor holds 1 non-finite values \(NaN or inf\), which the model would be asked to score; impute"
    with pytest.raises(whybox.InvalidParameterError, match=msg.format("fill")):
        whybox.explain(model, x.iloc[:2], "occlusion", fill=mu)
    with pytest.raises(whybox.InvalidParameterError, match=msg.format("fill")):
        whybox.evaluate(model, x.iloc[:2], torch.rand(2, 8), "deletion", fill=torch.tensor(mu))
    net = nn.Sequential(nn.Linear(8, 2)).double()
    with pytest.raises(whybox.InvalidParameterError, match=msg.format("baseline")):
        whybox.explain(net, x.iloc[:2], "integrated_gradients", baseline=mu)


class _Counting(LogisticRegression):
    """A classifier that counts its predict_proba calls and the largest call."""

    calls: ClassVar[list[int]] = []

    def predict_proba(self, x: object) -> np.ndarray:
        type(self).calls.append(len(x))  # type: ignore[arg-type]
        return super().predict_proba(x)


def test_estimators_default_to_large_batches_with_the_same_values() -> None:
    """A scikit-learn call costs far more than its rows: batch_size=None gives an estimator 4,096 rows a call
    (a torch model 64); the numbers are the ones of 64-row calls, and an explicit batch_size wins."""
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    model = _Counting(max_iter=1000).fit(x, y)
    rows = x[:10]  # 30 columns: 500 coalitions a row, 5,000 rows to score
    _Counting.calls = []
    e = whybox.explain(model, rows, "kernel_shap", n_samples=500)
    assert e.params["batch_size"] == 4096 and max(_Counting.calls) == 4096
    n_default = len(_Counting.calls)
    _Counting.calls = []
    small = whybox.explain(model, rows, "kernel_shap", n_samples=500, batch_size=64)
    assert small.params["batch_size"] == 64 and max(_Counting.calls) == 64 and len(_Counting.calls) > 10 * n_default
    torch.testing.assert_close(e.attributions, small.attributions, rtol=0, atol=1e-12)
    _Counting.calls = []
    d = whybox.evaluate(model, rows, e, "deletion")
    assert max(_Counting.calls) > 64
    torch.testing.assert_close(d.scores, whybox.evaluate(model, rows, e, "deletion", batch_size=64).scores)
    torch_model = nn.Linear(5, 2)
    assert whybox.explain(torch_model, torch.rand(2, 5), "occlusion").params["batch_size"] == 64


@pytest.mark.parametrize("score", ["logit", "prob", "log_prob"])
def test_a_classifier_s_probabilities_are_read_as_probabilities(score: str) -> None:
    """predict_proba gives probabilities: score='prob' (LIME's default) must explain them, not softmax(them),
    which squeezes [1.0, 0.0] into [0.73, 0.27]; 'log_prob' explains their log; 'logit' the outputs as they are
    (shap's reading). Kernel SHAP is exactly additive, so attributions + base value give the explained score back.
    Max-sensitivity with zero perturbations re-explains in the same space: exactly 0 (the metric used to hand the
    explainer log-probabilities whatever its score)."""
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    model = LogisticRegression(max_iter=1000).fit(x[:, :6], y)
    rows = x[:4, :6]
    e = whybox.explain(model, rows, "kernel_shap", score=score, n_samples=200)
    p = torch.from_numpy(model.predict_proba(rows)).gather(1, e.target.view(-1, 1)).squeeze(1)
    want = p.log() if score == "log_prob" else p
    torch.testing.assert_close(e.attributions.sum(1) + e.meta["base_value"], want, rtol=0, atol=1e-9)
    zero = torch.zeros(2, 6, dtype=torch.float64)
    sens = whybox.evaluate(model, rows, e, "max_sensitivity", n_samples=2, deltas=zero, score=score).scores
    torch.testing.assert_close(sens, torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-9)


def test_lime_s_default_probability_is_the_classifier_s_own() -> None:
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    model = LogisticRegression(max_iter=1000).fit(x, y)
    prob = whybox.explain(model, x[:3], "lime", n_samples=300)  # score="prob"
    raw = whybox.explain(model, x[:3], "lime", n_samples=300, score="logit")
    torch.testing.assert_close(prob.attributions, raw.attributions, rtol=0, atol=1e-9)
    torch.testing.assert_close(prob.meta["intercept"], raw.meta["intercept"], rtol=0, atol=1e-9)


def test_a_reference_row_written_as_a_list_is_the_same_row_as_a_tensor() -> None:
    """A list of numbers (what a config file or --option fill=[...] gives) was refused as 'fill must be one of ...'
    (IG's baseline= even named fill); it is now the row it writes, for fills, baselines, backgrounds and metrics."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3).double()
    x = torch.rand(2, 4, dtype=torch.float64)
    row = [0.1, 0.2, 0.3, 0.4]
    ref = torch.tensor(row, dtype=torch.float64)
    for method, key in (("occlusion", "fill"), ("lime", "fill"), ("integrated_gradients", "baseline")):
        a = whybox.explain(net, x, method, **{key: row})
        b = whybox.explain(net, x, method, **{key: ref})
        torch.testing.assert_close(a.attributions, b.attributions, rtol=0, atol=0)
        # kept in options as the tensor it became, so a metric that re-runs the method gets the row back (params
        # only describe it) and a slice of a per-row fill follows its rows
        assert torch.equal(a.options[key], ref)
        s = whybox.evaluate(net, x, a, "stability", n_runs=2)
        assert bool(torch.isfinite(s.scores).all())
    bg = [row, [0.0, 0.0, 0.0, 0.0]]
    a = whybox.explain(net, x, "kernel_shap", background=bg)
    b = whybox.explain(net, x, "kernel_shap", background=torch.tensor(bg, dtype=torch.float64))
    torch.testing.assert_close(a.attributions, b.attributions, rtol=0, atol=0)
    d1 = whybox.evaluate(net, x, a, "deletion", fill=row)
    d2 = whybox.evaluate(net, x, a, "deletion", fill=ref)
    torch.testing.assert_close(d1.scores, d2.scores, rtol=0, atol=0)
    with pytest.raises(whybox.InvalidParameterError, match=r"baseline must be one of \('zero', 'blur', 'uniform', 'g"):
        whybox.explain(net, x, "integrated_gradients", baseline={"a": 1})
    with pytest.raises(whybox.InvalidParameterError, match=r"fill as a list must be a row of numbers or equal rows"):
        whybox.explain(net, x, "occlusion", fill=[[0.1, 0.2], [0.3]])


def test_a_regressor_of_several_outputs_is_explained_for_the_output_named() -> None:
    """The default target, the argmax, took the largest predicted value as a 'class' (rows of one batch explained
    different outputs): refused; target=j explains output j, as a regressor fitted on that output alone does."""
    from sklearn.linear_model import LinearRegression

    g = np.random.default_rng(0)
    x = g.normal(size=(60, 3))
    y = np.c_[100 + 10 * x[:, 0], 100 + 10 * x[:, 1] - 3 * x[:, 2]]
    both = LinearRegression().fit(x, y)
    message = (
        "LinearRegression predicts 2 values per row (a regressor of several outputs), so there is no predicted class "
        "to explain by default; pass target=j to explain output j (0..1)."
    )
    with pytest.raises(whybox.InvalidTargetError) as err:
        whybox.explain(both, x[:4], "exact_shapley", fill=x.mean(0))
    assert str(err.value) == message
    with pytest.raises(whybox.InvalidTargetError) as err:
        whybox.evaluate(both, x[:4], torch.zeros(4, 3), "deletion")
    assert str(err.value) == message
    second = LinearRegression().fit(x, y[:, 1])
    e = whybox.explain(both, x[:4], "exact_shapley", fill=x.mean(0), target=1)
    alone = whybox.explain(second, x[:4], "exact_shapley", fill=x.mean(0))
    torch.testing.assert_close(e.attributions, alone.attributions)


def test_a_binary_decision_function_is_the_evidence_for_the_second_class() -> None:
    """LinearSVC's one score is the evidence for classes_[1]: named so (it was named classes_[0], 'versicolor', on a
    row predicted 'virginica'), explained for that name; classes_[0] and find_mistakes say what to use instead."""
    from sklearn.datasets import load_iris
    from sklearn.svm import LinearSVC

    x, y = load_iris(return_X_y=True)
    keep = y > 0
    names = np.array(["setosa", "versicolor", "virginica"])[y[keep]]
    svm = LinearSVC().fit(x[keep], names)
    rows, ref = x[[50, 140]], x[keep].mean(0)
    e = whybox.explain(svm, rows, "exact_shapley", fill=ref)
    assert e.meta["target_names"] == ["virginica", "virginica"]
    torch.testing.assert_close(
        e.attributions.sum(1).double(), torch.from_numpy(svm.decision_function(rows) - svm.decision_function(ref[None]))
    )
    named = whybox.explain(svm, rows, "exact_shapley", fill=ref, target="virginica")
    torch.testing.assert_close(named.attributions, e.attributions)
    with pytest.raises(whybox.InvalidTargetError) as err:
        whybox.explain(svm, rows, "exact_shapley", fill=ref, target="versicolor")
    assert str(err.value) == (
        "target 'versicolor' is classes_[0] of LinearSVC, whose decision_function gives one score per row, the "
        "evidence for 'virginica' (classes_[1]); 'versicolor' is its negative side. Explain 'virginica' ('versicolor''s "
        "attributions are their negatives), or use a classifier with predict_proba (SVC(probability=True), "
        "CalibratedClassifierCV)."
    )
    with pytest.raises(whybox.InvalidParameterError, match=r"^find_mistakes compares each row's predicted class with "
                       r"its true one, but LinearSVC gives one score per row"):  # fmt: skip
        whybox.find_mistakes(svm, rows, ["versicolor", "virginica"], fill=ref)
