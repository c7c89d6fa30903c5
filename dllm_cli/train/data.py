"""Token data for training: the packed pre-training stream and the tokenized SFT samples.

Knows: how to render chat samples with the checkpoint's chat template and tokenize them (prompt
kept, answer + <|endoftext|> padding as the generation region), how to lay out infill samples
exactly as `dllm code` does (`dllm_cli.infill.canvas`: the region's tokens + <|endoftext|> padding
between the prefix tail and the suffix head), how to pack corpus files into one token stream
separated by <|endoftext|>, and the on-disk format (numpy arrays in a folder).
Must not: build models or compute losses.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dllm_cli.infill import canvas
from dllm_cli.train.corpus import read_docs
from dllm_cli.train.synth import Infill, Sample, infill_samples, samples_from_file
from dllm_cli.train.tokenizer_train import CHAT_TEMPLATE, EOS, MASK, load_tokenizer


def render_prompt(messages) -> str:
    """The chat template applied to system + user with the assistant turn opened."""
    import jinja2
    tpl = jinja2.Environment().from_string(CHAT_TEMPLATE)
    return tpl.render(messages=[m.as_dict() for m in messages], add_generation_prompt=True)


@dataclass
class SFTSet:
    """Rows whose generation region [start, end) is the only part that gets masked."""

    ids: np.ndarray    # (N, T) int64
    start: np.ndarray  # (N,) first position of the generation region
    end: np.ndarray    # (N,) one past its last position


def encode_sample(tok, s: Sample, seq_len: int, min_gen: int, eos_id: int):
    """Chat row: (ids, start, end) or None when it does not fit `seq_len`. The region is the
    answer, its <|endoftext|> and the padding up to the end of the row."""
    prompt = tok.encode(render_prompt(s.messages)).ids
    answer = tok.encode(s.answer).ids + [eos_id]
    if len(prompt) + max(min_gen, len(answer)) > seq_len:
        return None
    ids = prompt + answer + [eos_id] * (seq_len - len(prompt) - len(answer))
    return ids, len(prompt), seq_len


def encode_infill(tok, s: Infill, seq_len: int, max_gen: int, eos_id: int, rng: random.Random):
    """Infill row: (ids, start, end) or None when the region is too long. The canvas holds the
    region's tokens, an <|endoftext|> and a random amount of <|endoftext|> padding (so any
    canvas size `dllm code` picks is in distribution); the row is eos-padded after the suffix."""
    region = tok.encode(s.region).ids + [eos_id]
    if len(region) > max_gen:
        return None
    n = rng.randint(len(region), max_gen)
    pre, suf = canvas(tok.encode(s.prefix).ids, tok.encode(s.suffix).ids, n, seq_len, eos_id)
    ids = pre + region + [eos_id] * (n - len(region)) + suf
    return ids + [eos_id] * (seq_len - len(ids)), len(pre), len(pre) + n


def _stack(rows: list[tuple[list[int], int, int]], seq_len: int) -> SFTSet:
    return SFTSet(np.array([r[0] for r in rows], dtype=np.int64).reshape(-1, seq_len),
                  np.array([r[1] for r in rows], dtype=np.int64), np.array([r[2] for r in rows], dtype=np.int64))


def build_sft(tok, docs: list[dict], seq_len: int, min_gen: int, limit: int, seed: int) -> SFTSet:
    rng = random.Random(seed)
    eos_id = tok.token_to_id(EOS)
    rows = []
    for d in docs:
        for s in samples_from_file(d["path"], d["text"], rng):
            enc = encode_sample(tok, s, seq_len, min_gen, eos_id)
            if enc is not None:
                rows.append(enc)
        if len(rows) >= limit:
            break
    return _stack(rows, seq_len)


def build_infill(tok, docs: list[dict], seq_len: int, max_gen: int, limit: int, seed: int) -> SFTSet:
    rng = random.Random(seed)
    eos_id = tok.token_to_id(EOS)
    rows = []
    for d in docs:
        for s in infill_samples(d["text"], rng):
            enc = encode_infill(tok, s, seq_len, max_gen, eos_id, rng)
            if enc is not None:
                rows.append(enc)
        if len(rows) >= limit:
            break
    return _stack(rows, seq_len)


def pack_tokens(tok, docs: list[dict], max_tokens: int) -> np.ndarray:
    """Files joined by <|endoftext|> into one uint16 stream (at most `max_tokens`)."""
    eos_id = tok.token_to_id(EOS)
    out: list[np.ndarray] = []
    total = 0
    for i in range(0, len(docs), 256):
        for enc in tok.encode_batch([d["text"] for d in docs[i:i + 256]]):
            out.append(np.array(enc.ids + [eos_id], dtype=np.uint16))
            total += len(enc.ids) + 1
        if total >= max_tokens:
            break
    return np.concatenate(out)[:max_tokens] if out else np.zeros(0, dtype=np.uint16)


def prepare(corpus: Path, tokenizer_dir: Path, out: Path, seq_len: int, min_gen: int, seed: int,
            max_tokens: int = 60_000_000, sft_limit: int = 30_000, max_infill: int = 192,
            infill_limit: int = 40_000) -> dict:
    """Tokenize the corpus (shuffled by seed), the chat and the infill samples into `out`."""
    tok = load_tokenizer(tokenizer_dir)
    train = read_docs(corpus / "train.jsonl")
    heldout = read_docs(corpus / "heldout.jsonl")
    random.Random(seed).shuffle(train)
    out.mkdir(parents=True, exist_ok=True)
    stream = pack_tokens(tok, train, max_tokens)
    np.save(out / "train_tokens.npy", stream)
    np.save(out / "heldout_tokens.npy", pack_tokens(tok, heldout, 10 ** 9))
    stats = {"train_tokens": int(stream.size), "seq_len": seq_len, "min_gen": min_gen, "seed": seed}
    stats["max_infill"] = max_infill
    for name, docs, limit in (("sft_train", train, sft_limit), ("sft_heldout", heldout, 2000)):
        save_sft(build_sft(tok, docs, seq_len, min_gen, limit, seed), out / f"{name}.npz")
        stats[name] = int(np.load(out / f"{name}.npz")["ids"].shape[0])
    for name, docs, limit in (("infill_train", train, infill_limit), ("infill_heldout", heldout, 2000)):
        save_sft(build_infill(tok, docs, seq_len, max_infill, limit, seed), out / f"{name}.npz")
        stats[name] = int(np.load(out / f"{name}.npz")["ids"].shape[0])
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    return stats


def save_sft(s: SFTSet, path: Path) -> None:
    np.savez(path, ids=s.ids, start=s.start, end=s.end)


def load_sft(path: Path) -> SFTSet:
    z = np.load(path)
    return SFTSet(z["ids"], z["start"], z["end"])


def special_ids(tokenizer_dir: Path) -> tuple[int, int]:
    tok = load_tokenizer(tokenizer_dir)
    return tok.token_to_id(MASK), tok.token_to_id(EOS)
