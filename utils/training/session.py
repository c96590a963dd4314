"""One run, wired together: data, model, trainer, tracking and plots.

The notebook's training cells, the CLI and every search trial go through ``TrainingSession``, so
the order of operations lives in one place: validate and save the config, load (cached) tokens,
seed, build the model, resume from a checkpoint if this run has one, then attach the experiment
DB row and W&B to the run the checkpoint belongs to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from . import metric_names as M
from .callbacks import Callback
from .dashboard import TrainingDashboard, format_duration
from .data import TokenData, load_token_data
from .experiment_db import ExperimentDBError
from .live_plotting import LivePlotter
from .metrics_tracker import MetricsTracker
from .notebook import show as display_object
from .pipeline import prepare
from .trainer import Trainer, TrainingDivergedError, TrainingResult
from .training_config import TrainingConfig
from .wandb_setup import init_wandb
from .workspace import RESULT_SUFFIXES, Workspace


@dataclass
class TrainingSession:
    config: TrainingConfig
    workspace: Workspace | None
    data: TokenData
    model: nn.Module
    trainer: Trainer
    tracker: MetricsTracker
    plotter: LivePlotter | None = None
    db: Any = None
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
        db: Any = None,
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
        """Everything up to the first step. ``wandb=False`` forces W&B off (search trials)."""
        prepared = prepare(config, workspace, trust=trust, data=data)
        config = prepared.config  # with what the data fixed (a token cache's tokenizer)
        if verbose:
            print(prepared.describe())
        tracker = MetricsTracker(db=db)
        plotter = None
        if live_plot:
            png = workspace.result(config.run_name, "live") if workspace is not None else None
            plotter = LivePlotter(run_name=config.run_name, path=png)
        trainer = prepared.trainer(
            [c for c in (tracker, plotter, *callbacks) if c is not None],
            progress=progress, verbose=verbose,
        )
        trainer.resume()  # restores the tracker's history, DB run id and W&B run id too

        use_wandb = config.use_wandb if wandb is None else wandb and config.use_wandb
        if trainer.finished:
            # Nothing will train: leave the run's DB row (its status and times) and its W&B
            # run closed; only a checkpoint whose row is gone gets a new, finished one.
            use_wandb = False
            ended = M.EARLY_STOPPED if trainer.stopped_early else M.COMPLETED
            if db is not None and not _has_row(db, tracker.run_id, config.run_name):
                tracker.run_id = db.start_run(config, tags=tags, study=study)
                tracker.finish(ended, tracker.final_summary())
            elif db is not None and db.get_run(tracker.run_id)["status"] in (M.RUNNING,
                                                                             M.INTERRUPTED):
                # Killed inside the commit that closed the run (its row reads `running`, shown
                # as `interrupted` once its process is gone): close it now.
                tracker.finish(ended, tracker.final_summary())
        elif db is not None:
            tracker.run_id = db.start_run(
                config, tags=tags, study=study, resume_run_id=tracker.run_id,
            )
        session = cls(config, workspace, prepared.data, prepared.model, trainer, tracker, plotter,
                      db, use_wandb=use_wandb)
        tracker.wandb_run = session._wandb_run()
        return session

    def _wandb_run(self) -> Any:
        """A W&B run for this session (resuming the tracker's W&B run id), or None when off."""
        if not self.use_wandb:
            return None
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
        if self.workspace is not None:
            self.save_metrics_csv()
        return self.result

    # ------------------------------------------------------------------ results

    def dashboard(self) -> TrainingDashboard:
        return TrainingDashboard.from_tracker(
            self.tracker, run_name=self.config.run_name, config=self.config.to_dict(),
            max_grad_norm=self.config.max_grad_norm or None,
            precision=self.trainer.precision.name,  # what "auto" chose on this hardware
        )

    def save_dashboard(self, path: str | Path | None = None, show: bool = True) -> Path:
        dashboard = self.dashboard()
        if path is None:
            name = self.config.run_name
            path = (self.workspace.result(name, "dashboard") if self.workspace is not None
                    else Path(f"{name}{RESULT_SUFFIXES['dashboard']}"))
        saved = dashboard.save(path, dpi=150)
        self.artifacts["dashboard"] = saved
        self._log_artifact("dashboard", saved)
        if show:
            display_object(dashboard.figure)
        print(f"Dashboard saved to {saved}")
        return saved

    def save_metrics_csv(self) -> Path:
        base = self.workspace.results if self.workspace is not None else Path(".")
        path = self.tracker.save_csv(base, self.config.run_name)
        self.artifacts["metrics_csv"] = path
        self._log_artifact("metrics_csv", path)
        return path

    def best_epoch_report(self) -> dict[str, Any]:
        best = self.tracker.best_epoch()
        if not best:
            print("No epoch finished yet.")
            return {}
        print(
            f"Best epoch: {int(best['epoch'])} with val loss {best['val/loss']:.4f} "
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

    def _log_artifact(self, kind: str, path: Path) -> None:
        if self.db is not None and self.tracker.run_id is not None:
            self.db.log_artifact(self.tracker.run_id, kind, path)


def _has_row(db: Any, run_id: Any, name: str) -> bool:
    """Whether the database still holds this run's row (a wiped database does not)."""
    if run_id is None:
        return False
    try:
        return db.get_run(run_id)["name"] == name
    except ExperimentDBError:
        return False


# An evaluation batch is a forward pass only: about a third of a training micro-batch, which
# also runs the backward pass (about twice the forward) and the optimizer update.
EVAL_COST_PER_BATCH = 1 / 3


@dataclass
class TimeEstimate:
    """What ``estimate_training_time`` measured, and the arithmetic that turns it into epochs.
    No clock is read here, so the arithmetic can be checked with made-up measurements."""

    seconds_per_step: float  # median of ``measured_steps`` optimizer steps
    steps_per_epoch: int
    epochs: int
    device: str
    measured_steps: int = 5
    eval_batches: int = 0  # validation batches per epoch
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    model: str = "the model"

    @property
    def train_seconds_per_epoch(self) -> float:
        return self.seconds_per_step * self.steps_per_epoch

    @property
    def eval_seconds_per_epoch(self) -> float:
        per_batch = self.seconds_per_step / max(1, self.grad_accum_steps)
        return self.eval_batches * per_batch * EVAL_COST_PER_BATCH

    @property
    def seconds_per_epoch(self) -> float:
        return self.train_seconds_per_epoch + self.eval_seconds_per_epoch

    @property
    def total_seconds(self) -> float:
        return self.seconds_for(self.epochs)

    def seconds_for(self, epochs: int) -> float:
        return self.seconds_per_epoch * epochs

    def __str__(self) -> str:
        modes = ", ".join(f"{mode} ({n} epochs) ~{format_duration(self.seconds_for(n))}"
                          for mode, n in ((m, TrainingConfig.preset(m).epochs)
                                          for m in ("fast", "balanced", "quality")))
        return "\n".join([
            f"Estimate: ~{format_duration(self.total_seconds)} for {self.epochs} epochs "
            f"(~{format_duration(self.seconds_per_epoch)} per epoch).",
            f"  Measured: {self.seconds_per_step:.3f} s per optimizer step (median of "
            f"{self.measured_steps} steps after a warm-up step) of {self.model} on {self.device}, "
            "on this runtime at this moment.",
            f"  Per epoch: {self.steps_per_epoch:,} steps "
            f"(~{format_duration(self.train_seconds_per_epoch)}) + evaluation of "
            f"{self.eval_batches:,} validation batches (~{format_duration(self.eval_seconds_per_epoch)}, "
            "counted as forward passes at a third of a training batch each).",
            "  Not counted: loading and tokenising the data, checkpoint saves, samples and "
            "torch.compile's first compilation.",
            "  A loaded or shared machine (another notebook, a busy Colab VM) trains slower than "
            "this measurement: allow more time there.",
            f"  Other modes, same model: {modes}.",
        ])


def estimate_training_time(
    config: TrainingConfig, workspace: Workspace | None = None, *, steps: int = 5,
    trust: bool = False, verbose: bool = True,
) -> TimeEstimate:
    """Time a few real optimizer steps of this config on this runtime (after one warm-up step),
    on a throwaway model: the run itself starts from its own seed or checkpoint."""
    data = load_token_data(config, workspace)  # cached: the real run reuses it
    prepared = prepare(config.replace(resume="never"), None, trust=trust, data=data)
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
    estimate = TimeEstimate(
        seconds, trainer.steps_per_epoch, config.epochs,
        f"{trainer.device.type.upper()} ({trainer.precision.name})", measured_steps=steps,
        eval_batches=val_batches, grad_accum_steps=config.grad_accum_steps, model=model,
    )
    if verbose:
        print(estimate)
    return estimate
