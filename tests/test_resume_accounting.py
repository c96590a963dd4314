"""What a resumed or finished run reports: one coherent message for a run with nothing left to
train, and time and throughput that count every epoch's work once, across sessions.

Time here is a fake clock that only moves while a batch loads (one "second" per batch), so the
numbers are exact and no test depends on how fast this machine is."""

from __future__ import annotations

import time

import pytest
import torch
from helpers import StopAt

from utils.training import metric_names as M
from utils.training import trainer as trainer_module
from utils.training.callbacks import Callback
from utils.training.run import prepare
from utils.training.trainer import Trainer


class Clock:
    """Stands in for the trainer's ``time`` module: perf_counter is fake, monotonic is real
    (checkpoint cadence and wall time keep working)."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    monotonic = staticmethod(time.monotonic)


class TimedLoader:
    """A user's own loader (no resumable sampler): each batch takes one clock second to load."""

    def __init__(self, batches, clock: Clock) -> None:
        self.batches, self.clock = batches, clock

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            self.clock.now += 1.0
            yield batch


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_start(self, trainer):
        self.events.append("start")

    def on_train_end(self, trainer, result):
        self.events.append("end")


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(trainer_module, "time", fake)
    return fake


@pytest.fixture
def timed(clock):
    """(config -> Trainer) on 8 batches of 8 x 16 tokens per epoch, each loading in 1 s."""
    torch.manual_seed(0)
    x = torch.randint(0, 16, (64, 16))
    batches = [(x[i:i + 8], torch.roll(x[i:i + 8], -1, 1)) for i in range(0, 64, 8)]
    loader = TimedLoader(batches, clock)

    def make(config, workspace=None, callbacks=(), verbose=False):
        return Trainer(config, prepare(config).model, loader, batches[:2], callbacks, workspace,
                       progress=False, verbose=verbose)

    return make


def test_a_resumed_epoch_counts_its_time_and_tokens_once(tiny_config, workspace, timed):
    config = tiny_config(epochs=2, checkpoint_every_minutes=1e-9)
    straight = timed(config.replace(run_name="straight", resume="never")).fit()
    assert [r[M.EPOCH_DURATION] for r in straight.history] == [8.0, 8.0]

    # A disconnect 3 steps into epoch 2; the newest checkpoint is 2 batches into it.
    with pytest.raises(KeyboardInterrupt):
        timed(config, workspace, [StopAt(step=11)]).fit()
    resumed = timed(config, workspace).fit()
    for before, after in zip(straight.history, resumed.history):
        # The 2 batches trained before the disconnect keep their time; the 2 skipped on resume
        # are not counted again as if they had been trained now.
        assert after[M.EPOCH_DURATION] == before[M.EPOCH_DURATION] == 8.0
        assert after[M.TOKENS_PER_SEC] == pytest.approx(before[M.TOKENS_PER_SEC])
    assert resumed.elapsed == 16.0 and resumed.seconds_before == 10.0


def test_a_resumed_runs_total_time_covers_every_session(tiny_config, workspace, timed):
    config = tiny_config(epochs=2)
    first = timed(config, workspace, [StopAt(epoch=1)]).fit()
    assert first.elapsed == 8.0 and first.seconds_before == 0.0
    assert "(8 steps, 8s of training)" in str(first)

    second = timed(config, workspace).fit()
    assert second.elapsed == sum(r[M.EPOCH_DURATION] for r in second.history) == 16.0
    assert second.seconds_before == 8.0
    assert "(16 steps, 16s of training over all sessions, 8s in this one)" in str(second)


def test_rerunning_a_finished_run_says_one_thing_and_trains_nothing(tiny_config, workspace,
                                                                     timed, capsys):
    config = tiny_config(epochs=2)
    timed(config, workspace).fit()
    capsys.readouterr()

    recorder = Recorder()
    trainer = timed(config, workspace, [recorder], verbose=True)
    trainer.resume()  # the notebook's set-up cell
    setup = capsys.readouterr().out
    assert ("Run 'tiny' already finished its 2 epochs: nothing to train. Raise epochs to train "
            "longer, or change run_name for a new run.") in setup
    assert "resuming" not in setup.lower()

    result = trainer.fit()  # the train cell: nothing more to say
    assert capsys.readouterr().out == ""
    assert result.status == "already_finished" and result.global_step == 16
    assert result.elapsed == 16.0 and len(result.history) == 2
    assert recorder.events == []  # nothing ran: no callback reopens or closes anything

    # Without a set-up call, fit() says it itself, once, and prints no training plan.
    timed(config, workspace, verbose=True).fit()
    out = capsys.readouterr().out
    assert out.count("nothing to train") == 1 and "Plan:" not in out
