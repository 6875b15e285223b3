"""``whybox`` command line: ``whybox methods`` and ``whybox demo``.

A thin layer over the public API (:func:`whybox.explain`, :func:`whybox.methods`), :mod:`whybox.data`
for the demo model and images, and :mod:`whybox.report` for the pictures and the HTML page.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

import whybox
from whybox.report import (
    output_path,
    overlay,
    render_demo_index,
    safe_component,
    save_grid_figure,
    save_png,
    save_titled_png,
    write_text_atomic,
)

__all__ = ["DEMO_MODELS", "DEMO_OPTIONS", "main"]

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
    },
    "digits-cnn": {
        "integrated_gradients": {"n_steps": 32},
        "smoothgrad": {"n_samples": 16},
        "rise": {"n_masks": 1000},
        "shapley_sampling": {"n_permutations": 4},
    },
}

_N_DIGITS = 3
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
    model: torch.nn.Module
    inputs: torch.Tensor  # model inputs (N, C, H, W)
    display: torch.Tensor  # (N, 3, H, W) in [0, 1]
    names: list[str]
    labels: list[str]


def _load_demo(model_name: str, photo_names: list[str] | None) -> _DemoData:
    from whybox import data

    if model_name == "digits-cnn":
        x, y = data.load_digits("test")
        x, y = x[:_N_DIGITS], y[:_N_DIGITS]
        names = [f"digit test #{i} (true {int(t)})" for i, t in enumerate(y)]
        return _DemoData(data.digits_cnn(), x, x.repeat(1, 3, 1, 1), names, [str(c) for c in range(10)])
    try:
        model = data.efficientnet_lite0()
        labels = data.imagenet_labels()
    except data.MissingExtraError as exc:
        raise DemoExtraMissing(f"--model efficientnet-lite0 needs the optional 'demo' extra. {exc}") from None
    x, names = data.photos(photo_names)
    return _DemoData(model, x, data.imagenet_unnormalize(x), list(names), labels)


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


def _run_method(demo: _DemoData, method: str, options: dict[str, Any], target: torch.Tensor) -> _MethodRun:
    run = _MethodRun(method, options)
    start = time.perf_counter()
    try:
        exp = whybox.explain(demo.model, demo.inputs, method, target=target, **options)
        run.maps = exp.to_map("sum").detach().cpu()
        run.reading = _reading(method, exp.params)
    except Exception as exc:  # reported in the table, the page and the exit code; the demo goes on
        run.seconds = time.perf_counter() - start
        run.error = f"{type(exc).__name__}: {exc}"
        return run
    run.seconds = time.perf_counter() - start
    run.n_forward = int(exp.meta.get("n_forward", 0))
    run.n_backward = int(exp.meta.get("n_backward", 0))
    finite = exp.meta.get("finite", [True] * len(exp))
    degenerate = exp.meta.get("degenerate", [False] * len(exp))
    run.notes = [
        ("non-finite values (shown as 0)" if not ok else "") or ("constant map (shown blank)" if deg else "")
        for ok, deg in zip(finite, degenerate, strict=True)
    ]
    return run


_READING_TEXT = {
    "signed": "red raises the score, blue lowers it",
    "positive": "brighter = larger magnitude",
    "relative": "brighter = more relevant (relative)",
}


def _reading(method: str, params: dict[str, Any]) -> str:
    """How to colour a method's maps (see :mod:`whybox.report.overlay`).

    CAMs (min-max scaled) and RISE (a large constant offset) are relative relevance; Saliency with
    ``abs=True`` and SmoothGrad's squared/variance variants are magnitudes; every other method returns
    attributions whose zero and sign mean something, shown centred on zero even when all share one sign.
    """
    from whybox.explainers.cam import CAM

    if issubclass(whybox.get_explainer(method), CAM) or method == "rise":
        return "relative"
    if params.get("abs") is True or params.get("variant") in ("square", "var"):
        return "positive"
    return "signed"


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


# ---------------------------------------------------------------------------------------------- commands
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
def demo_cmd(out_dir: Path, methods_opt: str | None, photos_opt: str | None, model_name: str, full: bool) -> None:
    """Explain bundled images with every method; write overlays, grids and an index.html."""
    from whybox.data import PHOTOS

    chosen_methods = _split_list(methods_opt, valid=whybox.methods(), what="method", param="--methods")
    methods = chosen_methods or whybox.methods()
    if photos_opt is not None and model_name != "efficientnet-lite0":
        raise click.BadParameter(
            f"--photos chooses ImageNet photos; it does not apply to --model {model_name}.", param_hint="--photos"
        )
    photo_names = _split_list(photos_opt, valid=PHOTOS, what="photo", param="--photos")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(f"cannot create {str(out_dir)!r}: {exc}", param_hint="--out") from None

    demo = _load_demo(model_name, photo_names)
    with torch.no_grad():
        probs = demo.model(demo.inputs).softmax(1)
    top_p, top_i = probs.topk(min(_TOP_K, probs.shape[1]), dim=1)
    target = top_i[:, 0].clone()

    click.echo(f"model: {model_name}")
    for i, name in enumerate(demo.names):
        click.echo(f"image {i}: {name}: {demo.labels[int(target[i])]} ({float(top_p[i, 0]):.1%})")
    options = {} if full else DEMO_OPTIONS[model_name]
    for m in methods:
        click.echo(f"options {m}: {_options_text(options.get(m, {}))}")
    runs: list[_MethodRun] = []
    for m in methods:
        click.echo(f"running {m} ...", err=True)
        runs.append(_run_method(demo, m, dict(options.get(m, {})), target))
    click.echo(_table(runs))

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
    )
    index = write_text_atomic(output_path(out_dir, "index.html"), page)
    click.echo(f"wrote {index}")
    failed = [r for r in runs if r.error]
    if failed:
        names = ", ".join(r.name for r in failed)
        raise click.ClickException(f"{len(failed)} of {len(runs)} methods failed: {names} (see the table above).")


if __name__ == "__main__":  # pragma: no cover
    main()
