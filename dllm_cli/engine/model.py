"""The model contract the samplers use, and the handle `load_model` returns.

Knows: what a sampler needs of a model (`Denoiser`: aligned logits, a fresh KV cache, the
device, the special token ids, and its attention pattern: `attention_block`, None for
bidirectional attention, B for block-causal attention in blocks of B aligned at position 0) and
the loaded handle (`Model`): the network plus the
`SpecialTokens`, tokenizer and `catalog.Checkpoint` it came with, carried as fields instead of
attributes set on the `nn.Module`. Inference runs the network under no_grad here.
Must not: read files, sample, or decode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Protocol

import torch
from torch import nn

from ..events import SpecialTokens
from .layouts import BlockKVCache, DiffusionModel, KVCache, ModelSpec

if TYPE_CHECKING:
    from ..catalog import Checkpoint
    from ..tokenizer import Tokenizer


class Denoiser(Protocol):
    """What `sampler.denoise` and `dreamon.denoise_dreamon` call (tests pass mocks of it). A
    block-causal model (`attention_block` set) also takes `rows=(a, b)` in `logits`: only those
    positions of the window are scored."""

    tokens: SpecialTokens

    @property
    def device(self) -> torch.device: ...

    def logits(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               cache: Any = None, window: tuple[int, int] | None = None) -> torch.Tensor: ...

    def new_cache(self) -> Any: ...


def attention_block(model: Any) -> int | None:
    """The model's block-causal block length (`attention_block`), None when its attention is
    bidirectional (also for Denoisers that do not say: the 2025 mocks)."""
    block = getattr(model, "attention_block", None)
    return block if isinstance(block, int) else None


class Model:
    """A loaded diffusion LM: `net` (the nn.Module), its special tokens, tokenizer and checkpoint.

    `logits(ids, attention_mask=None, cache=None, window=None)` is `net.logits` without autograd
    (see docs/architecture.md for the window and cache contract)."""

    def __init__(self, net: DiffusionModel, tokens: SpecialTokens, tokenizer: "Tokenizer | None" = None,
                 checkpoint: "Checkpoint | None" = None) -> None:
        self.net = net
        self.tokens = tokens
        self.tokenizer = tokenizer
        self.checkpoint = checkpoint

    @property
    def spec(self) -> ModelSpec:
        return self.net.spec

    @property
    def device(self) -> torch.device:
        return self.net.embed_weight().device

    @property
    def attention_block(self) -> int | None:
        """None: bidirectional attention; B: block-causal in blocks of B from position 0."""
        return self.spec.block_size

    @property
    def dtype(self) -> torch.dtype:
        return self.net.embed_weight().dtype

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.net.parameters()

    @torch.no_grad()  # not inference_mode: callers may edit the returned logits in place
    def logits(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               cache: KVCache | BlockKVCache | None = None,
               window: tuple[int, int] | None = None, rows: tuple[int, int] | None = None) -> torch.Tensor:
        return self.net.logits(ids, attention_mask, cache, window, rows)

    def new_cache(self) -> KVCache | BlockKVCache:
        """An empty cache for this model: the approximate canvas KVCache (bidirectional layouts,
        filled by logits(ids, cache=c)) or the exact append-only BlockKVCache (block-causal)."""
        return self.net.new_cache()

    def __repr__(self) -> str:
        where = self.checkpoint.folder if self.checkpoint is not None else "random weights"
        return f"Model({self.spec.layout}/{self.spec.family}, {where}, {self.dtype} on {self.device})"
