"""remote.py: OpenAI-compatible endpoints as Backends, against a loopback replay server
(tests/replay.py): Mercury-shaped whole-draft snapshots, SGLang/vLLM-shaped increments, the FIM
routes, presets, what is sent (and never sent: keys of other services), every failure as one
DllmError line, and `dllm code --endpoint` through the same review / apply / undo / --json path as
a local model. No network beyond 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pytest
from rich.console import Console

from dllm_cli import catalog, pipeline, remote
from dllm_cli.config import SamplerConfig
from dllm_cli.errors import DllmError, UsageError
from dllm_cli.events import Generation, Message, Request, TextSnapshot
from dllm_cli.review import ReviewOptions
from dllm_cli.ui import Ui

from gitrepo import snapshot
from replay import Deaf, Json, Replay, Sse, free_port, increment_chunks, mercury_chunks, models

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
EDIT = ("src/stats.py\n<<<<<<< SEARCH\n    return sum(xs) / len(xs)\n=======\n"
        "    return sum(xs) / len(xs) if xs else 0.0\n>>>>>>> REPLACE\n")
CHAT = Request((1, 2, 3), messages=(Message("system", "be brief"), Message("user", "write f")))
FIM = Request((1,), (2,), prefix="def f():\n", suffix="\n\nprint(f())\n")
CFG = SamplerConfig.from_options(gen_length=64)


@pytest.fixture
def server():
    with Replay() as s:
        yield s


@pytest.fixture
def embedded(monkeypatch):
    """The embedded model's tokenizer measures prompts for remote models."""
    monkeypatch.setenv("DLLM_WEIGHTS_DIR", str(WEIGHTS))


def backend(url: str, model: str | None = "served", timeout: float = 10.0, env=None, key_env=None):
    return remote.open_endpoint(url, model, key_env, timeout, environ=env or {})


def drain(b, request=CHAT, cfg=CFG) -> tuple[list[TextSnapshot], Generation]:
    events = list(b.generate(request, cfg))
    assert isinstance(events[-1], Generation) and all(isinstance(e, TextSnapshot) for e in events[:-1])
    return events[:-1], events[-1]


def failure(b, request=CHAT) -> str:
    with pytest.raises(DllmError) as info:
        drain(b, request)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ---- endpoints and presets ------------------------------------------------------------------

def test_endpoint_values_presets_urls_and_mistakes(tmp_path):
    assert remote.parse_endpoint("mercury") == (remote.PRESETS["mercury"], "https://api.inceptionlabs.ai/v1")
    assert remote.parse_endpoint("sglang")[1] == "http://127.0.0.1:30000/v1"
    assert remote.parse_endpoint("vllm")[1] == "http://127.0.0.1:8000/v1"
    assert remote.parse_endpoint("dllm", tmp_path)[1] == "http://127.0.0.1:8765/v1"  # no server running
    preset, url = remote.parse_endpoint("sglang=http://gpu-box:30000/v1/")
    assert preset.name == "sglang" and url == "http://gpu-box:30000/v1"
    assert remote.parse_endpoint("https://api.inceptionlabs.ai/v1")[0].name == "mercury"
    assert remote.parse_endpoint("http://127.0.0.1:9/v1")[0] is remote.GENERIC
    for bad in ("mercury2", "ftp://x/v1", "127.0.0.1:8000", "sglang=nonsense"):
        with pytest.raises(UsageError, match="expected a base URL"):
            remote.parse_endpoint(bad)


def test_mercury_needs_its_key_and_the_model_ids_come_from_the_models_endpoint(server):
    with pytest.raises(UsageError, match=r"set \$INCEPTION_API_KEY"):
        remote.open_endpoint(f"mercury={server.url}", None, None, 5.0, environ={})
    server.add("/v1/models", models("mercury-edit-2", "mercury-2", context_length=128000))
    b = remote.open_endpoint(f"mercury={server.url}", None, None, 5.0, environ={"INCEPTION_API_KEY": "k-1"})
    assert (b.model, b.fim_model, b.context_length) == ("mercury-2", "mercury-edit-2", 128000)
    assert server.requests[-1].headers["authorization"] == "Bearer k-1"


def test_one_served_model_is_found_several_need_model(server):
    server.add("/v1/models", models("LLaDA2.0-mini", max_model_len=32768))
    b = backend(server.url, None)
    assert (b.model, b.context_length, b.preset.name) == ("LLaDA2.0-mini", 32768, "openai-compatible")
    server.add("/v1/models", models("a", "b"))
    with pytest.raises(UsageError, match="serves 2 models .a, b.; pass --model NAME"):
        backend(server.url, None)


def test_a_server_without_a_model_list_needs_model(server):
    server.add("/v1/models", Json(404, {"error": {"message": "no route"}}))
    with pytest.raises(DllmError, match=r"has no model list \(404 at /models\); pass --model NAME"):
        backend(server.url, None)
    server.add("/v1/chat/completions", Sse(increment_chunks(["ok"])))
    b = backend(server.url, "named")
    assert (b.model, b.context_length) == ("named", remote.DEFAULT_CONTEXT) and drain(b)[1].text == "ok"


def test_a_dllm_server_is_recognised_by_its_models_listing(server):
    server.add("/v1/models", Json(200, {"data": [{"id": "m", "owned_by": "dllm", "context_length": 512}]}))
    b = backend(server.url, None)
    assert b.preset.name == "dllm" and b.preset.extension and b.url == server.url


# ---- streams --------------------------------------------------------------------------------

def test_mercury_snapshots_replace_the_draft_and_the_body_is_mercurys(server):
    drafts = ["def f(): ▒▒▒", "def f():\n    return 1▒", "def f():\n    return 1\n"]
    server.add("/v1/models", models("mercury-2"))
    server.add("/v1/chat/completions", Sse(mercury_chunks(drafts)))
    b = remote.open_endpoint(f"mercury={server.url}", None, None, 5.0, environ={"INCEPTION_API_KEY": "k"})
    snaps, gen = drain(b)
    assert [s.text for s in snaps[:-1]] == drafts and snaps[-1].done and snaps[-1].text == drafts[-1]
    assert all(s.mode == "snapshot" for s in snaps) and snaps[0].canvas is None
    assert gen.text == drafts[-1] and (gen.gen_tokens, gen.prompt_tokens, gen.steps) == (7, 11, 3)
    sent = server.posts("/v1/chat/completions")[-1].body
    assert sent["diffusing"] is True and sent["stream"] is True and sent["model"] == "mercury-2"
    assert sent["temperature"] == 0.5  # dllm's default 0 clamped into Mercury's 0.5-1.0
    assert sent["max_tokens"] == 64 and sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "write f"}]
    assert "dllm" not in sent
    assert "temperature 0 -> 0.5 (the API accepts 0.5-1)" in b.describe(CFG)


def test_increments_are_appended(server):
    server.add("/v1/chat/completions", Sse(increment_chunks(["def ", "f():", "\n    pass\n"])))
    snaps, gen = drain(backend(f"sglang={server.url}"))
    assert [s.text for s in snaps] == ["def ", "def f():", "def f():\n    pass\n", "def f():\n    pass\n"]
    assert all(s.mode == "append" for s in snaps) and gen.text == "def f():\n    pass\n"
    sent = server.posts("/v1/chat/completions")[-1].body
    assert "diffusing" not in sent and sent["temperature"] == 0.0 and sent["model"] == "served"


def test_fim_goes_to_the_completions_route_with_suffix(server):
    server.add("/v1/completions", Sse(increment_chunks(["    return 1"], kind="completion")))
    _, gen = drain(backend(server.url), FIM)
    assert gen.text == "    return 1"
    sent = server.posts("/v1/completions")[-1].body
    assert (sent["prompt"], sent["suffix"], sent["model"]) == (FIM.prefix, FIM.suffix, "served")


def test_mercury_fim_goes_to_its_fim_route_as_increments(server):
    server.add("/v1/models", models("mercury-2", "mercury-edit-2"))
    server.add("/v1/fim/completions", Sse(increment_chunks(["    ret", "urn 1"], kind="completion")))
    b = remote.open_endpoint(f"mercury={server.url}", None, None, 5.0, environ={"INCEPTION_API_KEY": "k"})
    snaps, gen = drain(b, FIM)
    assert gen.text == "    return 1" and snaps[0].mode == "append"
    sent = server.posts("/v1/fim/completions")[-1].body
    assert sent["model"] == "mercury-edit-2" and sent["suffix"] == FIM.suffix and "diffusing" not in sent


def test_dllm_extension_is_sent_and_read(server):
    ext = {"step": 0, "forwards": 1, "canvas": ["def", None, None], "revealed": [0], "confidences": [0.8]}
    chunk = {"choices": [{"index": 0, "delta": {"content": "def░░"}, "finish_reason": None}], "dllm": ext}
    last = {"choices": [{"index": 0, "delta": {"content": "def f"}, "finish_reason": "stop"}],
            "dllm": {"done": True, "steps": 2, "forwards": 3, "seconds": 0.25, "gen_tokens": 2}}
    server.add("/v1/chat/completions", Sse([chunk, last]))
    cfg = SamplerConfig.from_options(gen_length=64, steps=16, block_length=0, threshold=0, alg="random", seed=3)
    snaps, gen = drain(backend(f"dllm={server.url}"), CHAT, cfg)
    assert snaps[0].canvas == ("def", None, None) and snaps[0].masked == 2 and snaps[0].revealed == (0,)
    assert snaps[0].confidences == (0.8,) and snaps[0].step == 0
    assert (gen.text, gen.steps, gen.forwards, gen.seconds, gen.gen_tokens) == ("def f", 2, 3, 0.25, 2)
    sent = server.posts("/v1/chat/completions")[-1].body
    assert sent["dllm"] == {"steps": 16, "block_length": 0, "threshold": 0, "alg": "random"}
    assert sent["seed"] == 3 and sent["diffusing"] is True


# ---- what is never sent ---------------------------------------------------------------------

def test_no_openai_variable_reaches_another_endpoint(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-secret")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-secret")
    monkeypatch.setenv("OPENAI_CUSTOM_HEADERS", "X-Leak: leaked\nAuthorization: Bearer sk-ambient")
    server.add("/v1/chat/completions", Sse(increment_chunks(["x"])))
    drain(backend(server.url))
    for seen in server.requests:
        headers = json.dumps(seen.headers)
        assert "secret" not in headers and "leak" not in headers and "ambient" not in headers
        assert seen.headers["authorization"] == "Bearer EMPTY"
    assert os.environ["OPENAI_API_KEY"] == "sk-openai-secret"  # put back afterwards


def test_the_key_comes_from_the_named_variable_and_is_scrubbed_from_messages(server):
    key = "sk-test-ABCDEF123456"
    server.add("/v1/chat/completions", Json(401, {"error": {"message": f"Incorrect API key provided: {key}",
                                                            "type": "invalid_request_error"}}))
    b = backend(server.url, env={"MY_KEY": key}, key_env="MY_KEY")
    assert server.requests[-1].headers["authorization"] == f"Bearer {key}"
    message = failure(b)
    assert key not in message and "***" in message and "set $MY_KEY to a valid key" in message


# ---- failures -------------------------------------------------------------------------------

def test_connection_refused():
    port = free_port()
    with pytest.raises(DllmError, match=rf"cannot reach http://127.0.0.1:{port}/v1 .*Connection refused.*dllm serve"):
        backend(f"http://127.0.0.1:{port}/v1")


def test_connect_timeout():
    with Deaf() as deaf, pytest.raises(DllmError, match=r"did not answer within 0.3 s \(connect timeout\)"):
        remote.open_endpoint(deaf.url, "m", None, 0.3, environ={})


def test_read_timeout_mid_stream(server):
    server.add("/v1/chat/completions", Sse(increment_chunks(["a", "b"]), delay=2.0))
    b = backend(server.url, timeout=0.5)
    assert "did not answer within 0.5 s (read timeout after 1 chunks)" in failure(b)


@pytest.mark.parametrize("status, body, expect", [
    (401, {"error": {"message": "no key"}}, r"not authorised \(401: no key\); set \$DLLM_API_KEY to its API key"),
    (403, {"error": {"message": "forbidden"}}, r"\(403: forbidden\); check that the key in \$DLLM_API_KEY"),
    (404, {"error": {"message": "The model `served` does not exist", "code": "model_not_found"}},
     r"has no model 'served' \(404\); it serves served; pass --model NAME"),
    (400, {"error": {"message": "This model's maximum context length is 512 tokens", "code":
                     "context_length_exceeded"}}, r"does not fit served's context .*lower --gen-length"),
    (402, {"error": {"message": "no credit", "type": "account_error"}}, r"account problem \(402: no credit\)"),
    (400, {"error": {"message": "'top_p' must be in (0, 1]"}}, r"refused the request \(400: 'top_p' must be"),
])
def test_status_errors_say_what_to_do(server, status, body, expect):
    server.add("/v1/chat/completions", Json(status, body))
    message = failure(backend(server.url))
    assert re.search(expect, message), message


def test_a_missing_fim_route_says_so(server):
    assert "has no /completions route (404" in failure(backend(server.url), FIM)
    assert "try --no-infill" in failure(backend(server.url), FIM)


@pytest.mark.parametrize("status", [429, 503])
def test_429_and_503_are_retried_with_backoff_then_succeed(server, status):
    busy = Json(status, {"error": {"message": "slow down"}}, {"retry-after-ms": "20"})
    server.add("/v1/chat/completions", busy, busy, Sse(increment_chunks(["ok"])))
    _, gen = drain(backend(server.url))
    assert gen.text == "ok" and len(server.posts("/v1/chat/completions")) == 3


@pytest.mark.parametrize("status, expect", [(429, "rate limiting (429) and still was after 2 retries"),
                                            (503, "overloaded or unavailable (503) after 2 retries")])
def test_429_and_503_give_up_after_bounded_retries(server, status, expect):
    server.add("/v1/chat/completions", Json(status, {"error": {"message": "busy"}}, {"retry-after-ms": "10"}))
    assert expect in failure(backend(server.url))
    assert len(server.posts("/v1/chat/completions")) == 1 + remote.MAX_RETRIES


def test_a_stream_cut_mid_way(server):
    server.add("/v1/chat/completions", Sse(increment_chunks(["a", "b", "c"]), cut_after=2, cut="abort"))
    assert "was cut after 2 chunks" in failure(backend(server.url))


def test_a_stream_that_ends_without_finishing(server):
    server.add("/v1/chat/completions", Sse(increment_chunks(["a", "b", "c"]), cut_after=2, done=False))
    assert "ended before the answer was complete (no finish_reason after 2 chunks)" in failure(backend(server.url))


@pytest.mark.parametrize("event, expect", [
    ("{not json", "malformed stream chunk 2 (not JSON"),
    ({"choices": "nope"}, "malformed stream chunk 2 (no 'choices' list)"),
    ({"choices": [{"delta": {"content": 7}}]}, "malformed stream chunk 2 (the text is not a string)"),
    ({"choices": [{"delta": "x"}]}, "malformed stream chunk 2 ('delta' is not an object)"),
    ([1, 2], "malformed stream chunk 2 (not a JSON object)"),
])
def test_malformed_chunks(server, event, expect):
    good = increment_chunks(["a"])[0]
    good["choices"][0]["finish_reason"] = None
    server.add("/v1/chat/completions", Sse([good, event]))
    assert expect in failure(backend(server.url))


def test_an_error_event_inside_the_stream(server):
    error = {"error": {"message": "the server is shutting down", "type": "server_error", "code": "cancelled"}}
    server.add("/v1/chat/completions", Sse([increment_chunks(["a"])[0], error]))
    assert "ended the answer with an error: the server is shutting down" in failure(backend(server.url))


# ---- dllm code --endpoint -------------------------------------------------------------------

class Code:
    """pipeline.code against an endpoint, on string consoles."""

    def __init__(self, url, task, *paths, model="served", json_out=False, yes=False, dry_run=False,
                 infill=None, gen_length=64, live=False, show_context=False, sampler_options=None):
        err = Console(file=io.StringIO(), width=100, height=20, force_terminal=live, force_interactive=live)
        out = Console(file=io.StringIO(), width=200)
        ui = Ui(err, out, live=live, can_confirm=False, json=json_out)
        opts = pipeline.CodeOptions(task=task, paths=paths, model=model, cfg=SamplerConfig.from_options(
            gen_length=gen_length), infill=infill, endpoint=url, timeout=10.0, show_context=show_context,
            review=ReviewOptions(yes=yes, dry_run=dry_run), sampler_options=sampler_options)
        self.code, self.error = 0, None
        try:
            pipeline.code(opts, ui)
        except DllmError as exc:
            self.code, self.error = exc.exit_code, exc
        self.out, self.err = out.file.getvalue(), err.file.getvalue()


def test_code_endpoint_chat_edit_is_applied_and_undone_through_the_same_path(repo, embedded, server, monkeypatch):
    drafts = [EDIT[:40] + "░" * 20, EDIT[:90] + "░" * 10, EDIT]
    server.add("/v1/models", models("mercury-2", context_length=128000))
    server.add("/v1/chat/completions", Sse(mercury_chunks(drafts)))
    monkeypatch.setenv("INCEPTION_API_KEY", "k-secret-777")
    run = Code(f"mercury={server.url}", "make mean handle an empty list", "src/stats.py", model=None,
               json_out=True, yes=True)
    assert run.code == 0, run.err
    assert (repo / "src/stats.py").read_bytes() == b"def mean(xs):\r\n    return sum(xs) / len(xs) if xs else 0.0"
    data = json.loads(run.out)
    assert data["applied"] and data["output"] == EDIT and data["endpoint"] == server.url
    assert data["model"] == "mercury-2" and data["gen_tokens"] == 7 and data["prompt_tokens"] == 11
    user = server.posts("/v1/chat/completions")[-1].body["messages"][-1]["content"]
    assert "return sum(xs) / len(xs)" in user and "Task: make mean handle an empty list" in user
    assert "k-secret-777" not in run.out + run.err
    from dllm_cli.journal import state_dir_for, undo

    undo(repo, state_dir=state_dir_for(repo))
    assert (repo / "src/stats.py").read_bytes() == b"def mean(xs):\r\n    return sum(xs) / len(xs)"


def test_a_served_model_of_unknown_family_gets_only_the_options_asked(repo, embedded, server):
    """Against a `dllm serve` whose checkpoint is not here, dllm cannot know the served family's
    recipe (an SDAR server decodes in blocks of 4, dllm's fast mode in 32): it sends only the
    options given, which the server applies over its own recipe, and leaves LLaDA2's editing
    option to the server to check."""
    server.add("/v1/models", Json(200, {"data": [{"id": "m", "owned_by": "dllm", "context_length": 4096}]}))
    server.add("/v1/chat/completions", Sse(increment_chunks([EDIT])))
    given = dict(gen_length=64, steps=None, block_length=None, temperature=None, threshold=None, seed=None,
                 alg=None)
    run = Code(server.url, "make mean handle an empty list", "src/stats.py", model=None, dry_run=True,
               sampler_options=given)
    assert run.code == 0, run.err
    sent = server.posts("/v1/chat/completions")[-1].body
    assert "dllm" not in sent and sent["max_tokens"] == 64
    run = Code(server.url, "make mean handle an empty list", "src/stats.py", model=None, dry_run=True,
               sampler_options={**given, "steps": 16, "threshold": 0.5, "editing_threshold": "off"})
    assert run.code == 0, run.err
    assert server.posts("/v1/chat/completions")[-1].body["dllm"] == {"steps": 16, "threshold": 0.5,
                                                                     "editing_threshold": "off"}


def test_code_endpoint_infill_sends_the_window_through_fim(repo, embedded, server):
    (repo / "src/geo.py").write_text("import math\n\n\ndef norm(v):\n    pass\n\n\nprint(norm([3, 4]))\n")
    server.add("/v1/completions", Sse(increment_chunks(["    return math.hypot(*v)\n"], kind="completion")))
    run = Code(server.url, "implement norm", "src/geo.py", dry_run=True)
    assert run.code == 0, run.err
    assert "+    return math.hypot(*v)" in run.out and "-    pass" in run.out
    sent = server.posts("/v1/completions")[-1].body
    assert sent["prompt"] == "import math\n\n\ndef norm(v):\n" and sent["suffix"] == "\n\nprint(norm([3, 4]))\n"
    assert (repo / "src/geo.py").read_text().endswith("pass\n\n\nprint(norm([3, 4]))\n")  # dry run


def test_code_endpoint_infill_sends_only_the_window_of_a_long_file(repo, embedded, server):
    body = "".join(f"X{i} = {i}\n" for i in range(3000))
    (repo / "src/big.py").write_text(body + "\n\ndef norm(v):\n    pass\n\n" + body)
    server.add("/v1/models", models("served", context_length=600))
    server.add("/v1/completions", Sse(increment_chunks(["    return 0\n"], kind="completion")))
    run = Code(server.url, "implement norm", "src/big.py", dry_run=True)
    assert run.code == 0, run.err
    sent = server.posts("/v1/completions")[-1].body
    assert sent["prompt"].endswith("def norm(v):\n") and len(sent["prompt"]) < len(body) // 4
    assert sent["suffix"].startswith("\n") and len(sent["suffix"]) < len(body) // 4


@pytest.mark.parametrize("answer, expect", [
    (Json(503, {"error": {"message": "busy"}}, {"retry-after-ms": "10"}), "overloaded or unavailable (503)"),
    (Sse(increment_chunks(["a", "b"]), cut_after=1, cut="abort"), "was cut after 1 chunks"),
])
def test_code_endpoint_failures_exit_1_and_change_nothing(repo, embedded, server, answer, expect):
    before = snapshot(repo)
    server.add("/v1/chat/completions", answer)
    run = Code(server.url, "make mean handle an empty list", "src/stats.py", yes=True)
    assert run.code == 1 and expect in str(run.error) and snapshot(repo) == before


def test_code_endpoint_with_a_local_checkpoint_measures_exactly(repo, server, dream_ckpt):
    """--model naming a local folder: the endpoint serves that checkpoint (its name is the id)."""
    server.add("/v1/models", models(dream_ckpt.name, owned_by="dllm"))
    server.add("/v1/chat/completions", Sse(increment_chunks([EDIT])))
    run = Code(server.url, "make mean handle an empty list", "src/stats.py", model=str(dream_ckpt), dry_run=True)
    assert run.code == 0, run.err
    assert server.posts("/v1/chat/completions")[-1].body["model"] == dream_ckpt.name == catalog.inspect(
        dream_ckpt).name


def test_code_endpoint_draws_the_snapshots_live_then_the_answer_once(repo, embedded, server):
    drafts = ["src/stats.py\n<<<<<<< SEARCH ░░░░░░░░", EDIT[:70] + "░░░░", EDIT]
    server.add("/v1/chat/completions", Sse(mercury_chunks(drafts), delay=0.1))
    run = Code(f"dllm={server.url}", "make mean handle an empty list", "src/stats.py", dry_run=True, live=True)
    assert run.code == 0, run.err
    assert "<<<<<<< SEARCH ░░░░░░░░" in run.err and "chunk 1" in run.err  # a frame of the first draft
    assert run.err.count("if xs else 0.0") >= 2  # the last frame, then the final text printed once
    assert "+    return sum(xs) / len(xs) if xs else 0.0" in run.out


def test_show_context_for_an_endpoint_uses_its_context_length(repo, embedded, server):
    server.add("/v1/models", models("served", max_model_len=300))
    run = Code(server.url, "make mean handle an empty list", "src/stats.py", show_context=True)
    assert run.code == 0, run.err
    assert "src/stats.py" in run.out and "of " in run.out and server.posts("/v1/chat/completions") == []
    budget = int(run.out.split(" of ")[1].split()[0])
    assert budget < 300 - 64
