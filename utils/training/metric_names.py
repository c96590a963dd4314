"""Metric names, defined once.

The trainer emits them, the tracker stores them, W&B and the dashboard read them: a typo in
one place would silently produce an empty panel, so every consumer imports these constants.
"""

from __future__ import annotations

# Per optimizer step (what the trainer hands to ``Callback.on_step_end``).
STEP = "step"
EPOCH = "epoch"
BATCH_LOSS = "batch/loss"
LEARNING_RATE = "learning_rate"
GRAD_NORM = "grad_norm"  # before clipping: the number that tells you clipping is active
TOKENS = "tokens"

# Per epoch (``Callback.on_epoch_end`` and one row of ``MetricsTracker.get_summary()``).
TRAIN_LOSS = "train/loss"
VAL_LOSS = "val/loss"
TRAIN_PERPLEXITY = "train/perplexity"
VAL_PERPLEXITY = "val/perplexity"
EPOCH_DURATION = "epoch_duration"  # seconds of training in the epoch, evaluation excluded
TOKENS_PER_SEC = "tokens_per_sec"
MFU = "mfu"  # model FLOPs utilisation, 0..1; absent where the GPU's peak is unknown

EPOCH_COLUMNS = (
    EPOCH,
    TRAIN_LOSS,
    VAL_LOSS,
    TRAIN_PERPLEXITY,
    VAL_PERPLEXITY,
    LEARNING_RATE,
    GRAD_NORM,
    EPOCH_DURATION,
    TOKENS_PER_SEC,
)

# exp(loss) overflows a float64 at loss ~709; long before that a perplexity is meaningless.
MAX_LOG_PERPLEXITY = 50.0


def perplexity(loss: float) -> float:
    """exp(loss), capped so a diverged run reports a huge number instead of inf/overflow."""
    import math

    if math.isnan(loss):
        return math.nan
    return math.exp(min(loss, MAX_LOG_PERPLEXITY))
