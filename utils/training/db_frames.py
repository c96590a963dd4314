"""The experiment database's rows shaped into pandas frames (pure pandas, no SQL).

Kept out of :mod:`experiment_db` so the shapes the dashboard and the notebook rely on (the
tracker's per-epoch summary, its per-step history, run comparisons) are defined in one small
place and can be read without the SQLite plumbing around them. Floor 3: pandas only.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence

import pandas as pd

from . import metric_names as M

METRIC_COLUMNS = ["name", "value", "step", "epoch", "wall_time"]
BATCH_ONLY = (M.BATCH_LOSS, M.TOKENS)  # per-step names the per-epoch view leaves out
RUN_COLUMNS = ["id", "name", "status", "created", "finished", "updated", "tags", "study",
               "parent_run_id", "notes", "world_size", "best", "best_epoch", "epochs"]


def best_column(metric: str) -> str:
    return "best_" + re.sub(r"\W", "_", metric)  # val/loss -> best_val_loss


def maybe_int(series: pd.Series) -> pd.Series:
    """Steps and epochs are integers that may be missing: nullable Int64 when they allow it."""
    series = pd.to_numeric(series).astype("float64")
    present = series.dropna()
    return series.astype("Int64") if (present == present.round()).all() else series


def metrics_frame(rows: Sequence[tuple]) -> pd.DataFrame:
    """Long format with stable dtypes, even when empty (NULL values are NaN by construction)."""
    frame = pd.DataFrame.from_records(rows, columns=METRIC_COLUMNS)
    frame["name"] = frame["name"].astype(object)
    frame["value"] = pd.to_numeric(frame["value"]).astype("float64")
    frame["step"] = maybe_int(frame["step"])
    frame["epoch"] = maybe_int(frame["epoch"])
    frame["wall_time"] = pd.to_numeric(frame["wall_time"]).astype("float64")
    return frame


def wide_frame(long: pd.DataFrame, kind: str) -> pd.DataFrame:
    """kind="epoch": ``MetricsTracker.get_summary()``'s shape; kind="step": ``batch_history()``'s.

    Batch rows carry their epoch too, so epoch rows are told apart by name. The last row logged
    wins: an epoch row follows its batch rows (learning_rate and grad_norm use one name for
    both), and a resumed run may have logged an epoch again.
    """
    if kind == "epoch":
        long = long[long["epoch"].notna() & ~long["name"].isin(BATCH_ONLY)]
        first = list(M.EPOCH_COLUMNS)
    else:
        long = long[long["step"].notna() & long["name"].isin(M.STEP_METRICS)]
        first = [M.STEP, M.EPOCH, *M.STEP_METRICS]
    last = long.drop_duplicates(subset=[kind, "name"], keep="last")
    wide = last.pivot(index=kind, columns="name", values="value").sort_index()
    if kind == "step":
        wide[M.EPOCH] = long.groupby("step")["epoch"].last()
    wide = wide.reset_index()
    wide[kind] = wide[kind].astype("int64")
    if M.EPOCH in wide.columns:
        wide[M.EPOCH] = maybe_int(wide[M.EPOCH])
    known = [c for c in first if c in wide.columns]
    wide = wide[known + sorted(c for c in wide.columns if c not in known)]
    wide.columns.name = None
    return wide


def runs_frame(rows: Sequence[tuple], metric: str) -> pd.DataFrame:
    """``list_runs`` rows -> one row per run, with timestamps as (UTC) datetimes."""
    frame = pd.DataFrame.from_records(rows, columns=RUN_COLUMNS)
    best = best_column(metric)
    frame = frame.rename(columns={"best": best})
    end = frame["finished"].where(frame["finished"].notna(), frame["updated"])
    frame["duration_s"] = pd.to_numeric(end - frame["created"]).astype("float64")
    for col in ("created", "finished", "updated"):
        frame[col] = pd.to_datetime(pd.to_numeric(frame[col]), unit="s")
    frame["tags"] = [json.loads(t) for t in frame["tags"]]
    frame[best] = pd.to_numeric(frame[best]).astype("float64")
    for col in ("best_epoch", "epochs", "parent_run_id"):
        frame[col] = maybe_int(frame[col])
    return frame[["id", "name", "status", "created", "finished", "duration_s", "epochs", best,
                  "best_epoch", "tags", "study", "parent_run_id", "world_size", "notes"]]


def compare_frame(rows: Sequence[tuple], kind: str) -> pd.DataFrame:
    """One column per run from ``(position, run id, run name, step, epoch, value)`` rows of one
    metric, each run's rows in logging order (a run without any has one row of NULLs); labelled
    by name, and a name shared by several of the runs gets ``#id`` so no column hides another.
    Where a run logged a step (or epoch) twice, the last row wins."""
    first: dict[int, int] = {}  # run id -> the position it was first asked for
    names: dict[int, str] = {}
    curves: dict[int, dict] = {}
    at = 3 if kind == "step" else 4
    for row in rows:
        pos, run_id = row[0], row[1]
        if run_id not in first:
            first[run_id], names[run_id], curves[run_id] = pos, row[2], {}
        if first[run_id] == pos and row[at] is not None:
            curves[run_id][row[at]] = row[5]
    counts = Counter(names.values())
    columns = {}
    for run_id, curve in curves.items():
        name = names[run_id]
        label = name if counts[name] == 1 else f"{name} #{run_id}"
        columns[label] = pd.Series(list(curve.values()), dtype="float64",
                                   index=pd.Index(list(curve), dtype="float64").astype("int64"))
    frame = pd.DataFrame(columns).sort_index()
    frame.index.name = kind
    return frame
