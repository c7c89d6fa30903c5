"""Remote endpoints as Backends: any OpenAI-compatible server, with presets for Inception's
Mercury, SGLang, vLLM and `dllm serve`, through the `openai` client library.

Knows: the presets (base URL, the variable that holds the key, whether chat chunks are whole
drafts — Mercury's and dllm's `"diffusing": true` — or increments, the fill-in-the-middle route,
Mercury's temperature range), how `--endpoint` is read (a preset name, `PRESET=URL`, or a URL),
how the model id is found (`--model`, else the models endpoint), the chat and FIM request
bodies, how each streamed chunk becomes a `TextSnapshot` and the stream a `Generation`, and
every failure as one `DllmError` line that says what to do (connection refused, timeouts,
401/403, 404, 429/503 after the client's bounded retries with backoff, context length, a stream
cut short, malformed chunks). Must not: import torch, print or log a key (messages from a server
are scrubbed of it), read the OPENAI_* variables (a key for one service is never sent to
another), or talk to anything but the endpoint it was given.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping
from urllib.parse import urlsplit

from . import discovery
from .config import SamplerConfig
from .errors import DllmError, UsageError
from .events import Event, Generation, Request, SpecialTokens, TextSnapshot

if TYPE_CHECKING:
    import openai

DEFAULT_KEY_ENV = "DLLM_API_KEY"
CONNECT_TIMEOUT_S = 5.0
MAX_RETRIES = 2  # the openai client's bounded retries (429, 5xx, connection errors), with backoff
DEFAULT_CONTEXT = 8192  # when the models endpoint does not say
PLACEHOLDER_KEY = "EMPTY"  # what OpenAI-compatible servers without auth expect (vLLM's convention)
PLACEHOLDER_TOKENS = SpecialTokens(mask=-1, eos=-2)  # remote events carry text, not ids
MESSAGE_CAP = 300  # characters of a server's error message shown


@dataclass(frozen=True)
class Preset:
    name: str
    url: str
    key_env: str = DEFAULT_KEY_ENV
    key_required: bool = False
    diffusing: bool = False  # chat chunks carry the whole draft (requested with "diffusing": true)
    fim_diffusing: bool = False  # the same for the fill-in-the-middle route
    fim_path: str = "/completions"  # POST with prompt + suffix
    extension: bool = False  # sends and reads dllm's extension objects
    temperature: tuple[float, float] | None = None  # the range the API accepts


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("mercury", "https://api.inceptionlabs.ai/v1", key_env="INCEPTION_API_KEY", key_required=True,
           diffusing=True, fim_path="/fim/completions", temperature=(0.5, 1.0)),
    Preset("sglang", "http://127.0.0.1:30000/v1"),
    Preset("vllm", "http://127.0.0.1:8000/v1"),
    Preset("dllm", "http://127.0.0.1:8765/v1", diffusing=True, fim_diffusing=True, extension=True),
)}
GENERIC = Preset("openai-compatible", "")
MERCURY_HOSTS = ("api.inceptionlabs.ai",)


def parse_endpoint(value: str, home: Path | None = None) -> tuple[Preset, str]:
    """(preset, base URL) of an --endpoint value: a preset name ("dllm" prefers a running
    `dllm serve`), PRESET=URL, or an http(s) URL (Mercury's host picks its preset)."""
    value = value.strip()
    name, sep, rest = value.partition("=")
    if sep and name in PRESETS:
        return PRESETS[name], _check_url(rest)
    if value in PRESETS:
        preset = PRESETS[value]
        if preset.name == "dllm" and home is not None:
            live = discovery.running(home)
            if live:
                return preset, live[0].url
        return preset, preset.url
    url = _check_url(value)
    host = urlsplit(url).hostname or ""
    return (PRESETS["mercury"] if host in MERCURY_HOSTS else GENERIC), url


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--endpoint {value!r}: expected a base URL such as http://127.0.0.1:8000/v1, or a "
                         f"preset: {', '.join(PRESETS)} (PRESET=URL for a preset at another address)")
    return value.rstrip("/")


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


@contextmanager
def _without_openai_env() -> Iterator[None]:
    """The openai client reads OPENAI_API_KEY, OPENAI_ORG_ID, OPENAI_CUSTOM_HEADERS... when it
    is built; hide them, so nothing meant for OpenAI reaches another endpoint."""
    hidden = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("OPENAI_")}
    try:
        yield
    finally:
        os.environ.update(hidden)


def make_client(url: str, key: str | None, timeout: float, max_retries: int = MAX_RETRIES) -> "openai.OpenAI":
    """An openai client for `url`: connect and read timeouts, bounded retries with backoff,
    proxies from the environment only for hosts that are not loopback."""
    import openai

    with _without_openai_env():
        return openai.OpenAI(base_url=url, api_key=key or PLACEHOLDER_KEY, organization="", project="",
                             timeout=openai.Timeout(timeout, connect=min(CONNECT_TIMEOUT_S, timeout)),
                             max_retries=max_retries,
                             http_client=openai.DefaultHttpxClient(trust_env=not is_loopback_url(url)))


@dataclass(frozen=True)
class ModelCard:
    id: str
    context_length: int | None = None
    owned_by: str = ""


class RemoteBackend:
    """A Backend over an OpenAI-compatible endpoint (events: TextSnapshot, then a Generation)."""

    tokens = PLACEHOLDER_TOKENS

    def __init__(self, client: "openai.OpenAI", preset: Preset, url: str, model: str, *,
                 fim_model: str | None = None, context_length: int = DEFAULT_CONTEXT, key: str | None = None,
                 key_env: str = DEFAULT_KEY_ENV, available: tuple[str, ...] = ()) -> None:
        self.client, self.preset, self.url, self.model = client, preset, url, model
        self.fim_model = fim_model or model
        self.context_length, self.key_env, self.available = context_length, key_env, available
        self._key = key
        self.name = model
        # dllm's extension object as the user gave it (only those options, the served model's
        # recipe under them: `dllm code` does not know a remote model's family); None: from cfg
        self.options: dict[str, Any] | None = None

    def token_text(self, token_id: int) -> str:
        return ""

    def temperature(self, cfg: SamplerConfig) -> float:
        low_high = self.preset.temperature
        return cfg.temperature if low_high is None else min(max(cfg.temperature, low_high[0]), low_high[1])

    def describe(self, cfg: SamplerConfig) -> str:
        """One line for the user: what answers and how its stream is shown."""
        how = "diffusion drafts" if self.preset.diffusing else "streamed increments"
        line = f"{self.model} at {self.url} ({self.preset.name}; {how})"
        t = self.temperature(cfg)
        if t != cfg.temperature:
            low, high = self.preset.temperature or (t, t)
            line += f"; temperature {cfg.temperature:g} -> {t:g} (the API accepts {low:g}-{high:g})"
        return line

    # ---- requests ----

    def body(self, request: Request, cfg: SamplerConfig) -> tuple[str, dict[str, Any], bool]:
        """(path, JSON body, whether chunks are whole drafts) for `request`."""
        body: dict[str, Any] = {"max_tokens": cfg.gen_length, "temperature": self.temperature(cfg),
                                "stream": True, "stream_options": {"include_usage": True}}
        if cfg.top_p is not None:
            body["top_p"] = cfg.top_p
        if cfg.seed is not None:
            body["seed"] = cfg.seed
        if self.preset.extension and self.options is not None:
            if self.options:
                body["dllm"] = dict(self.options)
        elif self.preset.extension:
            ext: dict[str, Any] = {"block_length": cfg.block_length or 0, "threshold": cfg.threshold or 0,
                                   "alg": cfg.alg}
            if cfg.steps is not None:
                ext["steps"] = cfg.steps
            if cfg.editing_threshold is not None:
                ext["editing_threshold"] = cfg.editing_threshold
            body["dllm"] = ext
        if request.infill:
            snapshots = self.preset.fim_diffusing
            body.update(model=self.fim_model, prompt=request.prefix, suffix=request.suffix)
            path = self.preset.fim_path
        else:
            snapshots = self.preset.diffusing
            body.update(model=self.model, messages=[m.as_dict() for m in request.messages])
            path = "/chat/completions"
        if snapshots:
            body["diffusing"] = True
        return path, body, snapshots

    def generate(self, request: Request, cfg: SamplerConfig) -> Iterator[Event]:
        import openai

        path, body, snapshots = self.body(request, cfg)
        kind = "completion" if request.infill else "chat"
        start = time.monotonic()
        draft, chunks, texts = "", 0, 0
        finish: str | None = None
        usage: Mapping[str, Any] = {}
        ext: Mapping[str, Any] = {}
        try:
            stream = self.client.post(path, cast_to=object, body=body, stream=True,
                                      stream_cls=openai.Stream[object])
            for chunk in stream:
                chunks += 1
                text, done, used, extension = parse_chunk(chunk, kind, self.url, chunks)
                usage, ext = used or usage, extension or ext
                finish = done or finish
                new = draft if text is None else (text if snapshots else draft + text)
                if new == draft and not extension:
                    continue  # nothing to show (the role chunk, the usage chunk)
                draft = new
                yield snapshot(texts, draft, time.monotonic() - start, snapshots, ext if extension else {})
                texts += 1
        except openai.APIError as err:
            raise self.explain(err, path, chunks) from None
        except ValueError as err:  # a `data:` line that is not JSON (the openai client parses it)
            raise DllmError(f"{self.url}: malformed stream chunk {chunks + 1} (not JSON: {_cap(str(err))}); is it "
                            "an OpenAI-compatible endpoint? Nothing was applied") from None
        if finish is None:
            raise DllmError(f"the stream from {self.url} ended before the answer was complete (no finish_reason "
                            f"after {chunks} chunks); nothing was applied; retry")
        seconds = time.monotonic() - start
        yield snapshot(texts, draft, seconds, snapshots, ext, done=True)
        server_seconds = ext.get("seconds") if ext.get("done") else None  # a dllm server's denoising time
        yield Generation(draft, _int(usage.get("completion_tokens")) or _int(ext.get("gen_tokens")),
                         _int(ext.get("steps")) or texts, _int(ext.get("forwards")),
                         float(server_seconds) if isinstance(server_seconds, (int, float)) else seconds,
                         _int(usage.get("prompt_tokens")), _int(ext.get("edits")) if ext.get("done") else 0)

    # ---- failures ----

    def explain(self, err: Exception, path: str = "", chunks: int = 0) -> DllmError:
        """One line that says what went wrong and what to do (never the key)."""
        import openai

        where = self.url
        if isinstance(err, openai.APITimeoutError):
            what = "connect" if "Connect" in type(err.__cause__).__name__ else "read"
            limit = getattr(self.client.timeout, what, None)
            within = f" within {limit:g} s" if isinstance(limit, (int, float)) else ""
            return DllmError(f"{where} did not answer{within} ({what} timeout{_after(chunks)}); nothing was applied; "
                             "check that the server is up, or raise $DLLM_TIMEOUT")
        if isinstance(err, openai.APIConnectionError):
            cause = err.__cause__
            if chunks:
                return DllmError(f"the stream from {where} was cut after {chunks} chunks ({_cap(str(cause or err))}); "
                                 "nothing was applied; retry")
            return DllmError(f"cannot reach {where} ({_cap(self._scrub(str(cause or err)))}); start the server "
                             "(e.g. `dllm serve`) or check --endpoint")
        if isinstance(err, openai.APIStatusError):
            return self._status(err, path)
        # an error event inside the stream: {"error": {...}} (e.g. the server is shutting down)
        message = self._scrub(getattr(err, "message", str(err)))
        return DllmError(f"{where} ended the answer with an error: {_cap(message)}; nothing was applied")

    def _status(self, err: "openai.APIStatusError", path: str) -> DllmError:
        status, where = err.status_code, self.url
        body = err.body if isinstance(err.body, dict) else {}
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        code = str(inner.get("code") or "") if isinstance(inner, dict) else ""
        message = _cap(self._scrub(str(inner.get("message") if isinstance(inner, dict) and inner.get("message")
                                       else err.message)))
        if status == 401:
            fix = f"set ${self.key_env} to a valid key" if self._key else f"set ${self.key_env} to its API key"
            return DllmError(f"{where} refused the request: not authorised (401: {message}); {fix}")
        if status == 403:
            return DllmError(f"{where} refused the request (403: {message}); check that the key in ${self.key_env} "
                             "may use this model")
        if status == 404:
            if code == "model_not_found" or "model" in message.lower():
                listed = f"; it serves {', '.join(self.available[:8])}" if self.available else ""
                return DllmError(f"{where} has no model {self.model!r} (404){listed}; pass --model NAME")
            what = "fill-in-the-middle (try --no-infill)" if path != "/chat/completions" else "chat completions"
            return DllmError(f"{where} has no {path} route (404: {message}); this server may not support {what}")
        if status == 429:
            return DllmError(f"{where} is rate limiting (429) and still was after {MAX_RETRIES} retries: {message}; "
                             "wait a minute and retry")
        if status in (502, 503, 504):
            return DllmError(f"{where} is overloaded or unavailable ({status}) after {MAX_RETRIES} retries: "
                             f"{message}; retry later")
        if status == 402:
            return DllmError(f"{where}: account problem (402: {message}); check the account's billing")
        if code == "context_length_exceeded" or "context length" in message.lower():
            return DllmError(f"the request does not fit {self.model}'s context ({status}: {message}); name fewer "
                             "files, or lower --gen-length")
        return DllmError(f"{where} refused the request ({status}: {message})")

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


def snapshot(index: int, draft: str, elapsed: float, snapshots: bool, ext: Mapping[str, Any],
             done: bool = False) -> TextSnapshot:
    """A TextSnapshot of the draft; dllm's extension (when present and well-formed) adds the canvas."""
    canvas = ext.get("canvas")
    ok = isinstance(canvas, list) and all(p is None or isinstance(p, str) for p in canvas)
    revealed = ext.get("revealed")
    confidences = ext.get("confidences")
    edited = ext.get("edited")
    revealed = revealed if isinstance(revealed, list) else []
    confidences = confidences if isinstance(confidences, list) else []
    edited = edited if isinstance(edited, list) else []
    return TextSnapshot(index, draft, elapsed, done=done, mode="snapshot" if snapshots else "append",
                        canvas=tuple(canvas) if ok and canvas is not None else None,
                        revealed=tuple(int(i) for i in revealed if isinstance(i, int)),
                        confidences=tuple(float(c) for c in confidences if isinstance(c, (int, float))),
                        edited=tuple(int(i) for i in edited if isinstance(i, int)),
                        step=ext.get("step") if isinstance(ext.get("step"), int) else None,
                        forwards=ext.get("forwards") if isinstance(ext.get("forwards"), int) else None)


def parse_chunk(chunk: object, kind: str, url: str, number: int) -> tuple[
        str | None, str | None, Mapping[str, Any] | None, Mapping[str, Any] | None]:
    """(text or None, finish_reason, usage, dllm extension) of one chunk; DllmError if it is not
    the shape an OpenAI stream chunk has."""
    def bad(why: str) -> DllmError:
        return DllmError(f"{url}: malformed stream chunk {number} ({why}); is it an OpenAI-compatible "
                         "endpoint? Nothing was applied")

    if not isinstance(chunk, dict):
        raise bad("not a JSON object")
    usage = chunk.get("usage") if isinstance(chunk.get("usage"), dict) else None
    ext = chunk.get("dllm") if isinstance(chunk.get("dllm"), dict) else None
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        if usage is not None:
            return None, None, usage, ext
        raise bad("no 'choices' list")
    if not choices:
        return None, None, usage, ext
    choice = choices[0]
    if not isinstance(choice, dict):
        raise bad("a choice is not an object")
    if kind == "chat":
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise bad("'delta' is not an object")
        text = delta.get("content")
    else:
        text = choice.get("text")
    if text is not None and not isinstance(text, str):
        raise bad("the text is not a string")
    finish = choice.get("finish_reason")
    return text, (str(finish) if finish else None), usage, ext


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _cap(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MESSAGE_CAP else line[:MESSAGE_CAP - 1] + "…"


def _after(chunks: int) -> str:
    return f" after {chunks} chunks" if chunks else ""


# ---- opening an endpoint --------------------------------------------------------------------

def list_models(client: "openai.OpenAI") -> list[ModelCard]:
    """GET /models as ModelCards (context length from context_length or max_model_len)."""
    data = client.get("/models", cast_to=object)
    rows = data.get("data") if isinstance(data, dict) else None
    cards = []
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict) and isinstance(row.get("id"), str):
            ctx = row.get("context_length") or row.get("max_model_len")
            cards.append(ModelCard(row["id"], ctx if isinstance(ctx, int) and ctx > 0 else None,
                                   str(row.get("owned_by") or "")))
    return cards


def pick_models(cards: list[ModelCard], preset: Preset, url: str) -> tuple[str, str]:
    """(chat model, fill-in-the-middle model) when --model is not given. Mercury: the first id
    without "edit" for chat, the first with "edit" for FIM; others: the one model served."""
    ids = [c.id for c in cards]
    if not ids:
        raise DllmError(f"{url} lists no model at /models; pass --model NAME")
    if preset.name == "mercury":
        chat = next((i for i in ids if "edit" not in i), ids[0])
        return chat, next((i for i in ids if "edit" in i), chat)
    if len(ids) > 1:
        raise UsageError(f"{url} serves {len(ids)} models ({', '.join(ids[:8])}); pass --model NAME")
    return ids[0], ids[0]


def open_endpoint(value: str, model: str | None = None, key_env: str | None = None,
                  timeout: float = 120.0, home: Path | None = None,
                  environ: Mapping[str, str] | None = None) -> RemoteBackend:
    """Connect to an endpoint: read the key from its variable, list its models (this also checks
    that it answers and accepts the key), pick the model, learn its context length."""
    import openai

    env = os.environ if environ is None else environ
    preset, url = parse_endpoint(value, home)
    key_name = key_env or preset.key_env
    key = env.get(key_name) or None
    if preset.key_required and key is None:
        raise UsageError(f"{preset.name} needs an API key: set ${key_name} (or name another variable with "
                         "--api-key-env)")
    client = make_client(url, key, timeout)
    probe = RemoteBackend(client, preset, url, model or "?", key=key, key_env=key_name)
    try:
        cards = list_models(client)
    except openai.NotFoundError:  # a server without a model list: fine when the model is named
        if not model:
            raise DllmError(f"{url} has no model list (404 at /models); pass --model NAME") from None
        cards = []
    except openai.APIError as err:
        raise probe.explain(err, "/models") from None
    if preset is GENERIC and any(c.owned_by == "dllm" for c in cards):
        preset = replace(PRESETS["dllm"], url=url)
    if model:
        chat = fim = model
    else:
        chat, fim = pick_models(cards, preset, url)
    card = next((c for c in cards if c.id == chat), None)
    return RemoteBackend(client, preset, url, chat, fim_model=fim, key=key, key_env=key_name,
                         context_length=(card.context_length if card and card.context_length else DEFAULT_CONTEXT),
                         available=tuple(c.id for c in cards))


def open_server(entry: discovery.ServerEntry, key_env: str | None = None, timeout: float = 120.0,
                environ: Mapping[str, str] | None = None) -> RemoteBackend | None:
    """A running `dllm serve` found by discovery (no request made); None when it needs a key
    and the key's variable is not set."""
    env = os.environ if environ is None else environ
    key_name = key_env or DEFAULT_KEY_ENV
    key = env.get(key_name) or None
    if entry.auth and key is None:
        return None
    preset = replace(PRESETS["dllm"], url=entry.url)
    return RemoteBackend(make_client(entry.url, key, timeout), preset, entry.url, entry.model, key=key,
                         key_env=key_name)
