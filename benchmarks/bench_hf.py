"""Our Trainer against Hugging Face's `Trainer`, on the same GPT and the same data.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_hf.py [--steps 16] [--rounds 3]
        [--peak-fp32 GFLOPS --peak-bf16 GFLOPS]

Needs the `bench` extra (`transformers`, `accelerate`). The model is our built-in GPT, 4 layers
x 256 wide, vocab 256 (synthetic ids from `data_source="synthetic"`); the Hugging Face side is the
same weights converted to `GPT2LMHeadModel` with `utils.training.models.hf_gpt2` (exact: GPT-2
with zero biases), fed the same blocks.

(a) same settings: batch 16, block 256, bf16 autocast (fp32 where the CPU lacks bf16), AdamW
    lr 1e-3 (betas 0.9/0.95, weight decay 0.1), 5% warmup then cosine to 10%, clip 1.0, the
    same number of steps; no progress bars, no logging sinks.
(b) each one's defaults: only the data, the model, the step count and "no checkpoints, no
    reporting" are given. Ours: `TrainingConfig()` (precision auto, batch 16, lr 3e-4, its
    progress bar). Hugging Face: `TrainingArguments()` (fp32, batch 8 per device, lr 5e-5
    linear, its tqdm bar).

Tokens per second are timed by a global optimizer-step hook from the end of step --warmup to the end of the last
step: evaluation, model building and start-up are left out of both. Every measurement runs in a
fresh process and contenders alternate (ABBA), so background load hits both alike; medians and
ratios are reported. MFU = flops_per_token (the PaLM estimate, `GPT.flops_per_token`) x tokens/s
over the matmul peak of the run's precision, measured by `bench_matmul_peak.py` unless given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = {"n_layers": 4, "n_heads": 4, "d_model": 256, "block_size": 256}
SAME = {"batch_size": 16, "learning_rate": 1e-3, "warmup_ratio": 0.05, "min_lr_ratio": 0.1,
        "weight_decay": 0.1, "adam_beta1": 0.9, "adam_beta2": 0.95, "max_grad_norm": 1.0}


def _config(case: str, steps: int):
    from utils.training.training_config import TrainingConfig

    extra = dict(SAME, precision="bf16" if _has_bf16() else "fp32") if case == "same" else {}
    return TrainingConfig(
        run_name="bench-hf", data_source="synthetic", vocab_size=256,
        synthetic_tokens=(steps + 4) * 16 * 256 * 2, sample_tokens=0, eval_max_batches=1,
        resume="never", max_steps=steps, **SHAPE, **extra,
    ).validate()


def _has_bf16() -> bool:
    import torch

    from utils.training.hardware import choose_precision

    return choose_precision("auto", torch.device("cpu")).autocast_dtype == torch.bfloat16


class _Clock:
    """Wall time from the end of optimizer step `warmup` to the end of the last one.

    It ticks from a global `torch.optim` step post-hook, the same for both trainers: a trainer's
    own step callback may run late (ours batches host reads every `log_every_steps`)."""

    def __init__(self, warmup: int) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.warmup, self.steps, self.start, self.end = warmup, 0, None, None
        register_optimizer_step_post_hook(lambda *_: self.tick())

    def tick(self) -> None:
        self.steps += 1
        if self.steps == self.warmup:
            self.start = time.perf_counter()
        self.end = time.perf_counter()

    def timed_steps(self) -> int:
        return self.steps - self.warmup


def run_ours(case: str, steps: int, warmup: int) -> dict:
    from utils.training.checkpoints import seed_everything
    from utils.training.run import prepare

    cfg = _config(case, steps)
    seed_everything(0)
    prepared = prepare(cfg)
    clock = _Clock(warmup)
    kwargs = {"progress": False} if case == "same" else {}
    trainer = prepared.trainer([], verbose=False, **kwargs)
    trainer.fit()
    tokens = clock.timed_steps() * cfg.batch_size * cfg.block_size
    return {"tok_s": tokens / (clock.end - clock.start), "steps": clock.steps,
            "precision": str(trainer.precision.autocast_dtype or "fp32").replace("torch.", ""),
            "batch": cfg.batch_size, "flops_per_token": prepared.model.flops_per_token()}


def run_hf(case: str, steps: int, warmup: int) -> dict:
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        Trainer,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    from utils.training.checkpoints import seed_everything
    from utils.training.models.hf_gpt2 import gpt2_config, to_gpt2
    from utils.training.run import prepare

    hf_logging.set_verbosity_error()
    cfg = _config(case, steps)
    seed_everything(0)
    prepared = prepare(cfg)  # the same data and the same initial weights as ours
    gcfg = prepared.model.config
    hf_cfg = {k: v for k, v in gpt2_config(gcfg, None).items() if k != "tokenizer_vocab_size"}
    model = GPT2LMHeadModel(GPT2Config(**hf_cfg))
    model.load_state_dict(to_gpt2(prepared.model.state_dict(), gcfg), strict=False)
    model.tie_weights()
    blocks = prepared.train_loader.dataset

    class Blocks(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(blocks)

        def __getitem__(self, i):
            x, _ = blocks[i]  # GPT2LMHeadModel shifts the labels itself
            return {"input_ids": x, "labels": x}

    clock = _Clock(warmup)
    out = tempfile.mkdtemp(prefix="bench-hf-")
    common = {"output_dir": out, "max_steps": steps, "report_to": "none", "save_strategy": "no",
              "use_cpu": not torch.cuda.is_available()}
    if case == "same":
        bf16 = cfg.precision == "bf16"
        args = TrainingArguments(
            **common, per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
            lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_ratio},
            warmup_steps=max(1, round(cfg.warmup_ratio * steps)), weight_decay=cfg.weight_decay,
            adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2,
            max_grad_norm=cfg.max_grad_norm, bf16=bf16, disable_tqdm=True,
            logging_strategy="no", dataloader_drop_last=True, seed=0)
    else:
        args = TrainingArguments(**common)
    trainer = Trainer(model=model, args=args, train_dataset=Blocks(), )
    trainer.train()
    batch = args.per_device_train_batch_size
    tokens = clock.timed_steps() * batch * cfg.block_size
    return {"tok_s": tokens / (clock.end - clock.start), "steps": clock.steps,
            "precision": "bfloat16" if args.bf16 else "fp32", "batch": batch,
            "flops_per_token": prepared.model.flops_per_token()}


CONTENDERS = {"ours": run_ours, "hf": run_hf}
NAMES = {"ours": "our Trainer", "hf": "HF Trainer"}


def child(name: str, case: str, steps: int, warmup: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRANSFORMERS_VERBOSITY="error",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, __file__, "--child", name, "--case", case, "--steps", str(steps),
         "--warmup", str(warmup)],
        env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{name}/{case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measured_peaks() -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_matmul_peak.py"),
                           "--json"], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", default="same,defaults")
    parser.add_argument("--peak-fp32", type=float, help="GFLOP/s; measured when left out")
    parser.add_argument("--peak-bf16", type=float, help="GFLOP/s; measured when left out")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")
    parser.add_argument("--child")
    parser.add_argument("--case")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CONTENDERS[args.child](args.case, args.steps, args.warmup)))
        return

    if args.peak_fp32 and args.peak_bf16:
        peaks = {"fp32": args.peak_fp32, "bfloat16": args.peak_bf16}
    else:
        measured = measured_peaks()
        peaks = {"fp32": measured["fp32"], "bfloat16": measured["bf16"]}
    print(f"matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bfloat16']:.0f} GFLOP/s")
    print(f"GPT 4x256, block 256, vocab 256; {args.steps} steps a run ({args.warmup} untimed), "
          f"{args.rounds} alternating rounds, every run in a fresh process")
    results: dict = {"peaks_gflops": peaks, "steps": args.steps, "rounds": args.rounds,
                     "cases": {}}
    for case in args.cases.split(","):
        runs: dict[str, list[dict]] = {"ours": [], "hf": []}
        for r in range(args.rounds):
            order = ["ours", "hf"] if r % 2 == 0 else ["hf", "ours"]  # ABBA
            for name in order:
                runs[name].append(child(name, case, args.steps, args.warmup))
        summary = {}
        for name, rs in runs.items():
            tok_s = statistics.median(r["tok_s"] for r in rs)
            last = rs[-1]
            mfu = last["flops_per_token"] * tok_s / (peaks[last["precision"]] * 1e9)
            summary[name] = {"tok_s": tok_s, "all_tok_s": [r["tok_s"] for r in rs], "mfu": mfu,
                             "precision": last["precision"], "batch": last["batch"]}
        summary["ratio_hf_over_ours"] = summary["hf"]["tok_s"] / summary["ours"]["tok_s"]
        results["cases"][case] = summary
        print(f"({'a' if case == 'same' else 'b'}) {case}:")
        for name in ("ours", "hf"):
            s = summary[name]
            spread = ", ".join(f"{v:,.0f}" for v in s["all_tok_s"])
            print(f"  {NAMES[name]:12s} {s['tok_s']:8,.0f} tok/s  MFU {s['mfu']:5.1%}  "
                  f"({s['precision']}, batch {s['batch']}; runs {spread})")
        print(f"  HF / ours: {summary['ratio_hf_over_ours']:.3f}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
