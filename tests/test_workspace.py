"""Workspace: Drive or local fallback with a printed reason; atomic_write never half-writes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from utils.training import workspace as ws_mod
from utils.training.workspace import (
    SUBFOLDERS,
    UnsafeNameError,
    Workspace,
    WorkspaceError,
    atomic_dir,
    atomic_write,
    check_name,
    is_temp_name,
    temp_name,
)


def all_names(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*"))


@pytest.fixture
def no_colab(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(ws_mod, "in_colab", lambda: False)


def fake_colab(monkeypatch: pytest.MonkeyPatch, mount) -> list[str]:
    """Install a stand-in google.colab whose drive.mount runs ``mount``; returns mount calls."""
    calls: list[str] = []

    def _mount(path: str) -> None:
        calls.append(path)
        mount(path)

    drive = types.ModuleType("google.colab.drive")
    drive.mount = _mount  # type: ignore[attr-defined]
    colab = types.ModuleType("google.colab")
    colab.drive = drive  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.drive", drive)
    return calls


def test_local_root_creates_folders_and_prints_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_colab: None
) -> None:
    ws = Workspace.setup(tmp_path / "ws")
    assert ws.root == (tmp_path / "ws").resolve() and not ws.on_drive and ws.staging == ws.root
    for name in SUBFOLDERS:
        assert (ws.root / name).is_dir()
    assert (ws.checkpoints, ws.configs, ws.results, ws.datasets) == tuple(
        ws.root / n for n in ("checkpoints", "configs", "results", "datasets"))
    assert ws.db_path == ws.root / "experiments.db" and not ws.db_path.exists()
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [ws.describe()] and "local folder" in out[0] and str(ws.root) in out[0]
    assert str(ws) == ws.describe()


def test_default_local_root_says_drive_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    no_colab: None,
) -> None:
    monkeypatch.delenv(ws_mod.HOME_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    ws = Workspace.setup()
    assert ws.root == (tmp_path / "workspace").resolve()
    assert "Google Drive not available" in capsys.readouterr().out


def test_env_variable_chooses_the_local_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    no_colab: None,
) -> None:
    monkeypatch.setenv(ws_mod.HOME_ENV, str(tmp_path / "home"))
    ws = Workspace.setup()
    assert ws.root == (tmp_path / "home").resolve() and (ws.root / "checkpoints").is_dir()
    assert ws_mod.HOME_ENV in capsys.readouterr().out


def test_verbose_false_is_silent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_colab: None
) -> None:
    Workspace.setup(tmp_path, verbose=False)
    assert capsys.readouterr().out == ""


def test_colab_mount_failure_falls_back_to_local_with_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(path: str) -> None:
        raise ValueError("mount failed: user said no")

    calls = fake_colab(monkeypatch, refuse)
    monkeypatch.setattr(ws_mod, "DRIVE_ROOT", tmp_path / "drive" / "TT")
    monkeypatch.delenv(ws_mod.HOME_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    ws = Workspace.setup()
    assert calls == [str(ws_mod.DRIVE_MOUNT_POINT)]
    assert not ws.on_drive and ws.root == (tmp_path / "workspace").resolve()
    assert (ws.root / "configs").is_dir() and not (tmp_path / "drive").exists()
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1
    assert "local folder" in out and "user said no" in out and "ValueError" in out


def test_colab_mount_success_uses_drive_root_and_local_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = fake_colab(monkeypatch, lambda path: None)
    monkeypatch.setattr(ws_mod, "DRIVE_ROOT", tmp_path / "drive" / "TT")
    monkeypatch.setattr(ws_mod, "DRIVE_STAGING", tmp_path / "staging")
    ws = Workspace.setup()
    assert len(calls) == 1 and ws.on_drive
    assert ws.root == tmp_path / "drive" / "TT" and ws.staging.parent == tmp_path / "staging"
    assert all((ws.root / n).is_dir() for n in SUBFOLDERS) and ws.staging.is_dir()
    monkeypatch.setattr(ws_mod, "DRIVE_MOUNT_POINT", tmp_path / "drive")
    other = Workspace.setup(tmp_path / "drive" / "Other", verbose=False)
    assert other.on_drive and other.staging != ws.staging  # two Drive workspaces never share live files
    assert "(Google Drive)" in capsys.readouterr().out

    dest = ws.atomic_write(ws.results / "summary.csv", lambda p: p.write_text("a,b\n"))
    assert dest.read_text() == "a,b\n"
    assert all_names(ws.staging) == [] and not any(is_temp_name(n) for n in all_names(ws.root))


def test_colab_with_mount_turned_off_stays_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = fake_colab(monkeypatch, lambda path: None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ws_mod.HOME_ENV, raising=False)
    ws = Workspace.setup(mount_drive=False)
    assert calls == [] and not ws.on_drive
    assert "turned off" in capsys.readouterr().out


def test_in_colab_detects_a_loaded_module(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_colab(monkeypatch, lambda path: None)
    assert ws_mod.in_colab()


def test_run_dir_is_created_and_refuses_path_escapes(tmp_path: Path, no_colab: None) -> None:
    ws = Workspace.setup(tmp_path, verbose=False)
    run = ws.run_dir("my-run")
    assert run == ws.checkpoints / "my-run" and run.is_dir()
    for bad in ("", "..", "a/b", "a\\b"):
        with pytest.raises(ValueError):
            ws.run_dir(bad)


def test_every_per_run_path_is_named_by_the_workspace(tmp_path: Path, no_colab: None) -> None:
    ws = Workspace.setup(tmp_path, verbose=False)
    assert ws.result("r-1", "dashboard") == ws.results / "r-1_dashboard.png"
    assert ws.result("r-1", "metrics") == ws.results / "r-1_metrics.csv"
    assert ws.result("r-1", "batches") == ws.results / "r-1_batches.csv"
    assert ws.result("r-1", "live") == ws.results / "r-1_live.png"
    assert ws.config_file("r-1") == ws.configs / "r-1.json"
    assert ws.bundle_dir("r-1") == ws.results / "bundles" / "r-1"
    assert ws.archive("r-1") == ws.results / "archives" / "r-1.zip"
    assert ws.run_dir("r-1", create=False) == ws.checkpoints / "r-1"
    assert ws.path_in("search", "study.2", ".db") == ws.root / "search" / "study.2.db"
    with pytest.raises(ValueError, match="kind 'plot'"):
        ws.result("r-1", "plot")


@pytest.mark.parametrize("bad", ["../x", "../../../outside/x", "/abs", "a/b", "a\\b", "", ".",
                                 "..", ".hidden", "a\x00b", "x" * 65, "tab\tname", "with space",
                                 "C:evil", None, 3])
def test_names_that_would_leave_their_folder_are_refused(tmp_path: Path, bad: object,
                                                          no_colab: None) -> None:
    ws = Workspace.setup(tmp_path / "ws", verbose=False)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for make in (ws.run_dir, ws.config_file, ws.bundle_dir, ws.archive,
                 lambda n: ws.result(n, "dashboard"), lambda n: ws.path_in("search", n)):
        with pytest.raises(UnsafeNameError) as info:
            make(bad)
        assert isinstance(info.value, WorkspaceError) and isinstance(info.value, ValueError)
        assert "A-Z a-z 0-9 . _ -" in str(info.value)  # says which characters are allowed
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert check_name("gpt-small_2.b") == "gpt-small_2.b"
    assert check_name("x" * 64) == "x" * 64


def test_atomic_dir_replace_refuses_a_target_outside_its_folder(tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "x"
    outside.mkdir(parents=True)
    (outside / "keep.txt").write_text("theirs")
    bundles = tmp_path / "ws" / "results" / "bundles"
    bundles.mkdir(parents=True)
    for dest, within in ((bundles / ".." / ".." / ".." / "outside" / "x", None),
                         (bundles / ".." / ".." / ".." / "outside" / "x", bundles),
                         (outside, bundles), (bundles, bundles)):
        with pytest.raises(UnsafeNameError, match="Refusing to write"), \
                atomic_dir(dest, replace=True, within=within) as tmp:
            (tmp / "evil.txt").write_text("ours")
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    assert (outside / "keep.txt").read_text() == "theirs"
    assert all_names(tmp_path / "ws") == ["bundles", "results"]
    with atomic_dir(bundles / "run", replace=True, within=bundles) as tmp:  # the normal case
        (tmp / "a.txt").write_text("1")
    assert all_names(bundles) == ["a.txt", "run"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_setup_sweeps_temp_files_that_killed_writers_left(tmp_path: Path, no_colab: None) -> None:
    ws = Workspace.setup(tmp_path / "ws", verbose=False)
    dead, now = _dead_pid(), time.time()
    hour, week = now - 3600, now - 7 * 24 * 3600

    def temp(folder: Path, final: str, pid: int, mtime: float, is_dir: bool = False) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / temp_name(final).replace(f"-{os.getpid()}-", f"-{pid}-")
        if is_dir:
            path.mkdir()
            (path / "weights.bin").write_bytes(b"x")
            os.utime(path / "weights.bin", (mtime, mtime))
        else:
            path.write_text("half")
        os.utime(path, (mtime, mtime))
        return path

    gone = [temp(ws.results, "run_metrics.csv", dead, hour),  # killed while writing results
            temp(ws.configs, "run.json", dead, hour),
            temp(ws.datasets, "abc123", dead, hour, is_dir=True),
            temp(ws.results / "bundles", "run", dead, hour, is_dir=True),
            temp(ws.results / "archives", "run.zip", dead, hour),
            temp(ws.results / "search" / "study", "history.png", dead, hour),
            temp(ws.datasets / "uploads", "text.txt", dead, hour),
            temp(ws.root, "experiments.db", dead, hour),
            temp(ws.root / "models" / "gists", "abc-1234", dead, hour, is_dir=True),
            temp(ws.results, "old.csv", os.getppid(), week)]  # pid reused long ago
    kept = [temp(ws.results, "fresh.csv", dead, now),  # maybe a writer on another machine
            temp(ws.results, "mine.csv", os.getpid(), week),  # this process is writing it
            temp(ws.results, "busy.csv", os.getppid(), hour),  # its writer is alive
            temp(ws.results, "busy", dead, now, is_dir=True),
            temp(ws.checkpoints / "run", "step-1.pt", dead, hour)]  # the checkpoint manager's
    stale_dir = kept[-2]
    os.utime(stale_dir, (hour, hour))  # an old folder still being written into is kept
    others = [ws.results / ".notes.tmp-manual", ws.results / "run.tmp-1-abcdef12",
              ws.results / "run_metrics.csv"]
    for path in others:
        path.write_text("data")
    Workspace.setup(tmp_path / "ws", verbose=False)
    assert [p for p in gone if p.exists()] == []
    assert all(p.exists() for p in kept + others)


def test_atomic_write_in_place_leaves_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "out.txt"
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_text("new")

    assert atomic_write(dest, write) == dest
    assert dest.read_text() == "new" and all_names(tmp_path) == ["out.txt", "sub"]
    assert seen[0].parent == dest.parent and is_temp_name(seen[0].name)
    assert seen[0].name.startswith(".out.txt.tmp-")


def test_atomic_write_failure_keeps_old_file_and_cleans_up(tmp_path: Path) -> None:
    dest = tmp_path / "model.pt"
    dest.write_text("old")

    def half_then_crash(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic_write(dest, half_then_crash)
    assert dest.read_text() == "old" and all_names(tmp_path) == ["model.pt"]
    with pytest.raises(FileNotFoundError, match="did not create"):
        atomic_write(tmp_path / "never.txt", lambda tmp: None)
    assert all_names(tmp_path) == ["model.pt"]


def test_atomic_write_through_staging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    staging, final_dir = tmp_path / "local-staging", tmp_path / "drive" / "ckpt"
    dest = final_dir / "epoch_1.pt"
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_bytes(b"\x00weights")

    atomic_write(dest, write, staging=staging)
    assert seen[0].parent == staging and dest.read_bytes() == b"\x00weights"
    assert all_names(staging) == [] and all_names(final_dir) == ["epoch_1.pt"]

    def boom(src: object, dst: object) -> None:
        raise OSError("drive went away")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="drive went away"):
        atomic_write(dest, lambda tmp: tmp.write_bytes(b"newer"), staging=staging)
    monkeypatch.undo()
    assert dest.read_bytes() == b"\x00weights"
    assert all_names(staging) == [] and all_names(final_dir) == ["epoch_1.pt"]


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "configs" / "run.json"
    dest.parent.mkdir()
    dest.write_text("old")

    def fsync(fd: int) -> None:  # where a full disk often shows: the error names no file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as info:
        atomic_write(dest, lambda tmp: tmp.write_text("new"))
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(dest)
    assert dest.read_text() == "old" and all_names(dest.parent) == ["run.json"]


def test_staging_that_contains_dest_writes_in_place(tmp_path: Path) -> None:
    seen: list[Path] = []
    dest = tmp_path / "checkpoints" / "run" / "last.pt"
    atomic_write(dest, lambda tmp: (seen.append(tmp), tmp.write_text("x")), staging=tmp_path)
    assert seen[0].parent == dest.parent and dest.read_text() == "x"


def test_is_temp_name() -> None:
    assert is_temp_name(".model.pt.tmp-12-abcd")
    assert not is_temp_name("model.pt") and not is_temp_name(".hidden")
