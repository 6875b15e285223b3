#!/usr/bin/env python
"""whybox beside shap and lime on scikit-learn classifiers (tabular rows), timed in one process at equal passes.

Case: scikit-learn's breast-cancer data (30 columns), three fitted classifiers (a scaled logistic regression, a
100-tree random forest, a histogram gradient-boosting model), 20 held-out rows, the training means as the one
reference row. Kernel SHAP: whybox ``kernel_shap`` (``fill`` = the means) beside ``shap.KernelExplainer`` (the
means as its background) with the same number of coalitions; LIME: whybox ``lime`` beside lime's
``LimeTabularExplainer`` with the same number of samples (the two sample differently: lime perturbs from the
training statistics, whybox switches columns to the reference; the row is about cost, not values). Both sides call
the same ``predict_proba``; passes are the rows it is asked to score, counted by a wrapper. Every side uses its
defaults otherwise: whybox sends an estimator 4,096 rows a call (``batch_size=None``), shap one call per row, lime
one call per explained row (a second Kernel SHAP row shows whybox at 64 rows a call, the torch models'
default). The calls of a row of the table alternate round by round; the ratio is the median of
per-round ratios whybox / peer.

A last row explains raw text columns: three columns binned into "low" / "mid" / "high" text, one-hot encoded
inside a Pipeline; whybox on the DataFrame (it codes the text columns), shap on the same rows as an object array.

Run ``python bench/tabular.py [--quick] [--rounds N]`` from the repository root. Writes
``bench/results/tabular.md`` and ``bench/results/tabular.json``. Offline: the data ships with scikit-learn.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


class Counting:
    """``predict_proba`` of a fitted estimator, counting the rows and calls it is asked to score; installed on the
    estimator itself, so whybox (which looks the method up on it) and the peers (given it) are counted alike."""

    def __init__(self, model: Any) -> None:
        self.model, self.rows, self.calls = model, 0, 0
        self.method = type(model).predict_proba
        model.predict_proba = self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.rows += len(x)
        self.calls += 1
        return self.method(self.model, x)


def models() -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    xtr, xte, ytr, _ = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    fitted = {
        "logistic regression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(xtr, ytr),
        "random forest (100 trees)": RandomForestClassifier(100, random_state=0).fit(xtr, ytr),
        "gradient boosting (hist)": HistGradientBoostingClassifier(random_state=0).fit(xtr, ytr),
    }
    return fitted, xtr, xte


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timed_pair(
    ours: Callable[[], Any], peer: Callable[[], Any], rounds: int, n_rows: int, e: Any, counts: tuple[int, int, int]
) -> dict[str, Any]:
    """Time ``ours`` and ``peer`` alternately for ``rounds`` rounds (the order flips each round): per-row seconds
    (medians), the median and range of the per-round ratios, and the passes and calls (``counts``: whybox's calls,
    the peer's scored rows and calls; whybox's rows from its explanation ``e``)."""
    ours_s, peer_s, ratios = [], [], []
    for r in range(rounds):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if r % 2:
                b, a = timed(peer), timed(ours)
            else:
                a, b = timed(ours), timed(peer)
        ours_s.append(a)
        peer_s.append(b)
        ratios.append(a / b)
    ours_calls, peer_rows, peer_calls = counts
    return {
        "ours_passes_per_row": e.meta["n_forward"] / n_rows,
        "peer_passes_per_row": peer_rows / n_rows,
        "ours_calls": ours_calls,
        "peer_calls": peer_calls,
        "ours_s_per_row": statistics.median(ours_s) / n_rows,
        "peer_s_per_row": statistics.median(peer_s) / n_rows,
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import shap
    from lime.lime_tabular import LimeTabularExplainer

    import whybox

    torch.set_num_threads(1)
    fitted, xtr, xte = models()
    rows = xte[: 5 if args.quick else 20]
    means = xtr.mean(0)
    n = 200 if args.quick else 500
    out: list[dict[str, Any]] = []
    for name, model in fitted.items():
        pred = model.predict(rows)
        counter = Counting(model)

        def ours_ks(model: Any = model, pred: np.ndarray = pred) -> Any:
            return whybox.explain(model, rows, "kernel_shap", n_samples=n, fill=means, target=pred.tolist())

        def ours_ks64(model: Any = model, pred: np.ndarray = pred) -> Any:
            return whybox.explain(
                model, rows, "kernel_shap", n_samples=n, fill=means, target=pred.tolist(), batch_size=64
            )

        def peer_ks(counter: Counting = counter) -> Any:
            ex = shap.KernelExplainer(counter, means[None, :])
            return ex.shap_values(rows, nsamples=n, silent=True)

        def ours_lime(model: Any = model, pred: np.ndarray = pred) -> Any:
            return whybox.explain(model, rows, "lime", n_samples=n, fill=means, target=pred.tolist(), score="logit")

        lime_ex = LimeTabularExplainer(xtr, mode="classification", random_state=0, discretize_continuous=True)

        def peer_lime(counter: Counting = counter, pred: np.ndarray = pred, ex: Any = lime_ex) -> Any:
            return [
                ex.explain_instance(r, counter, labels=(int(c),), num_features=rows.shape[1], num_samples=n)
                for r, c in zip(rows, pred, strict=True)
            ]

        for method, ours, peer, peer_name in (
            ("kernel_shap", ours_ks, peer_ks, "shap KernelExplainer"),
            ("kernel_shap, batch_size=64", ours_ks64, peer_ks, "shap KernelExplainer"),
            ("lime", ours_lime, peer_lime, "lime LimeTabularExplainer"),
        ):
            counter.rows = counter.calls = 0
            e = ours()  # warm-up, and the pass counts
            ours_calls = counter.calls
            assert counter.rows == e.meta["n_forward"], (counter.rows, e.meta["n_forward"])
            counter.rows = counter.calls = 0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                peer()
            peer_rows, peer_calls = counter.rows, counter.calls
            row = {"model": name, "method": method, "peer": peer_name, "rows": len(rows), "samples": n}
            out.append(row | timed_pair(ours, peer, args.rounds, len(rows), e, (ours_calls, peer_rows, peer_calls)))
            print(f"{name:28s} {method:12s} ratio {out[-1]['ratio']:.3f}", flush=True)
    out.append(text_columns(args, rows, n))
    print(f"{out[-1]['model']:28s} {out[-1]['method']:12s} ratio {out[-1]['ratio']:.3f}", flush=True)
    return {"rows": out, "samples": out[-1]["samples"]}  # the text-column row's coalition samples (the note)


def text_columns(args: argparse.Namespace, rows_array: np.ndarray, n: int) -> dict[str, Any]:
    """Kernel SHAP on raw text columns: the breast-cancer table with three columns binned into "low" / "mid" /
    "high" text, a Pipeline that one-hot encodes them (a ColumnTransformer by name) and scales the rest, explained
    on the raw DataFrame by whybox (which codes the text columns and decodes them before each call) and by shap's
    KernelExplainer on the same rows as an object array (shap's string support), with the same reference row (the
    training mode of each text column, the mean of the others) and as many coalitions (each side samples its own)."""
    import pandas as pd
    import shap
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    import whybox

    data = load_breast_cancer(as_frame=True)
    frame, y = data.frame.drop(columns="target"), data.target
    text = ["mean radius", "mean texture", "worst area"]
    for c in text:
        frame[c] = pd.qcut(frame[c], 3, labels=["low", "mid", "high"]).astype(str)
    xtr, xte, ytr, _ = train_test_split(frame, y, test_size=0.3, random_state=0, stratify=y)
    numbers = [c for c in frame.columns if c not in text]
    pipe = make_pipeline(
        ColumnTransformer([("text", OneHotEncoder(), text), ("num", StandardScaler(), numbers)]),
        LogisticRegression(max_iter=2000),
    ).fit(xtr, ytr)
    rows = xte.iloc[: len(rows_array)]
    ref = pd.Series({c: xtr[c].mode()[0] if c in text else xtr[c].mean() for c in frame.columns})
    pred = pipe.predict(rows)
    counter = Counting(pipe)
    columns = list(frame.columns)

    def ours() -> Any:
        return whybox.explain(pipe, rows, "kernel_shap", n_samples=n, fill=ref, target=pred.tolist())

    def peer() -> Any:
        ex = shap.KernelExplainer(lambda a: counter(pd.DataFrame(a, columns=columns)), ref.to_numpy()[None, :])
        return ex.shap_values(rows.to_numpy(), nsamples=n, silent=True)

    counter.rows = counter.calls = 0
    e = ours()
    ours_calls = counter.calls
    assert counter.rows == e.meta["n_forward"], (counter.rows, e.meta["n_forward"])
    counter.rows = counter.calls = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = np.asarray(peer())
    peer_rows, peer_calls = counter.rows, counter.calls
    same = np.abs(e.attributions.numpy() - theirs[np.arange(len(rows)), :, pred]).max()
    row = {
        "model": "pipeline, 3 raw text columns (one-hot)",
        "method": f"kernel_shap (max diff {same:.1e})",
        "peer": "shap KernelExplainer (object array)",
        "rows": len(rows),
        "samples": n,
    }
    return row | timed_pair(ours, peer, args.rounds, len(rows), e, (ours_calls, peer_rows, peer_calls))


def write(result: dict[str, Any], args: argparse.Namespace) -> None:
    from importlib.metadata import version

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    head = (
        f"- date: {_dt.datetime.now().isoformat(timespec='seconds')}; {platform.platform()}; Python "
        f"{platform.python_version()}; torch {torch.__version__} (1 thread); scikit-learn {version('scikit-learn')}; "
        f"shap {version('shap')}; lime {version('lime')}; {args.rounds} rounds"
    )
    lines = [
        "# whybox vs shap / lime on scikit-learn classifiers (tabular)",
        "",
        head,
        "- breast cancer, 30 columns; the training means as the reference row; passes = rows predict_proba scored "
        "per explained row; calls = predict_proba calls in all; ratio = whybox / peer time, median of per-round "
        "ratios (min-max).",
        "- LIME rows compare cost only: lime perturbs from the training statistics, whybox switches columns to the "
        "reference.",
        "- The last row explains raw text columns (three columns binned into low/mid/high, one-hot encoded inside the "
        "pipeline): whybox on the DataFrame, shap on the same rows as an object array. Both sample "
        f"{result['samples']} of the 2^30 "
        "coalitions, each its own, so their values differ by sampling (max diff: the largest difference); "
        "tests/unit/test_categorical.py holds the two equal where both are exact (4 columns).",
        "",
        "| model | method | peer | samples | passes/row whybox | passes/row peer | calls whybox | calls peer | "
        "whybox s/row | peer s/row | ratio (min-max) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['method']} | {r['peer']} | {r['samples']} | {r['ours_passes_per_row']:.0f} | "
            f"{r['peer_passes_per_row']:.0f} | {r['ours_calls']} | {r['peer_calls']} | {r['ours_s_per_row'] * 1e3:.2f} ms | "
            f"{r['peer_s_per_row'] * 1e3:.2f} ms | {r['ratio']:.3f} ({r['ratio_min']:.3f}-{r['ratio_max']:.3f}) |"
        )
    (out / "tabular.md").write_text("\n".join(lines) + "\n")
    (out / "tabular.json").write_text(json.dumps({"header": head, **result}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="5 rows, 200 samples")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    args = p.parse_args(argv)
    write(run(args), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
