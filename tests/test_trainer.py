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
from helpers import StopAt

from utils.training import metric_names as M
from utils.training.checkpoints import CheckpointError, CheckpointManager, load_checkpoint
from utils.training.hardware import choose_precision, peak_flops
from utils.training.optimizer import lr_at
from utils.training.run import prepare
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
    assert "already finished its 1 epoch" in capsys.readouterr().out


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
from utils.training.run import prepare
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


def _same(a, b):
    """Deep equality that compares tensors by value."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def _damaged_copies(data: bytes, n: int, seed: int):
    """``n`` seeded variants of a checkpoint's bytes: random junk, junk that looks like a zip or
    a pickle, truncations, and copies with a few bytes garbled or bits flipped."""
    import random

    rng = random.Random(seed)
    for i in range(n):
        kind = i % 6
        if kind == 0:
            yield "random", rng.randbytes(rng.choice([0, 1, 2, 7, 64, 600, 5000]))
        elif kind == 1:
            head = rng.choice([b"PK\x03\x04", b"\x80\x02", b"\x80\x04\x95", data[:64]])
            yield "prefixed", head + rng.randbytes(rng.randrange(0, 3000))
        elif kind == 2:
            yield "truncated", data[: rng.randrange(len(data))]
        elif kind == 3:
            garbled = bytearray(data)
            for _ in range(rng.randrange(1, 24)):
                garbled[rng.randrange(len(garbled))] = rng.randrange(256)
            yield "garbled", bytes(garbled)
        elif kind == 4:
            flipped = bytearray(data)
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            yield "bit-flip", bytes(flipped)
        else:  # a whole region overwritten, as a bad sector or a half-synced Drive block would
            start = rng.randrange(len(data))
            yield "zeroed", data[:start] + bytes(min(4096, len(data) - start)) + data[start + 4096:]


def test_every_damaged_checkpoint_raises_checkpoint_error_naming_the_file(tmp_path):
    """Random bytes used to escape as IndexError, UnicodeDecodeError or KeyError (26 of 300),
    and flipped bits in tensor data loaded as silently different weights."""
    from utils.training.checkpoints import capture_rng_state, save_checkpoint

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 8)).sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "rng": capture_rng_state(), "progress": {"epoch": 1, "global_step": 7},
             "history": [{"train_loss": 1.5, "val_loss": 1.25}], "samples": ["héllo"],
             "tokenizer": {"type": "char", "chars": "abc\u00e9"}}
    original = save_checkpoint(state, tmp_path / "original.pt")
    data = original.read_bytes()
    reference = load_checkpoint(original)

    outcomes = {}
    for i, (kind, damaged) in enumerate(_damaged_copies(data, 300, seed=1234)):
        path = tmp_path / f"step-{i:08d}.pt"
        path.write_bytes(damaged)
        try:
            loaded = load_checkpoint(path)
        except CheckpointError as exc:
            assert path.name in str(exc), (kind, str(exc))
            outcomes[kind, "refused"] = outcomes.get((kind, "refused"), 0) + 1
            continue
        # A change that loads must be one that changes nothing (zip padding, say).
        assert _same(loaded, reference), f"{kind} copy {path.name} loaded different contents"
        outcomes[kind, "same"] = outcomes.get((kind, "same"), 0) + 1
    assert sum(n for (kind, what), n in outcomes.items() if what == "refused") > 250, outcomes


def _junk_checkpoints(run_dir, steps, seed=5):
    """Unreadable files under checkpoint names: random bytes, a truncation, garbled bytes."""
    import random

    rng = random.Random(seed)
    made = {}
    for i, step in enumerate(steps):
        name = f"step-{step:08d}.pt" if i % 4 != 3 else f"best-step-{step:08d}.pt"
        data = [rng.randbytes(300), b"PK\x03\x04" + rng.randbytes(100), b"\x80\x02}q\x00(X",
                rng.randbytes(2000)][i % 4]
        (run_dir / name).write_bytes(data)
        made[name] = data
    return made


def test_resume_skips_unreadable_newest_checkpoints_and_sets_them_aside(tiny_config, workspace,
                                                                         capsys):
    config = tiny_config(epochs=3)
    straight, _ = fit(config.replace(run_name="straight", resume="never"))
    fit(config, workspace, [StopAt(epoch=1)])
    run_dir = workspace.run_dir(config.run_name)
    junk = _junk_checkpoints(run_dir, [500, 600, 700, 700])
    capsys.readouterr()

    resumed, result = fit(config, workspace)
    out = capsys.readouterr().out
    assert result.epochs_completed == 3
    assert_same_run(straight, resumed)  # it resumed from the real epoch-1 checkpoint
    assert out.count("Skipping a checkpoint that cannot be loaded") == 4
    aside = run_dir / "set-aside"
    for name, data in junk.items():  # nothing deleted: every byte is still there, set aside
        assert name in out and (aside / name).read_bytes() == data
    names = {f.path.name for f in CheckpointManager(run_dir).files()}
    assert names and not names & set(junk)  # the run's own checkpoints are the newest now


def test_new_checkpoints_survive_unreadable_ones_numbered_above_them(tiny_config, workspace):
    """Every checkpoint unreadable and above the restart point: the new checkpoint used to be
    pruned right after it was written, and save_best then failed with FileNotFoundError."""
    config = tiny_config(epochs=2, keep_checkpoints=2)
    run_dir = workspace.run_dir(config.run_name)
    junk = _junk_checkpoints(run_dir, [900, 950, 1000, 1000])

    _, result = fit(config, workspace)
    assert result.epochs_completed == 2 and result.last_checkpoint.is_file()
    files = CheckpointManager(run_dir).files()
    assert [f.step for f in files if not f.best] == [result.global_step, result.global_step // 2]
    assert [f.step for f in files if f.best] == [result.global_step]
    for name, data in junk.items():
        assert (run_dir / "set-aside" / name).read_bytes() == data


def test_retention_never_deletes_the_checkpoint_it_just_wrote(tmp_path):
    """Without a resume to set them aside, unreadable files above the new step stay, untouched,
    and so does the new checkpoint; only older ones are pruned."""
    manager = CheckpointManager(tmp_path / "run", keep=2)
    junk = _junk_checkpoints(manager.directory, [50, 60, 70])
    for step in (1, 2, 3):
        path = manager.save({"step": step}, step)
        assert path.is_file()
        best = manager.save_best(path, step)
        assert best.is_file()
    steps = sorted(f.step for f in manager.files() if not f.best and f.path.name not in junk)
    assert steps == [2, 3]
    for name, data in junk.items():
        assert (manager.directory / name).read_bytes() == data
    with pytest.raises(CheckpointError, match="it is gone"):
        manager.save_best(manager.directory / "step-00000001.pt", 9)


def test_resuming_an_earlier_checkpoint_sets_the_later_ones_aside(tiny_config, workspace, capsys):
    config = tiny_config(epochs=3, keep_checkpoints=5)
    fit(config, workspace)
    run_dir = workspace.run_dir(config.run_name)
    first = CheckpointManager(run_dir).files()[-1]  # the epoch-1 checkpoint
    later = [f.path.name for f in CheckpointManager(run_dir).files() if f.step > first.step]
    capsys.readouterr()

    resumed, result = fit(config.replace(resume=str(first.path)), workspace)
    assert result.epochs_completed == 3
    assert "not part of its course" in capsys.readouterr().out
    assert sorted(p.name for p in (run_dir / "set-aside").iterdir()) == sorted(later)
    newest = CheckpointManager(run_dir).latest()
    assert newest is not None and newest[0].parent == run_dir
    assert torch.equal(newest[1]["model"]["tok_emb.weight"], params(resumed)["tok_emb.weight"])


FULL_SCRIPT = """
import resource, signal, sys
sys.path.insert(0, {root!r})
from utils.training.checkpoints import CheckpointError
from utils.training.run import prepare
from utils.training.training_config import TrainingConfig
from utils.training.workspace import Workspace

config = TrainingConfig.from_dict({config!r})
ws = Workspace.setup({ws!r}, mount_drive=False, verbose=False)
prepare(config, ws).trainer(progress=False, verbose=False).fit()  # epoch 1: a checkpoint
# Now no file may grow past half a checkpoint, like a disk that fills up: torch.save fails
# inside its zip writer (with SIGXFSZ ignored, write(2) returns EFBIG instead of killing us).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))
try:
    prepare(config.replace(epochs=2), ws).trainer(progress=False, verbose=False).fit()
except CheckpointError as exc:
    print("CheckpointError:", exc)
    sys.exit(3)
"""


def test_a_checkpoint_write_that_fails_in_torch_says_why_and_keeps_the_last_one(tiny_config,
                                                                                workspace):
    """torch's zip writer used to raise a raw ``RuntimeError: [enforce fail at
    inline_container.cc]`` (exit 1); only OSError was caught."""
    config = tiny_config(epochs=1, run_name="capped")
    script = FULL_SCRIPT.format(root=str(ROOT), config=config.to_dict(), ws=str(workspace.root),
                                limit=60_000)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    message = proc.stdout
    assert "Could not write checkpoint" in message and "file-size limit" in message
    run_dir = workspace.run_dir("capped")
    kept = CheckpointManager(run_dir).files()
    assert [f.step for f in kept if not f.best] == [kept[0].step]  # the epoch-1 checkpoint
    assert f"previous checkpoint {kept[0].path} is intact" in message
    assert not [p.name for p in run_dir.iterdir() if ".tmp-" in p.name]  # no temp file left
    assert load_checkpoint(kept[0].path)["progress"]["epoch"] == 1

    _, result = fit(config.replace(epochs=2), workspace)  # space is back: it resumes
    assert result.epochs_completed == 2


def test_a_damaged_tokenizer_json_is_restored_from_the_checkpoint(tiny_config, workspace, capsys):
    from utils.training.checkpoints import load_run_tokenizer
    from utils.training.data import load_tokenizer

    config = tiny_config(epochs=1)
    trainer, _ = fit(config, workspace)
    run_dir = workspace.run_dir(config.run_name)
    token_file = run_dir / "tokenizer.json"
    token_file.write_text('{"model": {"type": "BPE", "vocab": {"a"')  # cut off mid-write
    capsys.readouterr()

    tokenizer = load_run_tokenizer(run_dir)
    assert tokenizer.to_dict() == trainer.tokenizer.to_dict()
    assert load_tokenizer(token_file).to_dict() == trainer.tokenizer.to_dict()  # the file is back
    out = capsys.readouterr().out
    assert "could not be read" in out and "Restored it from the copy in checkpoint" in out

    token_file.unlink()
    assert load_run_tokenizer(run_dir).to_dict() == trainer.tokenizer.to_dict()
    assert "was missing" in capsys.readouterr().out and token_file.is_file()
    assert load_run_tokenizer(workspace.run_dir("no-checkpoints-yet")) is None


def test_a_damaged_tokenizer_json_without_a_copy_says_what_to_do(tmp_path):
    from utils.training.checkpoints import load_run_tokenizer, save_checkpoint

    save_checkpoint({"model": {}}, tmp_path / "step-00000001.pt")  # an old one: no tokenizer
    (tmp_path / "tokenizer.json").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(CheckpointError, match="none of its checkpoints.*holds a readable copy"):
        load_run_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    assert load_run_tokenizer(tmp_path) is None  # missing, no copy: the data's tokenizer, as before

    junk_only = tmp_path / "junk-only"
    junk_only.mkdir()
    _junk_checkpoints(junk_only, [3, 4])
    (junk_only / "tokenizer.json").write_bytes(b"\xff\xfe garbage")
    assert load_run_tokenizer(junk_only) is None  # nothing to resume: the run starts afresh


def test_resume_with_a_damaged_tokenizer_json_uses_the_checkpoints_copy(tiny_config, workspace,
                                                                        tmp_path, monkeypatch):
    import shutil

    from utils.training.data import load_tokenizer, loaders

    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n"
                            for i in range(400)))
    config = tiny_config(data_source="local", data_path=str(text), tokenizer="bpe",
                         vocab_size=300, epochs=2, run_name="bpe-damaged")
    first, _ = fit(config, workspace, [StopAt(epoch=1)])
    token_file = workspace.run_dir(config.run_name) / "tokenizer.json"
    token_file.write_text(token_file.read_text()[:100])
    shutil.rmtree(workspace.datasets)  # and no cache: a new BPE would give other ids
    workspace.datasets.mkdir()

    def no_training(*args, **kwargs):
        raise AssertionError("the run's own tokenizer must come back, not a new one")

    monkeypatch.setattr(loaders, "build_tokenizer", no_training)
    _, result = fit(config, workspace)
    assert result.epochs_completed == 2
    assert load_tokenizer(token_file).to_dict() == first.tokenizer.to_dict()


def test_a_disconnect_between_the_epoch_row_and_its_checkpoint_logs_the_row_once(tiny_config,
                                                                                 workspace):
    """With a checkpoint after every step, the one at an epoch's last step used to be taken just
    before the epoch's row reached the database: a resume from it logged that row again."""
    import sqlite3

    from utils.training.experiment_db import ExperimentDB
    from utils.training.run import TrainingSession

    class DisconnectAfterEpochRow(Callback):  # after the tracker: its row is in the database
        def on_epoch_end(self, trainer, metrics):
            if metrics[M.EPOCH] == 1 and not hasattr(self, "done"):
                self.done = True
                raise KeyboardInterrupt("the VM went away")

    config = tiny_config(epochs=2, checkpoint_every_minutes=1e-9)
    with ExperimentDB.open_for_workspace(workspace, verbose=False) as db:
        session = TrainingSession.create(config, workspace, db=db, live_plot=False,
                                         progress=False, verbose=False,
                                         callbacks=[DisconnectAfterEpochRow()])
        with pytest.raises(KeyboardInterrupt):
            session.fit()
        session = TrainingSession.create(config, workspace, db=db, live_plot=False,
                                         progress=False, verbose=False)
        assert session.fit().epochs_completed == 2
    with sqlite3.connect(workspace.db_path) as conn:
        rows = conn.execute("SELECT epoch FROM metrics WHERE name = ? ORDER BY epoch",
                            (M.VAL_LOSS,)).fetchall()
    assert rows == [(1,), (2,)]


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


class WorseEveryEpoch(Callback):
    def on_epoch_end(self, trainer, metrics):
        # pretend validation got worse each epoch after the first
        if metrics[M.EPOCH] > 1:
            trainer.best_val_loss = -math.inf


def test_early_stopping_after_patience(tiny_config):
    _, result = fit(tiny_config(epochs=10, early_stopping_patience=2), callbacks=[WorseEveryEpoch()])
    assert result.status == "early_stopped"
    assert result.epochs_completed < 10


def test_rerun_of_an_early_stopped_run_is_finished_not_one_epoch_longer(tiny_config, workspace,
                                                                         capsys):
    """Each rerun of an early-stopped run used to train one more epoch (4, then 5, ...): the
    checkpoint's count of flat epochs already meets the patience, so the run is finished."""
    config = tiny_config(epochs=10, early_stopping_patience=2)
    _, first = fit(config, workspace, [WorseEveryEpoch()])
    assert first.status == "early_stopped" and first.epochs_completed == 4
    files = [f.path.name for f in CheckpointManager(workspace.run_dir("tiny")).files()]
    capsys.readouterr()
    for _ in range(2):
        trainer = prepare(config, workspace).trainer([WorseEveryEpoch()], progress=False)
        trainer.resume()  # as the notebook's set-up cell does, before fit()
        assert trainer.finished and trainer.stopped_early
        again = trainer.fit()
        assert (again.status, again.epochs_completed, again.global_step) == (
            "already_finished", 4, first.global_step)
        out = capsys.readouterr().out
        assert out.count("already finished its 4 epochs (early stopping: val loss had not "
                         "improved for 2 epochs") == 1
        assert "nothing to train. Raise early_stopping_patience" in out and "Plan:" not in out
    assert [f.path.name for f in CheckpointManager(workspace.run_dir("tiny")).files()] == files

    # A history that lost the run's row records it again as what it was, not "completed".
    from utils.training.experiment_db import ExperimentDB
    from utils.training.run import TrainingSession

    with ExperimentDB(workspace.db_path, verbose=False) as db:
        session = TrainingSession.create(config, workspace, db=db, progress=False,
                                         verbose=False, live_plot=False)
        assert session.fit().status == "already_finished"
        assert db.get_run(session.tracker.run_id)["status"] == M.EARLY_STOPPED

    # More patience is a way to train on: the run continues from its checkpoint.
    _, longer = fit(config.replace(early_stopping_patience=3), workspace)
    assert longer.epochs_completed > 4 and longer.status != "already_finished"


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
    from utils.training.training_result import say_sample

    config = tiny_config(vocab_size=257, synthetic_tokens=3000, epochs=1, sample_tokens=12,
                         sample_prompt="ab")
    prepared = prepare(config)
    trainer = prepared.trainer(progress=False)
    trainer.tokenizer = ByteTokenizer()
    rng_before = torch.get_rng_state()
    say_sample(trainer)
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


def test_a_multi_process_launch_without_torchrun_is_refused_loudly(tiny_config, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match=r"RANK, MASTER_ADDR, MASTER_PORT is not: .*torchrun"):
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
