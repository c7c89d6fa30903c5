"""Masked-diffusion training of the embedded Dream-layout coder.

Knows: the model it trains (the engine's own Dream layout, `engine.layouts.dream.DreamModel`,
built from a `ModelConfig`; saved as config.json + model.safetensors that `load_model` reads),
the objective (LLaDA/MDLM: t ~ U(0,1) per row, mask each eligible token with probability t,
cross-entropy on masked tokens weighted by 1/t), the Dream shift (token i is scored by the raw
output at position i-1, so position 0 is never masked), the mix of packed pre-training rows and
SFT rows (only the generation region is masked), named presets, the learning-rate schedule,
periodic checkpoints and the JSON-lines training log.
Must not: sample or evaluate generations (evaluate.py does), touch the network.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dllm_cli.engine.layouts.dream import DreamModel, spec_from_config
from dllm_cli.train.data import SFTSet, load_sft, special_ids

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@dataclass
class ModelConfig:
    """The shape of the embedded model (Qwen2 config keys, as config.json writes them)."""

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

    def hf_config(self, mask_token_id: int, eos_token_id: int, dtype: str = "float32") -> dict:
        """config.json in the Dream layout (Qwen2 keys) for the engine's loader."""
        cfg = asdict(self)
        cfg.update(architectures=["DreamModel"], model_type="Dream", hidden_act="silu",
                   mask_token_id=mask_token_id, eos_token_id=eos_token_id,
                   pad_token_id=eos_token_id, bos_token_id=eos_token_id,
                   torch_dtype=dtype, attention_dropout=0.0, use_cache=False,
                   initializer_range=0.02)
        return cfg


def new_model(cfg: ModelConfig) -> DreamModel:
    """A freshly initialised network: linear and embedding weights ~ N(0, 0.02), biases 0, norms 1
    (drawn from torch's global generator, seeded by the caller)."""
    net = DreamModel(spec_from_config(cfg.hf_config(0, 0), "ModelConfig", family="dllm"))
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    return net


def save_checkpoint(net: DreamModel, cfg: ModelConfig, out: Path, mask_token_id: int, eos_token_id: int,
                    dtype: torch.dtype = torch.float32, extra: dict | None = None) -> None:
    """config.json + model.safetensors (Qwen2 names; no lm_head when tied)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype).contiguous().clone() for k, v in net.state_dict().items()}
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / "model.safetensors")
    name = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
    config = cfg.hf_config(mask_token_id, eos_token_id, name)
    if extra:
        config.update(extra)
    (out / "config.json").write_text(json.dumps(config, indent=1))


def load_checkpoint(folder: Path) -> tuple[DreamModel, ModelConfig]:
    """A checkpoint written by `save_checkpoint`, read through the engine's strict loader, as a
    trainable fp32 network on the CPU (for a second phase and for tests)."""
    from dllm_cli.engine.loader import load_model

    model = load_model(folder, device="cpu", dtype=torch.float32)
    net = model.net
    assert isinstance(net, DreamModel), f"{folder}: not a Dream-layout checkpoint"
    net.requires_grad_(True).train()
    config = json.loads((Path(folder) / "config.json").read_text())
    fields = ModelConfig.__dataclass_fields__
    return net, ModelConfig(**{k: config[k] for k in fields if k in config})


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    seq_len: int = 512
    batch_size: int = 8
    sft_ratio: float = 0.125    # share of rows that are chat (SEARCH/REPLACE) samples
    infill_ratio: float = 0.25  # share of rows that are infill samples
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    max_steps: int = 2000
    time_budget_s: float | None = None   # if set: cosine over wall time, stop at the budget
    eval_every: int = 100
    save_every_s: float = 300.0
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"          # "cuda" for the gpu preset
    autocast_bf16: bool = False  # bf16 autocast (GPU only: ~20x slower than fp32 on CPU)
    init: str | None = None      # start from this checkpoint's weights (a second phase); fresh optimizer


PRESETS: dict[str, TrainConfig] = {
    # Used for the shipped weights: 2 CPU cores, a few hours (--time-budget sets the length).
    "cpu-mini": TrainConfig(ModelConfig(vocab_size=1024, hidden_size=256, intermediate_size=704,
                                        num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=512),
                            seq_len=512, batch_size=8, lr=2e-3, warmup_steps=200, max_steps=1_000_000,
                            time_budget_s=14400, eval_every=250),
    # For one GPU (about an hour on an H100 with bf16 autocast); not used for the shipped weights.
    "gpu-small": TrainConfig(ModelConfig(vocab_size=1024, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                                         num_attention_heads=8, num_key_value_heads=2),
                             seq_len=1024, batch_size=64, lr=1e-3, warmup_steps=500, max_steps=20000,
                             eval_every=500, device="cuda", autocast_bf16=True),
    # For tests: runs in a second.
    "tiny": TrainConfig(ModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256),
                        seq_len=64, batch_size=4, lr=3e-3, warmup_steps=2, max_steps=20, eval_every=10,
                        save_every_s=1e9),
}


def lr_at(step: int, cfg: TrainConfig, elapsed: float | None = None) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr at max_steps (or, with a time
    budget, at time_budget_s of wall time: robust to CPUs shared with other jobs)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    p = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    if cfg.time_budget_s and elapsed is not None:
        p = min(1.0, elapsed / cfg.time_budget_s)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def make_batch(gen: np.random.Generator, stream: np.ndarray, sft: SFTSet | None, cfg: TrainConfig,
               infill: SFTSet | None = None):
    """ids (B, T) int64 and eligible (B, T) bool: which positions may be masked. Rows: packed
    pre-training text, then chat samples, then infill samples (their region only is eligible)."""
    B, T = cfg.batch_size, cfg.seq_len
    sets = [(s, int(round(B * ratio))) for s, ratio in ((sft, cfg.sft_ratio), (infill, cfg.infill_ratio))
            if s is not None and len(s.ids)]
    ids = np.empty((B, T), dtype=np.int64)
    eligible = np.ones((B, T), dtype=bool)
    n_plain = B - sum(n for _, n in sets)
    for r, s in enumerate(gen.integers(0, stream.size - T, size=n_plain)):
        ids[r] = stream[s:s + T]
    r = n_plain
    for s, n in sets:
        for j in gen.integers(0, len(s.ids), size=n):
            ids[r] = s.ids[j, :T]
            eligible[r] = False
            eligible[r, s.start[j]:min(T, s.end[j])] = True   # the context stays clean
            r += 1
    eligible[:, 0] = False  # Dream shift: nothing scores position 0
    return torch.from_numpy(ids), torch.from_numpy(eligible)


def diffusion_loss(model: DreamModel, ids, eligible, mask_id: int, gen: torch.Generator):
    """LLaDA/MDLM loss: sum over masked tokens of CE / t, divided by eligible tokens per row."""
    B, T = ids.shape
    # stratified t in (0, 1): lower variance than independent draws
    t = ((torch.rand(1, generator=gen) + torch.arange(B)) / B) % 1.0
    t = t.clamp(min=1e-3)
    masked = ((torch.rand(B, T, generator=gen) < t[:, None]) & eligible.cpu()).to(ids.device)
    t, eligible = t.to(ids.device), eligible.to(ids.device)
    none = ~masked.any(1)   # make sure every row has a masked token
    if none.any():
        first = eligible.float().argmax(1)
        masked[none, first[none]] = True
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    hid = model.hidden(noisy)                               # (B, T, D)
    b, i = masked.nonzero(as_tuple=True)
    logits = model.head(hid[b, i - 1])                      # (M, V): raw i-1 scores token i
    ce = F.cross_entropy(logits.float(), ids[b, i], reduction="none")
    weight = 1.0 / (t[b] * eligible.sum(1)[b].clamp(min=1))
    loss = (ce * weight).sum() / B
    acc = (logits.argmax(-1) == ids[b, i]).float().mean()
    return loss, {"masked_ce": ce.mean().item(), "masked_acc": acc.item()}


@torch.no_grad()
def masked_top1(model: DreamModel, rows: torch.Tensor, mask_id: int, ratio: float = 0.15, seed: int = 1234):
    """Held-out masked-token top-1 at `ratio` masking (fixed mask from `seed`); positions >= 1."""
    gen = torch.Generator().manual_seed(seed)
    masked = (torch.rand(rows.shape, generator=gen) < ratio).to(rows.device)
    masked[:, 0] = False
    noisy = torch.where(masked, torch.full_like(rows, mask_id), rows)
    hit = total = 0
    for k in range(0, rows.shape[0], 8):
        hid = model.hidden(noisy[k:k + 8])
        b, i = masked[k:k + 8].nonzero(as_tuple=True)
        pred = model.head(hid[b, i - 1]).argmax(-1)
        hit += (pred == rows[k:k + 8][b, i]).sum().item()
        total += b.numel()
    return hit / max(1, total)


def heldout_rows(stream: np.ndarray, seq_len: int, n: int) -> torch.Tensor:
    n = min(n, stream.size // seq_len)
    return torch.from_numpy(stream[: n * seq_len].astype(np.int64).reshape(n, seq_len))


def init_model(cfg: TrainConfig) -> DreamModel:
    """A fresh model, or the weights of `cfg.init` (whose shapes must be the preset's)."""
    if not cfg.init:
        return new_model(cfg.model)
    model, model_cfg = load_checkpoint(Path(cfg.init))
    if model_cfg != cfg.model:
        raise ValueError(f"{cfg.init}: its model config {model_cfg} is not the preset's {cfg.model}")
    return model


def make_optimizer(model: DreamModel, cfg: TrainConfig):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def write_checkpoint(model: DreamModel, cfg: ModelConfig, out: Path, tokenizer_dir: Path, mask_id: int,
                     eos_id: int, info: dict):
    save_checkpoint(model, cfg, out, mask_id, eos_id, torch.float32)  # tensors are moved to CPU there
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, out / name)
    (out / "training_state.json").write_text(json.dumps(info, indent=1))


class _Log:
    def __init__(self, path: Path, echo: bool):
        self.fh = open(path, "a", encoding="utf-8")
        self.echo = echo

    def __call__(self, **rec):
        line = json.dumps(rec)
        self.fh.write(line + "\n")
        self.fh.flush()
        if self.echo:
            print(line, flush=True)


def train(cfg: TrainConfig, data_dir: Path, tokenizer_dir: Path, run_dir: Path, echo: bool = True,
          command: str = "") -> Path:
    """Train from scratch; checkpoints go to run_dir/checkpoint (complete, loadable folders)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = _Log(run_dir / "train_log.jsonl", echo)
    mask_id, eos_id = special_ids(tokenizer_dir)
    stream = np.load(data_dir / "train_tokens.npy")
    sft = load_sft(data_dir / "sft_train.npz") if cfg.sft_ratio > 0 else None
    infill = load_sft(data_dir / "infill_train.npz") if cfg.infill_ratio > 0 else None
    eval_rows = heldout_rows(np.load(data_dir / "heldout_tokens.npy"), cfg.seq_len, 32)
    dev = torch.device(cfg.device)
    model = init_model(cfg).to(dev)
    eval_rows = eval_rows.to(dev)
    opt = make_optimizer(model, cfg)
    gen_np, gen_t = np.random.default_rng(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    log(event="start", command=command, config=asdict(cfg), n_params=sum(p.numel() for p in model.parameters()),
        train_tokens=int(stream.size), sft_samples=0 if sft is None else len(sft.ids),
        infill_samples=0 if infill is None else len(infill.ids))
    ckpt = run_dir / "checkpoint"
    t0 = last_save = time.time()
    step = 0
    elapsed = 0.0
    while step < cfg.max_steps:
        lr = lr_at(step, cfg, elapsed)
        for g in opt.param_groups:
            g["lr"] = lr
        ids, eligible = make_batch(gen_np, stream, sft, cfg, infill)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.autocast_bf16):
            loss, stats = diffusion_loss(model, ids.to(dev), eligible, mask_id, gen_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
        opt.step()
        step += 1
        elapsed = time.time() - t0
        last = step == cfg.max_steps or bool(cfg.time_budget_s and elapsed >= cfg.time_budget_s)
        if step % 10 == 0 or last:
            log(step=step, loss=round(loss.item(), 4), lr=round(lr, 6), gnorm=round(gnorm, 3),
                tokens=step * cfg.batch_size * cfg.seq_len, elapsed=round(elapsed, 1), **stats)
        if step % cfg.eval_every == 0 or last:
            model.eval()
            acc = masked_top1(model, eval_rows, mask_id)
            model.train()
            log(step=step, heldout_top1_15=round(acc, 4), elapsed=round(time.time() - t0, 1))
        if time.time() - last_save > cfg.save_every_s or last:
            write_checkpoint(model, cfg.model, ckpt, tokenizer_dir, mask_id, eos_id,
                             {"step": step, "max_steps": cfg.max_steps, "elapsed_s": round(elapsed, 1),
                              "seed": cfg.seed, "tokens": step * cfg.batch_size * cfg.seq_len})
            last_save = time.time()
        if last:
            break
    log(event="done", step=step, elapsed=round(time.time() - t0, 1))
    return ckpt


def package(checkpoint: Path, corpus_dir: Path, out: Path, logs: list[Path] | None = None) -> Path:
    """Copy the model files, the training log and the data record into the shipped folder.
    `logs`: the training logs to ship, in order, joined into one train_log.jsonl (a run in two
    phases has two); default: the checkpoint's own run's log."""
    from dllm_cli.train.corpus import data_markdown
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", "training_state.json") + TOKENIZER_FILES:
        shutil.copy(checkpoint / name, out / name)
    cfg = json.loads((out / "config.json").read_text())
    cfg["dllm_family"] = "dllm"   # catalog.family_of: our own recipe, not Dream's
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    if logs is None:
        logs = [log for log in [checkpoint.parent / "train_log.jsonl"] if log.is_file()]
    missing = [str(log) for log in logs if not log.is_file()]
    if missing:
        raise ValueError(f"training log not found: {', '.join(missing)}")
    if logs:
        (out / "train_log.jsonl").write_text("".join(log.read_text() for log in logs))
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    (out / "data_manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "DATA.md").write_text(data_markdown(manifest))
    return out
