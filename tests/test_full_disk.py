"""A disk that fills up mid-run: the write that fails says so, nothing is lost, and once space is
freed the same command resumes and finishes exactly as if nothing had happened.

Where the machine allows it (root: ``mount -t tmpfs``) the workspace lives on a real 8 MiB file
system that is then filled with a filler file, so torch's zip writer and SQLite meet a real
ENOSPC. Elsewhere the same scenarios run on injected errors of the same shape.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import kill_resume_helpers as H
import pytest
import torch

from utils.training import checkpoints
from utils.training.__main__ import main
from utils.training.checkpoints import CheckpointManager, load_checkpoint
from utils.training.experiment_db import ExperimentDB
from utils.training.metrics_tracker import MetricsTracker

TINY = {**H.CONFIG, "run_name": "full", "checkpoint_every_minutes": 60.0, "keep_checkpoints": 3}


class RealDisk:
    """A small tmpfs; ``fill`` writes a filler file until ENOSPC, then frees ``leave`` bytes."""

    kind = "tmpfs"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self, leave: int = 0) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            chunk = b"\0" * 65536
            while True:
                try:
                    if os.write(fd, chunk) == 0:
                        break
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
        finally:
            os.close(fd)
        assert shutil.disk_usage(self.path).free <= leave + 8192

    def free(self) -> None:
        self.filler.unlink()


class InjectedDisk:
    """The same two failures without a file system to fill: torch.save's file handle raises
    ENOSPC after a few KiB (with a little ``leave``-way, only checkpoints, which are big, fail),
    and SQLite's writes raise "database or disk is full"."""

    kind = "injected"

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = path
        self.full = False
        self.leave = 0
        real_save = checkpoints.torch.save
        disk = self

        class FullHandle:
            def __init__(self, handle):
                self.handle, self.written = handle, 0

            def write(self, data):
                if self.written + len(data) > 4096:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                self.written += len(data)
                return self.handle.write(data)

            def flush(self):
                self.handle.flush()

        def save(obj, handle, *args, **kwargs):
            return real_save(obj, FullHandle(handle) if disk.full else handle, *args, **kwargs)

        class FullConnection:
            def __init__(self, conn):
                self._conn = conn

            def _check(self, sql):
                if disk.full and not disk.leave and sql.lstrip().split()[0].upper() in {
                        "INSERT", "UPDATE", "DELETE"}:
                    raise sqlite3.OperationalError("database or disk is full")

            def execute(self, sql, *args):
                self._check(sql)
                return self._conn.execute(sql, *args)

            def executemany(self, sql, *args):
                self._check(sql)
                return self._conn.executemany(sql, *args)

            def __getattr__(self, name):
                return getattr(self._conn, name)

        real_connection = ExperimentDB._connection
        monkeypatch.setattr(checkpoints.torch, "save", save)
        monkeypatch.setattr(ExperimentDB, "_connection",
                            lambda db: FullConnection(real_connection(db)))

    def fill(self, leave: int = 0) -> None:
        self.full, self.leave = True, leave

    def free(self) -> None:
        self.full = False


def _mount_tmpfs(path: Path) -> str | None:
    """Mount an 8 MiB tmpfs at ``path``; why not, or None when mounted."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None:
        return "no mount command"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    return done.stderr.strip() or "mount failed" if done.returncode else None


@pytest.fixture(params=["tmpfs", "injected"])
def disk(request, tmp_path, monkeypatch):
    path = tmp_path / "disk"
    path.mkdir()
    if request.param == "injected":
        yield InjectedDisk(path, monkeypatch)
        return
    why = _mount_tmpfs(path)
    if why:
        pytest.skip(f"no real small file system here ({why}); the injected variant runs")
    try:
        yield RealDisk(path)
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def train(tmp_path: Path, workspace: Path) -> int:
    config = tmp_path / "full.json"
    if not config.exists():
        config.write_text(json.dumps(TINY))
    return main(["train", "--config", str(config), "--workspace", str(workspace),
                 "--no-progress"])


@pytest.fixture
def straight(tmp_path):
    """The same run, on a disk with room: what the interrupted one must end up equal to."""
    torch.set_num_threads(1)
    workspace = tmp_path / "straight"
    assert train(tmp_path, workspace) == 0
    return workspace


def _assert_resumes_to_the_same_run(tmp_path, disk, ws, straight, capsys):
    run_dir = ws / "checkpoints" / "full"
    kept = CheckpointManager(run_dir).files()
    assert kept and load_checkpoint(kept[0].path)["progress"]["epoch"] == 1  # intact, loads
    assert not [p for p in run_dir.iterdir() if ".tmp-" in p.name]  # no half-written file
    with sqlite3.connect(ws / "experiments.db") as conn:  # the database is whole
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    disk.free()
    capsys.readouterr()
    assert train(tmp_path, ws) == 0, capsys.readouterr().err
    assert "resuming from epoch 2" in capsys.readouterr().out
    run = TINY["run_name"]
    mine = CheckpointManager(run_dir).latest()[1]["model"]
    theirs = CheckpointManager(straight / "checkpoints" / run).latest()[1]["model"]
    H.assert_same_weights(mine, theirs)
    H.assert_every_row_once(ws, straight, run=run)
    assert H.temp_files(ws) == []


def test_a_checkpoint_write_on_a_full_disk_then_resume(tmp_path, disk, straight, capsys,
                                                       monkeypatch):
    real_save = CheckpointManager.save
    calls = []

    def save_on_a_filling_disk(self, state, step):
        calls.append(step)
        if len(calls) == 2:  # the end of epoch 2: the disk has just filled up
            disk.fill(leave=64 * 1024)  # room for the database's last rows, not a checkpoint
        return real_save(self, state, step)

    monkeypatch.setattr(CheckpointManager, "save", save_on_a_filling_disk)
    ws = disk.path / "ws"
    assert train(tmp_path, ws) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Could not write checkpoint" in err
    assert "the disk is full" in err and "step-00000042.pt is intact" in err, err
    monkeypatch.setattr(CheckpointManager, "save", real_save)
    _assert_resumes_to_the_same_run(tmp_path, disk, ws, straight, capsys)


def test_a_database_write_on_a_full_disk_then_resume(tmp_path, disk, straight, capsys,
                                                     monkeypatch):
    real_log_epoch = MetricsTracker.log_epoch

    def log_epoch_on_a_full_disk(self, metrics):
        if metrics.get("epoch") == 2:
            disk.fill()
        return real_log_epoch(self, metrics)

    monkeypatch.setattr(MetricsTracker, "log_epoch", log_epoch_on_a_full_disk)
    ws = disk.path / "ws"
    assert train(tmp_path, ws) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "experiments.db" in err
    assert "disk is full" in err, err
    monkeypatch.setattr(MetricsTracker, "log_epoch", real_log_epoch)
    _assert_resumes_to_the_same_run(tmp_path, disk, ws, straight, capsys)
