"""discovery.py: the files that announce a running `dllm serve` (owner-only, atomic), and how a
live server is told from a stale file (the pid exists and /health repeats the instance id)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace

from dllm_cli import discovery

from replay import Json, Replay


def entry(url, checkpoint, instance="inst-1", pid=None, device="cpu", dtype="float32", auth=False):
    return discovery.ServerEntry(url, pid or os.getpid(), str(checkpoint), "tiny", device, dtype, auth, instance,
                                 time.time())


def test_register_is_owner_only_and_unregister_removes_it(tmp_path):
    path = discovery.register(tmp_path, entry("http://127.0.0.1:1/v1", tmp_path))
    assert path.parent == discovery.servers_dir(tmp_path) and oct(path.stat().st_mode & 0o777) == "0o600"
    assert discovery.ServerEntry.from_dict(json.loads(path.read_text())).instance == "inst-1"
    assert not list(path.parent.glob(".*"))  # no temporary file left
    discovery.unregister(path)
    discovery.unregister(path)  # twice is fine
    assert not path.exists()


def test_live_servers_answer_health_with_their_instance(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with Replay() as server:
        server.add("/health", Json(200, {"status": "ok", "instance": "inst-1"}))
        url = server.url
        discovery.register(tmp_path, entry(url, ckpt.resolve()))
        assert [e.url for e in discovery.running(tmp_path)] == [url]
        assert discovery.find(tmp_path, ckpt).url == url
        assert discovery.find(tmp_path, ckpt, device="cuda") is None
        assert discovery.find(tmp_path, ckpt, dtype="bfloat16") is None
        assert discovery.find(tmp_path, ckpt, device="cpu", dtype="float32").url == url
        assert discovery.find(tmp_path, ckpt, quant="int8") is None  # int8 asked: an unquantised server won't do
        assert discovery.find(tmp_path, tmp_path / "other") is None
        server.add("/health", Json(200, {"status": "ok", "instance": "someone-else"}))  # the port was reused
        assert discovery.running(tmp_path) == [] and discovery.find(tmp_path, ckpt) is None
        assert len(list(discovery.servers_dir(tmp_path).glob("*.json"))) == 1  # pid alive: kept


def test_an_int8_server_is_found_for_int8_and_by_default(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with Replay() as server:
        server.add("/health", Json(200, {"status": "ok", "instance": "inst-1"}))
        discovery.register(tmp_path, replace(entry(server.url, ckpt.resolve()), quant="int8"))
        assert discovery.find(tmp_path, ckpt, quant="int8").url == server.url
        assert discovery.find(tmp_path, ckpt).quant == "int8"  # no --quant: the server's choice
    old = {k: v for k, v in entry("http://127.0.0.1:1/v1", ckpt).as_dict().items() if k != "quant"}
    assert discovery.ServerEntry.from_dict(old).quant == "none"  # a discovery file from before quant


def test_files_of_dead_processes_and_torn_files_are_removed(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    discovery.register(tmp_path, entry("http://127.0.0.1:1/v1", tmp_path, pid=dead))
    (discovery.servers_dir(tmp_path) / "9.json").write_text("{torn")
    assert discovery.running(tmp_path) == []
    assert list(discovery.servers_dir(tmp_path).glob("*.json")) == []


def test_no_health_check_leaves_the_machine(tmp_path):
    far = entry("http://192.0.2.1:8765/v1", tmp_path)  # TEST-NET: never contacted
    assert not discovery.healthy(discovery.ServerEntry(**{**far.as_dict(), "host": "192.0.2.1"}))
    assert far.health_url == "http://192.0.2.1:8765/health"
    assert discovery.uptime(far, now=far.started + 75) == "1m15s"
