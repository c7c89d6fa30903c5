"""The engine: the only part of dllm that imports torch. Loading (`load_model`, `random_model`),
the network layouts, the samplers (`denoise`, DreamOn's `denoise_dreamon`), devices, and the local
Backend. Imports nothing that draws on a terminal (rich, typer, prompt_toolkit) or touches git.
"""

from __future__ import annotations

from .loader import PUBLISHED_SHAPES, load_model, random_model
from .model import Denoiser, Model
from .sampler import denoise

__all__ = ["PUBLISHED_SHAPES", "Denoiser", "Model", "denoise", "load_model", "random_model"]
