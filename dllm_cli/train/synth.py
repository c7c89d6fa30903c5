"""Instruction and edit samples synthesised from corpus files, in the exact `dllm code` format.

Knows: how to find functions in a Python file (ast), how to stub one (signature + docstring +
`...`) or remove one, and how to phrase the request and the SEARCH/REPLACE answer with
`dllm_cli.prompt` (build_messages, search_replace) so the model learns what the CLI sends.
Must not: import torch, tokenize (callers render with the chat template and tokenize).

Chat samples (system + user → a SEARCH/REPLACE answer):
  implement  the file shows `def f(...):` + docstring + `...`; task "implement f"; the answer replaces
             the stub's tail with the body.
  add        the file lacks `f`; task "add a function f that <docstring summary>"; the answer
             inserts `f` after an anchor line.
Infill samples (raw file text, `dllm_cli.infill` layout): a function body or a short run of lines
is the region the model rewrites; the rest of the file is the context around it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from dllm_cli.infill import Func, functions, split
from dllm_cli.prompt import Message, build_messages, search_replace


@dataclass(frozen=True)
class _File:
    path: str
    text: str


@dataclass(frozen=True)
class Sample:
    kind: str                 # "implement" | "add"
    messages: list[Message]   # system + user, as `dllm code` builds them
    answer: str               # the assistant's text (SEARCH/REPLACE edits)
    name: str                 # the function's name


def _join(lines: list[str]) -> str:
    return "\n".join(lines) + "\n" if lines else ""


def _window(lines: list[str], lo: int, hi: int, budget_chars: int) -> list[str]:
    """Lines around [lo, hi) growing outwards until `budget_chars` (the file the model sees)."""
    a, b = lo, hi
    size = sum(len(x) + 1 for x in lines[a:b])
    while size < budget_chars and (a > 0 or b < len(lines)):
        if a > 0:
            a -= 1
            size += len(lines[a]) + 1
        if b < len(lines) and size < budget_chars:
            size += len(lines[b]) + 1
            b += 1
    return lines[a:b]


def _summary(doc: str) -> str:
    first = doc.strip().split("\n\n")[0].replace("\n", " ").strip().rstrip(".")
    return (first[:1].lower() + first[1:]) if first else ""


def implement_sample(path: str, text: str, f: Func, rng: random.Random, budget_chars: int) -> Sample | None:
    lines = text.splitlines()
    head = lines[f.start:f.body_start]            # decorators, signature, docstring
    stub = head + [f.indent + "..."]
    shown = lines[:f.start] + stub + lines[f.end:]
    view = _window(shown, f.start, f.start + len(stub), budget_chars)
    # SEARCH: the shortest tail of the stub that is unique in the shown window.
    for k in range(2, len(stub) + 1):
        search = _join(stub[-k:])
        if _join(view).count(search) == 1:
            break
    else:
        return None
    replace = _join(stub[-k:-1] + lines[f.body_start:f.end])
    task = rng.choice(["implement {n}", "Implement {n}.", "implement the body of {n}",
                       "fill in {n} in {p}", "write the code for {n}"]).format(n=f.name, p=path)
    msgs = build_messages(task, [_File(path, _join(view))])
    return Sample("implement", msgs, search_replace(path, search, replace), f.name)


def add_sample(path: str, text: str, f: Func, rng: random.Random, budget_chars: int) -> Sample | None:
    if not f.doc or not _summary(f.doc) or f.start == 0:
        return None
    lines = text.splitlines()
    a = f.start
    while a > 0 and not lines[a - 1].strip():   # blank lines before the function go with it
        a -= 1
    if a == 0:
        return None
    shown = lines[:a] + lines[f.end:]
    view = _window(shown, a, a, budget_chars)
    for k in range(1, min(a, 4) + 1):           # anchor: shortest unique run of lines before it
        anchor = _join(lines[a - k:a])
        if anchor.strip() and _join(view).count(anchor) == 1:
            break
    else:
        return None
    replace = anchor + _join(lines[a:f.end])
    task = rng.choice(["add a function {n} that {s}", "Add {n}: {s}.", "write a function {n} that {s}"])
    msgs = build_messages(task.format(n=f.name, s=_summary(f.doc)[:200]), [_File(path, _join(view))])
    return Sample("add", msgs, search_replace(path, anchor, replace), f.name)


def samples_from_file(path: str, text: str, rng: random.Random, budget_chars: int = 350,
                      max_answer_chars: int = 600, per_file: int = 4) -> list[Sample]:
    """Up to `per_file` samples of both kinds for short functions of one file."""
    funcs = [f for f in functions(text)
             if sum(len(x) + 1 for x in text.splitlines()[f.start:f.end]) <= max_answer_chars // 2]
    rng.shuffle(funcs)
    out: list[Sample] = []
    for f in funcs:
        make = implement_sample if rng.random() < 0.6 else add_sample
        s = make(path, text, f, rng, budget_chars)
        if s is not None and len(s.answer) <= max_answer_chars:
            out.append(s)
        if len(out) >= per_file:
            break
    return out


@dataclass(frozen=True)
class Infill:
    """A region of a file to rewrite: prefix + region + suffix == the file."""

    kind: str     # "body" | "lines"
    prefix: str
    region: str   # whole lines
    suffix: str


def infill_samples(text: str, rng: random.Random, per_file: int = 4,
                   max_region_chars: int = 400) -> list[Infill]:
    """Function bodies and runs of 1-8 lines (starting on a non-blank line) of one file."""
    lines = text.splitlines(keepends=True)
    out: list[Infill] = []
    funcs = [f for f in functions(text)
             if 0 < sum(len(x) for x in lines[f.body_start:f.end]) <= max_region_chars]
    rng.shuffle(funcs)
    for f in funcs[: (per_file + 1) // 2]:
        out.append(Infill("body", *split(text, f.body_start, f.end)))
    starts = [i for i, ln in enumerate(lines) if ln.strip()]
    for _ in range(per_file - len(out)):
        if not starts:
            break
        a = rng.choice(starts)
        b = min(len(lines), a + rng.randint(1, 8))
        if sum(len(x) for x in lines[a:b]) <= max_region_chars:
            out.append(Infill("lines", *split(text, a, b)))
    return out
