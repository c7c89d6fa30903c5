"""The Backend contract: what produces a generation, local engine or remote endpoint.

Knows: what a backend takes (an `events.Request`: the encoded prompt and, for anchored
infilling, the encoded suffix, plus their text forms for backends that take text) and what it
yields (`events.Event`: DenoiseSteps while the local engine works, or TextSnapshots of a remote
draft, then exactly one Generation), and how to open the local engine without importing torch
before it is needed. Remote endpoints (remote.py: `dllm serve`, Mercury, SGLang, vLLM) are
Backends too. Must not: import torch at module level, draw on a terminal, or know what happens
to the answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator, Protocol

from .config import SamplerConfig
from .events import Event, Request, SpecialTokens

if TYPE_CHECKING:
    from .catalog import Checkpoint
    from .tokenizer import Tokenizer

__all__ = ["Backend", "Event", "Request", "open_local"]


class Backend(Protocol):
    """generate(request, cfg) yields DenoiseStep (local) or TextSnapshot (remote) events, then one
    Generation (the answer). A failure a user can fix is a one-line DllmError."""

    name: str
    tokens: SpecialTokens  # the ids the steps' tokens use (the live view draws masks with it; a
    # remote backend, whose events carry text, has placeholders)

    def token_text(self, token_id: int) -> str:
        """How one token id prints (for drawing a canvas that still has masks)."""
        ...

    def generate(self, request: Request, cfg: SamplerConfig) -> Iterator[Event]: ...


def open_local(ckpt: "Checkpoint", device: str, dtype: str, tokenizer: "Tokenizer | None" = None,
               describe: Callable[[str], None] | None = None, quant: str = "none") -> Backend:
    """Load the checkpoint onto `device` in `dtype` ("auto" allowed) as a local Backend (torch is
    imported here). `describe` hears "name (dtype) on device" once both are chosen. quant "int8":
    weight-only int8 linears."""
    from .engine.device import dtype_name, pick_device, pick_dtype
    from .engine.loader import load_model
    from .engine.local import LocalBackend

    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    if describe is not None:
        describe(f"{ckpt.name} ({dtype_name(dt)}{', int8 weights' if quant == 'int8' else ''}) on {dev}")
    return LocalBackend(load_model(ckpt, device=dev, dtype=dt, tokenizer=tokenizer, quant=quant))
