#!/usr/bin/env python
"""whybox beside captum and pytorch-grad-cam: gradient and CAM explainers, timed in one process.

Same model, same inputs, same explicit targets, same internal batch size for every implementation;
the calls of one row alternate call by call within each timed round (whybox, peer, peer, whybox, ...) so a
busy machine slows both sides alike, and each row's ratio is the median of the per-round ratios whybox / peer.
The passes of each side are in the table; Integrated Gradients' differ by two: whybox also scores f(x) and
f(baseline) for the completeness delta in ``meta`` (66 forward passes to captum's 64 at 64 steps), inside its time.

Run ``python bench/gradient.py [--quick] [--repeats N]`` from the repository root (see bench/README.md).
Writes ``bench/results/gradient.md`` (the table) and ``bench/results/gradient.json`` (everything).
Offline: the models and photos come from ``whybox.data``; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as _dt
import gc
import io
import json
import math
import os
import platform
import pstats
import statistics
import sys
import time
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's Score-CAM wraps its loop in tqdm

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

GRADIENT_TARGET = 1.05  # whybox / peer at equal passes
CAM_BAR = 1.00  # every CAM at most captum's LayerGradCam time
LONG_CALL_S = 2.0  # a warm-up call this long is kept as a timed sample


# --------------------------------------------------------------------------- peers
def import_captum() -> tuple[Any, str]:
    try:
        import captum
        import captum.attr as ca
    except Exception as exc:  # pragma: no cover - environment dependent
        return None, f"not importable: {exc!r}"
    return ca, f"captum {captum.__version__}"


def _torchvision_stub() -> None:
    """Just the torchvision names pytorch-grad-cam touches at import time (none of them on the CAM paths used here)."""

    def unavailable(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("torchvision is a stub in bench/gradient.py; this pytorch-grad-cam path is not benchmarked")

    tv = types.ModuleType("torchvision")
    tv.__dict__["__whybox_bench_stub__"] = True
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    ops = types.ModuleType("torchvision.ops")
    for name in ("Compose", "Normalize", "ToTensor", "Resize"):
        setattr(transforms, name, unavailable)
    functional.resize = unavailable
    ops.box_iou = unavailable
    transforms.functional = functional
    tv.transforms, tv.ops = transforms, ops
    sys.modules.update(
        {
            "torchvision": tv,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
            "torchvision.ops": ops,
        }
    )


def import_pytorch_grad_cam() -> tuple[Any, str]:
    """pytorch-grad-cam, installed --no-deps; PyPI torchvision does not import beside this torch, so when the
    real import fails, retry once with a stub torchvision (only image utilities and detection targets use it)."""
    try:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except Exception as exc:
        first = exc
    else:
        return pgc, f"pytorch-grad-cam {_dist_version('grad-cam')}"
    for name in list(sys.modules):
        if name.split(".")[0] in ("torchvision", "pytorch_grad_cam"):
            del sys.modules[name]
    _torchvision_stub()
    try:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: F401
    except Exception as exc:  # pragma: no cover - environment dependent
        for name in list(sys.modules):
            if name.split(".")[0] in ("torchvision", "pytorch_grad_cam"):
                del sys.modules[name]
        return None, f"not importable: {first!r}; with a torchvision stub: {exc!r}"
    return pgc, f"pytorch-grad-cam {_dist_version('grad-cam')} (torchvision stubbed: {type(first).__name__}: {first})"


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


# --------------------------------------------------------------------------- cases
@dataclass
class Case:
    name: str
    model: torch.nn.Module
    x: torch.Tensor
    target: torch.Tensor
    batch_size: int
    cam_layer: str
    scorecam_layer: str
    ig_steps: int
    sg_samples: int
    sigma: float
    auto_layer_row: bool = False
    skip: set[str] = field(default_factory=set)
    signal: bool = False  # 1-D signals (B, C, L): CAMs resized linearly along L; pytorch-grad-cam has no 1-D path

    @property
    def b(self) -> int:
        return int(self.x.shape[0])


def _predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def build_cases(args: argparse.Namespace) -> list[Case]:
    import whybox.data as wd

    cases: list[Case] = []
    want = set(args.cases.split(","))
    if want & {"effnet-b1", "effnet-b4"}:
        model = wd.efficientnet_lite0().eval()
        photos = wd.photos()
        x_all = photos[0] if isinstance(photos, tuple) else photos
        t_all = _predict(model, x_all)
        sigma = 0.15 * float(x_all.max() - x_all.min())  # the paper's 15 % noise level, as one absolute sigma
        heavy = {"integrated_gradients", "scorecam"} if not args.full else set()
        for b in (1, 4):
            name = f"effnet-b{b}"
            if name not in want:
                continue
            cases.append(
                Case(
                    name=name,
                    model=model,
                    x=x_all[:b].contiguous(),
                    target=t_all[:b].clone(),
                    batch_size=16,
                    cam_layer="_bn1",
                    scorecam_layer="_blocks.4",
                    ig_steps=64,
                    sg_samples=16,
                    sigma=sigma,
                    auto_layer_row=(b == 1),
                    skip=heavy if b > 1 else set(),
                )
            )
    if "digits" in want:
        model = wd.digits_cnn().eval()
        x, _ = wd.load_digits("test")
        x = x[:64].contiguous()
        cases.append(
            Case(
                name="digits-b64",
                model=model,
                x=x,
                target=_predict(model, x),
                batch_size=64,
                cam_layer="features.relu2",
                scorecam_layer="features.relu2",
                ig_steps=64,
                sg_samples=50,
                sigma=0.15 * float(x.max() - x.min()),
            )
        )
    if "signal" in want:
        model = signal_cnn()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(16, 12, 1000, generator=g)
        cases.append(
            Case(
                name="signal-b16",
                model=model,
                x=x,
                target=_predict(model, x),
                batch_size=16,
                cam_layer="act3",
                scorecam_layer="act3",
                ig_steps=64,
                sg_samples=16,
                sigma=0.15 * float(x.max() - x.min()),
                signal=True,
            )
        )
    return cases


def signal_cnn() -> torch.nn.Module:
    """A 1-D CNN of the size used on 12-lead ECGs (3 conv blocks, 64 channels), seeded weights: the time-series
    case (the timing does not depend on what the weights learned)."""
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(
            OrderedDict(
                conv1=nn.Conv1d(12, 32, 7, padding=3),
                bn1=nn.BatchNorm1d(32),
                act1=nn.ReLU(),
                pool1=nn.MaxPool1d(2),
                conv2=nn.Conv1d(32, 64, 5, padding=2),
                act2=nn.ReLU(),
                pool2=nn.MaxPool1d(2),
                conv3=nn.Conv1d(64, 64, 3, padding=1),
                act3=nn.ReLU(),
                gap=nn.AdaptiveAvgPool1d(1),
                flat=nn.Flatten(),
                head=nn.Linear(64, 5),
            )
        ).eval()


# --------------------------------------------------------------------------- implementations
def _module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    return dict(model.named_modules())[name]


def _minmax(m: torch.Tensor) -> torch.Tensor:
    flat = m.flatten(1)
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(m)


@dataclass
class Impl:
    """One side of a row: a callable, the library, and its passes per image (peers: from their algorithm)."""

    label: str
    fn: Callable[[], Any]
    passes: Callable[[Any], tuple[float, float]] | None = None  # from the returned value (whybox meta)
    fixed_passes: tuple[float, float] | None = None
    note: str = ""


@dataclass
class Row:
    case: Case
    method: str
    ours: Impl
    peers: list[Impl]
    kind: str  # "gradient" | "cam" | "scorecam"
    bar_peer: str | None = None  # the peer whose time is the bar (captum LayerGradCam for CAMs)
    compare: Callable[[Any], torch.Tensor] | None = None  # whybox result -> tensor comparable with peers
    peer_compare: dict[str, Callable[[Any], torch.Tensor]] = field(default_factory=dict)


def _our_passes(b: int) -> Callable[[Any], tuple[float, float]]:
    return lambda e: (e.meta["n_forward"] / b, e.meta["n_backward"] / b)


def make_rows(case: Case, ca: Any, pgc: Any, methods: set[str]) -> list[Row]:
    from whybox.explainers.cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
    from whybox.explainers.gradient import InputXGradient, IntegratedGradients, Saliency, SmoothGrad

    model, x, t, bs, b = case.model, case.x, case.target, case.batch_size, case.b
    size = (x.shape[-1],) if case.signal else tuple(x.shape[-2:])
    mode = "linear" if case.signal else "bilinear"
    leaf = x.clone().requires_grad_(True)  # captum wants inputs that require grad (it warns otherwise)
    zeros = torch.zeros_like(x)
    attrs = lambda e: e.attributions  # noqa: E731
    rows: list[Row] = []

    def want(m: str) -> bool:
        return m in methods and m not in case.skip

    def captum_peer(label: str, fn: Callable[[], Any], passes: tuple[float, float], note: str = "") -> list[Impl]:
        return [Impl(f"captum {label}", fn, fixed_passes=passes, note=note)] if ca is not None else []

    # ---------------- noise floor: the same call on both sides (the ratio should be 1; its spread is the noise)
    if want("control"):
        same = lambda: Saliency(model, abs=True, batch_size=bs).explain(x, t)  # noqa: E731
        rows.append(
            Row(
                case,
                "control: saliency A/A",
                Impl("whybox", same, _our_passes(b)),
                [Impl("whybox (same call)", same, _our_passes(b))],
                "control",
            )
        )

    # ---------------- gradient family
    if want("saliency"):
        rows.append(
            Row(
                case,
                "saliency",
                Impl("whybox", lambda: Saliency(model, abs=True, batch_size=bs).explain(x, t), _our_passes(b)),
                captum_peer("Saliency", lambda: ca.Saliency(model).attribute(leaf, target=t, abs=True), (1, 1)),
                "gradient",
                compare=attrs,
            )
        )
    if want("input_x_gradient"):
        rows.append(
            Row(
                case,
                "input_x_gradient",
                Impl("whybox", lambda: InputXGradient(model, batch_size=bs).explain(x, t), _our_passes(b)),
                captum_peer("InputXGradient", lambda: ca.InputXGradient(model).attribute(leaf, target=t), (1, 1)),
                "gradient",
                compare=attrs,
            )
        )
    if want("integrated_gradients"):
        n = case.ig_steps
        rows.append(
            Row(
                case,
                f"integrated_gradients (GL, n={n})",
                Impl(
                    "whybox",
                    lambda n=n: IntegratedGradients(
                        model, n_steps=n, method="gausslegendre", baseline="zero", batch_size=bs
                    ).explain(x, t),
                    _our_passes(b),
                ),
                captum_peer(
                    "IntegratedGradients",
                    lambda n=n: ca.IntegratedGradients(model).attribute(
                        x, baselines=zeros, target=t, n_steps=n, method="gausslegendre", internal_batch_size=bs
                    ),
                    (n, n),
                    note=f"internal_batch_size={bs}",
                ),
                "gradient",
                compare=attrs,
            )
        )
    if want("smoothgrad"):
        n, sigma = case.sg_samples, case.sigma
        nt_bs = max(1, bs // b)  # rows per forward = b * nt_samples_batch_size = our batch_size
        rows.append(
            Row(
                case,
                f"smoothgrad (n={n}, sigma={sigma:.3g})",
                Impl(
                    "whybox",
                    lambda n=n, sigma=sigma: SmoothGrad(
                        model, n_samples=n, sigma=sigma, variant="mean", batch_size=bs
                    ).explain(x, t),
                    _our_passes(b),
                ),
                captum_peer(
                    "NoiseTunnel(Saliency)",
                    lambda n=n, sigma=sigma, nt_bs=nt_bs: ca.NoiseTunnel(ca.Saliency(model)).attribute(
                        leaf,
                        nt_type="smoothgrad",
                        nt_samples=n,
                        nt_samples_batch_size=nt_bs,
                        stdevs=sigma,
                        target=t,
                        abs=False,
                    ),
                    (n, n),
                    note=f"nt_samples_batch_size={nt_bs} (= {b * nt_bs} rows per forward)",
                ),
                "gradient",
                compare=None,  # different noise draws: compared in expectation by tests/reference, not here
            )
        )

    # ---------------- CAM family
    layer = case.cam_layer
    mod = _module(model, layer) if layer else None

    def captum_lgc() -> torch.Tensor:
        a = ca.LayerGradCam(model, mod).attribute(x, target=t, relu_attributions=True)
        return _minmax(ca.LayerAttribution.interpolate(a, size, interpolate_mode=mode))

    def lgc_impl(bar: bool) -> list[Impl]:
        label = f"LayerGradCam+relu+{mode}" + (" (bar)" if bar else "")
        return captum_peer(label, captum_lgc, (1, 1), note=f"layer {layer}")

    def pgc_impl(cls_name: str, layer_name: str, extra: Callable[[Any], None] | None = None) -> list[Impl]:
        if pgc is None or case.signal:
            return []
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cls = getattr(pgc, cls_name)
        lay = _module(model, layer_name)

        def run() -> Any:
            with cls(model=model, target_layers=[lay]) as cam:
                if extra is not None:
                    extra(cam)
                return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in t])

        passes = (1, 1)
        note = f"layer {layer_name}; backward runs to the input and fills weight .grad"
        return [Impl(f"pytorch-grad-cam {cls_name}", run, fixed_passes=passes, note=note)]

    cams = [
        ("gradcam", GradCAM, "GradCAM"),
        ("gradcam_pp", GradCAMPlusPlus, "GradCAMPlusPlus"),
        ("xgradcam", XGradCAM, "XGradCAM"),
        ("layercam", LayerCAM, "LayerCAM"),
        ("hirescam", HiResCAM, "HiResCAM"),
    ]
    pgc_cmp = lambda out: torch.as_tensor(out).unsqueeze(1)  # noqa: E731
    for key, cls, pgc_name in cams:
        if not want(key):
            continue
        ours = Impl(
            "whybox",
            (lambda cls=cls: cls(model, layer=layer, batch_size=bs).explain(x, t)),
            _our_passes(b),
        )
        peers = lgc_impl(bar=key != "gradcam") + pgc_impl(pgc_name, layer)
        cmp = {p.label: pgc_cmp for p in peers if p.label.startswith("pytorch-grad-cam")}
        if key == "gradcam":
            cmp.update({p.label: (lambda v: v) for p in peers if p.label.startswith("captum")})
        rows.append(
            Row(
                case,
                f"{key} @ {layer}",
                ours,
                peers,
                "cam",
                bar_peer=next((p.label for p in peers if p.label.startswith("captum")), None),
                compare=attrs,
                peer_compare=cmp,
            )
        )
    if case.auto_layer_row and want("gradcam"):
        rows.append(
            Row(
                case,
                "gradcam @ auto layer",
                Impl("whybox", lambda: GradCAM(model, batch_size=bs).explain(x, t), _our_passes(b)),
                lgc_impl(bar=True),
                "cam",
                bar_peer=next((p.label for p in lgc_impl(bar=True)), None),
            )
        )
    if want("scorecam"):
        sl = case.scorecam_layer
        k = _channels(model, x, sl)
        peers = pgc_impl("ScoreCAM", sl, extra=lambda cam: setattr(cam, "batch_size", bs))
        for p in peers:
            p.fixed_passes = (1 + k, 0)
            p.note = f"layer {sl} ({k} channels), batch_size={bs}"
        rows.append(
            Row(
                case,
                f"scorecam @ {sl} (K={k})",
                Impl(
                    "whybox",
                    lambda sl=sl: ScoreCAM(model, layer=sl, batch_size=bs, mask_align_corners=True).explain(x, t),
                    _our_passes(b),
                ),
                peers,
                "scorecam",
                compare=attrs,
                peer_compare={p.label: pgc_cmp for p in peers},
            )
        )
    return rows


def _channels(model: torch.nn.Module, x: torch.Tensor, layer: str) -> int:
    shape: list[int] = []
    h = _module(model, layer).register_forward_hook(lambda m, i, o: shape.extend(o.shape))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        h.remove()
    return int(shape[1])


# --------------------------------------------------------------------------- timing
CLOCK = "wall"  # set by --clock: "wall" (perf_counter) or "cpu" (process CPU time, all threads)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any, float, float]:
    """(primary seconds, result, wall seconds, process CPU seconds) of one call."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return (cpu if CLOCK == "cpu" else wall), out, wall, cpu


def run_row(row: Row, repeats: int, budget: float, min_rounds: int, min_sample: float) -> dict[str, Any]:
    impls = [row.ours, *row.peers]
    times: dict[str, list[float]] = {i.label: [] for i in impls}
    other: dict[str, list[float]] = {i.label: [] for i in impls}  # the other clock, for the JSON
    last: dict[str, Any] = {}
    errors: dict[str, str] = {}
    # warm-up round (also estimates the cost of a round)
    warm = 0.0
    warm_times: dict[str, tuple[float, float]] = {}
    for impl in impls:
        try:
            gc.collect()
            dt, last[impl.label], wall, cpu = _timed(impl.fn)
        except Exception as exc:
            errors[impl.label] = f"{type(exc).__name__}: {exc}"
            continue
        warm_times[impl.label] = (dt, cpu if CLOCK == "wall" else wall)
        warm += wall
    live = [i for i in impls if i.label not in errors]
    keep_warm = bool(warm_times) and max(v[0] for v in warm_times.values()) > LONG_CALL_S
    if keep_warm:
        for label, (dt, dt_other) in warm_times.items():
            times[label].append(dt)
            other[label].append(dt_other)
    # A round calls every implementation `inner` times, alternating call by call (A B A B ..., the order flipped
    # every other call), so a busy neighbour slows all sides alike; tiny calls get `inner` > 1 so that a sample
    # lasts at least `min_sample` seconds. The garbage collector runs between rounds, not inside them.
    fastest = min((v[0] for v in warm_times.values()), default=1.0)
    inner = 1 if keep_warm else max(1, min(200, math.ceil(min_sample / max(fastest, 1e-6))))
    rounds = max(min_rounds, min(repeats, int(budget // max(warm * inner, 1e-9))))
    rounds = max(0, rounds - (1 if keep_warm else 0))
    for r in range(rounds):
        acc = {i.label: [0.0, 0.0] for i in live}
        gc.collect()
        gc.disable()
        try:
            for j in range(inner):
                for impl in live if (r * inner + j) % 2 == 0 else live[::-1]:
                    dt, last[impl.label], wall, cpu = _timed(impl.fn)
                    acc[impl.label][0] += dt
                    acc[impl.label][1] += cpu if CLOCK == "wall" else wall
        finally:
            gc.enable()
        for label, (dt, dt_other) in acc.items():
            times[label].append(dt / inner)
            other[label].append(dt_other / inner)
    b = row.case.b
    res: dict[str, Any] = {
        "case": row.case.name,
        "method": row.method,
        "kind": row.kind,
        "batch": b,
        "batch_size": row.case.batch_size,
        "rounds": len(times[row.ours.label]),
        "calls_per_sample": inner,
        "clock": CLOCK,
        "warmup_kept_as_sample": keep_warm,
        "errors": errors,
        "impls": {},
    }
    ours_out = last.get(row.ours.label)
    ref = row.compare(ours_out).detach().float() if (row.compare and ours_out is not None) else None
    for impl in impls:
        ts = times[impl.label]
        entry: dict[str, Any] = {
            "label": impl.label,
            "note": impl.note,
            "times_s": ts,
            "times_other_clock_s": other[impl.label],
            "s_per_image": statistics.median(ts) / b if ts else None,
        }
        if impl.passes is not None and impl.label in last:
            entry["passes"] = list(impl.passes(last[impl.label]))
            entry["meta_layer"] = last[impl.label].meta.get("layer")
        else:
            entry["passes"] = list(impl.fixed_passes) if impl.fixed_passes else None
        if impl is not row.ours and ts and times[row.ours.label]:
            ratios = [o / p for o, p in zip(times[row.ours.label], ts, strict=False)]
            entry["ratio"] = statistics.median(ratios)
            entry["ratio_min"], entry["ratio_max"] = min(ratios), max(ratios)
            o2 = [o / p for o, p in zip(other[row.ours.label], other[impl.label], strict=False) if p > 0]
            entry["ratio_other_clock"] = statistics.median(o2) if o2 else None
            conv = row.peer_compare.get(impl.label) or ((lambda v: v) if row.kind == "gradient" else None)
            if ref is not None and conv is not None and impl.label in last:
                try:
                    theirs = conv(last[impl.label]).detach().float()
                    scale = float(theirs.abs().max()) or 1.0
                    entry["max_abs_diff_rel"] = float((ref - theirs).abs().max()) / scale
                except Exception as exc:  # shapes differ etc.
                    entry["max_abs_diff_rel"] = f"n/a ({type(exc).__name__})"
        res["impls"][impl.label] = entry
    return res


def verdicts(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One table line per peer, with the target that applies to it."""
    ours = next(iter(res["impls"].values()))
    lines = []
    for label, e in list(res["impls"].items())[1:]:
        if res["kind"] == "control":
            target, limit = "~1 (noise floor)", None
        elif res["kind"] == "gradient":
            target, limit = f"<= {GRADIENT_TARGET}", GRADIENT_TARGET
        elif res["kind"] == "scorecam":
            target, limit = f"<= {GRADIENT_TARGET} (equal passes)", GRADIENT_TARGET
        elif label.startswith("captum"):
            target, limit = f"<= {CAM_BAR:.2f} (captum bar)", CAM_BAR
        else:
            target, limit = "info", None
        ratio = e.get("ratio")
        ok = None if (ratio is None or limit is None) else ratio <= limit
        lines.append({"peer": label, "entry": e, "ours": ours, "target": target, "ok": ok})
    if not lines:
        lines.append({"peer": "(no peer importable)", "entry": {}, "ours": ours, "target": "-", "ok": None})
    return lines


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "-"
    if v < 1e-3:
        return f"{v * 1e6:.1f} us"
    return f"{v * 1e3:.2f} ms" if v < 1 else f"{v:.2f} s"


def _fmt_passes(p: list[float] | None) -> str:
    if not p:
        return "-"
    f, bwd = p
    g = lambda v: f"{v:g}" if float(v).is_integer() else f"{v:.2f}"  # noqa: E731
    return f"{g(f)} / {g(bwd)}"


def render(results: list[dict[str, Any]], header: dict[str, Any]) -> str:
    out = [
        "# whybox vs captum / pytorch-grad-cam: gradient and CAM explainers",
        "",
        f"- date: {header['date']}; host: {header['cpu']} ({header['cpu_count']} logical CPUs); "
        f"torch {header['torch']}; torch.set_num_threads({header['threads']}); clock: {header['clock']} "
        f"({'process CPU time' if header['clock'] == 'cpu' else 'wall time'}); "
        f"load average at start {header['load_start']}, at end {header['load_end']}",
        f"- peers: {header['captum']}; {header['pytorch_grad_cam']}",
        f"- cases: {'; '.join(header['cases'])}",
        f"- up to {header['repeats']} timed rounds per row after a warm-up round (capped by a "
        f"{header['row_budget_s']:g} s budget per row, at least {header['min_rounds']}; a warm-up call over "
        f"{LONG_CALL_S:g} s counts as a round; calls under {header['min_sample_s']:g} s are repeated within a round). "
        "The implementations of a row alternate call by call within each round; s/img = median over rounds; "
        f"ratio = median of the per-round ratios whybox / peer. Total wall time {header['total_s']:.0f} s.",
        "- passes = forward / backward passes per image (whybox: from `meta`; peers: from their algorithm). "
        "agree = max |whybox - peer| / max |peer| on the last call's output (SmoothGrad: different noise, n/a).",
        "",
        "| case | method | peer | whybox s/img | peer s/img | ratio (min-max) | target | ok | "
        "passes whybox | passes peer | agree | rounds x calls |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for line in verdicts(res):
            e, o = line["entry"], line["ours"]
            ratio = e.get("ratio")
            rtxt = "-" if ratio is None else f"{ratio:.3f} ({e['ratio_min']:.2f}-{e['ratio_max']:.2f})"
            ok = {True: "yes", False: "**NO**", None: "-"}[line["ok"]]
            agree = e.get("max_abs_diff_rel")
            atxt = "-" if agree is None else (agree if isinstance(agree, str) else f"{agree:.1e}")
            out.append(
                f"| {res['case']} | {res['method']} | {line['peer']} | {_fmt_s(o.get('s_per_image'))} | "
                f"{_fmt_s(e.get('s_per_image'))} | {rtxt} | {line['target']} | {ok} | "
                f"{_fmt_passes(o.get('passes'))} | {_fmt_passes(e.get('passes'))} | {atxt} | "
                f"{res['rounds']}x{res['calls_per_sample']} |"
            )
        for label, err in res["errors"].items():
            out.append(f"| {res['case']} | {res['method']} | {label} | error: {err[:120]} | | | | | | | | |")
    notes = sorted(
        {f"{r['case']}, {e['label']}: {e['note']}" for r in results for e in r["impls"].values() if e.get("note")}
    )
    if notes:
        out += ["", "Peer settings:", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- profiling
def profile_row(row: Row, dest: Path) -> Path:
    """cProfile one whybox call and one call of each peer; the top functions by cumulative time."""
    dest.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{row.case.name}-{row.method}")[:80]
    path = dest / f"{safe}.txt"
    with path.open("w") as fh:
        for impl in [row.ours, *row.peers]:
            t0 = time.perf_counter()
            with contextlib.suppress(Exception):
                impl.fn()
            calls = max(1, min(20, math.ceil(1.0 / max(time.perf_counter() - t0, 1e-6))))
            prof = cProfile.Profile()
            prof.enable()
            with contextlib.suppress(Exception):
                for _ in range(calls):
                    impl.fn()
            prof.disable()
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(30)
            fh.write(f"==== {impl.label} ({calls} calls)\n{buf.getvalue()}\n")
    return path


# --------------------------------------------------------------------------- main
ALL_METHODS = (
    "control",
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "smoothgrad",
    "gradcam",
    "gradcam_pp",
    "xgradcam",
    "layercam",
    "hirescam",
    "scorecam",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds and a smaller time budget per row")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per row (default 5, --quick 3)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default=None,
        help="process CPU time (default with --threads 1: steady on a shared machine) or wall time (default, and "
        "required, with --threads > 1, where CPU time would add up the threads)",
    )
    p.add_argument("--row-budget", type=float, default=None, help="seconds per row (default 30, --quick 8)")
    p.add_argument(
        "--cases", default="effnet-b1,effnet-b4,digits,signal", help="comma list of effnet-b1,effnet-b4,digits,signal"
    )
    p.add_argument("--methods", default=",".join(ALL_METHODS), help="comma list of " + ",".join(ALL_METHODS))
    p.add_argument("--full", action="store_true", help="also Integrated Gradients and Score-CAM at EfficientNet b4")
    p.add_argument(
        "--profile", action="store_true", help="cProfile rows that miss their target (bench/results/profiles)"
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    args = p.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 5)
    budget = args.row_budget if args.row_budget is not None else (8.0 if args.quick else 30.0)
    min_rounds = 1 if args.quick else 3
    min_sample = 0.1 if args.quick else 0.3

    global CLOCK
    if args.clock == "cpu" and args.threads > 1:
        p.error("--clock cpu adds up the CPU time of all threads; use it with --threads 1")
    CLOCK = args.clock or ("cpu" if args.threads == 1 else "wall")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore", category=UserWarning)
    ca, ca_info = import_captum()
    pgc, pgc_info = import_pytorch_grad_cam()
    load_start = _load()
    print(f"torch {torch.__version__}, torch.set_num_threads({torch.get_num_threads()}), load average {load_start}")
    print(f"captum: {ca_info}\npytorch-grad-cam: {pgc_info}")
    if load_start != "n/a" and float(load_start.split()[0]) > args.threads:
        print(
            f"warning: the machine is busy (load {load_start}); ratios are paired per round, but times are "
            "inflated and noisy (oversubscribed intra-op threads spin). Prefer --threads 1 --clock cpu here."
        )

    t_start = time.perf_counter()
    methods = set(args.methods.split(","))
    cases = build_cases(args)
    results: list[dict[str, Any]] = []
    missed: list[Row] = []
    for case in cases:
        print(
            f"\n== {case.name}: inputs {tuple(case.x.shape)}, targets {case.target.tolist()[:8]}"
            f"{'...' if case.b > 8 else ''}, batch_size {case.batch_size}"
        )
        for row in make_rows(case, ca, pgc, methods):
            t0 = time.perf_counter()
            res = run_row(row, repeats, budget, min_rounds, min_sample)
            results.append(res)
            for line in verdicts(res):
                e = line["entry"]
                ratio = e.get("ratio")
                print(
                    f"  {row.method:<40} vs {line['peer']:<45} ours {_fmt_s(line['ours'].get('s_per_image')):>10}/img "
                    f"peer {_fmt_s(e.get('s_per_image')):>10}/img ratio "
                    f"{'-' if ratio is None else f'{ratio:.3f}':>6} [{line['target']}] "
                    f"({time.perf_counter() - t0:.0f} s)"
                )
                if line["ok"] is False and row not in missed:
                    missed.append(row)
            for label, err in res["errors"].items():
                print(f"  {row.method}: {label} failed: {err}")
    total = time.perf_counter() - t_start

    header = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "clock": CLOCK,
        "captum": ca_info,
        "pytorch_grad_cam": pgc_info,
        "repeats": repeats,
        "row_budget_s": budget,
        "min_rounds": min_rounds,
        "min_sample_s": min_sample,
        "quick": args.quick,
        "full": args.full,
        "load_start": load_start,
        "load_end": _load(),
        "total_s": total,
        "targets": {"gradient_ratio_max": GRADIENT_TARGET, "cam_vs_captum_layergradcam_max": CAM_BAR},
        "cases": [
            f"{c.name}: inputs {tuple(c.x.shape)}, batch_size {c.batch_size}, CAM layer {c.cam_layer}, "
            f"Score-CAM layer {c.scorecam_layer}"
            + (f" (not run here: {', '.join(sorted(c.skip))}; add --full)" if c.skip else "")
            for c in cases
        ],
    }
    table = render(results, header)
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gradient.md").write_text(table)
    (args.out / "gradient.json").write_text(json.dumps({"header": header, "rows": results}, indent=1, default=str))
    print(f"wrote {args.out / 'gradient.md'} and {args.out / 'gradient.json'} ({total:.0f} s)")
    if args.profile and missed:
        for row in missed:
            print(f"profile: {profile_row(row, args.out / 'profiles')}")
    return 0


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


if __name__ == "__main__":
    sys.exit(main())
