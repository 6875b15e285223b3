"""Turn a run directory into a :class:`~whybox.report.run_report.RunReport` (what ``whybox report`` renders).

Everything comes from the run directory alone: the database, the attribution arrays, the stored inputs
(``inputs.npy``) and the display rule and label names kept in the job's config. Means in the leaderboard are
over the samples where a metric has a value; the verdicts use fixed, stated thresholds.
"""

from __future__ import annotations

import inspect
import json
import math
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from whybox.errors import DataFormatError, InvalidParameterError, WhyboxError
from whybox.registry import EXPLAINERS, METRICS
from whybox.report.run_report import ReportMethod, ReportMetric, ReportSample, ReportVerdict, RunReport
from whybox.runs.store import DB_NAME, INPUTS_NAME, UNDEFINED, read_row

__all__ = [
    "SANITY_THRESHOLD",
    "STABILITY_THRESHOLD",
    "STABILITY_THRESHOLDS",
    "load_run_report",
    "method_reading",
    "readings_of",
]

#: Model-parameter randomisation passes when the mean similarity between the original map and the maps of the
#: randomised models (Spearman of |attributions|, averaged over the cascade) is below this.
SANITY_THRESHOLD = 0.5
#: Stability passes when the mean agreement between seeds in the default measure (top-k Jaccard) is at least this.
STABILITY_THRESHOLD = 0.5
#: Stability's pass mark on each measure's own scale (``whybox.metrics.stability``; every one reads higher as more
#: stable): Jaccard in [0, 1]; Kendall's tau in [-1, 1], where 0 is a chance ordering, so 0.5 (three pairs of
#: features in four ordered alike), not the middle of its range; VSI and CSI are percentages (0-100), so half of
#: the top-k features shared, half of the pairs of confidence intervals overlapping. A measure not listed here (a
#: run of another version) gets no verdict.
STABILITY_THRESHOLDS: dict[str, float] = {"jaccard": STABILITY_THRESHOLD, "kendall": 0.5, "vsi": 50.0, "csi": 50.0}

_DESCRIPTIONS = {
    "deletion": "the explained score (the class probability; a one-output model's own output) as the most important "
    "features are removed (area under the curve)",
    "insertion": "the explained score (the class probability; a one-output model's own output) as the most important "
    "features are revealed (area under the curve)",
    "mufidelity": "correlation between attribution sums and output drops over random subsets",
    "road": "explained score with the least relevant features imputed (noisy linear imputation) minus with the most "
    "relevant, halved (one order alone: its score), mean over the fractions",
    "infidelity": "squared error between attribution-predicted and actual output changes under noise",
    "max_sensitivity": "largest change of the map under small input noise",
    "sparseness": "Gini index of the attributions",
    "complexity": "entropy of the attributions",
    "randomization": "similarity to maps of the model with randomised weights (sanity check)",
    "random_logit": "similarity to the map of a random other class",
    "stability": "agreement between runs with different seeds",
    "highest_confidence": "highest class probability reached along insertion",
    "aopc": "average drop of the output over the perturbation curve",
}


def method_reading(method: str, params: Mapping[str, Any]) -> str:
    """How to colour a method's maps (see :mod:`whybox.report.overlay`); ``params`` are the options given (the
    method's defaults fill the rest).

    CAMs (min-max scaled) and RISE (a large constant offset) are relative relevance; Saliency with
    ``abs=True`` and SmoothGrad's squared/variance variants are magnitudes; every other method returns
    attributions whose zero and sign mean something, shown centred on zero even when all share one sign. A method
    whybox does not know (another library's maps, a name from another version) is shown signed: nothing says its
    values are relative or magnitudes, and a signed view hides no sign.
    """
    from whybox.explainers.cam import CAM

    if method not in EXPLAINERS:
        return "signed"
    cls = EXPLAINERS.get(method)
    full: dict[str, Any] = {}
    for c in reversed(cls.__mro__):
        init = c.__dict__.get("__init__")
        if init is not None:
            for p in inspect.signature(init).parameters.values():
                if p.kind is p.KEYWORD_ONLY and p.default is not p.empty:
                    full[p.name] = p.default
    full.update(params)
    if issubclass(cls, CAM) or method == "rise":
        return "relative"
    if full.get("abs") is True or full.get("variant") in ("square", "var"):
        return "positive"
    return "signed"


def readings_of(run_dir: str | Path) -> dict[str, str]:
    """``{method: reading}`` for the methods of the run in ``run_dir``, from their stored options."""
    db = Path(run_dir) / DB_NAME
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM run WHERE key = 'config'").fetchone()
    finally:
        conn.close()
    job = json.loads(row[0]).get("job", {}) if row else {}
    opts = job.get("method_options", {})
    return {m: method_reading(m, opts.get(m, {})) for m in job.get("methods", [])}


def _display(x: np.ndarray, rule: str) -> np.ndarray:
    """A model input ``(C, H, W)`` or ``(H, W)`` as ``(H, W, 3)`` in [0, 1]."""
    img = x.astype(np.float64)
    if img.ndim == 2:  # (H, W): no channel axis
        img = img[None]
    if rule == "imagenet":
        img = (img * 128.0 + 127.0) / 255.0
    img = np.clip(img, 0.0, 1.0)
    if img.shape[0] != 3:  # one channel, or a count that is not RGB: shown as the channel mean in gray
        img = np.repeat(img.mean(0, keepdims=True), 3, axis=0)
    return np.ascontiguousarray(img.transpose(1, 2, 0))


def _cell(v: float, values: list[Any] | None) -> str:
    """A table cell as the report shows it: a coded text column's value (its code's), else the number."""
    if values is not None and float(v).is_integer() and 0 <= int(v) < len(values):
        return str(values[int(v)])
    return f"{v:.4g}"


def word_values(a: np.ndarray, words: list[Any], *, per_element: bool, sum_tokens: bool | None = None) -> np.ndarray:
    """One value per word from a text's stored attributions ``a`` ``(T, D + 1)`` or ``(T, 1)``, as
    :func:`whybox.explain_text` gives them: a gradient method's entries summed over the embedding (the mask channel
    left out) and over the word's tokens, an attention method's or occlusion's token values summed over the word's
    tokens (``sum_tokens``, default ``per_element``); a perturbation method's feature value, the mean over them. ``words`` holds ``[word, token positions]`` pairs. A black-box text model's presence row
    ``(W + 1,)`` holds one value per word (its column)."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        tok = a
    else:
        tok = a[:, :-1].sum(-1) if per_element and a.shape[-1] > 1 else a[:, 0]
    total = per_element if sum_tokens is None else sum_tokens  # each token its own value: the word sums them
    return np.asarray(
        [float(tok[list(ix)].sum() if total else tok[list(ix)].mean()) for _w, ix in words], dtype=np.float64
    )


def signal_picture(x: np.ndarray, *, height: int = 96, width: int = 288) -> np.ndarray:
    """A 1-D signal ``(C, L)`` drawn as ``(height, width, 3)`` in [0, 1]: each channel a line, min-max scaled to its
    own band of the picture's height, time across its whole width (no margins, so that a ``(1, L)`` map resized to
    the picture lies under the time steps it belongs to)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sig = np.asarray(x, dtype=np.float64)
    sig = sig[None] if sig.ndim == 1 else sig
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_axis_off()
    length, channels = sig.shape[1], sig.shape[0]
    t = np.arange(length) + 0.5
    for c in range(channels):
        lo, hi = float(sig[c].min()), float(sig[c].max())
        y = (sig[c] - lo) / (hi - lo) if hi > lo else np.full(length, 0.5)
        ax.plot(t, channels - 1 - c + 0.1 + 0.8 * y, linewidth=0.9, color=f"C{c % 10}")
    ax.set_xlim(0, length)
    ax.set_ylim(0, channels)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba(), dtype=np.float64)[..., :3] / 255.0
    return np.ascontiguousarray(rgba)


def _to_map(a: np.ndarray) -> np.ndarray | None:
    if a.ndim == 3:
        return a.sum(0)
    if a.ndim == 2:
        return a
    return None


def _label(names: list[str] | None, k: int | None) -> str | None:
    if k is None:
        return None
    if names is not None and 0 <= k < len(names):
        return str(names[k])
    return str(k)


#: What the per-sample grid shows of sample ``idx``: its picture (or None), its words (or None) and how a method's
#: stored attributions become what is drawn, ``(array, method) -> map or one value per word``.
SampleView = Callable[[int], tuple[np.ndarray | None, list[str] | None, Callable[[np.ndarray, str], np.ndarray | None]]]


#: a table row shows at most this many ``column=value`` cells in the report (a row of 3,000 columns, or a model's
#: packed inputs, made a page of tens of megabytes); the rest are counted in one last cell
MAX_TABLE_CELLS = 32


def _widest_cells(
    words: list[str], maps: dict[str, np.ndarray | None]
) -> tuple[list[str], dict[str, np.ndarray | None]]:
    """The ``MAX_TABLE_CELLS`` cells of a wide row that matter most to some method (each method's values scaled by
    their largest magnitude, as the report colours them; the largest scaled magnitude over the methods), in column
    order, then a cell counting the others (value 0 under every method)."""
    scaled = []
    for v in maps.values():
        if v is not None and len(v) == len(words):
            a = np.abs(np.nan_to_num(np.asarray(v, dtype=np.float64)))
            scaled.append(a / a.max() if a.max() > 0 else a)
    score = np.max(np.stack(scaled), 0) if scaled else np.zeros(len(words))
    keep = np.sort(np.argsort(-score, kind="stable")[:MAX_TABLE_CELLS])
    more = len(words) - len(keep)
    kept = [words[j] for j in keep] + [f"(+{more} more columns, smaller under every method)"]
    return kept, {
        m: None if v is None or len(v) != len(words) else np.append(np.asarray(v)[keep], 0.0) for m, v in maps.items()
    }


def _sample_view(kind: str, inputs_path: Path, extra: Mapping[str, Any]) -> SampleView | None:
    """How the grid shows a sample of a run of ``kind``: images, signals and sequences as pictures under their maps, table rows
    as ``column=value`` cells and texts as words, coloured per method; None when the run cannot show samples (no
    stored inputs, or a text run from before the words were stored)."""
    if kind == "text":
        spans = extra.get("words")
        if not isinstance(spans, list):
            return None
        from whybox.models.text import _per_element, _sums_tokens

        def text(idx: int) -> Any:
            words = spans[idx] if idx < len(spans) else []
            return (
                None,
                [str(w) for w, _ in words],
                lambda a, m: word_values(a, words, per_element=_per_element(m), sum_tokens=_sums_tokens(m)),
            )

        return text
    if not inputs_path.is_file():
        return None
    x = np.load(inputs_path, mmap_mode="r", allow_pickle=False)
    if kind == "image" and x.ndim == 2:  # rows (N, F) of a run that named no kind (run_job from Python): a table
        kind = "tabular"
    if kind == "tabular":
        columns = extra.get("columns")
        coded = extra.get("categories") or {}

        def table(idx: int) -> Any:
            row = np.asarray(x[idx], dtype=np.float64).reshape(-1)
            names = list(columns) if isinstance(columns, list) and len(columns) == row.size else None
            names = names or [f"x{j}" for j in range(row.size)]
            cells = [f"{c}={_cell(v, coded.get(c))}" for c, v in zip(names, row.tolist(), strict=True)]
            return None, cells, lambda a, m: np.asarray(a, dtype=np.float64).reshape(-1)

        return table
    if kind == "signal":
        return lambda idx: (signal_picture(np.asarray(x[idx])), None, lambda a, m: a.sum(0, keepdims=True))
    if kind == "sequence":  # (T, D): the D features as lines over the T steps, the map summed over them
        return lambda idx: (signal_picture(np.asarray(x[idx]).T), None, lambda a, m: a.sum(-1)[None])
    if kind == "image":
        rule = extra.get("display", "clamp")
        return lambda idx: (_display(np.asarray(x[idx]), rule), None, lambda a, m: _to_map(a))
    return None


def _uneven_means(sums: Mapping[tuple[str, str], list[float]], methods: list[str], metrics: list[str]) -> str:
    """Where a metric's means in the leaderboard are over different numbers of samples (an unfinished run, failed or
    undefined values), how many each method's mean is over; ``""`` where every method has the same count."""
    parts = []
    for k in metrics:
        counts = {m: len(sums.get((m, k), [])) for m in methods}
        if len(set(counts.values())) > 1:
            parts.append(f"{k} over " + ", ".join(f"{m} {n}" for m, n in counts.items()))
    if not parts:
        return ""
    return "means over different samples: " + "; ".join(parts) + " (compare methods with care)"


def load_run_report(run_dir: str | Path, *, title: str | None = None, max_samples: int = 24) -> RunReport:
    """Read the run in ``run_dir`` into a :class:`RunReport`.

    Parameters
    ----------
    run_dir
        A directory written by :func:`whybox.runs.run_job` (finished or not: the report shows what is there).
    title
        Page title (default: "whybox run: <model>").
    max_samples
        Samples read for the per-sample grid (the report shows at most this many).
    """
    run_dir = Path(run_dir)
    db = run_dir / DB_NAME
    if not db.is_file():
        raise InvalidParameterError(
            f"{str(run_dir)!r} holds no run ({DB_NAME} is missing); pass a directory written by `whybox compare`."
        )
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        kv = dict(conn.execute("SELECT key, value FROM run").fetchall())
        config = json.loads(kv.get("config", "{}"))
        job = config.get("job", {})
        extra = config.get("extra", {})
        methods: list[str] = list(job.get("methods", []))
        metrics: list[str] = list(job.get("metrics", []))
        label_names = extra.get("labels")
        samples = conn.execute("SELECT idx, name, label, prediction, probability FROM samples ORDER BY idx").fetchall()
        why_no_prediction = dict(conn.execute("SELECT idx, reason FROM samples WHERE reason IS NOT NULL").fetchall())
        results = conn.execute("SELECT idx, method, status, reason, array, row FROM results").fetchall()
        values = conn.execute("SELECT idx, method, metric, value, curve, reason FROM metric_values").fetchall()
        costs = conn.execute(
            "SELECT method, stage, SUM(seconds), SUM(n_forward), SUM(n_backward) FROM costs GROUP BY method, stage"
        ).fetchall()
    except sqlite3.DatabaseError as exc:  # another program's database, or a damaged one
        raise DataFormatError(
            f"{str(db)!r} is not a whybox run database, or it is damaged ({exc}); pass a directory written by "
            "`whybox compare`."
        ) from None
    finally:
        conn.close()

    by_method_status: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    n_tried: dict[str, int] = defaultdict(int)  # samples the method ran on (the model predicted them)
    failures: list[tuple[str, str, str]] = []
    result_of: dict[tuple[int, str], tuple[str, str | None, str | None, int | None]] = {}
    name_of = {int(i): str(n) for i, n, *_ in samples}
    for idx, method, status, reason, array, row in results:
        if status != "ok" and int(idx) in why_no_prediction:  # the model itself failed: show its reason
            reason = f"no prediction: the model failed on this sample: {why_no_prediction[int(idx)]}"
        result_of[(int(idx), method)] = (status, reason, array, row)
        by_method_status[method][0 if status == "ok" else 1] += 1
        n_tried[method] += int(idx) not in why_no_prediction
        if status != "ok":
            failures.append((name_of.get(int(idx), str(idx)), method, str(reason)))

    # leaderboard and curves
    sums: dict[tuple[str, str], list[float]] = defaultdict(list)
    curve_rows: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    for idx, method, metric, value, curve, reason in values:
        if value is not None and math.isfinite(value):
            sums[(method, metric)].append(float(value))
        elif reason is not None and reason != UNDEFINED and result_of.get((int(idx), method), ("ok",))[0] == "ok":
            failures.append((name_of.get(int(idx), str(idx)), method, f"{metric}: {reason}"))
        if curve is not None and metric in ("deletion", "insertion"):
            stored = json.loads(curve)
            y = stored.get("y")
            if y is not None:
                y = np.asarray(y, dtype=np.float64)
                x = stored.get("x")  # the fraction actually removed at each step (uneven with regions=)
                x = np.asarray(x, dtype=np.float64) if x is not None and len(x) == y.size else _even(y.size)
                curve_rows[(method, metric)].append(np.stack([x, y]))
    leaderboard = {
        m: {k: (float(np.mean(sums[(m, k)])) if sums.get((m, k)) else None) for k in metrics} for m in methods
    }
    curves: dict[str, dict[str, np.ndarray]] = {}
    for (method, metric), rows in sorted(curve_rows.items()):
        curves.setdefault(metric, {})[method] = _mean_curve(rows)

    report_metrics = [
        ReportMetric(k, _direction(k, job.get("metric_options", {}).get(k, {})), _DESCRIPTIONS.get(k, ""))
        for k in metrics
    ]

    # the cost per sample the method ran on: a sample the model failed on cost it nothing
    n_per_method = {m: n_tried[m] for m in methods}
    cost = {(m, st): (s, f, b) for m, st, s, f, b in costs}
    report_methods = []
    for m in methods:
        n = n_per_method[m] or 0
        s, f, b = cost.get((m, "explain"), (None, None, None))
        opts = job.get("method_options", {}).get(m, {})
        report_methods.append(
            ReportMethod(
                name=m,
                options=", ".join(f"{k}={v!r}" for k, v in sorted(opts.items())) or "defaults",
                seconds_per_sample=(s / n) if (s is not None and n) else None,
                n_forward_per_sample=(f / n) if (f is not None and n) else None,
                n_backward_per_sample=(b / n) if (b is not None and n) else None,
                n_done=by_method_status[m][0],
                n_failed=by_method_status[m][1],
            )
        )

    verdicts = []
    measure = _stability_measure(job.get("metric_options", {}).get("stability", {}))
    stable_at = STABILITY_THRESHOLDS.get(measure)
    rules: tuple[tuple[str, str, Callable[[float], bool] | None, str], ...] = (
        ("randomization", "sanity", lambda v: v < SANITY_THRESHOLD, f"passes below {SANITY_THRESHOLD:g}"),
        (
            "stability",
            "stability",
            None if stable_at is None else (lambda v: v >= stable_at),
            f"{measure}, no threshold for this measure"
            if stable_at is None
            else f"{measure}, passes at {stable_at:g} or above",
        ),
    )
    for metric, kind, passes, rule in rules:
        if metric not in metrics:
            continue
        for m in methods:
            v = leaderboard[m].get(metric)
            verdicts.append(
                ReportVerdict(
                    kind=kind,
                    method=m,
                    passed=None if v is None or passes is None else bool(passes(v)),
                    detail=(f"mean {metric} score {v:.3f} ({rule})" if v is not None else f"no {metric} value"),
                )
            )

    report_samples: list[ReportSample] = []
    kind = extra.get("kind", "image")
    view = _sample_view(kind, run_dir / INPUTS_NAME, extra)
    if view is not None:
        for idx, name, label, prediction, probability in samples[: max(0, int(max_samples))]:
            idx = int(idx)
            picture, words, value_of = view(idx)
            maps: dict[str, np.ndarray | None] = {}
            fails: dict[str, str] = {}
            for m in methods:
                status, reason, array, row = result_of.get((idx, m), ("missing", "not computed yet", None, None))
                if status == "ok" and array and row is not None:
                    maps[m] = value_of(read_row(run_dir, array, row), m)
                else:
                    maps[m] = None
                    fails[m] = str(reason)
            if kind == "tabular" and words is not None and len(words) > MAX_TABLE_CELLS:
                words, maps = _widest_cells(words, maps)
            outputs = kv.get("prediction_reads") == "output"
            report_samples.append(
                ReportSample(
                    name=str(name),
                    image=picture,
                    prediction=(
                        ""  # a regressor's (or one score's) output: no class to name, the number says it
                        if outputs and label_names is None and int(prediction) >= 0
                        else (_label(label_names, int(prediction)) or "")
                        if int(prediction) >= 0
                        else "(model failed)"
                    ),
                    probability=None if probability is None else float(probability),
                    probability_is_output=kv.get("prediction_reads") == "output",
                    label=_label(label_names, None if label is None else int(label)),
                    maps=maps,
                    failures=fails,
                    words=words,
                )
            )

    metadata: list[tuple[str, str]] = [
        ("model", str(extra.get("model", "?"))),
        ("inputs", str(extra.get("inputs", "?"))),
        (
            "samples",
            str(len(samples))
            + (f" (the grid shows the first {len(report_samples)})" if len(report_samples) < len(samples) else ""),
        ),
        ("methods", ", ".join(methods)),
        ("metrics", ", ".join(metrics) or "none"),
        ("target", str(job.get("target", "prediction"))),
        (
            "shard size, seed, batch size",
            f"{job.get('shard_size')}, {job.get('seed')}, {job.get('batch_size') or 'default'}",
        ),
    ]
    for k in sorted(kv):
        if k.startswith("fingerprint."):
            metadata.append((k.replace("fingerprint.", "fingerprint: "), kv[k]))
    if job.get("metric_options"):
        metadata.append(("metric options", json.dumps(job.get("metric_options"), sort_keys=True)))
    uneven = _uneven_means(sums, methods, metrics)
    if uneven:
        metadata.append(("leaderboard", uneven))
    return RunReport(
        title=title or f"whybox run: {extra.get('model', run_dir.name)}",
        metadata=metadata,
        methods=report_methods,
        metrics=report_metrics,
        leaderboard=leaderboard,
        curves=curves,
        samples=report_samples,
        verdicts=verdicts,
        failures=failures,
        n_samples=len(samples),
        target=str(job.get("target", "prediction")),
    )


def _even(n: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(n)


def _mean_curve(rows: list[np.ndarray]) -> np.ndarray:
    """The mean of per-sample curves ``(2, n_i)`` (x: the fraction removed, increasing; y: the score) as ``(2, n)``
    on the union of their x: each curve read piecewise linearly between its points, so the mean curve's trapezoid
    area is the mean of the samples' areas (the leaderboard's AUC), also where samples step over uneven regions."""
    if all(r.shape == rows[0].shape and np.array_equal(r[0], rows[0][0]) for r in rows):
        return np.stack([rows[0][0], np.mean(np.stack([r[1] for r in rows]), axis=0)])
    grid = np.unique(np.concatenate([r[0] for r in rows]))
    return np.stack([grid, np.mean(np.stack([np.interp(grid, r[0], r[1]) for r in rows]), axis=0)])


def _stability_measure(options: Mapping[str, Any]) -> str:
    """The measure a run's stability metric scored with: its ``measure`` option, else the metric's default."""
    measure = options.get("measure") if isinstance(options, Mapping) else None
    if isinstance(measure, str):
        return measure
    from whybox.metrics.stability import Stability

    return str(inspect.signature(Stability).parameters["measure"].default)


def _direction(name: str, options: Mapping[str, Any]) -> bool | None:
    """Whether higher is better for metric ``name`` as the run configured it (``aopc`` with ``order='lerf'`` and
    ``road`` with ``orders='morf'`` read lower as better: ``Metric.result_direction``); the class's direction where
    the options do not build (data-dependent ones kept out of the job's config), ``None`` for an unknown name."""
    if name not in METRICS.names():  # a run of a metric this version no longer has
        return None
    cls = METRICS.get(name)
    try:
        return bool(cls(**{k: v for k, v in options.items() if k in ("order", "orders")}).result_direction())
    except (WhyboxError, TypeError):  # an order this version refuses: the class's own direction
        return getattr(cls, "higher_is_better", None)
