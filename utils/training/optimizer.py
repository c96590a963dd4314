"""AdamW with the right parameter groups, and the learning-rate schedule.

Kept apart from the loop so the schedule can be plotted, tested and reasoned about on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


@dataclass(frozen=True)
class StepPlan:
    """How many optimizer steps a run takes, and which budget decided it."""

    total_steps: int
    warmup_steps: int
    budget: str  # "epochs", "steps" or "tokens": the one that ends the run first
    budgeted: bool  # max_steps or max_tokens is set: the run stops at total_steps
    tokens_per_step: int  # the global batch's: every rank's, under DDP

    def describe(self, config: TrainingConfig, steps_per_epoch: int) -> str:
        """One line for the plan: which budget won, against what."""
        if not self.budgeted:
            return f"Budget: {config.epochs} epochs ({self.total_steps:,} steps)"
        offers = {"steps": config.max_steps,
                  "tokens": math.ceil(config.max_tokens / self.tokens_per_step),
                  "epochs": config.epochs * steps_per_epoch}
        others = ", ".join(f"{name} {steps:,}" for name, steps in offers.items()
                           if name != self.budget and (steps or name == "epochs"))
        what = {"steps": f"max_steps={config.max_steps:,}",
                "tokens": f"max_tokens={config.max_tokens:,}",
                "epochs": f"epochs={config.epochs}"}[self.budget]
        return (f"Budget: {what} decides the run's length: {self.total_steps:,} steps "
                f"(~{self.total_steps / steps_per_epoch:.2f} epochs; the others offer {others})")


def plan_steps(config: TrainingConfig, steps_per_epoch: int, world_size: int = 1) -> StepPlan:
    """The run's real number of optimizer steps: the smallest of max_steps, max_tokens (in steps
    of ``tokens_per_step`` times the ``world_size`` ranks, rounded up) and ``epochs * steps_per_epoch``. Warmup and cosine span
    exactly it, so the learning rate reaches its floor at the last step whichever budget wins.
    Without a step or token budget this is today's epoch arithmetic, unchanged."""
    offers = {"epochs": config.epochs * steps_per_epoch}
    if config.max_steps:
        offers["steps"] = config.max_steps
    tokens_per_step = config.tokens_per_step * world_size
    if config.max_tokens:
        offers["tokens"] = math.ceil(config.max_tokens / tokens_per_step)
    # On a tie a named budget wins over epochs: it is what the person asked for.
    budget = min(offers, key=lambda name: (offers[name], name == "epochs"))
    total = offers[budget]
    return StepPlan(total, round(config.warmup_ratio * total), budget, len(offers) > 1,
                    tokens_per_step)


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
