"""What this runtime can do: device, mixed precision, peak FLOP/s for MFU.

Colab hands out a T4 one day, an A100 the next, and sometimes no GPU at all. The choice of
precision is made here, once, from the hardware, and printed with its reason so that nobody has
to guess why a run is slow or why it uses a grad scaler.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .training_config import PRECISIONS


@dataclass(frozen=True)
class Precision:
    name: str  # "bf16" | "fp16" | "fp32"
    autocast_dtype: torch.dtype | None  # None: no autocast
    use_grad_scaler: bool  # fp16 only: its narrow exponent range underflows small gradients
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def choose_device(prefer: str | None = None) -> torch.device:
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
        raise ValueError(f"precision={requested!r}: choose one of {', '.join(PRECISIONS)}.")
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
    if requested == "fp16":
        raise ValueError(
            "precision='fp16' needs a CUDA GPU: on a CPU fp16 matmuls are emulated and about "
            "100x slower. Use precision='auto' (bf16 where the CPU supports it) or 'fp32'."
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
