"""Which `dllm serve` processes run on this machine: one small JSON file per server in
`<dllm home>/servers/`, written when the server is listening and removed when it stops.

Knows: the file's fields (`ServerEntry`: url, pid, checkpoint folder, model name, device, dtype,
whether a key is required, a random instance id), how to write it atomically (0600), and how to
tell a live server from a stale file (the pid exists and `GET /health` on loopback answers with the
same instance id within a second; files of dead pids are deleted). Must not: import torch, hold or
write an API key (only whether one is required), or talk to anything but loopback.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

HEALTH_TIMEOUT_S = 1.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServerEntry:
    """One running `dllm serve`, as its discovery file describes it."""

    url: str  # the base URL as OpenAI clients take it: http://127.0.0.1:8765/v1
    pid: int
    checkpoint: str  # the resolved checkpoint folder it serves
    model: str  # the model id it answers to (the checkpoint's name)
    device: str
    dtype: str
    auth: bool  # requests need an API key
    instance: str  # random; /health repeats it (a reused port is not mistaken for this server)
    started: float  # time.time() when it began listening
    host: str = "127.0.0.1"
    port: int = 0
    quant: str = "none"  # "int8": it serves weight-only int8 linears

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ServerEntry":
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in fields})

    @property
    def health_url(self) -> str:
        return self.url.rsplit("/v1", 1)[0] + "/health"


def servers_dir(home: Path) -> Path:
    return home / "servers"


def new_instance() -> str:
    return secrets.token_hex(8)


def register(home: Path, entry: ServerEntry) -> Path:
    """Write `entry` as <home>/servers/<pid>.json (atomic rename, owner-only); returns the path."""
    folder = servers_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{entry.pid}.json"
    tmp = folder / f".{entry.pid}.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(entry.as_dict(), f, indent=1)
    os.replace(tmp, path)
    return path


def unregister(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _entries(home: Path) -> Iterator[tuple[Path, ServerEntry]]:
    folder = servers_dir(home)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            yield path, ServerEntry.from_dict(data)
        except (OSError, ValueError, TypeError):
            unregister(path)  # a torn or foreign file: not a server


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    except OSError:
        return False
    return True


def healthy(entry: ServerEntry, timeout: float = HEALTH_TIMEOUT_S) -> bool:
    """GET /health answers with the entry's instance id (loopback only; proxies bypassed)."""
    if entry.host not in LOOPBACK_HOSTS and not entry.host.startswith("127."):
        return False
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(entry.health_url, timeout=timeout) as response:
            data = json.loads(response.read(65536).decode("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("instance") == entry.instance


def running(home: Path, check_health: bool = True) -> list[ServerEntry]:
    """The live servers, oldest first; files whose pid is gone are deleted."""
    live = []
    for path, entry in _entries(home):
        if not pid_alive(entry.pid):
            unregister(path)
            continue
        if check_health and not healthy(entry):
            continue  # starting, stopping, or the port was reused: not usable now
        live.append(entry)
    return sorted(live, key=lambda e: e.started)


def find(home: Path, checkpoint: Path, device: str = "auto", dtype: str = "auto",
         quant: str = "none") -> ServerEntry | None:
    """A live server for `checkpoint` (same resolved folder) on the device and dtype asked for
    ("auto" accepts any) and, when int8 is asked for, serving int8 weights ("none", the default,
    accepts the server's choice), else None."""
    want = str(checkpoint.resolve())
    for entry in running(home, check_health=False):
        if entry.checkpoint != want:
            continue
        if device != "auto" and entry.device != device:
            continue
        if dtype != "auto" and entry.dtype != dtype:
            continue
        if quant != "none" and entry.quant != quant:
            continue
        if healthy(entry):
            return entry
    return None


def uptime(entry: ServerEntry, now: float | None = None) -> str:
    seconds = max(0, int((now or time.time()) - entry.started))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
