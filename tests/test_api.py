"""The public Python API of issue #2 (docs/api.md): the names `import dllm_cli` exposes, their
signatures, the error family, and that importing the package does not import torch."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

import torch

import dllm_cli
from dllm_cli import errors


def test_public_names_resolve():
    for name in dllm_cli.__all__:
        assert getattr(dllm_cli, name) is not None, name
    assert dllm_cli.DllmError is errors.DllmError


def test_every_user_error_is_a_dllm_error():
    classes = [c for c in vars(errors).values() if inspect.isclass(c) and issubclass(c, Exception)]
    assert len(classes) >= 6
    assert all(issubclass(c, dllm_cli.DllmError) for c in classes)


def test_signatures_match_the_issue():
    load = inspect.signature(dllm_cli.load_model).parameters
    assert list(load)[:3] == ["path", "device", "dtype"]
    assert load["device"].default == "cpu" and load["dtype"].default is torch.float32
    fields = inspect.signature(dllm_cli.SamplerConfig).parameters
    for name in ("gen_length", "steps", "block_length", "alg", "temperature", "top_p", "top_k", "alg_temp",
                 "threshold", "cfg_scale", "eps", "seed"):
        assert name in fields, name
    den = inspect.signature(dllm_cli.denoise).parameters
    assert list(den)[:3] == ["model", "prompt_ids", "cfg"] and den["suffix_ids"].kind is inspect.Parameter.KEYWORD_ONLY


def test_logits_tokens_and_steps(dream_ckpt):
    model = dllm_cli.load_model(dream_ckpt, device="cpu", dtype=torch.float32)
    ids = model.tokenizer.encode("def mean(xs):")
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    assert model.tokenizer.decode(ids) == "def mean(xs):"
    out = model.logits(torch.tensor([ids, ids]))
    assert out.shape == (2, len(ids), model.spec.vocab_size) and out.dtype == torch.float32
    cfg = dllm_cli.SamplerConfig(gen_length=16, steps=16, block_length=8, threshold=None, seed=0)
    steps = list(dllm_cli.denoise(model, ids, cfg))
    assert all(isinstance(s.tokens, list) and len(s.tokens) == 16 for s in steps)
    assert steps[0].tokens.count(model.tokens.mask) == 16 - len(steps[0].revealed)
    assert model.tokens.mask not in steps[-1].tokens and steps[-1].done


def test_import_does_not_import_torch():
    code = "import sys, dllm_cli; dllm_cli.SamplerConfig; dllm_cli.DllmError; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
