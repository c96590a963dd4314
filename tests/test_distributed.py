"""The same config under torchrun: 2 CPU processes on gloo, against one process.

Each launch is a real `torchrun --standalone` (through `python -m torch.distributed.run`, which is
what the `torchrun` script runs), started from an empty folder where only PYTHONPATH finds the
library. tests/ddp_worker.py is `python -m utils.training` plus the instruments the checks need.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from utils.training.experiment_db import ExperimentDB

REPO = Path(__file__).resolve().parents[1]
WORKER = str(REPO / "tests" / "ddp_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# 2,430 train tokens in blocks of 16: 151 blocks; a micro-batch is 8 sequences (4 per rank),
# a step 2 of them (accumulation: DDP syncs once, on the second), 10 steps an epoch.
CONFIG = dict(run_name="ddp", seed=7, data_source="synthetic", vocab_size=16, synthetic_order=1,
              synthetic_tokens=2700, n_layers=1, n_heads=2, d_model=32, block_size=16,
              grad_accum_steps=2, epochs=2, learning_rate=3e-3, warmup_ratio=0.1,
              precision="fp32", sample_tokens=0, dropout=0.0, checkpoint_every_steps=4)


def _launch(tmp: Path, command: list[str], batch_size: int, workspace: Path,
            sharding: str = "ddp", settings: dict | None = None,
            **env: str) -> subprocess.CompletedProcess:
    config = tmp / f"config-{batch_size}-{sharding}.json"
    config.write_text(json.dumps({**CONFIG, "batch_size": batch_size, "sharding": sharding,
                                  **(settings or {})}))
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([*command, "train", "--config", str(config), "--workspace",
                           str(workspace), "--no-progress"], cwd=tmp, env=environment,
                          capture_output=True, text=True, timeout=300)


def _final_weights(workspace: Path) -> dict[str, torch.Tensor]:
    newest = sorted((workspace / "checkpoints" / "ddp").glob("step-*.pt"))[-1]
    return torch.load(newest, map_location="cpu", weights_only=False)["model"]


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        scale = b[name].abs().max().clamp_min(1e-12)
        assert ((a[name] - b[name]).abs().max() / scale).item() < 1e-4, name


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """One process, batch 8: the global batch of 2 ranks x 4, uninterrupted."""
    tmp = tmp_path_factory.mktemp("one")
    done = _launch(tmp, [sys.executable, "-m", "utils.training"], 8, tmp / "ws")
    assert done.returncode == 0, done.stderr
    return _final_weights(tmp / "ws")


def test_two_ranks_train_like_one_process_and_only_rank_0_writes(tmp_path, reference):
    done = _launch(tmp_path, [*TORCHRUN, WORKER], 4, tmp_path / "ws",
                   DDP_AUDIT=str(tmp_path / "audit"), DDP_DUMP=str(tmp_path / "dump"))
    assert done.returncode == 0, done.stderr
    ranks = [torch.load(tmp_path / "dump" / f"rank{r}.pt") for r in (0, 1)]
    for name in ranks[0]:  # DDP keeps the replicas identical, bit for bit
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    _assert_close(_final_weights(tmp_path / "ws"), reference)
    # Rank 1 read the token cache and the checkpoint folder but wrote nothing in the workspace.
    assert (tmp_path / "audit" / "rank1.txt").read_text() == ""
    with ExperimentDB(tmp_path / "ws" / "experiments.db") as db:
        runs = db.list_runs()
    assert len(runs) == 1 and runs.iloc[0]["status"] == "completed"
    assert runs.iloc[0]["world_size"] == 2
    assert "Global batch: 4 x 2 accumulation x 2 ranks = 16 sequences" in done.stdout
    assert done.stdout.count("epoch 2/2 |") == 1  # rank 0 alone prints


@pytest.mark.parametrize("first, then", [("two", "one"), ("one", "two")])
def test_a_checkpoint_moves_between_two_ranks_and_one(tmp_path, reference, first, then):
    """Stopped at step 7 (its checkpoint is step 4's, mid-epoch), resumed on the other layout
    with the same global batch: the data order carries on, and the run ends where an
    uninterrupted one does. The resume is the README's plain command."""
    layouts = {"two": ([*TORCHRUN, WORKER], 4), "one": ([sys.executable, WORKER], 8)}
    command, batch = layouts[first]
    stopped = _launch(tmp_path, command, batch, tmp_path / "ws", DDP_FAIL_AT_STEP="7")
    assert stopped.returncode != 0 and "injected failure at step 7" in stopped.stderr
    command, batch = layouts[then]
    command = [*command[:-1], "-m", "utils.training"]  # torchrun ... -m utils.training
    resumed = _launch(tmp_path, command, batch, tmp_path / "ws")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from epoch 1, step 4 (8/" in resumed.stdout
    assert "starts again" not in resumed.stdout
    _assert_close(_final_weights(tmp_path / "ws"), reference)


def test_fsdp_on_two_ranks_trains_like_one_process(tmp_path, reference):
    """sharding=fsdp: each rank holds half of every weight, gradient and AdamW moment; the run
    ends where one process does, and its checkpoints hold the whole model (rank 0 writes)."""
    done = _launch(tmp_path, [*TORCHRUN, WORKER], 4, tmp_path / "ws", "fsdp",
                   DDP_AUDIT=str(tmp_path / "audit"), DDP_DUMP=str(tmp_path / "dump"))
    assert done.returncode == 0, done.stderr
    final = _final_weights(tmp_path / "ws")
    _assert_close(final, reference)
    shards = [torch.load(tmp_path / "dump" / f"rank{r}.pt") for r in (0, 1)]
    for name in ("tok_emb.weight", "blocks.0.mlp.fc.weight"):  # each rank holds half the rows
        assert shards[0][name].shape[0] == shards[1][name].shape[0] == final[name].shape[0] // 2
        assert torch.equal(torch.cat([shards[0][name], shards[1][name]]), final[name])
    assert (tmp_path / "audit" / "rank1.txt").read_text() == ""
    assert "16 sequences per step (FSDP: the model sharded over the ranks)" in done.stdout
    assert done.stdout.count("epoch 2/2 |") == 1


def test_fsdp_evaluates_uneven_shards_and_samples_like_one_process(tmp_path):
    """17 validation blocks: rank 0 holds 3 batches, rank 1 two. Under FSDP a forward pass is a
    collective, so rank 1 runs a third on a stand-in batch that counts for nothing: the
    validation loss is the one-process loss. Every rank generates the epoch's sample (its
    forward passes are collectives too); rank 0 alone prints it."""
    settings = {"val_fraction": 0.105, "epochs": 1, "sample_tokens": 4}
    losses = []
    for command, batch, sharding in (([sys.executable, WORKER], 8, "ddp"),
                                     ([*TORCHRUN, WORKER], 4, "fsdp")):
        done = _launch(tmp_path, command, batch, tmp_path / sharding, sharding, settings)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("sample after epoch 1") == 1
        newest = sorted((tmp_path / sharding / "checkpoints" / "ddp").glob("step-*.pt"))[-1]
        losses.append(torch.load(newest, weights_only=False)["history"][-1]["val/loss"])
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


@pytest.mark.parametrize("first, then", [("fsdp", "one"), ("one", "fsdp")])
def test_a_checkpoint_moves_between_fsdp_and_one_process(tmp_path, reference, first, then):
    """Checkpoints have one format: an FSDP run stopped at step 7 resumes in one process, and
    a one-process checkpoint resumes sharded; both end on the uninterrupted run's weights."""
    layouts = {"fsdp": ([*TORCHRUN, WORKER], 4, "fsdp"), "one": ([sys.executable, WORKER], 8, "ddp")}
    command, batch, sharding = layouts[first]
    stopped = _launch(tmp_path, command, batch, tmp_path / "ws", sharding, DDP_FAIL_AT_STEP="7")
    assert stopped.returncode != 0 and "injected failure at step 7" in stopped.stderr
    command, batch, sharding = layouts[then]
    resumed = _launch(tmp_path, command, batch, tmp_path / "ws", sharding)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from epoch 1, step 4 (8/" in resumed.stdout
    _assert_close(_final_weights(tmp_path / "ws"), reference)


def test_two_machines_are_the_same_command_with_a_rendezvous(tmp_path, reference):
    """Two "machines" (two torchrun launches of one process each), node 0 at 127.0.0.1 as the
    master, sharing one workspace: the README's multi-node form."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launches = []
    for node in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                   "--nproc_per_node", "1", "--node-rank", str(node), "--master-addr",
                   "127.0.0.1", "--master-port", str(port), "-m", "utils.training"]
        launches.append(threading.Thread(target=lambda c=command, n=node: done.__setitem__(
            n, _launch(tmp_path, c, 4, tmp_path / "ws"))))
    done: dict[int, subprocess.CompletedProcess] = {}
    for launch in launches:
        launch.start()
    for launch in launches:
        launch.join()
    assert [done[n].returncode for n in (0, 1)] == [0, 0], done[0].stderr + done[1].stderr
    _assert_close(_final_weights(tmp_path / "ws"), reference)


def test_an_error_on_rank_1_ends_both_ranks_and_names_rank_1(tmp_path):
    started = time.monotonic()
    done = _launch(tmp_path, [*TORCHRUN, WORKER], 4, tmp_path / "ws",
                   DDP_FAIL_AT_STEP="3", DDP_FAIL_RANK="1",
                   TRANSFORMER_TRAINING_DIST_TIMEOUT_MINUTES="1")
    assert time.monotonic() - started < 60
    assert done.returncode != 0
    assert "error on rank 1 of 2: RuntimeError: injected failure at step 3" in done.stderr


# ---------------------------------------------------------------------- the pieces, in-process


def test_the_validation_shards_hold_every_block_once():
    from utils.training.data.loaders import ResumableBatchSampler

    shards = [ResumableBatchSampler(11, 2, seed=0, shuffle=False, rank=r, world_size=3, pad=False)
              for r in range(3)]
    items = sorted(int(i) for s in shards for batch in s for i in batch)
    assert items == list(range(11)) and [len(s) for s in shards] == [2, 2, 2]


@pytest.mark.parametrize("was, now, resumes_at", [
    ((4, 2, 10), (8, 1), 10),  # the same global batch on one process: exact
    ((8, 1, 10), (4, 2), 10),
    ((8, 1, 10), (8, 2), 5),  # twice the global batch: 80 items are 5 of its batches
    ((8, 1, 9), (8, 2), None),  # 72 items fall inside a batch of 16: the epoch restarts
])
def test_the_data_order_carries_over_between_rank_counts(was, now, resumes_at):
    from utils.training.checkpoints import restore_data_order
    from utils.training.data.loaders import ResumableBatchSampler

    (batch, ranks, start), (new_batch, new_ranks) = was, now
    saved = ResumableBatchSampler(400, batch, seed=3, world_size=ranks)
    saved.set_epoch(1, start_batch=start)
    sampler = ResumableBatchSampler(400, new_batch, seed=3, world_size=new_ranks)
    changed = restore_data_order(sampler, saved.state_dict())
    if resumes_at is None:
        assert changed == ["ranks x batch_size 1 x 8 -> 2 x 8, mid-batch"]
    else:
        assert changed == [] and (sampler.epoch, sampler.start_batch) == (1, resumes_at)


def test_the_dashboard_names_the_ranks():
    import pandas as pd

    from utils.training.dashboard import TrainingDashboard

    summary = pd.DataFrame({"epoch": [1], "train/loss": [2.0], "val/loss": [1.9]})
    assert "batch 4 x 2 ranks (DDP)" in TrainingDashboard(
        summary, config={"batch_size": 4}, world_size=2).title()
    assert "ranks" not in TrainingDashboard(summary, config={"batch_size": 4}).title()


def test_the_export_section_prints_this_runs_multi_gpu_command(tiny_config, tmp_path):
    from utils.training.notebook import multi_gpu_command
    from utils.training.workspace import Workspace

    workspace = Workspace.setup(tmp_path / "ws", verbose=False)
    text = multi_gpu_command(tiny_config(run_name="my-run"), workspace)
    assert ("torchrun --standalone --nproc_per_node N -m utils.training train --config "
            "WORKSPACE/configs/my-run.json --workspace WORKSPACE") in text
    assert str(workspace.root) in text and "this run takes 8 sequences a step" in text
    assert "--set batch_size=8/N." in text


def test_only_train_runs_under_torchrun(monkeypatch, capsys):
    from utils.training.__main__ import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["search", "--trials", "1"]) == 2
    assert "under torchrun only `train` runs; `search` runs in one process" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")
    assert main(["runs"]) == 2 and capsys.readouterr().err == ""  # rank 0 says it once
