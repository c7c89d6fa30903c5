"""A patch on disk: saved patches, the crash-safe apply, the undo journal, the lock, recovery.

Knows: the state dir (`state_dir_for`: $DLLM_STATE_DIR, else `<git dir>/dllm` (a worktree's own
git dir), else `$XDG_STATE_HOME/dllm/<name>-<hash>`) and its layout:
  patches/<UTC time>-<sha8>.diff   every patch, applied or not
  lock                             held (filelock: flock on POSIX) across check-and-write, so one
                                   dllm writes in a repository at a time
  txn.json                         the write-ahead record of the apply or undo in flight
  journal/<ns>.json                the undo stack: pre-apply bytes in base64, post-apply sha256,
                                   modes, created directories, the commit made by --commit
  journal/undone/                  journal entries already undone
  interrupted/<ns>.json            a txn.json that recovery could not resolve (kept for the user)

An apply, as a database does it: under the lock, every file's current bytes are compared with
what the patch was built from (a moved base is refused, exit 3); then txn.json (old and new
bytes of every file, the directories to create) is written and fsynced with its directory
BEFORE anything in the tree changes; then every new file goes to `.dllm-<id>-<n>.tmp` beside its
target (fsynced), then the renames and unlinks (directories fsynced); then the journal entry is
written and txn.json removed, the mark that the apply is complete. An undo is the same, from the
journal entry. A txn.json found later (the process was killed, the machine stopped) is resolved
by `recover`, which every command that touches the tree calls first: the record is complete, so
it rolls the files the rest of the way to where the record says (an apply forward, a rollback or
an undo back), removes the temp files, and says which; a file that is neither as before nor as
after (edited since) stops it, and the record is moved to interrupted/.

Signals: Ctrl-C, SIGTERM and SIGHUP (unless ignored, as under nohup) are held while an apply
writes; at its end the apply is rolled back (journaled too) and the signal is delivered again
(KeyboardInterrupt for Ctrl-C): the tree is as before. An undo, once it writes, finishes.
Test seam: DLLM_TEST_PAUSE_AT=<stage> (stages in PAUSE_STAGES) makes dllm print
`dllm-test: paused at <stage>` on stderr there and wait until stdin gives a line or ends, or a
held signal arrives; tests kill it at that point. Nothing else reads it.

Must not: import torch, rich, typer or prompt_toolkit; git goes through repo.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import repo
from .durable import (
    Held,
    atomic_write,
    deliver,
    fsync_dir,
    locked,
    pause,
    plan_parents,
    remove_dirs,
    signals_held,
    write_new,
)
from .errors import Interrupted, PatchError
from .patch import FileChange, Patch, check_path, read_current, unified_diff

PAUSE_STAGES = ("apply:before-lock", "apply:journaled", "apply:staged", "apply:renamed-1", "apply:renamed",
                "apply:recorded", "apply:rolling-back", "rollback:staged", "rollback:renamed-1",
                "undo:journaled", "undo:staged", "undo:renamed-1", "undo:renamed")


@dataclass(frozen=True)
class AppliedPatch:
    patch: Patch
    journal: Path  # the journal entry (after undo: where it was moved)
    patch_file: Path  # the saved .diff
    id: str
    dirs_created: tuple[str, ...] = ()  # folders the apply made (relative, deepest last)
    commit: str | None = None  # the commit --commit made of it
    recovered: tuple[str, ...] = ()  # what recovery said before this apply or undo (stderr lines)

    @property
    def files(self) -> tuple[str, ...]:
        return self.patch.files


@dataclass(frozen=True)
class Recovered:
    """An interrupted apply, rollback or undo that `recover` finished."""

    op: str  # "apply" (rolled forward) | "rollback" (rolled back) | "undo" (restored)
    files: tuple[str, ...]
    patch_file: str

    def message(self) -> str:
        names = ", ".join(self.files[:5]) + (f" and {len(self.files) - 5} more" if len(self.files) > 5 else "")
        if self.op == "apply":
            return (f"an apply was interrupted (patch {self.patch_file}); finished it (rolled forward): "
                    f"{names} now hold the patch — `dllm undo` reverts it")
        if self.op == "rollback":
            return f"an apply was interrupted while it was rolled back; finished the rollback: {names} are as before"
        return f"an undo was interrupted; finished it: {names} are restored"


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
        atomic_write(target, patch.diff.encode("utf-8", "surrogateescape"), 0o644)
    except OSError as err:
        raise PatchError(f"cannot save the patch under {folder}: {err.strerror}; "
                         "set DLLM_STATE_DIR to a writable folder") from None
    return target


# --- the transaction record ---------------------------------------------------------------------

def _sha(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def _txn_path(state_dir: Path) -> Path:
    return Path(state_dir) / "txn.json"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=1).encode("utf-8"), 0o644)


def _temp_for(root: Path, txn: dict[str, Any], n: int) -> Path:
    return (root / txn["files"][n]["path"]).parent / f".dllm-{txn['id']}-{n}.tmp"


def _current_sha(root: Path, rel: str) -> str | None:
    return _sha(read_current(root, rel)[0])


class _Conflict(Exception):
    def __init__(self, paths: list[str]) -> None:
        super().__init__(", ".join(paths))
        self.paths = paths


def _roll(root: Path, txn: dict[str, Any], held: Held | None, *, verify: bool = True) -> None:
    """Bring every file of `txn` to its target side ("new" going forward, "old" going back):
    temp files first (fsynced), then the renames and unlinks; a file already there is left."""
    to, frm = ("new", "old") if txn["direction"] == "forward" else ("old", "new")
    stage = "rollback" if txn["op"] == "apply" and to == "old" else txn["op"]
    todo: list[int] = []
    conflicts: list[str] = []
    for n, f in enumerate(txn["files"]):
        rel = check_path(root, f["path"])
        if verify:
            now = _current_sha(root, rel)
            if now == f[f"{to}_sha"]:
                continue
            if now != f[f"{frm}_sha"]:
                conflicts.append(rel)
                continue
        todo.append(n)
    if conflicts:
        raise _Conflict(conflicts)
    if txn["direction"] == "forward":
        for folder in txn.get("dirs_created", []):
            (root / folder).mkdir(exist_ok=True)
    folders: set[Path] = set()
    for n in todo:
        f = txn["files"][n]
        data = _unb64(f[to])
        if f[f"{to}_sha"] is not None:
            assert data is not None and _sha(data) == f[f"{to}_sha"], "the record's bytes do not match their hash"
            write_new(_temp_for(root, txn, n), data, int(f["mode"]))
            folders.add((root / f["path"]).parent)
    for folder in folders:
        fsync_dir(folder)
    pause(f"{stage}:staged", held)
    for k, n in enumerate(todo):
        f = txn["files"][n]
        target = root / f["path"]
        if f[f"{to}_sha"] is None:
            target.unlink(missing_ok=True)
        else:
            os.replace(_temp_for(root, txn, n), target)
        folders.add(target.parent)
        if k == 0:
            pause(f"{stage}:renamed-1", held)
    for folder in folders:
        fsync_dir(folder)
    if txn["direction"] == "back":
        remove_dirs(root, txn.get("dirs_created", []))


def _clean_temps(root: Path, txn: dict[str, Any]) -> None:
    for n in range(len(txn["files"])):
        try:
            _temp_for(root, txn, n).unlink(missing_ok=True)
        except OSError:
            pass


def _entry_from(txn: dict[str, Any]) -> dict[str, Any]:
    """The journal entry (undo stack) of a completed apply."""
    return {"version": 1, "id": txn["id"], "time": txn["time"], "root": txn["root"], "patch": txn["patch"],
            "dirs_created": txn.get("dirs_created", []), "commit": None,
            "files": [{"path": f["path"], "mode": f["mode"], "before": f["old"], "after_sha256": f["new_sha"]}
                      for f in txn["files"]]}


def _record_entry(state_dir: Path, txn: dict[str, Any], held: Held | None = None) -> Path:
    """Write the completed apply's journal entry (once)."""
    path = Path(state_dir) / "journal" / f"{txn['id']}.json"
    if not path.exists():
        _write_json(path, _entry_from(txn))
    pause("apply:recorded", held)
    return path


def _finish(root: Path, state_dir: Path, txn: dict[str, Any]) -> Path | None:
    """After the files are where the record says: the journal step, then txn.json goes (the mark
    that the transaction is complete)."""
    entry_path: Path | None = None
    if txn["op"] == "apply" and txn["direction"] == "forward":
        entry_path = _record_entry(state_dir, txn)
    elif txn["op"] == "apply":  # rolled back: no entry may stay
        (Path(state_dir) / "journal" / f"{txn['id']}.json").unlink(missing_ok=True)
    elif txn["op"] == "undo":
        src = Path(txn["entry"])
        entry_path = src.parent / "undone" / src.name
        if src.exists():
            entry_path.parent.mkdir(exist_ok=True)
            os.replace(src, entry_path)
            fsync_dir(src.parent)
            fsync_dir(entry_path.parent)
    _clean_temps(root, txn)
    _txn_path(state_dir).unlink(missing_ok=True)
    fsync_dir(Path(state_dir))
    return entry_path


def _resolve(root: Path, state_dir: Path) -> Recovered | None:
    """Finish the transaction a killed dllm left (lock held)."""
    path = _txn_path(state_dir)
    for stale in Path(state_dir).glob(".dllm-*.tmp"):
        stale.unlink(missing_ok=True)
    journal_dir = Path(state_dir) / "journal"
    if journal_dir.is_dir():
        for stale in journal_dir.glob(".dllm-*.tmp"):
            stale.unlink(missing_ok=True)
    if not path.exists():
        return None
    try:
        txn = json.loads(path.read_text(encoding="utf-8"))
        txn["files"], txn["id"], txn["op"], txn["direction"]  # noqa: B018 (the fields must be there)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PatchError(f"the record of an interrupted apply {path} is unreadable ({err}); look at it and "
                         "move it away to go on") from None
    txn_root = Path(txn.get("root", root))
    try:
        _roll(txn_root, txn, None)
    except _Conflict as conflict:
        kept = Path(state_dir) / "interrupted" / f"{txn['id']}.json"
        kept.parent.mkdir(exist_ok=True)
        os.replace(path, kept)
        _clean_temps(txn_root, txn)
        raise PatchError(f"an interrupted dllm {txn['op']} could not be finished: {', '.join(conflict.paths)} "
                         "changed since (neither as before nor as after the patch); nothing more was "
                         f"written — the record, with both versions of every file, is kept at {kept}") from None
    except OSError as err:
        raise PatchError(f"an interrupted dllm {txn['op']} could not be finished: {err.strerror or err} "
                         f"({getattr(err, 'filename', '') or ''}); the record stays at {path} and the next "
                         "dllm command tries again") from None
    _finish(txn_root, state_dir, txn)
    op = "undo" if txn["op"] == "undo" else ("apply" if txn["direction"] == "forward" else "rollback")
    return Recovered(op, tuple(f["path"] for f in txn["files"]), str(txn.get("patch", "")))


def recover(root: Path, state_dir: Path) -> Recovered | None:
    """Resolve an apply or undo a killed dllm left half done (see the module docstring); None when
    there is none. Cheap when there is nothing to do: one stat."""
    if not _txn_path(state_dir).exists():
        return None
    with locked(state_dir):
        return _resolve(Path(os.path.realpath(root)), state_dir)


# --- apply --------------------------------------------------------------------------------------

def apply_patch(root: Path, patch: Patch, *, state_dir: Path) -> AppliedPatch:
    """Write the patch crash-safely (all files or none, see the module docstring), journal it
    for undo, keep the .diff. PatchError (exit 3) if a file moved from the patch's base."""
    root = Path(os.path.realpath(root))
    if patch.is_empty:
        raise PatchError("the patch changes nothing; nothing was written")
    for c in patch.changes:
        check_path(root, c.path)
    patch_file = save_patch(patch, state_dir)
    pause("apply:before-lock")
    applied: AppliedPatch | None = None
    with signals_held() as held:
        with locked(state_dir, held):
            found = _resolve(root, state_dir)
            _check_base(root, patch)
            if not held():  # a signal before anything was written: nothing to do or undo
                applied = _transact(root, patch, Path(state_dir), patch_file, held)
    if applied is None:  # rolled back (or never started) because of a held signal
        deliver(held.signals[0] if held.signals else signal.SIGINT)
    assert applied is not None
    if held():  # the signal came after the point of no return (txn.json removed): say what is done
        err = Interrupted(f"stopped by {signal.Signals(held.signals[0]).name} just after the patch was applied to "
                          f"{', '.join(patch.files)}; `dllm undo` reverts it")
        err.exit_code = 130 if held.signals[0] == signal.SIGINT else 128 + held.signals[0]
        raise err
    return replace(applied, recovered=(found.message(),) if found else ())


def _check_base(root: Path, patch: Patch) -> None:
    moved = [c.path for c in patch.changes if read_current(root, c.path)[0] != c.old]
    if moved:
        more = f" (and {len(moved) - 1} more)" if len(moved) > 1 else ""
        raise PatchError(f"{moved[0]}{more} changed since the patch was made from it (another dllm apply, an "
                         "editor or git wrote it); nothing was written — make the patch again from the "
                         "current files")


def _transact(root: Path, patch: Patch, state_dir: Path, patch_file: Path, held: Held) -> AppliedPatch | None:
    """The apply (lock held): the record, the writes, the entry; None when a held signal made it
    roll back."""
    dirs: list[str] = []
    for c in patch.changes:
        if c.new is not None:
            plan_parents(root, c.path, dirs)
    entry_id = f"{time.time_ns():020d}"
    txn: dict[str, Any] = {
        "version": 2, "op": "apply", "direction": "forward", "id": entry_id,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "root": str(root), "patch": str(patch_file),
        "dirs_created": dirs,
        "files": [{"path": c.path, "mode": c.mode, "old": _b64(c.old), "old_sha": _sha(c.old),
                   "new": _b64(c.new), "new_sha": _sha(c.new)} for c in patch.changes]}
    try:
        _write_json(_txn_path(state_dir), txn)
    except OSError as err:
        _txn_path(state_dir).unlink(missing_ok=True)
        raise PatchError(f"cannot write the apply record in {state_dir}: {err.strerror}; nothing was changed — "
                         "set DLLM_STATE_DIR to a writable folder") from None
    pause("apply:journaled", held)
    try:
        _roll(root, txn, held, verify=False)
        pause("apply:renamed", held)
        if not held():
            _record_entry(state_dir, txn, held)
        if held():  # Ctrl-C, SIGTERM or SIGHUP while writing: roll back, then the caller delivers it
            _rollback(root, state_dir, txn, held)
            return None
        entry = _finish(root, state_dir, txn)
    except OSError as err:
        name = getattr(err, "filename", None) or "a file"
        try:
            _rollback(root, state_dir, txn, held)
        except OSError:
            raise PatchError(f"could not write {name}: {err.strerror or err}; rolling back failed too — the "
                             f"record stays in {_txn_path(state_dir)} and the next dllm command restores the "
                             "files") from None
        raise PatchError(f"could not write {name}: {err.strerror or err}; nothing was changed") from None
    assert entry is not None
    return AppliedPatch(patch, entry, patch_file, entry_id, tuple(dirs))


def _rollback(root: Path, state_dir: Path, txn: dict[str, Any], held: Held) -> None:
    txn["direction"] = "back"
    _write_json(_txn_path(state_dir), txn)
    pause("apply:rolling-back", held)
    try:
        _roll(root, txn, held)
    except _Conflict as conflict:  # a file was written by someone else in the meantime
        kept = Path(state_dir) / "interrupted" / f"{txn['id']}.json"
        kept.parent.mkdir(exist_ok=True)
        os.replace(_txn_path(state_dir), kept)
        _clean_temps(root, txn)
        raise PatchError(f"the apply could not be rolled back: {', '.join(conflict.paths)} changed meanwhile; "
                         f"the record, with both versions of every file, is kept at {kept}") from None
    _finish(root, state_dir, txn)


# --- undo ---------------------------------------------------------------------------------------

def _last_journal(state_dir: Path) -> Path:
    folder = Path(state_dir) / "journal"
    entries = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not entries:
        raise PatchError(f"nothing to undo: no patch applied by dllm is recorded in {folder}")
    return entries[-1]


def _read_entry(path: Path) -> dict[str, Any]:
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        entry["files"], entry["id"]  # noqa: B018 (the fields must be there)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PatchError(f"the undo journal {path} is unreadable ({err}); move it away to undo older "
                         "patches") from None
    return dict(entry)


def undo(root: Path, *, state_dir: Path) -> AppliedPatch:
    """Restore the exact bytes from before the last applied patch; refuse if its files changed since."""
    root = Path(os.path.realpath(root))
    with signals_held() as held, locked(state_dir):
        found = _resolve(root, state_dir)
        path = _last_journal(state_dir)
        entry = _read_entry(path)
        if entry.get("root") != str(root):
            raise PatchError(f"the last dllm patch was applied in {entry.get('root')}, not {root}; "
                             "run dllm undo there")
        changes, files = [], []
        for rec in entry["files"]:
            rel = check_path(root, rec["path"])
            current = read_current(root, rel)[0]
            expected = rec["after_sha256"]
            if _sha(current) != expected:
                raise PatchError(f"cannot undo: {rel} changed since dllm applied patch {entry['id']}; "
                                 "nothing was restored — undo those changes by hand or with git")
            before = _unb64(rec["before"])
            changes.append(FileChange(rel, current, before, int(rec["mode"])))
            files.append({"path": rel, "mode": int(rec["mode"]), "old": rec["before"], "old_sha": _sha(before),
                          "new": None, "new_sha": expected})
        txn = {"version": 2, "op": "undo", "direction": "back", "id": entry["id"], "time": entry.get("time"),
               "root": str(root), "patch": entry.get("patch", ""), "entry": str(path),
               "dirs_created": entry.get("dirs_created", []), "files": files}
        _write_json(_txn_path(state_dir), txn)
        pause("undo:journaled", held)
        _roll(root, txn, held, verify=False)  # a held signal is dropped: the undo finishes
        pause("undo:renamed", held)
        done = _finish(root, state_dir, txn)
    assert done is not None
    return AppliedPatch(Patch(tuple(changes), unified_diff(changes)), done, Path(entry.get("patch", "")),
                        entry["id"], commit=entry.get("commit"), recovered=(found.message(),) if found else ())


# --- git commit -----------------------------------------------------------------------------

def commit_patch(root: Path, applied: AppliedPatch, message: str, model_name: str) -> str:
    """Commit exactly the patch's files (other staged changes stay staged); returns the sha and
    records it in the journal entry, so `dllm undo` can revert the commit too."""
    changes = applied.patch.changes
    text = f"{message.strip()}\n\nGenerated-by: dllm ({model_name})\n"
    sha = repo.commit(root, [c.path for c in changes if c.new is not None],
                      [c.path for c in changes if c.new is None], text)
    record_commit(applied, sha)
    return sha


def record_commit(applied: AppliedPatch, sha: str) -> None:
    """Write the commit's sha into the applied patch's journal entry (atomically)."""
    path = applied.journal
    state_dir = path.parent.parent
    try:
        with locked(state_dir):
            entry = _read_entry(path)
            entry["commit"] = sha
            _write_json(path, entry)
    except (OSError, PatchError):
        pass  # the commit is made; only `dllm undo`'s revert of it is lost (it then says so)


def undone_entry(applied: AppliedPatch) -> dict[str, Any]:
    """The journal entry of an undone patch (for its commit message)."""
    return _read_entry(applied.journal)

