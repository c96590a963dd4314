"""``drive.mount`` makes ``<mountpoint>/MyDrive`` appear, but only at ``$FAKE_COLAB_DRIVE``."""

from __future__ import annotations

import os
from pathlib import Path

MOUNTS: list[str] = []
UNMOUNTS: list[str] = []


def mount(mountpoint: str, force_remount: bool = False, timeout_ms: int = 120000,
          readonly: bool = False) -> None:
    target = os.environ.get("FAKE_COLAB_DRIVE", "").strip()
    if not target:
        raise ValueError("fake google.colab: set FAKE_COLAB_DRIVE to the folder that plays Drive")
    if os.path.realpath(mountpoint) != os.path.realpath(target):
        # A real mount elsewhere would write outside the test's folders (as root, even into
        # /content): refuse it the way Colab refuses a mount it cannot make.
        raise ValueError(f"fake google.colab: can only mount at $FAKE_COLAB_DRIVE={target}, "
                         f"not at {mountpoint}")
    (Path(mountpoint) / "MyDrive").mkdir(parents=True, exist_ok=True)
    MOUNTS.append(str(mountpoint))
    print(f"Mounted at {mountpoint}")


def flush_and_unmount(timeout_ms: int = 86400000) -> None:
    UNMOUNTS.extend(MOUNTS)
    MOUNTS.clear()
