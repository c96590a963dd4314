"""Config -> data -> model -> Trainer: the one path that the CLI, the notebook and the search share.

Keeping it in one place means a fix to the order of operations (seed before the model is built,
vocab from the tokenizer, config saved before training) reaches every entry point at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .checkpoints import seed_everything
from .data import TokenData, load_token_data, make_dataloaders
from .models import build_model
from .trainer import Callback, Trainer, TrainingResult
from .training_config import TrainingConfig
from .workspace import Workspace


@dataclass
class Prepared:
    """Everything the trainer needs, built but not yet run (the notebook shows it between cells)."""

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
            f"{len(self.data.val_ids):,} val tokens, vocab {self.data.tokenizer.vocab_size}",
            f"Model: {type(self.model).__name__}, {n_params / 1e6:.2f}M parameters",
        ]
        if self.data.known_entropy is not None:
            lines.append(f"Best achievable loss (entropy of the data): {self.data.known_entropy:.4f}")
        return "\n".join(lines)


def prepare(config: TrainingConfig, workspace: Workspace | None = None) -> Prepared:
    """Validate the config, save it to the workspace, load data, build loaders and the model."""
    config.validate()
    if workspace is not None:
        config.save(workspace.configs)
    data = load_token_data(config)
    train_loader, val_loader = make_dataloaders(
        data.train_ids, data.val_ids, config.block_size, config.batch_size, config.seed,
        pin_memory=torch.cuda.is_available(),
    )
    # Seed right before building so the initial weights depend on the seed alone, not on how
    # much randomness data loading happened to use.
    seed_everything(config.seed)
    model = build_model(config, vocab_size=data.tokenizer.vocab_size)
    return Prepared(config, workspace, data, model, train_loader, val_loader)


def train(
    config: TrainingConfig,
    workspace: Workspace | None = None,
    callbacks: Sequence[Callback] = (),
    **trainer_kwargs: Any,
) -> TrainingResult:
    prepared = prepare(config, workspace)
    print(prepared.describe())
    return prepared.trainer(callbacks, **trainer_kwargs).fit()
