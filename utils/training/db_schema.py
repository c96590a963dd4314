"""The experiment database's SQLite schema, its migrations, and what may be stored in it.

Kept apart from :mod:`experiment_db` so the on-disk format (which users' old files depend on)
can be read in one place. Migrations only ever add: a user's history is never dropped.
Floor 3: stdlib only.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import sqlite3
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2
STATUSES = (
    "running", "completed", "failed", "early_stopped", "stopped", "pruned", "diverged",
    "interrupted",
)
_SQLITE_MAGIC = b"SQLite format 3\x00"

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
}


class ExperimentDBError(RuntimeError):
    """The experiment database cannot do what was asked; the message names the file and the fix."""


def corrupt_error(path: Path | str, why: str) -> ExperimentDBError:
    return ExperimentDBError(
        f"{path} is not a readable experiment database: {why}. The file was left untouched. "
        f"Rename or move it (e.g. to {Path(path).name}.corrupt) to start a fresh history, or "
        f"restore a good copy (in Colab, the workspace copy on Google Drive)."
    )


def check_file(path: Path) -> None:
    """Refuse a file that is not a whole SQLite database *before* SQLite touches it, so a
    corrupt history is reported and kept instead of being "repaired" into an empty one."""
    if not path.exists() or path.stat().st_size == 0:
        return  # SQLite treats an empty file as a new database
    with open(path, "rb") as fh:
        header = fh.read(100)
    size = path.stat().st_size
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise corrupt_error(path, "it does not start with a SQLite header")
    page_size = struct.unpack(">H", header[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size  # 1 encodes 65536
    change_counter, pages = struct.unpack(">II", header[24:32])
    valid_for = struct.unpack(">I", header[92:96])[0]
    # The page count in the header is trustworthy when these two counters agree (SQLite >= 3.7).
    if pages and change_counter == valid_for and pages * page_size > size:
        raise corrupt_error(path, f"it is truncated ({size:,} of {pages * page_size:,} bytes)")


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


def check_status(status: str) -> str:
    if status not in STATUSES:
        raise ExperimentDBError(f"status {status!r}: must be one of {', '.join(STATUSES)}")
    return status
