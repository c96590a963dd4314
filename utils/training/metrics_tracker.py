"""MetricsTracker: one logger between the training loop and its sinks (SQLite, W&B, CSV, plots).

The trainer hands it a metric dict per optimizer step and per epoch (names from
``metric_names``). Step metrics stay in memory in compact arrays and reach the database in
batches, because one SQLite transaction per step would cost more than the step on a small model.
Epoch metrics gain perplexity, GPU readings (or, without a GPU, process memory) and go to the
database and W&B at once. The in-memory history is what the live plot and the dashboard draw.

W&B sees a single step axis: batch rows at their optimizer step (at most two a second: a
wandb.log call costs more than a tiny model's step), the epoch row at the step where the epoch
ended. W&B silently drops a row whose step is below one it has seen, so the tracker
never sends one (and says so once if the caller tries).

The database is anything with :class:`TrackerDatabase`'s methods (an ``ExperimentDB``); this
module never imports ``experiment_db``. Without one the tracker writes to :class:`NoDatabase`,
and without W&B to a ``DisabledRun``: stand-ins that do nothing, so no code here asks "is there
a database?" or "is W&B on?".
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from . import gpu
from . import metric_names as M
from .callbacks import Callback
from .db_schema import RunNotFoundError
from .errors import PersonFacing
from .wandb_setup import DisabledRun
from .workspace import RESULT_SUFFIXES, atomic_write, check_name

# A checkpoint keeps at most this many batch rows (evenly thinned beyond it): the database has
# them all, and a plot of 50k points looks the same as one of a million.
MAX_CHECKPOINT_BATCHES = 50_000
GPU_SAMPLE_SECONDS = 5.0  # how often utilisation and power are read during an epoch
# One wandb.log costs about 0.2 ms (benchmarks/bench_metrics_tracker.py): 10-20% of a tiny
# model's step. Batch rows go to W&B at most this often; the DB and the CSV keep every step.
WANDB_BATCH_SECONDS = 0.5
_WALL_TIME = "wall_time"
_BATCH_FIELDS = (*M.BATCH_COLUMNS, _WALL_TIME)
_INT_COLUMNS = (M.STEP, M.EPOCH, M.TOKENS)
# TrainingResult.status -> the run status stored in the database.
_STATUS = {M.COMPLETED: M.COMPLETED, M.EARLY_STOPPED: M.EARLY_STOPPED, M.STOPPED: M.STOPPED,
           "already_finished": M.COMPLETED}


class TrackingError(PersonFacing, ValueError):
    """The tracker was used in a way that cannot work; the message says how to call it."""


class TrackerDatabase(Protocol):
    """What the tracker writes through: ``ExperimentDB``'s methods of these names."""

    def log_metrics(self, run_id: Any, metrics: Mapping[str, Any], step: int | None = None,
                    epoch: int | None = None) -> Any: ...
    def log_metrics_many(self, rows: Iterable[Sequence[Any]]) -> Any: ...
    def finish_run(self, run_id: Any, status: str = ..., summary: Any = None) -> Any: ...
    def set_status(self, run_id: Any, status: str) -> Any: ...
    def delete_metrics_after(self, run_id: Any, step: int) -> Any: ...
    def sync(self) -> Any: ...


class NoDatabase:
    """The experiment database when there is none (a run without a workspace, a bare tracker):
    the methods of ``ExperimentDB`` that the tracker, ``TrainingSession`` and ``export`` call,
    doing nothing. It holds no runs: ``get_run`` says so as ``ExperimentDB`` does for a run it
    does not have, and ``start_run`` keeps whatever run id the caller already had."""

    def start_run(self, config: Any = None, *, resume_run_id: Any = None, **kwargs: Any) -> Any:
        return resume_run_id

    def get_run(self, run_id: Any) -> dict[str, Any]:
        raise RunNotFoundError(run_id, "no experiment database",
                               "this run keeps no history (pass db=ExperimentDB(...) for one)")

    def log_metrics(self, *args: Any, **kwargs: Any) -> None: ...
    def log_metrics_many(self, rows: Iterable[Sequence[Any]]) -> None: ...
    def finish_run(self, *args: Any, **kwargs: Any) -> None: ...
    def set_status(self, run_id: Any, status: str) -> None: ...
    def delete_metrics_after(self, run_id: Any, step: int) -> None: ...
    def log_artifact(self, run_id: Any, kind: str, path: str | Path) -> None: ...
    def sync(self) -> None: ...

    def __repr__(self) -> str:
        return "NoDatabase()"


class MetricsTracker(Callback):
    """Collects batch and epoch metrics and fans them out to the DB, W&B and CSV files.

    ``db``/``run_id``: an ExperimentDB and the run from ``db.start_run(config)`` (both optional;
    no db: a :class:`NoDatabase`). ``wandb_run``: a run from ``init_wandb`` (or anything with
    ``.log/.summary/.finish/.id/.step``; none: a ``DisabledRun``).
    ``track_gpu``: add gpu/* readings each epoch (and cpu/rss_gb). ``flush_every``: optimizer
    steps kept in memory between DB writes.

    ``run_id`` and ``wandb_run`` may also be set after a checkpoint was loaded: loading restores
    ``run_id`` (when none was given) and ``wandb_run_id``, the runs to continue, e.g.
    ``tracker.run_id = db.start_run(config, resume_run_id=tracker.run_id)`` and
    ``tracker.wandb_run = init_wandb(config, resume_id=tracker.wandb_run_id)``.
    """

    def __init__(
        self,
        db: TrackerDatabase | None = None,
        run_id: Any = None,
        wandb_run: Any = None,
        track_gpu: bool = True,
        flush_every: int = 200,
    ) -> None:
        if not isinstance(flush_every, int) or flush_every < 1:
            raise TrackingError(f"flush_every={flush_every!r}: must be a whole number >= 1 "
                                "(optimizer steps between database writes).")
        self.db: TrackerDatabase = db if db is not None else NoDatabase()
        self.run_id = run_id
        self.track_gpu = track_gpu
        self.flush_every = flush_every
        self.device_index: int | None = None  # the trainer's GPU, learnt in on_train_start

        self.epochs: list[dict[str, float]] = []
        self.evaluations: list[dict[str, float]] = []  # eval_every_steps' rows, by step
        self._batches: dict[str, array] = {name: array("d") for name in _BATCH_FIELDS}
        self._flushed = 0  # batch rows already in the database
        self.wandb_run = wandb_run  # also sets _wandb_attached
        self._wandb_id: str | None = self.wandb_run.id
        self._wandb_step = -1  # highest step sent to W&B
        self._warned_step = False
        self._gpu_samples: dict[str, list[float]] = {}
        self._last_gpu_sample = -math.inf
        self._last_wandb_batch = -math.inf
        self._on_cpu = False  # the trainer runs on the CPU: GPU readings would describe an idle GPU
        self._finished = False

    # ------------------------------------------------------------------ callback protocol

    def on_train_start(self, trainer: Any) -> None:
        device = getattr(trainer, "device", None)
        if getattr(device, "type", None) == "cpu":
            self._on_cpu = True
        elif getattr(device, "type", None) == "cuda" and self.device_index is None:
            # The Trainer's device names its GPU (hardware.choose_device fills in the index).
            self.device_index = device.index
        step = int(getattr(trainer, "global_step", 0) or 0)
        if step > 0 or self.run_id is not None:
            # Rows of this run after the step training starts from (written after the last
            # checkpoint, or by an attempt killed before its first one, whose row start_run
            # took over) are about to be recomputed: drop them so each step is stored once.
            self.db.delete_metrics_after(self._db_run_id(), step)
        self._wandb()

    def on_step_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        self.log_batch(
            step=metrics[M.STEP], loss=metrics[M.BATCH_LOSS],
            learning_rate=metrics[M.LEARNING_RATE], grad_norm=metrics[M.GRAD_NORM],
            tokens=metrics[M.TOKENS], epoch=metrics.get(M.EPOCH),
        )

    def on_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        self.log_epoch(metrics)
        self.db.sync()  # the Drive copy of the database is at most one epoch behind

    def on_evaluate(self, trainer: Any, metrics: dict[str, float]) -> None:
        self.log_eval(metrics)
        self.db.sync()

    def on_train_end(self, trainer: Any, result: Any) -> None:
        status = str(getattr(result, "status", M.COMPLETED))
        self.finish(_STATUS.get(status, status), self.final_summary(result))

    # ------------------------------------------------------------------ logging

    def log_batch(
        self,
        step: int,
        loss: float,
        learning_rate: float,
        grad_norm: float,
        tokens: int,
        epoch: int | None = None,
    ) -> None:
        """One optimizer step. Kept in memory; written to the DB every ``flush_every`` steps and
        sent to W&B at most every ``WANDB_BATCH_SECONDS``."""
        epoch = len(self.epochs) + 1 if epoch is None else int(epoch)
        row = (step, epoch, loss, learning_rate, grad_norm, tokens, time.time())
        for name, value in zip(_BATCH_FIELDS, row):
            self._batches[name].append(float(value))
        if len(self._batches[M.STEP]) - self._flushed >= self.flush_every:
            self.flush()
        now = time.monotonic()
        if now - self._last_wandb_batch >= WANDB_BATCH_SECONDS:
            self._last_wandb_batch = now
            self._log_wandb({M.BATCH_LOSS: loss, M.LEARNING_RATE: learning_rate,
                             M.GRAD_NORM: grad_norm, M.TOKENS: tokens, M.EPOCH: epoch}, int(step))
        if self._gpu_wanted() and now - self._last_gpu_sample >= GPU_SAMPLE_SECONDS:
            self._last_gpu_sample = now
            for name, value in gpu.gpu_load_sample(self._device()).items():
                self._gpu_samples.setdefault(name, []).append(value)

    def log_epoch(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """One finished epoch; returns the row as stored (with perplexity and system readings)."""
        row: dict[str, float] = {name: float(value) for name, value in metrics.items()}
        epoch = int(row.get(M.EPOCH, len(self.epochs) + 1))
        steps = self._batches[M.STEP]
        step = int(row.get(M.STEP, steps[-1] if steps else 0))
        row[M.EPOCH], row[M.STEP] = epoch, step
        for loss, ppl in ((M.TRAIN_LOSS, M.TRAIN_PERPLEXITY), (M.VAL_LOSS, M.VAL_PERPLEXITY)):
            if loss in row and (ppl not in row or math.isinf(row[ppl])):
                row[ppl] = M.perplexity(row[loss])
        if self.track_gpu:
            row.update(self._system_readings())

        self.flush()  # the epoch's batch rows first, so the database stays in step order
        # A re-run epoch (resumed from a checkpoint taken before it ended) replaces the old row.
        self.epochs = [r for r in self.epochs if r[M.EPOCH] < epoch]
        self.epochs.append(row)
        values = {k: v for k, v in row.items() if k not in (M.EPOCH, M.STEP)}
        self.db.log_metrics(self._db_run_id(), values, step=step, epoch=epoch)
        self._log_wandb({**values, M.EPOCH: epoch}, step)
        return dict(row)

    def log_eval(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """One evaluation on the step cadence: a point at its optimizer step. The database and
        W&B get its val metrics at that step (the epoch rows of such a run carry none, so no
        name is stored twice at a step); the history keeps the whole row, train loss since
        the previous evaluation included."""
        row: dict[str, float] = {name: float(value) for name, value in metrics.items()}
        steps = self._batches[M.STEP]
        step = int(row.get(M.STEP, steps[-1] if steps else 0))
        epoch = int(row.get(M.EPOCH, len(self.epochs) + 1))
        row[M.STEP], row[M.EPOCH] = step, epoch
        if M.VAL_LOSS in row and M.VAL_PERPLEXITY not in row:
            row[M.VAL_PERPLEXITY] = M.perplexity(row[M.VAL_LOSS])
        self.flush()  # the batch rows up to this step first: the database stays in step order
        # A re-run evaluation (resumed from a checkpoint taken before it) replaces the old row.
        self.evaluations = [r for r in self.evaluations if r[M.STEP] < step]
        self.evaluations.append(row)
        values = {k: row[k] for k in (M.VAL_LOSS, M.VAL_PERPLEXITY, M.VAL_ACCURACY) if k in row}
        self.db.log_metrics(self._db_run_id(), values, step=step, epoch=epoch)
        self._log_wandb({**values, M.EPOCH: epoch}, step)
        return dict(row)

    def flush(self) -> int:
        """Write the batch rows not yet in the database, in one ``log_metrics_many`` call;
        returns how many steps it wrote."""
        n = len(self._batches[M.STEP])
        if n == self._flushed:
            return 0
        written = n - self._flushed
        run_id, b = self._db_run_id(), self._batches
        rows = []
        for i in range(self._flushed, n):
            step, epoch, wall = int(b[M.STEP][i]), int(b[M.EPOCH][i]), b[_WALL_TIME][i]
            rows.extend((run_id, name, b[name][i], step, epoch, wall)
                        for name in M.STEP_METRICS)
        self.db.log_metrics_many(rows)
        self._flushed = n
        return written

    @property
    def finished(self) -> bool:
        return self._finished

    def reopen(self, wandb_run: Any = None) -> None:
        """Carry on after ``finish``/``abort`` in the same process (the notebook's train cell run
        again after an interrupt): the DB run is running again and a new W&B handle, resuming
        the same W&B run, replaces the finished one."""
        self._finished = False
        if self.run_id is not None:
            self.db.set_status(self.run_id, M.RUNNING)
        self.wandb_run = wandb_run

    def abort(self, status: str = M.FAILED) -> None:
        """Close the runs of a training that ended with an exception (which skips
        ``on_train_end``): status "failed", "interrupted" or "diverged"; pending rows are kept."""
        self.finish(status, self.final_summary())

    def finish(self, status: str = M.COMPLETED, summary: Mapping[str, Any] | None = None) -> None:
        """Flush, then close the DB run and the W&B run; a second call does nothing."""
        if self._finished:
            return
        self._finished = True
        self.flush()
        summary = dict(summary or {})
        self.db.finish_run(self._db_run_id(), status=status, summary=summary)
        self.db.sync()
        run = self._wandb()
        run.summary.update({**summary, "status": status})
        run.finish(exit_code=1 if status in M.FAILED_STATUSES else 0)  # W&B marks the run failed
        if getattr(run, "offline", False):
            sync_dir = run.settings.sync_dir
            print(f"W&B: this run was logged offline; to upload it: wandb sync {sync_dir}")

    def final_summary(self, result: Any = None) -> dict[str, Any]:
        """The numbers a run is remembered by, from the ``TrainingResult`` and the history."""
        summary: dict[str, Any] = {"epochs_completed": len(self.epochs)}
        if self.evaluations:  # the step cadence: best and final val loss are evaluations'
            best = min(self.evaluations, key=lambda r: (math.isnan(r[M.VAL_LOSS]), r[M.VAL_LOSS]))
            summary.update(best_val_loss=best[M.VAL_LOSS], best_step=int(best[M.STEP]),
                           best_epoch=int(best[M.EPOCH]))
        elif any(M.VAL_LOSS in r for r in self.epochs):
            best = self.best_epoch(M.VAL_LOSS, "min")
            if best:
                summary.update(best_val_loss=best[M.VAL_LOSS], best_epoch=int(best[M.EPOCH]))
        for rows in (self.epochs, self.evaluations):  # an evaluation's values win when both have
            last = rows[-1] if rows else {}
            for key, name in (("final_train_loss", M.TRAIN_LOSS), ("final_val_loss", M.VAL_LOSS),
                              ("final_val_perplexity", M.VAL_PERPLEXITY),
                              ("final_val_accuracy", M.VAL_ACCURACY)):
                if name in last:
                    summary[key] = last[name]
        keys = ["epochs_completed", "global_step", "best_val_loss", "best_epoch", "precision",
                "elapsed"] + (["best_step"] if self.evaluations else [])
        for key in keys:
            value = getattr(result, key, None)
            if value is not None:
                summary[key] = value
        return summary

    # ------------------------------------------------------------------ reading

    def get_summary(self) -> pd.DataFrame:
        """One row per epoch: ``metric_names.EPOCH_COLUMNS`` first (NaN where not logged), then
        step, MFU, gpu/* and cpu/* where present, then anything else that was logged."""
        frame = pd.DataFrame(self.epochs)
        first = list(M.EPOCH_COLUMNS)
        known = [M.STEP, M.MFU, *M.GPU_COLUMNS, M.CPU_RSS_GB]
        extra = [c for c in known if c in frame.columns]
        rest = [c for c in frame.columns if c not in first and c not in known]
        frame = frame.reindex(columns=first + extra + rest)
        return frame.astype({c: "int64" for c in (M.EPOCH, M.STEP) if c in frame.columns})

    def eval_history(self) -> pd.DataFrame:
        """One row per step-cadence evaluation (``eval_every_steps``): step, epoch, train and
        val loss and perplexity, learning rate; empty when the run evaluates per epoch."""
        frame = pd.DataFrame(self.evaluations)
        if frame.empty:
            return pd.DataFrame(columns=[M.STEP, M.EPOCH, M.TRAIN_LOSS, M.VAL_LOSS])
        return frame.astype({c: "int64" for c in (M.STEP, M.EPOCH) if c in frame.columns})

    def batch_history(self) -> pd.DataFrame:
        """One row per optimizer step: ``metric_names.BATCH_COLUMNS``."""
        frame = pd.DataFrame({name: np.array(self._batches[name], dtype=np.float64)
                              for name in M.BATCH_COLUMNS}, columns=list(M.BATCH_COLUMNS))
        return frame.astype({c: "int64" for c in _INT_COLUMNS})

    def best_epoch(self, metric: str = M.VAL_LOSS, mode: str = "min") -> dict[str, float]:
        """The epoch row with the lowest (mode="min") or highest finite ``metric``; an empty dict
        before the first epoch ends. A metric no epoch has is an error (most likely a typo)."""
        if mode not in ("min", "max"):
            raise TrackingError(f"mode={mode!r}: use 'min' (losses) or 'max' (accuracies).")
        if not self.epochs:
            return {}
        logged = sorted({k for r in self.epochs for k in r})
        if metric not in logged:
            raise TrackingError(f"No epoch has a {metric!r} column. Logged metrics: "
                                f"{', '.join(logged)}.")
        rows = [r for r in self.epochs if metric in r and not math.isnan(r[metric])]
        if not rows:
            return {}
        pick = min if mode == "min" else max
        return dict(pick(rows, key=lambda r: r[metric]))

    def to_csv(self, path: str | Path) -> Path:
        """The epoch summary as CSV, written atomically (a crash never leaves half a file)."""
        frame = self.get_summary()
        return atomic_write(Path(path), lambda tmp: frame.to_csv(tmp, index=False))

    def save_csv(self, results_dir: str | Path, run_name: str) -> Path:
        """``<results_dir>/<run_name>_metrics.csv`` (returned) and ``<run_name>_batches.csv``
        (the names ``Workspace.result`` gives them); a run name that would leave
        ``results_dir`` is refused (UnsafeNameError, a ValueError)."""
        results = Path(results_dir)
        name = check_name(run_name)
        path = self.to_csv(results / f"{name}{RESULT_SUFFIXES['metrics']}")
        batches = self.batch_history()
        atomic_write(results / f"{name}{RESULT_SUFFIXES['batches']}",
                     lambda tmp: batches.to_csv(tmp, index=False))
        return path

    @property
    def wandb_run(self) -> Any:
        """The W&B run the history goes to (a ``DisabledRun`` when W&B is off)."""
        return self._wandb_run

    @wandb_run.setter
    def wandb_run(self, run: Any) -> None:
        self._wandb_run = run if run is not None else DisabledRun()
        self._wandb_attached = False  # the next use learns its id and where its steps are

    @property
    def wandb_run_id(self) -> str | None:
        """The W&B run this history belongs to (restored from a checkpoint before one exists)."""
        return self._wandb_id

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """History and the W&B run id, as plain lists (``torch.load(weights_only=True)`` safe).

        A checkpoint is also a flush point: the database then holds every row the checkpoint
        does, so a resume neither loses nor repeats rows. And a sync point: a mid-epoch
        checkpoint on Drive comes with a Drive copy of the database that matches it, so a fresh
        VM restores both (the epoch-end sync has already copied everything else)."""
        if self.flush():
            self.db.sync()
        n = len(self._batches[M.STEP])
        batches = {name: col.tolist() for name, col in self._batches.items()}
        if n > MAX_CHECKPOINT_BATCHES:
            stride = math.ceil(n / MAX_CHECKPOINT_BATCHES)
            keep = sorted(set(range(0, n, stride)) | {n - 1})  # always the latest step
            batches = {name: [col[i] for i in keep] for name, col in batches.items()}
        return {
            "version": 1,
            "epochs": [dict(r) for r in self.epochs],
            "evaluations": [dict(r) for r in self.evaluations],
            "batches": batches,
            "wandb_id": self._wandb_id,
            "wandb_step": self._wandb_step,
            "run_id": self.run_id if isinstance(self.run_id, (int, str)) else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs = [dict(r) for r in state.get("epochs", [])]
        self.evaluations = [dict(r) for r in state.get("evaluations", [])]
        saved = state.get("batches", {})
        self._batches = {name: array("d", saved.get(name, [])) for name in _BATCH_FIELDS}
        self._flushed = len(self._batches[M.STEP])  # flushed when the checkpoint was taken
        self._wandb_step = max(self._wandb_step, int(state.get("wandb_step", -1)))
        saved_run = state.get("run_id")
        if self.run_id is None:
            self.run_id = saved_run
        elif saved_run is not None and saved_run != self.run_id:
            print(f"Note: the checkpoint's metrics went to database run {saved_run}; this tracker "
                  f"writes to run {self.run_id}, so the earlier epochs stay with run {saved_run}. "
                  f"Use db.start_run(config, resume_run_id={saved_run!r}) to continue that run.")
        saved_id = state.get("wandb_id")
        if saved_id and self._wandb_id and saved_id != self._wandb_id:
            print(f"W&B: the checkpoint logged to W&B run {saved_id}, but this tracker has run "
                  f"{self._wandb_id}; the history continues in the new run. To continue the old "
                  f"one, start it with init_wandb(config, resume_id={saved_id!r}).")
        elif saved_id:
            self._wandb_id = saved_id

    # ------------------------------------------------------------------ internals

    def _wandb(self) -> Any:
        """The W&B run; the first call after one is set learns its id and where its steps are."""
        run = self.wandb_run
        if not self._wandb_attached:
            self._wandb_attached = True
            self._wandb_id = run.id or self._wandb_id
            # A resumed online run already holds steps up to run.step; never log below them.
            self._wandb_step = max(self._wandb_step, int(run.step or 0))
        return run

    def _log_wandb(self, data: dict[str, float], step: int) -> None:
        run = self._wandb()
        if step < self._wandb_step:
            if not self._warned_step:
                self._warned_step = True
                print(f"W&B: skipping step {step} and others below {self._wandb_step}: W&B already "
                      "has later steps (a resumed run repeats them) and would drop them anyway. "
                      "The database and CSV files keep every step.")
            return
        run.log(data, step=step)
        self._wandb_step = step

    def _db_run_id(self) -> Any:
        if self.run_id is None and not isinstance(self.db, NoDatabase):
            raise TrackingError("MetricsTracker has a db but no run_id: set tracker.run_id = "
                                "db.start_run(config) (or pass run_id=) before training.")
        return self.run_id

    def _gpu_wanted(self) -> bool:
        return self.track_gpu and not self._on_cpu

    def _device(self) -> int:
        return self.device_index if self.device_index is not None else 0

    def _system_readings(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self._gpu_wanted():
            index = self._device()
            out.update(gpu.gpu_snapshot(index))
            for name, values in self._gpu_samples.items():  # epoch averages beat one reading
                if values:
                    out[name] = sum(values) / len(values)
            gpu.reset_peak_memory(index)
        self._gpu_samples = {}
        self._last_gpu_sample = -math.inf
        rss = gpu.process_rss_gb()
        if rss is not None:
            out[M.CPU_RSS_GB] = rss
        return out
