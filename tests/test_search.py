"""Optuna search: space checks, pruning, continuing a study, parallel workers, figures, CLI."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from utils.training.__main__ import add_search_command
from utils.training.experiment_db import ExperimentDB
from utils.training.search import (
    SearchError,
    SearchSpaceError,
    create_search_study,
    load_search,
    run_search,
    study_path,
)
from utils.training.search_space import apply_params, default_space, fit_heads, parse_space
from utils.training.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
LR_SPACE = {"learning_rate": (1e-6, 1e-2, "log")}


@pytest.fixture
def config(tiny_config):
    return tiny_config(epochs=2, synthetic_tokens=4000)


def _db_runs(workspace, study):
    with ExperimentDB.open_for_workspace(workspace, verbose=False) as db:
        return db.list_runs(study=study)


# --------------------------------------------------------------------------- the space


def test_bad_space_lists_every_problem_with_numbers_and_names(config):
    with pytest.raises(SearchSpaceError) as info:
        parse_space({"learning_rate": (1e-2, 1e-4), "learnin_rate": (0.1, 0.2),
                     "seed": (1, 5), "batch_size": [], "n_layers": (1.5, 3),
                     "weight_decay": (0.0, 0.1, "log"), "dropout": 0.1}, config)
    text = str(info.value)
    assert "7 problems" in text
    assert "low 0.01 is greater than high 0.0001" in text
    assert "'learnin_rate' is not a TrainingConfig field (did you mean 'learning_rate'?)" in text
    assert "searchable fields: learning_rate" in text
    assert "'seed' is a TrainingConfig field that a search cannot vary" in text
    assert "batch_size: no choices given" in text
    assert "n_layers: low = 1.5 is not allowed; n_layers takes whole numbers" in text
    assert "log-scaled range needs low > 0" in text
    assert "dropout: 0.1 is not a range or a list of choices" in text


def test_space_values_are_checked_against_the_config(config):
    with pytest.raises(SearchSpaceError, match=r"dropout = 1\.5 would give an invalid config"):
        parse_space({"dropout": (0.0, 1.5)}, config)
    with pytest.raises(SearchSpaceError, match="nothing to search"):
        parse_space({"learning_rate": (1e-3, 1e-3)}, config)
    with pytest.raises(SearchSpaceError, match="the space is empty"):
        parse_space({"dropout": None}, config)


def test_bad_space_fails_before_any_trial(config, workspace):
    with pytest.raises(SearchSpaceError, match="greater than high"):
        run_search(config, workspace, n_trials=1, space={"learning_rate": (1e-2, 1e-4)})
    assert not study_path(workspace, config.run_name).exists()
    with pytest.raises(SearchError, match="n_trials"):
        run_search(config, workspace, n_trials=0)


def test_default_space_and_width_keep_heads_dividing(tiny_config):
    config = tiny_config(n_heads=8, d_model=64)
    assert set(default_space()) == {"learning_rate", "batch_size", "warmup_ratio",
                                    "weight_decay", "dropout"}
    assert {"n_layers", "d_model"} <= set(default_space(depth=True, width=True))
    params = parse_space({"d_model": [36, 64]}, config)  # 36 % 8 != 0: heads must follow
    assert params["d_model"].choices == (36, 64)
    changed, changes = apply_params(config, {"d_model": 36})
    assert (changed.d_model, changed.n_heads, changes["n_heads"]) == (36, 6, 6)
    assert changed.validate() is changed
    assert fit_heads(48, 5) == 4 and fit_heads(7, 4) == 1


# --------------------------------------------------------------------------- running searches


def test_search_prunes_a_bad_trial_and_its_best_config_trains(config, workspace):
    # Three sensible learning rates set the median; an absurdly low one must be pruned after
    # its first epoch. Enqueued trials make that deterministic instead of up to the sampler.
    study = create_search_study(config, workspace, space=LR_SPACE)
    for lr in (3e-3, 5e-3, 2e-3, 1e-6):
        study.enqueue_trial({"learning_rate": lr})
    result = run_search(config, workspace, n_trials=4, space=LR_SPACE, verbose=False)

    trials = result.trials
    assert list(trials["number"]) == [0, 1, 2, 3]
    assert list(trials["state"]) == ["complete"] * 3 + ["pruned"]
    assert list(trials["epochs"]) == [2, 2, 2, 1]  # the pruned trial stopped after epoch 1
    assert {"value", "learning_rate", "duration_s", "run_id", "run_name"} <= set(trials.columns)
    runs = _db_runs(workspace, config.run_name).set_index("name")
    assert runs.loc["tiny-trial-3", "status"] == "pruned"
    assert set(runs.loc[[f"tiny-trial-{i}" for i in range(3)], "status"]) == {"completed"}
    assert all("search" in tags for tags in runs["tags"])
    assert not (workspace.checkpoints / "tiny-trial-0").exists()  # trial checkpoints cleaned

    best = result.best_config
    assert best.run_name == "tiny-best" and best.epochs == config.epochs
    assert best.learning_rate == result.best_params["learning_rate"] in (3e-3, 5e-3, 2e-3)
    assert result.best_value == pytest.approx(trials["value"].min())

    from utils.training.run import TrainingSession

    session = TrainingSession.create(best.replace(epochs=1), workspace, live_plot=False,
                                     progress=False, verbose=False)
    trained = session.fit()
    assert trained.epochs_completed == 1 and trained.best_val_loss < 3.0

    import matplotlib

    style = dict(matplotlib.rcParams)
    figures = result.figures()
    assert set(figures) == {"optimization_history", "param_importances", "intermediate_values"}
    assert dict(matplotlib.rcParams) == style  # Optuna's global ggplot style was undone
    # Labelled for this search, not Optuna's "Objective Value" / "Step" with half epochs.
    history = figures["optimization_history"].axes[0]
    assert history.get_xlabel() == "trial" and history.get_ylabel().startswith("validation loss")
    legend = [t.get_text() for t in history.get_legend().get_texts()]
    assert legend == ["trial's validation loss", "best so far"]
    curves = figures["intermediate_values"].axes[0]
    assert curves.get_xlabel() == "epoch" and curves.get_ylabel().startswith("validation loss")
    low, high = curves.get_xlim()
    assert [t for t in curves.get_xticks() if low <= t <= high] == [1, 2]
    importances = figures["param_importances"].axes[0]
    assert "validation loss" in importances.get_xlabel() and importances.get_legend() is None
    assert all("Objective" not in ax.get_title(loc=loc) + ax.get_xlabel() + ax.get_ylabel()
               for f in figures.values() for ax in f.axes for loc in ("left", "center"))
    saved = result.save_figures()
    assert all(p.is_file() and p.stat().st_size > 1000 for p in saved.values())
    assert saved["intermediate_values"].parent == workspace.results / "search" / "tiny"


def test_ctrl_c_stops_the_search_cleanly_and_says_what_a_rerun_does(config, workspace,
                                                                   monkeypatch, capsys):
    """Colab's stop button during trial 1: no Optuna traceback, no promise of a resume that
    cannot happen; the trial is marked interrupted and a rerun tops the plan up with new ones."""
    import logging
    import signal

    import utils.training.search as search

    def press_stop(self, trainer, metrics):
        if self.trial.number == 1 and metrics["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(search._ReportToTrial, "on_step_end", press_stop)
    logged = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = logged.append
    logging.getLogger("optuna").addHandler(handler)
    try:
        result = run_search(config, workspace, n_trials=3, space=LR_SPACE)
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert result.interrupted
    assert [r.getMessage() for r in logged] == []  # Optuna's "Trial 1 failed" + traceback
    assert "Traceback" not in text and "resume from here" not in text
    assert ("Search stopped during trial 1: that trial is recorded as failed (interrupted) and "
            "will not be continued") in text
    assert ("1 of 3 trials are finished and kept. Running the same call again starts new "
            "trials until 3 are finished.") in text
    assert list(result.trials["state"]) == ["complete", "interrupted"]
    assert "1 interrupted" in result.summary()
    runs = _db_runs(workspace, config.run_name).set_index("name")
    assert runs.loc["tiny-trial-1", "status"] == "interrupted"
    assert not (workspace.checkpoints / "tiny-trial-1").exists()

    monkeypatch.undo()
    again = run_search(config, workspace, n_trials=3, space=LR_SPACE, verbose=False)
    assert list(again.trials["state"]) == ["complete", "interrupted", "complete", "complete"]


def test_rerun_continues_the_study_after_a_disconnect(config, tmp_path):
    # A Drive-like workspace: the live study sits on "local disk" and is copied to "Drive".
    # Deleting the local copy between the calls is what a fresh Colab VM looks like.
    drive, local = tmp_path / "drive", tmp_path / "local"
    workspace = Workspace(root=drive, on_drive=True, staging=local)
    for folder in (drive / "checkpoints", drive / "configs", drive / "results",
                   drive / "datasets", local):
        folder.mkdir(parents=True)
    first = run_search(config, workspace, n_trials=2, space=LR_SPACE, verbose=False,
                       study_name="resumable")
    assert len(first.trials) == 2
    assert study_path(workspace, "resumable").is_file()  # the copy on "Drive"
    for path in (local / "search" / "resumable.db", local / "experiments.db"):
        path.unlink()

    second = run_search(config, workspace, n_trials=3, space=LR_SPACE, verbose=False,
                        study_name="resumable")
    trials = second.trials
    assert list(trials["number"]) == [0, 1, 2]  # one more, none repeated
    assert set(trials["state"]) <= {"complete", "pruned"}
    assert trials["learning_rate"].nunique() == 3  # the sampler did not replay trial 0
    assert sorted(_db_runs(workspace, "resumable")["name"]) == [
        f"resumable-trial-{i}" for i in range(3)]

    again = run_search(config, workspace, n_trials=3, space=LR_SPACE, verbose=False,
                       study_name="resumable")
    assert len(again.trials) == 3  # the plan is finished: nothing more runs
    reopened = load_search("resumable", workspace)
    assert reopened.best_params == again.best_params

    with pytest.raises(SearchError, match=r"different config \(n_layers 1 -> 2\)"):
        run_search(config.replace(n_layers=2), workspace, n_trials=4, space=LR_SPACE,
                   verbose=False, study_name="resumable")


def test_a_trial_left_running_by_a_dead_worker_is_failed_and_replaced(config, workspace,
                                                                      monkeypatch):
    # A disconnect mid-trial leaves it "running" with no worker; its heartbeat goes stale.
    import utils.training.search_storage as search_storage

    monkeypatch.setattr(search_storage, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(search_storage, "GRACE_SECONDS", 1)
    study = create_search_study(config, workspace, space=LR_SPACE)
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna: ask() is not optimize()
        zombie = study.ask()
    study._storage.record_heartbeat(zombie._trial_id)
    time.sleep(2.2)  # SQLite timestamps have 1 s resolution: 2 s is surely past a 1 s grace
    result = run_search(config, workspace, n_trials=1, space=LR_SPACE, verbose=False)
    assert list(result.trials["state"]) == ["fail", "complete"]


def test_search_without_workspace_lives_in_memory(config, capsys):
    result = run_search(config, None, n_trials=2, space={"dropout": (0.0, 0.2)},
                        prune=False, trial_epochs=1)
    out = capsys.readouterr().out
    assert "memory (no workspace)" in out and "trial 1 (2/2) complete" in out
    assert list(result.trials["epochs"]) == [1, 1]
    assert result.best_config.epochs == config.epochs  # trial_epochs shortens trials only


_WORKER = textwrap.dedent("""
    import sys
    import torch
    torch.set_num_threads(1)
    from utils.training.search import run_search
    from utils.training.training_config import TrainingConfig
    from utils.training.workspace import Workspace

    config = TrainingConfig.load(sys.argv[1])
    workspace = Workspace.setup(sys.argv[2], mount_drive=False, verbose=False)
    run_search(config, workspace, n_trials=4, space={"learning_rate": (1e-4, 1e-2, "log")},
               study_name="parallel", sampler_seed=int(sys.argv[3]), verbose=False)
""")


@pytest.mark.slow
def test_two_workers_on_one_study_lose_no_trials(config, workspace, tmp_path):
    create_search_study(config, workspace, study_name="parallel",
                        space={"learning_rate": (1e-4, 1e-2, "log")})
    config_file = config.save(tmp_path / "config.json")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]), "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER, str(config_file),
                                 str(workspace.root), str(seed)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for seed in (1, 2)]
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, out

    study = optuna.load_study(study_name="parallel",
                              storage=f"sqlite:///{study_path(workspace, 'parallel')}")
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4  # together they stop at the total (tests/test_search_workers.py)
    assert all(t.user_attrs.get("skipped") for t in trials if t not in finished)
    run_ids = [t.user_attrs["run_id"] for t in finished]
    assert len(set(run_ids)) == len(finished)
    runs = _db_runs(workspace, "parallel")
    assert sorted(runs["id"]) == sorted(run_ids)
    assert sorted(runs["name"]) == sorted(f"parallel-trial-{t.number}" for t in finished)


def test_cli_search_saves_the_best_config_and_figures(config, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_search_command(parser.add_subparsers(dest="command"))
    config_file = config.save(tmp_path / "base.json")
    root = tmp_path / "ws"
    args = parser.parse_args(["search", "--config", str(config_file), "--trials", "2",
                              "--workspace", str(root), "--study", "cli", "--trial-epochs", "1",
                              "--set", "dropout=0.1"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    best = json.loads((root / "configs" / "cli-best.json").read_text())
    assert best["run_name"] == "cli-best" and best["epochs"] == 2
    assert "Best config:" in out and (root / "results" / "search" / "cli").is_dir()

    bad = parser.parse_args(["search", "--config", str(config_file), "--workspace", str(root),
                             "--study", "x" * 60])
    assert bad.func(bad) == 2
    assert "cannot name the trial runs" in capsys.readouterr().err


def test_no_completed_trial_is_a_clear_error(config, workspace):
    result = run_search(config, workspace, n_trials=1, space=LR_SPACE, verbose=False,
                        prune=optuna.pruners.ThresholdPruner(upper=0.0))  # prunes everything
    assert list(result.trials["state"]) == ["pruned"]
    with pytest.raises(SearchError, match="no completed trial"):
        _ = result.best_config
    assert set(result.figures()) == {"intermediate_values"}
