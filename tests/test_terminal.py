"""The real program in a real terminal: tmux runs `dllm`, we type keys and read the pane, and
record the raw output where the screen alone cannot show it (the live frames are transient).

Skipped only when tmux is not installed (.ci/run installs it)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="tmux is not installed (apt-get install tmux; .ci/run does)")

FIX = """\
--- a/src/stats.py
+++ b/src/stats.py
@@ -1,2 +1,4 @@
 def mean(xs):
+    if not xs:
+        return 0.0
     return sum(xs) / len(xs)
"""
ORIGINAL = "def mean(xs):\n    return sum(xs) / len(xs)\n"


class Pane:
    """One tmux server (private socket) running one command in an 100x30 window."""

    def __init__(self, cwd: Path, command: str, env: dict[str, str]) -> None:
        self.socket = f"dllm-test-{uuid.uuid4().hex[:8]}"
        self.status = cwd / f".status-{self.socket}"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        script = f"cd {shlex.quote(str(cwd))} && env {exports} {command}; echo $? > {self.status}; sleep 60"
        self.tmux("new-session", "-d", "-x", "100", "-y", "30", "-s", "t", "sh", "-c", script)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args], check=True,
                              capture_output=True, text=True, timeout=10).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def wait_for(self, text: str, timeout: float = 30) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            screen = self.screen()
            if text in screen:
                return screen
            if self.status.exists() and text not in screen:
                time.sleep(0.2)
                screen = self.screen()
                if text in screen:
                    return screen
                raise AssertionError(f"the program ended before {text!r} appeared:\n{screen}")
            time.sleep(0.1)
        raise AssertionError(f"{text!r} did not appear within {timeout} s:\n{self.screen()}")

    def record(self, path: Path) -> None:
        """Append everything the program writes to the pane (escape codes included) to `path`."""
        self.tmux("pipe-pane", "-t", "t", f"cat >> {shlex.quote(str(path))}")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def exit_code(self, timeout: float = 30) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.status.exists() and self.status.read_text().strip():
                return int(self.status.read_text())
            time.sleep(0.1)
        raise AssertionError(f"the program did not exit within {timeout} s:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    (root / "src/stats.py").write_text(ORIGINAL)
    (root / "fix.diff").write_text(FIX)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


@pytest.fixture
def pane(repo, tmp_path):
    panes = []
    env = {"DLLM_HOME": str(tmp_path / "home"), "PATH": os.environ.get("PATH", ""), "TERM": "xterm-256color",
           "HOME": os.environ.get("HOME", str(tmp_path)), "PYTHONPATH": os.environ.get("PYTHONPATH", "")}

    def start(args: str, delay: float = 0.0) -> Pane:
        """`dllm ARGS` in a new pane; `delay`: seconds to wait first (time to start a recording)."""
        wait = f"sleep {delay}; " if delay else ""
        panes.append(Pane(repo, f"{wait}{shlex.quote(sys.executable)} -m dllm_cli {args}", env))
        return panes[-1]

    yield start
    for p in panes:
        p.close()


@pytest.mark.parametrize("key, code, changed", [("n", 4, False), ("y", 0, True)])
def test_confirm_prompt_in_a_real_terminal(pane, repo, key, code, changed):
    p = pane("apply fix.diff")
    screen = p.wait_for("[y]es / [n]o / [e]dit / [s]ave")
    assert "modified src/stats.py" in screen and "+    if not xs:" in screen
    p.keys(key, "Enter")
    assert p.exit_code() == code
    assert ((repo / "src/stats.py").read_text() != ORIGINAL) is changed
    assert ("applied to src/stats.py" in p.screen()) is changed


def test_ctrl_c_at_the_prompt_exits_130_untouched(pane, repo):
    p = pane("apply fix.diff")
    p.wait_for("[y]es / [n]o")
    p.keys("C-c")
    assert p.exit_code() == 130
    assert "interrupted" in p.screen() and (repo / "src/stats.py").read_text() == ORIGINAL


def test_live_denoising_view_in_a_real_terminal(pane, repo, dream_ckpt, tmp_path):
    from dllm_cli.render import MASK_GLYPH

    raw = tmp_path / "pane.log"
    p = pane(f"code --model {shlex.quote(str(dream_ckpt))} --gen-length 64 'make mean safe'", delay=1.0)
    p.record(raw)
    assert p.exit_code(timeout=60) == 3  # random weights: gibberish, no edit found
    drawn = raw.read_text(encoding="utf-8", errors="replace")
    assert "loading " in drawn and "━" in drawn  # the progress bar while the weights load
    assert MASK_GLYPH in drawn and "step 1 · " in drawn  # live frames: masks and the status line
    screen = p.screen()
    assert "tokens in" in screen and "tok/s" in screen
    assert "dllm: step" not in screen  # a terminal gets the live canvas, not the one-line progress
    assert "no edit found" in screen or "cannot read the model's answer" in screen
    assert "Traceback" not in screen and (repo / "src/stats.py").read_text() == ORIGINAL
