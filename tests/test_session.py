"""TrainingSession: the wiring the notebook's training cells and the CLI use. A run keeps one DB
row (and one W&B run) across disconnects, and a failure leaves an honest status behind."""

from __future__ import annotations

import io
import math
import sys

import pytest
import torch
from helpers import Disconnect

from utils.training import metric_names as M
from utils.training import wandb_setup
from utils.training.callbacks import Callback
from utils.training.db_frames import wide_frame
from utils.training.experiment_db import ExperimentDB
from utils.training.run import TimeEstimate, TrainingSession, estimate_training_time
from utils.training.trainer import TrainingDivergedError


@pytest.fixture
def db(workspace):
    with ExperimentDB.open_for_workspace(workspace, verbose=False) as database:
        yield database


def session(config, workspace, db, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("verbose", False)
    kw.setdefault("live_plot", False)
    return TrainingSession.create(config, workspace, db=db, **kw)


def test_a_run_leaves_its_row_csv_dashboard_and_tokenizer(tiny_config, workspace, db):
    config = tiny_config(epochs=2)
    s = session(config, workspace, db, live_plot=True)
    result = s.fit()
    run = db.get_run(s.tracker.run_id)
    assert run["status"] == "completed" and result.epochs_completed == 2
    assert (workspace.results / "tiny_metrics.csv").is_file()
    assert s.save_dashboard(show=False).stat().st_size > 10_000
    assert (workspace.run_dir("tiny") / "tokenizer.json").is_file()
    assert (workspace.results / "tiny_live.png").is_file()
    assert s.best_epoch_report()["epoch"] in (1, 2)


def test_a_disconnect_then_rerun_continues_the_same_row(tiny_config, workspace, db):
    config = tiny_config(epochs=2, checkpoint_every_minutes=1e-9)
    first = session(config, workspace, db, callbacks=[Disconnect(step=5)])
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    assert db.get_run(first.tracker.run_id)["status"] == "interrupted"

    second = session(config, workspace, db)
    assert second.tracker.run_id == first.tracker.run_id  # the checkpoint knew its row
    second.fit()
    assert len(db.list_runs()) == 1
    assert db.get_run(first.tracker.run_id)["status"] == "completed"
    epochs = wide_frame(db.get_metrics(first.tracker.run_id), "epoch")
    assert list(epochs[M.EPOCH]) == [1, 2]  # nothing logged twice across the restart


def test_divergence_is_recorded_as_diverged(tiny_config, workspace, db):
    s = session(tiny_config(epochs=1), workspace, db)
    s.model.register_forward_hook(lambda module, args, out: out * math.nan)
    with pytest.raises(TrainingDivergedError):
        s.fit()
    assert db.get_run(s.tracker.run_id)["status"] == "diverged"


def test_time_estimate_measures_real_steps_without_touching_the_run(tiny_config, workspace):
    config = tiny_config(epochs=3)
    estimate = estimate_training_time(config, workspace, steps=3, verbose=False)
    assert estimate.seconds_per_step > 0 and estimate.epochs == 3
    assert estimate.total_seconds == pytest.approx(3 * estimate.seconds_per_epoch)
    assert "per optimizer step" in str(estimate) and "median of 3 steps" in str(estimate)
    assert estimate.eval_batches > 0 and "built-in GPT" in estimate.model
    assert not any(workspace.checkpoints.rglob("*.pt"))  # a throwaway model, no checkpoints


def test_resumed_run_continues_the_same_wandb_run(tiny_config, workspace, db, tmp_path,
                                                  monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setattr(wandb_setup, "in_colab", lambda: False)
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # nobody at the keyboard: offline

    config = tiny_config(epochs=2, use_wandb=True, checkpoint_every_minutes=1e-9)
    first = session(config, workspace, db, callbacks=[Disconnect(step=5)])
    first_id = first.tracker.wandb_run.id
    assert first_id
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    second = session(config, workspace, db)
    assert second.tracker.wandb_run_id == first_id  # restored from the checkpoint
    assert second.tracker.wandb_run.id == first_id  # and W&B resumed that run
    second.fit()


def test_a_transformer_builder_folder_trains_through_the_session(tiny_config, workspace, db,
                                                                  tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "model.py").write_text(
        "import torch.nn as nn\n\n"
        "class TinyLM(nn.Module):\n"
        "    def __init__(self, vocab_size, d_model=16):\n"
        "        super().__init__()\n"
        "        self.emb = nn.Embedding(vocab_size, d_model)\n"
        "        self.out = nn.Linear(d_model, vocab_size)\n\n"
        "    def forward(self, tokens):\n"
        "        return {'logits': self.out(self.emb(tokens))}\n"
    )
    (folder / "config.json").write_text('{"vocab_size": 16, "d_model": 16}')
    config = tiny_config(epochs=1, model_source="folder", model_ref=str(folder))
    s = session(config, workspace, db)
    result = s.fit()
    assert math.isfinite(result.final_val_loss)
    assert type(s.model).__name__ == "ExportedModel"
    assert torch.isfinite(next(s.model.parameters())).all()


def test_a_fresh_colab_vm_resumes_from_what_drive_kept(tiny_config, tmp_path):
    """The promise of the whole notebook: the VM dies mid-epoch (nothing runs, its local disk is
    gone), a new VM mounts the same Drive, and Run all continues the run exactly: same DB row,
    every step's metrics once, none lost."""
    import shutil

    from utils.training.workspace import Workspace

    vm_disk = tmp_path / "vm-local-disk"
    drive = Workspace(root=tmp_path / "drive" / "TransformerTraining", on_drive=True,
                      staging=vm_disk)
    drive._make_folders()
    config = tiny_config(epochs=2, checkpoint_every_minutes=1e-9)
    db = ExperimentDB.open_for_workspace(drive, verbose=False)
    first = session(config, drive, db, callbacks=[Disconnect(step=5)])
    first.tracker.abort = lambda status: None  # a killed VM runs no clean-up at all
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    run_id, steps_per_epoch = first.tracker.run_id, first.trainer.steps_per_epoch
    shutil.rmtree(vm_disk)  # the live database and every staged file die with the VM

    new_vm = ExperimentDB.open_for_workspace(drive, verbose=False)  # restored from Drive
    second = session(config, drive, new_vm)
    assert second.tracker.run_id == run_id
    second.fit()
    steps = wide_frame(new_vm.get_metrics(run_id), "step")[M.STEP].tolist()
    assert steps == list(range(1, 2 * steps_per_epoch + 1))
    assert new_vm.get_run(run_id)["status"] == "completed"
    new_vm.close()


def test_running_the_train_cell_again_after_an_interrupt_finishes_the_same_row(
        tiny_config, workspace, db):
    class InterruptOnce(Callback):
        fired = False

        def on_step_end(self, trainer, metrics):
            if not self.fired and metrics[M.STEP] == 3:
                self.fired = True
                raise KeyboardInterrupt

    s = session(tiny_config(epochs=2), workspace, db, callbacks=[InterruptOnce()])
    with pytest.raises(KeyboardInterrupt):
        s.fit()
    assert db.get_run(s.tracker.run_id)["status"] == "interrupted"
    result = s.fit()  # the same cell, run again
    assert result.epochs_completed == 2
    assert db.get_run(s.tracker.run_id)["status"] == "completed"
    assert len(db.list_runs()) == 1


def test_rerunning_a_finished_run_says_so_once_and_leaves_its_row_alone(tiny_config, workspace,
                                                                        db, capsys):
    config = tiny_config(epochs=1)
    first = session(config, workspace, db)
    first.fit()
    before = db.get_run(first.tracker.run_id)
    capsys.readouterr()

    again = session(config, workspace, db, verbose=True)  # Run all, a second time
    result = again.fit()
    out = capsys.readouterr().out
    assert out.count("already finished its 1 epoch: nothing to train") == 1
    assert "resuming" not in out.lower()
    assert result.status == "already_finished" and again.tracker.run_id == first.tracker.run_id
    after = db.get_run(first.tracker.run_id)
    assert (after["status"], after["finished_at"]) == (before["status"], before["finished_at"])
    assert after["summary"]["elapsed"] == before["summary"]["elapsed"]
    assert len(db.list_runs()) == 1
    assert again.save_dashboard(show=False).is_file()  # the results cells still work


def test_a_resumed_runs_time_in_the_db_covers_every_session(tiny_config, workspace, db):
    config = tiny_config(epochs=2, checkpoint_every_minutes=1e-9)
    first = session(config, workspace, db, callbacks=[Disconnect(step=5)])
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    result = session(config, workspace, db).fit()
    run = db.get_run(first.tracker.run_id)
    epochs = wide_frame(db.get_metrics(first.tracker.run_id), "epoch")
    total = float(epochs[M.EPOCH_DURATION].sum())
    assert result.elapsed == pytest.approx(total)  # what the final line says ...
    assert run["summary"]["elapsed"] == pytest.approx(total)  # ... is what the DB holds
    assert 0 < result.seconds_before < result.elapsed


def test_dashboard_title_names_the_precision_used_not_auto(tiny_config, workspace, db):
    s = session(tiny_config(epochs=1, precision="auto"), workspace, db)
    s.fit()
    title = s.dashboard().title()
    assert s.trainer.precision.name in title and "auto" not in title


def test_time_estimate_arithmetic_and_what_it_says():
    estimate = TimeEstimate(seconds_per_step=2.0, steps_per_epoch=100, epochs=3, device="CPU (fp32)",
                            measured_steps=5, eval_batches=30, grad_accum_steps=2,
                            model="the built-in GPT (4 layers x 256 d_model)")
    assert estimate.train_seconds_per_epoch == 200.0
    # 30 forward-only batches at a third of a training micro-batch (2.0 s / 2 micro-batches).
    assert estimate.eval_seconds_per_epoch == pytest.approx(30 * 1.0 / 3)
    assert estimate.seconds_per_epoch == pytest.approx(210.0)
    assert estimate.total_seconds == pytest.approx(630.0)
    assert estimate.seconds_for(10) == pytest.approx(2100.0)
    text = str(estimate)
    assert "~10m 30s for 3 epochs" in text and "~3m 30s per epoch" in text
    assert "median of 5 steps" in text and "the built-in GPT (4 layers x 256 d_model)" in text
    assert "on this runtime at this moment" in text
    assert "Not counted: loading and tokenising the data, checkpoint saves" in text
    assert "loaded or shared machine" in text
    assert "balanced (10 epochs) ~35m 00s" in text


def test_a_config_is_validated_and_saved_once_on_its_way_to_training(tiny_config, workspace, db,
                                                                      monkeypatch):
    """The notebook validates and saves in its summary cell; a later cell's replace() of the
    same values, then TrainingSession.create, neither judge it again nor write it again."""
    from utils.training import run

    judged = []
    real = run.validate_for_hardware
    monkeypatch.setattr(run, "validate_for_hardware", lambda c: judged.append(c) or real(c))
    config = run.validate_config(tiny_config(epochs=1, run_name="judged-once"), workspace)
    saved = workspace.config_file("judged-once").stat().st_ino
    s = session(config.replace(use_wandb=False), workspace, db)
    assert len(judged) == 1
    assert workspace.config_file("judged-once").stat().st_ino == saved  # not written again
    assert s.fit().status == "completed"


def test_a_session_without_a_database_or_wandb_gets_stand_ins(tiny_config, workspace):
    from utils.training.metrics_tracker import NoDatabase
    from utils.training.wandb_setup import DisabledRun

    s = session(tiny_config(epochs=1, run_name="no-history"), workspace, None)
    assert isinstance(s.db, NoDatabase) and s.tracker.db is s.db
    assert isinstance(s.tracker.wandb_run, DisabledRun)
    assert s.fit().status == "completed" and s.save_dashboard(show=False).is_file()


def test_time_estimate_with_a_step_budget_counts_planned_steps_and_evaluations():
    # 250 planned steps (a steps budget inside 3 epochs of 100), evaluated every 100 steps and
    # at the end: 3 evaluations of 30 forward batches at 1/3 of a 1.0 s micro-batch.
    estimate = TimeEstimate(seconds_per_step=2.0, steps_per_epoch=100, epochs=3, device="CPU",
                            eval_batches=30, grad_accum_steps=2, planned_steps=250,
                            budget="steps", eval_every_steps=100)
    assert estimate.total_steps == 250 and estimate.evaluations == 3
    assert estimate.total_seconds == pytest.approx(250 * 2.0 + 3 * 10.0)
    text = str(estimate)
    assert "~8m 50s for 250 optimizer steps (the steps budget; ~2.50 epochs)" in text
    assert "3 evaluations (every 100 steps and at the end)" in text
    assert "Other modes" not in text and "A whole epoch (100 steps) would take ~3m 30s" in text
    # Epochs with a step cadence: 300 steps, evaluations at 80, 160, 240 and 300 (not per epoch).
    cadence = TimeEstimate(2.0, 100, 3, "CPU", eval_batches=30, grad_accum_steps=2,
                           eval_every_steps=80)
    assert cadence.evaluations == 4 and cadence.total_seconds == pytest.approx(600 + 4 * 10.0)
    # A budget that stops mid-epoch evaluates at each epoch end and at the end: 2 evaluations.
    mid = TimeEstimate(2.0, 100, 3, "CPU", eval_batches=30, grad_accum_steps=2,
                       planned_steps=150, budget="tokens")
    assert mid.evaluations == 2 and mid.total_seconds == pytest.approx(300 + 2 * 10.0)


def test_time_estimate_follows_the_step_budget(tiny_config, workspace, capsys):
    config = tiny_config(epochs=50, max_steps=7, eval_every_steps=3)
    estimate = estimate_training_time(config, workspace, steps=2)
    assert (estimate.budget, estimate.total_steps, estimate.evaluations) == ("steps", 7, 3)
    out = capsys.readouterr().out
    assert "max_steps=7 decides the run's length" in out and "for 7 optimizer steps" in out


def test_the_budget_choice_becomes_config_fields(capsys):
    from utils.training.notebook import apply_budget
    from utils.training.training_config import ConfigError, TrainingConfig

    base = TrainingConfig(max_steps=9, max_tokens=5)
    epochs = apply_budget(base, "fast", "epochs", 0, epochs=2)
    assert (epochs.epochs, epochs.max_steps, epochs.max_tokens, epochs.eval_every_steps) == (2, 0, 0, 0)
    assert apply_budget(base, "balanced").epochs == TrainingConfig.preset("balanced").epochs
    assert apply_budget(base, "fast", "epochs", 4).epochs == 4  # the amount is the epochs
    steps = apply_budget(base, "fast", "steps", 60, eval_every_steps=20)
    assert (steps.max_steps, steps.max_tokens, steps.eval_every_steps) == (60, 0, 20)
    assert steps.epochs == TrainingConfig.preset("fast").epochs  # the mode's epochs only cap it
    tokens = apply_budget(base, "quality", "tokens", 10**6, epochs=1)
    assert (tokens.max_tokens, tokens.max_steps, tokens.epochs) == (10**6, 0, 1)
    assert "Budget: 1,000,000 tokens (at most 1 epochs)" in capsys.readouterr().out
    for args, kwargs, message in (
            (("fast", "steps", 0), {}, "budget_amount = 0: give the number of steps"),
            (("fast", "hours", 3), {}, "budget = 'hours': choose one of epochs, steps, tokens"),
            (("turbo", "steps", 3), {}, "mode = 'turbo'"),
            (("fast", "epochs", 3), {"epochs": 4}, "give the number of epochs once"),
            (("fast", "steps", -1), {}, "budget_amount = -1")):
        with pytest.raises(ConfigError, match=message):
            apply_budget(base, *args, **kwargs)


def test_a_step_cadence_run_plots_every_evaluation_at_its_step(tiny_config, workspace, db,
                                                              tmp_path):
    """Live plot, dashboard and the dashboard rebuilt from the database all put the val points
    at the optimizer steps where the evaluations ran."""
    from utils.training.dashboard import TrainingDashboard
    from utils.training.live_plotting import LivePlotter

    plotter = LivePlotter(run_name="cadence", live=False, path=tmp_path / "live.png")
    config = tiny_config(epochs=50, max_steps=30, eval_every_steps=10, run_name="cadence")
    s = session(config, workspace, db, callbacks=[plotter])
    assert s.fit().global_step == 30
    assert [r["step"] for r in plotter.evals] == [10.0, 20.0, 30.0]
    loss_ax = plotter.figure().axes[0]
    val = next(line for line in loss_ax.lines if line.get_label() == "val (every eval)")
    assert list(val.get_xdata()) == [10.0, 20.0, 30.0] and loss_ax.get_xlabel() == "optimizer step"
    assert (tmp_path / "live.png").stat().st_size > 10_000
    for board in (s.dashboard(), TrainingDashboard.from_db(db, "cadence")):
        board.plot()
        ax = board.panels["loss"]
        val = next(line for line in ax.lines if line.get_label() == "validation")
        assert list(val.get_xdata()) == [10.0, 20.0, 30.0] and ax.get_xlabel() == "optimizer step"
        assert "(step " in board.title() and "3 evaluations" in board.title()
        assert board.panels["perplexity"].get_xlabel() == "optimizer step"
    board.save(tmp_path / "dashboard.png")
    s.dashboard().save(tmp_path / "dashboard-tracker.png")


def test_a_run_interrupted_before_its_first_checkpoint_starts_again_in_its_own_row(
        tiny_config, workspace, db, capsys):
    config = tiny_config(epochs=1)  # checkpoints hourly: none before the interrupt
    first = session(config, workspace, db, callbacks=[Disconnect(step=5)])
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    run_id = first.tracker.run_id
    assert db.get_run(run_id)["status"] == "interrupted"
    assert not list(workspace.run_dir("tiny").glob("*.pt"))

    capsys.readouterr()
    second = session(config, workspace, db)  # the same run, started again
    assert second.tracker.run_id == run_id
    assert "starts again in the same row" in capsys.readouterr().out
    second.fit()
    assert db.list_runs()["id"].tolist() == [run_id]
    assert db.get_run(run_id)["status"] == "completed"
    steps = wide_frame(db.get_metrics(run_id), "step")[M.STEP].tolist()
    assert steps == list(range(1, second.trainer.steps_per_epoch + 1))  # each step once


def test_only_an_interrupted_row_is_continued_by_a_fresh_start(tiny_config, workspace, db):
    """A row that ended otherwise keeps its outcome, and the run started again gets its own."""

    class Crash(Callback):
        def on_step_end(self, trainer, metrics):
            raise RuntimeError("out of memory")

    failed = session(tiny_config(run_name="oom", epochs=1), workspace, db, callbacks=[Crash()])
    with pytest.raises(RuntimeError):
        failed.fit()
    again = session(tiny_config(run_name="oom", epochs=1), workspace, db)
    assert again.tracker.run_id != failed.tracker.run_id
    assert db.get_run(failed.tracker.run_id)["status"] == "failed"

    done = session(tiny_config(run_name="done", epochs=1), workspace, db)
    done.fit()
    for checkpoint in workspace.run_dir("done").glob("*.pt"):  # the run's folder, deleted
        checkpoint.unlink()
    fresh = session(tiny_config(run_name="done", epochs=1, resume="never"), workspace, db)
    assert fresh.tracker.run_id != done.tracker.run_id
    assert db.get_run(done.tracker.run_id)["status"] == "completed"

    other = session(tiny_config(run_name="t", epochs=1), workspace, db, study="s1",
                    callbacks=[Disconnect(step=2)])
    with pytest.raises(KeyboardInterrupt):
        other.fit()
    assert session(tiny_config(run_name="t", epochs=1), workspace, db,
                   study="s2").tracker.run_id != other.tracker.run_id  # another study's run
