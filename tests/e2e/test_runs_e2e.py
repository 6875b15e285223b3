"""``whybox compare`` as a user runs it: killed with SIGKILL in the middle and rerun, it ends identical to an
uninterrupted run (database rows and array bytes) without recomputing finished units; on a local Ray cluster it
gives the local backend's results, also when a worker dies."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from whybox.runs.store import RunStore

MODEL_PY = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4),
    ).eval()
"""


@pytest.fixture
def job_files(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "model.py").write_text(MODEL_PY)
    x = np.random.default_rng(0).random((48, 1, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return tmp_path / "model.py", tmp_path / "x.npy"


def compare_args(model: Path, x: Path, out: Path) -> list[str]:
    return [
        "compare", "--model", f"{model}:build", str(x), "--methods", "saliency,lime,occlusion",
        "--option", "lime.n_samples=2000", "--option", "occlusion.window=4", "--metrics", "deletion,insertion",
        "--shard-size", "4", "--out", str(out), "--no-report",
    ]  # fmt: skip


def run_cli(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "whybox.cli.main", *args], capture_output=True, text=True, env=env, timeout=300, **kwargs
    )


def snapshot(run_dir: Path) -> tuple[dict[str, list[tuple[object, ...]]], dict[str, bytes]]:
    store = RunStore.open_existing(run_dir)
    try:
        return store.contents()
    finally:
        store.close()


def units_done(run_dir: Path) -> int:
    db = run_dir / "run.sqlite"
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM units").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.OperationalError:  # created but no table yet
        return 0


def test_sigkill_then_rerun_equals_an_uninterrupted_run(job_files: tuple[Path, Path], tmp_path: Path) -> None:
    model, x = job_files
    full = run_cli(compare_args(model, x, tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    assert "36 units computed, 0 already done, 36 in all" in full.stdout

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "whybox.cli.main", *compare_args(model, x, tmp_path / "killed")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while units_done(tmp_path / "killed") < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = units_done(tmp_path / "killed")
    assert 4 <= done < 36, f"the kill should land mid-run; {done} units were done"
    store = RunStore.open_existing(tmp_path / "killed")
    try:
        costs_before = {r[:3]: r for r in store.rows("costs")}
    finally:
        store.close()

    rerun = run_cli(compare_args(model, x, tmp_path / "killed"))
    assert rerun.returncode == 0, rerun.stderr
    assert f"{36 - done} units computed, {done} already done, 36 in all" in rerun.stdout
    assert f"resuming {tmp_path / 'killed'}: {done} of 36 units already done" in rerun.stderr
    assert snapshot(tmp_path / "killed") == snapshot(tmp_path / "full")
    store = RunStore.open_existing(tmp_path / "killed")
    try:
        costs_after = {r[:3]: r for r in store.rows("costs")}
    finally:
        store.close()
    assert all(costs_after[k] == v for k, v in costs_before.items())  # finished units were not recomputed
    # the only possible leftover is the temporary file the killed process was writing; the rerun leaves none
    leftovers = [p.name for p in (tmp_path / "killed").rglob(".*.tmp")]
    assert all(name.endswith(f".{proc.pid}.tmp") for name in leftovers), leftovers
    assert len(leftovers) <= 1


def test_budget_stops_with_exit_code_3_and_resumes(job_files: tuple[Path, Path], tmp_path: Path) -> None:
    model, x = job_files
    stopped = run_cli([*compare_args(model, x, tmp_path / "r"), "--budget", "0.000001"])
    assert stopped.returncode == 3, stopped.stderr
    assert "stopped by --budget" in stopped.stderr and "rerun the same command to resume" in stopped.stderr
    done = run_cli(compare_args(model, x, tmp_path / "r"))
    assert done.returncode == 0 and "36 in all" in done.stdout


ray = (
    pytest.importorskip("ray", reason="the ray extra is not installed")
    if not os.environ.get("WHYBOX_REQUIRE_RAY")
    else __import__("ray")
)


@pytest.fixture(scope="module")
def ray_cluster() -> object:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _tiny_cnn() -> object:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(16, 3),
    ).eval()  # fmt: skip


def die_once(marker: str, unit: object) -> None:
    """Kill the worker process the first time it starts shard 1 of saliency (a lost worker)."""
    if getattr(unit, "shard", None) == 1 and getattr(unit, "method", None) == "saliency" and not os.path.exists(marker):
        Path(marker).write_text("killed once")
        os._exit(1)


def test_ray_local_cluster_equals_local_backend_even_when_a_worker_dies(tmp_path: Path, ray_cluster: object) -> None:
    import functools

    import torch

    from whybox.runs.job import Job, run_job

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 1, 8, 8, generator=g)
    model = _tiny_cnn()
    job = Job(
        methods=("saliency", "lime", "gradcam"),
        metrics=("deletion", "insertion"),
        method_options={"lime": {"n_samples": 64}},
        shard_size=4,
    )
    local = run_job(job, model, x, tmp_path / "local")
    marker = str(tmp_path / "killed-once")
    dist = run_job(job, model, x, tmp_path / "ray", backend="ray", before_unit=functools.partial(die_once, marker))
    assert local.complete and dist.complete and dist.n_computed == 15
    assert Path(marker).read_text() == "killed once"  # a worker really died, and its unit was redone
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "local")


def test_ray_refuses_what_no_worker_could_run_before_any_unit(tmp_path: Path, ray_cluster: object) -> None:
    """threads=4 on a cluster whose nodes have 2 CPUs waited forever without a word (no task could be scheduled);
    a model that cannot be pickled gave Ray's serialisation error. Both now name the fix, and nothing ran."""
    import threading

    import torch

    from whybox.errors import InvalidParameterError
    from whybox.runs.job import Job, run_job

    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    job = Job(methods=("saliency",), metrics=("deletion",), shard_size=2, threads=4)
    with pytest.raises(InvalidParameterError, match=r"threads=4 .* largest node has 2: no task could start"):
        run_job(job, _tiny_cnn(), x, tmp_path / "threads", backend="ray")

    class Locked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _tiny_cnn()
            self.lock = threading.Lock()

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            with self.lock:
                return self.net(z)

    job = Job(methods=("saliency",), metrics=("deletion",), shard_size=2)
    with pytest.raises(InvalidParameterError, match=r"cannot be shipped to Ray's workers .*pass model_factory="):
        run_job(job, Locked(), x, tmp_path / "locked", backend="ray")
    conn = sqlite3.connect(tmp_path / "locked" / "run.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM results").fetchone() == (0,)
    conn.close()


def test_ray_cuts_data_options_to_each_unit_as_the_local_backend_does(tmp_path: Path, ray_cluster: object) -> None:
    """Per-sample options from the data (a text dataset's fill and features) ship once and are cut to each unit's
    samples in the worker: the Ray run's rows and arrays equal the local run's."""
    import torch

    from whybox.runs.job import METRICS_KEY, Job, run_job

    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 8, 8, generator=g)
    fill = torch.rand(6, 1, 8, 8, generator=g)
    regions = torch.randint(0, 5, (6, 8, 8), generator=g)  # the metrics' share: a region map per sample
    model = _tiny_cnn()
    job = Job(methods=("occlusion", "kernel_shap"), metrics=("deletion",), shard_size=4,
              method_options={"kernel_shap": {"n_samples": 32}})  # fmt: skip
    given = {"occlusion": {"fill": fill, "window": 4}, "kernel_shap": {"fill": fill}, METRICS_KEY: {"regions": regions}}
    local = run_job(job, model, x, tmp_path / "local", data_options=given)
    dist = run_job(job, model, x, tmp_path / "ray", backend="ray", data_options=given)
    assert local.complete and dist.complete
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "local")
    plain = run_job(job, model, x, tmp_path / "plain")  # (the options matter: without them other arrays)
    assert plain.complete and snapshot(tmp_path / "plain")[1] != snapshot(tmp_path / "local")[1]
    no_regions = {k: v for k, v in given.items() if k != METRICS_KEY}  # and the regions other deletion values
    run_job(job, model, x, tmp_path / "words", data_options=no_regions)
    assert snapshot(tmp_path / "words")[0]["metric_values"] != snapshot(tmp_path / "local")[0]["metric_values"]


def test_a_sample_s_results_do_not_depend_on_the_shard_size(tmp_path: Path) -> None:
    """Each shard ran with seed + shard, so a sample's LIME draws and every metric's tie-breaking changed with
    --shard-size (occlusion insertion 0.8059 vs 0.7963 on 16 digits): the job's seed serves every shard, and the
    values per sample, maps and metrics alike, are those of whybox.explain / evaluate on all the samples at once."""
    import torch

    import whybox
    from whybox.runs.job import Job, run_job

    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = _tiny_cnn()
    values = {}
    for size in (12, 5):
        job = Job(methods=("lime", "occlusion"), metrics=("deletion", "insertion"),
                  method_options={"lime": {"n_samples": 48}}, shard_size=size)  # fmt: skip
        assert run_job(job, model, x, tmp_path / str(size)).complete
        conn = sqlite3.connect(tmp_path / str(size) / "run.sqlite")
        values[size] = sorted(conn.execute("SELECT idx, method, metric, value FROM metric_values").fetchall())
        conn.close()
    # the same draws and tie-breaking: equal up to the last bits a convolution's sum may change with the batch's size
    assert [v[:3] for v in values[5]] == [v[:3] for v in values[12]]
    assert [v[3] for v in values[5]] == pytest.approx([v[3] for v in values[12]], rel=1e-7, abs=1e-12)
    e = whybox.explain(model, x, "lime", n_samples=48, seed=0)
    want = whybox.evaluate(model, x, e, "insertion", seed=0).scores.tolist()
    got = [v for _, m, k, v in values[5] if m == "lime" and k == "insertion"]
    assert got == pytest.approx(want, rel=1e-7, abs=1e-12)
