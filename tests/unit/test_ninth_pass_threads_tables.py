"""Two threads calling one scikit-learn adapter keep their own record of the tables a call coded.

With the encoder out of whybox's sight (behind a FunctionTransformer), a category the model refuses is named by the
table of this call that brought it in. The record was one per adapter: a thread refused for its inputs while another
thread coded a fill holding the same value was told its (valid) fill was at fault.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import whybox
from whybox.errors import InvalidInputError, InvalidParameterError

pd = pytest.importorskip("pandas")
sk = pytest.importorskip("sklearn")


def test_a_thread_s_refused_inputs_are_not_blamed_on_another_thread_s_fill() -> None:
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

    gate, inside = threading.Event(), threading.Event()

    def ident(d: object) -> object:
        if threading.current_thread().name == "A":
            inside.set()
            gate.wait(20)  # A is held inside its model call while B codes and runs its own call
        return d

    rng = np.random.default_rng(0)
    n = 60
    x = pd.DataFrame(
        {
            "a": rng.normal(size=n).round(3),
            "city": rng.choice(["oslo", "rome", "berlin"], n),
            "home": rng.choice(["oslo", "rome"], n),
        }
    )
    y = ((x.a + (x.city == "rome")) > 0.3).astype(int)
    enc = make_pipeline(FunctionTransformer(ident), OneHotEncoder())
    pipe = make_pipeline(
        make_column_transformer((enc, ["city", "home"]), remainder="passthrough"), LogisticRegression()
    )
    adapter = whybox.adapt(pipe.fit(x, y))
    good = x[x.city != "berlin"][:3]
    rows_a, fill_a = good.assign(home="berlin"), good.iloc[0].copy()  # A's inputs hold the unknown home
    fill_b = good.iloc[0].copy()
    fill_b["home"] = "berlin"  # B's fill holds it
    caught: dict[str, BaseException] = {}

    def run(name: str, rows: object, fill: object) -> None:
        try:
            whybox.explain(adapter, rows, "feature_ablation", fill=fill, target=1)
        except Exception as exc:  # recorded for the assertions below
            caught[name] = exc

    t = threading.Thread(target=run, args=("A", rows_a, fill_a), name="A")
    t.start()
    assert inside.wait(20)
    run("B", good, fill_b)
    gate.set()
    t.join(30)
    assert isinstance(caught["B"], InvalidParameterError) and "fill: column 'home' holds 'berlin'" in str(caught["B"])
    assert isinstance(caught["A"], InvalidInputError), caught["A"]
    assert "inputs: column 'home' holds 'berlin'" in str(caught["A"])


def test_an_adapter_subclass_defining_eq_is_explained_and_keeps_its_own_tables() -> None:
    # the per-thread record is keyed by identity: a subclass defining __eq__ alone has no hash, and one hashing by
    # value would share its record with an equal adapter of the same estimator
    from sklearn.linear_model import LogisticRegression

    from whybox.models.adapter import SklearnAdapter

    class Named(SklearnAdapter):
        def __eq__(self, other: object) -> bool:
            return isinstance(other, Named) and other.model is self.model

    class ByValue(Named):
        def __hash__(self) -> int:
            return id(self.model)

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)), (rng.normal(size=20) > 0).astype(int)
    est = LogisticRegression().fit(x, y)
    out = whybox.explain(Named(est), x[:2], "feature_ablation", target=1)
    assert out.attributions.shape == (2, 3)
    a, b = ByValue(est), ByValue(est)
    assert a == b and hash(a) == hash(b)
    a.tables["inputs"] = ("inputs", {})
    assert b.tables == {} and "inputs" in a.tables
