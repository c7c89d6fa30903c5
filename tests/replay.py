"""A loopback HTTP server that replays scripted answers: Mercury-, SGLang- or vLLM-shaped SSE
streams, error envelopes, slow or cut streams, malformed chunks. It records every request
(method, path, headers, JSON body) so a test can check what a client sent.

    with Replay() as server:
        server.add("/v1/chat/completions", Sse(mercury_chunks(["def", "def f", "def f():"])))
        ... server.url (http://127.0.0.1:PORT/v1) ...
        server.requests[-1].body["diffusing"]

Only 127.0.0.1 is bound; nothing leaves the machine.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Json:
    status: int = 200
    body: Any = None
    headers: dict = field(default_factory=dict)


@dataclass
class Sse:
    """`events`: dicts (sent as `data: {json}`) or strings (sent as they are, e.g. "[DONE]" or a
    malformed line). `cut_after`: stop after that many events: "close" ends the body cleanly
    (no [DONE]); "abort" breaks the chunked encoding (an incomplete body)."""

    events: list
    status: int = 200
    delay: float = 0.0  # seconds between events
    first_delay: float = 0.0
    cut_after: int | None = None
    cut: str = "close"
    done: bool = True
    headers: dict = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict
    body: Any


def mercury_chunks(drafts: list[str], model: str = "mercury-2", finish: str = "stop", usage: bool = True,
                   kind: str = "chat") -> list[dict]:
    """Whole-draft snapshots the way Mercury streams with "diffusing": true: each chunk's
    delta.content (or choices[0].text) is the whole current draft; a last chunk with
    finish_reason; a usage chunk."""
    out = []
    for i, draft in enumerate(drafts):
        last = i == len(drafts) - 1
        if kind == "chat":
            choice = {"index": 0, "delta": {"role": "assistant", "content": draft} if i == 0 else {"content": draft},
                      "finish_reason": finish if last else None}
        else:
            choice = {"index": 0, "text": draft, "finish_reason": finish if last else None}
        out.append({"id": "x-1", "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                    "created": 1, "model": model, "choices": [choice]})
    if usage:
        out.append({"id": "x-1", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})
    return out


def increment_chunks(pieces: list[str], model: str = "served", kind: str = "chat") -> list[dict]:
    """SGLang / vLLM style: each chunk carries the next piece of text."""
    out = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        if kind == "chat":
            choice = {"index": 0, "delta": {"content": piece}, "finish_reason": "stop" if last else None}
        else:
            choice = {"index": 0, "text": piece, "finish_reason": "stop" if last else None}
        out.append({"id": "y", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [choice]})
    out.append({"id": "y", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [],
                "usage": {"prompt_tokens": 5, "completion_tokens": len(pieces), "total_tokens": 5 + len(pieces)}})
    return out


def models(*ids: str, **extra: Any) -> Json:
    return Json(200, {"object": "list", "data": [{"id": i, "object": "model", "owned_by": "test", **extra}
                                                 for i in ids]})


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up on purpose (timeouts, cut streams) is not news


class Replay:
    """The server; `add(path, *answers)` queues answers for a path (the last one repeats)."""

    def __init__(self) -> None:
        self.script: dict[str, list] = {"/v1/models": [models("served")]}
        self.requests: list[Seen] = []
        replay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                replay._answer(self, None)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                replay._answer(self, body)

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> "Replay":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, path: str, *answers: Any) -> "Replay":
        self.script[path] = list(answers)
        return self

    def posts(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.method == "POST" and r.path == path]

    def _next(self, path: str) -> Any:
        answers = self.script.get(path)
        if not answers:
            return Json(404, {"error": {"message": f"no route {path}", "type": "invalid_request_error",
                                        "code": None}})
        return answers.pop(0) if len(answers) > 1 else answers[0]

    def _answer(self, handler: BaseHTTPRequestHandler, body: Any) -> None:
        path = handler.path.split("?", 1)[0]
        self.requests.append(Seen(handler.command, path, {k.lower(): v for k, v in handler.headers.items()}, body))
        answer = self._next(path)
        try:
            if isinstance(answer, Sse):
                self._sse(handler, answer)
            else:
                data = json.dumps(answer.body).encode()
                handler.send_response(answer.status)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(data)))
                for k, v in answer.headers.items():
                    handler.send_header(k, v)
                handler.end_headers()
                handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    @staticmethod
    def _sse(handler: BaseHTTPRequestHandler, answer: Sse) -> None:
        handler.send_response(answer.status)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        for k, v in answer.headers.items():
            handler.send_header(k, v)
        handler.end_headers()
        time.sleep(answer.first_delay)
        events = list(answer.events) + (["[DONE]"] if answer.done else [])

        def write(data: bytes) -> None:
            handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            handler.wfile.flush()

        for i, event in enumerate(events):
            if answer.cut_after is not None and i == answer.cut_after:
                if answer.cut == "abort":  # half a chunk, then the connection drops
                    handler.wfile.write(b"ff\r\ndata: {\"trunc")
                    handler.wfile.flush()
                    handler.connection.shutdown(socket.SHUT_RDWR)
                    handler.close_connection = True
                    return
                break
            line = event if isinstance(event, str) else json.dumps(event)
            write(f"data: {line}\n\n".encode())
            if answer.delay:
                time.sleep(answer.delay)
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()


class Deaf:
    """A loopback port whose accept queue is full: connecting to it times out (connect timeout)."""

    def __enter__(self) -> "Deaf":
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.fill = []
        for _ in range(3):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fill.append(c)
        time.sleep(0.1)
        return self

    def __exit__(self, *exc: Any) -> None:
        for c in self.fill:
            c.close()
        self.sock.close()


def free_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
