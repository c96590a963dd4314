"""Where a run's files live: Google Drive in Colab (so they outlive the VM), a local folder elsewhere.

Everything that writes a file the user cares about goes through :func:`atomic_write`, so a
disconnect or a crash mid-write leaves the previous version intact instead of a truncated file.
Every per-run path (checkpoints, config, results, bundle, archive) is named here, from a name
that :func:`check_name` has accepted, so no run name, form field or CLI argument can make a file
land outside the workspace. A SQLite file written while open (the experiment history, a search
study) lives on local disk and is backed up into a Drive workspace by :class:`LiveSQLite`.
Stdlib only: this module sits on the lowest floor and must import without torch or Colab.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import PersonFacing

# Module constants (not default arguments) so tests can monkeypatch them.
# Tests (and a fake google.colab) point this elsewhere; Colab itself always mounts at /content/drive.
DRIVE_MOUNT_POINT = Path(os.environ.get("TRANSFORMER_TRAINING_DRIVE_MOUNT", "/content/drive"))
DRIVE_ROOT = DRIVE_MOUNT_POINT / "MyDrive" / "TransformerTraining"
# Drive's FUSE mount uploads lazily and handles many small writes badly, so big files are
# written on the VM's local disk first and copied over in one go.
DRIVE_STAGING = Path(tempfile.gettempdir()) / "transformer-training-staging"
HOME_ENV = "TRANSFORMER_TRAINING_HOME"
LOCAL_DEFAULT = "workspace"
SUBFOLDERS = ("checkpoints", "configs", "results", "datasets")
BUNDLES = "bundles"  # results/bundles/<run>/: a run's model bundle
ARCHIVES = "archives"  # results/archives/<run>.zip
# The files a run writes to results/, by kind: results/<run><suffix>.
RESULT_SUFFIXES = {
    "dashboard": "_dashboard.png", "live": "_live.png", "metrics": "_metrics.csv",
    "batches": "_batches.csv", "notebook": "_notebook.ipynb",
}
# Every temp file starts with "." and contains this marker, so listings (checkpoint retention,
# "latest run" lookups) can skip half-written files by name alone.
TEMP_MARKER = ".tmp-"
_TEMP_RE = re.compile(r"\..+\.tmp-(\d+)-[0-9a-f]{8}")  # exactly what temp_name makes
# A temp file whose writer is gone is swept once it has not changed for this long (a writer on
# another machine sharing a Drive folder is not visible to a pid check, but it keeps writing);
# any temp file this old is swept whoever wrote it (pids are reused).
DEAD_TEMP_SECONDS = 10 * 60
STALE_TEMP_SECONDS = 24 * 3600
# The one rule for names that become file or folder names: a run name, a study name, a CLI
# argument. It starts with a letter or digit so "<name>.json" never looks like a temp file.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1-64 characters from A-Z a-z 0-9 . _ - starting with a letter or digit"


class WorkspaceError(PersonFacing, OSError):
    """A workspace folder cannot be created; the message says which and what to do instead."""


class UnsafeNameError(WorkspaceError, ValueError):
    """A name that cannot become a file or folder name inside the workspace (it would leave its
    folder, or is not a portable file name); the message says which characters are allowed."""


def check_name(name: object, what: str = "run name") -> str:
    """``name`` when it is a safe file name under :data:`NAME_RE`; otherwise UnsafeNameError.

    A whitelist, not a blacklist of "/" and "..": NUL bytes, drive letters, spaces Colab paths
    choke on and names Windows reserves all fall outside it."""
    if isinstance(name, str) and NAME_RE.fullmatch(name):
        return name
    shown = repr(name)
    if len(shown) > 80:
        shown = f"{shown[:60]}... ({len(name) if isinstance(name, str) else len(shown)} chars)"
    raise UnsafeNameError(
        f"{what} {shown} cannot name a file in the workspace: use {NAME_RULE} "
        f"(no '/', '\\', '..', spaces or control characters), e.g. 'gpt-small-2'")


def is_temp_name(name: str) -> bool:
    """True for names made by :func:`atomic_write`, which other code must never treat as data."""
    return name.startswith(".") and TEMP_MARKER in name


def temp_name(final_name: str) -> str:
    """A sibling temp name for ``final_name`` that :func:`sweep_temp_files` recognises."""
    # pid + random: two processes (a DDP rank, a second notebook) may write the same file at once.
    return f".{final_name}{TEMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (True when that cannot be told)."""
    if pid == os.getpid():
        return True
    if os.name == "nt" or pid <= 0:
        return True  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists but belongs to someone else
        return True
    return True


def _newest_mtime(path: Path) -> float:
    """A temp folder is as fresh as the newest file being written into it."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for folder, _, names in os.walk(path):
            for name in names:
                with contextlib.suppress(OSError):
                    newest = max(newest, (Path(folder) / name).lstat().st_mtime)
    return newest


def sweep_temp_files(folders: Iterable[Path], now: float | None = None) -> list[Path]:
    """Remove the temp files and folders a killed writer left in ``folders`` (not recursive).

    Only names :func:`temp_name` makes are touched, never this process's own, and only when
    their writer's pid is gone and they have not changed for ``DEAD_TEMP_SECONDS``, or when
    they are older than ``STALE_TEMP_SECONDS``. Returns what was removed."""
    now = time.time() if now is None else now
    removed = []
    for folder in folders:
        try:
            entries = list(Path(folder).iterdir())
        except OSError:
            continue
        for entry in entries:
            match = _TEMP_RE.fullmatch(entry.name)
            if match is None or int(match.group(1)) == os.getpid():
                continue
            try:
                age = now - _newest_mtime(entry)
            except OSError:
                continue  # removed meanwhile
            stale = age > STALE_TEMP_SECONDS or (
                age > DEAD_TEMP_SECONDS and not pid_alive(int(match.group(1))))
            if not stale:
                continue
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except OSError:
                continue  # another process swept it first, or it is not ours to remove
            removed.append(entry)
    return removed


def _folders(top: Path, depth: int) -> list[Path]:
    """``top`` and its (non-temp, non-link) subfolders down to ``depth`` levels."""
    found, level = [top], [top]
    for _ in range(depth):
        below = []
        for folder in level:
            with contextlib.suppress(OSError):
                below += sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()
                                and not is_temp_name(p.name))
        found += below
        level = below
    return found


def _refuse_escape(dest: Path, within: str | Path | None) -> None:
    """``dest`` must stay in the folder the caller meant: no ".." step, inside ``within``."""
    if dest.name in ("", ".", "..") or ".." in dest.parts:
        raise UnsafeNameError(
            f"Refusing to write {dest}: the path steps out of its folder with '..'. Names that "
            f"become paths must be {NAME_RULE}.")
    if within is not None and not _is_strictly_under(dest, Path(within)):
        raise UnsafeNameError(
            f"Refusing to write {dest}: it is not inside {within}, the folder it belongs in. "
            f"Names that become paths must be {NAME_RULE}.")


def _fsync_file(path: Path) -> None:
    # "rb+" because Windows refuses to fsync a read-only handle.
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable; not every OS or FUSE mount supports it, which is fine."""
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _is_under(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
    except (ValueError, OSError):
        return False
    return True


def _is_strictly_under(path: Path, parent: Path) -> bool:
    return _is_under(path, parent) and path.resolve() != parent.resolve()


def atomic_write(
    dest: str | Path, write: Callable[[Path], None], staging: str | Path | None = None
) -> Path:
    """Produce ``dest`` via ``write(tmp_path)`` so that readers see the old file or the new one.

    ``write`` must create a single file at the path it is given. With ``staging`` (a local folder,
    used when ``dest`` is on Drive) the file is written there and then copied next to ``dest``
    under a temp name (a ``dest`` inside ``staging`` skips the copy); either way the last step is one ``os.replace``. Temp files are removed on
    success and on failure, and the original exception propagates.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A staging folder that already contains dest (a local workspace's root) is no separate place.
    direct = staging is None or _is_under(dest.parent, Path(staging))
    work_dir = dest.parent if direct or staging is None else Path(staging)
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp = work_dir / temp_name(dest.name)
    final_tmp = tmp if direct else dest.parent / temp_name(dest.name)
    try:
        write(tmp)
        if not tmp.is_file():
            raise FileNotFoundError(f"the write callback did not create a file at {tmp}")
        if not direct:
            shutil.copyfile(tmp, final_tmp)
        _fsync_file(final_tmp)
        os.replace(final_tmp, dest)
        _fsync_dir(dest.parent)
    except OSError as exc:
        # A write or fsync that fails (a full disk) names no file: say which one did.
        if exc.filename is None and exc.errno is not None and exc.strerror:
            exc.filename = str(dest)
        raise
    finally:
        for leftover in {tmp, final_tmp}:
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)
    return dest


@contextlib.contextmanager
def atomic_dir(dest: str | Path, *, replace: bool = False,
               within: str | Path | None = None) -> Iterator[Path]:
    """Build a folder under a temp name next to ``dest`` and rename it into place when the
    block succeeds, so readers see the whole folder or none of it.

    ``replace=False``: if ``dest`` appeared meanwhile (another process finished the same
    content first), theirs is kept. ``replace=True``: an existing ``dest`` is swapped out, so
    ``dest`` must not step out of its folder ("..") and, with ``within``, must lie inside it:
    a name from a form or the command line must never replace someone else's folder.
    """
    dest = Path(dest)
    if replace or within is not None:
        _refuse_escape(dest, within)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / temp_name(dest.name)
    tmp.mkdir()
    try:
        yield tmp
        if replace and dest.exists():
            old = dest.parent / temp_name(dest.name)
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, dest)
            except OSError:
                if not dest.is_dir():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def in_colab() -> bool:
    """Detect Colab without importing it, so the library behaves the same everywhere else."""
    if "google.colab" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):  # no "google" package at all, or a stub without a spec
        return False


def notebook_kernel() -> object | None:
    """The IPython kernel running us (Jupyter, Colab), or None in a script or a terminal IPython.

    The only place that asks IPython where we run; ``plot_style.in_notebook`` and W&B's "can
    anyone answer a prompt" both read it. It looks in ``sys.modules`` only, so a plain script
    never pays for importing IPython."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None)


def _mount_drive() -> str | None:
    """Mount Drive; return why it failed (for the printed note) or None on success."""
    try:
        from google.colab import drive  # type: ignore[import-not-found]
    except ImportError as exc:
        return f"google.colab.drive could not be imported ({exc})"
    try:
        drive.mount(str(DRIVE_MOUNT_POINT))
    # Colab raises several unrelated types here (ValueError, MessageError, TimeoutError); any of
    # them means "no Drive", which we report and survive rather than abort the notebook.
    except Exception as exc:
        return f"mounting Google Drive failed: {type(exc).__name__}: {exc}"
    return None


@dataclass
class Workspace:
    """The folder layout one user's runs share: checkpoints, configs, results, datasets, the DB."""

    root: Path
    on_drive: bool
    staging: Path  # local scratch for files written before being copied into root
    note: str = ""  # why this place was chosen, for the one-line description

    @classmethod
    def setup(
        cls, root: str | Path | None = None, mount_drive: bool = True, verbose: bool = True,
        create: bool = True,
    ) -> Workspace:
        """Pick the workspace and create its folders; prints one line saying where and why.
        ``create=False`` only looks: the ranks of a torchrun launch other than 0, which write
        nothing (and must not sweep the temp files rank 0 is writing).

        An explicit ``root`` always wins; Drive is only mounted when it is needed (no root, or a
        root under the Drive mount point). Failing to mount is not fatal: the run goes on in a
        local folder and the printed note says so, because losing files silently is worse.
        """
        colab = in_colab()
        wants_drive = mount_drive and colab and (root is None or _is_under(Path(root), DRIVE_MOUNT_POINT))
        note = ""
        ws: Workspace | None = None
        if wants_drive:
            failure = _mount_drive()
            if failure is None:
                drive_root = Path(root) if root is not None else DRIVE_ROOT
                # One staging folder per Drive root: two workspaces in one session must never
                # share a live database or study file (the second would sync over the first).
                tag = hashlib.sha1(str(drive_root).encode()).hexdigest()[:8]
                ws = cls(root=drive_root, on_drive=True, staging=DRIVE_STAGING / tag)
            else:
                note = f"{failure}; files will be lost when the Colab session ends"
        if ws is None:
            # A Drive path that could not be mounted must not become a local folder under the
            # mount point: Colab refuses to mount over a non-empty folder later.
            if root is not None and _is_under(Path(root), DRIVE_MOUNT_POINT):
                root = None
            local_root, why = _local_root(root)
            if not note:
                if colab and not mount_drive:
                    note = "Drive mounting turned off; files will be lost when the Colab session ends"
                else:
                    note = why
            ws = cls(root=local_root, on_drive=False, staging=local_root, note=note)
        if create:
            ws._make_folders()
            ws.sweep_temp_files()
        if verbose:
            print(ws.describe())
        return ws

    def sweep_temp_files(self) -> list[Path]:
        """Remove what writers killed mid-write left in the folders the library writes into
        atomically (checkpoint folders sweep their own); see :func:`sweep_temp_files`."""
        # results/search/<study>/, datasets/uploads/ and models/gists/ are below the top.
        folders = [self.root, self.configs, self.root / "search", self.staging,
                   self.staging / "search", *_folders(self.results, 2), *_folders(self.datasets, 1),
                   *_folders(self.root / "models", 1)]
        return sweep_temp_files(list(dict.fromkeys(folders)))

    def _make_folders(self) -> None:
        folders = (self.root, *(self.root / name for name in SUBFOLDERS), self.staging)
        for folder in folders:  # refuse before creating anything: no half-made workspace
            if folder.exists() and not folder.is_dir():
                raise WorkspaceError(
                    f"Cannot create workspace folder {folder}: a file of that name is in the "
                    f"way (it was left untouched). Move it, or use another folder (--workspace "
                    f"DIR at the command line, root= for Workspace.setup) or set ${HOME_ENV}.")
        for folder in folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise WorkspaceError(
                    f"Cannot create workspace folder {folder}: {exc.strerror or exc}. "
                    f"Use another folder (--workspace DIR at the command line, root= for "
                    f"Workspace.setup) or set ${HOME_ENV}."
                ) from exc

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def db_path(self) -> Path:
        return self.root / "experiments.db"

    # Every path named after a run comes from here: check_name() first, so none can leave its
    # folder. UnsafeNameError is a ValueError too (a bad name is a bad argument).

    def run_dir(self, run_name: str, create: bool = True) -> Path:
        """checkpoints/<run>/: each run owns one folder (created unless ``create=False``)."""
        path = self.checkpoints / check_name(run_name)
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def config_file(self, run_name: str) -> Path:
        """configs/<run>.json, the config a run was started with."""
        return self.configs / f"{check_name(run_name)}.json"

    def result(self, run_name: str, kind: str) -> Path:
        """results/<run>_<kind>.<ext>: ``kind`` is one of :data:`RESULT_SUFFIXES`
        ("dashboard" -> results/<run>_dashboard.png)."""
        if kind not in RESULT_SUFFIXES:
            raise ValueError(f"kind {kind!r}: must be one of {', '.join(RESULT_SUFFIXES)}")
        return self.results / f"{check_name(run_name)}{RESULT_SUFFIXES[kind]}"

    def bundle_dir(self, run_name: str) -> Path:
        """results/bundles/<run>/, a run's exported model."""
        return self.results / BUNDLES / check_name(run_name)

    def archive(self, run_name: str) -> Path:
        """results/archives/<run>.zip."""
        return self.results / ARCHIVES / f"{check_name(run_name)}.zip"

    def path_in(self, folder: str | Path, name: str, suffix: str = "",
                what: str = "name") -> Path:
        """``<folder>/<name><suffix>`` for any other name that becomes a path (a study name,
        say): ``folder`` (relative to the root, or absolute) must be inside the workspace or its
        staging folder, and ``name`` pass :func:`check_name`."""
        base = Path(folder) if Path(folder).is_absolute() else self.root / folder
        if not (_is_under(base, self.root) or _is_under(base, self.staging)):
            raise UnsafeNameError(f"{base} is not inside the workspace {self.root}: pass one of "
                                  f"its folders (e.g. workspace.results)")
        return base / f"{check_name(name, what)}{suffix}"

    def atomic_write(self, dest: Path, write: Callable[[Path], None]) -> Path:
        """Stages through local disk when the root is on Drive; writes in place otherwise."""
        return atomic_write(dest, write, staging=self.staging)

    def describe(self) -> str:
        where = "Google Drive" if self.on_drive else "local folder"
        return f"Workspace: {self.root} ({where}{'; ' + self.note if self.note else ''})"

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True)
class LiveSQLite:
    """A SQLite file written on local disk and kept in the workspace as a copy: the experiment
    history and each search study.

    SQLite's locking on Drive's FUSE mount is unreliable (COLAB.md), so in a Drive workspace
    the file that connections open (``live``) sits in the VM's staging folder, and
    :meth:`backup` writes a consistent copy to ``kept`` after each run or trial; a fresh VM
    :meth:`restore` s it first. Off Drive, ``live`` is ``kept`` and both are no-ops.
    """

    kept: Path  # the workspace's copy, which outlives the VM
    live: Path  # the file connections open
    staging: Path | None = None  # where the copy for Drive is written before it moves there

    @classmethod
    def in_workspace(cls, workspace: Workspace, kept: Path) -> LiveSQLite:
        """``kept`` (inside the workspace) and, on Drive, the same path under its staging."""
        if not workspace.on_drive:
            return cls(kept, kept)
        live = workspace.staging / kept.relative_to(workspace.root)
        return cls(kept, live, workspace.staging)

    def restore(self, check: Callable[[Path], None] | None = None) -> bool:
        """Copy the kept file to local disk before anything opens it, when the local one is
        gone (a fresh VM): new rows then extend the old ones instead of replacing them at the
        next backup. ``check`` may refuse the kept file first. True when this call restored it.

        The copy takes its final name with a hard link, never a rename: a process that restored
        it a moment earlier (several search workers on a fresh VM) may already be writing to
        it, and a rename would swap the file from under it."""
        if self.live == self.kept or self.live.exists():
            return False
        if not self.kept.exists() or self.kept.stat().st_size == 0:
            return False
        if check is not None:
            check(self.kept)
        self.live.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.live.with_name(temp_name(self.live.name))
        try:
            shutil.copyfile(self.kept, tmp)
            os.link(tmp, self.live)
        except FileExistsError:
            return False  # another process restored it a moment ago: use that copy
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def backup(self, source: Callable[[sqlite3.Connection], None] | None = None) -> Path | None:
        """Refresh the kept copy (None when ``live`` is ``kept``); see :func:`backup_sqlite`."""
        if self.live == self.kept:
            return None
        return backup_sqlite(self.kept, self.live if source is None else source, self.staging)

    @contextlib.contextmanager
    def creation_lock(self) -> Iterator[None]:
        """Serialise creating the file's tables: two processes doing it at once can crash
        (FACTS.md). The lock file sits next to the live (local) file, where locks work.
        ``fcntl`` exists on Linux and macOS (Colab included); elsewhere nothing is locked."""
        try:
            import fcntl
        except ImportError:
            yield
            return
        self.live.parent.mkdir(parents=True, exist_ok=True)
        with open(self.live.with_suffix(".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def backup_sqlite(dest: Path, source: Path | Callable[[sqlite3.Connection], None],
                  staging: Path | None = None) -> Path:
    """A consistent copy of a SQLite database at ``dest``, even while others write to it.

    SQLite's backup API, then one rename: readers of ``dest`` see the old copy or the new one.
    ``source`` is the database's path, or a function that backs an open connection up into the
    copy it is given (a caller that holds its own connection and lock). The copy is a single
    self-contained file (rollback journal, no -wal file to go missing)."""
    def write(tmp: Path) -> None:
        copy = sqlite3.connect(str(tmp))
        try:
            if callable(source):
                source(copy)
            else:
                conn = sqlite3.connect(str(source), timeout=60)
                try:
                    conn.backup(copy)
                finally:
                    conn.close()
            copy.execute("PRAGMA journal_mode = DELETE")
        finally:
            copy.close()

    return atomic_write(dest, write, staging=staging)


def _local_root(root: str | Path | None) -> tuple[Path, str]:
    """Resolve the local folder and say where the choice came from."""
    if root is not None:
        return Path(root).expanduser().resolve(), "root given"
    env = os.environ.get(HOME_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve(), f"from ${HOME_ENV}"
    return (Path.cwd() / LOCAL_DEFAULT).resolve(), "Google Drive not available"
