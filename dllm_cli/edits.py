"""Model text → edits: pure functions on strings.

Knows the three answer formats (see prompt.py):
  (a) SEARCH/REPLACE blocks, each preceded by a path line (bare, in backticks, `File: x`,
      `### x`), or in a fence whose info string names it (```python path=a.py); the fence
      around the blocks is optional; markers are 5-9 '<' / '=' / '>' characters; consecutive
      blocks with only blank/fence lines between them reuse the previous path;
  (b) a whole file in a fenced block whose path is on the line before it or in its info string;
  (c) unified diffs (`--- a/x` `+++ b/x` `@@` hunks; /dev/null for create/delete), bare or fenced.
Text outside edits is ignored. CRLF in the model output is normalised to LF here; the file's own
line endings are restored by patch.py.

Edit kinds:
  "search_replace": replace `search` with `replace` (patch.py matches tolerantly and uniquely).
      An empty `search` means "create the file" (it must be missing or empty) — that is how a
      /dev/null diff and an empty SEARCH section arrive.
  "whole_file": `search` is None, `replace` is the entire new content (creates or overwrites).
  "delete_file": `replace` is ""; `search` is the content the file must have (from a diff's
      removed lines) or None when the diff carries no hunk.

Malformed input is never guessed at: `parse()` returns a `ParseResult` whose `problems` list
every block it could not read (truncated block, SEARCH without a path, unterminated fence,
an elided "... rest unchanged" whole file, renames, binary diffs); `parse_edits()` raises
`EditParseError` (a PatchError, exit 3) naming the first problem. An answer with no edit at all
gives an empty list: the caller reports "no edit found" (exit 3).

Must not import torch or touch files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dllm_cli.errors import PatchError

_SEARCH = re.compile(r"^\s*<{5,9}\s*SEARCH\s*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9}\s*REPLACE\s*$")
_FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})(.*)$")
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_EXTENSION = re.compile(r"\.[A-Za-z0-9_+\-]+$")
_ELIDED = re.compile(
    r"^\s*(#|//|/\*|<!--|--|;|\*)\s*(\.\.\.|…).*\b(existing|unchanged|rest of|remaining|same as|omitted)\b",
    re.IGNORECASE)
_KNOWN_NAMES = frozenset({"Makefile", "Dockerfile", "Containerfile", "Justfile", "Procfile", "Gemfile",
                          "Rakefile", "Vagrantfile", "LICENSE", "README", "CHANGELOG", "BUILD",
                          "WORKSPACE", "CMakeLists.txt"})
_PATH_KEYS = ("path", "file", "filename", "title", "name")


class EditParseError(PatchError):
    """The model output holds a block that cannot be read as an edit (exit 3)."""


@dataclass(frozen=True)
class Edit:
    path: str
    search: str | None
    replace: str
    kind: str  # "search_replace" | "whole_file" | "delete_file"
    source_line: int = 0  # 1-based line in the model output where the edit starts
    line_hint: int | None = None  # diffs only: 0-based line where the hunk sits in the evolving file

    def describe(self) -> str:
        return f"{self.path} (answer line {self.source_line})"


@dataclass(frozen=True)
class ParseProblem:
    line: int  # 1-based line in the model output
    message: str

    def __str__(self) -> str:
        return f"answer line {self.line}: {self.message}"


@dataclass(frozen=True)
class ParseResult:
    edits: list[Edit] = field(default_factory=list)
    problems: list[ParseProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def parse_edits(text: str) -> list[Edit]:
    """Every edit in the model output; raises EditParseError if any block is malformed."""
    return _raise_on_problems(parse(text))


def parse_unified_diff(text: str) -> list[Edit]:
    """Edits from a text that is a unified diff (`dllm apply FILE|-`); [] when it holds none.

    Raises EditParseError for a malformed diff (bad hunk, rename, binary)."""
    lines = _lines(text)
    result = _Collector()
    i = 0
    while i < len(lines):
        if _diff_starts(lines, i):
            i = _parse_diff(lines, i, result)
        else:
            i += 1
    return _raise_on_problems(result.done(), "fix the diff and apply it again")


def parse(text: str) -> ParseResult:
    """Scan model output for edits in any of the three formats; collect problems, never guess."""
    lines = _lines(text)
    out = _Collector()
    container: tuple[str, int] | None = None  # the open fence that wraps SEARCH/REPLACE blocks
    i = 0
    while i < len(lines):
        line = lines[i]
        if container and _closes(line, container):
            container, i = None, i + 1
        elif _SEARCH.match(line):
            i = _parse_search_replace(lines, i, out)
        elif _diff_starts(lines, i):
            i = _parse_diff(lines, i, out)
        elif container is None and _FENCE.match(line):
            container, i = _parse_fence(lines, i, out)
        else:
            i += 1
    return out.done()


# --- shared scanning state ------------------------------------------------------------------

class _Collector:
    def __init__(self) -> None:
        self.edits: list[Edit] = []
        self.problems: list[ParseProblem] = []
        self.last_end = 0  # index of the first line after the last edit
        self.last_sr_path: str | None = None  # path of the last SEARCH/REPLACE block, if it was last

    def add(self, edit: Edit, end: int, sr: bool = False) -> None:
        self.edits.append(edit)
        self.last_end = end
        self.last_sr_path = edit.path if sr else None

    def problem(self, line: int, message: str) -> None:
        self.problems.append(ParseProblem(line, message))

    def done(self) -> ParseResult:
        return ParseResult(list(self.edits), list(self.problems))


def _raise_on_problems(result: ParseResult,
                       advice: str = "ask again or use --gen-length to allow a longer answer") -> list[Edit]:
    if result.problems:
        more = f" (and {len(result.problems) - 1} more)" if len(result.problems) > 1 else ""
        raise EditParseError(f"cannot read the edits: {result.problems[0]}{more}; nothing was changed — {advice}")
    return result.edits


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _join(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


# --- paths ----------------------------------------------------------------------------------

def path_from_line(line: str) -> str | None:
    """The path a line names on its own (`a.py`, `` `src/a.py` ``, `File: a.py:`), else None."""
    s = line.strip()
    s = re.sub(r"^#{1,6}\s+", "", s)
    for _ in range(2):
        for mark in ("**", "*", "`", "'", '"'):
            if len(s) > 2 * len(mark) and s.startswith(mark) and s.endswith(mark):
                s = s[len(mark):-len(mark)].strip()
        s = re.sub(r"^(file|path|filename)\s*:\s*", "", s, flags=re.IGNORECASE)
        s = s.rstrip(":").strip()
    return s if _looks_like_path(s) else None


def _looks_like_path(s: str) -> bool:
    if not s or len(s) > 255 or any(c.isspace() for c in s) or "://" in s:
        return False
    if s.startswith(("```", "~~~", "-", "<", ">", "=", "@@", "+")) or s.endswith((".", ",", ";")):
        return False
    return "/" in s or bool(_EXTENSION.search(s)) or s in _KNOWN_NAMES


def _info_path(info: str) -> str | None:
    """A path named in a fence info string: `python path=a.py`, `python:a.py`, `a.py`, `python a.py`."""
    tokens = info.strip().split()
    for tok in tokens:
        key, eq, value = tok.partition("=")
        if eq and key.lower() in _PATH_KEYS:
            return value.strip("'\"`") or None
    for n, tok in enumerate(tokens):
        candidate = tok.split(":", 1)[1] if n == 0 and ":" in tok else tok
        if "=" not in candidate and _looks_like_path(candidate):
            return candidate
    return None


def _path_before(lines: list[str], i: int, out: _Collector) -> str | None:
    """The path for a block starting at line i: look back over blank and fence lines."""
    j = i - 1
    while j >= out.last_end:
        s = lines[j].strip()
        if not s:
            j -= 1
            continue
        fence = _FENCE.match(lines[j])
        if fence:
            found = _info_path(fence.group(3))
            if found:
                return found
            j -= 1
            continue
        return path_from_line(s)
    return out.last_sr_path


# --- (a) SEARCH/REPLACE ---------------------------------------------------------------------

def _parse_search_replace(lines: list[str], i: int, out: _Collector) -> int:
    start = i
    path = _path_before(lines, i, out)
    search: list[str] = []
    replace: list[str] = []
    section = search
    i += 1
    while i < len(lines):
        line = lines[i]
        if _SEARCH.match(line):
            out.problem(i + 1, f"a new SEARCH marker before the block from line {start + 1} was closed "
                               "by `>>>>>>> REPLACE`")
            return i
        if section is search and _DIVIDER.match(line):
            section = replace
        elif section is replace and _REPLACE.match(line):
            break
        else:
            section.append(line)
        i += 1
    else:
        what = "`=======` and `>>>>>>> REPLACE`" if section is search else "`>>>>>>> REPLACE`"
        out.problem(start + 1, f"the SEARCH block{f' for {path}' if path else ''} is cut off: "
                               f"missing {what} (the answer was truncated)")
        return i
    if path is None:
        out.problem(start + 1, "SEARCH block without a file path: write the path on the line before it")
        out.last_end, out.last_sr_path = i + 1, None
        return i + 1
    out.add(Edit(path, _join(search), _join(replace), "search_replace", start + 1), i + 1, sr=True)
    return i + 1


# --- (b) fenced whole files (and fences that wrap other formats) -----------------------------

def _closes(line: str, fence: tuple[str, int]) -> bool:
    s = line.strip()
    return len(s) >= fence[1] and set(s) == {fence[0]}


def _fence_end(lines: list[str], i: int, fence: tuple[str, int]) -> int:
    """Index of the closing fence line of the fence opened at line i, or len(lines)."""
    j = i + 1
    while j < len(lines) and not _closes(lines[j], fence):
        j += 1
    return j


def _parse_fence(lines: list[str], i: int, out: _Collector) -> tuple[tuple[str, int] | None, int]:
    """Returns (open container fence or None, next index)."""
    m = _FENCE.match(lines[i])
    assert m
    fence = (m.group(2)[0], len(m.group(2)))
    end = _fence_end(lines, i, fence)
    body = lines[i + 1:end]
    if any(_SEARCH.match(b) for b in body) or any(_diff_starts(body, k) for k in range(len(body))):
        return fence, i + 1  # step inside: the blocks are parsed line by line
    info_path = _info_path(m.group(3))
    path = info_path or _line_path_before(lines, i, out)
    if path is None:
        return None, min(end + 1, len(lines))  # a plain code sample, not an edit
    if end >= len(lines):
        out.problem(i + 1, f"the code block for {path} is never closed (the answer was truncated)")
        return None, end
    elided = next((b for b in body if _ELIDED.match(b)), None)
    if elided is not None:
        out.problem(i + 1, f"the whole-file block for {path} elides code ({elided.strip()!r}); "
                           "it would delete the rest of the file")
    else:
        out.add(Edit(path, None, _join(body), "whole_file", i + 1), end + 1)
    return None, end + 1


def _line_path_before(lines: list[str], i: int, out: _Collector) -> str | None:
    j = i - 1
    while j >= out.last_end and not lines[j].strip():
        j -= 1
    return path_from_line(lines[j]) if j >= out.last_end else None


# --- (c) unified diffs ----------------------------------------------------------------------

def _diff_starts(lines: list[str], i: int) -> bool:
    if lines[i].startswith("diff --git "):
        return True
    return (lines[i].startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ ")
            and i + 2 < len(lines) and lines[i + 2].startswith("@@"))


def _diff_path(raw: str) -> str | None:
    """`a/x.py\t2024-01-01 ...` → `a/x.py`; /dev/null → None."""
    s = raw.split("\t", 1)[0].strip()
    if len(s) >= 2 and s[0] == s[-1] == '"':
        s = s[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape").encode(
            "latin-1").decode("utf-8", "replace")
    return None if s == "/dev/null" else s


def _strip_prefixes(old: str | None, new: str | None) -> tuple[str | None, str | None]:
    """git's a/ b/ prefixes go when both sides (or the one side present) carry them."""
    def strip(p: str | None, prefix: str) -> str | None:
        return p[2:] if p is not None and p.startswith(prefix) else p
    has_a = old is None or old.startswith("a/")
    has_b = new is None or new.startswith("b/")
    if has_a and has_b:
        return strip(old, "a/"), strip(new, "b/")
    return old, new


def _parse_diff(lines: list[str], i: int, out: _Collector) -> int:
    """One file's diff starting at line i (a `diff --git` line or a `---` line)."""
    start = i
    meta: set[str] = set()
    git_paths: tuple[str | None, str | None] = (None, None)
    if lines[i].startswith("diff --git "):
        m = re.match(r"^diff --git (\S+) (\S+)$", lines[i])
        if m:
            git_paths = _strip_prefixes(m.group(1), m.group(2))
        i += 1
        while i < len(lines) and not lines[i].startswith(("--- ", "diff --git ", "@@")):
            word = lines[i].split(" ", 1)[0]
            if lines[i].startswith(("new file mode", "deleted file mode", "rename from", "copy from",
                                    "Binary files", "GIT binary patch")):
                meta.add(" ".join(lines[i].split()[:2]))
            if not lines[i].strip() or word not in ("new", "deleted", "old", "index", "similarity",
                                                    "dissimilarity", "rename", "copy", "Binary", "GIT"):
                break
            i += 1
    if meta & {"rename from", "copy from", "Binary files", "GIT binary"}:
        out.problem(start + 1, f"the diff for {git_paths[1] or git_paths[0]} renames, copies or changes a "
                               "binary file; dllm applies text changes only")
        out.last_end = i
        return i
    if not (i + 1 < len(lines) and lines[i].startswith("--- ") and lines[i + 1].startswith("+++ ")):
        return _header_only_diff(git_paths, meta, start, i, out)
    old, new = _strip_prefixes(_diff_path(lines[i][4:]), _diff_path(lines[i + 1][4:]))
    if old is not None and new is not None and old != new:
        out.problem(start + 1, f"the diff names two files ({old} → {new}); renames are not supported")
        out.last_end = i + 2
        return i + 2
    return _parse_hunks(lines, i + 2, old, new, start, out)


def _header_only_diff(git_paths, meta, start, i, out) -> int:
    """`diff --git` with no hunks: an empty file created or deleted (mode-only changes are ignored)."""
    path = git_paths[1] or git_paths[0]
    if path and "new file" in meta:
        out.add(Edit(path, "", "", "search_replace", start + 1), i)
    elif path and "deleted file" in meta:
        out.add(Edit(path, "", "", "delete_file", start + 1), i)
    elif path is None:
        out.problem(start + 1, "cannot read the file names of this `diff --git` header")
    out.last_end = max(out.last_end, i)
    return max(i, start + 1)


def _parse_hunks(lines, i, old, new, start, out: _Collector) -> int:
    path = new if new is not None else old
    if path is None:
        out.problem(start + 1, "a diff from /dev/null to /dev/null")
        return i
    delta = 0  # lines added minus removed by the hunks before, to place the next hunk
    edits: list[Edit] = []
    while i < len(lines) and lines[i].startswith("@@"):
        hunk_line = i
        i, before, after, hint = _read_hunk(lines, i)
        if before is None:
            out.problem(hunk_line + 1, f"malformed hunk in the diff for {path}")
            out.last_end = i
            return i
        if hint is not None:
            hint += delta
        delta += _count(after) - _count(before)
        edits.append(Edit(path, before, after, "search_replace", hunk_line + 1, hint))
    if not edits:
        out.problem(start + 1, f"the diff for {path} has no `@@` hunk")
    elif new is None:
        content = "".join(e.search or "" for e in edits)
        out.add(Edit(path, content, "", "delete_file", start + 1), i)
    elif old is None:
        content = "".join(e.replace for e in edits)
        out.add(Edit(path, "", content, "search_replace", start + 1), i)
    else:
        for e in edits:
            out.add(e, i)
    out.last_end = i
    return i


def _count(text: str) -> int:
    return text.count("\n") + (1 if text and not text.endswith("\n") else 0)


def _read_hunk(lines: list[str], i: int) -> tuple[int, str | None, str, int | None]:
    """(next index, old text, new text, 0-based old start) for the hunk whose header is lines[i]."""
    m = _HUNK.match(lines[i])
    counts = (int(m.group(2) or 1), int(m.group(4) or 1)) if m else None
    hint = None
    if m and counts is not None:
        old_start = int(m.group(1))
        hint = old_start - 1 if counts[0] > 0 else old_start
    i += 1
    body_end = _hunk_end(lines, i, counts)
    if body_end == i:
        return body_end, None, "", None  # a header with no body
    old: list[str] = []
    new: list[str] = []
    no_eol_old = no_eol_new = False
    prev_tag = " "
    for line in lines[i:body_end]:
        tag, content = (line[:1] or " "), line[1:]
        if tag == "\\":
            no_eol_old |= prev_tag in " -"
            no_eol_new |= prev_tag in " +"
            continue
        if tag in " -":
            old.append(content)
        if tag in " +":
            new.append(content)
        prev_tag = tag
    before, after = _join(old), _join(new)
    before = before[:-1] if no_eol_old and before else before
    after = after[:-1] if no_eol_new and after else after
    return body_end, before, after, hint


def _hunk_end(lines: list[str], i: int, counts: tuple[int, int] | None) -> int:
    """End of a hunk body: by the header's counts when they fit, else greedily (models miscount)."""
    if counts is not None:
        j, need_old, need_new = i, counts[0], counts[1]
        while j < len(lines) and (need_old > 0 or need_new > 0):
            tag = lines[j][:1] or " "
            if tag not in " +-\\" or _is_header(lines, j):
                break
            need_old -= tag in " -"
            need_new -= tag in " +"
            j += 1
        while j < len(lines) and lines[j].startswith("\\"):
            j += 1
        fits = need_old == 0 and need_new == 0
        if fits and not (j < len(lines) and lines[j][:1] in ("+", "-") and not _is_header(lines, j)):
            return j
    j = i
    while j < len(lines) and (lines[j][:1] or " ") in " +-\\" and not _is_header(lines, j):
        j += 1
    while j > i and lines[j - 1] == "":
        j -= 1  # blank lines after a hunk separate it from prose; they are not context
    return j


def _is_header(lines: list[str], j: int) -> bool:
    s = lines[j]
    if s.startswith(("@@", "diff --git ", "```", "~~~")):
        return True
    return s.startswith("--- ") and j + 1 < len(lines) and lines[j + 1].startswith("+++ ")
