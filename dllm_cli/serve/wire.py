"""The OpenAI wire format of `dllm serve`, as pure functions on plain values (no HTTP here).

Knows: how a `/v1/chat/completions` or `/v1/completions` body turns into a `Call` (an
`events.Request` + a `SamplerConfig` + the reply options), with every bad value a `WireError`
(HTTP status and the OpenAI error envelope `{"error": {"message", "type", "param", "code"}}`);
which fields are read (unknown ones are ignored); dllm's extension object `"dllm"` in a request
(`steps`, `block_length`, `threshold`, `alg`, `editing_threshold`) and in every reply chunk
(step, masked / revealed / edited positions, confidences, the canvas); how one generation's
events become SSE chunks: whole drafts with `"diffusing": true` (Mercury's field), committed
increments otherwise; the non-stream response and usage counts. docs/serve.md documents every field.
Must not: import torch or FastAPI, touch files or the network, or run a model.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from .. import infill
from ..config import REMASK_ALGS, SamplerConfig
from ..errors import DllmError
from ..events import DenoiseStep, Generation, Message, Request, SpecialTokens

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer

MASK_GLYPH = "░"  # a still-masked position in a diffusing draft
DEFAULT_MAX_TOKENS = SamplerConfig().gen_length
MAX_STOPS = 4
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# The sampler options a request's "dllm" object carries (`dllm code` sends those given: pipeline).
EXTENSION_KEYS = ("steps", "block_length", "threshold", "alg", "editing_threshold")
# The sampler's messages name command-line options; a request names fields.
_OPTION_FIELDS = (("--editing-threshold", "dllm.editing_threshold"),  # before --threshold, which it contains
                  ("--gen-length", "max_tokens"), ("--block-length", "dllm.block_length"),
                  ("--steps", "dllm.steps"), ("--threshold", "dllm.threshold"), ("--alg", "dllm.alg"),
                  ("--temperature", "temperature"), ("--top-p", "top_p"))


class WireError(Exception):
    """A request the server refuses: HTTP status + the OpenAI error envelope."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass(frozen=True)
class Served:
    """What the server serves, as the parser needs it."""

    model: str  # the id requests name (the checkpoint's name)
    tokenizer: "Tokenizer"
    tokens: SpecialTokens
    context_length: int
    infill_window: int  # positions one fill-in-the-middle canvas may span
    dreamon: bool = False  # infill grows and shrinks the canvas (no increments until the end)
    base: SamplerConfig = field(default_factory=SamplerConfig)  # the checkpoint family's recipe
    can_infill: bool = True  # False for block-diffusion models (causal across blocks: no suffix)
    created: int = field(default_factory=lambda: int(time.time()))

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model, "object": "model", "created": self.created, "owned_by": "dllm",
                "context_length": self.context_length, "max_model_len": self.context_length,
                "dllm": {"infill_window": self.infill_window, "dreamon": self.dreamon}}


@dataclass(frozen=True)
class Call:
    """One parsed request."""

    kind: str  # "chat" | "completion"
    request: Request
    cfg: SamplerConfig
    stream: bool = False
    include_usage: bool = False
    diffusing: bool = False
    stops: tuple[str, ...] = ()


# ---- parsing --------------------------------------------------------------------------------

def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise WireError(400, "the request body must be a JSON object")
    return body


def parse_chat(body: Mapping[str, Any], served: Served) -> Call:
    """A /v1/chat/completions body: messages through the checkpoint's chat template."""
    check_model(body, served)
    messages = _messages(body.get("messages"))
    try:
        text = served.tokenizer.apply_chat_template(list(messages))
    except DllmError as err:
        raise WireError(400, str(err), param="messages") from None
    ids = served.tokenizer.encode(text)
    cfg = sampler(body, served.context_length - len(ids), served.base)
    _check_context(len(ids), cfg.gen_length, served, "messages")
    return Call("chat", Request(tuple(ids), messages=messages), cfg, **_reply_options(body))


def parse_completion(body: Mapping[str, Any], served: Served) -> Call:
    """A /v1/completions (or /v1/fim/completions) body: a raw prompt; with `suffix`, anchored
    infilling: the canvas of max_tokens masks between the prompt's tail and the suffix's head
    (the same layout `dllm code` sends in infill mode)."""
    check_model(body, served)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise WireError(400, "'prompt' must be a string", param="prompt")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise WireError(400, "'suffix' must be a string", param="suffix")
    tok = served.tokenizer
    if suffix is None:
        ids = tok.encode(prompt)
        cfg = sampler(body, served.context_length - len(ids), served.base)
        if not ids:
            raise WireError(400, "'prompt' is empty; a completion continues a prompt (with 'suffix': fill "
                            "in the middle)", param="prompt")
        _check_context(len(ids), cfg.gen_length, served, "prompt")
        request = Request(tuple(ids), prefix=prompt)
    else:
        if not served.can_infill:
            raise WireError(400, f"`{served.model}` is a block-diffusion model (attention causal across blocks): "
                            "it cannot fill in the middle; send the prompt without 'suffix'", param="suffix")
        cfg = sampler(body, served.infill_window // 2, served.base)
        try:
            pre, suf = infill.canvas(tok.encode(prompt), tok.encode(suffix), cfg.gen_length,
                                     served.infill_window, served.tokens.eos)
        except ValueError:
            raise WireError(400, f"max_tokens {cfg.gen_length} leaves no room for the prompt and suffix in "
                            f"the {served.infill_window}-token infill window", code="context_length_exceeded",
                            param="max_tokens") from None
        request = Request(tuple(pre), tuple(suf), prefix=prompt, suffix=suffix)
    return Call("completion", request, cfg, **_reply_options(body))


def check_model(body: Mapping[str, Any], served: Served) -> None:
    """`model` may be left out; given, it must be the served id (no path is ever opened)."""
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise WireError(400, "'model' must be a string", param="model")
    if model != served.model:
        raise WireError(404, f"The model `{model}` does not exist; this server serves `{served.model}` "
                        "(GET /v1/models)", code="model_not_found", param="model")


def sampler(body: Mapping[str, Any], room: int = DEFAULT_MAX_TOKENS,
            base: SamplerConfig | None = None) -> SamplerConfig:
    """The SamplerConfig a request asks for, over `base` (the served checkpoint family's recipe,
    as `dllm code` starts from it): max_tokens (or max_completion_tokens; without either, 128 or
    the `room` left in the context if less), temperature, top_p, seed, and the extension object
    {"dllm": {steps, block_length, threshold, alg, editing_threshold}}; the same rules as
    `dllm code`'s options (0 turns block_length / threshold off; editing_threshold, LLaDA2 only:
    a number in [0, 1] or "off")."""
    ext = body.get("dllm")
    if ext is None:
        ext = {}
    if not isinstance(ext, dict):
        raise WireError(400, "'dllm' must be an object such as {\"steps\": 32, \"threshold\": 0.9}", param="dllm")
    max_tokens = _int(body, "max_completion_tokens", 1)
    max_tokens = _int(body, "max_tokens", 1) if max_tokens is None else max_tokens
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0)
    if top_p is not None and top_p <= 0:
        raise WireError(400, "'top_p' must be in (0, 1]", param="top_p")
    seed = _int(body, "seed", None)
    alg = ext.get("alg")
    if alg is not None and not isinstance(alg, str):
        raise WireError(400, "'dllm.alg' must be a string", param="dllm.alg")
    editing = ext.get("editing_threshold")
    if editing is not None and (isinstance(editing, bool) or not isinstance(editing, (int, float, str))):
        raise WireError(400, "'dllm.editing_threshold' must be a number in [0, 1] or \"off\"",
                        param="dllm.editing_threshold")
    try:
        cfg = SamplerConfig.from_options(
            base, gen_length=max_tokens or max(1, min(DEFAULT_MAX_TOKENS, room)), steps=_int(ext, "steps", 1, "dllm."),
            block_length=_int(ext, "block_length", 0, "dllm."), temperature=temperature,
            threshold=_number(ext, "threshold", 0.0, 1.0, "dllm."), seed=seed, alg=alg, editing_threshold=editing)
        if base is not None and base.block_loop is not None and cfg.block_length != base.block_length:
            raise WireError(400, f"'dllm.block_length' {cfg.block_length or 0}: this checkpoint attends in blocks of "
                            f"{base.block_length} tokens; leave it out (or set {base.block_length})",
                            param="dllm.block_length")
        return cfg.with_(top_p=top_p) if top_p is not None else cfg
    except DllmError as err:
        message = str(err)
        for option, name in _OPTION_FIELDS:
            message = message.replace(option, name)
        raise WireError(400, message) from None


def _reply_options(body: Mapping[str, Any]) -> dict[str, Any]:
    n = _int(body, "n", 1)
    if n not in (None, 1):
        raise WireError(400, "'n' must be 1 (one answer per request)", param="n")
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise WireError(400, "'stream_options' must be an object", param="stream_options")
    return {"stream": stream, "include_usage": _bool(options, "include_usage", "stream_options."),
            "diffusing": _bool(body, "diffusing"), "stops": _stops(body.get("stop"))}


def _messages(value: Any) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise WireError(400, "'messages' must be a non-empty list of {\"role\", \"content\"}", param="messages")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise WireError(400, f"'{where}' must be an object", param=where)
        role = ROLES.get(m.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise WireError(400, f"'{where}.role' must be one of system, user, assistant (tools are not "
                            "supported)", param=f"{where}.role")
        out.append(Message(role, _content(m.get("content"), f"{where}.content")))
    return tuple(out)


def _content(value: Any, where: str) -> str:
    """A message's text: a string, or a list of {"type": "text", "text": ...} parts (joined)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    raise WireError(400, f"'{where}' must be a string or a list of text parts", param=where)


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise WireError(400, f"'stop' must be a non-empty string or a list of at most {MAX_STOPS}", param="stop")
    return tuple(stops)


def _int(body: Mapping[str, Any], key: str, low: int | None, prefix: str = "") -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        need = "an integer" if low is None else f"an integer >= {low}"
        raise WireError(400, f"'{prefix}{key}' must be {need}, not {value!r}", param=prefix + key)
    return value


def _number(body: Mapping[str, Any], key: str, low: float, high: float, prefix: str = "") -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise WireError(400, f"'{prefix}{key}' must be a number in [{low:g}, {high:g}], not {value!r}",
                        param=prefix + key)
    return float(value)


def _bool(body: Mapping[str, Any], key: str, prefix: str = "") -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise WireError(400, f"'{prefix}{key}' must be true or false", param=prefix + key)
    return value


def _check_context(prompt_tokens: int, gen_length: int, served: Served, param: str) -> None:
    if prompt_tokens + gen_length > served.context_length:
        raise WireError(400, f"This model's maximum context length is {served.context_length} tokens. However, "
                        f"you requested {prompt_tokens + gen_length} tokens ({prompt_tokens} in the {param}, "
                        f"{gen_length} in the completion). Reduce the length of the {param} or max_tokens.",
                        code="context_length_exceeded", param=param)


# ---- replies --------------------------------------------------------------------------------

def cut_at_stops(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class Reply:
    """One call's events as OpenAI objects: SSE chunks while it denoises (`step`), the closing
    chunks (`end`), or the whole response (`response`)."""

    def __init__(self, call: Call, served: Served) -> None:
        self.call, self.served = call, served
        self.id = ("chatcmpl-" if call.kind == "chat" else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self.sent = ""  # increments mode: the text sent so far
        self.held = call.cfg.alg in REMASK_ALGS or (served.dreamon and call.request.infill)
        self._pieces: dict[int, str] = {t: "" for t in served.tokens.stops}
        self._hold_back = max((len(s) for s in call.stops), default=1) - 1

    # ---- pieces of the canvas ----

    def piece(self, token_id: int) -> str:
        text = self._pieces.get(token_id)
        if text is None:
            text = self._pieces[token_id] = self.served.tokenizer.token_text(token_id)
        return text

    def canvas(self, tokens: list[int]) -> list[str | None]:
        mask = self.served.tokens.mask
        return [None if t == mask else self.piece(t) for t in tokens]

    def draft(self, tokens: list[int]) -> str:
        """The whole current draft: positions up to the first stop token, masks as ░."""
        stops, mask = self.served.tokens.stops, self.served.tokens.mask
        parts = []
        for t in tokens:
            if t in stops:
                break
            parts.append(MASK_GLYPH if t == mask else self.piece(t))
        return cut_at_stops("".join(parts), self.call.stops)[0]

    def settled(self, tokens: list[int]) -> list[int]:
        """The tokens no later step can change: all of them, except under LLaDA2.1's token editing,
        where the block being decoded (the last one with a written token; blocks are aligned at
        canvas position 0, the prompt included) can still be revised: only the blocks before it."""
        cfg, mask = self.call.cfg, self.served.tokens.mask
        if cfg.editing_threshold is None:
            return tokens
        last = max((i for i, t in enumerate(tokens) if t != mask), default=None)
        if last is None:
            return []
        P = len(self.call.request.prompt_ids)
        return tokens[:max(0, (P + last) // cfg.block * cfg.block - P)]

    def committed(self, tokens: list[int]) -> str:
        """The settled text: the decoded settled tokens before the first mask or stop token,
        without a trailing partial character, cut at a stop string, minus what could still
        become one."""
        stops, mask = self.served.tokens.stops, self.served.tokens.mask
        ids = []
        for t in self.settled(tokens):
            if t == mask or t in stops:
                break
            ids.append(t)
        text = self.served.tokenizer.decode(ids, skip_special=True).rstrip("\ufffd")
        text, stopped = cut_at_stops(text, self.call.stops)
        return text if stopped or not self._hold_back else text[:max(0, len(text) - self._hold_back)]

    # ---- chunks ----

    def start(self) -> list[dict[str, Any]]:
        """Chat streams open with the assistant's role (OpenAI's first chunk)."""
        if self.call.kind != "chat":
            return []
        return [self._chunk({"role": "assistant", "content": ""}, None, None)]

    def step(self, step: DenoiseStep) -> dict[str, Any]:
        """One denoising step: the whole draft (diffusing) or the newly settled text."""
        ext = {"step": step.index, "forwards": step.forwards, "elapsed": round(step.elapsed, 4),
               "gen_length": len(step.tokens),
               "masked": [i for i, t in enumerate(step.tokens) if t == self.served.tokens.mask],
               "revealed": list(step.revealed), "confidences": [round(c, 4) for c in step.confidences],
               "remasked": list(step.remasked), "edited": list(step.edited),
               "edit_confidences": [round(c, 4) for c in step.edit_confidences],
               "canvas": self.canvas(step.tokens), "done": False}
        if self.call.diffusing:
            return self._chunk_text(self.draft(step.tokens), None, ext)
        new = ""
        if not self.held:
            text = self.committed(step.tokens)
            if text.startswith(self.sent) and len(text) > len(self.sent):
                new, self.sent = text[len(self.sent):], text
        return self._chunk_text(new, None, ext)

    def end(self, gen: Generation) -> list[dict[str, Any]]:
        """The closing chunk (the final text, or what was not sent yet, with finish_reason), then
        the usage chunk when stream_options.include_usage asked for it."""
        text, finish = self.final(gen)
        ext = {"done": True, "steps": gen.steps, "forwards": gen.forwards, "seconds": round(gen.seconds, 4),
               "gen_tokens": gen.gen_tokens, "edits": gen.edits}
        if self.call.diffusing:
            chunks = [self._chunk_text(text, finish, ext)]
        else:
            rest = text[len(self.sent):] if text.startswith(self.sent) else ""
            self.sent = text if text.startswith(self.sent) else self.sent
            chunks = [self._chunk_text(rest, finish, ext)]
        if self.call.include_usage:
            chunks.append({"id": self.id, "object": self._object(chunk=True), "created": self.created,
                           "model": self.served.model, "choices": [], "usage": usage(gen)})
        return chunks

    def final(self, gen: Generation) -> tuple[str, str]:
        """(the answer cut at a stop string, finish_reason): "length" when the canvas filled up."""
        text, stopped = cut_at_stops(gen.text, self.call.stops)
        return text, ("stop" if stopped or gen.gen_tokens < self.call.cfg.gen_length else "length")

    def response(self, gen: Generation) -> dict[str, Any]:
        """The non-stream answer."""
        text, finish = self.final(gen)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if self.call.kind == "chat":
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {"id": self.id, "object": self._object(chunk=False), "created": self.created,
                "model": self.served.model, "choices": [choice], "usage": usage(gen),
                "dllm": {"steps": gen.steps, "forwards": gen.forwards, "seconds": round(gen.seconds, 4),
                         "gen_length": self.call.cfg.gen_length, "edits": gen.edits}}

    def _object(self, chunk: bool) -> str:
        if self.call.kind == "chat":
            return "chat.completion.chunk" if chunk else "chat.completion"
        return "text_completion"

    def _chunk_text(self, text: str, finish: str | None, ext: dict[str, Any]) -> dict[str, Any]:
        if self.call.kind == "chat":
            delta = {"content": text} if (text or self.call.diffusing) else {}
            return self._chunk(delta, finish, ext)
        return self._chunk(text, finish, ext)

    def _chunk(self, payload: Any, finish: str | None, ext: dict[str, Any] | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if self.call.kind == "chat":
            choice["delta"] = payload
        else:
            choice["text"], choice["logprobs"] = payload, None
        chunk: dict[str, Any] = {"id": self.id, "object": self._object(chunk=True), "created": self.created,
                                 "model": self.served.model, "choices": [choice]}
        if ext is not None:
            chunk["dllm"] = ext
        return chunk


def usage(gen: Generation) -> dict[str, int]:
    return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.gen_tokens,
            "total_tokens": gen.prompt_tokens + gen.gen_tokens}


def sse(data: Mapping[str, Any] | str) -> bytes:
    """One server-sent event: `data: {...}` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode("utf-8")
