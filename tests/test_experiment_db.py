"""ExperimentDB: round-trips, NaN/inf, migrations, several processes, corrupt files, Drive copies."""

from __future__ import annotations

import ast
import hashlib
import math
import multiprocessing
import os
import random
import shutil
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from utils.training import db_schema
from utils.training import metric_names as M
from utils.training.db_frames import wide_frame
from utils.training.db_schema import SCHEMA_VERSION
from utils.training.experiment_db import ExperimentDB, ExperimentDBError
from utils.training.metrics_tracker import MetricsTracker
from utils.training.training_config import TrainingConfig
from utils.training.workspace import Workspace

NAN, INF = math.nan, math.inf


@pytest.fixture
def db(tmp_path):
    with ExperimentDB(tmp_path / "experiments.db", verbose=False) as database:
        yield database


def log_epochs(db: ExperimentDB, run_id: int, val_losses: list[float]) -> None:
    """Epoch rows as the tracker writes them: train/val loss at the step where the epoch ended."""
    for epoch, val in enumerate(val_losses, start=1):
        db.log_metrics(run_id, {M.TRAIN_LOSS: val + 0.1, M.VAL_LOSS: val},
                       step=epoch * 10, epoch=epoch)


# ---------------------------------------------------------------------- runs, metrics, artifacts
def test_run_round_trip_with_training_config(db):
    config = TrainingConfig(run_name="tiny", learning_rate=1e-3, wandb_tags=["a"])
    run_id = db.start_run(config, tags=("baseline", "cpu"), notes="first try")
    run = db.get_run(run_id)
    assert run["name"] == "tiny"  # defaults to the config's run_name
    assert run["config"] == config.to_dict()
    assert TrainingConfig.from_dict(run["config"]) == config
    assert run["tags"] == ["baseline", "cpu"] and run["notes"] == "first try"
    assert run["status"] == "running" and run["finished_at"] is None and run["summary"] is None
    db.finish_run(run_id, "early_stopped", summary={"best_val_loss": 1.25, "worst": NAN})
    run = db.get_run(run_id)
    assert run["status"] == "early_stopped" and run["finished_at"] >= run["created_at"]
    assert run["summary"]["best_val_loss"] == 1.25 and math.isnan(run["summary"]["worst"])
    assert db.get_run("tiny")["id"] == run_id  # a name finds the newest run with it


def test_metrics_round_trip_keeps_nan_and_infinities(tmp_path):
    values = [1.5, NAN, INF, -INF, 0.0, np.float32(2.5), 7]
    path = tmp_path / "experiments.db"
    with ExperimentDB(path, verbose=False) as db:
        run_id = db.start_run({"run_name": "odd"})
        for step, value in enumerate(values):
            db.log_metrics(run_id, {M.VAL_LOSS: value}, step=np.int64(step), epoch=step)
    with ExperimentDB(path, verbose=False) as db:  # survives closing and reopening
        frame = db.get_metrics(run_id)
    assert list(frame.columns) == ["name", "value", "step", "epoch", "wall_time"]
    assert frame["step"].tolist() == list(range(len(values)))
    got = frame["value"].tolist()
    assert got[0] == 1.5 and math.isnan(got[1]) and got[2] == INF and got[3] == -INF
    assert got[4:] == [0.0, 2.5, 7.0]


def test_bad_metric_values_raise_and_write_nothing(db):
    run_id = db.start_run({"run_name": "r"})
    for bad in (None, "1.0", object()):
        with pytest.raises(ExperimentDBError, match="not a number"):
            db.log_metrics(run_id, {"ok": 1.0, M.VAL_LOSS: bad}, step=1)
    with pytest.raises(ExperimentDBError, match="does not exist"):
        db.log_metrics_many([(run_id, "a", 1.0, 1, None, None), (run_id + 99, "a", 1.0, 1, None, None)])
    with pytest.raises(ExperimentDBError, match="each row must be"):
        db.log_metrics_many([(run_id, "a", 1.0)])
    assert db.get_metrics(run_id).empty  # each call is one transaction: all rows or none


def test_log_metrics_many_and_get_metrics_order_and_filter(db):
    run_id = db.start_run({"run_name": "r"})
    rows = [(run_id, M.BATCH_LOSS, 3.0 - s / 10, s, None, 1000.0 + s) for s in (3, 1, 2)]
    rows.append((run_id, M.LEARNING_RATE, 1e-3, 1, None, None))
    assert db.log_metrics_many(rows) == 4
    frame = db.get_metrics(run_id, names=[M.BATCH_LOSS])
    assert frame["step"].tolist() == [1, 2, 3] and frame["wall_time"].tolist() == [1001, 1002, 1003]
    assert db.get_metrics(run_id, names=M.LEARNING_RATE)["value"].tolist() == [1e-3]
    with pytest.raises(ExperimentDBError, match="no run with id 999"):
        db.get_metrics(999)


def test_artifact_records_size_and_sha256(db, tmp_path):
    run_id = db.start_run({"run_name": "r"})
    data = random.Random(0).randbytes(3 * (1 << 20) + 17)  # several read chunks
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    db.log_artifact(run_id, "checkpoint", path)
    art = dict(zip(("kind", "path", "size", "sha256"), db._query(
        "SELECT kind, path, size, sha256 FROM artifacts WHERE run_id = ?", (run_id,))[0]))
    assert art["kind"] == "checkpoint" and art["path"] == str(path.resolve())
    assert art["size"] == len(data) and art["sha256"] == hashlib.sha256(data).hexdigest()
    with pytest.raises(ExperimentDBError, match="not a file"):
        db.log_artifact(run_id, "checkpoint", tmp_path / "missing.pt")


def test_tags_and_status(db):
    run_id = db.start_run({"run_name": "r"}, tags="one")  # a lone string is one tag, not letters
    assert db.add_tags(run_id, ["two", "one"]) == ["one", "two"]
    db.set_status(run_id, "diverged")
    assert db.get_run(run_id)["status"] == "diverged" and db.get_run(run_id)["finished_at"]
    db.set_status(run_id, "running")
    assert db.get_run(run_id)["finished_at"] is None
    with pytest.raises(ExperimentDBError, match="must be one of"):
        db.set_status(run_id, "done")


def test_resume_continues_the_same_row(db):
    run_id = db.start_run({"run_name": "long", "epochs": 3}, tags=["a"])
    db.log_metrics_many([(run_id, M.BATCH_LOSS, 2.0, s, None, None) for s in range(1, 31)])
    db.finish_run(run_id, "interrupted")
    again = db.start_run({"run_name": "long", "epochs": 6}, tags=["b"], resume=True)
    assert again == run_id and len(db.list_runs()) == 1
    run = db.get_run(run_id)
    assert run["status"] == "running" and run["finished_at"] is None
    assert run["config"]["epochs"] == 6 and run["tags"] == ["a", "b"]
    assert len(db.get_metrics(run_id)) == 30  # the history before the restart is kept

    # The checkpoint was at step 20: steps 21..30 are about to be logged again.
    assert db.resume_run("long", discard_after_step=25) == run_id
    assert db.delete_metrics_after(run_id, 20) == 5
    assert db.get_metrics(run_id)["step"].max() == 20
    assert db.start_run({"run_name": "other"}, resume=True) != run_id  # nothing to resume: new


def test_resume_by_the_id_a_checkpoint_remembered(db, capsys):
    run_id = db.start_run({"run_name": "ckpt"})
    db.finish_run(run_id, "interrupted")
    assert db.start_run({"run_name": "ckpt"}, resume_run_id=run_id) == run_id
    assert db.get_run(run_id)["status"] == "running"
    # The id is not (or no longer) this run's: a new row, and a note saying so.
    fresh = db.start_run({"run_name": "other"}, resume_run_id=run_id)
    assert fresh != run_id and "belongs to run 'ckpt'" in capsys.readouterr().out
    assert db.start_run({"run_name": "ckpt"}, resume_run_id=999) not in (run_id, fresh)
    assert "is not in it" in capsys.readouterr().out


def test_world_size_is_kept_and_updated_on_resume(db):
    assert db.get_run(db.start_run({"run_name": "one"}))["world_size"] == 1  # unless told
    run_id = db.start_run({"run_name": "ddp"}, world_size=8)
    assert db.start_run({"run_name": "ddp"}, resume_run_id=run_id, world_size=np.int64(4)) == run_id
    assert db.get_run(run_id)["world_size"] == 4 and db.list_runs()["world_size"].tolist() == [4, 1]
    for bad in (0, 1.5, "2", None):
        with pytest.raises(ExperimentDBError, match="world_size"):
            db.start_run({"run_name": "x"}, world_size=bad)


def test_staged_rows_are_committed_and_read_in_logging_order(tmp_path, monkeypatch):
    monkeypatch.setattr("utils.training.experiment_db.ALIVE_SECONDS", 1e9)
    writer = ExperimentDB(tmp_path / "e.db", verbose=False)  # never closed: as if killed
    run_id = writer.start_run({"run_name": "r"})
    for step in (1, 2, 3):  # the first goes straight in (it marks the run alive); 2, 3 wait
        writer.log_metrics(run_id, {M.BATCH_LOSS: float(step)}, step=step)
    writer.log_metrics_many([(run_id, M.BATCH_LOSS, 20.0, 2, None, None)])  # settles 2, 3 first
    writer.log_metrics(run_id, {M.BATCH_LOSS: 4.0}, step=4)
    raw, staged = sqlite3.connect(tmp_path / "e.db"), "SELECT COUNT(*) FROM metrics_staged"
    assert raw.execute(staged).fetchone() == (1,)  # committed: another connection sees it
    with ExperimentDB(tmp_path / "e.db", verbose=False) as reader:  # another process
        assert reader.get_metrics(run_id)["value"].tolist() == [1, 2, 20, 3, 4]
    assert raw.execute(staged).fetchone() == (0,)
    writer.close()


# ---------------------------------------------------------------------- queries
def test_list_runs_best_value_epochs_and_filters(db):
    a = db.start_run({"run_name": "a"}, tags=["ab"], study="s1")
    log_epochs(db, a, [2.0, 1.0, NAN, 1.5])
    db.finish_run(a)
    b = db.start_run({"run_name": "b"}, tags=["a"], study="s1")
    log_epochs(db, b, [3.0, -INF, INF])
    c = db.start_run({"run_name": "c"}, parent_run_id=a)
    runs = db.list_runs()
    assert runs["id"].tolist() == [c, b, a]  # newest first
    row = runs.set_index("id").loc[a]
    assert row["best_val_loss"] == 1.0 and row["best_epoch"] == 2 and row["epochs"] == 4
    assert row["status"] == "completed" and row["duration_s"] >= 0 and row["tags"] == ["ab"]
    assert runs.set_index("id").loc[b, "best_val_loss"] == 3.0  # NaN and +-inf never win
    assert math.isnan(runs.set_index("id").loc[c, "best_val_loss"])
    assert runs.set_index("id").loc[c, "parent_run_id"] == a
    assert db.list_runs(status="completed")["id"].tolist() == [a]
    assert db.list_runs(study="s1")["id"].tolist() == [b, a]
    assert db.list_runs(tag="a")["id"].tolist() == [b]  # whole tags only: "ab" is not "a"
    assert db.list_runs(limit=1)["id"].tolist() == [c]
    assert db.list_runs(metric=M.TRAIN_LOSS, mode="max").set_index("id").loc[a, "best_train_loss"] == 2.1
    assert db.list_runs(tag="none").empty


def test_best_run_modes_and_filters(db):
    assert db.best_run() is None
    a = db.start_run({"run_name": "a"}, study="s")
    log_epochs(db, a, [2.0, 1.2, 1.4])
    b = db.start_run({"run_name": "b"})
    log_epochs(db, b, [1.1, NAN, -INF])
    best = db.best_run()
    assert best["id"] == b and best["best_value"] == 1.1 and best["best_epoch"] == 1
    assert best["config"] == {"run_name": "b"}
    assert db.best_run(study="s")["id"] == a
    assert db.best_run(M.VAL_LOSS, mode="max")["best_value"] == 2.0
    assert db.best_run(status="completed") is None
    with pytest.raises(ExperimentDBError, match="mode"):
        db.best_run(mode="lowest")


def test_compare_runs(db):
    a = db.start_run({"run_name": "x", "learning_rate": 1e-3, "epochs": 3, "seed": 1})
    log_epochs(db, a, [2.0, 1.5, 1.2])
    b = db.start_run({"run_name": "x", "learning_rate": 3e-4, "epochs": 3, "seed": 1})
    log_epochs(db, b, [2.5, 2.0])
    c = db.start_run({"run_name": "y", "learning_rate": 3e-4, "epochs": 3, "seed": 1})
    curves = db.compare_runs([a, b, c])
    assert list(curves.columns) == [f"x #{a}", f"x #{b}", "y"]  # shared names get their id
    assert curves.index.name == "epoch" and curves.index.tolist() == [1, 2, 3]
    assert curves[f"x #{a}"].tolist() == [2.0, 1.5, 1.2]
    assert math.isnan(curves[f"x #{b}"].loc[3]) and curves["y"].isna().all()


def test_wide_frames_have_the_tracker_frames_shapes(db):
    run_id = db.start_run({"run_name": "r"})
    for epoch in (1, 2):  # as MetricsTracker writes: batch rows (with their epoch), then the epoch
        steps = range(epoch * 3 - 2, epoch * 3 + 1)
        db.log_metrics_many([(run_id, name, value, s, epoch, None) for s in steps for name, value in (
            (M.BATCH_LOSS, 3 - s / 10), (M.LEARNING_RATE, s * 1e-4), (M.GRAD_NORM, 1.0),
            (M.TOKENS, 64))])
        db.log_metrics(run_id, {M.TRAIN_LOSS: 2.1 / epoch, M.VAL_LOSS: 2.0 / epoch,
                                M.LEARNING_RATE: epoch * 3e-4, "gpu/utilization": 90.0},
                       step=epoch * 3, epoch=epoch)
    db.log_metrics(run_id, {M.VAL_LOSS: 0.3}, step=6, epoch=2)  # logged again after a resume
    epochs = wide_frame(db.get_metrics(run_id), "epoch")
    assert list(epochs.columns) == [M.EPOCH, M.TRAIN_LOSS, M.VAL_LOSS, M.LEARNING_RATE,
                                    M.GRAD_NORM, "gpu/utilization"]
    assert epochs[M.EPOCH].tolist() == [1, 2] and epochs[M.VAL_LOSS].tolist() == [2.0, 0.3]
    assert epochs[M.LEARNING_RATE].tolist() == [3e-4, 6e-4]
    steps = wide_frame(db.get_metrics(run_id), "step")
    assert list(steps.columns) == [M.STEP, M.EPOCH, M.BATCH_LOSS, M.LEARNING_RATE, M.GRAD_NORM,
                                   M.TOKENS]
    assert steps[M.STEP].tolist() == list(range(1, 7))
    assert steps[M.EPOCH].tolist() == [1, 1, 1, 2, 2, 2] and steps[M.TOKENS].eq(64).all()
    empty = wide_frame(db.get_metrics(db.start_run({"run_name": "empty"})), "epoch")
    assert empty.empty and list(empty.columns) == [M.EPOCH]


# ---------------------------------------------------------------------- schema and files
V1_SCHEMA = """
CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL,
    config_json TEXT NOT NULL DEFAULT '{}', tags TEXT NOT NULL DEFAULT '[]', notes TEXT NOT NULL
    DEFAULT '', created_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL,
    summary_json TEXT);
CREATE TABLE metrics (id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id) ON
    DELETE CASCADE, name TEXT NOT NULL, value REAL, step INTEGER, epoch INTEGER, wall_time REAL
    NOT NULL);
CREATE TABLE artifacts (id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs(id) ON
    DELETE CASCADE, kind TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT
    NOT NULL, created_at REAL NOT NULL);
CREATE INDEX runs_name ON runs(name); CREATE INDEX artifacts_run ON artifacts(run_id);
CREATE INDEX metrics_run_name_step ON metrics(run_id, name, step);
CREATE INDEX metrics_name_run_value ON metrics(name, run_id, value, epoch);
PRAGMA user_version = 1;
INSERT INTO runs VALUES (1, 'old', 'completed', '{"run_name": "old", "epochs": 2}', '["v1"]',
    'from last year', 100.0, 150.0, 160.0, '{"best": 1.5}');
INSERT INTO metrics (run_id, name, value, step, epoch, wall_time) VALUES (1, 'val/loss', 2.0, 10,
    1, 110.0), (1, 'val/loss', 1.5, 20, 2, 120.0), (1, 'val/loss', NULL, 30, 3, 130.0);
INSERT INTO artifacts (run_id, kind, path, size, sha256, created_at)
    VALUES (1, 'checkpoint', '/x/step-20.pt', 123, 'abc', 125.0);
"""


def schema_of(path: Path) -> dict[str, list]:
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        shape = {t: sorted(r[1:3] for r in conn.execute(f"PRAGMA table_info({t})")) for t in tables}
        shape["indexes"] = sorted(r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='index'"))
        shape["version"] = conn.execute("PRAGMA user_version").fetchone()[0]
    return shape


def test_migrates_a_v1_database_without_losing_anything(tmp_path, capsys):
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:
        conn.executescript(V1_SCHEMA)
    with ExperimentDB(old) as db:
        assert f"from schema v1 to v{SCHEMA_VERSION}" in capsys.readouterr().out
        run = db.get_run(1)
        assert (run["name"], run["status"], run["tags"], run["notes"]) == (
            "old", "completed", ["v1"], "from last year")
        assert run["config"] == {"run_name": "old", "epochs": 2} and run["summary"] == {"best": 1.5}
        assert run["study"] is None and run["parent_run_id"] is None  # the new columns
        assert run["pid"] is None and run["host"] is None
        assert run["world_size"] == 1 and db.list_runs().loc[0, "world_size"] == 1  # v5's default
        values = db.get_metrics(1)["value"].tolist()
        assert values[:2] == [2.0, 1.5] and math.isnan(values[2])
        assert [r[0] for r in db._query("SELECT sha256 FROM artifacts WHERE run_id = 1")] == ["abc"]
        assert db.list_runs().loc[0, "best_val_loss"] == 1.5
        new = db.start_run({"run_name": "new"}, study="search", parent_run_id=1)
        assert db.list_runs(study="search")["id"].tolist() == [new]
    with ExperimentDB(tmp_path / "fresh.db", verbose=False):
        pass
    assert schema_of(old) == schema_of(tmp_path / "fresh.db")  # upgraded == built fresh
    assert schema_of(old)["version"] == SCHEMA_VERSION


@pytest.mark.parametrize("damage", ["random", "truncated", "newer", "foreign"])
def test_unusable_file_raises_and_is_left_untouched(tmp_path, damage):
    path = tmp_path / "experiments.db"
    if damage == "random":
        path.write_bytes(random.Random(0).randbytes(8192))
    elif damage == "truncated":
        with ExperimentDB(path, verbose=False) as db:
            run_id = db.start_run({"run_name": "r", "pad": "x" * 5000})
            db.log_metrics_many([(run_id, f"m{i}", float(i), i, None, None) for i in range(3000)])
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE trials (id INTEGER)")
            if damage == "newer":
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = path.read_bytes()
    expected = {"random": "not a readable", "truncated": "truncated", "newer": "newer version",
                "foreign": "not an experiment database"}[damage]
    with pytest.raises(ExperimentDBError, match=expected) as info:
        ExperimentDB(path, verbose=False)
    assert str(path) in str(info.value) and "left untouched" in str(info.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiments.db"]


def test_wal_mode_and_the_fallback_note(tmp_path, monkeypatch, capsys):
    with ExperimentDB(tmp_path / "a.db") as db:
        assert db.journal_mode == "wal"
        assert db._query("PRAGMA foreign_keys") == [(1,)]
        assert db._query("PRAGMA busy_timeout") == [(30000,)]

    class NoWal(sqlite3.Connection):  # what a network file system answers
        def execute(self, sql, *args):
            if sql == "PRAGMA journal_mode = WAL":
                sql = "PRAGMA journal_mode"
            return super().execute(sql, *args)

    real_connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: real_connect(*a, factory=NoWal, **k))
    with ExperimentDB(tmp_path / "b.db") as db:
        assert db.journal_mode == "delete"
        assert "WAL mode is not available" in capsys.readouterr().out
        db.log_metrics(db.start_run({"run_name": "r"}), {"a": 1.0}, step=1)


def test_closed_database_says_so(tmp_path):
    db = ExperimentDB(tmp_path / "x.db", verbose=False)
    db.close()
    db.close()  # twice is fine
    with pytest.raises(ExperimentDBError, match="closed"):
        db.start_run({"run_name": "r"})


def wal_pair(tmp_path: Path, rows: int, cut: bool) -> Path:
    """The files a full disk (or a kill) during the database's life leaves: the main file as
    the last checkpoint left it plus a big -wal holding every row since. ``cut``: a checkpoint
    was cut short after it wrote page 1, so the main file's header promises pages it lacks."""
    live = ExperimentDB(tmp_path / "live" / "experiments.db", verbose=False)
    live._conn.execute("PRAGMA wal_autocheckpoint = 0")  # no checkpoint could run
    run_id = live.start_run({"run_name": "kept", "pad": "x" * 3000})
    live.log_metrics_many([(run_id, M.BATCH_LOSS, float(i), i, 1, None) for i in range(rows)])
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for name in ("experiments.db", "experiments.db-wal"):  # what the disk holds at the crash
        shutil.copyfile(tmp_path / "live" / name, crashed / name)
    live.close()
    if cut:
        wal = (crashed / "experiments.db-wal").read_bytes()
        page = struct.unpack(">I", wal[8:12])[0]
        frames = [wal[o:o + 24 + page] for o in range(32, len(wal) - page, 24 + page)]
        page_1 = [f[24:] for f in frames if struct.unpack(">I", f[:4])[0] == 1][-1]
        main = crashed / "experiments.db"
        main.write_bytes(page_1 + main.read_bytes()[page:])
    return crashed / "experiments.db"


@pytest.mark.parametrize("cut", [False, True], ids=["full-disk", "checkpoint-cut-short"])
def test_a_database_with_its_wal_opens_with_every_row(tmp_path, cut):
    path = wal_pair(tmp_path, rows=3000, cut=cut)
    assert path.stat().st_size < Path(f"{path}-wal").stat().st_size  # the rows are in the log
    with ExperimentDB(path, verbose=False) as db:
        assert db._query("PRAGMA integrity_check") == [("ok",)]
        assert db.get_metrics("kept")["step"].tolist() == list(range(3000))
        db.log_metrics(db.start_run({"run_name": "after"}), {M.VAL_LOSS: 1.0}, step=1)
    with ExperimentDB(path, verbose=False) as db:  # and the pair became one whole file again
        assert len(db.get_metrics("kept")) == 3000 and len(db.list_runs()) == 2


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_row_left_running_by_a_killed_process_is_interrupted_and_taken_over(db, capsys):
    run_id = db.start_run({"run_name": "r", "epochs": 2}, tags=["a"])
    # The default flush: 200 steps reached the database before the kill, no checkpoint did.
    db.log_metrics_many([(run_id, M.BATCH_LOSS, 2.0, s, 1, None) for s in range(1, 201)])
    assert db.list_runs().loc[0, "status"] == "running"  # its process (this one) is alive
    with db._write() as conn:
        conn.execute("UPDATE runs SET pid = ? WHERE id = ?", (dead_pid(), run_id))
    assert db.get_run(run_id)["status"] == "interrupted"
    assert db.list_runs().loc[0, "status"] == "interrupted"
    assert db.list_runs(status="interrupted")["id"].tolist() == [run_id]
    assert db.list_runs(status="running").empty
    again = db.start_run({"run_name": "r", "epochs": 3}, tags=["b"])  # the restart
    assert again == run_id and "left running by a process that is gone" in capsys.readouterr().out
    runs = db.list_runs()
    assert runs["id"].tolist() == [run_id] and runs.loc[0, "status"] == "running"
    assert db.get_run(run_id)["config"]["epochs"] == 3 and db.get_run(run_id)["tags"] == ["a", "b"]
    assert db.get_run(run_id)["pid"] == os.getpid()

    # Training restarts from step 0 (no checkpoint): each step ends up in the history once.
    tracker = MetricsTracker(db, run_id=again, track_gpu=False, flush_every=50)
    tracker.on_train_start(SimpleNamespace(global_step=0, device=None))
    for step in range(1, 121):
        tracker.log_batch(step=step, loss=1.0, learning_rate=1e-3, grad_norm=0.5, tokens=64)
    tracker.flush()
    assert db.get_metrics(run_id, [M.BATCH_LOSS])["step"].tolist() == list(range(1, 121))


def test_only_abandoned_rows_of_the_same_run_are_taken_over(db):
    live = db.start_run({"run_name": "live"})  # this process is still writing it
    assert db.start_run({"run_name": "live"}) != live
    trial = db.start_run({"run_name": "t"}, study="s1")
    with db._write() as conn:
        conn.execute("UPDATE runs SET pid = ? WHERE id = ?", (dead_pid(), trial))
    assert db.start_run({"run_name": "t"}, study="s2") != trial  # another study's run
    done = db.start_run({"run_name": "done"})
    db.finish_run(done)
    assert db.start_run({"run_name": "done"}) != done  # a finished run is never reopened so
    # Elsewhere (another machine, or a row from before pids were kept) only time can tell.
    old, recent = db.start_run({"run_name": "far"}), db.start_run({"run_name": "near"})
    with db._write() as conn:
        conn.execute("UPDATE runs SET host = 'another-vm', updated_at = ? WHERE id = ?",
                     (time.time() - 2 * db_schema.STALE_RUN_SECONDS, old))
        conn.execute("UPDATE runs SET host = 'another-vm' WHERE id = ?", (recent,))
    statuses = db.list_runs().set_index("id")["status"]
    assert statuses[old] == "interrupted" and statuses[recent] == "running"
    assert db.start_run({"run_name": "far"}) == old
    assert db.start_run({"run_name": "near"}) != recent


def test_run_statuses_are_defined_once():
    assert db_schema.STATUSES is M.STATUSES
    root = Path(__file__).resolve().parents[1] / "utils" / "training"
    for name in ("experiment_db.py", "db_schema.py", "db_frames.py", "metrics_tracker.py",
                 "__main__.py", "workspace.py"):
        tree = ast.parse((root / name).read_text())
        literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
        assert not literals & set(M.STATUSES), f"{name}: use metric_names' status constants"


# ---------------------------------------------------------------------- concurrency
def _writer(path: str, name: str, barrier) -> None:
    with ExperimentDB(path, verbose=False) as db:
        run_id = db.start_run({"run_name": name})
        barrier.wait()
        for batch in range(100):
            db.log_metrics_many(
                [(run_id, M.BATCH_LOSS, 1.0, batch * 20 + i, None, None) for i in range(20)])
            db.add_tags(run_id, [f"b{batch % 3}"])


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_two_processes_writing_at_once_lose_no_rows(tmp_path):
    path = str(tmp_path / "experiments.db")
    ExperimentDB(path, verbose=False).close()  # created once, as the search does
    ctx = multiprocessing.get_context("fork")  # fork: the children need no fresh torch import
    barrier = ctx.Barrier(2)
    workers = [ctx.Process(target=_writer, args=(path, f"w{i}", barrier)) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    with ExperimentDB(path, verbose=False) as db:
        runs = db.list_runs()
        assert sorted(runs["name"]) == ["w0", "w1"]
        for run_id in runs["id"]:
            assert db.get_metrics(run_id)["step"].tolist() == list(range(2000))
            assert sorted(db.get_run(run_id)["tags"]) == ["b0", "b1", "b2"]


def test_one_instance_shared_by_threads(db, monkeypatch):
    monkeypatch.setattr("utils.training.experiment_db.STAGED_ROWS", 7)  # settles between threads
    run_id = db.start_run({"run_name": "threads"})

    def log(offset: int) -> None:
        for i in range(100):
            db.log_metrics(run_id, {M.BATCH_LOSS: 1.0}, step=offset + i)

    threads = [threading.Thread(target=log, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(db.get_metrics(run_id)) == 400


# ---------------------------------------------------------------------- Drive copies
def test_drive_workspace_syncs_and_restores_on_a_fresh_vm(tmp_path, capsys):
    ws = Workspace(root=tmp_path / "drive", on_drive=True, staging=tmp_path / "local")
    with ExperimentDB.open_for_workspace(ws) as db:
        assert db.path == tmp_path / "local" / "experiments.db" and db.sync_to == ws.db_path
        run_id = db.start_run({"run_name": "first"})
        log_epochs(db, run_id, [2.0, 1.0])
        assert db.sync() == ws.db_path
        with sqlite3.connect(ws.db_path) as copy:  # a single self-contained file on Drive
            assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
            assert copy.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 4
        db.finish_run(run_id)
    # close() synced the finish too; no temp files were left behind.
    assert sorted(p.name for p in ws.root.iterdir()) == ["experiments.db"]
    for leftover in (tmp_path / "local").iterdir():  # the VM is wiped
        leftover.unlink()
    with ExperimentDB.open_for_workspace(ws) as db:
        assert "Restored the experiment history" in capsys.readouterr().out
        assert db.get_run(run_id)["status"] == "completed"
        assert db.list_runs().loc[0, "best_val_loss"] == 1.0
        second = db.start_run({"run_name": "second"})
    with ExperimentDB(ws.db_path, verbose=False) as copy:
        assert copy.list_runs()["id"].tolist() == [second, run_id]  # history extended, not replaced
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == ["experiments.db"]


def test_restore_never_replaces_a_copy_another_process_restored_first(tmp_path, monkeypatch):
    ws = Workspace(root=tmp_path / "drive", on_drive=True, staging=tmp_path / "local")
    with ExperimentDB(ws.db_path, verbose=False) as drive_copy:
        drive_copy.start_run({"run_name": "old"})
    real_copy = shutil.copyfile

    def copy_while_another_worker_restores(src, dst):
        real_copy(src, dst)
        with ExperimentDB(tmp_path / "local" / "experiments.db", verbose=False) as other:
            other.start_run({"run_name": "other-worker"})  # it restored first and is writing

    monkeypatch.setattr(shutil, "copyfile", copy_while_another_worker_restores)
    with ExperimentDB.open_for_workspace(ws, verbose=False) as db:
        monkeypatch.setattr(shutil, "copyfile", real_copy)
        assert db.list_runs()["name"].tolist() == ["other-worker"]


def test_local_workspace_uses_its_file_directly(workspace, tmp_path):
    with ExperimentDB.open_for_workspace(workspace, verbose=False) as db:
        assert db.path == workspace.db_path and db.sync() is None
        db.start_run({"run_name": "r"})
        with pytest.raises(ExperimentDBError, match="live database itself"):
            db.backup_to(workspace.db_path)
        copy = db.backup_to(tmp_path / "copies" / "backup.db")
    with ExperimentDB(copy, verbose=False) as backup:
        assert backup.list_runs()["name"].tolist() == ["r"]


def test_corrupt_drive_copy_is_reported_not_restored(tmp_path):
    ws = Workspace(root=tmp_path / "drive", on_drive=True, staging=tmp_path / "local")
    ws.root.mkdir()
    ws.db_path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ExperimentDBError, match=str(ws.db_path)):
        ExperimentDB.open_for_workspace(ws, verbose=False)
    assert not (tmp_path / "local" / "experiments.db").exists()


def test_floor_3_imports_nothing_above_it():
    root = Path(__file__).resolve().parents[1] / "utils" / "training"
    for name in ("experiment_db.py", "db_schema.py", "db_frames.py"):
        tree = ast.parse((root / name).read_text())
        absolute = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                    for a in n.names}
        absolute |= {n.module.split(".")[0] for n in ast.walk(tree)
                     if isinstance(n, ast.ImportFrom) and n.level == 0}
        relative = {n.module or a.name for n in ast.walk(tree)
                    if isinstance(n, ast.ImportFrom) and n.level > 0 for a in n.names}
        assert absolute - {"__future__", "pandas"} <= set(sys.stdlib_module_names)
        assert relative <= {"metric_names", "db_schema", "db_frames", "workspace", "errors"}
