"""Comparing runs: the DB's long metrics table as frames, one validation-loss figure, one table.

Inputs are plain data (run dicts, pandas frames), not the DB's internals, so export and search
can feed it from anywhere. Floor 4: never imports torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import metric_names as M
from .db_frames import wide_frame
from .live_plotting import PlotError, column_values, enable_notebook_figures, epoch_axis
from .training_config import NOT_HYPERPARAMETERS

# ---------------------------------------------------------------------- DB's long table -> frames


def metrics_frames(metrics: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(per-epoch summary, per-step batch history) from the DB's long table (``name, value,
    step, epoch, wall_time``), in the tracker's shapes. Only finished epochs are kept."""
    needed = {"name", "value", "step", "epoch"}
    if not needed <= set(metrics.columns):
        raise PlotError(f"metrics table lacks columns {sorted(needed - set(metrics.columns))}; "
                        "expected ExperimentDB.get_metrics() output (name, value, step, epoch).")
    order = [c for c in ("step", "wall_time") if c in metrics.columns]
    metrics = metrics.sort_values(order, kind="stable")  # an epoch row follows its batch rows
    summary = wide_frame(metrics, "epoch")
    finished = [c for c in (M.TRAIN_LOSS, M.VAL_LOSS) if c in summary.columns]
    if finished:  # an epoch row exists, not just a half epoch's batch rows
        summary = summary[summary[finished].notna().any(axis=1)].reset_index(drop=True)
    has_batches = (metrics["name"] == M.BATCH_LOSS).any()
    return summary, wide_frame(metrics, "step") if has_batches else None


# ---------------------------------------------------------------------- comparing runs


def _run_curves(curves: Any, metric: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{run name: (epochs, values)} from a mapping of per-run frames or one long/wide frame."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if isinstance(curves, pd.DataFrame):
        run_col = next((c for c in ("run_name", "run", "name", "run_id") if c in curves.columns), None)
        value_col = metric if metric in curves.columns else "value"
        if run_col is not None and value_col in curves.columns:  # long: one row per run and epoch
            for run, frame in curves.groupby(run_col, sort=False):
                out[str(run)] = _curve(frame, value_col)
        else:  # wide: index (or an epoch column) = epoch, one column per run
            wide = curves.set_index(M.EPOCH) if M.EPOCH in curves.columns else curves
            x = pd.to_numeric(pd.Series(wide.index), errors="coerce").to_numpy(dtype=float)
            for run in wide.columns:
                out[str(run)] = (x, pd.to_numeric(wide[run], errors="coerce").to_numpy(dtype=float))
    elif isinstance(curves, Mapping):
        for run, frame in curves.items():
            if isinstance(frame, pd.Series):
                out[str(run)] = (frame.index.to_numpy(dtype=float), frame.to_numpy(dtype=float))
            elif isinstance(frame, pd.DataFrame) and metric in frame.columns:
                out[str(run)] = _curve(frame, metric)
            else:
                raise PlotError(f"run {run!r}: expected a DataFrame with a {metric!r} column "
                                "(a tracker summary) or a Series indexed by epoch.")
    else:
        raise PlotError("plot_run_comparison() takes {run name: summary DataFrame} or one "
                        f"DataFrame, not {type(curves).__name__}.")
    if not out:
        raise PlotError(f"No runs to compare for {metric!r}: the input holds no curves.")
    return out


def _curve(frame: pd.DataFrame, value_col: str) -> tuple[np.ndarray, np.ndarray]:
    if M.EPOCH in frame.columns:
        frame = frame.sort_values(M.EPOCH)
        x = frame[M.EPOCH].to_numpy(dtype=float)
    else:
        x = np.arange(1, len(frame) + 1, dtype=float)
    return x, pd.to_numeric(frame[value_col], errors="coerce").to_numpy(dtype=float)


def plot_run_comparison(curves: pd.DataFrame | Mapping[str, pd.DataFrame],
                        metric: str = M.VAL_LOSS) -> Figure:
    """One line per run on one axis; the legend carries each run's best value."""
    import seaborn as sns

    runs = _run_curves(curves, metric)
    enable_notebook_figures()
    lower_is_better = "loss" in metric or "perplexity" in metric
    palette = sns.color_palette("deep" if len(runs) <= 10 else "husl", len(runs))
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        fig = Figure(figsize=(10, 5.5), layout="constrained")
        ax = fig.subplots()
        bests_x, bests_y = [], []
        for color, (run, (x, y)) in zip(palette, runs.items()):
            finite = np.isfinite(y)
            label = f"{run} (no {metric})"
            if finite.any():
                pick = np.nanargmin(y) if lower_is_better else np.nanargmax(y)
                label = f"{run}: best {y[pick]:.4f} @ epoch {x[pick]:g}"
                bests_x.append(x[pick])
                bests_y.append(y[pick])
            ax.plot(x[finite], y[finite], marker="o", ms=4, lw=1.8, color=color, label=label)
        if bests_x:
            ax.scatter(bests_x, bests_y, marker="*", s=160, color="black", zorder=5,
                       label="best of each run")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric + (" (lower is better)" if lower_is_better else ""))
        ax.set_title(f"{metric} across {len(runs)} run{'s' if len(runs) != 1 else ''}")
        epoch_axis(ax, np.concatenate([x for x, _ in runs.values()]))
        ax.legend(loc="best", fontsize=9)
    return fig


def comparison_table(runs: Sequence[Mapping[str, Any]], metric: str = M.VAL_LOSS) -> pd.DataFrame:
    """One row per run: the hyperparameters that differ between them, then the outcomes.

    Each run is ``{"name": str, "config": mapping, "summary": per-epoch DataFrame}`` (summary
    optional). Settings every run shares are left out: they cannot explain a difference.
    """
    if not runs:
        raise PlotError("comparison_table() needs at least one run.")
    configs = []
    for run in runs:
        config = run.get("config") or {}
        configs.append(json.loads(config) if isinstance(config, str) else dict(config))
    keys: list[str] = []
    for config in configs:
        keys += [k for k in config if k not in keys and k not in NOT_HYPERPARAMETERS]
    differing = [k for k in keys
                 if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]
    rows = []
    for run, config in zip(runs, configs):
        row: dict[str, Any] = {"run": run.get("name", "")}
        row.update({k: config.get(k) for k in differing})
        summary = run.get("summary")
        values = column_values(summary, metric) if isinstance(summary, pd.DataFrame) else None
        row[f"best {metric}"] = float(np.nanmin(values)) if values is not None else math.nan
        row["best epoch"] = (int(summary[M.EPOCH].iloc[int(np.nanargmin(values))])
                             if values is not None and M.EPOCH in summary.columns else None)
        row["epochs"] = len(summary) if isinstance(summary, pd.DataFrame) else 0
        seconds = column_values(summary, M.EPOCH_DURATION) if isinstance(summary, pd.DataFrame) else None
        row["train time (s)"] = float(np.nansum(seconds)) if seconds is not None else math.nan
        rate = column_values(summary, M.TOKENS_PER_SEC) if isinstance(summary, pd.DataFrame) else None
        row["tokens/s"] = float(np.nanmean(rate)) if rate is not None else math.nan
        rows.append(row)
    return pd.DataFrame(rows)
