"""The HTTP face of `dllm serve`: a FastAPI app with the OpenAI-compatible routes.

    GET  /health                  liveness (no key needed): status, model, queue, instance id
    GET  /v1/models, /v1/models/{id}
    POST /v1/chat/completions     stream and non-stream
    POST /v1/completions          with `suffix`: fill in the middle (anchored infilling)
    POST /v1/fim/completions      the same, at the path Mercury's clients use

Knows: the guards every request passes (the API key when one is set, compared in constant time;
without a key, only loopback Host names and no browser Origin, so a web page cannot drive the
model), how a call reaches the worker and how its events flow back (a per-request asyncio queue
fed from the worker thread), SSE streaming with keep-alive comments while a request waits, what
a client that goes away does (its job is cancelled: the denoise stops at its next step), and the
error envelope for every refusal (400 bad values, 401/403, 404, 503 queue full or stopping).
Must not: import torch, read or write a file on a request's behalf (a request names no path;
`model` must be the served id), or log a key or a request's text.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..events import DenoiseStep, Generation
from . import wire
from .worker import Busy, Cancelled, Failed, Job, Worker

MAX_BODY = 8 << 20  # bytes a request body may have (413 beyond)
KEEPALIVE_S = 5.0  # an SSE comment this often while a request waits in the queue
DISCONNECT_POLL_S = 0.25  # non-stream requests: how often to look for a client that went away
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")


def create_app(served: wire.Served, worker: Worker, *, api_key: str | None, instance: str) -> FastAPI:
    """The app for one served model. `api_key` None: loopback only (the runner refuses other
    hosts without a key), guarded against browsers and DNS rebinding by Host and Origin."""
    app = FastAPI(title="dllm serve", docs_url=None, redoc_url=None, openapi_url=None)

    def guard(request: Request, authenticate: bool = True) -> None:
        if api_key is None:
            host = host_name(request.headers.get("host") or "")
            if host not in LOOPBACK_NAMES:
                raise wire.WireError(403, f"Host {host!r} refused: this server answers loopback names only "
                                     "(start it with --api-key to serve other hosts)", type="permission_error")
            if request.headers.get("origin") is not None:
                raise wire.WireError(403, "browser requests are refused (the request has an Origin header); "
                                     "start the server with --api-key to allow them", type="permission_error")
        elif authenticate:
            given = request.headers.get("authorization", "")
            token = given[7:] if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode("utf-8"), api_key.encode("utf-8")):
                what = "no API key given" if not token else "incorrect API key provided"
                raise wire.WireError(401, f"{what}; send it as 'Authorization: Bearer <key>'",
                                     type="invalid_request_error", code="invalid_api_key")

    @app.exception_handler(wire.WireError)
    async def _wire_error(request: Request, err: wire.WireError) -> Response:
        headers = {"Retry-After": "1"} if err.status == 503 else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> Response:
        message = f"{request.method} {request.url.path}: {err.detail}"
        code = "not_found" if err.status_code == 404 else None
        return JSONResponse(wire.error_body(message, code=code), status_code=err.status_code)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        guard(request, authenticate=False)
        return {"status": "stopping" if worker.closing else "ok", "model": served.model, "instance": instance,
                "queue": {"running": int(worker.running is not None), "waiting": worker.waiting,
                          "capacity": worker.capacity}}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        guard(request)
        return {"object": "list", "data": [served.model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> dict[str, Any]:
        guard(request)
        if model_id != served.model:
            raise wire.WireError(404, f"The model `{model_id}` does not exist; this server serves `{served.model}`",
                                 code="model_not_found", param="model")
        return served.model_card()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        guard(request)
        call = wire.parse_chat(wire.parse_json(await read_body(request)), served)
        return await answer(call, request)

    async def completions(request: Request) -> Response:
        guard(request)
        call = wire.parse_completion(wire.parse_json(await read_body(request)), served)
        return await answer(call, request)

    app.post("/v1/completions")(completions)
    app.post("/v1/fim/completions")(completions)

    async def answer(call: wire.Call, request: Request) -> Response:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[object] = asyncio.Queue()

        def emit(event: object) -> None:  # on the worker thread
            if call.stream or not isinstance(event, DenoiseStep):
                loop.call_soon_threadsafe(events.put_nowait, event)

        try:
            job = worker.submit(call.request, call.cfg, emit)
        except Busy as busy:
            raise wire.WireError(503, str(busy), type="server_error", code="queue_full") from None
        reply = wire.Reply(call, served)
        if call.stream:
            return StreamingResponse(_stream(job, events, reply), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                     background=BackgroundTask(job.cancel))
        gen = await _wait(job, events, request.is_disconnected)
        return JSONResponse(reply.response(gen))

    return app


async def read_body(request: Request) -> bytes:
    """The request body, at most MAX_BODY bytes (a WireError 413 beyond, before reading it all)."""
    declared = request.headers.get("content-length", "")
    too_big = wire.WireError(413, f"the request body is over {MAX_BODY >> 20} MiB", code="request_too_large")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def host_name(header: str) -> str:
    """The name in a Host header, without the port ("[::1]:8765" -> "[::1]")."""
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


async def _stream(job: Job, events: "asyncio.Queue[object]", reply: wire.Reply) -> AsyncIterator[bytes]:
    """SSE chunks until the generation ends; an error chunk, then [DONE], when it cannot.
    Leaving early (the client went away: Starlette cancels this) cancels the job."""
    try:
        for chunk in reply.start():
            yield wire.sse(chunk)
        while True:
            try:
                event = await asyncio.wait_for(events.get(), KEEPALIVE_S)
            except asyncio.TimeoutError:
                yield b": waiting in the queue\n\n"
                continue
            if isinstance(event, DenoiseStep):
                yield wire.sse(reply.step(event))
                continue
            if isinstance(event, Generation):
                for chunk in reply.end(event):
                    yield wire.sse(chunk)
            elif isinstance(event, Cancelled):
                yield wire.sse(wire.error_body(event.reason, "server_error", code="cancelled"))
            elif isinstance(event, Failed):
                yield wire.sse(wire.error_body(event.message, "server_error", code="generation_failed"))
            yield wire.sse("[DONE]")
            return
    finally:
        job.cancel()


async def _wait(job: Job, events: "asyncio.Queue[object]", disconnected: Callable[[], Any]) -> Generation:
    """The Generation of a non-stream job; the job is cancelled when the client goes away."""
    try:
        while True:
            try:
                event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await disconnected():
                    job.cancel()
                    raise wire.WireError(499, "the client went away") from None
                continue
            if isinstance(event, Generation):
                return event
            if isinstance(event, Cancelled):
                raise wire.WireError(503, event.reason, type="server_error", code="cancelled")
            if isinstance(event, Failed):
                raise wire.WireError(500, event.message, type="server_error", code="generation_failed")
    finally:
        job.cancel()
