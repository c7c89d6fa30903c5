"""One generate step for every caller (`dllm code`, `dllm bench`, training's evaluation, serving):
drain a backend's events, feed each denoising step (local engine) or text snapshot (remote
endpoint) to its sink, return the Generation.

Knows: the event order a Backend promises (steps or snapshots, then exactly one Generation).
Must not: import torch, draw (the sinks do), or decide what the answer means.
"""

from __future__ import annotations

from typing import Callable

from .backend import Backend
from .config import SamplerConfig
from .errors import DllmError
from .events import DenoiseStep, Generation, Request, TextSnapshot

Sink = Callable[[DenoiseStep], None]
TextSink = Callable[[TextSnapshot], None]


def run(backend: Backend, request: Request, cfg: SamplerConfig, sink: Sink | None = None,
        text_sink: TextSink | None = None) -> Generation:
    """Run `request` on `backend`; every DenoiseStep goes to `sink` (the live view, a timer), every
    TextSnapshot of a remote draft to `text_sink`."""
    result: Generation | None = None
    for event in backend.generate(request, cfg):
        if isinstance(event, Generation):
            result = event
        elif isinstance(event, TextSnapshot):
            if text_sink is not None:
                text_sink(event)
        elif sink is not None:
            sink(event)
    if result is None:  # a remote stream can end early; the local engine never does (asserted there)
        raise DllmError(f"{backend.name} ended without an answer; nothing was applied; retry")
    return result
