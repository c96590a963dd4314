"""Where a run's files live: Google Drive in Colab (so they outlive the VM), a local folder elsewhere.

Everything that writes a file the user cares about goes through :func:`atomic_write`, so a
disconnect or a crash mid-write leaves the previous version intact instead of a truncated file.
Stdlib only: this module sits on the lowest floor and must import without torch or Colab.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Module constants (not default arguments) so tests can monkeypatch them.
DRIVE_MOUNT_POINT = Path("/content/drive")
DRIVE_ROOT = DRIVE_MOUNT_POINT / "MyDrive" / "TransformerTraining"
# Drive's FUSE mount uploads lazily and handles many small writes badly, so big files are
# written on the VM's local disk first and copied over in one go.
DRIVE_STAGING = Path(tempfile.gettempdir()) / "transformer-training-staging"
HOME_ENV = "TRANSFORMER_TRAINING_HOME"
LOCAL_DEFAULT = "workspace"
SUBFOLDERS = ("checkpoints", "configs", "results", "datasets")
# Every temp file starts with "." and contains this marker, so listings (checkpoint retention,
# "latest run" lookups) can skip half-written files by name alone.
TEMP_MARKER = ".tmp-"


class WorkspaceError(OSError):
    """A workspace folder cannot be created; the message says which and what to do instead."""


def is_temp_name(name: str) -> bool:
    """True for names made by :func:`atomic_write`, which other code must never treat as data."""
    return name.startswith(".") and TEMP_MARKER in name


def _temp_name(final_name: str) -> str:
    # pid + random: two processes (a DDP rank, a second notebook) may write the same file at once.
    return f".{final_name}{TEMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}"


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
    tmp = work_dir / _temp_name(dest.name)
    final_tmp = tmp if direct else dest.parent / _temp_name(dest.name)
    try:
        write(tmp)
        if not tmp.is_file():
            raise FileNotFoundError(f"the write callback did not create a file at {tmp}")
        if not direct:
            shutil.copyfile(tmp, final_tmp)
        _fsync_file(final_tmp)
        os.replace(final_tmp, dest)
        _fsync_dir(dest.parent)
    finally:
        for leftover in {tmp, final_tmp}:
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)
    return dest


@contextlib.contextmanager
def atomic_dir(dest: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Build a folder under a temp name next to ``dest`` and rename it into place when the
    block succeeds, so readers see the whole folder or none of it.

    ``replace=False``: if ``dest`` appeared meanwhile (another process finished the same
    content first), theirs is kept. ``replace=True``: an existing ``dest`` is swapped out.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / _temp_name(dest.name)
    tmp.mkdir()
    try:
        yield tmp
        if replace and dest.exists():
            old = dest.parent / _temp_name(dest.name)
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
        cls, root: str | Path | None = None, mount_drive: bool = True, verbose: bool = True
    ) -> Workspace:
        """Pick the workspace and create its folders; prints one line saying where and why.

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
        ws._make_folders()
        if verbose:
            print(ws.describe())
        return ws

    def _make_folders(self) -> None:
        for folder in (self.root, *(self.root / name for name in SUBFOLDERS), self.staging):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise WorkspaceError(
                    f"Cannot create workspace folder {folder}: {exc.strerror or exc}. "
                    f"Pass another root= to Workspace.setup or set ${HOME_ENV}."
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

    def run_dir(self, run_name: str) -> Path:
        """Each run owns one folder; the name check stops a run name from escaping checkpoints/."""
        if not run_name or run_name in {".", ".."} or any(sep in run_name for sep in "/\\"):
            raise ValueError(
                f"run_name {run_name!r} cannot be a folder name: use letters, digits, '.', '_', '-'"
            )
        path = self.checkpoints / run_name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def atomic_write(self, dest: Path, write: Callable[[Path], None]) -> Path:
        """Stages through local disk when the root is on Drive; writes in place otherwise."""
        return atomic_write(dest, write, staging=self.staging)

    def describe(self) -> str:
        where = "Google Drive" if self.on_drive else "local folder"
        return f"Workspace: {self.root} ({where}{'; ' + self.note if self.note else ''})"

    def __str__(self) -> str:
        return self.describe()


def _local_root(root: str | Path | None) -> tuple[Path, str]:
    """Resolve the local folder and say where the choice came from."""
    if root is not None:
        return Path(root).expanduser().resolve(), "root given"
    env = os.environ.get(HOME_ENV, "").strip()
    if env:
        return Path(env).expanduser().resolve(), f"from ${HOME_ENV}"
    return (Path.cwd() / LOCAL_DEFAULT).resolve(), "Google Drive not available"
