#!/usr/bin/env python
"""whybox metrics beside Quantus 0.6.0: pixel flipping, faithfulness correlation, ROAD and MPRT, timed in one process.

Same model, inputs, targets and attributions on both sides. Each row checks whether the two compute the same
values (and how far apart they are when the definitions differ), then times the calls round by round,
alternating which side goes first so a busy machine slows both alike; the ratio is the median of the per-round
ratios Quantus / whybox. The bar: whybox at least 10x faster where both compute the same values.

Run ``python bench/metrics.py [--quick] [--repeats N] [--cases digits,effnet]`` from the repository root.
Writes ``bench/results/metrics.md`` (the table) and ``bench/results/metrics.json`` (everything). Offline: the
models and photos come from ``whybox.data``; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TARGET = 10.0  # Quantus time / whybox time where both compute the same values
LONG_CALL_S = 20.0  # a warm-up call this long is kept as the only timed sample


# --------------------------------------------------------------------------- cases
@dataclass
class Case:
    name: str
    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    a: torch.Tensor  # (B, 1, H, W) channel-summed saliency, jittered so no two pixels tie
    batch_size: int

    @property
    def b(self) -> int:
        return int(self.x.shape[0])


def _saliency(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    import whybox

    a = whybox.explain(model, x, "saliency", target=y).attributions.sum(1, keepdim=True)
    jitter = torch.rand(a.shape, generator=torch.Generator().manual_seed(0)) * 1e-6 * float(a.abs().max())
    return (a + jitter).contiguous()  # distinct values: Quantus orders ties by an unstable argsort


def build_cases(args: argparse.Namespace) -> list[Case]:
    import whybox.data as wd

    want = set(args.cases.split(","))
    cases = []
    if "digits" in want:
        model = wd.digits_cnn().eval()
        x, _ = wd.load_digits("test")
        x = x[: (8 if args.quick else 32)].contiguous()
        with torch.no_grad():
            y = model(x).argmax(1)
        cases.append(Case("digits", model, x, y, _saliency(model, x, y), batch_size=256))
    if "effnet" in want:
        model = wd.efficientnet_lite0().eval()
        photos = wd.photos()
        x_all = photos[0] if isinstance(photos, tuple) else photos
        x = x_all[: (1 if args.quick else 2)].contiguous()
        with torch.no_grad():
            y = model(x).argmax(1)
        cases.append(Case("effnet224", model, x, y, _saliency(model, x, y), batch_size=4))  # best CPU throughput
    return cases


# --------------------------------------------------------------------------- rows
@dataclass
class Row:
    case: Case
    metric: str
    ours: Callable[[], Any]
    peer: Callable[[], Any]
    same_values: bool
    note: str
    compare: Callable[[Any, Any], float] | None = None  # (ours, peer) -> max abs difference
    heavy: bool = False
    result: dict[str, Any] = field(default_factory=dict)


def _quantus_trapz() -> None:
    """Quantus 0.6.0 still calls np.trapz, removed in NumPy 2.4: bench-only shim (never in src)."""
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # type: ignore[attr-defined]


def rows_for(case: Case, quantus: Any, args: argparse.Namespace) -> list[Row]:
    import whybox

    model, x, y, a, bs = case.model, case.x, case.y, case.a, case.batch_size
    xn, yn, an = x.numpy(), y.numpy(), a.numpy()
    c, h, w = x.shape[1:]
    n = h * w
    common = {"device": "cpu", "channel_first": True, "batch_size": max(case.b, 64)}
    rows: list[Row] = []

    # ---- pixel flipping = deletion without the unperturbed point, row-minimum fill, probabilities
    if c == 1:
        step, steps = 1, n
        same, note = True, "64 one-pixel steps; Quantus curve = ours without the first point"
    else:
        step = 3136  # must divide H*W for Quantus; its steps cut through the channel copies of pixels
        steps = (c * n) // step
        same, note = False, f"{steps} steps; Quantus ranks C*H*W elements ({step} per step), whybox whole pixels"
    pf = quantus.PixelFlipping(
        features_in_step=step,
        perturb_baseline="black",
        abs=False,
        normalise=False,
        disable_warnings=True,
        display_progressbar=False,
    )
    rows.append(
        Row(
            case,
            "pixel flipping (deletion)",
            ours=lambda: whybox.evaluate(model, x, a, "deletion", target=y, steps=steps, fill="min", batch_size=bs),
            peer=lambda: np.asarray(pf(model=model, x_batch=xn, y_batch=yn, a_batch=an, softmax=True, **common)),
            same_values=same,
            note=note,
            compare=lambda o, p: float(np.abs(o.curves["y"][:, 1:].numpy() - p).max()),
        )
    )

    # ---- faithfulness correlation = MuFidelity on the same subsets
    runs = 20 if args.quick else 100
    if c == 1:
        size = 16
        fc = quantus.FaithfulnessCorrelation(
            nr_runs=runs,
            subset_size=size,
            perturb_baseline="black",
            abs=False,
            normalise=False,
            return_aggregate=False,
            disable_warnings=True,
        )

        def peer_fc() -> np.ndarray:
            np.random.seed(0)
            return np.asarray(fc(model=model, x_batch=xn, y_batch=yn, a_batch=an, softmax=False, **common))

        np.random.seed(0)  # replay Quantus' draws: per run, one subset per row, then one uniform per row
        sub = np.zeros((case.b, runs, n), dtype=bool)
        for j in range(runs):
            for i in range(case.b):
                sub[i, j, np.random.choice(n, size, replace=False)] = True
            np.random.uniform(size=case.b)
        subsets = torch.from_numpy(sub)
        rows.append(
            Row(
                case,
                "faithfulness correlation (mufidelity)",
                ours=lambda: whybox.evaluate(
                    model,
                    x,
                    a,
                    "mufidelity",
                    target=y,
                    grid_size=h,
                    subsets=subsets,
                    fill="min",
                    score="logit",
                    batch_size=bs,
                ),
                peer=peer_fc,
                same_values=True,
                note=f"{runs} subsets of {size} pixels, replayed from Quantus' np.random draws",
                compare=lambda o, p: float(np.abs(o.scores.numpy() - p).max()),
            )
        )
    else:
        fc = quantus.FaithfulnessCorrelation(
            nr_runs=runs,
            subset_size=224,
            perturb_baseline="black",
            abs=False,
            normalise=False,
            return_aggregate=False,
            disable_warnings=True,
        )
        rows.append(
            Row(
                case,
                "faithfulness correlation (mufidelity)",
                ours=lambda: whybox.evaluate(
                    model, x, a, "mufidelity", target=y, n_samples=runs, fill="min", score="logit", batch_size=bs
                ),
                peer=lambda: np.asarray(fc(model=model, x_batch=xn, y_batch=yn, a_batch=an, softmax=False, **common)),
                same_values=False,
                note=f"{runs} subsets each; Quantus: 224 single elements of C*H*W, whybox: 16 of 81 grid cells",
            )
        )

    # ---- ROAD (noise 0 so both are deterministic; Quantus computes MoRF only, whybox MoRF and LeRF)
    pct = [10, 20, 30, 40, 50, 60, 70, 80, 90]
    road = quantus.ROAD(
        percentages=pct, noise=0.0, abs=False, normalise=False, disable_warnings=True, display_progressbar=False
    )
    rows.append(
        Row(
            case,
            "ROAD",
            ours=lambda: whybox.evaluate(
                model, x, a, "road", target=y, labels=y, fractions=[p / 100 for p in pct], noise=0.0, batch_size=bs
            ),
            peer=lambda: road(model=model, x_batch=xn, y_batch=yn, a_batch=an, softmax=True, **common),
            same_values=(c == 1),
            note="9 fractions, noise 0; whybox does MoRF and LeRF (2x the imputations and passes), Quantus MoRF",
            compare=lambda o, p: float(
                np.abs(o.curves["morf_accuracy"].mean(0).numpy() - np.array([p[k] for k in pct])).max()
            ),
        )
    )

    # ---- MPRT: cascading randomisation, saliency, Spearman of |a| normalised by the max
    def explain_func(model: torch.nn.Module, inputs: np.ndarray, targets: np.ndarray, **_: Any) -> np.ndarray:
        t = torch.as_tensor(inputs)
        return (
            whybox.explain(model, t, "saliency", target=torch.as_tensor(targets))
            .attributions.sum(1, keepdim=True)
            .numpy()
        )

    mprt = quantus.MPRT(
        similarity_func=quantus.similarity_func.correlation_spearman,
        layer_order="top_down",
        seed=42,
        abs=True,
        normalise=True,
        disable_warnings=True,
        display_progressbar=False,
    )
    include_norm = c != 1  # Quantus resets every module with reset_parameters (BatchNorm too)
    a0 = torch.from_numpy(explain_func(model, xn, yn))

    def ours_mprt() -> Any:
        return whybox.evaluate(
            model,
            x,
            a0,
            "randomization",
            target=y,
            explainer="saliency",
            seed=42,
            clip_percentile=None,
            include_norm=include_norm,
            batch_size=bs,
            similarities=("spearman_abs",),
        )

    def compare_mprt(o: Any, p: dict) -> float:
        diffs = [
            np.abs(o.curves["spearman_abs"][:, i].numpy() - np.asarray(p[layer])).max()
            for i, layer in enumerate(o.meta["layers"])
            if layer in p
        ]
        if len(diffs) != len(o.meta["layers"]) or list(o.meta["layers"]) != [k for k in p if k != "original"]:
            return float("inf")  # different layer sets or order
        return float(max(diffs))

    rows.append(
        Row(
            case,
            "MPRT (randomization)",
            ours=ours_mprt,
            peer=lambda: mprt(
                model=model,
                x_batch=xn,
                y_batch=yn,
                a_batch=a0.numpy(),
                explain_func=explain_func,
                explain_func_kwargs={},
                softmax=False,
                **common,
            ),
            same_values=True,
            note="cascading, top down, saliency, seed 42, Spearman of |a| (no percentile clip)",
            compare=compare_mprt,
            heavy=(c != 1),
        )
    )
    return rows


# --------------------------------------------------------------------------- timing
def _call(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run_row(row: Row, repeats: int) -> None:
    res = row.result
    try:
        t_ours, out_ours = _call(row.ours)
    except Exception as exc:  # pragma: no cover - reported, not hidden
        res["error"] = f"whybox failed: {type(exc).__name__}: {exc}"
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_peer, out_peer = _call(row.peer)
    except Exception as exc:
        res["peer_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        res["ours_s"] = [t_ours]
        return
    if row.compare is not None:
        try:
            res["max_abs_diff"] = row.compare(out_ours, out_peer)
        except Exception as exc:  # pragma: no cover
            res["max_abs_diff"] = f"not comparable: {exc!r}"
    ours_t, peer_t, ratios = [], [], []
    long = max(t_ours, t_peer) > LONG_CALL_S or row.heavy
    if long:
        ours_t, peer_t = [t_ours], [t_peer]
    else:
        for r in range(repeats):
            order = [("o", row.ours), ("p", row.peer)] if r % 2 == 0 else [("p", row.peer), ("o", row.ours)]
            got = {}
            for k, fn in order:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    got[k] = _call(fn)[0]
            ours_t.append(got["o"])
            peer_t.append(got["p"])
    ratios = [p / o for o, p in zip(ours_t, peer_t, strict=True)]
    res.update(ours_s=ours_t, peer_s=peer_t, ratio=statistics.median(ratios), single_sample=long)


def fmt_table(rows: list[Row]) -> str:
    lines = [
        "| case | metric | same values | max abs diff | whybox s/sample | Quantus s/sample | Quantus / whybox | >= 10x |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        r = row.result
        b = row.case.b
        if "error" in r:
            lines.append(f"| {row.case.name} | {row.metric} | - | - | - | - | {r['error']} | - |")
            continue
        ours = statistics.median(r["ours_s"]) / b
        if "peer_error" in r:
            lines.append(
                f"| {row.case.name} | {row.metric} | - | - | {ours:.4f} | Quantus fails: {r['peer_error']} | - | - |"
            )
            continue
        peer = statistics.median(r["peer_s"]) / b
        diff = r.get("max_abs_diff", "-")
        diff_s = f"{diff:.2e}" if isinstance(diff, float) else str(diff)
        same = "yes" if row.same_values else "no"
        met = ("yes" if r["ratio"] >= TARGET else "**no**") if row.same_values else "n/a (different values)"
        lines.append(
            f"| {row.case.name} | {row.metric} | {same} | {diff_s} | {ours:.4f} | {peer:.4f} | "
            f"{r['ratio']:.1f}x | {met} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer samples and subsets")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cases", default="digits,effnet")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads (0 = torch's default; use 1 on a shared, oversubscribed machine)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    _quantus_trapz()
    import quantus

    cases = build_cases(args)
    all_rows: list[Row] = []
    for case in cases:
        for row in rows_for(case, quantus, args):
            t0 = time.perf_counter()
            run_row(row, args.repeats)
            print(
                f"[{time.perf_counter() - t0:7.1f}s] {case.name:10s} {row.metric:40s} {row.result.get('ratio', '-')}",
                flush=True,
            )
            all_rows.append(row)
    table = fmt_table(all_rows)
    env = (
        f"{platform.platform()}, Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), numpy {np.__version__}, Quantus {quantus.__version__}, "
        f"{os.cpu_count()} CPUs, no GPU"
        if not torch.cuda.is_available()
        else "CUDA"
    )
    header = (
        f"# whybox metrics vs Quantus\n\n{_dt.datetime.now().isoformat(timespec='seconds')}; {env}.\n"
        "Cases: "
        + "; ".join(f"{c.name}: {c.b} images, whybox batch_size {c.batch_size}" for c in cases)
        + " (digits = the bundled digits CNN on test images; effnet224 = EfficientNet-Lite0 on the bundled photos). "
        "Ratio = median over rounds of Quantus time / whybox time; rows timed once are marked in the notes. Both "
        "sides run the same model in the same process with the same thread count.\n"
    )
    notes = "\n".join(
        f"- {r.case.name} / {r.metric}: {r.note}" + (" (timed once)" if r.result.get("single_sample") else "")
        for r in all_rows
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "metrics.md").write_text(f"{header}\n{table}\n\nNotes:\n{notes}\n")
    (RESULTS / "metrics.json").write_text(
        json.dumps(
            [
                {
                    "case": r.case.name,
                    "metric": r.metric,
                    "same_values": r.same_values,
                    "note": r.note,
                    "b": r.case.b,
                    **{k: v for k, v in r.result.items()},
                }
                for r in all_rows
            ],
            indent=1,
            default=str,
        )
    )
    print(header)
    print(table)
    print("\nNotes:\n" + notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
