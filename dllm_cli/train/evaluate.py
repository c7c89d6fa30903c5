"""Evaluation of a checkpoint on held-out files: what the model card reports.

Knows these measures, all on files the model never trained on (corpus heldout.jsonl):
  masked_top1_15   pack held-out files into 512-token rows, mask 15% of positions (fixed seed),
                   one forward, share of masked tokens whose argmax is right; next to it
                   `ngram_top1_15`, a count table (left/right neighbour → token) built from
                   training files and scored on the same masks, and `masked_bits_per_char`
                   (cross-entropy per character of the masked tokens: comparable across tokenizers);
  infill_exact     mask the tokens of one line (the known number of tokens), fill them with a
                   greedy most-confident-first loop, share of lines reproduced exactly;
  body_compiles    the `dllm code` infill path on stubbed held-out functions: the body region
                   becomes a canvas of masks between the file's prefix and suffix
                   (`dllm_cli.infill.canvas`), denoised with the default sampler; the share of
                   files that `compile()` with the generated body and whose body is not itself a
                   stub (`pass`, `...`); never executed;
  chat_body_compiles  the same functions asked for in the chat edit format (SEARCH/REPLACE),
                   parsed with `dllm_cli.edits.parse`, the rebuilt function compiled.
The model is loaded through `dllm_cli.engine.load_model` and every generation runs through
`dllm_cli.generate.run` on the local backend: the path `dllm code` takes.
Must not: exec or import generated code, train.
"""

from __future__ import annotations

import math
import random
import textwrap
import time
from pathlib import Path

import torch

from dllm_cli.infill import STUB_LINES, canvas, functions, split
from dllm_cli.train.corpus import read_docs
from dllm_cli.train.synth import implement_sample


def pack_rows(tok, docs: list[dict], seq_len: int) -> torch.Tensor:
    """Held-out files joined by eos, cut into (N, seq_len) rows."""
    ids: list[int] = []
    for d in docs:
        ids += tok.encode(d["text"]) + [tok.eos_token_id]
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def fixed_mask(rows: torch.Tensor, ratio: float, seed: int) -> torch.Tensor:
    """The positions masked for the top-1 measure (position 0 never: Dream scores it by shift)."""
    masked = torch.rand(rows.shape, generator=torch.Generator().manual_seed(seed)) < ratio
    masked[:, 0] = False
    return masked


@torch.no_grad()
def masked_top1(model, rows: torch.Tensor, ratio: float = 0.15, seed: int = 0, batch: int = 8,
                chars: torch.Tensor | None = None) -> dict:
    """Top-1 accuracy on masked positions; with `chars` ((V,) characters per token id) also the
    cross-entropy in bits per character of the masked tokens."""
    masked = fixed_mask(rows, ratio, seed)
    noisy = torch.where(masked, torch.full_like(rows, model.tokens.mask), rows)
    hit = total = 0
    nats = 0.0
    for k in range(0, rows.shape[0], batch):
        logits = model.logits(noisy[k:k + batch])          # (b, T, V) aligned
        m = masked[k:k + batch]
        target = rows[k:k + batch][m]
        hit += (logits.argmax(-1)[m] == target).sum().item()
        nats += torch.nn.functional.cross_entropy(logits[m].float(), target, reduction="sum").item()
        total += int(m.sum())
    out = {"masked_top1_15": hit / max(1, total), "masked_tokens": total, "rows": int(rows.shape[0])}
    if chars is not None:
        n_chars = int(chars[rows[masked]].sum())
        out["masked_bits_per_char"] = nats / math.log(2) / max(1, n_chars)
    return out


def ngram_top1(train_ids: list[int], rows: torch.Tensor, ratio: float = 0.15, seed: int = 0) -> float:
    """A count-table baseline on the same masks: the most frequent token between the two
    unmasked neighbours (else after the left one, else before the right one, else overall)."""
    import numpy as np
    tr = np.asarray(train_ids, dtype=np.int64)
    V = int(max(tr.max(initial=0), int(rows.max())) + 1)

    def table(keys, vals, n_keys):
        u, cnt = np.unique(keys * V + vals, return_counts=True)
        order = np.lexsort((-cnt, u // V))
        k, v = (u // V)[order], (u % V)[order]
        first = np.r_[True, k[1:] != k[:-1]]
        best = np.full(n_keys, -1, dtype=np.int64)
        best[k[first]] = v[first]
        return best

    both = table(tr[:-2] * V + tr[2:], tr[1:-1], V * V)
    after, before = table(tr[:-1], tr[1:], V), table(tr[1:], tr[:-1], V)
    unigram = int(np.bincount(tr, minlength=V).argmax())
    x, m = rows.numpy(), fixed_mask(rows, ratio, seed).numpy()
    hit = total = 0
    for r in range(x.shape[0]):
        for i in np.nonzero(m[r])[0]:
            left = x[r, i - 1] if i > 0 and not m[r, i - 1] else None
            right = x[r, i + 1] if i + 1 < x.shape[1] and not m[r, i + 1] else None
            guess = -1
            if left is not None and right is not None:
                guess = both[left * V + right]
            if guess < 0 and left is not None:
                guess = after[left]
            if guess < 0 and right is not None:
                guess = before[right]
            hit += int((unigram if guess < 0 else guess) == x[r, i])
            total += 1
    return hit / max(1, total)


def chars_per_token(tok, vocab_size: int) -> torch.Tensor:
    """(V,) characters each token id decodes to (special tokens count 0)."""
    return torch.tensor([0 if i in tok.special_ids else len(tok.decode([i])) for i in range(vocab_size)])


@torch.no_grad()
def greedy_fill(model, ids: torch.Tensor, positions: list[int]) -> torch.Tensor:
    """Fill `positions` of a (T,) canvas (already masks there), one most-confident token per step."""
    x = ids.clone()
    todo = list(positions)
    while todo:
        probs = model.logits(x[None])[0, todo].float().softmax(-1)   # (len(todo), V)
        probs[:, model.tokens.mask] = 0
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
    cases: list[tuple[list[int], list[int]]] = []
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
        noisy[pos] = model.tokens.mask
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
    search, replace = (e.search or "").splitlines(), e.replace.splitlines()
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


def is_stub_body(body: str) -> bool:
    code = [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    return not code or all(ln in STUB_LINES for ln in code)


def infill_cases(docs: list[dict], n: int, seed: int, max_chars: int = 300) -> list[tuple[str, str, str, str]]:
    """(prefix, original body, suffix, name) for held-out functions of at most `max_chars`."""
    rng = random.Random(seed)
    out = []
    for d in docs:
        lines = d["text"].splitlines(keepends=True)
        for f in functions(d["text"]):
            if sum(len(x) for x in lines[f.start:f.end]) <= max_chars:
                out.append((*split(d["text"], f.body_start, f.end), f.name))
    rng.shuffle(out)
    return out[:n]


def infill_compiles(model, cases, gen_length: int = 128, seed: int = 0, context: int = 512,
                    cfg=None) -> dict:
    """`dllm code`'s infill path on each case; the patched file must compile. `cfg`: the
    sampler (default: dllm's default recipe at `gen_length`)."""
    from dllm_cli.config import SamplerConfig
    from dllm_cli.engine.local import LocalBackend
    from dllm_cli.events import Request
    from dllm_cli.generate import run
    cfg = cfg if cfg is not None else SamplerConfig(gen_length=gen_length, seed=seed)
    gen_length = cfg.gen_length
    tok, backend = model.tokenizer, LocalBackend(model)
    ok = raw = exact = 0
    examples: list[dict] = []
    for prefix, body, suffix, name in cases:
        pre, suf = canvas(tok.encode(prefix), tok.encode(suffix), gen_length, context, model.tokens.eos)
        text = run(backend, Request(tuple(pre), tuple(suf)), cfg).text
        new = text if text.endswith("\n") else text + "\n"
        try:
            compile(prefix + new + suffix, "<generated>", "exec", dont_inherit=True)  # never run
            compiles = True
        except (SyntaxError, ValueError):
            compiles = False
        raw += compiles
        ok += compiles and not is_stub_body(new)
        exact += new.strip() == body.strip()
        if len(examples) < 5:
            examples.append({"function": name, "generated": new, "original": body, "compiles": compiles})
    n = max(1, len(cases))
    return {"body_compiles": ok / n, "body_compiles_any": raw / n, "body_exact": exact / n,
            "bodies": len(cases), "body_examples": examples}


def body_compiles(model, cases, gen_length: int = 128, seed: int = 0) -> dict:
    from dllm_cli.config import SamplerConfig
    from dllm_cli.engine.local import LocalBackend
    from dllm_cli.events import Request
    from dllm_cli.generate import run
    cfg = SamplerConfig(gen_length=gen_length, seed=seed)   # dllm's default (fast) recipe
    backend = LocalBackend(model)
    fmt = ok = 0
    examples: list[dict] = []
    for s, head, _original in cases:
        prompt = model.tokenizer.encode(model.tokenizer.apply_chat_template(
            [m.as_dict() for m in s.messages], add_generation_prompt=True))
        text = run(backend, Request(tuple(prompt), messages=tuple(s.messages)), cfg).text
        f, c = compiled_function(text, head)
        fmt, ok = fmt + f, ok + c
        if len(examples) < 3:
            examples.append({"task": s.messages[-1].content.splitlines()[-1], "answer": text})
    n = max(1, len(cases))
    return {"chat_body_compiles": ok / n, "chat_answer_format_ok": fmt / n, "chat_bodies": len(cases),
            "chat_examples": examples}


def run_eval(model_dir: Path, corpus: Path, n_infill: int = 200, n_bodies: int = 100, seed: int = 0,
             max_files: int | None = None, seq_len: int = 512, n_chat: int = 30,
             ngram_files: int = 3000) -> dict:
    """Every measure on the held-out files of `corpus` (`ngram_files` training files feed the
    count-table baseline)."""
    from dllm_cli.engine.loader import load_model
    torch.manual_seed(seed)
    model = load_model(str(model_dir))
    docs = read_docs(corpus / "heldout.jsonl")[:max_files]
    tok = model.tokenizer
    t0 = time.time()
    res = {"model": str(model_dir), "heldout_files": len(docs), "seed": seed}
    rows = pack_rows(tok, docs, seq_len)
    res.update(masked_top1(model, rows, seed=seed, chars=chars_per_token(tok, model.spec.vocab_size)))
    train_docs = read_docs(corpus / "train.jsonl")
    random.Random(seed).shuffle(train_docs)
    res["ngram_top1_15"] = ngram_top1(pack_rows(tok, train_docs[:ngram_files], 1).view(-1).tolist(), rows, seed=seed)
    from tokenizers import Tokenizer
    backend = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    res.update(infill_exact(model, line_cases(backend, docs, n_infill, seed)))
    res.update(infill_compiles(model, infill_cases(docs, n_bodies, seed), seed=seed, context=seq_len))
    res.update(body_compiles(model, body_cases(docs, n_chat, seed), seed=seed))
    res["eval_seconds"] = round(time.time() - t0, 1)
    return res
