"""The run store: one directory per run, a SQLite database and attribution arrays written atomically.

Layout of a run directory::

    run.sqlite            the database (WAL journal, synchronous=FULL)
    inputs.npy            the model inputs (for the report), written once
    arrays/<method>/<shard:06d>.npy   float32 attributions of one unit: one row per sample that has them

Tables (``SCHEMA``):

- ``run``: key/value rows: the fingerprints (``config``, ``data``, ``weights``, ``versions``) and the job's
  configuration as canonical JSON.
- ``samples``: one row per input: index, name, true label (or NULL), prediction, its probability, shard, and the
  reason where the model failed on it (prediction -1).
- ``units``: one row per finished (shard, method): the unit of work, committed in one transaction together
  with its ``results`` and ``metric_values`` rows, after its arrays are on disk.
- ``results``: one row per (sample, method): ``ok`` with the unit's array file (relative path) and the sample's
  row in it, or ``failed`` with the reason. One file per unit keeps the fsyncs to one per unit (per sample,
  they were 5 % of a digits run's time) and the file count to shards x methods.
- ``metric_values``: one row per (sample, method, metric): the score (NULL when it failed, with the reason) and
  the curve as JSON where the metric has one.
- ``costs``: seconds and forward/backward passes per (shard, method, stage), stage ``explain`` or
  ``metric:<name>``, and the wall-clock time: the only rows that differ between two runs of the same job (a
  process that has already probed a model's CAM layer spends one pass less); everything else is a
  deterministic function of the job.

A unit is either wholly in the database or not at all. Killed at any point, a run leaves at most the temporary
files of an unfinished write (``arrays/<method>/.<shard>.npy.<pid>.tmp``, ``.inputs.npy.<pid>.tmp``), which the next
store to open the run deletes once their process is gone (``overwrite=True`` deletes every one), and the rerun
writes the files again with identical bytes.

Every write (a unit, the samples, the inputs) first checks, under the database's write lock, that the run's
``run.sqlite`` is still the file this store opened (not deleted, moved away or made anew by another run) and that its
stored fingerprints are still the ones this store opened with, and moves its files into place only then: a process
whose run another process has replaced (``overwrite=True``, a different job) or whose folder was deleted or replaced
gets :class:`RunReplacedError` and writes nothing into the new run, neither rows nor files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from whybox.errors import DataFormatError, InvalidParameterError, WhyboxError

__all__ = [
    "DB_NAME",
    "INPUTS_NAME",
    "SCHEMA",
    "FingerprintMismatchError",
    "MetricValue",
    "RunBusyError",
    "RunReplacedError",
    "RunStore",
    "SampleResult",
    "UnitResult",
    "read_row",
    "write_array_atomic",
]

DB_NAME = "run.sqlite"
REPORT_NAME = "report.html"  # the run's HTML report (whybox compare and whybox report write it)
INPUTS_NAME = "inputs.npy"
_SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS run (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    idx INTEGER PRIMARY KEY, name TEXT NOT NULL, label INTEGER, prediction INTEGER NOT NULL,
    probability REAL, shard INTEGER NOT NULL, reason TEXT);
CREATE TABLE IF NOT EXISTS units (
    shard INTEGER NOT NULL, method TEXT NOT NULL, n_samples INTEGER NOT NULL, n_failed INTEGER NOT NULL,
    PRIMARY KEY (shard, method));
CREATE TABLE IF NOT EXISTS results (
    idx INTEGER NOT NULL, method TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, array TEXT, row INTEGER,
    PRIMARY KEY (idx, method));
CREATE TABLE IF NOT EXISTS metric_values (
    idx INTEGER NOT NULL, method TEXT NOT NULL, metric TEXT NOT NULL, value REAL, curve TEXT, reason TEXT,
    PRIMARY KEY (idx, method, metric));
CREATE TABLE IF NOT EXISTS costs (
    shard INTEGER NOT NULL, method TEXT NOT NULL, stage TEXT NOT NULL, seconds REAL NOT NULL,
    n_forward INTEGER NOT NULL, n_backward INTEGER NOT NULL, finished REAL NOT NULL,
    PRIMARY KEY (shard, method, stage));
"""

#: The tables whose rows are a deterministic function of the job (``costs`` is not).
DETERMINISTIC_TABLES = ("run", "samples", "units", "results", "metric_values")


class FingerprintMismatchError(WhyboxError, ValueError):
    """A run directory holds a run of a different job, model, dataset or package versions."""


@dataclass(frozen=True)
class MetricValue:
    """One metric's score for one sample: ``value`` (``None`` when it failed: see ``reason``), ``curve``."""

    value: float | None
    curve: dict[str, list[float]] | None = None
    reason: str | None = None


@dataclass
class SampleResult:
    """One sample's outcome for one method: the attributions or the reason it failed, and its metric values."""

    index: int
    attributions: np.ndarray | None
    reason: str | None = None
    metrics: dict[str, MetricValue] = field(default_factory=dict)


@dataclass
class UnitResult:
    """What one unit of work (one shard, one method) produced: everything the store commits at once."""

    shard: int
    method: str
    samples: list[SampleResult]
    costs: dict[str, tuple[float, int, int]]  # stage -> (seconds, n_forward, n_backward)


#: the reason stored with a metric value that is undefined for its sample (NaN): not a failure
UNDEFINED = "undefined (NaN) for this sample"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_temp(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as ``.npy`` to a temporary file beside ``path`` (named with this process's id), fsynced; the
    caller renames it into place (:func:`_place`) or deletes it. Nothing is left behind when the write fails."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _place(tmp: Path, path: Path) -> None:
    """Rename the temporary file ``tmp`` onto ``path`` and fsync the folder (deleting ``tmp`` if the rename fails)."""
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_array_atomic(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write ``array`` as ``.npy`` through a temporary file in the same folder, fsync, rename, fsync the folder.

    A reader sees either the old file, or no file, or the complete new one; never a partial array.
    """
    path = Path(path)
    _place(_write_temp(path, array), path)
    return path


def _folder(method: str) -> str:
    if method and all(c.isascii() and (c.isalnum() or c == "_") for c in method):
        return method
    from whybox.report.paths import safe_component

    return f"{safe_component(method)}-{hashlib.sha256(method.encode()).hexdigest()[:10]}"


def read_row(run_dir: str | os.PathLike[str], array: str, row: int) -> np.ndarray:
    """Row ``row`` of the unit array ``array`` (a path relative to ``run_dir``), memory-mapped, as a copy. A missing
    or damaged file is a :class:`DataFormatError` naming it."""
    path = Path(run_dir) / array
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
        return np.array(data[int(row)])
    except (OSError, ValueError, IndexError, EOFError) as exc:
        raise DataFormatError(
            f"the run's array file {str(path)!r} is missing or damaged ({type(exc).__name__}: {exc}); delete it "
            "and rerun the run (whybox compare with the same arguments recomputes the units whose files are gone), "
            "or start it over with --overwrite."
        ) from None


def _array_whole(path: Path, last_row: int) -> bool:
    """Whether ``path`` is a readable ``.npy`` file with at least ``last_row + 1`` rows whose size holds what its
    header promises (a truncated or overwritten file does not); reads the header alone (memory-mapping each file
    cost 0.7 ms, 7 s for a run of 10,000 units)."""
    from numpy.lib import format as npy_format

    try:
        with open(path, "rb") as f:
            version = npy_format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = npy_format.read_array_header_2_0(f)
            else:
                return False
            start, size = f.tell(), os.fstat(f.fileno()).st_size
    except (OSError, ValueError, EOFError):
        return False
    if dtype.hasobject or not shape:
        return False
    return bool(shape[0] > last_row and size >= start + math.prod(shape) * dtype.itemsize)


def _root_temps(run_dir: Path) -> list[Path]:
    """The temporary files of the inputs and the report in the run folder (``.inputs.npy.<pid>.tmp``, ...)."""
    return [tmp for name in (INPUTS_NAME, REPORT_NAME) for tmp in run_dir.glob(f".{name}.*.tmp")]


def _orphan_writes(run_dir: Path) -> list[Path]:
    """Temporary files of an atomic write (:func:`_write_temp`: the unit arrays under ``arrays/``, the inputs and the
    report in the run folder) left by a process that died before its rename (the name holds its process id); files
    of a live process (another run resuming here) are left alone."""
    out = []
    for tmp in [*(run_dir / "arrays").glob("**/.*.tmp"), *_root_temps(run_dir)]:
        try:
            pid = int(tmp.name.rsplit(".", 2)[-2])
        except (ValueError, IndexError):
            continue
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # alive: its write is under way
            except ProcessLookupError:
                pass
            except PermissionError:
                continue  # another user's live process
        out.append(tmp)
    return out


def _file_id(path: Path) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the file at ``path``: which file it is, or None where there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    v = float(value)
    return v if np.isfinite(v) else None


def _config_changes(old: Any, new: Mapping[str, Any], limit: int = 6) -> str | None:
    """The settings that differ between a stored job configuration and ``new``, as ``key: stored X, now Y``
    (dotted keys for nested settings; at most ``limit``), or None when the stored one is unreadable or they
    compare equal here (the digest then differs by something the configuration does not show)."""
    if not isinstance(old, dict):
        return None
    new = json.loads(_json(dict(new)))  # the JSON form the stored one went through

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix: d}
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out

    a = {k.rstrip(".").removeprefix("job."): v for k, v in flat(old).items()}
    b = {k.rstrip(".").removeprefix("job."): v for k, v in flat(new).items()}
    keys = sorted(k for k in set(a) | set(b) if a.get(k, _MISSING) != b.get(k, _MISSING))
    if not keys:
        return None

    def show(v: Any) -> str:
        text = "(unset)" if v is _MISSING else json.dumps(v)
        return text if len(text) <= 80 else text[:77] + "..."

    parts = [f"{k} stored {show(a.get(k, _MISSING))}, now {show(b.get(k, _MISSING))}" for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(parts) + more


_MISSING = object()

#: seconds a run waits for another process writing to the same run database before giving up
BUSY_TIMEOUT = 60.0


class RunBusyError(WhyboxError, RuntimeError):
    """Another process held the run database's write lock for longer than ``BUSY_TIMEOUT``."""


class RunReplacedError(WhyboxError, RuntimeError):
    """The run directory was taken over by a run of a different job (``overwrite=True``), or deleted, moved away or
    made anew by another run, while this store wrote to it; the refused write left nothing in the new run."""


def _busy(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


def _busy_error(db_path: Path) -> RunBusyError:
    return RunBusyError(
        f"{str(db_path)!r} stayed locked by another process for {BUSY_TIMEOUT:g}s (another whybox run writing to "
        "the same run directory?); wait for it to finish, or write to another directory."
    )


def _retry_busy(call: Callable[[], Any], db_path: Path) -> Any:
    """``call()``, retried while SQLite answers "database is locked" at once (as it does, without waiting, where
    two connections would deadlock), for up to ``BUSY_TIMEOUT``."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            return call()
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
            if time.monotonic() > deadline:
                raise _busy_error(db_path) from None
            time.sleep(0.01)


class RunStore:
    """A run directory: open (or create) it with the job's fingerprints, then record units as they finish.

    Parameters
    ----------
    path
        The run directory (created if missing); a relative path is taken from the working folder at opening, and the
        store keeps writing there if the working folder changes later.
    fingerprints
        ``{"config": ..., "data": ..., "weights": ..., "versions": ...}``: hex digests (or short texts) that
        identify the job. A directory created with other values refuses to open: a changed job never
        resumes into an old run.
    config
        The job's configuration (JSON-friendly), stored for the report.
    overwrite
        Delete an existing run of a different job in ``path`` instead of refusing.

    Raises
    ------
    FingerprintMismatchError
        If ``path`` holds a run whose fingerprints differ (names which ones), and ``overwrite`` is false. The check
        and the writing of the fingerprints are one transaction: of two runs opening one new directory at once, the
        second finds the first's fingerprints (and joins the run, the same job, or is refused).
    RunBusyError
        If another process holds the database's write lock for longer than ``BUSY_TIMEOUT`` seconds.
    InvalidParameterError
        If ``path`` is a file, or its ``run.sqlite`` is not a whybox run database (left as it is).

    Notes
    -----
    ``overwrite`` deletes the old run even while another process is still writing to it; that process's next write
    (:meth:`commit`, :meth:`record_samples`, :meth:`save_inputs`) finds other fingerprints under the write lock and
    raises :class:`RunReplacedError`, leaving the new run's rows and files as they are. So does its next write
    after the folder was deleted (``rm -rf``) or moved away, whether or not another run started in its place: the
    store checks that the ``run.sqlite`` at its path is still the file it opened (device and inode), and makes no
    folder of a deleted run again.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fingerprints: Mapping[str, str],
        config: Mapping[str, Any],
        overwrite: bool = False,
    ) -> None:
        # absolute: the store keeps writing into the folder it opened when the working folder changes later (a
        # notebook cell, the model's own code), rather than into another "run" under the new one
        self.path = Path(path).absolute()
        if self.path.exists() and not self.path.is_dir():
            raise InvalidParameterError(
                f"the run directory {str(self.path)!r} is a file; choose a folder (new or holding a run)."
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / "arrays").mkdir(exist_ok=True)
        except OSError as exc:
            raise InvalidParameterError(
                f"the run directory {str(self.path)!r} cannot be written ({exc.strerror or exc}); check its "
                "permissions and free space, or choose another folder."
            ) from None
        for tmp in _orphan_writes(self.path):  # a killed run's unfinished write: never committed
            tmp.unlink(missing_ok=True)
        self.db_path = self.path / DB_NAME
        wanted = {k: str(v) for k, v in fingerprints.items()}
        self._fingerprints = wanted  # the run this store writes to: every write checks it is still the stored one
        self._conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=BUSY_TIMEOUT)
        # the file the connection opened (connect opens or creates it): a write checks it is still the one at db_path,
        # since the connection keeps reading and writing a deleted or moved-away database as if nothing happened
        self._db_id = _file_id(self.db_path)
        try:
            self._open(wanted, config, overwrite)
        except BaseException:
            self._conn.close()
            raise

    def _open(self, wanted: dict[str, str], config: Mapping[str, Any], overwrite: bool) -> None:
        """Check the stored fingerprints against ``wanted`` and write them (and the schema) where there are none, in
        one ``BEGIN IMMEDIATE`` transaction: two runs opening one new folder at once are serialised, so the second
        finds the first's fingerprints and joins it (the same job) or is refused (another job)."""
        c = self._conn

        def check_tables() -> None:  # an SQLite file of something else is left as it is
            tables = {str(n) for (n,) in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "run" not in tables:
                raise sqlite3.DatabaseError(f"it has tables {', '.join(sorted(tables))} but no 'run' table")

        try:
            _retry_busy(check_tables, self.db_path)
            # WAL is a property of the file, set once; two connections switching a new file at once can deadlock,
            # which SQLite answers at once with "database is locked" (no busy wait): retry until BUSY_TIMEOUT
            _retry_busy(lambda: c.execute("PRAGMA journal_mode=WAL"), self.db_path)
            c.execute("PRAGMA synchronous=FULL")
            with self._transaction(check=False):
                check_tables()  # again, under the write lock
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        c.execute(statement)
                rows = c.execute("SELECT key, value FROM run WHERE key LIKE 'fingerprint.%'").fetchall()
                stored = {str(k).removeprefix("fingerprint."): str(v) for k, v in rows} or None
                if stored is not None and stored != wanted:
                    if not overwrite:
                        row = c.execute("SELECT value FROM run WHERE key = 'config'").fetchone()
                        raise self._mismatch(stored, wanted, row[0] if row else None, config)
                    self._delete(c)
                    stored = None
                if stored is None:
                    new = [(f"fingerprint.{k}", v) for k, v in wanted.items()]
                    new += [("schema", _SCHEMA_VERSION), ("config", _json(dict(config)))]
                    c.executemany("INSERT OR REPLACE INTO run VALUES (?, ?)", new)
        except sqlite3.DatabaseError as exc:
            if _busy(exc):
                raise _busy_error(self.db_path) from None
            if (
                not isinstance(exc, sqlite3.OperationalError)
                or "no such table" in str(exc)
                or "not a database" in str(exc)
            ):
                raise InvalidParameterError(
                    f"{str(self.db_path)!r} is not a whybox run database ({exc}); choose another run directory."
                ) from None
            raise InvalidParameterError(  # read-only folder, full disk, unopenable file: the database is fine
                f"{str(self.db_path)!r} cannot be written ({exc}); check the run directory's permissions and free "
                "space, or choose another run directory."
            ) from None

    def _mismatch(
        self, stored: dict[str, str], wanted: dict[str, str], stored_config: str | None, config: Mapping[str, Any]
    ) -> FingerprintMismatchError:
        """The error for a folder holding a run of another job: what changed."""
        changed = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        try:
            old = json.loads(stored_config) if stored_config is not None else None
        except ValueError:
            old = None
        said = _config_changes(old, config) if "config" in changed else None
        what = {
            "config": said,
            "data": "the inputs, their names or their labels differ (values, or the dtype the inputs were read in)",
            "weights": "the model or its weights differ",
        }

        def digest(v: str | None) -> str:
            return repr(v[:12] + "...") if v and len(v) == 64 else repr(v)

        detail = "; ".join(
            f"config: {said}"
            if k == "config" and said
            else f"{k}: {what[k]} (digest stored {digest(stored.get(k))}, now {digest(wanted.get(k))})"
            if what.get(k)
            else f"{k}: stored {stored.get(k)!r}, now {wanted.get(k)!r}"
            for k in changed
        )
        return FingerprintMismatchError(
            f"{str(self.path)!r} holds a run of a different job (changed: {', '.join(changed)}; {detail}). "
            "Resuming would mix results; write to a new directory, or pass overwrite=True "
            "(--overwrite) to delete the old run."
        )

    # ------------------------------------------------------------------ lifecycle
    @staticmethod
    def _read_run_table(db_path: Path, like: str) -> list[tuple[str, str]]:
        """The ``(key, value)`` rows of the run table whose key is ``LIKE`` the pattern (read-only; raises
        sqlite3.DatabaseError)."""
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=60.0)
        try:
            return conn.execute("SELECT key, value FROM run WHERE key LIKE ?", (like,)).fetchall()
        finally:
            conn.close()

    @staticmethod
    def _read_fingerprints(db_path: Path) -> dict[str, str] | None:
        if not db_path.exists():
            return None
        try:
            rows = RunStore._read_run_table(db_path, "fingerprint.%")
        except sqlite3.DatabaseError as exc:
            raise InvalidParameterError(
                f"{str(db_path)!r} is not a whybox run database ({exc}); choose another run directory."
            ) from None
        if not rows:
            return None
        return {k.removeprefix("fingerprint."): v for k, v in rows}

    def _delete(self, c: sqlite3.Connection) -> None:
        """Delete the old run (``overwrite``), inside the caller's write transaction: every row, the arrays and the
        report."""
        import shutil

        for table in (*DETERMINISTIC_TABLES, "costs"):
            c.execute(f"DELETE FROM {table}")
        (self.path / REPORT_NAME).unlink(missing_ok=True)  # the old run's report goes too
        for tmp in self.path.glob(f".{INPUTS_NAME}.*.tmp"):  # the old run's inputs writes (refused, were they live)
            tmp.unlink(missing_ok=True)
        shutil.rmtree(self.path / "arrays", ignore_errors=True)
        # exist_ok: a process still writing the old run may have just made a folder here; its files never land
        (self.path / "arrays").mkdir(exist_ok=True)

    def close(self) -> None:
        """Close the database connection (checkpointing the WAL)."""
        self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stored_fingerprints(self) -> dict[str, str]:
        rows = self._conn.execute("SELECT key, value FROM run WHERE key LIKE 'fingerprint.%'").fetchall()
        return {str(k).removeprefix("fingerprint."): str(v) for k, v in rows}

    def _replaced(self, what: str) -> RunReplacedError | None:
        """The error for a write of ``what`` into a run that is no longer this store's, or None while it is: the
        database file at ``db_path`` must be the one this store opened (the folder was not deleted, moved away or
        made anew) and its stored fingerprints this store's (another process did not replace the run with
        ``overwrite=True``)."""
        if self._db_id is None or _file_id(self.db_path) != self._db_id:
            return RunReplacedError(
                f"{str(self.path)!r} was deleted or replaced (its {DB_NAME} is no longer the database this run "
                "opened: the folder was removed, moved away, or another run started in its place) while this run "
                f"was writing to it; nothing of {what} was recorded or written there. This run's earlier results "
                "went with the old folder: rerun it (into another directory while another run uses this one)."
            )
        stored = self._stored_fingerprints()
        if stored == self._fingerprints:
            return None
        changed = sorted(k for k in set(stored) | set(self._fingerprints) if stored.get(k) != self._fingerprints.get(k))
        return RunReplacedError(
            f"{str(self.path)!r} was replaced by another process with a run of a different job (overwrite=True or "
            f"--overwrite; changed: {', '.join(changed)}) while this run was writing to it; nothing of {what} was "
            "recorded or written there. This run's earlier results went with the old run: rerun it into "
            "another directory, or wait for the other run to finish."
        )

    @contextlib.contextmanager
    def _transaction(self, *, check: bool = True, what: str = "this write") -> Iterator[sqlite3.Connection]:
        """A write transaction: ``BEGIN IMMEDIATE`` waits up to ``BUSY_TIMEOUT`` for another writer of the run. With
        ``check``, it first checks, under the write lock, that the run is still the one this store opened
        (:class:`RunReplacedError` names ``what`` otherwise)."""
        c = self._conn
        try:
            c.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _busy(exc):
                raise _busy_error(self.db_path) from None
            raise
        try:
            if check and (err := self._replaced(what)) is not None:
                raise err
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    # ------------------------------------------------------------------ samples
    def n_samples(self) -> int:
        """How many samples are recorded."""
        return int(self._conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def record_samples(
        self,
        rows: Sequence[tuple[int, str, int | None, int, float | None, int, str | None]],
        *,
        prediction_reads: str | None = None,
    ) -> None:
        """Record samples ``(index, name, label, prediction, probability, shard, reason)`` in one transaction
        (prediction -1, probability NULL and the reason where the model failed on the sample).
        ``prediction_reads``: ``"probability"``, or ``"output"`` where the number is a one-output model's or a
        regressor's own output (kept in the run table for the report)."""
        with self._transaction(what="the samples") as c:
            c.executemany("INSERT OR REPLACE INTO samples VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            if prediction_reads is not None:
                c.execute("INSERT OR REPLACE INTO run VALUES (?, ?)", ("prediction_reads", prediction_reads))

    def save_inputs(self, x: np.ndarray) -> None:
        """Keep the model inputs beside the run (for the report), unless an identical file is there. The file is
        renamed into place under the write lock, once the run is checked to be still this store's."""
        p = self.path / INPUTS_NAME
        if p.exists():
            try:
                old = np.load(p, mmap_mode="r", allow_pickle=False)
                if old.shape == x.shape and old.dtype == x.dtype and np.array_equal(old, x):
                    return
            except (OSError, ValueError):
                pass
        self._write_files({p: x}, "the inputs", lambda _c: None)

    def _write_files(
        self, files: Mapping[Path, np.ndarray], what: str, rows: Callable[[sqlite3.Connection], None]
    ) -> None:
        """Write ``files`` to temporary files (the slow part, outside the lock), then, in one write transaction that
        first checks the run is still this store's, rename them into place and write the ``rows``. A refused or
        failed write deletes its temporary files and leaves the run's files as they were."""
        temps: dict[Path, Path] = {}
        try:
            for path, array in files.items():
                try:
                    self._make_folders(path.parent)
                    temps[path] = _write_temp(path, array)
                except OSError:  # the folder deleted under us (overwrite, rm -rf): say so, not "no such file"
                    try:  # under the write lock: an overwrite deleting arrays/ is committed (or rolled back) first
                        with self._transaction(what=what):
                            pass
                    except RunReplacedError as err:
                        raise err from None
                    raise
            with self._transaction(what=what) as c:
                for path, tmp in temps.items():
                    _place(tmp, path)
                rows(c)
        finally:
            for tmp in temps.values():
                tmp.unlink(missing_ok=True)  # placed ones are gone already

    def _make_folders(self, folder: Path) -> None:
        """Make ``folder`` and the folders between it and the run directory, never the run directory itself: a run
        whose folder was deleted does not make it again (its write fails and is refused)."""
        parts = folder.relative_to(self.path).parts
        for k in range(1, len(parts) + 1):
            self.path.joinpath(*parts[:k]).mkdir(exist_ok=True)

    def predictions(self) -> dict[int, int]:
        """``{sample index: predicted class}``."""
        return dict(self._conn.execute("SELECT idx, prediction FROM samples").fetchall())

    # ------------------------------------------------------------------ units
    def done_units(self) -> set[tuple[int, str]]:
        """The (shard, method) units already committed whose array file is still there and whole (a unit whose
        file was deleted, truncated or otherwise damaged is computed again). Only each file's ``.npy`` header and
        size are read, not its values."""
        arrays = self._conn.execute("SELECT array, MAX(row) FROM results WHERE array IS NOT NULL GROUP BY array")
        gone = {str(a) for a, last in arrays if not _array_whole(self.path / str(a), int(last))}
        units = {(int(s), str(m)) for s, m in self._conn.execute("SELECT shard, method FROM units")}
        if not gone:
            return units
        return {(s, m) for s, m in units if self.array_path(m, s).relative_to(self.path).as_posix() not in gone}

    def array_path(self, method: str, shard: int) -> Path:
        """Where the attributions of ``shard`` under ``method`` live: ``arrays/<method>/<shard>.npy``; a method
        name that is not a plain ``[A-Za-z0-9_]`` word gets a sanitised folder name with a hash of the name, so no
        name can leave the run directory or collide with another."""
        return self.path / "arrays" / _folder(method) / f"{int(shard):06d}.npy"

    def commit(self, unit: UnitResult) -> None:
        """Write the unit's array file (temporary file, fsync), then, in one write transaction, rename it into place
        and record its rows.

        Raises
        ------
        RunReplacedError
            If another process has replaced the run (``overwrite=True``, another job) since this store opened it:
            checked under the write lock, before the file is renamed, so neither rows nor the file reach the new run.
        """
        rows, mrows = [], []
        ok = [s for s in unit.samples if s.attributions is not None]
        rel = None
        files: dict[Path, np.ndarray] = {}
        if ok:  # one file per unit: the rows of its samples with attributions, in sample order
            path = self.array_path(unit.method, unit.shard)
            files[path] = np.stack([s.attributions for s in ok]).astype(np.float32)  # type: ignore[misc]
            rel = path.relative_to(self.path).as_posix()
        row_of = {s.index: k for k, s in enumerate(ok)}
        for s in unit.samples:
            k = row_of.get(s.index)
            status = "ok" if s.reason is None else "failed"
            rows.append((s.index, unit.method, status, s.reason, rel if k is not None else None, k))
            for metric, mv in s.metrics.items():
                curve = _json(mv.curve) if mv.curve is not None else None
                mrows.append((s.index, unit.method, metric, _finite_or_none(mv.value), curve, mv.reason))
        n_failed = sum(s.reason is not None for s in unit.samples)
        now = time.time()

        def write_rows(c: sqlite3.Connection) -> None:
            c.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)", rows)
            c.executemany("INSERT OR REPLACE INTO metric_values VALUES (?, ?, ?, ?, ?, ?)", mrows)
            c.executemany(
                "INSERT OR REPLACE INTO costs VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (unit.shard, unit.method, st, float(sec), int(nf), int(nb), now)
                    for st, (sec, nf, nb) in unit.costs.items()
                ],
            )
            c.execute(
                "INSERT OR REPLACE INTO units VALUES (?, ?, ?, ?)",
                (unit.shard, unit.method, len(unit.samples), n_failed),
            )

        self._write_files(files, f"the unit (shard {unit.shard}, method {unit.method!r})", write_rows)

    # ------------------------------------------------------------------ reading
    def n_failed(self) -> int:
        """How many (sample, method) pairs are recorded as failed."""
        return int(self._conn.execute("SELECT COUNT(*) FROM results WHERE status = 'failed'").fetchone()[0])

    def n_failed_metrics(self, undefined: str) -> int:
        """How many metric values failed (no value, and a reason other than ``undefined``, the one of a NaN)."""
        row = self._conn.execute(
            "SELECT COUNT(*) FROM metric_values WHERE value IS NULL AND reason IS NOT NULL AND reason != ?",
            (undefined,),
        ).fetchone()
        return int(row[0])

    def config(self) -> dict[str, Any]:
        """The job configuration stored at creation."""
        row = self._conn.execute("SELECT value FROM run WHERE key = 'config'").fetchone()
        return dict(json.loads(row[0])) if row else {}

    def fingerprints(self) -> dict[str, str]:
        """The stored fingerprints."""
        return self._stored_fingerprints()

    @classmethod
    def open_existing(cls, path: str | os.PathLike[str]) -> RunStore:
        """Open the run in ``path`` as it is (for reading or inspection), without fingerprints to check."""
        path = Path(path)
        if not (path / DB_NAME).is_file():
            raise InvalidParameterError(f"{str(path)!r} holds no run ({DB_NAME} is missing).")
        fps = cls._read_fingerprints(path / DB_NAME) or {}
        return cls(path, fingerprints=fps, config={})

    def rows(self, table: str) -> list[tuple[Any, ...]]:
        """Every row of ``table``, sorted: what two runs of the same job must agree on."""
        if table not in (*DETERMINISTIC_TABLES, "costs"):
            raise InvalidParameterError(f"table must be one of {(*DETERMINISTIC_TABLES, 'costs')}; got {table!r}.")
        return sorted(self._conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)

    def contents(self) -> tuple[dict[str, list[tuple[Any, ...]]], dict[str, bytes]]:
        """What two runs of the same job must agree on: every row of :data:`DETERMINISTIC_TABLES` (sorted) and the
        bytes of every attribution array file (by relative path). A resumed or Ray run equals an uninterrupted
        local one exactly when their contents are equal."""
        rows = {t: self.rows(t) for t in DETERMINISTIC_TABLES}
        arrays = {
            p.relative_to(self.path).as_posix(): p.read_bytes() for p in sorted((self.path / "arrays").rglob("*.npy"))
        }
        return rows, arrays

    def load_array(self, method: str, index: int) -> np.ndarray | None:
        """The stored attributions of sample ``index`` under ``method`` (its shape without the batch axis), or
        ``None`` when it failed or is not computed yet."""
        row = self._conn.execute(
            "SELECT array, row FROM results WHERE idx = ? AND method = ?", (int(index), method)
        ).fetchone()
        if row is None or row[0] is None:
            return None
        return read_row(self.path, row[0], row[1])
