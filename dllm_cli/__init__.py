"""dllm: a terminal coding assistant built on masked-diffusion language models.

The public API (documented in docs/api.md) is imported lazily so that `dllm --help`
and `dllm --version` never import torch:

    model = dllm_cli.load_model(path, device="cpu", dtype=torch.float32)
    for step in dllm_cli.denoise(model, prompt_ids, dllm_cli.SamplerConfig()): ...
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "DllmError",
    "SamplerConfig",
    "DenoiseStep",
    "Generation",
    "SpecialTokens",
    "inspect",
    "load_model",
    "denoise",
    "recipe",
]

_LAZY = {
    "DllmError": ("dllm_cli.errors", "DllmError"),
    "SamplerConfig": ("dllm_cli.config", "SamplerConfig"),
    "recipe": ("dllm_cli.config", "recipe"),
    "DenoiseStep": ("dllm_cli.events", "DenoiseStep"),
    "Generation": ("dllm_cli.events", "Generation"),
    "SpecialTokens": ("dllm_cli.events", "SpecialTokens"),
    "inspect": ("dllm_cli.catalog", "inspect"),
    "load_model": ("dllm_cli.engine.loader", "load_model"),
    "denoise": ("dllm_cli.engine.sampler", "denoise"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dllm_cli' has no attribute {name!r}")
