"""The experiment history as tables and figures: recent runs, and runs compared side by side.

Two layers. The first takes plain data (run dicts, pandas frames), not the DB's internals, so
search and tests can feed it from anywhere: :func:`comparison_table`, :func:`plot_run_comparison`.
The second reads an ``ExperimentDB`` and shows what the notebook's cells and ``runs --compare``
show: :func:`run_comparison_table`, :func:`show_recent_runs`, :func:`show_run_comparison`.
Floor 4: reads pandas frames, never imports torch.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from . import metric_names as M
from .db_frames import wide_frame
from .experiment_db import ExperimentDB, ExperimentDBError
from .plot_style import RED, PlotError, column_values, enable_notebook_figures, epoch_axis, show
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
            if not (isinstance(frame, pd.DataFrame) and metric in frame.columns):
                raise PlotError(f"run {run!r}: expected a DataFrame with a {metric!r} column "
                                "(a tracker summary).")
            out[str(run)] = _curve(frame, metric)
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
                        metric: str = M.VAL_LOSS, *, caveat: str | None = None) -> Figure:
    """One line per run on one axis; the legend (beside the axis, never over a curve) carries
    each run's best value. ``caveat``: a warning shown under the title, such as
    ``comparison_table(...).attrs["caveat"]`` when the runs' tokenizers differ."""
    import seaborn as sns

    runs = _run_curves(curves, metric)
    enable_notebook_figures()
    lower_is_better = "loss" in metric or "perplexity" in metric
    palette = sns.color_palette("deep" if len(runs) <= 10 else "husl", len(runs))
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        fig = Figure(figsize=(12, 5.5), layout="constrained")
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
        title = f"{metric} across {len(runs)} run{'s' if len(runs) != 1 else ''}"
        if caveat:
            fig.suptitle(title, fontsize=12)
            ax.set_title("\n".join(textwrap.wrap(caveat, 110)), color=RED,
                         fontsize=9, gid="caveat")
        else:
            ax.set_title(title)
        epoch_axis(ax, np.concatenate([x for x, _ in runs.values()]))
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=9)
    return fig


# ---------------------------------------------------------------------- what a config means

_DATA_FIELDS = {"dataset_name", "dataset_config", "data_path", "text_column", "max_samples",
                "tokenizer", "vocab_size", "synthetic_tokens", "synthetic_order"}
_SHAPE_FIELDS = {"n_layers", "n_heads", "d_model", "d_ff"}


def applies(key: str, config: Mapping[str, Any]) -> bool:
    """Whether a config field means anything for this run: ``dataset_name`` does nothing for a
    local file, ``n_layers`` nothing for an exported model (its config.json decides), and so on.
    Fields whose deciding setting is absent from ``config`` count as applying."""
    source = config.get("data_source")
    if key in _DATA_FIELDS and source is not None:
        hub_files = source == "huggingface" and bool(config.get("data_path"))
        if source == "synthetic":
            return key in ("vocab_size", "synthetic_tokens", "synthetic_order")
        if key in ("synthetic_tokens", "synthetic_order"):
            return False
        if key in ("dataset_name", "dataset_config"):
            return source == "huggingface" and not hub_files
        if key == "data_path":
            return source != "huggingface" or hub_files
        if key == "vocab_size" and "tokenizer" in config:
            return config["tokenizer"] == "bpe"  # byte and char tokenizers fix their own
    model = config.get("model_source")
    if key in _SHAPE_FIELDS and model is not None:
        return model == "builtin"
    if key == "model_ref" and model is not None:
        return model != "builtin"
    return True


def tokenizer_label(config: Mapping[str, Any]) -> str:
    """What turned this run's text into token ids, as far as its config says. A BPE or char
    vocabulary is learnt from the data, so the data is part of its name."""
    if config.get("data_source") == "synthetic":
        return f"synthetic ids ({config.get('vocab_size')})"
    kind = str(config.get("tokenizer", "?"))
    if config.get("data_source") == "huggingface" and not config.get("data_path"):
        data = str(config.get("dataset_name", "")) + (
            f"/{config['dataset_config']}" if config.get("dataset_config") else "")
    else:
        data = str(config.get("data_path") or config.get("data_source", ""))
    if kind == "bpe":
        return f"BPE {config.get('vocab_size')} of {data}"
    if kind == "char":
        return f"char of {data}"
    return kind  # byte, or a tokenizer.json path


def tokenizer_caveat(configs: Sequence[Mapping[str, Any]]) -> str | None:
    """The warning runs with different tokenizers need, or None when they share one."""
    labels = list(dict.fromkeys(tokenizer_label(c) for c in configs
                                if "tokenizer" in c or "data_source" in c))  # known ones
    if len(labels) < 2:
        return None
    return (f"These runs use different tokenizers ({'; '.join(labels)}): a token is a "
            "different piece of text in each, so loss per token is not comparable between "
            "them. Compare val loss only between runs that share a tokenizer.")


def comparison_table(runs: Sequence[Mapping[str, Any]], metric: str = M.VAL_LOSS) -> pd.DataFrame:
    """One row per run: the hyperparameters that differ between them, then the outcomes.

    Each run is ``{"name": str, "config": mapping, "summary": per-epoch DataFrame}`` (summary
    optional). Settings every run shares are left out: they cannot explain a difference. So are
    settings that mean nothing for a run (:func:`applies`): blank in its row, and no column at
    all when they apply to none of the runs. When the runs' tokenizers differ, a "tokenizer"
    column names each one and ``table.attrs["caveat"]`` says why their losses do not compare.
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
    shown = [{k: config.get(k) for k in keys if applies(k, config)} for config in configs]
    missing = object()  # "does not apply" is a value of its own: it differs from any setting
    differing = [k for k in keys
                 if any(k in s for s in shown)
                 and len({json.dumps(s.get(k, missing), sort_keys=True, default=repr)
                          for s in shown}) > 1]
    caveat = tokenizer_caveat(configs)
    if caveat is not None:
        differing = ["tokenizer", *(k for k in differing if k != "tokenizer")]
        for config, values in zip(configs, shown):
            values["tokenizer"] = tokenizer_label(config)
    rows = []
    for run, settings in zip(runs, shown):
        row: dict[str, Any] = {"run": run.get("name", "")}
        row.update({k: settings.get(k, "") for k in differing})
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
    table = pd.DataFrame(rows)
    if caveat is not None:
        table.attrs["caveat"] = caveat
    return table


# ---------------------------------------------------------------------- from the experiment DB


def run_comparison_table(db: ExperimentDB, run_ids: Sequence[int | str] | None = None,
                         last: int = 5) -> pd.DataFrame:
    """Hyperparameters that differ between runs, best val loss, epochs, time and tokens/s.

    Default: the ``last`` runs in the database, oldest first (the order they were tried in).
    """
    if run_ids is None:
        run_ids = list(db.list_runs(limit=last)["id"])[::-1]
    if not run_ids:
        raise ExperimentDBError("No runs to compare: the experiment database is empty.")
    entries, ids, statuses = [], [], []
    for run_id in run_ids:
        run = db.get_run(run_id)
        summary, _ = metrics_frames(db.get_metrics(run["id"]))
        entries.append({"name": run["name"], "config": run["config"], "summary": summary})
        ids.append(run["id"])
        statuses.append(run["status"])
    table = comparison_table(entries, metric=M.VAL_LOSS)
    table.insert(0, "id", ids)
    table.insert(2, "status", statuses)
    return table


def show_recent_runs(db: ExperimentDB, limit: int = 10) -> None:
    """The newest runs, before a new one starts: a repeat or a forgotten run shows up here."""
    runs = db.list_runs(limit=limit)
    if runs.empty:
        print("No runs yet: this will be the first in the experiment history.")
    else:
        show(runs)


def show_run_comparison(db: ExperimentDB, last: int = 5) -> None:
    """The last runs side by side: a table of what differed and their validation curves."""
    runs = db.list_runs(limit=last)
    if runs.empty:
        print("No runs to compare yet.")
        return
    ids = list(runs["id"])[::-1]  # oldest first, the order they were tried in
    table = run_comparison_table(db, ids)
    caveat = table.attrs.get("caveat")  # runs with different tokenizers
    if caveat:
        print(f"Caution: {caveat}")
    show(table)
    if len(ids) > 1:
        show(plot_run_comparison(db.compare_runs(ids), caveat=caveat))
