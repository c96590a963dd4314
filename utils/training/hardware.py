"""What this runtime can do: device, mixed precision, memory, peak FLOP/s for MFU.

Colab hands out a T4 one day, an A100 the next, and sometimes no GPU at all. The choice of
precision is made here, once, from the hardware, and printed with its reason so that nobody has
to guess why a run is slow or why it uses a grad scaler. And what cannot work on this machine
(fp16 without a GPU, a model or synthetic data bigger than memory) is refused here, through
``TrainingConfig.validate(machine)``, before any data is loaded or any memory allocated.
What the process meets while training is here too: its place in a torchrun launch (DDP/FSDP),
Ctrl-C, and running out of GPU memory, each turned into something a person can act on.
"""

from __future__ import annotations

import datetime
import io
import itertools
import math
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import PersonFacing
from .sharding import is_sharded, no_gradient_sync, shard
from .training_config import PRECISIONS, ConfigError, TrainingConfig

# What training takes per parameter: fp32 weights (4 bytes), their gradients (4) and AdamW's two
# moments (8). Autocast keeps no second copy of the weights, so this holds for bf16/fp16 too.
TRAIN_BYTES_PER_PARAMETER = 16
# Peak RAM per synthetic token while the chain is sampled (Python lists of draws) and then
# tokenized: about 73 bytes measured at 3M tokens. Rounded down, like every estimate here.
SYNTHETIC_BYTES_PER_TOKEN = 64
_VOCAB_PAD = 64  # models.gpt.VOCAB_PAD_MULTIPLE: embedding rows are padded to a multiple of it
_MODEL_FIELDS = ("model_source", "n_layers", "n_heads", "d_model", "d_ff", "block_size",
                 "batch_size", "grad_accum_steps", "vocab_size", "precision", "tokenizer")


@dataclass(frozen=True)
class Precision:
    name: str  # "bf16" | "fp16" | "fp32"
    autocast_dtype: torch.dtype | None  # None: no autocast
    use_grad_scaler: bool  # fp16 only: its narrow exponent range underflows small gradients
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"

    def autocast(self, device: torch.device) -> AbstractContextManager:
        """Autocast to this precision on ``device``; nothing for fp32."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)


def choose_device(prefer: str | None = None) -> torch.device:
    """The device to train on. A bare "cuda" gets the current GPU's index, so that everything
    that reads the device (GPU readings, memory statistics) names the same GPU."""
    device = torch.device(prefer or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor})"
    return f"CPU ({torch.get_num_threads()} threads); no GPU found"


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16
    autocast is emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def choose_precision(
    requested: str,
    device: torch.device,
    *,
    capability: tuple[int, int] | None = None,
    cpu_bf16: bool | None = None,
) -> Precision:
    """Pick the autocast dtype. ``capability``/``cpu_bf16`` override detection (for tests)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"precision = {requested!r}: choose one of {', '.join(PRECISIONS)}.")
    if device.type == "cuda":
        major, minor = capability or torch.cuda.get_device_capability(device)
        cc = f"compute capability {major}.{minor}"
        has_bf16 = major >= 8
        if requested == "auto":
            if has_bf16:
                return Precision("bf16", torch.bfloat16, False, f"auto: {cc} has bf16 tensor cores")
            # torch.cuda.is_bf16_supported() can say True on a T4 (emulated): don't trust it.
            return Precision(
                "fp16", torch.float16, True, f"auto: {cc} < 8.0 has no bf16 tensor cores; "
                "fp16 with a gradient scaler"
            )
        if requested == "bf16":
            note = "requested" if has_bf16 else f"requested, but {cc} emulates bf16 (slow)"
            return Precision("bf16", torch.bfloat16, False, note)
        if requested == "fp16":
            return Precision("fp16", torch.float16, True, "requested; with a gradient scaler")
        return Precision("fp32", None, False, "requested; TF32 matmuls where the GPU has them")
    # CPU
    native = cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16
    if requested == "fp16":  # a ConfigError (a ValueError): the CLI shows it without a traceback
        raise ConfigError(
            "precision = 'fp16': needs a CUDA GPU: on a CPU fp16 matmuls are emulated and about "
            "100x slower. Use precision='auto' (bf16 where the CPU supports it), 'bf16' or 'fp32'."
        )
    if requested == "bf16" or (requested == "auto" and native):
        why = "CPU has native bf16" if native else "requested; this CPU emulates bf16 (slow)"
        return Precision("bf16", torch.bfloat16, False, why if requested == "bf16" else f"auto: {why}")
    if requested == "auto":
        return Precision("fp32", None, False, "auto: CPU without native bf16")
    return Precision("fp32", None, False, "requested")


# Dense (no sparsity) 16-bit tensor-core peaks in FLOP/s, from the vendors' data sheets. A GPU
# that is not listed gets MFU "unknown": a wrong denominator is worse than none.
PEAK_FLOPS_16BIT = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 80GB HBM3": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
    "L40S": 362e12,
    "V100": 125e12,
    "T4": 65e12,
}


def peak_flops(device: torch.device, name: str | None = None) -> float | None:
    """Peak 16-bit FLOP/s of the GPU, or None when unknown (CPU, or a GPU not in the table)."""
    if name is None:
        if device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(device)
    # Longest key first so "H100 PCIe" wins over a shorter match.
    for key in sorted(PEAK_FLOPS_16BIT, key=len, reverse=True):
        if key.lower() in name.lower():
            return PEAK_FLOPS_16BIT[key]
    return None


def configure_backends(device: torch.device) -> None:
    """Global switches that are free speed: TF32 for fp32 matmuls on Ampere+ GPUs."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


# --------------------------------------------------------------------------- memory


def _size(n: float) -> str:
    """Bytes in the unit people read: 6.55 TiB, 13.2 GiB, 312.0 MiB."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):,.2f} {unit}" if shift == 40 else f"{n / (1 << shift):.1f} {unit}"
    return f"{int(n)} bytes"


def _round_down(n: int) -> int:
    """Two significant digits, rounded down: a figure a person can type into a form."""
    scale = 10 ** max(0, len(str(n)) - 2)
    return n // scale * scale


def _vocab_guess(config: TrainingConfig) -> int:
    """The vocabulary the model will get, as far as the config tells before the data is read."""
    if config.data_source == "synthetic" or config.tokenizer == "bpe":
        return config.vocab_size
    if config.tokenizer == "byte":
        return 257
    return 256 if config.tokenizer == "char" else 0  # a tokenizer.json: unknown until read


def estimate_parameters(config: TrainingConfig, vocab_size: int | None = None) -> int | None:
    """Parameters of the built-in GPT the config describes (None for an exported model, whose
    shape lives in its own config.json)."""
    if config.model_source != "builtin":
        return None
    d, ff, layers = config.d_model, config.effective_d_ff, config.n_layers
    vocab = _vocab_guess(config) if vocab_size is None else vocab_size
    padded = -(-vocab // _VOCAB_PAD) * _VOCAB_PAD
    # Per block: qkv and proj (4 d^2), the MLP (2 d d_ff), two norms. Then the embeddings (the
    # head is tied to them), the positions and the final norm.
    return layers * (4 * d * d + 2 * d * ff + 2 * d) + padded * d + config.block_size * d + d


def estimate_training_bytes(config: TrainingConfig, vocab_size: int | None = None
                            ) -> tuple[int, int] | None:
    """(weights + gradients + AdamW state, activations of one micro-batch), in bytes.

    Rough on purpose, and low rather than high: it is there to refuse what cannot fit at all (a
    d_model of a million) before anything is allocated, never to turn away a run that fits."""
    params = estimate_parameters(config, vocab_size)
    if params is None:
        return None
    vocab = _vocab_guess(config) if vocab_size is None else vocab_size
    tokens = config.batch_size * config.block_size
    width = 4 if config.precision == "fp32" else 2
    # Saved for the backward pass, per layer and token: about 9 d + 2 d_ff values (Korthikanti
    # et al. 2022, with memory-efficient attention); then the fp32 logits and their gradient.
    per_layer = tokens * (9 * config.d_model + 2 * config.effective_d_ff) * width
    logits = tokens * -(-vocab // _VOCAB_PAD) * _VOCAB_PAD * 8
    return params * TRAIN_BYTES_PER_PARAMETER, config.n_layers * per_layer + logits


def available_ram() -> int | None:
    """Bytes of RAM free for this process now: psutil, else /proc/meminfo, else sysconf."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except (ImportError, OSError, AttributeError):
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class Machine:
    """What a run must fit into. ``TrainingConfig.validate(machine)`` asks it for
    :meth:`problems`; :func:`detect_machine` describes the machine at hand."""

    cuda: bool  # a CUDA GPU will train the model
    name: str = "this machine"
    model_memory: int | None = None  # bytes for weights, optimizer state and activations
    data_memory: int | None = None  # bytes of RAM free for the data
    model_memory_note: str = "of RAM available"  # how model_memory was measured

    def problems(self, config: TrainingConfig, usable: Callable[..., bool]
                 ) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if usable("precision") and config.precision == "fp16" and not self.cuda:
            out.append(("precision", f"needs a CUDA GPU, and {self.name} has none (a CPU "
                        "emulates fp16, about 100x slower); use 'bf16' or 'fp32', or 'auto' to "
                        "let the hardware choose"))
        if self.model_memory and usable(*_MODEL_FIELDS):
            out += self._model_problems(config)
        if self.data_memory and config.data_source == "synthetic" and usable("synthetic_tokens"):
            need = config.synthetic_tokens * SYNTHETIC_BYTES_PER_TOKEN
            if need > self.data_memory:
                most = _round_down(self.data_memory // SYNTHETIC_BYTES_PER_TOKEN)
                out.append(("synthetic_tokens", f"sampling that many needs about {_size(need)} "
                            f"of RAM (at least {SYNTHETIC_BYTES_PER_TOKEN} bytes a token), but "
                            f"{self.name} has {_size(self.data_memory)} available; use at most "
                            f"{most:,}"))
        return out

    def _fits(self, config: TrainingConfig) -> bool:
        return sum(estimate_training_bytes(config) or (0, 0)) <= (self.model_memory or 0)

    def _model_problems(self, config: TrainingConfig) -> list[tuple[str, str]]:
        """Which field to blame, the figure, and what would fit instead."""
        estimate = estimate_training_bytes(config)
        limit = self.model_memory or 0
        if estimate is None or sum(estimate) <= limit:
            return []
        weights, activations = estimate
        params = estimate_parameters(config) or 0
        figure = (f"training it needs about {_size(weights + activations)} ({params:,} "
                  f"parameters at {TRAIN_BYTES_PER_PARAMETER} bytes each for weights, gradients "
                  f"and AdamW state, plus {_size(activations)} of activations for batch_size "
                  f"{config.batch_size} x block_size {config.block_size}), but {self.name} has "
                  f"{_size(limit)} {self.model_memory_note}")
        if weights <= limit:  # the model fits; one micro-batch's activations do not
            smaller = next((b for b in range(config.batch_size - 1, 0, -1)
                            if self._fits(config.replace(batch_size=b))), None)
            if smaller is not None:
                accum = -(-config.batch_size * config.grad_accum_steps // smaller)
                return [("batch_size", f"{figure}; batch_size = {smaller} with grad_accum_steps "
                         f"= {accum} fits and keeps about the same tokens per step")]
        best = self._largest_d_model(config)
        hint = (f"d_model = {best} would fit (or fewer n_layers, or a smaller batch_size)" if best
                else "even the smallest d_model does not fit: lower n_layers, block_size or "
                "batch_size")
        return [("d_model", f"{figure}; {hint}")]

    def _largest_d_model(self, config: TrainingConfig) -> int | None:
        """The largest d_model below the config's (a multiple of n_heads; d_ff follows it when
        it is 0, the default) that fits, by bisection."""
        step = config.n_heads
        lo, hi = 1, config.d_model // step - 1
        if hi < 1 or not self._fits(config.replace(d_model=step)):
            return None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self._fits(config.replace(d_model=mid * step)) else (lo, mid - 1)
        return lo * step


def detect_machine(device: str | torch.device | None = None) -> Machine:
    """The machine at hand: the device a Trainer would pick (or ``device``) and its memory.

    A GPU is judged by its total memory (no run can use more, whatever else holds some now);
    the CPU by the RAM available now, since the data and the model share it."""
    device = choose_device(str(device) if device is not None else None)
    ram = available_ram()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return Machine(True, f"the GPU ({props.name})", int(props.total_memory), ram,
                       "of memory in all")
    return Machine(False, "this machine", ram, ram)


def validate_for_hardware(config: TrainingConfig, device: str | torch.device | None = None,
                          machine: Machine | None = None) -> TrainingConfig:
    """``config.validate()`` plus what this machine cannot do, in one ConfigError listing
    every problem; call it before loading data (``run.validate_config`` does)."""
    return config.validate(machine if machine is not None else detect_machine(device))


# --------------------------------------------------------------------------- the process


class TrainingOutOfMemoryError(PersonFacing, torch.cuda.OutOfMemoryError):
    """CUDA ran out of memory; the message says which settings to lower. A subclass of torch's
    error, so code that already catches that (the search's trials) keeps working."""


# --------------------------------------------------------------------------- torchrun (DDP)

# How long a collective waits for a rank that does not arrive: a rank that died is normally
# noticed by torchrun at once (it stops the others); this ends a rank that hangs. Rank 0 alone
# tokenizes a new corpus while the others wait, so it is long.
DIST_TIMEOUT_MINUTES = float(os.environ.get("TRANSFORMER_TRAINING_DIST_TIMEOUT_MINUTES", "30"))


class DistributedSetupError(PersonFacing, RuntimeError):
    """A multi-process launch that cannot work as started."""


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun launch. The default, one process, is the null
    stand-in: every collective below returns its input, so the loop has one code path."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    cpu_group: Any = None  # gloo group for host-side counts (NCCL reduces GPU tensors only)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, the database, W&B, plots, and prints."""
        return self.rank == 0

    def device(self) -> str | None:
        """One GPU per local rank; None (the usual choice) on one process or without a GPU."""
        return f"cuda:{self.local_rank}" if self.enabled and torch.cuda.is_available() else None

    def wrap(self, model: nn.Module, device: torch.device, sharding: str = "ddp") -> nn.Module:
        """DDP (a whole model per rank), or FSDP (``sharding="fsdp"``: the model sharded in
        place over the ranks; see sharding.py). One process: the model as it is."""
        if not self.enabled:
            return model
        if sharding == "fsdp":
            return shard(model)
        from torch.nn.parallel import DistributedDataParallel
        # No buffer broadcast in forward: it is a collective, and evaluation, where ranks hold
        # different numbers of batches, must have none (buffers are synced once, at wrapping).
        # torch 2.13 names it forward_sync_buffers; older releases, broadcast_buffers.
        ids = [device] if device.type == "cuda" else None
        try:
            return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
        except TypeError:
            return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)

    def describe_batch(self, config: TrainingConfig) -> str:
        """The global batch, for the trainer's plan line (nothing on one process)."""
        if not self.enabled:
            return ""
        c, n = config, self.world_size
        how = "FSDP: the model sharded over the ranks" if c.sharding == "fsdp" else "DDP"
        return (f"\nGlobal batch: {c.batch_size} x {c.grad_accum_steps} accumulation x {n} ranks"
                f" = {c.batch_size * c.grad_accum_steps * n} sequences per step ({how})")

    def no_sync(self, model: nn.Module) -> AbstractContextManager:
        """Skip the gradients' all-reduce (DDP) or reduce-scatter (FSDP) on the micro-steps
        before an accumulation's last."""
        if not self.enabled:
            return nullcontext()
        return no_gradient_sync(model) if is_sharded(model) else model.no_sync()  # type: ignore[operator]

    def even_batches(self, model: nn.Module, loader: Iterable, limit: int | None,
                     block_size: int) -> Iterator:
        """The first ``limit`` (None: all) batches of ``loader``. Sharded, a forward pass is a
        collective (it gathers the weights), so every rank must run as many: a rank whose
        validation shard is shorter (by up to a batch) gets stand-in batches after its own,
        whose targets are all ignore_index (-100, the trainer's): they count for nothing."""
        batches = itertools.islice(loader, limit)
        if not (self.enabled and is_sharded(model)):
            yield from batches
            return
        mine = min(len(loader), limit or math.inf)  # type: ignore[arg-type]
        most = torch.tensor([mine], dtype=torch.int64)
        torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX, group=self.cpu_group)
        yield from batches
        stand_in = (torch.zeros(1, block_size, dtype=torch.long),
                    torch.full((1, block_size), -100, dtype=torch.long))
        for _ in range(int(most.item()) - mine):
            yield stand_in

    def sum_int(self, value: int) -> int:
        """``value`` summed over the ranks, on the host (a micro-batch group's token count)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        torch.distributed.all_reduce(t, group=self.cpu_group)
        return int(t.item())

    def any(self, *flags: bool) -> Any:
        """Each flag True on every rank when it is on any one (Ctrl-C, a callback's stop, a
        checkpoint due by one rank's clock): ranks that disagree about stopping or saving
        would wait for each other forever. Several flags take one collective; one flag gives
        a bool, several a tuple."""
        agreed = tuple(bool(f) for f in flags)
        if self.enabled:
            t = torch.tensor(agreed, dtype=torch.int64)
            torch.distributed.all_reduce(t, group=self.cpu_group)
            agreed = tuple(bool(v) for v in t.tolist())
        return agreed[0] if len(agreed) == 1 else agreed

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a device tensor over the ranks in place; queued, like any kernel (no host wait)."""
        if self.enabled:
            torch.distributed.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier(group=self.cpu_group)

    def quiet(self) -> AbstractContextManager:
        """Rank 0 alone prints: on the others, what the block prints goes nowhere."""
        return nullcontext() if self.is_main else redirect_stdout(io.StringIO())

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (it may write: tokens, a set-aside checkpoint), then the
        others, which find its work done and only read."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


_DISTRIBUTED: Distributed | None = None


def distributed() -> Distributed:
    """This process's :class:`Distributed`. Launched by torchrun (WORLD_SIZE > 1), the first
    call sets up the process group from torchrun's environment: NCCL when there are GPUs (one
    per local rank), gloo otherwise, with a timeout so that no rank waits forever."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing and not torch.distributed.is_initialized():
        raise DistributedSetupError(
            f"WORLD_SIZE={world} is set, but {', '.join(missing)} is not: this process was not "
            "started by torchrun. Launch with `torchrun --nproc_per_node N -m utils.training "
            "train --config FILE`, or unset WORLD_SIZE to train in one process.")
    global _DISTRIBUTED
    if _DISTRIBUTED is None or not torch.distributed.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        timeout = datetime.timedelta(minutes=DIST_TIMEOUT_MINUTES)
        if not torch.distributed.is_initialized():
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.set_device(local_rank)
            torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
        backend = torch.distributed.get_backend()
        cpu_group = (torch.distributed.new_group(backend="gloo", timeout=timeout)
                     if backend != "gloo" else None)
        _DISTRIBUTED = Distributed(torch.distributed.get_rank(), local_rank,
                                   torch.distributed.get_world_size(), cpu_group)
    return _DISTRIBUTED


def end_distributed() -> None:
    """Tear the process group down at a clean exit (after an error torchrun ends the ranks)."""
    global _DISTRIBUTED
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Together: a gloo rank that tears down while another still works (rank 0 writing the
        # last checkpoint) can abort at exit ("terminate called without an active exception").
        torch.distributed.barrier(group=_DISTRIBUTED.cpu_group if _DISTRIBUTED else None)
        torch.distributed.destroy_process_group()
    _DISTRIBUTED = None


@contextmanager
def explain_out_of_memory(config: TrainingConfig, precision: Precision) -> Iterator[None]:
    """Turn CUDA's out-of-memory error into what to change; the last checkpoint is intact."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        if isinstance(exc, TrainingOutOfMemoryError):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        smaller = max(1, config.batch_size // 2)
        raise TrainingOutOfMemoryError(
            f"The GPU ran out of memory at batch_size {config.batch_size} x block_size "
            f"{config.block_size} ({precision.name}). Set batch_size = {smaller} and "
            f"grad_accum_steps = {config.grad_accum_steps * 2} (the same tokens per step), or a "
            "smaller block_size or model; then run again: it resumes from the last checkpoint."
        ) from exc


@dataclass
class Interrupt:
    """Whether Ctrl-C asked the loop to stop at its next safe point."""

    requested: bool = False


@contextmanager
def deferred_interrupt(say: Callable[[str], None]) -> Iterator[Interrupt]:
    """The first Ctrl-C (or Colab's "Interrupt execution") only sets ``requested``, so the loop
    can finish its step and save a checkpoint before stopping, and an interrupted run resumes
    exactly; a second one stops at once. Signal handlers can only be set from the main thread;
    elsewhere Ctrl-C is left as is."""
    interrupt = Interrupt()
    if threading.current_thread() is not threading.main_thread():
        yield interrupt
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if interrupt.requested:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        interrupt.requested = True
        say("Interrupt: finishing this step and saving a checkpoint "
            "(interrupt again to stop at once, without saving).")

    signal.signal(signal.SIGINT, handler)
    try:
        yield interrupt
    finally:
        signal.signal(signal.SIGINT, previous)
