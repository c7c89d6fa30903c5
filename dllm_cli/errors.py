"""The one error family of dllm.

Every error meant for a user is a `DllmError` whose message is one line that names the
file (and tensor, option, path...) involved and says what to do. The CLI catches
`DllmError` once, at the edge, and maps `exit_code` to the process exit status.
Internal invariants use `assert`; they are bugs, not user errors.
Must not: import anything (every module imports this one), or print.
"""

from __future__ import annotations


class DllmError(Exception):
    """Base class of every error meant for a user."""

    exit_code = 1


class UsageError(DllmError):
    """Bad option values or combinations (exit 2)."""

    exit_code = 2


class CheckpointError(DllmError):
    """A checkpoint folder that cannot be loaded: missing, malformed, mismatched."""


class TokenizerError(CheckpointError):
    """Tokenizer or chat-template files that are missing or inconsistent."""


class OutOfMemoryError(DllmError):
    """The model would not fit on the chosen device."""


class PatchError(DllmError):
    """A patch that is refused or cannot be applied (exit 3)."""

    exit_code = 3


class NotConfirmed(DllmError):
    """The user declined, or there was no TTY to ask and no --yes (exit 4)."""

    exit_code = 4


class Interrupted(DllmError):
    """Ctrl-C at a point where something was already changed: the message says what (exit 130)."""

    exit_code = 130
