"""`dllm serve` for real: a subprocess on a loopback port with the embedded model
(weights/dllm-coder-mini), driven by the `openai` client and by raw HTTP: the routes, answers
equal to a local run, streams (increments and diffusing drafts with dllm's extension), FIM,
bad values, the guards, a client that goes away, a full queue, SIGTERM mid-stream, the discovery
file, `dllm serve --status`, and `dllm code` against it (--endpoint, and warm by discovery)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2
import openai
import pytest

from dllm_cli import catalog, discovery, generate, infill
from dllm_cli.backend import open_local
from dllm_cli.config import SamplerConfig
from dllm_cli.events import Message, Request
from dllm_cli.serve.measure import Running, dllm_env
from dllm_cli.serve.wire import MASK_GLYPH
from dllm_cli.tokenizer import Tokenizer

MODEL = "dllm-coder-mini"
ROOT = Path(__file__).resolve().parent.parent
PREFIX, SUFFIX = "def add(a, b):\n", "\n\ndef sub(a, b):\n    return a - b\n"
USER = [{"role": "user", "content": "write a python function that adds two numbers"}]
LONG = {"max_tokens": 480, "dllm": {"threshold": 0, "block_length": 0, "steps": 480}}  # one token a step


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with Running(tmp_path_factory.mktemp("serve-home")) as server:
        yield server


@pytest.fixture(scope="module")
def client(srv):
    return openai.OpenAI(base_url=srv.url, api_key="EMPTY", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def local():
    """The same checkpoint loaded here: the server's answers must equal these."""
    ckpt = catalog.inspect(None)
    tok = Tokenizer.from_checkpoint(ckpt)
    return open_local(ckpt, "cpu", "float32", tok), tok


def post(srv, path, body, headers=None):
    return httpx2.post(srv.url + path, json=body, headers=headers or {}, timeout=60, trust_env=False)


def sse_events(response) -> list:
    """The data of each SSE event of a streamed httpx2 response ("[DONE]" as a string)."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# ---- routes ---------------------------------------------------------------------------------

def test_models_and_health(srv, client):
    listed = client.models.list().data
    assert [m.id for m in listed] == [MODEL] and listed[0].owned_by == "dllm"
    assert listed[0].model_extra["context_length"] == 512
    assert client.models.retrieve(MODEL).id == MODEL
    health = httpx2.get(srv.url.replace("/v1", "/health"), trust_env=False).json()
    assert health["status"] == "ok" and health["model"] == MODEL and health["queue"]["capacity"] == 32


def test_chat_non_stream_equals_a_local_run_with_usage(client, local):
    backend, tok = local
    reply = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=32, temperature=0)
    ids = tok.encode(tok.apply_chat_template([Message(**m) for m in USER]))
    gen = generate.run(backend, Request(tuple(ids)), SamplerConfig.from_options(gen_length=32))
    assert reply.choices[0].message.content == gen.text and reply.choices[0].finish_reason == "stop"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(ids), gen.gen_tokens)
    assert reply.usage.total_tokens == len(ids) + gen.gen_tokens
    assert reply.model_extra["dllm"]["steps"] == gen.steps


def test_sampling_is_replayable_with_a_seed(client):
    ask = dict(model=MODEL, messages=USER, max_tokens=32, temperature=1.0, top_p=0.95)
    answers = [client.chat.completions.create(seed=s, **ask).choices[0].message.content for s in (5, 5, 6, 7, 8)]
    assert answers[0] == answers[1] and len(set(answers)) > 1


def test_stream_increments_join_to_the_answer_and_usage_comes_last(client):
    whole = client.completions.create(model=MODEL, prompt="import os\n\n\ndef main():\n", max_tokens=32)
    chunks = list(client.completions.create(model=MODEL, prompt="import os\n\n\ndef main():\n", max_tokens=32,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    chat = list(client.chat.completions.create(model=MODEL, messages=USER, max_tokens=32, stream=True))
    assert chat[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chat)
    assert text == client.chat.completions.create(model=MODEL, messages=USER, max_tokens=32).choices[0].message.content


def test_diffusing_chunks_carry_the_whole_draft_and_dllms_extension(client):
    final = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=32).choices[0].message.content
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, max_tokens=32, stream=True,
                                                 extra_body={"diffusing": True}))
    steps = [c for c in chunks if "dllm" in (c.model_extra or {}) and not c.model_extra["dllm"]["done"]]
    assert len(steps) >= 2 and chunks[0].choices[0].delta.role == "assistant"
    assert MASK_GLYPH in steps[0].choices[0].delta.content  # a draft with masks still in it
    assert chunks[-1].choices[0].delta.content == final and chunks[-1].choices[0].finish_reason == "stop"
    last_step = -1
    for c in steps:
        ext = c.model_extra["dllm"]
        assert ext["step"] > last_step and len(ext["canvas"]) == ext["gen_length"] == 32
        assert ext["masked"] == [i for i, p in enumerate(ext["canvas"]) if p is None]
        assert not set(ext["revealed"]) & set(ext["masked"]) and len(ext["confidences"]) == len(ext["revealed"])
        assert all(0 <= p <= 1 for p in ext["confidences"])
        last_step = ext["step"]
    assert chunks[-1].model_extra["dllm"]["done"] and chunks[-1].model_extra["dllm"]["steps"] == last_step + 1


def test_fim_is_anchored_infilling_equal_to_a_local_run(srv, client, local):
    backend, tok = local
    pre, suf = infill.canvas(tok.encode(PREFIX), tok.encode(SUFFIX), 16, 512, tok.eos_token_id)
    gen = generate.run(backend, Request(tuple(pre), tuple(suf)), SamplerConfig.from_options(gen_length=16))
    reply = client.completions.create(model=MODEL, prompt=PREFIX, suffix=SUFFIX, max_tokens=16)
    assert reply.choices[0].text == gen.text and reply.usage.prompt_tokens == len(pre) + len(suf)
    mercury_path = post(srv, "/fim/completions", {"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 16}).json()
    assert mercury_path["choices"][0]["text"] == gen.text and mercury_path["object"] == "text_completion"


def test_sampler_options_under_the_extension_object(client, local):
    backend, tok = local
    ext = {"steps": 8, "block_length": 8, "threshold": 0, "alg": "random"}
    reply = client.completions.create(model=MODEL, prompt="import os\n", max_tokens=16, seed=3,
                                      extra_body={"dllm": ext})
    cfg = SamplerConfig.from_options(gen_length=16, steps=8, block_length=8, threshold=0, alg="random", seed=3)
    assert reply.choices[0].text == generate.run(backend, Request(tuple(tok.encode("import os\n"))), cfg).text
    assert reply.model_extra["dllm"]["steps"] <= 8


def test_stop_strings_cut_the_answer(client):
    prompt = "import os\n\n\ndef main():\n"
    whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=32).choices[0].text
    assert len(whole) >= 5, whole
    stop = whole[3:5]
    cut = client.completions.create(model=MODEL, prompt=prompt, max_tokens=32, stop=[stop, "never-there"])
    assert cut.choices[0].text == whole[:whole.find(stop)] and cut.choices[0].finish_reason == "stop"
    streamed = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=32, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == whole[:whole.find(stop)]


def test_unknown_fields_are_ignored(client):
    reply = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=8,
                                           extra_body={"frobnicate": 1, "reasoning_effort": "high", "tools": []})
    assert reply.choices[0].message.role == "assistant"


@pytest.mark.parametrize("body, param", [
    ({"temperature": "hot"}, "temperature"), ({"temperature": 3}, "temperature"), ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"), ({"top_p": 0}, "top_p"), ({"seed": 1.5}, "seed"), ({"n": 2}, "n"),
    ({"dllm": {"alg": "nope"}}, None), ({"dllm": {"threshold": 2}}, "dllm.threshold"),
    ({"dllm": {"steps": 0}}, "dllm.steps"), ({"dllm": "fast"}, "dllm"), ({"stream": "yes"}, "stream"),
    ({"max_tokens": 33, "dllm": {"block_length": 32}}, None), ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": []}, "messages"), ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"), ({"model": 7}, "model"),
])
def test_bad_values_are_400_with_an_openai_error_body(srv, client, body, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=USER, extra_body=body)  # extra_body wins
    error = info.value.body
    assert error["type"] == "invalid_request_error" and error["message"] and error.get("param") == param
    if "dllm" in body or "max_tokens" in body:
        assert "--" not in error["message"]  # fields, not command-line options, are named


def test_bad_json_and_bad_prompts_are_400(srv):
    bad = httpx2.post(srv.url + "/chat/completions", content=b"{nope", trust_env=False,
                      headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    assert post(srv, "/chat/completions", [1, 2]).status_code == 400
    assert post(srv, "/completions", {"prompt": 5}).json()["error"]["param"] == "prompt"
    assert post(srv, "/completions", {"prompt": ""}).status_code == 400
    assert post(srv, "/completions", {"prompt": "x", "suffix": "y", "max_tokens": 600}).json()["error"]["code"] \
        == "context_length_exceeded"
    huge = post(srv, "/chat/completions", {"messages": [{"role": "user", "content": "x" * (9 << 20)}]})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"


def test_over_the_context_length_is_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x " * 600}],
                                       max_tokens=32)
    assert info.value.body["code"] == "context_length_exceeded" and "512" in info.value.body["message"]


def test_unknown_models_and_routes_are_404_and_no_path_is_opened(srv, client, tmp_path):
    other = shutil.copytree(catalog.default_model_dir(), tmp_path / "other", ignore=shutil.ignore_patterns("*.jsonl"))
    for name in ("nope", str(other), "../../etc/passwd"):
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model=name, messages=USER, max_tokens=8)
        assert info.value.body["code"] == "model_not_found"
    missing = httpx2.get(srv.url + "/engines", trust_env=False)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_browsers_and_foreign_host_names_are_refused_without_a_key(srv):
    assert post(srv, "/chat/completions", {"messages": USER}, {"Origin": "http://evil.example"}).status_code == 403
    refused = post(srv, "/chat/completions", {"messages": USER}, {"Host": "evil.example:80"})
    assert refused.status_code == 403 and "loopback" in refused.json()["error"]["message"]


def test_a_client_that_goes_away_cancels_its_denoise(srv, client):
    with httpx2.stream("POST", srv.url + "/chat/completions", trust_env=False, timeout=60,
                       json={"messages": USER, "stream": True, **LONG}) as response:
        for line in response.iter_lines():
            if '"step":3,' in line:
                break  # leaving the block closes the connection after 4 of 480 steps
    for _ in range(200):
        if "cancelled after" in srv.stderr:
            break
        time.sleep(0.05)
    line = next(x for x in srv.lines if "cancelled after" in x)
    assert "the client went away" in line and int(line.split("after ")[1].split()[0]) < 480
    # the worker is free again: a new request is answered
    assert client.chat.completions.create(model=MODEL, messages=USER, max_tokens=8).choices


def test_status_lists_the_server_and_its_discovery_file_holds_no_secret(srv):
    done = subprocess.run([sys.executable, "-m", "dllm_cli", "serve", "--status", "--json"], capture_output=True,
                          text=True, env=dllm_env(srv.home), timeout=60)
    rows = json.loads(done.stdout)
    assert [r["url"] for r in rows] == [srv.url] and rows[0]["model"] == MODEL and rows[0]["auth"] is False
    assert rows[0]["checkpoint"] == str(catalog.default_model_dir().resolve())
    table = subprocess.run([sys.executable, "-m", "dllm_cli", "serve", "--status"], capture_output=True, text=True,
                           env=dllm_env(srv.home), timeout=60)
    assert srv.url in table.stdout and MODEL in table.stdout
    files = list(discovery.servers_dir(srv.home).glob("*.json"))
    assert len(files) == 1 and oct(files[0].stat().st_mode & 0o777) == "0o600"


# ---- dllm code against the server -----------------------------------------------------------

def code(args, cwd, home, **env):
    return subprocess.run([sys.executable, "-m", "dllm_cli", "code", *args], cwd=cwd, capture_output=True, text=True,
                          env=dllm_env(home, **env), timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("work")
    shutil.copy(ROOT / "examples/stats.py", folder / "stats.py")
    return folder


@pytest.fixture(scope="module")
def cold(work, tmp_path_factory):
    """A local run (--no-server) of the README's first command."""
    done = code(["--no-server", "--dry-run", "implement median", "stats.py"], work, tmp_path_factory.mktemp("h"))
    assert done.returncode == 0, done.stderr
    return done


def test_code_endpoint_gives_the_same_diff_as_a_local_load(srv, work, cold, tmp_path):
    done = code(["--endpoint", srv.url, "--dry-run", "implement median", "stats.py"], work, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == cold.stdout and "+    " in done.stdout
    assert f"using {MODEL} at {srv.url} (dllm; diffusion drafts)" in done.stderr and "loading" not in done.stderr


def test_code_is_warm_by_default_and_no_server_loads_here(srv, work, cold):
    warm = code(["--dry-run", "--json", "implement median", "stats.py"], work, srv.home)
    assert warm.returncode == 0, warm.stderr
    assert f"using the warm server at {srv.url}" in warm.stderr and "loading" not in warm.stderr
    report = json.loads(warm.stdout)
    assert report["endpoint"] == srv.url and report["patch"] in cold.stdout and report["model"] == MODEL
    here = code(["--no-server", "--dry-run", "implement median", "stats.py"], work, srv.home)
    assert "loading dllm-coder-mini" in here.stderr and "warm server" not in here.stderr
    assert here.stdout == cold.stdout


def test_code_endpoint_errors_are_one_line_and_exit_1(srv, work, tmp_path):
    done = code(["--endpoint", srv.url, "--model", "nope", "--dry-run", "--no-infill", "add a docstring to clamp",
                 "stats.py"], work, tmp_path)
    assert done.returncode == 1 and done.stderr.count("dllm: error:") == 1
    assert f"{srv.url} has no model 'nope' (404); it serves {MODEL}; pass --model NAME" in done.stderr
    over = code(["--endpoint", srv.url, "--dry-run", "--no-infill", "--gen-length", "480", "add a docstring",
                 "stats.py"], work, tmp_path)
    assert over.returncode == 2 and over.stdout == ""  # measured against the context the server lists
    assert "--gen-length 480 do not fit the model's 512-token context" in over.stderr


# ---- servers of their own -------------------------------------------------------------------

def test_a_key_is_required_when_set_and_never_shown(tmp_path, work, cold):
    key = "k-9f8e7d6c5b4a"
    with Running(tmp_path / "home", env={"DLLM_API_KEY": key}) as server:
        c = openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            c.models.list()
        assert info.value.body["code"] == "invalid_api_key"
        assert httpx2.get(server.url + "/models", trust_env=False).status_code == 401
        assert httpx2.get(server.url.replace("/v1", "/health"), trust_env=False).status_code == 200
        good = openai.OpenAI(base_url=server.url, api_key=key, max_retries=0)
        assert good.chat.completions.create(model=MODEL, messages=USER, max_tokens=8).choices
        warm = code(["--dry-run", "implement median", "stats.py"], work, server.home, DLLM_API_KEY=key)
        assert "using the warm server" in warm.stderr and warm.stdout == cold.stdout
        nokey = code(["--dry-run", "implement median", "stats.py"], work, server.home)
        assert "needs a key and $DLLM_API_KEY is not set; loading the model here" in nokey.stderr
        assert nokey.stdout == cold.stdout
        status = subprocess.run([sys.executable, "-m", "dllm_cli", "serve", "--status", "--json"],
                                capture_output=True, text=True, env=dllm_env(server.home), timeout=60)
        seen = (discovery.servers_dir(server.home) / f"{server.pid}.json").read_text()
        assert json.loads(status.stdout)[0]["auth"] is True
    assert key not in server.stderr + status.stdout + seen + warm.stderr + nokey.stderr


def test_other_hosts_need_a_key_and_a_taken_port_is_refused_before_loading(srv, tmp_path):
    env = dllm_env(tmp_path)
    open_all = subprocess.run([sys.executable, "-m", "dllm_cli", "serve", "--host", "0.0.0.0"], capture_output=True,
                              text=True, env=env, timeout=60)
    assert open_all.returncode == 2 and "reachable from other machines; set a key first" in open_all.stderr
    port = srv.url.rsplit(":", 1)[1].split("/")[0]
    taken = subprocess.run([sys.executable, "-m", "dllm_cli", "serve", "--port", port], capture_output=True,
                           text=True, env=env, timeout=60)
    assert taken.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in taken.stderr
    assert "loading" not in taken.stderr


def test_a_full_queue_answers_503_and_the_queued_request_is_served(tmp_path):
    with Running(tmp_path / "home", "--queue", "1") as server:
        first: dict = {}
        leave = threading.Event()

        def long_stream():  # reads until told to leave (the client goes away)
            with httpx2.stream("POST", server.url + "/chat/completions", trust_env=False, timeout=60,
                               json={"messages": USER, "stream": True, **LONG}) as response:
                for _ in response.iter_lines():
                    first["lines"] = first.get("lines", 0) + 1
                    if leave.is_set():
                        break

        runner = threading.Thread(target=long_stream)
        runner.start()
        health = server.url.replace("/v1", "/health")
        while httpx2.get(health, trust_env=False).json()["queue"]["running"] == 0:
            time.sleep(0.02)
        queued = {}
        waiter = threading.Thread(target=lambda: queued.update(r=post(server, "/chat/completions",
                                                                      {"messages": USER, "max_tokens": 8})))
        waiter.start()
        while httpx2.get(health, trust_env=False).json()["queue"]["waiting"] == 0:
            time.sleep(0.02)
        full = post(server, "/chat/completions", {"messages": USER, "max_tokens": 8})
        assert full.status_code == 503 and full.json()["error"]["code"] == "queue_full"
        assert full.headers["retry-after"] == "1"
        leave.set()
        runner.join(60)
        waiter.join(60)
        assert queued["r"].status_code == 200 and queued["r"].json()["choices"][0]["message"]["role"] == "assistant"
        assert first["lines"] >= 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_in_flight_streams_cleanly_and_removes_the_discovery_file(tmp_path, sig):
    server = Running(tmp_path / "home")
    events: list = []
    with httpx2.stream("POST", server.url + "/chat/completions", trust_env=False, timeout=60,
                       json={"messages": USER, "stream": True, "diffusing": True, **LONG}) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line[6:]
                events.append(data if data == "[DONE]" else json.loads(data))
                if len(events) == 4:
                    os.kill(server.pid, sig)
    assert events[-1] == "[DONE]" and events[-2]["error"]["message"] == "the server is shutting down"
    assert server.proc.wait(30) == 0
    assert not list(discovery.servers_dir(server.home).glob("*.json"))
    server.stop()
    assert "stopped (" in server.stderr and "Traceback" not in server.stderr
