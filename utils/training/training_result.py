"""What a fit reports: its ``TrainingResult``, its epoch lines and why it has nothing to train.

Kept apart from the loop so ``trainer.py`` stays the loop; nothing here imports torch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import metric_names as M
from .errors import PersonFacing

if TYPE_CHECKING:
    from .training_config import TrainingConfig


class TrainingDivergedError(PersonFacing, RuntimeError):
    """The loss became NaN or infinite; the weights were not updated with it."""


@dataclass
class TrainingResult:
    run_name: str
    status: str  # completed | early_stopped | stopped | already_finished
    epochs_completed: int
    global_step: int
    best_val_loss: float
    best_epoch: int
    history: list[dict[str, float]]  # one row per finished epoch
    precision: str
    # Seconds of training over every session of the run (evaluation excluded): the sum of the
    # epoch durations the experiment DB holds, plus an unfinished epoch's share.
    elapsed: float
    checkpoint_dir: Path | None = None
    last_checkpoint: Path | None = None
    samples: list[str] = field(default_factory=list)
    seconds_before: float = 0.0  # the part of ``elapsed`` trained by earlier sessions
    wall_seconds: float = 0.0  # this fit() call by the clock, evaluation and checkpoints included
    evaluations: list[dict[str, float]] = field(default_factory=list)  # eval_every_steps' rows
    best_step: int = 0  # the optimizer step of the best evaluation

    @property
    def final_val_loss(self) -> float:
        rows = self.evaluations or self.history
        return rows[-1][M.VAL_LOSS] if rows else math.nan

    @property
    def final_train_loss(self) -> float:
        rows = self.history or self.evaluations
        return rows[-1][M.TRAIN_LOSS] if rows else math.nan

    def __str__(self) -> str:
        trained = f"{self.elapsed:.0f}s of training"
        if self.seconds_before > 0:  # resumed: the total is what the DB holds; say both
            trained += f" over all sessions, {self.elapsed - self.seconds_before:.0f}s in this one"
        at = f"step {self.best_step}" if self.evaluations else f"epoch {self.best_epoch}"
        return (
            f"{self.run_name}: {self.status} after {self.epochs_completed} epochs "
            f"({self.global_step} steps, {trained}); best val loss "
            f"{self.best_val_loss:.4f} at {at}"
        )


def epoch_line(m: dict[str, float], epochs: int) -> str:
    """The line printed at an epoch's end (on the step cadence its row has no val loss)."""
    mfu = f" | MFU {m[M.MFU]:.1%}" if M.MFU in m else ""
    val = f"val {m[M.VAL_LOSS]:.4f} (ppl {m[M.VAL_PERPLEXITY]:.2f}{_acc(m)}) | " if M.VAL_LOSS in m else ""
    return (
        f"epoch {int(m[M.EPOCH])}/{epochs} | train {m[M.TRAIN_LOSS]:.4f} | "
        f"{val}lr {m[M.LEARNING_RATE]:.2e} | "
        f"{m[M.TOKENS_PER_SEC]:,.0f} tok/s{mfu} | {m[M.EPOCH_DURATION]:.1f}s"
    )


def eval_line(m: dict[str, float], total_steps: int) -> str:
    """The line printed at a step-cadence evaluation."""
    return (f"step {int(m[M.STEP])}/{total_steps} | train {m[M.TRAIN_LOSS]:.4f} | val "
            f"{m[M.VAL_LOSS]:.4f} (ppl {m[M.VAL_PERPLEXITY]:.2f}{_acc(m)}) | "
            f"lr {m[M.LEARNING_RATE]:.2e}")


def _acc(m: dict[str, float]) -> str:
    return f", acc {m[M.VAL_ACCURACY]:.1%}" if M.VAL_ACCURACY in m else ""


def early_stop_note(cfg: TrainingConfig, flat: int, best_val_loss: float, best_epoch: int,
                    best_step: int) -> str:
    unit = "evaluations" if cfg.eval_every_steps else "epochs"
    at = f"step {best_step}" if cfg.eval_every_steps else f"epoch {best_epoch}"
    return (f"Early stopping: val loss has not improved for {flat} {unit} "
            f"(best {best_val_loss:.4f} at {at}).")


def diverged_note(loss: float, epoch: int, step: int, precision: str, learning_rate: float) -> str:
    return (f"The loss became {loss} at epoch {epoch}, step {step} (precision {precision}, "
            f"learning_rate {learning_rate:g}). The weights were not updated with it, and the "
            "last checkpoint is intact. Lower learning_rate (e.g. by 3x), raise warmup_ratio, "
            "keep max_grad_norm at 1.0, or try precision='fp32' to rule out overflow; then run "
            "again (it resumes).")


def finished_note(cfg: TrainingConfig, epoch: int, flat: int, best_val_loss: float,
                  best_epoch: int, *, stopped_early: bool, budget_done: bool) -> str:
    """Why a run has nothing left to train, and which field to raise to train longer."""
    done = f"Run '{cfg.run_name}' already finished its {epoch} epoch{'' if epoch == 1 else 's'}"
    if stopped_early:
        also = " and epochs" if epoch >= cfg.epochs else ""
        unit = "evaluation" if cfg.eval_every_steps else "epoch"
        return (f"{done} (early stopping: val loss had not improved for {flat} "
                f"{unit}{'' if flat == 1 else 's'}, best {best_val_loss:.4f} at epoch "
                f"{best_epoch}): nothing to train. Raise early_stopping_patience (0 "
                f"turns early stopping off){also} to train longer, or change run_name for a "
                "new run.")
    if budget_done and epoch < cfg.epochs:
        return (f"Run '{cfg.run_name}' already spent its budget (max_steps = {cfg.max_steps}, "
                f"max_tokens = {cfg.max_tokens}; 0 = off): nothing to train. Raise the budget "
                "to train longer, or change run_name for a new run.")
    return (f"{done}: nothing to train. Raise epochs to train longer, or change run_name "
            "for a new run.")


def result_of(trainer: Any, status: str, started: float) -> TrainingResult:
    """The ``TrainingResult`` of a trainer where it stands (``started``: its fit's monotonic start)."""
    t = trainer
    return TrainingResult(
        run_name=t.config.run_name, status=status, epochs_completed=t.epoch,
        global_step=t.global_step,
        best_val_loss=t.best_val_loss if t.history or t.evaluations else math.nan,
        best_epoch=t.best_epoch, history=[dict(r) for r in t.history],
        evaluations=[dict(r) for r in t.evaluations], best_step=t.best_step,
        precision=t.precision.name, elapsed=t._trained_seconds(),
        checkpoint_dir=t.checkpoints.directory if t.checkpoints else None,
        last_checkpoint=t.last_checkpoint, samples=list(t.samples),
        seconds_before=t._seconds_at_start, wall_seconds=time.monotonic() - started,
    )


def say_sample(trainer: Any) -> None:
    """Generate, keep and print the sample after an epoch (when a tokenizer and sample_tokens)."""
    cfg, tok = trainer.config, trainer.tokenizer
    # Rank 0's to show; under FSDP every rank generates (a forward pass is a collective).
    sharded = trainer.dist.enabled and cfg.sharding == "fsdp"
    if tok is None or cfg.sample_tokens <= 0 or not (trainer.dist.is_main or sharded):
        return
    prompt = tok.encode(cfg.sample_prompt) if cfg.sample_prompt else []
    if not prompt:  # start from end-of-document, as a fresh document would
        prompt = [tok.eos_id if tok.eos_id is not None and tok.eos_id >= 0 else 0]
    ids = trainer.generate(prompt, cfg.sample_tokens, seed=cfg.seed + trainer.epoch)
    text = tok.decode(ids)
    trainer.samples.append(text)
    shown = "\n".join("    | " + line for line in text.splitlines() or [""])
    trainer._say(f"sample after epoch {trainer.epoch} (prompt {cfg.sample_prompt!r}):\n{shown}")
