"""The Fast-dLLM v2 layout: Qwen2 parameter names (q/k/v biases, o_proj without, GQA, no q/k
norm), block-causal attention in blocks of `bd_size` (32), logits shifted by one (the model was
adapted from Qwen2.5-Instruct and keeps predicting the next position; dllm realigns them).

Used by Efficient-Large-Model/Fast_dLLM_v2_{1.5B,7B}: `model_type` "Fast_dLLM_Qwen",
`architectures` ["Fast_dLLM_QwenForCausalLM"]. At inference the HF `modeling.py` is Qwen2 with
the eval mask `q // B >= k // B` (blocks aligned at position 0) over SDPA; training-only keys
(`conplemenrary_mask`, sic) are ignored.
Knows: the config keys and checks. Must not: read files or sample.
"""

from __future__ import annotations

from typing import Any, Mapping

from ...catalog import attention_block
from .common import ModelSpec
from .decoder import HEAD_NAME, DecoderModel, decoder_spec

__all__ = ["ARCHITECTURES", "HEAD_NAME", "MODEL_TYPES", "FastDLLMv2Model", "spec_from_config"]

MODEL_TYPES = ("fast_dllm_qwen",)
ARCHITECTURES = ("Fast_dLLM_QwenForCausalLM",)


def spec_from_config(cfg: Mapping[str, Any], where: str = "config.json",
                     family: str = "fast-dllm-v2") -> ModelSpec:
    """A ModelSpec from the Qwen2 config keys plus `bd_size`; CheckpointError names a bad key."""
    return decoder_spec(cfg, where, layout="fast-dllm-v2", family=family, qkv_bias=True, qk_norm=False,
                        shifted=True, block_size=attention_block(cfg, "fast-dllm-v2"), default_rope_theta=1e6)


class FastDLLMv2Model(DecoderModel):
    """Qwen2-named block-causal network; `logits` realigns the next-position predictions."""
