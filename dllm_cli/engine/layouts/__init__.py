"""The network layouts dllm can run. `catalog.layout_of(config)` names one (from config.json,
never from the folder name); LAYOUTS maps that name to its module (spec_from_config, the model
class, HEAD_NAME). Each module's MODEL_TYPES / ARCHITECTURES must equal catalog.LAYOUT_TYPES
(a test checks it): catalog.py, which must not import torch, keeps the table.

Bidirectional (2025): dream (Qwen2 names), llada (OLMo names). Block-causal, with the exact
block KV cache: sdar (Qwen3 names), stable-diffcoder (Llama names), fast-dllm-v2 (Qwen2 names);
the last three share decoder.py's HF names and common.py's attention and caches. Mixtures of
experts (moe.py: MoESpec, the routers, the dispatch): llada2-moe (LLaDA2.0 / 2.1, Bailing names,
its own module) and sdar-moe (SDAR with Qwen3-MoE MLPs, through decoder.py's `new_mlp`).
Must not: read files or sample.
"""

from __future__ import annotations

from types import ModuleType

from . import dream, fast_dllm_v2, llada, llada2_moe, sdar, sdar_moe, stable_diffcoder
from .common import BlockKVCache, DiffusionModel, KVCache, ModelSpec

LAYOUTS: dict[str, ModuleType] = {"dream": dream, "llada": llada, "sdar": sdar,
                                  "stable-diffcoder": stable_diffcoder, "fast-dllm-v2": fast_dllm_v2,
                                  "llada2-moe": llada2_moe, "sdar-moe": sdar_moe}
MODEL_CLASSES: dict[str, type[DiffusionModel]] = {
    "dream": dream.DreamModel, "llada": llada.LLaDAModel, "sdar": sdar.SDARModel,
    "stable-diffcoder": stable_diffcoder.StableDiffCoderModel, "fast-dllm-v2": fast_dllm_v2.FastDLLMv2Model,
    "llada2-moe": llada2_moe.LLaDA2MoeModel, "sdar-moe": sdar_moe.SDARMoeModel,
}

__all__ = ["BlockKVCache", "DiffusionModel", "KVCache", "ModelSpec", "LAYOUTS", "MODEL_CLASSES"]
