"""The model layouts dllm can run, chosen from config.json (never from the folder name).

LAYOUTS maps a layout name to its module (spec_from_config, model class, MODEL_TYPES,
ARCHITECTURES). `layout_of(config)` picks one from `model_type`, then `architectures`.
"""

from __future__ import annotations

from . import dream, llada
from .common import DiffusionModel, KVCache, ModelSpec

LAYOUTS = {"dream": dream, "llada": llada}
MODEL_CLASSES = {"dream": dream.DreamModel, "llada": llada.LLaDAModel}


def layout_of(config: dict) -> str | None:
    """'dream' | 'llada' from config.json's model_type (else architectures), None if unknown.

    A model_type that is present but unknown is not second-guessed from architectures:
    e.g. block-causal Qwen2 variants share Qwen2 architectures but not its attention.
    """
    model_type = str(config.get("model_type") or "").lower()
    if model_type:
        return next((n for n, m in LAYOUTS.items() if model_type in m.MODEL_TYPES), None)
    archs = config.get("architectures") or []
    for name, module in LAYOUTS.items():
        if any(a in module.ARCHITECTURES for a in archs if isinstance(a, str)):
            return name
    return None


def supported_model_types() -> list[str]:
    return [t for module in LAYOUTS.values() for t in module.MODEL_TYPES]


__all__ = ["DiffusionModel", "KVCache", "ModelSpec", "LAYOUTS", "MODEL_CLASSES", "layout_of",
           "supported_model_types"]
