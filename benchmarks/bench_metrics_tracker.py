"""What MetricsTracker costs per optimizer step, with each sink (none, SQLite, offline W&B).

A small GPT on Colab takes 20-100 ms per step; the tracker should stay in the tens of
microseconds so it never shows up in tokens/s. Each number is the median of --repeat tries.

    python benchmarks/bench_metrics_tracker.py [--steps 20000] [--repeat 3] [--no-wandb]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.training import metric_names as M  # noqa: E402
from utils.training import metrics_tracker  # noqa: E402
from utils.training.metrics_tracker import MetricsTracker  # noqa: E402


def per_step_us(make_tracker, steps: int, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        tracker = make_tracker()
        start = time.perf_counter()
        for step in range(1, steps + 1):
            tracker.on_step_end(None, {M.STEP: step, M.EPOCH: 1, M.BATCH_LOSS: 2.0,
                                       M.LEARNING_RATE: 3e-4, M.GRAD_NORM: 0.8, M.TOKENS: 4096})
        tracker.flush()
        times.append((time.perf_counter() - start) / steps * 1e6)
        finish = getattr(tracker.wandb_run, "finish", None)
        if finish is not None:
            finish()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-wandb", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-tracker-"))

    print(f"{args.steps:,} steps, median of {args.repeat}")
    us = per_step_us(lambda: MetricsTracker(track_gpu=False), args.steps, args.repeat)
    print(f"  memory only:        {us:6.1f} us/step")

    from utils.training.experiment_db import ExperimentDB

    db = ExperimentDB(tmp / "bench.db")

    def with_db() -> MetricsTracker:
        return MetricsTracker(db, db.start_run(name="bench"), track_gpu=False)

    us = per_step_us(with_db, args.steps, args.repeat)
    print(f"  + SQLite (flush 200): {us:4.1f} us/step")
    if not args.no_wandb:
        os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true",
                          WANDB_CACHE_DIR=str(tmp / "wandb-cache"))
        import wandb

        def with_wandb() -> MetricsTracker:
            run = wandb.init(mode="offline", dir=str(tmp), project="bench")
            return MetricsTracker(db, db.start_run(name="bench"), wandb_run=run, track_gpu=False)

        us = per_step_us(with_wandb, args.steps, args.repeat)
        print(f"  + offline W&B:      {us:6.1f} us/step (batch rows at most every "
              f"{metrics_tracker.WANDB_BATCH_SECONDS} s)")
        throttle, metrics_tracker.WANDB_BATCH_SECONDS = metrics_tracker.WANDB_BATCH_SECONDS, 0.0
        us = per_step_us(with_wandb, args.steps, args.repeat)
        metrics_tracker.WANDB_BATCH_SECONDS = throttle
        print(f"  + offline W&B:      {us:6.1f} us/step (every step: why the tracker throttles)")
    db.close()


if __name__ == "__main__":
    main()
