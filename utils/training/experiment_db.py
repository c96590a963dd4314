"""ExperimentDB: every run's config, metrics and artifacts in one SQLite file.

The history must outlive W&B outages, a lost network and a wiped Colab VM, so it is a plain
SQLite file that a person can open with any SQLite tool. SQLite locking on the Drive mount is
unreliable (COLAB.md), so in Colab the live database sits on the VM's local disk and
:meth:`ExperimentDB.sync` copies it into the Drive workspace with SQLite's backup API;
:meth:`ExperimentDB.open_for_workspace` restores it from there on a fresh VM.

Floor 3: stdlib ``sqlite3`` and pandas only; never torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from . import db_frames as F
from . import metric_names as M
from .db_schema import (
    HOST,
    METRIC_FIELDS,
    RUN_COLUMNS,
    SCHEMA_VERSION,
    STATUSES,
    ExperimentDBError,
    RunNotFoundError,
    check_file,
    check_ours,
    check_status,
    config_dict,
    corrupt_error,
    dumps,
    error_hint,
    metric_row,
    owner_gone,
    position,
    run_dict,
    run_key,
    settle,
    shown_status,
    step_rows,
    upgrade,
)
from .workspace import LiveSQLite, UnsafeNameError, Workspace, backup_sqlite, check_name

__all__ = ["SCHEMA_VERSION", "STATUSES", "ExperimentDB", "ExperimentDBError", "RunNotFoundError"]

_FINITE = (-sys.float_info.max, sys.float_info.max)  # BETWEEN these drops NaN (NULL) and +-inf
WAL_CHECKPOINT_PAGES = 10_000  # the write-ahead log grows to ~40 MB on local disk, then resets
# Logging metrics marks their run alive (updated_at) at most this often; a run on another host
# counts as abandoned only after db_schema.STALE_RUN_SECONDS without a write.
ALIVE_SECONDS = 1.0
# log_metrics stages its rows (db_schema.settle); they move into metrics once this many are
# staged, every ALIVE_SECONDS, and before anything reads metrics (benchmarks/bench_db.py).
STAGED_ROWS = 2_000


def _order(mode: str) -> str:
    if mode not in ("min", "max"):
        raise ExperimentDBError(f"mode {mode!r}: must be 'min' (losses) or 'max' (accuracies)")
    return "ASC" if mode == "min" else "DESC"


def _kind(kind: str) -> str:
    if kind not in ("epoch", "step"):
        raise ExperimentDBError(f"kind {kind!r}: must be 'epoch' or 'step'")
    return kind


class ExperimentDB:
    """Runs, metrics and artifacts in SQLite; safe for several threads and processes at once.

    One connection per instance (guarded by a lock, usable from any thread); WAL mode so
    readers never block the writer; every write is one ``BEGIN IMMEDIATE`` transaction, which
    takes the write lock up front so concurrent search workers queue instead of failing.
    A query first settles rows that :meth:`log_metrics` staged (by any process), so it sees them.
    """

    def __init__(self, path: str | Path, *, sync_to: str | Path | None = None,
                 staging: str | Path | None = None, busy_timeout: float = 30.0,
                 verbose: bool = True) -> None:
        """``sync_to``: the workspace copy that :meth:`sync` refreshes (``staging``: a local
        folder to write it through). Use :meth:`open_for_workspace` rather than passing these."""
        self.path = Path(path)
        self.sync_to = Path(sync_to) if sync_to is not None else None
        self.staging = Path(staging) if staging is not None else None
        self.verbose = verbose
        self.journal_mode = "memory"
        self._lock = threading.RLock()
        self._touched: dict[Any, float] = {}  # run id -> when this connection last marked it alive
        self._staged = 0  # rows this instance staged since it last settled
        memory = str(path) == ":memory:"
        if not memory:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            check_file(self.path)
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            raise ExperimentDBError(f"{self.path}: {exc}{error_hint(str(exc))}") from exc
        try:
            with self._errors():
                self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
                self._conn.execute("PRAGMA foreign_keys = ON")
                # Read-only checks first: a file that is not ours must not be changed at all.
                version = check_ours(self._conn, self.path)
                if not memory:
                    self._set_journal_mode()
            if version != SCHEMA_VERSION:
                with self._write() as conn:
                    found = upgrade(conn, self.path)
                if found and verbose:
                    print(f"Upgraded {self.path} from schema v{found} to v{SCHEMA_VERSION} "
                          f"(no data removed).")
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    # ------------------------------------------------------------------ plumbing

    def _set_journal_mode(self) -> None:
        """WAL where the file system supports it; say so loudly where it does not."""
        assert self._conn is not None
        try:
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "malformed" in str(exc) or "not a database" in str(exc):
                raise
            mode = f"unchanged ({exc})"
        self.journal_mode = str(mode).lower()
        if self.journal_mode == "wal":
            self._conn.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; never corrupt
            # A checkpoint fsyncs twice; SQLite's default (every 1,000 pages) did so every ~40-60
            # per-step log_metrics calls, which cost more than the rows (benchmarks/bench_db.py).
            self._conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
        elif self.verbose:
            print(f"Note: SQLite WAL mode is not available for {self.path} (journal mode: {mode}); "
                  f"using the rollback journal. Keep the live database on local disk.")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite's errors, reworded to say which file and what to do."""
        try:
            yield
        except (sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise  # a bug in this module, not something a person did
        except sqlite3.IntegrityError as exc:
            raise ExperimentDBError(
                f"{self.path}: {exc} - a run id that does not exist? start_run() first"
            ) from exc
        except sqlite3.DatabaseError as exc:
            text = str(exc)
            if "malformed" in text or "not a database" in text:
                raise corrupt_error(self.path, text) from exc
            raise ExperimentDBError(f"{self.path}: {text}{error_hint(text)}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ExperimentDBError(f"{self.path}: the database is closed; open a new ExperimentDB")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors():
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock, self._errors():
            return self._connection().execute(sql, params).fetchall()

    def _run_id(self, run: int | str) -> int:
        """A run id, or the newest run with that name; unknown ones are an error, not None."""
        run = run_key(run)
        if isinstance(run, str):
            rows = self._query("SELECT id FROM runs WHERE name = ? ORDER BY id DESC LIMIT 1", (run,))
        else:
            rows = self._query("SELECT id FROM runs WHERE id = ?", (run,))
        if not rows:
            raise RunNotFoundError(run, self.path)
        return rows[0][0]

    # ------------------------------------------------------------------ runs

    def start_run(self, config: Any = None, name: str | None = None, tags: Iterable[str] = (),
                  notes: str = "", study: str | None = None, parent_run_id: int | None = None,
                  resume: bool = False, resume_run_id: int | None = None,
                  world_size: int = 1) -> int:
        """Record a run (status ``running``) and return its id.

        A resumed run continues its own row, so a restarted Colab session extends its history:
        ``resume_run_id`` (the id a checkpoint remembered) or ``resume=True`` (the newest run
        with this name). The config, ``world_size`` (DDP processes) and new tags/notes are
        updated on the resumed row.

        Without either, a row of the same name (and study) left ``running`` by a process that
        is gone (killed before its first checkpoint) is taken over rather than left behind
        next to a second row; the tracker drops its metrics past the step training restarts
        from, so no step is recorded twice. ``name`` must be a safe file name (it names the
        run's folders too): see :func:`workspace.check_name`.
        """
        cfg = config_dict(config)
        name = name or cfg.get("run_name") or "run"
        try:
            check_name(name)
        except UnsafeNameError as exc:
            raise ExperimentDBError(str(exc)) from None
        tags = [tags] if isinstance(tags, str) else list(tags)
        if any(type(t) is not str for t in tags):
            raise ExperimentDBError(f"tags must be strings, got {tags!r}")
        size = None if isinstance(world_size, str) else position(world_size, "world_size")
        if type(size) is not int or size < 1:
            raise ExperimentDBError(f"world_size {world_size!r}: must be the number of processes "
                                    f"that train the run (1 without DDP)")
        existing = self._resumable(name, resume, resume_run_id)
        if existing is None and not resume and resume_run_id is None:
            existing = self._take_over(name, study)
        if existing is not None:
            with self._write() as conn:
                conn.execute("UPDATE runs SET config_json = COALESCE(?, config_json), notes = "
                             "COALESCE(?, notes), world_size = ? WHERE id = ?",
                             (dumps(cfg) if cfg else None, notes or None, size, existing))
            self.add_tags(existing, tags)
            return self.resume_run(existing)
        if parent_run_id is not None:
            parent_run_id = self._run_id(parent_run_id)
        now = time.time()
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO runs (name, status, config_json, tags, notes, created_at, updated_at,"
                " study, parent_run_id, pid, host, world_size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " ?, ?, ?)", (name, M.RUNNING, dumps(cfg), dumps(list(dict.fromkeys(tags))), notes,
                              now, now, study, parent_run_id, os.getpid(), HOST, size),
            )
            return int(cursor.lastrowid)

    def _take_over(self, name: str, study: str | None) -> int | None:
        """The newest run of this name, when its process left it ``running`` and is gone.

        Checked and claimed in one write transaction, so two restarts never claim one row."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT id, status, pid, host, updated_at FROM runs WHERE name = ? AND study IS ?"
                " ORDER BY id DESC LIMIT 1", (name, study)).fetchone()
            if row is None or row[1] != M.RUNNING or not owner_gone(*row[2:]):
                return None
            conn.execute("UPDATE runs SET pid = ?, host = ?, updated_at = ? WHERE id = ?",
                         (os.getpid(), HOST, time.time(), row[0]))
        # Always said (like the checkpoint note in _resumable): the history changes shape.
        print(f"Note: run {name!r} (id {row[0]}) was left running by a process that is gone "
              f"(stopped before its first checkpoint?); this run continues that row, and its "
              f"metrics from the steps trained again are replaced ({self.path}).")
        return int(row[0])

    def _resumable(self, name: str, resume: bool, resume_run_id: int | None) -> int | None:
        if resume_run_id is not None:
            rows = self._query("SELECT name FROM runs WHERE id = ?",
                               (position(resume_run_id, "resume_run_id"),))
            if rows and rows[0][0] == name:
                return int(resume_run_id)
            # The checkpoint outlived its database row (a wiped or replaced database): keep
            # training, but always say that the history starts again here.
            found = f"belongs to run {rows[0][0]!r}" if rows else "is not in it"
            print(f"Note: run id {resume_run_id} from the checkpoint {found} ({self.path}); "
                  f"recording {name!r} as a new run.")
            return None
        rows = self._query("SELECT id FROM runs WHERE name = ? ORDER BY id DESC LIMIT 1",
                           (name,)) if resume else []
        return rows[0][0] if rows else None

    def resume_run(self, run: int | str, discard_after_step: int | None = None) -> int:
        """Continue the same run row: status back to ``running``; ``discard_after_step``: see
        :meth:`delete_metrics_after`."""
        run_id = self._run_id(run)
        with self._write() as conn:
            conn.execute(
                "UPDATE runs SET status = ?, updated_at = ?, finished_at = NULL, pid = ?, "
                "host = ? WHERE id = ?", (M.RUNNING, time.time(), os.getpid(), HOST, run_id))
        if discard_after_step is not None:
            self.delete_metrics_after(run_id, discard_after_step)
        return run_id

    def delete_metrics_after(self, run_id: int | str, step: int) -> int:
        """Drop a run's metrics logged after ``step`` (the checkpoint a resumed loop restarts
        from): the loop logs them again, and without this they would be in the history twice."""
        run_id = self._run_id(run_id)
        with self._write() as conn:
            settle(conn)
            cursor = conn.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?",
                                  (run_id, position(step, "step")))
            return cursor.rowcount

    def finish_run(self, run_id: int | str, status: str = M.COMPLETED,
                   summary: Any = None) -> None:
        """Close a run; ``summary`` (a dict or a dataclass such as TrainingResult) is kept as JSON."""
        if status == M.RUNNING:
            raise ExperimentDBError("finish_run(status='running') makes no sense; use resume_run")
        check_status(status)
        if summary is not None and dataclasses.is_dataclass(summary):
            summary = dataclasses.asdict(summary)
        run_id = self._run_id(run_id)
        now = time.time()
        with self._write() as conn:
            settle(conn)  # a finished run's rows are all in metrics, for any SQLite tool
            conn.execute(
                "UPDATE runs SET status = ?, finished_at = ?, updated_at = ?,"
                " summary_json = COALESCE(?, summary_json) WHERE id = ?",
                (status, now, now, None if summary is None else dumps(summary), run_id))

    def set_status(self, run_id: int | str, status: str) -> None:
        if status != M.RUNNING:
            self.finish_run(run_id, status)
            return
        self.resume_run(run_id)

    def add_tags(self, run_id: int | str, tags: Iterable[str]) -> list[str]:
        """Merge tags (order kept, no duplicates); returns the run's tags afterwards."""
        new = [tags] if isinstance(tags, str) else list(tags)
        if any(type(t) is not str for t in new):
            raise ExperimentDBError(f"tags must be strings, got {new!r}")
        run_id = self._run_id(run_id)
        with self._write() as conn:  # read-modify-write under the write lock: no lost updates
            old = json.loads(conn.execute("SELECT tags FROM runs WHERE id = ?", (run_id,))
                             .fetchone()[0])
            merged = list(dict.fromkeys([*old, *new]))
            conn.execute("UPDATE runs SET tags = ?, updated_at = ? WHERE id = ?",
                         (dumps(merged), time.time(), run_id))
        return merged

    def get_run(self, run_id: int | str) -> dict[str, Any]:
        """One run as a dict with its config, tags and summary parsed; a ``running`` row whose
        process is gone says ``interrupted`` (``pid``/``host``: who wrote it last)."""
        run_id = self._run_id(run_id)
        row = self._query(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE id = ?", (run_id,))
        return run_dict(row[0])

    # ------------------------------------------------------------------ metrics

    def log_metrics(self, run_id: int, metrics: Mapping[str, Any], step: int | None = None,
                    epoch: int | None = None, wall_time: float | None = None) -> int:
        """One row per metric, all in one transaction. Epoch rows go at the step where the epoch
        ended, after that epoch's batch rows (``db_frames.wide_frame`` relies on it).

        A loop may call this once per step, so the rows are staged (``STAGED_ROWS``): committed
        like any others, into a table that a commit costs little to grow."""
        wall = time.time() if wall_time is None else float(wall_time)
        data = step_rows(run_id, metrics, step, epoch, wall)
        return self._insert(data, (data[0][0],), time.time(), stage=True) if data else 0

    def log_metrics_many(self, rows: Iterable[Sequence[Any]]) -> int:
        """Batched insert of ``(run_id, name, value, step, epoch, wall_time)`` rows in one
        transaction (``wall_time`` None = now); returns the number of rows written."""
        now = time.time()
        data = [metric_row(row, now) for row in rows]
        return self._insert(data, sorted({r[0] for r in data}), now) if data else 0

    def _insert(self, data: list[tuple], run_ids: Sequence[Any], now: float,
                stage: bool = False) -> int:
        """The rows, and their runs' ``updated_at`` (what says a run is alive), in one
        transaction; ``updated_at`` at most once every ``ALIVE_SECONDS``: a loop logging every
        step would otherwise rewrite the runs table's page with every step's rows. ``stage``:
        into metrics_staged, unless it is time to settle (then everything goes into metrics)."""
        with self._lock:
            stale = [r for r in run_ids if now - self._touched.get(r, -math.inf) >= ALIVE_SECONDS]
            stage = stage and not stale and self._staged + len(data) <= STAGED_ROWS
            with self._write() as conn:
                if not stage:
                    settle(conn)
                conn.executemany(f"INSERT INTO {'metrics_staged' if stage else 'metrics'} "
                                 f"({METRIC_FIELDS}) VALUES (?, ?, ?, ?, ?, ?)", data)
                if stale:
                    conn.execute(
                        f"UPDATE runs SET updated_at = ? WHERE id IN ({','.join('?' * len(stale))})",
                        (now, *stale))
            self._touched.update(dict.fromkeys(stale, now))
            self._staged = self._staged + len(data) if stage else 0
        return len(data)

    def _settle(self) -> None:
        """Staged rows (of any process) into metrics, where the queries and indexes see them."""
        with self._lock:
            if self._query("SELECT EXISTS (SELECT 1 FROM metrics_staged)")[0][0]:
                with self._write() as conn:
                    settle(conn)
            self._staged = 0

    def get_metrics(self, run_id: int | str, names: Iterable[str] | None = None) -> pd.DataFrame:
        """Long format (name, value, step, epoch, wall_time), in step order then logging order."""
        run_id = self._run_id(run_id)
        self._settle()
        sql = "SELECT name, value, step, epoch, wall_time FROM metrics WHERE run_id = ?"
        params: list[Any] = [run_id]
        if names is not None:
            names = [names] if isinstance(names, str) else list(names)
            sql += f" AND name IN ({','.join('?' * len(names))})"
            params += names
        return F.metrics_frame(self._query(sql + " ORDER BY step IS NULL, step, id", params))

    # ------------------------------------------------------------------ artifacts

    def log_artifact(self, run_id: int | str, kind: str, path: str | Path) -> int:
        """Record a file with its size and sha256 (read in 1 MiB chunks: checkpoints are big)."""
        run_id = self._run_id(run_id)
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            raise ExperimentDBError(f"artifact {path} is not a file; log files (archive folders first)")
        digest, size = hashlib.sha256(), 0
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO artifacts (run_id, kind, path, size, sha256, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, kind, str(path), size, digest.hexdigest(), time.time()))
            return int(cursor.lastrowid)

    # ------------------------------------------------------------------ queries

    def list_runs(self, status: str | None = None, study: str | None = None,
                  tag: str | None = None, limit: int | None = None, metric: str = M.VAL_LOSS,
                  mode: str = "min") -> pd.DataFrame:
        """One row per run, newest first, with the best ``metric`` and the last epoch.

        A ``running`` row whose process is gone is listed (and filtered) as ``interrupted``.
        The per-run numbers come from ``metrics(name, run_id, step, value, epoch)`` (each run's
        rows of one metric), so this stays fast with thousands of runs and millions of rows.
        """
        order = _order(mode)
        best_sub = ("FROM metrics WHERE name = ? AND run_id = r.id AND value BETWEEN ? AND ? "
                    f"ORDER BY value {order}, id LIMIT 1")
        sql = (
            "SELECT r.id, r.name, r.status, r.created_at, r.finished_at, r.updated_at, r.tags, "
            "r.study, r.parent_run_id, r.notes, r.world_size, "
            f"(SELECT value {best_sub}), (SELECT epoch {best_sub}), "
            "(SELECT MAX(epoch) FROM metrics WHERE name IN (?, ?) AND run_id = r.id), "
            "r.pid, r.host FROM runs r WHERE 1 = 1"
        )
        params: list[Any] = [metric, *_FINITE, metric, *_FINITE, M.TRAIN_LOSS, M.VAL_LOSS]
        # Whether a running row counts as interrupted is decided here, not in SQL: those two
        # statuses are filtered (and limited) after it.
        live = status in (M.RUNNING, M.INTERRUPTED)
        if live:
            sql += " AND r.status IN (?, ?)"
            params += [M.RUNNING, M.INTERRUPTED]
        elif status is not None:
            sql += " AND r.status = ?"
            params.append(check_status(status))
        if study is not None:
            sql += " AND r.study = ?"
            params.append(study)
        if tag is not None:
            sql += " AND instr(r.tags, ?) > 0"  # the JSON-quoted tag matches whole elements only
            params.append(json.dumps(tag))
        sql += " ORDER BY r.id DESC LIMIT ?"
        params.append(-1 if limit is None or live else int(limit))
        self._settle()
        rows = [(*r[:2], shown_status(r[2], r[-2], r[-1], r[5]), *r[3:-2])
                for r in self._query(sql, params)]
        if live:
            rows = [r for r in rows if r[2] == status][:limit]
        return F.runs_frame(rows, metric)

    def best_run(self, metric: str = M.VAL_LOSS, mode: str = "min", study: str | None = None,
                 status: str | None = None) -> dict[str, Any] | None:
        """The run with the best finite ``metric`` value (NaN/inf never win), or None; ties go
        to the lower run id, then the value logged first. One query, however many runs."""
        columns = ", ".join(f"r.{c}" for c in RUN_COLUMNS)
        sql = (f"SELECT {columns}, m.value, m.epoch, m.step FROM metrics m JOIN runs r "
               "ON r.id = m.run_id WHERE m.name = ? AND m.value BETWEEN ? AND ?")
        params: list[Any] = [metric, *_FINITE]
        if study is not None:
            sql += " AND r.study = ?"
            params.append(study)
        if status is not None:
            sql += " AND r.status = ?"
            params.append(check_status(status))
        sql += f" ORDER BY m.value {_order(mode)}, m.run_id, m.id LIMIT 1"
        self._settle()
        rows = self._query(sql, params)
        if not rows:
            return None
        *run, value, epoch, step = rows[0]
        return {**run_dict(run), "metric": metric, "best_value": value, "best_epoch": epoch,
                "best_step": step}

    def compare_runs(self, run_ids: Iterable[int | str], metric: str = M.VAL_LOSS,
                     kind: str = "epoch") -> pd.DataFrame:
        """``metric`` by epoch (or step), one column per run named after it: ``frame.plot()``.

        Runs are ids or names (the newest run of that name). One query for all of them: each
        run's rows in step order, the last one logged winning where an epoch was logged twice
        (a resumed run)."""
        keys = [run_key(r) for r in run_ids]
        if not keys:
            return F.compare_frame([], _kind(kind))
        self._settle()
        params: list[Any] = []
        for pos, key in enumerate(keys):  # (position, id, name): a name means its newest run
            params += [pos, None, key] if isinstance(key, str) else [pos, key, None]
        rows = self._query(
            f"WITH wanted(pos, id, name) AS (VALUES {', '.join(['(?, ?, ?)'] * len(keys))}), "
            "found AS (SELECT w.pos, r.id, r.name FROM wanted w JOIN runs r ON r.id = "
            "COALESCE(w.id, (SELECT MAX(id) FROM runs WHERE name = w.name))) "
            "SELECT f.pos, f.id, f.name, m.step, m.epoch, m.value FROM found f "
            "LEFT JOIN metrics m ON m.run_id = f.id AND m.name = ? "
            "ORDER BY f.pos, m.step IS NULL, m.step, m.id", [*params, metric])
        found = {row[0] for row in rows}
        missing = next((pos for pos in range(len(keys)) if pos not in found), None)
        if missing is not None:
            raise RunNotFoundError(keys[missing], self.path)
        return F.compare_frame(rows, _kind(kind))

    # ------------------------------------------------------------------ Drive copies

    @classmethod
    def open_for_workspace(cls, workspace: Workspace, verbose: bool = True,
                           **kwargs: Any) -> ExperimentDB:
        """The workspace's database, live on local disk when the workspace is on Drive.

        On a fresh Colab VM the local copy is gone but Drive still has the history: restore
        it first (a corrupt Drive copy is reported, not restored), so new runs extend the old
        history instead of replacing it at the next sync.
        """
        files = LiveSQLite.in_workspace(workspace, workspace.db_path)
        if files.live == files.kept:
            return cls(files.kept, verbose=verbose, **kwargs)
        if files.restore(check=check_file) and verbose:
            print(f"Restored the experiment history from {files.kept} to local disk "
                  f"({files.live}).")
        return cls(files.live, sync_to=files.kept, staging=files.staging, verbose=verbose,
                   **kwargs)

    def backup_to(self, dest: str | Path, staging: str | Path | None = None) -> Path:
        """A consistent copy at ``dest`` (see :func:`workspace.backup_sqlite`): a single
        self-contained file that readers see whole, old or new."""
        dest = Path(dest)
        if dest.exists() and dest.resolve() == self.path.resolve():
            raise ExperimentDBError(f"{dest} is the live database itself; back up somewhere else")
        self._settle()  # the copy's metrics table holds every row

        def copy_into(copy: sqlite3.Connection) -> None:
            with self._lock, self._errors():
                self._connection().backup(copy)

        return backup_sqlite(dest, copy_into, None if staging is None else Path(staging))

    def sync(self) -> Path | None:
        """Copy the live database to the workspace when they differ (Drive); no-op otherwise."""
        if self.sync_to is None:
            return None
        return self.backup_to(self.sync_to, staging=self.staging)

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Sync to the workspace (if any) and close; closing twice is fine."""
        with self._lock:
            if self._conn is None:
                return
            try:
                self._settle()
                self.sync()
            finally:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> ExperimentDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else self.journal_mode
        synced = f", sync_to={str(self.sync_to)!r}" if self.sync_to else ""
        return f"ExperimentDB({str(self.path)!r}{synced}; {state})"
