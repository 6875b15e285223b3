#!/usr/bin/env python
"""Integrated Gradients: completeness error of each quadrature rule against the number of steps.

For every rule and n_steps, on the digits CNN (the first ``--digits`` test images, float32) and on
EfficientNet-Lite0 (the first ``--photos`` of bench/lima.py's photos at 224 px), with the zero baseline and the
predicted class: the error |sum(IG) - (f(x) - f(x'))| / |f(x) - f(x')| per image (``meta["delta_rel"]``),
summarised as median, 90th percentile, maximum and the count above 1 %, plus seconds per image. Same gradient
count for every rule.
The relative error is ill-conditioned where f(x) is close to f(x'), so the table also gives the absolute error
|sum(IG) - (f(x) - f(x'))| (median and maximum, logits) and the largest |f(x) - f(x')| among the images above 1 %.

Run ``python bench/ig_completeness.py [--quick]`` from the repository root. Writes
``bench/results/ig_completeness.md`` and ``.json``. Offline.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

import whybox
import whybox.data as wd

HERE = Path(__file__).resolve().parent
RULES = ("gausslegendre", "riemann_trapezoid", "trapezoid", "adaptive")


def run(model: torch.nn.Module, x: torch.Tensor, steps: list[int], batch_size: int) -> list[dict[str, object]]:
    rows = []
    with torch.no_grad():
        target = model(x).argmax(1)
    for n in steps:
        for rule in RULES:
            t = time.perf_counter()
            e = whybox.explain(
                model, x, "integrated_gradients", method=rule, n_steps=n, target=target, batch_size=batch_size
            )
            sec = (time.perf_counter() - t) / x.shape[0]
            d = e.meta["delta_rel"].numpy() * 100
            ab = e.meta["delta"].abs().numpy()
            df = (e.meta["f_x"] - e.meta["f_baseline"]).abs().numpy()
            rows.append(
                {
                    "n_steps": n,
                    "rule": rule,
                    "median_pct": float(np.median(d)),
                    "p90_pct": float(np.percentile(d, 90)),
                    "max_pct": float(d.max()),
                    "over_1pct": int((d > 1).sum()),
                    "abs_median": float(np.median(ab)),
                    "abs_max": float(ab.max()),
                    "max_df_over_1pct": float(df[d > 1].max()) if (d > 1).any() else None,
                    "images": int(d.size),
                    "s_per_image": sec,
                    "per_image_pct": [round(float(v), 4) for v in d] if d.size <= 16 else None,
                }
            )
            print(
                f"  n={n:4d} {rule:18s} median {rows[-1]['median_pct']:7.3f}%  p90 {rows[-1]['p90_pct']:7.3f}%  "
                f"max {rows[-1]['max_pct']:8.2f}%  >1%: {rows[-1]['over_1pct']}/{d.size}  {sec:.3f} s/img",
                flush=True,
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="digits only, 50 images, 64 steps")
    ap.add_argument("--digits", type=int, default=200, help="digits test images (default 200)")
    ap.add_argument("--photos", type=int, default=16, help="EfficientNet-Lite0 photos (default 16, at most 42)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict[str, object] = {
        "machine": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    x, _ = wd.load_digits("test")
    n_digits = 50 if args.quick else args.digits
    print(f"digits CNN, {n_digits} test images")
    out["digits"] = run(wd.digits_cnn().eval(), x[:n_digits], [64] if args.quick else [16, 32, 64, 128], 256)
    if not args.quick:
        from lima import effnet_images  # bench/lima.py: the photos every image bench uses

        photos, _ = effnet_images(args.photos)
        print(f"EfficientNet-Lite0, {photos.shape[0]} photos at 224 px")
        out["efficientnet-lite0"] = run(wd.efficientnet_lite0().eval(), photos, [32, 64, 128], 16)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ig_completeness.json").write_text(json.dumps(out, indent=1))
    lines = [
        "# IG completeness error by rule and steps",
        "",
        "| model | n_steps | rule | median % | p90 % | max % | > 1 % | largest abs(f(x) - f(x')) of those | "
        "median abs error | max abs error | s / image |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in ("digits", "efficientnet-lite0"):
        for r in out.get(model, []):  # type: ignore[union-attr]
            lines.append(
                f"| {model} | {r['n_steps']} | {r['rule']} | {r['median_pct']:.3f} | {r['p90_pct']:.3f} | "
                f"{r['max_pct']:.2f} | {r['over_1pct']}/{r['images']} | "
                f"{'-' if r['max_df_over_1pct'] is None else format(r['max_df_over_1pct'], '.3f')} | "
                f"{r['abs_median']:.4f} | {r['abs_max']:.4f} | {r['s_per_image']:.3f} |"
            )
    (args.out / "ig_completeness.md").write_text("\n".join(lines) + "\n")
    print((args.out / "ig_completeness.md").read_text())


if __name__ == "__main__":
    main()
