"""Everything dllm draws on a terminal: the live denoising view, the diff view, the
context tables (chat and infill mode), the load progress bar, and the confirmation prompt.

Knows: Rich and prompt-toolkit, terminal size, colour rules (Rich honours NO_COLOR,
FORCE_COLOR and TERM=dumb; an interactive console is a TTY that is not dumb). Draws on
the console it is given (stderr for people; stdout only for data). Model output is
untrusted: it is drawn as plain `Text` (never markup) with control characters made
visible. Must not import torch: it sees token ids as plain ints.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, Sequence

from rich.console import Console, Group
from rich.text import Text

from .errors import DllmError

MASK_GLYPH = "░"
LOW_CONFIDENCE = 0.5  # tokens committed below this are shaded
MAX_FPS = 15.0
LINE_PROGRESS_EVERY_S = 2.0  # one-line progress cadence when stderr is not a TTY
FOCUS_TAIL = 16  # positions shown after the last revealed one

STYLE_MASK = "grey42"
STYLE_NEW = "bold black on green"
STYLE_LOW = "yellow"
STYLE_STATUS = "cyan"

_CONTROL_PICTURES = {c: 0x2400 + c for c in range(32) if c not in (9, 10)} | {127: 0x2421}


def printable(text: str) -> str:
    """`text` with control characters (ESC included) shown as symbols, not obeyed."""
    return text.translate(_CONTROL_PICTURES)


PIPE_WIDTH = 200  # tables written to a pipe are not cut at 80 columns


def make_console(stderr: bool = True, file=None) -> Console:
    """A console on stderr (people) or stdout (data); Rich applies the colour env vars."""
    console = Console(stderr=stderr, file=file, highlight=False, soft_wrap=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console


# ---- partial canvases ---------------------------------------------------------------------

class TokenTexts:
    """Text of single token ids (cached), so a canvas with masks can be drawn in place.

    `hidden` ids (eos, pad...) draw as nothing. Byte-level pieces of one character may
    draw as U+FFFD until the final decode; the live view accepts that."""

    def __init__(self, decode: Callable[[list[int]], str], hidden: Iterable[int] = ()) -> None:
        self._decode = decode
        self._cache: dict[int, str] = {int(t): "" for t in hidden}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._cache[token_id] = printable(self._decode([token_id]))
        return text


def canvas_text(tokens: Sequence[int], texts: TokenTexts, mask_id: int, *,
                revealed: Iterable[int] = (), confidence: dict[int, float] | None = None,
                end: int | None = None) -> Text:
    """The canvas as styled text: masks dim, `revealed` highlighted, low confidence shaded."""
    new = set(revealed)
    confidence = confidence or {}
    out = Text()
    for pos, tok in enumerate(tokens[:end]):
        if tok == mask_id:
            out.append(MASK_GLYPH, STYLE_MASK)
        elif pos in new:
            out.append(texts(tok), STYLE_NEW)
        elif confidence.get(pos, 1.0) < LOW_CONFIDENCE:
            out.append(texts(tok), STYLE_LOW)
        else:
            out.append(texts(tok))
    return out


def last_lines(text: Text, console: Console, height: int) -> Text:
    """The last `height` wrapped lines of `text` at the console's width."""
    lines = text.wrap(console, max(console.width, 10), overflow="fold")
    window = list(lines)[-max(height, 1):]
    return Text("\n").join(window)


class StepLike(Protocol):
    index: int
    tokens: list[int]
    revealed: list[int]
    confidences: list[float]
    forwards: int
    elapsed: float
    done: bool


@dataclass
class Progress:
    """Counts for the status line and the summary."""

    steps: int = 0
    forwards: int = 0
    elapsed: float = 0.0
    committed: int = 0  # positions no longer masked
    gen_length: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.committed / self.elapsed if self.elapsed > 0 else 0.0

    def line(self) -> str:
        return (f"step {self.steps} · {self.committed}/{self.gen_length} tokens · "
                f"{self.forwards} forwards · {self.tokens_per_second:.1f} tok/s · {self.elapsed:.1f} s")


class DenoiseView:
    """Shows `DenoiseStep` events: a live canvas, a one-line progress, or nothing.

    mode "live": a Rich Live region (transient, at most the terminal's height minus the
    status line, refreshed on events at most `max_fps` times a second); "line": a plain
    progress line every few seconds plus a summary; "quiet": only the summary."""

    def __init__(self, console: Console, texts: TokenTexts, mask_id: int, gen_length: int, *,
                 mode: str = "live", max_fps: float = MAX_FPS) -> None:
        assert mode in ("live", "line", "quiet"), mode
        self.console, self.texts, self.mask_id, self.mode = console, texts, mask_id, mode
        self.min_interval = 1.0 / max_fps
        self.progress = Progress(gen_length=gen_length)
        self.confidence: dict[int, float] = {}
        self.focus = 0
        self.frames = 0
        self._last_draw = float("-inf")
        self._live = None

    def __enter__(self) -> "DenoiseView":
        if self.mode == "live":
            from rich.live import Live

            self._live = Live(console=self.console, auto_refresh=False, transient=True,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def update(self, step: StepLike) -> None:
        self.confidence.update(zip(step.revealed, step.confidences))
        if step.revealed:
            self.focus = max(step.revealed)
        p = self.progress
        p.steps, p.forwards, p.elapsed = step.index + 1, step.forwards, step.elapsed
        p.committed = sum(1 for t in step.tokens if t != self.mask_id)
        now = time.monotonic()
        if not step.done and now - self._last_draw < self._interval():
            return
        self._last_draw = now
        self.frames += 1
        if self._live is not None:
            self._live.update(self.frame(step), refresh=True)
        elif self.mode == "line" and not step.done:
            self.console.print(f"dllm: {p.line()}", markup=False, highlight=False)

    def _interval(self) -> float:
        return self.min_interval if self.mode == "live" else LINE_PROGRESS_EVERY_S

    def frame(self, step: StepLike) -> Group:
        """One picture of the canvas: the window of lines around the focus + the status."""
        end = min(self.focus + 1 + FOCUS_TAIL, len(step.tokens))
        text = canvas_text(step.tokens, self.texts, self.mask_id, revealed=step.revealed,
                           confidence=self.confidence, end=end)
        height = max(self.console.size.height - 2, 1)
        return Group(last_lines(text, self.console, height),
                     Text(self.progress.line(), style=STYLE_STATUS))

    def finish(self, output: str | None) -> None:
        """Close the live region, then print the final text once and a summary line."""
        self.__exit__(None, None, None)
        if output is not None:
            self.console.print(Text(printable(output)))
        p = self.progress
        self.console.print(f"dllm: {p.committed} tokens in {p.elapsed:.1f} s "
                           f"({p.tokens_per_second:.1f} tok/s), {p.steps} steps, {p.forwards} forwards",
                           style="dim", markup=False, highlight=False)


# ---- loading --------------------------------------------------------------------------------

@contextmanager
def loading(console: Console, label: str) -> Iterator[Callable[[str], None]]:
    """A transient progress bar (pulsing: loading reports no fractions) while weights load.

    Drawn at once, before torch is imported; yields `describe(text)` to give the full label once
    it is known (device and dtype need torch). Without a terminal: one line, at `describe`."""
    if not console.is_interactive:
        yield lambda text: console.print(f"dllm: loading {text} ...", markup=False, highlight=False)
        return
    from rich.progress import BarColumn, Progress as Bar, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Bar(SpinnerColumn(), TextColumn("loading {task.description}"), BarColumn(),
             TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda text: bar.update(task, description=text)


# ---- diffs ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class DiffSummary:
    created: tuple[str, ...]
    deleted: tuple[str, ...]
    modified: tuple[str, ...]


def summarize_diff(diff: str) -> DiffSummary:
    """Created / deleted / modified paths from a unified diff's ---/+++ headers.

    Hunk bodies are skipped by their line counts, so a removed line "-- x" is no header."""
    created, deleted, modified = [], [], []
    lines = diff.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            old, new = _header_path(lines[i][4:]), _header_path(lines[i + 1][4:])
            bucket = created if old == "/dev/null" else deleted if new == "/dev/null" else modified
            bucket.append(old if new == "/dev/null" else new)
            i += 2
            continue
        hunk = HUNK.match(line)
        if hunk:
            old_left, new_left = int(hunk["ol"] or 1), int(hunk["nl"] or 1)
            i += 1
            while i < len(lines) and (old_left > 0 or new_left > 0):
                tag = lines[i][:1]
                old_left -= tag in (" ", "-", "")
                new_left -= tag in (" ", "+", "")
                i += 1
            continue
        i += 1
    return DiffSummary(tuple(created), tuple(deleted), tuple(modified))


HUNK = re.compile(r"^@@ -\d+(?:,(?P<ol>\d+))? \+\d+(?:,(?P<nl>\d+))? @@")


def _header_path(field: str) -> str:
    path = field.split("\t", 1)[0].strip()
    if path.startswith(("a/", "b/")):
        path = path[2:]
    return path


def render_diff(console: Console, diff: str) -> None:
    """Created/deleted/modified files listed, then the syntax-coloured unified diff."""
    from rich.syntax import Syntax

    summary = summarize_diff(diff)
    for label, paths, style in (("created", summary.created, "green"),
                                ("deleted", summary.deleted, "red bold"),
                                ("modified", summary.modified, "yellow")):
        for path in paths:
            console.print(Text.assemble((f"{label:>8} ", style), printable(path)))
    console.print(Syntax(printable(diff), "diff", theme="ansi_dark", background_color="default",
                         word_wrap=False))


def print_data(text: str, console: Console | None = None, *, syntax: str | None = None) -> None:
    """Write data to stdout: raw bytes when piped, coloured when stdout is a terminal."""
    console = console or make_console(stderr=False)
    if not console.is_terminal:
        console.file.write(text if text.endswith("\n") or not text else text + "\n")
        console.file.flush()
        return
    if syntax:
        from rich.syntax import Syntax

        console.print(Syntax(printable(text), syntax, theme="ansi_dark", background_color="default"))
    else:
        console.print(Text(printable(text)))


# ---- context --------------------------------------------------------------------------------

def render_context(console: Console, ctx) -> None:
    """What would be sent: one row per file with its tokens and reason, skips, the budget."""
    from rich.table import Table

    table = Table(box=None, show_header=True, pad_edge=False)
    table.add_column("tokens", justify="right")
    table.add_column("path")
    table.add_column("why")
    for f in ctx.files:
        table.add_row(str(f.tokens), printable(f.path), f.reason)
    if ctx.stdin_text:
        table.add_row(str(ctx.stdin_tokens), "(stdin)", "piped input")
    for s in ctx.skipped:
        table.add_row("-", printable(s.path), f"not sent: {s.reason}")
    console.print(table)
    for note in ctx.notes:
        console.print(f"note: {note}", markup=False)
    where = "repository" if ctx.in_git else "directory (not a git repository: named files only)"
    console.print(f"{ctx.tokens} of {ctx.budget} context tokens used; {where} {ctx.root}",
                  markup=False, highlight=False)


def render_infill_context(console: Console, rows: Sequence[dict], gen_length: int, context: int) -> None:
    """Infill mode: per region, the tokens of the file before and after its canvas of masks."""
    from rich.table import Table

    table = Table(box=None, show_header=True, pad_edge=False)
    for column, justify in (("before", "right"), ("after", "right"), ("path", "left"), ("region", "left")):
        table.add_column(column, justify=justify)
    for r in rows:
        first, last = r["lines"]
        what = f"body of {r['function']}" if r["function"] else "region"
        table.add_row(str(r["prefix_tokens"]), str(r["suffix_tokens"]), printable(r["path"]),
                      f"{what} (lines {first}-{last})")
    console.print(table)
    console.print(f"infill mode: each region is {gen_length} masks between the file's tokens before "
                  f"and after it ({context} positions at most); the prompt's wording is not sent",
                  markup=False, highlight=False)


# ---- confirmation ---------------------------------------------------------------------------

ANSWERS = {"y": "yes", "yes": "yes", "n": "no", "no": "no", "e": "edit", "edit": "edit",
           "s": "save", "save": "save"}


def ask_confirm(question: str = "Apply this patch?", *, input=None, output=None) -> str:
    """'yes' | 'no' | 'edit' | 'save' from a prompt-toolkit prompt (on stderr).

    End of input (Ctrl-D) counts as 'no'; Ctrl-C raises KeyboardInterrupt."""
    session = _session(input, output)
    while True:
        try:
            answer = session.prompt(f"{question} [y]es / [n]o / [e]dit / [s]ave: ")
        except EOFError:
            return "no"
        choice = ANSWERS.get(answer.strip().lower())
        if choice:
            return choice


def ask_text(question: str, default: str = "", *, input=None, output=None) -> str | None:
    """A line of text (default pre-filled); None on end of input."""
    try:
        return _session(input, output).prompt(f"{question}: ", default=default).strip() or None
    except EOFError:
        return None


def _session(input, output):
    from prompt_toolkit import PromptSession
    from prompt_toolkit.output import create_output

    return PromptSession(input=input, output=output or create_output(stdout=sys.stderr))


def edit_in_editor(text: str, suffix: str = ".diff") -> str:
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
