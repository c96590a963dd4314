"""The GPU paths, run for real on a lent GPU in one short prepared script: a markdown table.

    python benchmarks/gpu_check.py --out $OUT/gpu_results.md     # on the GPU machine (~4-6 min)
    .venv/bin/python benchmarks/gpu_check.py --quick             # CPU, toy shapes (~1-2 min)

What it measures, each section in its own process (a compile failure, a CUDA error or an
out-of-memory leaves the other sections running; its error tail is recorded):

- env: device, torch, the peak FLOP/s the trainer divides by (``hardware.peak_flops``), the
  precision "auto" picks, NVML's state, and a bf16 8192^3 matmul as the achievable ceiling;
- four real ``Trainer.fit()`` runs of a GPT-2-small shape (12 layers x 768, 12 heads, block
  1024, vocab 50257, batch 16 x 1024 tokens) on synthetic data, built as
  ``benchmarks/bench_trainer.py`` builds them (``run.prepare`` -> ``Prepared.trainer``) with a
  ``MetricsTracker(track_gpu=True)`` attached: bf16 autocast and fp16 with GradScaler
  (``config.precision``), each with ``config.compile`` off and on. Epoch 1 is warm-up (it pays
  for compilation); the median step time and the trainer's own per-epoch tokens/s and MFU are
  taken from the epochs after it;
- nvml: the gpu/* readings the tracker recorded for those runs (they must be non-empty);
- ddp: with more than one GPU, ``torchrun --standalone --nproc_per_node N -m utils.training
  train --config FILE`` on a config written here; its failure is recorded, not raised.

A global budget (``--budget-s``, default 360) bounds the whole run: each section's process
gets at most what is left, and sections that would start after it are reported as skipped.
The table (and a .json beside it) is rewritten after every section, so a run cut short still
leaves the figures measured so far. ``--quick`` runs the same sections on the CPU at toy
shapes (2 layers x 64, block 64, a few steps); the GPU-only parts say "skipped: no CUDA".
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:  # the library is imported from the checkout, never installed
    sys.path.insert(0, str(ROOT))

TARGET_MFU = 0.45  # bf16 + compile on an H100-class GPU; nanoGPT reports ~30% on an A100
MIN_SECTION_S = 15  # a section is not started with less than this left of the budget
TAIL_CHARS = 1500  # of a failed section's output, kept in the table's notes

# Training runs, in the order they run: the most important figure first.
RUNS = [("bf16-eager", "bf16", False), ("bf16-compile", "bf16", True),
        ("fp16-eager", "fp16", False), ("fp16-compile", "fp16", True)]
# Where the library's imports fail on a machine with torch but not the rest (the GPU image
# lacks `datasets`, which the trainer imports, and `optuna`, which the command line imports).
MISSING_HINT = ("carry the missing packages as wheels (benchmarks/RESULTS.md, section GPU, "
                "says how)")
SECTIONS = ["env", *[name for name, _, _ in RUNS], "nvml", "ddp"]


@dataclass
class Shape:
    """The model and batch every training section uses."""

    n_layers: int = 12
    n_heads: int = 12
    d_model: int = 768
    block_size: int = 1024
    vocab_size: int = 50257
    batch_size: int = 16
    grad_accum_steps: int = 1
    steps_per_epoch: int = 16
    epochs: int = 3  # epoch 1 is warm-up; the others are measured

    @classmethod
    def quick(cls) -> Shape:
        return cls(n_layers=2, n_heads=2, d_model=64, block_size=64, vocab_size=256,
                   batch_size=8, steps_per_epoch=4, epochs=3)

    def describe(self) -> str:
        accum = f" x {self.grad_accum_steps} accum" if self.grad_accum_steps > 1 else ""
        return (f"GPT {self.n_layers}x{self.d_model}, {self.n_heads} heads, block "
                f"{self.block_size}, vocab {self.vocab_size}; batch {self.batch_size}{accum} "
                f"x {self.block_size} tokens; {self.epochs} epochs x {self.steps_per_epoch} "
                "steps (epoch 1 is warm-up)")

    def config_fields(self, run_name: str, precision: str, compile: bool) -> dict[str, Any]:
        """TrainingConfig fields: synthetic data sized to exactly ``steps_per_epoch`` optimizer
        steps an epoch (the loaders cut (tokens - 1) // block blocks; val_fraction 0.1)."""
        micro = self.steps_per_epoch * self.grad_accum_steps * self.batch_size
        train_tokens = micro * self.block_size + self.block_size // 2 + 1
        return {
            "run_name": run_name, "data_source": "synthetic", "vocab_size": self.vocab_size,
            # validate() asks for one validation block (block + 1 tokens) at val_fraction 0.1
            "synthetic_tokens": max(1000, 10 * (self.block_size + 2), int(train_tokens / 0.9) + 1),
            "n_layers": self.n_layers, "n_heads": self.n_heads, "d_model": self.d_model,
            "block_size": self.block_size, "batch_size": self.batch_size,
            "grad_accum_steps": self.grad_accum_steps, "epochs": self.epochs,
            "precision": precision, "compile": compile, "dropout": 0.0,
            "sample_tokens": 0, "eval_max_batches": 1, "log_every_steps": 1,
            "resume": "never", "use_wandb": False,
        }


@dataclass
class Section:
    name: str
    status: str = "pending"  # pending | ok | failed | timed out | skipped: why
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # the error tail of a failed section


# ---------------------------------------------------------------------- the sections (child)


def nvml_state() -> str | None:
    """None when NVML answers; else why not. The library's own answer where it gives one (its
    helpers change while others work on it), else asked of pynvml directly."""
    from utils.training import gpu

    reason = getattr(gpu, "nvml_unavailable_reason", None)
    if callable(reason):
        return reason()
    try:
        import pynvml
    except ImportError as exc:
        return f"pynvml is not installed ({exc})"
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return f"NVML is unavailable ({type(exc).__name__}: {exc})"
    return None


def section_env(shape: Shape) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                           "cuda": torch.cuda.is_available(),
                           "device_count": torch.cuda.device_count()}
    from utils.training import gpu
    from utils.training.hardware import (
        choose_device,
        choose_precision,
        device_description,
        peak_flops,
    )

    def probe(key: str, read: Any) -> None:
        """One reading; a failure is recorded and the others still run."""
        try:
            out[key] = read()
        except Exception as exc:
            out.setdefault("probe_errors", {})[key] = f"{type(exc).__name__}: {exc}"

    device = choose_device()
    probe("device", lambda: device_description(device))
    probe("auto_precision", lambda: str(choose_precision("auto", device)))
    probe("peak_flops", lambda: peak_flops(device))
    probe("nvml_unavailable", nvml_state)
    for module in ("utils.training.trainer", "utils.training.run", "utils.training.__main__"):
        try:
            __import__(module)
        except Exception as exc:  # recorded: the CLI (DDP) needs more packages than the trainer
            out.setdefault("import_errors", {})[module] = f"{type(exc).__name__}: {exc}"
    if out["cuda"]:
        props = torch.cuda.get_device_properties(device)
        out["gpu_name"], out["capability"] = props.name, f"{props.major}.{props.minor}"
        out["cuda_version"] = torch.version.cuda

        def matmul() -> float:  # the achievable bf16 matmul rate: MFU's practical ceiling
            n = 8192
            a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
            b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
            for _ in range(3):
                a @ b
            torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(10):
                a @ b
            torch.cuda.synchronize()
            return 10 * 2 * n**3 / (time.perf_counter() - started)

        probe("matmul_bf16_flops", matmul)
        probe("gpu_snapshot", lambda: gpu.gpu_snapshot(device.index or 0))
    return out


def section_train(shape: Shape, name: str, precision: str, compile: bool) -> dict[str, Any]:
    import torch

    from utils.training import metric_names as M
    from utils.training.callbacks import Callback
    from utils.training.metrics_tracker import MetricsTracker
    from utils.training.run import prepare
    from utils.training.training_config import TrainingConfig

    class StepClock(Callback):
        """When each optimizer step's row arrived (log_every_steps=1: one host sync a step)."""

        def __init__(self) -> None:
            self.start = 0.0
            self.rows: list[tuple[int, int, float, float]] = []  # step, epoch, time, loss

        def on_train_start(self, trainer: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, trainer: Any, metrics: dict[str, float]) -> None:
            self.rows.append((int(metrics[M.STEP]), int(metrics[M.EPOCH]), time.perf_counter(),
                              float(metrics[M.BATCH_LOSS])))

    config = TrainingConfig(**shape.config_fields(f"gpu-check-{name}", precision, compile))
    started = time.perf_counter()
    prepared = prepare(config.validate())
    prepare_s = time.perf_counter() - started
    clock, tracker = StepClock(), MetricsTracker(track_gpu=True)
    trainer = prepared.trainer([tracker, clock], progress=False, verbose=True)
    result = trainer.fit()

    # Step durations within each epoch after the first (an epoch's first step also pays for
    # the epoch change: the loader's restart, the evaluation, the callbacks).
    durations = [b[2] - a[2] for a, b in zip(clock.rows, clock.rows[1:])
                 if a[1] == b[1] and a[1] >= 2]
    step_s = statistics.median(durations) if durations else None
    tokens_per_step = config.tokens_per_step
    measured = [row for row in trainer.history if row[M.EPOCH] >= 2] or trainer.history
    out: dict[str, Any] = {
        "precision": str(trainer.precision), "compile": compile,
        "compiled_module": type(trainer.model).__name__,
        "grad_scaler": trainer.scaler.is_enabled(),
        "scale": trainer.scaler.get_scale() if trainer.scaler.is_enabled() else None,
        "parameters": sum(p.numel() for p in trainer.raw_model.parameters()),
        "flops_per_token": trainer.flops_per_token, "peak_flops": trainer.peak_flops,
        "tokens_per_step": tokens_per_step, "steps": trainer.global_step,
        "steps_per_epoch": trainer.steps_per_epoch,
        "measured_steps": len(durations), "prepare_s": prepare_s,
        "first_step_s": clock.rows[0][2] - clock.start if clock.rows else None,
        "median_step_s": step_s, "status": result.status,
        "first_loss": clock.rows[0][3] if clock.rows else None,
        "last_loss": clock.rows[-1][3] if clock.rows else None,
        "trainer_tokens_per_sec": statistics.median(r[M.TOKENS_PER_SEC] for r in measured),
        "trainer_mfu": (statistics.median(r[M.MFU] for r in measured)
                        if all(M.MFU in r for r in measured) else None),
        "epochs": [{k: v for k, v in r.items() if isinstance(v, (int, float))}
                   for r in trainer.history],
    }
    if step_s:
        out["tokens_per_sec"] = tokens_per_step / step_s
        if trainer.peak_flops:
            out["mfu"] = trainer.flops_per_token * out["tokens_per_sec"] / trainer.peak_flops
    readings: dict[str, float] = {}
    for row in tracker.epochs:  # the last epoch's reading of each gpu/* name
        readings.update({k: v for k, v in row.items() if k.startswith("gpu/")})
    out["gpu_readings"] = readings
    out["nvml_unavailable"] = nvml_state()
    if torch.cuda.is_available():
        out["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def child_main(args: argparse.Namespace) -> int:
    shape = Shape(**json.loads(args.shape))
    try:
        if args.child == "env":
            data = section_env(shape)
        else:
            _, precision, compile = next(r for r in RUNS if r[0] == args.child)
            data = section_train(shape, args.child, precision, compile)
    except BaseException as exc:
        traceback.print_exc()
        Path(args.result).write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    Path(args.result).write_text(json.dumps(data, default=str))
    return 0


# ---------------------------------------------------------------------- the runner (parent)


def _tail(text: str, n: int = TAIL_CHARS) -> str:
    text = text.strip()
    return text if len(text) <= n else "..." + text[-n:]


EXTRA_SITE: list[str] = []  # where --wheels were installed: ahead of the image's packages


def install_wheels(folder: Path) -> tuple[bool, str]:
    """pip install --no-index --no-deps every wheel in ``folder`` into a scratch folder that
    the sections' processes put on their path (the GPU machine reaches no registry)."""
    wheels = sorted(str(w) for w in folder.glob("*.whl"))
    if not wheels:
        return False, f"no .whl files in {folder}"
    target = Path(tempfile.mkdtemp(prefix="gpu_check_site_"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index",
                           "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
                           "--target", str(target), *wheels],
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        return False, _tail(proc.stdout + proc.stderr, 600)
    EXTRA_SITE.append(str(target))
    names = ", ".join(Path(w).name.split("-")[0] for w in wheels)
    return True, f"{len(wheels)} wheels from {folder} ({names})"


def child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), *EXTRA_SITE, os.environ.get("PYTHONPATH", "")) if p),
        PYTHONUNBUFFERED="1", WANDB_MODE="offline", WANDB_SILENT="true", HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false")


def run_process(cmd: list[str], timeout: float, cwd: str | Path) -> tuple[str, int | None]:
    """(stdout + stderr, exit code; None when it ran out of time). The output goes to a file,
    not a pipe: a process left behind (torchrun starts its ranks in sessions of their own)
    cannot keep us waiting for its end. Run in a session of its own, so that at the time limit
    the whole group gets SIGTERM (torchrun passes it on to its ranks), then SIGKILL, and the
    next section finds the GPU free."""
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(),
                                cwd=cwd, start_new_session=True)
        rc: int | None = None
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=grace)
                    break
        log.seek(0)
        return log.read(), rc


def run_child(section: Section, shape: Shape, timeout: float, echo: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", section.name,
               "--shape", json.dumps(asdict(shape)), "--result", str(result)]
        started = time.perf_counter()
        output, rc = run_process(cmd, timeout, cwd=tmp)
        section.seconds = time.perf_counter() - started
        if echo and output.strip():
            print(f"--- {section.name} output (tail) ---\n{_tail(output, 3000)}", flush=True)
        data = json.loads(result.read_text()) if result.exists() else {}
    if data and "error" not in data:  # its result is written: a slow exit changes nothing
        section.status, section.data = "ok", data
        if rc is None:
            section.status = "ok (stopped at the time limit while exiting)"
    elif rc is None:
        section.status = f"timed out after {timeout:.0f} s (budget)"
        section.note = _tail(output)
    else:
        section.status = "failed"
        section.note = _tail(output) + "\n" + data.get("error", f"exit code {rc}")


def ddp_config(shape: Shape) -> dict[str, Any]:
    fields = shape.config_fields("gpu-check-ddp", "auto", False)
    fields["epochs"] = 1
    return fields


def run_ddp(section: Section, shape: Shape, procs: int, timeout: float) -> None:
    """torchrun over the CLI; DDP support is being built, so a failure is a finding, not a
    crash: the exit code and the output's tail go into the table."""
    with tempfile.TemporaryDirectory(prefix="gpu_check_ddp_") as tmp:
        config = Path(tmp) / "gpu-check-ddp.json"
        config.write_text(json.dumps(ddp_config(shape), indent=2))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(procs), "-m", "utils.training", "train",
               "--config", str(config), "--workspace", str(Path(tmp) / "workspace"),
               "--no-progress"]
        section.data["command"] = ("torchrun --standalone --nproc_per_node "
                                   f"{procs} -m utils.training train --config FILE")
        started = time.perf_counter()
        output, rc = run_process(cmd, timeout, cwd=ROOT)
        section.seconds = time.perf_counter() - started
    section.data.update(procs=procs, rc=rc)
    lines = [ln for ln in output.splitlines() if "tok/s" in ln]
    if lines:
        section.data["last_epoch_line"] = lines[-1].strip()
    if rc == 0:
        section.status = "ok"
    else:
        section.status = "timed out (budget)" if rc is None else f"failed (exit {rc})"
        section.note = _tail(output)


def summarise_nvml(sections: dict[str, Section], cuda: bool) -> Section:
    nvml = Section("nvml")
    if not cuda:
        nvml.status = "skipped: no CUDA"
        return nvml
    runs = [s for s in sections.values()
            if s.status.startswith("ok") and "gpu_readings" in s.data]
    if not runs:
        nvml.status = "skipped: no training run finished"
        return nvml
    readings = runs[0].data["gpu_readings"]
    nvml.data = {"run": runs[0].name, "readings": readings,
                 "nvml_unavailable": runs[0].data.get("nvml_unavailable")}
    # Utilisation, temperature and power come from NVML alone (memory has a CUDA fallback).
    from_nvml = [k for k in ("gpu/utilization", "gpu/temperature_c", "gpu/power_w")
                 if k in readings]
    nvml.status = "ok" if from_nvml else "failed"
    if not from_nvml:
        nvml.note = ("the tracker recorded no NVML reading (only "
                     f"{', '.join(sorted(readings)) or 'nothing'}): "
                     f"{runs[0].data.get('nvml_unavailable') or 'reason unknown'}")
    return nvml


# ---------------------------------------------------------------------- the table


def _fmt(v: Any, spec: str, scale: float = 1.0, unit: str = "") -> str:
    return "-" if v is None else f"{format(v * scale, spec)}{unit}"


def run_cells(s: Section) -> list[str]:
    d = s.data
    flops = d.get("peak_flops")
    return [s.name, s.status, d.get("precision", "-").split(" (")[0],
            _fmt(d.get("median_step_s"), ".4f"), _fmt(d.get("tokens_per_sec"), ",.0f"),
            _fmt(d.get("mfu"), ".1%"), _fmt(d.get("trainer_tokens_per_sec"), ",.0f"),
            _fmt(d.get("trainer_mfu"), ".1%"), _fmt(flops, ".0f", 1e-12, " TF/s"),
            _fmt(d.get("first_step_s"), ".1f", unit=" s"),
            _fmt(d.get("max_memory_allocated_gib"), ".1f", unit=" GiB"),
            (f"{d['first_loss']:.3f} -> {d['last_loss']:.3f}"
             if d.get("first_loss") is not None else "-"),
            f"{s.seconds:.0f} s"]


def check_detail(s: Section) -> str:
    d = s.data
    if s.name == "env" and d:
        parts = [d.get("device", ""), f"torch {d.get('torch')}", f"CUDA {d.get('cuda_version')}"
                 if d.get("cuda") else "no CUDA", f"{d.get('device_count', 0)} GPU(s)",
                 f"auto precision: {d.get('auto_precision')}",
                 "peak for MFU: " + _fmt(d.get("peak_flops"), ".0f", 1e-12, " TF/s")
                 + (" (hardware.peak_flops)" if d.get("peak_flops") else " (unknown: no MFU)")]
        if d.get("matmul_bf16_flops"):
            parts.append(f"bf16 8192^3 matmul measured {d['matmul_bf16_flops'] / 1e12:.0f} TF/s")
        parts.append("NVML: " + (d.get("nvml_unavailable") or "available"))
        if d.get("wheels"):
            parts.append(f"--wheels: {d['wheels']}")
        if d.get("gpu_snapshot") is not None:
            snap = d["gpu_snapshot"]
            parts.append("gpu.gpu_snapshot(): " + (", ".join(
                f"{k.removeprefix('gpu/')} {v:.1f}" for k, v in sorted(snap.items())) or "empty"))
        for module, err in (d.get("import_errors") or {}).items():
            parts.append(f"import {module} failed: {err}")
        for key, err in (d.get("probe_errors") or {}).items():
            parts.append(f"{key} failed: {err}")
        return "; ".join(parts)
    if s.name == "nvml" and d:
        readings = ", ".join(f"{k.removeprefix('gpu/')} {v:.1f}" for k, v in
                             sorted(d["readings"].items()))
        return f"tracker gpu/* of {d['run']}: {readings or 'none'}"
    if s.name == "ddp" and d:
        return (f"`{d.get('command', '')}`: exit {d.get('rc')}"
                + (f"; {d['last_epoch_line']}" if d.get("last_epoch_line") else ""))
    return ""


def render(sections: dict[str, Section], shape: Shape, args: argparse.Namespace,
           elapsed: float, done: bool) -> str:
    env = sections["env"].data
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"## GPU check ({when}{'' if done else ', in progress'})",
        f"Device: {env.get('device', 'unknown')}; torch {env.get('torch', '?')}; "
        f"Python {env.get('python', '?')}. `benchmarks/gpu_check.py"
        f"{' --quick' if args.quick else ''}`, budget {args.budget_s:.0f} s, "
        f"{elapsed:.0f} s so far.",
        f"Shape: {shape.describe()}.",
        "",
        "| run | status | precision | median step | tok/s (median step) | MFU (median step) "
        "| trainer tok/s | trainer MFU | peak used | first step | peak alloc | loss | wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, _, _ in RUNS:
        lines.append("| " + " | ".join(run_cells(sections[name])) + " |")
    lines += ["", "| check | status | detail |", "|---|---|---|"]
    for name in ("env", "nvml", "ddp"):
        s = sections[name]
        lines.append(f"| {name} | {s.status} | {check_detail(s).replace('|', '/')} |")
    lines += ["", "MFU = `trainer.flops_per_token` x tok/s / the peak used (`hardware.peak_flops`"
              " of the device's name); \"median step\" is over the steps of the epochs after the "
              "first, each read by the host (log_every_steps=1); \"trainer\" columns are the "
              "trainer's own epoch figures (median of the measured epochs). "
              f"Target: MFU >= {TARGET_MFU:.0%} in bf16 with compile on an H100-class GPU "
              "(nanoGPT: ~30% on an A100)."]
    matmul = env.get("matmul_bf16_flops")
    for name, _, _ in RUNS:
        d = sections[name].data
        if d.get("mfu") is None:
            continue
        line = f"- {name}: MFU {d['mfu']:.1%} of the {d['peak_flops'] / 1e12:.0f} TF/s peak"
        if matmul:
            line += (f" = {d['mfu'] * d['peak_flops'] / matmul:.1%} of the measured bf16 matmul "
                     f"rate ({matmul / 1e12:.0f} TF/s)")
        if name == "bf16-compile":
            line += (f"; target {TARGET_MFU:.0%}: "
                     f"{'met' if d['mfu'] >= TARGET_MFU else 'not met'}")
        lines.append(("\n" if lines[-1].startswith("MFU =") else "") + line)
    notes = [(n, s.note) for n, s in sections.items() if s.note.strip()]
    for name, note in notes:
        lines += ["", f"<details><summary>{name}: {sections[name].status}</summary>", "",
                  "```", note.strip().replace("```", "'''"), "```", "</details>"]
    return "\n".join(lines) + "\n"


def write(out: Path, sections: dict[str, Section], shape: Shape, args: argparse.Namespace,
          elapsed: float, done: bool) -> str:
    text = render(sections, shape, args, elapsed, done)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    raw = {n: asdict(s) for n, s in sections.items()}
    out.with_suffix(".json").write_text(json.dumps(
        {"shape": asdict(shape), "elapsed_s": elapsed, "done": done, "sections": raw},
        indent=1, default=str))
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "gpu_results.md"),
                        help="markdown table to write (a .json beside it); default %(default)s")
    parser.add_argument("--quick", action="store_true",
                        help="CPU-sized: 2 layers x 64, block 64, a few steps")
    parser.add_argument("--budget-s", type=float, default=360.0,
                        help="whole-run budget in seconds; later sections are skipped")
    parser.add_argument("--only", default="",
                        help=f"comma-separated sections to run (of {', '.join(SECTIONS)}); "
                        "env always runs")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--grad-accum", type=int, default=None)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help=">= 2: epoch 1 is warm-up")
    parser.add_argument("--ddp-procs", type=int, default=None,
                        help="force the DDP launch with N processes (default: the GPU count; "
                        "on a CPU, gloo: tests the launcher path)")
    parser.add_argument("--wheels", metavar="DIR",
                        help="install these .whl files (no index, no deps) for the sections: "
                        "the packages the GPU image lacks")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args)

    t0 = time.perf_counter()
    shape = Shape.quick() if args.quick else Shape()
    for attr, value in (("batch_size", args.batch_size), ("grad_accum_steps", args.grad_accum),
                        ("steps_per_epoch", args.steps_per_epoch), ("epochs", args.epochs)):
        if value is not None:
            setattr(shape, attr, value)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(sorted(unknown))}")
    out = Path(args.out)
    sections = {name: Section(name) for name in SECTIONS}

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t0)

    def save(done: bool = False) -> str:
        return write(out, sections, shape, args, time.perf_counter() - t0, done)

    def report(s: Section) -> None:
        detail = check_detail(s) if s.name in ("env", "nvml", "ddp") else " | ".join(
            run_cells(s)[2:])
        print(f"[{time.perf_counter() - t0:5.0f} s] {s.name}: {s.status}"
              + (f" | {detail}" if detail else ""), flush=True)
        if s.note and not s.status.startswith("skipped"):
            print(f"    {_tail(s.note, 600)}", flush=True)
        save()

    print(f"gpu_check: {shape.describe()}; budget {args.budget_s:.0f} s; writing {out}",
          flush=True)
    if args.wheels:
        ok, said = install_wheels(Path(args.wheels))
        print(f"--wheels: {'installed ' if ok else 'NOT installed: '}{said}", flush=True)
        sections["env"].data["wheels"] = said if ok else f"not installed: {said}"
    save()
    env = sections["env"]
    wheels = env.data.get("wheels")
    run_child(env, shape, max(1.0, min(120.0, left())), echo=False)
    if wheels:
        env.data["wheels"] = wheels
    report(env)
    cuda = bool(env.data.get("cuda"))
    import_errors = env.data.get("import_errors") or {}
    broken = next((import_errors[m] for m in ("utils.training.trainer", "utils.training.run")
                   if m in import_errors), None)
    for name, precision, _compile in RUNS:
        s = sections[name]
        if only and name not in only:
            s.status = "skipped: not in --only"
        elif env.status != "ok":
            s.status = "skipped: env failed (see its note)"
        elif broken:
            s.status = f"skipped: the library does not import ({broken}); {MISSING_HINT}"
        elif not cuda and precision == "fp16":
            s.status = "skipped: no CUDA (fp16 needs a CUDA GPU)"
        elif not cuda and not args.quick:
            s.status = "skipped: no CUDA (GPT-2-small on a CPU; use --quick)"
        elif left() < MIN_SECTION_S:
            s.status = f"skipped: time budget ({args.budget_s:.0f} s) spent"
        else:
            run_child(s, shape, left(), echo=True)
        report(s)
    sections["nvml"] = summarise_nvml(sections, cuda)
    report(sections["nvml"])

    ddp = sections["ddp"]
    procs = args.ddp_procs if args.ddp_procs is not None else int(env.data.get("device_count", 0))
    if only and "ddp" not in only:
        ddp.status = "skipped: not in --only"
    elif not cuda and args.ddp_procs is None:
        ddp.status = "skipped: no CUDA"
    elif procs <= 1:
        ddp.status = (f"skipped: {'one GPU' if procs == 1 else 'no GPU'} here; DDP needs more "
                      "than one")
    elif "utils.training.__main__" in import_errors:
        ddp.status = (f"skipped: `-m utils.training` does not import "
                      f"({import_errors['utils.training.__main__']}); {MISSING_HINT}")
    elif left() < MIN_SECTION_S:
        ddp.status = f"skipped: time budget ({args.budget_s:.0f} s) spent"
    else:
        run_ddp(ddp, shape, procs, left())
    report(ddp)

    text = save(done=True)
    print("\n" + text, flush=True)
    print(f"Written: {out} (and {out.with_suffix('.json').name}); "
          f"{time.perf_counter() - t0:.0f} s in all", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
