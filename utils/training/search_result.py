"""What a search found, and reopening it: :class:`SearchResult`, as settings, a config to
train, a table and figures.

Kept apart from ``search.py`` (which runs studies) because a study is also what
``load_search`` reopens days later, in a session that never ran a trial; where the study lives
is ``search_storage.py``'s.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from matplotlib.ticker import MaxNLocator
from optuna.trial import TrialState

from . import metric_names as M
from .plot_style import epoch_axis
from .search_space import SearchError, apply_params
from .search_storage import SEARCH_DIR, open_storage, study_files, study_path
from .training_config import TrainingConfig
from .workspace import Workspace, atomic_write

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A trial's user attr, and how tables show that failed trial: the status its DB run gets too.
INTERRUPTED = M.INTERRUPTED
# A trial's user attr: created by a worker when other workers already had the total in hand,
# and ended at once (failed, shown as "skipped"); it never trained and has no DB run.
SKIPPED = "skipped"


# --------------------------------------------------------------------------- the result


def state_name(trial: optuna.trial.FrozenTrial) -> str:
    """Optuna's state, except that a trial stopped by Ctrl-C (or not needed) says so instead
    of "fail"."""
    if trial.state == TrialState.FAIL and trial.user_attrs.get(INTERRUPTED):
        return INTERRUPTED
    if trial.state == TrialState.FAIL and trial.user_attrs.get(SKIPPED):
        return SKIPPED
    return trial.state.name.lower()


def format_params(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in values.items())


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial, target: int) -> str:
    """One line per finished trial: enough to follow a search without reading a table."""
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    state = state_name(trial)
    if trial.state == TrialState.PRUNED:
        epoch = trial.user_attrs.get("pruned_at_epoch") or trial.last_step
        state = f"pruned at epoch {epoch}"
    value = trial.value if trial.value is not None else (
        trial.intermediate_values.get(trial.last_step) if trial.last_step is not None else None)
    shown = f"val {value:.4f}" if value is not None else "no val loss"
    params = format_params(trial.user_attrs.get("config_changes", trial.params))
    seconds = trial.duration.total_seconds() if trial.duration else math.nan
    line = f"trial {trial.number} ({done}/{target}) {state}: {shown} | {params} | {seconds:.0f}s"
    with contextlib.suppress(ValueError):  # no completed trial yet
        line += f" | best {study.best_value:.4f} (trial {study.best_trial.number})"
    return line


@dataclass
class SearchResult:
    """A study and the config it searched around: best settings, trials table, figures."""

    study: optuna.Study
    base_config: TrainingConfig
    study_name: str
    workspace: Workspace | None = None
    interrupted: bool = False

    @property
    def still_running(self) -> int:
        """Trials running now (in other workers: this one's are done when it returns)."""
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    @property
    def has_completed(self) -> bool:
        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    @property
    def best_trial(self) -> optuna.trial.FrozenTrial:
        try:
            return self.study.best_trial
        except ValueError:
            raise SearchError(
                f"Study {self.study_name!r} has no completed trial yet (all were pruned, failed "
                "or not run): run the search again with more trials or a wider space."
            ) from None

    @property
    def best_value(self) -> float:
        return float(self.best_trial.value)

    @property
    def best_params(self) -> dict[str, Any]:
        """The settings the best trial trained with (n_heads included when it was adjusted)."""
        trial = self.best_trial
        return dict(trial.user_attrs.get("config_changes", trial.params))

    @property
    def best_config(self) -> TrainingConfig:
        """The base config with the best settings, full epochs, named ``<study>-best``."""
        config, _ = apply_params(self.base_config, self.best_params)
        return config.replace(run_name=f"{self.study_name}-best").validate()

    @property
    def trials(self) -> pd.DataFrame:
        rows = []
        for t in self.study.get_trials(deepcopy=False):
            rows.append({
                "number": t.number, "state": state_name(t), "value": t.value,
                **t.user_attrs.get("config_changes", t.params),
                "epochs": len(t.intermediate_values),
                "duration_s": t.duration.total_seconds() if t.duration else math.nan,
                "run_id": t.user_attrs.get("run_id"), "run_name": t.user_attrs.get("run_name"),
            })
        return pd.DataFrame(rows)

    def summary(self) -> str:
        counts = pd.Series([state_name(t) for t in self.study.trials]).value_counts()
        states = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no trials"
        line = f"Study {self.study_name!r}: {states}."
        try:
            best = self.best_trial
        except SearchError as exc:
            return f"{line}\n{exc}"
        return (f"{line}\nBest: trial {best.number}, val loss {best.value:.4f} with "
                f"{format_params(self.best_params)}.")

    def __str__(self) -> str:
        return self.summary()

    def figures(self) -> dict[str, Any]:
        """Optuna's matplotlib plots as {name: Figure}, labelled for this search (validation
        loss, whole epochs) instead of Optuna's generic "Objective Value" and "Step"; the ones
        the study cannot draw yet are left out with a printed reason. Optuna's global style
        change is undone afterwards."""
        import matplotlib
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ovm

        trials = self.study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        out: dict[str, Any] = {}
        with warnings.catch_warnings(), matplotlib.rc_context():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if complete:
                out["optimization_history"] = ovm.plot_optimization_history(self.study).figure
            else:
                print("No completed trial yet, so no optimisation history to plot.")
            varied = {k for t in complete for k in t.params
                      if len({json.dumps(u.params.get(k)) for u in complete}) > 1}
            if len(complete) >= 2 and varied:
                out["param_importances"] = ovm.plot_param_importances(self.study).figure
            else:
                print(f"Parameter importances need at least 2 completed trials with different "
                      f"settings (this study has {len(complete)} completed).")
            if any(t.intermediate_values for t in trials):
                out["intermediate_values"] = ovm.plot_intermediate_values(self.study).figure
            else:
                print("No trial reported a val loss yet, so no learning curves to plot.")
        _label(out, trials)
        for figure in out.values():
            plt.close(figure)  # detached from pyplot: a notebook shows them only when asked
        return out

    def save_figures(self, directory: str | Path | None = None, dpi: int = 120) -> dict[str, Path]:
        """PNG files, written atomically; default ``<workspace>/results/search/<study>/``."""
        if directory is None:
            if self.workspace is None:
                raise SearchError("save_figures() needs a directory when the search had no "
                                  "workspace")
            directory = self.workspace.path_in(self.workspace.results / SEARCH_DIR,
                                               self.study_name, what="study name")
        folder = Path(directory)
        saved = {}
        for name, figure in self.figures().items():
            saved[name] = atomic_write(folder / f"{name}.png", lambda tmp, f=figure: f.savefig(
                tmp, format="png", dpi=dpi, bbox_inches="tight"))
        return saved


def _label(figures: dict[str, Any], trials: list[optuna.trial.FrozenTrial]) -> None:
    """Say what Optuna's generic axes hold here: a trial's value is its best validation loss,
    and a trial reports once per epoch, so its steps are whole epochs."""
    if "optimization_history" in figures:
        ax = figures["optimization_history"].axes[0]
        ax.set_title("Validation loss of each trial (its best epoch)")
        ax.set_xlabel("trial")
        ax.set_ylabel("validation loss (lower is better)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _rename_legend(ax, {"Objective Value": "trial's validation loss",
                            "Best Value": "best so far"})
    if "param_importances" in figures:
        ax = figures["param_importances"].axes[0]
        ax.set_title("", loc="left")  # Optuna's title sits there
        ax.set_title("How much each setting mattered for validation loss")
        ax.set_xlabel("importance for validation loss (fANOVA; the bars sum to 1)")
        ax.set_ylabel("setting")
        if ax.get_legend() is not None:
            ax.get_legend().remove()  # one series, named "Objective Value": says nothing
    if "intermediate_values" in figures:
        ax = figures["intermediate_values"].axes[0]
        ax.set_title("Validation loss after each epoch, per trial")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation loss (lower is better)")
        epoch_axis(ax, [step for t in trials for step in t.intermediate_values])
        _rename_legend(ax, {f"Trial{t.number}": f"trial {t.number}" for t in trials})


def _rename_legend(ax: Any, names: dict[str, str]) -> None:
    """Rename legend entries (and their artists) in place, keeping Optuna's placement."""
    legend = ax.get_legend()
    if legend is None:
        return
    for text in legend.get_texts():
        text.set_text(names.get(text.get_text(), text.get_text()))
    for artist in [*ax.lines, *ax.collections, *ax.patches]:
        if artist.get_label() in names:
            artist.set_label(names[artist.get_label()])


def interrupted_message(study: optuna.Study, trials: list[int], n_trials: int,
                        kept: bool) -> str:
    """What Ctrl-C did to the search, and what running it again will do (nothing resumes)."""
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    if trials:
        files = "kept, but a new search will not use them" if kept else "deleted"
        what = (f"Search stopped during trial {trials[-1]}: that trial is recorded as failed "
                f"({INTERRUPTED}) and will not be continued (Optuna cannot resume a trial; its "
                f"checkpoints were {files}).")
    else:
        what = "Search stopped between trials."
    rerun = (f"Running the same call again starts new trials until {n_trials} are finished."
             if done < n_trials else "The planned trials are all finished.")
    return f"{what} {done} of {n_trials} trials are finished and kept. {rerun}"


def load_search(study_name: str, workspace: Workspace, storage: str | None = None) -> SearchResult:
    """Reopen a finished (or interrupted) search, e.g. in a new session: from the workspace's
    study file, or from ``storage`` when the search used one."""
    name = str(study_name)
    if storage is None:
        kept = study_path(workspace, name)
        if not kept.exists() and not study_files(workspace, name).live.exists():
            found = sorted(p.stem for p in (workspace.root / SEARCH_DIR).glob("*.db"))
            raise SearchError(f"No search study {name!r} in {workspace.root / SEARCH_DIR}; "
                              f"studies there: {', '.join(found) or 'none'}")
    store = open_storage(workspace, name, storage)
    try:
        study = optuna.load_study(study_name=name, storage=store.storage)
    except KeyError:
        found = optuna.get_all_study_names(store.storage)
        raise SearchError(f"No search study {name!r} in {store.where}; studies there: "
                          f"{', '.join(found) or 'none'}") from None
    config = TrainingConfig.from_dict(study.user_attrs["base_config"])
    return SearchResult(study, config, name, workspace)
