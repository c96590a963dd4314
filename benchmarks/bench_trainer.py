"""Tokens/s of our Trainer (with the tracker and live plot attached) against a bare loop.

The bare loop is the floor any trainer pays: forward, loss, backward, clip, AdamW step, one host
sync per step. The difference is what our loop's features cost. Contenders alternate and we
report medians, because on a shared 2-core machine another process can slow one run by 20%.

    python benchmarks/bench_trainer.py [--steps 40] [--rounds 3] [--precision auto]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from utils.training.checkpoints import seed_everything
from utils.training.hardware import choose_precision, device_description
from utils.training.live_plotting import LivePlotter
from utils.training.metrics_tracker import MetricsTracker
from utils.training.run import prepare
from utils.training.training_config import TrainingConfig


def config(steps: int, precision: str) -> TrainingConfig:
    # 4 layers x 256 wide, block 256, batch 16: the shape FACTS.md measured a bare loop on.
    tokens = steps * 16 * 256 + 300
    return TrainingConfig(
        run_name="bench", data_source="synthetic", vocab_size=256, synthetic_tokens=int(tokens / 0.9),
        n_layers=4, n_heads=4, d_model=256, block_size=256, batch_size=16, epochs=1,
        precision=precision, sample_tokens=0, eval_max_batches=1, resume="never",
    ).validate()


def bare_loop(prepared, steps: int, precision: str) -> float:
    model, device = prepared.model, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    prec = choose_precision(precision, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    batches = iter(prepared.train_loader)
    x, y = next(batches)

    def step(x, y):
        with torch.autocast(device.type, dtype=prec.autocast_dtype,
                            enabled=prec.autocast_dtype is not None):
            logits = model(x.to(device))
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.to(device).reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    step(x, y)  # warm-up
    started = time.perf_counter()
    for _ in range(steps - 2):
        x, y = next(batches)
        step(x, y)
    return (steps - 2) * x.numel() / (time.perf_counter() - started)


def our_trainer(prepared, steps: int) -> float:
    """A real one-epoch fit (progress bar, tracker, live plot, per-step callbacks); tokens/s as
    the trainer reports it: training time only, evaluation excluded, first step included."""
    callbacks = [MetricsTracker(track_gpu=True), LivePlotter(live=False)]
    trainer = prepared.trainer(callbacks, progress=True, verbose=False)
    result = trainer.fit()
    return result.history[0]["tokens_per_sec"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    cfg = config(args.steps, args.precision)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"{device_description(device)}; precision {choose_precision(args.precision, device)}")
    print(f"GPT 4x256, block 256, batch 16; {args.steps} steps per measurement, "
          f"{args.rounds} alternating rounds")
    results: dict[str, list[float]] = {"bare loop": [], "our Trainer + tracker + plot": []}
    for _ in range(args.rounds):
        seed_everything(0)
        results["bare loop"].append(bare_loop(prepare(cfg), args.steps, args.precision))
        seed_everything(0)
        results["our Trainer + tracker + plot"].append(our_trainer(prepare(cfg), args.steps))
    base = statistics.median(results["bare loop"])
    for name, values in results.items():
        median = statistics.median(values)
        print(f"  {name:30s} {median:10,.0f} tok/s  ({median / base:.1%} of the bare loop)")


if __name__ == "__main__":
    main()
