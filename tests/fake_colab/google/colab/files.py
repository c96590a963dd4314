"""``files.upload`` returns the files in ``$FAKE_COLAB_UPLOAD``; ``files.download`` copies to
``$FAKE_COLAB_DOWNLOADS``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

DOWNLOADS: list[str] = []


def upload(target_dir: str = "") -> dict[str, bytes]:
    folder = os.environ.get("FAKE_COLAB_UPLOAD", "").strip()
    if not folder:
        return {}  # the person closed the dialog
    chosen = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
    for name, data in chosen.items():  # Colab also saves them in the working directory
        Path(target_dir or ".", name).write_bytes(data)
    return chosen


def download(filename: str) -> None:
    if not os.path.exists(filename):
        raise FileNotFoundError(f"Cannot find file: {filename}")
    DOWNLOADS.append(str(filename))
    folder = os.environ.get("FAKE_COLAB_DOWNLOADS", "").strip()
    if folder:
        os.makedirs(folder, exist_ok=True)
        shutil.copy(filename, folder)
