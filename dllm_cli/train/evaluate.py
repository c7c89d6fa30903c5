"""Evaluation of a checkpoint on held-out files: what the model card reports.

Knows three measures, all on files the model never trained on (corpus heldout.jsonl):
  masked_top1_15   pack held-out files into 512-token rows, mask 15% of positions (fixed seed),
                   one forward, share of masked tokens whose argmax is right;
  infill_exact     mask the tokens of one line (the known number of tokens), fill them with a
                   greedy most-confident-first loop, share of lines reproduced exactly;
  body_compiles    ask for a stubbed function in the `dllm code` format, denoise the answer with
                   `dllm_cli.sampler.denoise`, parse it with `dllm_cli.edits.parse`, and
                   `compile()` the resulting function (never executed).
The model is loaded through `dllm_cli.checkpoint.load_model`, the path users take.
Must not: exec or import generated code, train.
"""

from __future__ import annotations

import random
import textwrap
import time
from pathlib import Path

import torch

from dllm_cli.train.corpus import read_docs
from dllm_cli.train.synth import functions, implement_sample


def pack_rows(tok, docs: list[dict], seq_len: int) -> torch.Tensor:
    """Held-out files joined by eos, cut into (N, seq_len) rows."""
    ids: list[int] = []
    for d in docs:
        ids += tok.encode(d["text"]) + [tok.eos_token_id]
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


@torch.no_grad()
def masked_top1(model, rows: torch.Tensor, ratio: float = 0.15, seed: int = 0, batch: int = 8) -> dict:
    """Top-1 accuracy on masked positions (position 0 is never masked: Dream scores it by shift)."""
    gen = torch.Generator().manual_seed(seed)
    masked = torch.rand(rows.shape, generator=gen) < ratio
    masked[:, 0] = False
    noisy = torch.where(masked, torch.full_like(rows, model.mask_token_id), rows)
    hit = total = 0
    for k in range(0, rows.shape[0], batch):
        logits = model.logits(noisy[k:k + batch])          # (b, T, V) aligned
        m = masked[k:k + batch]
        hit += (logits.argmax(-1)[m] == rows[k:k + batch][m]).sum().item()
        total += int(m.sum())
    return {"masked_top1_15": hit / max(1, total), "masked_tokens": total, "rows": int(rows.shape[0])}


@torch.no_grad()
def greedy_fill(model, ids: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """Fill `positions` of a (T,) canvas (already masks there), one most-confident token per step."""
    x = ids.clone()
    todo = list(positions)
    while todo:
        probs = model.logits(x[None])[0, todo].float().softmax(-1)   # (len(todo), V)
        probs[:, model.mask_token_id] = 0
        conf, tok = probs.max(-1)
        j = int(conf.argmax())
        x[todo[j]] = tok[j]
        todo.pop(j)
    return x


def line_cases(backend, docs: list[dict], n: int, seed: int, window: int = 384) -> list[tuple[list[int], list[int]]]:
    """(ids, masked positions) for `n` random non-blank lines, each with its surrounding lines.

    `backend` is the checkpoint's `tokenizers.Tokenizer` (for character offsets); a position is
    masked when its token lies inside the line's text (indentation-carrying tokens stay)."""
    rng = random.Random(seed)
    cases = []
    pool = [d for d in docs if d["text"].count("\n") > 5]
    while len(cases) < n and pool:
        d = rng.choice(pool)
        lines = d["text"].splitlines(keepends=True)
        k = rng.randrange(len(lines))
        if len(lines[k].strip()) < 4:
            continue
        lo, hi = max(0, k - 20), min(len(lines), k + 20)
        text = "".join(lines[lo:hi])
        start = sum(len(x) for x in lines[lo:k]) + (len(lines[k]) - len(lines[k].lstrip()))
        end = sum(len(x) for x in lines[lo:k]) + len(lines[k].rstrip())
        enc = backend.encode(text, add_special_tokens=False)
        ids, offsets = enc.ids, enc.offsets
        pos = [i for i, (a, b) in enumerate(offsets) if a >= start and b <= end and i > 0]
        if not pos or len(ids) > window:
            continue
        cases.append((ids, pos))
    return cases


def infill_exact(model, cases) -> dict:
    hits = 0
    for ids, pos in cases:
        x = torch.tensor(ids, dtype=torch.long)
        noisy = x.clone()
        noisy[pos] = model.mask_token_id
        out = greedy_fill(model, noisy, pos)
        hits += bool((out[pos] == x[pos]).all())
    return {"infill_exact": hits / max(1, len(cases)), "infill_lines": len(cases)}


def body_cases(docs: list[dict], n: int, seed: int) -> list[tuple]:
    """(sample, head lines, original function text) for stubbed held-out functions."""
    rng = random.Random(seed)
    out = []
    for d in docs:
        for f in functions(d["text"]):
            lines = d["text"].splitlines()
            if sum(len(x) + 1 for x in lines[f.start:f.end]) > 300:
                continue
            s = implement_sample(d["path"], d["text"], f, rng, 600)
            if s is not None:
                out.append((s, lines[f.start:f.body_start], "\n".join(lines[f.start:f.end])))
    rng.shuffle(out)
    return out[:n]


def compiled_function(answer: str, head: list[str]) -> tuple[bool, bool]:
    """(format ok, compiles): parse the edit, rebuild signature + docstring + new body, compile()."""
    from dllm_cli.edits import parse
    edits = [e for e in parse(answer).edits if e.kind == "search_replace" and e.search]
    if not edits:
        return False, False
    e = edits[0]
    search, replace = e.search.splitlines(), e.replace.splitlines()
    keep = len(search) - 1            # the stub's kept lines (docstring tail) precede the body
    body = replace[keep:] if replace[:keep] == search[:keep] else replace
    if not [x for x in body if x.strip() not in ("", "...")]:
        return True, False            # no body written (an empty or `...` body is not a body)
    code = textwrap.dedent("\n".join(head + body) + "\n")
    try:
        compile(code, "<generated>", "exec", dont_inherit=True)   # compiled only, never run
    except (SyntaxError, ValueError):
        return True, False
    return True, True


def body_compiles(model, cases, gen_length: int = 128, seed: int = 0) -> dict:
    from dllm_cli.config import SamplerConfig
    from dllm_cli.sampler import cut_at_stop, denoise
    cfg = SamplerConfig(gen_length=gen_length, seed=seed)   # dllm's default (fast) recipe
    fmt = ok = 0
    examples = []
    for s, head, original in cases:
        prompt = model.tokenizer.encode(model.tokenizer.apply_chat_template(
            [m.as_dict() for m in s.messages], add_generation_prompt=True))
        last = None
        for last in denoise(model, prompt, cfg):
            pass
        text = model.tokenizer.decode(cut_at_stop(last.tokens, model.stop_token_ids), skip_special=True)
        f, c = compiled_function(text, head)
        fmt, ok = fmt + f, ok + c
        if len(examples) < 3:
            examples.append({"task": s.messages[-1].content.splitlines()[-1], "answer": text})
    n = max(1, len(cases))
    return {"body_compiles": ok / n, "answer_format_ok": fmt / n, "bodies": len(cases), "examples": examples}


def run_eval(model_dir: Path, corpus: Path, n_infill: int = 200, n_bodies: int = 60, seed: int = 0,
             max_files: int | None = None, seq_len: int = 512) -> dict:
    from dllm_cli.checkpoint import load_model
    torch.manual_seed(seed)
    model = load_model(str(model_dir))
    docs = read_docs(corpus / "heldout.jsonl")[:max_files]
    tok = model.tokenizer
    t0 = time.time()
    res = {"model": str(model_dir), "heldout_files": len(docs), "seed": seed}
    res.update(masked_top1(model, pack_rows(tok, docs, seq_len), seed=seed))
    from tokenizers import Tokenizer
    backend = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    res.update(infill_exact(model, line_cases(backend, docs, n_infill, seed)))
    res.update(body_compiles(model, body_cases(docs, n_bodies, seed), seed=seed))
    res["eval_seconds"] = round(time.time() - t0, 1)
    return res
