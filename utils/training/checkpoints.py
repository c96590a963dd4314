"""Checkpoints that survive a Colab disconnect and resume *exactly*.

A checkpoint holds everything the next process needs to continue as if nothing happened: the
model, optimizer and grad-scaler states, every RNG state, the sampler's position inside the epoch,
the trainer's history and the callbacks' state. Files are written to a temporary name, fsynced and
renamed (``workspace.atomic_write``), so a process killed mid-save leaves the previous checkpoint
intact. They are loaded with ``torch.load(weights_only=True)``: contents are tensors and plain
Python values only, and loading a checkpoint never runs code.
"""

from __future__ import annotations

import pickle
import random
import re
import shutil
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .workspace import atomic_write

FORMAT_VERSION = 1
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")
_BEST_FILE = re.compile(r"^best-step-(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file and what to do."""


# --------------------------------------------------------------------------- RNG state


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device) from one number."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def capture_rng_state() -> dict[str, Any]:
    """Every RNG the loop may touch, as tensors and plain values (``weights_only``-safe)."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available():
        # A run resumed on a machine with fewer GPUs restores the devices it has.
        for index, cuda_state in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


# --------------------------------------------------------------------------- files


def strip_compile_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``torch.compile`` wraps the model and prefixes every key with ``_orig_mod.``; a checkpoint
    must load into an uncompiled model too, so the prefix never reaches the file."""
    prefix = "_orig_mod."
    return {key.removeprefix(prefix): value for key, value in state_dict.items()}


def save_checkpoint(state: Mapping[str, Any], path: str | Path, staging: Path | None = None) -> Path:
    """Write ``state`` atomically: the final name only ever holds a complete file."""
    payload = {**state, "format": FORMAT_VERSION, "complete": True}
    path = Path(path)

    def write(tmp: Path) -> None:  # atomic_write fsyncs the finished file before the rename
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)

    try:
        return atomic_write(path, write, staging=staging)
    except OSError as exc:
        raise CheckpointError(
            f"Could not write checkpoint {path}: {exc}. Check free space and that the folder is "
            "writable (on Drive: that it is still mounted). The previous checkpoint is untouched."
        ) from exc


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely, or raise ``CheckpointError`` naming the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist. Set resume='auto' or 'never'.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"Checkpoint {path} is truncated or corrupt and was not loaded ({reason}). It was "
            "probably cut off by a disconnect while saving. Delete it to resume from the "
            "checkpoint before it (resume='auto' skips it by itself)."
        ) from exc
    if not isinstance(state, dict) or not state.get("complete"):
        raise CheckpointError(
            f"{path} is not a checkpoint written by this library (no completion marker). Point "
            "resume at a file from checkpoints/<run_name>/, or use resume='auto'."
        )
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"Checkpoint {path} has format {state.get('format')!r}; this version reads "
            f"format {FORMAT_VERSION}. Resume it with the version that wrote it, or start fresh."
        )
    return state


@dataclass(frozen=True)
class CheckpointFile:
    path: Path
    step: int
    best: bool


class CheckpointManager:
    """One run's checkpoint folder: ``step-<N>.pt`` files (newest ``keep`` kept) plus one
    ``best-step-<N>.pt``. The step is in the name so "newest" never needs a file to be opened."""

    def __init__(self, directory: str | Path, keep: int = 3, staging: Path | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = max(1, keep)
        self.staging = staging
        self._remove_stale_temp_files()

    def _remove_stale_temp_files(self) -> None:
        # Left behind only by a process killed mid-save; one run has one writer, so any temp
        # file here at start-up is garbage.
        for tmp in self.directory.glob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)

    def files(self) -> list[CheckpointFile]:
        """All checkpoints, newest (highest step) first; periodic before best at equal steps."""
        found = []
        for path in self.directory.iterdir():
            for pattern, best in ((_STEP_FILE, False), (_BEST_FILE, True)):
                match = pattern.match(path.name)
                if match:
                    found.append(CheckpointFile(path, int(match.group(1)), best))
        return sorted(found, key=lambda f: (f.step, not f.best), reverse=True)

    def save(self, state: Mapping[str, Any], step: int) -> Path:
        path = save_checkpoint(state, self.directory / f"step-{step:08d}.pt", self.staging)
        self._prune()
        return path

    def save_best(self, source: Path, step: int) -> Path:
        """Copy an already-written checkpoint as the new best, then drop the old best."""
        dest = self.directory / f"best-step-{step:08d}.pt"
        atomic_write(dest, lambda tmp: shutil.copyfile(source, tmp), staging=self.staging)
        for old in self.files():
            if old.best and old.path != dest:
                old.path.unlink(missing_ok=True)
        return dest

    def _prune(self) -> None:
        periodic = [f for f in self.files() if not f.best]
        for old in periodic[self.keep :]:
            old.path.unlink(missing_ok=True)

    def latest(self, map_location: str | torch.device = "cpu") -> tuple[Path, dict] | None:
        """The newest checkpoint that loads; corrupt ones are reported and skipped."""
        for candidate in self.files():
            try:
                return candidate.path, load_checkpoint(candidate.path, map_location)
            except CheckpointError as exc:
                print(f"Skipping a checkpoint that cannot be loaded: {exc}")
        return None

    def best_path(self) -> Path | None:
        best = [f for f in self.files() if f.best]
        return best[0].path if best else None
