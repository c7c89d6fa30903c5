"""The LLaDA2 layout (LLaDA2.0 / LLaDA2.1, Bailing-MoE-V2 names): a fused `query_key_value`
projection, per-head RMSNorm of q and k before RoPE, partial rotary, the first
`first_k_dense_replace` layers dense and the rest mixtures of experts with a shared expert and
LLaDA2's grouped sigmoid router (moe.py), block-causal attention in blocks of 32, no logit shift.

Used by inclusionAI/LLaDA2.0-mini, LLaDA2.1-mini (and -flash, same keys): `model_type`
"llada2_moe", `architectures` ["LLaDA2MoeModelLM"]. Tensor names (module attribute paths, so
loading needs no renaming): `model.word_embeddings.weight`; per layer `model.layers.N.` +
`input_layernorm.weight`, `attention.query_key_value.weight` (rows: the q heads, then the k heads,
then the v heads, each head_dim wide; `.bias` with use_qkv_bias), `attention.query_layernorm.weight`,
`attention.key_layernorm.weight` (head_dim), `attention.dense.weight`,
`post_attention_layernorm.weight`, then either `mlp.{gate,up,down}_proj.weight` (dense) or
`mlp.gate.weight`, `mlp.gate.expert_bias`, `mlp.experts.E.{gate,up,down}_proj.weight`,
`mlp.shared_experts.{gate,up,down}_proj.weight`; `model.norm.weight`; `lm_head.weight`.

Numerics as the HF modeling computes them: RMSNorm in fp32; RoPE with inv_freq = θ^(-2j/r),
r = int(head_dim · partial_rotary_factor), applied rotate-half style to the FIRST r dims of every
head (dims r.. pass through); attention scale 1/sqrt(head_dim); logits cast to fp32 by the caller.
Config keys the source honours or ignores are checked here (`spec_from_config`): a key that asks
for something the published modeling does not do is refused with its name.
Knows: those names, keys and the block. Must not: read files, sample, or know token ids.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ...catalog import attention_block
from ...errors import CheckpointError
from .common import DiffusionModel, ForwardContext, RMSNorm, SwiGLU, apply_rope, attend, config_int, vocab_logits
from .moe import MoESpec, SparseMoE

__all__ = ["ARCHITECTURES", "FP32_TENSORS", "HEAD_NAME", "MODEL_TYPES", "LLaDA2MoeModel", "spec_from_config"]

MODEL_TYPES = ("llada2_moe",)
ARCHITECTURES = ("LLaDA2MoeModelLM",)
HEAD_NAME = "lm_head.weight"
FP32_TENSORS = ("mlp.gate.expert_bias",)  # kept in fp32 whatever the load dtype (the source's buffer)

# Keys whose value must be this for dllm to compute what the published modeling computes
# (key -> (allowed, why)); where the HF modeling and sglang's port read a key differently, only the
# value both agree on (the published configs' value) is accepted.
_FIXED: dict[str, tuple[tuple[Any, ...], str]] = {
    "hidden_act": (("silu",), "only 'silu'"),
    "score_function": (("sigmoid",), "the published router is a sigmoid"),
    "use_rmsnorm": ((True,), "the published layers use RMSNorm"),
    "norm_head": ((False,), "the HF modeling ignores it and sglang normalises lm_head; no published LLaDA2 sets it"),
    "norm_softmax": ((False,), "no published LLaDA2 checkpoint sets it"),
    "norm_topk_prob": ((True,), "the HF gate always normalises the top-k weights (sglang follows the key); "
                                "the published configs say true"),
    "moe_router_enable_expert_bias": ((True,), "the HF gate always adds mlp.gate.expert_bias"),
    "use_qk_norm": ((True,), "the HF modeling always applies query_layernorm / key_layernorm (sglang follows "
                             "the key); the published configs say true or leave it out"),
    "use_bias": ((False,), "the HF modeling puts it on attention.dense only, sglang also on query_key_value and "
                           "the MLPs; no published LLaDA2 sets it"),
    "using_split_qkv_in_self_attention": ((False,), "dllm reads the fused query_key_value"),
    "use_sliding_window": ((False,), "sliding-window attention is not part of LLaDA2"),
    "router_dtype": (("fp32", "float32"), "the published gate computes in fp32"),
}


def spec_from_config(cfg: Mapping[str, Any], where: str = "config.json", family: str = "llada2.0") -> MoESpec:
    """A MoESpec from LLaDA2's config keys; CheckpointError names the key it cannot use."""
    def get(key: str, default: int | None = None) -> int:
        return config_int(dict(cfg), key, where, default)

    for key, (allowed, why) in _FIXED.items():
        if key in cfg and cfg[key] is not None and cfg[key] not in allowed:
            raise CheckpointError(f"{where}: {key} {cfg[key]!r} is not supported by dllm's LLaDA2 layout ({why})")
    if cfg.get("rope_scaling"):
        raise CheckpointError(f"{where}: rope_scaling {cfg['rope_scaling']!r} is not supported by dllm's LLaDA2 "
                              "layout (the published checkpoints have none)")
    if "use_bias" not in cfg:
        raise CheckpointError(f"{where}: no 'use_bias' key; LLaDA2's config class defaults it to true (biases), "
                              "which the published configs turn off: add \"use_bias\": false to config.json")
    qkv_bias = cfg.get("use_qkv_bias", False)
    if not isinstance(qkv_bias, bool):
        raise CheckpointError(f"{where}: use_qkv_bias {qkv_bias!r} is not true or false; fix config.json")
    hidden, heads = get("hidden_size"), get("num_attention_heads")
    kv = get("num_key_value_heads")
    if heads % kv:
        raise CheckpointError(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    if cfg.get("head_dim") is None and hidden % heads:
        raise CheckpointError(f"{where}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}; "
                              "set head_dim")
    head_dim = get("head_dim", hidden // heads)
    factor = cfg.get("partial_rotary_factor", 0.5)
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not 0 < factor <= 1:
        raise CheckpointError(f"{where}: partial_rotary_factor {factor!r} is not in (0, 1]")
    rotary = int(head_dim * factor)
    if rotary < 2 or rotary % 2 or ("rotary_dim" in cfg and cfg["rotary_dim"] != rotary):
        raise CheckpointError(f"{where}: head_dim {head_dim} x partial_rotary_factor {factor} gives {rotary} "
                              f"rotary dims (rotary_dim says {cfg.get('rotary_dim')!r}); they must agree and be even")
    layers = get("num_hidden_layers")
    if "num_experts" not in cfg:
        raise CheckpointError(f"{where}: no 'num_experts' key (LLaDA2's config class would give 16 experts); "
                              "fix config.json (null: every layer dense)")
    experts = cfg["num_experts"]
    sparse: tuple[bool, ...]
    if experts is None:  # the source: no experts, every layer dense
        sparse, experts, k, moe_inter, shared, groups, top_groups = (False,) * layers, 0, 0, 0, 0, 1, 1
    else:
        experts, k = get("num_experts"), get("num_experts_per_tok")
        moe_inter = get("moe_intermediate_size")
        first_dense = cfg.get("first_k_dense_replace", 0)
        if not isinstance(first_dense, int) or isinstance(first_dense, bool) or first_dense < 0:
            raise CheckpointError(f"{where}: first_k_dense_replace {first_dense!r} is not a non-negative integer")
        sparse = tuple(i >= first_dense for i in range(layers))
        n_shared = cfg.get("num_shared_experts") or 0
        if not isinstance(n_shared, int) or isinstance(n_shared, bool) or n_shared < 0:
            raise CheckpointError(f"{where}: num_shared_experts {n_shared!r} is not a non-negative integer")
        shared = moe_inter * n_shared
        groups, top_groups = get("n_group", 8), get("topk_group", 4)
        if experts % groups or experts // groups < 2 or top_groups > groups or top_groups * (experts // groups) < k:
            raise CheckpointError(f"{where}: num_experts {experts}, n_group {groups}, topk_group {top_groups}, "
                                  f"num_experts_per_tok {k} do not fit the grouped router (groups of at least 2 "
                                  "experts, enough experts in the kept groups)")
    inter = get("intermediate_size") if not all(sparse) else config_int(dict(cfg), "intermediate_size", where, 1)
    scaling = cfg.get("routed_scaling_factor", 2.5)
    if not isinstance(scaling, (int, float)) or isinstance(scaling, bool):
        raise CheckpointError(f"{where}: routed_scaling_factor {scaling!r} is not a number")
    return MoESpec(
        layout="llada2-moe", family=family, vocab_size=get("vocab_size"), hidden_size=hidden, num_layers=layers,
        num_heads=heads, num_kv_heads=kv, head_dim=head_dim, intermediate_size=inter,
        rope_theta=float(cfg.get("rope_theta", 10000.0)), rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        shifted=False, tied=bool(cfg.get("tie_word_embeddings", False)), qkv_bias=qkv_bias,
        qk_norm=True, block_size=attention_block(cfg, "llada2-moe"),
        num_experts=experts, experts_per_token=k, moe_intermediate_size=moe_inter, shared_intermediate_size=shared,
        sparse_layers=sparse, router="grouped-sigmoid", n_group=groups, topk_group=top_groups,
        routed_scaling_factor=float(scaling), expert_bias=experts > 0, rotary_dim=rotary, fused_qkv=True)


class LLaDA2Attention(nn.Module):
    """`attention.*`: fused query_key_value, query/key layernorms, partial RoPE, `dense`."""

    def __init__(self, spec: MoESpec):
        super().__init__()
        d = spec.head_dim
        self.query_key_value = nn.Linear(spec.hidden_size, (spec.num_heads + 2 * spec.num_kv_heads) * d,
                                         bias=spec.qkv_bias)
        self.query_layernorm = RMSNorm(d, spec.rms_norm_eps)
        self.key_layernorm = RMSNorm(d, spec.rms_norm_eps)
        self.dense = nn.Linear(spec.num_heads * d, spec.hidden_size, bias=False)

    def forward(self, h: torch.Tensor, spec: MoESpec, ctx: ForwardContext, layer: int) -> torch.Tensor:
        B, t, _ = h.shape
        H, KV, d, r = spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.rope_dim
        qkv = self.query_key_value(h).view(B, t, H + 2 * KV, d)
        q, k, v = qkv.split([H, KV, KV], dim=2)  # the heads in that order, not interleaved
        q, k = self.query_layernorm(q), self.key_layernorm(k)  # per head, before RoPE
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, t, d)
        q = torch.cat((apply_rope(q[..., :r], ctx.cos, ctx.sin), q[..., r:]), dim=-1)
        k = torch.cat((apply_rope(k[..., :r], ctx.cos, ctx.sin), k[..., r:]), dim=-1)
        return self.dense(attend(q, k, v.contiguous(), spec, ctx, layer))


class LLaDA2Layer(nn.Module):
    def __init__(self, spec: MoESpec, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.attention = LLaDA2Attention(spec)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.mlp: nn.Module = (SparseMoE(spec) if spec.sparse_layers[layer]
                               else SwiGLU(spec.hidden_size, spec.intermediate_size))

    def forward(self, x: torch.Tensor, spec: MoESpec, ctx: ForwardContext, layer: int) -> torch.Tensor:
        x = x + self.attention(self.input_layernorm(x), spec, ctx, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class LLaDA2Body(nn.Module):
    """`model.*`: word embeddings, layers, final norm."""

    def __init__(self, spec: MoESpec):
        super().__init__()
        self.word_embeddings = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(LLaDA2Layer(spec, i) for i in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)


class LLaDA2MoeModel(DiffusionModel):
    """LLaDA2's block-causal MoE network (logits aligned as they come)."""

    spec: MoESpec

    def __init__(self, spec: MoESpec):
        super().__init__(spec)
        self.model = LLaDA2Body(spec)
        if not spec.tied:
            self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)

    def embed_weight(self) -> torch.Tensor:
        return self.model.word_embeddings.weight

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.word_embeddings(ids)

    def layers(self) -> nn.ModuleList:
        return self.model.layers

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.norm(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return vocab_logits(x, None if self.spec.tied else self.lm_head, self.model.word_embeddings.weight)
