"""Durable file writes, the repository lock, held signals and the test seam: the primitives
journal.py builds its transactions from.

Knows: how to write a file so it survives a crash (write, fsync, rename, fsync the directory),
never through a symlink; the lock in the state dir (filelock: flock on POSIX, released by the
kernel when a killed process dies); which signals are held while files are written (Ctrl-C,
SIGTERM, SIGHUP, unless ignored) and how to deliver one afterwards; the test seam
DLLM_TEST_PAUSE_AT (journal.py's docstring lists the stages). Must not: know what a patch or a
journal entry is, import torch or any terminal library.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .errors import PatchError

LOCK_TIMEOUT = 30.0  # seconds to wait for another dllm's check-and-write
HELD_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


# --- durable writes -------------------------------------------------------------------------

def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the rename is still atomic
    finally:
        os.close(fd)


def write_new(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` (created or truncated, never through a symlink) and fsync it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o600)
    try:
        with os.fdopen(fd, "wb", closefd=False) as handle:
            handle.write(data)
            handle.flush()
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(target: Path, data: bytes, mode: int) -> None:
    """Replace `target` by `data` atomically and durably (temp file, fsync, rename, fsync dir)."""
    tmp = target.parent / f".dllm-{os.getpid()}-{time.time_ns()}.tmp"
    try:
        write_new(tmp, data, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def plan_parents(root: Path, rel: str, planned: list[str]) -> None:
    parent = Path(rel).parent
    for folder in reversed([parent, *parent.parents][:-1]):  # shallowest first, "." excluded
        name = folder.as_posix()
        if not (root / folder).exists() and name not in planned:
            planned.append(name)


def remove_dirs(root: Path, dirs: Sequence[str]) -> None:
    for folder in reversed(dirs):
        try:
            (root / folder).rmdir()
        except OSError:
            pass  # not empty any more, or gone: keep going


# --- the lock, held signals and the test seam -----------------------------------------------

@contextmanager
def locked(state_dir: Path, stop: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """Hold `<state dir>/lock` (one dllm writes in a repository at a time). `stop`: give up
    waiting when it turns true (a held signal)."""
    from filelock import FileLock, Timeout

    try:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PatchError(f"cannot create the state dir {state_dir}: {err.strerror}; "
                         "set DLLM_STATE_DIR to a writable folder") from None
    lock = FileLock(str(Path(state_dir) / "lock"))
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            lock.acquire(timeout=0.1)
            break
        except Timeout:
            if stop():
                raise KeyboardInterrupt from None
            if time.monotonic() > deadline:
                raise PatchError(f"another dllm is writing in this repository (the lock {lock.lock_file} has "
                                 f"been held for {LOCK_TIMEOUT:.0f} s); try again when it has finished") from None
        except OSError as err:
            raise PatchError(f"cannot take the lock {lock.lock_file}: {err.strerror or err}") from None
    try:
        yield
    finally:
        lock.release()


class Held:
    """Signals received while held, in order."""

    def __init__(self) -> None:
        self.signals: list[int] = []

    def __call__(self) -> bool:
        return bool(self.signals)


@contextmanager
def signals_held() -> Iterator[Held]:
    """Ctrl-C, SIGTERM and SIGHUP inside the block are recorded, not acted on (a signal the
    process ignores stays ignored). Main thread only: elsewhere signals do not arrive."""
    held = Held()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    previous: dict[int, Any] = {}
    for signum in HELD_SIGNALS:
        current = signal.getsignal(signum)
        if current is signal.SIG_IGN:
            continue
        previous[signum] = current
        signal.signal(signum, lambda s, frame: held.signals.append(s))
    try:
        yield held
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def deliver(signum: int) -> None:
    """Deliver a held signal now that its handler is back (the default action for SIG_DFL);
    KeyboardInterrupt if the handler returns."""
    handler = signal.getsignal(signum)
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), signum)
        time.sleep(1)  # the default action (termination) lands here
    raise KeyboardInterrupt


def pause(stage: str, held: Held | None = None) -> None:
    """The test seam (see the module docstring): waits for stdin, or for a signal held after the
    pause began."""
    wanted = os.environ.get("DLLM_TEST_PAUSE_AT")
    if not wanted or stage not in wanted.split(","):
        return
    before = len(held.signals) if held is not None else 0  # counted before the test can see the line
    stdin = sys.stdin.fileno() if sys.stdin is not None else -1
    os.write(2, f"dllm-test: paused at {stage}\n".encode())
    while held is None or len(held.signals) == before:
        if stdin < 0:
            time.sleep(0.05)
            continue
        try:
            ready, _, _ = select.select([stdin], [], [], 0.05)
        except (OSError, ValueError):
            return
        if ready:
            os.read(stdin, 4096)
            return
