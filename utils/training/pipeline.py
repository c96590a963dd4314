"""Config -> tokens -> loaders -> model: the part of a run that every entry point shares.

The trainer tests, ``TrainingSession`` (notebook, CLI) and every search trial build through
``prepare``, so the order of operations lives in one place: validate and save the config, load
(cached) tokens, record what the data fixed (a token cache's tokenizer), seed, then build the
model with the tokenizer's vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .callbacks import Callback
from .checkpoints import TOKENIZER_FILE, load_run_tokenizer, seed_everything
from .data import TokenData, load_token_data, make_dataloaders
from .hardware import validate_for_hardware
from .models import model_from_config
from .trainer import Trainer
from .training_config import TrainingConfig
from .workspace import Workspace


@dataclass
class Prepared:
    """Everything the trainer needs, built but not yet run."""

    config: TrainingConfig
    workspace: Workspace | None
    data: TokenData
    model: nn.Module
    train_loader: Any
    val_loader: Any

    def trainer(self, callbacks: Sequence[Callback] = (), **kwargs: Any) -> Trainer:
        return Trainer(self.config, self.model, self.train_loader, self.val_loader,
                       callbacks=callbacks, workspace=self.workspace,
                       tokenizer=self.data.tokenizer, **kwargs)

    def describe(self) -> str:
        n_params = sum(p.numel() for p in self.model.parameters())
        lines = [
            f"Data: {self.data.source}: {len(self.data.train_ids):,} train / "
            f"{len(self.data.val_ids):,} validation tokens, vocab {self.data.tokenizer.vocab_size:,}",
            f"Model: {type(self.model).__name__}, {n_params / 1e6:.2f}M parameters",
        ]
        if self.data.known_entropy is not None:
            lines.append(f"Best achievable loss (entropy of the data): {self.data.known_entropy:.4f}")
        return "\n".join(lines)


def prepare(
    config: TrainingConfig,
    workspace: Workspace | None = None,
    *,
    trust: bool = False,
    data: TokenData | None = None,
) -> Prepared:
    """Validate and save the config, load tokens (or reuse ``data``), build loaders and model.

    ``trust`` allows running a Gist's ``model.py``; it is an argument, never a config field, so
    a shared config file cannot switch it on."""
    validate_for_hardware(config)  # fp16 on a CPU, a model too big: refused before data loads
    if data is None:
        data = load_token_data(config, workspace, tokenizer=_saved_tokenizer(config, workspace))
    config = record_data_settings(config, data)
    if workspace is not None:
        config.save(workspace.configs)
    train_loader, val_loader = make_dataloaders(
        data.train_ids, data.val_ids, config.block_size, config.batch_size, config.seed,
        pin_memory=torch.cuda.is_available(),
    )
    # Seed right before building so the initial weights depend on the seed alone, not on how
    # much randomness loading the data happened to use.
    seed_everything(config.seed)
    cache_dir = workspace.root / "models" if workspace is not None else None
    model = model_from_config(config, data.tokenizer.vocab_size, trust=trust, cache_dir=cache_dir)
    if workspace is not None:
        # Next to the checkpoints: the run's ids mean nothing without the tokenizer that made them.
        data.tokenizer.save(workspace.run_dir(config.run_name) / TOKENIZER_FILE)
    return Prepared(config, workspace, data, model, train_loader, val_loader)


def record_data_settings(config: TrainingConfig, data: TokenData) -> TrainingConfig:
    """The config with what the data fixed (a token cache's tokenizer and vocab_size), so that
    the saved config, the experiment DB, W&B and run comparisons record what was used."""
    changes = {name: value for name, value in data.settings.items()
               if getattr(config, name) != value}
    if not changes:
        return config
    was = ", ".join(f"{name}={getattr(config, name)!r}" for name in changes)
    now = ", ".join(f"{name}={value!r}" for name, value in changes.items())
    print(f"The cached tokens at {data.cache_path} were made with {now}; the run records that "
          f"(the config said {was}).")
    return config.replace(**changes).validate()


def _saved_tokenizer(config: TrainingConfig, workspace: Workspace | None) -> Any:
    """The tokenizer a run being resumed was trained with (None when it has no checkpoint yet).
    A missing or damaged ``tokenizer.json`` comes back from the copy in its checkpoints."""
    if workspace is None or config.resume == "never":
        return None
    return load_run_tokenizer(workspace.run_dir(config.run_name, create=False))
