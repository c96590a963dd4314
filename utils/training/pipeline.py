"""Config -> tokens -> loaders -> model: the part of a run that every entry point shares.

The trainer tests, ``TrainingSession`` (notebook, CLI) and every search trial build through
``prepare``, so the order of operations lives in one place: validate and save the config, load
(cached) tokens, seed, then build the model with the tokenizer's vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .callbacks import Callback
from .checkpoints import seed_everything
from .data import TokenData, load_token_data, load_tokenizer, make_dataloaders
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
    config.validate()
    if workspace is not None:
        config.save(workspace.configs)
    if data is None:
        data = load_token_data(config, workspace, tokenizer=_saved_tokenizer(config, workspace))
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
        data.tokenizer.save(workspace.run_dir(config.run_name) / "tokenizer.json")
    return Prepared(config, workspace, data, model, train_loader, val_loader)


def _saved_tokenizer(config: TrainingConfig, workspace: Workspace | None) -> Any:
    """The tokenizer a run being resumed was trained with, if it has one next to checkpoints."""
    if workspace is None or config.resume == "never":
        return None
    path = workspace.run_dir(config.run_name) / "tokenizer.json"
    if not path.is_file() or not any(path.parent.glob("*.pt")):
        return None
    return load_tokenizer(path)
