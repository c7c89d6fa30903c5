"""`dllm serve` start to finish: check the address, bind it, load the model once, announce the
server in the discovery file, run uvicorn until Ctrl-C / SIGTERM, then end every in-flight
stream cleanly and remove the discovery file.

Knows: the security rule (loopback by default; any other address needs an API key), the order
that keeps failures cheap (a port in use is found before the model loads), uvicorn's settings
(our own socket, logs on stderr, no lifespan) and its exit hook (the worker is closed first, so
streams end with a final error chunk and `[DONE]` instead of a cut connection).
Must not: import torch at module level (the backend does, when it loads), print a key, or write
any file but the discovery file.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import catalog, discovery, infill
from ..config import family_sampler
from ..errors import DllmError, UsageError
from ..tokenizer import Tokenizer
from ..ui import Ui

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_QUEUE = 32

LOG_CONFIG: dict[str, Any] = {
    "version": 1, "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "dllm serve: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
    "loggers": {"uvicorn.error": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
                "uvicorn.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
                "dllm.serve": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
}


@dataclass(frozen=True)
class ServeOptions:
    model: str | None = None  # checkpoint folder; None: the embedded model
    device: str = "auto"
    dtype: str = "auto"
    quant: str = "none"  # "int8": weight-only int8 linears
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT  # 0: any free port (printed, and in the discovery file)
    api_key: str | None = None
    queue: int = DEFAULT_QUEUE  # requests that may wait behind the running one


def is_loopback(host: str) -> bool:
    """Every address `host` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port (UsageError when the port is taken)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: cannot resolve it ({exc.strerror}); use an address such as "
                         "127.0.0.1") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = "(another dllm serve? `dllm serve --status` lists them); pass another --port" \
            if exc.errno in (98, 48) else "; pass another --host or --port"
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror} {hint}") from None
    sock.set_inheritable(True)
    return sock


def url_of(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


def serve(opts: ServeOptions, ui: Ui, home: Path) -> None:
    """Run the server in the foreground until Ctrl-C or SIGTERM."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:  # FastAPI and uvicorn are the optional extra
        raise DllmError(f"dllm serve needs FastAPI and uvicorn ({exc.name or exc} is missing); "
                        "pip install 'dllm-cli[serve]'") from None
    from ..backend import open_local
    from ..render import loading
    from .wire import Served
    from .worker import Worker

    if opts.queue < 1:
        raise UsageError("--queue must be at least 1")
    if not 0 <= opts.port <= 65535:
        raise UsageError(f"--port {opts.port} is not a TCP port; use 1-65535 (0: any free one)")
    loopback = is_loopback(opts.host)
    if not loopback and not opts.api_key:
        raise UsageError(f"--host {opts.host} is reachable from other machines; set a key first "
                         "(--api-key, or $DLLM_API_KEY) or keep the default 127.0.0.1")
    ckpt = catalog.inspect(opts.model)
    tokenizer = Tokenizer.from_checkpoint(ckpt)
    sock = bind(opts.host, opts.port)
    port = sock.getsockname()[1]
    try:
        with loading(ui.err, ckpt.name) as describe:
            backend = open_local(ckpt, opts.device, opts.dtype, tokenizer, describe, quant=opts.quant)
    except BaseException:
        sock.close()
        raise
    model = getattr(backend, "model", None)
    device = str(getattr(model, "device", "cpu"))
    dtype = str(getattr(model, "dtype", "float32")).replace("torch.", "")
    served = Served(model=ckpt.name, tokenizer=tokenizer, tokens=backend.tokens,
                    context_length=ckpt.context_length, infill_window=min(ckpt.context_length, infill.CONTEXT_CAP),
                    dreamon=backend.tokens.expand is not None,
                    base=family_sampler(ckpt.family, ckpt.attention_block), can_infill=ckpt.attention_block is None)
    worker = Worker(backend, capacity=opts.queue)
    instance = discovery.new_instance()
    app = create_app(served, worker, api_key=opts.api_key, instance=instance)
    config = uvicorn.Config(app, log_config=LOG_CONFIG, lifespan="off", http="h11", timeout_keep_alive=5,
                            timeout_graceful_shutdown=10)
    server = _server(config, on_exit=worker.close)
    url = url_of(opts.host, port)
    entry = discovery.ServerEntry(url=url, pid=os.getpid(), checkpoint=str(ckpt.folder.resolve()), model=ckpt.name,
                                  device=device, dtype=dtype, auth=bool(opts.api_key), instance=instance,
                                  started=time.time(), host=opts.host, port=port, quant=opts.quant)
    path = discovery.register(home, entry)
    ui.say(f"dllm: serving {ckpt.name} ({dtype} on {device}) at {url} (pid {os.getpid()}; "
           f"{'key required' if opts.api_key else 'loopback only, no key'}); Ctrl-C stops", style="green")
    try:
        server.run(sockets=[sock])
    finally:
        discovery.unregister(path)
        worker.close()
        worker.join(timeout=10)
        sock.close()
    logging.getLogger("dllm.serve").info(f"stopped ({worker.completed} requests served)")


def _server(config: Any, on_exit: Callable[[], None]) -> Any:
    """uvicorn's Server whose signal handler first closes the worker: every running or queued
    request then ends with its last chunk before uvicorn waits for the connections to close."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            on_exit()
            super().handle_exit(sig, frame)
            # uvicorn raises the signal again once it has stopped (the process would die of it
            # before dllm removes its discovery file); a graceful stop exits 0 instead.
            self._captured_signals.clear()

    return Server(config)


def status(home: Path) -> list[discovery.ServerEntry]:
    """The live servers on this machine (stale discovery files are removed)."""
    return discovery.running(home)


def check_key(key: str | None) -> str | None:
    """An API key as given (None or empty: none). Refuses keys with spaces or control characters,
    which an Authorization header cannot carry."""
    if not key:
        return None
    if any(c.isspace() or ord(c) < 32 for c in key):
        raise DllmError("the API key contains spaces or control characters; use a plain token")
    return key
