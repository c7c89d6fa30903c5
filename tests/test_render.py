"""render.py on string consoles: live canvas, progress line, diff view (from a Patch), tables."""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass

from rich.console import Console

from dllm_cli.events import Generation, SpecialTokens
from dllm_cli.patch import FileChange, Patch, unified_diff
from dllm_cli.render import (
    MASK_GLYPH,
    STYLE_LOW,
    STYLE_NEW,
    DenoiseView,
    TokenTexts,
    canvas_text,
    printable,
    render_context,
    render_diff,
)

ANSI = re.compile(r"\x1b\[")
MASK, EOS = 0, 1
TOKENS = SpecialTokens(mask=MASK, eos=EOS)
VOCAB = {2: "def", 3: " f", 4: "():", 5: "\n", 6: "    ", 7: "return", 8: " 1", 9: "\x1b[31m"}


def decode(ids):
    return "".join(VOCAB[i] if i in VOCAB else "<|endoftext|>" for i in ids)


def token_text(i):
    return decode([i])


def gen(text, tokens=8):
    return Generation(text, tokens, 8, 8, 0.5)


@dataclass
class Step:
    index: int
    tokens: list
    revealed: list
    confidences: list
    forwards: int
    elapsed: float
    done: bool
    edited: tuple = ()
    edit_confidences: tuple = ()


def steps_for(final: list[int], per_step: int = 1):
    tokens = [MASK] * len(final)
    order = list(range(len(final)))
    for i in range(0, len(order), per_step):
        new = order[i:i + per_step]
        for p in new:
            tokens[p] = final[p]
        yield Step(i // per_step, list(tokens), new, [0.3 if p % 2 else 0.95 for p in new],
                   i // per_step + 1, 0.01 * (i + 1), i + per_step >= len(order))


def console(width=40, height=10, terminal=True) -> Console:
    return Console(file=io.StringIO(), width=width, height=height, force_terminal=terminal,
                   color_system="standard" if terminal else None, legacy_windows=False)


def test_token_texts_cache_and_hidden():
    calls = []
    texts = TokenTexts(lambda i: calls.append(i) or token_text(i), hidden=[EOS])
    assert texts(2) == "def" and texts(2) == "def" and texts(EOS) == ""
    assert calls == [2]  # one decode per id, none for hidden ids
    assert texts(9) == "␛[31m"  # control characters shown, never obeyed


def test_canvas_marks_masks_new_and_low_confidence_tokens():
    texts = TokenTexts(token_text, hidden=[EOS])
    text = canvas_text([2, 3, MASK, 4, EOS], texts, MASK, revealed=[3], confidence={1: 0.2})
    assert text.plain == f"def f{MASK_GLYPH}():"
    styles = {text.plain[s.start:s.end]: str(s.style) for s in text.spans}
    assert styles[" f"] == STYLE_LOW and styles["():"] == STYLE_NEW and styles[MASK_GLYPH] == "grey42"


def test_live_frames_never_taller_than_the_terminal():
    final = [2, 3, 4, 5] + [6, 7, 8, 5] * 20 + [EOS] * 4
    con = console(width=30, height=8)
    view = DenoiseView(con, token_text, TOKENS, len(final), mode="live", max_fps=1e9)
    with view:
        for step in steps_for(final, per_step=3):
            view.update(step)
            lines = con.render_lines(view.frame(step), con.options, pad=False)
            assert len(lines) <= con.size.height
    assert view.frames > 5
    view.finish(gen(decode([t for t in final if t != EOS])))
    out = con.file.getvalue()
    assert out.count("return 1") >= 20 and "tok/s" in out and "step " in out


def test_refresh_rate_is_capped_but_the_last_step_is_drawn():
    final = [7] * 200
    view = DenoiseView(console(), token_text, TOKENS, len(final), mode="live", max_fps=15)
    start = time.monotonic()
    with view:
        for step in steps_for(final):
            view.update(step)
    elapsed = time.monotonic() - start
    assert 1 <= view.frames <= 2 + 15 * elapsed and view.frames < 200 / 4
    assert view.progress.committed == 200 and view.progress.steps == 200


def test_line_mode_on_a_pipe_is_plain_text():
    con = console(terminal=False)
    view = DenoiseView(con, token_text, TOKENS, 8, mode="line")
    with view:
        for step in steps_for([2, 3, 4, 5, 7, 8, 5, 5]):
            view.update(step)
    view.finish(gen("def f():\n", tokens=5))
    out = con.file.getvalue()
    assert not ANSI.search(out)
    assert out.startswith("dllm: step 1 ") and "def f():" in out
    assert "dllm: 5 tokens in 0.5 s (10.0 tok/s), 8 steps, 8 forwards" in " ".join(out.split())  # --json figures


def test_finish_prints_the_final_text_once():
    con = console()
    view = DenoiseView(con, token_text, TOKENS, 2, mode="quiet")
    with view:
        for step in steps_for([2, 3]):
            view.update(step)
    view.finish(gen("UNIQUE-OUTPUT"))
    assert con.file.getvalue().count("UNIQUE-OUTPUT") == 1
    view.finish(gen("HIDDEN"), show_text=False)
    assert "HIDDEN" not in con.file.getvalue()


PATCH_CHANGES = (FileChange("src/x.py", b"-- a removed line that looks like a header\ncontext\n",
                             b"++ an added one\ncontext\n", 0o644),
                  FileChange("new.py", None, b'print("hi")\n', 0o644),
                  FileChange("old.py", b"gone\n", None, 0o644))


def test_render_diff_lists_the_patch_files_and_colours_on_terminals_only():
    patch = Patch(PATCH_CHANGES, unified_diff(PATCH_CHANGES))
    con = console(width=80)
    render_diff(con, Patch(PATCH_CHANGES, patch.diff + "+\x1b]0;pwned\x07\n"))
    out = con.file.getvalue()
    assert ANSI.search(out) and "\x1b]0;" not in out  # coloured, but the model's ESC is defused
    plain = console(width=80, terminal=False)
    render_diff(plain, patch)
    text = plain.file.getvalue()
    assert not ANSI.search(text)
    assert "modified src/x.py" in text and " created new.py" in text and " deleted old.py" in text
    assert "--- a removed line that looks like a header" in text  # the diff itself follows


def test_printable_keeps_newlines_and_tabs():
    assert printable("a\tb\nc\x1b\x07\x7f") == "a\tb\nc␛␇␡"


def test_render_context_lists_files_skips_and_budget(tmp_path):
    from dllm_cli.context import Context, ContextFile, Skipped

    ctx = Context(tmp_path, True, (ContextFile("a.py", "x", 12, "named"),), "log", 5, 100,
                  (Skipped(".env", "secret: never sent"),), ("piped input cut",))
    con = console(width=100, terminal=False)
    render_context(con, ctx)
    out = con.file.getvalue()
    assert "a.py" in out and "12" in out and "(stdin)" in out and "not sent: secret" in out
    assert "17 of 100 context tokens" in out and "note: piped input cut" in out


def test_loading_is_a_progress_bar_on_a_terminal_and_one_line_on_a_pipe():
    from dllm_cli.render import loading

    con = Console(file=io.StringIO(), width=80, force_terminal=True, force_interactive=True,
                  color_system="standard", legacy_windows=False)
    with loading(con, "tiny") as describe:
        time.sleep(0.15)
        first = con.file.getvalue()
        describe("tiny (float32) on cpu")
        time.sleep(0.05)
    drawn = con.file.getvalue()
    assert "loading tiny" in first and "float32" not in first  # shown before the full label is known
    assert "loading tiny (float32) on cpu" in drawn and "0:00:00" in drawn  # bar with elapsed time
    assert "\x1b[2K" in drawn  # transient: erased when loading ends
    pipe = console(terminal=False)
    with loading(pipe, "tiny") as describe:
        assert pipe.file.getvalue() == ""
        describe("tiny (float32) on cpu")
    assert pipe.file.getvalue() == "dllm: loading tiny (float32) on cpu ...\n"


# ---- remote drafts (TextSnapshot) -----------------------------------------------------------

def test_a_snapshot_draft_highlights_what_changed_since_the_last_frame():
    from dllm_cli.render import draft_text

    text = draft_text("def f(x):\n    return x", "def g(░):\n    ░░░░░░ x")
    new = "".join(text.plain[s.start:s.end] for s in text.spans if str(s.style) == STYLE_NEW)
    assert text.plain == "def f(x):\n    return x" and new == "fxreturn"
    assert draft_text("same", "same").spans == []
    grown = draft_text("abc\x1bdef", "abc", mode="append")
    assert grown.plain == "abc␛def" and [grown.plain[s.start:s.end] for s in grown.spans] == ["␛def"]


def test_live_view_of_mercury_snapshots_replaces_the_draft_each_chunk():
    from dllm_cli.events import TextSnapshot

    drafts = ["d░░ ░░░░", "def ░(░:", "def f(x):", "def f(x):\n    return x"]
    con = console(width=40, height=6)
    view = DenoiseView(con, lambda i: "", TOKENS, 64, mode="live", max_fps=1e9)
    frames = []
    with view:
        for i, d in enumerate(drafts):
            snap = TextSnapshot(i, d, 0.1 * (i + 1))
            view.update_text(snap)
            frames.append(view.text_frame(snap))
    assert view.frames == len(drafts)
    assert "chunk 4 · draft 22 chars · 0.4 s" == view.text_status(TextSnapshot(3, drafts[-1], 0.4))
    view.finish(Generation(drafts[-1], 7, 4, 0, 0.4))
    out = con.file.getvalue()
    assert "def f(x):" in out and "return x" in out and "chunk 4" in out


def test_live_view_of_a_dllm_server_draws_its_canvas():
    from dllm_cli.events import TextSnapshot

    con = console(width=40, height=6)
    view = DenoiseView(con, lambda i: "", TOKENS, 4, mode="live", max_fps=1e9)
    snap = TextSnapshot(0, "def░░", 0.1, canvas=("def", " f", None, None), revealed=(1,), confidences=(0.3,),
                        step=0, forwards=1)
    with view:
        view.update_text(snap)
        frame = view.text_frame(snap)
    text = frame.renderables[0]
    assert text.plain == f"def f{MASK_GLYPH}{MASK_GLYPH}"
    styles = {text.plain[s.start:s.end]: str(s.style) for s in text.spans}
    assert styles[" f"] == STYLE_NEW and styles[MASK_GLYPH] == "grey42"
    assert view.progress.committed == 2 and view.progress.gen_length == 4 and "step 1 · 2/4 tokens" in \
        view.text_status(snap)


def test_line_mode_for_remote_drafts():
    from dllm_cli.events import TextSnapshot

    con = console(terminal=False)
    view = DenoiseView(con, lambda i: "", TOKENS, 8, mode="line")
    with view:
        view.update_text(TextSnapshot(0, "ab", 0.1, mode="append"))
        view.update_text(TextSnapshot(1, "abc", 0.2, mode="append"))
    assert con.file.getvalue() == "dllm: chunk 1 · text 2 chars · 0.1 s\n"


def test_render_servers_lists_the_running_ones():
    from dllm_cli.discovery import ServerEntry
    from dllm_cli.render import render_servers

    con = console(width=150, terminal=False)
    render_servers(con, [])
    assert "no dllm server is running" in con.file.getvalue()
    entry = ServerEntry("http://127.0.0.1:8765/v1", 42, "/m/tiny", "tiny", "cpu", "float32", True, "i",
                        time.time() - 3725)
    render_servers(con, [entry])
    out = con.file.getvalue()
    assert "http://127.0.0.1:8765/v1" in out and "required" in out and "1h02m" in out and "/m/tiny" in out


def test_the_models_table_keeps_names_whole_and_drops_optional_columns_when_narrow():
    from dllm_cli.catalog import ModelRow
    from dllm_cli.render import render_models

    rows = [ModelRow("Stable-DiffCoder-8B-Instruct", "/home/me/models/Stable-DiffCoder-8B-Instruct", "argument",
                     True, family="stable-diffcoder", params_human="8.3B", dtype="bfloat16", context=8192,
                     licence="mit", memory_bf16=16_500_000_000, memory_int8=8_890_000_000, fits="int8")]
    for width in (200, 110, 80):  # below ~75 columns Rich crops the last columns
        console = Console(file=io.StringIO(), width=width)
        render_models(console, rows)
        text = console.file.getvalue()
        assert all(len(line) <= width for line in text.splitlines())
        assert all(header in text for header in ("name", "family", "bf16", "int8", "fits", "path"))  # none cropped
        assert "8.3G" in text and "int8" in text
        if width == 200:
            assert "left out" not in text and "argument" in text and "Stable-DiffCoder-8B-Instruct" in text
        else:
            assert "source, licence" in text and "left out" in text
        if width >= 110:
            assert "Stable-DiffCoder-8B-Instruct" in text and "stable-diffcoder" in text  # names kept whole
