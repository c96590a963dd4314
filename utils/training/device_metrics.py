"""Numbers that stay on the device until the loop asks for them.

A ``.item()`` or ``.tolist()`` waits for every queued kernel: on a GPU running a small model,
one such wait per optimizer step costs measurable time (nanoGPT reads only every
``log_interval`` steps). So the loop keeps each step's loss and gradient norm as device tensors
(``PendingStep``) and reads a batch of them in one ``.tolist()``; evaluation sums its metrics on
the device (``ValidationMetrics``) and reads them once at the end.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torchmetrics.aggregation import SumMetric

from . import metric_names as M

__all__ = ["PendingStep", "ValidationMetrics", "guarded_step", "poison_gradients", "read_steps"]


class PendingStep(NamedTuple):
    """One optimizer step whose loss and gradient norm are still on the device."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    step: int  # the global step it made (1-based)
    epoch: int  # 1-based
    learning_rate: float
    tokens: int
    batch_before: int  # batch_in_epoch before the step: where a diverged run stands


def read_steps(pending: list[PendingStep], epoch_acc: dict[str, float], eval_acc: dict[str, float]
               ) -> tuple[list[dict[str, float]], tuple[PendingStep, float] | None]:
    """Every pending step's loss and gradient norm in one host-device sync, added in step
    order to the epoch's and the evaluation's sums (so they equal a read per step, bit for
    bit); (the steps' metric rows, (the first step with a non-finite loss, its loss) or None).
    Rows stop before that step: it and every later one are not counted."""
    if not pending:
        return [], None
    values = torch.stack([t.float() for p in pending for t in (p.loss, p.grad_norm)]).tolist()
    rows: list[dict[str, float]] = []
    for i, p in enumerate(pending):
        loss, norm = values[2 * i], values[2 * i + 1]
        if not math.isfinite(loss):
            return rows, (p, loss)
        for acc in (epoch_acc, eval_acc):
            acc["loss_sum"] += loss * p.tokens
            acc["tokens"] += p.tokens
        epoch_acc["grad_norm"] = norm
        rows.append({M.STEP: p.step, M.EPOCH: p.epoch, M.BATCH_LOSS: loss,
                     M.LEARNING_RATE: p.learning_rate, M.GRAD_NORM: norm, M.TOKENS: p.tokens})
    return rows, None


def guarded_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 skip: torch.Tensor) -> None:
    """Step unless the device-side flag ``skip`` is set, without reading it on the host where
    the optimizer allows: a fused AdamW takes a ``found_inf`` tensor and skips its own update
    (step count included), the mechanism GradScaler uses. fp16 runs go through the scaler,
    whose found-inf check already skips steps with non-finite gradients (the trainer poisons
    the gradients of a diverged step so it does). A non-fused optimizer has no such input:
    the flag is read, which on a CPU, where such optimizers run, costs nothing."""
    if scaler.is_enabled():
        scaler.step(optimizer)
        scaler.update()
    elif getattr(optimizer, "_step_supports_amp_scaling", False):
        optimizer.grad_scale, optimizer.found_inf = None, skip.float()  # type: ignore[attr-defined]
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf  # type: ignore[attr-defined]
    elif not bool(skip):
        optimizer.step()


def poison_gradients(optimizer: torch.optim.Optimizer, diverged: torch.Tensor) -> None:
    """Make every gradient NaN where ``diverged`` holds (times 1.0, exactly unchanged, where
    not), so GradScaler's found-inf path skips the update on the device."""
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if grads:
        factor = torch.where(diverged, torch.tensor(math.nan, device=diverged.device),
                             torch.tensor(1.0, device=diverged.device))
        torch._foreach_mul_(grads, factor.to(grads[0].dtype))


class ValidationMetrics:
    """Validation loss (token-weighted mean), perplexity and next-token accuracy, summed on the
    device by torchmetrics and read once. The loss is summed in float64, batch by batch, as
    the loop always did, so its value is unchanged to the last bit; NaN checks are off because
    each would read the device per batch (a NaN loss shows in the result anyway)."""

    def __init__(self, device: torch.device) -> None:
        def total() -> SumMetric:
            return SumMetric(nan_strategy="disable").set_dtype(torch.float64).to(device)

        self.loss_sum, self.tokens, self.correct = total(), total(), total()
        self.batches = 0

    def update(self, loss_sum: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
               ignore_index: int) -> None:
        targets = targets.to(logits.device)
        mask = targets != ignore_index
        self.loss_sum.update(loss_sum.double())
        self.tokens.update(mask.sum().double())
        self.correct.update(((logits.argmax(-1) == targets) & mask).sum().double())
        self.batches += 1

    def compute(self) -> dict[str, float]:
        if not self.batches:
            return {M.VAL_LOSS: math.nan, M.VAL_PERPLEXITY: math.nan, M.VAL_ACCURACY: math.nan}
        loss_sum, tokens, correct = torch.stack(
            [m.compute() for m in (self.loss_sum, self.tokens, self.correct)]).tolist()
        count = int(tokens)
        loss = loss_sum / count if count else math.nan
        return {M.VAL_LOSS: loss, M.VAL_PERPLEXITY: M.perplexity(loss),
                M.VAL_ACCURACY: correct / count if count else math.nan}
