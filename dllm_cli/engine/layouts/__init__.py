"""The network layouts dllm can run. `catalog.layout_of(config)` names one (from config.json,
never from the folder name); LAYOUTS maps that name to its module (spec_from_config, the model
class, HEAD_NAME). Each module's MODEL_TYPES / ARCHITECTURES must equal catalog.LAYOUT_TYPES
(a test checks it): catalog.py, which must not import torch, keeps the table.
"""

from __future__ import annotations

from types import ModuleType

from . import dream, llada
from .common import DiffusionModel, KVCache, ModelSpec

LAYOUTS: dict[str, ModuleType] = {"dream": dream, "llada": llada}
MODEL_CLASSES: dict[str, type[DiffusionModel]] = {"dream": dream.DreamModel, "llada": llada.LLaDAModel}

__all__ = ["DiffusionModel", "KVCache", "ModelSpec", "LAYOUTS", "MODEL_CLASSES"]
