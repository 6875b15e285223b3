"""The self-contained HTML report of a dataset run (``whybox report RUN_DIR``).

The run store turns its database into a :class:`RunReport`; this module only renders that structure. The
page is one file: every picture (inputs, overlays, curve figures) is an inline ``data:image/png;base64``
URI, there is no script, and a Content-Security-Policy (:data:`RUN_REPORT_CSP`) refuses everything from the
network. Every string from the run (file names, labels, failure reasons, metadata, options) goes through
jinja's autoescape, and no link is built from data.

Sections: run metadata, leaderboard, cost per method, curve figures, sanity and stability verdicts, a
per-sample grid (capped at ``max_samples`` rows) and the failures.
"""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from whybox.errors import InvalidInputError, InvalidParameterError, did_you_mean
from whybox.report.html import _environment, write_text_atomic
from whybox.report.overlay import READINGS, _range_hint, overlay

__all__ = [
    "RUN_REPORT_CSP",
    "ReportMethod",
    "ReportMetric",
    "ReportSample",
    "ReportVerdict",
    "RunReport",
    "render_run_report",
    "write_run_report",
]

#: No script, nothing from the network or the disk: images only as data: URIs, styles only inline.
RUN_REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_SMALL = 64  # images smaller than this (e.g. 8 x 8 digits) are shown enlarged with crisp pixels
_CURVE_DPI = 80
_DASH = "–"


# ---------------------------------------------------------------------------------------------- the input
@dataclass(frozen=True)
class ReportSample:
    """One sample of the run: its input, the model's prediction and each method's map.

    Shapes
    ------
    image
        ``(H, W, 3)`` float in [0, 1], the display form of the input; ``None`` for a text (``words``).
    maps
        ``method -> (H', W')`` map of any real values and any size (resized bilinearly to ``(H, W)``), or
        ``None`` when the method failed on this sample; for a text or a table row ``(len(words),)``, one value per
        word or column.
    words
        A text's words in reading order, or a table row's ``column=value`` cells (the row shows them coloured by
        each method's values), or ``None``.
    """

    name: str
    image: np.ndarray | None
    prediction: str
    probability: float | None
    label: str | None
    maps: dict[str, np.ndarray | None]
    failures: dict[str, str]
    words: list[str] | None = None
    probability_is_output: bool = False


@dataclass(frozen=True)
class ReportMethod:
    """One method of the run: its options (text), mean cost per sample and how many samples it did."""

    name: str
    options: str
    seconds_per_sample: float | None
    n_forward_per_sample: float | None
    n_backward_per_sample: float | None
    n_done: int
    n_failed: int


@dataclass(frozen=True)
class ReportMetric:
    """One metric of the leaderboard; ``higher_is_better`` is ``None`` when the metric has no direction."""

    name: str
    higher_is_better: bool | None
    description: str


@dataclass(frozen=True)
class ReportVerdict:
    """A check's outcome for one method: ``kind`` is ``"sanity"`` (model-parameter randomisation) or
    ``"stability"``; ``passed`` is ``None`` when the check could not decide."""

    kind: str
    method: str
    passed: bool | None
    detail: str


@dataclass(frozen=True)
class RunReport:
    """Everything the run report shows, built by the run store from its database.

    Shapes
    ------
    leaderboard
        ``method -> metric -> mean score over samples`` (``None``: no value).
    curves
        ``metric -> method -> (2, n)`` mean curve: the fraction revealed/removed (0 to 1) and the mean score
        there; a ``(n,)`` array is read as scores at evenly spaced fractions.
    """

    title: str
    metadata: list[tuple[str, str]]
    methods: list[ReportMethod]
    metrics: list[ReportMetric]
    leaderboard: dict[str, dict[str, float | None]]
    curves: dict[str, dict[str, np.ndarray]]
    samples: list[ReportSample]
    verdicts: list[ReportVerdict]
    failures: list[tuple[str, str, str]]
    #: the run's number of samples, where ``samples`` holds only the first of them (None: ``samples`` is all)
    n_samples: int | None = None
    #: what the maps explain: ``"prediction"`` (each sample's predicted class) or ``"label"`` (its true label)
    target: str = "prediction"


# ---------------------------------------------------------------------------------------------- helpers
def _finite(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _fmt(x: float | None, spec: str = ".4g") -> str:
    v = _finite(x)
    return _DASH if v is None else format(v, spec)


def _short(text: str, n: int = 40) -> str:
    """``text`` cut to ``n`` characters (figures only; the tables show names in full)."""
    return text if len(text) <= n else text[: n - 1] + "…"


def _percent(p: float | None) -> str:
    v = _finite(p)
    return _DASH if v is None else f"{100.0 * v:.1f}%"


def _score_text(s: ReportSample) -> str:
    """``p = 93.1%``, or ``output = 0.1062`` for a one-output model's or a regressor's own output."""
    return f"output = {_fmt(s.probability)}" if s.probability_is_output else f"p = {_percent(s.probability)}"


def _png_uri(rgb: np.ndarray) -> str:
    """``(H, W, 3)`` uint8 as a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), mode="RGB").save(buf, format="PNG", optimize=False, compress_level=9)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumbnail(rgb: np.ndarray, size: int) -> np.ndarray:
    """Shrink ``rgb`` (uint8) so its longer side is at most ``size`` pixels (area average); never enlarge. A picture
    at least twice as wide as high (a 1-D signal drawn along time) may be ``size`` high and ``3 * size`` wide, so
    that its time steps stay apart."""
    h, w = rgb.shape[:2]
    scale = min(size / h, 3 * size / w) if w >= 2 * h else size / max(h, w)
    if scale >= 1:
        return rgb
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb, mode="RGB").resize(new, Image.Resampling.BOX))


def _check_image(sample: ReportSample, index: int) -> np.ndarray:
    img = np.asarray(sample.image, dtype=np.float64)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise InvalidInputError(f"samples[{index}].image must have shape (H, W, 3), channels last; got {img.shape}.")
    if not np.isfinite(img).all() or img.min() < 0.0 or img.max() > 1.0:
        raise InvalidInputError(
            f"samples[{index}].image must hold finite values in [0, 1]; got range "
            f"[{np.nanmin(img):.4g}, {np.nanmax(img):.4g}]. Pass the display form of the input. "
            f"{_range_hint(img, getattr(sample.image, 'dtype', None))}"
        )
    return img


def _direction(hib: bool | None) -> tuple[str, str]:
    if hib is None:
        return _DASH, "no direction"
    return ("↑", "higher is better") if hib else ("↓", "lower is better")


def _method_names(report: RunReport) -> list[str]:
    """Methods in the order of ``report.methods``, then any only named by the leaderboard or the samples."""
    names = [m.name for m in report.methods]
    seen = set(names)
    extra = [*report.leaderboard, *(k for s in report.samples for k in (*s.maps, *s.failures))]
    for name in extra:
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


# ---------------------------------------------------------------------------------------------- sections
def _leaderboard(report: RunReport, methods: list[str]) -> dict[str, Any]:
    metrics = list(report.metrics)
    known = {m.name for m in metrics}
    for scores in report.leaderboard.values():
        for name in scores:
            if name not in known:
                known.add(name)
                metrics.append(ReportMetric(name=name, higher_is_better=None, description=""))
    values = {m: {k: _finite(v) for k, v in report.leaderboard.get(m, {}).items()} for m in methods}
    sort_metric = next((m for m in metrics if m.higher_is_better is not None), None)

    def better(a: float, b: float, hib: bool) -> bool:
        return a > b if hib else a < b

    order = list(methods)
    if sort_metric is not None:
        hib = bool(sort_metric.higher_is_better)
        key = sort_metric.name

        def sort_key(m: str) -> tuple[bool, float]:
            v = values[m].get(key)
            return (v is None, 0.0 if v is None else (-v if hib else v))

        order.sort(key=sort_key)  # stable: ties keep the methods' order; no value sorts last
    best: dict[str, float | None] = {}
    for metric in metrics:
        col = [v for m in methods if (v := values[m].get(metric.name)) is not None]
        if metric.higher_is_better is None or not col:
            best[metric.name] = None
        else:
            best[metric.name] = max(col) if metric.higher_is_better else min(col)
    columns = []
    for metric in metrics:
        arrow, words = _direction(metric.higher_is_better)
        columns.append({"name": metric.name, "arrow": arrow, "words": words, "description": metric.description})
    rows = []
    for m in order:
        rank = _DASH
        if sort_metric is not None and (v := values[m].get(sort_metric.name)) is not None:
            others = (values[o].get(sort_metric.name) for o in methods)
            rank = str(1 + sum(o is not None and better(o, v, bool(sort_metric.higher_is_better)) for o in others))
        cells = []
        for metric in metrics:
            v = values[m].get(metric.name)
            cells.append({"text": _fmt(v), "best": v is not None and v == best[metric.name]})
        rows.append({"rank": rank, "method": m, "cells": cells})
    sorted_by = None
    if sort_metric is not None:
        arrow, words = _direction(sort_metric.higher_is_better)
        sorted_by = {"name": sort_metric.name, "arrow": arrow, "words": words}
    return {"columns": columns, "rows": rows, "sorted_by": sorted_by}


def _auc(x: np.ndarray, y: np.ndarray) -> float | None:
    """Trapezoidal area under ``y`` at the fractions ``x``; ``None`` if too short or not finite."""
    if y.size < 2 or not np.isfinite(y).all():
        return None
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


def _curve_figure(metric: str, curves: Mapping[str, np.ndarray], hib: bool | None) -> str:
    """One figure with a line per method (AUC in the legend), as a PNG data URI."""
    x_label = {
        "insertion": "fraction of features revealed",
        "deletion": "fraction of features removed",
    }.get(metric.lower(), "fraction of features perturbed")
    fig = Figure(figsize=(8.5, 3.6), dpi=_CURVE_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    palette = [colormaps["tab10"](i) for i in range(10)]  # then the same colours with other line styles
    styles = ("-", "--", ":", "-.")
    for k, (method, curve) in enumerate(curves.items()):
        c = np.asarray(curve, dtype=np.float64)
        if c.ndim == 2 and c.shape[0] == 2:
            x, y = c[0], c[1]
        else:
            y = c.reshape(-1)
            x = np.linspace(0.0, 1.0, y.size) if y.size > 1 else np.zeros(y.size)
        auc = _auc(x, y)
        ax.plot(
            x,
            np.where(np.isfinite(y), y, np.nan),
            color=palette[k % len(palette)],
            linestyle=styles[(k // len(palette)) % len(styles)],
            marker="o" if y.size == 1 else None,
            linewidth=1.4,
            label=f"{_short(method)} (AUC {_fmt(auc, '.3f')})",
        )
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel(x_label, fontsize=9)
    ax.set_ylabel("mean model score", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    _, words = _direction(hib)
    ax.set_title(f"{_short(metric, 60)}: mean curve over samples (AUC: {words})", fontsize=10, parse_math=False)
    if curves:
        legend = fig.legend(loc="outside right upper", fontsize=8, frameon=False)
        for text in legend.get_texts():
            text.set_parse_math(False)  # a "$" in a method name is shown as it is
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_CURVE_DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _curves(report: RunReport) -> list[dict[str, Any]]:
    direction = {m.name: m.higher_is_better for m in report.metrics}
    out = []
    for metric, by_method in report.curves.items():
        out.append(
            {
                "metric": metric,
                "n_methods": len(by_method),
                "src": _curve_figure(metric, by_method, direction.get(metric)) if by_method else None,
            }
        )
    return out


_VERDICT_TITLES = {
    "sanity": "Sanity check: model-parameter randomisation",
    "stability": "Stability",
}


def _verdicts(report: RunReport) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for v in report.verdicts:
        if v.passed is None:
            result, css = "undecided", "undecided"
        else:
            result, css = ("pass", "ok") if v.passed else ("FAIL", "error")
        groups.setdefault(v.kind, []).append({"method": v.method, "result": result, "css": css, "detail": v.detail})
    return [{"title": _VERDICT_TITLES.get(kind, kind), "rows": rows} for kind, rows in groups.items()]


def _text_row(s: ReportSample, methods: list[str]) -> dict[str, Any]:
    """The row of a text (or a table row, its ``column=value`` cells as words): the words, and per method the words
    coloured by their values (red: for the explained class, blue: against; the predicted class, or the true label
    in a run with target "label"), each cell scaled to its own largest magnitude."""
    from markupsafe import Markup

    from whybox.report.tokens import render_tokens_html

    words = list(s.words or [])
    cells = []
    for m in methods:
        vals = s.maps.get(m)
        if m not in s.maps and m not in s.failures:
            cells.append({"method": m, "src": None, "html": None, "failure": None})  # not run on this sample
        elif vals is not None:
            try:
                # whole words and table cells as they are: a "##b" column is no WordPiece piece
                html = render_tokens_html(words, np.asarray(vals, dtype=np.float64), words=True)
            except (InvalidInputError, InvalidParameterError) as exc:
                cells.append({"method": m, "src": None, "html": None, "failure": f"words could not be drawn: {exc}"})
                continue
            # (render_tokens_html escapes every word itself; its markup is the fragment's own)
            cells.append({"method": m, "src": None, "html": Markup(html), "failure": None})
        else:
            cells.append({"method": m, "src": None, "html": None, "failure": s.failures.get(m) or "failed"})
    return {
        "name": s.name,
        "small": False,
        "input_src": None,
        "text": " ".join(words),
        "prediction": s.prediction,
        "probability": _score_text(s),
        "label": s.label,
        "mismatch": s.label is not None and s.label != s.prediction,
        "cells": cells,
    }


def _sample_rows(
    samples: list[ReportSample], methods: list[str], readings: Mapping[str, str], thumbnail: int
) -> list[dict[str, Any]]:
    rows = []
    for i, s in enumerate(samples):
        if s.words is not None:
            rows.append(_text_row(s, methods))
            continue
        img = _check_image(s, i)
        small = max(img.shape[:2]) < _SMALL
        rgb8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
        chw = img.transpose(2, 0, 1)
        cells = []
        for m in methods:
            attr = s.maps.get(m)
            if attr is not None:
                try:
                    pic = overlay(chw, np.asarray(attr), reading=readings.get(m, "auto"))
                except InvalidInputError as exc:  # a malformed map: said in its cell, the rest of the page stands
                    cells.append({"method": m, "src": None, "html": None, "failure": f"map could not be drawn: {exc}"})
                    continue
                cells.append({"method": m, "src": _png_uri(_thumbnail(pic, thumbnail)), "html": None, "failure": None})
            elif m in s.failures:
                cells.append(
                    {"method": m, "src": None, "html": None, "failure": s.failures[m] or "failed (no reason recorded)"}
                )
            elif m in s.maps:
                cells.append({"method": m, "src": None, "html": None, "failure": "failed (no reason recorded)"})
            else:
                cells.append({"method": m, "src": None, "html": None, "failure": None})  # not run on this sample
        rows.append(
            {
                "name": s.name,
                "small": small,
                "input_src": _png_uri(_thumbnail(rgb8, thumbnail)),
                "text": None,
                "prediction": s.prediction,
                "probability": _score_text(s),
                "label": s.label,
                "mismatch": s.label is not None and s.label != s.prediction,
                "cells": cells,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------- public
def render_run_report(
    report: RunReport,
    *,
    max_samples: int = 24,
    readings: Mapping[str, str] | None = None,
    thumbnail: int = 100,
) -> str:
    """Render a run report as one self-contained HTML page.

    Parameters
    ----------
    report
        The run, as built by the run store.
    max_samples
        Rows of the per-sample grid: the first ``max_samples`` samples are drawn and the page says how many
        were left out (the leaderboard, curves and failures cover every sample).
    readings
        ``method -> reading`` of :func:`whybox.report.overlay` (``"signed"``, ``"positive"``, ``"relative"``);
        methods not named use ``"auto"``. CAMs and RISE read best as ``"relative"``.
    thumbnail
        Longer side, in pixels, of the input and overlay pictures (larger images are shrunk; smaller ones are
        enlarged to this width by the browser, with crisp pixels). A PNG of a noisy gradient map over a
        textured photo takes about 26 kB at 100 pixels (a smooth CAM about 17 kB), which keeps a 24-sample x
        12-method page of 224 x 224 inputs near 8 MB; the size grows with the square of ``thumbnail``.

    Returns
    -------
    str
        The HTML text.

    Raises
    ------
    InvalidParameterError
        If ``max_samples`` or ``thumbnail`` is not a non-negative (positive) int, or a reading is unknown.
    InvalidInputError
        If a drawn sample's image is not ``(H, W, 3)`` with finite values in [0, 1].
    """
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 0:
        raise InvalidParameterError(f"max_samples must be an int >= 0; got {max_samples!r}.")
    if isinstance(thumbnail, bool) or not isinstance(thumbnail, int) or thumbnail < 1:
        raise InvalidParameterError(f"thumbnail must be an int >= 1; got {thumbnail!r}.")
    readings = dict(readings or {})
    for method, reading in readings.items():
        if reading not in READINGS:
            raise InvalidParameterError(
                f"readings[{method!r}] must be one of {READINGS}; got {reading!r}.{did_you_mean(reading, READINGS)}"
            )
    methods = _method_names(report)
    shown = report.samples[:max_samples]
    total = report.n_samples if report.n_samples is not None else len(report.samples)
    source = resources.files("whybox.report").joinpath("templates/run_report.html").read_text(encoding="utf-8")
    template = _environment().from_string(source)
    return template.render(
        csp=RUN_REPORT_CSP,
        title=report.title,
        metadata=report.metadata,
        leaderboard=_leaderboard(report, methods),
        costs=[
            {
                "name": m.name,
                "options": m.options,
                "seconds": _fmt(m.seconds_per_sample, ".3g"),
                "n_forward": _fmt(m.n_forward_per_sample, ".4g"),
                "n_backward": _fmt(m.n_backward_per_sample, ".4g"),
                "n_done": m.n_done,
                "n_failed": m.n_failed,
            }
            for m in report.methods
        ],
        curves=_curves(report),
        verdicts=_verdicts(report),
        methods=methods,
        samples=_sample_rows(shown, methods, readings, thumbnail),
        n_samples=total,
        n_left_out=total - len(shown),
        failures=report.failures,
        thumbnail=thumbnail,
        target=report.target,
    )


def write_run_report(
    report: RunReport,
    path: str | os.PathLike[str],
    *,
    max_samples: int = 24,
    readings: Mapping[str, str] | None = None,
    thumbnail: int = 100,
) -> Path:
    """Render ``report`` (options as in :func:`render_run_report`) and write it atomically to ``path``.

    Returns the path. Nothing is written if rendering fails, and a reader never sees a half-written file.
    """
    page = render_run_report(report, max_samples=max_samples, readings=readings, thumbnail=thumbnail)
    return write_text_atomic(path, page)
