"""The run report (``whybox report RUN_DIR``): one self-contained, escaped HTML page.

Properties: hostile strings in every data field change nothing in the page's element structure and come back
as text; every picture is an inline PNG and nothing points at the network; the leaderboard's direction marks,
best marks and order follow ``higher_is_better``; the per-sample grid is capped and says so.
"""

from __future__ import annotations

import base64
import html.parser
import io
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg
from PIL import Image

from whybox.errors import InvalidInputError, InvalidParameterError
from whybox.report import (
    RUN_REPORT_CSP,
    ReportMethod,
    ReportMetric,
    ReportSample,
    ReportVerdict,
    RunReport,
    render_run_report,
    write_run_report,
)
from whybox.report.run_report import _auc

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PAYLOAD = (
    "javascript:alert(1)//\"'></td></tr></table><script>alert('x')</script>"
    "<img src=https://evil.example/x.png onerror=alert(1)><a href=javascript:alert(1)>{{ 7*7 }}&amp;&#60;"
)
URL_ATTRS = {"href", "src", "action", "formaction", "srcset", "poster", "background", "cite", "data", "xlink:href"}
ALLOWED_ATTRS = {"lang", "charset", "http-equiv", "content", "name", "href", "id", "class", "title", "src", "alt"}
ALLOWED_ATTRS |= {"width", "data-method"}


def hostile(x: str) -> str:
    return PAYLOAD + x


def benign(x: str) -> str:
    return "plain " + x


# ---------------------------------------------------------------------------------------------- helpers
class Page(html.parser.HTMLParser):
    """Tags, attributes, text chunks and the rows of every table (by its class) of a page."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, tuple[str, ...]]] = []  # (tag, sorted attribute names), in document order
        self.attrs: list[tuple[str, str, str]] = []  # (tag, name, value)
        self.texts: list[str] = []
        self.tables: dict[str, list[list[tuple[str, str, str]]]] = {}  # class -> rows of (tag, class, text)
        self.imgs: list[dict[str, str]] = []
        self._table: list[str] = []
        self._cell: list[object] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, tuple(sorted(a))))
        self.attrs.extend((tag, k, v) for k, v in a.items())
        if tag == "img":
            self.imgs.append(a)
        elif tag == "table":
            self._table.append(a.get("class", ""))
            self.tables.setdefault(self._table[-1], [])
        elif tag == "tr" and self._table:
            self.tables[self._table[-1]].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = [tag, a.get("class", ""), ""]

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._table:
            self._table.pop()
        elif tag in ("td", "th") and self._cell is not None:
            t, c, s = self._cell
            self.tables[self._table[-1]][-1].append((str(t), str(c), str(s).strip()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        if self._cell is not None:
            self._cell[2] = str(self._cell[2]) + data

    def cells(self, table: str, column: int) -> list[str]:
        return [row[column][2] for row in self.tables[table][1:]]


def _image(rng: np.random.Generator, size: int = 8) -> np.ndarray:
    return rng.random((size, size, 3))


def make_report(
    t: Callable[[str], str] = benign,
    *,
    n_samples: int = 3,
    n_methods: int = 3,
    size: int = 8,
    seed: int = 0,
) -> RunReport:
    """A small run whose every string from data passes through ``t`` (equal inputs stay equal)."""
    rng = np.random.default_rng(seed)
    methods = [t(f"method{k}") for k in range(n_methods)]
    samples = []
    failures = []
    for i in range(n_samples):
        maps: dict[str, np.ndarray | None] = {m: rng.normal(size=(size, size)) for m in methods}
        maps[methods[-1]] = rng.random((3, 5))  # another size: resized to the image
        fails = {}
        if i % 3 == 1:
            maps[methods[1]] = None
            fails[methods[1]] = t("reason: out of memory")
            failures.append((t(f"sample{i}.png"), methods[1], t("reason: out of memory")))
        label = [t("cat"), t("dog"), None][i % 3]
        samples.append(ReportSample(t(f"sample{i}.png"), _image(rng, size), t("cat"), 0.75, label, maps, fails))
    metrics = [
        ReportMetric(t("deletion"), False, t("area under the deletion curve")),
        ReportMetric(t("insertion"), True, t("area under the insertion curve")),
        ReportMetric(t("sparsity"), None, t("Gini index of the map")),
    ]
    leaderboard: dict[str, dict[str, float | None]] = {
        m: {metrics[0].name: 0.1 * (k + 1), metrics[1].name: 0.2 + 0.1 * k, metrics[2].name: 0.5}
        for k, m in enumerate(methods)
    }
    steps = np.linspace(0.0, 1.0, 11)
    curves = {
        metrics[1].name: {m: steps ** (k + 1) for k, m in enumerate(methods)},
        metrics[0].name: {m: 1.0 - steps ** (1.0 / (k + 1)) for k, m in enumerate(methods)},
    }
    return RunReport(
        title=t("run title"),
        metadata=[(t("model"), t("resnet18")), (t("config"), t('{"batch_size": 8}'))],
        methods=[
            ReportMethod(m, t(f"options of {m}"), 0.01 * (k + 1), 2.0, 1.0, n_samples, 0) for k, m in enumerate(methods)
        ],
        metrics=metrics,
        leaderboard=leaderboard,
        curves=curves,
        samples=samples,
        verdicts=[
            ReportVerdict("sanity", methods[0], True, t("rank correlation 0.05")),
            ReportVerdict("stability", methods[1], False, t("mean SSIM 0.31")),
            ReportVerdict(t("other kind"), methods[-1], None, t("not decided")),
        ],
        failures=failures,
    )


def _decode_png(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:60]
    data = base64.b64decode(src[len(prefix) :], validate=True)
    assert data.startswith(PNG_SIGNATURE)
    return data


# ---------------------------------------------------------------------------------------------- injection
@pytest.fixture(scope="module")
def hostile_page() -> str:
    return render_run_report(make_report(hostile))


def test_hostile_strings_change_no_element_or_attribute(hostile_page: str) -> None:
    page = Page(hostile_page)
    same_shape = Page(render_run_report(make_report(benign)))
    assert page.tags == same_shape.tags  # the same elements with the same attribute names, in the same order
    assert sum(tag == "script" for tag, _ in page.tags) == 0
    assert {name for _, name, _ in page.attrs} <= ALLOWED_ATTRS  # no onerror=, no injected attribute
    for _, name, value in page.attrs:
        if name in URL_ATTRS:
            assert value.startswith(("data:image/png;base64,", "#")), (name, value[:80])
        assert not value.lstrip().lower().startswith("javascript:") or name in ("data-method", "alt", "title")
    assert not [v for t, n, v in page.attrs if n == "href" and not v.startswith("#")]  # no link from data


def test_hostile_strings_keep_every_table_shape(hostile_page: str) -> None:
    page = Page(hostile_page)
    report = make_report(hostile)
    n_methods, n_metrics = len(report.methods), len(report.metrics)
    assert len(page.tables["leaderboard"]) == n_methods + 1
    assert all(len(row) == 2 + n_metrics for row in page.tables["leaderboard"])
    assert len(page.tables["cost"]) == n_methods + 1
    assert all(len(row) == 7 for row in page.tables["cost"])
    assert len(page.tables["metadata"]) == len(report.metadata)
    assert len(page.tables["grid"]) == len(report.samples) + 1
    assert all(len(row) == 3 + n_methods for row in page.tables["grid"])
    assert len(page.tables["failures"]) == len(report.failures) + 1
    assert len(page.tables["verdicts"]) == 2 * 3  # one table (header + one row) per kind of check


def test_hostile_strings_come_back_as_text(hostile_page: str) -> None:
    page = Page(hostile_page)
    report = make_report(hostile)
    expected = [report.title]
    expected += [s for row in report.metadata for s in row]
    expected += [s for m in report.methods for s in (m.name, m.options)]
    expected += [s for m in report.metrics for s in (m.name, m.description)]
    expected += [s.name for s in report.samples] + [report.samples[0].prediction]
    expected += [s.label for s in report.samples if s.label is not None]
    expected += [r for s in report.samples for r in s.failures.values()]
    expected += [s for row in report.failures for s in row]
    expected += [s for v in report.verdicts for s in (v.method, v.detail)] + [report.verdicts[2].kind]
    for s in expected:
        assert s.startswith(PAYLOAD)
        assert any(s in chunk for chunk in page.texts), s
    # attribute values round-trip too (quoted and escaped): alt/title/data-method of each overlay
    overlays = [i for i in page.imgs if "overlay" in i["class"].split()]
    shown = {(i["data-method"], i["alt"]) for i in overlays}
    for sample in report.samples:
        for m, attr in sample.maps.items():
            assert ((m, f"{m} on {sample.name}") in shown) == (attr is not None)


def test_no_raw_payload_survives_in_the_markup(hostile_page: str) -> None:
    # every '<' of the payload is escaped: its markup never appears raw, and data is never a template
    for raw in ("<script", "<img src=https", "<a href=javascript", "</table><", "'>"):
        assert raw not in hostile_page.lower(), raw
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in hostile_page
    assert "{{ 7*7 }}&amp;amp;&amp;#60;" in hostile_page


# ---------------------------------------------------------------------------------------------- self-contained
def test_every_picture_is_an_inline_png_and_nothing_points_outside() -> None:
    report = make_report(benign)
    text = render_run_report(report)
    page = Page(text)
    n_overlays = sum(a is not None for s in report.samples for a in s.maps.values())
    assert len(page.imgs) == len(report.samples) + n_overlays + len(report.curves)
    for img in page.imgs:
        data = _decode_png(img["src"])
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        assert mpimg.imread(io.BytesIO(data), format="png").ndim == 3
    outside = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    for bad in ("http:", "https:", "//", "url(", "@import", "<link", "<iframe", "<object", "<embed", "<form"):
        assert bad not in outside.lower(), bad
    metas = [dict(a) for t, a in _meta_attrs(text)]
    csp = [m for m in metas if m.get("http-equiv") == "Content-Security-Policy"]
    assert len(csp) == 1 and csp[0]["content"] == RUN_REPORT_CSP
    assert "default-src 'none'" in RUN_REPORT_CSP and "img-src data:;" in RUN_REPORT_CSP
    assert "script-src" not in RUN_REPORT_CSP and "http" not in RUN_REPORT_CSP
    assert text.index("Content-Security-Policy") < text.index("<img")  # before anything is loaded


def _meta_attrs(text: str) -> list[tuple[str, list[tuple[str, str]]]]:
    out: list[tuple[str, list[tuple[str, str]]]] = []

    class P(html.parser.HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "meta":
                out.append((tag, [(k, v or "") for k, v in attrs]))

    P().feed(text)
    return out


def test_overlays_take_the_image_size_and_small_images_are_enlarged_crisply() -> None:
    report = make_report(benign, n_samples=1, size=8)  # maps of 8 x 8 and 3 x 5 on an 8 x 8 image
    page = Page(render_run_report(report))
    for img in page.imgs:
        if "curve" in img["class"]:
            continue
        with Image.open(io.BytesIO(_decode_png(img["src"]))) as im:
            assert im.size == (8, 8)
        assert "px" in img["class"].split() and img["width"] == "100"


def test_large_images_are_shrunk_to_the_thumbnail() -> None:
    rng = np.random.default_rng(0)
    sample = ReportSample("a", rng.random((200, 100, 3)), "cat", None, None, {"m": rng.normal(size=(7, 7))}, {})
    report = RunReport("t", [], [], [], {}, {}, [sample], [], [])
    page = Page(render_run_report(report, thumbnail=50))
    for img in page.imgs:
        with Image.open(io.BytesIO(_decode_png(img["src"]))) as im:
            assert im.size == (25, 50)  # aspect kept, longer side = thumbnail
        assert "width" not in img


def test_a_24_sample_12_method_report_of_224_px_inputs_stays_near_10_mb() -> None:
    """Estimated from one sample row (rendering 288 overlays would be slow): half the methods give noisy
    gradient-like maps, half smooth CAM-like ones, on a textured 224 x 224 input; curves for 12 methods."""
    rng = np.random.default_rng(0)
    smooth = np.asarray(Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).resize((224, 224)))
    img = np.clip(smooth / 255.0 + rng.normal(0.0, 0.05, smooth.shape), 0.0, 1.0)
    methods = [f"method {k}" for k in range(12)]
    maps: dict[str, np.ndarray | None] = {
        m: rng.normal(size=(224, 224)) if k % 2 else rng.random((7, 7)) - 0.3 for k, m in enumerate(methods)
    }
    sample = ReportSample("photo.jpg", img, "cat", 0.9, "cat", maps, {})
    steps = np.linspace(0.0, 1.0, 51)
    curves = {c: {m: steps ** (k + 1) for k, m in enumerate(methods)} for c in ("insertion", "deletion")}
    report = RunReport("t", [], [], [], {}, curves, [sample], [], [])
    text = render_run_report(report)
    row = sum(len(i["src"]) for i in Page(text).imgs if "curve" not in i["class"])
    assert len(text) + 23 * row * 1.02 < 10_000_000
    curve_figs = [i for i in Page(text).imgs if "curve" in i["class"]]
    for fig in curve_figs:
        with Image.open(io.BytesIO(_decode_png(fig["src"]))) as im:
            assert im.size[0] <= 800  # a modest DPI


# ---------------------------------------------------------------------------------------------- leaderboard
def _board(metrics: list[ReportMetric], scores: dict[str, dict[str, float | None]]) -> Page:
    methods = [ReportMethod(m, "", None, None, None, 0, 0) for m in scores]
    return Page(render_run_report(RunReport("t", [], methods, metrics, scores, {}, [], [], [])))


def test_leaderboard_marks_direction_and_best_and_sorts_by_the_first_metric_with_a_direction() -> None:
    metrics = [
        ReportMetric("gini", None, "no direction"),
        ReportMetric("deletion", False, ""),
        ReportMetric("insertion", True, ""),
    ]
    scores: dict[str, dict[str, float | None]] = {
        "a": {"gini": 0.9, "deletion": 0.30, "insertion": 0.70},
        "b": {"gini": 0.1, "deletion": 0.10, "insertion": 0.40},
        "c": {"gini": 0.5, "deletion": None, "insertion": 0.70},
        "d": {"gini": 0.5, "deletion": 0.20, "insertion": float("nan")},
    }
    page = _board(metrics, scores)
    header = page.tables["leaderboard"][0]
    assert [c[2] for c in header] == ["rank", "method", "gini –", "deletion ↓", "insertion ↑"]
    # sorted by deletion (first metric with a direction), lower first; no value last
    assert page.cells("leaderboard", 1) == ["b", "d", "a", "c"]
    assert page.cells("leaderboard", 0) == ["1", "2", "3", "–"]
    assert page.cells("leaderboard", 3) == ["0.1 ★", "0.2", "0.3", "–"]
    assert page.cells("leaderboard", 4) == ["0.4", "–", "0.7 ★", "0.7 ★"]  # NaN is no value; ties share best
    assert not any("★" in c for c in page.cells("leaderboard", 2))  # no direction, no best
    best = [(r[1][2], c[2]) for r in page.tables["leaderboard"][1:] for c in r if "best" in c[1].split()]
    assert best == [("b", "0.1 ★"), ("a", "0.7 ★"), ("c", "0.7 ★")]


def test_leaderboard_follows_higher_is_better_when_flipped() -> None:
    scores: dict[str, dict[str, float | None]] = {"a": {"s": 1.0}, "b": {"s": 3.0}, "c": {"s": 2.0}}
    up = _board([ReportMetric("s", True, "")], scores)
    down = _board([ReportMetric("s", False, "")], scores)
    assert up.cells("leaderboard", 1) == ["b", "c", "a"] and up.cells("leaderboard", 2)[0] == "3 ★"
    assert down.cells("leaderboard", 1) == ["a", "c", "b"] and down.cells("leaderboard", 2)[0] == "1 ★"
    none = _board([ReportMetric("s", None, "")], scores)
    assert none.cells("leaderboard", 1) == ["a", "b", "c"]  # no direction anywhere: run order, no best
    assert none.cells("leaderboard", 0) == ["–", "–", "–"]


def test_auc_is_the_trapezoid_rule_over_the_fractions() -> None:
    y = np.random.default_rng(0).random(21)
    even = np.linspace(0.0, 1.0, 21)
    assert _auc(even, y) == pytest.approx(float(np.trapezoid(y, even)))
    uneven = np.sort(np.r_[0.0, np.random.default_rng(1).random(19), 1.0])
    assert _auc(uneven, y) == pytest.approx(float(np.trapezoid(y, uneven)))
    assert _auc(np.linspace(0.0, 1.0, 5), np.linspace(0.0, 1.0, 5)) == pytest.approx(0.5)
    assert _auc(np.zeros(1), np.array([1.0])) is None and _auc(even[:2], np.array([0.0, np.nan])) is None


def test_the_mean_curve_of_uneven_region_steps_has_the_leaderboard_auc(tmp_path: Path) -> None:
    """Deletion/insertion over regions of unequal area step each sample over other fractions: the report's mean
    curve is drawn at those fractions, and its legend AUC is the leaderboard's mean of the samples' AUCs."""
    import torch
    from torch import nn

    from whybox.runs.job import Job, run_job
    from whybox.runs.report_data import load_run_report

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    with torch.no_grad():
        model[1].weight.mul_(40)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    options = {"deletion": {"regions": 6}, "insertion": {"regions": 6}}
    job = Job(methods=("saliency",), metrics=("deletion", "insertion"), metric_options=options, shard_size=3)
    run_job(job, model, x, tmp_path / "run")
    report = load_run_report(tmp_path / "run")
    for metric in ("deletion", "insertion"):
        curve = report.curves[metric]["saliency"]
        assert curve.shape[0] == 2 and curve[0][0] == 0.0 and curve[0][-1] == pytest.approx(1.0)
        assert curve.shape[1] > 7  # the samples' fractions differ: their union, not 6 + 1 even steps
        assert _auc(curve[0], curve[1]) == pytest.approx(report.leaderboard["saliency"][metric], abs=1e-12)


# ---------------------------------------------------------------------------------------------- samples
def test_grid_is_capped_at_max_samples_and_says_how_many_were_left_out() -> None:
    report = make_report(benign, n_samples=30, n_methods=2, size=4)
    page = Page(render_run_report(report))  # default cap: 24
    assert len(page.tables["grid"]) == 1 + 24
    text = " ".join(" ".join(page.texts).split())
    assert "Showing the first 24 of 30 samples; 6 left out" in text
    page = Page(render_run_report(report, max_samples=5))
    assert page.cells("grid", 0) == [f"plain sample{i}.png" for i in range(5)]
    assert "Showing the first 5 of 30 samples; 25 left out" in " ".join(" ".join(page.texts).split())
    page = Page(render_run_report(report, max_samples=0))
    assert "grid" not in page.tables and "30 left out" in " ".join(page.texts)
    page = Page(render_run_report(report, max_samples=30))
    assert "All 30 samples shown." in " ".join(" ".join(page.texts).split())
    assert len(page.tables["failures"]) == 1 + 10  # the failures table covers every sample
    import dataclasses

    # a run's report loads only the first samples (load_run_report(max_samples=5)): the page counts the run's
    cut = dataclasses.replace(report, samples=report.samples[:5], n_samples=30)
    page = Page(render_run_report(cut, max_samples=5))
    assert "Showing the first 5 of 30 samples; 25 left out" in " ".join(" ".join(page.texts).split())


def test_grid_cells_show_overlays_failures_and_prediction_mismatch() -> None:
    report = make_report(benign, n_samples=3)
    page = Page(render_run_report(report))
    rows = page.tables["grid"][1:]
    m1 = 3 + 1  # column of method1
    assert "failed" in rows[1][m1][1] and rows[1][m1][2] == "failed: plain reason: out of memory"
    assert rows[0][m1][1] == "pic" and rows[2][m1][1] == "pic"
    # prediction cell: highlighted only when a true label exists and differs
    assert ["mismatch" in r[2][1].split() for r in rows] == [False, True, False]
    assert rows[0][2][2] == "plain catp = 75.0%true: plain cat"
    assert rows[2][2][2].endswith("true: –")


def test_not_run_missing_reason_and_malformed_maps_are_said_in_their_cells() -> None:
    rng = np.random.default_rng(0)
    maps: dict[str, np.ndarray | None] = {"ok": rng.normal(size=(4, 4)), "none": None, "bad": rng.random((2, 2, 2))}
    sample = ReportSample("s", _image(rng, 4), "p", None, None, maps, {})
    methods = [ReportMethod(m, "", None, None, None, 1, 0) for m in ("ok", "none", "bad", "skipped")]
    page = Page(render_run_report(RunReport("t", [], methods, [], {}, {}, [sample], [], [])))
    cells = page.tables["grid"][1][3:]
    assert cells[0][1] == "pic"
    assert cells[1][2] == "failed: failed (no reason recorded)"
    assert cells[2][2].startswith("failed: map could not be drawn: map must have shape (H, W)")
    assert cells[3] == ("td", "notrun", "not run")
    assert page.tables["grid"][1][2][2] == "pp = –true: –"


# ---------------------------------------------------------------------------------------------- errors, writing
def test_bad_inputs_raise_errors_that_name_the_parameter() -> None:
    report = make_report(benign, n_samples=1)
    with pytest.raises(InvalidParameterError, match=r"max_samples must be an int >= 0; got -1"):
        render_run_report(report, max_samples=-1)
    with pytest.raises(InvalidParameterError, match=r"thumbnail must be an int >= 1; got 0"):
        render_run_report(report, thumbnail=0)
    with pytest.raises(InvalidParameterError, match=r"readings\['m'\] must be one of .*; got 'rainbow'"):
        render_run_report(report, readings={"m": "rainbow"})
    s = report.samples[0]
    chw = ReportSample(s.name, s.image.transpose(2, 0, 1), s.prediction, None, None, {}, {})
    with pytest.raises(InvalidInputError, match=r"samples\[0\]\.image must have shape \(H, W, 3\).*got \(3, 8, 8\)"):
        render_run_report(RunReport("t", [], [], [], {}, {}, [chw], [], []))
    over = ReportSample(s.name, s.image * 255.0, s.prediction, None, None, {}, {})
    with pytest.raises(InvalidInputError, match=r"samples\[0\]\.image must hold finite values in \[0, 1\]"):
        render_run_report(RunReport("t", [], [], [], {}, {}, [over], [], []))


def test_write_run_report_writes_the_rendered_page_atomically(tmp_path: Path) -> None:
    report = make_report(hostile, n_samples=2)
    path = write_run_report(report, tmp_path / "report.html", max_samples=1)
    assert path == tmp_path / "report.html"
    assert path.read_text(encoding="utf-8") == render_run_report(report, max_samples=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # no temporary file left behind


def test_a_wide_table_row_shows_the_cells_that_matter_most_to_some_method() -> None:
    """A row of 3,000 columns (or a model's packed inputs) put every column=value cell in the report, under every
    method: tens of megabytes. It shows MAX_TABLE_CELLS of them, in column order, chosen so that each method's own
    largest values are there (each method scaled by its largest magnitude), then one cell counting the others."""
    from whybox.runs.report_data import MAX_TABLE_CELLS, _widest_cells

    gen = np.random.default_rng(0)
    words = [f"c{j}=1" for j in range(300)]
    small = gen.normal(size=300) * 1e-3  # a method whose values are all tiny still gets its own top cells shown
    small[[7, 250]] = 5e-3
    big = gen.normal(size=300)
    big[123] = 40.0
    maps = {"small": small, "big": big, "failed": None}
    kept, out = _widest_cells(words, maps)
    assert (
        len(kept) == MAX_TABLE_CELLS + 1
        and kept[-1] == f"(+{300 - MAX_TABLE_CELLS} more columns, smaller under every method)"
    )
    idx = [int(w[1:].split("=")[0]) for w in kept[:-1]]
    assert idx == sorted(idx) and {7, 250, 123} <= set(idx)
    assert out["failed"] is None
    for m in ("small", "big"):
        np.testing.assert_array_equal(out[m][:-1], maps[m][idx])
        assert out[m][-1] == 0.0


def test_the_leaderboard_says_when_methods_are_averaged_over_different_samples() -> None:
    """A run stopped by its budget, or with failures, averages each method over the samples it has: the page said
    'Mean score over the samples' for means over 8 and over 12. Where counts differ, the metadata says them."""
    from whybox.runs.report_data import _uneven_means

    sums = {("lime", "deletion"): [0.1] * 8, ("saliency", "deletion"): [0.2] * 12, ("lime", "insertion"): [0.5] * 12,
            ("saliency", "insertion"): [0.4] * 12}  # fmt: skip
    assert _uneven_means(sums, ["lime", "saliency"], ["deletion", "insertion"]) == (
        "means over different samples: deletion over lime 8, saliency 12 (compare methods with care)"
    )
    assert _uneven_means(sums, ["lime", "saliency"], ["insertion"]) == ""


def test_the_leaderboard_reads_each_metric_in_the_direction_its_options_give(tmp_path: Path) -> None:
    """aopc with order='lerf' and road with orders='morf' score lower as better (as evaluate says): the report's
    arrows and sort follow the configured direction, not the class default."""
    import torch
    from torch import nn

    from whybox.runs.job import Job, run_job
    from whybox.runs.report_data import load_run_report

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(128, 3)).eval()
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    options = {"aopc": {"order": "lerf", "steps": 4}, "road": {"orders": "morf", "fractions": [0.5]}}
    job = Job(methods=("saliency",), metrics=("aopc", "road", "deletion"), metric_options=options, shard_size=2)
    run_job(job, model, x, tmp_path / "run")
    report = load_run_report(tmp_path / "run")
    assert {m.name: m.higher_is_better for m in report.metrics} == {"aopc": False, "road": False, "deletion": False}
    default = Job(methods=("saliency",), metrics=("aopc", "road"), metric_options={"road": {"fractions": [0.5]}})
    run_job(default, model, x, tmp_path / "default")
    assert {m.name: m.higher_is_better for m in load_run_report(tmp_path / "default").metrics} == {
        "aopc": True,
        "road": True,
    }
