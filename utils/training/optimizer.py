"""AdamW with the right parameter groups, and the learning-rate schedule.

Kept apart from the loop so the schedule can be plotted, tested and reasoned about on its own.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .training_config import TrainingConfig


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, floor_ratio: float) -> float:
    """Linear warmup to ``peak``, then cosine decay to ``peak * floor_ratio`` at the last step."""
    if step < warmup_steps:
        return peak * (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return peak * (floor_ratio + (1.0 - floor_ratio) * cosine)


def build_optimizer(model: nn.Module, config: TrainingConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW where only matrices (weights, embeddings) decay: decaying norm gains and biases
    pulls them towards zero for no regularisation benefit."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        fused=device.type == "cuda",  # one kernel for the whole update on GPU
    )
