"""Tiny random checkpoints in the published layouts, written to a folder for tests.

`make_dream_checkpoint(dir)` writes a Qwen2-named (Dream family) checkpoint and
`make_llada_checkpoint(dir)` an OLMo-named (LLaDA) one: config.json with the keys the
published configs use, random safetensors under the published tensor names (one file or
sharded with model.safetensors.index.json), and a small byte-level BPE tokenizer with the
family's special tokens, tokenizer_config.json and a chat template. Sizes are tiny
(hidden 64, 2 layers, 4 heads) so every test runs in milliseconds. The global torch RNG is
never touched: weights come from a local generator seeded with `seed`.

The block-diffusion families (docs/models.md has the sources of every key and name):
`make_sdar_checkpoint` (Qwen3 names with q_norm/k_norm, an explicit head_dim whose q width is
not the hidden size, as SDAR-4B's; every key of the HF config.json, which has no block_size
and no mask_token_id unless `training_copy`; the mask named "<|MASK|>" in tokenizer_config.json
and "<MASK>" in added_tokens.json / special_tokens_map.json, as the published folders do),
`make_stable_diffcoder_checkpoint` (Llama names; `revision="old"`: architectures
LlamaForCausalLM with the auto_map naming SeedDiffcoderForCausalLM; Seed-Coder's special tokens
with "<[MASK_TOKEN]>" as mask_token in special_tokens_map.json) and
`make_fast_dllm_v2_checkpoint` (Qwen2 names with q/k/v biases, `bd_size`, `layer_types`; the
mask "|<MASK>|" named only as an added token).

The Dream folder also holds `tokenization_dream.py` / `configuration_dream.py` named by
`auto_map`; importing them writes the file AUTO_MAP_RAN into the folder, so a test can
prove the loader never runs checkpoint-supplied code.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, LAYERS, HEADS, INTERMEDIATE = 64, 2, 4, 128
AUTO_MAP_MARKER = "AUTO_MAP_RAN"
DROP = object()  # edit_config: remove the key

DREAM_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>")
LLADA_SPECIALS = ("<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>")

# Qwen2's pre-tokenizer split pattern (also in its tokenizer.json).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLADA_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

_CORPUS = """def mean(numbers):
    return sum(numbers) / len(numbers)

class Stack:
    def __init__(self):
        self.items = []
    def push(self, value):
        self.items.append(value)
import os
for i in range(10):
    if i % 2 == 0:
        print("the value is", i)
    else:
        print('odd')
You are a helpful assistant. Write a function that returns the mean of a list.
"""


# ---- tokenizer ---------------------------------------------------------------------------

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (byte-level BPE alphabet)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


def _bpe_vocab(num_merges: int = 60) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A deterministic byte-level BPE learnt from _CORPUS: 256 byte symbols + merges."""
    table = bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    words = Counter("".join(table[b] for b in w.encode()) for w in re.findall(r" ?\w+| ?[^\w\s]+|\s+", _CORPUS))
    seqs = {w: list(w) for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for w, n in words.items():
            s = seqs[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]  # ties: lexicographic
        merges.append(best)
        vocab[best[0] + best[1]] = len(vocab)
        for w in seqs:
            s, out, i = seqs[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return vocab, merges


def _fast_tokenizer(vocab: dict[str, int], merges, specials):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab=dict(vocab), merges=list(merges), fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
    return tok


def write_tokenizer(folder: Path, specials, *, fmt: str, config_extra: dict,
                    chat_template: str | None, template_in: str) -> dict[str, int]:
    """Write the tokenizer files; returns {special token: id}."""
    vocab, merges = _bpe_vocab()
    ids = {s: len(vocab) + i for i, s in enumerate(specials)}
    if fmt == "tokenizer.json":
        _fast_tokenizer(vocab, merges, specials).save(str(folder / "tokenizer.json"))
    elif fmt == "vocab-merges":
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
        (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (folder / "added_tokens.json").write_text(json.dumps(ids), encoding="utf-8")
    else:
        raise ValueError(f"unknown tokenizer_format {fmt!r}")
    cfg = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): {"content": s, "lstrip": False, "normalized": False,
                                          "rstrip": False, "single_word": False, "special": True}
                                 for s, i in ids.items()},
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        **config_extra,
    }
    if chat_template is not None and template_in == "config":
        cfg["chat_template"] = chat_template
    elif chat_template is not None and template_in == "file":
        (folder / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return ids


def _round_up(n: int, multiple: int = 64) -> int:
    return (n + multiple - 1) // multiple * multiple


# ---- weights ------------------------------------------------------------------------------

def _random(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Well-scaled random tensors: norms ~1, linears ~1/sqrt(fan_in), embeddings ~1."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        if "norm" in name or name.endswith("ln_f.weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith(".bias"):
            t = 0.1 * torch.randn(shape, generator=g)
        elif "embed_tokens" in name or name.endswith("wte.weight"):
            t = torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) / shape[1] ** 0.5
        out[name] = t
    return out


def write_weights(folder: Path, tensors: dict[str, torch.Tensor], *, dtype: str, sharded: bool) -> None:
    tensors = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in tensors.items()}
    if not sharded:
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    names = list(tensors)
    half = len(names) // 2
    parts = [names[:half], names[half:]]
    weight_map = {}
    for i, part in enumerate(parts, 1):
        fname = f"model-{i:05d}-of-{len(parts):05d}.safetensors"
        save_file({k: tensors[k] for k in part}, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")


def _write_auto_map_traps(folder: Path) -> None:
    trap = (f"import pathlib\npathlib.Path(__file__).with_name({AUTO_MAP_MARKER!r}).write_text('ran')\n"
            "raise RuntimeError('checkpoint-supplied code must never run')\n")
    for name in ("tokenization_dream.py", "configuration_dream.py", "modeling_dream.py"):
        (folder / name).write_text(trap, encoding="utf-8")


# ---- the two families -----------------------------------------------------------------------

def dream_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.q_proj.bias": (h,),
            p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, h),
            p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter),
        })
    shapes["model.norm.weight"] = (h,)
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, h)
    return shapes


def make_dream_checkpoint(dir, *, tied: bool = False, sharded: bool = False, num_kv_heads: int = 2,
                          dtype: str = "float32", tokenizer_format: str = "tokenizer.json",
                          model_type: str = "Dream", vocab_size: int | None = None, seed: int = 0,
                          extra_tokens: tuple[str, ...] = (), chat_template: str | None = CHATML_TEMPLATE,
                          template_in: str = "config") -> Path:
    """A tiny Dream-family (Qwen2-named) checkpoint in `dir`; returns the folder.

    `model_type="qwen2"` with `tied=True` mimics Open-dCoder; `extra_tokens` appends more
    special tokens (e.g. "<|dlm_pad|>"); `template_in` is "config" (tokenizer_config.json)
    or "file" (chat_template.jinja); `vocab_size` overrides the padded embedding rows.
    """
    folder = Path(dir)
    folder.mkdir(parents=True, exist_ok=True)
    specials = DREAM_SPECIALS + tuple(extra_tokens)
    tok_extra = {"auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
                 "tokenizer_class": "DreamTokenizer", "bos_token": "<|beginoftext|>",
                 "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "mask_token": "<|mask|>",
                 "additional_special_tokens": list(specials[1:3]), "errors": "replace"}
    ids = write_tokenizer(folder, specials, fmt=tokenizer_format, config_extra=tok_extra,
                          chat_template=chat_template, template_in=template_in)
    cfg = {
        "architectures": ["DreamModel" if model_type == "Dream" else "Qwen2ForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig",
                     "AutoModel": "modeling_dream.DreamModel"},
        "attention_dropout": 0.0, "hidden_act": "silu", "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE, "initializer_range": 0.02,
        "max_position_embeddings": 4096, "max_window_layers": LAYERS, "model_type": model_type,
        "num_attention_heads": HEADS, "num_hidden_layers": LAYERS, "num_key_value_heads": num_kv_heads,
        "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None,
        "tie_word_embeddings": tied, "torch_dtype": dtype, "use_cache": False,
        "use_sliding_window": False, "vocab_size": vocab_size or _round_up(max(ids.values()) + 1),
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"], "mask_token_id": ids["<|mask|>"],
    }
    (folder / "config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    write_weights(folder, _random(dream_shapes(cfg), seed), dtype=dtype, sharded=sharded)
    _write_auto_map_traps(folder)
    return folder


def llada_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, inter, v = cfg["d_model"], cfg["mlp_hidden_size"], cfg["embedding_size"]
    hd = h // cfg["n_heads"]
    kv = cfg["n_kv_heads"] * hd
    shapes = {"model.transformer.wte.weight": (v, h)}
    for i in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        shapes.update({
            p + "attn_norm.weight": (h,), p + "q_proj.weight": (h, h), p + "k_proj.weight": (kv, h),
            p + "v_proj.weight": (kv, h), p + "attn_out.weight": (h, h), p + "ff_norm.weight": (h,),
            p + "ff_proj.weight": (inter, h), p + "up_proj.weight": (inter, h),
            p + "ff_out.weight": (h, inter),
        })
    shapes["model.transformer.ln_f.weight"] = (h,)
    shapes["model.transformer.ff_out.weight"] = (v, h)
    return shapes


def make_llada_checkpoint(dir, *, num_kv_heads: int | None = None, sharded: bool = False,
                          dtype: str = "float32", tokenizer_format: str = "tokenizer.json",
                          vocab_size: int | None = None, seed: int = 0,
                          chat_template: str | None = LLADA_TEMPLATE, template_in: str = "config") -> Path:
    """A tiny LLaDA (OLMo-named) checkpoint in `dir`; MHA unless `num_kv_heads` is given."""
    folder = Path(dir)
    folder.mkdir(parents=True, exist_ok=True)
    tok_extra = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                 "pad_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"}
    ids = write_tokenizer(folder, LLADA_SPECIALS, fmt=tokenizer_format, config_extra=tok_extra,
                          chat_template=chat_template, template_in=template_in)
    v = vocab_size or _round_up(max(ids.values()) + 1)
    cfg = {
        "activation_type": "silu", "alibi": False, "architectures": ["LLaDAModelLM"],
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                     "AutoModel": "modeling_llada.LLaDAModelLM"},
        "attention_layer_norm": False, "bias_for_layer_norm": False, "block_type": "llama",
        "d_model": HIDDEN, "embedding_size": v, "eos_token_id": ids["<|endoftext|>"],
        "flash_attention": False, "include_bias": False, "include_qkv_bias": False,
        "init_device": "meta", "layer_norm_type": "rms", "layer_norm_with_affine": True,
        "mask_token_id": ids["<|mdm_mask|>"], "max_sequence_length": 4096,
        "mlp_hidden_size": INTERMEDIATE, "mlp_ratio": 4, "model_type": "llada", "n_heads": HEADS,
        "n_kv_heads": num_kv_heads or HEADS, "n_layers": LAYERS, "pad_token_id": ids["<|endoftext|>"],
        "rms_norm_eps": 1e-5, "rope": True, "rope_full_precision": True, "rope_theta": 500000.0,
        "scale_logits": False, "use_cache": False, "vocab_size": v, "weight_tying": False,
    }
    (folder / "config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    write_weights(folder, _random(llada_shapes(cfg), seed), dtype=dtype, sharded=sharded)
    return folder


# ---- the block-diffusion families (SDAR, Stable-DiffCoder, Fast-dLLM v2) -----------------------

SDAR_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
                 "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                 "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
                 "<|MASK|>")
SEED_SPECIALS = ("<[begin\u2581of\u2581sentence]>", "<[PAD\u2581TOKEN]>", "<[end\u2581of\u2581sentence]>",
                 "<[SEP\u2581TOKEN]>", "<[fim-prefix]>", "<[fim-suffix]>", "<[fim-middle]>", "<[MASK_TOKEN]>")
FAST_DLLM_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                      "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                      "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
                      "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                      "<|repo_name|>", "<|file_sep|>", "|<MASK>|")

QWEN3_TEMPLATE = (  # the shape of Qwen3's ChatML (no default system prompt)
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{% endif %}{% endif %}"
)
SEED_TEMPLATE = (  # Seed-Coder-Instruct's turns
    "{% for message in messages %}{{ bos_token + message['role'] + '\\n' + message['content'] }}"
    "{% if message['role'] == 'system' %}{{ '\\n\\n' }}{% endif %}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}{{ bos_token + 'assistant\\n' }}{% endif %}"
)


def decoder_shapes(cfg: dict, *, qkv_bias: bool, qk_norm: bool) -> dict[str, tuple[int, ...]]:
    """HF decoder names (Qwen2 / Qwen3 / Llama): model.embed_tokens, model.layers.N.*, model.norm, lm_head."""
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        for name, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            shapes[p + f"self_attn.{name}.weight"] = (rows, h)
            if qkv_bias:
                shapes[p + f"self_attn.{name}.bias"] = (rows,)
        shapes[p + "self_attn.o_proj.weight"] = (h, q)
        if qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (hd,)
            shapes[p + "self_attn.k_norm.weight"] = (hd,)
        shapes.update({p + "post_attention_layernorm.weight": (h,), p + "mlp.gate_proj.weight": (inter, h),
                       p + "mlp.up_proj.weight": (inter, h), p + "mlp.down_proj.weight": (h, inter)})
    shapes["model.norm.weight"] = (h,)
    if not cfg.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (v, h)
    return shapes


def _block_folder(dir, specials, tok_extra, template, *, sharded, dtype, seed, cfg_of, qkv_bias, qk_norm,
                  traps) -> tuple[Path, dict[str, int], dict]:
    folder = Path(dir)
    folder.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(folder, specials, fmt="tokenizer.json", config_extra=tok_extra,
                          chat_template=template, template_in="config")
    cfg = cfg_of(ids, _round_up(max(ids.values()) + 1))
    (folder / "config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    write_weights(folder, _random(decoder_shapes(cfg, qkv_bias=qkv_bias, qk_norm=qk_norm), seed), dtype=dtype,
                  sharded=sharded)
    trap = (f"import pathlib\npathlib.Path(__file__).with_name({AUTO_MAP_MARKER!r}).write_text('ran')\n"
            "raise RuntimeError('checkpoint-supplied code must never run')\n")
    for name in traps:
        (folder / name).write_text(trap, encoding="utf-8")
    return folder, ids, cfg


def make_sdar_checkpoint(dir, *, sharded: bool = False, dtype: str = "float32", seed: int = 0,
                         training_copy: bool = False, block_size: int | None = None, tied: bool = False,
                         num_kv_heads: int = 2, head_dim: int = 32) -> Path:
    """A tiny SDAR (Qwen3-named) checkpoint. `training_copy`: config.json also carries block_size 4
    and mask_token_id, as JetAstra/SDAR's training copies do; `block_size` sets it explicitly."""
    tok_extra = {"add_bos_token": False, "bos_token": None, "eos_token": "<|endoftext|>",
                 "pad_token": "<|endoftext|>", "mask_token": "<|MASK|>", "tokenizer_class": "Qwen2Tokenizer",
                 "additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|MASK|>"],
                 "model_max_length": 131072, "errors": "replace", "split_special_tokens": False,
                 "auto_map": {"AutoTokenizer": ["tokenization_qwen2.Qwen2Tokenizer",
                                                "tokenization_qwen2_fast.Qwen2TokenizerFast"]}}

    def cfg_of(ids, vocab):
        cfg = {
            "architectures": ["SDARForCausalLM"],
            "auto_map": {"AutoConfig": "configuration_sdar.SDARConfig", "AutoModel": "modeling_sdar.SDARModel",
                         "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"},
            "attention_bias": False, "attention_dropout": 0.0, "attn_implementation": "flex_attention",
            "bos_token_id": ids["<|endoftext|>"], "debug": False, "eos_token_id": ids["<|endoftext|>"],
            "ep_size": 1, "fuse_cross_entropy": True, "head_dim": head_dim, "hidden_act": "silu",
            "hidden_size": HIDDEN, "initializer_range": 0.02, "intermediate_size": INTERMEDIATE,
            "max_position_embeddings": 32768, "max_window_layers": LAYERS, "micro_forward": False,
            "model_type": "sdar", "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
            "num_key_value_heads": num_kv_heads, "rms_norm_eps": 1e-6, "rope_scaling": None,
            "rope_theta": 1000000, "skip_checkpoint": False, "sliding_window": None,
            "tie_word_embeddings": tied, "torch_dtype": "bfloat16", "transformers_version": "4.52.4",
            "use_cache": False, "use_deepep": False, "use_sliding_window": False, "vocab_size": vocab,
        }
        if training_copy:
            cfg.update(block_size=4, mask_token_id=ids["<|MASK|>"])
        if block_size is not None:
            cfg["block_size"] = block_size
        return cfg

    folder, ids, _ = _block_folder(dir, SDAR_SPECIALS, tok_extra, QWEN3_TEMPLATE, sharded=sharded, dtype=dtype,
                                   seed=seed, cfg_of=cfg_of, qkv_bias=False, qk_norm=True,
                                   traps=("configuration_sdar.py", "modeling_sdar.py", "tokenization_qwen2.py"))
    # The published folders name the mask "<MASK>" here (and "<|MASK|>" in tokenizer_config.json).
    added = {s: i for s, i in ids.items()}
    added["<MASK>"] = added.pop("<|MASK|>")
    (folder / "added_tokens.json").write_text(json.dumps(added, ensure_ascii=False), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<MASK>"], "eos_token": "<|endoftext|>",
         "pad_token": "<|endoftext|>", "mask_token": "<MASK>"}), encoding="utf-8")
    (folder / "chat_template.jinja").write_text(QWEN3_TEMPLATE, encoding="utf-8")
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
         "pad_token_id": ids["<|endoftext|>"], "do_sample": True, "temperature": 0.6, "top_k": 20,
         "top_p": 0.95}), encoding="utf-8")
    return folder


def make_stable_diffcoder_checkpoint(dir, *, sharded: bool = False, dtype: str = "float32", seed: int = 0,
                                     revision: str = "5.3", num_kv_heads: int = 2,
                                     chat_template: str | None = SEED_TEMPLATE) -> Path:
    """A tiny Stable-DiffCoder (Llama-named) checkpoint; `revision` "5.3" (architectures
    StableDiffcoderForCausalLM) or "old" (LlamaForCausalLM + auto_map SeedDiffcoderForCausalLM)."""
    bos, pad, eos = SEED_SPECIALS[0], SEED_SPECIALS[1], SEED_SPECIALS[2]
    tok_extra = {"bos_token": bos, "eos_token": eos, "pad_token": pad, "sep_token": SEED_SPECIALS[3],
                 "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 8192,
                 "add_bos_token": False}

    def cfg_of(ids, vocab):
        cfg = {
            "architectures": ["StableDiffcoderForCausalLM"],
            "auto_map": {"AutoModel": "modeling_stable_diffcoder.StableDiffcoderForCausalLM",
                         "AutoModelForCausalLM": "modeling_stable_diffcoder.StableDiffcoderForCausalLM"},
            "attention_bias": False, "attention_dropout": 0.1, "bos_token_id": ids[bos], "eos_token_id": ids[eos],
            "hidden_act": "silu", "hidden_size": HIDDEN, "initializer_range": 0.009882118,
            "intermediate_size": INTERMEDIATE, "layer_norm_eps": None, "max_position_embeddings": 8192,
            "mlp_bias": False, "model_type": "llama", "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
            "num_key_value_heads": num_kv_heads, "resid_pdrop": 0.1, "rms_norm_eps": 1e-6,
            "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
            "transformers_version": "5.3.0", "use_cache": True, "vocab_size": vocab,
        }
        if revision == "old":
            cfg.update(architectures=["LlamaForCausalLM"], head_dim=HIDDEN // HEADS, rope_scaling=None,
                       transformers_version="4.46.2",
                       auto_map={"AutoModelForCausalLM": "modeling_seed_diffcoder.SeedDiffcoderForCausalLM"})
        return cfg

    folder, ids, _ = _block_folder(dir, SEED_SPECIALS, tok_extra, chat_template, sharded=sharded, dtype=dtype,
                                   seed=seed, cfg_of=cfg_of, qkv_bias=False, qk_norm=False,
                                   traps=("modeling_stable_diffcoder.py", "modeling_seed_diffcoder.py",
                                          "generation_utils.py"))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": bos, "eos_token": eos, "pad_token": pad, "mask_token": {"content": "<[MASK_TOKEN]>"}},
        ensure_ascii=False), encoding="utf-8")
    return folder


def make_fast_dllm_v2_checkpoint(dir, *, sharded: bool = False, dtype: str = "float32", seed: int = 0,
                                 bd_size: int = 32, tied: bool = False, num_kv_heads: int = 2) -> Path:
    """A tiny Fast-dLLM v2 (Qwen2-named, q/k/v biases) checkpoint with `bd_size`."""
    tok_extra = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                 "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 131072, "errors": "replace",
                 "split_special_tokens": False}

    def cfg_of(ids, vocab):
        return {
            "architectures": ["Fast_dLLM_QwenForCausalLM"], "attention_dropout": 0.0,
            "auto_map": {"AutoConfig": "configuration.Fast_dLLM_QwenConfig",
                         "AutoModel": "modeling.Fast_dLLM_QwenModel",
                         "AutoModelForCausalLM": "modeling.Fast_dLLM_QwenForCausalLM"},
            "bd_size": bd_size, "bos_token_id": ids["<|endoftext|>"], "conplemenrary_mask": True,
            "eos_token_id": ids["<|im_end|>"], "hidden_act": "silu", "hidden_size": HIDDEN,
            "initializer_range": 0.02, "intermediate_size": INTERMEDIATE, "layer_types": ["full_attention"] * LAYERS,
            "max_position_embeddings": 32768, "max_window_layers": LAYERS, "model_type": "Fast_dLLM_Qwen",
            "num_attention_heads": HEADS, "num_hidden_layers": LAYERS, "num_key_value_heads": num_kv_heads,
            "pad_token_id": ids["<|im_end|>"], "rms_norm_eps": 1e-6, "rope_scaling": None,
            "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": tied,
            "torch_dtype": "bfloat16", "transformers_version": "4.53.1", "use_cache": True,
            "use_sliding_window": False, "vocab_size": vocab,
        }

    folder, _, _ = _block_folder(dir, FAST_DLLM_SPECIALS, tok_extra, CHATML_TEMPLATE, sharded=sharded, dtype=dtype,
                                 seed=seed, cfg_of=cfg_of, qkv_bias=True, qk_norm=False,
                                 traps=("configuration.py", "modeling.py"))
    return folder


# ---- the mixtures of experts (LLaDA2, SDAR-MoE) ------------------------------------------------

LLADA2_SPECIALS = ("<|startoftext|>", "<|endoftext|>", "[CLS]", "[gMASK]", "<|mask|>", "<|role_end|>")
LLADA2_TEMPLATE = (  # the shape of LLaDA2's turns (its shipped template was not read)
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ '<role>SYSTEM</role>' + message['content'] + '<|role_end|>' }}"
    "{% elif message['role'] == 'user' %}{{ '<role>HUMAN</role>' + message['content'] + '<|role_end|>' }}"
    "{% else %}{{ '<role>ASSISTANT</role>' + message['content'] + '<|role_end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<role>ASSISTANT</role>' }}{% endif %}"
)
# What LLaDA2.1's modeling file says about its generate() (catalog reads it as text, never imports it).
LLADA21_GENERATE = ("def generate(self, inputs=None, temperature=0.0, block_length=32, steps=32, gen_length=2048,\n"
                    "             threshold=0.95, editing_threshold=0.9, max_post_steps=16, num_to_transfer=1):\n")
MOE_EXPERTS, MOE_TOPK, MOE_INTERMEDIATE = 16, 4, 32


def llada2_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """LLaDA2's names: model.word_embeddings, model.layers.N.attention.*, mlp.* (dense or experts)."""
    h, v, hd = cfg["hidden_size"], cfg["vocab_size"], cfg["head_dim"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    shapes = {"model.word_embeddings.weight": (v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "attention.query_key_value.weight"] = ((H + 2 * KV) * hd, h)
        if cfg["use_qkv_bias"]:
            shapes[p + "attention.query_key_value.bias"] = ((H + 2 * KV) * hd,)
        if cfg.get("use_qk_norm", True):
            shapes[p + "attention.query_layernorm.weight"] = (hd,)
            shapes[p + "attention.key_layernorm.weight"] = (hd,)
        shapes[p + "attention.dense.weight"] = (h, H * hd)
        if cfg["use_bias"]:
            shapes[p + "attention.dense.bias"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        if cfg.get("num_experts") is None or i < cfg["first_k_dense_replace"]:
            mlps = {"mlp.": cfg["intermediate_size"]}
        else:
            E, inter = cfg["num_experts"], cfg["moe_intermediate_size"]
            shapes[p + "mlp.gate.weight"] = (E, h)
            shapes[p + "mlp.gate.expert_bias"] = (E,)
            mlps = {f"mlp.experts.{e}.": inter for e in range(E)}
            if cfg["num_shared_experts"]:
                mlps["mlp.shared_experts."] = inter * cfg["num_shared_experts"]
        for m, inter in mlps.items():
            shapes.update({p + m + "gate_proj.weight": (inter, h), p + m + "up_proj.weight": (inter, h),
                           p + m + "down_proj.weight": (h, inter)})
    shapes["model.norm.weight"] = (h,)
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, h)
    return shapes


def _moe_random(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """_random, plus the expert bias (spread wider than the sigmoid scores, so it changes choices)."""
    plain = {n: s for n, s in shapes.items() if not n.endswith("expert_bias")}
    out = _random(plain, seed)
    g = torch.Generator().manual_seed(seed + 1)
    for name, shape in shapes.items():
        if name.endswith("expert_bias"):
            out[name] = 0.2 * torch.randn(shape, generator=g)
        elif name.endswith("word_embeddings.weight"):
            out[name] = torch.randn(shape, generator=g)
    return out


def make_llada2_checkpoint(dir, *, sharded: bool = False, dtype: str = "float32", seed: int = 0,
                           tied: bool = False, num_kv_heads: int = 2, head_dim: int = 32, layers: int = 3,
                           first_dense: int = 1, shared: int = 1, use_bias: bool | None = False,
                           use_qkv_bias: bool = False, use_qk_norm: bool | None = True, editing: bool = False,
                           partial_rotary_factor: float = 0.5, experts: int | None = MOE_EXPERTS,
                           chat_template: str | None = LLADA2_TEMPLATE) -> Path:
    """A tiny LLaDA2 (Bailing-named MoE) checkpoint with every key of the published config.json:
    `layers` layers, the first `first_dense` dense, then MOE_EXPERTS experts of MOE_INTERMEDIATE
    (4 groups, 2 kept, top-4) and `shared` shared experts; head_dim 32 x 4 heads (q width 128 !=
    hidden 64). `use_bias` / `use_qk_norm` None: the key is left out. `editing`: a
    modeling_llada2_moe.py whose generate() takes editing_threshold (LLaDA2.1's)."""
    tok_extra = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                 "cls_token": "[CLS]", "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 32768,
                 "add_bos_token": False, "add_eos_token": False}
    folder = Path(dir)
    folder.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(folder, LLADA2_SPECIALS, fmt="tokenizer.json", config_extra=tok_extra,
                          chat_template=chat_template, template_in="config")
    cfg = {
        "architectures": ["LLaDA2MoeModelLM"],
        "auto_map": {"AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
                     "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
                     "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM"},
        "attention_dropout": 0.0, "dtype": "bfloat16", "embedding_dropout": 0.0, "first_k_dense_replace": first_dense,
        "head_dim": head_dim, "hidden_act": "silu", "hidden_size": HIDDEN, "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE, "max_position_embeddings": 32768, "max_window_layers": 28,
        "model_type": "llada2_moe", "moe_intermediate_size": MOE_INTERMEDIATE, "moe_router_enable_expert_bias": True,
        "n_group": 4, "norm_head": False, "norm_softmax": False, "norm_topk_prob": True, "num_attention_heads": HEADS,
        "num_experts": experts, "num_experts_per_tok": MOE_TOPK, "num_hidden_layers": layers,
        "num_key_value_heads": num_kv_heads, "num_shared_experts": shared, "output_dropout": 0.0,
        "output_router_logits": False, "pad_token_id": ids["<|endoftext|>"],
        "partial_rotary_factor": partial_rotary_factor, "rms_norm_eps": 1e-06, "rope_scaling": None,
        "rope_theta": 600000, "rotary_dim": int(head_dim * partial_rotary_factor), "routed_scaling_factor": 2.5,
        "router_dtype": "fp32", "score_function": "sigmoid", "sliding_window": 4096,
        "tie_word_embeddings": tied, "topk_group": 2, "transformers_version": "4.57.1", "use_bias": use_bias,
        "use_cache": False, "use_qk_norm": use_qk_norm, "use_qkv_bias": use_qkv_bias, "use_rmsnorm": True,
        "use_sliding_window": False, "using_split_qkv_in_self_attention": False,
        "vocab_size": _round_up(max(ids.values()) + 1),
    }
    for key in ("use_bias", "use_qk_norm"):
        if cfg[key] is None:
            del cfg[key]
    (folder / "config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    shape_cfg = {**cfg, "use_bias": cfg.get("use_bias", True), "use_qk_norm": cfg.get("use_qk_norm", True)}
    write_weights(folder, _moe_random(llada2_shapes(shape_cfg), seed), dtype=dtype, sharded=sharded)
    trap = (f"import pathlib\npathlib.Path(__file__).with_name({AUTO_MAP_MARKER!r}).write_text('ran')\n"
            "raise RuntimeError('checkpoint-supplied code must never run')\n")
    (folder / "configuration_llada2_moe.py").write_text(trap, encoding="utf-8")
    (folder / "modeling_llada2_moe.py").write_text(trap + (LLADA21_GENERATE if editing else ""), encoding="utf-8")
    return folder


def sdar_moe_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """SDAR's (Qwen3) names with Qwen3-MoE MLPs on the sparse layers."""
    shapes = decoder_shapes(cfg, qkv_bias=False, qk_norm=True)
    h, E, inter = cfg["hidden_size"], cfg["num_experts"], cfg["moe_intermediate_size"]
    for i in range(cfg["num_hidden_layers"]):
        if i in cfg["mlp_only_layers"] or (i + 1) % cfg["decoder_sparse_step"]:
            continue
        p = f"model.layers.{i}.mlp."
        for name in ("gate_proj", "up_proj", "down_proj"):
            del shapes[p + name + ".weight"]
        shapes[p + "gate.weight"] = (E, h)
        for e in range(E):
            shapes.update({p + f"experts.{e}.gate_proj.weight": (inter, h),
                           p + f"experts.{e}.up_proj.weight": (inter, h),
                           p + f"experts.{e}.down_proj.weight": (h, inter)})
    return shapes


def make_sdar_moe_checkpoint(dir, *, sharded: bool = False, dtype: str = "float32", seed: int = 0,
                             layers: int = 3, mlp_only_layers: tuple[int, ...] = (), decoder_sparse_step: int = 1,
                             norm_topk_prob: bool = True, block_size: int | None = None, num_kv_heads: int = 2,
                             head_dim: int = 32) -> Path:
    """A tiny SDAR-MoE (Qwen3-MoE-named) checkpoint: SDAR's tokenizer files and keys plus the
    Qwen3-MoE keys (MOE_EXPERTS experts of MOE_INTERMEDIATE, top-MOE_TOPK)."""
    folder = make_sdar_checkpoint(dir, sharded=sharded, dtype=dtype, seed=seed, num_kv_heads=num_kv_heads,
                                  head_dim=head_dim, block_size=block_size)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(architectures=["SDARMoeForCausalLM"], model_type="sdar_moe", num_hidden_layers=layers,
               auto_map={"AutoConfig": "configuration_sdar_moe.SDARMoeConfig",
                         "AutoModel": "modeling_sdar_moe.SDARMoeModel",
                         "AutoModelForCausalLM": "modeling_sdar_moe.SDARMoeForCausalLM"},
               moe_intermediate_size=MOE_INTERMEDIATE, num_experts=MOE_EXPERTS, num_experts_per_tok=MOE_TOPK,
               norm_topk_prob=norm_topk_prob, decoder_sparse_step=decoder_sparse_step,
               mlp_only_layers=list(mlp_only_layers), output_router_logits=False, router_aux_loss_coef=0.001)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    for f in list(folder.glob("*.safetensors")) + list(folder.glob("model.safetensors.index.json")):
        f.unlink()
    write_weights(folder, _random(sdar_moe_shapes(cfg), seed), dtype=dtype, sharded=sharded)
    return folder


def edit_config(folder: Path, **changes) -> None:
    """Rewrite `folder`'s config.json with `changes`; a value DROP removes its key."""
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    for key in [k for k, v in changes.items() if v is DROP]:
        del cfg[key]
    (folder / "config.json").write_text(json.dumps(cfg))
