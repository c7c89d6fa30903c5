"""The `dllm` command: exit codes, streams, safety rules, in temporary git repositories.

Runs `main()` in-process (CliRunner's stream isolation) for most cases, and a few real
subprocesses: startup without torch, no-TTY behaviour, one tiny-checkpoint `dllm code`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dllm_cli import cli

from gitrepo import snapshot

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


@pytest.fixture(autouse=True)
def isolated_home(isolated):
    """Every test here runs with its own DLLM_HOME and no embedded weights."""


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
                                          (["code", "--help"], "--dry-run"), (["serve", "--help"], "--api-key")])
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

    monkeypatch.setattr("dllm_cli.repo.work_root", boom)
    code, out, err = run(["undo"])
    assert code == 1 and out == "" and err == f"dllm: error: {err[13:]}" and err.count("\n") == 1
    assert words in err and "Traceback" not in err
    monkeypatch.setenv("DLLM_DEBUG", "1")
    with pytest.raises(type(exc)):
        cli.main(["undo"])


def test_default_model_missing_is_a_clear_error(repo):
    code, _, err = run(["code", "--show-context", "add a test"])
    assert code == 1 and "embedded default model is missing" in err and "--model PATH" in err


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
    import dllm_cli.engine.local as local

    real = local.denoise

    def interrupted(*args, **kwargs):  # Ctrl-C after the first step
        for step in real(*args, **kwargs):
            yield step
            raise KeyboardInterrupt

    monkeypatch.setattr(local, "denoise", interrupted)
    before = snapshot(repo)
    code, out, err = run(["code", "--yes", "--model", str(dream_ckpt), "--gen-length", "32", "add x"])
    assert code == 130 and "interrupted" in err and out == ""
    assert snapshot(repo) == before


# ---- anchored infilling ------------------------------------------------------------------------

STUBS = ('import math\r\n\r\n\r\ndef median(xs):\r\n    """Middle value."""\r\n    ...\r\n\r\n\r\n'
         'def norm(v):\r\n    pass\r\n')


def test_infill_with_a_real_tiny_checkpoint(repo, dream_ckpt):
    (repo / "src/median.py").write_text(STUBS.replace("\r\n", "\n"))
    before = snapshot(repo)
    code, out, err = run(["code", "--json", "--dry-run", "--model", str(dream_ckpt), "--gen-length", "32",
                          "implement median"])
    data = json.loads(out)
    # random weights write some text or only eos: a body gives the diff (0), none is "wrote nothing" (3)
    assert code == (0 if data["output"].strip() else 3) == data["exit_code"], err
    assert (data["patch"] is not None) == (code == 0)
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


def test_models_and_the_loader_agree_on_the_family(repo, dream_tied_ckpt, tmp_path):
    """Regression: `dllm models` said qwen2 for Open-dCoder and dream for DiffuCoder while the loader
    said open-dcoder / diffucoder; both now ask catalog.family_of."""
    from dllm_cli.engine.loader import load_model

    from tiny import make_dream_checkpoint

    diffucoder = make_dream_checkpoint(tmp_path / "diffucoder", extra_tokens=("<|dlm_pad|>",))
    code, out, err = run(["models", "--json", str(dream_tied_ckpt), str(diffucoder)])
    assert code == 0, err
    listed = {Path(r["path"]): r["family"] for r in json.loads(out) if r["source"] == "argument"}
    assert listed == {dream_tied_ckpt: "open-dcoder", diffucoder: "diffucoder"}
    for folder, family in listed.items():
        assert load_model(folder).spec.family == family


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
                        ks=(1, 3), layers=None, prompt_tokens=64, n_prompts=None, quant="none")
    code, out, _ = run(["bench", "--shape", "dream-7b", "--device", "cpu", "--dtype", "bfloat16"])
    assert code == 0 and out == "TABLE\n"
    assert (seen["model_path"], seen["shape"], seen["device"], seen["dtype"]) == (None, "dream-7b", "cpu",
                                                                                   "bfloat16")
    code, out, _ = run(["bench", "--shape", "sdar-1.7b", "--layers", "2", "--prompt-tokens", "512", "--prompts", "1",
                        "--gen-length", "256"])
    assert code == 0 and (seen["shape"], seen["layers"], seen["prompt_tokens"], seen["n_prompts"],
                          seen["gen_length"]) == ("sdar-1.7b", 2, 512, 1, 256)


@pytest.mark.parametrize("args, words", [(["--shape", "gpt-9"], "unknown --shape"),
                                         (["--shape", "dream-7b", "--model", "x"], "not both")])
def test_bench_usage_errors(args, words):
    code, out, err = run(["bench", *args])
    assert code == 2 and words in err and out == ""


def test_infill_with_a_dreamon_checkpoint_uses_the_expanding_loop(repo, tmp_path):
    """A checkpoint with <|expand|> is DreamOn: its region starts at 4 masks and grows or shrinks, so the
    step count differs from a fixed canvas; the JSON reports it like any run."""
    from tiny import make_dream_checkpoint

    ckpt = make_dream_checkpoint(tmp_path / "dreamon", extra_tokens=("<|expand|>",))
    (repo / "src/median.py").write_text(STUBS.replace("\r\n", "\n"))
    code, out, err = run(["code", "--json", "--dry-run", "--model", str(ckpt), "--gen-length", "16",
                          "implement median"])
    data = json.loads(out)
    assert code == (0 if data["output"].strip() else 3) == data["exit_code"], err
    assert data["model"] == "dreamon" and data["forwards"] == data["steps"]  # one token per step
    code, out, _ = run(["models", "--json", str(ckpt)])
    assert [r["family"] for r in json.loads(out) if r["source"] == "argument"] == ["dreamon"]


# ---- dllm serve and endpoints -------------------------------------------------------------------

def test_serve_status_without_servers(repo):
    code, out, err = run(["serve", "--status"])
    assert code == 0 and "no dllm server is running" in out
    code, out, _ = run(["serve", "--status", "--json"])
    assert code == 0 and json.loads(out) == []


def test_serve_refuses_other_hosts_without_a_key_before_loading(repo):
    code, _, err = run(["serve", "--host", "0.0.0.0", "--port", "0"])
    assert code == 2 and "reachable from other machines" in err and "loading" not in err
    code, _, err = run(["serve", "--queue", "0"])
    assert code == 2 and "--queue must be at least 1" in err
    code, _, err = run(["serve", "--port", "99999"])
    assert code == 2 and "--port 99999 is not a TCP port" in err


def test_serve_without_the_extra_says_how_to_install_it(repo, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    code, _, err = run(["serve", "--port", "0"])
    assert code == 1 and "dllm serve needs FastAPI and uvicorn" in err and "pip install 'dllm-cli[serve]'" in err


def test_endpoint_and_no_server_contradict(repo):
    code, _, err = run(["code", "--endpoint", "vllm", "--no-server", "x"])
    assert code == 2 and "contradict" in err


def test_the_endpoint_comes_from_the_environment_then_the_config(repo, tmp_path, monkeypatch):
    from replay import free_port

    port = free_port()
    code, _, err = run(["code", "--dry-run", "x"], env={"DLLM_ENDPOINT": f"http://127.0.0.1:{port}/v1"})
    assert code == 1 and f"cannot reach http://127.0.0.1:{port}/v1" in err and err.count("\n") == 1
    home = Path(os.environ["DLLM_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.json").write_text(json.dumps({"endpoint": "nonsense", "timeout": 3}))
    code, _, err = run(["code", "--dry-run", "x"])
    assert code == 2 and "--endpoint 'nonsense': expected a base URL" in err
    code, _, err = run(["code", "--dry-run", "--no-server", "x"])  # a local load: the config's endpoint is ignored
    assert code == 1 and "the embedded default model is missing" in err
    code, _, err = run(["code", "--dry-run", "x"], env={"DLLM_TIMEOUT": "soon"})
    assert code == 2 and "$DLLM_TIMEOUT must be a number of seconds" in err
    (home / "config.json").write_text(json.dumps({"endpoint": "mercury"}))
    no_keys = {"INCEPTION_API_KEY": None, "MY_KEY": None}  # never reach the real service from a test
    code, _, err = run(["code", "--dry-run", "x"], env=no_keys)
    assert code == 2 and "set $INCEPTION_API_KEY" in err
    code, _, err = run(["code", "--dry-run", "--api-key-env", "MY_KEY", "x"], env=no_keys)
    assert code == 2 and "set $MY_KEY" in err

# ---- dllm apply: strict diffs, only regular files (issue 14) ---------------------------------------

STATS_LF = "def mean(xs):\n    return sum(xs) / len(xs)"


@pytest.mark.parametrize("diff, words", [
    # a `git diff` cut off mid-hunk: it used to leave the file a syntax error, exit 0
    ("--- a/src/other.py\n+++ b/src/other.py\n@@ -1,2 +1,3 @@\n A = 1\n+C = (\n", "not a valid unified diff"),
    # a hunk whose header claims more lines than it holds
    ("--- a/src/other.py\n+++ b/src/other.py\n@@ -1,4 +1,4 @@\n A = 1\n-B = 2\n+B = 3\n", "not a valid unified diff"),
    # a stale diff whose context now sits at another indentation
    ("--- a/src/other.py\n+++ b/src/other.py\n@@ -1,2 +1,2 @@\n     A = 1\n-    B = 2\n+    B = 3\n",
     "does not apply"),
])
def test_apply_refuses_what_git_apply_refuses(repo, diff, words):
    before = snapshot(repo)
    assert subprocess.run(["git", "apply", "--check", "-"], cwd=repo, input=diff.encode(),
                          capture_output=True).returncode != 0
    code, _, err = run(["apply", "--yes", "-"], input=diff)
    assert code == 3 and words in err and "nothing was changed" in err, err
    assert snapshot(repo) == before


def test_a_coloured_diff_is_refused_with_a_message_that_says_why(repo):
    code, coloured, _ = run(["apply", "--dry-run", "-"], input=FIX, env={"FORCE_COLOR": "1"})
    assert code == 0 and ANSI in coloured
    Path("fix.diff").write_text(coloured)
    before = snapshot(repo)
    code, _, err = run(["apply", "--yes", "fix.diff"])
    assert code == 3 and "colour codes" in err and "FORCE_COLOR unset" in err
    assert snapshot(repo) == before
    code, plain, _ = run(["apply", "--dry-run", "-"], input=FIX)  # what the message says to do
    Path("fix.diff").write_bytes(plain.encode())
    assert run(["apply", "--yes", "fix.diff"])[0] == 0


@pytest.mark.parametrize("diff", [
    "--- a/pipe\n+++ b/pipe\n@@ -1 +1 @@\n-a\n+b\n",  # modify
    "--- /dev/null\n+++ b/pipe\n@@ -0,0 +1 @@\n+b\n",  # create
])
def test_a_fifo_in_the_tree_is_refused_without_hanging(repo, diff):
    os.mkfifo(repo / "pipe")
    Path("fifo.diff").write_text(diff)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "dllm_cli", "apply", "--yes", "fifo.diff"], cwd=repo,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, "NO_COLOR": "1"})
    assert done.returncode == 3 and "FIFO" in done.stderr, done.stderr
    assert time.monotonic() - started < 30
    assert (repo / "pipe").is_fifo()


def test_unicode_ignorables_cannot_smuggle_a_dot_git_path(repo):
    before = snapshot(repo)
    for target in (".g\u200cit/hooks/pre-commit", ".GIT\u200d/config", "\ufeff.git/config", ".git./config"):
        code, _, err = run(["apply", "--yes", "-"], input=create(target))
        assert code == 3 and ".git" in err, (target, err)
    assert snapshot(repo) == before


# ---- dllm models marks what it could not load ------------------------------------------------------

def test_models_marks_broken_and_unsupported_checkpoints_with_the_reason(repo, dream_ckpt, tmp_path):
    import shutil

    truncated = tmp_path / "truncated"
    shutil.copytree(dream_ckpt, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[:len(data) // 2])
    pickled = tmp_path / "pickled"
    shutil.copytree(dream_ckpt, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    other = tmp_path / "other-arch"
    shutil.copytree(dream_ckpt, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "mamba"}))
    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(dream_ckpt, no_tok)
    (no_tok / "tokenizer.json").unlink()
    code, out, err = run(["models", "--json", str(dream_ckpt), str(truncated), str(pickled), str(other), str(no_tok)])
    assert code == 0, err
    rows = {Path(r["path"]).name: r for r in json.loads(out) if r["source"] == "argument"}
    assert rows[dream_ckpt.name]["status"] == "ok" and rows[dream_ckpt.name]["error"] is None
    assert rows["truncated"]["status"] == "broken" and "truncated" in rows["truncated"]["error"]
    assert rows["pickled"]["status"] == "unsupported" and "pickle" in rows["pickled"]["error"]
    assert rows["other-arch"]["status"] == "unsupported" and "mamba" in rows["other-arch"]["error"]
    assert rows["no-tokenizer"]["status"] == "broken" and "tokenizer" in rows["no-tokenizer"]["error"]
    code, out, _ = run(["models", str(truncated)])
    assert "truncated: broken: model.safetensors: truncated" in " ".join(out.split())


# ---- block-diffusion checkpoints: the family's recipe by default ------------------------------------

def _spy_on_configs(monkeypatch):
    import dllm_cli.engine.local as local

    real, seen = local.denoise, []

    def spy(model, prompt_ids, cfg, **kwargs):
        seen.append(cfg)
        return real(model, prompt_ids, cfg, **kwargs)

    monkeypatch.setattr(local, "denoise", spy)
    return seen


@pytest.mark.parametrize("family", ["sdar", "stable-diffcoder", "fast-dllm-v2"])
def test_code_uses_the_family_recipe(repo, tmp_path, monkeypatch, family):
    from dllm_cli.config import family_sampler

    from tiny import make_fast_dllm_v2_checkpoint, make_sdar_checkpoint, make_stable_diffcoder_checkpoint

    maker = {"sdar": make_sdar_checkpoint, "stable-diffcoder": make_stable_diffcoder_checkpoint,
             "fast-dllm-v2": make_fast_dllm_v2_checkpoint}[family]
    ckpt = maker(tmp_path / family)
    seen = _spy_on_configs(monkeypatch)
    (repo / "src/median.py").write_text(STUBS.replace("\r\n", "\n"))  # stubs: a block model still chats
    code, out, err = run(["code", "--json", "--dry-run", "--model", str(ckpt), "--gen-length", "64",
                          "implement median"])
    assert code in (0, 3), err
    block = {"sdar": 4, "stable-diffcoder": 4, "fast-dllm-v2": 32}[family]
    assert seen == [family_sampler(family, block).with_(gen_length=64)]
    assert json.loads(out)["steps"] >= 1
    code, out, err = run(["code", "--infill", "--model", str(ckpt), "implement median"])
    assert code == 2 and "block-diffusion" in err and "--infill" in err
    code, out, err = run(["code", "--model", str(ckpt), "--alg", "entropy", "x"])
    assert code == 2 and f"the {family} block-diffusion loop" in err
    code, out, err = run(["code", "--model", str(ckpt), "--block-length", str(2 * block), "--gen-length",
                          str(4 * block), "--dry-run", "x"])
    assert code == 2 and f"blocks of {block} tokens" in err


def test_models_lists_the_block_families(repo, tmp_path):
    from tiny import make_fast_dllm_v2_checkpoint, make_sdar_checkpoint, make_stable_diffcoder_checkpoint

    folders = [make_sdar_checkpoint(tmp_path / "s"), make_stable_diffcoder_checkpoint(tmp_path / "c", revision="old"),
               make_fast_dllm_v2_checkpoint(tmp_path / "f")]
    code, out, err = run(["models", "--json", *map(str, folders)])
    assert code == 0, err
    rows = [r for r in json.loads(out) if r["source"] == "argument"]
    assert [(r["family"], r["layout"]) for r in rows] == [("sdar", "sdar"), ("stable-diffcoder", "stable-diffcoder"),
                                                          ("fast-dllm-v2", "fast-dllm-v2")]
    assert [r["context"] for r in rows] == [32768, 8192, 32768]
