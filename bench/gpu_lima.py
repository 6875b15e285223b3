#!/usr/bin/env python
"""LIMA on a GPU: where its time goes, and which engine changes would bring it to the model's throughput.

A prepared script for a short GPU lease (bench/results/cuda.md explains why: on an H100, LIMA's naive search ran
at 24 % of EfficientNet-Lite0's throughput, CPU-bound, with a new batch shape at every search step). Parts
(``--parts``, all by default):

- ``throughput``: EfficientNet-Lite0's forward images/s at 224 px by batch size, weight and input layout, TF32.
- ``engine``: LIMA (N = 49 grid regions, ``--images`` photos in one call, TF32 off) under engine variants, each
  patched in for the run only: ``as-is``; ``bucket`` (every model call padded, by repeating its last row, to the
  next power of two of at least 32 rows, so that cuDNN sees a handful of shapes; the padded rows' outputs are
  dropped and not counted as passes); ``cl`` (inputs handed over channels-last on CUDA too, as the engine does on
  the CPU); ``bucket+cl``; and ``cl-weights`` (the model's weights channels-last, inputs as the engine gives
  them). Seconds, passes/s, the share of the model's own rate at the same mean batch, and whether the orders
  equal the ``as-is`` run's.
- ``padding``: the engine's padding of CUDA chunks (``padded``: ``whybox.masking.engine.padded_rows``, chunks
  up to 256 rows) against no padding, against its series at every size (``all``) and against powers of two of at
  least 32 rows, each in a fresh process (cuDNN's plan cache starts empty; one
  warm-up forward first): naive and predictive on photos 0-3 (first use of the shapes) and then on photos 4-7
  (steady state: the shapes seen).
- ``research``: naive against the fast searches (``--searches``) on 63 photos no CPU run has used (the 7 source
  images cropped to the top right, bottom left, centre 50 %, centre 85 %, and mirrored crops): passes, insertion
  and deletion AUC differences with standard errors. Stops starting new searches after ``--budget`` seconds.

Run ``python bench/gpu_lima.py [--quick] [--parts ...]`` on a GPU machine from the repository root (``--device cpu``
runs the same code on the CPU, for checking the script); writes ``bench/results/cuda_lima.md`` and ``.json``
(``--out``). Offline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lima import effnet_images, grid_labels, parse_search, trap  # bench/lima.py, beside this script

import whybox
import whybox.data as wd
from whybox.masking.engine import MaskingEngine

HERE = Path(__file__).resolve().parent
VARIANTS = ("as-is", "bucket", "cl", "bucket+cl", "cl-weights")


# --------------------------------------------------------------------------- engine variants
def _bucket(n: int) -> int:
    return max(32, 1 << (n - 1).bit_length())


@contextlib.contextmanager
def engine_variant(name: str) -> Iterator[None]:
    """Patch ``MaskingEngine.call`` for the duration of a run (``as-is`` and ``cl-weights`` leave it alone)."""
    original = MaskingEngine.call
    bucket, cl = "bucket" in name, name in ("cl", "bucket+cl")

    def call(self: MaskingEngine, fn: Callable[[torch.Tensor], Any], inp: torch.Tensor) -> Any:
        if inp.dim() != 4 or inp.device.type == "cpu":
            return original(self, fn, inp)
        n = inp.shape[0]
        if cl:
            inp = inp.contiguous(memory_format=torch.channels_last)
        if bucket and _bucket(n) > n:
            pad = inp[-1:].expand(_bucket(n) - n, *inp.shape[1:])
            inp = torch.cat([inp, pad]).contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
            return fn(inp)[:n]
        return fn(inp)

    if name not in ("as-is", "cl-weights"):
        MaskingEngine.call = call  # type: ignore[method-assign]
    try:
        yield
    finally:
        MaskingEngine.call = original  # type: ignore[method-assign]


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- parts
def throughput(model: torch.nn.Module, dev: torch.device, sizes: list[int], calls: int) -> list[dict[str, Any]]:
    rows = []
    for weights in ("NCHW", "channels-last"):
        m = model.to(memory_format=torch.channels_last if weights != "NCHW" else torch.contiguous_format)
        for inputs in ("NCHW", "channels-last"):
            for tf32 in (False, True):
                if dev.type == "cuda":
                    torch.backends.cudnn.allow_tf32 = tf32
                elif tf32:
                    continue
                rates = {}
                for bs in sizes:
                    x = torch.randn(bs, 3, 224, 224, device=dev)
                    if inputs != "NCHW":
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.no_grad():
                        for _ in range(2):
                            m(x)
                        sync(dev)
                        t = time.perf_counter()
                        for _ in range(calls):
                            m(x)
                        sync(dev)
                    rates[bs] = calls * bs / (time.perf_counter() - t)
                rows.append({"weights": weights, "inputs": inputs, "tf32": tf32, "images_per_s": rates})
                print(f"weights {weights} inputs {inputs} tf32={tf32}: {rates}", flush=True)
    model.to(memory_format=torch.contiguous_format)
    if dev.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
    return rows


def model_rate(model: torch.nn.Module, dev: torch.device, bs: int) -> float:
    x = torch.randn(bs, 3, 224, 224, device=dev)
    with torch.no_grad():
        model(x)
        sync(dev)
        t = time.perf_counter()
        for _ in range(3):
            model(x)
        sync(dev)
    return 3 * bs / (time.perf_counter() - t)


def run_lima(model: torch.nn.Module, x: torch.Tensor, search: str, batch: int) -> tuple[whybox.Explanation, float]:
    lab = grid_labels(x.shape[-2], x.shape[-1], 49).to(x.device)
    name, opts = parse_search(search)
    calls: list[int] = []
    hook = model.register_forward_pre_hook(lambda _m, args: calls.append(int(args[0].shape[0])))
    sync(x.device)
    t = time.perf_counter()
    try:
        e = whybox.explain(model, x, "lima", search=name, regions=lab, batch_size=batch, **opts)
        sync(x.device)
    finally:
        hook.remove()
    e.meta["model_calls"] = calls  # rows per model call (padded rows included)
    return e, time.perf_counter() - t


def engine(model: torch.nn.Module, x: torch.Tensor, batch: int, searches: list[str]) -> list[dict[str, Any]]:
    rows = []
    for search in searches:
        ref: torch.Tensor | None = None
        for variant in VARIANTS:
            if variant == "cl-weights":
                model.to(memory_format=torch.channels_last)
            try:
                with engine_variant(variant):
                    e, sec = run_lima(model, x, search, batch)
            finally:
                model.to(memory_format=torch.contiguous_format)
            calls = e.meta["model_calls"]
            passes = int(e.meta["n_forward"])
            order = e.meta["order"].cpu()
            ref = order if ref is None else ref
            same = float((order == ref).all(1).double().mean())
            mean_batch = sum(calls) / len(calls)
            rate = model_rate(model, x.device, max(1, round(mean_batch)))
            rows.append({"search": search, "variant": variant, "seconds": sec, "passes": passes, "calls": len(calls),
                         "shapes": len(set(calls)), "rows_run": sum(calls),
                         "passes_per_s": passes / sec, "model_rate_at_mean_batch": rate,
                         "same_order_as_as_is": same})  # fmt: skip
            print(f"{search:10s} {variant:11s} {sec:7.2f}s {len(calls)} calls, {len(set(calls))} shapes, "
                  f"{sum(calls)} rows run, {passes / sec:8.0f} passes/s "
                  f"({passes / sec / rate:.0%} of the model at its mean batch) same order {same:.2f}", flush=True)  # fmt: skip
    return rows


PADDINGS = ("unpadded", "padded", "all", "pow2")


@contextlib.contextmanager
def padding_variant(name: str) -> Iterator[None]:
    import whybox.masking.engine as eng

    pads, rows, cap = MaskingEngine._pads, eng.padded_rows, eng.PAD_MAX_ROWS
    if name == "unpadded":
        MaskingEngine._pads = lambda self, inp: False  # type: ignore[method-assign]
    elif name == "pow2":
        eng.padded_rows = lambda n, b: n if n >= b else min(_bucket(n), b)
    elif name == "all":  # the series at every size, not only up to 256 rows
        eng.PAD_MAX_ROWS = 1 << 62
    try:
        yield
    finally:
        MaskingEngine._pads = pads  # type: ignore[method-assign]
        eng.padded_rows, eng.PAD_MAX_ROWS = rows, cap


def padding_worker(model: torch.nn.Module, dev: torch.device, batch: int, variant: str) -> list[dict[str, Any]]:
    with torch.no_grad():
        model(torch.randn(5, 3, 224, 224, device=dev))  # CUDA and cuDNN initialised outside the timings
    sync(dev)
    x = effnet_images(8)[0].to(dev)
    rows = []
    with padding_variant(variant):
        for search in ("naive", "predictive"):
            for phase, xs in (("first use", x[:4]), ("steady", x[4:])):
                e, sec = run_lima(model, xs, search, batch)
                calls, passes = e.meta["model_calls"], int(e.meta["n_forward"])
                rows.append({"variant": variant, "search": search, "phase": phase, "seconds": sec, "passes": passes,
                             "rows_run": sum(calls), "shapes": len(set(calls)), "passes_per_s": passes / sec})  # fmt: skip
                print(rows[-1], flush=True)
    return rows


def padding(batch: int, out_dir: Path, variants: list[str]) -> list[dict[str, Any]]:
    import subprocess
    import sys

    rows: list[dict[str, Any]] = []
    for variant in variants:
        f = out_dir / f"padding_{variant}.json"
        cmd = [sys.executable, __file__, "--parts", "padding-worker", "--variant", variant, "--out", str(out_dir),
               "--batch-size", str(batch)]  # fmt: skip
        subprocess.run(cmd, check=True)
        rows += json.loads(f.read_text())
    return rows


def research_images() -> torch.Tensor:
    from sklearn.datasets import load_sample_images

    raw = [wd.photo(n) for n in wd.PHOTOS] + list(load_sample_images().images)
    out = []
    for v in ("topright", "bottomleft", "c50", "c50m", "topleftm", "bottomrightm", "toprightm", "bottomleftm", "c85"):
        for img in raw:
            h, w = img.shape[:2]
            a, b = int(h * 0.8), int(w * 0.8)
            if v.startswith("topright"):
                img = img[:a, w - b :]
            elif v.startswith("bottomleft"):
                img = img[h - a :, :b]
            elif v.startswith("topleft"):
                img = img[:a, :b]
            elif v.startswith("bottomright"):
                img = img[h - a :, w - b :]
            elif v.startswith("c50"):
                img = img[h // 4 : h - h // 4, w // 4 : w - w // 4]
            else:
                img = img[int(h * 0.075) : h - int(h * 0.075), int(w * 0.075) : w - int(w * 0.075)]
            if v.endswith("m"):
                img = img[:, ::-1]
            out.append(wd.imagenet_preprocess(img.copy()))
    return torch.stack(out)


def research(model: torch.nn.Module, x: torch.Tensor, batch: int, searches: list[str], budget: float) -> list[dict]:
    t0, rows, ref = time.perf_counter(), [], None
    for search in ["naive", *searches]:
        if time.perf_counter() - t0 > budget:
            print(f"budget of {budget:.0f}s spent; {search} and later not run", flush=True)
            break
        e, sec = run_lima(model, x, search, batch)
        ins = trap(e.meta["empty_score"], e.meta["curve_kept"])
        dele = trap(e.meta["full_score"], e.meta["curve_removed"])
        passes = np.array(e.meta["search_passes"], dtype=float)
        row = {"search": search, "seconds": sec, "passes": passes.mean(), "ins": ins.mean(), "del": dele.mean()}
        if ref is None:
            ref = (passes, ins, dele)
        else:
            di, dd = ins - ref[1], dele - ref[2]
            n = len(di)
            row.update(x_fewer=ref[0].mean() / passes.mean(), d_ins=di.mean(), se_ins=di.std(ddof=1) / math.sqrt(n),
                       d_del=dd.mean(), se_del=dd.std(ddof=1) / math.sqrt(n))  # fmt: skip
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return rows


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="throughput,engine,research")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=16, help="photos in the engine part")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--searches", default="predictive,predictive:4:1:8,predictive:3:1:8:0.25,bidirectional")
    ap.add_argument("--budget", type=float, default=240.0, help="seconds for the research part")
    ap.add_argument("--paddings", default=",".join(PADDINGS), help="padding: the variants compared")
    ap.add_argument("--variant", default="padded", help="padding-worker: which padding (internal)")
    ap.add_argument("--quick", action="store_true", help="4 photos, fewer batch sizes, naive and predictive only")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    parts = args.parts.split(",")
    n_img = 4 if args.quick else args.images
    model = wd.efficientnet_lite0().eval().to(dev)
    out: dict[str, Any] = {
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "batch_size": args.batch_size,
    }
    if "throughput" in parts:
        out["throughput"] = throughput(model, dev, [64, 256] if args.quick else [64, 256, 1024], 2 if args.quick else 3)
    if "engine" in parts:
        x = effnet_images(n_img)[0].to(dev)
        out["engine"] = engine(model, x, args.batch_size, ["naive", "predictive"])
    if "padding-worker" in parts:
        args.out.mkdir(parents=True, exist_ok=True)
        rows = padding_worker(model, dev, args.batch_size, args.variant)
        (args.out / f"padding_{args.variant}.json").write_text(json.dumps(rows, indent=1))
        return
    if "padding" in parts:
        args.out.mkdir(parents=True, exist_ok=True)
        out["padding"] = padding(args.batch_size, args.out, args.paddings.split(","))
    if "research" in parts:
        x = research_images()[: n_img if args.quick else None].to(dev)
        searches = ["predictive"] if args.quick else args.searches.split(",")
        out["research"] = research(model, x, args.batch_size, searches, args.budget)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cuda_lima.json").write_text(json.dumps(out, indent=1, default=float))
    lines = [f"# LIMA on {out['gpu']} ({out['device']}, torch {out['torch']}, TF32 off unless stated)", ""]
    if "engine" in out:
        lines += ["## Engine variants (N = 49 grid regions, EfficientNet-Lite0, 224 px)", "",
                  "| search | variant | seconds | model calls | batch shapes | rows run / passes | passes / s | share of "
                  "the model's rate | same order as as-is |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in out["engine"]:
            share = r["passes_per_s"] / r["model_rate_at_mean_batch"]
            lines.append(f"| {r['search']} | {r['variant']} | {r['seconds']:.2f} | {r['calls']} | {r['shapes']} | "
                         f"{r['rows_run'] / r['passes']:.2f} | {r['passes_per_s']:.0f} | "
                         f"{share:.0%} | {r['same_order_as_as_is']:.2f} |")  # fmt: skip
        lines.append("")
    if "padding" in out:
        lines += ["## Padding CUDA chunks (N = 49 grid regions, EfficientNet-Lite0, 224 px, 4 photos per call)", "",
                  "| search | photos | padding | seconds | passes / s | rows run / passes | batch shapes |",
                  "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
        for r in sorted(out["padding"], key=lambda r: (r["search"], r["phase"], PADDINGS.index(r["variant"]))):
            lines.append(f"| {r['search']} | {r['phase']} | {r['variant']} | {r['seconds']:.2f} | "
                         f"{r['passes_per_s']:.0f} | {r['rows_run'] / r['passes']:.2f} | {r['shapes']} |")  # fmt: skip
        lines.append("")
    if "research" in out:
        lines += ["## Searches against naive on the 63 research photos", "",
                  "| search | passes / image | x fewer | Δ insertion | Δ deletion |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        for r in out["research"]:
            if "d_ins" in r:
                lines.append(f"| {r['search']} | {r['passes']:.1f} | {r['x_fewer']:.2f} | "
                             f"{r['d_ins']:+.4f} ± {r['se_ins']:.4f} | {r['d_del']:+.4f} ± {r['se_del']:.4f} |")  # fmt: skip
            else:
                lines.append(f"| {r['search']} | {r['passes']:.1f} | 1.00 | ins {r['ins']:.4f} | del {r['del']:.4f} |")
        lines.append("")
    (args.out / "cuda_lima.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
