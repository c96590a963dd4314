"""Hyperparameter search on Optuna: every trial is a real, tracked training run.

A trial is a ``TrainingSession`` like any other (same data path, same DB row, tagged with the
study), so a search result can be inspected, compared and exported like a hand-made run. By
default the study lives in ``<workspace>/search/<study>.db`` (Optuna's RDB storage on SQLite),
so after a disconnect the same call carries on: ``n_trials`` is the *total* the study should
reach, counting finished (completed or pruned) trials, and re-running the cell finishes the plan
instead of starting over. On Drive, SQLite locking is unreliable (COLAB.md), so the live study
file is on the VM's local disk and a consistent copy (SQLite backup API) goes to Drive after
every trial; a fresh VM restores it from there, like ``ExperimentDB`` does.

Several workers (processes, each on its own device) can share one study: ``storage`` names it
directly (:data:`STORAGE_FORMS`). Together they stop at ``n_trials``: a worker starts a trial only
while the finished trials plus those running elsewhere fall short of it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import re
import shutil
import socket
from collections.abc import Iterator, Mapping
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from . import metric_names as M
from .callbacks import Callback
from .data import load_token_data
from .experiment_db import ExperimentDB
from .run import TrainingSession, validate_config
from .search_result import (
    FINISHED,
    INTERRUPTED,
    SKIPPED,
    SearchResult,
    interrupted_message,
    load_search,
    trial_line,
)
from .search_space import (
    Param,
    SearchError,
    SearchSpaceError,
    apply_params,
    default_space,
    parse_space,
)
from .search_storage import (
    STORAGE_FORMS,
    StudyStorage,
    check_storage,
    open_storage,
    quiet_optuna,
    study_path,
)
from .trainer import TrainingDivergedError
from .training_config import NOT_HYPERPARAMETERS, RUN_NAME_RE, TrainingConfig
from .workspace import Workspace, pid_alive

__all__ = [
    "STORAGE_FORMS", "SearchError", "SearchResult", "SearchSpaceError", "StudyStorage",
    "check_storage", "create_search_study", "default_space", "load_search", "open_storage",
    "run_search", "study_path", "use_device",
]

MEDIAN_STARTUP_TRIALS = 3  # trials that finish unpruned before the median means anything
# Random trials before TPE models the results. Optuna's default (10) would make a typical
# Colab budget of 10-20 trials mostly random search.
TPE_STARTUP_TRIALS = 5
_TRIAL_SUFFIX = "-trial-00000"  # the longest suffix a study name must leave room for
# Differences in these fields do not change what a trial measures, so continuing a study
# with them changed is fine.
_NOT_COMPARED = NOT_HYPERPARAMETERS | {"epochs", "compile"}
_IN_PLAY = (*FINISHED, TrialState.RUNNING)
_WORKER = "worker"  # a trial's user attr: "<machine>:<pid>" of the process that runs it


# --------------------------------------------------------------------------- study and device


def _study_name(config: TrainingConfig, study_name: str | None) -> str:
    name = config.run_name if study_name is None else str(study_name)
    if not RUN_NAME_RE.fullmatch(name + _TRIAL_SUFFIX):
        raise SearchError(
            f"study_name {name!r} cannot name the trial runs: use 1-{64 - len(_TRIAL_SUFFIX)} "
            "characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )
    return name


def use_device(device: str | None) -> None:
    """Make this process train on ``device``: "cpu", "cuda" or "cuda:N" (N counts the GPUs this
    process sees). Process-wide on purpose: the hardware check, the trainer, pinned memory and
    the GPU readings all ask torch for "the" device, so each search worker (a process of its
    own) points torch at its device once, before anything touches CUDA."""
    if device is None:
        return
    text = str(device).strip().lower()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    if text == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # read by CUDA when it starts, later
        if torch.cuda.is_available():
            if visible is None:
                del os.environ["CUDA_VISIBLE_DEVICES"]
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = visible
            raise SearchError("device 'cpu': CUDA already started in this process, so the GPU "
                              "cannot be hidden any more; start the worker with "
                              "CUDA_VISIBLE_DEVICES= (empty) in its environment instead")
        return
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise SearchError(f"device {device!r}: use cpu, cuda or cuda:N (the N-th GPU this "
                          "process sees)")
    if not torch.cuda.is_available():
        raise SearchError(f"device {device!r}: this process sees no GPU{seen}; use cpu, or "
                          "run the worker on a machine with a GPU")
    count = torch.cuda.device_count()
    index = int(match.group(1) or torch.cuda.current_device())
    if index >= count:
        raise SearchError(f"device {device!r}: this process sees {count} GPU(s), cuda:0 to "
                          f"cuda:{count - 1}{seen}")
    torch.cuda.set_device(index)


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
    storage: str | StudyStorage | None = None,
) -> optuna.Study:
    """Create the study (or open it); parallel workers may all call it at the same moment.

    Continuing a study with a config that changes what trials measure (other data, another
    model size that is not searched) would mix incomparable numbers, so it is an error.
    The sampler's seed mixes ``sampler_seed`` (default ``config.seed``) with the number of
    trials already in the study: a continued study does not replay its first random trials.
    Parallel workers should pass different ``sampler_seed`` values for the same reason (a plain
    sum would let seed 1 after one trial equal seed 2 before any).
    """
    validate_config(config, hardware=False)  # after run_search's own call: a lookup
    name = _study_name(config, study_name)
    params = parse_space(space, config)
    epochs = int(trial_epochs or config.epochs)
    store = (storage if isinstance(storage, StudyStorage)
             else open_storage(workspace, name, storage))
    with store.creation_lock(), quiet_optuna():
        study = optuna.create_study(storage=store.storage, study_name=name,
                                    direction="minimize", load_if_exists=True)
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
    base = config.seed if sampler_seed is None else int(sampler_seed)
    seed = (base * 1_000_003 + len(study.trials)) % 2**32
    sampler = optuna.samplers.TPESampler(n_startup_trials=TPE_STARTUP_TRIALS, seed=seed,
                                         constant_liar=True)
    return optuna.load_study(study_name=name, storage=store.storage, sampler=sampler,
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


class _Silenced(logging.Filter):
    """Trials that end "failed" on purpose: stopped by Ctrl-C (``interrupted``), or not needed
    because the study's total was already finished or running elsewhere (``skipped``). Optuna
    logs each as a failure with a traceback, as if it were a bug; as a logging filter on
    Optuna's optimize logger this drops those records (and only those): ``run_search`` says
    what happened instead."""

    LOGGER = "optuna.study._optimize"

    def __init__(self) -> None:
        super().__init__()
        self.interrupted: list[int] = []
        self.skipped: list[int] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(f"Trial {n} failed")
                       for n in self.interrupted + self.skipped)

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Silenced]:
        logger = logging.getLogger(self.LOGGER)
        logger.addFilter(self)
        try:
            yield self
        finally:
            logger.removeFilter(self)


class _NotNeeded(Exception):
    """The trial just created would exceed ``n_trials``: another worker created one first."""


def _machine() -> str:
    """This machine, as a worker records it: the host and, on Linux, the pid namespace (two
    containers may share a host name but not their pids)."""
    with contextlib.suppress(OSError):
        return f"{socket.gethostname()}/{os.readlink('/proc/self/ns/pid')}"
    return socket.gethostname()


def _trials_in_play(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count towards ``n_trials``: finished ones and running ones. A running
    trial whose worker was a process on this machine that is gone (a restarted kernel, a killed
    worker) is failed first, so a rerun replaces it at once; other machines' dead workers are
    the heartbeat's job."""
    trials = study.get_trials(deepcopy=False, states=_IN_PLAY)
    here, dead = _machine(), []
    for t in trials:
        machine, _, pid = str(t.user_attrs.get(_WORKER, "")).rpartition(":")
        if t.state == TrialState.RUNNING and machine == here and not pid_alive(int(pid)):
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            dead.append(t)
    return [t for t in trials if t not in dead]


def _in_play(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trials; the running ones are other workers' (or, for up to
    ``GRACE_SECONDS``, those of another machine's dead worker)."""
    trials = _trials_in_play(study)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


def _free_memory() -> None:
    """Trials run back to back in one process: without this, each one's model, optimizer state
    and CUDA cache pile up until a later trial runs out of GPU memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _objective(config: TrainingConfig, params: dict, workspace: Workspace | None, db: Any,
               study_name: str, epochs: int, keep_checkpoints: bool, silenced: _Silenced,
               n_trials: int):
    def objective(trial: optuna.Trial) -> float:
        # Two workers can pass the "room for one more" check at the same moment; trial numbers
        # are handed out one at a time, so the later one sees the earlier one and steps back.
        trial.set_user_attr(_WORKER, f"{_machine()}:{os.getpid()}")
        ahead = _trials_in_play(trial.study)
        if sum(t.number < trial.number for t in ahead) >= n_trials:
            trial.set_user_attr(SKIPPED, True)
            silenced.skipped.append(trial.number)
            trial.study.stop()
            raise _NotNeeded(f"the study already has {n_trials} trials finished or running")
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
            silenced.interrupted.append(trial.number)
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
    """After each trial: the study copied to Drive, a stop once the total is finished or in
    other workers' hands, and one line."""

    def __init__(self, store: StudyStorage, target: int, verbose: bool) -> None:
        self.store, self.target, self.verbose = store, target, verbose

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.store.sync()
        finished, running = _in_play(study)
        if finished + running >= self.target:
            study.stop()
        if self.verbose:
            print(f"trial {trial.number} not run: the study has its {self.target} trials "
                  "finished or running in other workers" if trial.user_attrs.get(SKIPPED)
                  else trial_line(study, trial, self.target))


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
    storage: str | None = None,
    device: str | None = None,
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

    Several workers: give each the same ``storage`` (:data:`STORAGE_FORMS`) and study, its own
    ``sampler_seed`` and ``device`` (:func:`use_device`). A worker starts a trial only while
    finished plus running trials fall short of ``n_trials``, so together they stop at it; a
    worker whose trial fails replaces it. A worker that dies leaves a "running" trial: on the
    same machine the next worker (or a rerun) fails and replaces it at once, from another machine
    after the heartbeat's grace period (3 minutes). Running the call again tops the study up.
    """
    use_device(device)
    validate_config(config, hardware=False)  # each trial's config: on the machine, as it starts
    if not isinstance(n_trials, int) or n_trials < 1:
        raise SearchError(f"n_trials = {n_trials!r}: must be a whole number >= 1 (the total "
                          "number of trials the study should have)")
    name = _study_name(config, study_name)
    check_storage(storage)  # its form now; its file once the space has passed
    params = _batch_limit(config, workspace, parse_space(space, config), verbose)
    store = open_storage(workspace, name, storage)
    chosen_space = {n: (list(p.choices) if p.kind == "choice"
                        else (p.low, p.high, "log" if p.log else "linear"))
                    for n, p in params.items()}
    study = create_search_study(config, workspace, study_name=name, space=chosen_space,
                                sampler_seed=sampler_seed, prune=prune, trial_epochs=trial_epochs,
                                storage=store)
    if verbose and store.machines != "one" and workspace is not None and db is None:
        print(f"Note: every worker records its trials in {workspace.db_path}, a SQLite file that"
              " is safe for the workers of one machine only" + (
                  ": on Drive each VM's copy overwrites the others'. Give each VM its own "
                  "workspace (--workspace)." if workspace.on_drive else
                  " (its WAL mode needs one host). Workers on other machines need a workspace "
                  "of their own for it."))
    own_db = db is None and workspace is not None
    if own_db:
        db = ExperimentDB.open_for_workspace(workspace, verbose=False)
    with quiet_optuna():
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial frees its place
    done, running = _in_play(study)
    remaining = n_trials - done - running
    if verbose:
        elsewhere = f", {running} running in other workers" if running else ""
        print(f"Search {name!r} in {store.where}: {done} of {n_trials} trials done{elsewhere}"
              + (f", running up to {remaining} more" if remaining > 0 else "")
              + (f" (stops starting trials after {timeout:g}s)" if timeout and remaining > 0 else "")
              + ".\nSearching: " + "; ".join(p.describe() for p in params.values()))
    interrupted = False
    silenced = _Silenced()
    try:
        if remaining > 0:
            objective = _objective(config, params, workspace, db, name,
                                   int(trial_epochs or config.epochs), keep_trial_checkpoints,
                                   silenced, n_trials)
            with quiet_optuna(), silenced.installed():  # our one line per trial replaces Optuna's
                study.optimize(  # n_trials caps the attempts: a trial that always fails ends
                    objective, n_trials=n_trials - done, timeout=timeout,
                    catch=(TrainingDivergedError, torch.cuda.OutOfMemoryError, _NotNeeded),
                    callbacks=[_Progress(store, n_trials, verbose)],
                )
        elif verbose and running:
            print(f"The other {running} trials it needs are running in other workers: nothing "
                  "for this worker to do. (A trial whose worker on another machine died is "
                  "failed by the heartbeat after 3 minutes; run again then.)")
        elif verbose:
            print(f"The study already has {done} finished trials; raise n_trials to add more.")
    except KeyboardInterrupt:
        interrupted = True
        print(interrupted_message(study, silenced.interrupted, n_trials, keep_trial_checkpoints))
    finally:
        store.sync()
        if own_db:
            db.close()
    result = SearchResult(study, config, name, workspace, interrupted=interrupted)
    if verbose:
        print(result.summary())
    return result

