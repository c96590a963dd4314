"""Bad inputs, catalogued: every case raises the library's own exception (or, at the command
line, exits non-zero with one clear line), says what is wrong and how to fix it, and leaves
every file under the test's folder exactly as it was: nothing lost, nothing changed, nothing
written outside the workspace.

A case is a function that prepares files under ``tmp_path`` and returns what to run: a
zero-argument callable (library cases) or an argv list (CLI cases). Register it with
``@refuses(...)`` or ``@cli_refuses(...)`` under your area's section below; the helpers at the
top know nothing about any area.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from utils.training import metric_names as M
from utils.training.__main__ import main
from utils.training.experiment_db import ExperimentDB, ExperimentDBError
from utils.training.workspace import UnsafeNameError, Workspace, WorkspaceError, atomic_dir

# ============================================================================ generic helpers


@dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[[Path, pytest.MonkeyPatch], Any]
    expected: type[BaseException] | int  # an exception type, or a CLI exit code
    says: tuple[str, ...]  # substrings of the message: the problem, and the fix


LIBRARY: list[Case] = []
CLI: list[Case] = []
DEGRADES: list[Case] = []


def refuses(error: type[BaseException], *says: str, id: str | None = None) -> Callable:
    """Register a library case: ``setup(tmp_path, monkeypatch)`` returns a callable that must
    raise ``error`` with every one of ``says`` in its message."""
    def register(setup: Callable) -> Callable:
        LIBRARY.append(Case(id or setup.__name__, setup, error, says))
        return setup
    return register


def cli_refuses(code: int, *says: str, id: str | None = None) -> Callable:
    """Register a CLI case: ``setup(tmp_path, monkeypatch)`` returns the argv; ``main`` must
    return ``code`` and print ``says`` to stderr ("error: ..."), without a traceback."""
    def register(setup: Callable) -> Callable:
        CLI.append(Case(id or setup.__name__, setup, code, says))
        return setup
    return register


def degrades(*says: str, id: str | None = None) -> Callable:
    """Register a case of something optional that is missing (a key, a package, the network):
    ``setup(tmp_path, monkeypatch)`` returns a callable that must *not* raise (it may assert on
    what it got back) and must print every one of ``says``: what is off, why, and how to turn
    it on. Degrading loudly, never crashing, and never silently."""
    def register(setup: Callable) -> Callable:
        DEGRADES.append(Case(id or setup.__name__, setup, 0, says))
        return setup
    return register


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: its SHA-256 (files) or "dir".

    SQLite's ``-shm`` files are left out: they are its shared-memory scratch, rewritten by any
    reader and holding no data."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.name.endswith("-shm"):
            continue
        state[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def assert_unchanged(before: dict[str, str], after: dict[str, str]) -> None:
    lost = sorted(set(before) - set(after))
    added = sorted(set(after) - set(before))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert (lost, changed, added) == ([], [], []), "files lost / changed / added"


def sql(path: Path, *statements: str | tuple[str, tuple]) -> None:
    """Run statements on a SQLite file and close it (``with connect()`` would leave it open)."""
    conn = sqlite3.connect(path)
    try:
        for statement in statements:
            conn.execute(*(statement if isinstance(statement, tuple) else (statement,)))
        conn.commit()
    finally:
        conn.close()


def assert_says(message: str, says: tuple[str, ...]) -> None:
    missing = [s for s in says if s.lower() not in message.lower()]
    assert not missing, f"message lacks {missing}:\n{message}"


@pytest.mark.parametrize("case", LIBRARY, ids=lambda c: c.id)
def test_library_refuses_bad_input(case: Case, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    act = case.setup(tmp_path, monkeypatch)
    before = snapshot(tmp_path)
    with pytest.raises(BaseException) as info:
        act()
    assert type(info.value) is case.expected or isinstance(info.value, case.expected), (
        f"raised {type(info.value).__name__}: {info.value}")
    assert_says(str(info.value), case.says)
    assert_unchanged(before, snapshot(tmp_path))


@pytest.mark.parametrize("case", CLI, ids=lambda c: c.id)
def test_cli_refuses_bad_input(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    argv = case.setup(tmp_path, monkeypatch)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main([str(a) for a in argv]) == case.expected
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert_says(err, case.says)
    assert_unchanged(before, snapshot(tmp_path))


@pytest.mark.parametrize("case", DEGRADES, ids=lambda c: c.id)
def test_optional_things_degrade_loudly(case: Case, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    act = case.setup(tmp_path, monkeypatch)
    before = snapshot(tmp_path)
    capsys.readouterr()
    act()
    assert_says(capsys.readouterr().out, case.says)
    assert_unchanged(before, snapshot(tmp_path))


# ============================================================ experiment database (db files)
# experiment_db.py, db_schema.py: a file that is not a whole database is reported, and kept
# exactly as it was (with its -wal), so that following the advice never loses a row.

MOVE_TOGETHER = "together with experiments.db-wal"


def make_db(path: Path, rows: int = 10, name: str = "r") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with ExperimentDB(path, verbose=False) as db:
        run_id = db.start_run({"run_name": name, "pad": "x" * 2000})
        for epoch in (1, 2):
            db.log_metrics(run_id, {M.TRAIN_LOSS: 2.0 / epoch, M.VAL_LOSS: 2.1 / epoch},
                           step=epoch * 10, epoch=epoch)
        db.log_metrics_many([(run_id, f"m{i}", float(i), i, None, None) for i in range(rows)])
        db.finish_run(run_id)
    return path


def db_with_wal(folder: Path, rows: int) -> Path:
    """The main file as the last checkpoint left it, and a -wal with the rows since (what a kill
    or a full disk leaves)."""
    live = ExperimentDB(folder / "live" / "experiments.db", verbose=False)
    live._conn.execute("PRAGMA wal_autocheckpoint = 0")
    run_id = live.start_run({"run_name": "r"})
    live.log_metrics_many([(run_id, "m", float(i), i, None, None) for i in range(rows)])
    live._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # most rows in the main file
    live.log_metrics_many([(run_id, "m", float(i), i, None, None) for i in range(rows, rows + 50)])
    crashed = folder / "ws"
    crashed.mkdir(parents=True)
    for name in ("experiments.db", "experiments.db-wal"):
        (crashed / name).write_bytes((folder / "live" / name).read_bytes())
    live.close()
    for leftover in (folder / "live").iterdir():
        leftover.unlink()
    (folder / "live").rmdir()
    return crashed / "experiments.db"


@refuses(ExperimentDBError, "experiments.db is a folder", "Rename or move the folder")
def db_path_is_a_directory(tmp_path, monkeypatch):
    (tmp_path / "ws" / "experiments.db").mkdir(parents=True)
    (tmp_path / "ws" / "experiments.db" / "notes.txt").write_text("mine")
    return lambda: ExperimentDB(tmp_path / "ws" / "experiments.db", verbose=False)


@refuses(ExperimentDBError, "not a readable experiment database", "SQLite header",
         "left untouched", "move experiments.db into a new folder", "experiments.db-wal and "
         "experiments.db-shm", "keep the names")
def db_is_random_bytes(tmp_path, monkeypatch):
    path = tmp_path / "ws" / "experiments.db"
    path.parent.mkdir()
    path.write_bytes(bytes(range(256)) * 40)
    return lambda: ExperimentDB(path, verbose=False)


@refuses(ExperimentDBError, "truncated", "left untouched", "move experiments.db into a new folder",
         "restore a good copy")
def db_is_truncated(tmp_path, monkeypatch):
    path = make_db(tmp_path / "ws" / "experiments.db", rows=3000)
    path.write_bytes(path.read_bytes()[:8192])
    return lambda: ExperimentDB(path, verbose=False)


@refuses(ExperimentDBError, "truncated", "cannot rebuild it from experiments.db-wal",
         MOVE_TOGETHER, "keep the names unchanged")
def db_truncated_beyond_what_its_wal_holds(tmp_path, monkeypatch):
    path = db_with_wal(tmp_path, rows=3000)
    path.write_bytes(path.read_bytes()[:4096])
    return lambda: ExperimentDB(path, verbose=False)


@refuses(ExperimentDBError, "is empty", "experiments.db-wal", "SQLite would discard",
         "Put the database file it belongs to back")
def db_empty_next_to_its_wal(tmp_path, monkeypatch):
    path = db_with_wal(tmp_path, rows=100)
    path.write_bytes(b"")
    return lambda: ExperimentDB(path, verbose=False)


@refuses(ExperimentDBError, "is missing", "experiments.db-wal", "into a folder of its own")
def db_moved_away_without_its_wal(tmp_path, monkeypatch):
    path = db_with_wal(tmp_path, rows=100)
    path.rename(tmp_path / "experiments.db.corrupt")  # what the old advice said to do
    return lambda: ExperimentDB(path, verbose=False)


@refuses(ExperimentDBError, "newer version", "update utils/training", "left untouched")
def db_from_a_newer_version(tmp_path, monkeypatch):
    path = make_db(tmp_path / "ws" / "experiments.db")
    sql(path, "PRAGMA user_version = 99")
    return lambda: ExperimentDB(path, verbose=False)


@refuses(ExperimentDBError, "not an experiment database", "tables: trials", "pass another path")
def db_is_someone_elses_sqlite_file(tmp_path, monkeypatch):
    path = tmp_path / "ws" / "experiments.db"
    path.parent.mkdir()
    sql(path, "CREATE TABLE trials (id INTEGER)")
    return lambda: ExperimentDB(path, verbose=False)


@refuses(ExperimentDBError, "experiments.db", "locked", "another notebook tab",
         "python -m utils.training", "Wait for it to finish", "another workspace")
def db_locked_by_another_writer(tmp_path, monkeypatch):
    path = make_db(tmp_path / "ws" / "experiments.db")

    def act():
        other = sqlite3.connect(path, isolation_level=None)  # another tab, mid-transaction
        other.execute("BEGIN IMMEDIATE")
        try:
            with ExperimentDB(path, verbose=False, busy_timeout=0.1) as db:
                db.start_run({"run_name": "second"})
        finally:
            other.execute("ROLLBACK")
            other.close()
    return act


@refuses(ExperimentDBError, "experiments.db", "readonly", "read-only", "another workspace")
def db_read_only(tmp_path, monkeypatch):
    path = make_db(tmp_path / "ws" / "experiments.db")
    sql(path, "PRAGMA journal_mode = DELETE")  # as a backup copy is: no -wal beside it
    real = sqlite3.connect

    def read_only(database, *args, **kwargs):  # what a read-only file or mount gives
        if kwargs.get("uri"):
            return real(database, *args, **kwargs)
        return real(f"{Path(database).resolve().as_uri()}?mode=ro", *args, uri=True, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", read_only)

    def act():
        with ExperimentDB(path, verbose=False) as db:
            db.start_run({"run_name": "new"})
    return act


@refuses(ExperimentDBError, "experiments.db", "full", "Free some space", "rows written so far")
def db_disk_full(tmp_path, monkeypatch):
    path = make_db(tmp_path / "ws" / "experiments.db")

    def act():
        with ExperimentDB(path, verbose=False) as db:
            pages = db._query("PRAGMA page_count")[0][0]
            db._query(f"PRAGMA max_page_count = {pages + 1}")  # SQLite's own "disk is full"
            db.log_metrics_many([(1, "m", 1.0, i, None, None) for i in range(5000)])
    return act


# ------------------------------------------------------------- run names (workspace, the DB)
# A name from a form, the CLI or an old database must never name a path outside its folder.

UNSAFE_NAMES = {"dotdot": "../x", "deep-dotdot": "../../../outside/x", "absolute": "/abs",
                "slash": "a/b", "backslash": "a\\b", "nul": "a\x00b", "long": "x" * 300,
                "dot": ".", "hidden": ".hidden", "space": "my run", "drive-letter": "C:evil"}
ALLOWED = "A-Z a-z 0-9 . _ -"


def _start_run_with(name: str) -> Callable:
    def setup(tmp_path, monkeypatch):
        path = make_db(tmp_path / "ws" / "experiments.db")

        def act():
            with ExperimentDB(path, verbose=False) as db:
                db.start_run({"run_name": "ok"}, name=name)
        return act
    return setup


for _id, _name in UNSAFE_NAMES.items():
    refuses(ExperimentDBError, "cannot name a file", ALLOWED, id=f"db-run-name-{_id}")(
        _start_run_with(_name))


def _workspace(tmp_path: Path) -> Workspace:
    return Workspace.setup(tmp_path / "ws", mount_drive=False, verbose=False)


_PATHS: dict[str, Callable[[Workspace, Any], Path]] = {
    "run-dir": lambda ws, n: ws.run_dir(n),
    "dashboard": lambda ws, n: ws.result(n, "dashboard"),
    "metrics-csv": lambda ws, n: ws.result(n, "metrics"),
    "config-file": lambda ws, n: ws.config_file(n),
    "bundle": lambda ws, n: ws.bundle_dir(n),
    "archive": lambda ws, n: ws.archive(n),
    "study": lambda ws, n: ws.path_in("search", n, ".db", what="study name"),
}
for _kind, _name in {"run-dir": "../x", "dashboard": "../../../outside/x", "metrics-csv": "",
                     "config-file": "a/b", "bundle": "/abs", "archive": "a\x00b",
                     "study": "x" * 65}.items():
    refuses(UnsafeNameError, "cannot name a file", ALLOWED, id=f"workspace-{_kind}")(
        lambda tmp_path, monkeypatch, k=_kind, n=_name: (
            lambda ws=_workspace(tmp_path): _PATHS[k](ws, n)))  # noqa: B008 (set up, then act)


@refuses(UnsafeNameError, "not inside the workspace")
def workspace_folder_outside_it(tmp_path, monkeypatch):
    ws = _workspace(tmp_path)
    return lambda: ws.path_in(tmp_path / "elsewhere", "ok")


@refuses(UnsafeNameError, "Refusing to write", "'..'", ALLOWED)
def atomic_dir_replace_outside_its_folder(tmp_path, monkeypatch):
    ws = _workspace(tmp_path)
    (tmp_path / "outside" / "x").mkdir(parents=True)
    (tmp_path / "outside" / "x" / "theirs.txt").write_text("keep")
    dest = ws.results / "bundles" / ".." / ".." / ".." / "outside" / "x"

    def act():
        with atomic_dir(dest, replace=True) as tmp:
            (tmp / "weights").write_text("ours")
    return act


# ----------------------------------------------------------------------- workspace paths


@refuses(WorkspaceError, "Cannot create workspace folder", "--workspace DIR", "root=")
def workspace_root_is_a_file(tmp_path, monkeypatch):
    (tmp_path / "ws").write_text("a file, not a folder")
    return lambda: Workspace.setup(tmp_path / "ws", mount_drive=False, verbose=False)


@refuses(WorkspaceError, "Cannot create workspace folder", "results", "--workspace DIR")
def workspace_subfolder_is_a_file(tmp_path, monkeypatch):
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "results").write_text("a file where results/ belongs")
    return lambda: Workspace.setup(tmp_path / "ws", mount_drive=False, verbose=False)


# ---------------------------------------------------------------- command line (__main__.py)
# Each argv runs against a workspace prepared as a person would have it; the CLI must name
# itself (`python -m utils.training runs`), not the Python API, in its advice.

TINY = ["run_name=cli", "data_source=synthetic", "vocab_size=16", "synthetic_tokens=6000",
        "n_layers=1", "n_heads=2", "d_model=32", "block_size=16", "batch_size=8", "epochs=1",
        "precision=fp32", "sample_tokens=0"]


def sets(*pairs: str) -> list[str]:
    return [arg for pair in (*TINY, *pairs) for arg in ("--set", pair)]


def workspace_with_runs(tmp_path: Path, names: tuple[str, ...] = ("alpha",)) -> Path:
    """A set-up workspace whose database holds one finished run per name (names put in with
    SQL, so an unsafe one is possible, as in a database an older version wrote)."""
    ws = _workspace(tmp_path).root
    for run_id, name in enumerate(names, start=1):
        make_db(ws / "experiments.db", name=f"placeholder{run_id}")
        sql(ws / "experiments.db", ("UPDATE runs SET name = ? WHERE id = ?", (name, run_id)))
    return ws


@cli_refuses(2, "no run named 'nope'", "python -m utils.training runs")
def cli_dashboard_unknown_run(tmp_path, monkeypatch):
    ws = workspace_with_runs(tmp_path)
    return ["dashboard", "nope", "--workspace", ws]


@cli_refuses(2, "no run named '7'", "python -m utils.training runs")
def cli_dashboard_unknown_id(tmp_path, monkeypatch):
    ws = workspace_with_runs(tmp_path)
    return ["dashboard", "7", "--workspace", ws]


@cli_refuses(2, "no run named '-1'", "python -m utils.training runs")
def cli_dashboard_bad_id(tmp_path, monkeypatch):
    ws = workspace_with_runs(tmp_path)
    return ["dashboard", "-1", "--workspace", ws]


@cli_refuses(2, "cannot name a file", ALLOWED, "--output")
def cli_dashboard_of_a_run_with_an_unsafe_name(tmp_path, monkeypatch):
    (tmp_path / "outside").mkdir()
    ws = workspace_with_runs(tmp_path, ("../../outside/x",))
    return ["dashboard", "1", "--workspace", ws]


@cli_refuses(2, "cannot name a file", ALLOWED)
def cli_export_outside_the_workspace(tmp_path, monkeypatch):
    (tmp_path / "outside" / "x").mkdir(parents=True)
    (tmp_path / "outside" / "x" / "theirs.txt").write_text("keep")
    ws = workspace_with_runs(tmp_path)
    return ["export", "../../outside/x", "--workspace", ws]


@cli_refuses(2, "cannot name a file", ALLOWED)
def cli_export_absolute_path(tmp_path, monkeypatch):
    ws = workspace_with_runs(tmp_path)
    return ["export", str(tmp_path / "elsewhere"), "--workspace", ws]


@cli_refuses(2, "study name '../../outside/s'", "cannot name a file", ALLOWED)
def cli_search_study_outside_the_workspace(tmp_path, monkeypatch):
    (tmp_path / "outside").mkdir()
    ws = workspace_with_runs(tmp_path)
    return ["search", "--study", "../../outside/s", "--trials", "1", "--workspace", ws]


@cli_refuses(2, "expected key=value", "learning_rate=3e-4")
def cli_set_without_equals(tmp_path, monkeypatch):
    return ["train", "--workspace", tmp_path / "ws", *sets("epochs")]


@cli_refuses(2, "unknown config field", "epochs")
def cli_set_unknown_field(tmp_path, monkeypatch):
    return ["train", "--workspace", tmp_path / "ws", *sets("epocs=3")]


@cli_refuses(2, "epochs")
def cli_set_bad_value(tmp_path, monkeypatch):
    return ["train", "--workspace", tmp_path / "ws", *sets("epochs=many")]


@cli_refuses(2, "run_name", "A-Z a-z 0-9 . _ -")
def cli_set_unsafe_run_name(tmp_path, monkeypatch):
    (tmp_path / "outside").mkdir()
    return ["train", "--workspace", tmp_path / "ws", *sets("run_name=../outside/x")]


@cli_refuses(2, "missing.json", "file not found")
def cli_config_file_missing(tmp_path, monkeypatch):
    return ["train", "--config", tmp_path / "missing.json", "--workspace", tmp_path / "ws"]


@cli_refuses(2, "bad.json", "not valid JSON", "line 1")
def cli_config_file_bad_json(tmp_path, monkeypatch):
    (tmp_path / "bad.json").write_text('{"epochs": 3,,}')
    return ["train", "--config", tmp_path / "bad.json", "--workspace", tmp_path / "ws"]


@cli_refuses(2, "odd.json", "'learnig_rate': unknown config field", "learning_rate")
def cli_config_file_unknown_field(tmp_path, monkeypatch):
    (tmp_path / "odd.json").write_text(json.dumps({"learnig_rate": 0.1}))
    return ["train", "--config", tmp_path / "odd.json", "--workspace", tmp_path / "ws"]


@cli_refuses(2, "Cannot create workspace folder", "--workspace DIR")
def cli_workspace_is_a_file(tmp_path, monkeypatch):
    (tmp_path / "ws").write_text("a file")
    return ["runs", "--workspace", tmp_path / "ws"]


@cli_refuses(2, "not a readable experiment database", "move experiments.db into a new folder")
def cli_runs_on_a_corrupt_database(tmp_path, monkeypatch):
    ws = _workspace(tmp_path).root
    (ws / "experiments.db").write_bytes(b"\x00garbage" * 1000)
    return ["runs", "--workspace", ws]


@cli_refuses(2, "cannot rebuild it from experiments.db-wal", MOVE_TOGETHER)
def cli_runs_on_a_wal_pair_sqlite_cannot_read(tmp_path, monkeypatch):
    path = db_with_wal(tmp_path, rows=3000)
    path.write_bytes(path.read_bytes()[:4096])
    for name in ("checkpoints", "configs", "results", "datasets"):
        (path.parent / name).mkdir()
    return ["runs", "--workspace", path.parent]


@cli_refuses(2, "is a folder", "Rename or move the folder")
def cli_dashboard_with_a_folder_for_a_database(tmp_path, monkeypatch):
    ws = _workspace(tmp_path).root
    (ws / "experiments.db").mkdir()
    return ["dashboard", "1", "--workspace", ws]


@cli_refuses(1, "`train` failed on", "No space left on device", "disk is full", "--workspace DIR")
def cli_disk_full_when_a_run_starts(tmp_path, monkeypatch):
    import errno
    import os

    from utils.training import __main__ as cli

    ws = workspace_with_runs(tmp_path)

    def create(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(ws / "configs" / "cli.json"))

    monkeypatch.setattr(cli.TrainingSession, "create", create)
    return ["train", "--workspace", ws, "--no-progress", *sets()]


# ==================================================== checkpoints, config files, the hardware
# checkpoints.py, training_config.py, hardware.py. A damaged checkpoint is refused naming the
# file: never an IndexError from the unpickler, never silently different weights. A write that
# fails on a full disk says so and leaves no temp file. What the machine cannot do (fp16 without
# a GPU, a model or synthetic data bigger than memory) is refused before anything is allocated.


def _junk(seed: int) -> bytes:
    """Random bytes that made torch.load raise something other than its usual errors."""
    import random

    rng = random.Random(seed)
    return rng.randbytes(rng.choice([7, 64, 600]))


def _a_checkpoint(tmp_path: Path) -> tuple[Path, bytes]:
    import torch

    from utils.training.checkpoints import save_checkpoint

    torch.manual_seed(0)
    path = save_checkpoint({"model": {"w": torch.randn(64, 64)}, "progress": {"epoch": 1}},
                           tmp_path / "run" / "step-00000007.pt")
    return path, path.read_bytes()


def _loads(path: Path) -> Callable[[], Any]:
    from utils.training.checkpoints import load_checkpoint

    return lambda: load_checkpoint(path)


def _junk_case(seed: int, escaped: str) -> None:
    from utils.training.checkpoints import CheckpointError

    def setup(tmp_path, monkeypatch):
        path = tmp_path / "step-00000009.pt"
        path.write_bytes(_junk(seed))
        return _loads(path)

    refuses(CheckpointError, "step-00000009.pt", "truncated or corrupt",
            id=f"checkpoint_of_random_bytes_once_{escaped}")(setup)


for _seed, _escaped in ((47, "IndexError"), (12, "KeyError"), (53, "UnicodeDecodeError"),
                        (633, "struct_error")):
    _junk_case(_seed, _escaped)


def _checkpoint_error() -> type[BaseException]:
    from utils.training.checkpoints import CheckpointError

    return CheckpointError


@refuses(_checkpoint_error(), "step-00000007.pt", "truncated or corrupt")
def checkpoint_cut_off_half_way(tmp_path, monkeypatch):
    path, data = _a_checkpoint(tmp_path)
    path.write_bytes(data[: len(data) // 2])
    return _loads(path)


@refuses(_checkpoint_error(), "step-00000007.pt", "checksum mismatch")
def checkpoint_with_one_flipped_bit_in_its_weights(tmp_path, monkeypatch):
    path, data = _a_checkpoint(tmp_path)
    flipped = bytearray(data)
    flipped[data.index(b"archive/data/0") + 200] ^= 0x10  # inside the tensor's bytes
    path.write_bytes(bytes(flipped))
    return _loads(path)


@refuses(_checkpoint_error(), "step-00000007.pt", "truncated or corrupt")
def checkpoint_that_is_an_empty_file(tmp_path, monkeypatch):
    path = tmp_path / "step-00000007.pt"
    path.write_bytes(b"")
    return _loads(path)


@refuses(_checkpoint_error(), "not a checkpoint written by this library")
def checkpoint_from_plain_torch_save(tmp_path, monkeypatch):
    import torch

    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(3)}, path)
    return _loads(path)


@refuses(_checkpoint_error(), "evil.pt", "truncated or corrupt")
def checkpoint_whose_pickle_would_run_code(tmp_path, monkeypatch):
    import os

    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"complete": True, "format": 1, "x": Evil()}, path)
    monkeypatch.chdir(tmp_path)  # were it run, "pwned" would appear here: snapshot catches it
    return _loads(path)


@refuses(_checkpoint_error(), "disk is full", "previous checkpoint", "is intact",
         "Free some space")
def checkpoint_written_on_a_full_disk(tmp_path, monkeypatch):
    import errno
    import os

    from utils.training import checkpoints

    path, _ = _a_checkpoint(tmp_path)

    def full(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04" + b"\0" * 100)
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:  # as torch's zip writer does: its own error, the OSError as context
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos "
                               "704 vs 598") from None

    monkeypatch.setattr(checkpoints.torch, "save", full)
    manager = checkpoints.CheckpointManager(path.parent)
    return lambda: manager.save({"model": {}}, 8)


@refuses(_checkpoint_error(), "tokenizer.json", "none of its checkpoints", "backup")
def tokenizer_json_damaged_with_no_copy_in_any_checkpoint(tmp_path, monkeypatch):
    from utils.training.checkpoints import load_run_tokenizer

    path, _ = _a_checkpoint(tmp_path)  # holds no tokenizer
    (path.parent / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {')
    return lambda: load_run_tokenizer(path.parent)


def _config_error() -> type[BaseException]:
    from utils.training.training_config import ConfigError

    return ConfigError


def _validated_on(machine_kwargs: dict[str, Any], **config: Any) -> Callable[[], Any]:
    from utils.training.hardware import Machine
    from utils.training.training_config import TrainingConfig

    machine = Machine(**machine_kwargs)
    return lambda: TrainingConfig(**config).validate(machine)


CPU_16G = {"cuda": False, "model_memory": 16 << 30, "data_memory": 16 << 30}


@refuses(_config_error(), "precision = 'fp16'", "needs a CUDA GPU", "'bf16' or 'fp32'")
def config_fp16_on_a_machine_without_a_gpu(tmp_path, monkeypatch):
    return _validated_on(CPU_16G, precision="fp16")


@refuses(_config_error(), "d_model = 1048576", "TiB", "16.0 GiB", "would fit")
def config_model_far_bigger_than_memory(tmp_path, monkeypatch):
    return _validated_on(CPU_16G, d_model=2**20)


@refuses(_config_error(), "synthetic_tokens = 1000000000000", "TiB", "use at most")
def config_synthetic_data_far_bigger_than_ram(tmp_path, monkeypatch):
    return _validated_on(CPU_16G, synthetic_tokens=10**12)


@refuses(_config_error(), "Cannot save training config", "disk is full", "nothing was written")
def config_saved_on_a_full_disk(tmp_path, monkeypatch):
    import errno
    import os

    from utils.training.training_config import TrainingConfig

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    (tmp_path / "configs").mkdir()  # a workspace's, as Workspace.setup leaves it
    monkeypatch.setattr(Path, "write_text", full)
    return lambda: TrainingConfig(run_name="full").save(tmp_path / "configs")


# ======================================================================= config values
# training_config.py. validate() reports every problem at once, each with its fix, so a person
# editing a form fixes them all in one go; nothing is saved until the config is clean.


def _config(**fields: Any) -> Callable[[], Any]:
    from utils.training.training_config import TrainingConfig

    return lambda: TrainingConfig(**fields).validate()


@refuses(_config_error(), "5 problems", "learning_rate = 'fast': must be a number",
         "batch_size = 2.5: must be a whole number", "epochs = 0: must be >= 1",
         "precision = 'fp8': must be one of auto, bf16, fp16, fp32",
         "dropout = 1.0: must be >= 0 and < 1")
def config_five_problems_listed_at_once(tmp_path, monkeypatch):
    return _config(learning_rate="fast", batch_size=2.5, epochs=0, precision="fp8", dropout=1.0)


@refuses(_config_error(), "learning_rate = nan", "must be a finite number")
def config_learning_rate_not_a_number(tmp_path, monkeypatch):
    return _config(learning_rate=float("nan"))


@refuses(_config_error(), "epochs = True", "whole number", "True/False are not numbers here")
def config_true_given_for_a_number(tmp_path, monkeypatch):
    return _config(epochs=True)


@refuses(_config_error(), "compile = 'yes'", "must be True or False")
def config_string_given_for_a_checkbox(tmp_path, monkeypatch):
    return _config(compile="yes")


@refuses(_config_error(), "warmup_ratio = 0.9", "<= 0.5", "a fraction of all optimizer steps")
def config_warmup_longer_than_half_the_run(tmp_path, monkeypatch):
    return _config(warmup_ratio=0.9)


@refuses(_config_error(), "d_model = 100", "divisible by n_heads = 3", "e.g. n_heads = 2")
def config_heads_that_do_not_divide_the_width(tmp_path, monkeypatch):
    return _config(d_model=100, n_heads=3)


@refuses(_config_error(), "data_path = '  '", "required when data_source = 'local'",
         "give a file, folder or glob")
def config_local_data_without_a_path(tmp_path, monkeypatch):
    return _config(data_source="local", data_path="  ")


@refuses(_config_error(), "model_ref = ''", "required when model_source = 'gist'",
         "give a Gist id or URL")
def config_gist_model_without_a_ref(tmp_path, monkeypatch):
    return _config(model_source="gist")


@refuses(_config_error(), "model_source = 'hub'", "must be one of builtin, gist, folder")
def config_unknown_model_source(tmp_path, monkeypatch):
    return _config(model_source="hub")


@refuses(_config_error(), "tokenizer = 'sentencepiece'",
         "one of bpe, char, byte or a path to a tokenizer.json")
def config_unknown_tokenizer(tmp_path, monkeypatch):
    return _config(tokenizer="sentencepiece")


@refuses(_config_error(), "vocab_size = 100", ">= 257 for a byte-level BPE")
def config_bpe_vocabulary_smaller_than_its_bytes(tmp_path, monkeypatch):
    return _config(tokenizer="bpe", vocab_size=100, data_source="local", data_path="notes.txt")


@refuses(_config_error(), "synthetic_tokens = 1000", "too few for one validation block",
         "use at least 5130")
def config_synthetic_data_smaller_than_a_validation_block(tmp_path, monkeypatch):
    return _config(synthetic_tokens=1000, block_size=512)


@refuses(_config_error(), "resume = ''", "'auto', 'never' or the path of a checkpoint")
def config_empty_resume(tmp_path, monkeypatch):
    return _config(resume="")


@refuses(_config_error(), "run_name = '../x'", "A-Z a-z 0-9 . _ -", "start with a letter or digit")
def config_run_name_that_would_leave_the_workspace(tmp_path, monkeypatch):
    return _config(run_name="../x")


@refuses(_config_error(), "run_name = '../../outside/x'", "cannot be used as a file name",
         "A-Z a-z 0-9 . _ -")
def config_saved_under_an_unsafe_run_name(tmp_path, monkeypatch):
    from utils.training.training_config import TrainingConfig

    (tmp_path / "ws" / "configs").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    return lambda: TrainingConfig(run_name="../../outside/x").save(tmp_path / "ws" / "configs")


@refuses(_config_error(), "'epocs': unknown config field", "did you mean 'epochs'")
def config_replace_with_a_misspelt_field(tmp_path, monkeypatch):
    from utils.training.training_config import TrainingConfig

    return lambda: TrainingConfig().replace(epocs=3)


@refuses(_config_error(), "Cannot load training config", "expected a JSON object of config "
         "fields, got list")
def config_file_holding_a_list(tmp_path, monkeypatch):
    from utils.training.training_config import TrainingConfig

    (tmp_path / "run.json").write_text("[3, 4]")
    return lambda: TrainingConfig.load(tmp_path / "run.json")


@refuses(_config_error(), "mode = 'turbo'", "fast, balanced, quality")
def config_preset_of_an_unknown_mode(tmp_path, monkeypatch):
    from utils.training.training_config import TrainingConfig

    return lambda: TrainingConfig.preset("turbo")


# ======================================================================== form strings
# notebook.py: what the cells pass on from their @param forms (a dropdown's string, a --set
# value for `run-notebook`), refused before any kernel starts or any file is read.

NOTEBOOK = Path(__file__).resolve().parents[1] / "training.ipynb"


def _run_notebook_with(**values: str) -> Callable[[Path, pytest.MonkeyPatch], Callable]:
    def setup(tmp_path, monkeypatch):
        from utils.training.notebook_run import run_notebook

        return lambda: run_notebook(NOTEBOOK, values, output=tmp_path / "executed.ipynb")
    return setup


@refuses(_config_error(), "data_source = 'gdrive'",
         "choose one of huggingface, drive, upload, local, synthetic")
def form_data_choice_of_an_unknown_source(tmp_path, monkeypatch):
    from utils.training.notebook import DataChoice

    return lambda: DataChoice("gdrive")


@refuses(_config_error(), "mode = 'turbo'", "choose one of fast, balanced, quality")
def form_apply_an_unknown_mode(tmp_path, monkeypatch):
    from utils.training.notebook import apply_mode
    from utils.training.training_config import TrainingConfig

    return lambda: apply_mode(TrainingConfig(), "turbo")


for _field, _value, _says in (
        ("epochs", "many", ("epochs = 'many'", "takes a whole number", "--set epochs=0")),
        ("learning_rate", "fast", ("learning_rate = 'fast'", "takes a number",
                                   "--set learning_rate=0.001")),
        ("use_drive", "maybe", ("use_drive = 'maybe'", "true or false", "--set use_drive=true"))):
    refuses(_config_error(), "Bad --set value", *_says, id=f"form-set-{_field}-wrong-type")(
        _run_notebook_with(**{_field: _value}))

refuses(_config_error(), "Bad --set value", "epoch: no form field of that name in training.ipynb",
        id="form-set-unknown-field")(_run_notebook_with(epoch="3"))


@refuses(_config_error(), "Bad --set value", "'epochs': write --set name=value")
def form_set_without_equals(tmp_path, monkeypatch):
    from utils.training.__main__ import parse_sets

    return lambda: parse_sets(["epochs"])


# ========================================================================== data files
# data/sources.py, data/text.py: a file that holds no usable text is refused naming the file and
# what to do; the user's files are only read, and nothing is cached from a refused source.


def _data_error() -> type[BaseException]:
    from utils.training.data import DataError

    return DataError


def _loads_text(data_source: str = "local", **fields: Any) -> Callable[..., Callable]:
    """A case that loads ``fields["data_path"]`` (relative: a file under tmp_path/data)."""
    def setup(tmp_path, monkeypatch):
        from utils.training.data import load_text_data
        from utils.training.training_config import TrainingConfig

        ws = _workspace(tmp_path)
        path = fields.get("data_path", "")
        if data_source != "drive" and path and not Path(path).is_absolute():
            path = str(tmp_path / "data" / path)
        config = TrainingConfig(data_source=data_source, **{**fields, "data_path": path})
        return lambda: load_text_data(config, ws)
    return setup


def data_file(name: str, content: str | bytes) -> Callable:
    """Decorator: write tmp_path/data/<name> before the case's own setup."""
    def wrap(setup: Callable) -> Callable:
        def with_file(tmp_path, monkeypatch):
            path = tmp_path / "data" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
            return setup(tmp_path, monkeypatch)
        with_file.__name__ = setup.__name__
        return with_file
    return wrap


def _data_case(name: str, content: str | bytes | None, *says: str, id: str = "",
               **fields: Any) -> None:
    """A file ``name`` holding ``content`` (None: no file), loaded as ``fields`` say."""
    setup = _loads_text(**fields)
    if content is not None:
        setup = data_file(name, content)(setup)
    refuses(_data_error(), *says, id=f"data-{id or name.replace('.', '-')}")(setup)


_data_case("missing.txt", None, "No data found", "missing.txt", "check that it exists",
           data_path="missing.txt")
_data_case("empty.txt", "", "empty.txt is empty", "non-empty UTF-8 text", data_path="empty.txt")
_data_case("blank.txt", "  \n\n\t\n", "blank.txt is empty", "non-empty UTF-8 text",
           data_path="blank.txt")
_data_case("junk.txt", bytes(range(256)) * 40, "junk.txt looks like a binary file",
           "point data_path at text files", data_path="junk.txt")
_data_case("latin1.txt", "café au lait ".encode("latin-1") * 50, "latin1.txt is not UTF-8",
           "convert it to UTF-8", data_path="latin1.txt")
_data_case("numbers.csv", "a,b\n1,2\n3,4\n", "no text column", "columns: ['a', 'b']",
           "string column", data_path="numbers.csv")
_data_case("blank-text.csv", "id,text\n1,\n2,\n3,\n", "every row of column 'text' is empty",
           "set text_column", data_path="blank-text.csv")
_data_case("two-texts.csv", "title,body\nhello there,world wide\nfoo bar,baz qux\n",
           "several text columns ['title', 'body']", "set text_column", data_path="two-texts.csv")
_data_case("other-column.csv", "text\nhello\nworld\n", "text_column='body' is not a column",
           "its columns are ['text']", "Set text_column", data_path="other-column.csv",
           text_column="body")
_data_case("header-only.csv", "text\n", "holds no csv records", "at least one row",
           data_path="header-only.csv")
_data_case("zero-bytes.csv", "", "zero-bytes.csv is empty", "give a csv file with data",
           data_path="zero-bytes.csv")
_data_case("mixed.jsonl", '{"text": "hello world"}\n{"body": "other key"}\n{"text": "again"}\n',
           "keeps its text under different keys", "'body' in 1 rows", "rename 'body' to 'text'",
           data_path="mixed.jsonl")
_data_case("cut-off.jsonl", '{"text": "hello"}\n{"text": \n', "Cannot read", "as json",
           "Check that the file is valid json", data_path="cut-off.jsonl")
_data_case("sheet.xlsx", b"PK\x03\x04not really a workbook", ".xlsx files are not a supported "
           "format", "Use text files", data_path="sheet.xlsx")
_data_case("notes.txt", "some notes", "No data found", "*.md", "a glob such as",
           id="glob-matching-nothing", data_path="*.md")
_data_case("notes.txt", "some notes", "No data found", "[notes", "a glob such as",
           id="glob-that-is-malformed", data_path="[notes")


@refuses(_data_error(), "holds files of different kinds", "csv: b.csv; text: a.txt",
         "with a glob such as")
@data_file("both/b.csv", "text\nhello\n")
@data_file("both/a.txt", "hello")
def data_folder_of_two_kinds(tmp_path, monkeypatch):
    return _loads_text(data_path="both")(tmp_path, monkeypatch)


@refuses(_data_error(), "data_path='../outside/secret.txt' leaves the workspace",
         "'MyDrive/<folder>/<file>'", "absolute path")
def data_drive_path_leaving_the_workspace(tmp_path, monkeypatch):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("not for training " * 50)
    return _loads_text("drive", data_path="../outside/secret.txt")(tmp_path, monkeypatch)


@refuses(_data_error(), "outside Colab has no upload dialog", "set data_path to the file")
def data_upload_with_no_dialog_and_no_path(tmp_path, monkeypatch):
    return _loads_text("upload", data_path="")(tmp_path, monkeypatch)


@refuses(_data_error(), "Cannot reach the Hugging Face Hub", "'no-such/dataset'",
         "data_source='local', 'drive' or 'upload'", "'synthetic'", "HF_HUB_OFFLINE=1")
def data_hub_dataset_without_a_network(tmp_path, monkeypatch):
    import datasets

    from utils.training.data import sources

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sources, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(sources, "_in_hf_cache", lambda name: False)
    return _loads_text("huggingface", dataset_name="no-such/dataset")(tmp_path, monkeypatch)


@refuses(_data_error(), "data_source='gdrive' is not known",
         "huggingface, drive, upload, local, synthetic")
def data_unknown_source(tmp_path, monkeypatch):
    return _loads_text("gdrive")(tmp_path, monkeypatch)


# ===================================================================== tokenizer files
# data/tokenizer.py: a tokenizer.json that is not one (cut off, another JSON file, another
# library's format, or one of ours with parts missing) names the file and the choices.

TOKENIZER_FIX = "Point tokenizer at a Hugging Face tokenizer.json"


def _tokenizer_case(name: str, content: str | bytes | None, *says: str) -> None:
    def setup(tmp_path, monkeypatch):
        from utils.training.data import build_tokenizer
        from utils.training.training_config import TrainingConfig

        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content is not None:
            path.write_text(content)
        return lambda: build_tokenizer(TrainingConfig(tokenizer=str(path)), [])
    refuses(_data_error(), name, *says, TOKENIZER_FIX,
            id=f"tokenizer-{name.removesuffix('.json')}")(setup)


_tokenizer_case("cut-off.json", '{"model": {"type": "BPE", "vocab": {"a": 0,',
                "not valid JSON", "line 1")
_tokenizer_case("config.json", json.dumps({"epochs": 3, "vocab_size": 16}), 'no "model" entry')
_tokenizer_case("list.json", "[1, 2, 3]", "holds a JSON list, not an object")
_tokenizer_case("binary.json", b"\xff\xfe\x00\x01garbage", "not UTF-8 text")
_tokenizer_case("model-string.json", json.dumps({"model": "gpt2"}),
                "that this version of the tokenizers library can read")
_tokenizer_case("pre-string.json", json.dumps({"model": {"type": "BPE", "vocab": {}},
                                               "pre_tokenizer": "ByteLevel"}),
                "that this version of the tokenizers library can read")
_tokenizer_case("unknown-model.json", json.dumps({"model": {"type": "Nope"}}),
                "that this version of the tokenizers library can read")
_tokenizer_case("old-char.json", json.dumps({"type": "char"}),
                "'char' tokenizer is incomplete", "'chars' entry is missing")
_tokenizer_case("old-identity.json", json.dumps({"type": "identity", "vocab_size": "many"}),
                "'identity' tokenizer is incomplete")
_tokenizer_case("old-newer.json", json.dumps({"type": "sentencepiece"}),
                "Unknown tokenizer type 'sentencepiece'", "newer version")
_tokenizer_case("missing.json", None, "No tokenizer file at")


@refuses(_data_error(), "No tokenizer file at", TOKENIZER_FIX)
def tokenizer_path_that_is_a_folder(tmp_path, monkeypatch):
    from utils.training.data import load_tokenizer

    (tmp_path / "tok.json").mkdir()
    return lambda: load_tokenizer(tmp_path / "tok.json")


# ======================================================================= model exports
# models/export_source.py, models/exported.py: an export that cannot be read, built or trained is
# refused with where and why; a Gist's code never runs without trust; nothing is written into
# the export's folder (no __pycache__).

GOOD_MODEL = '''import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, vocab_size=16, d_model=8):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, d_model)
        self.out = nn.Linear(d_model, vocab_size)

    def forward(self, ids):
        return self.out(self.emb(ids))
'''
GOOD_CONFIG: dict[str, Any] = {"vocab_size": 16, "d_model": 8}


def _model_error() -> type[BaseException]:
    from utils.training.models import ModelLoadError

    return ModelLoadError


def export_folder(root: Path, model: str | None = GOOD_MODEL,
                  config: str | dict | None = None) -> Path:
    folder = root / "export"
    folder.mkdir()
    if model is not None:
        (folder / "model.py").write_text(model)
    config = GOOD_CONFIG if config is None else config
    if config != "":
        (folder / "config.json").write_text(config if isinstance(config, str)
                                            else json.dumps(config))
    return folder


def _loads_export(model: str | None = GOOD_MODEL, config: str | dict | None = None,
                  **kwargs: Any) -> Callable:
    def setup(tmp_path, monkeypatch):
        from utils.training.models import load_exported_model

        folder = export_folder(tmp_path, model, config)
        return lambda: load_exported_model(folder, verbose=False, **kwargs)
    return setup


refuses(_model_error(), "has no model.py", "(it holds: config.json)",
        "needs model.py and config.json side by side", id="export-folder-without-model-py")(
    _loads_export(model=None))
refuses(_model_error(), "has no config.json", "(it holds: model.py)",
        "needs model.py and config.json side by side", id="export-folder-without-config-json")(
    _loads_export(config=""))
refuses(_model_error(), "config.json is not valid JSON", "line 1",
        "Fix the file or export it again", id="export-config-json-cut-off")(
    _loads_export(config='{"vocab_size": 16,'))
refuses(_model_error(), "config.json must hold a JSON object", "not a list",
        id="export-config-json-a-list")(_loads_export(config="[16, 8]"))
refuses(_model_error(), "Running model.py failed", "model.py line 14",
        "RuntimeError: the export was cut short", "Fix model.py there", "export it again",
        id="export-model-py-raises-on-import")(
    _loads_export(GOOD_MODEL + "\nraise RuntimeError('the export was cut short')\n"))
refuses(_model_error(), "needs 'flash_attn_not_here'", "!pip install",
        "put it next to model.py", id="export-model-py-needs-a-missing-package")(
    _loads_export("import flash_attn_not_here\n" + GOOD_MODEL))
refuses(_model_error(), "syntax error on line 1", "Fix model.py, or export it again",
        id="export-model-py-syntax-error")(_loads_export("class Tiny(nn.Module:\n"))
refuses(_model_error(), "defines no nn.Module class", '"model_name"',
        id="export-model-py-without-a-module")(_loads_export("x = 1\n", {}))
refuses(_model_error(), "Empty has no parameters", "nothing to train",
        "must create its layers", id="export-model-without-parameters")(
    _loads_export("from torch import nn\n\n\nclass Empty(nn.Module):\n"
                  "    def forward(self, ids):\n        return ids.float().unsqueeze(-1)\n", {}))
refuses(_model_error(), "outputs shape [1, 1, 16]", "return logits for every position",
        id="export-model-returning-the-last-position-only")(
    _loads_export(GOOD_MODEL.replace("self.emb(ids))", "self.emb(ids))[:, -1:]")))
refuses(_model_error(), "config.json class_name = 'Big'", "defines no such class",
        "(it has: Tiny)", id="export-config-naming-a-missing-class")(
    _loads_export(config={**GOOD_CONFIG, "class_name": "Big"}))

GIST_ID = "0123456789abcdef0123456789abcdef"
GIST_REVISION = "a" * 40


@refuses(_model_error(), f"Not running the code of Gist {GIST_ID}", "sha256",
         "'trust this code' checkbox", "trust=True")
def export_gist_without_trust(tmp_path, monkeypatch):
    from utils.training.models import load_exported_model

    cached = tmp_path / "cache" / "gists" / f"{GIST_ID}-{GIST_REVISION}"  # no network needed
    cached.mkdir(parents=True)
    (cached / "model.py").write_text(GOOD_MODEL + "\nopen('pwned', 'w').close()\n")
    (cached / "config.json").write_text(json.dumps(GOOD_CONFIG))
    monkeypatch.chdir(tmp_path)  # were model.py run, "pwned" would appear here
    url = f"https://gist.github.com/someone/{GIST_ID}/{GIST_REVISION}"
    return lambda: load_exported_model(url, cache_dir=tmp_path / "cache", verbose=False)


@refuses(_model_error(), "model_source = 'gist'", "is a local folder",
         "set model_source = 'folder'")
def export_folder_given_as_a_gist(tmp_path, monkeypatch):
    from utils.training.models import model_from_config
    from utils.training.training_config import TrainingConfig

    folder = export_folder(tmp_path)
    config = TrainingConfig(model_source="gist", model_ref=str(folder))
    return lambda: model_from_config(config, vocab_size=16, verbose=False)


@refuses(_model_error(), "block_size = 64", "context of 16 tokens", "set block_size to 16")
def export_trained_beyond_its_context(tmp_path, monkeypatch):
    from utils.training.models import model_from_config
    from utils.training.training_config import TrainingConfig

    folder = export_folder(tmp_path, config={**GOOD_CONFIG, "block_size": 16})
    config = TrainingConfig(model_source="folder", model_ref=str(folder), block_size=64)
    return lambda: model_from_config(config, vocab_size=16, verbose=False)


# ================================================================================ W&B
# wandb_setup.py: no key, no package or no server never stops training: the run goes offline
# (or off) and says why and how to sync. A config W&B needs (a project) is refused up front.


class _FakeWandb(types.ModuleType):
    """The wandb package without a network: ``init`` fails with ``fail[mode]`` when given."""

    def __init__(self, **fail: str) -> None:
        super().__init__("wandb")
        self.errors = SimpleNamespace(Error=type("Error", (Exception,), {}))
        self.fail = fail
        self.modes: list[str] = []

    def Settings(self, **kwargs: Any) -> SimpleNamespace:  # noqa: N802 - the real one is a class
        return SimpleNamespace(**kwargs)

    def init(self, mode: str, settings: Any, **kwargs: Any) -> SimpleNamespace:
        self.modes.append(mode)
        if mode in self.fail:
            raise self.errors.Error(self.fail[mode])
        return SimpleNamespace(id="r1", url="https://wandb.example/r1",
                               settings=SimpleNamespace(sync_dir="/elsewhere/offline-run-1"))

    def teardown(self) -> None:
        pass


def _headless_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wandb: Any = None,
                    key: str | None = None) -> Any:
    """A kernel nobody can type into (nbclient, a job), outside Colab, with no W&B key unless
    ``key``; ``wandb`` stands in for the package (None: not installed)."""
    from utils.training import wandb_setup

    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    if key:
        monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-env"))  # a fake writes nothing there
    monkeypatch.setattr(wandb_setup, "_we_set_offline", False)
    monkeypatch.setattr(wandb_setup, "_remembered", None)
    monkeypatch.setattr(wandb_setup, "in_colab", lambda: False)
    monkeypatch.setattr(wandb_setup, "server_reachable", lambda url, timeout=3.0: True)
    kernel = SimpleNamespace(kernel=SimpleNamespace(_allow_stdin=False))
    monkeypatch.setitem(sys.modules, "IPython", SimpleNamespace(get_ipython=lambda: kernel))
    monkeypatch.setattr("getpass.getpass", lambda prompt="": pytest.fail("asked nobody"))
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    return wandb_setup


def _wandb_config(**changes: Any) -> Any:
    from utils.training.training_config import TrainingConfig

    return TrainingConfig(**{"run_name": "wb", "use_wandb": True, "wandb_project": "proj",
                             **changes})


@degrades("runs will log offline", "no API key", "cannot ask for one (nobody at the keyboard)",
          "wandb sync", "set $WANDB_API_KEY or run `wandb login`")
def wandb_cell_without_a_key_in_a_headless_kernel(tmp_path, monkeypatch):
    fake = _FakeWandb()
    wandb_setup = _headless_wandb(tmp_path, monkeypatch, fake)
    ws = _workspace(tmp_path)

    def act():
        assert wandb_setup.setup_wandb(_wandb_config(), ws) == "offline" and fake.modes == []
    return act


@degrades("logging offline", "cannot ask for one", "wandb sync /elsewhere/offline-run-1")
def wandb_run_without_a_key_in_a_headless_kernel(tmp_path, monkeypatch):
    fake = _FakeWandb(online="never asked online")
    wandb_setup = _headless_wandb(tmp_path, monkeypatch, fake)
    ws = _workspace(tmp_path)

    def act():
        run = wandb_setup.init_wandb(_wandb_config(), directory=ws.root)
        assert run.id == "r1" and fake.modes == ["offline"]
    return act


@degrades("could not start an online run", "Invalid project name 'my/project'",
          "logging offline", "wandb sync")
def wandb_project_name_the_server_refuses(tmp_path, monkeypatch):
    fake = _FakeWandb(online="Invalid project name 'my/project': cannot contain '/'")
    wandb_setup = _headless_wandb(tmp_path, monkeypatch, fake, key="k" * 40)
    ws = _workspace(tmp_path)

    def act():
        run = wandb_setup.init_wandb(_wandb_config(wandb_project="my/project"),
                                     directory=ws.root)
        assert run.id == "r1" and fake.modes == ["online", "offline"]
    return act


@degrades("offline logging failed too", "training goes on without W&B",
          "SQLite history and CSV files are unaffected")
def wandb_that_cannot_even_log_offline(tmp_path, monkeypatch):
    fake = _FakeWandb(offline="disk quota exceeded")
    wandb_setup = _headless_wandb(tmp_path, monkeypatch, fake)
    ws = _workspace(tmp_path)

    def act():
        assert isinstance(wandb_setup.init_wandb(_wandb_config(), directory=ws.root),
                          wandb_setup.DisabledRun)
    return act


@degrades("wandb package is missing", "pip install wandb", "training goes on without W&B")
def wandb_package_not_installed(tmp_path, monkeypatch):
    wandb_setup = _headless_wandb(tmp_path, monkeypatch, wandb=None)
    ws = _workspace(tmp_path)

    def act():
        run = wandb_setup.init_wandb(_wandb_config(), directory=ws.root)
        assert isinstance(run, wandb_setup.DisabledRun)
    return act


@refuses(_config_error(), "wandb_project = ''", "required when use_wandb = True",
         "give a W&B project name")
def wandb_on_without_a_project(tmp_path, monkeypatch):
    return _config(use_wandb=True, wandb_project="")


@refuses(_config_error(), "wandb_tags = ['nlp', 3]", "must be a list of strings; 3 is a int")
def wandb_tag_that_is_not_a_string(tmp_path, monkeypatch):
    return _config(wandb_tags=["nlp", 3])


# ======================================================================== search spaces
# search_space.py, search.py: a space is checked whole before the first trial, every problem
# with its fix, so a bad bound costs seconds, not trial 7 an hour later.


def _space_error() -> type[BaseException]:
    from utils.training.search_space import SearchSpaceError

    return SearchSpaceError


def _search_error() -> type[BaseException]:
    from utils.training.search import SearchError

    return SearchError


def _parses(space: Any) -> Callable:
    def setup(tmp_path, monkeypatch):
        from utils.training.search_space import parse_space
        from utils.training.training_config import TrainingConfig

        return lambda: parse_space(space, TrainingConfig())
    return setup


for _id, _space, _says in (
        ("unknown-parameter", {"learning_rat": (1e-4, 1e-2)},
         ("'learning_rat' is not a TrainingConfig field", "did you mean 'learning_rate'",
          "searchable fields")),
        ("field-it-cannot-vary", {"epochs": (1, 5)},
         ("'epochs' is a TrainingConfig field that a search cannot vary", "searchable fields")),
        ("low-above-high", {"learning_rate": (1e-2, 1e-4, "log")},
         ("low 0.01 is greater than high 0.0001", "swap them: (0.0001, 0.01, 'log')")),
        ("unknown-distribution", {"learning_rate": (1e-4, 1e-2, "logarithmic")},
         ("'log' or 'linear', not 'logarithmic'",)),
        ("distribution-as-a-dict", {"dropout": {"low": 0.0, "high": 0.2}},
         ("is not a range or a list of choices", "write (low, high)")),
        ("log-range-from-zero", {"weight_decay": (0.0, 0.1, "log")},
         ("log-scaled range needs low > 0", "or drop 'log'")),
        ("choice-of-the-wrong-type", {"batch_size": [16, "32"]},
         ("choice '32' is not allowed", "batch_size takes whole numbers")),
        ("float-bound-for-an-int", {"n_layers": (2.5, 8)},
         ("n_layers: low = 2.5 is not allowed", "takes whole numbers")),
        ("bound-the-config-rejects", {"dropout": (0.0, 1.5)},
         ("dropout = 1.5 would give an invalid config", "must be >= 0 and < 1")),
        ("no-choices", {"batch_size": []}, ("no choices given", "list at least one value")),
        ("equal-bounds", {"learning_rate": (1e-3, 1e-3)},
         ("nothing to search", "set learning_rate=0.001 on the config")),
        ("empty", {}, ("the space is empty", "give at least one field")),
        ("not-a-dict", [("learning_rate", (1e-4, 1e-2))],
         ("must be a dict of field -> range or choices, got list",)),
        ("three-problems-at-once", {"learning_rat": (1e-4, 1e-2), "dropout": (0.3, 0.1),
                                    "batch_size": []},
         ("3 problems", "did you mean 'learning_rate'", "swap them", "no choices given"))):
    refuses(_space_error(), *_says, id=f"search-space-{_id}")(_parses(_space))


@refuses(_search_error(), "n_trials = 0", "a whole number >= 1")
def search_with_no_trials(tmp_path, monkeypatch):
    from utils.training.search import run_search
    from utils.training.training_config import TrainingConfig

    ws = _workspace(tmp_path)
    return lambda: run_search(TrainingConfig(), ws, n_trials=0, verbose=False)


# ======================================================================= more command line
# The same refusals at a shell: exit 2 and one "error:" line, before a kernel starts, a file is
# read for training, or anything is written.


@cli_refuses(2, "Bad --set value", "epochs = 'many'", "takes a whole number", "--set epochs=0")
def cli_run_notebook_with_a_wrong_type(tmp_path, monkeypatch):
    return ["run-notebook", "--set", "epochs=many", "--output", tmp_path / "executed.ipynb"]


@cli_refuses(2, "epoch: no form field of that name")
def cli_run_notebook_with_an_unknown_form_field(tmp_path, monkeypatch):
    return ["run-notebook", "--set", "epoch=3", "--output", tmp_path / "executed.ipynb"]


@cli_refuses(2, "2 problems", "epochs = 0: must be >= 1", "dropout = 2.0: must be >= 0 and < 1")
def cli_train_with_two_bad_values(tmp_path, monkeypatch):
    ws = workspace_with_runs(tmp_path)
    return ["train", "--workspace", ws, "--no-progress", *sets("epochs=0", "dropout=2")]


@cli_refuses(2, "No data found", "missing.txt", "check that it exists")
def cli_train_on_a_missing_file(tmp_path, monkeypatch):
    ws = workspace_with_runs(tmp_path)
    return ["train", "--workspace", ws, "--no-progress",
            *sets("data_source=local", f"data_path={tmp_path / 'missing.txt'}")]


@cli_refuses(2, "leaves the workspace", "MyDrive/<folder>/<file>")
def cli_train_on_a_drive_path_leaving_the_workspace(tmp_path, monkeypatch):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "notes.txt").write_text("private notes " * 100)
    ws = workspace_with_runs(tmp_path)
    return ["train", "--workspace", ws, "--no-progress",
            *sets("data_source=drive", "data_path=../../outside/notes.txt")]


@cli_refuses(2, "cut-off.json", "not valid JSON", TOKENIZER_FIX)
def cli_train_with_a_cut_off_tokenizer_json(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("hello world, some text to train on. " * 200)
    (tmp_path / "cut-off.json").write_text('{"model": {"type": "BPE", "vocab": {')
    ws = workspace_with_runs(tmp_path)
    return ["train", "--workspace", ws, "--no-progress",
            *sets("data_source=local", f"data_path={tmp_path / 'notes.txt'}",
                  f"tokenizer={tmp_path / 'cut-off.json'}")]


@cli_refuses(2, "n_trials = 0", "a whole number >= 1")
def cli_search_with_no_trials(tmp_path, monkeypatch):
    ws = workspace_with_runs(tmp_path)
    return ["search", "--trials", "0", "--workspace", ws, *sets()]


def test_the_catalogue_is_big_enough() -> None:
    cases = LIBRARY + CLI + DEGRADES
    assert len(cases) >= 60
    assert len({c.id for c in cases}) == len(cases)  # ids are unique

