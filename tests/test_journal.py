"""journal.py: the crash-safe apply, recovery, the lock, undo — with real `dllm` subprocesses
stopped at chosen points (the DLLM_TEST_PAUSE_AT seam, and once by watching the tree from outside)
and killed with SIGKILL, SIGTERM or SIGHUP; then the next `dllm` run must leave the tree all-old
or all-new, with no temp file, and `dllm undo` must work for what was applied."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dllm_cli import cli
from dllm_cli import journal as J
from dllm_cli import patch as P
from dllm_cli.edits import Edit
from dllm_cli.errors import PatchError

from gitrepo import git, snapshot

OLD = {"a.py": b"def a():\n    return 1\n", "b.txt": b"one\r\ntwo\r\nthree\r\n", "c.py": b"gone = True\n",
       "e.sh": b"#!/bin/sh\necho old\n", "keep.md": b"untouched\n"}
NEW = {"a.py": b"def a():\n    return 2\n", "b.txt": b"one\r\nTWO\r\nthree\r\n",
       "new/deep/d.py": b"print('created')\n", "e.sh": b"#!/bin/sh\necho new\n", "keep.md": b"untouched\n"}


def make_tree(root: Path, n_extra: int = 0) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """A committed tree in its old state, `fix.diff` (git diff) taking it to the new state, and
    both snapshots (without fix.diff). `n_extra` more files each get one changed line."""
    old, new = dict(OLD), dict(NEW)
    for i in range(n_extra):
        old[f"many/f{i:04d}.py"] = f"x = {i}\n".encode()
        new[f"many/f{i:04d}.py"] = f"x = {i + 1}\n".encode()
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in old.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "e.sh").chmod(0o755)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "old")
    for rel in old:
        if rel not in new:
            (root / rel).unlink()
    for rel, data in new.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    git(root, "add", "-A")
    (root / "fix.diff").write_text(git(root, "diff", "--cached"))
    git(root, "reset", "-q", "--hard", "HEAD")
    git(root, "clean", "-qfd", "-e", "fix.diff")
    assert tree(root) == old
    return old, new


def tree(root: Path) -> dict[str, bytes]:
    return {k: v for k, v in snapshot(root).items() if k != "fix.diff" and not k.startswith("other")}


def temps(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob(".dllm-*")]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "DLLM_STATE_DIR", "DLLM_TEST_PAUSE_AT")}
    return {**out, "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}


class Dllm:
    """A `dllm` subprocess stopped at a test-seam stage."""

    def __init__(self, root: Path, args: list[str], pause: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "dllm_cli", *args], cwd=root,
                                     env={**env(), "DLLM_TEST_PAUSE_AT": pause}, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.err = b""

    def wait_paused(self, stage: str, timeout: float = 60) -> None:
        marker = f"dllm-test: paused at {stage}\n".encode()
        deadline = time.monotonic() + timeout
        fd = self.proc.stderr.fileno()
        while marker not in self.err:
            left = deadline - time.monotonic()
            assert left > 0 and self.proc.poll() is None, f"never paused at {stage}: {self.err.decode()}"
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if ready:
                self.err += os.read(fd, 65536)

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        out, err = self.proc.communicate(timeout=timeout)
        self.err += err
        return self.proc.returncode, self.err.decode()


def run(args, input=None):
    """(exit code, stdout, stderr) of `dllm ARGS` in this process, in the current directory."""
    runner = CliRunner()
    with runner.isolation(input=input, env={"FORCE_COLOR": None, "DLLM_STATE_DIR": None, "NO_COLOR": "1"}) as (
            out, err, _):
        try:
            cli.main(list(args))
            code = 0
        except SystemExit as done:
            code = done.code
        return code, out.getvalue().decode(), err.getvalue().decode()


@pytest.fixture
def work(tmp_path, monkeypatch, isolated):
    root = tmp_path / "repo"
    old, new = make_tree(root)
    monkeypatch.chdir(root)
    return root, old, new


def next_run_says(root: Path) -> str:
    """A later command that touches the tree (a dry run of another diff): its stderr."""
    (root / "other.txt").write_text("o\n")
    (root / "other.diff").write_text("--- a/other.txt\n+++ b/other.txt\n@@ -1 +1 @@\n-o\n+p\n")
    code, _, err = run(["apply", "--dry-run", "other.diff"])
    assert code == 0, err
    (root / "other.txt").unlink()
    (root / "other.diff").unlink()
    return err


# ---- SIGKILL: the next run finishes the apply; undo works ------------------------------------------

@pytest.mark.parametrize("stage", ["apply:journaled", "apply:staged", "apply:renamed-1", "apply:renamed",
                                   "apply:recorded"])
def test_kill_9_at_any_stage_then_the_next_run_rolls_forward_and_undo_restores(work, stage):
    root, old, new = work
    dllm = Dllm(root, ["apply", "--yes", "fix.diff"], stage)
    dllm.wait_paused(stage)
    dllm.proc.kill()
    assert dllm.finish()[0] == -signal.SIGKILL
    assert (root / ".git/dllm/txn.json").exists()  # the record was durable before the first rename
    err = next_run_says(root)
    assert "rolled forward" in err and "`dllm undo` reverts it" in err
    assert tree(root) == new and not temps(root) and not (root / ".git/dllm/txn.json").exists()
    assert os.stat(root / "e.sh").st_mode & 0o777 == 0o755
    code, _, err = run(["undo"])
    assert code == 0, err
    assert tree(root) == old and not (root / "new").exists() and not temps(root)


def test_kill_9_before_the_record_leaves_the_tree_untouched_and_nothing_to_undo(work):
    root, old, _ = work
    dllm = Dllm(root, ["apply", "--yes", "fix.diff"], "apply:before-lock")
    dllm.wait_paused("apply:before-lock")
    dllm.proc.kill()
    dllm.finish()
    assert "interrupted" not in next_run_says(root)
    assert tree(root) == old and not temps(root)
    code, _, err = run(["undo"])
    assert code == 3 and "nothing to undo" in err


# ---- SIGTERM and SIGHUP: handled like Ctrl-C (rolled back, the tree as before) ------------------------

@pytest.mark.parametrize("signum, stage", [
    (signal.SIGTERM, "apply:journaled"), (signal.SIGTERM, "apply:renamed-1"), (signal.SIGTERM, "apply:recorded"),
    (signal.SIGHUP, "apply:staged"), (signal.SIGHUP, "apply:renamed"),
])
def test_sigterm_and_sighup_while_applying_roll_it_back(work, signum, stage):
    root, old, _ = work
    dllm = Dllm(root, ["apply", "--yes", "fix.diff"], stage)
    dllm.wait_paused(stage)
    dllm.proc.send_signal(signum)
    code, err = dllm.finish()
    assert code == 128 + signum, err
    assert f"dllm: stopped by {signal.Signals(signum).name}; nothing was changed" in err and "Traceback" not in err
    assert tree(root) == old and not temps(root) and not (root / "new").exists()
    assert not (root / ".git/dllm/txn.json").exists()
    code, _, err = run(["undo"])
    assert code == 3 and "nothing to undo" in err


def test_kill_9_during_the_rollback_is_finished_by_the_next_run(work):
    root, old, _ = work
    dllm = Dllm(root, ["apply", "--yes", "fix.diff"], "apply:renamed,rollback:renamed-1")
    dllm.wait_paused("apply:renamed")
    dllm.proc.send_signal(signal.SIGTERM)  # rolled back ...
    dllm.wait_paused("rollback:renamed-1")
    dllm.proc.kill()  # ... and killed half way through the rollback
    dllm.finish()
    assert "finished the rollback" in next_run_says(root)
    assert tree(root) == old and not temps(root) and not (root / "new").exists()
    assert run(["undo"])[0] == 3


# ---- undo --------------------------------------------------------------------------------------

def test_kill_9_during_undo_is_finished_by_the_next_run(work):
    root, old, new = work
    assert run(["apply", "--yes", "fix.diff"])[0] == 0
    dllm = Dllm(root, ["undo"], "undo:renamed-1")
    dllm.wait_paused("undo:renamed-1")
    dllm.proc.kill()
    dllm.finish()
    assert tree(root) not in (old, new)  # half restored: this is what recovery is for
    assert "an undo was interrupted; finished it" in next_run_says(root)
    assert tree(root) == old and not temps(root)
    code, _, err = run(["undo"])
    assert code == 3 and "nothing to undo" in err


def test_sigterm_during_undo_lets_it_finish(work):
    root, old, _ = work
    assert run(["apply", "--yes", "fix.diff"])[0] == 0
    dllm = Dllm(root, ["undo"], "undo:renamed-1")
    dllm.wait_paused("undo:renamed-1")
    dllm.proc.send_signal(signal.SIGTERM)
    code, err = dllm.finish()
    assert code == 0 and "undone" in err
    assert tree(root) == old and not temps(root)


# ---- a kill seen from outside, without the seam ----------------------------------------------

def test_kill_9_right_after_the_first_rename_seen_from_outside(tmp_path, monkeypatch, isolated):
    root = tmp_path / "repo"
    old, new = make_tree(root, n_extra=300)
    monkeypatch.chdir(root)
    watched = {rel: root / rel for rel in old if rel.startswith("many/")}
    proc = subprocess.Popen([sys.executable, "-m", "dllm_cli", "apply", "--yes", "fix.diff"], cwd=root, env=env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if any(p.read_bytes() != old[rel] for rel, p in watched.items() if p.exists()):
            break
    proc.kill()
    proc.communicate(timeout=60)
    next_run_says(root)
    assert tree(root) == new and not temps(root)  # whenever it died, the files are all new now
    assert run(["undo"])[0] == 0
    assert tree(root) == old and not temps(root)


# ---- one writer at a time ------------------------------------------------------------------------

BASE = "".join(f"line {i}\n" for i in range(1, 21))


def two_diffs(root: Path) -> None:
    """A and B from one base, changing different lines (3 and 17) of the same file."""
    (root / "shared.txt").write_text(BASE)
    git(root, "add", "shared.txt")
    git(root, "-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "base")
    for name, line in (("A", 3), ("B", 17)):
        (root / "shared.txt").write_text(BASE.replace(f"line {line}\n", f"line {line} by {name}\n"))
        (root / f"{name}.diff").write_text(git(root, "diff"))
    git(root, "checkout", "-q", "--", "shared.txt")


def test_two_applies_from_one_base_the_later_one_is_refused_not_merged(work):
    root, _, _ = work
    two_diffs(root)
    first = Dllm(root, ["apply", "--yes", "A.diff"], "apply:before-lock")
    first.wait_paused("apply:before-lock")  # A has built its patch from the base ...
    second = subprocess.run([sys.executable, "-m", "dllm_cli", "apply", "--yes", "B.diff"], cwd=root, env=env(),
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert second.returncode == 0, second.stderr  # ... B applies meanwhile ...
    first.proc.stdin.write(b"\n")
    first.proc.stdin.flush()
    code, err = first.finish()  # ... and A, re-checked under the lock, is refused
    assert code == 3 and "shared.txt changed since the patch was made from it" in err
    text = (root / "shared.txt").read_text()
    assert "line 17 by B" in text and "line 3 by A" not in text


def test_parallel_applies_never_lose_an_update(work):
    root, _, _ = work
    two_diffs(root)
    for _ in range(4):
        git(root, "checkout", "-q", "--", "shared.txt")
        procs = {name: subprocess.Popen([sys.executable, "-m", "dllm_cli", "apply", "--yes", f"{name}.diff"],
                                        cwd=root, env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE) for name in "AB"}
        codes = {name: (p.wait(timeout=60), p.stderr.read().decode()) for name, p in procs.items()}
        text = (root / "shared.txt").read_text()
        assert any(code == 0 for code, _ in codes.values()), codes
        for name, line in (("A", 3), ("B", 17)):
            code, err = codes[name]
            assert code in (0, 3), err
            assert (f"line {line} by {name}\n" in text) == (code == 0), (codes, text)  # no lost update
        (root / ".git/dllm/journal").exists() and [p.unlink() for p in (root / ".git/dllm/journal").glob("*.json")]


def test_a_held_lock_makes_apply_wait_then_refuse(work, monkeypatch):
    from filelock import FileLock

    root, old, _ = work
    monkeypatch.setattr("dllm_cli.durable.LOCK_TIMEOUT", 0.3)
    state = root / ".git/dllm"
    state.mkdir(parents=True, exist_ok=True)
    patch = P.build_patch(root, [Edit("a.py", None, "x = 1\n", "whole_file", 1)])
    with FileLock(str(state / "lock")):
        with pytest.raises(PatchError, match="another dllm is writing in this repository") as info:
            J.apply_patch(root, patch, state_dir=state)
    assert info.value.exit_code == 3 and tree(root) == old
    J.apply_patch(root, patch, state_dir=state)  # released: it goes through
    assert (root / "a.py").read_bytes() == b"x = 1\n"


# ---- recovery that cannot decide -------------------------------------------------------------------

def test_recovery_stops_when_a_file_was_edited_after_the_kill(work):
    root, old, new = work
    dllm = Dllm(root, ["apply", "--yes", "fix.diff"], "apply:renamed-1")
    dllm.wait_paused("apply:renamed-1")
    dllm.proc.kill()
    dllm.finish()
    edited = next(rel for rel in ("a.py", "b.txt", "e.sh") if (root / rel).read_bytes() == new[rel])
    (root / edited).write_bytes(b"edited by hand after the crash\n")
    before = {rel: data for rel, data in tree(root).items() if ".dllm-" not in rel}
    code, _, err = run(["undo"])
    assert code == 3 and f"{edited} changed since" in err and "interrupted" in err
    kept = list((root / ".git/dllm/interrupted").glob("*.json"))
    assert len(kept) == 1 and str(kept[0]) in " ".join(err.split())
    assert tree(root) == before and not temps(root)  # nothing more written, temp files gone
    assert not (root / ".git/dllm/txn.json").exists()


def test_txn_record_is_written_before_the_first_rename(work, monkeypatch):
    """In process: at the first os.replace into the tree, txn.json exists and holds the new bytes."""
    import json

    root, _, new = work
    state = root / ".git/dllm"
    seen = []
    real = os.replace

    def spy(src, dst):
        if not str(dst).startswith(str(state)) and not seen:
            txn = json.loads((state / "txn.json").read_text())
            seen.append({f["path"]: f["new_sha"] for f in txn["files"]})
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    patch = P.build_patch(root, [Edit("a.py", None, new["a.py"].decode(), "whole_file", 1),
                                 Edit("new/deep/d.py", None, new["new/deep/d.py"].decode(), "whole_file", 1)])
    J.apply_patch(root, patch, state_dir=state)
    assert seen and set(seen[0]) == {"a.py", "new/deep/d.py"} and all(seen[0].values())
    assert not (state / "txn.json").exists() and len(list((state / "journal").glob("*.json"))) == 1
