"""The `dllm` command: exit codes, streams, safety rules, in temporary git repositories.

Runs `main()` in-process (CliRunner's stream isolation) for most cases, and a few real
subprocesses: startup without torch, no-TTY behaviour, one tiny-checkpoint `dllm code`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dllm_cli import cli
from dllm_cli.errors import NotConfirmed, PatchError

ANSI = "\x1b["
# what random weights produce: no edit at all, or a malformed block (both exit 3)
NO_EDIT = re.compile(r"dllm: error: (no edit found|cannot read the model's answer)")
ENV_OFF = {"FORCE_COLOR": None, "NO_COLOR": None, "TTY_COMPATIBLE": None, "DLLM_MODEL": None,
           "DLLM_STATE_DIR": None, "COLUMNS": None}


def run(args, input=None, env=None):
    """(exit code, stdout, stderr) of `dllm ARGS` run through main() in this process."""
    runner = CliRunner()
    with runner.isolation(input=input, env={**ENV_OFF, **(env or {})}) as (out, err, _):
        try:
            cli.main(list(args))
            code = 0
        except SystemExit as done:
            code = done.code
        return code, out.getvalue().decode(), err.getvalue().decode()


def git(root, *args):
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DLLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DLLM_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    for name in ENV_OFF:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    (root / "src/stats.py").write_bytes(b"def mean(xs):\r\n    return sum(xs) / len(xs)")  # CRLF, no EOL
    (root / "src/stats.py").chmod(0o755)
    (root / "src/other.py").write_text("A = 1\nB = 2\n")
    (root / ".env").write_text("API_TOKEN=hunter2-mean\n")
    git(root, "init", "-q")
    git(root, "add", "src")
    git(root, "-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "init")
    monkeypatch.chdir(root)
    return root


FIX = """\
--- a/src/stats.py
+++ b/src/stats.py
@@ -1,2 +1,4 @@
 def mean(xs):
+    if not xs:
+        return 0.0
     return sum(xs) / len(xs)
\\ No newline at end of file
"""


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".git" not in p.parts}


# ---- startup --------------------------------------------------------------------------------

PROBE = """
import sys, time
t = time.perf_counter()
from dllm_cli.cli import main
try:
    main({args!r})
except SystemExit:
    pass
print("SECONDS", time.perf_counter() - t, file=sys.stderr)
print("TORCH", "torch" in sys.modules, "transformers" in sys.modules, file=sys.stderr)
import os
print("OMP", os.environ.get("OMP_WAIT_POLICY"), file=sys.stderr)
"""


def probe(args, cwd=None, env=None):
    done = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], capture_output=True, text=True,
                          cwd=cwd, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})
    lines = dict(line.split(" ", 1) for line in done.stderr.splitlines() if line.startswith(("SECONDS", "TORCH")))
    return done, float(lines["SECONDS"]), lines["TORCH"]


def test_openmp_threads_do_not_spin_unless_the_user_says_so(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    done, _, _ = probe(["--version"])
    assert "OMP PASSIVE" in done.stderr
    done, _, _ = probe(["--version"], env={"OMP_WAIT_POLICY": "ACTIVE"})
    assert "OMP ACTIVE" in done.stderr


@pytest.mark.parametrize("args, expect", [(["--help"], "Examples:"), (["--version"], "dllm 0.1.0"),
                                          (["code", "--help"], "--dry-run")])
def test_help_and_version_never_import_torch(args, expect):
    done, seconds, torch_loaded = probe(args)
    assert expect in done.stdout
    assert torch_loaded == "False False"
    assert seconds < 2.0, f"dllm {' '.join(args)} took {seconds:.2f} s"


def example_commands(text: str) -> list[list[str]]:
    """The `dllm ...` arguments of each example line (comments, pipes and redirections cut)."""
    import shlex

    found = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        starts = [i + 1 for i, w in enumerate(words) if w == "|"]
        for start in [0, *starts]:
            if words[start:start + 1] == ["dllm"]:
                part = words[start + 1:]
                end = next((i for i, w in enumerate(part) if w == "|" or w[0] in "<>"), len(part))
                found.append(part[:end])
    return found


def docs_examples() -> str:
    text = (Path(__file__).parent.parent / "docs/cli.md").read_text(encoding="utf-8")
    return text.split("## Examples", 1)[1].split("```bash", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("source", ["help", "docs"])
def test_examples_in_help_and_docs_parse(source):
    """Every example names a real command and only options it has, with valid values."""
    import click
    import typer.main

    group = typer.main.get_command(cli.app)
    examples = example_commands(cli.EXAMPLES if source == "help" else docs_examples())
    assert len(examples) >= 8 and {"code", "apply", "undo"} <= {e[0] for e in examples}
    for args in examples:
        ctx = click.Context(group, info_name="dllm")
        command = group.get_command(ctx, args[0])
        assert command is not None, args
        sub = command.make_context(args[0], args[1:], parent=ctx)  # raises on an unknown option
        if args[0] == "code":
            assert sub.params["prompt"], args


def test_example_commands_cuts_pipes_comments_and_redirections():
    assert example_commands('  pytest -x 2>&1 | dllm code --dry-run "a # b" t.py > fix.diff  # note\n'
                            "  dllm undo\n  git diff") == [["code", "--dry-run", "a # b", "t.py"], ["undo"]]


def test_no_color_wins_over_force_color(repo):
    _, out, _ = run(["apply", "--dry-run", "-"], input=FIX, env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    colours = re.findall(r"\x1b\[([0-9;]*)m", out)
    assert "+    if not xs:" in out
    assert not [c for c in colours if set(c.split(";")) & {str(n) for n in [*range(30, 50), *range(90, 108)]}]


def test_show_context_loads_no_model_and_never_lists_secrets(repo, dream_ckpt):
    done, _, torch_loaded = probe(["code", "--show-context", "--model", str(dream_ckpt),
                                   "fix mean with the API token", ".env", "src/stats.py"], cwd=repo)
    assert torch_loaded == "False False"
    assert "src/stats.py" in done.stdout and "named" in done.stdout
    assert ".env" in done.stdout and "not sent: secret" in done.stdout
    assert "hunter2" not in done.stdout + done.stderr and ANSI not in done.stdout


def test_secrets_never_reach_the_encoded_prompt(repo, dream_ckpt):
    from dllm_cli.tokenizer import Tokenizer

    (repo / "deploy").mkdir()
    (repo / "deploy/id_ed25519").write_text("hunter2 mean key\n")
    git(repo, "add", "-f", ".env", "deploy/id_ed25519")  # even tracked secrets stay out
    tok = Tokenizer.from_dir(dream_ckpt, json.loads((dream_ckpt / "config.json").read_text()))
    ctx = cli.gather_context(tok, str(dream_ckpt), "fix mean using API_TOKEN hunter2", [".env", "src", "deploy"],
                             "piped log\n", [], 128)
    text = tok.decode(cli.encode_prompt(tok, "fix mean using API_TOKEN", ctx))
    assert "return sum(xs) / len(xs)" in text and "piped log" in text
    assert "hunter2" not in text and {s.path for s in ctx.skipped} >= {".env", "deploy/id_ed25519"}


# ---- usage and errors -------------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["code"], "Missing argument"),
    (["frobnicate"], "No such command"),
    (["code", "x", "--gen-length", "many"], "--gen-length"),
    (["code", "x", "--alg", "greedy"], "unknown --alg"),
    (["code", "x", "--gen-length", "100", "--block-length", "32"], "multiple of --block-length"),
    (["code", "   "], "PROMPT is empty"),
    (["code", "-"], "nothing was piped"),
])
def test_usage_errors_exit_2(repo, args, words):
    code, out, err = run(args)
    assert code == 2 and words in err and out == ""
    assert "Traceback" not in err


def test_errors_are_one_line_without_traceback(repo, tmp_path):
    code, out, err = run(["code", "add a test", "--model", str(tmp_path / "missing")])
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("dllm: error: ") and "--model" in err


@pytest.mark.parametrize("exc, words", [
    (TypeError("bad operand"), "unexpected TypeError: bad operand (a bug in dllm; rerun with DLLM_DEBUG=1"),
    (PermissionError(13, "Permission denied", "/x/y.py"), "/x/y.py: Permission denied"),
    (type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory"), "out of memory on the device"),
])
def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(repo, monkeypatch, exc, words):
    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(cli, "work_root", boom)
    code, out, err = run(["undo"])
    assert code == 1 and out == "" and err == f"dllm: error: {err[13:]}" and err.count("\n") == 1
    assert words in err and "Traceback" not in err
    monkeypatch.setenv("DLLM_DEBUG", "1")
    with pytest.raises(type(exc)):
        cli.main(["undo"])


def test_default_model_missing_is_a_clear_error(repo):
    code, _, err = run(["code", "--show-context", "add a test"])
    assert code == 1 and "embedded model is not built yet" in err


# ---- dllm apply / undo --------------------------------------------------------------------------

def test_apply_yes_then_undo_is_byte_exact(repo):
    before = snapshot(repo)
    Path("fix.diff").write_text(FIX)
    code, out, err = run(["apply", "--yes", "fix.diff"])
    assert code == 0, err
    new = (repo / "src/stats.py").read_bytes()
    assert new == b"def mean(xs):\r\n    if not xs:\r\n        return 0.0\r\n    return sum(xs) / len(xs)"
    assert "applied to src/stats.py" in err and "+    if not xs:" in out  # the applied diff is data
    assert (repo / "src/stats.py").stat().st_mode & 0o777 == 0o755
    code, _, err = run(["undo"])
    assert code == 0 and "src/stats.py" in err
    assert snapshot(repo) == {**before, "fix.diff": FIX.encode()}
    code, _, err = run(["undo"])
    assert code == 3 and "nothing to undo" in err


def test_undo_refuses_when_files_changed_since(repo):
    Path("fix.diff").write_text(FIX)
    assert run(["apply", "-y", "fix.diff"])[0] == 0
    (repo / "src/stats.py").write_text("edited by hand\n")
    code, _, err = run(["undo"])
    assert code == 3 and "changed since" in err
    assert (repo / "src/stats.py").read_text() == "edited by hand\n"


def test_apply_from_stdin(repo):
    code, _, err = run(["apply", "-y", "-"], input=FIX)
    assert code == 0, err
    assert b"return 0.0" in (repo / "src/stats.py").read_bytes()


def test_dry_run_prints_the_diff_and_changes_nothing(repo):
    before = snapshot(repo)
    code, out, _ = run(["apply", "--dry-run", "-"], input=FIX)
    assert code == 0 and "+    if not xs:" in out and ANSI not in out
    assert snapshot(repo) == before


def test_no_tty_without_yes_prints_the_diff_and_exits_4(repo):
    before = snapshot(repo)
    Path("fix.diff").write_text(FIX)
    code, out, err = run(["apply", "fix.diff"])
    assert code == 4 and "+    if not xs:" in out and "--yes" in err
    assert snapshot(repo) == {**before, "fix.diff": FIX.encode()}


def create(path: str, body: str = "print('pwned')") -> str:
    return f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1 @@\n+{body}\n"


@pytest.mark.parametrize("target", ["../evil.py", "/tmp/dllm-abs-evil.py", ".git/hooks/pre-commit",
                                    "src/../../evil.py", "link/evil.py"])
def test_path_safety(repo, tmp_path, target):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, repo / "link")
    before = snapshot(repo)
    code, _, err = run(["apply", "--yes", "-"], input=create(target))
    assert code == 3, err
    assert err.startswith("dllm: error: ") and "Traceback" not in err
    assert snapshot(repo) == before and not list(outside.iterdir())
    assert not (tmp_path / "evil.py").exists() and not Path("/tmp/dllm-abs-evil.py").exists()
    assert not (repo / ".git/hooks/pre-commit").exists()


def test_atomic_second_file_fails_first_untouched(repo):
    before = snapshot(repo)
    diff = FIX + "--- a/src/other.py\n+++ b/src/other.py\n@@ -1,2 +1,2 @@\n A = 1\n-C = 3\n+C = 4\n"
    code, _, err = run(["apply", "--yes", "-"], input=diff)
    assert code == 3 and "other.py" in err
    assert snapshot(repo) == before


def test_apply_rejects_text_without_a_diff(repo):
    code, _, err = run(["apply", "-y", "-"], input="just some words\n")
    assert code == 3 and "unified diff" in err and "Traceback" not in err


def test_force_color_and_dumb_terminals(repo):
    _, out, _ = run(["apply", "--dry-run", "-"], input=FIX, env={"FORCE_COLOR": "1"})
    assert ANSI in out  # FORCE_COLOR honoured on a pipe
    _, out, _ = run(["apply", "--dry-run", "-"], input=FIX, env={"FORCE_COLOR": "1", "TERM": "dumb"})
    assert ANSI not in out and "+    if not xs:" in out


# ---- the post-generation pipeline ----------------------------------------------------------------

ANSWER = textwrap.dedent("""\
    Here is the change.

    src/stats.py
    <<<<<<< SEARCH
    def mean(xs):
        return sum(xs) / len(xs)
    =======
    def mean(xs):
        return sum(xs) / len(xs) if xs else 0.0
    >>>>>>> REPLACE
    """)


@pytest.fixture
def ui_with():
    """ui_with(answers): a Ui on string consoles; `answers` are typed into the confirm prompt
    (None: no TTY to ask on)."""
    import io

    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput
    from rich.console import Console

    pipes = []

    def make(answers: str | None, json_out: bool = False):
        err, out = Console(file=io.StringIO(), width=100), Console(file=io.StringIO(), width=100)
        ui = cli.Ui(err, out, live=False, can_confirm=answers is not None, json=json_out)
        if answers is not None:
            pipes.append(create_pipe_input())
            ui.prompt_input = pipes[-1].__enter__()
            ui.prompt_input.send_text(answers)
            ui.prompt_output = DummyOutput()
        return ui

    yield make
    for pipe in pipes:
        pipe.__exit__(None, None, None)


def test_review_output_applies_search_replace_with_yes(ui_with, repo):
    ui = ui_with(None)
    outcome = cli.review_output(ANSWER, repo, cli.ReviewOptions(yes=True, model_name="tiny"), ui)
    assert outcome.applied and outcome.patch.files == ("src/stats.py",)
    assert (repo / "src/stats.py").read_bytes() == b"def mean(xs):\r\n    return sum(xs) / len(xs) if xs else 0.0"
    assert outcome.saved.is_file() and outcome.saved.read_bytes() == outcome.patch.diff.encode()


def test_review_output_without_edits_is_exit_3(ui_with, repo):
    with pytest.raises(PatchError, match="no edit found") as info:
        cli.review_output("I would rather not.", repo, cli.ReviewOptions(yes=True), ui_with(None))
    assert info.value.exit_code == 3


@pytest.mark.parametrize("answers", ["n\n", "\x04"])
def test_declined_changes_nothing(ui_with, repo, answers):
    before = snapshot(repo)
    ui = ui_with(answers)
    with pytest.raises(NotConfirmed) as info:
        cli.review_output(ANSWER, repo, cli.ReviewOptions(), ui)
    assert info.value.exit_code == 4 and snapshot(repo) == before
    assert "src/stats.py" in ui.err.file.getvalue()  # the diff was shown before asking


def test_confirm_yes_applies_and_commit_names_the_model(ui_with, repo):
    outcome = cli.review_output(ANSWER, repo, cli.ReviewOptions(commit_message="guard mean",
                                                                  model_name="tiny-dream"), ui_with("y\n"))
    assert outcome.applied
    message = git(repo, "log", "-1", "--format=%B")
    assert message.startswith("guard mean") and "Generated-by: dllm (tiny-dream)" in message


def test_confirm_save_writes_the_patch_and_applies_nothing(ui_with, repo, tmp_path):
    before = snapshot(repo)
    target = tmp_path / "saved.patch"
    with pytest.raises(NotConfirmed, match="saved"):
        cli.review_output(ANSWER, repo, cli.ReviewOptions(), ui_with(f"s\n\x15{target}\n"))
    assert snapshot(repo) == before and "+    return sum(xs) / len(xs) if xs else 0.0" in target.read_text()


def test_confirm_save_to_an_unwritable_path_is_a_one_line_error(ui_with, repo, tmp_path):
    from dllm_cli.errors import DllmError

    before = snapshot(repo)
    target = tmp_path / "no/such/dir/saved.patch"
    with pytest.raises(DllmError, match="cannot save the patch .*nothing was applied.*also kept at") as info:
        cli.review_output(ANSWER, repo, cli.ReviewOptions(), ui_with(f"s\n\x15{target}\n"))
    assert info.value.exit_code == 1 and snapshot(repo) == before


def test_confirm_edit_applies_the_edited_patch(ui_with, repo, tmp_path, monkeypatch):
    editor = tmp_path / "editor.py"
    editor.write_text("import sys, pathlib\np = pathlib.Path(sys.argv[1])\n"
                      "p.write_text(p.read_text().replace('else 0.0', 'else None'))\n")
    monkeypatch.setenv("EDITOR", f"{sys.executable} {editor}")
    monkeypatch.delenv("VISUAL", raising=False)
    outcome = cli.review_output(ANSWER, repo, cli.ReviewOptions(), ui_with("e\ny\n"))
    assert outcome.applied and b"if xs else None" in (repo / "src/stats.py").read_bytes()


def test_json_report_keeps_the_patch_when_not_confirmed(ui_with, repo):
    ui = ui_with(None, json_out=True)
    report = cli.Report(model="tiny", prompt_tokens=10, gen=cli.Generation(ANSWER, 40, 5, 6, 0.5))
    with pytest.raises(NotConfirmed):
        with report.on_error(ui):
            cli.review_output(ANSWER, repo, cli.ReviewOptions(), ui)
    data = json.loads(ui.out.file.getvalue())
    assert data["exit_code"] == 4 and data["applied"] is False and data["files"] == ["src/stats.py"]
    assert "+    return sum(xs) / len(xs) if xs else 0.0" in data["patch"] and data["output"] == ANSWER
    assert data["tokens_per_second"] == 80.0 and data["gen_tokens"] == 40


# ---- dllm code with a tiny random checkpoint -------------------------------------------------------

def test_code_json_on_gibberish_reports_no_edit(repo, dream_ckpt):
    before = snapshot(repo)
    code, out, err = run(["code", "--json", "--model", str(dream_ckpt), "--gen-length", "32",
                          "add a median function", "src/stats.py"])
    assert code == 3 and NO_EDIT.search(err), err
    data = json.loads(out)
    assert data["exit_code"] == 3 and data["patch"] is None and data["applied"] is False
    assert data["model"] == dream_ckpt.name and data["prompt_tokens"] > 20 and data["steps"] >= 1
    assert set(data) >= {"gen_tokens", "seconds", "tokens_per_second", "output", "files"}
    assert snapshot(repo) == before


def test_code_subprocess_no_tty_no_hang_clean_stdout(repo, llada_ckpt):
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "dllm_cli", "code", "--model", str(llada_ckpt),
                           "--gen-length", "32", "make mean handle empty lists"], cwd=repo,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DLLM_HOME": str(repo.parent / "home")})
    report = f"exit {done.returncode}\nstdout: {done.stdout!r}\nstderr: {done.stderr}"
    assert done.returncode == 3, report
    assert done.stdout == "" and ANSI not in done.stderr, report  # stderr is a pipe: plain lines
    assert "dllm: loading" in done.stderr and "tokens in" in done.stderr, report
    assert NO_EDIT.search(done.stderr), report
    assert time.monotonic() - start < 60


def test_apply_subprocess_without_tty_exits_4_without_hanging(repo):
    Path("fix.diff").write_text(FIX)
    done = subprocess.run([sys.executable, "-m", "dllm_cli", "apply", "fix.diff"], cwd=repo,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert done.returncode == 4 and done.stdout.startswith(("diff --git", "---")) and ANSI not in done.stdout


def test_interrupt_while_denoising_exits_130_tree_untouched(repo, dream_ckpt, monkeypatch):
    import dllm_cli.sampler as sampler

    real = sampler.denoise

    def interrupted(*args, **kwargs):
        for step in real(*args, **kwargs):
            yield step
            raise KeyboardInterrupt

    monkeypatch.setattr(sampler, "denoise", interrupted)
    before = snapshot(repo)
    code, out, err = run(["code", "--yes", "--model", str(dream_ckpt), "--gen-length", "32", "add x"])
    assert code == 130 and "interrupted" in err and out == ""
    assert snapshot(repo) == before


def test_ranked_files_over_the_budget_are_one_line_named_skips_one_each(repo, dream_ckpt, fake_generate):
    for i in range(6):
        (repo / f"src/mean_{i}.py").write_text("def mean(xs):\n" + "    total = mean(xs) + 1\n" * 700)
    code, _, err = run(["code", "--model", str(dream_ckpt), "--gen-length", "32", "fix mean", ".env"])
    assert code == 3 and NO_EDIT.search(err), err                          # the canned answer: no edit
    assert [line for line in err.splitlines() if "not sent" in line] == [
        "dllm: not sent: .env (secret: never sent)",
        "dllm: 6 relevant files not sent: over the token budget; --show-context lists them"]
    code, out, _ = run(["code", "--show-context", "--json", "--model", str(dream_ckpt), "--gen-length", "32",
                        "fix mean", ".env"])
    skipped = {s["path"]: s for s in json.loads(out)["skipped"]}
    assert code == 0 and skipped[".env"]["ranked"] is False
    assert sorted(p for p, s in skipped.items() if s["ranked"]) == [f"src/mean_{i}.py" for i in range(6)]
    assert all("over the token budget" in skipped[f"src/mean_{i}.py"]["reason"] for i in range(6))


# ---- anchored infilling ------------------------------------------------------------------------

STUBS = 'import math\r\n\r\n\r\ndef median(xs):\r\n    """Middle value."""\r\n    ...\r\n\r\n\r\ndef norm(v):\r\n    pass\r\n'


@pytest.fixture
def fake_generate(monkeypatch):
    """cli.generate replaced by a canned answer; records what the model would have seen."""
    seen = []

    def fake(ui, lm, prompt_ids, cfg, suffix_ids=None):
        seen.append((lm.tokenizer.decode(prompt_ids), lm.tokenizer.decode(suffix_ids or [])))
        return cli.Generation("    return sorted(xs)[len(xs) // 2]\n", 12, 3, 3, 0.1)

    monkeypatch.setattr(cli, "generate", fake)
    return seen


def test_infill_rewrites_only_the_named_stub_and_undo_restores(repo, dream_ckpt, fake_generate):
    (repo / "src/median.py").write_bytes(STUBS.encode())
    before = snapshot(repo)
    code, out, err = run(["code", "--yes", "--json", "--model", str(dream_ckpt), "implement median"])
    assert code == 0, err
    want = STUBS.replace("    ...\r\n", "    return sorted(xs)[len(xs) // 2]\r\n")
    assert (repo / "src/median.py").read_bytes() == want.encode()        # CRLF kept, rest exact
    (prefix, suffix), = fake_generate                                      # one region, found unnamed
    assert prefix.endswith('"""Middle value."""\n') and suffix.startswith("\n\ndef norm(v):")
    data = json.loads(out)
    assert data["applied"] and data["files"] == ["src/median.py"] and data["gen_tokens"] == 12
    assert "filling the body of median in src/median.py" in err
    assert run(["undo"])[0] == 0 and snapshot(repo) == before


def test_infill_options(repo, dream_ckpt, fake_generate):
    (repo / "src/median.py").write_text(STUBS.replace("\r\n", "\n"))
    code, out, err = run(["code", "--dry-run", "--model", str(dream_ckpt), "fill in the stubs",
                          "src/median.py"])
    assert code == 0 and len(fake_generate) == 2, err                      # median and norm
    assert out.count("+    return sorted") == 2 and "-    pass" in out
    fake_generate.clear()
    code, _, err = run(["code", "--no-infill", "--model", str(dream_ckpt), "implement median"])
    assert code == 3 and NO_EDIT.search(err) and fake_generate[0][1] == ""   # chat format, no suffix
    code, _, err = run(["code", "--infill", "--model", str(dream_ckpt), "implement mean"])
    assert code == 2 and "--infill: no stub function" in err


def test_show_context_in_infill_mode_lists_the_regions_as_sent(repo, dream_ckpt, fake_generate):
    (repo / "src/median.py").write_text(STUBS.replace("\r\n", "\n"))
    args = ["code", "--model", str(dream_ckpt), "--gen-length", "32", "implement median"]
    code, out, err = run([*args[:1], "--show-context", "--json", *args[1:]])
    assert code == 0, err
    data = json.loads(out)
    (region,) = data["regions"]
    assert data["mode"] == "infill" and data["gen_length"] == 32
    assert (region["path"], region["function"], region["lines"]) == ("src/median.py", "median", [6, 6])
    code, out, _ = run([*args[:1], "--show-context", *args[1:]])
    assert code == 0 and "body of median (lines 6-6)" in out and "the prompt's wording is not sent" in out
    assert not fake_generate                                              # nothing was denoised
    code, out, err = run([*args, "--json", "--dry-run"], input="a piped log\n")
    assert code == 0, err
    assert json.loads(out)["prompt_tokens"] == region["prefix_tokens"] + region["suffix_tokens"]
    assert "piped input not sent: in infill mode" in err and "a piped log" not in "".join(fake_generate[0])


def test_infill_with_a_real_tiny_checkpoint(repo, dream_ckpt):
    (repo / "src/median.py").write_text(STUBS.replace("\r\n", "\n"))
    before = snapshot(repo)
    code, out, err = run(["code", "--json", "--dry-run", "--model", str(dream_ckpt), "--gen-length", "32",
                          "implement median"])
    data = json.loads(out)
    assert code in (0, 3) and data["exit_code"] == code, err               # random weights: any text
    assert data["steps"] >= 1 and data["prompt_tokens"] > 10 and snapshot(repo) == before


# ---- dllm models ------------------------------------------------------------------------------------

def test_models_describes_local_checkpoints(repo, dream_ckpt, llada_ckpt, tmp_path, monkeypatch):
    from safetensors import safe_open

    (tmp_path / "home/models").mkdir(parents=True)
    os.symlink(llada_ckpt, tmp_path / "home/models/my-llada")
    (dream_ckpt / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    code, out, err = run(["models", "--json", str(dream_ckpt)])
    assert code == 0, err
    rows = {r["source"]: r for r in json.loads(out)}
    assert rows["default"]["family"] == "missing" and rows["default"]["chosen"]
    assert rows["user"]["family"] == "llada" and rows["user"]["name"] == "my-llada"
    dream = rows["argument"]
    with safe_open(str(dream_ckpt / "model.safetensors"), "pt") as f:
        expected = sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert (dream["family"], dream["dtype"], dream["context"], dream["licence"]) == (
        "dream", "float32", 4096, "apache-2.0")
    assert dream["params"] == expected
    code, out, _ = run(["models"], env={"DLLM_MODEL": str(dream_ckpt)})
    line = next(line for line in out.splitlines() if str(dream_ckpt) in line)
    assert line.lstrip().startswith("*")


def _prod(shape):
    n = 1
    for d in shape:
        n *= d
    return n


# ---- dllm bench (the measurement itself is tested in test_bench.py) ---------------------------------

def test_bench_passes_options_through_and_prints_json(monkeypatch, tmp_path):
    import dllm_cli.bench as bench

    seen = {}

    class Report:
        def as_dict(self):
            return {"rows": [], "gen_length": seen["gen_length"]}

    def fake_run_bench(model_path, **kwargs):
        seen.update(kwargs, model_path=model_path)
        return Report()

    monkeypatch.setattr(bench, "run_bench", fake_run_bench)
    monkeypatch.setattr(bench, "format_report", lambda report: "TABLE\n")
    code, out, err = run(["bench", "--model", str(tmp_path), "--gen-length", "64", "--k", "1", "--k", "3",
                          "--json"])
    assert code == 0, err
    assert json.loads(out) == {"rows": [], "gen_length": 64}
    assert seen == dict(model_path=str(tmp_path), shape=None, device="auto", dtype="auto", gen_length=64,
                        ks=(1, 3))
    code, out, _ = run(["bench", "--shape", "dream-7b", "--device", "cpu", "--dtype", "bfloat16"])
    assert code == 0 and out == "TABLE\n"
    assert (seen["model_path"], seen["shape"], seen["device"], seen["dtype"]) == (None, "dream-7b", "cpu",
                                                                                   "bfloat16")


@pytest.mark.parametrize("args, words", [(["--shape", "gpt-9"], "unknown --shape"),
                                         (["--shape", "dream-7b", "--model", "x"], "not both")])
def test_bench_usage_errors(args, words):
    code, out, err = run(["bench", *args])
    assert code == 2 and words in err and out == ""


def test_infill_warns_when_the_body_does_not_compile(repo, dream_ckpt, monkeypatch):
    (repo / "src/median.py").write_text(STUBS.replace("\r\n", "\n"))
    monkeypatch.setattr(cli, "generate", lambda ui, lm, p, cfg, suffix_ids=None:
                        cli.Generation("return (xs\n", 3, 1, 1, 0.1))
    code, out, err = run(["code", "--dry-run", "--model", str(dream_ckpt), "implement median"])
    assert code == 0 and "+return (xs" in out
    assert "warning: src/median.py would not compile with this body (line " in err
    assert cli.syntax_problem("a.py", "x = 1\n") is None and cli.syntax_problem("a.txt", "(") is None


def test_ctrl_c_while_committing_says_the_patch_is_applied(repo, dream_ckpt, fake_generate, monkeypatch):
    import dllm_cli.patch as patch

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(patch, "commit_patch", interrupted)
    (repo / "src/median.py").write_text(STUBS.replace("\r\n", "\n"))
    git(repo, "add", "src/median.py")
    git(repo, "-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "stubs")
    code, out, err = run(["code", "--yes", "--commit", "--model", str(dream_ckpt), "implement median"])
    assert code == 130 and "applied but not committed" in err and "nothing was changed" not in err
    assert "return sorted(xs)" in (repo / "src/median.py").read_text()
    assert run(["undo"])[0] == 0 and (repo / "src/median.py").read_text() == STUBS.replace("\r\n", "\n")


def test_infill_with_a_dreamon_checkpoint_uses_the_expanding_loop(repo, tmp_path, monkeypatch):
    from dllm_cli import dreamon
    from tiny import make_dream_checkpoint

    ckpt = make_dream_checkpoint(tmp_path / "dreamon", extra_tokens=("<|expand|>",))
    calls = []
    real = dreamon.denoise_dreamon

    def spy(model, prefix, suffix, cfg, **kw):
        calls.append((cfg.alg, kw["expand_id"], suffix[-1] == model.eos_token_id))
        return real(model, prefix, suffix, cfg, **kw)

    monkeypatch.setattr(dreamon, "denoise_dreamon", spy)
    (repo / "src/median.py").write_text(STUBS.replace("\r\n", "\n"))
    code, out, err = run(["code", "--json", "--dry-run", "--model", str(ckpt), "--gen-length", "16",
                          "implement median"])
    expand = json.loads((ckpt / "tokenizer.json").read_text())["added_tokens"][-1]
    assert calls == [("entropy", expand["id"], True)] and expand["content"] == "<|expand|>", err
    assert code in (0, 3) and json.loads(out)["exit_code"] == code        # random weights: any text
    calls.clear()
    run(["code", "--json", "--dry-run", "--model", str(ckpt), "--gen-length", "16", "--alg", "maskgit_plus",
         "implement median"])
    assert calls[0][0] == "maskgit_plus"
