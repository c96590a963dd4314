"""The "upload" source's files: kept in ``<workspace>/datasets/uploads/`` so a re-run reuses them.

In Colab the upload dialog asks for the file(s); elsewhere ``data_path`` names a file to copy
there. A re-run with no path reuses the newest upload instead of asking again (a disconnect must
not cost another upload), and an identical file is never rewritten, so the token cache keyed on
it holds. Several files chosen at once become one folder named by their content.

Which upload is the newest cannot come from modification times alone: an identical file uploaded
again keeps its old time (the token cache is keyed on it). So every upload also names itself in
``.newest-upload`` beside the uploads, and that one wins unless a file put into the folder by
other means is newer still.
"""

from __future__ import annotations

import filecmp
import hashlib
import os
from pathlib import Path

from ..workspace import Workspace, atomic_dir, in_colab, is_temp_name
from .errors import DataError

UPLOADS = "uploads"
NEWEST = ".newest-upload"  # the name of the latest upload (never itself an upload)

# Uploads whose reuse was announced in this process: every load (the preview, the time estimate,
# training, each search trial) resolves the source again, and once is enough to say it.
_announced_reuse: set[Path] = set()


def find_upload(
    workspace: Workspace | None, path: str = "", *, ask_again: bool = False,
    field: str = "data_path",
) -> Path:
    """The file (or folder, when several files were chosen at once) that data_source="upload"
    reads, kept in `<workspace>/datasets/uploads/`.

    `path` names a file to copy there (or one already there by name). Empty `path` reuses the
    newest upload, unless `ask_again` opens Colab's upload dialog once more. `field` is the name
    the person set `path` with (the notebook's "upload_path", the CLI's "data_path"), for
    messages.
    """
    if workspace is None:
        raise DataError(
            "data_source='upload' keeps the uploaded file in the workspace (datasets/uploads) "
            "so a re-run does not ask again; pass a workspace, e.g. Workspace.setup()."
        )
    folder = workspace.datasets / UPLOADS
    raw = path.strip()
    if raw:
        given = Path(raw).expanduser()
        kept = folder.resolve() in given.resolve().parents  # already in datasets/uploads
        if given.is_file():
            return given if kept else _keep_upload(workspace, given.name, given)
        if given.is_dir() and kept:  # an earlier multi-file upload
            return given
        if (folder / given.name).exists():
            return folder / given.name
        raise DataError(f"{field}={raw!r}: no such file (looked at {given} and "
                        f"{folder / given.name}). Give the path of the file to use.")
    if ask_again and not in_colab():
        raise DataError(f"Asked for a new upload, but there is no upload dialog outside Colab: set "
                        f"{field} to the file to use (it is copied into {folder}).")
    previous = None if ask_again else _newest_upload(folder)
    if previous is not None:
        if previous not in _announced_reuse:
            _announced_reuse.add(previous)
            again = ("tick upload_new to choose another file" if field == "upload_path"
                     else "delete it to be asked again")
            print(f"Reusing the earlier upload {previous} ({again}, or set {field} to a file).")
        return previous
    if in_colab():
        return _colab_upload(workspace, field)
    raise DataError(
        f"data_source='upload' outside Colab has no upload dialog: set {field} to the file to "
        f"use (it is copied into {folder})."
    )


def _newest_upload(folder: Path) -> Path | None:
    """The upload last made (``NEWEST`` names it, from when it was made), or a file put into the
    folder by hand after it (or before there was a ``NEWEST``): the newest modification time."""
    if not folder.is_dir():
        return None
    kept = [p for p in folder.iterdir() if p.name != NEWEST and not is_temp_name(p.name)
            and (p.is_file() or p.is_dir())]
    marker = folder / NEWEST
    try:
        marked, marked_at = marker.read_text(encoding="utf-8").strip(), marker.stat().st_mtime_ns
    except (OSError, UnicodeDecodeError):  # none yet (or unreadable): times alone decide
        marked, marked_at = "", -1

    def made(p: Path) -> tuple[int, bool]:  # a tie goes to the marked upload (coarse clocks)
        mtime = p.stat().st_mtime_ns
        return (max(mtime, marked_at), True) if p.name == marked else (mtime, False)

    return max(kept, key=made) if kept else None


def _mark_newest(workspace: Workspace, upload: Path) -> Path:
    """Record ``upload`` as the newest upload (also when its bytes were already kept)."""
    workspace.atomic_write(upload.parent / NEWEST,
                           lambda tmp: tmp.write_text(upload.name + "\n", encoding="utf-8"))
    return upload


def _keep_upload(workspace: Workspace, name: str, content: Path | bytes) -> Path:
    """Copy into datasets/uploads atomically; an identical file already there is left alone,
    so its modification time, and with it the token cache key, stays the same. Either way it
    becomes the newest upload."""
    dest = workspace.datasets / UPLOADS / Path(name).name
    if dest.is_file():
        same = (dest.read_bytes() == content if isinstance(content, bytes)
                else filecmp.cmp(dest, content, shallow=False))
        if same:
            return _mark_newest(workspace, dest)
    if isinstance(content, bytes):
        workspace.atomic_write(dest, lambda tmp: tmp.write_bytes(content))
    else:
        workspace.atomic_write(dest, lambda tmp: tmp.write_bytes(content.read_bytes()))
    print(f"Saved {name} to {dest}")
    return _mark_newest(workspace, dest)


def _colab_upload(workspace: Workspace, field: str = "data_path") -> Path:
    from google.colab import files as colab_files  # type: ignore[import-not-found]

    print("Choose the file(s) to train on (.txt, .csv, .jsonl, .parquet, ...).")
    uploaded = {Path(name).name: bytes(data) for name, data in colab_files.upload().items()}
    if not uploaded:
        raise DataError("No file was uploaded. Run the cell again and choose a file, or set "
                        f"{field} to a file that is already on this machine or on Drive.")
    if len(uploaded) == 1:
        ((name, data),) = uploaded.items()
        return _keep_upload(workspace, name, data)
    # Several files: one folder named by their content, so that the set is what a re-run reuses
    # (the same set uploaded again lands in the same folder, and keeps its token cache).
    digest = hashlib.sha256()
    for name, data in sorted(uploaded.items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    folder = workspace.datasets / UPLOADS / f"upload-{len(uploaded)}-files-{digest.hexdigest()[:10]}"
    with atomic_dir(folder) as tmp:  # whole or absent: a disconnect leaves no half set behind
        for name, data in uploaded.items():
            (tmp / name).write_bytes(data)
    os.utime(folder)  # the newest upload, even when the same set was uploaded before
    print(f"Saved {len(uploaded)} files to {folder}")
    return _mark_newest(workspace, folder)
