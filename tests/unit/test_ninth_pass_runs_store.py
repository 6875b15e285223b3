"""Ninth-pass findings on the run store, each a property the earlier code broke: a run whose folder was deleted
(``rm -rf``) or moved away, and taken by another run, still wrote its array files into the new run (the new run read
the old one's values) and its rows into its deleted database; a deleted folder was made again by the old run's next
write; the inputs' temporary files of killed runs piled up in the run folder (each the full input set); and an
overwrite deleting ``arrays/`` under a running write gave a bare FileNotFoundError, not RunReplacedError."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import whybox
import whybox.runs.store as store_module
from whybox.runs.store import MetricValue, RunReplacedError, RunStore, SampleResult, UnitResult

FPS = {"config": "a", "data": "d", "weights": "w", "versions": "v"}
OTHER = {**FPS, "config": "b"}
DEAD = 2**22 + 12345  # a process id no live process has here (above Linux's default pid_max)


def _unit(shard: int, value: float) -> UnitResult:
    samples = [
        SampleResult(index=shard * 2 + k, attributions=np.full((1, 2, 2), value + k), metrics={"m": MetricValue(value)})
        for k in range(2)
    ]
    return UnitResult(shard=shard, method="saliency", samples=samples, costs={"explain": (0.1, 1, 1)})


def _contents(path: Path) -> tuple[dict[str, list[tuple[Any, ...]]], dict[str, bytes]]:
    s = RunStore.open_existing(path)
    try:
        return s.contents()
    finally:
        s.close()


def _temp_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.rglob(".*.tmp"))


def _deleted_match(path: Path, what: str) -> str:
    return (
        rf"^'{re.escape(str(path))}' was deleted or replaced \(its run\.sqlite is no longer the database this run "
        rf"opened: .*\) while this run was writing to it; nothing of {what} was recorded or written there\. "
    )


# ------------------------------------------------------------------------ a folder deleted or moved under a run
@pytest.mark.parametrize("how", ["rm -rf", "mv"])
@pytest.mark.parametrize("new_fps", [OTHER, FPS], ids=["another job", "the same job"])
def test_a_run_whose_folder_was_deleted_and_taken_by_another_run_writes_nothing_into_it(
    tmp_path: Path, how: str, new_fps: dict[str, str]
) -> None:
    run = tmp_path / "run"
    old = RunStore(run, fingerprints=FPS, config={})
    old.commit(_unit(0, 1.0))
    if how == "rm -rf":
        shutil.rmtree(run)
    else:
        run.rename(tmp_path / "moved")
    new = RunStore(run, fingerprints=new_fps, config={})
    new.save_inputs(np.zeros((4, 3), np.float32))
    new.record_samples([(0, "a", None, 1, 0.5, 0, None)])
    new.commit(_unit(1, 5.0))
    before = _contents(run), (run / "inputs.npy").read_bytes()
    for shard in (1, 2):  # a unit the new run has (its file must keep its bytes) and one it has not
        with pytest.raises(
            RunReplacedError, match=_deleted_match(run, rf"the unit \(shard {shard}, method 'saliency'\)")
        ):
            old.commit(_unit(shard, 9.0))
    with pytest.raises(RunReplacedError, match=_deleted_match(run, "the samples")):
        old.record_samples([(0, "z", None, 2, 0.9, 0, None)])
    with pytest.raises(RunReplacedError, match=_deleted_match(run, "the inputs")):
        old.save_inputs(np.ones((4, 3), np.float32))
    assert (_contents(run), (run / "inputs.npy").read_bytes()) == before  # neither rows nor files of the old run
    assert new.done_units() == {(1, "saliency")}
    np.testing.assert_array_equal(new.load_array("saliency", 2), np.full((1, 2, 2), 5.0))
    assert _temp_files(tmp_path) == []
    old.close()
    new.close()


def test_a_run_whose_folder_was_deleted_does_not_make_it_again(tmp_path: Path) -> None:
    run = tmp_path / "run"
    old = RunStore(run, fingerprints=FPS, config={})
    old.commit(_unit(0, 1.0))
    shutil.rmtree(run)
    with pytest.raises(RunReplacedError, match=_deleted_match(run, r"the unit \(shard 1, method 'saliency'\)")):
        old.commit(_unit(1, 2.0))
    with pytest.raises(RunReplacedError, match=_deleted_match(run, "the inputs")):
        old.save_inputs(np.ones((4, 3), np.float32))
    assert not run.exists()
    old.close()


def test_a_store_of_a_folder_left_alone_still_writes_and_makes_a_deleted_method_folder_again(tmp_path: Path) -> None:
    """The file check refuses only another database: a store whose run is where it was commits, and one whose
    arrays/ the user deleted (to have its units computed again) makes the folders under the run again."""
    s = RunStore(tmp_path, fingerprints=FPS, config={})
    s.commit(_unit(0, 1.0))
    shutil.rmtree(tmp_path / "arrays")
    assert s.done_units() == set()
    s.commit(_unit(0, 1.0))
    s.commit(_unit(1, 2.0))
    assert s.done_units() == {(0, "saliency"), (1, "saliency")}
    s.close()


# ------------------------------------------------------------------------ the inputs' temporary files of killed runs
def test_the_inputs_temporary_files_of_dead_processes_are_deleted_and_a_live_one_s_kept(tmp_path: Path) -> None:
    RunStore(tmp_path, fingerprints=FPS, config={}).close()
    dead = [tmp_path / f".inputs.npy.{DEAD + k}.tmp" for k in range(3)] + [tmp_path / f".report.html.{DEAD}.tmp"]
    live = tmp_path / f".inputs.npy.{os.getppid()}.tmp"  # a live process's write
    other = tmp_path / f".notes.txt.{DEAD}.tmp"  # not a file of the run's: left alone
    for p in (*dead, live, other):
        p.write_bytes(b"partial")
    RunStore(tmp_path, fingerprints=FPS, config={}).close()  # a resume
    assert _temp_files(tmp_path) == sorted([live.name, other.name])
    RunStore(tmp_path, fingerprints=OTHER, config={}, overwrite=True).close()  # the old run's writes go with it
    assert _temp_files(tmp_path) == [other.name]


def test_a_run_killed_while_it_writes_the_inputs_leaves_no_temporary_file_after_the_rerun(tmp_path: Path) -> None:
    script = (
        "import os, signal, sys, numpy as np\n"
        "import whybox.runs.store as S\n"
        "real = os.fsync\n"
        "def fsync(fd):\n"
        "    real(fd)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "S.os.fsync = fsync\n"
        "s = S.RunStore(sys.argv[1], fingerprints={'config': 'a'}, config={})\n"
        "s.save_inputs(np.ones((64, 3), np.float32))\n"
    )
    src = str(Path(whybox.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], env=env, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err
    assert _temp_files(tmp_path) == [f".inputs.npy.{proc.pid}.tmp"]
    s = RunStore(tmp_path, fingerprints={"config": "a"}, config={})
    s.save_inputs(np.ones((64, 3), np.float32))
    assert _temp_files(tmp_path) == []
    np.testing.assert_array_equal(np.load(tmp_path / "inputs.npy"), np.ones((64, 3), np.float32))
    s.close()


# ------------------------------------------------------------------------ an overwrite deleting arrays/ under a write
def test_a_write_whose_folder_an_overwrite_deletes_under_it_gets_run_replaced_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run B (overwrite=True, another job) deletes arrays/ inside its open transaction while run A writes its
    temporary file; A's failed write waits for B's commit and says the run was replaced, not "no such file"."""
    old = RunStore(tmp_path, fingerprints=FPS, config={})
    deleted, done = threading.Event(), threading.Event()
    real_delete, real_write = RunStore._delete, store_module._write_temp

    def slow_delete(self: RunStore, c: Any) -> None:
        real_delete(self, c)
        deleted.set()
        done.wait(0.5)  # B commits a while after A's write failed

    def replace(errors: list[BaseException]) -> None:
        try:
            RunStore(tmp_path, fingerprints=OTHER, config={}, overwrite=True).close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    errors: list[BaseException] = []
    thread = threading.Thread(target=replace, args=(errors,))

    def write_temp(path: Path, array: np.ndarray) -> Path:
        thread.start()
        assert deleted.wait(30)
        return real_write(path, array)

    monkeypatch.setattr(RunStore, "_delete", slow_delete)
    monkeypatch.setattr(store_module, "_write_temp", write_temp)
    with pytest.raises(RunReplacedError, match=r"was replaced by another process .* nothing of the unit \(shard 0"):
        old.commit(_unit(0, 1.0))
    done.set()
    thread.join(30)
    assert errors == []
    assert _contents(tmp_path)[1] == {} and _temp_files(tmp_path) == []
    old.close()
