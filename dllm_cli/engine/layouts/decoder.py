"""The Hugging Face decoder-only names that the block-diffusion layouts share (Qwen2, Qwen3 and
Llama checkpoints): `model.embed_tokens.weight`; per layer `model.layers.N.` +
`self_attn.{q,k,v,o}_proj.weight` (q/k/v `.bias` when `spec.qkv_bias`: Qwen2),
`self_attn.{q,k}_norm.weight` (when `spec.qk_norm`: Qwen3), `mlp.{gate,up,down}_proj.weight`,
`input_layernorm.weight`, `post_attention_layernorm.weight`; `model.norm.weight`; `lm_head.weight`
(absent when tied). Module attribute paths equal the tensor names, so loading needs no renaming,
and transformers' Qwen2/Qwen3/LlamaForCausalLM load the same files (the parity tests do).

Knows: those names, the pre-norm block (attention, then a SwiGLU MLP, each with a residual), the
Qwen2-style config keys the three share and the checks every one of them needs (no RoPE scaling,
no sliding window, SiLU). A layout module (sdar.py, stable_diffcoder.py, fast_dllm_v2.py) says
which flags apply; a MoE layout passes its own MLP through `make_mlp`. Must not: read files,
sample, know token ids, or choose a layout (catalog.layout_of does).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from ...errors import CheckpointError
from .common import DiffusionModel, ModelSpec, RMSNorm, SwiGLU, attention, config_int, vocab_logits

HEAD_NAME = "lm_head.weight"


def decoder_spec(cfg: Mapping[str, Any], where: str, *, layout: str, family: str, qkv_bias: bool,
                 qk_norm: bool, shifted: bool, block_size: int | None,
                 default_rope_theta: float = 10000.0) -> ModelSpec:
    """A ModelSpec from Qwen2-style config keys; CheckpointError names the key it cannot use."""
    def get(key: str, default: int | None = None) -> int:
        return config_int(dict(cfg), key, where, default)

    name = layout.replace("-", " ")
    if str(cfg.get("hidden_act", "silu")) != "silu":
        raise CheckpointError(f"{where}: hidden_act {cfg.get('hidden_act')!r} is not supported by dllm's "
                              f"{name} layout (only 'silu')")
    if cfg.get("rope_scaling"):
        raise CheckpointError(f"{where}: rope_scaling {cfg.get('rope_scaling')!r} is not supported by dllm's "
                              f"{name} layout (the published checkpoints have none)")
    if cfg.get("use_sliding_window") or any(t != "full_attention" for t in cfg.get("layer_types") or ()):
        raise CheckpointError(f"{where}: sliding-window attention is not supported by dllm's {name} layout")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key) and not (key == "attention_bias" and qkv_bias):
            raise CheckpointError(f"{where}: {key}=true is not supported by dllm's {name} layout")
    hidden, heads = get("hidden_size"), get("num_attention_heads")
    kv = get("num_key_value_heads", heads)
    explicit_head_dim = cfg.get("head_dim") is not None
    if heads % kv or (not explicit_head_dim and hidden % heads):
        raise CheckpointError(f"{where}: hidden_size {hidden}, num_attention_heads {heads}, "
                              f"num_key_value_heads {kv} do not divide; fix config.json")
    head_dim = get("head_dim") if explicit_head_dim else hidden // heads
    return ModelSpec(layout=layout, family=family, vocab_size=get("vocab_size"), hidden_size=hidden,
                     num_layers=get("num_hidden_layers"), num_heads=heads, num_kv_heads=kv, head_dim=head_dim,
                     intermediate_size=get("intermediate_size"),
                     rope_theta=float(cfg.get("rope_theta", default_rope_theta)),
                     rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), shifted=shifted,
                     tied=bool(cfg.get("tie_word_embeddings", False)), qkv_bias=qkv_bias, qk_norm=qk_norm,
                     block_size=block_size)


class DecoderAttention(nn.Module):
    """`self_attn.*`: q/k/v/o projections, q/k biases when qkv_bias, per-head q/k norms when qk_norm."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        h, q, kv = spec.hidden_size, spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        self.q_proj = nn.Linear(h, q, bias=spec.qkv_bias)
        self.k_proj = nn.Linear(h, kv, bias=spec.qkv_bias)
        self.v_proj = nn.Linear(h, kv, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(q, h, bias=False)
        if spec.qk_norm:
            self.q_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps)
            self.k_norm = RMSNorm(spec.head_dim, spec.rms_norm_eps)

    def forward(self, h: torch.Tensor, spec: ModelSpec, ctx: Any, layer: int) -> torch.Tensor:
        norms = (self.q_norm, self.k_norm) if spec.qk_norm else (None, None)
        return attention(h, self.q_proj, self.k_proj, self.v_proj, self.o_proj, spec, ctx, layer, *norms)


MakeMLP = Callable[[ModelSpec, int], nn.Module]  # (spec, layer index) -> the layer's `mlp` module


class DecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec, mlp: nn.Module):
        super().__init__()
        self.self_attn = DecoderAttention(spec)
        self.mlp = mlp
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)

    def forward(self, x: torch.Tensor, spec: ModelSpec, ctx: Any, layer: int) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), spec, ctx, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderBody(nn.Module):
    """`model.*`: embedding, layers, final norm."""

    def __init__(self, spec: ModelSpec, make_mlp: MakeMLP):
        super().__init__()
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(spec, make_mlp(spec, i)) for i in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)


class DecoderModel(DiffusionModel):
    """A network under the HF decoder names; its attention pattern and shift come from the spec.
    A MoE layout overrides `new_mlp` (the layer's `mlp` module: router and experts)."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.model = DecoderBody(spec, self.new_mlp)
        if not spec.tied:
            self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)

    def new_mlp(self, spec: ModelSpec, layer: int) -> nn.Module:
        """The `mlp` of layer `layer` (dense SwiGLU here)."""
        return SwiGLU(spec.hidden_size, spec.intermediate_size)

    def embed_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(ids)

    def layers(self) -> nn.ModuleList:
        return self.model.layers

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.norm(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return vocab_logits(x, None if self.spec.tied else self.lm_head, self.model.embed_tokens.weight)
