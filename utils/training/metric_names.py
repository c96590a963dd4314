"""Metric names and run statuses, defined once.

The trainer emits them, the tracker stores them, W&B and the dashboard read them: a typo in
one place would silently produce an empty panel (or a run no filter finds), so every consumer
imports these constants.
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
VAL_ACCURACY = "val/accuracy"  # next-token accuracy: the share of targets the argmax predicts
EPOCH_DURATION = "epoch_duration"  # seconds of training in the epoch, evaluation excluded
TOKENS_PER_SEC = "tokens_per_sec"
MFU = "mfu"  # model FLOPs utilisation, 0..1; absent where the GPU's peak is unknown

# Names logged per optimizer step (learning_rate and grad_norm are logged per epoch too).
STEP_METRICS = (BATCH_LOSS, LEARNING_RATE, GRAD_NORM, TOKENS)

EPOCH_COLUMNS = (
    EPOCH,
    TRAIN_LOSS,
    VAL_LOSS,
    TRAIN_PERPLEXITY,
    VAL_PERPLEXITY,
    VAL_ACCURACY,
    LEARNING_RATE,
    GRAD_NORM,
    EPOCH_DURATION,
    TOKENS_PER_SEC,
)

# System readings, once per epoch (``MetricsTracker.log_epoch``). The gpu/ columns exist only when
# a GPU does: a CPU run's summary has no gpu/ column at all rather than a column of zeros.
GPU_UTILIZATION = "gpu/utilization"  # percent of time a kernel ran, averaged over the epoch
GPU_MEMORY_USED_GB = "gpu/memory_used_gb"  # whole device, every process (GiB), as nvidia-smi shows
GPU_MEMORY_TOTAL_GB = "gpu/memory_total_gb"
GPU_MAX_MEMORY_ALLOCATED_GB = "gpu/max_memory_allocated_gb"  # this process's tensors, epoch peak
GPU_TEMPERATURE_C = "gpu/temperature_c"
GPU_POWER_W = "gpu/power_w"  # averaged over the epoch
CPU_RSS_GB = "cpu/rss_gb"  # resident memory of this process (GiB): what Colab's RAM limit counts

GPU_COLUMNS = (
    GPU_UTILIZATION,
    GPU_MEMORY_USED_GB,
    GPU_MEMORY_TOTAL_GB,
    GPU_MAX_MEMORY_ALLOCATED_GB,
    GPU_TEMPERATURE_C,
    GPU_POWER_W,
)

# One row of ``MetricsTracker.batch_history()``.
BATCH_COLUMNS = (STEP, EPOCH, BATCH_LOSS, LEARNING_RATE, GRAD_NORM, TOKENS)

# Run statuses: the experiment database's ``runs.status`` (and ``python -m utils.training runs``).
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
EARLY_STOPPED = "early_stopped"
STOPPED = "stopped"  # a budget (steps, tokens, time) ended the run
PRUNED = "pruned"  # a search trial the pruner stopped
DIVERGED = "diverged"
INTERRUPTED = "interrupted"  # stopped by a person, or its process is gone
STATUSES = (RUNNING, COMPLETED, FAILED, EARLY_STOPPED, STOPPED, PRUNED, DIVERGED, INTERRUPTED)
# Statuses of a run that ended without its result: W&B marks these runs failed.
FAILED_STATUSES = (FAILED, DIVERGED, INTERRUPTED)

# exp(loss) overflows a float64 at loss ~709; long before that a perplexity is meaningless.
MAX_LOG_PERPLEXITY = 50.0


def perplexity(loss: float) -> float:
    """exp(loss), capped so a diverged run reports a huge number instead of inf/overflow."""
    import math

    if math.isnan(loss):
        return math.nan
    return math.exp(min(loss, MAX_LOG_PERPLEXITY))
