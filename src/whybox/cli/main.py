"""``whybox`` command line: ``whybox methods``, ``whybox demo`` and ``whybox debug`` here; ``explain``,
``evaluate``, ``compare``, ``report`` and ``metrics`` in :mod:`whybox.cli.jobs`.

A thin layer over the public API (:func:`whybox.explain`, :func:`whybox.methods`), :mod:`whybox.data`
for the demo model and images, and :mod:`whybox.report` for the pictures and the HTML page.
"""

from __future__ import annotations

import inspect
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

import whybox
from whybox.cli import jobs as _jobs
from whybox.report import (
    output_path,
    overlay,
    render_demo_index,
    safe_component,
    save_grid_figure,
    save_png,
    save_stability_figure,
    save_titled_png,
    write_text_atomic,
)

__all__ = ["DEMO_MODELS", "DEMO_OPTIONS", "LEADERBOARD", "STABILITY_OPTIONS", "main"]

DEMO_MODELS = ("efficientnet-lite0", "digits-cnn")

#: Method options the demo uses per model, chosen so that the EfficientNet-Lite0 demo (5 photos, every
#: method) runs in a few minutes on two CPU cores. Methods not listed run with their defaults;
#: ``whybox demo --full`` uses every method's defaults. ``batch_size=16``: on a CPU, EfficientNet-Lite0 costs
#: about half as much per image in batches of 8-16 as in batches of 64 (cache-bound), so the
#: forward-heavy methods use 16.
DEMO_OPTIONS: dict[str, dict[str, dict[str, Any]]] = {
    "efficientnet-lite0": {
        # gradients: fewer samples than the papers' 50; enough for a stable picture on these photos
        "integrated_gradients": {"n_steps": 32, "batch_size": 16},
        "smoothgrad": {"n_samples": 16, "batch_size": 16},
        # Score-CAM costs one forward pass per channel. At its default layer (the head's 1280-channel ReLU6,
        # "_swish@1", the layer the other CAMs use) that is 1280 passes per photo. The last MBConv block has
        # 320 channels (1/4 of the cost), but it is a linear bottleneck with signed activations and its maps are
        # visibly less object-centred (motorcycle, rocket): compare with --full before trusting this one.
        "scorecam": {"layer": "_blocks.15", "batch_size": 16},
        # perturbation methods: a few dozen to a few hundred forward passes per photo each
        "occlusion": {"window": 56, "stride": 28, "batch_size": 16},  # 7 x 7 positions
        "feature_ablation": {"batch_size": 16},  # 28-pixel grid: 64 patches
        "rise": {"n_masks": 256, "batch_size": 16},  # the paper uses 4000 (the default)
        "lime": {"n_samples": 128, "batch_size": 16},  # ~50 SLIC superpixels
        "kernel_shap": {"n_samples": 128, "batch_size": 16},  # ~50 SLIC superpixels
        "shapley_sampling": {"n_permutations": 2, "n_segments": 25, "batch_size": 16},  # 4 walks over ~25 regions
        "exact_shapley": {"features": "grid", "patch": (75, 112), "batch_size": 16},  # 3 x 2 regions: 64 coalitions
        # the predictive search over ~25 SLICO superpixels: ~300 passes per photo (49 regions, the default: ~800)
        "lima": {"n_regions": 25, "batch_size": 16},
    },
    "digits-cnn": {
        "integrated_gradients": {"n_steps": 32},
        "smoothgrad": {"n_samples": 16},
        "rise": {"n_masks": 1000},
        "shapley_sampling": {"n_permutations": 4},
        # 16 cells of 2 x 2 pixels (SLIC on 8 x 8 digits gives single pixels)
        "lima": {"regions": "grid", "n_regions": 16},
    },
}

#: The leaderboard's faithfulness protocol, the same for every method: pixel steps (each step perturbs the same
#: share of the pixels, whatever the method's resolution or segmentation), ordered by each method's map. Deletion
#: fills with zero (mid-grey in EfficientNet-Lite's input space, as RISE), insertion starts from RISE's blur:
#: each metric's default fill. 10 steps of 10 % (11 forward passes per image and metric) keep it cheap: the whole
#: leaderboard costs about as much as the demo's LIME, Kernel SHAP and RISE rows together.
LEADERBOARD: dict[str, dict[str, Any]] = {
    "deletion": {"steps": 10, "fill": "zero"},
    "insertion": {"steps": 10, "fill": "blur"},
}
_LEADERBOARD_SORT = "insertion"  # higher first; deletion is shown next to it
_RANDOM_ROW = "(random)"  # a seeded uniform random map: what an uninformative method scores

#: LIME options of the stability run (10 seeds on one image), on top of the demo's LIME options; where they use
#: fewer samples than the demo's own LIME run, the output says so. EfficientNet-Lite0: the demo's 128 samples
#: (10 runs on one photo cost twice the LIME row, about 20 s on 2 cores); digits: 200 instead of LIME's default 1000.
STABILITY_OPTIONS: dict[str, dict[str, Any]] = {
    "efficientnet-lite0": {},
    "digits-cnn": {"n_samples": 200},
}
_STABILITY_RUNS = 10
_STABILITY_K = 10
_METRIC_BATCH = {"efficientnet-lite0": 16, "digits-cnn": 64}  # forward batch of the leaderboard metrics

_N_DIGITS = 3

#: The demo's dataset run: digits test images (with efficientnet-lite0's demo) and the metrics scored on them.
DEMO_DIGITS = 200
DEMO_DATASET_METRICS = ("deletion", "insertion", "sparseness")
_TOP_K = 5


class DemoExtraMissing(click.ClickException):
    """The optional ``demo`` extra is not installed; exits with code 2 like a usage error."""

    exit_code = 2


# ---------------------------------------------------------------------------------------------- helpers
def _describe(cls: type) -> str:
    """First non-empty line of a class docstring, without reStructuredText double backticks."""
    for line in (cls.__doc__ or "").strip().splitlines():
        if line.strip():
            return line.strip().replace("``", "")
    return "(no description)"


def _split_list(value: str | None, *, valid: list[str] | tuple[str, ...], what: str, param: str) -> list[str] | None:
    """Parse ``a,b,c``; an unknown item raises a usage error naming it and listing the valid ones."""
    if value is None:
        return None
    items: list[str] = []
    for raw in value.split(","):
        item = raw.strip()
        if item and item not in items:
            items.append(item)
    if not items:
        raise click.BadParameter(f"no {what} given in {value!r}; valid {what}s: {', '.join(valid)}.", param_hint=param)
    unknown = [i for i in items if i not in valid]
    if unknown:
        listed = ", ".join(repr(u) for u in unknown)
        raise click.BadParameter(f"unknown {what} {listed}; valid {what}s: {', '.join(valid)}.", param_hint=param)
    return items


def _options_text(opts: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in opts.items()) if opts else "defaults"


@dataclass
class _DemoData:
    model_name: str
    model: torch.nn.Module
    inputs: torch.Tensor  # model inputs (N, C, H, W)
    display: torch.Tensor  # (N, 3, H, W) in [0, 1]
    names: list[str]
    labels: list[str]


def _device(value: str) -> torch.device:
    """``--device`` as a torch device (:func:`whybox.runs.loaders.resolve_device`), or a usage error naming it."""
    from whybox.runs.loaders import resolve_device

    try:
        return resolve_device(value)
    except whybox.errors.WhyboxError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from None


def _load_demo(model_name: str, photo_names: list[str] | None) -> _DemoData:
    from whybox import data

    if model_name == "digits-cnn":
        x, y = data.load_digits("test")
        x, y = x[:_N_DIGITS], y[:_N_DIGITS]
        names = [f"digit test #{i} (true {int(t)})" for i, t in enumerate(y)]
        return _DemoData(model_name, data.digits_cnn(), x, x.repeat(1, 3, 1, 1), names, [str(c) for c in range(10)])
    try:
        model = data.efficientnet_lite0()
        labels = data.imagenet_labels()
    except data.MissingExtraError as exc:
        raise DemoExtraMissing(f"--model efficientnet-lite0 needs the optional 'demo' extra. {exc}") from None
    x, names = data.photos(photo_names)
    return _DemoData(model_name, model, x, data.imagenet_unnormalize(x), list(names), labels)


@dataclass
class _MethodRun:
    name: str
    options: dict[str, Any]
    seconds: float = 0.0
    n_forward: int | None = None
    n_backward: int | None = None
    error: str | None = None
    maps: torch.Tensor | None = None  # (N, H, W)
    reading: str = "signed"  # how report.overlay colours the maps
    notes: list[str] = field(default_factory=list)
    scores: dict[str, list[float]] | None = None  # metric -> per-image scores from the run store


def _stored_runs(
    demo: _DemoData, methods: list[str], options: dict[str, dict[str, Any]], run_dir: Path
) -> list[_MethodRun]:
    """Every method over the demo images as one run in ``run_dir`` (one shard: each method explains all images in
    one call, as ``whybox.explain`` would), with the leaderboard's deletion and insertion as the run's metrics; the
    method rows are read back from the store. Rerunning the demo resumes the run: finished methods are kept."""
    from whybox.runs.job import Job, run_job
    from whybox.runs.store import RunStore, read_row

    n = demo.inputs.shape[0]
    job = Job(
        methods=tuple(methods),
        metrics=tuple(LEADERBOARD),
        method_options={m: options[m] for m in methods if options.get(m)},
        metric_options=LEADERBOARD,
        shard_size=n,
        batch_size=_METRIC_BATCH[demo.model_name],
        threads=torch.get_num_threads(),
    )
    extra = {
        "model": demo.model_name,
        "inputs": ", ".join(demo.names),
        "labels": demo.labels,
        "display": "imagenet" if demo.model_name == "efficientnet-lite0" else "clamp",
        "kind": "image",
    }
    run_job(
        job, demo.model, demo.inputs, run_dir, names=demo.names, overwrite=True, extra_config=extra,
        progress=lambda line: click.echo(line, err=True),
    )  # fmt: skip
    store = RunStore.open_existing(run_dir)
    try:
        results = {(r[0], r[1]): r for r in store.rows("results")}
        costs = {(r[1], r[2]): r for r in store.rows("costs")}
        metric_rows = store.rows("metric_values")
    finally:
        store.close()
    runs = []
    for m in methods:
        run = _MethodRun(m, dict(options.get(m, {})))
        cost = costs.get((m, "explain"))
        if cost is not None:
            run.seconds, run.n_forward, run.n_backward = float(cost[3]), int(cost[4]), int(cost[5])
        reasons = [results[(i, m)][3] for i in range(n) if results[(i, m)][2] != "ok"]
        if len(reasons) == n:
            run.error = str(reasons[0])
            runs.append(run)
            continue
        maps = []
        for i in range(n):
            status, reason = results[(i, m)][2], results[(i, m)][3]
            a = None if status != "ok" else read_row(run_dir, results[(i, m)][4], results[(i, m)][5])
            if a is None:
                maps.append(torch.zeros(demo.inputs.shape[-2:]))
                run.notes.append(f"failed: {reason}")
                continue
            t = torch.from_numpy(a)
            maps.append(t.sum(0) if t.ndim == 3 else t)
            run.notes.append("constant map (shown blank)" if bool((t == t.flatten()[0]).all()) else "")
        run.maps = torch.stack(maps)
        run.reading = _reading(m, run.options)
        run.scores = {
            k: [float(v) for (i, mm, kk, v, *_rest) in metric_rows if mm == m and kk == k and v is not None]
            for k in LEADERBOARD
        }
        runs.append(run)
    return runs


_READING_TEXT = {
    "signed": "red raises the score, blue lowers it",
    "positive": "brighter = larger magnitude",
    "relative": "brighter = more relevant (relative)",
}


def _reading(method: str, params: dict[str, Any]) -> str:
    """How to colour a method's maps: :func:`whybox.runs.report_data.method_reading`."""
    from whybox.runs.report_data import method_reading

    return method_reading(method, params)


def _table(runs: list[_MethodRun]) -> str:
    header = ("method", "seconds", "forward", "backward")
    rows = [
        (
            r.name,
            f"{r.seconds:.2f}",
            "-" if r.n_forward is None else str(r.n_forward),
            "-" if r.n_backward is None else str(r.n_backward),
        )
        for r in runs
    ]
    w0 = max(len(header[0]), *(len(r[0]) for r in rows))
    lines = [f"{header[0]:<{w0}}  {header[1]:>8}  {header[2]:>8}  {header[3]:>8}"]
    lines.append("-" * len(lines[0]))
    for r, run in zip(rows, runs, strict=True):
        line = f"{r[0]:<{w0}}  {r[1]:>8}  {r[2]:>8}  {r[3]:>8}"
        lines.append(line + (f"  FAILED: {run.error}" if run.error else ""))
    return "\n".join(lines)


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    arr = image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    return np.rint(arr * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- leaderboard
@dataclass
class _Faithfulness:
    name: str
    deletion: float | None = None
    insertion: float | None = None
    error: str | None = None
    note: str = ""


def _full_resolution(maps: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``(N, h, w)`` maps at the inputs' ``(H, W)`` (bilinear, as the overlays show them); non-finite -> 0."""
    maps = torch.nan_to_num(maps.to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if tuple(maps.shape[-2:]) != tuple(inputs.shape[-2:]):
        maps = torch.nn.functional.interpolate(
            maps.unsqueeze(1), size=tuple(inputs.shape[-2:]), mode="bilinear", align_corners=False
        ).squeeze(1)
    return maps


def _faithfulness(
    demo: _DemoData, name: str, maps: torch.Tensor, target: torch.Tensor, batch_size: int
) -> _Faithfulness:
    row = _Faithfulness(name)
    try:
        for metric, opts in LEADERBOARD.items():
            r = whybox.evaluate(
                demo.model, demo.inputs, _full_resolution(maps, demo.inputs), metric, target=target,
                batch_size=batch_size, **opts,
            )  # fmt: skip
            setattr(row, metric, float(r.scores.nanmean()))
    except Exception as exc:  # reported in the leaderboard and the exit code; the demo goes on
        row.deletion = row.insertion = None
        row.error = f"{type(exc).__name__}: {exc}"
        row.note = f"metric failed: {row.error}"
    return row


def _leaderboard(demo: _DemoData, runs: list[_MethodRun], target: torch.Tensor, batch_size: int) -> list[_Faithfulness]:
    """Mean deletion and insertion AUC over the demo images for every method run, plus a random-map row;
    sorted by insertion (best first), rows without a score last."""
    rows = []
    for run in runs:
        if run.maps is None:
            rows.append(_Faithfulness(run.name, error=run.error, note="no map: the method failed"))
        elif run.scores is not None:  # computed in the run, on the method's attributions
            row = _Faithfulness(run.name)
            for metric in LEADERBOARD:
                vals = run.scores.get(metric, [])
                setattr(row, metric, float(np.mean(vals)) if vals else None)
            if row.deletion is None or row.insertion is None:
                row.error, row.note = "metric failed", "metric failed: see the run's report"
            rows.append(row)
        else:
            rows.append(_faithfulness(demo, run.name, run.maps, target, batch_size))
    noise = torch.rand(demo.inputs.shape[0], *demo.inputs.shape[-2:], generator=torch.Generator().manual_seed(0))
    baseline = _faithfulness(demo, _RANDOM_ROW, noise, target, batch_size)
    baseline.note = baseline.note or "reference: a random map (seed 0)"
    rows.append(baseline)

    def key(r: _Faithfulness) -> tuple[bool, float, str]:
        v = getattr(r, _LEADERBOARD_SORT)
        return (v is None, -(v if v is not None else 0.0), r.name)

    return sorted(rows, key=key)


def _leaderboard_protocol(n_images: int, model_name: str = "efficientnet-lite0") -> str:
    d, i = LEADERBOARD["deletion"], LEADERBOARD["insertion"]
    # zero in the model's input space: EfficientNet-Lite's (x * 255 - 127) / 128 makes it mid-grey; the digits are raw
    # [0, 1]: black
    zero = {
        "digits-cnn": "black, the digits' background",
        "efficientnet-lite0": "mid-grey: 0 after EfficientNet-Lite's (x * 255 - 127) / 128 scaling",
    }.get(model_name, "zeros in the model's input space")
    return (
        f"Pixel-step protocol, the same for every method: {d['steps']} steps of 1/{d['steps']} of the pixels each "
        "(deletion and insertion alike), pixels taken in the order of each method's map (channels summed, signed, "
        "maps at layer resolution resized bilinearly, ties by a seeded rule). Deletion replaces removed pixels with "
        f"fill={d['fill']!r} ({zero}); insertion starts from "
        f"fill={i['fill']!r} (RISE's 11x11 Gaussian blur, sigma 5) and puts pixels back. Score: the top-1 class "
        f"probability; AUC by the trapezoid rule, mean over the {n_images} images."
    )


def _leaderboard_table(rows: list[_Faithfulness]) -> str:
    cells = [
        (
            str(k + 1) if r.insertion is not None else "-",
            r.name,
            "-" if r.deletion is None else f"{r.deletion:.4f}",
            "-" if r.insertion is None else f"{r.insertion:.4f}",
        )
        for k, r in enumerate(rows)
    ]
    w1 = max(len("method"), *(len(c[1]) for c in cells))
    lines = [f"{'rank':>4}  {'method':<{w1}}  {'deletion':>9}  {'insertion':>9}"]
    lines.append("-" * len(lines[0]))
    for c, r in zip(cells, rows, strict=True):
        line = f"{c[0]:>4}  {c[1]:<{w1}}  {c[2]:>9}  {c[3]:>9}"
        lines.append(line + (f"  {r.note}" if r.note else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- stability
@dataclass
class _Stability:
    image: int
    options: dict[str, Any]
    seconds: float = 0.0
    result: Any = None  # whybox MetricResult
    error: str | None = None


def _run_stability(demo: _DemoData, options: dict[str, Any], target: torch.Tensor, image: int = 0) -> _Stability:
    """LIME ``_STABILITY_RUNS`` times (seeds 0, 1, ...) on one image through the ``stability`` metric."""
    st = _Stability(image, options)
    start = time.perf_counter()
    try:
        st.result = whybox.evaluate(
            demo.model, demo.inputs[image : image + 1], "lime", "stability", target=target[image : image + 1],
            n_runs=_STABILITY_RUNS, k=_STABILITY_K, explainer_params=options,
        )  # fmt: skip
    except Exception as exc:  # reported on the terminal, the page and the exit code; the demo goes on
        st.error = f"{type(exc).__name__}: {exc}"
    st.seconds = time.perf_counter() - start
    return st


def _stability_stats(st: _Stability) -> list[dict[str, str]]:
    meta = st.result.meta
    k = meta["k"]
    dropped = int(meta["csi_dropped"][0])

    def num(v: torch.Tensor, fmt: str) -> str:
        x = float(v[0])
        return "n/a" if x != x else format(x, fmt)

    return [
        {"name": f"Jaccard@{k}", "value": num(meta["jaccard"], ".3f"),
         "meaning": f"mean |A and B| / |A or B| of the top-{k} superpixels A, B of two runs (1 = same sets)"},
        {"name": "Kendall tau-b", "value": num(meta["kendall"], ".3f"),
         "meaning": "mean rank agreement of all the weights of two runs (1 = same order)"},
        {"name": "VSI", "value": num(meta["vsi"], ".1f"),
         "meaning": f"Visani's variable stability index: 100 x mean share of the top-{k} shared by two runs"},
        {"name": "CSI", "value": num(meta["csi"], ".1f"),
         "meaning": "Visani's coefficient stability index: 100 x share of run pairs whose 95% CIs of a weight "
         f"overlap, averaged over the superpixels selected at least twice ({dropped} selected only once: dropped)"},
    ]  # fmt: skip


def _stability_protocol(st: _Stability, name: str, base_samples: Any) -> str:
    opts = st.options
    n = opts.get("n_samples", "default")
    text = (
        f"LIME run {_STABILITY_RUNS} times on image {st.image} ({name}) with seeds 0-{_STABILITY_RUNS - 1} "
        f"(options: {_options_text(opts)}), through whybox.evaluate(model, x, 'lime', 'stability'); top-k with "
        f"k={_STABILITY_K} by |weight|. Higher is more stable for every measure."
    )
    if base_samples is not None and n != base_samples:
        text += f" n_samples={n} here, fewer than the demo's LIME run ({base_samples}), to keep the demo short."
    return text


# ---------------------------------------------------------------------------------------------- commands
class _Group(click.Group):
    """The ``whybox`` group: Ctrl-C exits with 130 (the shell's convention), saying what was kept."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted (what was finished is kept; a compare run resumes when rerun).", err=True)
            raise click.exceptions.Exit(_jobs.EXIT_INTERRUPTED) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=whybox.__version__, prog_name="whybox")
def main() -> None:
    """whybox: explain model decisions and see how far to trust the explanations."""


@main.command("methods")
def methods_cmd() -> None:
    """List the registered explanation methods."""
    names = whybox.methods()
    width = max((len(n) for n in names), default=0)
    for name in names:
        click.echo(f"{name:<{width}}  {_describe(whybox.get_explainer(name))}")


@main.command("demo")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, dir_okay=True, writable=True, path_type=Path),
    default=Path("whybox-demo"),
    show_default=True,
    help="Folder for the PNGs and index.html (created if missing).",
)
@click.option("--methods", "methods_opt", metavar="A,B,...", help="Comma-separated methods (default: all).")
@click.option(
    "--photos",
    "photos_opt",
    metavar="A,B,...",
    help="Comma-separated bundled photos for efficientnet-lite0 (default: all).",
)
@click.option(
    "--model",
    "model_name",
    type=click.Choice(DEMO_MODELS),
    default="efficientnet-lite0",
    show_default=True,
    help="efficientnet-lite0 (real ImageNet weights; needs whybox[demo]) or digits-cnn (8x8 digits, fast).",
)
@click.option(
    "--full",
    is_flag=True,
    help="Run every method with its own defaults instead of the demo's faster options (much slower: "
    "Score-CAM at EfficientNet-Lite0's 1280-channel head takes 40-90 s per photo on 2 CPU cores).",
)
@click.option(
    "--digits",
    type=click.IntRange(min=0),
    default=None,
    help="Digits test images for the dataset run (every method, deletion/insertion/sparseness, a run directory "
    "and its report in OUT/digits-test). Default: 200 with efficientnet-lite0, 0 (none) with digits-cnn.",
)
@_jobs.device_option
def demo_cmd(
    out_dir: Path,
    methods_opt: str | None,
    photos_opt: str | None,
    model_name: str,
    full: bool,
    digits: int | None,
    device: str,
) -> None:
    """Explain bundled images with every method; write overlays, grids, an index.html, the run and its report;
    then a dataset run over the digits test set."""
    if digits is None:
        digits = DEMO_DIGITS if model_name == "efficientnet-lite0" else 0
    from whybox.data import PHOTOS

    chosen_methods = _split_list(methods_opt, valid=whybox.methods("image"), what="method", param="--methods")
    methods = chosen_methods or whybox.methods("image")
    if photos_opt is not None and model_name != "efficientnet-lite0":
        raise click.BadParameter(
            f"--photos chooses ImageNet photos; it does not apply to --model {model_name}.", param_hint="--photos"
        )
    photo_names = _split_list(photos_opt, valid=PHOTOS, what="photo", param="--photos")
    dev = _device(device)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(f"cannot create {str(out_dir)!r}: {exc}", param_hint="--out") from None

    demo = _load_demo(model_name, photo_names)
    demo.model.to(dev)
    with torch.no_grad():
        probs = demo.model(demo.inputs.to(dev)).softmax(1).cpu()
    top_p, top_i = probs.topk(min(_TOP_K, probs.shape[1]), dim=1)
    target = top_i[:, 0].clone()

    click.echo(f"model: {model_name}")
    for i, name in enumerate(demo.names):
        click.echo(f"image {i}: {name}: {demo.labels[int(target[i])]} ({float(top_p[i, 0]):.1%})")
    options = {} if full else DEMO_OPTIONS[model_name]
    for m in methods:
        click.echo(f"options {m}: {_options_text(options.get(m, {}))}")
    run_dir = out_dir / "run"
    runs = _stored_runs(demo, methods, options, run_dir)
    click.echo(_table(runs))
    click.echo("")

    start = time.perf_counter()
    board = _leaderboard(demo, runs, target, _METRIC_BATCH[model_name])
    board_seconds = time.perf_counter() - start
    click.echo(
        f"faithfulness leaderboard: mean deletion and insertion AUC over {len(demo.names)} images, "
        f"sorted by {_LEADERBOARD_SORT} (best first); {board_seconds:.1f} s"
    )
    click.echo(_leaderboard_protocol(len(demo.names), demo.model_name))
    click.echo("Lower deletion AUC is better; higher insertion AUC is better.")
    click.echo(_leaderboard_table(board))
    click.echo("")

    stability: dict[str, Any] | None = None
    st: _Stability | None = None
    if "lime" in methods:
        stab_opts = dict(options.get("lime", {}))
        if not full:
            stab_opts.update(STABILITY_OPTIONS[model_name])
        click.echo("running the LIME stability check ...", err=True)
        st = _run_stability(demo, stab_opts, target)
        base_samples = options.get("lime", {}).get(
            "n_samples", inspect.signature(whybox.get_explainer("lime")).parameters["n_samples"].default
        )
        stability = {
            "image": demo.names[st.image],
            "protocol": _stability_protocol(st, demo.names[st.image], base_samples),
            "stats": [],
            "error": st.error,
            "src": None,
        }
        click.echo(f"LIME stability ({st.seconds:.1f} s): {stability['protocol']}")
        if st.error:
            click.echo(f"  FAILED: {st.error}")
        else:
            stats = _stability_stats(st)
            stability["stats"] = stats
            for row in stats:
                click.echo(f"  {row['name']:<14} {row['value']:>7}  {row['meaning']}")
            fig_file = "stability_lime.png"
            lines = [f"{row['name']}: {row['value']}" for row in stats]
            lines.append(f"CSI dropped: {int(st.result.meta['csi_dropped'][0])} (selected once)")
            lines += ["", f"{_STABILITY_RUNS} runs, seeds 0-{_STABILITY_RUNS - 1}", f"k = {st.result.meta['k']}"]
            lines += [f"{k} = {v!r}" for k, v in stab_opts.items()]
            save_stability_figure(
                output_path(out_dir, fig_file),
                _to_uint8(demo.display[st.image]),
                st.result.meta["mean"][0],
                st.result.meta["std"][0],
                title=f"LIME stability: {demo.names[st.image]} ({demo.labels[int(target[st.image])]})",
                lines=lines,
            )
            stability["src"] = fig_file
            click.echo(f"  figure: {fig_file} (mean LIME weights, their std over the runs, the numbers)")
    else:
        click.echo("LIME stability: skipped (lime is not among --methods)")

    images = []
    for i, name in enumerate(demo.names):
        rgb = _to_uint8(demo.display[i])
        small = max(rgb.shape[:2]) < 64
        input_file = f"img{i:02d}_input.png"
        save_png(output_path(out_dir, input_file), rgb)
        label = demo.labels[int(target[i])]
        prob = float(top_p[i, 0])
        panels = [(rgb, f"input: {label} ({prob:.1%})")]
        overlays = []
        for j, run in enumerate(runs):
            src = None
            if run.maps is not None:
                pic = overlay(demo.display[i], run.maps[i], reading=run.reading)
                src = f"img{i:02d}_m{j:02d}_{safe_component(run.name)}.png"
                save_titled_png(output_path(out_dir, src), pic, f"{run.name}\n{label} ({prob:.1%})")
                panels.append((pic, run.name))
            overlays.append(
                {
                    "method": run.name,
                    "src": src,
                    "seconds": run.seconds,
                    "n_forward": "-" if run.n_forward is None else run.n_forward,
                    "n_backward": "-" if run.n_backward is None else run.n_backward,
                    "note": run.error or (run.notes[i] if run.notes else ""),
                    "reading": "" if run.error else _READING_TEXT[run.reading],
                }
            )
        grid_file = f"img{i:02d}_grid.png"
        save_grid_figure(output_path(out_dir, grid_file), panels, title=f"{name}: {label} ({prob:.1%})")
        top = [{"label": demo.labels[int(k)], "prob": float(p)} for p, k in zip(top_p[i], top_i[i], strict=True)]
        images.append(
            {
                "name": name,
                "small": small,
                "input_src": input_file,
                "grid_src": grid_file,
                "top": top,
                "overlays": overlays,
            }
        )
    page = render_demo_index(
        title=f"whybox demo: {model_name}",
        model=model_name,
        version=whybox.__version__,
        methods=[
            {
                "name": r.name,
                "options": _options_text(r.options),
                "seconds": r.seconds,
                "n_forward": r.n_forward,
                "n_backward": r.n_backward,
                "error": r.error,
            }
            for r in runs
        ],
        images=images,
        leaderboard={
            "protocol": _leaderboard_protocol(len(demo.names), demo.model_name),
            "sorted_by": f"Sorted by {_LEADERBOARD_SORT} AUC, best first. {_RANDOM_ROW} is a random map, for reference.",
            "rows": [
                {
                    "rank": k + 1 if r.insertion is not None else "-",
                    "method": r.name,
                    "deletion": r.deletion,
                    "insertion": r.insertion,
                    "note": r.note,
                    "error": r.error is not None,
                }
                for k, r in enumerate(board)
            ],
        },
        stability=stability,
    )
    index = write_text_atomic(output_path(out_dir, "index.html"), page)
    click.echo(f"wrote {index}")
    report = _jobs._write_report(run_dir, None, 24)
    click.echo(f"wrote the run ({run_dir}) and its report: {report}")
    if digits > 0:
        _digits_dataset_run(methods, out_dir / "digits-test", digits, full, dev)
    if model_name == "efficientnet-lite0":
        _sentiment_demo(out_dir, dev)
        _tabular_demo()
    failed = [r for r in runs if r.error]
    problems = []
    if failed:
        names = ", ".join(r.name for r in failed)
        problems.append(f"{len(failed)} of {len(runs)} methods failed: {names} (see the table above)")
    bad_metrics = [r.name for r in board if r.error and not any(f.name == r.name for f in failed)]
    if bad_metrics:
        problems.append(f"the leaderboard metrics failed for: {', '.join(bad_metrics)}")
    if st is not None and st.error:
        problems.append(f"the LIME stability check failed: {st.error}")
    if problems:
        raise click.ClickException("; ".join(problems) + ".")


#: The demo's sentences for the MiniLM sentiment classifier (the last two are not in its training data's style).
DEMO_TEXTS = (
    "The movie was great.",
    "The pasta was not good at all.",
    "The staff looked lovely, but I want my money back.",
    "I expected a boring lecture, yet it turned out to be fascinating.",
    "Honestly, the sequel is a masterpiece of tedium.",
)


def _sentiment_demo(out_dir: Path, device: torch.device) -> None:
    """MiniLM + the sentiment head on DEMO_TEXTS: Integrated Gradients (64 steps from [PAD]) and word occlusion
    ([MASK]); word heatmaps printed and written to sentiment.html."""
    from whybox.models.text import explain_text
    from whybox.report import render_tokens_page, render_tokens_terminal

    click.echo("")
    try:
        from whybox.data.text import minilm_sentiment

        model, tokenizer = minilm_sentiment()
    except whybox.errors.MissingExtraError as exc:
        click.echo(f"sentiment demo: skipped ({exc})")
        return
    adapter = whybox.adapt_text(model.to(device), tokenizer)
    click.echo(
        "sentiment: all-MiniLM-L6-v2 + a linear head trained on the project's 259 labelled sentences (95 % on the "
        "86 held out); word attributions to the predicted class (red: for it, blue: against it)"
    )
    rows = []
    color = sys.stdout.isatty()
    runs: tuple[tuple[str, dict[str, Any]], ...] = (("integrated_gradients", {"n_steps": 64}), ("feature_ablation", {}))
    for method, opts in runs:
        start = time.perf_counter()
        out = explain_text(adapter, list(DEMO_TEXTS), method, **opts)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            probs = adapter.scores(out.batch.inputs).softmax(1)
        extra = ""
        if method == "integrated_gradients":
            extra = f", completeness error at most {float(out.explanation.meta['delta_rel'].abs().max()):.1e}"
        click.echo(f"  {method} ({seconds:.1f} s{extra}):")
        for i, text in enumerate(DEMO_TEXTS):
            t = int(out.explanation.target[i])
            label = ("negative", "positive")[t]
            words = [w for w, _ in out.words[i]]
            values = [v for _, v in out.words[i]]
            line = render_tokens_terminal(words, values, color=color, words=True)  # explain_text's whole words
            click.echo(f"    {label} {float(probs[i, t]):.0%}  " + line)
            rows.append((f"{method}: {text} -> {label} ({float(probs[i, t]):.0%})", words, values))
    try:  # the same sentences through VADER, a rule-based black box: exact Shapley values of its words
        from whybox.models.blackbox_text import vader

        black = vader()
    except whybox.errors.MissingExtraError as exc:
        click.echo(f"  VADER: skipped ({exc})")
    else:
        start = time.perf_counter()
        enc = black.encode(list(DEMO_TEXTS))
        e = whybox.explain(black, enc.inputs, "exact_shapley", features=enc.features, fill=enc.fill(), allow_large=True)
        click.echo(f"  VADER (rules, black box), exact Shapley over words ({time.perf_counter() - start:.1f} s):")
        for i, text in enumerate(DEMO_TEXTS):
            t = int(e.target[i])
            label = ("negative", "positive")[t]
            pairs = enc.word_values(e)[i]
            words, values = [w for w, _ in pairs], [v for _, v in pairs]
            click.echo(f"    {label:<8}       " + render_tokens_terminal(words, values, color=color, words=True))
            rows.append((f"VADER exact_shapley: {text} -> {label}", words, values))
    page = output_path(out_dir, "sentiment.html")
    write_text_atomic(page, render_tokens_page(rows, title="whybox demo: sentiment, word attributions", words=True))
    click.echo(f"wrote {page}")


def _tabular_demo(n_rows: int = 3, top: int = 4) -> None:
    """scikit-learn's wine data (13 named columns, 3 cultivars), a scaler + logistic regression pipeline fitted on
    70 %: exact Shapley values of ``n_rows`` held-out wines against the training means (the oracle, 2^13
    coalitions per wine), Kernel SHAP (512 samples) beside them, the ``top`` features printed by name."""
    from sklearn.datasets import load_wine
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_wine()
    labels = np.asarray(data.target_names)[data.target]
    x_tr, x_te, y_tr, y_te = train_test_split(data.data, labels, test_size=0.3, random_state=0, stratify=labels)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x_tr, y_tr)
    reference = x_tr.mean(0)  # the fill: a removed column takes its training mean
    rows = x_te[:n_rows]
    click.echo("")
    click.echo(
        f"tabular: scikit-learn's wine data ({x_tr.shape[1]} named columns, classes {', '.join(model.classes_)}), a "
        f"scaler + logistic regression fitted on {len(x_tr)} wines ({model.score(x_te, y_te):.0%} on the "
        f"{len(x_te)} held out); Shapley values of the predicted probability for {n_rows} held-out wines, a removed "
        "column set to its training mean"
    )
    start = time.perf_counter()
    exact = whybox.explain(model, rows, "exact_shapley", fill=reference, batch_size=4096)
    t_exact = time.perf_counter() - start
    start = time.perf_counter()
    kernel = whybox.explain(model, rows, "kernel_shap", fill=reference, n_samples=512, seed=0, batch_size=4096)
    t_kernel = time.perf_counter() - start
    probs = model.predict_proba(rows)
    for i in range(n_rows):
        t = int(exact.target[i])
        a = exact.attributions[i]
        order = torch.argsort(a.abs(), descending=True)[:top].tolist()
        shown = ", ".join(f"{data.feature_names[j]} {float(a[j]):+.3f}" for j in order)
        click.echo(f"  wine {i}: {model.classes_[t]} (p={probs[i, t]:.3f}): {shown}")
    err = (kernel.attributions - exact.attributions).abs().amax() / exact.attributions.abs().amax()
    click.echo(
        f"  exact_shapley {int(exact.meta['n_forward']):,} rows in {t_exact:.2f} s; kernel_shap "
        f"{int(kernel.meta['n_forward']):,} rows in {t_kernel:.2f} s, largest difference from the exact values "
        f"{float(err):.1%} of the largest value"
    )


def _digits_dataset_run(methods: list[str], run_dir: Path, n: int, full: bool, device: torch.device) -> None:
    """Every method over the first ``n`` digits test images with the dataset metrics, as a resumable run with its
    report; prints the leaderboard."""
    from whybox import data
    from whybox.runs.job import Job, run_job

    x, y = data.load_digits("test")
    x, y = x[:n], y[:n]
    options = {} if full else DEMO_OPTIONS["digits-cnn"]
    job = Job(
        methods=tuple(methods),
        metrics=DEMO_DATASET_METRICS,
        method_options={m: options[m] for m in methods if options.get(m)},
        shard_size=50,
        batch_size=_METRIC_BATCH["digits-cnn"],
        threads=torch.get_num_threads(),
    )
    click.echo("")
    click.echo(f"dataset run: digits-cnn on the first {len(y)} digits test images, every method, metrics "
               f"{', '.join(DEMO_DATASET_METRICS)} -> {run_dir}")  # fmt: skip
    summary = run_job(
        job, data.digits_cnn().to(device), x, run_dir, names=[f"digits-test-{i:04d}" for i in range(len(y))], labels=y,
        overwrite=True, progress=lambda line: click.echo(line, err=True),
        extra_config={"model": "digits-cnn", "inputs": f"digits-test (first {len(y)})",
                      "labels": [str(c) for c in range(10)], "display": "clamp", "kind": "image"},
    )  # fmt: skip
    _jobs._print_leaderboard(run_dir)
    report = _jobs._write_report(run_dir, None, 24)
    click.echo(f"{summary.n_computed} units in {summary.seconds:.1f}s ({summary.n_skipped} already done); "
               f"{summary.n_failed_samples} failed (sample, method) pairs; report: {report}")  # fmt: skip


@main.command("debug")
@_jobs.input_options(leave_out=("limit", "config"))
@click.option("--method", default="lima", show_default=True, help="The explainer of the true class.")
@click.option(
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A method option (repeatable), e.g. n_samples=200; fill=[...] is a reference row, in the model's column "
    "order, that a hidden column becomes in the explanation and the insertion steps (needed for a CSV with text "
    "columns: --option 'fill=[40, \"oslo\", 1]').",
)
@click.option(
    "--limit", "max_mistakes", type=click.IntRange(min=1), default=None, help="Explain at most this many mistakes."
)
@click.option(
    "--regions",
    "n_regions",
    type=click.IntRange(min=1),
    default=None,
    help="Images: a grid of this many cells (a square number) [default: 16, 4 x 4 cells: 2 x 2 pixels on the 8 x 8 "
    "digits]. A table's regions are its columns, a text's its words.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, dir_okay=True, writable=True, path_type=Path),
    default=Path("whybox-debug"),
    show_default=True,
    help="Folder for mistakes.json and one PNG per mistake on images (created if missing). The mistake PNGs "
    "(mistake_NNN_<index>.png) an earlier debug wrote there (listed in .whybox-debug-files.json) and this one does "
    "not rewrite are removed; other files, your own of such names too, are left alone.",
)
def debug_cmd(**params: Any) -> None:
    """Find the inputs the model gets wrong among labelled INPUTS (default: the digits CNN on digits-test) and show
    the regions that cause each error: the true class explained, its highest confidence along insertion, and the
    culprits (regions, columns or words whose addition lowers it)."""
    import json
    import math

    from whybox.errors import WhyboxError

    params["model"] = params["model"] or "digits-cnn"
    if not params["inputs"] and params["model"] == "digits-cnn":
        params["inputs"] = ("digits-test",)
    method = params["method"]
    if method not in whybox.methods():
        raise click.BadParameter(
            f"unknown method {method!r}; choose one of {', '.join(whybox.methods())}.", param_hint="--method"
        )
    opts = _jobs.parse_options(params["options"], flag="--option", scoped=False)
    lm, ds = _jobs._load(params)
    if ds.labels is None:
        raise _jobs._fail(
            "debug needs each input's true class: give a labelled dataset (digits-test, sentiment-test), an .npz "
            "with 'y', or a CSV with --label-column."
        )
    kind = ds.kind
    applicable = _jobs.methods_for(kind, lm.module)
    if method not in applicable:
        raise click.BadParameter(
            f"{method!r} does not explain {kind} inputs; choose one of {', '.join(applicable)}.", param_hint="--method"
        )
    regions = None
    n_regions = params["n_regions"]
    if kind == "image":
        n_regions = 16 if n_regions is None else n_regions
        h, w = ds.x.shape[-2:]
        k = math.isqrt(n_regions)
        if k * k != n_regions or k > min(h, w):
            raise click.BadParameter(
                f"--regions must be a square number of grid cells up to {min(h, w) ** 2} on these {h} x {w} images "
                f"(4, 9, 16, ...); got {n_regions}.",
                param_hint="--regions",
            )
        regions = (torch.arange(h) * k // h).view(-1, 1) * k + (torch.arange(w) * k // w).view(1, -1)
    elif n_regions is not None:
        raise click.BadParameter(
            f"--regions sets a grid on images; these are {kind} inputs, whose regions are "
            f"{'words' if kind == 'text' else 'columns' if kind == 'tabular' else 'time windows'}.",
            param_hint="--regions",
        )
    from whybox.api import _options

    own = {
        "regions": "--regions", "batch_size": "--batch-size", "max_mistakes": "--limit", "method": "--method",
        "model": "--model", "inputs": "INPUTS", "labels": "the inputs' labels", "target": "the inputs' labels",
    }  # fmt: skip
    if kind == "image":  # --regions builds the grid LIMA searches (on sequences and signals n_regions sets its windows)
        own["n_regions"] = "--regions"
    elif kind in ("tabular", "text") and "n_regions" in opts:
        raise click.BadParameter(
            f"n_regions= has no effect on {kind} inputs: their regions are their "
            f"{'columns' if kind == 'tabular' else 'words'}; drop --option n_regions=...",
            param_hint="--option",
        )
    clash = [k for k in opts if k in own]
    if clash:  # find_mistakes' own arguments: set by their flags
        name = clash[0]
        raise click.BadParameter(
            f"{name}= is set by {own[name]} in whybox debug (the steps and the explanation read the same value); "
            f"drop --option {name}=...",
            param_hint="--option",
        )
    if "seed" in _options(whybox.get_explainer(method)):
        opts.setdefault("seed", params["seed"])
    out_dir = _jobs._make_dir(Path(params["out_dir"]), "--out")
    t = time.perf_counter()
    try:
        report = whybox.find_mistakes(
            lm.module, ds.texts if kind == "text" else ds.x, ds.labels, method=method,
            max_mistakes=params["max_mistakes"], regions=regions, batch_size=params["batch_size"], **opts,
        )  # fmt: skip
    except WhyboxError as exc:
        raise _jobs._fail(f"{method}: {exc}") from None
    except _jobs._MODEL_ERRORS as exc:
        raise _jobs._ModelFailed(f"{method} failed: {type(exc).__name__}: {exc}") from None
    seconds = time.perf_counter() - t
    where = f" over {n_regions} regions" if kind == "image" else ""
    click.echo(
        f"model: {lm.name}; inputs: {report.n_inputs}; accuracy {report.accuracy:.1%}; mistakes: {report.n_wrong} "
        f"({len(report.mistakes)} explained); true class explained with {method}{where} ({seconds:.1f} s)"
    )
    names = report.class_names or lm.labels

    def cls(c: int) -> str:
        return names[c] if names is not None and 0 <= c < len(names) else str(c)

    records = []
    if report.mistakes:
        columns = (ds.columns or [str(c) for c in range(ds.x.shape[1])]) if kind == "tabular" else None
        click.echo(report.table(names, column_names=columns))
    for j, m in enumerate(report.mistakes):
        record: dict[str, Any] = {
            "index": m.index, "name": ds.names[m.index], "label": cls(m.label), "predicted": cls(m.predicted),
            "p_label": m.p_label, "p_predicted": m.p_predicted, "hc": m.hc, "hc_area": m.hc_area,
            "insertion": m.insertion, "culprits": m.culprits, "drops": m.drops,
        }  # fmt: skip
        if kind == "image":
            shown = lm.display(ds.x[m.index])
            record["figure"] = _mistake_figure(out_dir, j, m, shown, method, _reading(method, opts), cls)
        elif kind == "text":
            record["culprit_words"] = m.culprit_words
            click.echo(f"  {ds.names[m.index]}: culprit words: {', '.join(map(repr, m.culprit_words)) or '-'}")
        elif kind == "tabular":
            cols = ds.columns or [str(c) for c in range(ds.x.shape[1])]
            ids = m.regions.reshape(-1).tolist()  # a region is a column, or with groups= a group of columns
            record["culprit_columns"] = [c for r in m.culprits for c, g in zip(cols, ids, strict=True) if g == r]
            click.echo(f"  {ds.names[m.index]}: culprit columns: {', '.join(record['culprit_columns']) or '-'}")
        else:  # signals: each culprit's time steps
            steps = m.regions.reshape(-1)
            spans = []
            for r in m.culprits:
                at = (steps == r).nonzero()
                spans.append([int(at.min()), int(at.max())])
            record["culprit_steps"] = spans
            click.echo(f"  {ds.names[m.index]}: culprit steps: {', '.join(f'{a}-{b}' for a, b in spans) or '-'}")
        records.append(record)
    (out_dir / "mistakes.json").write_text(json.dumps(records, indent=1), encoding="utf-8")
    figures = sum("figure" in r for r in records)
    _jobs._remove_stale(
        out_dir, re.compile(r"mistake_\d{3,}_\d+\.png"), {r["figure"] for r in records if "figure" in r}, "debug"
    )
    click.echo(f"wrote {out_dir / 'mistakes.json'}" + (f" and {figures} figures" if figures else ""))


def _mistake_figure(out_dir: Path, j: int, m: Any, shown: np.ndarray, method: str, reading: str, cls: Any) -> str:
    """One mistake's input, its true-class map (coloured in the method's ``reading``, as explain, plot and the run
    report colour it) and its culprit regions (red), side by side; returns the file name."""
    image = torch.from_numpy(np.ascontiguousarray(shown.transpose(2, 0, 1)))  # (3, H, W) in [0, 1]
    culprit = shown.copy()
    culprit[m.culprit_mask.numpy()] = culprit[m.culprit_mask.numpy()] * 0.4 + np.array([0.6, 0.0, 0.0])
    panels = [
        (_to_uint8(image), f"#{m.index}: label {cls(m.label)}, predicted {cls(m.predicted)}"),
        (overlay(image, m.attribution, reading=reading), f"{method}: why {cls(m.label)}"),
        (_to_uint8(torch.from_numpy(culprit).permute(2, 0, 1)), f"culprits: {len(m.culprits)} regions (red)"),
    ]
    path = save_grid_figure(
        output_path(out_dir, f"mistake_{j:03d}_{m.index}.png"),
        panels,
        title=f"HC of {cls(m.label)} at 25/50/75/100 %: " + " ".join(f"{v:.2f}" for v in m.hc),
        ncols=3,
    )
    return Path(path).name


_jobs.register(main)

if __name__ == "__main__":  # pragma: no cover
    main()
