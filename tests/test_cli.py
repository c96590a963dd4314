"""The command line as a person uses it: train, redraw the dashboard, and clear errors (exit 2)."""

from __future__ import annotations

import errno
import os

import pytest

from utils.training.__main__ import _runs_table, main

TINY = ["run_name=cli", "data_source=synthetic", "vocab_size=16", "synthetic_tokens=6000",
        "n_layers=1", "n_heads=2", "d_model=32", "block_size=16", "batch_size=8", "epochs=2",
        "precision=fp32", "sample_tokens=0"]


def sets(pairs):
    return [arg for pair in pairs for arg in ("--set", pair)]


def test_train_then_dashboard_from_the_database(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    assert main(["train", "--workspace", ws, "--no-progress", *sets(TINY)]) == 0
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "completed after 2 epochs" in out
    assert (tmp_path / "ws" / "results" / "cli_dashboard.png").is_file()
    assert main(["dashboard", "cli", "--workspace", ws, "--output", str(tmp_path / "d.svg")]) == 0
    assert (tmp_path / "d.svg").read_text().lstrip().startswith("<?xml")


def test_bad_input_is_one_clear_line_and_exit_code_2(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    assert main(["train", "--workspace", ws, *sets(["learning_rate=-1", "n_heads=3"])]) == 2
    err = capsys.readouterr().err
    assert "learning_rate = -1.0" in err and "n_heads = 3" in err and "Traceback" not in err
    assert main(["dashboard", "nosuch", "--workspace", ws]) == 2
    assert "no run named 'nosuch'" in capsys.readouterr().err


def stored_runs(ws, names):
    """A workspace whose database holds a run per name (two epochs each); returns their ids.
    Names go in with SQL: the library refuses unsafe ones, but an old database may hold them."""
    import sqlite3

    from utils.training import metric_names as M
    from utils.training.experiment_db import ExperimentDB

    ids = []
    with ExperimentDB(ws / "experiments.db", verbose=False) as db:
        for _ in names:
            run_id = db.start_run({"run_name": "placeholder"})
            for epoch in (1, 2):
                db.log_metrics(run_id, {M.TRAIN_LOSS: 2.0 / epoch, M.VAL_LOSS: 2.1 / epoch},
                               step=epoch * 10, epoch=epoch)
            db.finish_run(run_id)
            ids.append(run_id)
    with sqlite3.connect(ws / "experiments.db") as conn:
        for run_id, name in zip(ids, names):
            conn.execute("UPDATE runs SET name = ? WHERE id = ?", (name, run_id))
    return ids


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_dashboard_takes_a_run_id_and_names_the_cli_command_when_none_matches(tmp_path, capsys):
    ws = tmp_path / "ws"
    ws.mkdir()
    first, _ = stored_runs(ws, ["alpha", "beta"])
    assert main(["dashboard", str(first), "--workspace", str(ws)]) == 0  # help: "run id or name"
    assert f"Dashboard of run {first} (alpha" in capsys.readouterr().out
    assert (ws / "results" / "alpha_dashboard.png").is_file()
    assert main(["dashboard", "nope", "--workspace", str(ws)]) == 2
    err = capsys.readouterr().err
    assert "no run named 'nope'" in err and "python -m utils.training runs" in err
    assert "db.list_runs()" not in err and "Traceback" not in err
    assert main(["dashboard", "99", "--workspace", str(ws)]) == 2  # no such id, nor name
    assert "no run named '99'" in capsys.readouterr().err


def test_names_from_the_command_line_or_the_database_stay_in_the_workspace(tmp_path, capsys):
    ws, outside = tmp_path / "a" / "b" / "ws", tmp_path / "outside"
    outside.mkdir()
    (outside / "x").mkdir()
    (outside / "x" / "theirs.txt").write_text("keep")
    assert main(["export", "../../../outside/x", "--workspace", str(ws)]) == 2
    err = capsys.readouterr().err
    assert "A-Z a-z 0-9 . _ -" in err and "Traceback" not in err
    assert files_under(outside) == ["x", "x/theirs.txt"] and not ws.exists()

    ws.mkdir(parents=True)
    (run_id,) = stored_runs(ws, ["../../../outside/x"])  # a name an old version let in
    for ref in ("../../../outside/x", str(run_id)):
        assert main(["dashboard", ref, "--workspace", str(ws)]) == 2
        err = capsys.readouterr().err
        assert "--output" in err and "A-Z a-z 0-9 . _ -" in err
    assert files_under(outside) == ["x", "x/theirs.txt"]
    png = tmp_path / "chosen.png"
    assert main(["dashboard", str(run_id), "--workspace", str(ws), "--output", str(png)]) == 0
    assert png.is_file()


@pytest.mark.parametrize("code, advice", [(errno.ENOSPC, "disk is full"),
                                          (errno.EACCES, "Permission denied"),
                                          (errno.EROFS, "read-only")])
def test_a_full_or_read_only_disk_is_one_clear_message(tmp_path, capsys, monkeypatch, code,
                                                       advice):
    # Whatever the run was writing when the disk filled (its config, the token cache, a
    # checkpoint): OSError reaches the CLI, which must say what failed, where and what to do.
    from utils.training import __main__ as cli

    target = tmp_path / "ws" / "configs" / "cli.json"

    def create(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(target))

    monkeypatch.setattr(cli.TrainingSession, "create", create)
    assert main(["train", "--workspace", str(tmp_path / "ws"), "--no-progress", *sets(TINY)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: `train` failed on ")
    assert str(target) in err and advice in err and "--workspace" in err
    assert len(err.strip().splitlines()) == 1


def test_runs_minutes_are_training_time_not_the_days_between_sessions(tmp_path, capsys):
    import sqlite3
    import time

    from utils.training.experiment_db import ExperimentDB

    ws = tmp_path / "ws"
    ws.mkdir()
    day = 24 * 3600
    with ExperimentDB(ws / "experiments.db", verbose=False) as db:
        resumed = db.start_run({"run_name": "resumed"})  # interrupted Monday, resumed Tuesday
        db.finish_run(resumed, summary={"elapsed": 90.0, "epochs_completed": 2})
        killed = db.start_run({"run_name": "killed"})  # no summary: its wall time it is
        db.finish_run(killed, "interrupted")
    with sqlite3.connect(ws / "experiments.db") as conn:
        now = time.time()
        conn.execute("UPDATE runs SET created_at = ? WHERE id = ?", (now - day, resumed))
        conn.execute("UPDATE runs SET created_at = ?, finished_at = ? WHERE id = ?",
                     (now - 600, now, killed))
    with ExperimentDB(ws / "experiments.db", verbose=False) as db:
        table = _runs_table(db, 20, None)
    assert dict(zip(table["name"], table["minutes"])) == {"resumed": 1.5, "killed": 10.0}
    assert main(["runs", "--workspace", str(ws)]) == 0  # the table the command prints
    assert "minutes" in capsys.readouterr().out
