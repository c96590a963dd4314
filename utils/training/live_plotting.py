"""LivePlotter: a loss/perplexity figure that redraws in place while the model trains.

Drawing is the expensive part (one Agg render + PNG encode is tens of milliseconds), so every
step only appends two floats to a list; the figure is redrawn at most every ``every_seconds``
and at each epoch end. In a notebook the picture is shown once through an IPython display handle
and then replaced in place, so the progress bar and samples printed between redraws survive
(``clear_output`` would wipe them). Outside a notebook nothing is drawn until the end, when the
final PNG is saved. Floor 4: pandas/numpy/matplotlib only, never torch.
"""

from __future__ import annotations

import io
import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, Locator, LogLocator, MaxNLocator, NullFormatter

from . import metric_names as M
from .callbacks import Callback
from .errors import PersonFacing
from .workspace import RESULT_SUFFIXES, atomic_write, check_name

# Line colours (seaborn's "deep" palette, written out so this module needs no seaborn import).
BLUE, ORANGE, GREEN, RED, PURPLE, GREY = (
    "#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#8C8C8C",
)
_EPOCH_FIELDS = (M.TRAIN_LOSS, M.VAL_LOSS, M.TRAIN_PERPLEXITY, M.VAL_PERPLEXITY)


class PlotError(PersonFacing, ValueError):
    """A plotting input a person got wrong (bad argument, unknown file type, empty data)."""


# ---------------------------------------------------------------------- helpers shared with dashboard


def in_notebook() -> bool:
    """True when an IPython *kernel* runs us (Jupyter, Colab), not a terminal IPython or a script.

    Looks at ``sys.modules`` first so a plain script never pays for importing IPython.
    """
    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def enable_notebook_figures() -> None:
    """Let a bare Figure left as a cell's last line show as a picture, not ``<Figure ...>``.

    Our figures never touch pyplot, and IPython only learns to render Figures once pyplot has
    loaded the inline backend, which may not have happened yet in a fresh kernel. This
    registers IPython's own PNG printer, and only when no Figure printer exists, so a user's
    ``%config InlineBackend.figure_formats`` (retina, svg) is never overridden.
    """
    if not in_notebook():
        return
    from IPython import get_ipython
    from IPython.core.pylabtools import select_figure_formats

    shell = get_ipython()
    formatters = shell.display_formatter.formatters
    if not any(Figure in formatter.type_printers for formatter in formatters.values()):
        select_figure_formats(shell, {"png"})


def ema(values: Any, smoothing: float) -> np.ndarray:
    """Bias-corrected exponential moving average (TensorBoard's smoothing slider).

    Bias correction keeps the first points at the data instead of dragging them towards 0.
    Equivalent to ``ewm(alpha=1 - smoothing, adjust=True)``; NaNs are skipped, not propagated.
    """
    series = pd.Series(np.asarray(values, dtype=float))
    if smoothing <= 0 or series.empty:
        return series.to_numpy()
    return series.ewm(alpha=1.0 - smoothing, adjust=True, ignore_na=True).mean().to_numpy()


def downsample(x: Any, y: Any, max_points: int, keep_extremes: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of a long curve.

    ``keep_extremes`` buckets the curve and keeps each bucket's min and max, so a loss spike
    still shows after 100x downsampling (a plain stride would drop it); the smoothed curve,
    which has no spikes, uses an even stride. Non-finite points are dropped (they cannot be
    drawn anyway). The last point is always kept so the line ends where training is.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.all():
        x, y = x[finite], y[finite]
    n = len(x)
    if n <= max_points:
        return x, y
    if not keep_extremes:
        index = np.unique(np.linspace(0, n - 1, max_points).round().astype(int))
        return x[index], y[index]
    buckets = max(1, (max_points - 1) // 2)
    size = math.ceil(n / buckets)
    rows = math.ceil(n / size)
    padded = np.full(rows * size, np.nan)
    padded[:n] = y
    grid = padded.reshape(rows, size)
    offsets = np.arange(rows) * size
    lows = np.nanargmin(grid, axis=1) + offsets  # every row holds >= 1 real value
    highs = np.nanargmax(grid, axis=1) + offsets
    index = np.unique(np.concatenate([lows, highs, [n - 1]]))
    return x[index], y[index]


def column_values(frame: pd.DataFrame | None, name: str) -> np.ndarray | None:
    """A column as floats, or None when it is absent or holds no finite number (an empty panel
    and a missing panel should look the same: "no data")."""
    if frame is None or name not in frame.columns:
        return None
    values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
    return values if np.isfinite(values).any() else None


class PerplexityLocator(Locator):
    """Ticks for a log-scaled perplexity axis that always label a few values.

    1-2-5 ticks per decade suit a wide range (a run from 8000 down to 30), but a narrow one
    (9 to 17, a common late-training view) would hold a single tick; there, evenly spaced
    round numbers (10, 12, 14, 16) are placed instead. Decided at draw time from the current
    view, so a live plot whose range grows or shrinks keeps readable ticks.
    """

    MIN_TICKS = 3

    def __call__(self) -> Any:
        vmin, vmax = self.axis.get_view_interval()
        return self.tick_values(vmin, vmax)

    def tick_values(self, vmin: float, vmax: float) -> Any:
        vmin, vmax = sorted((float(vmin), float(vmax)))
        decades = LogLocator(base=10, subs=(1.0, 2.0, 5.0)).tick_values(vmin, vmax)
        if vmin <= 0 or sum(vmin <= t <= vmax for t in decades) >= self.MIN_TICKS:
            return decades
        even = MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax)
        return even[even > 0]


def perplexity_axis(ax: Any) -> None:
    """Log scale with readable ticks (see :class:`PerplexityLocator`) and plain labels ("50",
    not "5x10^1")."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(PerplexityLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def epoch_axis(ax: Any, epochs: Any = None) -> None:
    """Epochs are whole numbers: never a tick at epoch 2.5; every epoch labelled while few.

    Half an epoch of room on each side keeps a single epoch (or a bar) from filling the panel
    and a marker on the last epoch off the frame.
    """
    epochs = np.asarray([] if epochs is None else epochs, dtype=float)
    epochs = epochs[np.isfinite(epochs)]
    if 0 < len(epochs) <= 15:
        ax.set_xticks(np.unique(epochs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(epochs):
        ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)


def summary_and_history(source: Any) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """(per-epoch summary, per-step batch history) from a tracker, a summary or a batch frame.

    Duck-typed on ``get_summary()``/``batch_history()`` so this floor never imports the tracker.
    """
    if isinstance(source, pd.DataFrame):
        if M.BATCH_LOSS in source.columns:
            return None, source
        return source, None
    get_summary = getattr(source, "get_summary", None)
    if not callable(get_summary):
        raise PlotError(
            f"Cannot plot a {type(source).__name__}: pass a MetricsTracker (anything with "
            "get_summary()/batch_history()), its get_summary() DataFrame, or a batch_history() "
            "DataFrame."
        )
    history = getattr(source, "batch_history", None)
    return get_summary(), history() if callable(history) else None


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
                "epoch_ends": [[k, v] for k, v in self.epoch_ends.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = [float(v) for v in state.get("steps", [])]
        self.losses = [float(v) for v in state.get("losses", [])]
        self.epochs = [{k: float(v) for k, v in row.items()} for row in state.get("epochs", [])]
        self.epoch_ends = {float(k): float(v) for k, v in state.get("epoch_ends", [])}
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

        epochs = np.array([r[M.EPOCH] for r in self.epochs], dtype=float)
        ends = np.array([r[M.STEP] for r in self.epochs], dtype=float)
        # Epoch points sit at the step where the epoch ended; with no step data, at the epoch.
        x = ends if len(steps) else epochs
        loss_ax.set_xlabel("optimizer step" if len(steps) or not len(epochs) else "epoch")
        for key, name in (("train", M.TRAIN_LOSS), ("val", M.VAL_LOSS)):
            a[key].set_data(*_finite(x, [r[name] for r in self.epochs]))
        for key, name, loss_name in (("train_ppl", M.TRAIN_PERPLEXITY, M.TRAIN_LOSS),
                                     ("val_ppl", M.VAL_PERPLEXITY, M.VAL_LOSS)):
            values = [r[name] if math.isfinite(r[name]) else M.perplexity(r[loss_name])
                      for r in self.epochs]
            a[key].set_data(*_finite(epochs, values))

        for ax in (loss_ax, ppl_ax):
            ax.set_autoscale_on(True)  # a previous set_ylim turned it off
            ax.relim()
            ax.autoscale_view()
        if len(epochs):
            epoch_axis(ppl_ax, epochs)
        _clip_early_spike(loss_ax, smooth, losses, [r[M.VAL_LOSS] for r in self.epochs])
        loss_ax.set_title(self._status(smooth))

    def _status(self, smooth: np.ndarray) -> str:
        parts = [self.run_name]
        if self.steps:
            parts.append(f"step {int(self.steps[-1]):,}")
            finite = smooth[np.isfinite(smooth)]
            if len(finite):
                parts.append(f"smoothed loss {finite[-1]:.4f}")
        if self.epochs:
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
