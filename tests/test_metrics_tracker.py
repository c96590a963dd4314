from __future__ import annotations

import math
import sys
import types
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from utils.training import gpu
from utils.training import metric_names as M
from utils.training import metrics_tracker as mt
from utils.training.metrics_tracker import MetricsTracker, TrackingError


class FakeDB:
    """Records every call the tracker makes, in order."""

    def __init__(self, trim: bool = True):
        self.calls: list[tuple] = []
        if trim:
            self.delete_metrics_after = lambda run, step: self.calls.append(("trim", run, step))

    def log_metrics(self, run_id, metrics, step=None, epoch=None):
        self.calls.append(("epoch", run_id, dict(metrics), step, epoch))

    def log_metrics_many(self, rows):
        self.calls.append(("many", list(rows)))

    def finish_run(self, run_id, status="completed", summary=None):
        self.calls.append(("finish", run_id, status, summary))

    def sync(self):
        self.calls.append(("sync",))

    def of(self, kind):
        return [c for c in self.calls if c[0] == kind]


class FakeRun:
    """A W&B run that records what it was sent; ``step`` as a resumed online run reports it."""

    def __init__(self, run_id="abc123", step=0):
        self.id, self.step, self.offline = run_id, step, False
        self.logged: list[tuple[dict, int]] = []
        self.summary: dict = {}
        self.finished = False
        self.exit_code = None

    def log(self, data, step=None):
        self.logged.append((dict(data), step))

    def finish(self, exit_code=None):
        self.finished, self.exit_code = True, exit_code


@pytest.fixture(autouse=True)
def no_gpu(monkeypatch):
    """Every test starts on a machine without NVML, whatever machine runs it."""
    fake = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def init():
        raise NVMLError("NVML Shared Library Not Found")

    fake.NVMLError, fake.nvmlInit = NVMLError, init
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    gpu.reset_nvml()
    yield
    gpu.reset_nvml()


def fake_nvml(monkeypatch, utilization=(50.0,), power_supported=True, visible=None):
    """A pynvml stand-in for one 16 GiB GPU; records which NVML device index was asked for."""
    fake = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    util = iter(list(utilization) * 1000)
    fake.asked = []
    fake.NVMLError = NVMLError
    fake.NVML_TEMPERATURE_GPU = 0
    fake.nvmlInit = lambda: None

    def handle(index):
        fake.asked.append(index)
        return ("gpu", index)

    def power(h):
        if not power_supported:
            raise NVMLError("Not Supported")
        return 70_000  # mW

    fake.nvmlDeviceGetHandleByIndex = handle
    fake.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=next(util), memory=10)
    fake.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(used=4 * gpu.GIB, total=16 * gpu.GIB)
    fake.nvmlDeviceGetTemperature = lambda h, sensor: 61
    fake.nvmlDeviceGetPowerUsage = power
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    gpu.reset_nvml()
    return fake


def run_epochs(tracker, epochs=2, steps_per_epoch=3, val_losses=None):
    step = 0
    for epoch in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            step += 1
            tracker.on_step_end(None, {M.STEP: step, M.EPOCH: epoch, M.BATCH_LOSS: 3.0 / step,
                                       M.LEARNING_RATE: 1e-3, M.GRAD_NORM: 0.5, M.TOKENS: 64})
        val = val_losses[epoch - 1] if val_losses else 2.0 / epoch
        tracker.on_epoch_end(None, {M.EPOCH: epoch, M.STEP: step, M.TRAIN_LOSS: 2.5 / epoch,
                                    M.VAL_LOSS: val, M.LEARNING_RATE: 1e-3, M.GRAD_NORM: 0.5,
                                    M.EPOCH_DURATION: 1.5, M.TOKENS_PER_SEC: 100.0})
    return step


# --------------------------------------------------------------------------- construction


def test_bad_arguments_raise_with_the_fix():
    with pytest.raises(TrackingError, match="flush_every"):
        MetricsTracker(flush_every=0)
    tracker = MetricsTracker(db=FakeDB(), track_gpu=False)  # run_id may come later...
    tracker.log_batch(1, 1.0, 1e-3, 1.0, 32)
    with pytest.raises(TrackingError, match=r"tracker.run_id = db.start_run\(config\)"):
        tracker.flush()  # ...but not later than the first write


# --------------------------------------------------------------------------- database


def test_batches_reach_the_db_in_batches_and_epochs_in_step_order():
    db = FakeDB()
    tracker = MetricsTracker(db, run_id=7, flush_every=2)
    run_epochs(tracker, epochs=1, steps_per_epoch=5)
    kinds = [c[0] for c in db.calls]
    # steps 1-2, steps 3-4, then the epoch's leftover step 5 before the epoch row, then sync
    assert kinds == ["many", "many", "many", "epoch", "sync"]
    flushed = [row for call in db.of("many") for row in call[1]]
    assert [len(call[1]) for call in db.of("many")] == [8, 8, 4]  # 4 metrics per step
    assert {r[1] for r in flushed} == {M.BATCH_LOSS, M.LEARNING_RATE, M.GRAD_NORM, M.TOKENS}
    steps = [r[3] for r in flushed]
    assert steps == sorted(steps) and set(steps) == {1, 2, 3, 4, 5}
    run_id, name, value, step, epoch, wall = flushed[0]
    assert (run_id, name, value, step, epoch) == (7, M.BATCH_LOSS, 3.0, 1, 1)
    assert type(step) is int and type(epoch) is int and wall > 1e9
    _, run_id, metrics, step, epoch = db.of("epoch")[0]
    assert (run_id, step, epoch) == (7, 5, 1)
    assert metrics[M.VAL_LOSS] == 2.0 and M.VAL_PERPLEXITY in metrics
    assert M.STEP not in metrics and M.EPOCH not in metrics  # they are the row's position


def test_nothing_is_flushed_before_flush_every_steps():
    db = FakeDB()
    tracker = MetricsTracker(db, run_id=1, flush_every=200)
    for step in range(1, 200):
        tracker.log_batch(step, 1.0, 1e-3, 1.0, 32)
    assert db.of("many") == []
    tracker.log_batch(200, 1.0, 1e-3, 1.0, 32)
    assert len(db.of("many")) == 1 and len(db.of("many")[0][1]) == 800


def test_train_end_finishes_db_and_wandb_with_status_and_summary():
    db, run = FakeDB(), FakeRun()
    tracker = MetricsTracker(db, run_id=3, wandb_run=run)
    run_epochs(tracker, epochs=3, val_losses=[2.0, 1.5, 1.7])
    result = SimpleNamespace(status="early_stopped", epochs_completed=3, global_step=9,
                             best_val_loss=1.5, best_epoch=2, precision="fp32", elapsed=4.0)
    tracker.on_train_end(None, result)
    (_, run_id, status, summary), = db.of("finish")
    assert (run_id, status) == (3, "early_stopped")
    assert summary["best_val_loss"] == 1.5 and summary["best_epoch"] == 2
    assert summary["final_val_loss"] == 1.7 and summary["global_step"] == 9
    assert db.calls[-1] == ("sync",)
    assert run.finished and run.exit_code == 0 and run.summary["best_val_loss"] == 1.5
    assert run.summary["status"] == "early_stopped"
    tracker.finish("failed")  # a second finish (e.g. from an error handler) changes nothing
    assert len(db.of("finish")) == 1


def test_abort_after_a_crash_flushes_pending_rows_and_closes_the_runs():
    db, run = FakeDB(), FakeRun()
    tracker = MetricsTracker(db, run_id=1, wandb_run=run, flush_every=100, track_gpu=False)
    run_epochs(tracker, epochs=1, steps_per_epoch=2)
    for step in range(3, 6):
        tracker.log_batch(step, 1.0, 1e-3, 1.0, 32)
    tracker.abort("interrupted")
    assert len(db.of("many")[-1][1]) == 12
    (_, _, status, summary), = db.of("finish")
    assert status == "interrupted" and summary["best_val_loss"] == 2.0
    assert run.finished and run.summary["status"] == "interrupted" and run.exit_code == 1


def test_real_experiment_db(tmp_path):
    experiment_db = pytest.importorskip("utils.training.experiment_db")
    from utils.training.training_config import TrainingConfig

    with experiment_db.ExperimentDB(tmp_path / "runs.db") as db:
        run_id = db.start_run(TrainingConfig(run_name="tracked"))
        tracker = MetricsTracker(db, run_id, flush_every=4)
        run_epochs(tracker, epochs=2, steps_per_epoch=3)
        tracker.finish("completed", tracker.final_summary())
        metrics = db.get_metrics(run_id)
        batch = metrics[metrics["name"] == M.BATCH_LOSS]
        assert batch["step"].tolist() == [1, 2, 3, 4, 5, 6]
        val = metrics[metrics["name"] == M.VAL_LOSS]
        assert val["epoch"].tolist() == [1, 2] and val["step"].tolist() == [3, 6]
        assert db.get_run(run_id)["status"] == "completed"


def test_next_token_accuracy_reaches_the_db_from_epochs_and_evaluations(tmp_path):
    from utils.training.experiment_db import ExperimentDB
    from utils.training.training_config import TrainingConfig

    with ExperimentDB(tmp_path / "runs.db") as db:
        run_id = db.start_run(TrainingConfig(run_name="acc"))
        tracker = MetricsTracker(db, run_id, track_gpu=False)
        tracker.log_eval({M.STEP: 5, M.EPOCH: 1, M.TRAIN_LOSS: 2.0, M.VAL_LOSS: 1.5,
                          M.VAL_ACCURACY: 0.25})
        tracker.log_epoch({M.EPOCH: 1, M.STEP: 8, M.TRAIN_LOSS: 1.9, M.VAL_LOSS: 1.4,
                           M.VAL_ACCURACY: 0.5})
        acc = db.get_metrics(run_id, M.VAL_ACCURACY)
        assert acc["value"].tolist() == [0.25, 0.5] and acc["step"].tolist() == [5, 8]
        assert tracker.get_summary()[M.VAL_ACCURACY].tolist() == [0.5]
        assert tracker.eval_history()[M.VAL_ACCURACY].tolist() == [0.25]


def test_the_final_accuracy_is_in_the_summary_the_db_and_wandb_keep():
    db, run = FakeDB(), FakeRun()
    tracker = MetricsTracker(db, run_id=1, wandb_run=run, track_gpu=False)
    assert "final_val_accuracy" not in tracker.final_summary()  # nothing evaluated yet
    tracker.log_epoch({M.EPOCH: 1, M.STEP: 4, M.TRAIN_LOSS: 2.0, M.VAL_LOSS: 1.8,
                       M.VAL_ACCURACY: 0.3})
    tracker.log_epoch({M.EPOCH: 2, M.STEP: 8, M.TRAIN_LOSS: 1.9, M.VAL_LOSS: 1.7,
                       M.VAL_ACCURACY: 0.4})
    assert tracker.final_summary()["final_val_accuracy"] == 0.4  # the last epoch's
    tracker.finish("completed", tracker.final_summary())
    (_, _, _, summary), = db.of("finish")
    assert summary["final_val_accuracy"] == 0.4 and run.summary["final_val_accuracy"] == 0.4

    stepped = MetricsTracker(track_gpu=False)  # eval_every_steps: the last evaluation's
    stepped.log_eval({M.STEP: 5, M.EPOCH: 1, M.TRAIN_LOSS: 2.0, M.VAL_LOSS: 1.5,
                      M.VAL_ACCURACY: 0.25})
    stepped.log_eval({M.STEP: 10, M.EPOCH: 1, M.TRAIN_LOSS: 1.8, M.VAL_LOSS: 1.4,
                      M.VAL_ACCURACY: 0.35})
    stepped.log_epoch({M.EPOCH: 1, M.STEP: 10, M.TRAIN_LOSS: 1.8})
    assert stepped.final_summary()["final_val_accuracy"] == 0.35


# --------------------------------------------------------------------------- epoch rows


def test_perplexity_is_added_and_capped():
    tracker = MetricsTracker(track_gpu=False)
    row = tracker.log_epoch({M.EPOCH: 1, M.STEP: 10, M.TRAIN_LOSS: 1000.0, M.VAL_LOSS: 2.0})
    assert math.isfinite(row[M.TRAIN_PERPLEXITY])
    assert row[M.TRAIN_PERPLEXITY] == pytest.approx(math.exp(M.MAX_LOG_PERPLEXITY))
    assert row[M.VAL_PERPLEXITY] == pytest.approx(math.exp(2.0))
    row = tracker.log_epoch({M.EPOCH: 2, M.TRAIN_LOSS: math.nan, M.VAL_LOSS: 1.0,
                             M.VAL_PERPLEXITY: math.inf})
    assert math.isnan(row[M.TRAIN_PERPLEXITY]) and row[M.VAL_PERPLEXITY] == pytest.approx(math.e)


def test_summary_without_gpu_has_no_gpu_columns_but_process_memory():
    tracker = MetricsTracker()
    run_epochs(tracker)
    summary = tracker.get_summary()
    assert list(summary.columns[: len(M.EPOCH_COLUMNS)]) == list(M.EPOCH_COLUMNS)
    assert not [c for c in summary.columns if c.startswith("gpu/")]
    if sys.platform.startswith("linux"):
        assert (summary[M.CPU_RSS_GB] > 0).all()
    assert summary[M.EPOCH].tolist() == [1, 2] and summary[M.STEP].tolist() == [3, 6]
    assert summary[M.EPOCH].dtype == "int64"


def test_summary_with_a_faked_gpu(monkeypatch):
    nvml = fake_nvml(monkeypatch, utilization=(20.0, 40.0, 60.0))
    monkeypatch.setattr(mt, "GPU_SAMPLE_SECONDS", 0.0)  # sample at every step
    resets = []
    fake_cuda = SimpleNamespace(max_memory_allocated=lambda i: 3 * gpu.GIB,
                                reset_peak_memory_stats=resets.append)
    monkeypatch.setattr(gpu, "_cuda", lambda: fake_cuda)
    tracker = MetricsTracker(db=FakeDB(), run_id=1)
    run_epochs(tracker, epochs=2, steps_per_epoch=3)
    summary = tracker.get_summary()
    for column in M.GPU_COLUMNS:
        assert column in summary.columns, column
    assert summary[M.GPU_UTILIZATION].tolist() == [40.0, 40.0]  # mean of the epoch's samples
    assert summary[M.GPU_MEMORY_TOTAL_GB].tolist() == [16.0, 16.0]
    assert summary[M.GPU_POWER_W].tolist() == [70.0, 70.0]
    assert summary[M.GPU_TEMPERATURE_C].tolist() == [61.0, 61.0]
    assert summary[M.GPU_MAX_MEMORY_ALLOCATED_GB].tolist() == [3.0, 3.0]
    assert resets == [0, 0]  # the peak restarts every epoch
    assert set(nvml.asked) == {0}


def test_gpu_readings_a_board_does_not_report_are_left_out(monkeypatch):
    fake_nvml(monkeypatch, power_supported=False)
    snap = gpu.gpu_snapshot(0)
    assert M.GPU_POWER_W not in snap and snap[M.GPU_MEMORY_USED_GB] == 4.0


def test_nvml_index_follows_cuda_visible_devices(monkeypatch):
    nvml = fake_nvml(monkeypatch, visible="3,1")
    gpu.gpu_snapshot(1)
    assert set(nvml.asked) == {1}
    gpu.gpu_snapshot(0)
    assert nvml.asked[-1] == 3


def test_nvml_failure_is_cached_and_never_raises(monkeypatch):
    calls = []
    fake = sys.modules["pynvml"]
    original = fake.nvmlInit

    def init():
        calls.append(1)
        original()

    monkeypatch.setattr(fake, "nvmlInit", init)
    gpu.reset_nvml()
    assert gpu.gpu_snapshot() == {} and gpu.gpu_snapshot() == {}
    assert len(calls) == 1


def test_cpu_trainer_or_track_gpu_off_records_no_gpu_columns(monkeypatch):
    fake_nvml(monkeypatch)
    tracker = MetricsTracker()
    tracker.on_train_start(SimpleNamespace(device=torch.device("cpu"), global_step=0))
    run_epochs(tracker, epochs=1)
    assert not [c for c in tracker.get_summary().columns if c.startswith("gpu/")]
    off = MetricsTracker(track_gpu=False)
    run_epochs(off, epochs=1)
    columns = off.get_summary().columns
    assert not [c for c in columns if c.startswith(("gpu/", "cpu/"))]


def test_a_repeated_epoch_replaces_the_old_row():
    tracker = MetricsTracker(track_gpu=False)
    tracker.log_epoch({M.EPOCH: 1, M.VAL_LOSS: 3.0})
    tracker.log_epoch({M.EPOCH: 2, M.VAL_LOSS: 2.0})
    tracker.log_epoch({M.EPOCH: 2, M.VAL_LOSS: 1.9})
    assert tracker.get_summary()[M.VAL_LOSS].tolist() == [3.0, 1.9]


def test_best_epoch():
    tracker = MetricsTracker(track_gpu=False)
    assert tracker.best_epoch() == {}  # no epoch finished yet
    tracker.log_epoch({M.EPOCH: 1, M.VAL_LOSS: math.nan})
    assert tracker.best_epoch() == {}  # nothing finite to rank
    tracker = MetricsTracker(track_gpu=False)
    run_epochs(tracker, epochs=3, val_losses=[2.0, math.nan, 1.0])
    assert tracker.best_epoch()[M.EPOCH] == 3
    assert tracker.best_epoch(M.VAL_LOSS, mode="max")[M.EPOCH] == 1
    with pytest.raises(TrackingError, match="mode"):
        tracker.best_epoch(mode="lowest")
    with pytest.raises(TrackingError, match="'accuracy'.*val/loss"):
        tracker.best_epoch("accuracy")


def test_batch_history_columns_and_types():
    tracker = MetricsTracker(track_gpu=False)
    assert list(tracker.batch_history().columns) == list(M.BATCH_COLUMNS)
    run_epochs(tracker, epochs=2, steps_per_epoch=2)
    history = tracker.batch_history()
    assert list(history.columns) == list(M.BATCH_COLUMNS)
    assert history[M.STEP].tolist() == [1, 2, 3, 4] and history[M.EPOCH].tolist() == [1, 1, 2, 2]
    assert history[M.TOKENS].dtype == "int64"


# --------------------------------------------------------------------------- W&B step axis


def test_wandb_gets_one_monotonic_step_axis(monkeypatch):
    monkeypatch.setattr(mt, "WANDB_BATCH_SECONDS", 0.0)
    run = FakeRun()
    tracker = MetricsTracker(wandb_run=run, track_gpu=False)
    run_epochs(tracker, epochs=2, steps_per_epoch=3)
    steps = [step for _, step in run.logged]
    assert steps == [1, 2, 3, 3, 4, 5, 6, 6]  # epoch rows at the step where the epoch ended
    epoch_rows = [data for data, _ in run.logged if M.VAL_LOSS in data]
    assert [r[M.EPOCH] for r in epoch_rows] == [1, 2] and M.VAL_PERPLEXITY in epoch_rows[0]
    assert M.BATCH_LOSS in run.logged[0][0]


def test_batch_rows_reach_wandb_at_most_every_few_seconds(monkeypatch):
    monkeypatch.setattr(mt, "WANDB_BATCH_SECONDS", 3600.0)
    run = FakeRun()
    tracker = MetricsTracker(wandb_run=run, track_gpu=False)
    run_epochs(tracker, epochs=2, steps_per_epoch=3)
    assert [step for _, step in run.logged] == [1, 3, 6]  # first batch, then the epoch rows
    assert len(tracker.batch_history()) == 6  # every step kept locally


def test_wandb_never_gets_a_smaller_step(capsys, monkeypatch):
    monkeypatch.setattr(mt, "WANDB_BATCH_SECONDS", 0.0)
    run = FakeRun(step=12)  # a resumed online run that already holds steps up to 12
    tracker = MetricsTracker(wandb_run=run, track_gpu=False)
    for step in (10, 11, 12, 13):
        tracker.log_batch(step, 1.0, 1e-3, 1.0, 32)
    tracker.log_epoch({M.EPOCH: 1, M.STEP: 9, M.VAL_LOSS: 1.0})
    steps = [step for _, step in run.logged]
    assert steps == [12, 13]
    assert all(a <= b for a, b in zip(steps, steps[1:]))
    assert capsys.readouterr().out.count("skipping step") == 1  # said once, not per step
    assert tracker.batch_history()[M.STEP].tolist() == [10, 11, 12, 13]  # kept locally


# --------------------------------------------------------------------------- checkpoints


def test_state_dict_round_trips_through_a_weights_only_checkpoint(tmp_path, monkeypatch):
    db = FakeDB()
    tracker = MetricsTracker(db, run_id=5, wandb_run=FakeRun("run-1"), flush_every=100)
    run_epochs(tracker, epochs=2, steps_per_epoch=3)
    tracker.log_batch(7, 0.5, 1e-3, 0.5, 64, epoch=3)  # mid-epoch checkpoint
    state = tracker.state_dict()
    assert len(db.of("many")[-1][1]) == 4  # a checkpoint is a flush point
    torch.save({"tracker": state}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)["tracker"]

    # What a new session does: load the checkpoint, then continue the runs it names.
    monkeypatch.setattr(mt, "WANDB_BATCH_SECONDS", 0.0)
    db2 = FakeDB()
    resumed = MetricsTracker(db=db2)
    resumed.load_state_dict(loaded)
    assert (resumed.run_id, resumed.wandb_run_id) == (5, "run-1")
    resumed.wandb_run = FakeRun(resumed.wandb_run_id)
    resumed.on_train_start(SimpleNamespace(device=torch.device("cpu"), global_step=7))
    assert db2.calls[0] == ("trim", 5, 7)  # rows after the checkpoint are recomputed
    pd.testing.assert_frame_equal(resumed.get_summary(), tracker.get_summary())
    pd.testing.assert_frame_equal(resumed.batch_history(), tracker.batch_history())
    resumed.log_batch(8, 0.4, 1e-3, 0.5, 64, epoch=3)
    resumed.flush()
    assert [r[3] for r in db2.of("many")[0][1]] == [8, 8, 8, 8]  # old rows not written again
    assert [s for _, s in resumed.wandb_run.logged] == [8]


def test_a_start_from_step_0_drops_the_rows_a_killed_attempt_left():
    # start_run handed over a row whose process was killed before its first checkpoint: its
    # steps are trained again from 0, so they must not stay in the database twice.
    db = FakeDB()
    MetricsTracker(db, run_id=4, track_gpu=False).on_train_start(
        SimpleNamespace(device=torch.device("cpu"), global_step=0))
    assert db.of("trim") == [("trim", 4, 0)]
    quiet = FakeDB()  # no run yet: nothing to trim, and no error before the first row
    MetricsTracker(quiet, track_gpu=False).on_train_start(
        SimpleNamespace(device=torch.device("cpu"), global_step=0))
    assert quiet.calls == []


def test_different_runs_after_resume_are_reported(capsys):
    tracker = MetricsTracker(FakeDB(), run_id=2, wandb_run=FakeRun("old"), track_gpu=False)
    state = tracker.state_dict()
    other = MetricsTracker(FakeDB(), run_id=9, wandb_run=FakeRun("new"), track_gpu=False)
    other.load_state_dict(state)
    out = capsys.readouterr().out
    assert "resume_id='old'" in out and "resume_run_id=2" in out
    assert (other.run_id, other.wandb_run_id) == (9, "new")


def test_huge_batch_histories_are_thinned_in_checkpoints(monkeypatch):
    monkeypatch.setattr(mt, "MAX_CHECKPOINT_BATCHES", 10)
    tracker = MetricsTracker(track_gpu=False)
    for step in range(1, 36):
        tracker.log_batch(step, 1.0, 1e-3, 1.0, 32)
    steps = tracker.state_dict()["batches"][M.STEP]
    assert len(steps) <= 11 and steps[0] == 1 and steps[-1] == 35
    assert len(tracker.batch_history()) == 35  # memory keeps everything


# --------------------------------------------------------------------------- CSV


def test_to_csv_and_save_csv(tmp_path):
    tracker = MetricsTracker()
    run_epochs(tracker, epochs=2)
    path = tracker.to_csv(tmp_path / "out" / "summary.csv")
    back = pd.read_csv(path)
    assert list(back.columns) == list(tracker.get_summary().columns)
    assert back[M.VAL_LOSS].tolist() == [2.0, 1.0]
    metrics = tracker.save_csv(tmp_path / "results", "my-run")
    assert metrics == tmp_path / "results" / "my-run_metrics.csv"
    batches = pd.read_csv(tmp_path / "results" / "my-run_batches.csv")
    assert list(batches.columns) == list(M.BATCH_COLUMNS) and len(batches) == 6
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.startswith(".")]
    assert leftovers == []  # atomic writes leave no temp files
    before = sorted(tmp_path.rglob("*"))
    for bad in ("../escaped", "/abs", "a/b"):
        with pytest.raises(ValueError, match="A-Z a-z 0-9"):
            tracker.save_csv(tmp_path / "results", bad)
    assert sorted(tmp_path.rglob("*")) == before


# --------------------------------------------------------------------------- with the trainer


def test_tracker_follows_a_real_training_run_and_its_resume(tiny_config, workspace):
    from utils.training.run import prepare

    config = tiny_config(epochs=2)
    db = FakeDB()
    tracker = MetricsTracker(db, run_id=1, wandb_run=FakeRun(), flush_every=5)
    trainer = prepare(config, workspace).trainer([tracker], progress=False, verbose=False)
    result = trainer.fit()
    summary = tracker.get_summary()
    assert summary[M.EPOCH].tolist() == [1, 2]
    assert summary[M.VAL_LOSS].tolist() == [r[M.VAL_LOSS] for r in result.history]
    assert len(tracker.batch_history()) == result.global_step
    assert db.of("finish")[0][2] == "completed"

    more = tiny_config(epochs=3)
    tracker2 = MetricsTracker(FakeDB(), run_id=1, wandb_run=FakeRun(), flush_every=5)
    prepare(more, workspace).trainer([tracker2], progress=False, verbose=False).fit()
    assert tracker2.get_summary()[M.EPOCH].tolist() == [1, 2, 3]
    steps = tracker2.batch_history()[M.STEP].tolist()
    assert steps == list(range(1, len(steps) + 1))
