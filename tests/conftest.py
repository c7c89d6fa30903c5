"""Shared pytest fixtures: tiny random checkpoints written once per test session.

dream_ckpt       Dream layout, untied head, GQA (4 heads / 2 KV heads), one safetensors file,
                 tokenizer.json, ChatML template in tokenizer_config.json
dream_tied_ckpt  Open-dCoder-like: model_type "qwen2", tied embeddings, sharded safetensors
llada_ckpt       LLaDA layout, MHA, one safetensors file, LLaDA chat template

And for tests that run dllm in a work tree: `isolated` (DLLM_HOME in tmp_path, no embedded
weights, no colour or model variables from the outer environment) and `repo` (a temporary git
repository from gitrepo.make_repo, made the current directory).

Tests run torch on one thread: the tiny models gain nothing from more, and on a shared 2-core
machine intra-op thread spinning made a 32-step denoise 70x slower (8.8 s vs 0.12 s).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from gitrepo import make_repo  # noqa: E402
from tiny import make_dream_checkpoint, make_llada_checkpoint  # noqa: E402

torch.set_num_threads(1)

ENV_OFF = ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "DLLM_MODEL", "DLLM_STATE_DIR", "COLUMNS")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DLLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DLLM_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    for name in ENV_OFF:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def repo(tmp_path, monkeypatch, isolated):
    root = make_repo(tmp_path / "repo")
    monkeypatch.chdir(root)
    return root


@pytest.fixture(scope="session")
def dream_ckpt(tmp_path_factory) -> Path:
    return make_dream_checkpoint(tmp_path_factory.mktemp("dream"))


@pytest.fixture(scope="session")
def dream_tied_ckpt(tmp_path_factory) -> Path:
    return make_dream_checkpoint(tmp_path_factory.mktemp("dream_tied"), tied=True, sharded=True,
                                 model_type="qwen2")


@pytest.fixture(scope="session")
def llada_ckpt(tmp_path_factory) -> Path:
    return make_llada_checkpoint(tmp_path_factory.mktemp("llada"))
