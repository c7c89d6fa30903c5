"""The Stable-DiffCoder layout: Llama parameter names (no biases, no q/k norm, GQA), untied head,
block-causal attention in blocks of 4, no logit shift (the official sampler's `shift=False`).

Used by ByteDance-Seed/Stable-DiffCoder-8B-{Base,Instruct} (Seed-Coder architecture):
`model_type` "llama" with `architectures` ["StableDiffcoderForCausalLM"] (transformers-5.3
revision) or an `auto_map` naming `SeedDiffcoderForCausalLM` (the older revision, whose
`architectures` is plain "LlamaForCausalLM"). Its class subclasses transformers'
LlamaForCausalLM and adds only sampling methods, so the forward is plain Llama with the
block-diffusion mask. config.json carries no block length: 4, the published one, unless it says
`block_size`. `attention_dropout` / `resid_pdrop` (0.1, training leftovers) are ignored.
Knows: the config keys and checks. Must not: read files or sample.
"""

from __future__ import annotations

from typing import Any, Mapping

from ...catalog import attention_block
from .common import ModelSpec
from .decoder import HEAD_NAME, DecoderModel, decoder_spec

__all__ = ["ARCHITECTURES", "HEAD_NAME", "MODEL_TYPES", "StableDiffCoderModel", "spec_from_config"]

MODEL_TYPES = ("llama",)
ARCHITECTURES = ("StableDiffcoderForCausalLM", "SeedDiffcoderForCausalLM")


def spec_from_config(cfg: Mapping[str, Any], where: str = "config.json",
                     family: str = "stable-diffcoder") -> ModelSpec:
    """A ModelSpec from the Llama config keys; CheckpointError names the key it cannot use."""
    return decoder_spec(cfg, where, layout="stable-diffcoder", family=family, qkv_bias=False, qk_norm=False,
                        shifted=False, block_size=attention_block(cfg, "stable-diffcoder"))


class StableDiffCoderModel(DecoderModel):
    """Llama-named block-causal network (logits aligned as they come)."""
