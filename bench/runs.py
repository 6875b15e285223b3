"""Benchmark: the run store's overhead against calling the API in a loop, and Ray against the local backend.

``compare`` on 200 digits test images x 6 methods x 3 metrics (deletion, insertion, sparseness), shards of 16:

- **api loop**: for each shard, the predictions, then for each method ``whybox.explain`` and for each metric
  ``whybox.evaluate``, with exactly the options and seeds the job uses: the same computation with nothing stored;
- **run store (local)**: ``run_job`` into a fresh directory: the same computation plus fingerprints, the inputs
  file, the predictions table, per-sample ``.npy`` files (fsync + rename) and one SQLite transaction per unit;
- **ray (local cluster)**: ``run_job(backend="ray")`` on a local cluster started once (``num_cpus`` = this
  machine's cores), one task per unit with one intra-op thread each; identical rows and arrays are checked.

Both local variants run with one intra-op thread (the job's default: results do not depend on the core count).
Variants alternate over ``--reps`` repetitions; the table gives the median seconds and the median of the
per-repetition ratios. Run when the machine is otherwise idle.

    python bench/runs.py [--reps 3] [--n 200] [--out bench/results/runs.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import whybox
from whybox.data import digits_cnn, load_digits
from whybox.runs import store as store_mod
from whybox.runs.job import Job, run_job, shards

METHODS = ("saliency", "integrated_gradients", "gradcam", "occlusion", "lime", "rise")
OPTIONS = {"integrated_gradients": {"n_steps": 32}, "rise": {"n_masks": 1000}, "lime": {"fill": "zero"}}
METRICS = ("deletion", "insertion", "sparseness")


def api_loop(job: Job, model: torch.nn.Module, x: torch.Tensor) -> None:
    for idx in shards(x.shape[0], job.shard_size):
        xs = x[idx[0] : idx[-1] + 1]
        with torch.no_grad():
            target = torch.softmax(model(xs), 1).argmax(1)
        for method in job.methods:
            e = whybox.explain(model, xs, method, target=target, **job.options_for(method))
            for metric in job.metrics:
                whybox.evaluate(model, xs, e, metric, target=target, **job.metric_options_for(metric))


def timed_store_run(
    job: Job, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, run_dir: Path, backend: str
) -> tuple[float, float]:
    """Seconds for the whole run, and seconds spent inside RunStore.commit (arrays + transaction)."""
    spent = {"commit": 0.0}
    original = store_mod.RunStore.commit

    def commit(self: store_mod.RunStore, unit: store_mod.UnitResult) -> None:
        t = time.perf_counter()
        original(self, unit)
        spent["commit"] += time.perf_counter() - t

    store_mod.RunStore.commit = commit  # type: ignore[method-assign]
    try:
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        s = run_job(job, model, x, run_dir, labels=y, backend=backend)
        total = time.perf_counter() - t0
    finally:
        store_mod.RunStore.commit = original  # type: ignore[method-assign]
    if not s.complete or s.n_failed_samples:
        raise SystemExit(f"{backend} run incomplete or with failures: {s}")
    return total, spent["commit"]


def snapshot(run_dir: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    st = store_mod.RunStore.open_existing(run_dir)
    try:
        return st.contents()
    finally:
        st.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench/results/runs.md"))
    args = ap.parse_args()

    torch.set_num_threads(1)  # the job's threads=1, for the API loop too
    model = digits_cnn()
    x, y = load_digits("test")
    x, y = x[: args.n], y[: args.n]
    job = Job(methods=METHODS, metrics=METRICS, method_options=OPTIONS, shard_size=16)
    tmp = Path(tempfile.mkdtemp(prefix="whybox-bench-runs-"))
    api_s: list[float] = []
    store_s: list[float] = []
    commit_s: list[float] = []
    ray_s: list[float] = []
    ray = None
    if not args.no_ray:
        import ray as ray_mod

        ray = ray_mod
        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_start = time.perf_counter() - t0
    api_loop(job, model, x[:16])  # warm-up: imports, the CAM layer probe, allocator
    identical = None
    for rep in range(args.reps):
        order = ["api", "store", "ray"] if rep % 2 == 0 else ["ray", "store", "api"]
        for variant in order:
            if variant == "api":
                t0 = time.perf_counter()
                api_loop(job, model, x)
                api_s.append(time.perf_counter() - t0)
            elif variant == "store":
                total, commit = timed_store_run(job, model, x, y, tmp / "local", "local")
                store_s.append(total)
                commit_s.append(commit)
            elif ray is not None:
                total, _ = timed_store_run(job, model, x, y, tmp / "ray", "ray")
                ray_s.append(total)
                if identical is None:
                    identical = snapshot(tmp / "ray") == snapshot(tmp / "local")
        print(f"rep {rep}: api {api_s[-1]:.2f}s store {store_s[-1]:.2f}s (commit {commit_s[-1]:.2f}s)"
              + (f" ray {ray_s[-1]:.2f}s" if ray_s else ""), file=sys.stderr)  # fmt: skip
    if ray is not None:
        ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)

    med = statistics.median
    ratio = med([s / a for s, a in zip(store_s, api_s, strict=True)])
    lines = [
        f"# Run store and Ray: {args.n} digits test images x {len(METHODS)} methods x {len(METRICS)} metrics",
        "",
        f"`python bench/runs.py --reps {args.reps} --n {args.n}`; {os.cpu_count()} cores, torch "
        f"{torch.__version__}; methods {', '.join(METHODS)} (options {json.dumps(OPTIONS)}); metrics "
        f"{', '.join(METRICS)}; shards of 16 ({len(shards(args.n, 16)) * len(METHODS)} units); one intra-op "
        "thread. Median over the repetitions; variants alternate.",
        "",
        "| variant | seconds (median) | per repetition | ratio to the API loop |",
        "|---|---:|---|---:|",
        f"| API in a loop (nothing stored) | {med(api_s):.2f} | {', '.join(f'{v:.2f}' for v in api_s)} | 1 |",
        f"| run store, local backend | {med(store_s):.2f} | {', '.join(f'{v:.2f}' for v in store_s)} | {ratio:.3f} |",
        f"| of which RunStore.commit (arrays with fsync + transaction) | {med(commit_s):.2f} | "
        f"{', '.join(f'{v:.2f}' for v in commit_s)} | {med(c / a for c, a in zip(commit_s, api_s, strict=True)):.3f} |",
    ]
    if ray_s:
        rr = med([r / s for r, s in zip(ray_s, store_s, strict=True)])
        lines.append(
            f"| Ray local cluster ({os.cpu_count()} CPUs) | {med(ray_s):.2f} | {', '.join(f'{v:.2f}' for v in ray_s)} "
            f"| {med([r / a for r, a in zip(ray_s, api_s, strict=True)]):.3f} (vs local store: {rr:.3f}) |"
        )
        lines += ["", f"Ray cluster start (once): {ray_start:.1f} s, not counted. Ray rows and arrays identical to the "
                  f"local backend's: {identical}."]  # fmt: skip
    lines += ["", f"Run-store overhead: {100 * (ratio - 1):+.1f} % (target at most +5 %)."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
