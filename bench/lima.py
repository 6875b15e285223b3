#!/usr/bin/env python
"""LIMA: the searches' passes, seconds and faithfulness, LIMA against every other method, and highest confidence
on the digits CNN's mistakes.

Parts (``--parts``, all by default):

- ``searches``: for each model and region count N, every search on the same images and regions: forward passes
  and seconds per image, and the insertion / deletion AUC of the region-step curves the search logs (p_c of
  the input with the first k regions shown / removed, fill zero, x = k / N), with the difference to ``naive``
  and the Spearman correlation of the rank maps. EfficientNet-Lite0: N = 25, 49, 100 on a 224 px grid (one
  region per cell: N is exact); digits CNN: N = 16, 25, 49 on the 8 x 8 digits (grid cells of 2 x 2, uneven
  7 x 7 cells, ...). ``seconds`` are per image with all images in one call (batched search).
- ``latency``: one EfficientNet-Lite0 photo, 49 grid regions, each fast search alone (what a user waits for).
- ``methods``: LIMA (``--lima-search``) against every other registered method on the same images: deletion and
  insertion AUC in the region-step protocol (the LIMA regions, each method's map averaged per region, fill
  zero) and the pixel-step protocol (``--pixel-steps`` equal steps, deletion fill zero, insertion from blur).
- ``mistakes``: the digits CNN's misclassified test images, each method explaining the true class: highest
  confidence of the true class along region-step insertion with at most 25 / 50 / 75 / 100 % revealed, and
  insertion AUC.

Images: EfficientNet-Lite0 gets the 5 bundled scikit-image photos and scikit-learn's 2 sample images, each as
is, mirrored, cropped to the centre, to the top left, to the bottom right, and cropped and mirrored (16 of these
42 by default, ``--images``); the digits CNN its first test images (``--digits-images``, 64 by default).
Run ``python bench/lima.py [--quick] [--device cuda]`` from the repository root; writes
``bench/results/lima.md`` and ``.json`` (``--out``). Offline.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import whybox
import whybox.data as wd

HERE = Path(__file__).resolve().parent
SEARCHES = ("naive", "bidirectional", "lazy", "stochastic", "predictive")
FAST = ("bidirectional", "lazy", "stochastic", "predictive")
# other methods' options where their defaults would dominate the run (per-image passes in brackets)
METHOD_OPTIONS: dict[str, dict[str, dict[str, Any]]] = {
    "effnet": {
        "integrated_gradients": {"n_steps": 32},
        "smoothgrad": {"n_samples": 16},
        "scorecam": {"layer": "_blocks.15"},
        "occlusion": {"window": 32, "stride": 32},  # the 7 x 7 grid of the 49 regions: 49 passes
        "rise": {"n_masks": 1000},
        "lime": {"n_samples": 500},
        "kernel_shap": {"n_samples": 500},
        "shapley_sampling": {"n_permutations": 4, "n_segments": 49},
        "exact_shapley": {"features": "grid", "patch": (75, 112)},
    },
    "digits": {
        "rise": {"n_masks": 2000},
        "shapley_sampling": {"n_permutations": 8},
        "lime": {"fill": "zero", "n_samples": 500},
        "kernel_shap": {"n_samples": 500},
    },
}


# --------------------------------------------------------------------------- data
def effnet_images(n: int) -> tuple[torch.Tensor, list[str]]:
    """Up to 42 photos: the 7 originals, then mirrored, cropped to their central 70 %, cropped to the top-left and
    to the bottom-right 80 %, and the central crop mirrored (7 each), preprocessed."""
    from sklearn.datasets import load_sample_images

    raw = [(name, wd.photo(name)) for name in wd.PHOTOS]
    raw += [(f"sklearn{i}", img) for i, img in enumerate(load_sample_images().images)]
    out, names = [], []
    for variant in ("", "-mirror", "-crop", "-topleft", "-bottomright", "-crop-mirror"):
        for name, img in raw:
            h, w = img.shape[:2]
            if variant.startswith("-crop"):
                dh, dw = int(h * 0.15), int(w * 0.15)
                img = img[dh : h - dh, dw : w - dw]
            elif variant == "-topleft":
                img = img[: int(h * 0.8), : int(w * 0.8)]
            elif variant == "-bottomright":
                img = img[h - int(h * 0.8) :, w - int(w * 0.8) :]
            if variant.endswith("-mirror"):
                img = img[:, ::-1]
            img = img.copy()
            out.append(wd.imagenet_preprocess(img))
            names.append(name + variant)
    return torch.stack(out[:n]), names[:n]


def grid_labels(h: int, w: int, n: int) -> torch.Tensor:
    """``(H, W)`` ids of a k x k grid (k = sqrt(N)) with uneven cells where k does not divide the side."""
    k = math.isqrt(n)
    if k * k != n:
        raise SystemExit(f"region counts must be squares for the grid; got {n}")
    rows = torch.arange(h) * k // h
    cols = torch.arange(w) * k // w
    return rows.view(-1, 1) * k + cols.view(1, -1)


def trap(first: torch.Tensor, curve: torch.Tensor) -> np.ndarray:
    """Per-row trapezoid AUC of ``[first, curve...]`` on x = 0, 1/N, ..., 1 (N = the row's regions: rows with fewer
    regions than the widest, as superpixels give, are NaN-padded at the end)."""
    y = torch.cat([first.view(-1, 1).cpu(), curve.cpu()], 1).double()
    out = []
    for row in y:
        r = row[~torch.isnan(row)]
        out.append(float(((r[1:] + r[:-1]) / 2).mean()))
    return np.array(out)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def parse_search(s: str) -> tuple[str, dict[str, Any]]:
    """``"predictive:m:q[:k[:slack[:ties[:n_kept]]]]"`` -> ("predictive", n_predicted=m, n_refresh=q, n_neighbours=k,
    slack, ties, n_kept); other names as they are."""
    if s.startswith("predictive:"):
        parts = s.split(":")
        opts: dict[str, Any] = {"n_predicted": int(parts[1]), "n_refresh": int(parts[2])}
        if len(parts) > 3:
            opts["n_neighbours"] = int(parts[3])
        if len(parts) > 4:
            opts["slack"] = float(parts[4])
        if len(parts) > 5:
            opts["ties"] = float(parts[5])
        if len(parts) > 6:
            opts["n_kept"] = int(parts[6])
        return "predictive", opts
    return s, {}


# --------------------------------------------------------------------------- parts
def part_searches(
    model: torch.nn.Module, x: torch.Tensor, counts: list[int], bs: int, searches: list[str]
) -> list[dict[str, Any]]:
    rows = []
    for n in counts:
        lab = grid_labels(x.shape[-2], x.shape[-1], n).to(x.device)
        ref = None
        for s in searches:
            name, opts = parse_search(s)
            t = time.perf_counter()
            e = whybox.explain(model, x, "lima", search=name, regions=lab, batch_size=bs, **opts)
            sec = (time.perf_counter() - t) / x.shape[0]
            ins = trap(e.meta["empty_score"], e.meta["curve_kept"])
            dele = trap(e.meta["full_score"], e.meta["curve_removed"])
            passes = float(np.mean(e.meta["search_passes"]))
            row = {
                "N": n,
                "search": s,
                "passes": passes,
                "s_per_image": sec,
                "insertion": float(ins.mean()),
                "deletion": float(dele.mean()),
                "images": int(x.shape[0]),
            }
            if s == "naive":
                ref = (passes, ins, dele, e.meta["values"].cpu())
            if ref is not None:
                row["x_fewer_passes"] = ref[0] / passes
                row["d_insertion"] = float((ins - ref[1]).mean())
                row["d_deletion"] = float((dele - ref[2]).mean())
                row["spearman_vs_naive"] = float(
                    np.mean([spearman(e.meta["values"][i].cpu(), ref[3][i]) for i in range(x.shape[0])])
                )
            rows.append(row)
            print(
                f"  N={n:3d} {s:13s} passes {passes:8.1f}  {sec:7.2f} s/img  ins {row['insertion']:.4f} "
                f"({row.get('d_insertion', 0):+.4f})  del {row['deletion']:.4f} ({row.get('d_deletion', 0):+.4f})  "
                f"x{row.get('x_fewer_passes', 1):.2f}",
                flush=True,
            )
    return rows


def part_latency(model: torch.nn.Module, x: torch.Tensor, bs: int, searches: list[str]) -> list[dict[str, Any]]:
    """Each fast search on the first photo alone, then the default (predictive) on each of the first 5 photos,
    49 grid regions, ``batch_size=bs`` (8: EfficientNet-Lite0's best per-image time on 2 CPU cores)."""
    rows = []
    lab = grid_labels(x.shape[-2], x.shape[-1], 49).to(x.device)
    whybox.explain(model, x[:1], "lima", search="stochastic", regions=lab, batch_size=bs)  # warm-up
    for s in searches:
        name, opts = parse_search(s)
        t = time.perf_counter()
        e = whybox.explain(model, x[:1], "lima", search=name, regions=lab, batch_size=bs, **opts)
        sec = time.perf_counter() - t
        rows.append({"photo": 0, "search": s, "seconds": sec, "passes": int(e.meta["n_forward"])})
        print(f"  photo 0, 49 regions, {s:13s} {sec:6.2f} s  {e.meta['n_forward']} passes", flush=True)
    for i in range(1, min(5, x.shape[0])):
        t = time.perf_counter()
        e = whybox.explain(model, x[i : i + 1], "lima", regions=lab, batch_size=bs)
        sec = time.perf_counter() - t
        rows.append({"photo": i, "search": "predictive", "seconds": sec, "passes": int(e.meta["n_forward"])})
        print(f"  photo {i}, 49 regions, predictive    {sec:6.2f} s  {e.meta['n_forward']} passes", flush=True)
    return rows


def _explain_all(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    key: str,
    bs: int,
    lima_opts: dict[str, Any],
    methods: list[str],
) -> dict[str, tuple[whybox.Explanation, float]]:
    out = {}
    for m in methods:
        opts = dict(METHOD_OPTIONS[key].get(m, {}))
        if m == "lima":
            opts.update(lima_opts)
        t = time.perf_counter()
        try:
            e = whybox.explain(model, x, m, target=target, batch_size=bs, **opts)
        except Exception as exc:  # a method that cannot run on this model is reported, not fatal
            print(f"  {m}: skipped ({type(exc).__name__}: {exc})", flush=True)
            continue
        out[m] = (e, (time.perf_counter() - t) / x.shape[0])
    return out


def part_methods(
    model: torch.nn.Module,
    x: torch.Tensor,
    key: str,
    n: int,
    bs: int,
    search: str,
    pixel_steps: int,
    methods: list[str],
) -> list[dict[str, Any]]:
    lab = grid_labels(x.shape[-2], x.shape[-1], n).to(x.device)
    with torch.no_grad():
        target = model(x).argmax(1)
    ex = _explain_all(model, x, target, key, bs, {"search": search, "regions": lab}, methods)
    regions = lab.expand(x.shape[0], *lab.shape)
    rows = []
    for m, (e, sec) in ex.items():
        kw = {"target": target, "batch_size": bs}
        try:
            r = {
                "method": m,
                "s_per_image": sec,
                "passes": float(e.meta["n_forward"]) / x.shape[0],
                "region_deletion": whybox.evaluate(model, x, e, "deletion", regions=regions, fill="zero", **kw).scores,
                "region_insertion": whybox.evaluate(
                    model, x, e, "insertion", regions=regions, fill="zero", **kw
                ).scores,
                "pixel_deletion": whybox.evaluate(model, x, e, "deletion", steps=pixel_steps, fill="zero", **kw).scores,
                "pixel_insertion": whybox.evaluate(
                    model, x, e, "insertion", steps=pixel_steps, fill="blur", **kw
                ).scores,
            }
        except Exception as exc:  # reported, not fatal
            print(f"  {m}: metrics failed ({type(exc).__name__}: {exc})", flush=True)
            continue
        for k in ("region_deletion", "region_insertion", "pixel_deletion", "pixel_insertion"):
            r[k] = float(torch.nanmean(r[k].double()))
        rows.append(r)
        print(
            f"  {m:22s} region del {r['region_deletion']:.4f} ins {r['region_insertion']:.4f} | pixel del "
            f"{r['pixel_deletion']:.4f} ins {r['pixel_insertion']:.4f} | {sec:.2f} s/img",
            flush=True,
        )
    return rows


def part_mistakes(model: torch.nn.Module, n: int, bs: int, search: str, methods: list[str]) -> dict[str, Any]:
    x, y = wd.load_digits("test")
    with torch.no_grad():
        pred = model(x).argmax(1)
    wrong = (pred != y).nonzero().flatten()
    xw, yw = x[wrong], y[wrong]
    lab = grid_labels(8, 8, n)
    ex = _explain_all(model, xw, yw, "digits", bs, {"search": search, "regions": lab}, methods)
    regions = lab.expand(xw.shape[0], 8, 8)
    rows = []
    for m, (e, _sec) in ex.items():
        res = whybox.evaluate(model, xw, e, "highest_confidence", target=yw, regions=regions, fill="zero")
        hc = res.meta["hc"].double().nanmean(0).tolist()
        rows.append({"method": m, "hc_25_50_75_100": hc, "insertion": float(res.meta["auc"].double().nanmean())})
        print(
            f"  {m:22s} HC@25/50/75/100 % "
            + " ".join(f"{v:.3f}" for v in hc)
            + f"  insertion {rows[-1]['insertion']:.4f}",
            flush=True,
        )
    return {"misclassified": int(wrong.numel()), "test_images": int(x.shape[0]), "regions": n, "rows": rows}


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--parts", default="searches,latency,methods,mistakes")
    ap.add_argument("--models", default="digits,effnet")
    ap.add_argument("--effnet-parts", default=None, help="parts for EfficientNet-Lite0 (default: --parts)")
    ap.add_argument("--images", type=int, default=16, help="EfficientNet-Lite0 images (at most 42)")
    ap.add_argument("--digits-images", type=int, default=64, help="digits CNN test images")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--searches", default=",".join(SEARCHES))
    ap.add_argument("--effnet-regions", default="25,49,100")
    ap.add_argument("--digits-regions", default="16,25,49")
    ap.add_argument("--lima-search", default="predictive", help="the search of the methods and mistakes parts")
    ap.add_argument("--pixel-steps", type=int, default=50)
    ap.add_argument(
        "--methods", default="", help="methods of the methods and mistakes parts (default: every image method)"
    )
    ap.add_argument("--quick", action="store_true", help="2 images, N = 25 only, digits only")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    parts = set(args.parts.split(","))
    models = set(args.models.split(","))
    searches = args.searches.split(",")
    if args.quick:
        args.images, args.digits_images, models = 2, 2, {"digits"}
        args.digits_regions = args.effnet_regions = "25"
    out: dict[str, Any] = {
        "device": str(dev),
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
    }
    all_methods = args.methods.split(",") if args.methods else whybox.methods("image")
    if "digits" in models:
        model = wd.digits_cnn().eval().to(dev)
        x = wd.load_digits("test")[0][: args.digits_images].to(dev)
        if "searches" in parts:
            print(f"digits CNN: searches on {x.shape[0]} images")
            out["digits_searches"] = part_searches(
                model, x, [int(v) for v in args.digits_regions.split(",")], 512, searches
            )
        if "methods" in parts:
            print("digits CNN: LIMA against every method (49 regions)")
            out["digits_methods"] = part_methods(
                model, x, "digits", 49, 512, args.lima_search, args.pixel_steps, all_methods
            )
        if "mistakes" in parts:
            print("digits CNN: misclassified test images, true class explained (16 regions)")
            out["digits_mistakes"] = part_mistakes(model.cpu(), 16, 512, args.lima_search, all_methods)
    if args.effnet_parts is not None:
        parts_effnet = set(args.effnet_parts.split(","))
    else:
        parts_effnet = parts
    if "effnet" in models:
        parts = parts_effnet
        model = wd.efficientnet_lite0().eval().to(dev)
        x, names = effnet_images(args.images)
        x = x.to(dev)
        out["effnet_images"] = names
        bs = 16 if dev.type == "cpu" else 256
        if "searches" in parts:
            print(f"EfficientNet-Lite0: searches on {x.shape[0]} images at 224 px")
            out["effnet_searches"] = part_searches(
                model, x, [int(v) for v in args.effnet_regions.split(",")], bs, searches
            )
        if "latency" in parts:
            print("EfficientNet-Lite0: one photo, 49 regions")
            out["effnet_latency"] = part_latency(
                model, x, 8 if dev.type == "cpu" else 64, [s for s in searches if s != "naive"]
            )
        if "methods" in parts:
            print("EfficientNet-Lite0: LIMA against every method (49 regions)")
            out["effnet_methods"] = part_methods(
                model, x, "effnet", 49, bs, args.lima_search, args.pixel_steps, all_methods
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lima.json").write_text(json.dumps(out, indent=1))
    (args.out / "lima.md").write_text(render(out))
    print(render(out))


def render(out: dict[str, Any]) -> str:
    lines = [
        f"# LIMA bench ({out['device']}{', ' + out['gpu'] if out.get('gpu') else ''}, "
        f"{out['threads']} threads, torch {out['torch']})",
        "",
    ]
    for key, title in (("digits_searches", "digits CNN"), ("effnet_searches", "EfficientNet-Lite0, 224 px")):
        if key in out:
            lines += [
                f"## Searches: {title} (region-step AUCs from the search curves, fill zero)",
                "",
                "| N | search | passes / image | x fewer than naive | s / image | insertion | Δ vs naive | "
                "deletion | Δ vs naive | Spearman vs naive |",
                "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for r in out[key]:
                lines.append(
                    f"| {r['N']} | {r['search']} | {r['passes']:.0f} | {r.get('x_fewer_passes', 1):.2f} | "
                    f"{r['s_per_image']:.2f} | {r['insertion']:.4f} | {r.get('d_insertion', 0):+.4f} | "
                    f"{r['deletion']:.4f} | {r.get('d_deletion', 0):+.4f} | {r.get('spearman_vs_naive', 1):.2f} |"
                )
            lines.append("")
    if "effnet_latency" in out:
        lines += [
            "## One EfficientNet-Lite0 photo at a time, 49 grid regions, batch_size 8",
            "",
            "| photo | search | seconds | passes |",
            "|---:|---|---:|---:|",
        ]
        lines += [
            f"| {r.get('photo', 0)} | {r['search']} | {r['seconds']:.1f} | {r['passes']} |"
            for r in out["effnet_latency"]
        ]
        lines.append("")
    for key, title in (("digits_methods", "digits CNN"), ("effnet_methods", "EfficientNet-Lite0")):
        if key in out:
            lines += [
                f"## Every method: {title} (49 regions; region steps fill zero; pixel steps: deletion zero, "
                "insertion from blur)",
                "",
                "| method | region deletion ↓ | region insertion ↑ | pixel deletion ↓ | pixel insertion ↑ | "
                "s / image | passes / image |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            for r in sorted(out[key], key=lambda r: -r["region_insertion"]):
                lines.append(
                    f"| {r['method']} | {r['region_deletion']:.4f} | {r['region_insertion']:.4f} | "
                    f"{r['pixel_deletion']:.4f} | {r['pixel_insertion']:.4f} | {r['s_per_image']:.2f} | "
                    f"{r['passes']:.0f} |"
                )
            lines.append("")
    if "digits_mistakes" in out:
        mk = out["digits_mistakes"]
        lines += [
            f"## Digits CNN mistakes ({mk['misclassified']} of {mk['test_images']} test images; true class, "
            f"{mk['regions']} regions)",
            "",
            "| method | HC ≤25 % | HC ≤50 % | HC ≤75 % | HC ≤100 % | insertion |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in sorted(mk["rows"], key=lambda r: -r["hc_25_50_75_100"][0]):
            lines.append(
                f"| {r['method']} | "
                + " | ".join(f"{v:.3f}" for v in r["hc_25_50_75_100"])
                + f" | {r['insertion']:.4f} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
