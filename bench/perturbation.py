#!/usr/bin/env python
"""whybox beside captum, lime and shap: the perturbation explainers, timed in one process at equal passes.

Cases: the digits CNN (64 test images of 1x8x8, pixel features) and EfficientNet-Lite0 on 224 px photos
(SLIC superpixels shared by every implementation). Every implementation gets the same model, inputs, explicit
targets, features, fill and internal batch size, and the same settings (samples, windows, permutations); the passes
per image follow (whybox's count is read from ``meta["n_forward"]``; the peers' from their algorithms) and are in the
table. They differ where whybox skips a perturbation that changes nothing: on a digit's black background occlusion,
feature ablation and Shapley sampling run 20-50 % fewer passes than captum's (40 / 50, 33 / 65, 125 / 257 per image
at 8 images), so those digits ratios, marked "info", compare unequal work. The calls of one row are
interleaved round by round so a busy machine slows every side alike; ratios are medians of per-round ratios.

Efficiency = passes x (the model's batched per-sample forward time, measured in the same round at the same
batch size) / time per image: the share of the time spent in the model itself (1.0 = no overhead at all). The
forward time is the model's own, called on the images as they come; whybox's engine hands CPU image batches to the
model channels-last (faster convolutions), so at 224 px its efficiency exceeds 1 (1.25 to 1.65 measured).

Targets (issue #3): efficiency >= 0.85 for every whybox method on both models; on the digits CNN at least 4x
faster than captum KernelShap and 2x faster than captum Lime and lime's LimeImageExplainer; on the 224 px model
at most captum's time at equal passes.

Allocator note: at 224 px about half of every forward pass is page faults, because glibc returns each large
activation buffer to the OS and the next pass faults it in again; how often that happens depends on what else the
process allocates between passes, which moves per-call times by +-15 % between otherwise identical calls. Run with
``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296`` (recorded in the header) to take the
allocator out of the comparison: every side then reuses its buffers and runs about 2x faster.

Run ``python bench/perturbation.py [--quick] [--threads 1 --clock cpu]`` from the repository root. Writes
``bench/results/perturbation.md`` (the table) and ``bench/results/perturbation.json`` (everything). Offline:
models and photos come from ``whybox.data``.
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

os.environ.setdefault("TQDM_DISABLE", "1")  # lime_image wraps its sampling loop in tqdm

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
EFFICIENCY_TARGET = 0.85
CLOCK = "wall"


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def _import(name: str) -> tuple[Any, str]:
    try:
        mod = __import__(name, fromlist=["_"])
    except Exception as exc:  # pragma: no cover - environment dependent
        return None, f"not importable: {exc!r}"
    return mod, f"{name.split('.')[0]} {_dist_version(name.split('.')[0])}"


# --------------------------------------------------------------------------- cases
@dataclass
class Case:
    name: str
    model: torch.nn.Module
    x: torch.Tensor
    target: torch.Tensor
    seg: torch.Tensor  # (B, 1, H, W) feature ids shared by every implementation
    batch_size: int
    n: int  # samples (passes) per image for the sampling methods
    window: tuple[int, ...]
    stride: tuple[int, ...]
    rise_grid: int
    exact_patch: tuple[int, int] | int  # a window length on signals
    svs_permutations: int  # whybox antithetic permutations (2 walks each); captum gets 2x as many plain ones
    rounds: int
    signal: bool = False  # 1-D signals (B, C, L): features are windows along L; lime_image and shap (images) left out

    @property
    def b(self) -> int:
        return int(self.x.shape[0])


def _predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def build_cases(args: argparse.Namespace) -> list[Case]:
    import whybox.data as wd
    from whybox.masking import pixels, superpixels

    cases = []
    want = set(args.cases.split(","))
    if "digits" in want:
        model = wd.digits_cnn().eval()
        x, _ = wd.load_digits("test")
        x = x[: args.digits_images].contiguous()
        cases.append(
            Case(
                "digits",
                model,
                x,
                _predict(model, x),
                pixels(x).groups,
                batch_size=200,
                n=200,
                window=(1, 2, 2),
                stride=(1, 1, 1),
                rise_grid=4,
                exact_patch=(3, 3),
                svs_permutations=2,
                rounds=3 if args.quick else 5,
            )
        )
    if "effnet" in want:
        model = wd.efficientnet_lite0().eval()
        photos = wd.photos()
        x_all = photos[0] if isinstance(photos, tuple) else photos
        x = x_all[: args.effnet_images].contiguous()
        cases.append(
            Case(
                "effnet224",
                model,
                x,
                _predict(model, x),
                superpixels(x, n_segments=50).groups,
                batch_size=32,
                n=args.effnet_samples,
                window=(3, 56, 56),
                stride=(3, 28, 28),
                rise_grid=7,
                exact_patch=(112, 75),
                svs_permutations=1,
                rounds=1 if args.quick else 2,
            )
        )
    if "signal" in want:
        from gradient import signal_cnn  # the same seeded 1-D CNN as bench/gradient.py's signal case

        from whybox.masking import segments

        model = signal_cnn()
        x = torch.randn(args.signal_images, 12, 1000, generator=torch.Generator().manual_seed(0))
        cases.append(
            Case(
                "signal",
                model,
                x,
                _predict(model, x),
                segments(x, n=20).groups,
                batch_size=100,
                n=200,
                window=(12, 63),
                stride=(12, 31),
                rise_grid=16,
                exact_patch=125,
                svs_permutations=2,
                rounds=3 if args.quick else 5,
                signal=True,
            )
        )
    return cases


# --------------------------------------------------------------------------- implementations
@dataclass
class Impl:
    label: str
    fn: Callable[[], Any]
    passes: float | None = None  # per image; whybox's comes from meta
    note: str = ""


@dataclass
class Row:
    case: Case
    method: str
    ours: Impl
    peers: list[Impl]
    bars: dict[str, float] = field(default_factory=dict)  # peer label -> max ratio whybox / peer
    compare: dict[str, Callable[[Any, Any], float]] = field(default_factory=dict)


def _seg_mean(x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    from whybox.explainers.perturbation._common import segment_mean
    from whybox.masking import FeatureGroups

    return segment_mean(x, FeatureGroups(seg, int(seg.max()) + 1, "user"))


def make_rows(case: Case, peers: dict[str, Any]) -> list[Row]:
    import whybox

    model, x, t, seg, bs, n = case.model, case.x, case.target, case.seg, case.batch_size, case.n
    ca, lime_image, shap = peers.get("captum"), peers.get("lime"), peers.get("shap")
    if case.signal:  # image-only peers
        lime_image = shap = None
    zeros = torch.zeros_like(x)
    digits = case.name == "digits"
    shared = digits or case.signal  # the same feature ids for every row, and LIME's default fill is zero
    ours_fill = "zero" if shared else "auto"  # pixel segments: a segment mean is the pixel itself
    lime_fill = zeros if shared else _seg_mean(x, seg)
    cap_mask = seg[:1] if shared else seg  # identical pixel ids for every digit image
    m_feat = [int(s.max()) + 1 for s in seg]
    # captum's Occlusion, FeatureAblation and ShapleyValueSampling evaluate perturbations_per_eval perturbations of
    # every input at once (B x ppe rows per model call); whybox's batch_size counts every row of a call. Equal rows
    # per call: ppe = bs // B. (Lime and KernelShap go one example at a time: their ppe is rows per call already.)
    ppe = max(1, bs // x.shape[0])
    rows: list[Row] = []

    def ours(method: str, **kw: Any) -> Impl:
        return Impl("whybox", lambda: whybox.explain(model, x, method, target=t, batch_size=bs, **kw))

    def diff_vs_captum(e: Any, theirs: torch.Tensor) -> float:
        return float((e.attributions - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30))

    # occlusion
    p = [-(-(d - w) // s) + 1 for d, w, s in zip(x.shape[1:], case.window, case.stride, strict=True)]
    n_win = int(np.prod(p))
    peers_occ = []
    if ca is not None:
        peers_occ.append(
            Impl(
                "captum Occlusion",
                lambda: ca.Occlusion(model).attribute(
                    x, sliding_window_shapes=case.window, strides=case.stride, baselines=0, target=t,
                    perturbations_per_eval=ppe,
                ),
                passes=n_win + 1,
            )
        )  # fmt: skip
    rows.append(
        Row(
            case,
            f"occlusion {case.window}/{case.stride} ({n_win} windows)",
            ours("occlusion", window=case.window, stride=case.stride),
            peers_occ,
            bars={"captum Occlusion": 1.0} if not digits else {},
            compare={"captum Occlusion": diff_vs_captum},
        )
    )
    # feature ablation
    peers_abl = []
    if ca is not None:
        peers_abl.append(
            Impl(
                "captum FeatureAblation",
                lambda: ca.FeatureAblation(model).attribute(
                    x, baselines=0, target=t, feature_mask=cap_mask, perturbations_per_eval=ppe
                ),
                passes=float(np.mean(m_feat)) + 1,
            )
        )
    rows.append(
        Row(
            case,
            f"feature_ablation (M={np.mean(m_feat):.0f})",
            ours("feature_ablation", features=seg),
            peers_abl,
            bars={"captum FeatureAblation": 1.0} if not digits else {},
            compare={"captum FeatureAblation": diff_vs_captum},
        )
    )
    # RISE (no peer library implements it)
    rows.append(Row(case, f"rise (N={n}, s={case.rise_grid})", ours("rise", n_masks=n, grid_size=case.rise_grid), []))
    # LIME
    peers_lime = []
    if ca is not None:
        peers_lime.append(
            Impl(
                "captum Lime",
                lambda: ca.Lime(model).attribute(
                    x, baselines=lime_fill, target=t, feature_mask=cap_mask, n_samples=n, perturbations_per_eval=bs
                ),
                passes=n,
                note="default SkLearnLasso(alpha=0.01) surrogate, cosine kernel on model inputs",
            )
        )
    if lime_image is not None:

        def run_lime_image() -> list[Any]:
            out = []
            for i in range(x.shape[0]):
                img = x[i].permute(1, 2, 0).double().numpy()
                seg_i = seg[i, 0].numpy()

                def classifier_fn(imgs: np.ndarray) -> np.ndarray:
                    with torch.no_grad():
                        # contiguous NCHW like every other side (a channels-last view runs EfficientNet-Lite0 ~35 %
                        # faster on this CPU, which would measure the memory format, not lime)
                        inp = torch.from_numpy(imgs).permute(0, 3, 1, 2).to(x.dtype).contiguous()
                        return model(inp).softmax(1).double().numpy()

                out.append(
                    lime_image.LimeImageExplainer(random_state=0).explain_instance(
                        img, classifier_fn, labels=(int(t[i]),), top_labels=None,
                        hide_color=0 if digits else None, num_samples=n, batch_size=bs,
                        segmentation_fn=lambda _img, s=seg_i: s, random_seed=0,
                    )
                )  # fmt: skip
            return out

        peers_lime.append(
            Impl(
                "lime LimeImageExplainer",
                run_lime_image,
                passes=n,
                note="precomputed segments via segmentation_fn; hide_color=None (segment mean), 0 on digits",
            )
        )
    rows.append(
        Row(
            case,
            f"lime (n={n}, M={np.mean(m_feat):.0f})",
            ours("lime", features=seg, n_samples=n, fill=ours_fill),
            peers_lime,
            bars=({"captum Lime": 0.5, "lime LimeImageExplainer": 0.5} if digits else {"captum Lime": 1.0}),
        )
    )
    # Kernel SHAP
    peers_ks = []
    if ca is not None:
        peers_ks.append(
            Impl(
                "captum KernelShap",
                lambda: ca.KernelShap(model).attribute(
                    x, baselines=0, target=t, feature_mask=cap_mask, n_samples=n, perturbations_per_eval=bs
                ),
                passes=n,
            )
        )
    if shap is not None:

        def run_shap() -> list[Any]:
            out = []
            for i in range(x.shape[0]):
                g = seg[i, 0].reshape(-1)
                xi = x[i : i + 1]
                ti = int(t[i])

                def f(z: np.ndarray, g: torch.Tensor = g, xi: torch.Tensor = xi, ti: int = ti) -> np.ndarray:
                    zt = torch.from_numpy(np.asarray(z)).to(torch.bool)
                    res = []
                    with torch.no_grad():
                        for s in range(0, zt.shape[0], bs):
                            keep = zt[s : s + bs][:, g].view(-1, 1, *xi.shape[-2:])
                            res.append(model(torch.where(keep, xi, torch.zeros_like(xi)))[:, ti])
                    return torch.cat(res).double().numpy()

                m = int(g.max()) + 1
                explainer = shap.KernelExplainer(f, np.zeros((1, m)), l1_reg=False)
                out.append(explainer.shap_values(np.ones((1, m)), nsamples=n, l1_reg=False, silent=True))
            return out

        peers_ks.append(
            Impl(
                "shap KernelExplainer",
                run_shap,
                passes=n + 2,
                note="binary superpixel/pixel features rendered by f, zero background, l1_reg=False",
            )
        )
    rows.append(
        Row(
            case,
            f"kernel_shap (n={n}, M={np.mean(m_feat):.0f})",
            ours("kernel_shap", features=seg, n_samples=n - 2),
            peers_ks,
            bars={"captum KernelShap": 0.25} if digits else {"captum KernelShap": 1.0},
        )
    )
    # Shapley value sampling
    k = case.svs_permutations
    peers_svs = []
    if ca is not None:
        peers_svs.append(
            Impl(
                "captum ShapleyValueSampling",
                lambda: ca.ShapleyValueSampling(model).attribute(
                    x, baselines=0, target=t, feature_mask=cap_mask, n_samples=2 * k, perturbations_per_eval=ppe
                ),
                passes=2 * k * float(np.mean(m_feat)) + 1,
                note=f"n_samples={2 * k} plain permutations (= whybox's {k} antithetic pairs)",
            )
        )
    rows.append(
        Row(
            case,
            f"shapley_sampling ({k} antithetic, M={np.mean(m_feat):.0f})",
            ours("shapley_sampling", features=seg, n_permutations=k),
            peers_svs,
        )
    )
    # exact Shapley (the oracle; no peer at this size)
    if isinstance(case.exact_patch, int):  # windows of a signal
        m_exact, grid_txt = -(-x.shape[-1] // case.exact_patch), f"windows of {case.exact_patch}"
    else:
        ph, pw = case.exact_patch
        m_exact, grid_txt = (-(-x.shape[-2] // ph)) * (-(-x.shape[-1] // pw)), f"grid {ph}x{pw}"
    rows.append(
        Row(
            case,
            f"exact_shapley ({grid_txt}, M={m_exact})",
            ours("exact_shapley", features="grid", patch=case.exact_patch),
            [],
        )
    )
    return rows


# --------------------------------------------------------------------------- timing
def _timed(fn: Callable[[], Any]) -> tuple[float, Any, float, float]:
    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return (cpu if CLOCK == "cpu" else wall), out, wall, cpu


def forward_time(case: Case, reps: int) -> float:
    """The model's batched per-sample forward time at the case's batch size (median of ``reps``)."""
    xb = case.x[torch.arange(case.batch_size) % case.b]
    ts = []
    with torch.no_grad():
        for _ in range(reps):
            dt, _, _, _ = _timed(lambda: case.model(xb))
            ts.append(dt / case.batch_size)
    return statistics.median(ts)


def run_row(row: Row, fwd_reps: int) -> dict[str, Any]:
    impls = [row.ours, *row.peers]
    times: dict[str, list[float]] = {i.label: [] for i in impls}
    other: dict[str, list[float]] = {i.label: [] for i in impls}
    fwd: list[float] = []
    last: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for impl in impls:  # warm-up (not timed)
        try:
            _timed(impl.fn)
        except Exception as exc:
            errors[impl.label] = f"{type(exc).__name__}: {exc}"
    live = [i for i in impls if i.label not in errors]
    for r in range(row.case.rounds):
        fwd.append(forward_time(row.case, fwd_reps))
        for impl in live if r % 2 == 0 else live[::-1]:
            dt, last[impl.label], wall, cpu = _timed(impl.fn)
            times[impl.label].append(dt)
            other[impl.label].append(cpu if CLOCK == "wall" else wall)
    b = row.case.b
    t_fwd = statistics.median(fwd)
    res: dict[str, Any] = {
        "case": row.case.name,
        "method": row.method,
        "images": b,
        "batch_size": row.case.batch_size,
        "rounds": row.case.rounds,
        "forward_s_per_sample": t_fwd,
        "forward_samples": fwd,
        "errors": errors,
        "impls": {},
    }
    ours_out = last.get(row.ours.label)
    for impl in impls:
        ts = times[impl.label]
        passes = impl.passes
        if impl is row.ours and ours_out is not None:
            passes = ours_out.meta["n_forward"] / b
        s_img = statistics.median(ts) / b if ts else None
        entry: dict[str, Any] = {
            "label": impl.label,
            "note": impl.note,
            "times_s": ts,
            "times_other_clock_s": other[impl.label],
            "s_per_image": s_img,
            "passes": passes,
            "efficiency": (passes * t_fwd / s_img) if (s_img and passes) else None,
        }
        if impl is not row.ours and ts and times[row.ours.label]:
            ratios = [o / p for o, p in zip(times[row.ours.label], ts, strict=False)]
            entry["ratio"] = statistics.median(ratios)
            entry["ratio_min"], entry["ratio_max"] = min(ratios), max(ratios)
            entry["bar"] = row.bars.get(impl.label)
            cmp = row.compare.get(impl.label)
            if cmp is not None and ours_out is not None and impl.label in last:
                entry["max_abs_diff_rel"] = cmp(ours_out, last[impl.label])
        res["impls"][impl.label] = entry
    return res


def verdicts(res: dict[str, Any]) -> list[dict[str, Any]]:
    ours = res["impls"]["whybox"]
    eff = ours.get("efficiency")
    lines = [
        {
            "what": "whybox efficiency",
            "value": eff,
            "target": f">= {EFFICIENCY_TARGET}",
            "ok": None if eff is None else eff >= EFFICIENCY_TARGET,
        }
    ]
    for label, e in list(res["impls"].items())[1:]:
        bar, ratio = e.get("bar"), e.get("ratio")
        lines.append(
            {
                "what": f"vs {label}",
                "value": ratio,
                "target": "info" if bar is None else f"ratio <= {bar:g}",
                "ok": None if (bar is None or ratio is None) else ratio <= bar,
            }
        )
    return lines


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"


def render(results: list[dict[str, Any]], header: dict[str, Any]) -> str:
    out = [
        "# whybox vs captum / lime / shap: perturbation explainers",
        "",
        f"- date: {header['date']}; host: {header['cpu']} ({header['cpu_count']} logical CPUs); torch "
        f"{header['torch']}; torch.set_num_threads({header['threads']}); clock: {header['clock']}; load average at "
        f"start {header['load_start']}, at end {header['load_end']}; glibc malloc tunables: "
        f"{header['malloc_env'] or 'none (default allocator)'}",
        f"- peers: {header['captum']}; {header['lime']}; {header['shap']}",
        "- passes = forward passes per image (whybox: meta; peers: their algorithm). efficiency = passes x batched "
        "per-sample forward time (same round, same batch size) / time per image. ratio = whybox / peer time, "
        "median of per-round ratios (min-max). agree = max |whybox - captum| / max |captum| (same estimator only).",
        f"- total {header['total_s']:.0f} s",
        "",
        "| case | method | impl | s/img | passes/img | efficiency | ratio (min-max) | target | ok | agree |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        lines = verdicts(res)
        for (label, e), line in zip(res["impls"].items(), lines, strict=True):
            ratio = e.get("ratio")
            rtxt = "-" if ratio is None else f"{ratio:.3f} ({e['ratio_min']:.2f}-{e['ratio_max']:.2f})"
            eff = e.get("efficiency")
            ok = {True: "yes", False: "**NO**", None: "-"}[line["ok"]]
            agree = e.get("max_abs_diff_rel")
            passes = e.get("passes")
            out.append(
                f"| {res['case']} | {res['method']} | {label} | {_fmt_s(e.get('s_per_image'))} | "
                f"{'-' if passes is None else f'{passes:.0f}'} | {'-' if eff is None else f'{eff:.2f}'} | {rtxt} | "
                f"{line['target']} | {ok} | {'-' if agree is None else f'{agree:.1e}'} |"
            )
        for label, err in res["errors"].items():
            out.append(f"| {res['case']} | {res['method']} | {label} | error: {err[:150]} | | | | | | |")
    notes = sorted({f"{e['label']}: {e['note']}" for r in results for e in r["impls"].values() if e.get("note")})
    if notes:
        out += ["", "Peer settings:", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall time or process CPU time")
    p.add_argument("--cases", default="digits,effnet,signal", help="comma list of digits,effnet,signal")
    p.add_argument("--signal-images", type=int, default=16, help="signals (12 x 1000) in the signal case")
    p.add_argument("--digits-images", type=int, default=64)
    p.add_argument("--effnet-images", type=int, default=1)
    p.add_argument("--effnet-samples", type=int, default=100, help="samples (passes) per image at 224 px")
    p.add_argument("--only", default="", help="run only rows whose method starts with one of these (comma list)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    global CLOCK
    CLOCK = args.clock
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    ca, ca_info = _import("captum.attr")
    lime_image, lime_info = _import("lime.lime_image")
    shap, shap_info = _import("shap")
    peers = {"captum": ca, "lime": lime_image, "shap": shap}
    load_start = _load()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, clock {CLOCK}, load {load_start}")
    print(f"{ca_info}; {lime_info}; {shap_info}")
    t_start = time.perf_counter()
    results = []
    for case in build_cases(args):
        print(f"\n== {case.name}: inputs {tuple(case.x.shape)}, batch_size {case.batch_size}, {case.rounds} rounds")
        forward_time(case, 2)  # warm the model's kernels
        for row in make_rows(case, peers):
            if args.only and not any(row.method.startswith(o) for o in args.only.split(",")):
                continue
            t0 = time.perf_counter()
            res = run_row(row, fwd_reps=5 if case.name == "digits" else 2)
            results.append(res)
            for line in verdicts(res):
                v = line["value"]
                print(
                    f"  {row.method:<44} {line['what']:<34} {'-' if v is None else f'{v:.3f}':>7} "
                    f"[{line['target']}] {'' if line['ok'] is None else ('ok' if line['ok'] else 'MISSED')}"
                )
            for label, e in res["impls"].items():
                print(f"      {label:<30} {_fmt_s(e['s_per_image']):>10}/img  passes {e['passes']}")
            for label, err in res["errors"].items():
                print(f"      {label} failed: {err}")
            print(f"      ({time.perf_counter() - t0:.0f} s)")
    header = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "clock": CLOCK,
        "captum": ca_info,
        "lime": lime_info,
        "shap": shap_info,
        "load_start": load_start,
        "load_end": _load(),
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "total_s": time.perf_counter() - t_start,
        "efficiency_target": EFFICIENCY_TARGET,
    }
    table = render(results, header)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "perturbation.md").write_text(table)
    (args.out / "perturbation.json").write_text(json.dumps({"header": header, "rows": results}, indent=1, default=str))
    print(f"wrote {args.out / 'perturbation.md'} and {args.out / 'perturbation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
