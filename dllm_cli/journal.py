"""A patch on disk: saved patches, the atomic apply, the undo journal, and `--commit`.

Knows: the state dir (`state_dir_for`: $DLLM_STATE_DIR, else `<git dir>/dllm` (a worktree's own
git dir), else `$XDG_STATE_HOME/dllm/<name>-<hash>`) and its layout: `patches/<UTC time>-<sha8>.diff`
(every patch, applied or not), `journal/<ns>.json` (the undo stack: pre-apply bytes in base64,
post-apply sha256, modes, created directories), `journal/undone/` (journals already undone);
writing all files or none (temp files, then renames, rolled back on failure); the checks before
a write (every file still as the patch was built from).

Ctrl-C while the files and the journal are written is held until they are done, then the
apply is rolled back and KeyboardInterrupt raised: the tree is never left half-patched. An
undo, once it starts writing, finishes (a Ctrl-C then is ignored).

Must not: import torch, rich, typer or prompt_toolkit; git goes through repo.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from . import repo
from .errors import PatchError
from .patch import FileChange, Patch, check_path, unified_diff


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


# --- state dir and saved patches ------------------------------------------------------------

def state_dir_for(root: Path) -> Path:
    """$DLLM_STATE_DIR, else `<git dir>/dllm` (like `git rev-parse --git-dir`), else an XDG dir."""
    env = os.environ.get("DLLM_STATE_DIR")
    if env:
        return Path(env).expanduser()
    git_dir = repo.git_dir(Path(root))
    if git_dir is not None:
        return git_dir / "dllm"
    real = os.path.realpath(root)
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "dllm" / f"{Path(real).name or 'root'}-{hashlib.sha256(real.encode()).hexdigest()[:12]}"


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
def _sigint_deferred() -> Iterator[Callable[[], bool]]:
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
        raise PatchError(f"the undo journal {path} is unreadable ({err}); move it away to undo older "
                         "patches") from None
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
    changes = applied.patch.changes
    text = f"{message.strip()}\n\nGenerated-by: dllm ({model_name})\n"
    return repo.commit(root, [c.path for c in changes if c.new is not None],
                       [c.path for c in changes if c.new is None], text)
