"""What the live plot costs a 5-minute run, as a share of its wall time (target: under 1%).

Simulates 20 optimizer steps/s for 300 s (6,000 ``on_step_end`` calls) and 5 epoch ends, with
the plotter forced to draw as it would in a notebook (``live=True``: render + PNG encode on
every redraw). The clock is simulated, so the run takes seconds, not minutes; what is measured
is the real time spent inside the plotter's hooks.

    python benchmarks/bench_live_plot.py [--steps-per-sec 20] [--seconds 300] [--epochs 5]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time

from utils.training import live_plotting
from utils.training.live_plotting import LivePlotter


class SimulatedClock:
    """Stands in for time.monotonic inside the plotter so the throttle sees training time pass."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_once(steps_per_sec: float, seconds: float, epochs: int, every_seconds: float,
             max_share: float) -> dict:
    clock = SimulatedClock()
    real_monotonic = live_plotting.time.monotonic
    live_plotting.time.monotonic = clock  # only the plotter's module sees the fake clock
    try:
        plotter = LivePlotter(run_name="bench", every_seconds=every_seconds, live=True,
                              max_share=max_share)
        rng = random.Random(0)
        total_steps = int(steps_per_sec * seconds)
        per_epoch = total_steps // epochs
        spent = 0.0
        worst_step = 0.0
        for step in range(1, total_steps + 1):
            clock.now = step / steps_per_sec
            loss = 2.0 + 6.0 * math.exp(-step / 400) + rng.gauss(0, 0.1)
            metrics = {"step": step, "epoch": (step - 1) // per_epoch + 1, "batch/loss": loss,
                       "learning_rate": 3e-4, "grad_norm": 0.5, "tokens": 8192}
            tick = time.perf_counter()
            plotter.on_step_end(None, metrics)
            took = time.perf_counter() - tick
            spent += took
            worst_step = max(worst_step, took)
            if step % per_epoch == 0:
                epoch = step // per_epoch
                row = {"epoch": epoch, "step": step, "train/loss": loss, "val/loss": loss + 0.05,
                       "train/perplexity": math.exp(loss), "val/perplexity": math.exp(loss + 0.05)}
                tick = time.perf_counter()
                plotter.on_epoch_end(None, row)
                spent += time.perf_counter() - tick
        tick = time.perf_counter()
        plotter.on_train_end(None, None)
        spent += time.perf_counter() - tick
        return {"spent": spent, "draws": plotter.draws, "worst": worst_step}
    finally:
        live_plotting.time.monotonic = real_monotonic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-per-sec", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--every-seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    steps = int(args.steps_per_sec * args.seconds)
    print(f"simulated run: {steps:,} steps over {args.seconds:.0f} s, {args.epochs} epochs, "
          f"redraw at most every {args.every_seconds:g} s")
    # The default plotter caps its own cost (max_share); the uncapped row shows what a redraw
    # every few seconds would cost on this machine without that cap.
    for label, max_share in (("default (cost cap 0.5%)", 0.005), ("uncapped", 0.0)):
        runs = [run_once(args.steps_per_sec, args.seconds, args.epochs, args.every_seconds,
                         max_share) for _ in range(args.repeats)]
        spent = statistics.median(r["spent"] for r in runs)
        draws = statistics.median(r["draws"] for r in runs)
        share = 100 * spent / args.seconds
        verdict = "OK" if share < 1 else "over the 1% target"
        print(f"{label:>24}: {draws:.0f} redraws, {spent:.2f} s plotting "
              f"({1000 * spent / max(draws, 1):.0f} ms/redraw, median of {args.repeats}), "
              f"slowest hook call {1000 * max(r['worst'] for r in runs):.0f} ms; "
              f"share of the run {share:.2f}% -> {verdict}")


if __name__ == "__main__":
    main()
