"""The loop reads the device every ``log_every_steps`` steps, not every step: the weights, the
metric rows (history, evaluations, database) and the NaN guard must not notice."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import Disconnect

from utils.training import metric_names as M
from utils.training import trainer as trainer_module
from utils.training.callbacks import Callback
from utils.training.experiment_db import ExperimentDB
from utils.training.metrics_tracker import MetricsTracker
from utils.training.run import prepare
from utils.training.trainer import TrainingDivergedError
from utils.training.training_config import ConfigError

CLOCK = {M.EPOCH_DURATION, M.TOKENS_PER_SEC, M.MFU}  # the only numbers allowed to differ


def _fused(model, config, device):
    """AdamW's fused kernel on the CPU: the path a GPU takes, where the guard skips the update
    on the device (found_inf) instead of reading a flag."""
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]}
              for g in _build(model, config, device).param_groups]
    return torch.optim.AdamW(groups, lr=config.learning_rate,
                             betas=(config.adam_beta1, config.adam_beta2), fused=True)


_build = trainer_module.build_optimizer


def _run(config, db_path, fused=False, monkeypatch=None, callbacks=()):
    if fused:
        monkeypatch.setattr(trainer_module, "build_optimizer", _fused)
    db = ExperimentDB(db_path)
    tracker = MetricsTracker(db=db, run_id=db.start_run(config), track_gpu=False)
    trainer = prepare(config).trainer([tracker, *callbacks], progress=False, verbose=False)
    assert trainer.optimizer.defaults["fused"] is fused
    result = trainer.fit()
    rows = db.get_metrics(tracker.run_id)
    rows = [(r.name, r.value, r.step, r.epoch) for r in rows.itertuples() if r.name not in CLOCK]
    batches = tracker.batch_history().drop(columns=["wall_time"], errors="ignore")
    db.close()
    return trainer, result, rows, batches


def _same(a, b):
    (ta, ra, rows_a, batches_a), (tb, rb, rows_b, batches_b) = a, b
    for (key, x), y in zip(ta.raw_model.state_dict().items(), tb.raw_model.state_dict().values()):
        assert torch.equal(x, y), f"parameter {key} differs"
    strip = [[{k: v for k, v in r.items() if k not in CLOCK} for r in rows]
             for rows in (ra.history, rb.history, ra.evaluations, rb.evaluations)]
    assert strip[0] == strip[1] and strip[2] == strip[3]
    assert rows_a == rows_b
    assert batches_a.equals(batches_b)
    assert ra.global_step == rb.global_step


@pytest.mark.parametrize("fused", [False, True])
def test_reading_every_7_steps_is_bit_identical_to_every_step(tiny_config, tmp_path, fused,
                                                              monkeypatch):
    base = dict(epochs=2, grad_accum_steps=2, batch_size=4, dropout=0.1, eval_every_steps=20,
                eval_max_batches=3)
    every = _run(tiny_config(log_every_steps=1, **base), tmp_path / "a.db", fused, monkeypatch)
    batched = _run(tiny_config(log_every_steps=7, **base), tmp_path / "b.db", fused, monkeypatch)
    _same(every, batched)
    steps = every[0].global_step
    assert steps > 40  # full windows of 7, and windows cut short by evaluations (every 20)
    assert every[2] and sum(1 for r in every[2] if r[0] == M.BATCH_LOSS) == steps
    evals = every[1].evaluations
    assert evals and all(0.0 <= r[M.VAL_ACCURACY] <= 1.0 for r in evals)
    assert any(r[0] == M.VAL_ACCURACY for r in every[2])  # accuracy reaches the database


def test_validation_accuracy_counts_only_real_targets(tiny_config):
    trainer = prepare(tiny_config()).trainer(progress=False, verbose=False)
    metrics = trainer.evaluate()
    assert set(metrics) == {M.VAL_LOSS, M.VAL_PERPLEXITY, M.VAL_ACCURACY}
    correct = tokens = 0
    loss_sum = torch.zeros((), dtype=torch.float64)
    trainer.model.eval()
    with torch.no_grad():
        for inputs, targets in trainer.val_loader:
            logits = trainer.model(inputs)
            mask = targets != trainer_module.IGNORE_INDEX
            correct += int(((logits.argmax(-1) == targets) & mask).sum())
            tokens += int(mask.sum())
            loss_sum += torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                ignore_index=trainer_module.IGNORE_INDEX, reduction="sum").double()
    assert metrics[M.VAL_ACCURACY] == correct / tokens
    assert metrics[M.VAL_LOSS] == loss_sum.item() / tokens  # the token-weighted mean, unchanged


class NanFrom(Callback):
    """Makes every forward pass NaN from optimizer step ``step`` (0-based) on."""

    def __init__(self, step):
        self.step = step

    def on_train_start(self, trainer):
        trainer.raw_model.register_forward_hook(
            lambda module, args, out: out * math.nan if trainer.global_step >= self.step else out)


@pytest.mark.parametrize("fused", [False, True])
def test_nan_mid_window_stops_with_the_weights_from_before_it(tiny_config, tmp_path, fused,
                                                              monkeypatch):
    errors, runs = [], []
    for n in (1, 10):
        with pytest.raises(TrainingDivergedError, match="loss became nan") as info:
            _run(tiny_config(log_every_steps=n), tmp_path / f"{n}.db", fused, monkeypatch,
                 [NanFrom(3), Keep(runs)])
        errors.append(str(info.value))
    assert errors[0] == errors[1] and "step 3 " in errors[0]
    a, b = runs
    assert a.global_step == b.global_step == 3  # set back to just before the NaN step
    for x, y in zip(a.raw_model.state_dict().values(), b.raw_model.state_dict().values()):
        assert torch.equal(x, y)
    assert int(b.optimizer.state_dict()["state"][0]["step"]) == 3  # skipped steps not counted


class Keep(Callback):
    def __init__(self, runs):
        self.runs = runs

    def on_train_start(self, trainer):
        self.runs.append(trainer)


def test_log_every_steps_is_validated(tiny_config):
    with pytest.raises(ConfigError, match="log_every_steps"):
        tiny_config(log_every_steps=0)


def test_fp16_nan_mid_window_goes_down_the_scalers_skip_path(tiny_config, tmp_path, monkeypatch):
    """fp16 + GradScaler (the T4 path, forced on the CPU): once the loss is NaN the gradients of
    that step and every later unread one are NaN, so the scaler skips each update itself."""
    from utils.training.hardware import Precision

    forced = Precision("fp16", torch.float16, True, "forced for the test")
    monkeypatch.setattr(trainer_module, "choose_precision", lambda *a, **k: forced)
    errors, runs = [], []
    for n in (1, 10):
        config = tiny_config(synthetic_tokens=2500, log_every_steps=n)
        with pytest.raises(TrainingDivergedError, match="loss became nan") as info:
            _run(config, tmp_path / f"{n}.db", callbacks=[NanFrom(3), Keep(runs)])
        errors.append(str(info.value))
    assert errors[0] == errors[1] and "step 3 " in errors[0]
    assert runs[0].scaler.is_enabled() and runs[1].global_step == 3
    for x, y in zip(runs[0].raw_model.state_dict().values(), runs[1].raw_model.state_dict().values()):
        assert torch.equal(x, y)


def test_a_resume_between_reads_logs_the_same_rows(tiny_config, workspace, tmp_path):
    """Checkpoints every 3 steps, reads every 7: the rows pending at a checkpoint are read and
    logged before it is written, so a resume from it logs exactly the uninterrupted rows."""
    config = tiny_config(epochs=2, dropout=0.1, grad_accum_steps=2, batch_size=4,
                         checkpoint_every_steps=3, log_every_steps=7)
    straight = _run(config.replace(run_name="straight", resume="never"), tmp_path / "a.db")

    with ExperimentDB(tmp_path / "b.db") as db:
        run_id = db.start_run(config)

    def attempt(callbacks=()):
        db = ExperimentDB(tmp_path / "b.db")
        tracker = MetricsTracker(db=db, run_id=run_id, track_gpu=False)
        trainer = prepare(config, workspace).trainer([tracker, *callbacks], progress=False,
                                                     verbose=False)
        return db, tracker, trainer

    db, _, trainer = attempt([Disconnect(17)])
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    db.close()
    db, tracker, trainer = attempt()
    assert 0 < trainer.global_step < 17 and trainer.global_step % 3 == 0
    result = trainer.fit()
    rows = [(r.name, r.value, r.step, r.epoch) for r in db.get_metrics(tracker.run_id).itertuples()
            if r.name not in CLOCK]
    batches = tracker.batch_history().drop(columns=["wall_time"], errors="ignore")
    db.close()
    _same(straight, (trainer, result, rows, batches))
