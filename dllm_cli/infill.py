"""Anchored infilling: dllm picks a region of a file, the model denoises only that region.

Knows: how to find functions in Python source (ast) and which of them are stubs; which stubs a
task asks for (the infill plan, `plan`); the regex that finds candidate files without reading
them (`definition_pattern`); how to cut a file into prefix / region / suffix at whole lines and
put a body back; whether a rewritten Python file still compiles (compiled, never run); and the
canvas layout the embedded model is trained on and `dllm code` sends (one function shared by
both, so they cannot drift apart):

    [eos if the prefix reaches the file start] prefix-tail  <gen_length masks>  suffix-head
    [eos if the suffix reaches the file end]

The model writes the region's new text followed by eos padding; the text before the first eos
is the region's replacement. A region is whole lines, so the replacement is too.
Must not: import torch, tokenize (callers pass token ids), or write files.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

STUB_LINES = ("...", "pass", "raise NotImplementedError", "raise NotImplementedError()")
PREFIX_SHARE = 0.75  # of the context left after the canvas: the rest goes to the suffix
MAX_REGIONS = 8  # stub bodies filled in one run
CONTEXT_CAP = 4096  # positions one infill canvas may span (prefix + canvas + suffix)
MAX_NAMES = 64  # task words turned into the definition search
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Func:
    """A function or method whose body (after the docstring) starts on its own line."""

    name: str
    start: int  # 0-based first line (decorators included)
    body_start: int  # 0-based first line of the body proper (after the docstring)
    end: int  # 0-based exclusive end line
    indent: str  # the body's indentation
    doc: str | None  # docstring


def functions(text: str) -> list[Func]:
    """Functions and methods of `text` whose body is on its own lines, in file order."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    lines = text.splitlines()
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.body:
            continue
        doc = ast.get_docstring(node)
        body = node.body[1:] if doc is not None else node.body
        if not body or body[0].lineno <= node.lineno or node.end_lineno is None:  # one-liners
            continue
        first = body[0].lineno - 1
        if first >= len(lines):
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
        line = lines[first]
        out.append(Func(node.name, start, first, node.end_lineno, line[: len(line) - len(line.lstrip())], doc))
    return sorted(out, key=lambda f: f.start)


def is_stub(text: str, f: Func) -> bool:
    """The body (after the docstring) is only `...`, `pass` or `raise NotImplementedError`
    (comments and blank lines allowed)."""
    body = [ln.strip() for ln in text.splitlines()[f.body_start:f.end]]
    code = [ln for ln in body if ln and not ln.startswith("#")]
    return bool(code) and all(ln in STUB_LINES for ln in code)


@dataclass(frozen=True)
class Region:
    """Lines [start, end) of `path` to be rewritten by the model; `text` is the whole file as it
    was read (CRLF as LF), so nothing reads it again."""

    path: str
    start: int
    end: int
    name: str = ""  # the function whose body this is ("" for a plain line range)
    text: str = ""

    @property
    def what(self) -> str:
        return f"the body of {self.name}" if self.name else "the region"


def definition_pattern(task: str) -> str | None:
    """An extended regular expression (as `git grep -E` takes it) for a Python `def` of a name
    the task mentions; None when the task has no identifier. Files that match are the only ones
    read and parsed when the user names no file."""
    words = sorted(set(IDENTIFIER.findall(task)))[:MAX_NAMES]
    if not words:
        return None
    return r"def[[:space:]]+(" + "|".join(words) + r")[[:space:]]*\("


def plan(files: list[tuple[str, str]], task: str, wanted: bool | None) -> list[Region]:
    """The infill plan: the stub bodies of `files` the task asks for (stub_regions), at most
    MAX_REGIONS. `wanted` False (--no-infill): none; True (--infill): at least one, else a
    UsageError."""
    from .errors import UsageError

    if wanted is False:
        return []
    regions = stub_regions(files, task)
    if wanted and not regions:
        raise UsageError("--infill: no stub function (body `...`, `pass` or `raise NotImplementedError`) "
                         "named in the prompt was found; name the function and its file, or drop --infill")
    return regions[:MAX_REGIONS]


def stub_regions(files: list[tuple[str, str]], task: str) -> list[Region]:
    """The bodies of stub functions in `files` ((path, text) pairs) that the task names; when it
    names no function of these files at all but asks to implement/fill/complete, every stub."""
    words = set(IDENTIFIER.findall(task))
    stubs, names = [], set()
    for path, raw in files:
        text = raw.replace("\r\n", "\n")
        for f in functions(text):
            names.add(f.name)
            if is_stub(text, f):
                stubs.append(Region(path, f.body_start, f.end, f.name, text))
    named = [r for r in stubs if r.name in words]
    if named or words & names:
        return named
    if re.search(r"\b(implement|fill|complete|write the body|stub)", task, re.IGNORECASE):
        return stubs
    return []


def split(text: str, start: int, end: int) -> tuple[str, str, str]:
    """(prefix, region, suffix) of `text` at whole lines [start, end); their join is `text`."""
    lines = text.splitlines(keepends=True)
    return "".join(lines[:start]), "".join(lines[start:end]), "".join(lines[end:])


def canvas(prefix_ids: list[int], suffix_ids: list[int], gen_length: int, context: int,
           eos_id: int) -> tuple[list[int], list[int]]:
    """(ids before the masks, ids after them) within `context` positions in all.

    The prefix keeps its tail and the suffix its head; an end of the file that fits is marked
    with eos, as files are separated in pre-training. The prefix always has at least one token
    (the Dream layout scores position i from position i − 1)."""
    room = context - gen_length
    if room < 2:
        raise ValueError(f"context {context} leaves no room around {gen_length} masks")
    pre = [eos_id] + list(prefix_ids)
    suf = list(suffix_ids) + [eos_id]
    n_suf = min(len(suf), max(room - len(pre), int(room * (1 - PREFIX_SHARE))))
    n_pre = min(len(pre), room - n_suf)
    n_suf = min(len(suf), room - n_pre)
    return pre[len(pre) - n_pre:], suf[:n_suf]


def with_body(text: str, region: Region, body: str) -> str:
    """`text` with the region's lines replaced by `body` (a final newline added when missing)."""
    prefix, _, suffix = split(text, region.start, region.end)
    return prefix + (body if body.endswith("\n") else body + "\n") + suffix


def syntax_problem(path: str, text: str) -> str | None:
    """For a Python file: the first syntax error of `text` ("line N: message"), else None.
    Only compiled, never run."""
    if not path.endswith(".py"):
        return None
    try:
        compile(text, path, "exec", dont_inherit=True)
    except SyntaxError as err:
        return f"line {err.lineno}: {err.msg}"
    except ValueError as err:  # e.g. a NUL byte in the generated text
        return str(err)
    return None
