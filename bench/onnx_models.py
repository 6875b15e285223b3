"""Benchmark: the same network as a torch module and as an ONNX graph run by ONNX Runtime (``whybox.adapt("m.onnx")``),
under the same whybox call, in one process, one thread each (``torch.set_num_threads``; the graph's session gets
torch's count).

Cases: the digits CNN on 64 test digits (occlusion with its default 2 x 2 window, Kernel SHAP with 200 samples) and
EfficientNet-Lite0 on one bundled photo at 224 px (occlusion, 56-pixel windows at stride 28: 49 windows; LIME with 100
samples over SLIC superpixels), both exported with ``torch.onnx.export(dynamo=False)`` and a free batch dimension.
Reported per row: the best of ``--repeats`` calls for each, their ratio (ONNX / torch), and the largest difference
between the two maps relative to the largest attribution (float32 rounding).

    python bench/onnx_models.py [--repeats 5] [--out bench/results/onnx.md]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import whybox
from whybox.data import digits_cnn, efficientnet_lite0, load_digits, photos


def export(module: torch.nn.Module, x: torch.Tensor, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices
        torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["x"], output_names=["scores"],
                          dynamic_axes={"x": {0: "n"}, "scores": {0: "n"}})  # fmt: skip
    return path


def best(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "onnx.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import onnxruntime

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        digits, _ = load_digits("test")
        photo, _ = photos(["coffee"])
        cases = [
            ("digits (64 images)", digits_cnn(), digits[:64], [("occlusion", {}), ("kernel_shap", {"n_samples": 200})]),
            ("effnet224 (1 photo)", efficientnet_lite0(), photo,
             [("occlusion", {"window": 56, "stride": 28, "batch_size": 16}),
              ("lime", {"n_samples": 100, "batch_size": 16})]),
        ]  # fmt: skip
        for name, module, x, methods in cases:
            graph = whybox.adapt(export(module, x[:2], Path(tmp) / f"{len(rows)}.onnx"))
            for method, opts in methods:
                ref = whybox.explain(module, x, method, seed=0, **opts).attributions
                got = whybox.explain(graph, x, method, seed=0, **opts).attributions
                diff = float((got - ref).abs().max() / ref.abs().max())
                t_torch, t_onnx = (
                    best(lambda f=f, m=method, o=opts, x=x: whybox.explain(f, x, m, seed=0, **o), args.repeats)
                    for f in (module, graph)
                )
                rows.append((name, method, t_torch, t_onnx, diff))
                print(
                    f"{name} {method}: torch {t_torch:.4f} s, onnx {t_onnx:.4f} s, {t_onnx / t_torch:.2f}", flush=True
                )
    lines = [
        "# The same network as a torch module and as an ONNX graph (ONNX Runtime), under the same whybox call",
        "",
        f"- {time.strftime('%Y-%m-%dT%H:%M:%S')}; {platform.platform()}; torch {torch.__version__}; onnxruntime "
        f"{onnxruntime.__version__}; 1 thread each; best of {args.repeats} calls after a warm-up.",
        "",
        "| case | method | torch module | ONNX graph | ONNX / torch | max abs diff / max abs attribution |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {c} | {m} | {a:.4f} s | {b:.4f} s | {b / a:.2f} | {d:.1e} |" for c, m, a, b, d in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
