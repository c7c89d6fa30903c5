"""Edits → checked patch → atomic apply → undo, on real files in tmp_path."""

import os
import subprocess
from pathlib import Path

import pytest

from dllm_cli import journal as J
from dllm_cli import match as M
from dllm_cli import patch as P
from dllm_cli.edits import Edit, parse_edits, parse_unified_diff
from dllm_cli.errors import DllmError, PatchError


def sr(path, search, replace, line=1):
    return Edit(path, search, replace, "search_replace", line)


def whole(path, text):
    return Edit(path, None, text, "whole_file", 1)


def write(root, rel, data):
    target = root / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data if isinstance(data, bytes) else data.encode())
    return target


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    for key, value in (("user.name", "T"), ("user.email", "t@example.com"), ("commit.gpgsign", "false")):
        subprocess.run(["git", "-C", str(root), "config", key, value], check=True)
    return root


# --- tolerant matching, level by level -------------------------------------------------------

FILE = "def f(x):\n    if x:\n        return 'a'  \n    return None\n"


@pytest.mark.parametrize("search, level", [
    ("        return 'a'  \n", "exact"),
    ("        return 'a'\n", "trailing"),
    ("\n\n        return 'a'\n\n", "trimmed"),
    ("        return \u2018a\u2019\u00a0\n", "unicode"),
    ("if x:\n    return 'a'\n", "reindent"),
])
def test_each_matching_level(search, level):
    m = M.find_unique(FILE, search)
    assert m.level == level and (m.line_start, m.line_end) == ((1, 3) if level == "reindent" else (2, 3))


def test_reindent_shifts_the_replacement_too():
    out = M.replace_once(FILE, "if x:\n    return 'a'\n", "if x and y:\n    return 'b'\nelse:\n    pass\n")
    assert out == "def f(x):\n    if x and y:\n        return 'b'\n    else:\n        pass\n    return None\n"


def test_trimmed_drops_the_same_blank_lines_from_the_replacement():
    out = M.replace_once(FILE, "\n    return None\n\n", "\n    return 0\n\n")
    assert out == FILE.replace("return None", "return 0")


def test_ambiguous_and_missing_blocks_are_reported_with_file_and_block():
    text = "x = 1\ny = 2\nx = 1\n"
    with pytest.raises(PatchError, match=r"a\.py: the SEARCH block starting 'x = 1' matches 2 places") as info:
        M.find_unique(text, "x = 1\n", path="a.py")
    assert info.value.exit_code == 3
    with pytest.raises(PatchError, match=r"a\.py: the SEARCH block starting 'z = 9' matches nothing"):
        M.find_unique(text, "z = 9\n", path="a.py")


def test_exact_ambiguity_is_not_resolved_by_looser_levels_but_a_diff_line_hint_is():
    text = "x = 1\ny\nx = 1\n"
    assert M.find_unique(text, "x = 1\n", hint=2).line_start == 2
    with pytest.raises(PatchError, match="2 places"):
        M.find_unique(text, "x = 1\n", hint=1)


def test_crlf_and_missing_final_newline_are_kept():
    text = "a\r\nb\r\nc"
    assert M.replace_once(text, "b\nc\n", "B\nC\nD\n") == "a\r\nB\r\nC\r\nD"
    assert M.replace_once(text, "c\n", "") == "a\r\nb"
    assert M.replace_once("a\n\tb\n", "\tb\n", "\tB\n") == "a\n\tB\n"


# --- build_patch ------------------------------------------------------------------------------

def test_several_edits_on_one_file_apply_in_order_and_diff_is_git_applicable(repo):
    write(repo, "a.py", "one\ntwo\nthree\n")
    write(repo, "gone.txt", "bye\n")
    patch = P.build_patch(repo, [sr("a.py", "one\n", "1\n"), sr("a.py", "1\ntwo\n", "1\n2\n"),
                                 whole("pkg/new.py", "print('hi')"),
                                 Edit("gone.txt", "bye\n", "", "delete_file", 3)])
    assert patch.files == ("a.py", "pkg/new.py", "gone.txt")
    assert patch.created == ("pkg/new.py",) and patch.deleted == ("gone.txt",)
    assert patch.changes[0].new == b"1\n2\nthree\n"
    assert "new file mode 100644" in patch.diff and "deleted file mode 100644" in patch.diff
    assert "\\ No newline at end of file" in patch.diff
    saved = J.save_patch(patch, repo / ".git" / "dllm")
    assert saved == J.save_patch(patch, repo / ".git" / "dllm")  # saved once
    subprocess.run(["git", "apply", "--check", str(saved)], cwd=repo, check=True)
    assert (repo / "a.py").read_text() == "one\ntwo\nthree\n"  # building wrote nothing
    assert not (repo / "pkg").exists()


def test_search_replace_on_missing_file_fails_but_empty_search_creates(repo):
    with pytest.raises(PatchError, match="no such file"):
        P.build_patch(repo, [sr("nope.py", "x\n", "y\n")])
    patch = P.build_patch(repo, [sr("new.py", "", "x = 1\n")])
    assert patch.changes[0].old is None and patch.changes[0].new == b"x = 1\n"
    write(repo, "full.py", "a\n")
    with pytest.raises(PatchError, match="empty SEARCH"):
        P.build_patch(repo, [sr("full.py", "", "b\n")])


def test_whole_file_keeps_crlf_and_no_op_is_empty(repo):
    write(repo, "w.txt", b"a\r\nb\r\n")
    patch = P.build_patch(repo, [whole("w.txt", "a\nc\n")])
    assert patch.changes[0].new == b"a\r\nc\r\n"
    assert P.build_patch(repo, [whole("w.txt", "a\nb\n")]).is_empty


def test_binary_and_non_utf8_files_are_refused(repo):
    write(repo, "b.bin", b"\x00\x01")
    write(repo, "l.txt", b"caf\xe9\n")
    with pytest.raises(PatchError, match="binary"):
        P.build_patch(repo, [whole("b.bin", "x")])
    with pytest.raises(PatchError, match="not UTF-8"):
        P.build_patch(repo, [sr("l.txt", "caf\n", "x\n")])


def test_unified_diff_applies_through_the_same_checks(repo):
    write(repo, "m.py", "a\nb\nc\n")
    diff = "--- a/m.py\n+++ b/m.py\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n"
    patch = P.build_patch(repo, parse_unified_diff(diff))
    assert patch.changes[0].new == b"a\nB\nc\n"


# --- path safety ------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, words", [
    ("../evil.py", "'..'"), ("a/../../evil.py", "'..'"), ("/etc/passwd", "absolute"), ("~/x", "absolute"),
    (".git/hooks/pre-commit", ".git"), (".GIT/config", ".git"), ("sub/.git/config", ".git"),
    ("", "empty"), ("a\\b.py", "backslash"),
])
def test_unsafe_paths_are_refused(repo, bad, words):
    with pytest.raises(PatchError, match="refusing to write") as info:
        P.build_patch(repo, [whole("ok.py", "x\n"), whole(bad, "x\n")])
    assert words in str(info.value) and info.value.exit_code == 3
    assert not (repo / "ok.py").exists()


def test_symlinks_leaving_the_root_are_refused(repo, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("s\n")
    os.symlink(outside, repo / "linkdir")
    os.symlink(outside / "secret.txt", repo / "linkfile")
    os.symlink(repo / ".git", repo / "gitlink")
    for path in ("linkdir/secret.txt", "linkdir/new.py", "linkfile", "gitlink/config"):
        with pytest.raises(PatchError, match="refusing to write"):
            P.build_patch(repo, [whole(path, "x\n")])
    assert (outside / "secret.txt").read_text() == "s\n" and not (outside / "new.py").exists()


# --- apply: atomic, modes, line endings --------------------------------------------------------

def test_second_file_failing_leaves_first_untouched(repo):
    first = write(repo, "a.py", b"keep\r\nme\r\n")
    write(repo, "b.py", "other\n")
    with pytest.raises(PatchError, match="b.py"):
        P.build_patch(repo, [sr("a.py", "keep\n", "changed\n"), sr("b.py", "missing\n", "x\n")])
    assert first.read_bytes() == b"keep\r\nme\r\n"


def test_failure_during_renames_rolls_everything_back(repo, monkeypatch):
    a = write(repo, "a.py", "a\n")
    b = write(repo, "b.py", "b\n")
    patch = P.build_patch(repo, [whole("a.py", "A\n"), whole("new/c.py", "C\n"), whole("b.py", "B\n")])
    real_replace = os.replace

    def flaky(src, dst):
        if str(dst).endswith("b.py"):
            raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(PatchError, match="nothing was changed"):
        J.apply_patch(repo, patch, state_dir=tmp_state(repo))
    assert a.read_bytes() == b"a\n" and b.read_bytes() == b"b\n"
    assert not (repo / "new").exists()
    assert not [p for p in repo.iterdir() if p.name.startswith(".dllm-")]
    assert not (tmp_state(repo) / "journal").exists() or not list((tmp_state(repo) / "journal").glob("*.json"))


def test_ctrl_c_while_writing_rolls_the_apply_back_and_lets_an_undo_finish(repo, monkeypatch):
    import signal

    a = write(repo, "a.py", "a\n")
    b = write(repo, "b.py", "b\n")
    patch = P.build_patch(repo, [whole("a.py", "A\n"), whole("new/c.py", "C\n"), whole("b.py", "B\n")])
    real_replace = os.replace

    def interrupted_after_the_first(src, dst):
        real_replace(src, dst)
        if str(dst).endswith("a.py"):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C with a.py already written

    monkeypatch.setattr(os, "replace", interrupted_after_the_first)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        J.apply_patch(repo, patch, state_dir=tmp_state(repo))
    assert a.read_bytes() == b"a\n" and b.read_bytes() == b"b\n" and not (repo / "new").exists()
    assert not list((tmp_state(repo) / "journal").glob("*.json"))  # nothing to undo: nothing applied
    assert signal.getsignal(signal.SIGINT) is handler
    monkeypatch.setattr(os, "replace", real_replace)
    J.apply_patch(repo, patch, state_dir=tmp_state(repo))  # without Ctrl-C: applied
    assert a.read_bytes() == b"A\n" and (repo / "new/c.py").read_bytes() == b"C\n"
    monkeypatch.setattr(os, "replace", interrupted_after_the_first)
    J.undo(repo, state_dir=tmp_state(repo))  # an undo that has started writing finishes
    assert (a.read_bytes(), b.read_bytes(), (repo / "new").exists()) == (b"a\n", b"b\n", False)


def tmp_state(root):
    return root / ".git" / "dllm"


def test_modes_and_crlf_kept_and_file_changed_since_is_refused(repo):
    script = write(repo, "run.sh", b"#!/bin/sh\r\necho hi\r\n")
    script.chmod(0o755)
    patch = P.build_patch(repo, [sr("run.sh", "echo hi\n", "echo bye\n")])
    applied = J.apply_patch(repo, patch, state_dir=tmp_state(repo))
    assert script.read_bytes() == b"#!/bin/sh\r\necho bye\r\n"
    assert os.stat(script).st_mode & 0o777 == 0o755
    assert applied.files == ("run.sh",) and applied.patch_file.read_bytes().decode() == patch.diff
    subprocess.run(["git", "apply", "--check", "-R", str(applied.patch_file)], cwd=repo, check=True)
    stale = P.build_patch(repo, [sr("run.sh", "echo bye\n", "echo 1\n")])
    script.write_bytes(b"edited by hand\n")
    with pytest.raises(PatchError, match="run.sh changed since"):
        J.apply_patch(repo, stale, state_dir=tmp_state(repo))
    assert script.read_bytes() == b"edited by hand\n"


# --- undo -----------------------------------------------------------------------------------------

def test_undo_is_byte_exact_for_modified_created_and_deleted_files_and_stacks(repo):
    state = tmp_state(repo)
    mod = write(repo, "m.txt", b"x\r\ny")
    gone = write(repo, "gone.sh", b"#!/bin/sh\n")
    gone.chmod(0o750)
    first = J.apply_patch(repo, P.build_patch(repo, [sr("m.txt", "y\n", "z\n"), whole("d/e/new.py", "n\n"),
                                                     Edit("gone.sh", None, "", "delete_file", 1)]), state_dir=state)
    assert mod.read_bytes() == b"x\r\nz" and not gone.exists()
    second = J.apply_patch(repo, P.build_patch(repo, [sr("m.txt", "z\n", "w\n")]), state_dir=state)
    assert mod.read_bytes() == b"x\r\nw"
    assert J.undo(repo, state_dir=state).id == second.id
    assert mod.read_bytes() == b"x\r\nz"
    assert J.undo(repo, state_dir=state).id == first.id
    assert mod.read_bytes() == b"x\r\ny" and gone.read_bytes() == b"#!/bin/sh\n"
    assert os.stat(gone).st_mode & 0o777 == 0o750
    assert not (repo / "d").exists()
    with pytest.raises(PatchError, match="nothing to undo"):
        J.undo(repo, state_dir=state)


def test_undo_refuses_when_a_file_changed_since(repo):
    state = tmp_state(repo)
    f = write(repo, "a.txt", "1\n")
    J.apply_patch(repo, P.build_patch(repo, [whole("a.txt", "2\n"), whole("b.txt", "new\n")]), state_dir=state)
    (repo / "b.txt").write_text("touched\n")
    with pytest.raises(PatchError, match="cannot undo: b.txt changed since") as info:
        J.undo(repo, state_dir=state)
    assert info.value.exit_code == 3
    assert f.read_text() == "2\n"  # nothing restored
    (repo / "b.txt").write_text("new\n")
    J.undo(repo, state_dir=state)
    assert f.read_text() == "1\n" and not (repo / "b.txt").exists()


# --- state dir and commit -------------------------------------------------------------------------

def test_state_dir_for_repo_worktree_and_env(repo, tmp_path, monkeypatch):
    monkeypatch.delenv("DLLM_STATE_DIR", raising=False)
    (repo / "sub").mkdir()
    assert J.state_dir_for(repo / "sub") == Path(os.path.realpath(repo)) / ".git" / "dllm"
    wt = tmp_path / "wt"
    wt.mkdir()
    (wt / ".git").write_text(f"gitdir: {repo}/.git/worktrees/wt\n")
    assert J.state_dir_for(wt) == Path(os.path.realpath(repo)) / ".git" / "worktrees" / "wt" / "dllm"
    monkeypatch.setenv("DLLM_STATE_DIR", str(tmp_path / "st"))
    assert J.state_dir_for(repo) == tmp_path / "st"


def test_commit_patch_commits_exactly_the_changed_files(repo):
    write(repo, "a.py", "a\n")
    write(repo, "other.py", "o\n")
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=repo, check=True)
    write(repo, "other.py", "staged\n")
    subprocess.run(["git", "add", "other.py"], cwd=repo, check=True)
    applied = J.apply_patch(repo, P.build_patch(repo, [whole("a.py", "A\n"), whole("n.py", "n\n")]),
                            state_dir=tmp_state(repo))
    sha = J.commit_patch(repo, applied, "Change a", "tiny-dream")
    show = subprocess.run(["git", "show", "--name-only", "--format=%B", sha], cwd=repo, check=True,
                          capture_output=True, text=True).stdout
    assert "Change a" in show and "Generated-by: dllm (tiny-dream)" in show
    assert "a.py" in show and "n.py" in show and "other.py" not in show
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=repo, capture_output=True,
                            text=True).stdout
    assert staged.strip() == "other.py"


def test_commit_outside_a_repo_is_a_clear_error(tmp_path):
    write(tmp_path, "x.txt", "1\n")
    applied = J.apply_patch(tmp_path, P.build_patch(tmp_path, [whole("x.txt", "2\n")]),
                            state_dir=tmp_path / "state")
    with pytest.raises(DllmError, match="needs a git repository"):
        J.commit_patch(tmp_path, applied, "m", "x")


def test_model_answer_to_applied_patch_end_to_end(repo):
    write(repo, "app.py", "def greet():\n    print(\u201chello\u201d)\n")
    answer = ("app.py\n```python\n<<<<<<< SEARCH\ndef greet():\n    print(\"hello\")\n=======\n"
              "def greet(name):\n    print(f\"hello {name}\")\n>>>>>>> REPLACE\n```\n")
    patch = P.build_patch(repo, parse_edits(answer))
    J.apply_patch(repo, patch, state_dir=tmp_state(repo))
    assert (repo / "app.py").read_text() == 'def greet(name):\n    print(f"hello {name}")\n'


@pytest.mark.parametrize("old, new", [
    ("a\nb\nc\n", "a\nB\nc\n"),
    ("a\nb\nc", "a\nb\nc\n"),  # final newline added
    ("a\nb\nc\n", "a\nb"),  # removed, and no final newline
    ("p\n" * 20, "p\n" * 9 + "Q\n" + "p\n" * 10),  # ambiguous context: the hunk's line number decides
    ("a\r\nb\r\n", "a\r\nc\r\nb\r\n"),
    ("1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n", "0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n"),
])
def test_our_diff_round_trips_through_parse_unified_diff_and_git(repo, old, new):
    write(repo, "f.txt", old.encode())
    change = P.FileChange("f.txt", old.encode(), new.encode(), 0o644)
    patch = P.Patch((change,), P.unified_diff([change]))
    expected = new.encode()
    saved = J.save_patch(patch, tmp_state(repo))
    subprocess.run(["git", "apply", "--check", str(saved)], cwd=repo, check=True)
    again = P.build_patch(repo, parse_unified_diff(patch.diff))
    assert again.changes[0].new == expected


# --- issue 14: paths as git compares them, regular files only, the redaction marker ---------------

@pytest.mark.parametrize("bad", [
    ".g\u200cit/config", ".GIT\u200d/hooks/x", "\ufeff.git/config", ".git\u200e/config", "sub/.gi\u200ft/x",
    ".git::$INDEX_ALLOCATION/config", ".git. /config", "GIT~1/config", ".\uff47it/config",  # fullwidth g (NFKC)
])
def test_path_components_are_compared_as_git_does(repo, bad):
    with pytest.raises(PatchError, match=r"\.git directory"):
        P.check_path(repo, bad)


@pytest.mark.parametrize("good", ["src/gitx.py", ".github/workflows/ci.yml", "a.git.py", ".gitignore"])
def test_names_that_only_look_like_git_are_allowed(repo, good):
    assert P.check_path(repo, good) == good


def test_dot_dot_hidden_by_ignorables_is_refused(repo):
    with pytest.raises(PatchError, match="'.' or '..'"):
        P.check_path(repo, ".\u200c./evil.py")


@pytest.mark.parametrize("make, words", [
    (lambda p: os.mkfifo(p), "FIFO"),
    (lambda p: __import__("socket").socket(__import__("socket").AF_UNIX).bind(str(p)), "socket"),
])
def test_non_regular_files_are_refused_before_any_read(repo, make, words):
    import signal

    def hung(signum, frame):
        raise TimeoutError("a FIFO was opened for reading")

    make(repo / "special")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)  # the guard: opening a FIFO for reading would block forever
    try:
        with pytest.raises(PatchError, match=words):
            P.build_patch(repo, [whole("special", "x\n")])
        with pytest.raises(PatchError, match=words):
            P.build_patch(repo, [sr("special", "a\n", "b\n")])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_files_over_the_edit_cap_are_refused(repo, monkeypatch):
    monkeypatch.setattr(P, "MAX_EDIT_BYTES", 10)
    write(repo, "big.txt", "x" * 11)
    with pytest.raises(PatchError, match="huge"):
        P.build_patch(repo, [whole("big.txt", "y\n")])


def test_an_edit_that_writes_the_redaction_marker_over_a_secret_is_refused(repo):
    write(repo, "conf.py", 'TOKEN = "ghp_R4nd0mT0k3nV4lu3Xy9Qz8Wv7Ut6Sr5Pq4On"\nDEBUG = False\n')
    seen_by_model = 'TOKEN = "[dllm-redacted:github-token]"\nDEBUG = True\n'
    with pytest.raises(PatchError, match="redaction marker"):
        P.build_patch(repo, [whole("conf.py", seen_by_model)])
    assert b"ghp_R4nd0m" in (repo / "conf.py").read_bytes()
