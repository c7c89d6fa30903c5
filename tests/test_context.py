"""context.py: which files (and stdin) reach the prompt, in a temporary git repository."""

from __future__ import annotations

import os
import subprocess

import pytest

from dllm_cli.context import (
    MAX_FILE_BYTES,
    Context,
    ContextFile,
    Skipped,
    gather,
    is_secret,
    mentions,
    prompt_words,
    rank,
)
from dllm_cli.errors import UsageError


def words(text: str) -> int:  # a stand-in tokenizer: one token per whitespace-separated word
    return len(text.split())


def git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    files = {
        "src/stats.py": "def mean(xs):\n    return sum(xs) / len(xs)\n",
        "src/pager.py": "def page_count(items, per_page):\n    return len(items) // per_page\n",
        "docs/guide.md": "How to use the pager.\n",
        "README.md": "A project.\n",
        ".env": "API_TOKEN=hunter2-mean-pager\n",
        "config/credentials.json": '{"token": "hunter2"}\n',
        "deploy/id_rsa": "not really a key, mean pager\n",
        "certs/server.pem": "pem mean\n",
        ".gitignore": "build/\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "build").mkdir()
    (root / "build/out.py").write_text("def mean(): pass  # ignored build output\n")
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0mean")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "init")
    return root


def test_named_then_mentioned_then_ranked(repo):
    ctx = gather("fix page_count in @src/pager.py rounding", ["README.md"], count_tokens=words,
                 budget=1000, cwd=repo)
    reasons = [(f.path, f.reason.split(" ")[0]) for f in ctx.files]
    assert reasons[0] == ("README.md", "named")
    assert reasons[1] == ("src/pager.py", "mentioned")
    assert all(r == "relevant" for _, r in reasons[2:])
    assert all(isinstance(f, ContextFile) and f.tokens > words(f.text) for f in ctx.files)
    assert ctx.tokens == sum(f.tokens for f in ctx.files) and ctx.in_git and ctx.root == repo


def test_ranking_prefers_path_and_identifier_matches(repo):
    ctx = gather("make the pager handle an empty list", count_tokens=words, budget=1000, cwd=repo)
    assert ctx.files[0].path == "src/pager.py"
    assert "src/stats.py" not in [f.path for f in ctx.files]  # no shared word: not sent


def test_works_from_a_subdirectory_with_relative_paths(repo):
    ctx = gather("explain", ["stats.py"], count_tokens=words, budget=1000, cwd=repo / "src")
    assert ctx.files[0].path == "src/stats.py" and ctx.root == repo


def test_secrets_never_sent_even_when_named(repo):
    named = [".env", "config/credentials.json", "deploy/id_rsa", "certs/server.pem"]
    ctx = gather("mean pager hunter2 token api", named, count_tokens=words, budget=10_000, cwd=repo)
    sent = "\n".join(f.text for f in ctx.files)
    assert "hunter2" not in sent and "key" not in sent
    assert {s.path for s in ctx.skipped if s.reason.startswith("secret")} == set(named)
    assert not {f.path for f in ctx.files} & set(named)


def test_private_key_content_is_redacted_in_place_whatever_the_name(repo):
    (repo / "notes.txt").write_text("see below\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n"
                                    "-----END OPENSSH PRIVATE KEY-----\nafter\n")
    ctx = gather("notes", ["notes.txt"], count_tokens=words, budget=1000, cwd=repo)
    (sent,) = ctx.files
    assert "b3BlbnNzaC1rZXk" not in sent.text and "[dllm-redacted:private-key]" in sent.text
    assert sent.text.startswith("see below\n-----BEGIN OPENSSH PRIVATE KEY-----\n") and "after" in sent.text
    assert [(r.path, r.line, r.kind) for r in ctx.redactions] == [("notes.txt", 2, "private-key")]
    assert "redacted 1 secret in notes.txt (private-key line 2)" in ctx.report_lines()


@pytest.mark.parametrize("path, secret", [
    (".env", True), (".env.local", True), ("app/prod.env", True), (".envrc", True),
    ("a/b/server.key", True), ("x.pem", True), ("id_rsa", True), ("id_ed25519.pub", True),
    (".netrc", True), ("credentials", True), ("credentials.json", True), (".npmrc", True),
    (".pypirc", True), ("cert.p12", True), ("home/.ssh/config", True), (".aws/config", True),
    ("src/environment.py", False), ("id_utils.py", False), ("keys.py", False), ("README.md", False),
])
def test_is_secret(path, secret):
    assert is_secret(path) is secret


def test_gitignored_binary_and_huge_files_are_not_sent(repo):
    (repo / "big.py").write_text("mean = 1\n" * (MAX_FILE_BYTES // 8))
    git(repo, "add", "big.py")
    ctx = gather("mean", ["build/out.py", "logo.png", "big.py"], count_tokens=words,
                 budget=10**7, cwd=repo)
    why = {s.path: s.reason for s in ctx.skipped}
    assert why["build/out.py"].startswith("ignored") and why["logo.png"].startswith("binary")
    assert why["big.py"].startswith("huge")
    assert "build/out.py" not in [f.path for f in ctx.files]  # not ranked either


def test_untracked_unignored_files_are_candidates(repo):
    (repo / "src/median.py").write_text("def median(xs):\n    return sorted(xs)[len(xs) // 2]\n")
    ctx = gather("fix median", count_tokens=words, budget=1000, cwd=repo)
    assert [f.path for f in ctx.files] == ["src/median.py"]


def test_budget_named_too_big_is_an_error_ranked_is_skipped(repo):
    with pytest.raises(UsageError, match="src/stats.py: .* tokens do not fit"):
        gather("x", ["src/stats.py"], count_tokens=words, budget=5, cwd=repo)
    ctx = gather("mean pager page_count", count_tokens=words, budget=16, cwd=repo)
    assert ctx.tokens <= 16
    assert any("over the token budget" in s.reason for s in ctx.skipped)


def test_report_lines_name_user_skips_and_count_ranked_ones(repo):
    for i in range(4):
        (repo / f"src/mean_{i}.py").write_text("def mean(xs):\n" + "    total = mean(xs) + 1\n" * 40)
    ctx = gather("fix mean, see @src/mean_0.py", [".env", "logo.png"], count_tokens=words, budget=60,
                 cwd=repo)
    assert "src/stats.py" in [f.path for f in ctx.files]
    ranked = sorted(s.path for s in ctx.skipped if s.ranked)
    assert ranked == ["src/mean_1.py", "src/mean_2.py", "src/mean_3.py"]
    lines = ctx.report_lines()
    assert lines[:2] == ["not sent: .env (secret: never sent)", "not sent: logo.png (binary)"]
    assert lines[2].startswith("not sent: src/mean_0.py (over the token budget (")   # mentioned: by name
    assert lines[3:] == ["3 relevant files not sent: over the token budget; --show-context lists them"]
    one = Context(repo, True, (), None, 0, 10, (Skipped("a.py", "over the token budget (9 > 1 left)", True),
                                               Skipped("b.py", "unreadable (Permission denied)", True)))
    assert one.report_lines() == ["1 relevant file not sent: over the token budget; --show-context lists them",
                                  "1 relevant file not sent: unreadable; --show-context lists them"]


def test_named_directory_expands_to_its_files(repo):
    ctx = gather("x", ["src"], count_tokens=words, budget=1000, cwd=repo)
    assert [f.path for f in ctx.files] == ["src/pager.py", "src/stats.py"]


def test_paths_outside_the_repo_or_missing_or_in_git_dir(repo, tmp_path):
    (tmp_path / "outside.py").write_text("x = 1\n")
    with pytest.raises(UsageError, match="outside the repository"):
        gather("x", ["../outside.py"], count_tokens=words, budget=1000, cwd=repo)
    os.symlink(tmp_path / "outside.py", repo / "link.py")
    with pytest.raises(UsageError, match="outside the repository"):
        gather("x", ["link.py"], count_tokens=words, budget=1000, cwd=repo)
    with pytest.raises(UsageError, match="no such file"):
        gather("x", ["nope.py"], count_tokens=words, budget=1000, cwd=repo)
    ctx = gather("x", [".git/config"], count_tokens=words, budget=1000, cwd=repo)
    assert ctx.files == () and ".git" in ctx.skipped[0].reason


def test_outside_git_only_named_files(tmp_path):
    (tmp_path / "a.py").write_text("def mean(): pass\n")
    (tmp_path / "b.py").write_text("def mean2(): pass\n")
    ctx = gather("fix mean", ["a.py"], count_tokens=words, budget=1000, cwd=tmp_path)
    assert not ctx.in_git and [f.path for f in ctx.files] == ["a.py"]


def test_stdin_is_budgeted_and_kept(repo):
    ctx = gather("fix the failing test", count_tokens=words, budget=1000, stdin_text="E assert 1 == 2\n",
                 cwd=repo)
    assert ctx.stdin_text == "E assert 1 == 2\n" and ctx.stdin_tokens > 0
    with pytest.raises(UsageError, match="piped input is"):
        gather("x", count_tokens=words, budget=3, stdin_text="many words " * 10, cwd=repo)


def test_mentions_and_words():
    assert mentions("see @src/a.py, and @b/c.md.") == ["src/a.py", "b/c.md"]
    assert mentions("mail me at x@y.com") == []
    assert {"page", "count", "page_count", "parsearg"} <= prompt_words("fix page_count and parseArg")
    assert "the" not in prompt_words("fix the bug")


def test_rank_is_zero_free_and_ordered():
    texts = {"a/pager.py": "def page(): pass", "b.py": "pager = None", "c.py": "unrelated"}
    ranked = rank({"pager"}, texts)
    assert [p for _, p in ranked] == ["a/pager.py", "b.py"]


# ---- issue 14: secrets by content, regular files only ------------------------------------------

def plant(repo) -> dict[str, str]:
    from planted import NAMED_SECRETS, files

    planted = {**files(), **NAMED_SECRETS}
    for rel, text in planted.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git(repo, "add", "-f", *planted)
    return planted


def test_every_secret_kind_is_redacted_in_place_and_reported(repo):
    from planted import KEPT, NAMED_SECRETS, PLANTED

    planted = plant(repo)
    ctx = gather("explain", sorted(planted), count_tokens=words, budget=10**6, cwd=repo)
    sent = {f.path: f.text for f in ctx.files}
    everything = "\n".join(sent.values())
    for kind, (path, _, secrets) in PLANTED.items():
        assert path in sent, (kind, path)
        assert f"[dllm-redacted:{kind}]" in sent[path], kind
        assert not [s for s in secrets if s in everything], kind
        assert kind in {r.kind for r in ctx.redactions if r.path == path}
    assert all(k in everything for k in KEPT)  # the rest of each file still gives context
    assert not {r.path for r in ctx.redactions} & {"client_code.py"}  # no false alarm on ordinary code
    for rel in NAMED_SECRETS:  # secret by name: never read at all
        assert rel not in sent and Skipped(rel, "secret: never sent") in ctx.skipped
    assert "plain-kube-token" not in everything and "plain-ppk-body" not in everything
    lines = ctx.report_lines()
    assert any(line.startswith("redacted 2 secrets in config.py (aws-access-key-id line 1, "
                               "aws-secret-access-key line 2)") for line in lines)


def test_ranked_files_with_secrets_are_redacted_too_and_a_prompt_about_secrets_gets_no_secret(repo):
    plant(repo)
    ctx = gather("secret token password key", count_tokens=words, budget=10**6, cwd=repo)
    from planted import PLANTED

    everything = "\n".join(f.text for f in ctx.files)
    assert ctx.files and ctx.redactions
    assert not [s for _, _, secrets in PLANTED.values() for s in secrets if s in everything]


def test_piped_stdin_is_redacted(repo):
    ctx = gather("explain", count_tokens=words, budget=10**6, cwd=repo,
                 stdin_text="env:\nGITHUB_TOKEN=ghp_R4nd0mT0k3nV4lu3Xy9Qz8Wv7Ut6Sr5Pq4On1\n")
    assert "ghp_R4nd0m" not in ctx.stdin_text and "[dllm-redacted:github-token]" in ctx.stdin_text
    assert [(r.path, r.kind) for r in ctx.redactions] == [("(stdin)", "github-token")]


@pytest.mark.parametrize("path", ["secrets.yaml", "secrets.json", "conf/secrets.toml", ".kube/config",
                                  "kubeconfig", "prod.kubeconfig", "keys/id.ppk"])
def test_new_secret_names(path):
    assert is_secret(path)


def _alarm(seconds):
    import signal

    def fail(signum, frame):
        raise TimeoutError("reading hung (a FIFO was opened)")
    signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)


def test_a_fifo_is_never_opened_named_or_read(repo):
    import signal

    from dllm_cli.context import read_text

    os.mkfifo(repo / "src_pipe")
    os.mkfifo(repo / "docs/pipe.md")
    _alarm(10)
    try:
        text, why = read_text(repo / "src_pipe")
        assert text is None and "FIFO" in why
        ctx = gather("pipe guide", ["src_pipe", "docs"], count_tokens=words, budget=1000, cwd=repo)
        outside = gather("pipe", ["pipe.md"], count_tokens=words, budget=1000, cwd=repo / "docs")
    finally:
        signal.alarm(0)
    assert Skipped("src_pipe", "a FIFO (named pipe), not a regular file: never read") in ctx.skipped
    assert "docs/pipe.md" not in [f.path for f in ctx.files] and "docs/guide.md" in [f.path for f in ctx.files]
    assert outside.files == ()


def test_every_read_is_capped(repo, monkeypatch):
    import dllm_cli.context as context

    monkeypatch.setattr(context, "MAX_FILE_BYTES", 8)
    ctx = gather("mean", ["src/stats.py"], count_tokens=words, budget=1000, cwd=repo)
    assert ctx.files == () and ctx.skipped[0].reason.startswith("huge")
