"""Unified diffs from outside (`dllm apply FILE|-`), read and applied strictly, as `git apply`.

Knows: reading a diff with `unidiff` (hunk line counts must match their headers; a hunk cut off
is an error), what that library lets pass and git does not (a malformed `@@` header, a `diff
--git` file cut off after its `---`/`+++` lines), terminal colour codes (refused: coloured output
crops long lines and draws control characters as symbols, so stripping the codes would not give
the diff back),
and git apply's placement rules without fuzz: every context and removed line must equal the
file's line byte for byte; a hunk is looked for at its stated line, then one line after, one
before, two after, ... (the nearest exact match wins); a hunk starting at old line 0 or 1 must
match at the top of the file, a hunk with no trailing context at its end; created files must not
exist; a deletion must remove the whole file. Renames, copies and binary diffs are refused;
`old mode`/`new mode` lines are ignored (a file keeps its mode, a created one gets the default).
The one deliberate difference from `git apply`: when every line of a file's hunks ends in LF and
the file's lines end in CRLF (or the reverse), the diff's line endings are read as the file's
(a diff copied through an editor or a mail often loses its CRs); git would refuse it.
The model's own answers are not read here: edits.py and match.py are tolerant, for them.
Must not: write files (patch.py reads them, journal.py writes), import torch, or guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import PatchError
from .patch import FileChange, Patch, check_markers, check_path, read_current, unified_diff

# CSI (colours, cursor) and OSC (hyperlinks, titles) escape sequences
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


@dataclass(frozen=True)
class Hunk:
    old_start: int  # as in the header (1-based; 0 for an empty old side)
    new_start: int
    lines: tuple[tuple[str, str], ...]  # (" " | "-" | "+", the line with its ending; none at a
                                        # "\ No newline at end of file")

    @property
    def old(self) -> list[str]:
        return [text for tag, text in self.lines if tag in " -"]

    @property
    def new(self) -> list[str]:
        return [text for tag, text in self.lines if tag in " +"]

    @property
    def trailing(self) -> int:
        """Context lines after the last change (git: a hunk without them must match at the end)."""
        n = 0
        for tag, _ in reversed(self.lines):
            if tag != " ":
                break
            n += 1
        return n


@dataclass(frozen=True)
class FileDiff:
    old_path: str | None  # None: /dev/null (a created file)
    new_path: str | None  # None: /dev/null (a deleted file)
    hunks: tuple[Hunk, ...]

    @property
    def path(self) -> str:
        path = self.new_path if self.new_path is not None else self.old_path
        assert path is not None
        return path


# --- reading --------------------------------------------------------------------------------

def colour_problem(text: str, source: str) -> str | None:
    """Why a diff holding terminal escape sequences is refused (None when it holds none)."""
    m = ANSI.search(text)
    if m is None:
        return None
    line = text.count("\n", 0, m.start()) + 1
    return (f"{source} holds terminal colour codes (line {line}: {m.group()!r}): it was written with colour "
            "forced on (FORCE_COLOR), and coloured output is not a faithful diff (long lines are cut to the "
            "terminal width, control characters are drawn as symbols); nothing was changed — write it "
            "again with FORCE_COLOR unset: env -u FORCE_COLOR dllm code --dry-run ... > fix.diff")


def parse(text: str, source: str = "the diff") -> list[FileDiff]:
    """The files of a unified diff, checked as `git apply` checks them; PatchError if malformed."""
    from unidiff import PatchSet
    from unidiff.errors import UnidiffParseError

    lines = text.split("\n")
    _check_hunk_headers(lines, source)
    try:
        patches = PatchSet(text)
    except UnidiffParseError as err:
        raise PatchError(f"{source} is not a valid unified diff: {' '.join(str(err).split())} (a hunk's "
                         "lines do not match the "
                         "counts in its @@ header, or the diff is cut off); nothing was changed — "
                         "make the diff again (git diff, dllm code --dry-run)") from None
    starts = [int(pf.diff_line_no or 1) for pf in patches] + [len(lines) + 1]
    out: list[FileDiff] = []
    for n, pf in enumerate(patches):
        info = "".join(pf.patch_info or [])
        git = info.startswith("diff --git ")
        old, new = _paths(_unquote(pf.source_file), _unquote(pf.target_file))
        name = new or old or "?"
        if pf.is_binary_file or "GIT binary patch" in info:
            raise PatchError(f"{source}: the diff for {name} changes a binary file; dllm apply changes "
                             "text files only; nothing was changed")
        if re.search(r"^(rename|copy) from ", info, re.MULTILINE) or (old and new and old != new):
            raise PatchError(f"{source}: the diff renames or copies {old} to {new}; dllm apply does not "
                             "rename or copy files (apply it with git apply); nothing was changed")
        hunks = tuple(_hunk(h) for h in pf)
        if not hunks:
            region = lines[starts[n] - 1:starts[n + 1] - 1]
            if git and any(s.startswith(("--- ", "+++ ")) for s in region):
                raise PatchError(f"{source}: the diff for {name} has its ---/+++ lines but no hunk (the "
                                 "diff is cut off); nothing was changed")
            created = re.search(r"^new file mode ", info, re.MULTILINE)
            deleted = re.search(r"^deleted file mode ", info, re.MULTILINE)
            if not git or not (created or deleted):
                continue  # a mode change (ignored), or text git also skips
            old, new = (None, new) if created else (old, None)
        out.append(FileDiff(old, new, hunks))
    return out


def _check_hunk_headers(lines: list[str], source: str) -> None:
    """An `@@` line after the first file header must be a whole hunk header (unidiff would read
    a malformed one as text between files and skip that file's changes)."""
    started = False
    for i, line in enumerate(lines):
        if line.startswith(("diff --git ", "--- ")):
            started = True
        elif started and line.startswith("@@") and not _HUNK_HEADER.match(line):
            raise PatchError(f"{source}: line {i + 1} is not a hunk header ({line[:40]!r}; expected "
                             "'@@ -a,b +c,d @@'); nothing was changed")


def _unquote(raw: str | None) -> str | None:
    """`a/x.py` from `a/x.py` or git's C-quoted `"a/\\303\\251.py"`; None for /dev/null."""
    if raw is None:
        return None
    s = raw.split("\t", 1)[0].strip()
    if len(s) >= 2 and s[0] == s[-1] == '"':
        s = s[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape").encode(
            "latin-1").decode("utf-8", "replace")
    return None if s == "/dev/null" else s


def _paths(old: str | None, new: str | None) -> tuple[str | None, str | None]:
    """git's a/ and b/ prefixes go when every side present carries its own."""
    if (old is None or old.startswith("a/")) and (new is None or new.startswith("b/")):
        return (old[2:] if old else None), (new[2:] if new else None)
    return old, new


def _hunk(h: object) -> Hunk:
    rows: list[tuple[str, str]] = []
    for line in h:  # type: ignore[attr-defined]
        tag, value = line.line_type, line.value
        if tag == "\\":
            if rows and rows[-1][1].endswith("\n"):
                rows[-1] = (rows[-1][0], rows[-1][1][:-1])
            continue
        if tag in (" ", "-", "+"):
            rows.append((tag, value))
    return Hunk(int(h.source_start), int(h.target_start), tuple(rows))  # type: ignore[attr-defined]


# --- applying ---------------------------------------------------------------------------------

def strict_patch(root: Path, text: str, source: str = "the diff") -> Patch:
    """The checked patch of a diff from outside; nothing is written. PatchError (exit 3) for
    anything `git apply --check` would refuse, and for a diff holding terminal colour codes."""
    problem = colour_problem(text, source)
    if problem:
        raise PatchError(problem)
    files = parse(text, source)
    if not files:
        raise PatchError(f"{source}: no unified diff found (expected ---/+++ headers and @@ hunks; "
                         "mode changes alone are ignored); nothing was changed")
    root = Path(root)
    state: dict[str, tuple[bytes | None, int]] = {}  # path → (current bytes, mode), evolving
    base: dict[str, bytes | None] = {}
    for fd in files:
        rel = check_path(root, fd.path)
        if rel not in state:
            state[rel] = read_current(root, rel)
            base[rel] = state[rel][0]
        data, mode = state[rel]
        state[rel] = (_apply_file(rel, fd, data, source), mode)
    changes = [FileChange(rel, base[rel], data, mode) for rel, (data, mode) in state.items()
               if data != base[rel]]
    check_markers(changes)
    if not changes:
        raise PatchError(f"{source}: the diff changes nothing in the files; nothing to apply")
    return Patch(tuple(changes), unified_diff(changes))


def _apply_file(rel: str, fd: FileDiff, data: bytes | None, source: str) -> bytes | None:
    where = f"{source}: {rel}"
    if fd.old_path is None:
        if data is not None:
            raise PatchError(f"{where} already exists; the diff creates it; nothing was changed")
        lines: list[str] = []
    else:
        if data is None:
            raise PatchError(f"{where}: no such file; the diff modifies it; nothing was changed")
        if b"\0" in data:
            raise PatchError(f"{where} is a binary file; dllm apply changes text files only")
        try:
            lines = _split(data.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise PatchError(f"{where} is not UTF-8 text ({err.reason} at byte {err.start}); "
                             "dllm edits UTF-8 files only") from None
    hunks = _with_file_endings(fd.hunks, lines)
    for n, hunk in enumerate(hunks, 1):
        lines = _apply_hunk(lines, hunk, f"{where}: hunk {n} (@@ -{hunk.old_start} +{hunk.new_start})")
    if fd.new_path is None:
        if lines:
            raise PatchError(f"{where}: the diff deletes the file but does not remove all of its lines; "
                             "nothing was changed")
        return None
    return "".join(lines).encode("utf-8")


def _split(text: str) -> list[str]:
    return [line for line in re.split(r"(?<=\n)", text) if line]


def _eol(line: str) -> str:
    return "\r\n" if line.endswith("\r\n") else "\n" if line.endswith("\n") else ""


def _with_file_endings(hunks: tuple[Hunk, ...], lines: list[str]) -> tuple[Hunk, ...]:
    """The hunks with their LF read as CRLF (or the reverse) when the diff's lines all end one way
    and the file's the other; otherwise unchanged (compared byte for byte)."""
    diff_eols = {_eol(text) for h in hunks for _, text in h.lines} - {""}
    file_eols = {_eol(line) for line in lines} - {""}
    if len(diff_eols) != 1 or len(file_eols) != 1 or diff_eols == file_eols:
        return hunks
    (want,) = file_eols
    (have,) = diff_eols
    return tuple(Hunk(h.old_start, h.new_start, tuple(
        (tag, text[:-len(have)] + want if text.endswith(have) else text) for tag, text in h.lines))
        for h in hunks)


def _apply_hunk(lines: list[str], hunk: Hunk, where: str) -> list[str]:
    old, new = hunk.old, hunk.new
    match_beginning = hunk.old_start <= 1
    match_end = hunk.trailing == 0
    start = max(hunk.new_start - 1, 0) if hunk.new_start else 0
    if match_beginning:
        start = 0
    elif match_end:
        start = len(lines) - len(old)
    start = min(max(start, 0), len(lines))
    at = _find(lines, old, start, match_beginning, match_end)
    if at is None:
        first = next((t for t in old if t.strip()), old[0] if old else "")
        rule = (" at the top of the file" if match_beginning else
                " at the end of the file (the hunk has no trailing context)" if match_end else "")
        raise PatchError(f"{where} does not apply: its context and removed lines (from {first.rstrip()!r}) "
                         f"are not in the file exactly{rule} — the file changed since the diff was made, "
                         "or the diff was edited; nothing was changed")
    return lines[:at] + new + lines[at + len(old):]


def _find(lines: list[str], old: list[str], start: int, beginning: bool, end: bool) -> int | None:
    """git apply's search: the stated line, then one after, one before, two after, ..."""
    def fits(at: int) -> bool:
        if beginning and at != 0:
            return False
        if end and at + len(old) != len(lines):
            return False
        return lines[at:at + len(old)] == old

    back = fwd = start
    if fits(start):
        return start
    i = 0
    while back > 0 or fwd < len(lines):
        if i % 2 == 0 and fwd < len(lines):
            fwd += 1
            if fits(fwd):
                return fwd
        elif back > 0:
            back -= 1
            if fits(back):
                return back
        i += 1
    return None
