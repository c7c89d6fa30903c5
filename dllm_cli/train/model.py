"""The training-side Dream model: Qwen2 tensor names, bidirectional attention, shifted logits.

Knows: the Dream/Qwen2 block (RMSNorm, RoPE rotate-half, q/k/v with biases, GQA, SiLU-gated MLP),
the checkpoint files the engine's `checkpoint.load_model` reads (config.json with Qwen2 keys and
model_type "Dream", model.safetensors) and the Dream convention that the raw output at position
i-1 scores token i. It is a lean module for training speed (no cache, no windows); the engine's
`dllm_cli.models.dream` is the inference implementation and must produce the same numbers.
Must not: sample, know about prompts or terminals.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 704
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def hf_config(self, mask_token_id: int, eos_token_id: int, dtype: str = "float32") -> dict:
        """config.json in the Dream layout (Qwen2 keys) for the engine's loader."""
        cfg = asdict(self)
        cfg.update(architectures=["DreamModel"], model_type="Dream", hidden_act="silu",
                   mask_token_id=mask_token_id, eos_token_id=eos_token_id,
                   pad_token_id=eos_token_id, bos_token_id=eos_token_id,
                   torch_dtype=dtype, attention_dropout=0.0, use_cache=False,
                   initializer_range=0.02)
        return cfg


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_tables(cfg: ModelConfig, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, head_dim) in fp32, rotate-half layout."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d))
    t = torch.arange(length, dtype=torch.float32, device=device)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, hd = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(d, cfg.num_attention_heads * hd, bias=True)
        self.k_proj = nn.Linear(d, cfg.num_key_value_heads * hd, bias=True)
        self.v_proj = nn.Linear(d, cfg.num_key_value_heads * hd, bias=True)
        self.o_proj = nn.Linear(cfg.num_attention_heads * hd, d, bias=False)

    def forward(self, x, cos, sin, attn_mask=None):
        B, T, _ = x.shape
        c = self.cfg
        q = self.q_proj(x).view(B, T, c.num_attention_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rep = c.num_attention_heads // c.num_key_value_heads
        if rep > 1:  # GQA: (B, kv, T, hd) -> (B, heads, T, hd)
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # bidirectional
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attn_mask=None):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class DreamLM(nn.Module):
    """`hidden(ids)` -> final normed states; `raw_logits` are next-position (Dream) logits."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def head_weight(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.cfg.tie_word_embeddings else self.lm_head.weight

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, D)
        x = self.model.embed_tokens(ids)
        cos, sin = rope_tables(self.cfg, ids.shape[1], ids.device)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.model.norm(x)

    def raw_logits(self, ids):  # (B, T, V): index j scores token j+1
        return self.hidden(ids) @ self.head_weight().t()

    def logits(self, ids):  # (B, T, V) aligned: index i scores token i (as the engine returns)
        raw = self.raw_logits(ids)
        return torch.cat([raw[:, :1], raw[:, :-1]], dim=1)

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def save_checkpoint(model: DreamLM, out: Path, mask_token_id: int, eos_token_id: int,
                    dtype: torch.dtype = torch.float32, extra: dict | None = None) -> None:
    """config.json + model.safetensors (Qwen2 names; no lm_head when tied)."""
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to('cpu', dtype).contiguous().clone() for k, v in model.state_dict().items()}
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / "model.safetensors")
    name = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    cfg = model.cfg.hf_config(mask_token_id, eos_token_id, name)
    if extra:
        cfg.update(extra)
    (out / "config.json").write_text(json.dumps(cfg, indent=1))


def load_checkpoint(folder: Path) -> DreamLM:
    """Read back a checkpoint written by `save_checkpoint` (for resuming and evaluation)."""
    from safetensors.torch import load_file
    raw = json.loads((Path(folder) / "config.json").read_text())
    fields = ModelConfig.__dataclass_fields__
    model = DreamLM(ModelConfig(**{k: raw[k] for k in fields if k in raw}))
    state = {k: v.float() for k, v in load_file(str(Path(folder) / "model.safetensors")).items()}
    model.load_state_dict(state, strict=True)
    return model

