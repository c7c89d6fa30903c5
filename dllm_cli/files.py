"""Reading a file of the work tree safely: regular files only, never more than a cap.

Knows: how to tell a regular file from a FIFO, socket, device or directory *before* opening it
(`stat`, which never blocks), how to open without blocking or following a last symlink when
asked, and how to read at most `cap` bytes (a file that grows past the cap while it is read is
still refused). Every file dllm reads from a work tree (context, the files a patch edits, the
re-check under the apply lock, undo) goes through `read_regular`.
Must not: write files, import torch, or decide what a refusal means for the user (callers turn
`Unreadable` into their own message).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class Unreadable(Exception):
    """A path that exists but is not read: not a regular file, or over the cap. `reason` is a
    short phrase for the user ("a FIFO (named pipe), not a regular file", "huge (300 KiB > 256 KiB)")."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def kind(mode: int) -> str:
    """What a non-regular `st_mode` is, in words."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def not_regular(path: Path | str, follow: bool = True) -> str | None:
    """None for a regular file or a missing path, else what it is ("a FIFO (named pipe)")."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return None  # unreadable for another reason: the read says which
    return None if stat.S_ISREG(st.st_mode) else kind(st.st_mode)


def _human(size: int) -> str:
    return f"{size // (1024 * 1024)} MiB" if size >= 4 * 1024 * 1024 else f"{size // 1024} KiB"


def read_regular(path: Path | str, cap: int, *, follow: bool = True) -> bytes:
    """The bytes of a regular file of at most `cap` bytes. FileNotFoundError when it is missing
    (other OSErrors pass through); `Unreadable` for a FIFO, socket, device, directory (or a
    symlink with `follow=False`), or a file over `cap`. A FIFO is never opened for reading."""
    st = os.stat(path) if follow else os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise Unreadable(path, f"{kind(st.st_mode)}, not a regular file")
    if st.st_size > cap:
        raise Unreadable(path, f"huge ({_human(st.st_size)} > {_human(cap)})")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode):  # swapped for something else between stat and open
            raise Unreadable(path, f"{kind(now.st_mode)}, not a regular file")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:
                raise Unreadable(path, f"huge (over {_human(cap)})")
        return b"".join(chunks)
    finally:
        os.close(fd)
