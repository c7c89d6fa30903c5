"""Devices, dtypes and memory: which device and dtype a run uses, whether a model fits, and the
device measurements `dllm bench` reports (bandwidth, peak memory, synchronisation).

Knows: torch's device and dtype names, CUDA/MPS availability, free memory ($DLLM_MEMORY_LIMIT
overrides the probe), and how to time device work honestly. Must not: read checkpoint files,
sample, or know about terminals.
"""

from __future__ import annotations

import math
import os
import resource
import time
from pathlib import Path

import torch

from ..errors import OutOfMemoryError, UsageError
from ..footprint import MEMORY_MARGIN  # weights x 1.05: activations, allocator slack

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """"auto" / None -> cuda, else mps, else cpu; an unavailable device is a UsageError."""
    if isinstance(device, torch.device):
        return device
    name = str(device or "auto")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s); pick another")
    if dev.type == "mps" and not _mps_available():
        raise UsageError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    return dev


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """A torch dtype from a dtype or a name; "auto" = bf16 on CUDA, fp16 on MPS, fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype or "auto").lower().replace("torch.", "")
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if name not in DTYPES:
        raise UsageError(f"--dtype {dtype!r} is not supported; use float32, bfloat16, float16 or auto")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def available_memory(device: torch.device) -> int | None:
    """Free bytes on `device`; $DLLM_MEMORY_LIMIT overrides; None when unknown."""
    env = os.environ.get("DLLM_MEMORY_LIMIT")
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise UsageError(f"DLLM_MEMORY_LIMIT={env!r} is not a number of bytes") from None
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(n_params: int, dtype: torch.dtype, device: torch.device, where: object,
                 memory_limit: int | None = None, nbytes: int | None = None) -> int:
    """Refuse (OutOfMemoryError) when params x bytes (x MEMORY_MARGIN) exceed the free memory;
    returns the bytes needed. nbytes: the weights' bytes when they are not all in `dtype`
    (--quant int8: footprint.weight_bytes)."""
    quantised = nbytes is not None
    weights = nbytes if nbytes is not None else n_params * torch.empty((), dtype=dtype).element_size()
    need = int(weights * MEMORY_MARGIN)
    free = memory_limit if memory_limit is not None else available_memory(device)
    if free is not None and need > free:
        gib = 2 ** 30
        as_what = f"with int8 weights ({dtype_name(dtype)} elsewhere)" if quantised else f"as {dtype_name(dtype)}"
        hint = "use another --device" if quantised else "use --dtype bfloat16 or --quant int8, another --device"
        raise OutOfMemoryError(
            f"{where}: the model needs about {need / gib:.1f} GiB {as_what} "
            f"but {device} has {free / gib:.1f} GiB free; {hint}, or a smaller model")
    return need


# ---- measurements (dllm bench) ------------------------------------------------------------

def sync(device: torch.device) -> None:
    """Wait for queued device work (timings must not stop before the kernels do)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int:
    """Peak device memory (CUDA), else the process's max RSS so far (KiB on Linux)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_bandwidth(device: torch.device, nbytes: int | None = None, iters: int = 5) -> float:
    """Device memory bandwidth in bytes/s from a large tensor copy (read + write counted)."""
    device = torch.device(device)
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 1 << 27)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up: page in, allocate
    sync(device)
    best = math.inf
    for _ in range(iters):
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best
