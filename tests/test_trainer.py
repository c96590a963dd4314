from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from utils.training import metric_names as M
from utils.training.checkpoints import CheckpointError, CheckpointManager, load_checkpoint
from utils.training.hardware import choose_precision, peak_flops
from utils.training.optimizer import lr_at
from utils.training.pipeline import prepare
from utils.training.trainer import (
    IGNORE_INDEX,
    Callback,
    Trainer,
    TrainingDivergedError,
)

ROOT = Path(__file__).resolve().parents[1]


def fit(config, workspace=None, callbacks=()):
    prepared = prepare(config, workspace)
    trainer = prepared.trainer(callbacks, progress=False, verbose=False)
    return trainer, trainer.fit()


def params(trainer):
    return {k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()}


class StopAt(Callback):
    """Simulates a disconnect: ends the run after epoch ``epoch`` or raises at step ``step``."""

    def __init__(self, epoch=None, step=None):
        self.epoch, self.step = epoch, step

    def on_step_end(self, trainer, metrics):
        if self.step is not None and metrics[M.STEP] == self.step:
            raise KeyboardInterrupt("simulated disconnect")

    def on_epoch_end(self, trainer, metrics):
        if self.epoch is not None and metrics[M.EPOCH] == self.epoch:
            trainer.should_stop = True


def assert_same_run(a, b):
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for key in pa:
        assert torch.equal(pa[key], pb[key]), f"parameter {key} differs"
    ha = [(r[M.TRAIN_LOSS], r[M.VAL_LOSS]) for r in a.history]
    hb = [(r[M.TRAIN_LOSS], r[M.VAL_LOSS]) for r in b.history]
    assert ha == hb


# ---------------------------------------------------------------- learning


def test_learns_synthetic_data_to_its_known_entropy(tiny_config):
    """Proves loss, schedule, packing and the loop together: the model can do no better than the
    data's entropy rate, and a correct loop gets close to it."""
    config = tiny_config(
        vocab_size=24, synthetic_tokens=60_000, d_model=64, n_heads=4, n_layers=2,
        block_size=32, batch_size=32, epochs=3, learning_rate=1e-2, warmup_ratio=0.05,
    )
    trainer, result = fit(config)
    entropy = prepare(config).data.known_entropy
    assert entropy is not None and entropy > 0.5
    assert result.final_val_loss <= 1.10 * entropy, (result.final_val_loss, entropy)
    assert result.final_val_loss >= 0.97 * entropy  # not below the floor: no leak of targets


# ---------------------------------------------------------------- exact resume


def test_resume_after_two_epochs_is_bit_identical(tiny_config, workspace, tmp_path):
    config = tiny_config(dropout=0.1)
    straight, _ = fit(config.replace(run_name="straight", resume="never"))

    first, r1 = fit(config.replace(run_name="split"), workspace, [StopAt(epoch=2)])
    assert r1.epochs_completed == 2 and r1.status == "stopped"
    resumed, r2 = fit(config.replace(run_name="split"), workspace)
    assert r2.epochs_completed == 4 and r2.status == "completed"
    assert_same_run(straight, resumed)


def test_resume_from_mid_epoch_checkpoint_is_bit_identical(tiny_config, workspace):
    config = tiny_config(dropout=0.1, grad_accum_steps=2)
    straight, _ = fit(config.replace(run_name="straight", resume="never"))

    # A checkpoint after every step (the minute cadence), then a "disconnect" mid-epoch 2.
    split = config.replace(run_name="mid", checkpoint_every_minutes=1e-9)
    steps_per_epoch = straight.steps_per_epoch
    crash_step = steps_per_epoch + steps_per_epoch // 2 + 1
    with pytest.raises(KeyboardInterrupt):
        fit(split, workspace, [StopAt(step=crash_step)])
    newest = CheckpointManager(workspace.run_dir("mid")).files()[0]
    state = load_checkpoint(newest.path)
    assert 0 < state["progress"]["batch_in_epoch"] < 2 * steps_per_epoch  # really mid-epoch

    resumed, result = fit(split, workspace)
    assert result.epochs_completed == 4
    assert_same_run(straight, resumed)


def test_interrupt_saves_checkpoint_and_resumes_exactly(tiny_config, workspace):
    """Colab's "Interrupt execution" is a SIGINT: the step in flight finishes, a checkpoint is
    saved, and running again continues bit-identically."""
    config = tiny_config(dropout=0.1)
    straight, _ = fit(config.replace(run_name="straight", resume="never"))

    class Interrupt(Callback):
        def on_step_end(self, trainer, metrics):
            if metrics[M.STEP] == trainer.steps_per_epoch + 3:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt, match="Run it again to resume"):
        fit(config.replace(run_name="interrupted"), workspace, [Interrupt()])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    resumed, result = fit(config.replace(run_name="interrupted"), workspace)
    assert result.epochs_completed == 4
    assert_same_run(straight, resumed)


def test_finished_run_is_reported_not_retrained(tiny_config, workspace, capsys):
    config = tiny_config(epochs=1)
    fit(config, workspace)
    prepared = prepare(config, workspace)
    result = prepared.trainer(progress=False).fit()
    assert result.status == "already_finished"
    assert "already finished 1 epochs" in capsys.readouterr().out


# ---------------------------------------------------------------- checkpoint safety


def test_truncated_checkpoint_gives_clear_error_and_auto_skips_it(tiny_config, workspace, capsys):
    config = tiny_config(epochs=2)
    trainer, _ = fit(config, workspace)
    files = CheckpointManager(workspace.run_dir(config.run_name)).files()
    newest = next(f for f in files if not f.best)
    data = newest.path.read_bytes()
    newest.path.write_bytes(data[: len(data) // 2])

    with pytest.raises(CheckpointError, match=newest.path.name) as info:
        load_checkpoint(newest.path)
    assert "truncated or corrupt" in str(info.value)

    found = CheckpointManager(workspace.run_dir(config.run_name)).latest()
    assert found is not None and found[0] != newest.path
    assert "Skipping a checkpoint" in capsys.readouterr().out


KILL_SCRIPT = """
import os, signal, sys
import torch
sys.path.insert(0, {root!r})
from utils.training import checkpoints
from utils.training.pipeline import prepare
from utils.training.training_config import TrainingConfig
from utils.training.workspace import Workspace

config = TrainingConfig.from_dict({config!r})
ws = Workspace.setup({ws!r}, mount_drive=False, verbose=False)
saves = []
real_save = torch.save

def dying_save(obj, handle, *a, **k):
    saves.append(1)
    if len(saves) == 2:  # the epoch-2 checkpoint: write half of it, then die like a VM would
        handle.write(b"PK" + b"x" * 4096)
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, handle, *a, **k)

checkpoints.torch.save = dying_save
prepare(config, ws).trainer(progress=False, verbose=False).fit()
"""


def test_sigkill_while_saving_keeps_previous_checkpoint(tiny_config, workspace):
    config = tiny_config(epochs=3, run_name="killed")
    script = KILL_SCRIPT.format(root=str(ROOT), config=config.to_dict(), ws=str(workspace.root))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    run_dir = workspace.run_dir("killed")
    names = sorted(p.name for p in run_dir.iterdir())
    assert any(".tmp-" in n for n in names)  # the half-written file never got the final name
    manager = CheckpointManager(run_dir)  # start-up removes the stale temp file
    assert not any(".tmp-" in p.name for p in run_dir.iterdir())
    path, state = manager.latest()
    assert state["progress"]["epoch"] == 1

    trainer, result = fit(config, workspace)
    assert result.epochs_completed == 3
    assert len(result.history) == 3


def test_resume_with_other_model_shape_names_the_fields(tiny_config, workspace):
    fit(tiny_config(epochs=1), workspace)
    with pytest.raises(CheckpointError, match="d_model: checkpoint 32, config 64"):
        fit(tiny_config(epochs=2, d_model=64), workspace)


# ---------------------------------------------------------------- the step


def _grads_of_one_step(trainer, group):
    captured = {}

    def capture(optimizer):
        captured.update({n: p.grad.clone() for n, p in trainer.raw_model.named_parameters()})

    trainer.scaler.step = capture
    trainer._optimizer_step(group)
    return captured


def test_accumulation_matches_one_big_batch_token_weighted(tiny_config):
    config = tiny_config(max_grad_norm=0.0, batch_size=2)
    prepared = prepare(config)
    torch.manual_seed(0)
    x = torch.randint(0, 16, (8, 16))
    y = torch.randint(0, 16, (8, 16))
    y[2:4, :12] = IGNORE_INDEX  # micro-batch 2 has far fewer targets: a per-batch mean would be wrong
    big = _grads_of_one_step(prepared.trainer(progress=False, verbose=False), [(x, y)])

    prepared = prepare(config)  # fresh, identical weights
    micro = [(x[i : i + 2], y[i : i + 2]) for i in range(0, 8, 2)]
    accumulated = _grads_of_one_step(prepared.trainer(progress=False, verbose=False), micro)
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], rtol=1e-5, atol=1e-7)


def test_nan_loss_stops_with_clear_message_and_keeps_weights(tiny_config):
    prepared = prepare(tiny_config())
    trainer = prepared.trainer(progress=False, verbose=False)
    trainer.raw_model.register_forward_hook(lambda module, args, out: out * math.nan)
    before = params(trainer)
    with pytest.raises(TrainingDivergedError, match="loss became nan") as info:
        trainer.fit()
    assert "Lower learning_rate" in str(info.value)
    after = params(trainer)
    for key in after:  # the NaN update was never applied
        assert torch.equal(after[key], before[key]), key


def test_warmup_then_cosine_schedule():
    lrs = [lr_at(s, 100, 10, 1.0, 0.1) for s in range(100)]
    assert lrs[0] < lrs[5] < lrs[9] <= 1.0  # linear warmup
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then monotone decay
    assert lrs[10] == pytest.approx(1.0)
    assert lr_at(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)  # the floor


def test_early_stopping_after_patience(tiny_config):
    class WorseEveryEpoch(Callback):
        def on_epoch_end(self, trainer, metrics):
            # pretend validation got worse each epoch after the first
            if metrics[M.EPOCH] > 1:
                trainer.best_val_loss = -math.inf

    _, result = fit(tiny_config(epochs=10, early_stopping_patience=2), callbacks=[WorseEveryEpoch()])
    assert result.status == "early_stopped"
    assert result.epochs_completed < 10


# ---------------------------------------------------------------- precision


def test_precision_choice_from_cuda_capability():
    cuda = torch.device("cuda")
    t4 = choose_precision("auto", cuda, capability=(7, 5))
    assert (t4.name, t4.autocast_dtype, t4.use_grad_scaler) == ("fp16", torch.float16, True)
    assert "7.5" in t4.reason
    a100 = choose_precision("auto", cuda, capability=(8, 0))
    assert (a100.name, a100.autocast_dtype, a100.use_grad_scaler) == ("bf16", torch.bfloat16, False)
    assert choose_precision("fp32", cuda, capability=(9, 0)).autocast_dtype is None


def test_precision_choice_on_cpu():
    cpu = torch.device("cpu")
    assert choose_precision("auto", cpu, cpu_bf16=True).name == "bf16"
    assert choose_precision("auto", cpu, cpu_bf16=False).name == "fp32"
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        choose_precision("fp16", cpu)


def test_step_metrics_reach_callbacks(tiny_config):
    seen = []

    class Record(Callback):
        def on_step_end(self, trainer, metrics):
            seen.append(metrics)

    trainer, result = fit(tiny_config(epochs=1), callbacks=[Record()])
    assert len(seen) == trainer.steps_per_epoch
    assert {M.STEP, M.BATCH_LOSS, M.LEARNING_RATE, M.GRAD_NORM, M.TOKENS} <= set(seen[0])
    assert result.history[0][M.TOKENS_PER_SEC] > 0



def test_peak_flops_table_and_unknown():
    cuda = torch.device("cuda")
    assert peak_flops(cuda, name="NVIDIA H100 PCIe") == 756e12  # the longer key wins over "H100"
    assert peak_flops(cuda, name="Tesla T4") == 65e12
    assert peak_flops(cuda, name="NVIDIA A100-SXM4-40GB") == 312e12
    assert peak_flops(cuda, name="Some Future GPU") is None  # "unknown", never a guess
    assert peak_flops(torch.device("cpu")) is None


def test_samples_are_printed_after_each_epoch(tiny_config, capsys):
    from utils.training.data import ByteTokenizer

    config = tiny_config(vocab_size=257, synthetic_tokens=3000, epochs=1, sample_tokens=12,
                         sample_prompt="ab")
    prepared = prepare(config)
    trainer = prepared.trainer(progress=False)
    trainer.tokenizer = ByteTokenizer()
    rng_before = torch.get_rng_state()
    trainer._sample()
    assert torch.equal(torch.get_rng_state(), rng_before)  # sampling leaves training's RNG alone
    assert len(trainer.samples) == 1 and trainer.samples[0].startswith("ab")
    assert "sample after epoch 0 (prompt 'ab')" in capsys.readouterr().out


@pytest.mark.slow
def test_compiled_model_trains_and_checkpoints_without_prefix(tiny_config, workspace):
    """torch.compile on CPU takes ~30 s here; it proves the compiled path and that checkpoints
    load into an uncompiled model."""
    trainer, result = fit(tiny_config(epochs=1, compile=True), workspace)
    assert math.isfinite(result.final_val_loss)
    state = load_checkpoint(result.last_checkpoint)
    assert not any(k.startswith("_orig_mod.") for k in state["model"])
    prepared = prepare(tiny_config(epochs=1))
    prepared.model.load_state_dict(state["model"])  # strict: every key matches


def test_resume_restores_the_runs_tokenizer_when_the_token_cache_is_gone(tiny_config, workspace,
                                                                         tmp_path, monkeypatch):
    import shutil

    from utils.training.data import loaders

    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n"
                            for i in range(400)))
    config = tiny_config(data_source="local", data_path=str(text), tokenizer="bpe",
                         vocab_size=300, epochs=2, run_name="bpe-run")
    fit(config, workspace, [StopAt(epoch=1)])
    shutil.rmtree(workspace.datasets)  # a wiped cache: the BPE would have to be trained again
    workspace.datasets.mkdir()

    def no_training(*args, **kwargs):
        raise AssertionError("a resumed run must reuse its saved tokenizer, not train a new one")

    monkeypatch.setattr(loaders, "build_tokenizer", no_training)
    _, result = fit(config, workspace)
    assert result.epochs_completed == 2


def test_resume_never_refuses_to_mix_a_new_run_into_old_checkpoints(tiny_config, workspace):
    fit(tiny_config(epochs=1), workspace)
    with pytest.raises(CheckpointError, match="already has checkpoints.*new run_name"):
        fit(tiny_config(epochs=1, resume="never"), workspace)


def test_resume_with_more_epochs_says_the_schedule_changes(tiny_config, workspace, capsys):
    fit(tiny_config(epochs=1), workspace)
    prepared = prepare(tiny_config(epochs=2), workspace)
    prepared.trainer(progress=False).resume()
    out = capsys.readouterr().out
    assert "Resuming with changed settings: epochs 1 -> 2" in out
    assert "re-stretched" in out


def test_multi_process_launch_is_refused_loudly(tiny_config, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="not built yet"):
        prepare(tiny_config()).trainer()


def test_a_plain_dataloader_trains_and_resumes_mid_epoch(tiny_config, workspace):
    """A user's own DataLoader (no resumable sampler): a resumed epoch skips what was seen."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    x = torch.randint(0, 16, (64, 16))
    loader = DataLoader(TensorDataset(x, torch.roll(x, -1, 1)), batch_size=8, shuffle=False)
    config = tiny_config(epochs=2, checkpoint_every_minutes=1e-9)
    prepared = prepare(config)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, prepared.model, loader, loader, [StopAt(step=11)], workspace,
                progress=False, verbose=False).fit()
    resumed = Trainer(config, prepare(config).model, loader, loader, (), workspace,
                      progress=False, verbose=False)
    result = resumed.fit()
    assert result.global_step == 2 * len(loader)  # exactly the steps left, none repeated


@pytest.mark.slow
def test_fp16_with_grad_scaler_trains_and_resumes_exactly(tiny_config, workspace, monkeypatch):
    """The T4 path (fp16 autocast + GradScaler), forced on the CPU: the scaler unscales before
    clipping, and its state rides along in checkpoints. (fp16 is slow on a CPU: tiny data.)"""
    import utils.training.trainer as trainer_module
    from utils.training.hardware import Precision

    forced = Precision("fp16", torch.float16, True, "forced for the test")
    monkeypatch.setattr(trainer_module, "choose_precision", lambda *a, **k: forced)
    config = tiny_config(synthetic_tokens=2500, epochs=2)
    straight, result = fit(config.replace(run_name="fp16-straight", resume="never"))
    assert straight.scaler.is_enabled() and math.isfinite(result.final_val_loss)
    fit(config.replace(run_name="fp16-split"), workspace, [StopAt(epoch=1)])
    resumed, _ = fit(config.replace(run_name="fp16-split"), workspace)
    assert resumed.scaler.get_scale() == straight.scaler.get_scale()
    assert_same_run(straight, resumed)


def test_interrupt_then_rerunning_the_train_cell_continues_exactly(tiny_config, workspace):
    """In Colab: Interrupt the training cell, then run it again (same objects in memory)."""
    config = tiny_config(dropout=0.1)
    straight, _ = fit(config.replace(run_name="straight", resume="never"))

    class InterruptOnce(Callback):
        fired = False

        def on_step_end(self, trainer, metrics):
            if not self.fired and metrics[M.STEP] == trainer.steps_per_epoch + 2:
                self.fired = True
                os.kill(os.getpid(), signal.SIGINT)

    prepared = prepare(config.replace(run_name="rerun"), workspace)
    trainer = prepared.trainer([InterruptOnce()], progress=False, verbose=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    result = trainer.fit()  # the cell, run again
    assert result.epochs_completed == 4
    assert_same_run(straight, trainer)


def test_changing_batch_size_mid_epoch_restarts_that_epoch_with_a_note(tiny_config, workspace,
                                                                       capsys):
    """After a CUDA out-of-memory error people lower batch_size and run again: the run carries
    on (its exact data order no longer exists, so the interrupted epoch starts over)."""
    config = tiny_config(epochs=2, checkpoint_every_minutes=1e-9)
    with pytest.raises(KeyboardInterrupt):
        fit(config, workspace, [StopAt(step=12)])
    capsys.readouterr()
    result = prepare(config.replace(batch_size=4), workspace).trainer(progress=False).fit()
    assert result.epochs_completed == 2
    out = capsys.readouterr().out
    assert "batch_size 8 -> 4" in out and "starts again from its beginning" in out


def test_out_of_memory_says_which_settings_to_lower(tiny_config):
    from utils.training.trainer import TrainingOutOfMemoryError

    trainer = prepare(tiny_config(batch_size=8)).trainer(progress=False, verbose=False)

    def oom(module, args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    trainer.raw_model.register_forward_pre_hook(oom)
    with pytest.raises(TrainingOutOfMemoryError, match="batch_size = 4 and grad_accum_steps = 2"):
        trainer.fit()
