"""serve/wire.py: request bodies into Calls (every bad value a WireError with the OpenAI envelope,
unknown fields ignored, the sampler options and their rules), and one generation's events into
SSE chunks: whole drafts with "diffusing", settled increments otherwise (never retracted, held
back while a stop string could still complete, none for p2's remasking), the closing chunks,
finish_reason and usage. A letter tokenizer keeps the pieces readable."""

from __future__ import annotations

import pytest

from dllm_cli import catalog
from dllm_cli.events import DenoiseStep, Generation, Message, SpecialTokens
from dllm_cli.serve import wire
from dllm_cli.tokenizer import Tokenizer

MASK, EOS = 1, 0
LETTERS = {i: chr(ord("a") + i - 2) for i in range(2, 28)}  # 2 -> "a", 3 -> "b", ...


class Letters:
    """A tokenizer where id 2 is "a", 3 is "b"... (0 eos, 1 mask)."""

    eos_token_id = EOS

    def token_text(self, t):
        return {EOS: "<eos>", MASK: "<mask>"}.get(t, LETTERS.get(t, "?"))

    def decode(self, ids, skip_special=False):
        return "".join(LETTERS.get(t, "") for t in ids)

    def encode(self, text):
        return [ord(c) - ord("a") + 2 for c in text if c.isalpha()]

    def apply_chat_template(self, messages):
        return "".join(m.content for m in messages)


SERVED = wire.Served("m", Letters(), SpecialTokens(mask=MASK, eos=EOS), context_length=64, infill_window=64)


def ids(text):
    return [ord(c) - ord("a") + 2 for c in text]


def call(**body):
    return wire.parse_chat({"messages": [{"role": "user", "content": "hi"}], **body}, SERVED)


def step(index, tokens, revealed=(), done=False):
    return DenoiseStep(index, list(tokens), list(revealed), [0.5] * len(revealed), index + 1, 0.01 * index, done)


# ---- parsing --------------------------------------------------------------------------------

def test_a_chat_body_becomes_a_request_and_a_sampler_config(dream_ckpt):
    tok = Tokenizer.from_checkpoint(catalog.inspect(dream_ckpt))
    served = wire.Served("tiny", tok, tok.special_tokens(), 4096, 4096)
    body = {"model": "tiny", "messages": [{"role": "developer", "content": "be brief"},
                                          {"role": "user", "content": [{"type": "text", "text": "add "},
                                                                       {"type": "text", "text": "f"}]}],
            "max_tokens": 48, "temperature": 0.7, "top_p": 0.9, "seed": 4, "stream": True,
            "stream_options": {"include_usage": True}, "diffusing": True, "stop": "END", "frobnicate": [1]}
    c = wire.parse_chat(body, served)
    assert c.request.messages == (Message("system", "be brief"), Message("user", "add f"))
    assert list(c.request.prompt_ids) == tok.encode(tok.apply_chat_template(list(c.request.messages)))
    assert (c.cfg.gen_length, c.cfg.block_length, c.cfg.temperature, c.cfg.top_p, c.cfg.seed) == (48, 24, 0.7, 0.9, 4)
    assert c.stream and c.include_usage and c.diffusing and c.stops == ("END",) and c.kind == "chat"


def test_defaults_and_the_extension_object():
    c = call()
    assert (c.cfg.gen_length, c.cfg.threshold, c.stream, c.diffusing) == (62, 0.9, False, False)  # what fits
    big = wire.parse_chat({"messages": [{"role": "user", "content": "hi"}]}, wire.Served(
        "m", Letters(), SERVED.tokens, context_length=4096, infill_window=4096))
    assert (big.cfg.gen_length, big.cfg.block_length) == (128, 32)
    c = call(max_tokens=16, max_completion_tokens=24, dllm={"steps": 12, "block_length": 0, "threshold": 0})
    assert (c.cfg.gen_length, c.cfg.steps, c.cfg.block_length, c.cfg.threshold) == (24, 12, None, None)
    c = call(dllm={"alg": "p2", "unknown": 1})
    assert c.cfg.alg == "p2" and c.cfg.block_length is None and c.cfg.cache == "none"


@pytest.mark.parametrize("body, status, param, words", [
    ({"temperature": -1}, 400, "temperature", "in [0, 2]"),
    ({"max_tokens": 30, "dllm": {"block_length": 8}}, 400, None, "max_tokens 30 must be a multiple of "
                                                                  "dllm.block_length 8"),
    ({"dllm": {"alg": "fast"}}, 400, None, "unknown dllm.alg 'fast'"),
    ({"stop": ""}, 400, "stop", "non-empty"),
    ({"stream_options": []}, 400, "stream_options", "object"),
    ({"model": "other"}, 404, "model", "this server serves `m`"),
    ({"max_tokens": 63}, 400, "messages", "maximum context length is 64 tokens"),
])
def test_bad_values_are_wire_errors(body, status, param, words):
    with pytest.raises(wire.WireError) as info:
        call(**body)
    err = info.value
    assert (err.status, err.param) == (status, param) and words in err.message
    assert err.body() == {"error": {"message": err.message, "type": err.type, "param": param, "code": err.code}}


def test_completions_with_a_suffix_are_anchored_infilling():
    c = wire.parse_completion({"prompt": ["ab"], "suffix": "cd", "max_tokens": 8}, SERVED)
    assert c.request.infill and (c.request.prefix, c.request.suffix) == ("ab", "cd")
    assert c.request.prompt_ids == (EOS, *ids("ab")) and c.request.suffix_ids == (*ids("cd"), EOS)
    plain = wire.parse_completion({"prompt": "ab"}, SERVED)
    assert not plain.request.infill and plain.request.prompt_ids == tuple(ids("ab"))
    with pytest.raises(wire.WireError, match="leaves no room"):
        wire.parse_completion({"prompt": "ab", "suffix": "cd", "max_tokens": 63}, SERVED)


def test_a_block_diffusion_checkpoint_is_served_with_its_recipe_and_no_infill():
    from dllm_cli.config import family_sampler

    base = family_sampler("sdar", 4)
    served = wire.Served("sdar", Letters(), SpecialTokens(mask=MASK, eos=EOS), 64, 64, base=base, can_infill=False)
    cfg = wire.parse_chat({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}, served).cfg
    assert (cfg.block_loop, cfg.block_length, cfg.gen_length) == (base.block_loop, 4, 16)  # the checkpoint's block
    for asked, words in ((8, "attends in blocks of 4"), (0, "decodes in blocks")):
        with pytest.raises(wire.WireError) as info:
            wire.parse_chat({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16,
                             "dllm": {"block_length": asked}}, served)
        assert info.value.status == 400 and words in str(info.value)
    with pytest.raises(wire.WireError) as info:
        wire.parse_completion({"prompt": "ab", "suffix": "cd"}, served)
    assert info.value.status == 400 and "cannot fill in the middle" in str(info.value)
    assert SERVED.base.block_loop is None  # a 2025 model keeps dllm's fast mode


def test_json_bodies():
    assert wire.parse_json(b'{"a": 1}') == {"a": 1}
    for raw in (b"{", b"[1]", b"\xff"):
        with pytest.raises(wire.WireError):
            wire.parse_json(raw)


# ---- replies --------------------------------------------------------------------------------

def test_diffusing_chunks_are_whole_drafts_with_the_extension():
    reply = wire.Reply(call(max_tokens=4, diffusing=True, stream=True), SERVED)
    first = reply.step(step(0, [ids("a")[0], MASK, MASK, MASK], [0]))
    assert first["choices"][0]["delta"] == {"content": "a░░░"} and first["object"] == "chat.completion.chunk"
    ext = first["dllm"]
    assert ext["canvas"] == ["a", None, None, None] and ext["masked"] == [1, 2, 3] and ext["revealed"] == [0]
    second = reply.step(step(1, [*ids("ab"), EOS, MASK], [1, 2]))
    assert second["choices"][0]["delta"]["content"] == "ab"  # cut at the first stop token
    assert second["dllm"]["canvas"] == ["a", "b", "", None]
    end = reply.end(Generation("ab", 2, 2, 2, 0.02, 5))
    assert end[0]["choices"][0] == {"index": 0, "finish_reason": "stop", "delta": {"content": "ab"}}
    assert end[0]["dllm"]["done"] is True and len(end) == 1


def test_increments_are_settled_text_and_join_to_the_answer():
    reply = wire.Reply(call(max_tokens=4, stream=True, stream_options={"include_usage": True}), SERVED)
    assert reply.start()[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    texts = []
    for s in (step(0, [MASK, ids("b")[0], MASK, MASK]), step(1, [*ids("ab"), MASK, MASK]),
              step(2, [*ids("abc"), MASK])):
        texts.append(reply.step(s)["choices"][0]["delta"].get("content", ""))
    assert texts == ["", "ab", "c"]
    end = reply.end(Generation("abcd", 4, 4, 4, 0.1, 3))
    assert end[0]["choices"][0]["delta"] == {"content": "d"} and end[0]["choices"][0]["finish_reason"] == "length"
    assert end[1]["choices"] == [] and end[1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4,
                                                           "total_tokens": 7}


def test_increments_hold_back_what_could_become_a_stop_string():
    reply = wire.Reply(call(max_tokens=6, stream=True, stop=["cde"]), SERVED)
    got = [reply.step(step(0, [*ids("abcd"), MASK, MASK]))["choices"][0]["delta"].get("content", "")]
    got.append(reply.step(step(1, [*ids("abcde"), MASK]))["choices"][0]["delta"].get("content", ""))
    end = reply.end(Generation("abcdef", 6, 2, 2, 0.1))
    assert got == ["ab", ""] and end[0]["choices"][0]["delta"] == {} and end[0]["choices"][0]["finish_reason"] == "stop"
    assert wire.Reply(call(stop="cde"), SERVED).response(Generation("abcdef", 6, 1, 1, 0.1))["choices"][0][
        "message"]["content"] == "ab"


def test_p2_remasking_sends_nothing_until_the_end():
    reply = wire.Reply(call(max_tokens=4, stream=True, dllm={"alg": "p2"}), SERVED)
    assert reply.step(step(0, [*ids("ab"), MASK, MASK]))["choices"][0]["delta"] == {}
    assert reply.end(Generation("abcd", 4, 1, 1, 0.1))[0]["choices"][0]["delta"] == {"content": "abcd"}


def test_the_non_stream_response_and_completion_chunks():
    c = wire.parse_completion({"prompt": "ab", "max_tokens": 2}, SERVED)
    reply = wire.Reply(c, SERVED)
    assert reply.id.startswith("cmpl-") and reply.start() == []
    chunk = reply.step(step(0, [ids("c")[0], MASK]))
    assert chunk["object"] == "text_completion" and chunk["choices"][0]["text"] == "c"
    body = reply.response(Generation("cd", 2, 2, 2, 0.5, 2))
    assert body["choices"][0]["text"] == "cd" and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["total_tokens"] == 4 and body["dllm"]["gen_length"] == 2
    assert wire.sse({"a": "é"}) == 'data: {"a":"é"}\n\n'.encode() and wire.sse("[DONE]") == b"data: [DONE]\n\n"


def test_cut_at_stops():
    assert wire.cut_at_stops("abcabc", ("ca", "b")) == ("a", True)
    assert wire.cut_at_stops("abc", ("x",)) == ("abc", False) and wire.cut_at_stops("abc", ()) == ("abc", False)
