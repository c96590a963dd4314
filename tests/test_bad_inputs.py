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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
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
         "left untouched", "move experiments.db into a new folder", "-wal")
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


@refuses(_checkpoint_error(), "disk is full", "previous checkpoint", "is intact")
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


def test_the_catalogue_is_big_enough() -> None:
    assert len(LIBRARY) + len(CLI) >= 30
    assert len({c.id for c in LIBRARY + CLI}) == len(LIBRARY) + len(CLI)  # ids are unique

