"""One generate step for every caller (`dllm code`, `dllm bench`, training's evaluation, serving):
drain a backend's events, feed each denoising step to a sink, return the Generation.

Knows: the event order a Backend promises (steps, then exactly one Generation). Must not:
import torch, draw (the sink does), or decide what the answer means.
"""

from __future__ import annotations

from typing import Callable

from .backend import Backend
from .config import SamplerConfig
from .events import DenoiseStep, Generation, Request

Sink = Callable[[DenoiseStep], None]


def run(backend: Backend, request: Request, cfg: SamplerConfig, sink: Sink | None = None) -> Generation:
    """Run `request` on `backend`; every DenoiseStep goes to `sink` (the live view, a timer)."""
    result: Generation | None = None
    for event in backend.generate(request, cfg):
        if isinstance(event, Generation):
            result = event
        elif sink is not None:
            sink(event)
    assert result is not None, f"backend {backend.name} ended without a Generation"
    return result
