"""All terminal I/O of dllm, through one object: the two streams (people read stderr, programs
read stdout), piped stdin, the confirmation prompt, free-text questions and $EDITOR.

Knows: Rich consoles and the colour rules (Rich honours NO_COLOR, FORCE_COLOR and TERM=dumb; an
interactive console is a TTY that is not dumb), whether a live view may be drawn and whether we
may ask (stdin and stderr are terminals), prompt-toolkit for questions, how to hand a text to
the user's editor. Rich and prompt-toolkit are imported when first used, so `dllm --help` stays
instant. Must not: import torch, or decide anything about the pipeline.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO, Union

from .errors import DllmError

if TYPE_CHECKING:
    from rich.console import Console

STDIN_CAP_BYTES = 64 * 1024  # piped stdin beyond this is cut (and said so)
PIPE_WIDTH = 200  # tables written to a pipe are not cut at 80 columns
ANSWERS = {"y": "yes", "yes": "yes", "n": "no", "no": "no", "e": "edit", "edit": "edit",
           "s": "save", "save": "save"}


def make_console(stderr: bool = True, file: TextIO | None = None) -> "Console":
    """A console on stderr (people) or stdout (data); Rich applies the colour env vars."""
    from rich.console import Console

    console = Console(stderr=stderr, file=file, highlight=False, soft_wrap=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console


def isatty(stream: Any) -> bool:
    try:
        return stream is not None and bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@dataclass
class Ui:
    """The two streams and what they allow: people read stderr, programs read stdout."""

    err: "Console"
    out: "Console"
    live: bool  # draw the live canvas (stderr is an interactive terminal, not --no-live)
    can_confirm: bool  # stdin and stderr are terminals: we may ask
    json: bool = False
    prompt_input: Any = None  # prompt-toolkit Input/Output for questions (None: the terminal;
    prompt_output: Any = None  # tests pass a pipe input and a dummy output)

    @classmethod
    def detect(cls, *, json_out: bool = False, no_live: bool = False) -> "Ui":
        err, out = make_console(stderr=True), make_console(stderr=False)
        live = err.is_interactive and not no_live
        can_confirm = isatty(sys.stdin) and isatty(sys.stderr)  # TERM=dumb may still answer
        return cls(err, out, live, can_confirm, json_out)

    # ---- stderr (people) ------------------------------------------------------------------

    def say(self, message: str, style: str | None = None) -> None:
        self.err.print(message, style=style, markup=False, highlight=False)

    # ---- stdout (data) --------------------------------------------------------------------

    def data(self, text: str, *, syntax: str | None = None) -> None:
        """Data on stdout: the exact text when piped (never colour codes), coloured on a terminal."""
        if not self.out.is_terminal:
            self.out.file.write(text if text.endswith("\n") or not text else text + "\n")
            self.out.file.flush()
            return
        from rich.text import Text

        from .render import printable

        if syntax:
            from rich.syntax import Syntax

            self.out.print(Syntax(printable(text), syntax, theme="ansi_dark", background_color="default"))
        else:
            self.out.print(Text(printable(text)))

    def write_json(self, data: Any) -> None:
        """One JSON object, one line, on stdout."""
        self.out.file.write(json.dumps(data, ensure_ascii=False) + "\n")
        self.out.file.flush()

    # ---- questions -------------------------------------------------------------------------

    def confirm(self, question: str = "Apply this patch?") -> str:
        """'yes' | 'no' | 'edit' | 'save' (on stderr). End of input (Ctrl-D) counts as 'no';
        Ctrl-C raises KeyboardInterrupt."""
        session = self._session()
        while True:
            try:
                answer = session.prompt(f"{question} [y]es / [n]o / [e]dit / [s]ave: ")
            except EOFError:
                return "no"
            choice = ANSWERS.get(answer.strip().lower())
            if choice:
                return choice

    def ask_text(self, question: str, default: str = "") -> str | None:
        """A line of text; an empty answer takes `default` (shown in brackets, never pre-filled,
        so what the user types is the whole answer); None on end of input or an empty answer
        without a default."""
        shown = f" [{default}]" if default else ""
        try:
            return self._session().prompt(f"{question}{shown}: ").strip() or default or None
        except EOFError:
            return None

    def _session(self) -> Any:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.output import create_output

        return PromptSession(input=self.prompt_input,
                             output=self.prompt_output or create_output(stdout=sys.stderr))

    def edit(self, text: str, suffix: str = ".diff") -> str:
        """`text` after the user edits it in $VISUAL / $EDITOR (vi if neither is set)."""
        command = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        with tempfile.TemporaryDirectory(prefix="dllm-edit-") as tmp:
            path = Path(tmp) / f"patch{suffix}"
            path.write_text(text, encoding="utf-8")
            try:
                done = subprocess.run([*shlex.split(command), str(path)])
            except OSError as exc:
                raise DllmError(f"could not start the editor {command!r} ({exc.strerror}); "
                                "set $EDITOR to an editor command") from None
            if done.returncode != 0:
                raise DllmError(f"the editor {command!r} exited with status {done.returncode}; "
                                "the patch was not applied")
            return path.read_text(encoding="utf-8")


# ---- stdin --------------------------------------------------------------------------------

Stream = Union[TextIO, BinaryIO]


def read_stdin(stream: Stream | None, cap: int = STDIN_CAP_BYTES) -> tuple[str | None, str | None]:
    """(text, note) from piped stdin; (None, None) when stdin is a terminal or empty.

    Reads only when `stream` is not a TTY, at most `cap` bytes (+1 to detect the cut)."""
    if stream is None or isatty(stream):
        return None, None
    raw = getattr(stream, "buffer", stream).read(cap + 1)
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8")
    note = None
    if len(data) > cap:
        data = data[:cap]
        note = f"piped input cut to its first {cap // 1024} KiB"
    text = data.decode("utf-8", errors="replace")
    return (text if text.strip() else None), note


def read_all_stdin() -> str:
    """The whole of piped stdin (a diff for `dllm apply -`); UsageError on a terminal."""
    from .errors import UsageError

    if isatty(sys.stdin):
        raise UsageError("FILE is '-' but stdin is a terminal; pipe a diff: git diff | dllm apply -")
    return sys.stdin.read()
