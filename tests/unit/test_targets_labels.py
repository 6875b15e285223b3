"""Targets, true labels and column-named options as a user writes them: a classifier's own class values (bools,
floats), class names for ``labels=`` and ``other_class=``, options a metric does not read, output names that do not
match the model, integer columns beyond float32 and pandas options in another column order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import whybox
from whybox.errors import InvalidInputError, InvalidParameterError, InvalidTargetError

pd = pytest.importorskip("pandas")
LogisticRegression = pytest.importorskip("sklearn.linear_model").LogisticRegression
LinearRegression = pytest.importorskip("sklearn.linear_model").LinearRegression


def _cnn(k: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, k)
    )


def _images(b: int = 4) -> torch.Tensor:
    return torch.rand(b, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("as_float", [False, True], ids=["bool y", "float y"])
def test_bool_and_float_class_values_are_targets(as_float: bool) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = x[:, 0] > 0
    if as_float:
        y = y.astype(float)
    clf = LogisticRegression().fit(x, y)
    e = whybox.explain(clf, x[:3], "occlusion", target=y[:3])  # y_test as it is: its values are class labels
    assert e.target.tolist() == [int(v) for v in y[:3]]
    one = whybox.explain(clf, x[:3], "occlusion", target=y[1])  # one label (np.True_ / np.float64(1.0))
    assert one.target.tolist() == [int(y[1])] * 3
    if as_float:  # the class 1.0 written as text, as a CSV cell reads
        assert whybox.explain(clf, x[:3], "occlusion", target="1").target.tolist() == [1, 1, 1]


def test_road_labels_by_class_name_and_refusals() -> None:
    model, x = _cnn(3), _images(3)
    a = whybox.adapt(model, labels=["cat", "dog", "bird"])
    e = whybox.explain(a, x, "saliency")
    by_name = whybox.evaluate(a, x, e, "road", labels=["dog", "bird", "cat"], fractions=[0.5])
    by_index = whybox.evaluate(a, x, e, "road", labels=[1, 2, 0], fractions=[0.5])
    assert torch.equal(by_name.curves["morf_accuracy"], by_index.curves["morf_accuracy"])
    with pytest.raises(InvalidParameterError, match=r"labels must hold integer class indices.*float"):
        whybox.evaluate(a, x, e, "road", labels=[1.0, 2.0, 0.0], fractions=[0.5])
    with pytest.raises(InvalidTargetError, match="'cow' is not one of the model's"):
        whybox.evaluate(a, x, e, "road", labels=["dog", "cow", "cat"], fractions=[0.5])


def test_options_a_metric_does_not_read_are_refused() -> None:
    model, x = _cnn(3), _images(2)
    e = whybox.explain(model, x, "saliency")
    with pytest.raises(InvalidParameterError, match=r"labels= applies to .*road.*'deletion'.*target=labels"):
        whybox.evaluate(model, x, e, "deletion", labels=[0, 1])
    with pytest.raises(InvalidParameterError, match=r"masks= applies to the localisation metrics.*'sparseness'"):
        whybox.evaluate(None, x, e.attributions, "sparseness", masks=torch.ones(2, 8, 8, dtype=torch.bool))


def test_map_metrics_check_targets_as_model_metrics_do() -> None:
    x = _images(2)
    maps = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 2:5, 2:5] = True
    for bad, what in [(1.7, "integer class indices"), ([0.5, 1.7], "integer class indices"), (True, "int class")]:
        with pytest.raises(InvalidTargetError, match=what):
            whybox.evaluate(None, x, maps, "pointing_game", masks=masks, target=bad)
    with pytest.raises(InvalidTargetError, match="target=-3 is negative"):
        whybox.evaluate(None, x, maps, "pointing_game", masks=masks, target=-3)
    with pytest.raises(InvalidTargetError, match="got str 'cat'"):
        whybox.evaluate(None, x, maps, "pointing_game", masks=masks, target="cat")
    ok = whybox.evaluate(None, x, maps, "pointing_game", masks=masks, target=[2, 0])
    assert ok.meta["target"].tolist() == [2, 0]


def test_output_names_must_match_the_outputs() -> None:
    a = whybox.adapt(_cnn(3), labels=["cat", "dog"])
    with pytest.raises(InvalidParameterError, match=r"labels= names 2 outputs .* gives 3 scores per row"):
        whybox.explain(a, _images(2), "saliency")


def test_random_logit_other_class_by_name() -> None:
    model, x = _cnn(3), _images(2)
    a = whybox.adapt(model, labels=["cat", "dog", "bird"])
    e = whybox.explain(a, x, "saliency", target="cat")
    by_name = whybox.evaluate(a, x, e, "random_logit", other_class="dog")
    by_index = whybox.evaluate(a, x, e, "random_logit", other_class=1)
    assert torch.equal(by_name.scores, by_index.scores)
    with pytest.raises(InvalidTargetError, match="other_class: target 'cow' is not one"):
        whybox.evaluate(a, x, e, "random_logit", other_class="cow")


def test_road_with_a_callable_target_refuses_before_any_model_call() -> None:
    calls = [0]
    model = _cnn(3)
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    x = _images(2)
    e = whybox.explain(model, x, "saliency")
    calls[0] = 0
    with pytest.raises(InvalidParameterError, match="callable target needs labels="):
        whybox.evaluate(model, x, e, "road", target=lambda s: s[:, 0], fractions=[0.5])
    assert calls[0] == 0


def test_integer_columns_reach_an_estimator_exactly() -> None:
    """int64 values beyond 2**24 (timestamps, ids) must not pass through float32 on their way to the estimator."""
    rng = np.random.default_rng(0)
    x = np.stack([1_700_000_000 + rng.integers(0, 5000, 60), rng.integers(0, 10, 60)], 1).astype(np.int64)
    y = (x[:, 0] % 2 == 0) ^ (x[:, 1] > 4)
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    row = np.array([[1_700_001_790, 3]], dtype=np.int64)
    assert float(np.float32(row[0, 0])) != row[0, 0]  # the value float32 cannot hold
    p = clf.predict_proba(row)[0, 1]
    e = whybox.explain(clf, row, "exact_shapley", target=1, score="prob")
    assert float(e.meta["base_value"][0] + e.attributions.sum()) == pytest.approx(p, abs=1e-12)
    d = whybox.evaluate(clf, row, e, "deletion", score="prob")
    assert float(d.curves["y"][0, 0]) == pytest.approx(p, abs=1e-12)


def test_pandas_options_in_another_column_order_are_refused() -> None:
    rng = np.random.RandomState(0)
    df = pd.DataFrame(rng.randn(30, 3) * [1, 10, 100], columns=["a", "b", "c"])
    reg = LinearRegression().fit(df.to_numpy(), df.a + df.b + df.c)  # fitted on an array: no feature_names_in_
    x = df.iloc[:2]
    same = whybox.explain(reg, x, "occlusion", fill=df.mean())
    assert same.attributions.numpy() == pytest.approx((x - df.mean()).to_numpy())  # a linear model: w * (x - fill)
    with pytest.raises(InvalidInputError, match=r"fill \(pandas\) has the inputs' columns in another order"):
        whybox.explain(reg, x, "occlusion", fill=df[["c", "b", "a"]].mean())
    with pytest.raises(InvalidInputError, match=r"background \(pandas\) has the inputs' columns in another order"):
        whybox.explain(reg, x, "exact_shapley", background=df[["c", "b", "a"]].iloc[:5])
    with pytest.raises(InvalidInputError, match=r"fill \(pandas\) has columns the inputs do not have"):
        whybox.explain(reg, x, "occlusion", fill=df.mean().rename({"a": "z"}))
    with pytest.raises(InvalidInputError, match=r"fill \(pandas\) has the inputs' columns in another order"):
        whybox.evaluate(reg, x, same, "deletion", fill=df[["c", "b", "a"]].mean())
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)  # a torch model takes the same options
    with pytest.raises(InvalidInputError, match=r"baseline \(pandas\) has the inputs' columns in another order"):
        whybox.explain(lin, x.astype("float32"), "integrated_gradients", baseline=df[["b", "a", "c"]].mean())


def test_an_estimator_fitted_on_an_array_names_a_wrong_column_count() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4))
    clf = LogisticRegression().fit(x, x[:, 0] > 0)
    with pytest.raises(InvalidInputError, match="fitted on 4 columns; got inputs with 3 columns"):
        whybox.explain(clf, x[:2, :3], "occlusion")
    with pytest.raises(InvalidInputError, match=r"Add one with inputs\[None\]"):
        whybox.explain(clf, x[0], "occlusion")
