"""The SDAR-MoE layout (JetLM/SDAR-30B-A3B-Chat / -Sci and their -bN variants): the SDAR network
(Qwen3 names, q/k norms, block-causal attention, no shift; sdar.py, decoder.py) whose MLPs are
Qwen3-MoE mixtures of experts: `mlp.gate.weight` (E, hidden) routes each token to its top
`num_experts_per_tok` experts by softmax (renormalised over the k when `norm_topk_prob`;
moe.softmax_topk), the experts are `mlp.experts.E.{gate,up,down}_proj.weight`; no shared expert,
no expert bias. A layer is sparse when it is not in `mlp_only_layers` and
(layer + 1) % `decoder_sparse_step` == 0 (otherwise the dense `mlp.{gate,up,down}_proj`).

`model_type` "sdar_moe", `architectures` ["SDARMoeForCausalLM"]; the keys are Qwen3-MoE's
(lmdeploy's SDAR-MoE reads exactly these). The block length is `block_size` when config.json has
it, else 4 (SDAR's). Knows: the MoE keys and checks on top of SDAR's. Must not: read files or sample.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping

from torch import nn

from ...catalog import attention_block
from ...errors import CheckpointError
from .common import ModelSpec, SwiGLU, config_int
from .decoder import HEAD_NAME, DecoderModel, decoder_spec
from .moe import MoESpec, SparseMoE

__all__ = ["ARCHITECTURES", "HEAD_NAME", "MODEL_TYPES", "SDARMoeModel", "spec_from_config"]

MODEL_TYPES = ("sdar_moe",)
ARCHITECTURES = ("SDARMoeForCausalLM",)


def spec_from_config(cfg: Mapping[str, Any], where: str = "config.json", family: str = "sdar-moe") -> MoESpec:
    """A MoESpec from SDAR-MoE's (Qwen3-MoE) config keys; CheckpointError names a bad key."""
    def get(key: str, default: int | None = None) -> int:
        return config_int(dict(cfg), key, where, default)

    layers = get("num_hidden_layers")
    experts, k = get("num_experts"), get("num_experts_per_tok")
    if k > experts:
        raise CheckpointError(f"{where}: num_experts_per_tok {k} exceeds num_experts {experts}")
    step = get("decoder_sparse_step", 1)
    only = cfg.get("mlp_only_layers") or []
    if not isinstance(only, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in only):
        raise CheckpointError(f"{where}: mlp_only_layers {only!r} is not a list of layer numbers")
    if cfg.get("router_n_groups") not in (None, 0, 1):
        raise CheckpointError(f"{where}: router_n_groups {cfg['router_n_groups']!r} (grouped routing) is not part "
                              "of SDAR-MoE as dllm reads it (softmax over all experts)")
    if cfg.get("shared_expert_intermediate_size"):
        raise CheckpointError(f"{where}: shared_expert_intermediate_size is set, but SDAR-MoE has no shared expert")
    norm = cfg.get("norm_topk_prob", False)  # Qwen3-MoE's class default
    if not isinstance(norm, bool):
        raise CheckpointError(f"{where}: norm_topk_prob {norm!r} is not true or false")
    sparse = tuple(i not in only and (i + 1) % step == 0 for i in range(layers))
    dense_cfg = dict(cfg)
    if all(sparse) and dense_cfg.get("intermediate_size") is None:  # no dense layer needs it
        dense_cfg["intermediate_size"] = get("moe_intermediate_size")
    base: ModelSpec = decoder_spec(dense_cfg, where, layout="sdar-moe", family=family, qkv_bias=False,
                                   qk_norm=True, shifted=False, block_size=attention_block(cfg, "sdar-moe"),
                                   default_rope_theta=1e6)
    return MoESpec(**asdict(base), num_experts=experts, experts_per_token=k,
                   moe_intermediate_size=get("moe_intermediate_size"), sparse_layers=sparse, router="softmax",
                   norm_topk_prob=norm)


class SDARMoeModel(DecoderModel):
    """SDAR's Qwen3-named block-causal network with Qwen3-MoE MLPs."""

    spec: MoESpec

    def new_mlp(self, spec: ModelSpec, layer: int) -> nn.Module:
        assert isinstance(spec, MoESpec)
        return SparseMoE(spec) if spec.sparse_layers[layer] else SwiGLU(spec.hidden_size, spec.intermediate_size)
