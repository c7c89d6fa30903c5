"""The measurements docs/serve.md reports, runnable on any machine (loopback only):

    python -m dllm_cli.serve.measure speed [--runs 5]       # dllm code cold (local load) vs warm (server)
    python -m dllm_cli.serve.measure load [--clients 16 --requests 8]   # concurrent clients, one server

Knows: how to start a `dllm serve` subprocess on a free loopback port and wait for its
announcement (`Running`, also used by the tests), how to time a `dllm code` subprocess (the first
frame is its first progress line on stderr, which the live view prints at its first step when
stderr is not a terminal), and how to check a load run (every answer equals the sequential run
with the same seed; the server's resident memory before and after). Ratios come from runs in
the same invocation. Must not: bind or contact anything but 127.0.0.1, or write outside the
temporary folders it makes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ANNOUNCE = re.compile(r"serving .* at (http://\S+/v1) \(pid (\d+)")
FRAME = re.compile(r"^dllm: (step|chunk) ")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "stats.py"


def dllm_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DLLM_", "OPENAI_"))}
    env.update(DLLM_HOME=str(home), DLLM_STATE_DIR=str(home / "state"), NO_COLOR="1", **extra)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class Running:
    """A `dllm serve --port 0` subprocess; `url` once it announced itself."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120.0) -> None:
        self.home = home
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "dllm_cli", "serve", "--port", "0", *args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**dllm_env(home), **(env or {})})
        self._announced = threading.Event()
        self.url = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._announced.wait(timeout) or not self.url:
            self.stop(signal.SIGKILL)
            raise RuntimeError("dllm serve did not start:\n" + self.stderr)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            found = ANNOUNCE.search(line)
            if found and not self.url:
                self.url = found.group(1)
                self._announced.set()
        self._announced.set()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        """The server's resident memory (VmRSS), KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode

    def __enter__(self) -> "Running":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def timed_code(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str, str]:
    """(seconds to the first frame, total seconds, stdout, stderr) of one `dllm code` subprocess."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dllm_cli", "code", *args], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = float("nan")
    err: list[str] = []
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read() if proc.stdout else ""), daemon=True)
    reader.start()
    assert proc.stderr is not None
    for line in proc.stderr:
        if first != first and FRAME.match(line):  # nan: not seen yet
            first = time.perf_counter() - start
        err.append(line)
    proc.wait()
    total = time.perf_counter() - start
    reader.join()
    if proc.returncode != 0:
        raise RuntimeError(f"dllm code {' '.join(args)} exited {proc.returncode}:\n{''.join(err)}")
    return first, total, "".join(out), "".join(err)


def speed(runs: int = 5) -> dict[str, Any]:
    """`dllm code --dry-run "implement median" stats.py` cold (--no-server: torch import and model
    load in the process) and warm (the same checkpoint served by a running `dllm serve`), run
    alternately; medians of time to first frame and total time, and their ratios."""
    with tempfile.TemporaryDirectory(prefix="dllm-speed-") as tmp:
        root = Path(tmp)
        work = root / "work"
        work.mkdir()
        shutil.copy(EXAMPLE, work / "stats.py")
        home = root / "home"
        args = ["--dry-run", "implement median", "stats.py"]
        rows: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": []}
        diffs: set[str] = set()
        with Running(home):
            env = dllm_env(home)
            for _ in range(runs):
                for mode in ("cold", "warm"):
                    first, total, diff, err = timed_code(args + (["--no-server"] if mode == "cold" else []), work,
                                                         env)
                    assert ("using the warm server" in err) == (mode == "warm"), err
                    rows[mode].append((first, total))
                    diffs.add(diff)
        med = {m: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)) for m, rs in rows.items()}
        return {"runs": runs, "command": "dllm code --dry-run \"implement median\" stats.py",
                "cold_first_frame_s": round(med["cold"][0], 3), "cold_total_s": round(med["cold"][1], 3),
                "warm_first_frame_s": round(med["warm"][0], 3), "warm_total_s": round(med["warm"][1], 3),
                "first_frame_ratio": round(med["cold"][0] / med["warm"][0], 2),
                "total_ratio": round(med["cold"][1] / med["warm"][1], 2),
                "same_diff": len(diffs) == 1, "samples": rows}


def load(clients: int = 16, requests: int = 8, max_tokens: int = 16) -> dict[str, Any]:
    """`clients` threads x `requests` chat requests each (distinct prompts and seeds, sampling at
    temperature 1) against one server, after the same requests one by one; every concurrent
    answer must equal its sequential one. The server's RSS after the sequential pass (warm) and
    after the concurrent pass."""
    from ..remote import make_client

    jobs = [(c, r) for c in range(clients) for r in range(requests)]
    with tempfile.TemporaryDirectory(prefix="dllm-load-") as tmp, \
            Running(Path(tmp) / "home", "--queue", str(max(64, clients * 2))) as server:
        client = make_client(server.url, None, 120.0)

        def ask(job: tuple[int, int]) -> tuple[str, int]:
            c, r = job
            reply = client.post("/chat/completions", cast_to=object, body={
                "messages": [{"role": "user", "content": f"client {c} request {r}: write a function f{c}_{r}"}],
                "max_tokens": max_tokens, "temperature": 1.0, "seed": 1000 * c + r})
            assert isinstance(reply, dict)
            return reply["choices"][0]["message"]["content"], reply["usage"]["completion_tokens"]

        rss_start = server.rss_kib()
        t0 = time.perf_counter()
        sequential = {job: ask(job) for job in jobs}
        t_seq = time.perf_counter() - t0
        rss_warm = server.rss_kib()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            concurrent = dict(zip(jobs, pool.map(ask, jobs)))
        t_con = time.perf_counter() - t0
        rss_after = server.rss_kib()
        mismatched = [job for job in jobs if concurrent.get(job) != sequential[job]]
        return {"clients": clients, "requests_each": requests, "max_tokens": max_tokens,
                "answers": len(concurrent), "lost": len(jobs) - len(concurrent), "mismatched": len(mismatched),
                "distinct_answers": len({a for a, _ in sequential.values()}),
                "sequential_s": round(t_seq, 2), "concurrent_s": round(t_con, 2),
                "rss_start_mib": round(rss_start / 1024, 1), "rss_warm_mib": round(rss_warm / 1024, 1),
                "rss_after_mib": round(rss_after / 1024, 1),
                "rss_growth_mib": round((rss_after - rss_warm) / 1024, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dllm_cli.serve.measure", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed", help="dllm code cold vs warm")
    s.add_argument("--runs", type=int, default=5)
    ld = sub.add_parser("load", help="concurrent clients against one server")
    ld.add_argument("--clients", type=int, default=16)
    ld.add_argument("--requests", type=int, default=8)
    ld.add_argument("--max-tokens", type=int, default=16)
    opts = parser.parse_args(argv)
    if opts.what == "speed":
        result = speed(opts.runs)
        result.pop("samples")
    else:
        result = load(opts.clients, opts.requests, opts.max_tokens)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
