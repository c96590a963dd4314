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

from .callbacks import Callback
from .dashboard import TrainingDashboard, format_duration
from .data import TokenData, load_token_data
from .live_plotting import LivePlotter
from .metrics_tracker import MetricsTracker
from .notebook import show as display_object
from .pipeline import prepare
from .trainer import Trainer, TrainingDivergedError, TrainingResult
from .training_config import TrainingConfig
from .wandb_setup import init_wandb
from .workspace import Workspace


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
        if verbose:
            print(prepared.describe())
        tracker = MetricsTracker(db=db)
        plotter = None
        if live_plot:
            results = workspace.results if workspace is not None else None
            plotter = LivePlotter(results_dir=results, run_name=config.run_name)
        trainer = prepared.trainer(
            [c for c in (tracker, plotter, *callbacks) if c is not None],
            progress=progress, verbose=verbose,
        )
        trainer.resume()  # restores the tracker's history, DB run id and W&B run id too

        if db is not None:
            tracker.run_id = db.start_run(
                config, tags=tags, study=study, resume_run_id=tracker.run_id,
            )
        session = cls(config, workspace, prepared.data, prepared.model, trainer, tracker, plotter,
                      db, use_wandb=config.use_wandb if wandb is None else wandb and config.use_wandb)
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
        again (after an interrupt, say) continues from the state in memory, same DB row."""
        if self.tracker.finished:
            self.tracker.reopen(self._wandb_run())
        status = "failed"
        try:
            self.result = self.trainer.fit()
            status = self.result.status
        except TrainingDivergedError:
            status = "diverged"
            raise
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            if status in ("failed", "diverged", "interrupted"):
                self.tracker.abort(status)
        if self.workspace is not None:
            self.save_metrics_csv()
        return self.result

    # ------------------------------------------------------------------ results

    def dashboard(self) -> TrainingDashboard:
        return TrainingDashboard.from_tracker(
            self.tracker, run_name=self.config.run_name, config=self.config.to_dict(),
            max_grad_norm=self.config.max_grad_norm or None,
        )

    def save_dashboard(self, path: str | Path | None = None, show: bool = True) -> Path:
        dashboard = self.dashboard()
        if path is None:
            base = self.workspace.results if self.workspace is not None else Path(".")
            path = base / f"{self.config.run_name}_dashboard.png"
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


@dataclass
class TimeEstimate:
    seconds_per_step: float
    steps_per_epoch: int
    epochs: int
    device: str

    @property
    def seconds_per_epoch(self) -> float:
        # Evaluation runs forward passes only over ~val_fraction of the data: a few percent.
        return self.seconds_per_step * self.steps_per_epoch * 1.05

    @property
    def total_seconds(self) -> float:
        return self.seconds_per_epoch * self.epochs

    def __str__(self) -> str:
        lines = [
            f"Measured {self.seconds_per_step:.3f} s per optimizer step on {self.device}: "
            f"about {format_duration(self.seconds_per_epoch)} per epoch, "
            f"{format_duration(self.total_seconds)} for {self.epochs} epochs.",
        ]
        for mode in ("fast", "balanced", "quality"):
            epochs = TrainingConfig.preset(mode).epochs
            lines.append(f"  {mode:9s} ({epochs:2d} epochs): ~{format_duration(self.seconds_per_epoch * epochs)}")
        return "\n".join(lines)


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
    estimate = TimeEstimate(seconds, trainer.steps_per_epoch, config.epochs,
                            f"{trainer.device.type.upper()} ({trainer.precision.name})")
    if verbose:
        print(estimate)
    return estimate
