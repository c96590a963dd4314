"""Shared by tests/test_kill_resume.py (in ``make test``) and tests/stress/ (not): start the CLI,
SIGKILL it at chosen moments, resume, and check that nothing was lost and nothing escaped.

Every process is the real CLI (``python -m utils.training train``), killed with a real SIGKILL.
The moments that cannot be hit from outside (inside a database transaction, half-way through a
checkpoint, just before a result file is renamed into place) are reached by a process that
arms one trap and then runs the same ``main()``: the trap kills the process itself.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RUN = "kill"
# Tiny on purpose: a process lives ~3 s (most of it imports), and a checkpoint after every step
# means that much of a run is spent inside checkpoint writes, where kills are most dangerous.
CONFIG = {
    "run_name": RUN, "seed": 11, "data_source": "synthetic", "vocab_size": 16,
    "synthetic_tokens": 6000, "n_layers": 1, "n_heads": 2, "d_model": 32, "block_size": 16,
    "batch_size": 8, "epochs": 2, "learning_rate": 3e-3, "warmup_ratio": 0.1,
    "precision": "fp32", "sample_tokens": 0, "dropout": 0.1, "keep_checkpoints": 2,
    "checkpoint_every_minutes": 1e-9,  # every step
}
STEPS_PER_EPOCH = 42  # 5,400 train tokens in blocks of 17, batches of 8
TOTAL_STEPS = STEPS_PER_EPOCH * CONFIG["epochs"]

# A process that arms one trap (TRAP=kind:count) and then runs the CLI's main() unchanged.
TRAPPED_MAIN = r"""
import os, signal, sys
from contextlib import contextmanager

kind, count = os.environ["TRAP"].split(":")
left = [int(count)]

def fire():
    left[0] -= 1
    if left[0] == 0:
        os.kill(os.getpid(), signal.SIGKILL)

if kind == "checkpoint":  # the Nth checkpoint: half of it on disk, then the process dies
    from utils.training import checkpoints
    real_save = checkpoints.torch.save

    def save(obj, handle, *args, **kwargs):
        if left[0] == 1:
            handle.write(b"PK\x03\x04" + os.urandom(2048))
            handle.flush()
        fire()
        return real_save(obj, handle, *args, **kwargs)

    checkpoints.torch.save = save
elif kind == "transaction":  # the Nth database write: statements run, COMMIT never comes
    from utils.training.experiment_db import ExperimentDB
    real_write = ExperimentDB._write

    @contextmanager
    def write(self):
        with real_write(self) as conn:
            yield conn
            fire()

    ExperimentDB._write = write
elif kind == "finish":  # inside the transaction that closes the run row, before its COMMIT
    from utils.training.experiment_db import ExperimentDB
    real_write, real_finish = ExperimentDB._write, ExperimentDB.finish_run
    closing = [False]

    def finish_run(self, *args, **kwargs):
        closing[0] = True
        return real_finish(self, *args, **kwargs)

    @contextmanager
    def write(self):
        with real_write(self) as conn:
            yield conn
            if closing[0]:
                fire()

    ExperimentDB._write, ExperimentDB.finish_run = write, finish_run
elif kind == "result":  # the Nth file renamed into results/: written in full, never renamed
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(os.path.dirname(os.fspath(dst))) == "results":
            fire()
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace

from utils.training.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def env(**extra: str) -> dict[str, str]:
    """The CLI's environment: one thread (so every process computes bit-identically), no
    network, and the checkout importable from anywhere."""
    out = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    out.pop("TRAP", None)
    out.update(extra)
    return out


def write_config(folder: Path, **changes: object) -> Path:
    path = folder / "kill-config.json"
    path.write_text(json.dumps({**CONFIG, **changes}))
    return path


def cli_args(config_file: Path, workspace: Path) -> list[str]:
    return ["train", "--config", str(config_file), "--workspace", str(workspace), "--no-progress"]


def start(config_file: Path, workspace: Path, trap: str | None = None) -> subprocess.Popen:
    if trap is None:
        cmd = [sys.executable, "-m", "utils.training", *cli_args(config_file, workspace)]
        extra = {}
    else:
        cmd = [sys.executable, "-c", TRAPPED_MAIN, *cli_args(config_file, workspace)]
        extra = {"TRAP": trap}
    return subprocess.Popen(cmd, cwd=ROOT, env=env(**extra), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def run_to_end(config_file: Path, workspace: Path, timeout: float = 300) -> str:
    proc = start(config_file, workspace)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def finish_trapped(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def newest_step(run_dir: Path) -> int:
    steps = [int(p.name[5:13]) for p in run_dir.glob("step-*.pt")] if run_dir.is_dir() else []
    return max(steps, default=0)


def has_checkpoint_temp(run_dir: Path) -> bool:
    return run_dir.is_dir() and any(p.name.startswith(".step-") and ".tmp-" in p.name
                                    for p in run_dir.iterdir())


def kill_at_step(proc: subprocess.Popen, run_dir: Path, step: int, rng: random.Random,
                 timeout: float = 120) -> str:
    """SIGKILL once the run has checkpointed ``step`` (plus a random few milliseconds, so the
    kill lands anywhere in a step: forward, backward, a database flush, a checkpoint write)."""
    deadline = time.monotonic() + timeout
    while newest_step(run_dir) < step:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before step {step}:\n{proc.communicate()[0]}")
        assert time.monotonic() < deadline, f"no checkpoint of step {step} in {timeout}s"
        time.sleep(0.002)
    time.sleep(rng.uniform(0, 0.03))
    return _kill(proc, run_dir)


def kill_while_checkpointing(proc: subprocess.Popen, run_dir: Path, after_step: int,
                             timeout: float = 120) -> str:
    """SIGKILL the moment a checkpoint's temp file is seen (after ``after_step``)."""
    deadline = time.monotonic() + timeout
    while not (newest_step(run_dir) >= after_step and has_checkpoint_temp(run_dir)):
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before a checkpoint after step {after_step}:"
                                 f"\n{proc.communicate()[0]}")
        assert time.monotonic() < deadline, "never saw a checkpoint being written"
        time.sleep(0.0005)
    return _kill(proc, run_dir)


def kill_after(proc: subprocess.Popen, run_dir: Path, seconds: float) -> str:
    """SIGKILL after ``seconds``, wherever the process is (start-up included)."""
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return _kill(proc, run_dir)
    return "finished first"


def _kill(proc: subprocess.Popen, run_dir: Path) -> str:
    step = newest_step(run_dir)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    mid_write = has_checkpoint_temp(run_dir)
    return f"killed after step {step}" + (" inside a checkpoint write" if mid_write else "")


# --------------------------------------------------------------------------- the checks


def final_weights(workspace: Path, run: str = RUN,
                  total_steps: int = TOTAL_STEPS) -> dict[str, torch.Tensor]:
    from utils.training.checkpoints import CheckpointManager

    found = CheckpointManager(workspace / "checkpoints" / run).latest()
    assert found is not None, f"no loadable checkpoint in {workspace}"
    path, state = found
    assert state["progress"]["global_step"] == total_steps, path
    return state["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs from the uninterrupted run"


def metric_rows(workspace: Path) -> tuple[list[tuple], list[tuple]]:
    """(runs as (id, name, status), metrics as (run_id, name, step, epoch, value)), read-only."""
    uri = f"file:{workspace / 'experiments.db'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        runs = conn.execute("SELECT id, name, status FROM runs ORDER BY id").fetchall()
        metrics = conn.execute("SELECT run_id, name, step, epoch, value FROM metrics").fetchall()
    return runs, metrics


def _rows_of(workspace: Path, run: str) -> list[tuple]:
    """(name, step, epoch, value) of the one run row named ``run``: kills must never leave a
    second one behind."""
    runs, metrics = metric_rows(workspace)
    named = [r for r in runs if r[1] == run]
    assert len(named) == 1, f"expected one run row named {run!r}: {runs}"
    return [m[1:] for m in metrics if m[0] == named[0][0]]


def assert_every_row_once(workspace: Path, straight: Path, run: str = RUN,
                          total_steps: int = TOTAL_STEPS) -> None:
    """The killed run's metric rows are the uninterrupted run's: each (name, step, epoch)
    exactly as often (once per step for step metrics, once per epoch for epoch ones), in one
    run row, with the same values wherever the value does not depend on the clock."""
    from collections import Counter

    from utils.training import metric_names as M

    mine, theirs = _rows_of(workspace, run), _rows_of(straight, run)
    keys = Counter(r[:3] for r in mine)
    expected = Counter(r[:3] for r in theirs)
    assert keys == expected, (f"more than the uninterrupted run: {sorted(keys - expected)[:12]}; "
                              f"missing: {sorted(expected - keys)[:12]}")
    batch = sorted(step for name, step, _, _ in mine if name == M.BATCH_LOSS)
    assert batch == list(range(1, total_steps + 1))
    exact = {M.BATCH_LOSS, M.GRAD_NORM, M.TOKENS, M.TRAIN_LOSS, M.VAL_LOSS}
    values = {r[:3]: r[3] for r in mine if r[0] in exact}
    assert values == {r[:3]: r[3] for r in theirs if r[0] in exact}


def stray_running_rows(workspace: Path) -> list[tuple]:
    runs, _ = metric_rows(workspace)
    return [r for r in runs if r[2] == "running"]


def temp_files(workspace: Path) -> list[Path]:
    from utils.training.workspace import is_temp_name

    return sorted(p for p in workspace.rglob("*") if is_temp_name(p.name))


def temp_files_after_a_later_start(workspace: Path) -> list[Path]:
    """What is left once a later session's start-up sweep has run. A temp file whose writer is
    gone is swept once it is DEAD_TEMP_SECONDS old, so the sweep is asked as if that much time
    had passed (checkpoint folders sweep theirs at once, by themselves)."""
    from utils.training.workspace import DEAD_TEMP_SECONDS, is_temp_name, sweep_temp_files

    folders = [workspace, *(p for p in workspace.rglob("*")
                            if p.is_dir() and not is_temp_name(p.name))]
    sweep_temp_files(folders, now=time.time() + DEAD_TEMP_SECONDS + 1)
    return temp_files(workspace)
