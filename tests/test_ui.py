"""ui.py: the streams (data on stdout byte-exact when piped), piped stdin, the confirmation prompt
and free-text questions (driven through a prompt-toolkit pipe)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from dllm_cli.ui import Ui, read_stdin

DIFF = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n"


def make_ui(typed: str | None = None, terminal: bool = False):
    err = Console(file=io.StringIO(), width=80, force_terminal=terminal)
    out = Console(file=io.StringIO(), width=80, force_terminal=terminal)
    ui = Ui(err, out, live=False, can_confirm=typed is not None)
    pipe = None
    if typed is not None:
        from prompt_toolkit.input import create_pipe_input
        from prompt_toolkit.output import DummyOutput

        pipe = create_pipe_input()
        ui.prompt_input = pipe.__enter__()
        ui.prompt_input.send_text(typed)
        ui.prompt_output = DummyOutput()
    return ui, pipe


def test_data_is_byte_exact_on_a_pipe_and_coloured_on_a_terminal():
    ui, _ = make_ui()
    ui.data(DIFF, syntax="diff")
    assert ui.out.file.getvalue() == DIFF
    ui, _ = make_ui(terminal=True)
    ui.data(DIFF, syntax="diff")
    assert "\x1b[" in ui.out.file.getvalue()
    ui.write_json({"a": "é"})
    assert ui.out.file.getvalue().endswith('{"a": "é"}\n')


@pytest.mark.parametrize("typed, expected", [
    ("y\n", "yes"), ("YES\n", "yes"), ("maybe\nn\n", "no"), ("e\n", "edit"), ("s\n", "save"), ("\x04", "no"),
])
def test_confirm(typed, expected):
    ui, pipe = make_ui(typed)
    try:
        assert ui.confirm() == expected
    finally:
        pipe.__exit__(None, None, None)


def test_ask_text_keeps_the_default_on_enter():
    ui, pipe = make_ui("\n")
    try:
        assert ui.ask_text("save to", "dllm.patch") == "dllm.patch"
    finally:
        pipe.__exit__(None, None, None)


def test_ask_text_is_not_prefilled_so_a_typed_path_is_the_whole_answer():
    ui, pipe = make_ui("fix.diff\n")
    try:
        assert ui.ask_text("save to", "dllm.patch") == "fix.diff"
    finally:
        pipe.__exit__(None, None, None)


class FakeStream(io.BytesIO):
    def __init__(self, data: bytes, tty: bool) -> None:
        super().__init__(data)
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty

    def read(self, *args):
        assert not self.tty, "a terminal must never be read"
        return super().read(*args)


def test_read_stdin_only_when_piped_and_capped():
    assert read_stdin(FakeStream(b"typed", tty=True)) == (None, None)
    assert read_stdin(FakeStream(b"log line\n", tty=False)) == ("log line\n", None)
    assert read_stdin(FakeStream(b"  \n", tty=False)) == (None, None)
    text, note = read_stdin(FakeStream(b"x" * 100, tty=False), cap=10)
    assert text == "x" * 10 and "cut" in note
    assert read_stdin(None) == (None, None)
