"""int8 weight-only quantisation (`--quant int8`): the weights of the linear layers stored as int8
with one scale per output row, the activations and everything else in the load dtype.

Knows: the format (symmetric, per output channel: q = round(w / s) in [-127, 127], s = max|w_row| /
127 in fp32; w is read back as q * s), which modules it applies to (every `nn.Linear` inside the
network's layers, routers excepted, and the untied LM head: docs/performance.md "int8 weights"
has the drift measured with and without the head), the `Int8Linear` module that replaces them
(it dequantises in the matmul, a bounded number of rows at a time, so no full-precision copy of a
large matrix ever exists), and how a meta-built model is prepared so that the strict loader
quantises each weight as it arrives (`Int8Linear.load_weight`): the full-precision model is never
on the device.
Must not: read files, know a layout's tensor names (it walks modules; the loader names the head
module), quantise embeddings, norms, biases or MoE routers (a module named `gate` or `router` is
a router: an `nn.Linear` of that name stays in the load dtype), or import torchao (see
docs/performance.md for why this is written here).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..footprint import is_router  # MoE routers (Qwen3-MoE / LLaDA2 `mlp.gate`): never quantised
from .layouts.common import lm_head  # the CPU batch-1 head product (measured: docs/performance.md)

QMAX = 127  # symmetric: -127..127 (the int8 value -128 is never used)
CHUNK_ELEMENTS = 1 << 22  # weight elements dequantised at once (4 M: 16 MB as fp32)


def quantise_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w (out, in), any float dtype -> (int8 q (out, in), fp32 scale (out,)) on w's device, with
    w ≈ q * scale[:, None]. Computed in fp32 a bounded number of rows at a time."""
    out_features, in_features = w.shape
    q = torch.empty(out_features, in_features, dtype=torch.int8, device=w.device)
    scale = torch.empty(out_features, dtype=torch.float32, device=w.device)
    rows = max(1, CHUNK_ELEMENTS // max(1, in_features))
    for a in range(0, out_features, rows):
        w32 = w[a:a + rows].float()
        s = w32.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / QMAX
        q[a:a + rows] = torch.round(w32 / s[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
        scale[a:a + rows] = s
    return q, scale


class Int8Linear(nn.Module):
    """y = x @ (q * s)ᵀ + b: `weight` is the int8 q (a frozen Parameter, so the loader's strict
    name and shape checks and the parameter count are unchanged), `scale` the fp32 per-row scale,
    `bias` (if any) in the load dtype. Built on the meta device by `prepare`; `load_weight`
    quantises a full-precision tensor into it."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=torch.int8), requires_grad=False)
        self.register_buffer("scale", torch.ones(out_features, dtype=torch.float32))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False) if bias else None
        self.loaded = False

    def load_weight(self, w: torch.Tensor) -> None:
        """Quantise the full-precision `w` (out, in) on its device into this module."""
        if tuple(w.shape) != (self.out_features, self.in_features):
            raise ValueError(f"weight of shape {list(w.shape)} for a {self.out_features}x{self.in_features} layer")
        q, scale = quantise_rows(w)
        self.weight = nn.Parameter(q, requires_grad=False)
        self.scale = scale
        self.loaded = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = max(1, CHUNK_ELEMENTS // self.in_features)
        scale = self.scale.to(x.dtype)
        if self.out_features <= rows:
            y = F.linear(x, self.weight.to(x.dtype)) * scale
        else:  # a large matrix (the LM head): dequantise a slice at a time, with the head's CPU product
            y = torch.cat([lm_head(x, self.weight[a:a + rows].to(x.dtype)) * scale[a:a + rows]
                           for a in range(0, self.out_features, rows)], dim=-1)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


def targets(net: nn.Module, layers: Iterable[nn.Module], head: str | None) -> Iterator[tuple[str, nn.Linear]]:
    """(name in `net`, module) of every nn.Linear to quantise: those inside the `layers` (the
    network's blocks) whose own name is not a router's, and the module named `head` when it is an
    nn.Linear."""
    blocks = {id(layer) for layer in layers}
    for prefix, block in net.named_modules():
        if id(block) not in blocks:
            continue
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear) and not is_router(name.rpartition(".")[2]):
                yield f"{prefix}.{name}", module
    if head is not None:
        module = net.get_submodule(head) if _has(net, head) else None
        if isinstance(module, nn.Linear):
            yield head, module


def _has(net: nn.Module, name: str) -> bool:
    try:
        net.get_submodule(name)
    except AttributeError:
        return False
    return True


def prepare(net: nn.Module, layers: Iterable[nn.Module], head: str | None, dtype: torch.dtype) -> list[str]:
    """Replace the target linears of a meta-built `net` by empty Int8Linear modules (on meta too);
    returns their names. The loader then fills them (`load_weight`) tensor by tensor."""
    names = []
    for name, linear in list(targets(net, layers, head)):
        with torch.device("meta"):
            q = Int8Linear(linear.in_features, linear.out_features, linear.bias is not None, dtype)
        parent, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, leaf, q)
        names.append(name)
    return names


def quantise_(net: nn.Module, layers: Iterable[nn.Module], head: str | None) -> list[str]:
    """Quantise the target linears of a materialised `net` in place, one module at a time (random
    weights of a published shape; tests). Returns their names."""
    names = []
    for name, linear in list(targets(net, layers, head)):
        w = linear.weight.detach()
        with torch.device("meta"):
            q = Int8Linear(linear.in_features, linear.out_features, linear.bias is not None, w.dtype)
        q.load_weight(w)
        if linear.bias is not None:
            q.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        parent, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, leaf, q)
        del w, linear
        names.append(name)
    return names


def quantised_modules(net: nn.Module) -> dict[str, Int8Linear]:
    return {name: m for name, m in net.named_modules() if isinstance(m, Int8Linear)}


def storage_bytes(net: nn.Module) -> int:
    """Bytes the network's parameters and buffers hold (int8 weights count 1 byte, scales 4)."""
    return sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()])
