from __future__ import annotations

import os

import pytest
import torch

# Tests never reach the network, and W&B / HF must not try.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Two cores: one torch thread per test keeps timings stable when pytest shares the machine.
torch.set_num_threads(1)


@pytest.fixture
def workspace(tmp_path):
    from utils.training.workspace import Workspace

    return Workspace.setup(tmp_path / "ws", mount_drive=False, verbose=False)


@pytest.fixture
def tiny_config():
    """A model and data small enough that a whole fit takes about a second."""
    from utils.training.training_config import TrainingConfig

    def make(**changes):
        base = dict(
            run_name="tiny", seed=7, data_source="synthetic", vocab_size=16, synthetic_order=1,
            synthetic_tokens=6000, n_layers=1, n_heads=2, d_model=32, block_size=16,
            batch_size=8, epochs=4, learning_rate=3e-3, warmup_ratio=0.1, precision="fp32",
            sample_tokens=0, checkpoint_every_minutes=60.0, keep_checkpoints=3,
        )
        base.update(changes)
        return TrainingConfig(**base).validate()

    return make
