"""The run report in a real headless Chromium: it loads with no error under its own CSP, every picture
decodes, no script runs, and hostile names stay text.

Needs ``/usr/bin/chromium`` (or ``WHYBOX_CHROMIUM``) and the ``playwright`` package; never downloads a
browser. Skipped when either is missing, unless ``WHYBOX_REQUIRE_BROWSER=1`` (CI), which makes it fail.
The full-page screenshot is kept in ``tmp_path`` and copied to ``build/screenshots/report.png``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from whybox.report import (
    ReportMethod,
    ReportMetric,
    ReportSample,
    ReportVerdict,
    RunReport,
    write_run_report,
)

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HOSTILE = "<script>alert(1)</script>\"'></td></tr>javascript:alert(1)"


def _chromium() -> str:
    """The browser to drive, or skip (fail when ``WHYBOX_REQUIRE_BROWSER=1``) saying what is missing."""
    path = os.environ.get("WHYBOX_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("the python package 'playwright' is not installed")
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        missing.append(f"no Chromium executable at {path!r} (set WHYBOX_CHROMIUM)")
    if missing:
        reason = "cannot run the headless browser test: " + "; ".join(missing)
        if os.environ.get("WHYBOX_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " (WHYBOX_REQUIRE_BROWSER=1)")
        pytest.skip(reason)
    return path


def _report() -> RunReport:
    rng = np.random.default_rng(0)
    methods = ["saliency", f"gradcam {HOSTILE}", "integrated_gradients"]
    metrics = [ReportMetric("deletion", False, "AUC of the deletion curve"), ReportMetric("insertion", True, "")]
    samples = []
    failures = []
    for i in range(4):
        yy, xx = np.mgrid[0:48, 0:48] / 47.0
        img = np.stack([yy, xx, np.full_like(xx, 0.2 * i)], axis=-1)
        maps: dict[str, np.ndarray | None] = {
            methods[0]: np.abs(rng.normal(size=(48, 48))),
            methods[1]: rng.random((6, 6)),
            methods[2]: rng.normal(size=(48, 48)),
        }
        fails = {}
        if i == 2:
            maps[methods[2]] = None
            fails[methods[2]] = f"RuntimeError: {HOSTILE}"
            failures.append((f"img{i} {HOSTILE}.png", methods[2], fails[methods[2]]))
        label = "cat" if i % 2 else f"dog {HOSTILE}"
        samples.append(ReportSample(f"img{i} {HOSTILE}.png", img, "cat", 0.8, label, maps, fails))
    steps = np.linspace(0.0, 1.0, 21)
    return RunReport(
        title=f"run {HOSTILE}",
        metadata=[("model", f"resnet {HOSTILE}"), ("created", "2024-01-01T00:00:00")],
        methods=[
            ReportMethod(m, f"n_steps=8 {HOSTILE}", 0.01, 1.0, 1.0, 4, int(k == 2)) for k, m in enumerate(methods)
        ],
        metrics=metrics,
        leaderboard={m: {"deletion": 0.1 * (k + 1), "insertion": 0.5 - 0.1 * k} for k, m in enumerate(methods)},
        curves={"insertion": {m: steps ** (k + 1) for k, m in enumerate(methods)}},
        samples=samples,
        verdicts=[ReportVerdict("sanity", methods[0], True, HOSTILE), ReportVerdict("stability", methods[2], None, "")],
        failures=failures,
    )


def test_report_opens_in_headless_chromium_without_errors(tmp_path: Path) -> None:
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    report = _report()
    path = write_run_report(report, tmp_path / "report.html")
    errors: list[str] = []
    shot = tmp_path / "report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            page.goto(path.as_uri(), wait_until="load")
            imgs: list[dict[str, Any]] = page.eval_on_selector_all(
                "img",
                "els => els.map(e => ({complete: e.complete, w: e.naturalWidth, cls: e.className,"
                " method: e.dataset.method || null, alt: e.alt, src: e.getAttribute('src').slice(0, 22)}))",
            )
            n_scripts = page.evaluate("document.querySelectorAll('script').length")
            board_rows = page.eval_on_selector_all("table.leaderboard tr", "rows => rows.length")
            board_methods = page.eval_on_selector_all(
                "table.leaderboard tbody tr td:nth-child(2)", "c => c.map(x => x.textContent)"
            )
            h1 = page.inner_text("h1")
            failed_cells = page.eval_on_selector_all("td.failed", "c => c.map(x => x.textContent)")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    assert errors == []
    assert n_scripts == 0
    assert imgs and all(i["complete"] and i["w"] > 0 for i in imgs), [i for i in imgs if not i["w"]]
    assert all(i["src"] == "data:image/png;base64," for i in imgs)
    assert h1 == f"run {HOSTILE}"  # the hostile title is text, not markup
    assert board_rows == len(report.methods) + 1
    assert board_methods == [m.name for m in report.methods]  # sorted by deletion, lower first
    overlays = [i for i in imgs if "overlay" in i["cls"].split()]
    for m in report.methods:
        expected = {f"{m.name} on {s.name}" for s in report.samples if s.maps.get(m.name) is not None}
        assert {i["alt"] for i in overlays if i["method"] == m.name} == expected
    assert failed_cells == [f"failed: RuntimeError: {HOSTILE}"]
    assert sum("curve" in i["cls"].split() for i in imgs) == 1

    assert shot.stat().st_size > 10_000
    out = REPO / "build" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, out / "report.png")


@pytest.mark.parametrize("command", ["compare", "demo"])
def test_report_of_a_real_run_shows_every_method_s_overlays_and_the_leaderboard(tmp_path: Path, command: str) -> None:
    """A real run through the CLI, then its report in Chromium: every sample has one overlay per method, the
    leaderboard lists the methods, no errors. `compare`: digits CNN, 6 test images, 3 methods, 2 metrics; `demo`:
    the digits demo (3 images, every registered method), whose report is the run it writes."""
    executable = _chromium()
    from click.testing import CliRunner
    from playwright.sync_api import sync_playwright

    import whybox
    from whybox.cli.main import main as cli

    if command == "compare":
        run_dir = tmp_path / "run"
        methods, n = ["saliency", "gradcam", "occlusion"], 6
        args = ["compare", "--model", "digits-cnn", "digits-test", "--limit", "6", "--methods", ",".join(methods),
                "--metrics", "deletion,insertion", "--shard-size", "4", "--out", str(run_dir)]  # fmt: skip
    else:
        run_dir = tmp_path / "demo" / "run"
        methods, n = whybox.methods("image"), 3
        args = ["demo", "--model", "digits-cnn", "--out", str(tmp_path / "demo")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    path = run_dir / "report.html"
    errors: list[str] = []
    shot = tmp_path / f"{command}_report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
            page.goto(path.as_uri(), wait_until="load")
            imgs: list[dict[str, Any]] = page.eval_on_selector_all(
                "img",
                "els => els.map(e => ({complete: e.complete, w: e.naturalWidth, cls: e.className,"
                " method: e.dataset.method || null}))",
            )
            board_methods = page.eval_on_selector_all(
                "table.leaderboard tbody tr td:nth-child(2)", "c => c.map(x => x.textContent)"
            )
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert imgs and all(i["complete"] and i["w"] > 0 for i in imgs)
    overlays = [i for i in imgs if "overlay" in i["cls"].split()]
    assert sorted(i["method"] for i in overlays) == sorted(methods * n)
    assert sorted(board_methods) == sorted(methods)
    out = REPO / "build" / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, out / f"{command}_report.png")
