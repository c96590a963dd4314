"""LivePlotter: a loss/perplexity figure that redraws in place while the model trains.

Drawing is the expensive part (one Agg render + PNG encode is tens of milliseconds), so every
step only appends two floats to a list; the figure is redrawn at most every ``every_seconds``
and at each epoch end. In a notebook the picture is shown once through an IPython display handle
and then replaced in place, so the progress bar and samples printed between redraws survive
(``clear_output`` would wipe them). Outside a notebook nothing is drawn until the end, when the
final PNG is saved. The colours, smoothing and axes it shares with every other picture live in
:mod:`plot_style`. Floor 4: pandas/numpy/matplotlib only, never torch.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, ScalarFormatter

from . import metric_names as M
from .callbacks import Callback
from .plot_style import (
    BLUE,
    GREEN,
    ORANGE,
    PlotError,
    downsample,
    ema,
    epoch_axis,
    in_notebook,
    perplexity_axis,
    summary_and_history,
)
from .workspace import RESULT_SUFFIXES, atomic_write, check_name

_EPOCH_FIELDS = (M.TRAIN_LOSS, M.VAL_LOSS, M.TRAIN_PERPLEXITY, M.VAL_PERPLEXITY)


# ---------------------------------------------------------------------- the live plot


class LivePlotter(Callback):
    """Loss (batch loss raw + smoothed, epoch train/val points) and perplexity, live.

    ``live``: None draws only inside a notebook; True draws even outside one (the benchmark uses
    it to measure the notebook's cost; the picture is rendered and thrown away); False never draws
    live. Either way ``on_train_end`` saves the PNG: at ``path`` when given (a session passes
    ``workspace.result(run, "live")``), else at ``<results_dir>/<run_name>_live.png``.
    """

    def __init__(
        self,
        results_dir: str | Path | None = None,
        run_name: str = "run",
        every_seconds: float = 5.0,
        max_points: int = 2000,
        smoothing: float = 0.9,
        *,
        live: bool | None = None,
        dpi: int = 80,
        figsize: tuple[float, float] = (12.0, 4.2),
        max_share: float = 0.005,
        path: str | Path | None = None,
    ) -> None:
        problems = []
        if not (isinstance(every_seconds, (int, float)) and every_seconds >= 0):
            problems.append(f"every_seconds={every_seconds!r}: must be >= 0 (seconds between redraws)")
        if not (isinstance(max_points, int) and max_points >= 10):
            problems.append(f"max_points={max_points!r}: must be a whole number >= 10")
        if not (isinstance(smoothing, (int, float)) and 0 <= smoothing < 1):
            problems.append(f"smoothing={smoothing!r}: must be in [0, 1) (0 = no smoothing, 0.9 = smooth)")
        if not (isinstance(max_share, (int, float)) and 0 <= max_share < 1):
            problems.append(f"max_share={max_share!r}: must be in [0, 1) (0 = no cost cap)")
        if problems:
            raise PlotError("LivePlotter: " + "; ".join(problems))
        self.results_dir = Path(results_dir) if results_dir is not None else None
        self.run_name = run_name
        self.path = Path(path) if path is not None else None
        if self.path is None and self.results_dir is not None:
            check_name(run_name)  # it names the PNG: refused now, not after training
        self.every_seconds = float(every_seconds)
        self.max_points = max_points
        self.smoothing = float(smoothing)
        self.live = live
        self.dpi = dpi
        self.figsize = figsize
        self.max_share = float(max_share)
        self.draws = 0  # how many times the figure was rendered (tests and benchmarks read it)
        self.steps: list[float] = []
        self.losses: list[float] = []
        self.epochs: list[dict[str, float]] = []  # epoch, step (or NaN) and the _EPOCH_FIELDS
        # Step-cadence evaluations (eval_every_steps): step, epoch and the _EPOCH_FIELDS. When
        # there are any, they are the train/val points, at their optimizer steps.
        self.evals: list[dict[str, float]] = []
        # Last step seen in each epoch: where a summary's epoch points go on the step axis.
        self.epoch_ends: dict[float, float] = {}
        self._next_draw = -math.inf  # time.monotonic() after which a step may redraw
        self._next_layout = -math.inf  # ... and after which a redraw may re-run the layout
        self._fig: Figure | None = None
        self._artists: dict[str, Any] = {}
        self._handle: Any = None  # IPython DisplayHandle once shown

    # ------------------------------------------------------------------ callback protocol

    def on_step_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        loss = metrics.get(M.BATCH_LOSS)
        if loss is None:
            return
        step = float(metrics.get(M.STEP, len(self.steps) + 1))
        self.steps.append(step)
        self.losses.append(float(loss))
        if M.EPOCH in metrics:
            self.epoch_ends[float(metrics[M.EPOCH])] = step
        self._maybe_redraw()

    def on_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        row = {M.EPOCH: float(metrics.get(M.EPOCH, len(self.epochs) + 1)),
               M.STEP: float(metrics.get(M.STEP, self.steps[-1] if self.steps else math.nan))}
        row.update({k: float(metrics.get(k, math.nan)) for k in _EPOCH_FIELDS})
        self.epochs.append(row)
        if self._drawing():
            self.redraw(layout=True)

    def on_evaluate(self, trainer: Any, metrics: dict[str, float]) -> None:
        row = {M.STEP: float(metrics.get(M.STEP, self.steps[-1] if self.steps else math.nan)),
               M.EPOCH: float(metrics.get(M.EPOCH, math.nan))}
        row.update({k: float(metrics.get(k, math.nan)) for k in _EPOCH_FIELDS})
        # A re-run evaluation (resumed before it) replaces the old point, as in the tracker.
        self.evals = [r for r in self.evals if r[M.STEP] < row[M.STEP]] + [row]
        if self._drawing():
            self.redraw(layout=True)

    def on_train_end(self, trainer: Any, result: Any) -> None:
        if self._drawing():
            self._next_layout = -math.inf  # the last picture gets a fresh layout, whatever it costs
            self.redraw(layout=True)
        if self.path is not None or self.results_dir is not None:
            self.save()

    def state_dict(self) -> dict[str, Any]:
        # Plain lists of Python floats: checkpoints are loaded with torch.load(weights_only=True).
        return {"steps": list(self.steps), "losses": list(self.losses),
                "epochs": [dict(row) for row in self.epochs],
                "evals": [dict(row) for row in self.evals],
                "epoch_ends": [[k, v] for k, v in self.epoch_ends.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = [float(v) for v in state.get("steps", [])]
        self.losses = [float(v) for v in state.get("losses", [])]
        self.epochs = [{k: float(v) for k, v in row.items()} for row in state.get("epochs", [])]
        self.epoch_ends = {float(k): float(v) for k, v in state.get("epoch_ends", [])}
        self.evals = [{k: float(v) for k, v in row.items()} for row in state.get("evals", [])]
        if len(self.steps) != len(self.losses):
            raise PlotError(
                f"LivePlotter state is inconsistent ({len(self.steps)} steps, {len(self.losses)} "
                "losses); the checkpoint's plot history is damaged. Start the plotter without it."
            )

    # ------------------------------------------------------------------ public API

    def update(self, source: Any, *, force: bool = False) -> None:
        """Replace the plotted history with a tracker's (or a summary / batch-history frame's).

        The tracker is the record of truth; this lets a notebook re-plot a finished or resumed
        run. Throttled like steps unless ``force``.
        """
        summary, history = summary_and_history(source)
        if history is not None:
            self._set_history(history)
        if summary is not None:
            self._set_summary(summary)
        eval_history = getattr(source, "eval_history", None)
        if callable(eval_history):
            self._set_evals(eval_history())
        if force or self._fig is None:
            if self._drawing():
                self.redraw(layout=True)
        else:
            self._maybe_redraw()

    def redraw(self, layout: bool = False) -> Figure:
        """Update the artists in place and show the figure (notebook) or render it (live=True).

        After a redraw that took ``d`` seconds, the next step redraw waits
        ``max(every_seconds, d / max_share)``: on a slow machine the plot updates less often
        instead of slowing training down. ``layout`` asks for constrained layout to be re-run
        (an extra draw pass, so it has the same budget); other redraws reuse the last layout.
        """
        started = time.perf_counter()
        fresh = self._fig is None
        fig = self._figure()
        self._refresh(fig)
        if fresh or (layout and time.monotonic() >= self._next_layout):
            _fit_layout(fig)
            self._next_layout = time.monotonic() + self._budget_wait(time.perf_counter() - started)
        if self.live is not False:
            if in_notebook():
                self._show(fig)
            elif self.live:
                # What a notebook pays: one render + PNG encode. Kept so the benchmark is honest.
                self._png(fig)
        self.draws += 1
        wait = self._budget_wait(time.perf_counter() - started)
        self._next_draw = time.monotonic() + max(self.every_seconds, wait)
        return fig

    def _budget_wait(self, cost: float) -> float:
        return cost / self.max_share if self.max_share else 0.0

    def figure(self) -> Figure:
        """The figure with everything recorded so far (drawn on demand, shown nowhere)."""
        fig = self._figure()
        self._refresh(fig)
        return fig

    def save(self, path: str | Path | None = None, dpi: int = 150) -> Path:
        """Write the current plot as PNG; default the plotter's ``path``, else
        ``<results_dir>/<run_name>_live.png``."""
        if path is None:
            path = self.path
        if path is None:
            if self.results_dir is None:
                raise PlotError("LivePlotter.save(): give a path, or create the plotter with "
                                "path=... or results_dir=...")
            path = self.results_dir / f"{check_name(self.run_name)}{RESULT_SUFFIXES['live']}"
        fig = self.figure()
        _fit_layout(fig)
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))

    def close(self) -> None:
        """Drop the figure (its memory) and the display handle; the recorded history stays."""
        if self._fig is not None:
            self._fig.clear()
        self._fig, self._artists, self._handle = None, {}, None

    # ------------------------------------------------------------------ internals

    def _drawing(self) -> bool:
        if self.live is None:
            return in_notebook()
        return self.live

    def _maybe_redraw(self) -> None:
        # Cheap when nothing is due: one monotonic() call and a compare.
        if time.monotonic() >= self._next_draw and self._drawing():
            self.redraw()

    def _set_history(self, history: pd.DataFrame) -> None:
        if M.BATCH_LOSS not in history.columns:
            raise PlotError(f"batch history has no {M.BATCH_LOSS!r} column (columns: {list(history.columns)})")
        steps = history[M.STEP] if M.STEP in history.columns else pd.RangeIndex(1, len(history) + 1)
        self.steps = [float(v) for v in steps]
        self.losses = [float(v) for v in history[M.BATCH_LOSS]]
        self.epoch_ends = {}
        if M.EPOCH in history.columns:
            ends = pd.Series(self.steps).groupby(history[M.EPOCH].to_numpy()).max()
            self.epoch_ends = {float(k): float(v) for k, v in ends.items()}

    def _set_summary(self, summary: pd.DataFrame) -> None:
        if summary.empty:
            self.epochs = []
            return
        epochs = summary[M.EPOCH] if M.EPOCH in summary.columns else pd.RangeIndex(1, len(summary) + 1)
        end_step: Mapping[float, float] = self.epoch_ends
        if M.STEP in summary.columns:
            end_step = {float(e): float(v) for e, v in zip(epochs, summary[M.STEP])}
        rows = []
        for i, epoch in enumerate(epochs):
            row = {M.EPOCH: float(epoch), M.STEP: float(end_step.get(float(epoch), math.nan))}
            for k in _EPOCH_FIELDS:
                row[k] = float(summary[k].iloc[i]) if k in summary.columns else math.nan
            rows.append(row)
        self.epochs = rows

    def _set_evals(self, evals: pd.DataFrame) -> None:
        if evals.empty or M.STEP not in evals.columns:
            self.evals = []
            return
        self.evals = [{k: float(r[k]) if k in evals.columns else math.nan
                       for k in (M.STEP, M.EPOCH, *_EPOCH_FIELDS)}
                      for _, r in evals.iterrows()]

    def _figure(self) -> Figure:
        if self._fig is not None:
            return self._fig
        # A bare Figure (not pyplot): never registered with pyplot, so the notebook's inline
        # backend cannot show it a second time at the end of the cell, and no backend is chosen.
        fig = Figure(figsize=self.figsize, dpi=self.dpi)
        # Our own Agg canvas, kept for the figure's lifetime: savefig would build a new canvas and
        # renderer on every call (a third of a redraw's cost), and pyplot's backend stays untouched.
        FigureCanvasAgg(fig)
        loss_ax, ppl_ax = fig.subplots(1, 2, width_ratios=(1.7, 1))
        a = self._artists
        (a["raw"],) = loss_ax.plot([], [], color=BLUE, alpha=0.3, lw=0.8, label="batch loss")
        (a["smooth"],) = loss_ax.plot([], [], color=BLUE, lw=2.0,
                                      label=f"batch loss (EMA {self.smoothing:g})")
        (a["train"],) = loss_ax.plot([], [], "o-", color=GREEN, ms=6, lw=1.2, label="train (epoch)")
        (a["val"],) = loss_ax.plot([], [], "s-", color=ORANGE, ms=6, lw=1.2, label="val (epoch)")
        loss_ax.set_xlabel("optimizer step")
        loss_ax.set_ylabel("loss (cross-entropy, nats)")
        loss_ax.grid(True, alpha=0.3)
        loss_ax.legend(loc="upper right", fontsize=9, framealpha=0.85)
        (a["train_ppl"],) = ppl_ax.plot([], [], "o-", color=GREEN, ms=6, label="train")
        (a["val_ppl"],) = ppl_ax.plot([], [], "s-", color=ORANGE, ms=6, label="val")
        perplexity_axis(ppl_ax)
        ppl_ax.set_xlabel("epoch")
        ppl_ax.set_ylabel("perplexity (log scale)")
        ppl_ax.set_title("perplexity per epoch")
        ppl_ax.grid(True, which="major", alpha=0.3)
        ppl_ax.legend(loc="upper right", fontsize=9, framealpha=0.85)
        epoch_axis(ppl_ax)
        a["loss_ax"], a["ppl_ax"] = loss_ax, ppl_ax
        self._fig = fig
        return fig

    def _refresh(self, fig: Figure) -> None:
        a = self._artists
        loss_ax, ppl_ax = a["loss_ax"], a["ppl_ax"]
        steps = np.asarray(self.steps, dtype=float)
        losses = np.asarray(self.losses, dtype=float)
        smooth = ema(losses, self.smoothing)  # on the full data, before downsampling
        a["raw"].set_data(*downsample(steps, losses, self.max_points, keep_extremes=True))
        a["smooth"].set_data(*downsample(steps, smooth, self.max_points, keep_extremes=False))

        # A step-cadence run's points are its evaluations, at their steps; else the epochs'.
        points = self.evals or self.epochs
        epochs = np.array([r[M.EPOCH] for r in self.epochs], dtype=float)
        ends = np.array([r[M.STEP] for r in points], dtype=float)
        # Epoch points sit at the step where the epoch ended; with no step data, at the epoch.
        x = ends if len(steps) or self.evals else epochs
        loss_ax.set_xlabel("optimizer step" if len(steps) or not len(points) or self.evals
                           else "epoch")
        if self.evals and a["val"].get_label() == "val (epoch)":
            a["train"].set_label("train (since last eval)")
            a["val"].set_label("val (every eval)")
            loss_ax.legend(loc="upper right", fontsize=9, framealpha=0.85)
            ppl_ax.set_xlabel("optimizer step")
            ppl_ax.set_title("perplexity per evaluation")
            ppl_ax.xaxis.set_major_locator(MaxNLocator(nbins="auto"))
            ppl_ax.xaxis.set_major_formatter(ScalarFormatter())
        for key, name in (("train", M.TRAIN_LOSS), ("val", M.VAL_LOSS)):
            a[key].set_data(*_finite(x, [r[name] for r in points]))
        ppl_x = ends if self.evals else epochs
        for key, name, loss_name in (("train_ppl", M.TRAIN_PERPLEXITY, M.TRAIN_LOSS),
                                     ("val_ppl", M.VAL_PERPLEXITY, M.VAL_LOSS)):
            values = [r[name] if math.isfinite(r[name]) else M.perplexity(r[loss_name])
                      for r in points]
            a[key].set_data(*_finite(ppl_x, values))

        for ax in (loss_ax, ppl_ax):
            ax.set_autoscale_on(True)  # a previous set_ylim turned it off
            ax.relim()
            ax.autoscale_view()
        if len(epochs) and not self.evals:
            epoch_axis(ppl_ax, epochs)
        _clip_early_spike(loss_ax, smooth, losses, [r[M.VAL_LOSS] for r in points])
        loss_ax.set_title(self._status(smooth))

    def _status(self, smooth: np.ndarray) -> str:
        parts = [self.run_name]
        if self.steps:
            parts.append(f"step {int(self.steps[-1]):,}")
            finite = smooth[np.isfinite(smooth)]
            if len(finite):
                parts.append(f"smoothed loss {finite[-1]:.4f}")
        if self.evals:
            if math.isfinite(self.evals[-1][M.VAL_LOSS]):
                parts.append(f"val {self.evals[-1][M.VAL_LOSS]:.4f} "
                             f"(step {int(self.evals[-1][M.STEP]):,})")
        elif self.epochs:
            last = self.epochs[-1]
            parts.append(f"epoch {int(last[M.EPOCH])}")
            if math.isfinite(last[M.VAL_LOSS]):
                parts.append(f"val {last[M.VAL_LOSS]:.4f}")
        return " | ".join(parts)

    def _png(self, fig: Figure) -> bytes:
        from PIL import Image  # matplotlib's own dependency

        fig.canvas.draw()
        buffer = io.BytesIO()
        # Fast zlib level: the image is shown once and replaced a few seconds later.
        Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).save(buffer, format="png",
                                                                    compress_level=1)
        return buffer.getvalue()

    def _show(self, fig: Figure) -> None:
        from IPython.display import Image, display

        image = Image(data=self._png(fig), format="png")
        if self._handle is None:
            self._handle = display(image, display_id=True)
        else:
            self._handle.update(image)


def _fit_layout(fig: Figure) -> None:
    """Run constrained layout once and freeze it: with an engine attached, every savefig draws
    the figure twice (layout pass + render), which nearly doubles the cost of a live redraw."""
    fig.set_layout_engine("constrained")
    fig.draw_without_rendering()
    fig.set_layout_engine("none")


def _finite(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _clip_early_spike(ax: Any, smooth: np.ndarray, raw: np.ndarray, val_losses: list[float]) -> None:
    """Keep the first steps' huge loss (about ln(vocab) at init) from flattening everything else.

    The top comes from the smoothed curve after its first 10% (plus room for the raw noise) and
    the validation points; the early drop is cut at the top edge instead of squashing the part
    of the run a person is watching. The title always carries the current numbers.
    """
    finite = np.isfinite(smooth)
    if finite.sum() < 50:
        return
    skip = len(smooth) // 10
    settled = smooth[skip:][finite[skip:]]
    noise = np.nanstd(raw[skip:] - smooth[skip:])
    top = max([float(settled.max()) + 3 * float(noise)] + [v for v in val_losses if math.isfinite(v)])
    low, high = ax.get_ylim()
    if high > top:
        ax.set_ylim(low, top + 0.05 * (top - low))
