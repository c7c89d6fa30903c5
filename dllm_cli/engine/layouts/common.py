"""Blocks shared by the layouts: RMSNorm, RoPE, attention (bidirectional or block-causal), SwiGLU,
the two KV caches, the `DiffusionModel` base class (the network: `logits`, `hidden`, `head`), and
`config_int` (a checked config.json value) for the layouts' spec_from_config.

Knows: the maths of a LLaMA-like block; the two attention patterns a layout can have:
  * bidirectional (the 2025 families: the only mask is padding), with the approximate
    canvas-sized `KVCache` (Fast-dLLM: windows overwrite what they query, the rest is stale);
  * block-causal (`ModelSpec.block_size` = B: SDAR, Stable-DiffCoder, Fast-dLLM v2): query i sees
    key j iff j // B <= i // B, blocks aligned at absolute position 0, the prompt included, with
    the exact append-only `BlockKVCache` (a finished block's K/V never change);
the alignment rule (returned logits index i score token i; shifted layouts are realigned here),
and the windowed forward over either cache. A layout supplies its blocks (`layers()`); they call
`attention(...)` (or `attend(...)` with their own q/k/v, e.g. a fused QKV), so the attention
pattern and the caches are the same for every layout, dense or MoE.
Must not: read files, sample, know tensor names (each layout module names its own parameters),
or know token ids (the `engine.model.Model` handle carries them). Gradients flow (training uses
the same network); inference goes through the handle, which runs it under no_grad. Nothing here
needs flash-attn or flex-attention: SDPA with a boolean mask (None when nothing is masked).

The forward is the hot path: no host syncs, no Python loops over tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CheckpointError

# enable_gqa (torch >= 2.5) lets SDPA share KV heads without copying them.
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2] if p.isdigit()) >= (2, 5)

@dataclass(frozen=True)
class ModelSpec:
    """The shape of a model, read from its config.json (names are HF's, whatever the layout)."""

    layout: str  # "dream" | "llada"
    family: str  # "dream" | "dream-coder" | "diffucoder" | "dreamon" | "open-dcoder" | "llada" | ...
    vocab_size: int  # rows of the embedding / head (= logits width)
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float
    rms_norm_eps: float
    shifted: bool  # trained to predict the next position (realigned by the model)
    tied: bool  # head shares the embedding matrix
    qkv_bias: bool
    n_params: int = 0
    qk_norm: bool = False  # per-head RMSNorm of q and k before RoPE (Qwen3 / SDAR)
    block_size: int | None = None  # None: bidirectional; B: block-causal, blocks of B from position 0

    @property
    def block_causal(self) -> bool:
        return self.block_size is not None

    @property
    def rope_dim(self) -> int:
        """The dims of a head that RoPE rotates (all of them; partial rotary: MoESpec)."""
        return self.head_dim

    def param_count(self) -> int:
        """Parameters implied by the shape (what n_params will be once built)."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attn = 2 * q * h + 2 * kv * h + (q + 2 * kv if self.qkv_bias else 0)  # q, o, k, v (+ biases)
        attn += 2 * self.head_dim if self.qk_norm else 0
        layer = attn + 3 * h * self.intermediate_size + 2 * h
        head = 0 if self.tied else self.vocab_size * h
        return self.vocab_size * h + self.num_layers * layer + h + head


def config_int(cfg: dict, key: str, where: str, default: int | None = None) -> int:
    """cfg[key] as a positive int; `default` when absent/null (None: required). CheckpointError names
    the file and the key otherwise."""
    value = cfg.get(key)
    if value is None and default is not None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CheckpointError(f"{where}: {key!r} is missing or not a positive integer; fix config.json")
    return value


class RMSNorm(nn.Module):
    """x / rms(x) in fp32, cast back to the input dtype, then times the weight (as HF Llama)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_inv_freq(head_dim: int, theta: float, device=None) -> torch.Tensor:
    """inv_freq_i = theta^(-2i/d), fp32, (head_dim/2,)."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    return 1.0 / (theta ** exponent)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor):
    """positions (B, T) or (T,) -> cos, sin (B or 1, 1, T, head_dim) in fp32 (rotate-half layout)."""
    freqs = positions.float().unsqueeze(-1) * inv_freq  # (.., T, d/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    if emb.dim() == 2:
        emb = emb.unsqueeze(0)
    emb = emb.unsqueeze(1)  # (B, 1, T, d): broadcast over heads
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, d) rotated in fp32, returned in x's dtype."""
    x32 = x.float()
    half = x32.shape[-1] // 2
    rotated = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
    return (x32 * cos + rotated * sin).to(x.dtype)


class KVCache:
    """Per-layer keys/values (B, KV, T, d) of the whole canvas, for block-wise decoding.

    A full pass with a cache (re)writes every position; a windowed pass overwrites the
    window's positions and reads the rest. It is an approximate cache (Fast-dLLM): what is
    cached elsewhere is whatever was written last.
    """

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers

    def __bool__(self) -> bool:  # an empty cache is still a cache (`cache or new_cache()`)
        return True

    @property
    def length(self) -> int:
        """Canvas length the cache holds (0 when empty)."""
        k = self.keys[0]
        return 0 if k is None else k.shape[2]

    def clear(self) -> None:
        self.keys = [None] * len(self.keys)
        self.values = [None] * len(self.values)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int,
               full: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Write k, v (B, KV, t, d) at positions start.. ; return the layer's full K, V."""
        if full:
            self.keys[layer], self.values[layer] = k.contiguous(), v.contiguous()
        else:
            keys, values = self.keys[layer], self.values[layer]
            assert keys is not None and values is not None, "a windowed write needs a full pass first"
            end = start + k.shape[2]
            keys[:, :, start:end] = k
            values[:, :, start:end] = v
        return self.keys[layer], self.values[layer]


class BlockKVCache:
    """The exact cache of a block-causal model: per-layer keys/values (B, KV, n, d) of positions
    0..n-1, append-only. A forward that starts at position n (the cache's length) appends its
    fresh K/V; `crop(m)` forgets everything from m on. Because attention is causal across blocks,
    the K/V of a finished block never change: the prompt is written once, each block is denoised
    against the cache of everything before it (its own K/V appended and cropped away again), and
    a finished block's K/V are kept. Storage grows by doubling (no copy per step).
    """

    def __init__(self, num_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self._lengths = [0] * num_layers

    def __bool__(self) -> bool:
        return True

    @property
    def length(self) -> int:
        """Positions 0..length-1 are cached (every layer holds the same number after a forward)."""
        return self._lengths[0]

    def clear(self) -> None:
        self.crop(0)

    def crop(self, n: int) -> None:
        """Keep positions 0..n-1 only (n <= length)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot crop a cache of {self.length} positions to {n}")
        self._lengths = [min(m, n) for m in self._lengths]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int,
               full: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v (B, KV, t, d) of positions start..start+t-1 (start must be the layer's
        length); return the layer's K, V of positions 0..start+t-1."""
        n = self._lengths[layer]
        if start != n:
            raise ValueError(f"the cache holds {n} positions; a forward over it must start at {n}, not {start}")
        end = n + k.shape[2]
        keys, values = self.keys[layer], self.values[layer]
        if keys is None or values is None or keys.shape[2] < end or keys.shape[:2] != k.shape[:2]:
            if keys is not None and n and keys.shape[:2] != k.shape[:2]:
                raise ValueError("the batch of a forward must match the cache's")
            cap = max(end, 2 * (keys.shape[2] if keys is not None else 0), 64)
            new_k = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
            new_v = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])
            if keys is not None and values is not None and n:
                new_k[:, :, :n] = keys[:, :, :n]
                new_v[:, :, :n] = values[:, :, :n]
            keys, values = self.keys[layer], self.values[layer] = new_k, new_v
        keys[:, :, n:end] = k
        values[:, :, n:end] = v
        self._lengths[layer] = end
        return keys[:, :, :end], values[:, :, :end]


def block_causal_mask(q_start: int, q_end: int, k_end: int, block: int,
                      device: torch.device | None = None) -> torch.Tensor | None:
    """(1, 1, q_end - q_start, k_end) bool, True = attend: query at absolute position i sees the
    key at j iff j // block <= i // block (bidirectional inside a block, causal across blocks,
    blocks aligned at position 0). None when nothing is masked (queries of one block over the
    keys up to its end: every denoising step with the exact cache), so SDPA takes its fast path."""
    if q_start // block >= (k_end - 1) // block:
        return None
    q = torch.arange(q_start, q_end, device=device) // block
    k = torch.arange(k_end, device=device) // block
    return (k[None, :] <= q[:, None])[None, None]


@dataclass
class ForwardContext:
    """What every layer of one forward needs: rotary tables, attention mask, cache and window."""

    cos: torch.Tensor  # (B|1, 1, t, d) fp32
    sin: torch.Tensor
    mask: torch.Tensor | None  # bool, True = attend: (B, 1, 1, T) padding, (B|1, 1, t, T) block-causal; None = all
    cache: "KVCache | BlockKVCache | None"
    start: int  # first query position in the canvas
    full: bool  # queries cover the whole canvas


def attention(h: torch.Tensor, q_proj: nn.Linear, k_proj: nn.Linear, v_proj: nn.Linear,
              o_proj: nn.Linear, spec: ModelSpec, ctx: ForwardContext, layer: int,
              q_norm: nn.Module | None = None, k_norm: nn.Module | None = None) -> torch.Tensor:
    """Multi-head (or grouped-query) attention of h (B, t, hidden) with the context's pattern.
    q_norm / k_norm: per-head RMSNorms applied before RoPE (Qwen3 / SDAR)."""
    B, t, _ = h.shape
    H, KV, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
    q = q_proj(h).view(B, t, H, d)
    k = k_proj(h).view(B, t, KV, d)
    if q_norm is not None and k_norm is not None:
        q, k = q_norm(q), k_norm(k)
    q = q.transpose(1, 2)  # (B, H, t, d)
    k = k.transpose(1, 2)  # (B, KV, t, d)
    v = v_proj(h).view(B, t, KV, d).transpose(1, 2)
    q, k = apply_rope(q, ctx.cos, ctx.sin), apply_rope(k, ctx.cos, ctx.sin)
    return o_proj(attend(q, k, v, spec, ctx, layer))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: ModelSpec, ctx: ForwardContext,
           layer: int) -> torch.Tensor:
    """Rotated q (B, H, t, d), k and v (B, KV, t, d) -> (B, t, H*d): the cache update, the
    context's mask and SDPA. For layouts that build q/k/v their own way (fused QKV, partial RoPE)."""
    B, H, t, d = q.shape
    KV = k.shape[1]
    if ctx.cache is not None:
        keys, values = ctx.cache.update(layer, k, v, ctx.start, ctx.full)
        assert keys is not None and values is not None
        k, v = keys, values
    gqa = KV != H and ctx.mask is None and _SDPA_GQA
    if KV != H and not gqa:  # explicit repeat: masked fused kernels (and old torch) want H heads
        k = k.repeat_interleave(H // KV, dim=1)
        v = v.repeat_interleave(H // KV, dim=1)
    kwargs = {"enable_gqa": True} if gqa else {}
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask, is_causal=False, **kwargs)
    return out.transpose(1, 2).reshape(B, t, H * d)


def lm_head(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (B, t, h) @ wᵀ with w (V, h): the logits (any other x: F.linear). Batch 1 on a CPU (the block loops score a few
    rows a step): (V, h) @ (h, t), then transposed back, is the same product and 1.4-2.8x faster
    there than F.linear for a 151936-row head with MKL (measured, docs/performance.md)."""
    if x.device.type == "cpu" and x.dim() == 3 and x.shape[0] == 1 and x.shape[1] > 1:
        return torch.matmul(w, x[0].transpose(0, 1)).transpose(0, 1).contiguous()[None]
    return F.linear(x, w)


def swiglu(x: torch.Tensor, gate: nn.Linear, up: nn.Linear, down: nn.Linear) -> torch.Tensor:
    """down(silu(gate(x)) * up(x))."""
    return down(F.silu(gate(x)) * up(x))


class SwiGLU(nn.Module):
    """An `mlp` under the Qwen / Llama names, `gate_proj`, `up_proj`, `down_proj` (no biases):
    down(silu(gate(x)) * up(x)). Dense MLPs, experts and shared experts alike."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swiglu(x, self.gate_proj, self.up_proj, self.down_proj)


def vocab_logits(x: torch.Tensor, head: nn.Module | None, embedding: torch.Tensor) -> torch.Tensor:
    """The logits from the untied `head` (None: tied, the `embedding` matrix): an nn.Linear's
    weight through lm_head's product; an int8 head (engine/quant.py) called as its module."""
    if head is None:
        return lm_head(x, embedding)
    if isinstance(head, nn.Linear):
        return lm_head(x, head.weight)
    return head(x)


class DiffusionModel(nn.Module):
    """A masked-diffusion network: `logits(ids)` returns aligned logits (index i scores token i).

    Subclasses build the parameters under their checkpoint's names and implement
    `embed(ids)`, `layers()` (modules called as block(x, spec, ctx, layer)), `final_norm(x)`,
    `head(x)` and `embed_weight()`.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self._inv_freq: dict[torch.device, torch.Tensor] = {}  # not a buffer: .to(dtype) must not cast it

    # ---- for subclasses -----------------------------------------------------------------

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def layers(self) -> Iterable[nn.Module]:
        raise NotImplementedError

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def positions(self, ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Rotary positions of the canvas: (T,) or (B, T). Default 0..T-1 (LLaDA)."""
        return torch.arange(ids.shape[1], device=ids.device)

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        """The fp32 rotary frequencies on `device` (computed once per device)."""
        if device not in self._inv_freq:
            self._inv_freq[device] = rope_inv_freq(self.spec.rope_dim, self.spec.rope_theta, device=device)
        return self._inv_freq[device]

    # ---- public ------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.embed_weight().device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_weight().dtype

    def embed_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def new_cache(self) -> "KVCache | BlockKVCache":
        """An empty cache of the kind this attention pattern allows: the exact `BlockKVCache` for a
        block-causal layout, the approximate canvas `KVCache` for a bidirectional one."""
        if self.spec.block_causal:
            return BlockKVCache(self.spec.num_layers)
        return KVCache(self.spec.num_layers)

    def logits(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               cache: "KVCache | BlockKVCache | None" = None,
               window: tuple[int, int] | None = None, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """ids (B, T) -> aligned logits (B, T, V), or (B, e-s, V) for window=(s, e).

        attention_mask (B, T): 1 for real tokens, 0 for padding (keys only).
        Bidirectional layouts: a full pass with a cache writes every K/V into it; with
        window=(s, e) only positions s..e-1 are queried, their fresh K/V overwrite the cache's,
        and keys elsewhere come from the cache (which must hold this canvas length).
        Block-causal layouts (`spec.block_size`): the checkpoint's own pattern, always; see
        `_block_logits` for the exact cache.
        """
        if self.spec.block_causal:
            return self._block_logits(ids, attention_mask, cache, window, rows)
        if rows is not None:
            raise ValueError("rows=(a, b) is for block-causal layouts")
        T = ids.shape[1]
        s, e = (0, T) if window is None else window
        if window is not None:
            if cache is None or cache.length != T:
                raise ValueError(f"window=({s}, {e}) needs a cache filled by a full pass over {T} positions")
            if not 0 <= s < e <= T:
                raise ValueError(f"window=({s}, {e}) is outside the canvas of {T} positions")
        qs = s - 1 if self.spec.shifted and s > 0 else s  # shifted: position s-1 scores token s
        x = self._states(ids, attention_mask, cache, qs, e, full=window is None)
        if self.spec.shifted:  # (B, t, h): the hidden state of position i-1 scores token i
            x = x[:, :-1] if qs < s else torch.cat((x[:, :1], x[:, :-1]), dim=1)
        return self.head(x)

    def _block_logits(self, ids: torch.Tensor, attention_mask: torch.Tensor | None,
                      cache: "KVCache | BlockKVCache | None", window: tuple[int, int] | None,
                      rows: tuple[int, int] | None) -> torch.Tensor:
        """The block-causal forward. Keys never lie past the queries' block, so `ids` needs to
        cover positions 0..e-1 only.

        no cache: a full pass over 0..e-1; the head runs only on the window's rows.
        cache (a BlockKVCache holding positions 0..n-1): queries at n..e-1 (window=(n, e); no
        window: n must be 0), keys are the cache's plus the fresh ones, which are appended to
        it (`cache.crop(m)` forgets them again). Exact: the same logits as without a cache.
        Shifted layouts (Fast-dLLM v2) realign inside the window: position s + j is scored by
        the hidden state of s + j - 1 (j >= 1) and position s by its own, as the official loop
        shifts a block's logits; with s = 0 this is the full pass's alignment.
        rows=(a, b) inside the window: the head scores positions a..b-1 only (every window row is
        still computed and its K/V written): (B, b-a, V).
        """
        T = ids.shape[1]
        s, e = (0, T) if window is None else window
        if not 0 <= s < e <= T:
            raise ValueError(f"window=({s}, {e}) is outside the canvas of {T} positions")
        a, b = (s, e) if rows is None else rows
        if not s <= a < b <= e:
            raise ValueError(f"rows=({a}, {b}) are outside the window ({s}, {e})")
        if cache is None:
            x = self._states(ids, attention_mask, None, 0, e, full=True)[:, s:]
        else:
            if not isinstance(cache, BlockKVCache):
                raise ValueError("a block-causal model needs its own cache: use model.new_cache()")
            if cache.length != s:
                raise ValueError(f"window=({s}, {e}) must start where the cache ends ({cache.length})")
            x = self._states(ids, attention_mask, cache, s, e, full=False)
        if self.spec.shifted:
            x = torch.cat((x[:, :1], x[:, :-1]), dim=1)
        return self.head(x[:, a - s:b - s])

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> the final normed hidden states (B, T, hidden), unshifted: for a shifted
        layout, position i-1 scores token i (training scores only the masked positions). The
        checkpoint's attention pattern applies (block-causal layouts: their block mask)."""
        return self._states(ids, None, None, 0, ids.shape[1], full=True)

    def _states(self, ids: torch.Tensor, attention_mask: torch.Tensor | None,
                cache: "KVCache | BlockKVCache | None", qs: int, e: int, full: bool) -> torch.Tensor:
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        if self.spec.block_size is not None:  # keys end with the queries' block: 0..e-1
            mask = None if mask is None else mask[..., :e]
            pattern = block_causal_mask(qs, e, e, self.spec.block_size, ids.device)
            mask = pattern if mask is None else (mask if pattern is None else mask & pattern)
        pos = self.positions(ids, attention_mask)[..., qs:e]
        cos, sin = rope_cos_sin(pos, self.inv_freq(ids.device))
        ctx = ForwardContext(cos, sin, mask, cache, qs, full=full)
        x = self.embed(ids[:, qs:e])
        for i, block in enumerate(self.layers()):
            x = block(x, self.spec, ctx, i)
        return self.final_norm(x)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(ids, attention_mask)
