"""The SDAR layout: Qwen3 parameter names (per-head `q_norm` / `k_norm` before RoPE, no biases,
GQA, explicit `head_dim`), untied head, block-causal attention, no logit shift.

Used by JetLM/SDAR-{1.7B,4B,8B}-Chat and the fine-tunes that share the architecture (TraDo,
DiRL): `model_type` "sdar", `architectures` ["SDARForCausalLM"]. For inference the network is
Qwen3 verbatim plus the block-diffusion attention mask (JetAstra/SDAR `modeling_sdar.py`;
lmdeploy and sglang serve it with Qwen3 layers). The block length is config.json's
`block_size` when present (the GitHub training copies carry it; the HF configs do not), else 4
(`catalog.attention_block`). The MoE variant ("sdar_moe") is another layout.
Knows: SDAR's config keys and checks. Must not: read files or sample.
"""

from __future__ import annotations

from typing import Any, Mapping

from ...catalog import attention_block
from .common import ModelSpec
from .decoder import HEAD_NAME, DecoderModel, decoder_spec

__all__ = ["ARCHITECTURES", "HEAD_NAME", "MODEL_TYPES", "SDARModel", "spec_from_config"]

MODEL_TYPES = ("sdar",)
ARCHITECTURES = ("SDARForCausalLM",)


def spec_from_config(cfg: Mapping[str, Any], where: str = "config.json", family: str = "sdar") -> ModelSpec:
    """A ModelSpec from SDAR's (Qwen3) config keys; CheckpointError names the key it cannot use."""
    return decoder_spec(cfg, where, layout="sdar", family=family, qkv_bias=False, qk_norm=True,
                        shifted=False, block_size=attention_block(cfg, "sdar"), default_rope_theta=1e6)


class SDARModel(DecoderModel):
    """Qwen3-named block-causal network (logits aligned as they come)."""
