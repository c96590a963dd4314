"""Hyperparameter search on Optuna: every trial is a real, tracked training run.

A trial is a ``TrainingSession`` like any other (same data path, same DB row, tagged with the
study), so a search result can be inspected, compared and exported like a hand-made run. The
study lives in ``<workspace>/search/<study>.db`` (Optuna's RDB storage on SQLite), so after a
disconnect the same call carries on: ``n_trials`` is the *total* the study should reach, counting
finished (completed or pruned) trials, and re-running the cell finishes the plan instead of
starting over. On Drive, SQLite locking is unreliable (COLAB.md), so the live study file is on
the VM's local disk and a consistent copy (SQLite backup API) goes to Drive after every trial;
a fresh VM restores it from there, like ``ExperimentDB`` does.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import shutil
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna
import torch

from . import metric_names as M
from .callbacks import Callback
from .data import load_token_data
from .experiment_db import ExperimentDB
from .run import TrainingSession, validate_config
from .search_result import FINISHED, INTERRUPTED, SEARCH_DIR, SearchResult, trial_line
from .search_space import (
    Param,
    SearchError,
    SearchSpaceError,
    apply_params,
    default_space,
    parse_space,
)
from .trainer import TrainingDivergedError
from .training_config import NOT_HYPERPARAMETERS, RUN_NAME_RE, TrainingConfig
from .workspace import LiveSQLite, Workspace

__all__ = [
    "SearchError", "SearchResult", "SearchSpaceError", "create_search_study", "default_space",
    "load_search", "run_search",
]

MEDIAN_STARTUP_TRIALS = 3  # trials that finish unpruned before the median means anything
# Random trials before TPE models the results. Optuna's default (10) would make a typical
# Colab budget of 10-20 trials mostly random search.
TPE_STARTUP_TRIALS = 5
HEARTBEAT_SECONDS = 60  # a worker that stops beating for GRACE_SECONDS left a zombie trial
GRACE_SECONDS = 180
_TRIAL_SUFFIX = "-trial-00000"  # the longest suffix a study name must leave room for
# Differences in these fields do not change what a trial measures, so continuing a study
# with them changed is fine.
_NOT_COMPARED = NOT_HYPERPARAMETERS | {"epochs", "compile"}


# --------------------------------------------------------------------------- storage


def _study_name(config: TrainingConfig, study_name: str | None) -> str:
    name = config.run_name if study_name is None else str(study_name)
    if not RUN_NAME_RE.fullmatch(name + _TRIAL_SUFFIX):
        raise SearchError(
            f"study_name {name!r} cannot name the trial runs: use 1-{64 - len(_TRIAL_SUFFIX)} "
            "characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    return name


def study_path(workspace: Workspace, study_name: str) -> Path:
    """Where the study's file lives in the workspace (on Drive: the copy that survives)."""
    return workspace.path_in(SEARCH_DIR, study_name, ".db", what="study name")


def _files(workspace: Workspace, study_name: str) -> LiveSQLite:
    """The study's live file (local disk) and its kept copy (the workspace, maybe Drive)."""
    return LiveSQLite.in_workspace(workspace, study_path(workspace, study_name))


def _restore(workspace: Workspace, study_name: str) -> Path:
    """The live file; on a fresh VM, first copied back from Drive so the study continues."""
    files = _files(workspace, study_name)
    files.live.parent.mkdir(parents=True, exist_ok=True)
    if files.restore():
        print(f"Restored search study {study_name!r} from {files.kept} to local disk.")
    return files.live


def _sync(workspace: Workspace | None, study_name: str) -> None:
    """Copy the live study to Drive, consistently even while another worker writes to it."""
    if workspace is not None:
        _files(workspace, study_name).backup()


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's INFO lines and experimental-feature warnings are noise next to our own lines."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(previous)


def _storage(workspace: Workspace | None, study_name: str) -> optuna.storages.BaseStorage:
    if workspace is None:
        return optuna.storages.InMemoryStorage()
    live = _restore(workspace, study_name)
    # The heartbeat marks a trial whose worker died (a disconnect mid-trial) as failed, so it
    # is retried instead of sitting in "running" forever.
    with _quiet_optuna():
        return optuna.storages.RDBStorage(
            f"sqlite:///{live}",
            engine_kwargs={"connect_args": {"timeout": 60}},  # workers queue for the write lock
            heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
        )


def _pruner(prune: bool | optuna.pruners.BasePruner) -> optuna.pruners.BasePruner:
    if isinstance(prune, optuna.pruners.BasePruner):
        return prune
    if prune:
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def _compared(config: TrainingConfig, space: Mapping[str, Any]) -> dict[str, Any]:
    skip = _NOT_COMPARED | set(space) | ({"n_heads"} if "d_model" in space else set())
    return {k: v for k, v in config.to_dict().items() if k not in skip}


def create_search_study(
    config: TrainingConfig,
    workspace: Workspace | None = None,
    *,
    study_name: str | None = None,
    space: Mapping[str, Any] | None = None,
    sampler_seed: int | None = None,
    prune: bool | optuna.pruners.BasePruner = True,
    trial_epochs: int | None = None,
) -> optuna.Study:
    """Create the study (or open it), before any parallel worker starts.

    Continuing a study with a config that changes what trials measure (other data, another
    model size that is not searched) would mix incomparable numbers, so it is an error.
    The sampler's seed is ``sampler_seed`` (default ``config.seed``) plus the number of trials
    already in the study: a continued study does not replay its first random trials. Parallel
    workers should pass different ``sampler_seed`` values for the same reason.
    """
    validate_config(config, hardware=False)  # after run_search's own call: a lookup
    name = _study_name(config, study_name)
    params = parse_space(space, config)
    epochs = int(trial_epochs or config.epochs)
    storage = _storage(workspace, name)
    lock = _files(workspace, name).creation_lock() if workspace else contextlib.nullcontext()
    with lock, _quiet_optuna():
        study = optuna.create_study(storage=storage, study_name=name, direction="minimize",
                                    load_if_exists=True)
        if "base_config" not in study.user_attrs:
            study.set_user_attr("base_config", config.to_dict())
            study.set_user_attr("trial_epochs", epochs)
            study.set_user_attr("space", {p.name: p.describe() for p in params.values()})
    old = TrainingConfig.from_dict(study.user_attrs["base_config"])
    before, now = _compared(old, params), _compared(config, params)
    changed = [f"{k} {before[k]!r} -> {now[k]!r}" for k in now if before.get(k) != now[k]]
    old_epochs = study.user_attrs.get("trial_epochs", epochs)
    if old_epochs != epochs:
        changed.append(f"epochs per trial {old_epochs} -> {epochs}")
    if changed:
        raise SearchError(
            f"Study {name!r} was started with a different config ({'; '.join(changed)}), so its "
            "trials would not be comparable. Use the same config to continue it, or pass a new "
            "study_name to start another search."
        )
    seed = (config.seed if sampler_seed is None else int(sampler_seed)) + len(study.trials)
    sampler = optuna.samplers.TPESampler(n_startup_trials=TPE_STARTUP_TRIALS, seed=seed,
                                         constant_liar=True)
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler,
                             pruner=_pruner(prune))


# --------------------------------------------------------------------------- one trial


class _ReportToTrial(Callback):
    """Feeds each epoch's val loss to the pruner; a pruned trial stops after that epoch."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.pruned_at: int | None = None

    def on_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        value = metrics.get(M.VAL_LOSS, math.nan)
        if not math.isfinite(value) or self.pruned_at is not None:
            return
        epoch = int(metrics[M.EPOCH])
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            self.trial.set_user_attr("pruned_at_epoch", epoch)
            trainer.should_stop = True  # ends cleanly, so the run's files and DB row are whole


class _Interrupted(logging.Filter):
    """The trials stopped by Ctrl-C. Optuna logs such a trial as "failed" with a traceback, as
    if it were a bug; as a logging filter on Optuna's optimize logger this drops those records
    (and only those): ``run_search`` says what happened instead."""

    LOGGER = "optuna.study._optimize"

    def __init__(self) -> None:
        super().__init__()
        self.trials: list[int] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(f"Trial {n} failed") for n in self.trials)

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Interrupted]:
        logger = logging.getLogger(self.LOGGER)
        logger.addFilter(self)
        try:
            yield self
        finally:
            logger.removeFilter(self)


def _free_memory() -> None:
    """Trials run back to back in one process: without this, each one's model, optimizer state
    and CUDA cache pile up until a later trial runs out of GPU memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _objective(config: TrainingConfig, params: dict, workspace: Workspace | None, db: Any,
               study_name: str, epochs: int, keep_checkpoints: bool, interrupted: _Interrupted):
    def objective(trial: optuna.Trial) -> float:
        values = {name: param.suggest(trial) for name, param in params.items()}
        run_name = f"{study_name}-trial-{trial.number}"
        base, changes = apply_params(config, values)
        # Samples cost time and say nothing to the sampler; trials never resume (Optuna cannot
        # continue a trial), so a stale folder of the same name is a leftover to clear.
        trial_config = base.replace(run_name=run_name, epochs=epochs, resume="never",
                                    sample_tokens=0, keep_checkpoints=1)
        trial.set_user_attr("config_changes", changes)
        trial.set_user_attr("run_name", run_name)
        folder = workspace.run_dir(run_name, create=False) if workspace is not None else None
        if folder is not None and folder.exists():
            shutil.rmtree(folder)
        reporter = _ReportToTrial(trial)
        session, run_id = None, None
        try:
            session = TrainingSession.create(
                trial_config, workspace, db=db, live_plot=False, progress=False, verbose=False,
                callbacks=[reporter], tags=("search",), study=study_name, wandb=False,
            )
            run_id = session.tracker.run_id
            trial.set_user_attr("run_id", run_id)
            result = session.fit()
        except KeyboardInterrupt:
            # Ctrl-C. Optuna cannot continue a trial, so this one ends here: Optuna records it
            # as failed (a rerun of the search replaces it), marked as interrupted; its DB run is
            # "interrupted". The interrupt goes on to stop the search.
            interrupted.trials.append(trial.number)
            trial.set_user_attr(INTERRUPTED, True)
            raise
        finally:
            session = None
            _free_memory()
            if folder is not None and not keep_checkpoints:
                shutil.rmtree(folder, ignore_errors=True)
        if reporter.pruned_at is not None:
            if db is not None and run_id is not None:
                db.finish_run(run_id, status=M.PRUNED)  # the tracker recorded "stopped"
            raise optuna.TrialPruned(f"the pruner stopped it after epoch {reporter.pruned_at}")
        return float(result.best_val_loss)

    return objective


class _Progress:
    """One line per finished trial, and the study copied to Drive after each one."""

    def __init__(self, workspace: Workspace | None, study_name: str, target: int,
                 verbose: bool) -> None:
        self.workspace, self.study_name = workspace, study_name
        self.target, self.verbose = target, verbose

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        _sync(self.workspace, self.study_name)
        if self.verbose:
            print(trial_line(study, trial, self.target))


# --------------------------------------------------------------------------- the search


def _batch_limit(config: TrainingConfig, workspace: Workspace | None, params: dict,
                 verbose: bool) -> dict:
    """Drop default batch sizes that leave no full batch of training data per epoch."""
    param = params.get("batch_size")
    if param is None or param.kind != "choice":
        return params
    data = load_token_data(config, workspace)
    block = max([config.block_size, *params["block_size"].candidates()]
                if "block_size" in params else [config.block_size])
    blocks = (len(data.train_ids) - 1) // int(block)
    fits = tuple(b for b in param.choices if b <= blocks)
    if fits == param.choices:
        return params
    if not fits:
        raise SearchSpaceError(f"batch_size: the training data has only {blocks} blocks of "
                               f"{block} tokens, fewer than the smallest choice "
                               f"{min(param.choices)}; use more data or smaller batch sizes")
    if verbose:
        dropped = [b for b in param.choices if b not in fits]
        print(f"Note: batch_size {dropped} left out of the search: the training data has only "
              f"{blocks} blocks of {block} tokens.")
    return {**params, "batch_size": Param("batch_size", "choice", choices=fits)}


def run_search(
    config: TrainingConfig,
    workspace: Workspace | None = None,
    *,
    n_trials: int = 10,
    timeout: float | None = None,
    space: Mapping[str, Any] | None = None,
    study_name: str | None = None,
    db: Any = None,
    sampler_seed: int | None = None,
    prune: bool | optuna.pruners.BasePruner = True,
    verbose: bool = True,
    trial_epochs: int | None = None,
    keep_trial_checkpoints: bool = False,
) -> SearchResult:
    """Search ``space`` (default: :data:`search_space.DEFAULT_SPACE`) around ``config``.

    ``n_trials`` is the total the study should reach (finished trials count; failed ones do not,
    so they are retried); ``timeout`` (seconds) stops starting new trials. Trials train for
    ``trial_epochs`` (default ``config.epochs``) and are pruned on the median of earlier trials'
    val loss per epoch (``prune=False`` turns that off; an Optuna pruner replaces it). With a
    workspace the study survives a disconnect and each trial is a run in the experiment DB
    (``db``, default the workspace's); without one the study lives in memory. Trial checkpoints
    are deleted after each trial unless ``keep_trial_checkpoints``: the best config is meant to
    be trained again, and 20 trials' checkpoints would fill a Drive.
    Ctrl-C (Colab's stop button) ends the search after the current trial's step and returns
    what was found so far. That trial is recorded as failed ("interrupted") and is not resumed:
    running the call again starts new trials until ``n_trials`` have finished.
    """
    validate_config(config, hardware=False)  # each trial's config: on the machine, as it starts
    if not isinstance(n_trials, int) or n_trials < 1:
        raise SearchError(f"n_trials = {n_trials!r}: must be a whole number >= 1 (the total "
                          "number of trials the study should have)")
    name = _study_name(config, study_name)
    params = _batch_limit(config, workspace, parse_space(space, config), verbose)
    chosen_space = {n: (list(p.choices) if p.kind == "choice"
                        else (p.low, p.high, "log" if p.log else "linear"))
                    for n, p in params.items()}
    study = create_search_study(config, workspace, study_name=name, space=chosen_space,
                                sampler_seed=sampler_seed, prune=prune, trial_epochs=trial_epochs)
    own_db = db is None and workspace is not None
    if own_db:
        db = ExperimentDB.open_for_workspace(workspace, verbose=False)
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    remaining = n_trials - done
    where = study_path(workspace, name) if workspace is not None else "memory (no workspace)"
    if verbose:
        print(f"Search {name!r} in {where}: {done} of {n_trials} trials done"
              + (f", running {remaining} more" if remaining > 0 else "")
              + (f" (stops starting trials after {timeout:g}s)" if timeout and remaining > 0 else "")
              + ".\nSearching: " + "; ".join(p.describe() for p in params.values()))
    interrupted = False
    stopped = _Interrupted()
    try:
        if remaining > 0:
            objective = _objective(config, params, workspace, db, name,
                                   int(trial_epochs or config.epochs), keep_trial_checkpoints,
                                   stopped)
            with _quiet_optuna(), stopped.installed():  # our one line per trial replaces Optuna's
                study.optimize(
                    objective, n_trials=remaining, timeout=timeout,
                    catch=(TrainingDivergedError, torch.cuda.OutOfMemoryError),
                    callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=FINISHED),
                               _Progress(workspace, name, n_trials, verbose)],
                )
        elif verbose:
            print(f"The study already has {done} finished trials; raise n_trials to add more.")
    except KeyboardInterrupt:
        interrupted = True
        print(_interrupted_message(study, stopped.trials, n_trials, keep_trial_checkpoints))
    finally:
        _sync(workspace, name)
        if own_db:
            db.close()
    result = SearchResult(study, config, name, workspace, interrupted=interrupted)
    if verbose:
        print(result.summary())
    return result


def _interrupted_message(study: optuna.Study, trials: list[int], n_trials: int,
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


def load_search(study_name: str, workspace: Workspace) -> SearchResult:
    """Reopen a finished (or interrupted) search from the workspace, e.g. in a new session."""
    name = str(study_name)
    kept = study_path(workspace, name)
    if not kept.exists() and not _files(workspace, name).live.exists():
        found = sorted(p.stem for p in (workspace.root / SEARCH_DIR).glob("*.db"))
        raise SearchError(f"No search study {name!r} in {workspace.root / SEARCH_DIR}; "
                          f"studies there: {', '.join(found) or 'none'}")
    study = optuna.load_study(study_name=name, storage=_storage(workspace, name))
    config = TrainingConfig.from_dict(study.user_attrs["base_config"])
    return SearchResult(study, config, name, workspace)

