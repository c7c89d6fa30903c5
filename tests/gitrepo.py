"""Helpers for tests that run dllm in a temporary git repository (the `repo` fixture is in
conftest.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git(root, *args) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                          text=True).stdout


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the work tree (outside .git) and its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".git" not in p.parts}


def make_repo(root: Path) -> Path:
    """src/stats.py (CRLF, no final newline, mode 755), src/other.py, an untracked .env; one commit."""
    (root / "src").mkdir(parents=True)
    (root / "src/stats.py").write_bytes(b"def mean(xs):\r\n    return sum(xs) / len(xs)")
    (root / "src/stats.py").chmod(0o755)
    (root / "src/other.py").write_text("A = 1\nB = 2\n")
    (root / ".env").write_text("API_TOKEN=hunter2-mean\n")
    git(root, "init", "-q")
    git(root, "add", "src")
    git(root, "-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "init")
    return root
