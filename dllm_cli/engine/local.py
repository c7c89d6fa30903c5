"""The local engine as a Backend: run the sampler on a loaded Model and decode its answer.

Knows: which loop a request takes (DreamOn's variable-length loop for an infill request on a
checkpoint with an `<|expand|>` token, else `sampler.denoise`, which runs `cfg.block_loop` for a
block-causal model and refuses a suffix there), where an answer ends (the first
stop token) and how it is decoded (the checkpoint's tokenizer, special tokens dropped).
Must not: draw, or know what happens to the answer.
"""

from __future__ import annotations

from typing import Iterator

from ..config import SamplerConfig
from ..events import DenoiseStep, Event, Generation, Request
from .dreamon import denoise_dreamon, dreamon_sampler
from .model import Model
from .sampler import cut_at_stop, denoise


class LocalBackend:
    """A Backend over a Model in this process (cache_refresh and compile: see sampler.denoise)."""

    def __init__(self, model: Model, *, cache_refresh: str = "delayed", compile: bool = False) -> None:
        self.model = model
        self.tokens = model.tokens
        self.name = model.checkpoint.name if model.checkpoint is not None else "random weights"
        self.cache_refresh, self.compile = cache_refresh, compile

    def token_text(self, token_id: int) -> str:
        tok = self.model.tokenizer
        return tok.token_text(token_id) if tok is not None else f"<{token_id}>"

    def generate(self, request: Request, cfg: SamplerConfig) -> Iterator[Event]:
        steps: Iterator[DenoiseStep]
        if request.suffix_ids is not None and self.tokens.expand is not None:
            steps = denoise_dreamon(self.model, request.prompt_ids, request.suffix_ids, dreamon_sampler(cfg))
        else:
            steps = denoise(self.model, request.prompt_ids, cfg, suffix_ids=request.suffix_ids,
                            cache_refresh=self.cache_refresh, compile=self.compile)
        last, edits = None, 0
        for step in steps:
            last, edits = step, edits + len(step.edited)
            yield step
        assert last is not None and last.done, "denoise() ended without a done step"
        answer = [t for t in cut_at_stop(last.tokens, self.tokens.stops) if t != self.tokens.mask]
        tok = self.model.tokenizer
        text = tok.decode(answer, skip_special=True) if tok is not None else ""
        yield Generation(text, len(answer), last.index + 1, last.forwards, last.elapsed, request.prompt_tokens,
                         edits)
