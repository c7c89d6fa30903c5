"""What a checkpoint's weights take in memory, before any is loaded: bytes per tensor in a load
dtype or with `--quant int8` (which tensors int8 stores: the linears inside the layers and the
untied head, never a router; one fp32 scale per row), the margin the memory check adds, free RAM,
and whether a model fits in bfloat16, only as int8, or not at all (`dllm models`).

Knows: the quantisation rule by tensor name (`is_quantised`; engine/quant.py applies the same rule
to modules, and tests/test_quant.py keeps the two equal), each layout's head tensor name.
Must not: import torch, read files other than /proc/meminfo, or know what a checkpoint is
(catalog.py reads the headers and calls in here).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from .errors import UsageError

QUANT_MODES = ("none", "int8")
ROUTER_NAMES = ("gate", "router")  # MoE routers (`mlp.gate`): never quantised (engine/quant.py)
QUANT_HEAD = True  # the untied LM head is quantised too (docs/performance.md "int8 weights")
# The untied LM head's tensor per layout (= engine/layouts' HEAD_NAME; a test checks both agree).
HEAD_NAMES = {"dream": "lm_head.weight", "llada": "model.transformer.ff_out.weight", "sdar": "lm_head.weight",
              "stable-diffcoder": "lm_head.weight", "fast-dllm-v2": "lm_head.weight", "llada2-moe": "lm_head.weight",
              "sdar-moe": "lm_head.weight"}
SCALE_BYTES = 4  # one fp32 scale per output row of a quantised matrix
MEMORY_MARGIN = 1.05  # weights x 1.05: activations and allocator slack on top of the parameters


def quant_mode(value: str | None, where: str = "--quant") -> str:
    """"none" | "int8" from an option or config value (None: "none"); UsageError otherwise."""
    name = "none" if value is None else str(value).strip().lower()
    if name not in QUANT_MODES:
        raise UsageError(f"{where} {value!r} is not supported; use none or int8 (int8: weight-only, "
                         "about half the memory of bfloat16)")
    return name


def is_quantised(name: str, shape: tuple[int, ...] | list[int], head: str | None) -> bool:
    """Whether --quant int8 stores tensor `name` as int8: the 2-D `.weight` of a linear layer inside
    the layers (`...layers.N....` / `...blocks.N....`) that is not a router's, and the untied head
    `head` (when QUANT_HEAD). Embeddings, norms, biases and routers keep the load dtype."""
    if len(shape) != 2 or not name.endswith(".weight"):
        return False
    if head is not None and name == head:
        return QUANT_HEAD
    parts = name[:-len(".weight")].split(".")
    in_layers = any(p in ("layers", "blocks") and n.isdigit() for p, n in zip(parts, parts[1:]))
    return in_layers and not is_router(parts[-1])


def is_router(leaf: str) -> bool:
    """Whether a module (its last name) is a MoE router: `gate` (Qwen3-MoE / LLaDA2 `mlp.gate`) or a
    name containing "router"; --quant int8 never quantises one."""
    return leaf in ROUTER_NAMES or "router" in leaf


def weight_bytes(tensors: list[tuple[str, tuple[int, ...]]], dtype_bytes: int, quant: str = "none",
                 head: str | None = None) -> int:
    """Bytes the weights take once loaded: `dtype_bytes` per element, or with quant "int8" 1 byte
    per quantised element plus a 4-byte scale per row (`is_quantised`)."""
    total = 0
    for name, shape in tensors:
        n = 1
        for dim in shape:
            n *= int(dim)
        if quant == "int8" and is_quantised(name, shape, head):
            total += n + SCALE_BYTES * int(shape[0])
        else:
            total += n * dtype_bytes
    return total


def available_ram(environ: Mapping[str, str] | None = None) -> int | None:
    """Free RAM in bytes ($DLLM_MEMORY_LIMIT overrides; /proc/meminfo MemAvailable); None: unknown."""
    env = os.environ if environ is None else environ
    if env.get("DLLM_MEMORY_LIMIT"):
        try:
            return int(float(env["DLLM_MEMORY_LIMIT"]))
        except ValueError:
            return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def fits(bf16: int | None, int8: int | None, free: int | None) -> str:
    """"bf16" (fits as bfloat16), "int8" (only with --quant int8), "no", or "-" (unknown)."""
    if free is None or bf16 is None or int8 is None:
        return "-"
    if bf16 * MEMORY_MARGIN <= free:
        return "bf16"
    return "int8" if int8 * MEMORY_MARGIN <= free else "no"
