"""TrainingDashboard: the six-panel picture of a finished run.

Inputs are plain pandas frames (the tracker's ``get_summary()``/``batch_history()``, or the DB's
long metrics table, pivoted by ``history.metrics_frames``), so this floor never imports torch,
the tracker or the DB.
Figures are bare ``matplotlib.figure.Figure`` objects: no pyplot state, no backend switch, and a
notebook shows them exactly once. Seaborn's style is applied only while the figure is built, so
the user's own plots keep their look.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from . import metric_names as M
from .history import metrics_frames
from .plot_style import (
    BLUE,
    GREEN,
    GREY,
    ORANGE,
    PURPLE,
    RED,
    PlotError,
    column_values,
    downsample,
    ema,
    enable_notebook_figures,
    epoch_axis,
    format_duration,
    perplexity_axis,
    summary_and_history,
)
from .workspace import atomic_write

__all__ = ["TrainingDashboard"]

PANELS = ("loss", "perplexity", "learning_rate", "grad_norm", "speed", "hardware")
_PANEL_METHODS = {"loss": "loss", "perplexity": "perplexity", "learning_rate": "lr",
                  "grad_norm": "grad", "speed": "speed", "hardware": "hardware"}
SAVE_FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}
MAX_STEP_POINTS = 4000  # per step-based curve; a 150-DPI panel is ~700 px wide


def _no_data(ax: Any, why: str) -> None:
    """An empty axis looks like a bug; say why the panel is blank instead."""
    ax.text(0.5, 0.5, f"no data\n({why})", ha="center", va="center", transform=ax.transAxes,
            color=GREY, fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])


def _thousands(value: float, _pos: Any = None) -> str:
    return f"{value / 1000:g}k" if abs(value) >= 1000 else f"{value:g}"


def _twin_label(ax: Any, text: str, color: str) -> None:
    """Colour an axis like its data so a twin-axis panel needs no legend over the data."""
    ax.set_ylabel(text, color=color)
    ax.tick_params(axis="y", colors=color)


class TrainingDashboard:
    """Six panels: loss, perplexity, learning rate, gradient norm, speed, GPU (or CPU) resources."""

    def __init__(
        self,
        summary: pd.DataFrame,
        batch_history: pd.DataFrame | None = None,
        run_name: str = "",
        config: Mapping[str, Any] | None = None,
        max_grad_norm: float | None = None,
        precision: str | None = None,
        evaluations: pd.DataFrame | None = None,
        world_size: int = 1,
    ) -> None:
        """``precision``: what the run trained in (the config may say "auto"). ``world_size``:
        its DDP processes, each with ``batch_size`` sequences. ``evaluations``: a step-cadence
        run's (step, val loss, ...): the loss and perplexity panels plot them per step."""
        if not isinstance(summary, pd.DataFrame):
            raise PlotError(
                f"TrainingDashboard needs the per-epoch summary as a pandas DataFrame (got "
                f"{type(summary).__name__}); use MetricsTracker.get_summary() or "
                "TrainingDashboard.from_tracker(tracker)."
            )
        summary = summary.copy()
        if M.EPOCH not in summary.columns:
            summary[M.EPOCH] = np.arange(1, len(summary) + 1)
        # A run resumed from an older checkpoint logs some epochs (and steps) twice: the later
        # record is the one the final model descends from.
        summary = summary.drop_duplicates(subset=M.EPOCH, keep="last")
        self.summary = summary.sort_values(M.EPOCH).reset_index(drop=True)
        if batch_history is not None and not batch_history.empty:
            batch_history = batch_history.copy()
            if M.STEP not in batch_history.columns:
                batch_history[M.STEP] = np.arange(1, len(batch_history) + 1)
            batch_history = batch_history.drop_duplicates(subset=M.STEP, keep="last")
            batch_history = batch_history.sort_values(M.STEP).reset_index(drop=True)
        else:
            batch_history = None
        self.batch_history = batch_history
        self.evaluations: pd.DataFrame | None = None
        if evaluations is not None and M.VAL_LOSS in evaluations.columns:
            evaluations = evaluations.dropna(subset=[M.VAL_LOSS])
            if M.STEP in evaluations.columns and not evaluations.empty:
                evaluations = evaluations.drop_duplicates(subset=M.STEP, keep="last")
                self.evaluations = evaluations.sort_values(M.STEP).reset_index(drop=True)
        self.config = dict(config or {})
        self.run_name = run_name or str(self.config.get("run_name", ""))
        if max_grad_norm is None:
            max_grad_norm = self.config.get("max_grad_norm")
        self.max_grad_norm = float(max_grad_norm) if max_grad_norm is not None else None
        self.precision, self.world_size = precision or None, int(world_size or 1)
        self.figure: Figure | None = None
        self.panels: dict[str, Any] = {}  # panel name -> its (main) Axes, filled by plot()

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_tracker(cls, tracker: Any, **kwargs: Any) -> TrainingDashboard:
        """Anything with ``get_summary()`` (and optionally ``batch_history()``)."""
        summary, history = summary_and_history(tracker)
        if summary is None:
            raise PlotError("from_tracker() needs a tracker with get_summary(), not a batch-history frame")
        eval_history = getattr(tracker, "eval_history", None)
        if callable(eval_history):
            kwargs.setdefault("evaluations", eval_history())
        return cls(summary, history, **kwargs)

    @classmethod
    def from_db(cls, db: Any, run_id: Any, **kwargs: Any) -> TrainingDashboard:
        """A stored run: ``db.get_run(run_id)`` (name, config) and ``db.get_metrics(run_id)``."""
        run = db.get_run(run_id)
        if not run:
            raise PlotError(f"No run with id {run_id!r} in the experiment database; "
                            "list_runs() shows the ids there are.")
        config = run.get("config") or {}
        if isinstance(config, str):
            config = json.loads(config)
        metrics = db.get_metrics(run_id)
        summary, history = metrics_frames(metrics)
        if config.get("eval_every_steps"):  # its val rows are evaluations at their steps
            evals = metrics[metrics["name"].isin([M.VAL_LOSS, M.VAL_PERPLEXITY])]
            evals = evals.pivot_table(index="step", columns="name", values="value", aggfunc="last")
            kwargs.setdefault("evaluations", evals.reset_index())
            summary = summary.drop(columns=[M.VAL_LOSS, M.VAL_PERPLEXITY], errors="ignore")
        kwargs.setdefault("run_name", str(run.get("name") or ""))
        kwargs.setdefault("config", config)
        kwargs.setdefault("precision", (run.get("summary") or {}).get("precision"))
        kwargs.setdefault("world_size", run.get("world_size") or 1)
        return cls(summary, history, **kwargs)

    # ------------------------------------------------------------------ output

    def plot(self) -> Figure:
        """Build the figure (a new one each call) with seaborn's whitegrid style, locally."""
        import seaborn as sns

        enable_notebook_figures()
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
            fig = Figure(figsize=(15, 8.5), layout="constrained")
            axes = fig.subplots(2, 3)
            self.panels = dict(zip(PANELS, axes.flat))
            self._loss_panel(self.panels["loss"])
            self._perplexity_panel(self.panels["perplexity"])
            self._lr_panel(self.panels["learning_rate"])
            self._grad_panel(self.panels["grad_norm"])
            self._speed_panel(self.panels["speed"])
            self._hardware_panel(self.panels["hardware"])
            fig.suptitle(self.title(), fontsize=13)
        self.figure = fig
        return fig

    def plot_panel(self, name: str, figsize: tuple[float, float] = (9, 4.5)) -> Figure:
        """One panel on its own, larger (the notebook's GPU-utilisation cell uses "hardware")."""
        import seaborn as sns

        if name not in PANELS:
            raise PlotError(f"No panel {name!r}; choose one of {', '.join(PANELS)}.")
        enable_notebook_figures()
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
            fig = Figure(figsize=figsize, layout="constrained")
            ax = fig.subplots()
            getattr(self, f"_{_PANEL_METHODS[name]}_panel")(ax)
        return fig

    def save(self, path: str | Path, dpi: int = 150) -> Path:
        """PNG, PDF or SVG by extension; written atomically (temp file + rename)."""
        path = Path(path)
        fmt = SAVE_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise PlotError(
                f"Cannot save the dashboard as {path.name!r}: the file name must end in "
                f"{', '.join(SAVE_FORMATS)} (PNG for notebooks, PDF or SVG for print)."
            )
        fig = self.figure if self.figure is not None else self.plot()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi))

    def _repr_png_(self) -> bytes:
        """So a dashboard left as a cell's last line shows itself in a notebook."""
        buffer = io.BytesIO()
        fig = self.figure if self.figure is not None else self.plot()
        fig.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()

    def title(self) -> str:
        """Run name, then the hyperparameters that explain the curves, then the outcome."""
        c = self.config
        parts = []
        if "learning_rate" in c:
            lr = np.format_float_scientific(float(c["learning_rate"]), trim="-", exp_digits=1)
            parts.append(f"lr {lr}")
        if "batch_size" in c:
            accum = c.get("grad_accum_steps", 1)
            parts.append(f"batch {c['batch_size']}" + (f" x {accum} accum" if accum != 1 else "")
                         + (f" x {self.world_size} ranks (DDP)" if self.world_size > 1 else ""))
        if "block_size" in c:
            parts.append(f"block {c['block_size']}")
        model = [f"{c[k]}{unit}" for k, unit in (("n_layers", "L"), ("n_heads", "H"), ("d_model", "d"))
                 if k in c]
        if model:
            parts.append("model " + "/".join(model))
        params = c.get("n_params") or c.get("num_parameters")
        if params:
            parts.append(f"{float(params) / 1e6:.1f}M params")
        precision = self.precision or c.get("precision")
        if precision and precision != "auto":  # "auto" says nothing about what was used
            parts.append(str(precision))
        outcome = []
        val = column_values(self.summary, M.VAL_LOSS)
        if self.evaluations is not None:
            evals = self.evaluations
            best = int(np.nanargmin(evals[M.VAL_LOSS].to_numpy(dtype=float)))
            outcome.append(f"best val loss {evals[M.VAL_LOSS].iloc[best]:.4f} "
                           f"(step {int(evals[M.STEP].iloc[best]):,})")
            outcome.append(f"{len(evals)} evaluation{'' if len(evals) == 1 else 's'}")
        elif val is not None:
            best = int(np.nanargmin(val))
            outcome.append(f"best val loss {val[best]:.4f} (epoch {int(self.summary[M.EPOCH][best])})")
        outcome.append(f"{len(self.summary)} epoch{'' if len(self.summary) == 1 else 's'}")
        seconds = column_values(self.summary, M.EPOCH_DURATION)
        if seconds is not None:
            outcome.append(f"{format_duration(float(np.nansum(seconds)))} training")
        lines = [self.run_name or "training run", "  |  ".join(parts + outcome)]
        return "\n".join(line for line in lines if line)

    # ------------------------------------------------------------------ panels

    def _epoch_x(self, ax: Any) -> np.ndarray:
        """The epochs, with ``ax``'s x axis labelled and ticked for them."""
        epochs = self._epochs()
        ax.set_xlabel("epoch")
        epoch_axis(ax, epochs)
        return epochs

    def _epochs(self) -> np.ndarray:
        return self.summary[M.EPOCH].to_numpy(dtype=float)

    def _steps(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        values = column_values(self.batch_history, name)
        if values is None:
            return None
        return self.batch_history[M.STEP].to_numpy(dtype=float), values

    def _loss_panel(self, ax: Any) -> None:
        if self.evaluations is not None:
            self._loss_per_step(ax)
            return
        ax.set_title("Loss per epoch")
        epochs = self._epochs()
        series = []
        for name, color, marker, label in ((M.TRAIN_LOSS, GREEN, "o", "train"),
                                           (M.VAL_LOSS, ORANGE, "s", "validation")):
            values = column_values(self.summary, name)
            if values is not None:
                ax.plot(epochs, values, marker=marker, color=color, label=label, lw=1.8, ms=5)
                series.append((label, color, values))
        if not series:
            _no_data(ax, "no train/val loss recorded")
            return
        ax.set_xlabel("epoch")
        ax.set_ylabel("cross-entropy loss (nats/token)")
        epoch_axis(ax, epochs)
        _zoom_past_first_epoch(ax, epochs, series)
        val = column_values(self.summary, M.VAL_LOSS)
        if val is not None:
            best = int(np.nanargmin(val))
            best_epoch, best_loss = epochs[best], val[best]
            _mark_best(ax, epochs, best_epoch, best_loss, f"best epoch ({int(best_epoch)})")
        ax.legend(loc="best", fontsize=9)

    def _loss_per_step(self, ax: Any) -> None:
        """A step-cadence run: batch loss (raw and smoothed) and every evaluation at its step."""
        ax.set_title("Loss per optimizer step")
        evals = self.evaluations
        assert evals is not None
        batch = self._steps(M.BATCH_LOSS)
        series = []
        if batch is not None:
            steps, losses = batch
            ax.plot(*downsample(steps, losses, 2000, keep_extremes=True), color=BLUE, alpha=0.25,
                    lw=0.8, label="train (batch)")
            smooth = ema(losses, 0.9)
            ax.plot(*downsample(steps, smooth, 2000, keep_extremes=False), color=BLUE, lw=1.6,
                    label="train (batch, EMA 0.9)")
            series.append(smooth)
        x = evals[M.STEP].to_numpy(dtype=float)
        train = column_values(evals, M.TRAIN_LOSS)
        if train is not None:
            ax.plot(x, train, marker="o", color=GREEN, lw=1.4, ms=5, label="train (since last eval)")
        val = evals[M.VAL_LOSS].to_numpy(dtype=float)
        ax.plot(x, val, marker="s", color=ORANGE, lw=1.8, ms=5, label="validation")
        series.append(val)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy loss (nats/token)")
        ax.xaxis.set_major_formatter(FuncFormatter(_thousands))
        finite = np.concatenate([v[np.isfinite(v)] for v in series])
        if len(finite) and batch is not None:  # the first steps' ln(vocab) would flatten the rest
            later = np.concatenate([s[len(s) // 10:] for s in series])
            later = later[np.isfinite(later)]
            if len(later):
                low, high = float(later.min()), float(later.max())
                pad = 0.08 * (high - low or 1.0)
                ax.set_ylim(low - pad, high + pad)
        best = int(np.nanargmin(val))
        _mark_best(ax, x, x[best], val[best], f"best evaluation (step {int(x[best]):,})")
        ax.legend(loc="best", fontsize=9)

    def _perplexity_per_step(self, ax: Any) -> None:
        ax.set_title("Perplexity per evaluation (log scale)")
        evals = self.evaluations
        assert evals is not None
        x = evals[M.STEP].to_numpy(dtype=float)
        for ppl_name, loss_name, color, marker, label in (
            (M.TRAIN_PERPLEXITY, M.TRAIN_LOSS, GREEN, "o", "train"),
            (M.VAL_PERPLEXITY, M.VAL_LOSS, ORANGE, "s", "validation"),
        ):
            values = column_values(evals, ppl_name)
            if values is None:
                loss = column_values(evals, loss_name)
                values = None if loss is None else np.array([M.perplexity(v) for v in loss])
            if values is not None:
                ax.plot(x, values, marker=marker, color=color, label=label, lw=1.8, ms=5)
        perplexity_axis(ax)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("perplexity (exp of loss)")
        ax.xaxis.set_major_formatter(FuncFormatter(_thousands))
        _accuracy_twin(ax, x, column_values(evals, M.VAL_ACCURACY))

    def _perplexity_panel(self, ax: Any) -> None:
        if self.evaluations is not None:
            self._perplexity_per_step(ax)
            return
        ax.set_title("Perplexity per epoch (log scale)")
        epochs = self._epochs()
        drawn = False
        for ppl_name, loss_name, color, marker, label in (
            (M.TRAIN_PERPLEXITY, M.TRAIN_LOSS, GREEN, "o", "train"),
            (M.VAL_PERPLEXITY, M.VAL_LOSS, ORANGE, "s", "validation"),
        ):
            values = column_values(self.summary, ppl_name)
            if values is None:  # older frames: derive it the same capped way the trainer does
                loss = column_values(self.summary, loss_name)
                values = None if loss is None else np.array([M.perplexity(v) for v in loss])
            if values is not None:
                ax.plot(epochs, values, marker=marker, color=color, label=label, lw=1.8, ms=5)
                drawn = True
        if not drawn:
            _no_data(ax, "no loss recorded")
            return
        perplexity_axis(ax)
        ax.set_xlabel("epoch")
        ax.set_ylabel("perplexity (exp of loss)")
        epoch_axis(ax, epochs)
        _accuracy_twin(ax, epochs, column_values(self.summary, M.VAL_ACCURACY))

    def _lr_panel(self, ax: Any) -> None:
        ax.set_title("Learning-rate schedule")
        per_step = self._steps(M.LEARNING_RATE)
        if per_step is not None:
            ax.plot(*downsample(*per_step, MAX_STEP_POINTS, keep_extremes=False), color=BLUE, lw=1.8)
            ax.set_xlabel("optimizer step")
        else:
            values = column_values(self.summary, M.LEARNING_RATE)
            if values is None:
                _no_data(ax, "no learning rate recorded")
                return
            ax.plot(self._epochs(), values, marker="o", color=BLUE, lw=1.8)
            ax.set_xlabel("epoch (learning rate at the end of each)")
            epoch_axis(ax, self._epochs())
        ax.set_ylabel("learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.set_ylim(bottom=0)

    def _grad_panel(self, ax: Any) -> None:
        ax.set_title("Gradient norm before clipping")
        per_step = self._steps(M.GRAD_NORM)
        if per_step is not None:
            steps, norms = per_step
            ax.plot(*downsample(steps, norms, MAX_STEP_POINTS), color=PURPLE, alpha=0.3, lw=0.8,
                    label="per step")
            ax.plot(*downsample(steps, ema(norms, 0.95), MAX_STEP_POINTS, keep_extremes=False),
                    color=PURPLE, lw=2.0, label="smoothed (EMA 0.95)")
            ax.set_xlabel("optimizer step")
        else:
            norms = column_values(self.summary, M.GRAD_NORM)
            if norms is None:
                _no_data(ax, "no gradient norm recorded")
                return
            ax.plot(self._epochs(), norms, marker="o", color=PURPLE, lw=1.8, label="last step of epoch")
            ax.set_xlabel("epoch")
            epoch_axis(ax, self._epochs())
        finite = norms[np.isfinite(norms) & (norms > 0)]
        # Early norms are often 10-100x the later ones: a log axis keeps both readable.
        if len(finite) and np.percentile(finite, 99) > 20 * np.percentile(finite, 5):
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        if self.max_grad_norm is not None and self.max_grad_norm > 0:
            clipped = float(np.mean(norms[np.isfinite(norms)] > self.max_grad_norm))
            # A threshold far above every norm would squash the curve into the bottom of the
            # panel: keep the line (and its legend entry) but leave it above the view.
            far = len(finite) > 0 and self.max_grad_norm > 1.5 * float(finite.max())
            data_limits = ax.get_ylim()
            ax.axhline(self.max_grad_norm, color=RED, ls="--", lw=1.4, gid="clip-threshold",
                       label=f"clip threshold {self.max_grad_norm:g}{' (above the view)' if far else ''}"
                             f": {clipped:.0%} of {'steps' if per_step is not None else 'epochs'} clipped")
            if far:
                ax.set_ylim(*data_limits)
        ax.set_ylabel("L2 norm of all gradients")
        ax.legend(loc="best", fontsize=9)

    def _speed_panel(self, ax: Any) -> None:
        seconds = column_values(self.summary, M.EPOCH_DURATION)
        rate = column_values(self.summary, M.TOKENS_PER_SEC)
        mfu = column_values(self.summary, M.MFU)
        title = "Epoch duration & throughput"
        if mfu is not None:
            title += f" (MFU {np.nanmean(mfu):.0%})"
        ax.set_title(title)
        if seconds is None and rate is None:
            _no_data(ax, "no timing recorded")
            return
        epochs = self._epoch_x(ax)
        if seconds is not None:
            ax.bar(epochs, seconds, color=BLUE, alpha=0.75, width=0.6)
            _twin_label(ax, "epoch duration (s, bars)", BLUE)
            ax.set_ylim(0, np.nanmax(seconds) * 1.15)
        if rate is not None:
            _throughput(ax, epochs, rate, "o-", "throughput (tokens/s, line)", 1.15,
                        twin=seconds is not None)

    def _hardware_panel(self, ax: Any) -> None:
        used = column_values(self.summary, M.GPU_MEMORY_USED_GB)
        util = column_values(self.summary, M.GPU_UTILIZATION)
        peak = column_values(self.summary, M.GPU_MAX_MEMORY_ALLOCATED_GB)
        total = column_values(self.summary, M.GPU_MEMORY_TOTAL_GB)
        if any(v is not None for v in (used, util, peak)):
            self._gpu_panel(ax, used, peak, total, util)
        else:
            self._cpu_panel(ax)

    def _gpu_panel(self, ax: Any, used: Any, peak: Any, total: Any, util: Any) -> None:
        ax.set_title("GPU memory & utilisation")
        epochs = self._epoch_x(ax)
        handles = []
        if used is not None:
            handles += ax.plot(epochs, used, "o-", color=BLUE, lw=1.8, ms=5, label="used, whole GPU (NVML)")
        if peak is not None:
            handles += ax.plot(epochs, peak, "^-", color=PURPLE, lw=1.8, ms=5,
                               label="peak allocated, this run")
        top = max(float(np.nanmax(v)) for v in (used, peak, total) if v is not None) if (
            used is not None or peak is not None or total is not None) else 1.0
        if total is not None:
            handles.append(ax.axhline(float(np.nanmax(total)), color=GREY, ls="--", lw=1.4,
                                      label=f"total {np.nanmax(total):.1f} GiB"))
        ax.set_ylabel("memory (GiB)")
        # Headroom above the data on both axes: the legend lives there and never covers a line.
        ax.set_ylim(0, top * 1.45)
        ax.set_yticks([t for t in MaxNLocator(6).tick_values(0, top) if t <= top * 1.001])
        if util is not None:
            twin = ax.twinx()
            handles += twin.plot(epochs, util, "s--", color=GREEN, lw=1.5, ms=5,
                                 label="utilisation (%)")
            twin.set_ylim(0, 145)
            twin.set_yticks([0, 25, 50, 75, 100])
            twin.grid(False)
            _twin_label(twin, "GPU utilisation (%)", GREEN)
        holder = ax if util is None else twin
        holder.legend(handles=handles, loc="upper center", ncol=2, fontsize=9, frameon=True)

    def _cpu_panel(self, ax: Any) -> None:
        ax.set_title("CPU run: throughput & memory (no GPU)")
        rss = column_values(self.summary, M.CPU_RSS_GB)
        rate = column_values(self.summary, M.TOKENS_PER_SEC)
        if rss is None and rate is None:
            _no_data(ax, "no throughput or memory recorded")
            return
        epochs = self._epoch_x(ax)
        handles = []
        holder = ax
        if rss is not None:
            top = float(np.nanmax(rss))
            handles += ax.plot(epochs, rss, "o-", color=BLUE, lw=1.8, ms=7,
                               label="process memory (GiB)")
            # Memory keeps to the lower part of the panel and throughput to the upper part:
            # scaled alike, the two would sit on each other (with one epoch, as one dot).
            _band(ax, top, top * (2.4 if rate is not None else 1.3))
            _twin_label(ax, "process memory, RSS (GiB)", BLUE)
        if rate is not None:
            holder = _throughput(ax, epochs, rate, "s--", "throughput (tokens/s)",
                                 1.45 if rss is not None else 1.3, twin=rss is not None)
            handles += holder.lines[-1:]
        if len(handles) > 1:
            holder.legend(handles=handles, loc="upper center", ncol=2, fontsize=9, frameon=True)


def _band(ax: Any, top: float, limit: float) -> None:
    """Axis from 0 to ``limit``, ticked only up to just past the data's ``top``: the rest of
    the height belongs to another series (or the legend), and unticked it reads as such."""
    ax.set_ylim(0, limit)
    ticks = MaxNLocator(5).tick_values(0, top)
    ceiling = min((t for t in ticks if t >= top * 0.999), default=top)  # one tick at or above
    ax.set_yticks([t for t in ticks if t <= ceiling])


def _throughput(ax: Any, epochs: np.ndarray, rate: np.ndarray, style: str, label: str,
                headroom: float, twin: bool) -> Any:
    """Tokens/s per epoch (on a twin axis when the panel shows something else); its axis."""
    target = ax.twinx() if twin else ax
    target.plot(epochs, rate, style, color=ORANGE, lw=1.8, ms=6, label=label)
    target.yaxis.set_major_formatter(FuncFormatter(_thousands))
    target.set_ylim(0, np.nanmax(rate) * headroom)
    _twin_label(target, label, ORANGE)
    if twin:
        target.grid(False)
    return target


def _zoom_past_first_epoch(ax: Any, epochs: np.ndarray, series: list) -> None:
    """Keep epoch 1's train loss (its first steps sit at ln(vocab)) from flattening the rest:
    when it towers over them, fit the axis to epochs 2+ and label off-scale points at the top."""
    if len(epochs) < 4:
        return
    rest = np.concatenate([v[1:] for _, _, v in series])
    rest = rest[np.isfinite(rest)]
    firsts = [v[0] for _, _, v in series if math.isfinite(v[0])]
    if not len(rest) or not firsts:
        return
    low, high = float(rest.min()), float(rest.max())
    spread = max(high - low, 1e-3 * max(abs(high), 1.0))
    if max(firsts) - high <= 2.0 * spread:
        return
    top = high + 0.6 * spread  # room for the legend and the best-epoch note
    ax.set_ylim(low - 0.1 * spread, top)
    for label, color, values in series:
        if math.isfinite(values[0]) and values[0] > top:
            ax.annotate(f"\u2191 {label} {values[0]:.2f} at epoch {epochs[0]:g} (off scale)",
                        xy=(epochs[0], top), xytext=(8, -4), textcoords="offset points",
                        fontsize=8, color=color, ha="left", va="top", zorder=6,
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.9})


def _mark_best(ax: Any, xs: np.ndarray, x: float, loss: float, label: str) -> None:
    """The dashed line and the boxed "best val" note, on the side of the panel with room."""
    ax.axvline(x, color=RED, ls="--", lw=1.2, gid="best-epoch", label=label)
    right_half = x > (xs.min() + xs.max()) / 2
    ax.annotate(
        f"best val {loss:.4f}", xy=(x, loss),
        xytext=(-14 if right_half else 14, 30), textcoords="offset points",
        ha="right" if right_half else "left", fontsize=9, color=RED,
        bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": RED, "alpha": 0.9},
        arrowprops={"arrowstyle": "->", "color": RED},
    )


def _accuracy_twin(ax: Any, x: np.ndarray, accuracy: np.ndarray | None) -> None:
    """Next-token accuracy on the perplexity panel's right axis (older runs have none)."""
    if accuracy is None or not np.isfinite(accuracy).any():
        ax.legend(loc="best", fontsize=9)
        return
    ax.set_title(ax.get_title().replace("(log scale)", "(log scale) & accuracy"))
    twin = ax.twinx()
    twin.plot(x, 100 * accuracy, marker="^", color=PURPLE, ls="--", lw=1.4, ms=5,
              label="val next-token accuracy")
    twin.set_ylabel("next-token accuracy (%)", color=PURPLE)
    twin.tick_params(axis="y", colors=PURPLE)
    (h1, l1), (h2, l2) = ax.get_legend_handles_labels(), twin.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="best", fontsize=9)
