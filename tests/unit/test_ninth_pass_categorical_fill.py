"""A reference row (or background rows, or inputs) holding a category the estimator's encoder was not fitted on
(ninth pass): scikit-learn's ``ValueError: Found unknown categories ['berlin'] in column 0 during transform`` came
out of explain, find_mistakes and ``whybox debug`` as it was. Now whybox reads the categories the encoders know
(``model_categories``) and refuses such a value before any call of the model, naming the option, the column, the
value and the known categories; where it cannot read them, the estimator's refusal is turned into whybox's error
for the table that brought the value in. And a fill of one number given as a 0-d tensor or array is refused on coded
categorical rows as the number itself is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pd = pytest.importorskip("pandas")

from click.testing import CliRunner  # noqa: E402
from sklearn.compose import make_column_transformer  # noqa: E402
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, OrdinalEncoder  # noqa: E402

import whybox  # noqa: E402
from whybox.cli.main import main as cli  # noqa: E402
from whybox.errors import InvalidInputError, InvalidParameterError  # noqa: E402

KNOWN = "'oslo', 'paris', 'rome'"


def model_categories(pipe: Any, columns: list[str]) -> dict[str, list[Any]]:
    from whybox.models.categorical import model_categories as read

    return read(pipe, columns)


def _frame() -> tuple[Any, Any]:
    rng = np.random.default_rng(0)
    n = 60
    x = pd.DataFrame(
        {
            "a": rng.normal(size=n).round(3),
            "b": rng.normal(size=n).round(3),
            "city": rng.choice(["oslo", "rome", "paris"], n),
        }
    )
    y = ((x.a + (x.city == "rome")) > 0.3).astype(int)
    return x, y


def _fit(encoder: Any, columns: Any = ("city",)) -> Any:
    x, y = _frame()
    ct = make_column_transformer((encoder, list(columns)), remainder="passthrough")
    return make_pipeline(ct, LogisticRegression()).fit(x, y)


class Spy:
    """The estimator's predict_proba, counting its calls."""

    def __init__(self, pipe: Any) -> None:
        self.fn = pipe.predict_proba
        self.calls = 0
        pipe.predict_proba = self

    def __call__(self, frame: Any) -> Any:
        self.calls += 1
        return self.fn(frame)


def _message(what: str, encoder: str = "OneHotEncoder") -> str:
    return (
        f"{what}: column 'city' holds 'berlin', a category the model was not fitted on: its {encoder} (in the "
        f"Pipeline) knows only {KNOWN} there and refuses any other (handle_unknown='error')"
    )


def test_a_fill_row_with_a_category_the_encoder_does_not_know_is_refused_before_any_model_call() -> None:
    """explain, and find_mistakes with the row as a list or a Series: whybox's error naming fill, the column, the
    value and the categories the encoder knows, and the model never called (it would refuse every such row)."""
    x, y = _frame()
    pipe = _fit(OneHotEncoder())
    spy = Spy(pipe)
    calls = [
        lambda: whybox.explain(pipe, x[:3], "feature_ablation", target=1, fill=[0, 0, "berlin"]),
        lambda: whybox.find_mistakes(pipe, x, y, method="feature_ablation", fill=[0, 0, "berlin"]),
        lambda: whybox.find_mistakes(
            pipe, x, y, method="feature_ablation", fill=pd.Series({"a": 0.0, "b": 0.0, "city": "berlin"})
        ),
        lambda: whybox.evaluate(
            pipe,
            x[:3],
            whybox.explain(pipe, x[:3], "feature_ablation", target=1, fill=[0, 0, "rome"]),
            "deletion",
            fill=[0, 0, "berlin"],
        ),
    ]
    for call in calls:
        spy.calls = 0
        with pytest.raises(InvalidParameterError) as info:
            call()
        assert _message("fill") in str(info.value)
        assert "give fill a category the model knows" in str(info.value)
        if call is not calls[-1]:  # evaluate: the explanation it scores is made first
            assert spy.calls == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda: _fit(OrdinalEncoder()),
        lambda: _fit(OneHotEncoder(), columns=[2]),  # picked by position
        lambda: _fit(make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder())),
    ],
    ids=["ordinal", "by-position", "after-an-imputer"],
)
def test_the_known_categories_are_read_through_the_usual_pipelines(make: Any) -> None:
    pipe = make()
    assert model_categories(pipe, ["a", "b", "city"]) == {"city": ["oslo", "paris", "rome"]}
    x, _ = _frame()
    encoder = "OrdinalEncoder" if "Ordinal" in repr(pipe) else "OneHotEncoder"
    with pytest.raises(InvalidParameterError, match=r"^" + _message("fill", encoder).replace("(", r"\(")[:60]):
        whybox.explain(pipe, x[:3], "feature_ablation", target=1, fill=[0, 0, "berlin"])


def _ablation_oracle(pipe: Any, x: Any, ref: list[Any], c: int) -> np.ndarray:
    """Feature ablation with a reference row, straight from its definition: p(x) - p(x with column j := ref_j)."""
    p = pipe.predict_proba(x)[:, c]
    out = np.empty((len(x), x.shape[1]))
    for j, col in enumerate(x.columns):
        hidden = x.copy()
        hidden[col] = ref[j]
        out[:, j] = p - pipe.predict_proba(hidden)[:, c]
    return out


def test_a_category_the_model_knows_but_the_inputs_lack_and_an_encoder_that_ignores_unknowns_are_taken() -> None:
    """No false refusal: 'rome' on rows of Oslo only (a code the inputs never gave it, known to the encoder), and
    'berlin' for an encoder fitted with handle_unknown='ignore', explain as the definition says."""
    x, _ = _frame()
    oslo = x[x.city == "oslo"][:3]
    strict, lenient = _fit(OneHotEncoder()), _fit(OneHotEncoder(handle_unknown="ignore"))
    assert model_categories(lenient, ["a", "b", "city"]) == {}
    for pipe, ref in ((strict, [0.0, 0.0, "rome"]), (lenient, [0.0, 0.0, "berlin"])):
        e = whybox.explain(pipe, oslo, "feature_ablation", target=1, fill=ref)
        np.testing.assert_allclose(e.attributions.numpy(), _ablation_oracle(pipe, oslo, ref, 1), rtol=0, atol=1e-12)


def test_inputs_and_background_rows_with_an_unknown_category_are_refused_by_their_own_name() -> None:
    x, _ = _frame()
    pipe = _fit(OneHotEncoder())
    spy = Spy(pipe)
    with pytest.raises(InvalidInputError) as info:
        whybox.explain(pipe, x[:3].assign(city="berlin"), "feature_ablation", target=1, fill=[0, 0, "rome"])
    assert _message("inputs") in str(info.value)
    background = x[:4].assign(city=["berlin", "rome", "rome", "oslo"])
    with pytest.raises(InvalidParameterError) as info:
        whybox.explain(pipe, x[:3], "kernel_shap", target=1, background=background, n_samples=32)
    assert _message("background") in str(info.value)
    assert spy.calls == 0


def test_an_encoder_whybox_cannot_read_has_its_refusal_named_by_the_table_that_brought_the_value() -> None:
    """Behind a FunctionTransformer (which may change the values) the encoder's categories are not read; the
    estimator's own refusal is turned into whybox's error for the fill (its value, not the inputs' own)."""
    x, _ = _frame()
    pipe = _fit(make_pipeline(FunctionTransformer(lambda d: d), OneHotEncoder()))
    assert model_categories(pipe, ["a", "b", "city"]) == {}
    with pytest.raises(InvalidParameterError) as info:
        whybox.explain(pipe, x[:3], "feature_ablation", target=1, fill=[0, 0, "berlin"])
    assert "the model refused a category it was not fitted on (Found unknown categories ['berlin']" in str(info.value)
    assert "fill: column 'city' holds 'berlin'. Give fill categories the model was fitted on." in str(info.value)
    with pytest.raises(InvalidInputError, match=r"inputs: column 'city' holds 'berlin'\. Give inputs categories"):
        whybox.explain(pipe, x[:3].assign(city="berlin"), "feature_ablation", target=1, fill=[0, 0, "rome"])


PIPELINE_PY = """
import numpy as np, pandas as pd
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder


def make():
    rng = np.random.default_rng(0)
    n = 120
    df = pd.DataFrame({"age": rng.normal(40, 10, n), "city": rng.choice(["oslo", "rome", "paris"], n)})
    y = np.where(df.city == "rome", "yes", "no")
    ct = make_column_transformer((OneHotEncoder(), ["city"]), remainder="passthrough")
    return make_pipeline(ct, LogisticRegression(max_iter=1000)).fit(df, y)
"""


def test_debug_on_the_command_line_names_the_unknown_category_of_its_fill(tmp_path: Path) -> None:
    model = tmp_path / "pipe.py"
    model.write_text(PIPELINE_PY, encoding="utf-8")
    rng = np.random.default_rng(1)
    lines = ["age,city,label"]
    for _ in range(20):
        age = rng.normal(40, 10)
        lines.append(f"{age:.3f},{rng.choice(['oslo', 'rome', 'paris'])},{'yes' if age > 40 else 'no'}")
    csv = tmp_path / "rows.csv"
    csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    base = ["debug", "--model", f"{model}:make", str(csv), "--label-column", "label", "--method", "lima"]
    res = CliRunner().invoke(cli, [*base, "--option", 'fill=[40, "berlin"]', "--out", str(tmp_path / "d")])
    assert res.exit_code != 0
    text = " ".join(res.output.split())
    assert "fill: column 'city' holds 'berlin', a category the model was not fitted on" in text
    assert f"knows only {KNOWN} there" in text
    assert "ValueError" not in text
    res = CliRunner().invoke(cli, [*base, "--option", 'fill=[40, "rome"]', "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output


ZERO_D = [torch.tensor(0.0), torch.tensor(0), np.array(0.0), np.float32(0.0), np.int64(0)]


@pytest.mark.parametrize("fill", ZERO_D, ids=["tensor-float", "tensor-int", "ndarray", "np.float32", "np.int64"])
def test_a_fill_of_one_number_as_a_0d_tensor_or_array_is_refused_on_categorical_rows_as_the_number(fill: Any) -> None:
    """A 0-d tensor or array broadcasts to every column as the number does: it set every hidden city to code 0 (an
    arbitrary city, the first of the vocabulary) where the number is refused."""
    x, y = _frame()
    pipe = _fit(OneHotEncoder())
    arbitrary = (
        r"inputs have text or categorical columns \('city'\), which (a fill of|fill=).* would set to an arbitrary"
    )
    with pytest.raises(InvalidParameterError, match=arbitrary):
        whybox.explain(pipe, x[:3], "feature_ablation", target=1, fill=fill)
    with pytest.raises(InvalidParameterError, match=arbitrary):
        whybox.find_mistakes(pipe, x, y, method="feature_ablation", fill=fill)
    e = whybox.explain(pipe, x[:3], "feature_ablation", target=1, fill=[0, 0, "rome"])
    with pytest.raises(InvalidParameterError, match="would set to an arbitrary value"):
        whybox.evaluate(pipe, x[:3], e, "deletion", fill=fill)


@pytest.mark.parametrize("fill", ZERO_D, ids=["tensor-float", "tensor-int", "ndarray", "np.float32", "np.int64"])
def test_a_0d_fill_on_numeric_rows_is_still_the_number(fill: Any) -> None:
    x, y = _frame()
    numeric = LogisticRegression().fit(x[["a", "b"]], y)
    got = whybox.explain(numeric, x[["a", "b"]][:4], "feature_ablation", target=1, fill=fill)
    want = whybox.explain(numeric, x[["a", "b"]][:4], "feature_ablation", target=1, fill=0.0)
    torch.testing.assert_close(got.attributions, want.attributions, rtol=0, atol=0)
