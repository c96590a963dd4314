"""Step and token budgets, evaluation every N steps, and exact resume between evaluations.

The tiny config has about 40 optimizer steps per epoch, so a 120-step budget with a huge
``epochs`` crosses epoch boundaries and ends mid-epoch.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import Disconnect

from utils.training import metric_names as M
from utils.training.checkpoints import CheckpointManager, load_checkpoint
from utils.training.experiment_db import ExperimentDB
from utils.training.optimizer import lr_at, plan_steps
from utils.training.run import TrainingSession, prepare
from utils.training.trainer import Callback
from utils.training.training_config import ConfigError

HUGE = 10_000  # epochs: a cap the budgets never reach


def fit(config, workspace=None, callbacks=(), verbose=False):
    trainer = prepare(config, workspace).trainer(callbacks, progress=False, verbose=verbose)
    return trainer, trainer.fit()


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()}


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"parameter {key} differs"


class LearningRates(Callback):
    def __init__(self):
        self.lrs = []

    def on_step_end(self, trainer, metrics):
        self.lrs.append(metrics[M.LEARNING_RATE])


@pytest.fixture
def db(workspace):
    with ExperimentDB.open_for_workspace(workspace, verbose=False) as database:
        yield database


def session(config, workspace, db, **kw):
    return TrainingSession.create(config, workspace, db=db, progress=False, verbose=False,
                                  live_plot=False, **kw)


def steps_of(db, run_id, name):
    frame = db.get_metrics(run_id, [name])
    return [int(s) for s in frame["step"]]


# ---------------------------------------------------------------- config


def test_budget_fields_are_validated_with_their_fix(tiny_config):
    with pytest.raises(ConfigError) as err:
        tiny_config(max_steps=-1, max_tokens=2.5, eval_every_steps=True, checkpoint_every_steps=-3)
    text = str(err.value)
    assert "4 problems" in text
    assert "max_steps = -1: must be >= 0 (optimizer steps; 0 = off" in text
    assert "max_tokens = 2.5: must be a whole number" in text
    assert "eval_every_steps = True: must be a whole number" in text
    assert "checkpoint_every_steps = -3: must be >= 0" in text


def test_budgets_default_off_and_round_trip(tiny_config):
    config = tiny_config()
    assert (config.max_steps, config.max_tokens, config.eval_every_steps,
            config.checkpoint_every_steps) == (0, 0, 0, 0)
    again = type(config).from_dict(config.replace(max_steps=5, max_tokens=7).to_dict())
    assert (again.max_steps, again.max_tokens) == (5, 7)
    assert "5 steps or 7 tokens, at most" in str(again)


def test_the_smallest_budget_wins(tiny_config):
    config = tiny_config(epochs=3)  # tokens_per_step = 8 x 16 = 128
    assert plan_steps(config, 40).budget == "epochs" and plan_steps(config, 40).total_steps == 120
    assert not plan_steps(config, 40).budgeted
    steps = plan_steps(config.replace(max_steps=50, max_tokens=128 * 60), 40)
    assert (steps.budget, steps.total_steps, steps.warmup_steps) == ("steps", 50, 5)
    tokens = plan_steps(config.replace(max_steps=50, max_tokens=128 * 30 + 1), 40)
    assert (tokens.budget, tokens.total_steps) == ("tokens", 31)  # a part step is a step
    capped = plan_steps(config.replace(max_steps=500), 40)
    assert (capped.budget, capped.total_steps) == ("epochs", 120)


# ---------------------------------------------------------------- runs


def test_max_steps_stops_at_120_with_val_points_at_40_80_120(tiny_config, workspace, db):
    config = tiny_config(epochs=HUGE, max_steps=120, eval_every_steps=40)
    s = session(config, workspace, db)
    assert s.trainer.steps_per_epoch < 120  # the budget crosses epoch ends
    result = s.fit()
    assert result.status == "completed" and result.global_step == 120
    run_id = s.tracker.run_id
    assert db.get_run(run_id)["status"] == "completed"
    assert steps_of(db, run_id, M.VAL_LOSS) == [40, 80, 120]
    assert steps_of(db, run_id, M.VAL_PERPLEXITY) == [40, 80, 120]
    assert steps_of(db, run_id, M.BATCH_LOSS) == list(range(1, 121))
    # Epoch rows for the epochs that ended, at their steps, with no val loss of their own.
    per_epoch = s.trainer.steps_per_epoch
    assert steps_of(db, run_id, M.TRAIN_LOSS) == [per_epoch * k for k in range(1, 120 // per_epoch + 1)]
    assert [int(r[M.STEP]) for r in s.tracker.evaluations] == [40, 80, 120]
    assert [int(r[M.STEP]) for r in result.evaluations] == [40, 80, 120]
    assert result.final_val_loss == result.evaluations[-1][M.VAL_LOSS]
    # "Best" is judged at each evaluation and the best checkpoint is taken there.
    best = min(result.evaluations, key=lambda r: r[M.VAL_LOSS])
    assert result.best_val_loss == best[M.VAL_LOSS] and result.best_step == best[M.STEP]
    files = CheckpointManager(workspace.run_dir("tiny")).files()
    assert [f.step for f in files if f.best] == [result.best_step]
    assert s.best_epoch_report()[M.STEP] == result.best_step
    # A rerun has nothing left to train.
    again = session(config, workspace, db).fit()
    assert again.status == "already_finished" and again.global_step == 120


def test_max_tokens_stops_at_its_step_and_says_which_budget_won(tiny_config, capsys):
    config = tiny_config(epochs=HUGE, max_tokens=10_000)  # ceil(10000 / 128) = 79 steps
    trainer, result = fit(config, verbose=True)
    assert result.global_step == 79 == trainer.total_steps
    assert "Budget: max_tokens=10,000 decides the run's length: 79 steps" in capsys.readouterr().out


def test_epochs_cap_a_budget_and_step_evaluations_end_at_the_last_step(tiny_config):
    trainer, result = fit(tiny_config(epochs=2, max_steps=10_000, eval_every_steps=25))
    total = 2 * trainer.steps_per_epoch
    assert trainer.plan.budget == "epochs" and result.global_step == total
    assert result.epochs_completed == 2
    expected = [s for s in range(25, total + 1, 25)] + ([total] if total % 25 else [])
    assert [int(r[M.STEP]) for r in result.evaluations] == expected


def test_the_schedule_reaches_its_floor_at_the_last_step(tiny_config):
    config = tiny_config(epochs=HUGE, max_steps=120, min_lr_ratio=0.1)
    lrs = LearningRates()
    trainer, _ = fit(config, callbacks=[lrs])
    assert len(lrs.lrs) == 120 and trainer.warmup_steps == 12
    after_warmup = lrs.lrs[trainer.warmup_steps:]
    assert all(a >= b for a, b in zip(after_warmup, after_warmup[1:]))
    floor = config.learning_rate * config.min_lr_ratio
    assert min(after_warmup) == lrs.lrs[-1] == lr_at(119, 120, 12, config.learning_rate, 0.1)
    assert lrs.lrs[-1] == pytest.approx(floor, rel=1e-2)  # the cosine's last step: at the floor
    assert lr_at(120, 120, 12, config.learning_rate, 0.1) == pytest.approx(floor)


def test_eval_max_batches_bounds_every_evaluation(tiny_config):
    config = tiny_config(epochs=HUGE, max_steps=20, eval_every_steps=5, eval_max_batches=2)
    prepared = prepare(config)

    class Counting:
        def __init__(self, loader):
            self.loader, self.loaded, self.sampler = loader, 0, loader.sampler

        def __iter__(self):
            for batch in self.loader:
                self.loaded += 1
                yield batch

    assert len(prepared.val_loader) > 2
    counting = Counting(prepared.val_loader)
    prepared.val_loader = counting
    trainer = prepared.trainer(progress=False, verbose=False)
    result = trainer.fit()
    assert len(result.evaluations) == 4 and counting.loaded == 4 * 2
    # ... and each sees the same batches, so the val losses of a run compare.
    assert trainer.evaluate()[M.VAL_LOSS] == trainer.evaluate()[M.VAL_LOSS]


def test_early_stopping_counts_evaluations_and_stops_mid_epoch(tiny_config):
    class WorseAfterFirst(Callback):
        def on_evaluate(self, trainer, metrics):
            trainer.best_val_loss = -math.inf  # every later evaluation looks worse

    config = tiny_config(epochs=HUGE, max_steps=1000, eval_every_steps=10, early_stopping_patience=2)
    trainer, result = fit(config, callbacks=[WorseAfterFirst()])
    assert result.status == "early_stopped" and result.global_step == 30
    assert [int(r[M.STEP]) for r in result.evaluations] == [10, 20, 30]
    assert trainer.finished


def test_checkpoint_every_steps_joins_the_cadences(tiny_config, workspace):
    config = tiny_config(epochs=HUGE, max_steps=50, checkpoint_every_steps=20, keep_checkpoints=10)
    fit(config, workspace)
    steps = sorted(f.step for f in CheckpointManager(workspace.run_dir("tiny")).files()
                   if not f.best)
    per_epoch = prepare(config).trainer(progress=False, verbose=False).steps_per_epoch
    assert {20, 40, 50} <= set(steps) and set(steps) <= {20, 40, 50, per_epoch}


# ---------------------------------------------------------------- exact resume


def test_a_resume_between_two_evaluations_is_bit_exact(tiny_config, workspace, db):
    config = tiny_config(epochs=HUGE, max_steps=120, eval_every_steps=40, dropout=0.1,
                         checkpoint_every_steps=60)
    straight, r_straight = fit(config.replace(run_name="straight", resume="never"))

    split = config.replace(run_name="split")
    first = session(split, workspace, db, callbacks=[Disconnect(step=70)])
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    newest = CheckpointManager(workspace.run_dir("split")).files()[0]
    state = load_checkpoint(newest.path)
    assert newest.step == 60 and state["progress"]["global_step"] == 60
    assert state["progress"]["batch_in_epoch"] > 0  # mid-epoch, between evaluations 40 and 80

    second = session(split, workspace, db)
    assert second.trainer.global_step == 60
    r_split = second.fit()
    assert r_split.global_step == 120
    assert_same_weights(straight, second.trainer)
    assert [(r[M.STEP], r[M.TRAIN_LOSS], r[M.VAL_LOSS]) for r in r_split.evaluations] == \
        [(r[M.STEP], r[M.TRAIN_LOSS], r[M.VAL_LOSS]) for r in r_straight.evaluations]
    run_id = second.tracker.run_id
    assert run_id == first.tracker.run_id
    assert steps_of(db, run_id, M.VAL_LOSS) == [40, 80, 120]  # each once
    assert steps_of(db, run_id, M.BATCH_LOSS) == list(range(1, 121))
