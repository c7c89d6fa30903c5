"""The LLaDA layout: OLMo parameter names and config keys, LLaMA block, MHA or GQA, no shift.

Used by LLaDA-8B-Base/Instruct and LLaDA-1.5 (`model_type` "llada"). Module attribute paths
equal the checkpoint's tensor names (`model.transformer.blocks.N.q_proj.weight`, ...).
The one renaming this layout needs, to read it as a LLaMA model, is LLAMA_NAMES (used by the
parity tests against transformers' LlamaForCausalLM). Note the two `ff_out`s: inside a
block it is the MLP down projection, at `model.transformer.ff_out` the untied LM head.
Knows: OLMo config keys and the block. Must not: read files or sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CheckpointError
from .common import DiffusionModel, ModelSpec, RMSNorm, attention, config_int, swiglu

HEAD_NAME = "model.transformer.ff_out.weight"  # the untied LM head
MODEL_TYPES = ("llada",)
ARCHITECTURES = ("LLaDAModelLM",)

# OLMo/LLaDA name -> LLaMA (transformers) name; block names are relative to blocks.N.
LLAMA_NAMES = {
    "model.transformer.wte.weight": "model.embed_tokens.weight",
    "model.transformer.ln_f.weight": "model.norm.weight",
    "model.transformer.ff_out.weight": "lm_head.weight",
}
LLAMA_BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj", "ff_norm": "post_attention_layernorm",
    "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj",
}


def llama_name(name: str) -> str:
    """The transformers LLaMA name of a LLaDA tensor name."""
    if name in LLAMA_NAMES:
        return LLAMA_NAMES[name]
    prefix = "model.transformer.blocks."
    assert name.startswith(prefix), name
    index, part, suffix = name[len(prefix):].split(".", 2)
    return f"model.layers.{index}.{LLAMA_BLOCK_NAMES[part]}.{suffix}"


def spec_from_config(cfg: dict, where: str = "config.json", family: str = "llada") -> ModelSpec:
    """A ModelSpec from OLMo config keys; CheckpointError names the missing/unsupported key."""
    def get(key: str, default: int | None = None) -> int:
        return config_int(cfg, key, where, default)

    unsupported = {"block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms"}
    for key, want in unsupported.items():
        if cfg.get(key, want) != want:
            raise CheckpointError(f"{where}: {key} {cfg[key]!r} is not supported (only {want!r})")
    for key in ("include_bias", "include_qkv_bias", "alibi", "scale_logits", "attention_layer_norm"):
        if cfg.get(key):
            raise CheckpointError(f"{where}: {key}=true is not supported by dllm's LLaDA layout")
    hidden, heads = get("d_model"), get("n_heads")
    kv = get("n_kv_heads", heads)
    if hidden % heads or heads % kv:
        raise CheckpointError(f"{where}: d_model {hidden}, n_heads {heads}, n_kv_heads {kv} "
                              "do not divide; fix config.json")
    vocab = get("embedding_size") if cfg.get("embedding_size") is not None else get("vocab_size")
    inter = get("mlp_hidden_size") if cfg.get("mlp_hidden_size") is not None else get("mlp_ratio", 4) * hidden
    return ModelSpec(layout="llada", family=family, vocab_size=vocab, hidden_size=hidden,
                     num_layers=get("n_layers"), num_heads=heads, num_kv_heads=kv,
                     head_dim=hidden // heads, intermediate_size=inter,
                     rope_theta=float(cfg.get("rope_theta", 10000.0)),
                     rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)), shifted=False,
                     tied=bool(cfg.get("weight_tying", False)), qkv_bias=False)


class LLaDABlock(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        h, q, kv, i = (spec.hidden_size, spec.num_heads * spec.head_dim,
                       spec.num_kv_heads * spec.head_dim, spec.intermediate_size)
        self.attn_norm = RMSNorm(h, spec.rms_norm_eps)
        self.q_proj = nn.Linear(h, q, bias=False)
        self.k_proj = nn.Linear(h, kv, bias=False)
        self.v_proj = nn.Linear(h, kv, bias=False)
        self.attn_out = nn.Linear(q, h, bias=False)
        self.ff_norm = RMSNorm(h, spec.rms_norm_eps)
        self.ff_proj = nn.Linear(h, i, bias=False)  # gate (gets the activation)
        self.up_proj = nn.Linear(h, i, bias=False)
        self.ff_out = nn.Linear(i, h, bias=False)  # down

    def forward(self, x, spec, ctx, layer):
        x = x + attention(self.attn_norm(x), self.q_proj, self.k_proj, self.v_proj, self.attn_out,
                          spec, ctx, layer)
        return x + swiglu(self.ff_norm(x), self.ff_proj, self.up_proj, self.ff_out)


class OLMoTransformer(nn.Module):
    """`model.transformer.*`: embedding, blocks, final norm and (untied) the LM head `ff_out`."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.wte = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.blocks = nn.ModuleList(LLaDABlock(spec) for _ in range(spec.num_layers))
        self.ln_f = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.ff_out = None if spec.tied else nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)


class OLMoBody(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.transformer = OLMoTransformer(spec)


class LLaDAModel(DiffusionModel):
    """OLMo-named bidirectional model; logits are aligned as they come (no shift)."""

    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.model = OLMoBody(spec)

    def embed_weight(self) -> torch.Tensor:
        return self.model.transformer.wte.weight

    def embed(self, ids):
        return self.model.transformer.wte(ids)

    def layers(self):
        return self.model.transformer.blocks

    def final_norm(self, x):
        return self.model.transformer.ln_f(x)

    def head(self, x):
        t = self.model.transformer
        return F.linear(x, t.wte.weight) if t.ff_out is None else t.ff_out(x)
