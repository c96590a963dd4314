"""Several search workers on one study: shared storages, exact totals, one device each.

The done-when test of the feature: two real ``python -m utils.training search`` processes,
started together on one journal-file study and on one SQLite study, finish exactly the planned
trials between them, each trial number once, with one experiment-DB run per trial. The rest
covers what a person can get wrong (storage URLs, devices) and the rare race in between.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import utils.training.search as search
import utils.training.search_storage as search_storage
from utils.training.__main__ import main
from utils.training.experiment_db import ExperimentDB
from utils.training.search import (
    SearchError,
    check_storage,
    create_search_study,
    load_search,
    open_storage,
    run_search,
    use_device,
)
from utils.training.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
LR_SPACE = {"learning_rate": (1e-4, 1e-2, "log")}
TRIALS = 3  # odd: two workers cannot simply split it, so the last trial is raced for


@pytest.fixture
def config(tiny_config):
    return tiny_config(epochs=1, synthetic_tokens=4000)


def _runs(workspace, study):
    with ExperimentDB.open_for_workspace(workspace, verbose=False) as db:
        return db.list_runs(study=study)


def worker_command(config_file, workspace, storage, seed, device=None):
    """One worker, exactly as the README shows it."""
    return [sys.executable, "-m", "utils.training", "search", "--config", str(config_file),
            "--workspace", str(workspace), "--storage", storage, "--study", "shared",
            "--trials", str(TRIALS), "--trial-epochs", "1", "--seed", str(seed),
            *(["--device", device] if device else [])]


# --------------------------------------------------------------------------- the done-when test


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["journal:search/shared.journal", "sqlite:///search/shared.db"])
def test_two_workers_started_together_lose_no_trials(config, tmp_path, storage):
    config_file = config.save(tmp_path / "config.json")
    root = tmp_path / "ws"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]), "OMP_NUM_THREADS": "1"}
    # Started at the same moment on a study that does not exist yet: both create it.
    workers = [subprocess.Popen(worker_command(config_file, root, storage, seed, device),
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
               for seed, device in ((1, "cpu"), (2, None))]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    for worker, out in zip(workers, outputs):
        assert worker.returncode == 0, out
        assert "Traceback" not in out and "database is locked" not in out, out

    workspace = Workspace.setup(root, mount_drive=False, verbose=False)
    study = optuna.load_study(study_name="shared",
                              storage=open_storage(workspace, "shared", storage).storage)
    trials = study.get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == TRIALS, [(t.number, t.state, t.user_attrs) for t in trials]
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # each number once
    others = [t for t in trials if t not in finished]
    assert all(t.user_attrs.get("skipped") for t in others)  # only the rare race's leftovers
    assert len({t.params["learning_rate"] for t in finished}) == TRIALS  # seeds did not collide
    run_ids = [t.user_attrs["run_id"] for t in finished]
    runs = _runs(workspace, "shared")
    assert sorted(runs["id"]) == sorted(run_ids)  # one DB run per trial, none lost or extra
    assert sorted(runs["name"]) == sorted(f"shared-trial-{t.number}" for t in finished)
    assert set(runs["status"]) <= {"completed", "pruned"}
    assert (root / "configs" / "shared-best.json").is_file()
    assert load_search("shared", workspace, storage=storage).best_value == pytest.approx(
        min(t.value for t in finished))


# --------------------------------------------------------------------------- the total, exactly


def test_a_worker_leaves_trials_running_elsewhere_alone(config, workspace, capsys):
    study = create_search_study(config, workspace, study_name="busy", space=LR_SPACE)
    with pytest.warns(UserWarning, match="Heartbeat"):
        other = study.ask()  # another worker's trial: its process (this one) is alive
    other.set_user_attr("worker", f"{search._machine()}:{os.getpid()}")
    result = run_search(config, workspace, n_trials=1, space=LR_SPACE, study_name="busy")
    out = capsys.readouterr().out
    assert "0 of 1 trials done, 1 running in other workers" in out
    assert "nothing for this worker to do" in out
    assert [t.state for t in result.study.trials] == [TrialState.RUNNING]
    assert _runs(workspace, "busy").empty

    # The CLI says so too, and succeeds: the other worker writes the best config.
    code = main(["search", "--workspace", str(workspace.root), "--study", "busy", "--trials",
                 "1", "--config", str(config.save(workspace.root / "busy.json"))])
    assert code == 0
    assert "1 are running in other workers" in capsys.readouterr().out


def test_a_trial_created_in_a_race_steps_back_without_training(config, workspace, monkeypatch,
                                                                capsys):
    # Both workers saw room for one more trial; the other one's trial was created first.
    study = create_search_study(config, workspace, study_name="race", space=LR_SPACE)
    run_search(config, workspace, n_trials=1, space=LR_SPACE, study_name="race", verbose=False)
    with pytest.warns(UserWarning, match="Heartbeat"):
        other = study.ask()
    monkeypatch.setattr(search, "_in_play", lambda study: (1, 0))  # the check both passed
    logged = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = logged.append
    logging.getLogger("optuna").addHandler(handler)
    try:
        result = run_search(config, workspace, n_trials=2, space=LR_SPACE, study_name="race")
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    assert [r.getMessage() for r in logged] == []  # no "Trial 2 failed" traceback
    assert "trial 2 not run: the study has its 2 trials finished or running" in (
        capsys.readouterr().out)
    study.tell(other, 1.0)
    assert list(result.trials["state"]) == ["complete", "complete", "skipped"]
    assert list(_runs(workspace, "race")["name"]) == ["race-trial-0"]  # nothing trained


def test_a_trial_left_running_by_a_dead_process_on_this_machine_is_replaced_at_once(
        config, workspace):
    # A restarted kernel or a killed worker: nobody waits out the heartbeat's grace period.
    study = create_search_study(config, workspace, study_name="restart", space=LR_SPACE)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.warns(UserWarning, match="Heartbeat"):
        zombie = study.ask()
    zombie.set_user_attr("worker", f"{search._machine()}:{gone.pid}")
    study._storage.record_heartbeat(zombie._trial_id)  # fresh: the heartbeat alone would wait
    result = run_search(config, workspace, n_trials=1, space=LR_SPACE, study_name="restart",
                        verbose=False)
    assert list(result.trials["state"]) == ["fail", "complete"]


def test_a_journal_trial_left_running_by_a_dead_worker_is_failed_and_replaced(
        config, workspace, monkeypatch):
    # Optuna's journal storage has no heartbeat of its own: ours fails the zombie.
    monkeypatch.setattr(search_storage, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(search_storage, "GRACE_SECONDS", 1)
    storage = "journal:search/zombie.journal"
    study = create_search_study(config, workspace, space=LR_SPACE, storage=storage)
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna: ask() is not optimize()
        zombie = study.ask()
    study._storage.record_heartbeat(zombie._trial_id)
    time.sleep(1.5)
    result = run_search(config, workspace, n_trials=1, space=LR_SPACE, verbose=False,
                        storage=storage)
    assert list(result.trials["state"]) == ["fail", "complete"]


# --------------------------------------------------------------------------- what people get wrong


@pytest.mark.parametrize(("spec", "says"), [
    ("redis://localhost/0", "not a storage this search can use"),
    ("postgres://me:hunter2@db/optuna", "SQLAlchemy spells it postgresql://"),
    ("sqlite:/search/x.db", "sqlite:/// followed by a file path"),
    ("sqlite:///:memory:", "an in-memory study cannot be shared"),
    ("journal:", "name a file"),
    ("sqlite:///../outside.db", "must stay inside the workspace"),
    ("journal:search/../../x.journal", "must stay inside the workspace"),
    ("search/x.db", "not a storage this search can use"),
])
def test_a_bad_storage_says_which_forms_work(spec, says):
    with pytest.raises(SearchError) as info:
        check_storage(spec)
    text = str(info.value)
    assert says in text and "Accepted forms" in text and "journal:search/<study>.journal" in text
    assert "hunter2" not in text


def test_storage_files_stay_in_a_local_workspace_and_must_be_studies(workspace, tmp_path):
    def refused(spec, ws=workspace):
        with pytest.raises(SearchError) as info:
            open_storage(ws, "s", spec)
        return str(info.value)

    assert "not inside the workspace" in refused(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert not (tmp_path / "elsewhere.db").exists()
    assert "is the experiment history" in refused("sqlite:///experiments.db")
    (workspace.configs / "a.json").write_text('{"run_name": "a"}')
    assert "not a SQLite database" in refused("sqlite:///configs/a.json")
    assert "not an Optuna journal file" in refused("journal:configs/a.json")
    assert (workspace.configs / "a.json").read_text() == '{"run_name": "a"}'  # untouched
    with ExperimentDB(workspace.root / "other.db", verbose=False):
        pass
    assert "holds other tables" in refused("sqlite:///other.db")
    assert "is a folder" in refused("journal:configs")
    assert "lives in a workspace" in refused("journal:x.journal", ws=None)
    drive = Workspace(root=tmp_path / "drive", on_drive=True, staging=tmp_path / "local")
    assert "Google Drive" in refused("journal:search/x.journal", ws=drive)
    # Absolute paths inside the workspace are fine, as are both kinds side by side.
    assert open_storage(workspace, "s", f"sqlite:///{workspace.root}/search/s.db").sqlite
    assert open_storage(workspace, "s", "journal:s.journal").where.endswith("s.journal")


@pytest.mark.parametrize("url", ["postgresql://me:hunter2@127.0.0.1:1/optuna",
                                 "mysql+pymysql://me:hunter2@127.0.0.1:1/optuna"])
def test_a_database_server_without_its_driver_is_a_clear_error(url):
    # No driver is installed here (and nothing listens on port 1): either way one clear line.
    with pytest.raises(SearchError) as info:
        open_storage(None, "s", url)
    text = str(info.value)
    assert "hunter2" not in text and "me:***@127.0.0.1:1/optuna" in text
    assert ("is not installed" in text and "pip install" in text) or "Cannot use" in text


def test_a_bad_device_says_what_works(monkeypatch):
    with pytest.raises(SearchError, match="use cpu, cuda or cuda:N"):
        use_device("tpu")
    if torch.cuda.is_available():
        with pytest.raises(SearchError, match="GPU"):
            use_device(f"cuda:{torch.cuda.device_count()}")
    else:
        with pytest.raises(SearchError, match="this process sees no GPU; use cpu"):
            use_device("cuda:1")
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # restored after the test
        use_device("cpu")
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


def test_the_cli_refuses_a_bad_storage_in_one_line(tmp_path, capsys):
    code = main(["search", "--workspace", str(tmp_path / "ws"), "--storage", "redis://x",
                 "--set", "data_source=synthetic"])
    err = capsys.readouterr().err
    assert code == 2 and "Accepted forms" in err and "Traceback" not in err
    code = main(["search", "--workspace", str(tmp_path / "ws"), "--device", "gpu0"])
    assert code == 2 and "use cpu, cuda or cuda:N" in capsys.readouterr().err
