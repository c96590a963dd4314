"""Checkpoints that survive a Colab disconnect and resume *exactly*.

A checkpoint holds everything the next process needs to continue as if nothing happened: the
model, optimizer and grad-scaler states, every RNG state, the sampler's position inside the epoch,
the trainer's history and the callbacks' state. Files are written to a temporary name, fsynced and
renamed (``workspace.atomic_write``), so a process killed mid-save leaves the previous checkpoint
intact; a save that fails (a full disk) says so and leaves no temp file. They are loaded with
``torch.load(weights_only=True)``: contents are tensors and plain Python values only, and loading
a checkpoint never runs code. Every damaged file is refused by name, flipped bits included (the
zip's CRC32s are checked), and a resume skips it for the one before. Nothing a person might want
is deleted: retention removes only checkpoints older than the one just written, and unusable
ones are moved to ``set-aside/``.

Resuming lives here too, whole: which checkpoint a run continues from (``restore``), whether it
fits the config, which later files are set aside, and where the run's tokenizer is. The trainer
asks once and hands over a function that loads a state into itself.
"""

from __future__ import annotations

import contextlib
import errno
import random
import re
import shutil
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .callbacks import Callback
from .data import DataError, ResumableBatchSampler, Tokenizer, load_tokenizer, tokenizer_from_dict
from .errors import PersonFacing
from .workspace import atomic_write

if TYPE_CHECKING:
    from .training_config import TrainingConfig

FORMAT_VERSION = 1
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")
_BEST_FILE = re.compile(r"^best-step-(\d+)\.pt$")
# Checkpoints that cannot be used (corrupt, or from a course the run no longer follows) are
# moved here rather than deleted: they are the user's data, and only the user may throw it away.
SET_ASIDE_DIR = "set-aside"
TOKENIZER_FILE = "tokenizer.json"
# Fields whose change makes an old checkpoint's weights unusable.
_SHAPE_FIELDS = ("model_source", "model_ref", "n_layers", "n_heads", "d_model", "d_ff", "block_size")
_BUILTIN_ONLY = ("n_layers", "n_heads", "d_model", "d_ff")  # an export's shape is its config.json
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NEARLY_FULL = 1 << 20  # bytes free at the moment a write failed: the disk was full


class CheckpointError(PersonFacing, RuntimeError):
    """A checkpoint could not be written or read; the message names the file and what to do."""


class CorruptCheckpointError(CheckpointError):
    """The file was read but is not a usable checkpoint (truncated, garbled, someone else's):
    reading it again will not help, unlike an I/O error on a flaky mount."""


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


def _crc_checked_saves() -> contextlib.AbstractContextManager:
    """torch >= 2.6 can be told to skip the zip CRC32s; load_checkpoint relies on them to catch
    flipped bits, so our saves always write them."""
    try:
        from torch.utils.serialization import config
    except ImportError:  # older torch always writes them
        return contextlib.nullcontext()
    if getattr(config.save, "compute_crc32", True):
        return contextlib.nullcontext()
    return config.patch({"save.compute_crc32": True})


def _write_error(exc: BaseException, tmp: Path) -> OSError:
    """torch's zip writer reports a failed write(2) as ``RuntimeError: [enforce fail at
    inline_container.cc...] unexpected pos``, without an errno. Recover the real cause: the
    OSError Python raised underneath, a file-size limit, or a disk with no space left."""
    cause = exc.__context__ if isinstance(exc.__context__, OSError) else None
    if isinstance(exc, OSError):
        cause = exc
    if cause is not None and cause.errno is not None:
        return cause
    limit = _file_size_limit()
    with contextlib.suppress(OSError):
        if limit is not None and tmp.stat().st_size >= limit - 65536:
            return OSError(errno.EFBIG, "File too large")
    with contextlib.suppress(OSError):
        if shutil.disk_usage(tmp.parent).free < _NEARLY_FULL:
            return OSError(errno.ENOSPC, "No space left on device")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return OSError(errno.EIO, f"torch.save failed: {first}")


def _file_size_limit() -> int | None:
    """This process's file-size limit (``ulimit -f``) in bytes, or None when unlimited."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if limit == resource.RLIM_INFINITY else int(limit)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def write_failure_message(what: str, path: Path, exc: OSError, previous: Path | None) -> str:
    """Why writing ``path`` failed and what to do, for checkpoints and other run files alike."""
    folder = path.parent
    kept = (f"Nothing was lost: the previous checkpoint {previous} is intact and training "
            "resumes from it when you run again." if previous is not None else
            "No earlier checkpoint of this run was touched.")
    if exc.errno in _FULL_ERRNOS:
        free = ""
        with contextlib.suppress(OSError):
            free = f" ({_gib(shutil.disk_usage(folder).free)} free now)"
        return (f"Could not write {what} {path}: the disk is full{free}. {kept} Free some space "
                f"on {folder} (old runs' checkpoints, datasets/ caches) or lower keep_checkpoints, "
                "then run again.")
    if exc.errno == errno.EFBIG:
        limit = _file_size_limit()
        cap = (f"this process's file-size limit (ulimit -f) of {limit:,} bytes" if limit
               else f"the largest file the file system of {folder} allows")
        return (f"Could not write {what} {path}: it is larger than {cap}. {kept} Raise the "
                "limit (ulimit -f unlimited), write to another file system, or use a smaller "
                "model; then run again.")
    reason = exc.strerror or next((a for a in exc.args if isinstance(a, str)), str(exc))
    return (f"Could not write {what} {path}: {reason}. {kept} Check that the folder is writable "
            "and has space (on Drive: that it is still mounted), then run again.")


def save_checkpoint(state: Mapping[str, Any], path: str | Path, staging: Path | None = None,
                    *, previous: Path | None = None) -> Path:
    """Write ``state`` atomically: the final name only ever holds a complete file, and a failed
    write (a full disk, a file-size limit) leaves no temp file and raises ``CheckpointError``.
    ``previous``: the checkpoint the message should name as intact."""
    payload = {**state, "format": FORMAT_VERSION, "complete": True}
    path = Path(path)

    def write(tmp: Path) -> None:  # atomic_write fsyncs the finished file before the rename
        try:
            with open(tmp, "wb") as handle, _crc_checked_saves():
                torch.save(payload, handle)
        except (RuntimeError, OSError) as exc:
            raise _write_error(exc, tmp) from exc

    try:
        return atomic_write(path, write, staging=staging)
    except OSError as exc:
        raise CheckpointError(write_failure_message("checkpoint", path, exc, previous)) from exc


def _corrupt(path: Path, reason: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"Checkpoint {path} is truncated or corrupt and was not loaded ({reason}). It was "
        "probably cut off by a disconnect while saving. resume='auto' skips it by itself and "
        "sets it aside; to resume from it explicitly, point resume at the checkpoint before it."
    )


def _unreadable(path: Path, exc: OSError) -> CheckpointError:
    return CheckpointError(
        f"Checkpoint {path} cannot be read ({exc.strerror or exc}). Check that the file is "
        "readable (on Drive: that it is still mounted), then run again.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely, or raise ``CheckpointError`` naming the file and the fix.

    Every way a file can be damaged ends in ``CorruptCheckpointError``: the zip's CRC32s catch
    flipped bits in the tensor data (which would otherwise load as silently wrong weights), and
    ``torch.load`` fed arbitrary bytes raises whatever its unpickler trips over first."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist. Set resume='auto' or 'never'.")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    # zipfile raises BadZipFile, but also ValueError, UnicodeDecodeError, EOFError and more on
    # garbled headers: any of them means the bytes are not a checkpoint.
    except Exception as exc:
        raise _corrupt(path, _first_line(exc)) from exc
    if bad is not None:
        raise _corrupt(path, f"checksum mismatch in {bad}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    # Unpickling damaged bytes raises IndexError, KeyError, UnicodeDecodeError, ValueError,
    # MemoryError (a garbled size) ... there is no closed list; all of them mean "corrupt".
    except Exception as exc:
        raise _corrupt(path, _first_line(exc)) from exc
    if not isinstance(state, dict) or not state.get("complete"):
        raise CorruptCheckpointError(
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


def checkpoint_files(directory: str | Path) -> list[CheckpointFile]:
    """A folder's checkpoints, newest (highest step) first; periodic before best at equal steps."""
    found = []
    for path in Path(directory).iterdir():
        for pattern, best in ((_STEP_FILE, False), (_BEST_FILE, True)):
            match = pattern.match(path.name)
            if match:
                found.append(CheckpointFile(path, int(match.group(1)), best))
    return sorted(found, key=lambda f: (f.step, not f.best), reverse=True)


class CheckpointManager:
    """One run's checkpoint folder: ``step-<N>.pt`` files (newest ``keep`` kept) plus one
    ``best-step-<N>.pt``. The step is in the name so "newest" never needs a file to be opened.

    Retention only ever deletes checkpoints *older* than the one just written: a file with a
    higher step is not this course of the run (a corrupt file, or the future of a run resumed
    from an earlier point), and the resume that found it set it aside, never deleted it."""

    def __init__(self, directory: str | Path, keep: int = 3, staging: Path | None = None, *,
                 create: bool = True) -> None:
        """``create=False`` only looks (an export, the tokenizer of a run about to resume): no
        folder is made and no temp file swept, since the run may be training in another process."""
        self.directory = Path(directory)
        self.keep = max(1, keep)
        self.staging = staging
        self.writable = create  # False: never moves a file either (a resume on rank > 0)
        if create:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._remove_stale_temp_files()

    def _remove_stale_temp_files(self) -> None:
        # Left behind only by a process killed mid-save; one run has one writer, so any temp
        # file here at start-up is garbage.
        for tmp in self.directory.glob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)

    def files(self) -> list[CheckpointFile]:
        """All checkpoints, newest (highest step) first; periodic before best at equal steps."""
        return checkpoint_files(self.directory) if self.directory.is_dir() else []

    def save(self, state: Mapping[str, Any], step: int) -> Path:
        previous = next((f.path for f in self.files() if f.step <= step), None)
        path = save_checkpoint(state, self.directory / f"step-{step:08d}.pt", self.staging,
                               previous=previous)
        self._prune(step)
        return path

    def save_best(self, source: Path, step: int) -> Path:
        """Copy an already-written checkpoint as the new best, then drop older bests."""
        source = Path(source)
        dest = self.directory / f"best-step-{step:08d}.pt"
        if not source.is_file():  # never a FileNotFoundError from deep inside a copy
            raise CheckpointError(f"Cannot mark {source} as the best checkpoint: it is gone. "
                                  f"Run again; training resumes from the newest checkpoint.")
        try:
            atomic_write(dest, lambda tmp: shutil.copyfile(source, tmp), staging=self.staging)
        except OSError as exc:
            raise CheckpointError(write_failure_message("best checkpoint", dest, exc, source)) from exc
        for old in self.files():
            if old.best and old.path != dest and old.step < step:
                old.path.unlink(missing_ok=True)
        return dest

    def _prune(self, step: int) -> None:
        # Only files older than the one just written count: deleting the newest file (or one
        # from another course of the run) would lose the only copy of that state.
        older = [f for f in self.files() if not f.best and f.step < step]
        for old in older[self.keep - 1 :]:
            old.path.unlink(missing_ok=True)

    def set_aside(self, path: Path) -> Path:
        """Move a checkpoint into ``set-aside/`` (never overwriting a file already there)."""
        folder = self.directory / SET_ASIDE_DIR
        folder.mkdir(exist_ok=True)
        dest = folder / path.name
        n = 1
        while dest.exists():
            dest = folder / f"{path.stem}.{n}{path.suffix}"
            n += 1
        path.rename(dest)
        return dest

    def set_aside_after(self, step: int, why: str) -> list[Path]:
        """Move every checkpoint above ``step`` aside (the run continues from ``step``, so they
        are not its future) and say so; a file that cannot be moved stays, also said."""
        moved, stuck = [], []
        for f in self.files():
            if f.step <= step:
                continue
            try:
                moved.append(self.set_aside(f.path))
            except OSError as exc:
                stuck.append(f"{f.path.name} ({exc.strerror or exc})")
        if moved:
            names = ", ".join(p.name for p in moved)
            print(f"Note: {why}, so the later checkpoints {names} are not part of its course: "
                  f"moved them to {self.directory / SET_ASIDE_DIR} rather than resume or mix them "
                  "in (nothing was deleted; delete them when you no longer need them).")
        if stuck:
            print(f"Note: could not move {', '.join(stuck)} aside; retention leaves it alone.")
        return moved

    def latest(self, map_location: str | torch.device = "cpu", *,
               set_aside: bool = False) -> tuple[Path, dict] | None:
        """The newest checkpoint that loads; unusable ones are reported and skipped, and with
        ``set_aside`` corrupt ones are moved to ``set-aside/`` (a resume that skips a file
        moves it, so the run's next checkpoint never ranks below it)."""
        for candidate in self.files():
            try:
                return candidate.path, load_checkpoint(candidate.path, map_location)
            except CorruptCheckpointError as exc:
                note = ""
                if set_aside:
                    try:
                        note = (f" Moved it to {self.set_aside(candidate.path)} (nothing was "
                                "deleted; delete it when you no longer need it).")
                    except OSError as move_error:
                        note = f" (It could not be moved aside: {move_error}.)"
                print(f"Skipping a checkpoint that cannot be loaded: {exc}{note}")
            except CheckpointError as exc:
                print(f"Skipping a checkpoint that cannot be loaded: {exc}")
        return None

    def best_or_latest(self) -> Path | None:
        """The checkpoint a run is taken home from: its newest best (the model its reported val
        loss belongs to), else its newest periodic one; None when it has none."""
        files = self.files()
        chosen = [f for f in files if f.best] or files
        return chosen[0].path if chosen else None

    # ----------------------------------------------------------------- the tokenizer

    @property
    def tokenizer_path(self) -> Path:
        """``tokenizer.json`` beside the checkpoints: their token ids mean nothing without it."""
        return self.directory / TOKENIZER_FILE

    def tokenizer(self) -> Tokenizer | None:
        """The tokenizer of a run being resumed or exported. A missing or damaged
        ``tokenizer.json`` is restored from the copy every checkpoint carries (newest readable
        first), and the restore is reported.

        None when there is nothing to resume (no readable checkpoint: the run starts afresh,
        with the tokenizer its data gives), or when the file is missing and only checkpoints
        from before they carried a copy exist (as before: the data's tokenizer is used)."""
        run_dir, path = self.directory, self.tokenizer_path
        files = self.files()
        if not files:
            return None
        if path.is_file():
            try:
                return load_tokenizer(path)
            except DataError as exc:
                problem = f"could not be read ({str(exc).splitlines()[0]})"
        else:
            problem = "was missing"
        readable = False
        for candidate in files:
            try:
                saved = load_checkpoint(candidate.path).get("tokenizer")
                readable = True
                tokenizer = tokenizer_from_dict(saved) if isinstance(saved, dict) else None
            except (CheckpointError, DataError):
                continue
            if tokenizer is None:
                continue
            tokenizer.save(path)
            print(f"Note: this run's tokenizer {path} {problem}. Restored it from the copy in "
                  f"checkpoint {candidate.path.name}; the run continues with its own tokenizer.")
            return tokenizer
        if not readable or problem == "was missing":
            return None
        raise CheckpointError(
            f"This run's tokenizer {path} {problem}, and none of its checkpoints in "
            f"{run_dir} holds a readable copy. Restore the file from a backup (the checkpoints' "
            "token ids mean nothing without it), or start over with a new run_name."
        )


def load_run_tokenizer(run_dir: str | Path) -> Tokenizer | None:
    """The tokenizer of the run whose checkpoints are in ``run_dir`` (see
    :meth:`CheckpointManager.tokenizer`); the folder is only looked at, never made."""
    return CheckpointManager(run_dir, create=False).tokenizer()


# --------------------------------------------------------------------------- resuming


def restore(config: TrainingConfig, manager: CheckpointManager | None,
            load_state: Callable[[dict[str, Any]], None],
            say: Callable[[str], None] = print) -> Path | None:
    """Load the checkpoint ``config.resume`` points at into ``load_state`` and return its path;
    None for a fresh start. "auto": the run's newest loadable checkpoint (corrupt ones are set
    aside); "never": nothing, and a run folder that already has checkpoints is refused; else
    the file named. Later checkpoints than the one loaded are moved aside: they are not this
    run's future any more, so retention and the next resume rank the new ones first."""
    if config.resume == "never" and manager is not None and manager.files():
        raise CheckpointError(
            f"Run '{config.run_name}' already has checkpoints in {manager.directory}, and "
            "resume='never' would mix a new run into them. Choose a new run_name, or "
            "resume='auto' to continue that run, or delete the folder to start it over."
        )
    if config.resume == "never" or (config.resume == "auto" and manager is None):
        return None
    if config.resume == "auto":
        found = manager.latest(set_aside=manager.writable)  # corrupt ones move to set-aside/
        if found is None:
            say(f"No checkpoint for run '{config.run_name}' yet: starting from scratch.")
            return None
        path, state = found
    else:
        path, state = Path(config.resume), load_checkpoint(config.resume)
    _check_compatible(config, path, state, say)
    try:
        load_state(state)
    except (KeyError, TypeError, ValueError) as exc:  # a part of the state is missing or odd
        raise CheckpointError(
            f"Checkpoint {path} does not hold a complete training state ({type(exc).__name__}: "
            f"{exc}). Resume from the checkpoint before it (resume=<its path>), or start over "
            "with a new run_name."
        ) from exc
    if manager is not None and manager.writable:
        step = state["progress"]["global_step"]
        manager.set_aside_after(step, f"this run continues from {path.name} (step {step})")
    return path


def _check_compatible(config: TrainingConfig, path: Path, state: Mapping[str, Any],
                      say: Callable[[str], None]) -> None:
    saved = state.get("config", {})
    current = config.to_dict()
    shape = [k for k in _SHAPE_FIELDS
             if current["model_source"] == "builtin" or k not in _BUILTIN_ONLY]
    diffs = [f"{k}: checkpoint {saved[k]!r}, config {current[k]!r}"
             for k in shape if k in saved and saved[k] != current.get(k)]
    if diffs:
        raise CheckpointError(
            f"Checkpoint {path} was trained with a different model shape ("
            + "; ".join(diffs) + "). Use the same settings to resume, or a new run_name / "
            "resume='never' to start a new run."
        )
    changed = [f"{k} {saved[k]!r} -> {v!r}" for k, v in current.items()
               if k in saved and saved[k] != v and k not in ("resume", *_SHAPE_FIELDS)]
    if changed:
        note = ("; the learning-rate schedule is re-stretched over the new total"
                if "epochs" in saved and saved["epochs"] != current["epochs"] else "")
        say(f"Resuming with changed settings: {', '.join(changed)}{note}.")


def load_model_state(model: nn.Module, weights: Mapping[str, Any]) -> None:
    """Load a checkpoint's weights; a size mismatch or missing keys (another model or vocab)
    becomes a CheckpointError that says what to do."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        detail = "; ".join(str(exc).splitlines()[1:4]).strip()
        raise CheckpointError(
            f"The checkpoint's weights do not fit this model ({detail}). Was it trained with "
            "another tokenizer (vocab size) or model? Use the same settings to resume, or a "
            "new run_name / resume='never' to start over."
        ) from exc


def callback_states(callbacks: Sequence[Callback]) -> dict[str, Any]:
    """Each callback's state, keyed by its position and class, for a checkpoint."""
    return {f"{i}:{type(c).__name__}": c.state_dict() for i, c in enumerate(callbacks)}


def restore_callbacks(callbacks: Sequence[Callback], saved: Mapping[str, Any]) -> None:
    """Hand each callback the state it saved; a callback that was not there then gets none."""
    for i, callback in enumerate(callbacks):
        key = f"{i}:{type(callback).__name__}"
        if key in saved:
            callback.load_state_dict(saved[key])


def restore_data_order(sampler: ResumableBatchSampler | None,
                       saved: Mapping[str, Any] | None) -> list[str]:
    """Continue the data order where the checkpoint stopped; [] when it did.

    The order is one permutation per epoch, dealt out among the ranks, so a run has consumed
    its first ``start_batch x batch_size x world_size`` items however many ranks it ran on.
    Resumed on a different number of ranks it continues exactly when that position falls on
    a batch boundary of the new layout. When the batch size or the data changed (a common fix
    for running out of GPU memory), or the position cannot be reached, nothing is restored and
    the changes are returned, so the caller can restart the interrupted epoch."""
    if not saved or sampler is None:
        return []
    current = sampler.state_dict()
    ranks = int(saved.get("world_size", 1))
    # The batch size may change with the number of ranks (the same global batch on more GPUs).
    compared = ("batch_size", "n_items") if ranks == sampler.world_size else ("n_items",)
    changed = [f"{k} {saved[k]} -> {current[k]}" for k in compared
               if k in saved and saved[k] != current.get(k)]
    consumed = int(saved["start_batch"]) * int(saved["batch_size"]) * ranks
    if not changed and consumed % (sampler.batch_size * sampler.world_size):
        changed.append(f"ranks x batch_size {ranks} x {saved['batch_size']} -> "
                       f"{sampler.world_size} x {sampler.batch_size}, mid-batch")
    if not changed:
        sampler.load_state_dict({**saved, "batch_size": sampler.batch_size,
                                 "start_batch": consumed // (sampler.batch_size
                                                             * sampler.world_size)})
    return changed
