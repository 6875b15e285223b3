"""The run store and dataset jobs: units are atomic, a stopped run resumes to the same bytes as an uninterrupted
one, a changed job refuses to resume, a failing sample is recorded and the run goes on."""

from __future__ import annotations

import os
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from torch import nn

from whybox.errors import InvalidParameterError, UnknownNameError
from whybox.runs.job import METRICS_KEY, Job, plan_units, run_job, shards
from whybox.runs.store import FingerprintMismatchError, RunStore, write_array_atomic


def tiny_cnn(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)
        )
    return m.eval()


class Picky(nn.Module):
    """A tiny CNN that raises ``error`` on any batch holding a row whose first pixel is exactly 0.5 (a "corrupt"
    sample)."""

    def __init__(self, error: type[Exception] = RuntimeError) -> None:
        super().__init__()
        self.net = tiny_cnn()
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0, 0, 0] == 0.5).any()):
            raise self.error("corrupt sample: first pixel 0.5")
        return self.net(x)


def data(n: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


JOB = Job(
    methods=("saliency", "lime", "gradcam"),
    metrics=("deletion", "insertion"),
    method_options={"lime": {"n_samples": 64}},
    metric_options={"deletion": {"steps": 8}},
    shard_size=4,
)


def snapshot(run_dir: Path) -> tuple[dict[str, list[tuple[object, ...]]], dict[str, bytes]]:
    store = RunStore.open_existing(run_dir)
    try:
        return store.contents()
    finally:
        store.close()


@given(n=st.integers(1, 200), size=st.integers(1, 50))
@settings(max_examples=60, deadline=None)
def test_shards_are_disjoint_and_cover(n: int, size: int) -> None:
    parts = shards(n, size)
    flat = [i for p in parts for i in p]
    assert flat == list(range(n))  # disjoint, covering, in order
    assert all(len(p) == size for p in parts[:-1]) and 1 <= len(parts[-1]) <= size


def test_plan_skips_done_units_only() -> None:
    job = Job(methods=("saliency", "gradcam"), metrics=(), shard_size=3)
    every = plan_units(7, job)
    assert [(u.shard, u.method) for u in every] == [(s, m) for s in range(3) for m in ("saliency", "gradcam")]
    rest = plan_units(7, job, {(0, "saliency"), (2, "gradcam")})
    assert {(u.shard, u.method) for u in rest} == {(u.shard, u.method) for u in every} - {
        (0, "saliency"),
        (2, "gradcam"),
    }


def test_stopped_run_resumes_to_the_same_rows_and_bytes(tmp_path: Path) -> None:
    """A run stopped after its first unit (the budget), then resumed, equals an uninterrupted run: every row of
    the deterministic tables and every array byte; the units done before the stop are not recomputed."""
    x, y = data()
    full = run_job(JOB, tiny_cnn(), x, tmp_path / "full", labels=y)
    assert full.complete and full.n_computed == 9 and full.n_failed_samples == 0

    stopped = run_job(JOB, tiny_cnn(), x, tmp_path / "resumed", labels=y, budget=1e-9)
    assert stopped.stopped_by_budget and not stopped.complete and stopped.n_computed == 0
    # "killed" while the third unit runs: the first two are committed, the third is lost
    from whybox.runs import job as job_mod

    original = job_mod.execute_unit
    seen: list[tuple[int, str]] = []

    def counting(*args: object, **kwargs: object) -> object:
        res = original(*args, **kwargs)  # type: ignore[arg-type]
        seen.append((res.shard, res.method))
        if len(seen) == 3:
            raise KeyboardInterrupt
        return res

    job_mod.execute_unit = counting  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            run_job(JOB, tiny_cnn(), x, tmp_path / "resumed", labels=y)
    finally:
        job_mod.execute_unit = original  # type: ignore[assignment]
    store = RunStore.open_existing(tmp_path / "resumed")
    try:
        done_before = store.done_units()
        costs_before = {r[:3]: r for r in store.rows("costs")}
    finally:
        store.close()
    assert done_before == {(0, "saliency"), (0, "lime")}

    lines: list[str] = []
    rest = run_job(JOB, tiny_cnn(), x, tmp_path / "resumed", labels=y, progress=lines.append)
    assert rest.complete and rest.n_skipped == 2 and rest.n_computed == 7
    assert lines[0] == f"resuming {tmp_path / 'resumed'}: 2 of 9 units already done, 7 to go"
    # gradcam has no finished unit yet: no estimate before starting, one as soon as every method has finished one
    # (gradcam's shard 0 is the first unit to go)
    assert lines[1].startswith("estimate: ") and lines[1].endswith("(from the first unit of each method)")
    assert sum(line.startswith("estimate:") for line in lines) == 1
    # with one shard the last method's first unit is the last unit: no estimate after the work is done
    one: list[str] = []
    run_job(JOB, tiny_cnn(), x[:2], tmp_path / "one", labels=y[:2], progress=one.append)
    assert len(one) == 3 and not any(line.startswith("estimate:") for line in one), one
    # a further resume with every method seen gives its estimate before starting (shard 2's units forgotten)
    store = RunStore.open_existing(tmp_path / "resumed")
    try:
        store._conn.execute("DELETE FROM units WHERE shard = 2")
    finally:
        store.close()
    lines.clear()
    again = run_job(JOB, tiny_cnn(), x, tmp_path / "resumed", labels=y, progress=lines.append)
    assert again.n_computed == 3 and lines[1].startswith("estimate: ") and "for the 3 units to go" in lines[1]
    assert snapshot(tmp_path / "resumed") == snapshot(tmp_path / "full")
    store = RunStore.open_existing(tmp_path / "resumed")
    try:
        costs_after = {r[:3]: r for r in store.rows("costs")}
    finally:
        store.close()
    for key, row in costs_before.items():  # finished units were not recomputed: their cost rows are untouched
        assert costs_after[key] == row


def test_changed_job_or_model_refuses_to_resume(tmp_path: Path) -> None:
    x, y = data(4)
    job = Job(methods=("saliency",), metrics=("deletion",), shard_size=2)
    run_job(job, tiny_cnn(), x, tmp_path / "r", labels=y)
    # the changed settings are named with both values, not as digests
    with pytest.raises(
        FingerprintMismatchError,
        match=r'changed: config; config: metrics stored \["deletion"\], now \["insertion"\]\)\. .*overwrite',
    ):
        run_job(
            Job(methods=("saliency",), metrics=("insertion",), shard_size=2), tiny_cnn(), x, tmp_path / "r", labels=y
        )
    with pytest.raises(
        FingerprintMismatchError,
        match=r"changed: config; config: method_options\.saliency\.abs stored \(unset\), now true, methods stored "
        r'\["saliency"\], now \["saliency", "gradcam"\]\)',
    ):
        run_job(
            Job(
                methods=("saliency", "gradcam"),
                metrics=("deletion",),
                shard_size=2,
                method_options={"saliency": {"abs": True}},
            ),
            tiny_cnn(),
            x,
            tmp_path / "r",
            labels=y,
        )
    with pytest.raises(
        FingerprintMismatchError, match=r"changed: weights; weights: the model or its weights differ \(digest stored '"
    ):
        run_job(job, tiny_cnn(seed=1), x, tmp_path / "r", labels=y)
    with pytest.raises(FingerprintMismatchError, match=r"changed: data; data: the inputs, their names or their labels"):
        run_job(job, tiny_cnn(), x + 1e-3, tmp_path / "r", labels=y)
    again = run_job(job, tiny_cnn(seed=1), x, tmp_path / "r", labels=y, overwrite=True)
    assert again.complete and again.n_computed == 2 and again.n_skipped == 0


@pytest.mark.parametrize("error", [RuntimeError, AssertionError, KeyError, AttributeError])
def test_failing_sample_is_recorded_and_the_run_goes_on(tmp_path: Path, error: type[Exception]) -> None:
    """Sample 4 makes the model raise: its prediction and every method fail with the reason recorded; sample 5,
    in the same shard, and every other sample get their attributions and metric values. A model's assert or key
    lookup fails a sample as a RuntimeError does (they stopped the whole run)."""
    x, y = data(6)
    x[4, 0, 0, 0] = 0.5
    job = Job(
        methods=("saliency", "occlusion"),
        metrics=("deletion",),
        shard_size=2,
        method_options={"occlusion": {"window": 4, "stride": 4}},
    )
    summary = run_job(job, Picky(error), x, tmp_path / "r", labels=y)
    assert summary.complete and summary.n_failed_samples == 2
    store = RunStore.open_existing(tmp_path / "r")
    try:
        samples = {r[0]: r for r in store.rows("samples")}
        results = {(r[0], r[1]): r for r in store.rows("results")}
        values = {(r[0], r[1], r[2]): r for r in store.rows("metric_values")}
    finally:
        store.close()
    assert samples[4][3] == -1 and samples[4][4] is None and "corrupt sample" in samples[4][6]
    for method in job.methods:
        assert results[(4, method)][2] == "failed" and "no prediction" in results[(4, method)][3]
        for i in (0, 1, 2, 3, 5):
            assert results[(i, method)][2] == "ok" and samples[i][6] is None
            assert values[(i, method, "deletion")][3] is not None
    # sample 5 shared the failing shard; its map equals the one a clean model gives it
    import whybox

    e = whybox.explain(tiny_cnn(), x[5:6], "saliency", target=int(samples[5][3]), batch_size=64, seed=2)
    store = RunStore.open_existing(tmp_path / "r")
    try:
        np.testing.assert_array_equal(store.load_array("saliency", 5), e.attributions[0].numpy())
        assert store.load_array("saliency", 4) is None
    finally:
        store.close()


def test_failing_sample_in_a_shard_costs_only_itself(tmp_path: Path) -> None:
    from whybox.runs.job import Unit, execute_unit

    x, _ = data(4)
    x[1, 0, 0, 0] = 0.5
    job = Job(methods=("saliency",), metrics=("deletion",), shard_size=4)
    res = execute_unit(Picky(), x, Unit(0, "saliency", (0, 1, 2, 3)), job, torch.zeros(4, dtype=torch.int64))
    reasons = [s.reason for s in res.samples]
    assert reasons[1] is not None and "corrupt sample" in reasons[1] and reasons[1].startswith("RuntimeError")
    assert [r is None for r in reasons] == [True, False, True, True]
    ok = execute_unit(tiny_cnn(), x[[0]], Unit(0, "saliency", (0,)), job, torch.zeros(1, dtype=torch.int64))
    # the good rows, explained one by one after the shard failed, equal a clean one-row run
    assert ok.samples[0].attributions is not None and res.samples[0].attributions is not None
    np.testing.assert_array_equal(res.samples[0].attributions, ok.samples[0].attributions)
    # deletion scored the three good rows; the failed one has no metric values
    assert set(res.samples[0].metrics) == {"deletion"} and res.samples[1].metrics == {}


def test_job_validates_before_any_work() -> None:
    with pytest.raises(UnknownNameError, match=r"Did you mean .saliency."):
        Job(methods=("salincy",))
    with pytest.raises(
        InvalidParameterError, match=r"unknown option\(s\) 'n_sample'\. Did you mean 'n_samples'\? 'lime' takes: "
    ):
        Job(methods=("lime",), method_options={"lime": {"n_sample": 3}})
    with pytest.raises(InvalidParameterError, match="not in this job"):
        Job(methods=("lime",), method_options={"rise": {"n_masks": 3}})
    with pytest.raises(InvalidParameterError, match="ground-truth masks"):
        Job(methods=("lime",), metrics=("pointing_game",))
    with pytest.raises(InvalidParameterError, match="seed"):
        Job(methods=("lime",), method_options={"lime": {"seed": 3}})
    with pytest.raises(InvalidParameterError, match="shard_size must be a positive integer"):
        Job(methods=("lime",), shard_size=0)
    with pytest.raises(InvalidParameterError, match="target must be one of"):
        Job(methods=("lime",), target="truth")


def test_target_label_explains_the_true_class(tmp_path: Path) -> None:
    x, y = data(4)
    job = Job(methods=("saliency",), metrics=(), shard_size=4, target="label")
    with pytest.raises(InvalidParameterError, match="no labels"):
        run_job(job, tiny_cnn(), x, tmp_path / "nolabels")
    run_job(job, tiny_cnn(), x, tmp_path / "r", labels=y)
    import whybox

    e = whybox.explain(tiny_cnn(), x, "saliency", target=y, batch_size=64, seed=0)
    got = np.load(tmp_path / "r" / "arrays" / "saliency" / "000000.npy")  # the one unit's file: 4 rows
    np.testing.assert_array_equal(got, e.attributions.numpy())


def test_atomic_array_write_keeps_the_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "a.npy"
    write_array_atomic(p, np.arange(4.0))
    import whybox.runs.store as store_mod

    def broken(f: object, arr: np.ndarray, allow_pickle: bool = False) -> None:
        f.write(b"\x93NUMPY partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(store_mod.np, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        write_array_atomic(p, np.zeros(4))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(p), np.arange(4.0))
    assert sorted(os.listdir(tmp_path)) == ["a.npy"]  # no temporary file left behind


def test_run_dir_that_is_a_file_or_not_a_database(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    x, _ = data(2)
    with pytest.raises(InvalidParameterError, match="is a file"):
        run_job(Job(methods=("saliency",)), tiny_cnn(), x, f)
    d = tmp_path / "d"
    d.mkdir()
    (d / "run.sqlite").write_text("not sqlite at all, just text" * 100)
    with pytest.raises(InvalidParameterError, match="not a whybox run database"):
        run_job(Job(methods=("saliency",)), tiny_cnn(), x, d)


def test_fingerprint_covers_every_buffer_including_0d_ones(tmp_path: Path) -> None:
    """BatchNorm's num_batches_tracked is a 0-d buffer: it is hashed too, so changing it changes the weights
    fingerprint (a model with other running statistics never resumes into the old run)."""
    from whybox.runs.job import fingerprints

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 3)).eval()
    x, _ = data(2)
    job = Job(methods=("saliency",), metrics=())
    before = fingerprints(job, m, x, ["a", "b"], None)
    m[1].num_batches_tracked += 1
    after = fingerprints(job, m, x, ["a", "b"], None)
    assert before["weights"] != after["weights"] and before["config"] == after["config"]
    assert fingerprints(job, m, x, ["a", "c"], None)["data"] != after["data"]  # names are part of the data
    assert run_job(job, m, x, tmp_path / "r").complete


def test_data_options_reach_each_unit_cut_to_its_samples(tmp_path: Path) -> None:
    """Per-sample explainer options from the data (a text dataset's fill and features) are cut to each shard's
    samples: the run's arrays equal whybox.explain of the whole set with those options; a sample that fails
    alone gets its own row; the job's options win; changed data options do not resume the old run."""
    import whybox

    x, y = data(5)
    fill = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))  # one fill image per sample
    job = Job(methods=("occlusion",), metrics=("deletion",), shard_size=2, method_options={"occlusion": {"window": 4}})
    # the metrics' share (a text dataset's word regions): a region map per sample, cut to each shard alike
    cells = torch.arange(16).view(4, 4).repeat_interleave(2, 0).repeat_interleave(2, 1)
    regions = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(i))[cells] for i in range(5)])
    given = {"occlusion": {"fill": fill, "window": 2, "stride": 4}, METRICS_KEY: {"regions": regions}}
    run_job(job, tiny_cnn(), x, tmp_path / "r", labels=y, data_options=given)
    e = whybox.explain(tiny_cnn(), x, "occlusion", fill=fill, window=4, stride=4)
    want = e.attributions
    # every sample scores as in one evaluate call over all of them: the shards do not change the numbers
    opts = job.metric_options_for("deletion")
    scores = whybox.evaluate(tiny_cnn(), x, e, "deletion", regions=regions, **opts).scores.tolist()
    store = RunStore.open_existing(tmp_path / "r")
    try:
        for i in range(5):
            got = store.load_array("occlusion", i)
            assert got is not None
            torch.testing.assert_close(torch.from_numpy(got), want[i].float())
        stored = {i: v for i, _, metric, v, *_ in store.rows("metric_values") if metric == "deletion"}
        assert [stored[i] for i in range(5)] == pytest.approx(scores, rel=1e-6)
    finally:
        store.close()
    with pytest.raises(FingerprintMismatchError, match=r"changed: data; data: the inputs, their names or"):
        run_job(job, tiny_cnn(), x, tmp_path / "r", labels=y, data_options={"occlusion": {"fill": fill + 1}})
    # shard 0 fails as a whole (sample 1 is "corrupt"), so sample 0 is explained alone, with its own fill
    bad = x.clone()
    bad[1, 0, 0, 0] = 0.5
    run_job(job, Picky(), bad, tmp_path / "p", labels=y, data_options=given)
    alone = whybox.explain(Picky(), bad[:1], "occlusion", fill=fill[:1], window=4, stride=4).attributions
    store = RunStore.open_existing(tmp_path / "p")
    try:
        got0 = store.load_array("occlusion", 0)
        assert got0 is not None and store.load_array("occlusion", 1) is None
        torch.testing.assert_close(torch.from_numpy(got0), alone[0].float())
    finally:
        store.close()


def test_bad_option_values_are_refused_before_any_work(tmp_path: Path) -> None:
    """An option value a method or metric refuses (n_samples='abc', steps=0) made every sample fail (or, for a
    metric, a run that said nothing failed) and left a run that refused the corrected command as 'a different job';
    it is refused before anything is written. Fractional labels were truncated to classes."""
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cases = [
        (Job(methods=("lime",), metrics=(), method_options={"lime": {"n_samples": "abc"}}),
         "method_options['lime']: n_samples must be an int >= 2; got 'abc'."),
        (Job(methods=("saliency",), metrics=("deletion",), metric_options={"deletion": {"steps": 0}}),
         "metric_options['deletion']: steps must be an int >= 1; got 0."),
    ]  # fmt: skip
    for job, message in cases:
        with pytest.raises(InvalidParameterError) as err:
            run_job(job, tiny_cnn(), x, tmp_path / "run")
        assert str(err.value) == message
        assert not (tmp_path / "run" / "run.sqlite").exists()
    with pytest.raises(InvalidParameterError, match=r"^labels must be integer class indices; got fractional values"):
        run_job(Job(methods=("saliency",), metrics=()), tiny_cnn(), x, tmp_path / "run", labels=[1.7, 0.0, 2.0])
    fixed = Job(methods=("lime",), metrics=("deletion",), method_options={"lime": {"n_samples": 20}})
    assert run_job(fixed, tiny_cnn(), x, tmp_path / "run").complete


def test_overwriting_a_run_removes_its_old_report(tmp_path: Path) -> None:
    """--overwrite --no-report left the old run's report.html beside the new run, describing what was deleted."""
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    run_job(Job(methods=("saliency",), metrics=()), tiny_cnn(), x, tmp_path)
    (tmp_path / "report.html").write_text("the old run")
    (tmp_path / "notes.txt").write_text("the user's")
    run_job(Job(methods=("gradcam",), metrics=()), tiny_cnn(), x, tmp_path, overwrite=True)
    assert not (tmp_path / "report.html").exists() and (tmp_path / "notes.txt").read_text() == "the user's"


class _Tempered(nn.Module):
    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.net = tiny_cnn()
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) / self.temperature


def test_a_model_whose_settings_changed_is_not_resumed(tmp_path: Path) -> None:
    """The same weights with another temperature (a factory edited between two runs) resumed as the same model,
    mixing results of both; a user module's plain settings and class source are part of the model's digest."""
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    job = Job(methods=("saliency",), metrics=())
    run_job(job, _Tempered(1.0), x, tmp_path)
    assert run_job(job, _Tempered(1.0), x, tmp_path).n_computed == 0  # the same model resumes
    assert run_job(job, _Tempered(1.0).train(), x, tmp_path).n_computed == 0  # (read in eval mode either way)
    with pytest.raises(FingerprintMismatchError, match=r"changed: weights"):
        run_job(job, _Tempered(0.05), x, tmp_path)


def test_one_method_or_metric_may_be_given_as_a_name() -> None:
    """Job(methods="saliency") was read letter by letter ('s' is not a method)."""
    job = Job(methods="saliency", metrics="deletion")
    assert job.methods == ("saliency",) and job.metrics == ("deletion",)


class _WithBuffer(nn.Module):
    def __init__(self, offset: float) -> None:
        super().__init__()
        self.net = tiny_cnn()
        self.register_buffer("offset", torch.tensor(offset), persistent=False)  # not in the state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x - self.offset)


def test_a_changed_adapter_or_unsaved_buffer_is_not_resumed(tmp_path: Path) -> None:
    """What the adapter does to the model (preprocess=, output=, kind=) and buffers outside the state dict are part
    of the model: a run made with other ones refuses to resume instead of keeping the old numbers."""
    import whybox

    x, _ = data(4)
    job = Job(methods=("saliency",), metrics=("deletion",), metric_options={"deletion": {"steps": 4}}, shard_size=4)
    net = tiny_cnn()
    cases = [
        (whybox.adapt(net, preprocess=lambda t: t * 2), whybox.adapt(net, preprocess=lambda t: t * 3)),
        (whybox.adapt(net), whybox.adapt(net, kind="multilabel")),
        (whybox.adapt(net), whybox.adapt(net, output=lambda o: -o)),
        (_WithBuffer(0.0), _WithBuffer(0.5)),
    ]
    for i, (first, changed) in enumerate(cases):
        run_job(job, first, x, tmp_path / str(i))
        again = run_job(job, first, x, tmp_path / str(i))  # the same model resumes (nothing to do)
        assert again.n_computed == 0
        with pytest.raises(FingerprintMismatchError, match="weights"):
            run_job(job, changed, x, tmp_path / str(i))


class _Scaled(nn.Module):
    """A tiny CNN reading ``x * scale``, its scale held as any Python value (a tuple of normalisation constants, a
    tensor kept outside the buffers)."""

    def __init__(self, scale: object) -> None:
        super().__init__()
        self.net = tiny_cnn()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * torch.as_tensor(self.scale).reshape(-1)[0])


class _Mul:
    def __init__(self, s: float) -> None:
        self.s = s

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.s


def _times(t: torch.Tensor, s: float) -> torch.Tensor:
    return t * s


def _closure(v: list[float]):
    return lambda t: t * v[0]


def test_settings_beyond_plain_numbers_are_part_of_the_model(tmp_path: Path) -> None:
    """A model's list/tuple/tensor settings and a preprocess function's defaults, partial arguments, closed-over
    lists and callable objects' attributes change the numbers: a run made with other ones refuses to resume."""
    import functools

    import whybox

    x, _ = data(4)
    job = Job(methods=("saliency",), metrics=("deletion",), metric_options={"deletion": {"steps": 4}}, shard_size=4)
    net = tiny_cnn()
    cases = [
        (_Scaled([1.0]), _Scaled([2.0])),
        (_Scaled((1.0,)), _Scaled((2.0,))),
        (_Scaled(torch.tensor(1.0)), _Scaled(torch.tensor(2.0))),
        (whybox.adapt(net, preprocess=functools.partial(_times, s=1.0)), whybox.adapt(net, preprocess=functools.partial(_times, s=2.0))),
        (whybox.adapt(net, preprocess=lambda t, s=1.0: t * s), whybox.adapt(net, preprocess=lambda t, s=2.0: t * s)),
        (whybox.adapt(net, preprocess=_closure([1.0])), whybox.adapt(net, preprocess=_closure([2.0]))),
        (whybox.adapt(net, preprocess=_Mul(1.0)), whybox.adapt(net, preprocess=_Mul(2.0))),
    ]  # fmt: skip
    for i, (first, changed) in enumerate(cases):
        run_job(job, first, x, tmp_path / str(i))
        same = type(first)(first.scale) if isinstance(first, _Scaled) else first  # an equal model resumes
        assert run_job(job, same, x, tmp_path / str(i)).n_computed == 0
        with pytest.raises(FingerprintMismatchError, match="weights"):
            run_job(job, changed, x, tmp_path / str(i))


def test_a_black_box_text_run_sees_its_texts_and_its_function(tmp_path: Path) -> None:
    """Presence rows of other texts with the same word counts are equal: the data fingerprint reads the words they
    stand for, and the weights fingerprint the scoring function."""
    from whybox.models.blackbox_text import BlackBoxTextAdapter
    from whybox.models.text import text_defaults

    def count(word: str):
        def score(texts: list[str]) -> torch.Tensor:
            s = torch.tensor([t.split().count(word) - 0.5 for t in texts], dtype=torch.float64)
            return torch.stack([-s, s], 1)

        return score

    job = Job(methods=("occlusion",), metrics=("deletion",), shard_size=2)

    def run(word: str, texts: list[str]) -> object:
        ad = BlackBoxTextAdapter(count(word), labels=["neg", "pos"])
        b = ad.encode(texts)
        options = {"occlusion": text_defaults("occlusion", b), METRICS_KEY: {"regions": b.features}}
        return run_job(job, ad, b.inputs, tmp_path / "run", data_options=options)

    run("good", ["a good film", "bad plot here"])
    assert run("good", ["a good film", "bad plot here"]).n_computed == 0  # type: ignore[attr-defined]
    with pytest.raises(FingerprintMismatchError, match="data"):
        run("good", ["a bad film", "good plot here"])
    with pytest.raises(FingerprintMismatchError, match="weights"):
        run("bad", ["a good film", "bad plot here"])


def test_a_unit_whose_array_was_deleted_is_computed_again(tmp_path: Path) -> None:
    x, _ = data(8)
    job = Job(methods=("saliency",), metrics=("deletion",), metric_options={"deletion": {"steps": 4}}, shard_size=4)
    run_job(job, tiny_cnn(), x, tmp_path / "a")
    before = snapshot(tmp_path / "a")
    (tmp_path / "a" / "arrays" / "saliency" / "000001.npy").unlink()
    again = run_job(job, tiny_cnn(), x, tmp_path / "a")
    assert again.n_computed == 1
    after = snapshot(tmp_path / "a")
    assert after[1] == before[1]  # the same array bytes back
    assert {k: v for k, v in after[0].items() if k != "costs"} == {k: v for k, v in before[0].items() if k != "costs"}


def test_damaged_run_files_are_named(tmp_path: Path) -> None:
    import sqlite3

    from whybox.errors import DataFormatError
    from whybox.runs.report_data import load_run_report
    from whybox.runs.store import read_row

    x, _ = data(4)
    job = Job(methods=("saliency",), metrics=("deletion",), metric_options={"deletion": {"steps": 4}}, shard_size=4)
    run_job(job, tiny_cnn(), x, tmp_path / "a")
    path = tmp_path / "a" / "arrays" / "saliency" / "000000.npy"
    path.write_bytes(b"not an array")
    with pytest.raises(DataFormatError, match=r"000000\.npy' is missing or damaged"):
        read_row(tmp_path / "a", "arrays/saliency/000000.npy", 0)
    (tmp_path / "b").mkdir()
    sqlite3.connect(tmp_path / "b" / "run.sqlite").execute("CREATE TABLE other (a)").connection.commit()
    with pytest.raises(DataFormatError, match="is not a whybox run database"):
        load_run_report(tmp_path / "b")


def test_a_killed_write_leaves_no_file_behind_after_the_rerun(tmp_path: Path) -> None:
    x, _ = data(4)
    job = Job(methods=("saliency",), metrics=("deletion",), metric_options={"deletion": {"steps": 4}}, shard_size=4)
    run_job(job, tiny_cnn(), x, tmp_path / "a")
    dead = 2**22 + 12345  # a process id no live process has here (above Linux's default pid_max)
    orphan = tmp_path / "a" / "arrays" / "saliency" / f".000000.npy.{dead}.tmp"
    orphan.write_bytes(b"partial")
    live = tmp_path / "a" / "arrays" / "saliency" / f".000000.npy.{os.getppid()}.tmp"  # a live process's write
    live.write_bytes(b"under way")
    run_job(job, tiny_cnn(), x, tmp_path / "a")
    assert not orphan.exists()
    assert live.exists()


def test_a_job_names_each_method_and_metric_once_and_labels_are_classes() -> None:
    with pytest.raises(InvalidParameterError, match="methods names 'saliency' more than once"):
        Job(methods=("saliency", "gradcam", "saliency"))
    with pytest.raises(InvalidParameterError, match="metrics names 'deletion' more than once"):
        Job(methods=("saliency",), metrics=("deletion", "deletion"))
    x, _ = data(3)
    with pytest.raises(InvalidParameterError, match=r"labels must be class indices >= 0; samples \[1\] have -1"):
        run_job(Job(methods=("saliency",), target="label"), tiny_cnn(), x, "unused", labels=torch.tensor([0, -1, 2]))


def test_a_regressor_s_report_names_no_predicted_class(tmp_path: Path) -> None:
    """A regressor has no classes: its samples showed class "0" as the prediction beside the output; and a table run
    started from Python (no input kind stored) was drawn as images and crashed the report."""
    from sklearn.linear_model import Ridge

    from whybox.runs.report_data import load_run_report

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3))
    model = Ridge().fit(x, x @ np.array([1.0, -2.0, 0.5]))
    run_job(Job(methods=("occlusion",), metrics=(), shard_size=4), model, torch.from_numpy(x[:4]), tmp_path / "r")
    rep = load_run_report(tmp_path / "r")
    assert [s.prediction for s in rep.samples] == ["", "", "", ""]
    assert all(s.probability_is_output for s in rep.samples)
    assert rep.samples[0].words is not None and rep.samples[0].words[0].startswith("x0=")  # drawn as a table row
    from whybox.report.run_report import write_run_report

    assert write_run_report(rep, tmp_path / "r.html").stat().st_size > 0


def test_labels_by_class_name_are_read_as_the_model_names_them() -> None:
    """labels= of a classifier with string classes_ (y as it came): its class names map to output indices, as
    evaluate(labels=) and target= read them; a name the model lacks is a named error, not a raw TypeError."""
    from sklearn.linear_model import LogisticRegression

    from whybox.errors import InvalidTargetError

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 3))
    y = np.array(["cat", "dog", "emu"])[(x[:, 0] > 0).astype(int) + (x[:, 1] > 1).astype(int)]
    clf = LogisticRegression().fit(x, y)
    job = Job(methods=("feature_ablation",), metrics=("deletion",), target="label", shard_size=5)
    xt = torch.tensor(x[:5], dtype=torch.float32)
    index = torch.tensor([list(clf.classes_).index(c) for c in y[:5]])
    import tempfile

    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        by_name = run_job(job, clf, xt, Path(a), labels=list(y[:5]))
        run_job(job, clf, xt, Path(b), labels=index)
        assert by_name.n_failed_samples == 0
        assert snapshot(Path(a))[0]["metric_values"] == snapshot(Path(b))[0]["metric_values"]
        with pytest.raises(InvalidTargetError, match="owl"):
            run_job(job, clf, xt, Path(a) / "c", labels=["owl"] * 5)
