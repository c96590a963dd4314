"""The training loop.

Reads top to bottom: ``fit`` -> epochs -> optimizer steps -> micro-batches. The loop knows
nothing about SQLite, W&B or plots; those hook in through ``Callback``. What it does own:
mixed precision chosen from the hardware, token-weighted gradient accumulation, clipping after
unscaling, warmup + cosine, evaluation, early stopping, a NaN guard, checkpoints and exact resume.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import device_metrics as dm
from . import metric_names as M
from . import training_result as report
from .callbacks import Callback
from .checkpoints import (
    CheckpointManager,
    callback_states,
    capture_rng_state,
    load_model_state,
    restore,
    restore_callbacks,
    restore_data_order,
    restore_rng_state,
    seed_everything,
    strip_compile_prefix,
)
from .data import EpochSampler, ResumableBatchSampler, Tokenizer
from .errors import TrainingInterrupted
from .hardware import (
    Interrupt,
    Precision,
    TrainingOutOfMemoryError,
    choose_device,
    choose_precision,
    configure_backends,
    deferred_interrupt,
    device_description,
    distributed,
    explain_out_of_memory,
    peak_flops,
)
from .models.gpt import generate
from .optimizer import build_optimizer, lr_at, plan_steps
from .sharding import clip_grad_norm, full_state, grad_scaler, is_sharded, local_state
from .training_result import TrainingDivergedError, TrainingResult

if TYPE_CHECKING:
    from .training_config import TrainingConfig
    from .workspace import Workspace

__all__ = ["IGNORE_INDEX", "Callback", "Trainer", "TrainingDivergedError",
           "TrainingOutOfMemoryError", "TrainingResult"]  # the last raised from fit() (hardware)

IGNORE_INDEX = -100
# The trainer's progress counters, saved in checkpoints as they are.
_PROGRESS = ("epoch", "batch_in_epoch", "global_step", "best_val_loss", "best_epoch",
             "epochs_without_improvement")


# What an epoch sums up as it goes, and the train loss since the last step-cadence evaluation
# (both saved in checkpoints, so a resume between epoch ends or evaluations is exact).
_EPOCH_ACC = {"loss_sum": 0.0, "tokens": 0, "seconds": 0.0, "grad_norm": 0.0}
_EVAL_ACC = {"loss_sum": 0.0, "tokens": 0}


class Trainer:
    def __init__(
        self,
        config: TrainingConfig,
        model: nn.Module,
        train_loader: Iterable,
        val_loader: Iterable,
        callbacks: Sequence[Callback] = (),
        workspace: Workspace | None = None,
        *,
        tokenizer: Tokenizer | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
        verbose: bool = True,
    ) -> None:
        self.dist = distributed()  # one process, or this rank of a torchrun launch
        self.config, self.workspace, self.tokenizer = config, workspace, tokenizer
        self.train_loader, self.val_loader = train_loader, val_loader
        self.callbacks = list(callbacks)
        self.progress, self.verbose = progress and self.dist.is_main, verbose and self.dist.is_main

        self.device = choose_device(str(device) if device else self.dist.device())
        configure_backends(self.device)
        self.precision: Precision = choose_precision(config.precision, self.device)
        self.raw_model = model.to(self.device)
        # DDP first, then compile: the compiled graph then breaks at DDP's gradient buckets
        # and overlaps their all-reduce with the backward pass. FSDP shards raw_model in place.
        self._ddp = self.dist.wrap(self.raw_model, self.device, config.sharding)
        self.model = torch.compile(self._ddp) if config.compile else self._ddp
        self.optimizer = build_optimizer(self.raw_model, config, self.device)
        # Disabled scaler is a no-op pass-through, so the step code has one path for all dtypes.
        self.scaler = grad_scaler(self._ddp, self.device, self.precision.use_grad_scaler)

        sampler = getattr(train_loader, "sampler", None)  # a DataLoader's; a list has none
        # Ours starts mid-epoch by itself and its position rides along in checkpoints.
        self._sampler = sampler if isinstance(sampler, ResumableBatchSampler) else None
        self._epoch_sampler = sampler if isinstance(sampler, EpochSampler) else None
        val_sampler = getattr(val_loader, "sampler", None)
        self._val_sampler = val_sampler if isinstance(val_sampler, ResumableBatchSampler) else None
        self.micro_batches_per_epoch = len(train_loader)  # type: ignore[arg-type]
        self.steps_per_epoch = max(1, math.ceil(self.micro_batches_per_epoch / config.grad_accum_steps))
        # The real number of optimizer steps (epochs, max_steps or max_tokens: the first to end).
        self.plan = plan_steps(config, self.steps_per_epoch, self.dist.world_size)
        self.total_steps, self.warmup_steps = self.plan.total_steps, self.plan.warmup_steps

        flops = getattr(self.raw_model, "flops_per_token", None)
        n_params = sum(p.numel() for p in self.raw_model.parameters())
        self.flops_per_token = flops() if callable(flops) else 6 * n_params
        peak = peak_flops(self.device)  # one GPU's; MFU is per GPU: the job's flops / N peaks
        self.peak_flops = peak * self.dist.world_size if peak else None

        # Progress, all of it saved in checkpoints.
        self.epoch = 0  # the epoch in progress (0-based)
        self.batch_in_epoch = 0  # micro-batches of `epoch` already consumed
        self.global_step = 0  # optimizer steps taken
        self.history: list[dict[str, float]] = []
        self.best_val_loss, self.best_epoch, self.best_step = math.inf, 0, 0
        self.epochs_without_improvement = 0  # evaluations without improvement, in truth
        self.evaluations: list[dict[str, float]] = []  # rows of the step-cadence evaluations
        self.should_stop = self._early_stopped = False  # should_stop: early stopping or a callback
        self._interrupt = Interrupt()  # what Ctrl-C asked during the fit() in progress
        self.samples: list[str] = []
        self._epoch_acc, self._eval_acc = dict(_EPOCH_ACC), dict(_EVAL_ACC)
        self._best_pending = False  # improved at an epoch's last step: _end_epoch marks it best
        # Steps not yet read from the device, and the NaN guard's flag, which lives there.
        self._pending: list[dm.PendingStep] = []
        self._diverged = torch.zeros((), dtype=torch.bool, device=self.device)
        self._bar: tqdm = tqdm(disable=True)
        self._elapsed_before = 0.0  # training seconds from earlier processes of this run

        # Every rank reads the run's checkpoint; rank 0 alone writes (and sweeps) the folder.
        self.checkpoints = CheckpointManager(
            workspace.run_dir(config.run_name, create=self.dist.is_main),
            keep=config.keep_checkpoints, staging=workspace.staging, create=self.dist.is_main,
        ) if workspace is not None else None
        self.last_checkpoint: Path | None = None
        self._saved_step, self._fit_started = -1, False
        self._finished_said = False  # already told the user there is nothing to train
        self._seconds_at_start = 0.0  # training seconds the run had when this fit() began
        # Last: a trainer is built where its run stands, so the notebook's set-up cell (and
        # TrainingSession.create) can say where training will continue before fit() runs.
        with self.dist.main_first():  # rank 0 may set a corrupt checkpoint aside first
            self._resumed_from = self._resume()

    # ------------------------------------------------------------------ public API

    def fit(self) -> TrainingResult:
        cfg = self.config
        started = time.monotonic()
        # Seed a fresh run once: a second fit() in the same process (the notebook's train cell
        # run again after an interrupt) continues from the state in memory, RNGs included.
        if self._resumed_from is None and not self._fit_started:
            seed_everything(cfg.seed)
        self._fit_started = True
        self._seconds_at_start = self._trained_seconds()
        if self.finished:
            # Nothing runs, so no callback hears of it: the run's DB row and W&B run stay closed.
            if not self._finished_said:
                self._say(self._finished_note())
            self._finished_said = False
            return report.result_of(self, "already_finished", started)
        self._say(
            f"Device: {device_description(self.device)}\nPrecision: {self.precision}\n"
            f"Plan: {cfg.epochs} epochs x {self.steps_per_epoch} steps "
            f"({cfg.tokens_per_step * self.dist.world_size:,} tokens/step), warmup "
            f"{self.warmup_steps} steps" + self.dist.describe_batch(cfg)
            + (f"\n{self.plan.describe(cfg, self.steps_per_epoch)}" if self.plan.budgeted else ""))

        for callback in self.callbacks:
            callback.on_train_start(self)
        status = "completed"
        last_save = time.monotonic()
        with deferred_interrupt(tqdm.write) as self._interrupt, \
                explain_out_of_memory(cfg, self.precision):
            while self.epoch < cfg.epochs:
                last_save = self._train_epoch(last_save)
                # A budget or early stopping on the step cadence may end the run mid-epoch: that
                # epoch has no row (its steps are in the batch rows and the evaluations).
                cut = self._budget_spent() or self._early_stopped
                if self.batch_in_epoch >= self.micro_batches_per_epoch or not cut:
                    self._end_epoch()
                self.should_stop = self.dist.any(self.should_stop)  # a callback on rank 0
                if self.should_stop:
                    status = "early_stopped" if self._early_stopped else "stopped"
                if self.should_stop or self._budget_spent():
                    break
        if self._saved_step != self.global_step:  # the last epoch's checkpoint usually is it
            self._save("final")
        result = report.result_of(self, status, started)
        for callback in self.callbacks:
            callback.on_train_end(self, result)
        self._say(str(result))
        return result

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Token-weighted mean loss, perplexity and next-token accuracy over the validation set
        (or its first ``eval_max_batches``), summed on the device and read once."""
        self.model.eval()
        metrics = dm.ValidationMetrics(self.device)
        # Every evaluation sees the same first eval_max_batches batches (and loads no more): our
        # sampler would otherwise carry on from where the last, cut-short, evaluation stopped.
        if self._val_sampler is not None:
            self._val_sampler.set_epoch(0)
        for inputs, targets in self.dist.even_batches(  # FSDP: as many on every rank
                self._ddp, self.val_loader, self.config.eval_max_batches or None, self.config.block_size):
            metrics.update(*self._forward(inputs, targets), targets, IGNORE_INDEX)
        self.model.train()
        return metrics.compute()

    def generate(self, prompt_ids: Sequence[int] | torch.Tensor, max_new_tokens: int, *,
                 temperature: float = 1.0, top_k: int | None = None, seed: int | None = None) -> list[int]:
        """Sample a continuation with its own generator: training's RNG stream (and so exact
        resume) is never disturbed."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(self.config.seed if seed is None else seed)
        idx = torch.as_tensor(list(prompt_ids), dtype=torch.long, device=self.device)[None]
        self.raw_model.eval()
        with self.precision.autocast(self.device):
            out = generate(self.raw_model, idx, max_new_tokens, temperature=temperature,
                           top_k=top_k, generator=generator)
        self.raw_model.train()
        return out[0].tolist()

    def time_steps(self, n_steps: int = 5) -> float:
        """Median seconds per optimizer step over ``n_steps`` real steps, after a warm-up step
        (compilation, allocator growth). It trains the model: use a throwaway trainer."""
        groups = self._groups(iter(self.train_loader))
        self.model.train()
        self._optimizer_step(next(groups))
        self._read_steps()
        times = []
        for group in itertools.islice(groups, n_steps):
            started = time.perf_counter()
            self._optimizer_step(group)
            self._read_steps()  # a host sync, so the clock is honest
            times.append(time.perf_counter() - started)
        return statistics.median(times) if times else 0.0

    def _train_epoch(self, last_save: float) -> float:
        cfg = self.config
        batches = self._epoch_batches()
        self._bar = bar = tqdm(
            total=self.steps_per_epoch, initial=self.batch_in_epoch // cfg.grad_accum_steps,
            disable=not self.progress, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="step",
            dynamic_ncols=True, leave=False)
        self.model.train()
        tick = time.perf_counter()
        try:
            for group in self._groups(batches):
                self._optimizer_step(group)
                # One host collective under torchrun: Ctrl-C, and a checkpoint due by a clock.
                self._interrupt.requested, timed = self.dist.any(self._interrupt.requested, (
                    time.monotonic() - last_save >= cfg.checkpoint_every_minutes * 60))
                epoch_done = self.batch_in_epoch >= self.micro_batches_per_epoch
                eval_due = self._eval_due()
                # Read every log_every_steps steps and before an evaluation, an epoch row or a stop.
                read = (len(self._pending) >= cfg.log_every_steps or epoch_done or eval_due
                        or self._interrupt.requested or self._budget_spent())
                rows = self._read_steps() if read else []
                self._epoch_acc["seconds"] += (now := time.perf_counter()) - tick
                tick = now
                self._deliver(rows)
                bar.update(1)
                last_save, tick, stop = self._after_step(epoch_done, eval_due, timed, last_save, tick)
                if stop:
                    break
        except KeyboardInterrupt:  # a second Ctrl-C: the steps taken are still logged
            self._deliver(self._read_steps())
            raise
        self._deliver(self._read_steps())  # a loader shorter than its len()
        bar.close()
        return last_save

    def _after_step(self, epoch_done: bool, eval_due: bool, timed: bool, last_save: float,
                    tick: float) -> tuple[float, float, bool]:
        """Evaluate, stop on Ctrl-C, checkpoint; (last_save, tick, stop the epoch)."""
        improved = False
        if eval_due:
            improved = self._evaluate_on_step()
            tick = time.perf_counter()  # evaluating is not training time
        if self._interrupt.requested:
            self._bar.close()
            path = self._save("interrupt", best=improved)
            saved = f"checkpoint saved: {path}" if path else "no workspace, nothing saved"
            raise TrainingInterrupted(
                f"Training interrupted at epoch {self.epoch + 1}, step {self.global_step} "
                f"({saved}). Run it again to resume from here."
            )
        every = self.config.checkpoint_every_steps
        due = timed or improved or (every and self.global_step % every == 0)
        # Never at an epoch's last step: _end_epoch logs the epoch's row and then saves; a
        # checkpoint from just before that row would make a resume log it a second time.
        if self.checkpoints and due and not epoch_done:
            self._save("step", best=improved)
            last_save = time.monotonic()
            tick = time.perf_counter()  # saving is not training time
        self._best_pending |= improved and epoch_done
        return last_save, tick, self._budget_spent() or self._early_stopped

    def _budget_spent(self) -> bool:  # max_steps or max_tokens is set, and its steps are done
        return self.plan.budgeted and self.global_step >= self.total_steps

    def _eval_due(self) -> bool:
        """On the step cadence: every ``eval_every_steps`` steps, and at the run's last step."""
        every = self.config.eval_every_steps
        last = self.evaluations[-1][M.STEP] if self.evaluations else 0
        return bool(every) and last != self.global_step and (
            self.global_step % every == 0 or self.global_step == self.total_steps)

    def _evaluate_on_step(self) -> bool:
        """Evaluate, judge "best" and early stopping, tell the callbacks; True: a new best."""
        acc = self._eval_acc
        train_loss = acc["loss_sum"] / acc["tokens"] if acc["tokens"] else math.nan
        metrics: dict[str, float] = {
            M.STEP: self.global_step, M.EPOCH: self.epoch + 1, M.TRAIN_LOSS: train_loss,
            M.TRAIN_PERPLEXITY: M.perplexity(train_loss), **self.evaluate(),
            M.LEARNING_RATE: self.optimizer.param_groups[0]["lr"],
        }
        self._eval_acc = dict(_EVAL_ACC)
        self.evaluations.append(metrics)
        improved = self._judge(metrics[M.VAL_LOSS])
        for callback in self.callbacks:
            callback.on_evaluate(self, metrics)
        self._say(report.eval_line(metrics, self.total_steps))
        return improved

    def _judge(self, val_loss: float) -> bool:
        """Best so far? Early stopping counts the evaluations that were not."""
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_epoch, self.best_step = val_loss, self.epoch + 1, self.global_step
            self.epochs_without_improvement = 0
            return True
        self.epochs_without_improvement += 1
        if self.stopped_early:
            self._say(report.early_stop_note(self.config, self.epochs_without_improvement,
                                      self.best_val_loss, self.best_epoch, self.best_step))
            self.should_stop = self._early_stopped = True
        return False

    def _epoch_batches(self) -> Iterator:
        """This epoch's batches from where the run stopped. Our sampler starts mid-epoch; any
        other loader has the batches already seen skipped (exact if its order is per epoch)."""
        if self._sampler is not None:
            self._sampler.set_epoch(self.epoch, start_batch=self.batch_in_epoch)
            return iter(self.train_loader)
        if self._epoch_sampler is not None:
            self._epoch_sampler.set_epoch(self.epoch)
        batches = iter(self.train_loader)
        # Skipped here, before the epoch's clock starts: loading them again is not training.
        for _ in itertools.islice(batches, self.batch_in_epoch):
            pass
        return batches

    def _groups(self, batches: Iterator) -> Iterator[list]:
        """Micro-batches in groups of ``grad_accum_steps``; the epoch's last group may be short."""
        group: list = []
        for batch in batches:
            group.append(batch)
            if len(group) == self.config.grad_accum_steps:
                yield group
                group = []
        if group:
            yield group

    def _optimizer_step(self, group: list) -> None:
        """One optimizer step, queued on the device: nothing here waits for it (see _read_steps)."""
        cfg = self.config
        # Weight every token equally across the group: dividing each micro-batch's *sum* by the
        # group's token count gives exactly the gradient of one big batch, even when micro-batches
        # hold different numbers of tokens (a per-micro-batch mean would not).
        # Under DDP the count is the global batch's, and each rank's loss is scaled by the number
        # of ranks, which DDP's gradient averaging divides out again.
        group_tokens = self.dist.sum_int(sum(int((t != IGNORE_INDEX).sum()) for _, t in group))
        ranks = self.dist.world_size
        # A second Ctrl-C can stop a step half-way through its backward passes; start clean so
        # running the cell again does not add to those partial gradients.
        self.optimizer.zero_grad(set_to_none=True)
        loss_total = torch.zeros((), device=self.device)
        for i, (inputs, targets) in enumerate(group):
            loss = self._forward(inputs, targets)[0] / group_tokens
            # DDP all-reduces the gradients once, after the group's last backward pass.
            with self.dist.no_sync(self._ddp) if i < len(group) - 1 else nullcontext():
                self.scaler.scale(loss * ranks).backward()
            loss_total += loss.detach()
        self.dist.sum_(loss_total)  # the global batch's mean loss on every rank
        # The NaN guard, on the device: a non-finite loss sets a flag that stays set until the
        # host reads it (and stops), so neither this step nor a later unread one moves a weight.
        self._diverged |= ~torch.isfinite(loss_total)
        if self.scaler.is_enabled():  # fp16: NaN gradients send the scaler down its skip path
            dm.poison_gradients(self.optimizer, self._diverged)
        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
        grad_norm = clip_grad_norm(self.raw_model, max_norm)
        lr = lr_at(self.global_step, self.total_steps, self.warmup_steps, cfg.learning_rate,
                   cfg.min_lr_ratio)
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr
        dm.guarded_step(self.optimizer, self.scaler, self._diverged | ~torch.isfinite(grad_norm))
        self.optimizer.zero_grad(set_to_none=True)
        self._pending.append(dm.PendingStep(loss_total, grad_norm, self.global_step + 1,
                                         self.epoch + 1, lr, group_tokens, self.batch_in_epoch))
        self.global_step += 1
        self.batch_in_epoch += len(group)

    def _read_steps(self) -> list[dict[str, float]]:
        """The loop's host-device sync: the pending steps' rows. At a non-finite loss it raises,
        the run set back to just before that step, whose update (and later ones) was skipped."""
        pending, self._pending = self._pending, []
        rows, bad = dm.read_steps(pending, self._epoch_acc, self._eval_acc)
        if bad is not None:
            (p, loss), _ = bad, self._diverged.zero_()  # a rerun of fit() starts clean
            self.global_step, self.batch_in_epoch = p.step - 1, p.batch_before
            self._deliver(rows)  # the steps before it are logged, as they always were
            raise TrainingDivergedError(report.diverged_note(
                loss, p.epoch, p.step - 1, self.precision.name, self.config.learning_rate))
        return rows

    def _deliver(self, rows: list[dict[str, float]]) -> None:
        for metrics in rows:
            for callback in self.callbacks:
                callback.on_step_end(self, metrics)
        if rows:
            self._bar.set_postfix(loss=f"{rows[-1][M.BATCH_LOSS]:.4f}",
                                  lr=f"{rows[-1][M.LEARNING_RATE]:.2e}", refresh=False)

    def _forward(self, inputs: torch.Tensor, targets: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-entropy summed over the target tokens, ignored positions excluded; logits)."""
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        with self.precision.autocast(self.device):
            logits = self.model(inputs)
        # Softmax in fp32: bf16's 8-bit mantissa makes a large-vocab log-softmax noticeably lossy.
        loss_sum = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
            ignore_index=IGNORE_INDEX, reduction="sum",
        )
        return loss_sum, logits

    # ------------------------------------------------------------------ epoch end

    def _end_epoch(self) -> None:
        cfg = self.config
        acc = self._epoch_acc
        train_loss = acc["loss_sum"] / acc["tokens"] if acc["tokens"] else math.nan
        seconds = acc["seconds"]
        tokens_per_sec = acc["tokens"] / seconds if seconds > 0 else 0.0
        metrics: dict[str, float] = {
            M.EPOCH: self.epoch + 1, M.STEP: self.global_step,
            M.TRAIN_LOSS: train_loss, M.TRAIN_PERPLEXITY: M.perplexity(train_loss),
            # On the step cadence the evaluations have their own rows (on_evaluate).
            **({} if cfg.eval_every_steps else self.evaluate()),
            M.LEARNING_RATE: self.optimizer.param_groups[0]["lr"], M.GRAD_NORM: acc["grad_norm"],
            M.EPOCH_DURATION: seconds, M.TOKENS_PER_SEC: tokens_per_sec,
        }
        if self.peak_flops:
            metrics[M.MFU] = self.flops_per_token * tokens_per_sec / self.peak_flops
        self.history.append(metrics)
        self._elapsed_before += seconds

        improved = self._best_pending or (not cfg.eval_every_steps
                                          and self._judge(metrics[M.VAL_LOSS]))
        self._best_pending = False

        self.epoch += 1
        self.batch_in_epoch = 0
        self._epoch_acc = dict(_EPOCH_ACC)
        for callback in self.callbacks:
            callback.on_epoch_end(self, metrics)
        self._say(report.epoch_line(metrics, cfg.epochs))
        report.say_sample(self)

        due = self.epoch % cfg.checkpoint_every_epochs == 0 or self.epoch == cfg.epochs
        if self.checkpoints and (due or improved):
            self._save("epoch", best=improved)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        weights, optimizer = full_state(self.raw_model, self.optimizer)  # FSDP: a collective
        return {
            "config": self.config.to_dict(),
            "model": strip_compile_prefix(weights), "optimizer": optimizer,
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "progress": {**{key: getattr(self, key) for key in _PROGRESS},
                         "epoch_acc": dict(self._epoch_acc), "elapsed": self._elapsed_before,
                         "best_step": self.best_step, "eval_acc": dict(self._eval_acc)},
            "history": [dict(row) for row in self.history],
            "evaluations": [dict(row) for row in self.evaluations],
            "samples": list(self.samples),
            "sampler": self._sampler.state_dict() if self._sampler is not None else None,
            "callbacks": callback_states(self.callbacks),
            "tokenizer": self.tokenizer.to_dict() if self.tokenizer is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        weights, optim = local_state(self.raw_model, self.optimizer, state["model"], state["optimizer"])
        load_model_state(self.raw_model, weights)  # under FSDP: this rank's pieces of them
        self.optimizer.load_state_dict(optim)
        self.scaler.load_state_dict(state["scaler"])
        progress = state["progress"]
        for key in _PROGRESS:
            setattr(self, key, progress[key])
        self._epoch_acc, self._elapsed_before = dict(progress["epoch_acc"]), progress["elapsed"]
        # Checkpoints from before step budgets lack these three.
        self.best_step = progress.get("best_step", 0)
        self._eval_acc = dict(progress.get("eval_acc", dict(_EVAL_ACC)))
        self.evaluations = [dict(row) for row in state.get("evaluations", [])]
        self.history = [dict(row) for row in state["history"]]
        self.samples = list(state.get("samples", []))
        # When the batch size or the data changed (a common fix for running out of GPU memory)
        # the saved order no longer exists: the interrupted epoch starts again, and says so.
        changed = restore_data_order(self._sampler, state.get("sampler"))
        if changed and self.batch_in_epoch:
            self._say(f"The data changed since the checkpoint ({', '.join(changed)}): epoch "
                      f"{self.epoch + 1} starts again from its beginning.")
            self.batch_in_epoch = 0
            self._epoch_acc = dict(_EPOCH_ACC)
        elif not changed and self._sampler is not None and self._sampler.epoch == self.epoch:
            self.batch_in_epoch = self._sampler.start_batch  # counted in this run's batches
        restore_callbacks(self.callbacks, state.get("callbacks", {}))
        restore_rng_state(state["rng"])

    def _save(self, kind: str, best: bool = False) -> Path | None:
        """Save a checkpoint; ``best``: it holds the best evaluation so far, so mark it best."""
        # FSDP: every rank gathers the state (a collective; _after_step agrees when); 0 writes.
        if self.checkpoints is None or not (self.dist.is_main or is_sharded(self._ddp)):
            return None
        self._deliver(self._read_steps())  # first: a resume then logs the same rows
        state, self._saved_step = {**self.state_dict(), "kind": kind}, self.global_step
        if not self.dist.is_main:
            return None
        self.last_checkpoint = self.checkpoints.save(state, self.global_step)
        if best:
            self.checkpoints.save_best(self.last_checkpoint, self.global_step)
        return self.last_checkpoint

    def resume(self) -> Path | None:
        """The checkpoint this trainer continues from (None: a fresh start), loaded when built."""
        return self._resumed_from

    def _resume(self) -> Path | None:
        """Load the checkpoint ``checkpoints.restore`` picks; say where training continues."""
        path = restore(self.config, self.checkpoints, self.load_state_dict, self._say)
        if path is None:
            return None
        self.last_checkpoint, self._finished_said = path, self.finished
        where = f"epoch {self.epoch + 1}, step {self.global_step}"
        if self.batch_in_epoch:
            where += f" ({self.batch_in_epoch}/{self.micro_batches_per_epoch} batches into the epoch)"
        self._say(self._finished_note() if self.finished else
                  f"Found a checkpoint for this run: resuming from {where} ({path.name}).")
        return path

    @property
    def stopped_early(self) -> bool:
        """Its patience ran out, here or in the process whose checkpoint it resumed from."""
        return 0 < self.config.early_stopping_patience <= self.epochs_without_improvement

    @property
    def finished(self) -> bool:
        """Every planned epoch is done, or early stopping ended the run (else every rerun of an
        early-stopped run would train one more epoch): ``fit`` would have nothing to train."""
        # A budget spent at an epoch's last step still owes that epoch's row.
        budget_done = self._budget_spent() and self.batch_in_epoch < self.micro_batches_per_epoch
        return self.epoch >= self.config.epochs or self.stopped_early or budget_done

    def _finished_note(self) -> str:
        return report.finished_note(self.config, self.epoch, self.epochs_without_improvement,
                             self.best_val_loss, self.best_epoch, stopped_early=self.stopped_early,
                             budget_done=self._budget_spent())

    def _trained_seconds(self) -> float:
        """Training seconds over all sessions: finished epochs plus the one in progress."""
        return self._elapsed_before + self._epoch_acc["seconds"]

    def _say(self, message: str) -> None:
        if self.verbose:
            tqdm.write(message)
