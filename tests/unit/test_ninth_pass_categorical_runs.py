"""Ninth-pass findings on the refusal of categories a scikit-learn encoder was not fitted on, each a property the
earlier code broke: a run's CSV (``whybox compare``) with one row of an unseen category was refused as a whole at
load time (with the message of a reference row), where only that row failed before and the run went on; where the
encoder cannot be read (behind a ``FunctionTransformer``), the estimator's refusal was pinned on the fill whenever
the fill held the value in any column (the inputs' column was the one refused), and on a table of an earlier call of
the same adapter; and a run store opened on a relative path wrote nowhere once the working folder changed (a false
``RunReplacedError``)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pd = pytest.importorskip("pandas")

from click.testing import CliRunner  # noqa: E402
from sklearn.compose import make_column_transformer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder  # noqa: E402

import whybox  # noqa: E402
from whybox.cli.main import main as cli  # noqa: E402
from whybox.errors import InvalidInputError, InvalidParameterError, UnknownCategoryError, WhyboxError  # noqa: E402
from whybox.models.categorical import encode_frame  # noqa: E402
from whybox.runs.store import MetricValue, RunStore, SampleResult, UnitResult  # noqa: E402

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

ROWS = [
    ("48.216", "rome", "yes"),
    ("43.304", "rome", "yes"),
    ("49.054", "paris", "no"),
    ("44.464", "berlin", "no"),  # a city the encoder was not fitted on
    ("34.630", "paris", "no"),
    ("43.646", "oslo", "no"),
    ("42.941", "rome", "yes"),
]


def _compare(tmp_path: Path, name: str, rows: list[tuple[str, str, str]]) -> tuple[Any, sqlite3.Connection]:
    csv = tmp_path / f"{name}.csv"
    csv.write_text("age,city,label\n" + "".join(",".join(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / f"out_{name}"
    res = CliRunner().invoke(
        cli,
        ["compare", "--model", f"{tmp_path / 'pipe.py'}:make", str(csv), "--label-column", "label",
         "--methods", "feature_ablation", "--metrics", "deletion", "--metric-option", 'deletion.fill=[40, "rome"]',
         "--option", 'feature_ablation.fill=[40, "rome"]', "--out", str(out), "--no-report"],
    )  # fmt: skip
    return res, sqlite3.connect(out / "run.sqlite")


def test_a_run_s_csv_row_of_an_unseen_category_fails_alone_with_whybox_s_reason(tmp_path: Path) -> None:
    """The documented rule of runs: a row the model fails on gets class -1 and its reason, and the run goes on.
    The row of 'berlin' fails alone, its reason naming the column, the value and the categories the encoder knows;
    every other row's prediction and deletion score is the one of the same run without that row."""
    (tmp_path / "pipe.py").write_text(PIPELINE_PY, encoding="utf-8")
    res, db = _compare(tmp_path, "rows", ROWS)
    assert "1 failed (sample, method) pairs" in res.output, res.output
    failed = db.execute("SELECT idx, prediction, reason FROM samples WHERE reason IS NOT NULL").fetchall()
    assert [(i, p) for i, p, _ in failed] == [(3, -1)]
    reason = failed[0][2]
    assert reason.startswith("InvalidInputError: the model refused a category it was not fitted on (Found unknown")
    assert f"input {str(tmp_path / 'rows.csv')!r}: column 'city' holds 'berlin', a category the model was not" in reason
    assert "knows only 'oslo', 'paris', 'rome' there" in reason
    good, good_db = _compare(tmp_path, "good", [r for r in ROWS if r[1] != "berlin"])
    assert good.exit_code == 0, good.output

    def scores(conn: sqlite3.Connection, skip: int | None) -> list[tuple[Any, ...]]:
        rows = conn.execute(
            "SELECT s.prediction, s.probability, m.value FROM samples s JOIN metric_values m ON m.idx = s.idx "
            "ORDER BY s.idx"
        ).fetchall()
        kept = conn.execute("SELECT idx FROM samples ORDER BY idx").fetchall()
        assert len(rows) == len(kept) - (skip is not None)
        return rows

    assert scores(db, 3) == scores(good_db, None)


def test_data_rows_inputs_and_options_are_told_apart_by_their_kind_not_by_their_name() -> None:
    """encode_frame's ``kind``, not the table's name, says which error an unseen category is (and whether it is one
    at all): inputs named anything are InvalidInputError, an option named "inputs" InvalidParameterError, data rows
    are coded (each fails alone when the model is asked)."""
    rng = np.random.default_rng(0)
    x = pd.DataFrame({"age": rng.normal(40, 10, 30), "city": rng.choice(["oslo", "rome"], 30)})
    pipe = make_pipeline(
        make_column_transformer((OneHotEncoder(), ["city"]), remainder="passthrough"), LogisticRegression()
    ).fit(x, (x.city == "rome").astype(int))
    frame = x[:2].assign(city=["rome", "berlin"])
    with pytest.raises(InvalidInputError, match=r"^my rows: column 'city' holds 'berlin'.*explain rows of the"):
        encode_frame(frame, whybox.adapt(pipe), "my rows", "inputs")
    with pytest.raises(InvalidParameterError, match=r"^inputs: column 'city' holds 'berlin'.*give inputs a category"):
        encode_frame(frame, whybox.adapt(pipe), "inputs", "option")
    adapter = whybox.adapt(pipe)
    codes = encode_frame(frame, adapter, "inputs", "data")
    assert adapter.categories["city"].values[int(codes[1, 1])] == "berlin"
    with pytest.raises(InvalidInputError, match=r"\): inputs: column 'city' holds 'berlin', a category the model"):
        adapter.scores(codes)
    assert adapter.scores(codes[:1]).shape == (1, 2)  # the row of a known city is scored


def _blind(columns: list[str], cities: tuple[str, ...] = ("oslo", "rome", "berlin")) -> tuple[Any, Any]:
    """A pipeline whose OneHotEncoder on ``columns`` sits behind a FunctionTransformer (whybox cannot read it):
    'city' fitted on ``cities``, 'home' on oslo and rome."""
    rng = np.random.default_rng(0)
    n = 60
    x = pd.DataFrame(
        {
            "a": rng.normal(size=n).round(3),
            "city": rng.choice(list(cities), n),
            "home": rng.choice(["oslo", "rome"], n),
        }
    )[["a", *columns]]
    y = ((x.a + (x.city == "rome")) > 0.3).astype(int)
    enc = make_pipeline(FunctionTransformer(lambda d: d), OneHotEncoder())
    ct = make_column_transformer((enc, columns), remainder="passthrough")
    return make_pipeline(ct, LogisticRegression()).fit(x, y), x


def test_a_refusal_that_two_tables_could_have_brought_is_not_pinned_on_one() -> None:
    """'berlin' in the fill's city (which the encoder knows) and in the inputs' home (which it does not): sklearn's
    message names the value only, so whybox lists both candidates, quotes the estimator's message and raises the
    general error (a ValueError, neither the inputs' nor an option's). With a fill of known cities the inputs'
    home alone brought it: InvalidInputError, naming that column."""
    pipe, x = _blind(["city", "home"])
    rows = x[x.city != "berlin"][:3].assign(home="berlin")
    with pytest.raises(UnknownCategoryError) as info:
        whybox.explain(pipe, rows, "feature_ablation", target=1, fill=[0.0, "berlin", "oslo"])
    assert isinstance(info.value, ValueError) and isinstance(info.value, WhyboxError)
    assert not isinstance(info.value, (InvalidInputError, InvalidParameterError))
    text = str(info.value)
    assert "(Found unknown categories ['berlin'] in column 1 during transform)" in text
    assert "fill: column 'city' holds 'berlin'" in text and "inputs: column 'home' holds 'berlin'" in text
    with pytest.raises(InvalidInputError) as only:
        whybox.explain(pipe, rows, "feature_ablation", target=1, fill=[0.0, "rome", "oslo"])
    assert "): inputs: column 'home' holds 'berlin'. Give inputs categories" in str(only.value)
    assert "'city'" not in str(only.value)


def test_the_table_of_a_refusal_is_read_from_this_call_not_from_an_earlier_call_of_the_adapter() -> None:
    """One adapter, two calls: a fill of 'berlin' (refused as the fill's), then inputs of 'berlin' with a fill of
    'rome': the inputs' (the fill of the first call brought 'berlin' into the vocabulary first, and was named)."""
    pipe, x = _blind(["city"], ("oslo", "rome", "paris"))
    adapter = whybox.adapt(pipe)
    known = x[x.city != "berlin"][:3]
    with pytest.raises(InvalidParameterError, match=r"\): fill: column 'city' holds 'berlin'\. Give fill"):
        whybox.explain(adapter, known, "feature_ablation", target=1, fill=[0.0, "berlin"])
    with pytest.raises(InvalidInputError, match=r"\): inputs: column 'city' holds 'berlin'\. Give inputs"):
        whybox.explain(adapter, known.assign(city="berlin"), "feature_ablation", target=1, fill=[0.0, "rome"])
    # inputs as codes (coded in an earlier call): these rows hold no 'berlin', so the fill of this call is the
    # only table that brought it (not the inputs of the call before)
    codes = torch.tensor([[0.1, float(adapter.categories["city"].index["rome"])]], dtype=torch.float64)
    with pytest.raises(InvalidParameterError, match=r"\): fill: column 'city' holds 'berlin'\. Give fill"):
        whybox.explain(adapter, codes, "feature_ablation", target=1, fill=[0.0, "berlin"])


def _unit(shard: int, value: float) -> UnitResult:
    samples = [
        SampleResult(index=shard * 2 + k, attributions=np.full((1, 2, 2), value + k), metrics={"m": MetricValue(value)})
        for k in range(2)
    ]
    return UnitResult(shard=shard, method="saliency", samples=samples, costs={"explain": (0.1, 1, 1)})


def test_a_store_opened_on_a_relative_path_keeps_writing_there_when_the_working_folder_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    store = RunStore("run", fingerprints={"config": "c", "data": "d", "weights": "w", "versions": "v"}, config={})
    store.commit(_unit(0, 1.0))
    monkeypatch.chdir(tmp_path / "b")  # a notebook cell or the model's own code moves the working folder
    store.commit(_unit(1, 2.0))
    assert store.path == tmp_path / "a" / "run"
    assert sorted(store.done_units()) == [(0, "saliency"), (1, "saliency")]
    assert sorted(p.name for p in (tmp_path / "a" / "run" / "arrays" / "saliency").iterdir()) == [
        "000000.npy",
        "000001.npy",
    ]
    assert os.listdir(tmp_path / "b") == []
