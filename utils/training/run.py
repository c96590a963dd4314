"""One run, end to end: config -> data -> model -> trainer, with tracking and plots.

The notebook's cells, the CLI, every search trial and the time estimate build through here, so
the order of operations lives in one place. The config is validated once (``validate_config``);
tokens are loaded from the cache, with the tokenizer a resumed run already has; the config
records what the data fixed and is saved; the seed is set and the model built; the trainer,
as it is built, resumes from the run's checkpoint; and ``TrainingSession`` attaches the
experiment DB row and W&B to the run that checkpoint belongs to.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import metric_names as M
from .callbacks import Callback
from .checkpoints import CheckpointManager, seed_everything
from .dashboard import TrainingDashboard
from .data import TokenData, Tokenizer, load_token_data, make_dataloaders
from .experiment_db import ExperimentDB, ExperimentDBError
from .hardware import distributed, validate_for_hardware
from .live_plotting import LivePlotter
from .metrics_tracker import MetricsTracker, NoDatabase
from .models import model_from_config
from .plot_style import format_duration
from .plot_style import show as display_object
from .trainer import Trainer, TrainingDivergedError, TrainingResult
from .training_config import TrainingConfig
from .wandb_setup import DisabledRun, init_wandb
from .workspace import RESULT_SUFFIXES, Workspace

# ---------------------------------------------------------------------- the config, judged once

# The contents of the configs validate_config passed in this process, newest last (a few are
# enough: a path validates one config, a search one per trial).
_VALIDATED: OrderedDict[tuple[str, bool], None] = OrderedDict()
_REMEMBERED = 64


def validate_config(config: TrainingConfig, workspace: Workspace | None = None, *,
                    hardware: bool = True) -> TrainingConfig:
    """The one place a run's config is judged: ``config.validate()`` and, with ``hardware``,
    what this machine cannot do (fp16 without a GPU, a model or synthetic data too big), before
    any data loads. A ConfigError lists every problem with its fix. With a ``workspace`` the
    config is also saved to ``configs/<run>.json``.

    Every entry point calls it first (the notebook's summary cell, the CLI, the search) and
    ``prepare`` calls it for whoever did not, so a config is judged on whichever door it came in
    by, and once: the same content that already passed here in this process is not judged
    again. Judging depends only on the content and the machine, so a config changed since (a
    later cell's ``replace``) is judged afresh, as it must be."""
    key = (config.to_json(indent=None), hardware)
    if key in _VALIDATED:
        _VALIDATED.move_to_end(key)
    else:
        if hardware:
            validate_for_hardware(config)
        else:
            config.validate()
        _VALIDATED[key] = None
        while len(_VALIDATED) > _REMEMBERED:
            _VALIDATED.popitem(last=False)
    if workspace is not None:
        save_config(config, workspace)
    return config


def save_config(config: TrainingConfig, workspace: Workspace) -> Path:
    """``configs/<run>.json``, written unless it already holds exactly this config (the notebook
    saves it where it shows the validated card; the run would write the same bytes again)."""
    path = workspace.config_file(config.run_name)
    try:
        if path.read_text(encoding="utf-8") == config.to_json() + "\n":
            return path
    except (OSError, UnicodeDecodeError):  # not there yet (or unreadable): write it
        pass
    return config.save(workspace.configs)


# ---------------------------------------------------------------------- data and model


@dataclass
class Prepared:
    """Everything the trainer needs, built but not yet run."""

    config: TrainingConfig
    workspace: Workspace | None
    data: TokenData
    model: nn.Module
    train_loader: Any
    val_loader: Any

    def trainer(self, callbacks: Sequence[Callback] = (), **kwargs: Any) -> Trainer:
        """The trainer, resumed from the run's checkpoint if it has one."""
        return Trainer(self.config, self.model, self.train_loader, self.val_loader,
                       callbacks=callbacks, workspace=self.workspace,
                       tokenizer=self.data.tokenizer, **kwargs)

    def describe(self) -> str:
        n_params = sum(p.numel() for p in self.model.parameters())
        lines = [
            f"Data: {self.data.source}: {len(self.data.train_ids):,} train / "
            f"{len(self.data.val_ids):,} validation tokens, vocab {self.data.tokenizer.vocab_size:,}",
            f"Model: {type(self.model).__name__}, {n_params / 1e6:.2f}M parameters",
        ]
        if self.data.known_entropy is not None:
            lines.append(f"Best achievable loss (entropy of the data): {self.data.known_entropy:.4f}")
        return "\n".join(lines)


def prepare(
    config: TrainingConfig,
    workspace: Workspace | None = None,
    *,
    trust: bool = False,
    data: TokenData | None = None,
) -> Prepared:
    """Validate the config (unless it already was: :func:`validate_config`), load tokens (or
    reuse ``data``), save the config, build loaders and model.

    ``trust`` allows running a Gist's ``model.py``; it is an argument, never a config field, so
    a shared config file cannot switch it on."""
    config = validate_config(config)  # fp16 on a CPU, a model too big: refused before data loads
    dist = distributed()
    with dist.quiet():
        if data is None:
            # Under torchrun rank 0 tokenizes and caches; the other ranks then read its cache.
            with dist.main_first():
                data = load_token_data(config, workspace,
                                       tokenizer=_saved_tokenizer(config, workspace))
        return _build(config, workspace, data, trust)


def _build(config: TrainingConfig, workspace: Workspace | None, data: TokenData,
           trust: bool) -> Prepared:
    config = record_data_settings(config, data)
    dist = distributed()
    writes = workspace is not None and dist.is_main  # rank 0 alone writes files
    if writes:
        save_config(config, workspace)
    train_loader, val_loader = make_dataloaders(
        data.train_ids, data.val_ids, config.block_size, config.batch_size, config.seed,
        pin_memory=torch.cuda.is_available(), rank=dist.rank, world_size=dist.world_size,
    )
    # Seed right before building so the initial weights depend on the seed alone, not on how
    # much randomness loading the data happened to use.
    seed_everything(config.seed)
    cache_dir = workspace.root / "models" if workspace is not None else None
    model = model_from_config(config, data.tokenizer.vocab_size, trust=trust, cache_dir=cache_dir)
    if writes:
        # Next to the checkpoints: the run's ids mean nothing without the tokenizer that made them.
        run = CheckpointManager(workspace.run_dir(config.run_name), create=False)
        data.tokenizer.save(run.tokenizer_path)
    return Prepared(config, workspace, data, model, train_loader, val_loader)


def record_data_settings(config: TrainingConfig, data: TokenData) -> TrainingConfig:
    """The config with what the data fixed (a token cache's tokenizer and vocab_size), so that
    the saved config, the experiment DB, W&B and run comparisons record what was used."""
    changes = {name: value for name, value in data.settings.items()
               if getattr(config, name) != value}
    if not changes:
        return config
    was = ", ".join(f"{name}={getattr(config, name)!r}" for name in changes)
    now = ", ".join(f"{name}={value!r}" for name, value in changes.items())
    print(f"The cached tokens at {data.cache_path} were made with {now}; the run records that "
          f"(the config said {was}).")
    return validate_config(config.replace(**changes), hardware=False)


def _saved_tokenizer(config: TrainingConfig, workspace: Workspace | None) -> Tokenizer | None:
    """The tokenizer a run being resumed was trained with (None when it has no checkpoint yet).
    A missing or damaged ``tokenizer.json`` comes back from the copy in its checkpoints."""
    if workspace is None or config.resume == "never":
        return None
    return CheckpointManager(workspace.run_dir(config.run_name, create=False),
                             create=False).tokenizer()


# ---------------------------------------------------------------------- the session


@dataclass
class TrainingSession:
    config: TrainingConfig
    workspace: Workspace | None
    data: TokenData
    model: nn.Module
    trainer: Trainer
    tracker: MetricsTracker
    plotter: LivePlotter | None = None
    db: ExperimentDB | NoDatabase = field(default_factory=NoDatabase)
    use_wandb: bool = False
    result: TrainingResult | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)

    # ------------------------------------------------------------------ building

    @classmethod
    def create(
        cls,
        config: TrainingConfig,
        workspace: Workspace | None = None,
        *,
        db: ExperimentDB | None = None,
        trust: bool = False,
        live_plot: bool = True,
        progress: bool = True,
        verbose: bool = True,
        callbacks: Sequence[Callback] = (),
        tags: Sequence[str] = (),
        study: str | None = None,
        wandb: bool | None = None,
        data: TokenData | None = None,
    ) -> TrainingSession:
        """Everything up to the first step. ``wandb=False`` forces W&B off (search trials).
        A config that :func:`validate_config` already passed is not judged again. Under
        torchrun, ranks other than 0 train without the database, W&B, plots, callbacks or
        output: rank 0 records the run."""
        if not distributed().is_main:
            db, live_plot, progress, verbose, callbacks, wandb = None, False, False, False, (), False
        prepared = prepare(config, workspace, trust=trust, data=data)
        config = prepared.config  # with what the data fixed (a token cache's tokenizer)
        if verbose:
            print(prepared.describe())
        database = db if db is not None else NoDatabase()
        # On ranks > 0 it only keeps the history in memory: no GPU readings (rank 0's are the run's).
        tracker = MetricsTracker(db=database, track_gpu=distributed().is_main)
        plotter = None
        if live_plot:
            png = workspace.result(config.run_name, "live") if workspace is not None else None
            plotter = LivePlotter(run_name=config.run_name, path=png)
        # The trainer resumes as it is built: the tracker has its history, DB run id and W&B
        # run id back before anything below asks for them.
        trainer = prepared.trainer(
            [c for c in (tracker, plotter, *callbacks) if c is not None],
            progress=progress, verbose=verbose,
        )

        use_wandb = config.use_wandb if wandb is None else wandb and config.use_wandb
        if trainer.finished:
            # Nothing will train: leave the run's DB row (its status and times) and its W&B
            # run closed; only a checkpoint whose row is gone gets a new, finished one.
            use_wandb = False
            ended = M.EARLY_STOPPED if trainer.stopped_early else M.COMPLETED
            if not _has_row(database, tracker.run_id, config.run_name):
                tracker.run_id = database.start_run(config, tags=tags, study=study)
                tracker.finish(ended, tracker.final_summary())
            elif database.get_run(tracker.run_id)["status"] in (M.RUNNING, M.INTERRUPTED):
                # Killed inside the commit that closed the run (its row reads `running`, shown
                # as `interrupted` once its process is gone): close it now.
                tracker.finish(ended, tracker.final_summary())
        else:
            resume_id = tracker.run_id  # the row the checkpoint remembered, if it did
            if resume_id is None and trainer.resume() is None:
                # Nothing to resume: a row this run closed as `interrupted` (stopped before its
                # first checkpoint) is continued, as start_run takes over a `running` row whose
                # process is gone, so the history keeps one row per run. Only this name's newest
                # row, in this study: a finished run started again is a new run, and a failed
                # or diverged row keeps the outcome its config had.
                try:
                    last = database.get_run(config.run_name)  # the newest row of this name
                except ExperimentDBError:  # none (or no database)
                    last = None
                if (last is not None and last["status"] == M.INTERRUPTED
                        and last["finished_at"] is not None and last["study"] == study):
                    resume_id = last["id"]
                    print(f"Note: run {config.run_name!r} (id {resume_id}) was interrupted with "
                          "no checkpoint to resume from; it starts again in the same row, and its "
                          "metrics from the steps trained again are replaced.")
            tracker.run_id = database.start_run(
                config, tags=tags, study=study, resume_run_id=resume_id,
                world_size=trainer.dist.world_size,
            )
        session = cls(config, workspace, prepared.data, prepared.model, trainer, tracker, plotter,
                      database, use_wandb=use_wandb)
        tracker.wandb_run = session._wandb_run()
        return session

    def _wandb_run(self) -> Any:
        """A W&B run for this session (resuming the tracker's W&B run id); a DisabledRun, which
        does nothing, when W&B is off."""
        if not self.use_wandb:
            return DisabledRun()
        directory = self.workspace.root if self.workspace is not None else None
        return init_wandb(self.config, run_id=self.tracker.run_id,
                          resume_id=self.tracker.wandb_run_id, directory=directory)

    # ------------------------------------------------------------------ running

    def fit(self) -> TrainingResult:
        """Train; a failure still leaves an honest status in the experiment DB. Calling it
        again (after an interrupt, say) continues from the state in memory, same DB row.
        A run that already did all its epochs says so (once) and returns its result."""
        if self.trainer.finished:
            self.result = self.trainer.fit()
            return self.result
        if self.tracker.finished:
            self.tracker.reopen(self._wandb_run())
        status = M.FAILED
        try:
            self.result = self.trainer.fit()
            status = self.result.status
        except TrainingDivergedError:
            status = M.DIVERGED
            raise
        except KeyboardInterrupt:
            status = M.INTERRUPTED
            raise
        finally:
            if status in M.FAILED_STATUSES:
                self.tracker.abort(status)
        if self.workspace is not None and self.trainer.dist.is_main:
            self.save_metrics_csv()
        return self.result

    # ------------------------------------------------------------------ results

    def dashboard(self) -> TrainingDashboard:
        return TrainingDashboard.from_tracker(
            self.tracker, run_name=self.config.run_name, config=self.config.to_dict(),
            max_grad_norm=self.config.max_grad_norm or None,
            precision=self.trainer.precision.name,  # what "auto" chose on this hardware
            world_size=self.trainer.dist.world_size,
        )

    def save_dashboard(self, path: str | Path | None = None, show: bool = True) -> Path:
        dashboard = self.dashboard()
        if path is None:
            name = self.config.run_name
            path = (self.workspace.result(name, "dashboard") if self.workspace is not None
                    else Path(f"{name}{RESULT_SUFFIXES['dashboard']}"))
        saved = dashboard.save(path, dpi=150)
        self.artifacts["dashboard"] = saved
        self.db.log_artifact(self.tracker.run_id, "dashboard", saved)
        if show:
            display_object(dashboard.figure)
        print(f"Dashboard saved to {saved}")
        return saved

    def save_metrics_csv(self) -> Path:
        base = self.workspace.results if self.workspace is not None else Path(".")
        path = self.tracker.save_csv(base, self.config.run_name)
        self.artifacts["metrics_csv"] = path
        self.db.log_artifact(self.tracker.run_id, "metrics_csv", path)
        return path

    def best_epoch_report(self) -> dict[str, Any]:
        evaluations = self.tracker.evaluations  # eval_every_steps: the best is an evaluation
        best = (min(evaluations, key=lambda r: r["val/loss"]) if evaluations
                else self.tracker.best_epoch())
        if not best:
            print("No epoch finished yet.")
            return {}
        where = f"step {int(best['step'])}" if evaluations else f"epoch: {int(best['epoch'])}"
        print(
            f"Best {where} with val loss {best['val/loss']:.4f} "
            f"(perplexity {best['val/perplexity']:.2f})."
        )
        if self.data.known_entropy is not None:
            gap = best["val/loss"] - self.data.known_entropy
            print(f"Gap to the data's entropy ({self.data.known_entropy:.4f}): {gap:+.4f} nats.")
        return best

    def show_hardware_report(self) -> None:
        """GPU memory and utilisation per epoch; on a CPU run, throughput and process memory."""
        summary = self.tracker.get_summary()
        if summary.empty:
            print("No epoch finished yet.")
            return
        if not any(str(c).startswith("gpu/") for c in summary.columns):
            print("CPU run: no GPU metrics to plot. Throughput and process memory instead "
                  "(Runtime > Change runtime type > GPU for a faster run):")
        display_object(self.dashboard().plot_panel("hardware"))


def _has_row(db: ExperimentDB | NoDatabase, run_id: int | None, name: str) -> bool:
    """Whether the database still holds this run's row (a wiped database does not, nor does
    a NoDatabase)."""
    if run_id is None:
        return False
    try:
        return db.get_run(run_id)["name"] == name
    except ExperimentDBError:
        return False


# ---------------------------------------------------------------------- the time estimate

# An evaluation batch is a forward pass only: about a third of a training micro-batch, which
# also runs the backward pass (about twice the forward) and the optimizer update.
EVAL_COST_PER_BATCH = 1 / 3


@dataclass
class TimeEstimate:
    """What ``estimate_training_time`` measured, and the arithmetic that turns it into a run.
    No clock is read here, so the arithmetic can be checked with made-up measurements.

    With a step or token budget (``budget`` "steps"/"tokens") the run is ``planned_steps``
    optimizer steps (``optimizer.plan_steps``), not ``epochs`` whole epochs; with
    ``eval_every_steps`` it evaluates every that many steps and at the end, not per epoch."""

    seconds_per_step: float  # median of ``measured_steps`` optimizer steps
    steps_per_epoch: int
    epochs: int
    device: str
    measured_steps: int = 5
    eval_batches: int = 0  # validation batches per evaluation
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    model: str = "the model"
    planned_steps: int = 0  # the run's optimizer steps; 0 = epochs * steps_per_epoch
    budget: str = "epochs"  # which budget decides planned_steps: epochs, steps or tokens
    eval_every_steps: int = 0  # 0 = evaluate at each epoch end

    @property
    def train_seconds_per_epoch(self) -> float:
        return self.seconds_per_step * self.steps_per_epoch

    @property
    def eval_seconds_per_epoch(self) -> float:
        """One evaluation: ``eval_batches`` forward passes."""
        per_batch = self.seconds_per_step / max(1, self.grad_accum_steps)
        return self.eval_batches * per_batch * EVAL_COST_PER_BATCH

    @property
    def seconds_per_epoch(self) -> float:
        return self.train_seconds_per_epoch + self.eval_seconds_per_epoch

    @property
    def total_steps(self) -> int:
        return self.planned_steps or self.epochs * self.steps_per_epoch

    @property
    def evaluations(self) -> int:
        """Every ``eval_every_steps`` steps and at the end; else at each (last partial) epoch end."""
        every = self.eval_every_steps or self.steps_per_epoch
        return math.ceil(self.total_steps / max(1, every))

    @property
    def total_seconds(self) -> float:
        return (self.seconds_per_step * self.total_steps
                + self.eval_seconds_per_epoch * self.evaluations)

    def seconds_for(self, epochs: int) -> float:
        return self.seconds_per_epoch * epochs

    def __str__(self) -> str:
        if self.budget == "epochs":
            modes = ", ".join(f"{mode} ({n} epochs) ~{format_duration(self.seconds_for(n))}"
                              for mode, n in ((m, TrainingConfig.preset(m).epochs)
                                              for m in ("fast", "balanced", "quality")))
            head = (f"Estimate: ~{format_duration(self.total_seconds)} for {self.epochs} epochs "
                    f"(~{format_duration(self.seconds_per_epoch)} per epoch).")
            other = f"  Other modes, same model: {modes}."
        else:
            head = (f"Estimate: ~{format_duration(self.total_seconds)} for {self.total_steps:,} "
                    f"optimizer steps (the {self.budget} budget; "
                    f"~{self.total_steps / max(1, self.steps_per_epoch):.2f} epochs).")
            other = (f"  A whole epoch ({self.steps_per_epoch:,} steps) would take "
                     f"~{format_duration(self.seconds_per_epoch)}.")
        if self.eval_every_steps:
            evals = (f"{self.evaluations:,} evaluations (every {self.eval_every_steps:,} steps "
                     f"and at the end) of {self.eval_batches:,} validation batches "
                     f"(~{format_duration(self.eval_seconds_per_epoch * self.evaluations)}")
        else:
            evals = (f"evaluation of {self.eval_batches:,} validation batches per epoch "
                     f"(~{format_duration(self.eval_seconds_per_epoch)}")
        return "\n".join([
            head,
            f"  Measured: {self.seconds_per_step:.3f} s per optimizer step (median of "
            f"{self.measured_steps} steps after a warm-up step) of {self.model} on {self.device}, "
            "on this runtime at this moment.",
            f"  Per epoch: {self.steps_per_epoch:,} steps "
            f"(~{format_duration(self.train_seconds_per_epoch)}); {evals}, "
            "counted as forward passes at a third of a training batch each).",
            "  Not counted: loading and tokenising the data, checkpoint saves, samples and "
            "torch.compile's first compilation.",
            "  A loaded or shared machine (another notebook, a busy Colab VM) trains slower than "
            "this measurement: allow more time there.",
            other,
        ])


def estimate_training_time(
    config: TrainingConfig, workspace: Workspace | None = None, *, steps: int = 5,
    trust: bool = False, verbose: bool = True,
) -> TimeEstimate:
    """Time a few real optimizer steps of this config on this runtime (after one warm-up step),
    on a throwaway model: the run itself starts from its own seed or checkpoint."""
    config = validate_config(config)  # the run's own check: the run will not repeat it
    data = load_token_data(config, workspace)  # cached: the real run reuses it
    prepared = _build(config.replace(resume="never"), None, data, trust)
    trainer = prepared.trainer(progress=False, verbose=False)
    seconds = trainer.time_steps(steps)
    val_batches = len(trainer.val_loader)
    if config.eval_max_batches:
        val_batches = min(val_batches, config.eval_max_batches)
    n_params = sum(p.numel() for p in prepared.model.parameters())
    size = f"{n_params / 1e6:.1f}M" if n_params >= 100_000 else f"{n_params:,}"
    if config.model_source == "builtin":
        layers = f"{config.n_layers} layer{'' if config.n_layers == 1 else 's'}"
        model = f"the built-in GPT ({layers} x {config.d_model} d_model, {size} parameters)"
    else:
        model = f"the {config.model_source} model {config.model_ref!r} ({size} parameters)"
    plan = trainer.plan  # the run's own step plan: the budget that wins, in steps
    estimate = TimeEstimate(
        seconds, trainer.steps_per_epoch, config.epochs,
        f"{trainer.device.type.upper()} ({trainer.precision.name})", measured_steps=steps,
        eval_batches=val_batches, grad_accum_steps=config.grad_accum_steps, model=model,
        planned_steps=plan.total_steps if plan.budgeted else 0,
        budget=plan.budget if plan.budgeted else "epochs",
        eval_every_steps=config.eval_every_steps,
    )
    if verbose and plan.budgeted:
        print(plan.describe(config, trainer.steps_per_epoch))
    if verbose:
        print(estimate)
    return estimate
