"""The Dream layout: Qwen2 parameter names, q/k/v biases, GQA, tied or untied head, shifted logits.

Used by Dream-v0, Dream-Coder-v0, DiffuCoder, DreamOn (`model_type` "Dream") and
Open-dCoder (`model_type` "qwen2"). Module attribute paths equal the checkpoint's tensor
names (`model.layers.N.self_attn.q_proj.weight`, ...), so loading needs no renaming.
Knows: Qwen2 config keys and the Qwen2 block. Must not: read files or sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CheckpointError
from .common import DiffusionModel, ModelSpec, RMSNorm, SwiGLU, attention, config_int

HEAD_NAME = "lm_head.weight"  # the untied LM head
MODEL_TYPES = ("dream", "qwen2")
ARCHITECTURES = ("DreamModel", "Qwen2ForCausalLM", "Qwen2Model")


def spec_from_config(cfg: dict, where: str = "config.json", family: str = "dream") -> ModelSpec:
    """A ModelSpec from Qwen2 config keys; CheckpointError names the missing/bad key."""
    def get(key: str, default: int | None = None) -> int:
        return config_int(cfg, key, where, default)

    hidden, heads = get("hidden_size"), get("num_attention_heads")
    kv = get("num_key_value_heads", heads)
    if hidden % heads or heads % kv:
        raise CheckpointError(f"{where}: hidden_size {hidden}, num_attention_heads {heads}, "
                              f"num_key_value_heads {kv} do not divide; fix config.json")
    head_dim = get("head_dim", hidden // heads)
    return ModelSpec(layout="dream", family=family, vocab_size=get("vocab_size"), hidden_size=hidden,
                     num_layers=get("num_hidden_layers"), num_heads=heads, num_kv_heads=kv,
                     head_dim=head_dim, intermediate_size=get("intermediate_size"),
                     rope_theta=float(cfg.get("rope_theta", 1e6)),
                     rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), shifted=True,
                     tied=bool(cfg.get("tie_word_embeddings", False)), qkv_bias=True)


class Qwen2Attention(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        h, q, kv = spec.hidden_size, spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        self.q_proj = nn.Linear(h, q, bias=True)
        self.k_proj = nn.Linear(h, kv, bias=True)
        self.v_proj = nn.Linear(h, kv, bias=True)
        self.o_proj = nn.Linear(q, h, bias=False)


class Qwen2Layer(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.self_attn = Qwen2Attention(spec)
        self.mlp = SwiGLU(spec.hidden_size, spec.intermediate_size)
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)

    def forward(self, x, spec, ctx, layer):
        a = self.self_attn
        x = x + attention(self.input_layernorm(x), a.q_proj, a.k_proj, a.v_proj, a.o_proj, spec, ctx, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Body(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(Qwen2Layer(spec) for _ in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)


class DreamModel(DiffusionModel):
    """Qwen2-named bidirectional model; `logits` realigns the next-position predictions."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.model = Qwen2Body(spec)
        if not spec.tied:
            self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)

    def embed_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight

    def embed(self, ids):
        return self.model.embed_tokens(ids)

    def layers(self):
        return self.model.layers

    def final_norm(self, x):
        return self.model.norm(x)

    def head(self, x):
        if self.spec.tied:
            return F.linear(x, self.model.embed_tokens.weight)
        return self.lm_head(x)

    def positions(self, ids, attention_mask):
        """cumsum(mask) - 1 with left padding (pads get 1, as Qwen2/Dream do); else 0..T-1."""
        if attention_mask is None:
            return torch.arange(ids.shape[1], device=ids.device)
        pos = attention_mask.long().cumsum(-1) - 1
        return pos.masked_fill(attention_mask == 0, 1)
