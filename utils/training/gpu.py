"""GPU and process-memory readings for the per-epoch metrics (NVML + torch.cuda).

Every function here answers "what can this machine tell us right now" and never raises: a
missing driver, a GPU that does not report power, or a MIG slice without utilisation just leaves
that reading out. Callers get a dict whose keys are the names in ``metric_names``, so a CPU run
has no gpu/ keys at all instead of zeros that would look like an idle GPU.

NVML is initialised once per process and a failure is remembered: on a CPU machine ``nvmlInit``
fails at once (``NVMLError_LibraryNotFound``), and we do not want to retry it every epoch. Tests
fake a GPU by putting their own ``pynvml`` module into ``sys.modules`` and calling
:func:`reset_nvml`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

from . import metric_names as M

GIB = 2**30  # nvidia-smi and Colab's resource panel count in MiB/GiB; so do we

_nvml: Any = None  # the initialised pynvml module
_nvml_failed = False  # NVML was tried and is unavailable: do not try again every epoch


def reset_nvml() -> None:
    """Forget the cached NVML state, so the next reading imports and initialises pynvml again."""
    global _nvml, _nvml_failed
    _nvml, _nvml_failed = None, False


def _load_nvml() -> Any | None:
    global _nvml, _nvml_failed
    if _nvml is not None or _nvml_failed:
        return _nvml
    try:
        import pynvml
    except ImportError:
        _nvml_failed = True
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # no NVIDIA GPU or driver
        _nvml_failed = True
        return None
    _nvml = pynvml
    return _nvml


def _handle(nvml: Any, device_index: int) -> Any:
    """NVML numbers every GPU in the machine while CUDA numbers only the visible ones, so CUDA
    device 0 under ``CUDA_VISIBLE_DEVICES=2`` is NVML device 2."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    visible = [v.strip() for v in listed if v.strip()]
    if device_index < len(visible):
        entry = visible[device_index]
        if entry.isdigit():
            return nvml.nvmlDeviceGetHandleByIndex(int(entry))
        return nvml.nvmlDeviceGetHandleByUUID(entry)
    return nvml.nvmlDeviceGetHandleByIndex(device_index)


def _read(nvml: Any, read: Callable[[], float]) -> float | None:
    try:
        return float(read())
    except nvml.NVMLError:  # this GPU does not report it (power on some boards, MIG slices)
        return None


def _nvml_readings(device_index: int, names: tuple[str, ...]) -> dict[str, float]:
    nvml = _load_nvml()
    if nvml is None:
        return {}
    try:
        handle = _handle(nvml, device_index)
    except nvml.NVMLError:
        return {}
    readers: dict[str, Callable[[], float]] = {
        M.GPU_UTILIZATION: lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu,
        M.GPU_MEMORY_USED_GB: lambda: nvml.nvmlDeviceGetMemoryInfo(handle).used / GIB,
        M.GPU_MEMORY_TOTAL_GB: lambda: nvml.nvmlDeviceGetMemoryInfo(handle).total / GIB,
        M.GPU_TEMPERATURE_C: lambda: nvml.nvmlDeviceGetTemperature(handle,
                                                                   nvml.NVML_TEMPERATURE_GPU),
        M.GPU_POWER_W: lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,  # milliwatts
    }
    out = {}
    for name in names:
        value = _read(nvml, readers[name])
        if value is not None:
            out[name] = value
    return out


def _cuda() -> Any | None:
    """torch.cuda, but only when this process already uses CUDA: asking an uninitialised CUDA for
    memory stats would create a context (hundreds of MiB) in a run that trains on the CPU."""
    torch = sys.modules.get("torch")  # not imported: nobody here is using CUDA
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


def gpu_snapshot(device_index: int = 0) -> dict[str, float]:
    """All gpu/ readings for one CUDA device; an empty dict without a GPU. Never raises."""
    out = _nvml_readings(device_index, (M.GPU_UTILIZATION, M.GPU_MEMORY_USED_GB,
                                        M.GPU_MEMORY_TOTAL_GB, M.GPU_TEMPERATURE_C, M.GPU_POWER_W))
    cuda = _cuda()
    if cuda is not None:
        # A broken CUDA context raises RuntimeError here; the training step reports that, not us.
        with contextlib.suppress(RuntimeError):
            out[M.GPU_MAX_MEMORY_ALLOCATED_GB] = cuda.max_memory_allocated(device_index) / GIB
            if M.GPU_MEMORY_USED_GB not in out:  # no NVML: CUDA's view of the same device
                free, total = cuda.mem_get_info(device_index)
                out[M.GPU_MEMORY_USED_GB] = (total - free) / GIB
                out[M.GPU_MEMORY_TOTAL_GB] = total / GIB
    return out


def gpu_load_sample(device_index: int = 0) -> dict[str, float]:
    """Utilisation and power right now. Both are instantaneous, so the tracker samples them during
    the epoch and averages: one reading at epoch end would catch the idle gap of evaluation."""
    return _nvml_readings(device_index, (M.GPU_UTILIZATION, M.GPU_POWER_W))


def reset_peak_memory(device_index: int = 0) -> None:
    """Start a new peak for ``gpu/max_memory_allocated_gb``, so each epoch reports its own."""
    cuda = _cuda()
    if cuda is not None:
        with contextlib.suppress(RuntimeError):
            cuda.reset_peak_memory_stats(device_index)


def process_rss_gb() -> float | None:
    """Resident memory of this process in GiB (None where the OS does not tell us)."""
    try:
        with open("/proc/self/statm") as fh:  # Linux (Colab): no dependency, about 10 us
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / GIB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss / GIB
