"""diffs.py: `dllm apply` reads diffs from outside as strictly as `git apply --check`; every case is
also run through the real git to show that both agree (the documented differences are listed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dllm_cli import diffs
from dllm_cli.errors import PatchError

from gitrepo import git

FILES = {"m.py": b"a\nb\nc\n", "x": b"x\n", "crlf.txt": b"one\r\ntwo\r\nthree\r\n",
         "long.py": b"".join(f"line {i}\n".encode() for i in range(1, 31)),
         "indent.py": b"def f():\n    if x:\n        return 1\n    return 0\n"}

CASES = {  # name: (diff, what git apply --check says)
    "ok": ("--- a/m.py\n+++ b/m.py\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n", True),
    "truncated mid-hunk": ("--- a/m.py\n+++ b/m.py\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n", False),
    "header claims more lines": ("--- a/m.py\n+++ b/m.py\n@@ -1,5 +1,5 @@\n a\n-b\n+B\n c\n", False),
    "header claims more new lines": ("--- a/m.py\n+++ b/m.py\n@@ -1,3 +1,4 @@\n a\n-b\n+B\n c\n", False),
    "header claims fewer lines": ("--- a/m.py\n+++ b/m.py\n@@ -1,2 +1,2 @@\n a\n-b\n+B\n c\n", False),
    "text after a complete hunk": ("--- a/m.py\n+++ b/m.py\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\nhello\n", True),
    "hunk at an offset": ("--- a/long.py\n+++ b/long.py\n@@ -12,3 +12,3 @@\n line 9\n-line 10\n+LINE 10\n"
                          " line 11\n", True),
    "stale context at another indentation": ("--- a/indent.py\n+++ b/indent.py\n@@ -2,3 +2,3 @@\n if x:\n"
                                             "-    return 1\n+    return 2\n return 0\n", False),
    "context that is not there": ("--- a/m.py\n+++ b/m.py\n@@ -1,3 +1,3 @@\n zz\n-b\n+B\n c\n", False),
    "trailing whitespace in context": ("--- a/m.py\n+++ b/m.py\n@@ -1,3 +1,3 @@\n a \n-b\n+B\n c\n", False),
    "no trailing context, not at the end": ("--- a/m.py\n+++ b/m.py\n@@ -2 +2 @@\n-b\n+B\n", False),
    "old start 1, not at the top": ("--- a/m.py\n+++ b/m.py\n@@ -1,2 +1,2 @@\n-b\n+B\n c\n", False),
    "a header without hunks": ("--- a/m.py\n+++ b/m.py\n", False),
    "an empty hunk": ("--- a/m.py\n+++ b/m.py\n@@ -1,3 +1,3 @@\n", False),
    "a malformed hunk header": ("--- a/m.py\n+++ b/m.py\n@@ -1,3 +1,3\n a\n-b\n+B\n c\n", False),
    "a body line without its marker": ("--- a/m.py\n+++ b/m.py\n@@ -1,3 +1,3 @@\na\n-b\n+B\nc\n", False),
    "git header cut after ---/+++": ("diff --git a/m.py b/m.py\n--- a/m.py\n+++ b/m.py\n", False),
    "second file cut off": ("--- a/m.py\n+++ b/m.py\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n--- a/x\n+++ b/x\n"
                            "@@ -1 +1 @@\n-x\n", False),
    "create": ("--- /dev/null\n+++ b/new.py\n@@ -0,0 +1 @@\n+z\n", True),
    "create over an existing file": ("--- /dev/null\n+++ b/m.py\n@@ -0,0 +1 @@\n+z\n", False),
    "create with a bad count": ("--- /dev/null\n+++ b/new.py\n@@ -0,0 +1,2 @@\n+z\n", False),
    "delete": ("--- a/m.py\n+++ /dev/null\n@@ -1,3 +0,0 @@\n-a\n-b\n-c\n", True),
    "delete that leaves lines": ("--- a/m.py\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-a\n-b\n", False),
    "modify a missing file": ("--- a/q.py\n+++ b/q.py\n@@ -1 +1 @@\n-a\n+b\n", False),
    "wrong no-newline marker": ("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-x\n\\ No newline at end of file\n+y\n", False),
    "prose before the diff": ("Subject: fix\n\nSome words.\n---\n m.py | 2 +-\n\ndiff --git a/m.py b/m.py\n"
                              "--- a/m.py\n+++ b/m.py\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n", True),
    "new empty file (git)": ("diff --git a/e.txt b/e.txt\nnew file mode 100644\nindex 0000000..e69de29\n", True),
    "CRLF diff for a CRLF file": ("--- a/crlf.txt\n+++ b/crlf.txt\n@@ -1,3 +1,3 @@\n one\r\n-two\r\n+TWO\r\n"
                                  " three\r\n", True),
    "two hunks, the second out of place": ("--- a/m.py\n+++ b/m.py\n@@ -3,1 +3,1 @@\n-c\n+C\n@@ -1,1 +1,1 @@\n"
                                           "-a\n+A\n", False),
}

# Where dllm deliberately differs from git apply (docs/cli.md says so):
DIFFERENT = {  # name: (diff, git's verdict, dllm's verdict)
    "LF diff for a CRLF file": ("--- a/crlf.txt\n+++ b/crlf.txt\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n",
                                False, True),
    "rename": ("diff --git a/x b/y\nsimilarity index 100%\nrename from x\nrename to y\n", True, False),
    "copy": ("diff --git a/x b/y\nsimilarity index 100%\ncopy from x\ncopy to y\n", True, False),
    "mode change only": ("diff --git a/x b/x\nold mode 100644\nnew mode 100755\n", True, False),
    "binary": ("diff --git a/x b/x\nindex 1111111..2222222 100644\nBinary files a/x and b/x differ\n", False, False),
}


@pytest.fixture
def root(tmp_path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    for rel, data in FILES.items():
        (r / rel).write_bytes(data)
    git(r, "init", "-q")
    git(r, "add", "-A")
    return r


def git_accepts(root: Path, diff: str) -> bool:
    return subprocess.run(["git", "apply", "--check", "-"], cwd=root, input=diff.encode(),
                          capture_output=True).returncode == 0


def dllm_accepts(root: Path, diff: str) -> bool:
    try:
        diffs.strict_patch(root, diff)
        return True
    except PatchError as err:
        assert err.exit_code == 3 and "\n" not in str(err).strip()
        return False


@pytest.mark.parametrize("name", sorted(CASES))
def test_dllm_apply_agrees_with_git_apply_check(root, name):
    diff, git_says = CASES[name]
    assert git_accepts(root, diff) is git_says, "the case no longer says what git says"
    assert dllm_accepts(root, diff) is git_says


@pytest.mark.parametrize("name", sorted(DIFFERENT))
def test_the_documented_differences_from_git(root, name):
    diff, git_says, dllm_says = DIFFERENT[name]
    assert git_accepts(root, diff) is git_says
    assert dllm_accepts(root, diff) is dllm_says


def test_applied_bytes_equal_what_git_apply_writes(root, tmp_path):
    diff = ("--- a/long.py\n+++ b/long.py\n@@ -12,3 +12,4 @@\n line 9\n-line 10\n+LINE 10\n+line 10b\n"
            " line 11\n--- a/crlf.txt\n+++ b/crlf.txt\n@@ -1,3 +1,3 @@\n one\r\n-two\r\n+TWO\r\n three\r\n"
            "--- /dev/null\n+++ b/new/n.py\n@@ -0,0 +1,2 @@\n+n = 1\n+m = 2\n\\ No newline at end of file\n")
    patch = diffs.strict_patch(root, diff)
    subprocess.run(["git", "apply", "-"], cwd=root, input=diff.encode(), check=True)
    assert {c.path: c.new for c in patch.changes} == {p: (root / p).read_bytes() for p in patch.files}


def test_a_real_git_diff_cut_off_mid_hunk_is_refused_and_names_the_problem(root):
    (root / "long.py").write_bytes(FILES["long.py"].replace(b"line 15\n", b"line 15 changed\n"))
    full = git(root, "diff")
    (root / "long.py").write_bytes(FILES["long.py"])
    cut = full[:full.index("line 15 changed") + 5]  # the download stopped mid-line
    with pytest.raises(PatchError, match="not a valid unified diff.*cut off"):
        diffs.strict_patch(root, cut)
    assert dllm_accepts(root, full)


def test_lf_diff_on_a_crlf_file_keeps_crlf(root):
    patch = diffs.strict_patch(root, DIFFERENT["LF diff for a CRLF file"][0])
    assert patch.changes[0].new == b"one\r\nTWO\r\nthree\r\n"


def test_renames_copies_binary_are_refused_with_the_reason(root):
    for name, words in (("rename", "renames or copies"), ("copy", "renames or copies"), ("binary", "binary")):
        with pytest.raises(PatchError, match=words):
            diffs.strict_patch(root, DIFFERENT[name][0])
    with pytest.raises(PatchError, match="mode changes alone are ignored"):
        diffs.strict_patch(root, DIFFERENT["mode change only"][0])


def test_mode_lines_are_ignored_the_file_keeps_its_mode(root):
    (root / "x").chmod(0o644)
    diff = "diff --git a/x b/x\nold mode 100644\nnew mode 100755\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-x\n+y\n"
    patch = diffs.strict_patch(root, diff)
    assert patch.changes[0].new == b"y\n" and patch.changes[0].mode == 0o644


def test_colour_codes_are_refused_with_a_message_that_says_so(root):
    coloured = "\x1b[1m--- a/m.py\x1b[0m\n\x1b[1m+++ b/m.py\x1b[0m\n@@ -1,3 +1,3 @@\n a\n\x1b[31m-b\x1b[0m\n+B\n c\n"
    with pytest.raises(PatchError, match="terminal colour codes.*FORCE_COLOR unset"):
        diffs.strict_patch(root, coloured)


def test_the_model_s_own_diffs_stay_tolerant(root):
    """edits.py (the model's answers) still recounts and re-indents; only `dllm apply` is strict."""
    from dllm_cli.edits import parse_edits
    from dllm_cli.patch import build_patch

    answer = CASES["stale context at another indentation"][0]
    assert build_patch(root, parse_edits(answer)).changes[0].new == FILES["indent.py"].replace(b"1\n", b"2\n")
    assert not dllm_accepts(root, answer)
