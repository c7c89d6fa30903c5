"""What the terminal can do: the two streams (people read stderr, programs read stdout),
whether a live view may be drawn and whether we may ask a question."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass


@dataclass
class Ui:
    """The two streams and what they allow: people read stderr, programs read stdout."""

    err: object  # rich Console on stderr
    out: object  # rich Console on stdout
    live: bool  # draw the live canvas (stderr is an interactive terminal, not --no-live)
    can_confirm: bool  # stdin and stderr are terminals: we may ask
    json: bool = False
    prompt_input: object = None  # prompt-toolkit Input/Output for the confirm prompt (None: the
    prompt_output: object = None  # terminal; tests pass a pipe input and a dummy output)

    @classmethod
    def detect(cls, *, json_out: bool = False, no_live: bool = False) -> "Ui":
        from .render import make_console

        err, out = make_console(stderr=True), make_console(stderr=False)
        live = err.is_interactive and not no_live
        can_confirm = isatty(sys.stdin) and isatty(sys.stderr)  # TERM=dumb may still answer
        return cls(err, out, live, can_confirm, json_out)

    def say(self, message: str, style: str | None = None) -> None:
        self.err.print(message, style=style, markup=False, highlight=False)


def isatty(stream) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False


def write_json(ui: Ui, data) -> None:
    """One JSON object, one line, on stdout."""
    ui.out.file.write(json.dumps(data, ensure_ascii=False) + "\n")
    ui.out.file.flush()
