"""Token data for training: the packed pre-training stream and the tokenized SFT samples.

Knows: how to render SFT samples with the checkpoint's chat template and tokenize them (prompt
kept, answer + <|endoftext|> padding as the generation region), how to pack corpus files into
one token stream separated by <|endoftext|>, and the on-disk format (numpy arrays in a folder).
Must not: build models or compute losses.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dllm_cli.train.corpus import read_docs
from dllm_cli.train.synth import Sample, samples_from_file
from dllm_cli.train.tokenizer_train import CHAT_TEMPLATE, EOS, MASK, load_tokenizer


def render_prompt(messages) -> str:
    """The chat template applied to system + user with the assistant turn opened."""
    import jinja2
    tpl = jinja2.Environment().from_string(CHAT_TEMPLATE)
    return tpl.render(messages=[m.as_dict() for m in messages], add_generation_prompt=True)


@dataclass
class SFTSet:
    ids: np.ndarray       # (N, T) int64: prompt, answer, <|endoftext|> padding
    prompt_len: np.ndarray  # (N,) where the generation region starts
    answer_len: np.ndarray  # (N,) answer tokens incl. the first <|endoftext|>


def encode_sample(tok, s: Sample, seq_len: int, min_gen: int, eos_id: int):
    """(ids, prompt_len, answer_len) or None when it does not fit `seq_len`."""
    prompt = tok.encode(render_prompt(s.messages)).ids
    answer = tok.encode(s.answer).ids + [eos_id]
    if len(prompt) + max(min_gen, len(answer)) > seq_len:
        return None
    ids = prompt + answer + [eos_id] * (seq_len - len(prompt) - len(answer))
    return ids, len(prompt), len(answer)


def build_sft(tok, docs: list[dict], seq_len: int, min_gen: int, limit: int, seed: int) -> SFTSet:
    rng = random.Random(seed)
    eos_id = tok.token_to_id(EOS)
    rows, plen, alen = [], [], []
    for d in docs:
        for s in samples_from_file(d["path"], d["text"], rng):
            enc = encode_sample(tok, s, seq_len, min_gen, eos_id)
            if enc is not None:
                rows.append(enc[0]), plen.append(enc[1]), alen.append(enc[2])
        if len(rows) >= limit:
            break
    return SFTSet(np.array(rows, dtype=np.int64).reshape(-1, seq_len),
                  np.array(plen, dtype=np.int64), np.array(alen, dtype=np.int64))


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
            max_tokens: int = 40_000_000, sft_limit: int = 30_000) -> dict:
    """Tokenize the corpus (shuffled by seed) and the SFT samples into `out`."""
    tok = load_tokenizer(tokenizer_dir)
    train = read_docs(corpus / "train.jsonl")
    heldout = read_docs(corpus / "heldout.jsonl")
    random.Random(seed).shuffle(train)
    out.mkdir(parents=True, exist_ok=True)
    stream = pack_tokens(tok, train, max_tokens)
    np.save(out / "train_tokens.npy", stream)
    np.save(out / "heldout_tokens.npy", pack_tokens(tok, heldout, 10 ** 9))
    stats = {"train_tokens": int(stream.size), "seq_len": seq_len, "min_gen": min_gen, "seed": seed}
    for name, docs, limit in (("sft_train", train, sft_limit), ("sft_heldout", heldout, 2000)):
        s = build_sft(tok, docs, seq_len, min_gen, limit, seed)
        np.savez(out / f"{name}.npz", ids=s.ids, prompt_len=s.prompt_len, answer_len=s.answer_len)
        stats[name] = int(s.ids.shape[0])
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    return stats


def load_sft(path: Path) -> SFTSet:
    z = np.load(path)
    return SFTSet(z["ids"], z["prompt_len"], z["answer_len"])


def special_ids(tokenizer_dir: Path) -> tuple[int, int]:
    tok = load_tokenizer(tokenizer_dir)
    return tok.token_to_id(MASK), tok.token_to_id(EOS)
