"""LLaDA2's token editing at the edges: `dllm code --editing-threshold` (over the checkpoint's
recipe; refused by other models), the live view drawing a revision apart from a reveal, the
summary and --json counting edits, and `dllm serve` / the remote backend carrying the option and
the edited positions."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console
from test_cli import _spy_on_configs, run
from test_wire import EOS, MASK, Letters

from dllm_cli.config import family_sampler
from dllm_cli.events import DenoiseStep, Generation, SpecialTokens
from dllm_cli.remote import snapshot
from dllm_cli.render import STYLE_EDIT, STYLE_NEW, DenoiseView, TokenTexts, canvas_text, pieces_text, summary_line
from dllm_cli.serve import wire

from tiny import make_llada2_checkpoint, make_sdar_checkpoint


@pytest.fixture(autouse=True)
def isolated_home(isolated):
    return isolated


@pytest.fixture(scope="module")
def llada21(tmp_path_factory):
    return make_llada2_checkpoint(tmp_path_factory.mktemp("llada21"), editing=True)


def test_code_runs_llada2_1_with_its_recipe_and_the_option(repo, llada21, monkeypatch):
    seen = _spy_on_configs(monkeypatch)
    code, out, err = run(["code", "--json", "--dry-run", "--model", str(llada21), "--gen-length", "64", "x"])
    assert code in (0, 3), err
    assert seen == [family_sampler("llada2.1", 32).with_(gen_length=64)]
    data = json.loads(out)
    assert isinstance(data["edits"], int) and data["edits"] >= 0 and data["steps"] >= 2
    code, out, err = run(["code", "--json", "--dry-run", "--model", str(llada21), "--gen-length", "64",
                          "--editing-threshold", "off", "x"])
    assert code in (0, 3), err
    assert seen[-1].editing_threshold is None and json.loads(out)["edits"] == 0
    code, _, err = run(["code", "--model", str(llada21), "--editing-threshold", "0", "--dry-run", "--gen-length",
                        "32", "x"])
    assert code in (0, 3) and seen[-1].editing_threshold == 0.0


def test_code_refuses_a_bad_or_misplaced_editing_threshold(repo, llada21, tmp_path):
    code, out, err = run(["code", "--model", str(llada21), "--editing-threshold", "1.5", "x"])
    assert code == 2 and out == "" and "--editing-threshold 1.5 must be in [0, 1]" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    sdar = make_sdar_checkpoint(tmp_path / "sdar")
    code, out, err = run(["code", "--model", str(sdar), "--editing-threshold", "0.5", "x"])
    assert code == 2 and "LLaDA2.1's token editing" in err


def test_the_live_view_draws_a_revision_apart_from_a_reveal():
    texts = TokenTexts(lambda t: f"<{t}>")
    text = canvas_text([5, 6, 7, MASK], texts, MASK, revealed=[1], edited=[2])
    styles = {text.plain[s.start:s.end]: str(s.style) for s in text.spans}
    assert styles["<6>"] == STYLE_NEW and styles["<7>"] == STYLE_EDIT and "<5>" not in styles
    pieces = pieces_text(["a", "b", None], revealed=[0], edited=[1])
    styles = {pieces.plain[s.start:s.end]: str(s.style) for s in pieces.spans}
    assert styles == {"a": STYLE_NEW, "b": STYLE_EDIT, "░": "grey42"}

    console = Console(file=io.StringIO(), width=80, force_terminal=False)
    view = DenoiseView(console, lambda t: f"<{t}>", SpecialTokens(mask=MASK, eos=EOS), 4, mode="line")
    view.update(DenoiseStep(0, [5, MASK, MASK, MASK], [0], [0.9], 1, 0.1, False))
    view.update(DenoiseStep(1, [8, 6, MASK, MASK], [1], [0.9], 2, 0.2, False, edited=[0], edit_confidences=[0.7]))
    assert view.progress.edits == 1 and "1 edits" in view.progress.line() and view.confidence[0] == 0.7
    assert ", 3 edits" in summary_line(Generation("x", 4, 5, 5, 1.0, edits=3))
    assert "edits" not in summary_line(Generation("x", 4, 5, 5, 1.0))


def test_serve_takes_the_option_and_streams_the_edits():
    served = wire.Served("llada2", Letters(), SpecialTokens(mask=MASK, eos=EOS), 256, 256,
                         base=family_sampler("llada2.1", 32), can_infill=False)
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 32}
    assert wire.parse_chat(chat, served).cfg.editing_threshold == 0.5  # the recipe's
    assert wire.parse_chat({**chat, "dllm": {"editing_threshold": "off"}}, served).cfg.editing_threshold is None
    assert wire.parse_chat({**chat, "dllm": {"editing_threshold": 0.2}}, served).cfg.editing_threshold == 0.2
    for bad in (2, "often", True, [0.5]):
        with pytest.raises(wire.WireError) as info:
            wire.parse_chat({**chat, "dllm": {"editing_threshold": bad}}, served)
        assert info.value.status == 400 and "dllm.editing_threshold" in str(info.value)
    reply = wire.Reply(wire.parse_chat({**chat, "stream": True, "diffusing": True}, served), served)
    ext = reply.step(DenoiseStep(3, [2, 3, 4, MASK], [2], [0.8], 4, 0.1, False, edited=[0],
                                 edit_confidences=[0.61234]))["dllm"]
    assert ext["edited"] == [0] and ext["edit_confidences"] == [0.6123] and ext["revealed"] == [2]
    end = reply.end(Generation("abc", 3, 5, 5, 0.2, edits=4))
    assert end[0]["dllm"]["edits"] == 4


def test_the_remote_backend_reads_the_edited_positions():
    snap = snapshot(0, "abc", 0.1, True, {"canvas": ["a", "b", "c"], "revealed": [2], "edited": [0, "x"]})
    assert snap.edited == (0,) and snap.revealed == (2,)
    assert snapshot(0, "abc", 0.1, True, {}).edited == ()


def test_increments_never_send_a_block_that_can_still_be_edited():
    """Without "diffusing", a stream sends settled text only; under token editing the block being
    decoded can still change, so its text waits until the next block starts (or the end): what
    was sent is never retracted and adds up to the final answer."""
    served = wire.Served("llada2", Letters(), SpecialTokens(mask=MASK, eos=EOS), 256, 256,
                         base=family_sampler("llada2.1", 4), can_infill=False)
    call = wire.parse_chat({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True},
                           served)
    P = len(call.request.prompt_ids)
    first = 4 - P % 4  # the canvas positions of the first block after the prompt's tail
    a, b, c, d = (ids_of(ch) for ch in "abcd")
    canvas = [MASK] * (8 + 4)
    reply, sent = wire.Reply(call, served), []

    def send(index, writes, edited=()):
        for pos, tok in writes.items():
            canvas[pos] = tok
        step = DenoiseStep(index, list(canvas), sorted(set(writes) - set(edited)), [0.9] * len(writes), index + 1,
                           0.01, False, edited=list(edited), edit_confidences=[0.9] * len(edited))
        sent.append(reply.step(step)["choices"][0]["delta"].get("content", ""))

    send(0, dict.fromkeys(range(first), a))
    send(1, {0: b}, edited=[0])  # the first block is revised: nothing of it was sent
    assert sent == ["", ""]
    send(2, {first: c})  # the next block starts: the first is final
    assert sent[-1] == "b" + "a" * (first - 1)
    send(3, {first: d}, edited=[first])
    end = reply.end(Generation("b" + "a" * (first - 1) + "d", first + 1, 4, 4, 0.1, edits=2))
    sent.append(end[0]["choices"][0]["delta"]["content"])
    assert "".join(sent) == "b" + "a" * (first - 1) + "d"


def ids_of(ch):
    return ord(ch) - ord("a") + 2


def test_the_status_line_counts_the_canvas_the_loop_writes():
    """SDAR and LLaDA2 round the canvas up to a whole block: the status line says n/canvas, never
    more tokens than positions."""
    console = Console(file=io.StringIO(), width=80, force_terminal=False)
    view = DenoiseView(console, lambda t: f"<{t}>", SpecialTokens(mask=MASK, eos=EOS), 4, mode="line")
    view.update(DenoiseStep(0, [5, 6, 7, 8, 9, MASK], [0, 1, 2, 3, 4], [0.9] * 5, 1, 0.1, False))
    assert "5/6 tokens" in view.progress.line()
