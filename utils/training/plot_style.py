"""What every picture shares: colours, smoothing, axis helpers, ``PlotError``, and notebook output.

The live plot, the dashboard, run comparisons and search figures draw with these, so a loss
curve looks the same in each and a notebook shows every figure the same way. Floor 4:
pandas/numpy/matplotlib only, never torch; IPython only when a notebook is already running us.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, Locator, LogLocator, MaxNLocator, NullFormatter

from . import metric_names as M
from .errors import PersonFacing
from .workspace import notebook_kernel

# Line colours (seaborn's "deep" palette, written out so this module needs no seaborn import).
BLUE, ORANGE, GREEN, RED, PURPLE, GREY = (
    "#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#8C8C8C",
)


class PlotError(PersonFacing, ValueError):
    """A plotting input a person got wrong (bad argument, unknown file type, empty data)."""


# ---------------------------------------------------------------------- notebook output


def in_notebook() -> bool:
    """True when an IPython *kernel* runs us (Jupyter, Colab), not a terminal IPython or a script.

    The one "are we in a notebook" check: pictures, :func:`show` and everything above this
    floor ask it. It asks :func:`workspace.notebook_kernel`, which never imports IPython.
    """
    return notebook_kernel() is not None


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


def show(obj: Any) -> None:
    """Display in a notebook (figures, tables, HTML cards); print elsewhere."""
    if not in_notebook():
        print(obj)
        return
    from IPython.display import display

    display(obj)


# ---------------------------------------------------------------------- data and axes


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


def format_duration(seconds: float) -> str:
    """"1h 05m", "3m 07s", "42s": a dashboard title and a time estimate say durations alike."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"
