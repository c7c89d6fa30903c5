"""What dllm draws, with Rich: the live denoising view, the diff view (from the structured
Patch), the context tables (chat and infill mode), the `dllm models` table and the load
progress bar.

Knows: Rich renderables, terminal size, frame-rate and height limits; a remote endpoint's drafts
(text snapshots, replaced on each chunk with what changed highlighted, or increments appended).
Draws on the console it is given (stderr for people; stdout only for data). Model output is
untrusted: it is drawn as plain `Text` (never markup) with control characters made visible.
Must not: import torch (it sees token ids as plain ints), read input, or open consoles (ui.py does).
"""

from __future__ import annotations

import difflib
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from rich.console import Console, Group
from rich.text import Text

from .events import DenoiseStep, Generation, SpecialTokens, TextSnapshot

if TYPE_CHECKING:
    from .catalog import ModelRow
    from .context import Context
    from .discovery import ServerEntry
    from .patch import Patch

MASK_GLYPH = "░"
LOW_CONFIDENCE = 0.5  # tokens committed below this are shaded
MAX_FPS = 15.0
LINE_PROGRESS_EVERY_S = 2.0  # one-line progress cadence when stderr is not a TTY
FOCUS_TAIL = 16  # positions shown after the last revealed one

STYLE_MASK = "grey42"
STYLE_NEW = "bold black on green"  # a reveal: a mask became a token at this step
STYLE_EDIT = "bold black on magenta"  # a revision: a written token was replaced (LLaDA2.1's editing)
STYLE_LOW = "yellow"
STYLE_STATUS = "cyan"

_CONTROL_PICTURES = {c: 0x2400 + c for c in range(32) if c not in (9, 10)} | {127: 0x2421}


def printable(text: str) -> str:
    """`text` with control characters (ESC included) shown as symbols, not obeyed."""
    return text.translate(_CONTROL_PICTURES)


# ---- partial canvases ---------------------------------------------------------------------

class TokenTexts:
    """Text of single token ids (cached), so a canvas with masks can be drawn in place.

    `hidden` ids (eos, pad...) draw as nothing. Byte-level pieces of one character may
    draw as U+FFFD until the final decode; the live view accepts that."""

    def __init__(self, token_text: Callable[[int], str], hidden: Iterable[int] = ()) -> None:
        self._token_text = token_text
        self._cache: dict[int, str] = {int(t): "" for t in hidden}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._cache[token_id] = printable(self._token_text(token_id))
        return text


def canvas_text(tokens: Sequence[int], texts: TokenTexts, mask_id: int, *,
                revealed: Iterable[int] = (), confidence: dict[int, float] | None = None,
                end: int | None = None, edited: Iterable[int] = ()) -> Text:
    """The canvas as styled text: masks dim, `revealed` highlighted, `edited` (revised) in
    another colour, low confidence shaded."""
    new, revised = set(revealed), set(edited)
    confidence = confidence or {}
    out = Text()
    for pos, tok in enumerate(tokens[:end]):
        if tok == mask_id:
            out.append(MASK_GLYPH, STYLE_MASK)
        elif pos in revised:
            out.append(texts(tok), STYLE_EDIT)
        elif pos in new:
            out.append(texts(tok), STYLE_NEW)
        elif confidence.get(pos, 1.0) < LOW_CONFIDENCE:
            out.append(texts(tok), STYLE_LOW)
        else:
            out.append(texts(tok))
    return out


def draft_text(text: str, before: str, mode: str = "snapshot") -> Text:
    """A remote draft as styled text: what changed since `before` (the last frame drawn)
    highlighted; "append" mode (increments) highlights the new tail only."""
    out = Text()
    if mode == "append" or not before:
        keep = len(before) if text.startswith(before) else 0
        out.append(printable(text[:keep]))
        out.append(printable(text[keep:]), STYLE_NEW if before or mode == "append" else "")
        return out
    matcher = difflib.SequenceMatcher(None, before, text, autojunk=False)
    for op, _, _, j1, j2 in matcher.get_opcodes():
        out.append(printable(text[j1:j2]), "" if op == "equal" else STYLE_NEW)
    return out


def pieces_text(canvas: Sequence[str | None], *, revealed: Iterable[int] = (),
                confidence: dict[int, float] | None = None, edited: Iterable[int] = ()) -> Text:
    """A `dllm serve` canvas (each position's text, None while masked), styled as canvas_text."""
    new, revised = set(revealed), set(edited)
    confidence = confidence or {}
    out = Text()
    for pos, piece in enumerate(canvas):
        if piece is None:
            out.append(MASK_GLYPH, STYLE_MASK)
        elif pos in revised:
            out.append(printable(piece), STYLE_EDIT)
        elif pos in new:
            out.append(printable(piece), STYLE_NEW)
        elif confidence.get(pos, 1.0) < LOW_CONFIDENCE:
            out.append(printable(piece), STYLE_LOW)
        else:
            out.append(printable(piece))
    return out


def last_lines(text: Text, console: Console, height: int) -> Text:
    """The last `height` wrapped lines of `text` at the console's width."""
    lines = text.wrap(console, max(console.width, 10), overflow="fold")
    window = list(lines)[-max(height, 1):]
    return Text("\n").join(window)


@dataclass
class Progress:
    """Counts for the status line and the summary."""

    steps: int = 0
    forwards: int = 0
    elapsed: float = 0.0
    committed: int = 0  # positions no longer masked
    gen_length: int = 0
    edits: int = 0  # written tokens revised so far (LLaDA2.1's token editing)

    @property
    def tokens_per_second(self) -> float:
        return self.committed / self.elapsed if self.elapsed > 0 else 0.0

    def line(self) -> str:
        edits = f"{self.edits} edits · " if self.edits else ""
        return (f"step {self.steps} · {self.committed}/{self.gen_length} tokens · {edits}"
                f"{self.forwards} forwards · {self.tokens_per_second:.1f} tok/s · {self.elapsed:.1f} s")


class DenoiseView:
    """Shows `DenoiseStep` events: a live canvas, a one-line progress, or nothing.

    mode "live": a Rich Live region (transient, at most the terminal's height minus the
    status line, refreshed on events at most `max_fps` times a second); "line": a plain
    progress line every few seconds plus a summary; "quiet": only the summary."""

    def __init__(self, console: Console, token_text: Callable[[int], str], tokens: SpecialTokens,
                 gen_length: int, *, mode: str = "live", max_fps: float = MAX_FPS) -> None:
        assert mode in ("live", "line", "quiet"), mode
        self.console, self.mode = console, mode
        self.texts, self.mask_id = TokenTexts(token_text, hidden=tokens.stops), tokens.mask
        self.min_interval = 1.0 / max_fps
        self.progress = Progress(gen_length=gen_length)
        self.confidence: dict[int, float] = {}
        self.focus = 0
        self.frames = 0
        self._last_draw = float("-inf")
        self._live: Any = None
        self._drawn = ""  # the remote draft as last drawn (what changed since is highlighted)

    def __enter__(self) -> "DenoiseView":
        if self.mode == "live":
            from rich.live import Live

            self._live = Live(console=self.console, auto_refresh=False, transient=True,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def update(self, step: DenoiseStep) -> None:
        self.confidence.update(zip(step.revealed, step.confidences))
        self.confidence.update(zip(step.edited, step.edit_confidences))
        if step.revealed or step.edited:
            self.focus = max([*step.revealed, *step.edited])
        p = self.progress
        p.edits += len(step.edited)
        p.steps, p.forwards, p.elapsed = step.index + 1, step.forwards, step.elapsed
        p.committed = sum(1 for t in step.tokens if t != self.mask_id)
        p.gen_length = len(step.tokens)  # the canvas: a block loop may round it up to a whole block
        now = time.monotonic()
        if not step.done and now - self._last_draw < self._interval():
            return
        self._last_draw = now
        self.frames += 1
        if self._live is not None:
            self._live.update(self.frame(step), refresh=True)
        elif self.mode == "line" and not step.done:
            self.console.print(f"dllm: {p.line()}", markup=False, highlight=False)

    def update_text(self, snap: TextSnapshot) -> None:
        """A remote draft (TextSnapshot): the canvas when the server sends one (`dllm serve`), else
        the draft, replaced or grown, with what changed since the last frame highlighted."""
        p = self.progress
        p.steps = (snap.step + 1) if snap.step is not None else snap.index + 1
        p.forwards, p.elapsed = snap.forwards or 0, snap.elapsed
        self.confidence.update(zip(snap.revealed, snap.confidences))
        p.edits += len(snap.edited)
        if snap.canvas is not None:
            p.gen_length = len(snap.canvas)
            p.committed = len(snap.canvas) - (snap.masked or 0)
        now = time.monotonic()
        if not snap.done and now - self._last_draw < self._interval():
            return
        self._last_draw = now
        self.frames += 1
        if self._live is not None:
            self._live.update(self.text_frame(snap), refresh=True)
        elif self.mode == "line" and not snap.done:
            self.console.print(f"dllm: {self.text_status(snap)}", markup=False, highlight=False)

    def text_status(self, snap: TextSnapshot) -> str:
        if snap.canvas is not None:
            return self.progress.line()
        what = "draft" if snap.mode == "snapshot" else "text"
        return f"chunk {snap.index + 1} · {what} {len(snap.text)} chars · {snap.elapsed:.1f} s"

    def text_frame(self, snap: TextSnapshot) -> Group:
        if snap.canvas is not None:
            text = pieces_text(snap.canvas, revealed=snap.revealed, confidence=self.confidence, edited=snap.edited)
        else:
            text = draft_text(snap.text, self._drawn, snap.mode)
        self._drawn = snap.text
        height = max(self.console.size.height - 2, 1)
        return Group(last_lines(text, self.console, height), Text(self.text_status(snap), style=STYLE_STATUS))

    def _interval(self) -> float:
        return self.min_interval if self.mode == "live" else LINE_PROGRESS_EVERY_S

    def frame(self, step: DenoiseStep) -> Group:
        """One picture of the canvas: the window of lines around the focus + the status."""
        end = min(self.focus + 1 + FOCUS_TAIL, len(step.tokens))
        text = canvas_text(step.tokens, self.texts, self.mask_id, revealed=step.revealed,
                           confidence=self.confidence, end=end, edited=step.edited)
        height = max(self.console.size.height - 2, 1)
        return Group(last_lines(text, self.console, height),
                     Text(self.progress.line(), style=STYLE_STATUS))

    def finish(self, gen: Generation, show_text: bool = True) -> None:
        """Close the live region, then print the final text once (`show_text`) and a summary
        line with the same figures the --json report gives."""
        self.__exit__(None, None, None)
        if show_text:
            self.console.print(Text(printable(gen.text)))
        self.console.print(summary_line(gen), style="dim", markup=False, highlight=False)


def summary_line(gen: Generation) -> str:
    edits = f", {gen.edits} edits" if gen.edits else ""
    return (f"dllm: {gen.gen_tokens} tokens in {gen.seconds:.1f} s ({gen.tokens_per_second:.1f} tok/s), "
            f"{gen.steps} steps, {gen.forwards} forwards{edits}")


# ---- loading --------------------------------------------------------------------------------

@contextmanager
def loading(console: Console, label: str) -> Iterator[Callable[[str], None]]:
    """A transient progress bar (pulsing: loading reports no fractions) while weights load.

    Drawn at once, before torch is imported; yields `describe(text)` to give the full label once
    it is known (device and dtype need torch). Without a terminal: one line, at `describe`."""
    if not console.is_interactive:
        yield lambda text: console.print(f"dllm: loading {text} ...", markup=False, highlight=False)
        return
    from rich.progress import BarColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    with Bar(SpinnerColumn(), TextColumn("loading {task.description}"), BarColumn(),
             TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda text: bar.update(task, description=text)


# ---- diffs ----------------------------------------------------------------------------------

def render_diff(console: Console, patch: "Patch") -> None:
    """Created/deleted/modified files listed, then the syntax-coloured unified diff."""
    from rich.syntax import Syntax

    for c in patch.changes:
        label, style = {"create": ("created", "green"), "delete": ("deleted", "red bold"),
                        "modify": ("modified", "yellow")}[c.kind]
        console.print(Text.assemble((f"{label:>8} ", style), printable(c.path)))
    console.print(Syntax(printable(patch.diff), "diff", theme="ansi_dark", background_color="default",
                         word_wrap=False))


# ---- context --------------------------------------------------------------------------------

def render_context(console: Console, ctx: "Context") -> None:
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


def render_infill_context(console: Console, rows: Sequence[dict[str, Any]], gen_length: int, context: int) -> None:
    """Infill mode: per region, the tokens of the file before and after its canvas of masks."""
    from rich.table import Table

    table = Table(box=None, show_header=True, pad_edge=False)
    for column in ("before", "after", "path", "region"):
        table.add_column(column, justify="right" if column in ("before", "after") else "left")
    for r in rows:
        first, last = r["lines"]
        what = f"body of {r['function']}" if r["function"] else "region"
        table.add_row(str(r["prefix_tokens"]), str(r["suffix_tokens"]), printable(r["path"]),
                      f"{what} (lines {first}-{last})")
    console.print(table)
    console.print(f"infill mode: each region is {gen_length} masks between the file's tokens before "
                  f"and after it ({context} positions at most); the prompt's wording is not sent",
                  markup=False, highlight=False)


# ---- dllm models -----------------------------------------------------------------------------

def render_models(console: Console, rows: Sequence["ModelRow"]) -> None:
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    from .catalog import human_bytes

    cells = [["*" if r.chosen else "", printable(r.name), r.status, r.family, r.params_human, r.dtype,
              human_bytes(r.memory_bf16), human_bytes(r.memory_int8), r.fits, str(r.context or "-"),
              printable(r.licence), r.source, printable(r.path)] for r in rows]
    names = ["", "name", "status", "family", "params", "dtype", "bf16", "int8", "fits", "context", "licence",
             "source", "path"]
    widths = [max([len(n), *(len(row[i]) for row in cells)]) for i, n in enumerate(names)]
    widths[names.index("licence")] = min(widths[names.index("licence")], 14)
    widths[-1] = min(widths[-1], 12)  # the path folds
    dropped = []
    for optional in ("source", "licence", "context"):  # a narrow terminal: these give way first
        if sum(widths) + 2 * (len(widths) - 1) <= console.width:
            break
        i = names.index(optional)
        dropped.append(optional)
        del names[i], widths[i]
        for row in cells:
            del row[i]
    tight = sum(widths) + 2 * (len(widths) - 1) > console.width  # still: the text columns fold too
    for column, width in zip(names, widths):
        if column == "path" or (tight and column in ("name", "family", "dtype")):
            table.add_column(column, overflow="fold", min_width=min(width, 12) if tight else width)
        elif column == "licence":
            table.add_column(column, no_wrap=True, max_width=width, overflow="ellipsis")
        else:  # never shrunk: what tells the rows apart
            table.add_column(column, no_wrap=True, min_width=width)
    for row in cells:
        table.add_row(*row)
    console.print(table)
    if dropped:
        console.print(f"(a narrow terminal: {', '.join(dropped)} left out; `dllm models --json` has every field)",
                      markup=False, highlight=False)
    for r in rows:
        if r.status != "ok" and r.error:
            console.print(f"{r.name}: {r.status}: {printable(' '.join(r.error.split()))}", markup=False,
                          highlight=False)


# ---- dllm serve --status -----------------------------------------------------------------------

def render_servers(console: Console, servers: Sequence["ServerEntry"]) -> None:
    """The running `dllm serve` processes (from their discovery files, checked alive)."""
    from rich.table import Table

    from .discovery import uptime

    if not servers:
        console.print("no dllm server is running on this machine (start one: dllm serve)", markup=False)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("url", "model", "device", "dtype", "key", "pid", "up", "checkpoint"):
        table.add_column(column)
    for s in servers:
        weights = s.dtype if s.quant == "none" else f"{s.dtype} ({s.quant} linears)"
        table.add_row(s.url, printable(s.model), s.device, weights, "required" if s.auth else "no", str(s.pid),
                      uptime(s), printable(s.checkpoint))
    console.print(table)
