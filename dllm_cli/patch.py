"""Edits → a checked patch → an atomic apply, with an undo journal.

Knows: path safety, line endings, file modes, the
unified diff the CLI shows (computed here with difflib, never taken from the model), writing
all files or none, the undo journal and saved patches under the state dir, `--commit`.

Matching SEARCH text in a file is `match.py`.

Paths are refused when absolute, containing `..`, under any `.git` directory (any case),
symlinks, or resolving (through symlinked parents) outside the root. Only UTF-8 text files
are edited; a BOM, the file's line endings (per line; new lines get the file's dominant
ending) and a missing final newline are kept; file modes are kept.

State dir (`state_dir_for`): $DLLM_STATE_DIR, else `<git dir>/dllm` (a worktree's own git dir),
else `$XDG_STATE_HOME/dllm/<name>-<hash>`. Layout: `patches/<UTC time>-<sha8>.diff` (every patch,
applied or not), `journal/<ns>.json` (the undo stack: pre-apply bytes in base64, post-apply
sha256, modes, created directories), `journal/undone/` (journals already undone).

Ctrl-C while the files and the journal are written is held until they are done, then the
apply is rolled back and KeyboardInterrupt raised: the tree is never left half-patched. An
undo, once it starts writing, finishes (a Ctrl-C then is ignored).

Must not import torch, rich, typer or prompt_toolkit; GitPython is imported only by commit_patch.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import json
import os
import re
import signal
import stat
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from dllm_cli.edits import Edit
from dllm_cli.errors import DllmError, PatchError
from dllm_cli.match import dominant_eol, replace_once, split_lines

# --- paths ----------------------------------------------------------------------------------

def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _is_git_part(part: str) -> bool:
    low = part.lower().rstrip(". ")  # ".GIT", ".git." and ".git " all mean .git on some filesystems
    return low in (".git", "git~1")


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
        why = "is inside a .git directory"
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


@dataclass(frozen=True)
class AppliedPatch:
    patch: Patch
    journal: Path  # the journal entry (after undo: where it was moved)
    patch_file: Path  # the saved .diff
    id: str
    dirs_created: tuple[str, ...] = ()  # folders the apply made (relative, deepest last)

    @property
    def files(self) -> tuple[str, ...]:
        return self.patch.files


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


def _load(root: Path, rel: str) -> _Text:
    full = Path(root) / rel
    try:
        st = full.stat()
        return _Text(rel, full.read_bytes(), stat.S_IMODE(st.st_mode))
    except FileNotFoundError:
        return _Text(rel, None, _default_mode())
    except OSError as err:
        raise PatchError(f"cannot read {rel}: {err.strerror}") from None


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


# --- state dir and saved patches ------------------------------------------------------------

def state_dir_for(root: Path) -> Path:
    """$DLLM_STATE_DIR, else `<git dir>/dllm` (like `git rev-parse --git-dir`), else an XDG dir."""
    env = os.environ.get("DLLM_STATE_DIR")
    if env:
        return Path(env).expanduser()
    git_dir = _git_dir(Path(root))
    if git_dir is not None:
        return git_dir / "dllm"
    real = os.path.realpath(root)
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "dllm" / f"{Path(real).name or 'root'}-{hashlib.sha256(real.encode()).hexdigest()[:12]}"


def _git_dir(root: Path) -> Path | None:
    """The git dir of the repository holding root; a `.git` file (worktree, submodule) is followed."""
    here = Path(os.path.realpath(root))
    for folder in (here, *here.parents):
        dot = folder / ".git"
        if dot.is_dir():
            return dot
        if dot.is_file():
            text = dot.read_text(encoding="utf-8", errors="replace").strip()
            if text.startswith("gitdir:"):
                target = Path(text[len("gitdir:"):].strip())
                return Path(os.path.realpath(folder / target))
    return None


def save_patch(patch: Patch, state_dir: Path) -> Path:
    """Keep the patch text as `patches/<UTC time>-<sha8>.diff`; the same text is saved once."""
    folder = Path(state_dir) / "patches"
    digest = hashlib.sha256(patch.diff.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        existing = sorted(folder.glob(f"*-{digest}.diff"))
        if existing:
            return existing[-1]
        target = folder / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{digest}.diff"
        _atomic_write(target, patch.diff.encode("utf-8", "surrogateescape"), 0o644)
    except OSError as err:
        raise PatchError(f"cannot save the patch under {folder}: {err.strerror}; "
                         "set DLLM_STATE_DIR to a writable folder") from None
    return target


# --- atomic writes --------------------------------------------------------------------------

def _write_temp(folder: Path, data: bytes, mode: int) -> Path:
    fd, name = tempfile.mkstemp(dir=folder, prefix=".dllm-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def _atomic_write(target: Path, data: bytes, mode: int) -> None:
    tmp = _write_temp(target.parent, data, mode)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_all(root: Path, changes: Sequence[FileChange]) -> list[str]:
    """Write every change or none: temp files first, then renames; roll back on any failure.

    Returns the directories it created (relative to root, deepest last)."""
    made: list[str] = []
    staged: list[tuple[FileChange, Path | None]] = []
    done: list[FileChange] = []
    try:
        for c in changes:
            target = root / c.path
            if c.new is not None:
                made += _make_parents(root, c.path)
                staged.append((c, _write_temp(target.parent, c.new, c.mode)))
            else:
                staged.append((c, None))
        for c, tmp in staged:
            if tmp is not None:
                os.replace(tmp, root / c.path)
            else:
                os.unlink(root / c.path)
            done.append(c)
    except OSError as err:
        _restore(root, done)
        for _, tmp in staged:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        _remove_dirs(root, made)
        name = getattr(err, "filename", None) or "a file"
        raise PatchError(f"could not write {name}: {err.strerror or err}; nothing was changed") from None
    return made


def _restore(root: Path, done: Sequence[FileChange]) -> None:
    """Put back the old bytes of changes already written (best effort, newest first)."""
    for c in reversed(done):
        target = root / c.path
        try:
            if c.old is None:
                target.unlink(missing_ok=True)
                continue
            try:
                _atomic_write(target, c.old, c.mode)
            except OSError:  # the rename itself fails: write in place
                target.write_bytes(c.old)
                os.chmod(target, c.mode)
        except OSError:
            pass


def _make_parents(root: Path, rel: str) -> list[str]:
    made = []
    parent = Path(rel).parent
    for folder in reversed([parent, *parent.parents][:-1]):  # shallowest first, "." excluded
        if not (root / folder).exists():
            (root / folder).mkdir()
            made.append(folder.as_posix())
    return made


def _remove_dirs(root: Path, dirs: Sequence[str]) -> None:
    for folder in reversed(dirs):
        try:
            (root / folder).rmdir()
        except OSError:
            pass  # not empty any more: keep it


# --- apply, journal, undo -------------------------------------------------------------------

def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise PatchError(f"cannot read {path}: {err.strerror}") from None


def apply_patch(root: Path, patch: Patch, *, state_dir: Path) -> AppliedPatch:
    """Write the patch atomically (all files or none), journal it for undo, keep the .diff."""
    root = Path(os.path.realpath(root))
    if patch.is_empty:
        raise PatchError("the patch changes nothing; nothing was written")
    for c in patch.changes:
        check_path(root, c.path)
        if _read_or_none(root / c.path) != c.old:
            raise PatchError(f"{c.path} changed since the patch was made; nothing was written — run dllm again")
    patch_file = save_patch(patch, state_dir)
    with _sigint_deferred() as interrupted:
        applied = _write_and_journal(root, patch, state_dir, patch_file)
        if interrupted():  # Ctrl-C during the writes: roll back, then stop
            _restore(root, patch.changes)
            _remove_dirs(root, applied.dirs_created)
            applied.journal.unlink(missing_ok=True)
            raise KeyboardInterrupt
    return applied


@contextmanager
def _sigint_deferred():
    """Ctrl-C inside the block is recorded, not raised, so the writes and the journal are never
    left half done; the block asks `interrupted()` at its end. (Main thread only: elsewhere
    signals do not arrive.)"""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield lambda: bool(received)
    finally:
        signal.signal(signal.SIGINT, previous)


def _write_and_journal(root: Path, patch: Patch, state_dir: Path, patch_file: Path) -> AppliedPatch:
    made = _write_all(root, patch.changes)
    entry_id = f"{time.time_ns():020d}"
    entry = {"version": 1, "id": entry_id, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "root": str(root), "patch": str(patch_file), "dirs_created": made,
             "files": [{"path": c.path, "mode": c.mode,
                        "before": None if c.old is None else base64.b64encode(c.old).decode("ascii"),
                        "after_sha256": None if c.new is None else _sha(c.new)} for c in patch.changes]}
    journal = Path(state_dir) / "journal" / f"{entry_id}.json"
    try:
        journal.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(journal, json.dumps(entry, indent=1).encode("utf-8"), 0o644)
    except OSError as err:
        _restore(root, patch.changes)
        _remove_dirs(root, made)
        raise PatchError(f"cannot write the undo journal {journal}: {err.strerror}; nothing was changed — "
                         "set DLLM_STATE_DIR to a writable folder") from None
    return AppliedPatch(patch, journal, patch_file, entry_id, tuple(made))


def _last_journal(state_dir: Path) -> Path:
    folder = Path(state_dir) / "journal"
    entries = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not entries:
        raise PatchError(f"nothing to undo: no patch applied by dllm is recorded in {folder}")
    return entries[-1]


def undo(root: Path, *, state_dir: Path) -> AppliedPatch:
    """Restore the exact bytes from before the last applied patch; refuse if its files changed since."""
    root = Path(os.path.realpath(root))
    path = _last_journal(state_dir)
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        records = entry["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PatchError(f"the undo journal {path} is unreadable ({err}); move it away to undo older patches")
    if entry.get("root") != str(root):
        raise PatchError(f"the last dllm patch was applied in {entry.get('root')}, not {root}; "
                         "run dllm undo there")
    changes = []
    for rec in records:
        rel = check_path(root, rec["path"])
        current = _read_or_none(root / rel)
        expected = rec["after_sha256"]
        if (current is None) != (expected is None) or (current is not None and _sha(current) != expected):
            raise PatchError(f"cannot undo: {rel} changed since dllm applied patch {entry['id']}; "
                             "nothing was restored — undo those changes by hand or with git")
        before = None if rec["before"] is None else base64.b64decode(rec["before"])
        changes.append(FileChange(rel, current, before, int(rec["mode"])))
    done = path.parent / "undone" / path.name
    with _sigint_deferred():  # a Ctrl-C here waits: the restore takes milliseconds, then it is done
        _write_all(root, changes)
        _remove_dirs(root, entry.get("dirs_created", []))
        done.parent.mkdir(exist_ok=True)
        os.replace(path, done)
    return AppliedPatch(Patch(tuple(changes), unified_diff(changes)), done, Path(entry.get("patch", "")),
                        entry["id"])


# --- git commit -----------------------------------------------------------------------------

def commit_patch(root: Path, applied: AppliedPatch, message: str, model_name: str) -> str:
    """Commit exactly the patch's files (other staged changes stay staged); returns the sha."""
    import git  # GitPython: imported here so that nothing else pays for it

    try:
        repo = git.Repo(root, search_parent_directories=True)
        top = Path(os.path.realpath(repo.working_tree_dir))
        rels = [os.path.relpath(Path(os.path.realpath(root)) / c.path, top) for c in applied.patch.changes]
        present = [r for r, c in zip(rels, applied.patch.changes) if c.new is not None]
        gone = [r for r, c in zip(rels, applied.patch.changes) if c.new is None and repo.git.ls_files("--", r)]
        if present:
            repo.git.add("--", *present)
        if not present and not gone:
            raise DllmError("nothing to commit: the patch only touched files git does not track")
        text = f"{message.strip()}\n\nGenerated-by: dllm ({model_name})\n"
        repo.git.commit("--only", "-m", text, "--", *present, *gone)
        return repo.head.commit.hexsha
    except git.GitCommandError as err:
        detail = (err.stderr or str(err)).strip().splitlines()
        raise DllmError(f"git commit failed: {detail[-1] if detail else err}; the files are changed but "
                        "not committed") from None
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise DllmError(f"--commit needs a git repository, and {root} is not in one") from None
