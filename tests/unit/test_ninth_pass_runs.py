"""Ninth-pass findings on runs, each a property the earlier code broke: a run replaced by another process
(``overwrite=True``, a different job) while it still ran kept committing its results, rows and array files, into the
new run, which then counted them as its own; and a ``.txt`` input was split at Unicode line breaks (U+2028, U+0085,
form feeds, ...), not only at newlines, so one line became several texts with wrong ``<file>:<line>`` names."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from whybox.errors import WhyboxError
from whybox.runs.job import Job, run_job
from whybox.runs.store import MetricValue, RunReplacedError, RunStore, SampleResult, UnitResult

FPS = {"config": "a", "data": "d", "weights": "w", "versions": "v"}
OTHER = {**FPS, "config": "b"}


def _unit(shard: int, value: float, method: str = "saliency") -> UnitResult:
    samples = [
        SampleResult(index=shard * 2 + k, attributions=np.full((1, 2, 2), value + k), metrics={"m": MetricValue(value)})
        for k in range(2)
    ]
    return UnitResult(shard=shard, method=method, samples=samples, costs={"explain": (0.1, 1, 1)})


def _contents(path: Path) -> tuple[dict[str, list[tuple[Any, ...]]], dict[str, bytes]]:
    s = RunStore.open_existing(path)
    try:
        return s.contents()
    finally:
        s.close()


def _temp_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.rglob(".*.tmp"))


# ------------------------------------------------------------------------ a run replaced while it runs
def test_a_commit_into_a_run_another_process_replaced_is_refused_and_leaves_the_new_run_as_it_is(
    tmp_path: Path,
) -> None:
    old = RunStore(tmp_path, fingerprints=FPS, config={"a": 1})
    old.commit(_unit(0, 1.0))
    new = RunStore(tmp_path, fingerprints=OTHER, config={"a": 2}, overwrite=True)  # another process: --overwrite
    new.commit(_unit(0, 5.0))
    new.commit(_unit(1, 6.0))
    before = _contents(tmp_path)
    for shard in (0, 1, 2):  # a unit the new run has (its file must keep its bytes) and one it has not
        with pytest.raises(
            RunReplacedError,
            match=rf"^'{re.escape(str(tmp_path))}' was replaced by another process with a run of a different job \(overwrite=True or "
            rf"--overwrite; changed: config\) while this run was writing to it; nothing of the unit \(shard {shard}, "
            r"method 'saliency'\) was recorded or written there\. .* rerun it into another directory",
        ):
            old.commit(_unit(shard, 9.0))
    assert _contents(tmp_path) == before  # neither rows nor array files of the old job
    assert _temp_files(tmp_path) == []
    assert new.done_units() == {(0, "saliency"), (1, "saliency")}
    np.testing.assert_array_equal(new.load_array("saliency", 2), np.full((1, 2, 2), 6.0))
    assert isinstance(RunReplacedError("x"), WhyboxError) and isinstance(RunReplacedError("x"), RuntimeError)
    old.close()
    new.close()


def test_samples_and_inputs_of_a_replaced_run_are_refused_too(tmp_path: Path) -> None:
    old = RunStore(tmp_path, fingerprints=FPS, config={})
    new = RunStore(tmp_path, fingerprints=OTHER, config={}, overwrite=True)
    new.save_inputs(np.zeros((2, 3), np.float32))
    new.record_samples([(0, "a", None, 1, 0.5, 0, None), (1, "b", None, 2, 0.5, 0, None)])
    before = _contents(tmp_path), (tmp_path / "inputs.npy").read_bytes()
    with pytest.raises(RunReplacedError, match=r"nothing of the samples was recorded"):
        old.record_samples([(0, "z", None, 0, 0.9, 0, None)])
    with pytest.raises(RunReplacedError, match=r"nothing of the inputs was recorded"):
        old.save_inputs(np.ones((2, 3), np.float32))
    assert (_contents(tmp_path), (tmp_path / "inputs.npy").read_bytes()) == before
    assert new.predictions() == {0: 1, 1: 2} and _temp_files(tmp_path) == []
    old.close()
    new.close()


def test_two_stores_of_the_same_job_still_share_one_run(tmp_path: Path) -> None:
    """The check refuses only a replaced run: two processes of one job (a resume beside a run) both commit, and a
    store whose run was overwritten by its own job again (the same fingerprints) writes the same rows."""
    a = RunStore(tmp_path, fingerprints=FPS, config={})
    b = RunStore(tmp_path, fingerprints=FPS, config={}, overwrite=True)  # the same job: nothing deleted
    a.commit(_unit(0, 1.0))
    b.commit(_unit(1, 2.0))
    assert a.done_units() == b.done_units() == {(0, "saliency"), (1, "saliency")}
    a.close()
    b.close()


def _net() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(2),
            torch.nn.Flatten(),
            torch.nn.Linear(16, 3),
        )
    return m.eval()


def test_a_run_replaced_while_it_runs_stops_and_the_new_run_holds_only_its_own_results(tmp_path: Path) -> None:
    """Run A (seed 1) is replaced after its first unit by run B (seed 2, overwrite=True), which finishes; A's next
    commit is refused, and B, rerun, finds itself complete with exactly the contents of a clean run of B."""
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))

    def job(seed: int) -> Job:
        return Job(
            methods=("saliency", "lime"),
            metrics=("deletion",),
            method_options={"lime": {"n_samples": 16}},
            metric_options={"deletion": {"steps": 4}},
            shard_size=1,
            seed=seed,
        )

    clean = run_job(job(2), _net(), x, tmp_path / "clean")
    assert clean.complete
    replaced: list[int] = []

    def progress(line: str) -> None:
        if line.startswith("[1/") and not replaced:  # A has committed one unit: B takes the folder over
            b = run_job(job(2), _net(), x, tmp_path / "ow", overwrite=True)
            replaced.append(b.n_computed)

    with pytest.raises(RunReplacedError, match=r"was replaced by another process"):
        run_job(job(1), _net(), x, tmp_path / "ow", progress=progress)
    assert replaced == [8]
    again = run_job(job(2), _net(), x, tmp_path / "ow")
    assert (again.n_computed, again.n_skipped, again.complete) == (0, 8, True)
    assert _contents(tmp_path / "ow") == _contents(tmp_path / "clean")


# ------------------------------------------------------------------------ .txt lines
def test_a_txt_input_is_split_at_newlines_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines end at \\n, \\r\\n or a lone \\r; U+2028, U+2029, U+0085, form feed, vertical tab and the separators
    \\x1c-\\x1e inside a line stay in its text, and each text is named by its line in the file."""
    import whybox.runs.loaders as L

    inside = "\u2028\u2029\x85\x0c\x0b\x1c\x1d\x1e"
    lines = [f"one{inside}still one", "", "two\x0cpage", "three\u2028four", "five", "six"]
    raw = lines[0] + "\n" + lines[1] + "\r\n" + lines[2] + "\r" + lines[3] + "\n" + lines[4] + "\r\n" + lines[5] + "\n"
    (tmp_path / "t.txt").write_bytes(raw.encode("utf-8"))
    seen: dict[str, Any] = {}

    def spy(texts: list[str], model: object, *, names: list[str], labels: object) -> None:
        seen.update(texts=texts, names=names)

    monkeypatch.setattr(L, "texts_dataset", spy)
    L._load_texts([str(tmp_path / "t.txt")], object(), None)  # type: ignore[arg-type]
    assert seen["texts"] == [ln for ln in lines if ln]
    assert seen["names"] == ["t.txt:1", "t.txt:3", "t.txt:4", "t.txt:5", "t.txt:6"]
    L._load_texts([os.fspath(tmp_path / "t.txt")], object(), 2)  # type: ignore[arg-type]
    assert seen["texts"] == [lines[0], lines[2]] and seen["names"] == ["t.txt:1", "t.txt:3"]
