"""The experiment database's SQLite schema, its migrations, and what may be stored in it.

Kept apart from :mod:`experiment_db` so the on-disk format (which users' old files depend on)
can be read in one place. Migrations never drop data: a user's history is never lost.
Floor 3: stdlib only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import operator
import socket
import sqlite3
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import metric_names as M
from .errors import PersonFacing
from .workspace import pid_alive

SCHEMA_VERSION = 5
STATUSES = M.STATUSES
_SQLITE_MAGIC = b"SQLite format 3\x00"
# SQLite's companions of a database file: the write-ahead log holds the newest committed rows
# until a checkpoint copies them into the main file, so the three only ever move together.
SIDECARS = ("-wal", "-shm")
# A "running" row whose process cannot be checked (another machine, or a row from before
# schema v3 recorded it) counts as abandoned once nothing was written to it for this long.
STALE_RUN_SECONDS = 3600.0
HOST = socket.gethostname()
RUN_COLUMNS = ["id", "name", "status", "config_json", "tags", "notes", "created_at",
               "updated_at", "finished_at", "summary_json", "study", "parent_run_id", "pid",
               "host", "world_size"]

# Version 1, exactly as it shipped. A fresh database is built as v1 plus every migration, so a
# new file and an upgraded one are the same by construction.
SCHEMA_V1 = (
    """CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        config_json TEXT NOT NULL DEFAULT '{}',
        tags TEXT NOT NULL DEFAULT '[]',          -- JSON list of strings
        notes TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,                 -- unix seconds
        updated_at REAL NOT NULL,
        finished_at REAL,
        summary_json TEXT
    )""",
    """CREATE TABLE metrics (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value REAL,        -- NULL means NaN: SQLite stores NaN as NULL, and None is never inserted
        step INTEGER,
        epoch INTEGER,
        wall_time REAL NOT NULL
    )""",
    """CREATE TABLE artifacts (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
    "CREATE INDEX runs_name ON runs(name)",
    "CREATE INDEX metrics_run_name_step ON metrics(run_id, name, step)",
    # Covering index for "best value / last epoch of metric X per run" (list_runs, best_run).
    "CREATE INDEX metrics_name_run_value ON metrics(name, run_id, value, epoch)",
    "CREATE INDEX artifacts_run ON artifacts(run_id)",
)
# MIGRATIONS[v] takes a database from version v to v + 1.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE runs ADD COLUMN study TEXT",
        "ALTER TABLE runs ADD COLUMN parent_run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL",
        "CREATE INDEX runs_study ON runs(study)",
        "CREATE INDEX runs_parent ON runs(parent_run_id)",
    ),
    # Which process writes a running row: a row left "running" by a process that is gone is
    # shown as interrupted, and the next start of the same run takes it over.
    2: (
        "ALTER TABLE runs ADD COLUMN pid INTEGER",
        "ALTER TABLE runs ADD COLUMN host TEXT",
    ),
    # A step's rows (one per metric) sit side by side in (run_id, step) but in as many places
    # as there are metrics in (run_id, name, step): a per-step log_metrics wrote ~10 more pages.
    # Every query the old index served, this one or metrics_name_run_value serves as well.
    3: (
        "DROP INDEX metrics_run_name_step",
        "CREATE INDEX metrics_run_step ON metrics(run_id, step)",
    ),
    # How many DDP processes trained the run. And cheap per-step logging: a step's rows (one per
    # metric name) went to as many leaves of (name, run_id, value, ...): ~17 pages a commit.
    # log_metrics stages them in metrics_staged (no index: one page a commit); settle() moves
    # many steps at a time, which (name, run_id, step, ...) puts side by side at the end of each
    # name's run. A run's best value of a metric is then a scan of that run's rows of it (an
    # epoch metric's: a few dozen) rather than a seek (benchmarks/RESULTS.md).
    4: (
        "ALTER TABLE runs ADD COLUMN world_size INTEGER NOT NULL DEFAULT 1",
        "DROP INDEX metrics_name_run_value",
        "CREATE INDEX metrics_name_run_step ON metrics(name, run_id, step, value, epoch)",
        """CREATE TABLE metrics_staged (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            value REAL,
            step INTEGER,
            epoch INTEGER,
            wall_time REAL NOT NULL
        )""",
    ),
}
METRIC_FIELDS = "run_id, name, value, step, epoch, wall_time"
_SETTLE = (f"INSERT INTO metrics ({METRIC_FIELDS}) SELECT {METRIC_FIELDS} FROM metrics_staged "
           "ORDER BY id", "DELETE FROM metrics_staged")


def settle(conn: sqlite3.Connection) -> None:
    """Move the staged rows into ``metrics``, in the order they were logged, inside the caller's
    write transaction. Every insert into ``metrics`` settles first, so every staged row was
    logged after every row in ``metrics``: the two tables together keep the logging order."""
    for statement in _SETTLE:
        conn.execute(statement)


class ExperimentDBError(PersonFacing, RuntimeError):
    """The experiment database cannot do what was asked; the message names the file and the fix."""


class RunNotFoundError(ExperimentDBError):
    """No run with that id or name; ``run`` and ``path`` let a caller (the CLI) name its own
    way of listing the runs."""

    def __init__(self, run: int | str, path: Path | str,
                 hint: str = "db.list_runs() shows the runs") -> None:
        self.run, self.path = run, path
        what = f"named {run!r}" if isinstance(run, str) else f"with id {run}"
        super().__init__(f"no run {what} in {path}; {hint}")


def sidecar(path: Path | str, suffix: str) -> Path:
    return Path(f"{path}{suffix}")


def _move_advice(path: Path) -> str:
    """How to set a database aside without losing rows: with its -wal/-shm, names unchanged."""
    present = [sidecar(path, s).name for s in SIDECARS if sidecar(path, s).exists()]
    together = (f"together with {' and '.join(present)} (the -wal file holds its newest rows; "
                f"keep the names unchanged)" if present else
                f"together with {path.name}-wal and {path.name}-shm if they appear (keep the names)")
    return (f"To start a fresh history, move {path.name} into a new folder (e.g. "
            f"{path.parent / 'corrupt-history'}) {together}, and keep them to recover rows "
            f"later; or restore a good copy (in Colab, the workspace copy on Google Drive)")


def corrupt_error(path: Path | str, why: str) -> ExperimentDBError:
    path = Path(path)
    return ExperimentDBError(
        f"{path} is not a readable experiment database: {why}. The file was left untouched. "
        f"{_move_advice(path)}."
    )


def _header_problem(path: Path, size: int) -> str | None:
    """What is wrong with the main file read on its own, or None."""
    with open(path, "rb") as fh:
        header = fh.read(100)
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        return "it does not start with a SQLite header"
    page_size = struct.unpack(">H", header[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size  # 1 encodes 65536
    change_counter, pages = struct.unpack(">II", header[24:32])
    valid_for = struct.unpack(">I", header[92:96])[0]
    # The page count in the header is trustworthy when these two counters agree (SQLite >= 3.7).
    if pages and change_counter == valid_for and pages * page_size > size:
        return f"it is truncated ({size:,} of {pages * page_size:,} bytes)"
    return None


def _sqlite_verdict(path: Path) -> str | None:
    """Let SQLite itself open the file with its WAL (read-only: it recovers the log in memory
    and changes nothing) and check every page; the reason it cannot, or None."""
    shm = sidecar(path, "-shm")
    had_shm = shm.exists()
    why = None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check(3)").fetchall()]
        finally:
            conn.close()
        if rows != ["ok"]:
            lines = [ln.strip() for r in rows for ln in str(r).splitlines()]
            why = "; ".join(ln for ln in lines if ln and not ln.startswith("***"))
    except sqlite3.DatabaseError as exc:
        why = str(exc)
    if why is not None and not had_shm:
        with contextlib.suppress(OSError):
            shm.unlink()  # the index this check created; nothing else uses a refused file
    return why


def check_file(path: Path) -> None:
    """Refuse a file that is not a whole SQLite database *before* a writable connection touches
    it, so a corrupt history is reported and kept instead of being "repaired" into an empty one.

    A main file that looks short on its own is normal next to a -wal file (a full disk or a kill
    during a checkpoint leaves exactly that): then SQLite, which replays the log, has the last
    word. Only what SQLite itself cannot read is refused."""
    path = Path(path)
    if path.is_dir():
        raise ExperimentDBError(
            f"{path} is a folder, but the experiment database must be a file there. The folder "
            f"was left untouched. Rename or move the folder (e.g. to {path.name}.folder), or "
            f"pass another workspace or database path.")
    wal = sidecar(path, "-wal")
    wal_size = wal.stat().st_size if wal.is_file() else 0
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        if wal_size:
            # SQLite deletes the log of an empty or missing database file: its rows would be lost.
            raise ExperimentDBError(
                f"{path} is {'empty' if path.exists() else 'missing'}, but {wal.name} next to it "
                f"holds {wal_size:,} bytes of a database's newest rows, which SQLite would discard. "
                f"Nothing was changed. Put the database file it belongs to back as {path.name}, "
                f"or move {wal.name} (and {path.name}-shm, if present) into a folder of its own "
                f"to start a fresh history.")
        return  # SQLite treats an empty file as a new database
    problem = _header_problem(path, size)
    if problem is None:
        return  # SQLite replays any log when it opens the file
    if not wal_size:
        raise corrupt_error(path, problem)
    why = _sqlite_verdict(path)
    if why is not None:
        raise corrupt_error(path, f"{problem}, and SQLite cannot rebuild it from {wal.name} "
                            f"({why})")


def owner_gone(pid: int | None, host: str | None, updated_at: float | None,
               now: float | None = None) -> bool:
    """Whether the process that writes a "running" row is gone (killed, VM wiped).

    On this machine the pid says; elsewhere (or for a row from before pids were kept) only the
    time since the row was last written can, so such a row waits ``STALE_RUN_SECONDS``."""
    if pid is not None and host == HOST:
        return not pid_alive(int(pid))
    now = time.time() if now is None else now
    return updated_at is None or now - float(updated_at) > STALE_RUN_SECONDS


def shown_status(status: str, pid: int | None, host: str | None,
                 updated_at: float | None) -> str:
    """The status a person should see: a running row whose process is gone was interrupted."""
    if status == M.RUNNING and owner_gone(pid, host, updated_at):
        return M.INTERRUPTED
    return status


# What SQLite's terse errors mean to a person, and what to do (keyed by a word in the error).
_ERROR_HINTS = {
    "locked": "another process is writing to this file and kept it locked longer than the busy "
              "timeout (another notebook tab or Colab session, a search worker, or a running "
              "`python -m utils.training` command). Wait for it to finish, or stop it, then try "
              "again; or use another workspace (--workspace DIR, Workspace.setup(root=...)). "
              "Rows written so far are kept",
    "full": "the disk is full. Free some space (old checkpoints, datasets/ caches) and try "
            "again; rows written so far are kept",
    "readonly": "the file, its folder or the disk is read-only. Make them writable or use "
                "another workspace (--workspace DIR, Workspace.setup(root=...)); nothing was "
                "written",
    "unable to open": "check that its folder exists and is writable, or use another workspace "
                      "(--workspace DIR, Workspace.setup(root=...))",
}


def error_hint(text: str) -> str:
    """"; <what to do>" for a SQLite error message, or "" when there is nothing to add."""
    extra = next((h for key, h in _ERROR_HINTS.items() if key in text), "")
    return f"; {extra}" if extra else ""


def check_ours(conn: sqlite3.Connection, path: Path | str) -> int:
    """The schema version, after making sure the file is ours (read-only: nothing is changed)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise ExperimentDBError(
            f"{path} was written by a newer version of this library (schema {version}, this one "
            f"knows {SCHEMA_VERSION}); update utils/training. The file was left untouched."
        )
    if version == 0:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if tables:
            raise ExperimentDBError(
                f"{path} is a SQLite file but not an experiment database (tables: "
                f"{', '.join(tables)}); pass another path. The file was left untouched."
            )
    return version


def upgrade(conn: sqlite3.Connection, path: Path | str) -> int:
    """Bring the schema up to date inside the caller's write transaction; returns the version
    found (0 = new file). Re-reads it because another process may have just upgraded it."""
    found = version = check_ours(conn, path)
    if version == 0:
        for statement in SCHEMA_V1:
            conn.execute(statement)
        version = 1
    while version < SCHEMA_VERSION:
        for statement in MIGRATIONS[version]:
            conn.execute(statement)
        version += 1
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return found


# ---------------------------------------------------------------------- what goes into a row


def config_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    if isinstance(config, Mapping):
        return dict(config)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    raise ExperimentDBError(f"config must be a TrainingConfig or a dict, got {type(config).__name__}")


def dumps(obj: Any) -> str:
    # default=str: Paths and other odd values in a config or summary are kept as text, not lost.
    return json.dumps(obj, default=str)


def metric_value(name: Any, value: Any) -> float:
    if type(name) is not str or not name:
        raise ExperimentDBError(f"metric names must be non-empty strings, got {name!r}")
    if type(value) is float:
        return value
    if isinstance(value, (str, bytes)) or value is None:
        raise ExperimentDBError(
            f"metric {name!r}: {value!r} is not a number; leave a metric out when it was not "
            f"measured (NaN and inf are stored as they are)"
        )
    try:
        return float(value)  # numpy scalars and 0-d tensors convert too
    except (TypeError, ValueError):
        raise ExperimentDBError(f"metric {name!r}: {value!r} is not a number") from None


def position(value: Any, what: str) -> int | float | None:
    """A step, epoch or run id as a plain number (sqlite3 cannot bind numpy integers)."""
    if value is None or type(value) is int:
        return value
    try:
        return operator.index(value)
    except TypeError:
        pass
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ExperimentDBError(f"{what} must be a number or None, got {value!r}") from None
    return int(f) if f.is_integer() else f


def step_rows(run_id: Any, metrics: Mapping[str, Any], step: Any, epoch: Any,
              wall: float) -> list[tuple]:
    """``log_metrics``' rows. A loop may log every step, so the run id, step and epoch are
    checked once, not once per metric (benchmarks/bench_db.py)."""
    items = iter(metrics.items())
    first = next(items, None)
    if first is None:
        return []
    run = run_id if type(run_id) is int else position(run_id, "run_id")
    value = metric_value(*first)
    step, epoch = position(step, "step"), position(epoch, "epoch")
    return [(run, first[0], value, step, epoch, wall),
            *[(run, name, metric_value(name, v), step, epoch, wall) for name, v in items]]


def metric_row(row: Any, now: float) -> tuple:
    """A ``(run_id, name, value, step, epoch, wall_time)`` row as stored (wall_time None: now)."""
    try:
        run_id, name, value, step, epoch, wall = row
    except (TypeError, ValueError):
        raise ExperimentDBError(
            f"each row must be (run_id, name, value, step, epoch, wall_time), got {row!r}"
        ) from None
    return (run_id if type(run_id) is int else position(run_id, "run_id"), name,
            metric_value(name, value), position(step, "step"), position(epoch, "epoch"),
            now if wall is None else float(wall))


def run_key(run: int | str) -> int | str:
    """A run name as it is, or a run id as a plain int (numpy integers included)."""
    if isinstance(run, str):
        return run
    try:
        return operator.index(run)
    except TypeError:
        raise ExperimentDBError(f"expected a run id or run name, got {run!r}") from None


def run_dict(row: Sequence[Any]) -> dict[str, Any]:
    """A ``runs`` row (``RUN_COLUMNS``) with its config, tags and summary parsed; a ``running``
    row whose process is gone says ``interrupted``."""
    run = dict(zip(RUN_COLUMNS, row))
    run["status"] = shown_status(run["status"], run["pid"], run["host"], run["updated_at"])
    run["config"] = json.loads(run.pop("config_json"))
    run["tags"] = json.loads(run["tags"])
    summary = run.pop("summary_json")
    run["summary"] = None if summary is None else json.loads(summary)
    return run


def check_status(status: str) -> str:
    if status not in STATUSES:
        raise ExperimentDBError(f"status {status!r}: must be one of {', '.join(STATUSES)}")
    return status
