"""Seventh-pass findings on runs and the CLI, each a property the earlier code broke: a misspelt method or metric
in a config's option tables is an error (it was dropped), two runs opening one new folder at once are serialised
(both were accepted, or one failed with a false error), a damaged array file of a finished unit is computed again
(the rerun crashed), metric values print with 4 significant digits (small ones printed as 0.0000), and explain and
debug remove the pictures of an earlier, larger run from their --out (they stayed beside the new results)."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import whybox
from whybox.cli.main import main as cli
from whybox.errors import DataFormatError, InvalidParameterError
from whybox.registry import METRICS
from whybox.runs import store as store_module
from whybox.runs.job import Job, run_job
from whybox.runs.report_data import load_run_report
from whybox.runs.store import FingerprintMismatchError, RunBusyError, RunStore

MODEL_PY = """
import torch
from torch import nn


class Scaled(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)
        )

    def forward(self, x):
        return self.net(x) * self.scale


def build():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Scaled(1.0).eval()


def tiny():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Scaled(1e-3).eval()
"""


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, Path, Path]:
    """``(model spec, x.npy, xy.npz)``: a tiny CNN of 8 x 8 one-channel images, 6 inputs, and 6 labelled ones."""
    (tmp_path / "model.py").write_text(MODEL_PY)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)).numpy()
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "xy.npz", x=x, y=np.array([0, 1, 2, 0, 1, 2]))
    return f"{tmp_path / 'model.py'}:build", tmp_path / "x.npy", tmp_path / "xy.npz"


def known(names: list[str]) -> str:
    return ", ".join(names)


# ------------------------------------------------------------------------ a typo in a config's option tables
@pytest.mark.parametrize(
    ("command", "config", "error"),
    [
        (
            ["compare", "--no-report"],
            'methods = ["lime", "saliency"]\nmetrics = ["deletion"]\n[options.lmie]\nn_samples = 5\n',
            "Error: --config: [options.lmie]: 'lmie' is not a method. Did you mean 'lime'? Known: {methods}.",
        ),
        (
            ["compare", "--no-report"],
            'methods = ["saliency"]\nmetrics = ["deletion"]\n[metric_options.deletoin]\nsteps = 3\n',
            "Error: --config: [metric_options.deletoin]: 'deletoin' is not a metric. Did you mean 'deletion'? "
            "Known: {metrics}.",
        ),
        (
            ["evaluate"],
            'method = "saliency"\nmetrics = ["deletion"]\n[metric_options.deletoin]\nsteps = 3\n',
            "Error: --config: [metric_options.deletoin]: 'deletoin' is not a metric. Did you mean 'deletion'? "
            "Known: {metrics}.",
        ),
    ],
)
def test_a_misspelt_name_in_a_configs_option_tables_is_an_error_with_a_hint(
    files: tuple[str, Path, Path], tmp_path: Path, command: list[str], config: str, error: str
) -> None:
    spec, x, _ = files
    (tmp_path / "cfg.toml").write_text(config)
    args = [*command, "--model", spec, str(x), "--config", str(tmp_path / "cfg.toml")]
    if command[0] == "compare":
        args += ["--out", str(tmp_path / "run")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines()[-1] == error.format(
        methods=known(whybox.methods()), metrics=known(METRICS.names())
    )
    assert not (tmp_path / "run").exists()  # refused before any work


def test_the_same_typo_as_a_flag_gets_the_same_hint(files: tuple[str, Path, Path], tmp_path: Path) -> None:
    spec, x, _ = files
    args = ["compare", "--model", spec, str(x), "--methods", "saliency", "--metrics", "deletion"]
    res = CliRunner().invoke(cli, [*args, "--metric-option", "deletoin.steps=3", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert res.output.strip().splitlines()[-1] == (
        "Error: --metric-option deletoin.KEY=...: 'deletoin' is not a metric. Did you mean 'deletion'? "
        f"Known: {known(METRICS.names())}."
    )


def test_a_configs_table_for_a_known_method_left_out_by_the_flags_is_still_dropped(
    files: tuple[str, Path, Path], tmp_path: Path
) -> None:
    """``--methods saliency`` over a config naming lime, with ``[options.lime]``: the flags win, lime's table is no
    error (it names a real method)."""
    spec, x, _ = files
    (tmp_path / "cfg.toml").write_text('methods = ["lime"]\nmetrics = ["deletion"]\n[options.lime]\nn_samples = 8\n')
    args = ["compare", "--model", spec, str(x), "--config", str(tmp_path / "cfg.toml"), "--methods", "saliency"]
    res = CliRunner().invoke(cli, [*args, "--no-report", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert [m.name for m in load_run_report(tmp_path / "r", max_samples=0).methods] == ["saliency"]


# ------------------------------------------------------------------------ two runs opening one new folder at once
FPS = {"config": "a", "data": "d", "weights": "w", "versions": "v"}


def _open_together(run_dir: Path, fingerprints: tuple[dict[str, str], dict[str, str]]) -> list[object]:
    """Open two RunStores on ``run_dir`` from two threads released at the same moment: each one's store, or the
    exception it raised."""
    out: list[object] = [None, None]
    go = threading.Barrier(2)

    def open_(k: int) -> None:
        go.wait()
        try:
            s = RunStore(run_dir, fingerprints=fingerprints[k], config={"job": {"seed": k}})
            s.close()
            out[k] = "opened"
        except Exception as exc:  # what each opener got is the result
            out[k] = exc

    threads = [threading.Thread(target=open_, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _stored(run_dir: Path) -> tuple[dict[str, str], str]:
    c = sqlite3.connect(run_dir / "run.sqlite")
    try:
        rows = dict(c.execute("SELECT key, value FROM run").fetchall())
    finally:
        c.close()
    return {k.removeprefix("fingerprint."): v for k, v in rows.items() if k.startswith("fingerprint.")}, rows["config"]


def test_two_openers_of_one_new_folder_with_the_same_job_both_join_it(tmp_path: Path) -> None:
    for i in range(25):
        got = _open_together(tmp_path / str(i), (FPS, FPS))
        assert got == ["opened", "opened"], got  # never a false "not a whybox run database" nor "database is locked"
        assert _stored(tmp_path / str(i))[0] == FPS


def test_of_two_openers_of_one_new_folder_with_different_jobs_one_is_refused(tmp_path: Path) -> None:
    other = {**FPS, "config": "b"}
    for i in range(25):
        got = _open_together(tmp_path / str(i), (FPS, other))
        opened = [k for k in (0, 1) if got[k] == "opened"]
        refused = [k for k in (0, 1) if isinstance(got[k], FingerprintMismatchError)]
        assert len(opened) == 1 and len(refused) == 1, got
        fps, config = _stored(tmp_path / str(i))
        assert fps == (FPS, other)[opened[0]]  # the folder is labelled with the job that opened it, and only it
        assert json.loads(config) == {"job": {"seed": opened[0]}}


def test_a_folder_locked_by_another_writer_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT", 0.3)
    tmp_path.joinpath("r").mkdir()
    other = sqlite3.connect(tmp_path / "r" / "run.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process creating the run, its write under way
    try:
        with pytest.raises(RunBusyError, match=r"run\.sqlite' stayed locked by another process for 0\.3s"):
            RunStore(tmp_path / "r", fingerprints=FPS, config={})
    finally:
        other.execute("ROLLBACK")
        other.close()
    RunStore(tmp_path / "r", fingerprints=FPS, config={}).close()  # free again: it opens


def test_overwrite_still_replaces_a_run_of_another_job(tmp_path: Path) -> None:
    s = RunStore(tmp_path, fingerprints=FPS, config={"a": 1})
    s.record_samples([(0, "x", None, 1, 0.5, 0, None)])
    s.close()
    with pytest.raises(FingerprintMismatchError, match="changed: config"):
        RunStore(tmp_path, fingerprints={**FPS, "config": "b"}, config={"a": 2})
    s = RunStore(tmp_path, fingerprints={**FPS, "config": "b"}, config={"a": 2}, overwrite=True)
    assert s.n_samples() == 0 and s.config() == {"a": 2} and s.fingerprints() == {**FPS, "config": "b"}
    s.close()


def test_an_sqlite_file_of_something_else_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    c = sqlite3.connect(tmp_path / "run.sqlite")
    c.execute("CREATE TABLE other (a)")
    c.commit()
    c.close()
    before = (tmp_path / "run.sqlite").read_bytes()
    with pytest.raises(InvalidParameterError, match=r"is not a whybox run database \(it has tables other but no 'run'"):
        RunStore(tmp_path, fingerprints=FPS, config={})
    assert (tmp_path / "run.sqlite").read_bytes() == before  # not switched to WAL, no tables added


# ------------------------------------------------------------------------ a damaged array of a finished unit
def _tiny_cnn() -> torch.nn.Module:
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


@pytest.mark.parametrize("damage", ["truncated", "header only", "empty", "fewer rows"])
def test_a_unit_whose_array_file_is_damaged_is_computed_again_to_the_same_bytes(tmp_path: Path, damage: str) -> None:
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    job = Job(methods=("saliency",), metrics=("deletion",), metric_options={"deletion": {"steps": 4}}, shard_size=4)
    run_job(job, _tiny_cnn(), x, tmp_path)
    with RunStore.open_existing(tmp_path) as s:
        before = s.contents()
    path = tmp_path / "arrays" / "saliency" / "000001.npy"
    good = path.read_bytes()
    if damage == "fewer rows":
        np.save(path, np.load(path)[:2])  # a whole .npy, but short of the rows the database points into
    else:
        path.write_bytes(good[: {"truncated": len(good) - 4, "header only": 128, "empty": 0}[damage]])
    again = run_job(job, _tiny_cnn(), x, tmp_path)
    assert again.n_computed == 1 and again.n_skipped == 1
    with RunStore.open_existing(tmp_path) as s:
        after = s.contents()
    assert after == before


def test_compare_says_error_with_exit_2_when_its_report_cannot_be_written(
    files: tuple[str, Path, Path], tmp_path: Path
) -> None:
    spec, x, _ = files
    out = tmp_path / "r"
    (out / "report.html").mkdir(parents=True)  # a folder where the page goes
    args = ["compare", "--model", spec, str(x), "--methods", "saliency", "--metrics", "deletion", "--out", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines()[-1].startswith(f"Error: cannot write {str(out / 'report.html')!r}: ")


def test_compare_says_error_with_exit_2_when_the_run_cannot_be_read_back(
    files: tuple[str, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import whybox.runs.report_data as report_data

    def damaged(*_a: object, **_k: object) -> None:
        raise DataFormatError("the run's array file 'arrays/saliency/000000.npy' is missing or damaged")

    monkeypatch.setattr(report_data, "load_run_report", damaged)
    spec, x, _ = files
    args = ["compare", "--model", spec, str(x), "--methods", "saliency", "--metrics", "deletion"]
    res = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines()[-1] == (
        "Error: --out: the run's array file 'arrays/saliency/000000.npy' is missing or damaged"
    )


# ------------------------------------------------------------------------ 4 significant digits
def test_evaluate_and_the_leaderboard_print_small_values_to_4_significant_digits(
    files: tuple[str, Path, Path], tmp_path: Path
) -> None:
    """A model whose outputs are 1e-3 of the tiny CNN's: infidelity ~1e-7, which four fixed decimals showed as
    0.0000; what is printed equals the exact mean to 4 significant digits."""
    spec, x, _ = files
    spec = spec.replace(":build", ":tiny")
    args = ["--model", spec, str(x), "--metrics", "infidelity"]
    res = CliRunner().invoke(cli, ["evaluate", *args, "--method", "saliency", "--json", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    scores = json.loads((tmp_path / "e.json").read_text())["metrics"]["infidelity"]["scores"]
    mean = float(np.mean(scores))
    assert 0 < abs(mean) < 1e-4
    printed = re.search(r"infidelity\s+mean (\S+)\s+std (\S+)", res.output)
    assert printed is not None, res.output
    assert float(printed[1]) == pytest.approx(mean, rel=5e-4)
    assert float(printed[2]) == pytest.approx(float(np.std(scores)), rel=5e-4)

    run = tmp_path / "r"
    res = CliRunner().invoke(
        cli, ["compare", *args, "--methods", "saliency,occlusion", "--no-report", "--out", str(run)]
    )
    assert res.exit_code == 0, res.output
    board = load_run_report(run, max_samples=0).leaderboard
    for method in ("saliency", "occlusion"):
        line = next(ln for ln in res.output.splitlines() if ln.startswith(method + " "))
        value = board[method]["infidelity"]
        assert value is not None and 0 < abs(value) < 1e-4
        assert float(line.split()[1]) == pytest.approx(value, rel=5e-4)


# ------------------------------------------------------------------------ stale pictures of an earlier run
def test_explain_into_a_used_folder_leaves_only_this_runs_overlays(
    files: tuple[str, Path, Path], tmp_path: Path
) -> None:
    spec, x, _ = files
    out = tmp_path / "ex"
    args = ["explain", "--model", spec, str(x), "--method", "saliency", "--out", str(out)]
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert len(list(out.glob("*.png"))) == 6
    # the user's own files, of whybox's forms of name too (tokens.html, an overlay-like PNG): whybox never wrote them
    mine = ["notes.txt", "mine.png", "0001_notes.txt", "0001_x-1_saliency.png.bak", "0009 x saliency.png",
            "tokens.html", "0007_x-7_occlusion.png"]  # fmt: skip
    for name in mine:
        (out / name).write_text("the user's")
    res = CliRunner().invoke(cli, [*args, "--limit", "2"])
    assert res.exit_code == 0, res.output
    rows = whybox.Explanation.load(out / "explanation.safetensors").attributions.shape[0]
    overlays = sorted(p.name for p in out.iterdir() if re.fullmatch(r"\d{4}_x-\d_saliency\.png", p.name))
    assert rows == 2 and overlays == ["0000_x-0_saliency.png", "0001_x-1_saliency.png"]
    kept = [*overlays, *mine, "explanation.safetensors", ".whybox-explain-files.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted(kept)
    assert all((out / name).read_text() == "the user's" for name in mine)


def test_explain_into_a_folder_whybox_never_wrote_removes_nothing(
    files: tuple[str, Path, Path], tmp_path: Path
) -> None:
    """A review found the first cut deleted the user's files whose names fit the overlay pattern (explain --out .
    in a folder of the user's 0001_cat_saliency.png, tokens.html): only files whybox listed as its own go."""
    spec, x, _ = files
    out = tmp_path / "mine"
    out.mkdir()
    mine = ["0001_cat_saliency.png", "0007_holiday_lime.png", "tokens.html", "0002_x-2_saliency.png"]
    for name in mine:
        (out / name).write_text("the user's")
    args = ["explain", "--model", spec, str(x), "--method", "saliency", "--out", str(out), "--limit", "2"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert all((out / name).read_text() == "the user's" for name in mine)
    assert "removed" not in res.output


def test_debug_into_a_used_folder_leaves_only_this_runs_mistake_figures(
    files: tuple[str, Path, Path], tmp_path: Path
) -> None:
    spec, _, xy = files
    out = tmp_path / "dbg"
    args = ["debug", "--model", spec, str(xy), "--method", "occlusion", "--regions", "4", "--out", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    first = sorted(p.name for p in out.glob("mistake_*.png"))
    assert len(first) >= 2, res.output  # the untrained CNN gets most of the 6 wrong
    (out / "mistake_notes.png").write_text("the user's")
    res = CliRunner().invoke(cli, [*args, "--limit", "1"])
    assert res.exit_code == 0, res.output
    figures = [r["figure"] for r in json.loads((out / "mistakes.json").read_text())]
    assert sorted(p.name for p in out.glob("mistake_*.png")) == sorted([*figures, "mistake_notes.png"])
    assert len(figures) == 1


def test_the_list_of_explains_files_is_not_written_through_a_link_out_of_the_folder(
    files: tuple[str, Path, Path], tmp_path: Path
) -> None:
    spec, x, _ = files
    out, outside = tmp_path / "linked", tmp_path / "victim.txt"
    out.mkdir()
    outside.write_text("keep me")
    (out / ".whybox-explain-files.json").symlink_to(outside)
    res = CliRunner().invoke(cli, ["explain", "--model", spec, str(x), "--method", "saliency", "--out", str(out)])
    assert res.exit_code == 2 and "Error: --out:" in res.output
    assert outside.read_text() == "keep me"


def test_a_run_made_before_the_results_epoch_was_raised_does_not_resume(tmp_path: Path) -> None:
    """A change in what a stored option means (a text's fill= read as replace=, session 32) left the fingerprints
    as they were, so a run begun before it resumed and mixed units of two readings: the versions fingerprint holds
    the results epoch, and a run of another epoch is refused like one of another version."""
    from whybox.runs import job as job_module

    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    job = Job(methods=("saliency",), shard_size=1)
    run_job(job, _tiny_cnn(), x, tmp_path / "run")
    before = job_module.RESULTS_EPOCH
    try:
        job_module.RESULTS_EPOCH = before + 1
        with pytest.raises(FingerprintMismatchError, match=r"changed: versions"):
            run_job(job, _tiny_cnn(), x, tmp_path / "run")
    finally:
        job_module.RESULTS_EPOCH = before
    assert run_job(job, _tiny_cnn(), x, tmp_path / "run").n_computed == 0
