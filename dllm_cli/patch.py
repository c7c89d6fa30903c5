"""Edits → a checked patch: path safety, every edit applied in memory, the unified diff.

Knows: path safety (refused: absolute paths, `..`, anything under a `.git` directory, symlinks,
paths resolving outside the root through symlinked parents, and FIFOs, sockets, devices: only
regular files are read or replaced), the way git compares path components (NFKC, Unicode format
characters such as U+200C removed, case-folded, trailing dots and spaces and an NTFS `:stream`
suffix dropped: `.G\u200cit.` is `.git` on HFS+ and NTFS, so it is refused), line endings,
file modes, and the unified diff dllm shows (computed here with difflib, never taken from the
model). Only UTF-8 text files are edited; a BOM, the file's line endings (per line; new lines
get the file's dominant ending) and a missing final newline are kept; file modes are kept.
Files are read through files.py (regular files only, at most MAX_EDIT_BYTES). An edit that would
write dllm's redaction marker (redact.py) into a file where it was not is refused: the model saw
that secret redacted, and writing its copy back would destroy the real value.
Matching SEARCH text in a file is `match.py`; writing the patch to disk is `journal.py`.
Must not: import torch, rich, typer, prompt_toolkit or GitPython, or write any file.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from .edits import Edit
from .errors import PatchError
from .files import Unreadable, not_regular, read_regular
from .match import dominant_eol, replace_once, split_lines
from .redact import MARKER

MAX_EDIT_BYTES = 16 * 1024 * 1024  # a bigger file is not edited (its bytes live in memory and the journal)

# --- paths ----------------------------------------------------------------------------------

def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def fold_component(part: str) -> str:
    """A path component as case-insensitive, normalising filesystems see it (git's is_hfs_dotgit /
    is_ntfs_dotgit rules, generalised): NFKC, Unicode format characters (category Cf: U+200C-U+200F,
    U+202A-U+202E, U+206A-U+206F, U+FEFF, the code points HFS+ ignores, and the rest of Cf) removed,
    case-folded, an NTFS alternate stream (`:...`) and trailing dots and spaces dropped."""
    s = unicodedata.normalize("NFKC", part)
    s = "".join(c for c in s if unicodedata.category(c) != "Cf").casefold()
    return s.split(":", 1)[0].rstrip(". ")


def _is_git_part(part: str) -> bool:
    return fold_component(part) in (".git", "git~1")


def _is_dots(part: str) -> bool:
    return part not in (".", "..") and fold_component(part) in ("", ".", "..")


def check_path(root: Path, path: str) -> str:
    """The normalised repository-relative path, or PatchError saying why it is refused."""
    p = path.strip()
    why = None
    if not p or any(ord(c) < 32 for c in p) or "\\" in p:
        why = "is empty or holds control characters or backslashes"
    elif p.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", p):
        why = "is absolute"
    parts = [x for x in p.split("/") if x not in ("", ".")]
    if why is None and (not parts or ".." in parts):
        why = "contains '..'" if parts else "names no file"
    if why is None and any(_is_git_part(x) for x in parts):
        why = "is inside a .git directory (compared as git does: case, Unicode ignorables, trailing dots)"
    if why is None and any(_is_dots(x) for x in parts):
        why = "has a component that a filesystem may read as '.' or '..'"
    rel = "/".join(parts)
    if why is None:
        why = _symlink_problem(root, rel)
    if why:
        raise PatchError(f"refusing to write {path!r}: the path {why}; edits must stay inside {root}")
    return rel


def _symlink_problem(root: Path, rel: str) -> str | None:
    root_real = os.path.realpath(root)
    full = os.path.join(root_real, rel)
    real = os.path.realpath(full)
    if not _inside(real, root_real):
        return f"resolves to {real}, outside the work tree (a symbolic link)"
    if any(_is_git_part(x) for x in Path(os.path.relpath(real, root_real)).parts):
        return "resolves into a .git directory (a symbolic link)"
    if os.path.islink(full):
        return "is a symbolic link; edit the file it points to instead"
    if os.path.isdir(full):
        return "is a directory"
    other = not_regular(full, follow=False)
    if other:
        return f"is {other}, not a regular file"
    return None


# --- the patch ------------------------------------------------------------------------------

@dataclass(frozen=True)
class FileChange:
    path: str  # repository-relative, "/" separators
    old: bytes | None  # None: the file is created
    new: bytes | None  # None: the file is deleted
    mode: int  # permission bits the file has (kept) or gets (created)

    @property
    def kind(self) -> str:
        return "create" if self.old is None else "delete" if self.new is None else "modify"


@dataclass(frozen=True)
class Patch:
    changes: tuple[FileChange, ...]
    diff: str

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(c.path for c in self.changes)

    @property
    def created(self) -> tuple[str, ...]:
        return tuple(c.path for c in self.changes if c.kind == "create")

    @property
    def deleted(self) -> tuple[str, ...]:
        return tuple(c.path for c in self.changes if c.kind == "delete")

    @property
    def is_empty(self) -> bool:
        return not self.changes


class _Text:
    """One file's evolving state while a patch is built."""

    def __init__(self, path: str, old: bytes | None, mode: int) -> None:
        self.path, self.old, self.mode = path, old, mode
        self.bom = bool(old and old.startswith(b"\xef\xbb\xbf"))
        self.text: str | None = None if old is None else _decode(path, old[3:] if self.bom else old)

    def encode(self) -> bytes | None:
        if self.text is None:
            return None
        return (b"\xef\xbb\xbf" if self.bom else b"") + self.text.encode("utf-8")


def _decode(path: str, data: bytes) -> str:
    if b"\0" in data:
        raise PatchError(f"{path} is a binary file; dllm edits text files only")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PatchError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); "
                         "dllm edits UTF-8 files only") from None


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def read_current(root: Path, rel: str) -> tuple[bytes | None, int]:
    """(bytes or None when missing, permission bits) of a file a patch may change: regular files
    only (a FIFO is refused without being opened), at most MAX_EDIT_BYTES."""
    full = Path(root) / rel
    try:
        data = read_regular(full, MAX_EDIT_BYTES, follow=False)
        return data, stat.S_IMODE(os.lstat(full).st_mode)
    except FileNotFoundError:
        return None, _default_mode()
    except Unreadable as err:
        raise PatchError(f"refusing to edit {rel}: it is {err.reason}; dllm edits regular files up to "
                         f"{MAX_EDIT_BYTES // (1024 * 1024)} MiB") from None
    except OSError as err:
        raise PatchError(f"cannot read {rel}: {err.strerror}") from None


def _load(root: Path, rel: str) -> _Text:
    data, mode = read_current(root, rel)
    return _Text(rel, data, mode)


def check_markers(changes: Iterable[FileChange]) -> None:
    """Refuse a change that adds dllm's redaction marker to a file (see the module docstring)."""
    for c in changes:
        old = (c.old or b"").count(MARKER.encode())
        if c.new is not None and c.new.count(MARKER.encode()) > old:
            raise PatchError(f"{c.path}: the edit writes dllm's redaction marker {MARKER}...] into the file: "
                             "the model saw a secret there redacted and its copy would replace the real "
                             "value; nothing was written — make that part of the change by hand")


def build_patch(root: Path, edits: Sequence[Edit]) -> Patch:
    """Check every path and apply every edit in memory; nothing is written. PatchError if any fails."""
    root = Path(root)
    files: dict[str, _Text] = {}
    for edit in edits:
        rel = check_path(root, edit.path)
        state = files.get(rel) or files.setdefault(rel, _load(root, rel))
        _apply_edit(state, edit)
    changes = []
    for rel, state in files.items():
        new = state.encode()
        if new != state.old:
            changes.append(FileChange(rel, state.old, new, state.mode))
    check_markers(changes)
    return Patch(tuple(changes), unified_diff(changes))


def _apply_edit(state: _Text, edit: Edit) -> None:
    where = f" (answer line {edit.source_line})" if edit.source_line else ""
    if edit.kind == "whole_file":
        state.text = _whole(state.text, edit.replace)
    elif edit.kind == "delete_file":
        if state.text is None:
            raise PatchError(f"cannot delete {state.path}{where}: no such file")
        if edit.search and edit.search.replace("\r\n", "\n") != state.text.replace("\r\n", "\n"):
            raise PatchError(f"cannot delete {state.path}{where}: its content differs from the diff's")
        state.text = None
    elif edit.kind == "search_replace":
        assert edit.search is not None
        if state.text is None and not edit.search.strip():
            state.text = edit.replace.replace("\r\n", "\n")  # an empty SEARCH creates the file
        elif state.text is None:
            raise PatchError(f"{state.path}: no such file for the SEARCH block{where}; "
                             "check the path or write the whole file in a code block")
        else:
            state.text = replace_once(state.text, edit.search.replace("\r\n", "\n"),
                                      edit.replace.replace("\r\n", "\n"), path=state.path,
                                      hint=edit.line_hint, where=where)
    else:
        raise PatchError(f"{state.path}: unknown edit kind {edit.kind!r}{where}")


def _whole(old: str | None, new: str) -> str:
    """New content with the old file's line endings and missing final newline kept."""
    new = new.replace("\r\n", "\n")
    if old is None:
        return new
    if old and not old.endswith("\n") and new.endswith("\n"):
        new = new[:-1]
    return new.replace("\n", dominant_eol(old))


# --- the unified diff -----------------------------------------------------------------------

def unified_diff(changes: Iterable[FileChange], context: int = 3) -> str:
    """A `git apply`-compatible diff of the changes (created/deleted files, `\\ No newline`)."""
    return "".join(_file_diff(c, context) for c in changes)


def _diff_lines(data: bytes | None) -> list[str]:
    return split_lines(data.decode("utf-8", "surrogateescape")) if data else []


def _file_diff(c: FileChange, context: int) -> str:
    mode = "100755" if c.mode & 0o111 else "100644"
    head = [f"diff --git a/{c.path} b/{c.path}\n"]
    if c.kind == "create":
        head.append(f"new file mode {mode}\n")
    elif c.kind == "delete":
        head.append(f"deleted file mode {mode}\n")
    a, b = _diff_lines(c.old), _diff_lines(c.new)
    if not a and not b:
        return "".join(head)
    head.append(f"--- {'/dev/null' if c.old is None else 'a/' + c.path}\n")
    head.append(f"+++ {'/dev/null' if c.new is None else 'b/' + c.path}\n")
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for group in matcher.get_grouped_opcodes(context):
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        head.append(f"@@ -{_range(i1, i2)} +{_range(j1, j2)} @@\n")
        for tag, a1, a2, b1, b2 in group:
            if tag == "equal":
                head.extend(_mark(" ", a[a1:a2]))
                continue
            head.extend(_mark("-", a[a1:a2]))
            head.extend(_mark("+", b[b1:b2]))
    return "".join(head)


def _range(start: int, stop: int) -> str:
    length = stop - start
    return f"{start + 1}" if length == 1 else f"{start + 1 if length else start},{length}"


def _mark(sign: str, lines: list[str]) -> list[str]:
    return [sign + s if s.endswith("\n") else f"{sign}{s}\n\\ No newline at end of file\n" for s in lines]
