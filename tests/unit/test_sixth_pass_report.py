"""Sixth-pass findings on what the reports show, each a property the earlier code broke: the run report's stability
verdict on the configured measure's own scale, `whybox debug`'s map in the method's reading, whole words shown as
they are by `whybox explain` on texts, and empty pictures refused with an error that names their shape."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import whybox
from whybox.cli.main import main as cli
from whybox.errors import InvalidInputError, InvalidParameterError
from whybox.report import overlay, render_tokens_terminal, save_png
from whybox.runs.report_data import method_reading


# ---------------------------------------------------------------------------------------------- stability verdict
def _stability_run(tmp_path: Path, measure: str | None, n_samples: int) -> Any:
    from whybox.runs.job import Job, run_job
    from whybox.runs.report_data import load_run_report

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    with torch.no_grad():
        model[1].weight.mul_(5)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    options: dict[str, Any] = {"n_runs": 3} if measure is None else {"n_runs": 3, "measure": measure}
    job = Job(
        methods=("lime",),
        metrics=("stability",),
        method_options={"lime": {"n_samples": n_samples}},
        metric_options={"stability": options},
        shard_size=2,
    )
    out = tmp_path / f"run_{measure}_{n_samples}"
    run_job(job, model, x, out)
    return load_run_report(out)


@pytest.mark.parametrize(
    ("measure", "n_samples", "threshold", "shown"),
    [
        (None, 40, 0.5, "jaccard, passes at 0.5 or above"),  # the metric's default measure
        ("jaccard", 40, 0.5, "jaccard, passes at 0.5 or above"),
        ("kendall", 40, 0.5, "kendall, passes at 0.5 or above"),  # tau in [-1, 1], 0 = chance
        ("vsi", 40, 50.0, "vsi, passes at 50 or above"),  # a percentage: 0-100
        ("csi", 100, 50.0, "csi, passes at 50 or above"),  # a percentage: 0-100 (needs more samples than features)
    ],
)
def test_the_stability_verdict_reads_the_configured_measure_on_its_own_scale(
    tmp_path: Path, measure: str | None, n_samples: int, threshold: float, shown: str
) -> None:
    """The verdict compared every measure's mean with 0.5: LIME's VSI of 36.7 (a percentage) 'passed' on the runs
    whose Jaccard, 0.233, fails. Each measure now has its own stated threshold."""
    report = _stability_run(tmp_path, measure, n_samples)
    v = report.leaderboard["lime"]["stability"]
    assert v is not None
    (verdict,) = report.verdicts
    assert verdict.kind == "stability" and verdict.method == "lime"
    assert verdict.detail == f"mean stability score {v:.3f} ({shown})"
    assert verdict.passed is (v >= threshold)
    if measure in (None, "jaccard", "vsi"):  # the same unstable runs fail under both top-k agreements
        assert verdict.passed is False


# ---------------------------------------------------------------------------------------------- debug's reading
def test_debug_draws_the_true_class_map_in_the_method_s_reading(tmp_path: Path, monkeypatch: Any) -> None:
    """RISE's maps sit on a large constant (0.18-0.35 here): read 'auto' (as positive) every pixel got an opacity of
    at least 0.36; the figure's map panel is now overlay(..., reading=method_reading('rise', options)), the
    reading explain, plot and the run report use."""
    import whybox.cli.main as cli_main

    reports: list[Any] = []
    images: list[Any] = []
    panels: list[Any] = []
    find, draw, save = whybox.find_mistakes, cli_main.overlay, cli_main.save_grid_figure

    def find_spy(*args: Any, **kwargs: Any) -> Any:
        reports.append(find(*args, **kwargs))
        return reports[-1]

    def overlay_spy(image: Any, *args: Any, **kwargs: Any) -> Any:
        images.append(image)
        return draw(image, *args, **kwargs)

    def save_spy(path: Any, grid: Any, **kwargs: Any) -> Any:
        panels.append(grid)
        return save(path, grid, **kwargs)

    monkeypatch.setattr(whybox, "find_mistakes", find_spy)
    monkeypatch.setattr(cli_main, "overlay", overlay_spy)
    monkeypatch.setattr(cli_main, "save_grid_figure", save_spy)
    options = {"n_masks": 500}
    res = CliRunner().invoke(
        cli, ["debug", "--method", "rise", "--option", "n_masks=500", "--limit", "1", "--out", str(tmp_path / "d")]
    )
    assert res.exit_code == 0, res.output
    (report,), (image,), (grid,) = reports, images, panels
    (m,) = report.mistakes
    reading = method_reading("rise", options)
    assert reading == "relative"
    drawn = grid[1][0]
    assert np.array_equal(drawn, overlay(image, m.attribution, reading=reading))
    assert not np.array_equal(drawn, overlay(image, m.attribution))  # what "auto" painted


# ---------------------------------------------------------------------------------------------- whole words
BB_PY = """
import numpy as np
from whybox.models.blackbox_text import BlackBoxTextAdapter


def make():
    def fn(texts):
        s = np.array([t.count("python") + 0.5 * t.count("love") for t in texts], dtype=float)
        return np.stack([-s, s], 1)

    return BlackBoxTextAdapter(fn, labels=["neg", "pos"])
"""


def test_render_tokens_terminal_shows_whole_words_as_they_are() -> None:
    """words=True (as render_tokens_page's): a word that starts with '##' is its own text, set off by a space."""
    words, values = ["I", "love", "##python"], [0.0, 0.5, 1.0]
    assert render_tokens_terminal(words, values, color=False, words=True) == "I[+0] love[+0.5] ##python[+1]"
    assert render_tokens_terminal(words, values, color=False) == "I[+0] love[+0.5]python[+1]"  # WordPiece tokens
    coloured = render_tokens_terminal(words, values, words=True)
    assert coloured.count(" ") == 2 and "m##python\x1b[0m" in coloured
    with pytest.raises(
        InvalidParameterError, match=r"words must be a bool \(True: whole words, not subword tokens\); got 'yes'\."
    ):
        render_tokens_terminal(words, values, words="yes")


def test_explain_on_a_black_box_text_model_shows_its_words_as_they_are(tmp_path: Path) -> None:
    """`whybox explain --text 'I love ##python'` showed 'love[+0.5]python[+1]' and a 'tok subword' span 'python':
    the terminal line and tokens.html now show explain_text's words, '##python' among them, as its to_html does."""
    (tmp_path / "bb.py").write_text(BB_PY, encoding="utf-8")
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli, ["explain", "--model", f"{tmp_path / 'bb.py'}:make", "--text", "I love ##python", "--method", "occlusion",
              "--out", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "    I[+0] love[+0.5] ##python[+1]" in res.output.splitlines()
    page = (out / "tokens.html").read_text(encoding="utf-8")
    spans = re.findall(r"<span class=\"([^\"]+)\"[^>]*>([^<]*)</span>", page)
    assert spans == [("tok", "I"), ("tok", "love"), ("tok", "##python")]
    assert "subword" not in page


# ---------------------------------------------------------------------------------------------- empty pictures
@pytest.mark.parametrize("shape", [(3, 0, 5), (1, 4, 0), (3, 0, 0)])
def test_overlay_refuses_an_image_without_pixels_naming_its_shape(shape: tuple[int, int, int]) -> None:
    with pytest.raises(InvalidInputError) as info:
        overlay(np.zeros(shape), np.zeros((1, 5)))
    assert str(info.value) == (
        f"image must be at least 1 x 1 pixels; got shape {shape}. Pass a picture with a height and a width, "
        "(3, H, W) or (1, H, W)."
    )


@pytest.mark.parametrize(("shape", "dtype"), [((0, 3, 3), np.float64), ((2, 0, 4), np.uint8), ((0, 0, 3), np.float32)])
def test_save_png_refuses_an_array_without_pixels_naming_its_shape(
    tmp_path: Path, shape: tuple[int, int, int], dtype: Any
) -> None:
    path = tmp_path / "empty.png"
    with pytest.raises(InvalidInputError) as info:
        save_png(path, np.zeros(shape, dtype=dtype))
    assert str(info.value) == (
        f"array must be at least 1 x 1 pixels; got shape {shape}. Pass an (H, W, 3) or (H, W, 4) array with a "
        "height and a width."
    )
    assert not path.exists()
