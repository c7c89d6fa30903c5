"""pipeline.py: `dllm code` end to end with a scripted mock model (tests/scripted.py) on the local
backend: the real sampler, decode, edit parsing, review and apply, in a temporary git repository.
Chat mode (what reaches the prompt, the budget measured on the templated prompt), infill mode
(regions, the file around them, warnings), --show-context, and the --json report."""

from __future__ import annotations

import io
import json
import os

import pytest
from rich.console import Console

from dllm_cli import catalog, pipeline
from dllm_cli.config import SamplerConfig
from dllm_cli.context import Tree
from dllm_cli.engine.local import LocalBackend
from dllm_cli.errors import DllmError
from dllm_cli.review import ReviewOptions
from dllm_cli.tokenizer import Tokenizer
from dllm_cli.ui import Ui

from gitrepo import git, snapshot
from scripted import ScriptedModel

STUBS = ('import math\n\n\ndef median(xs):\n    """Middle value."""\n    ...\n\n\n'
         'def norm(v):\n    pass\n')
BODY = "    return sorted(xs)[len(xs) // 2]\n"
EDIT = ("src/stats.py\n<<<<<<< SEARCH\n    return sum(xs) / len(xs)\n=======\n"
        "    return sum(xs) / len(xs) if xs else 0.0\n>>>>>>> REPLACE\n")


class Run:
    """One pipeline.code() call on string consoles: exit code, stdout, stderr, the scripted model."""

    def __init__(self, ckpt, answers, task, *paths, json_out=False, show_context=False, stdin=None,
                 infill=None, yes=False, dry_run=True, commit=False, gen_length=256, interrupt_after=None):
        self.model = ScriptedModel(Tokenizer.from_checkpoint(catalog.inspect(ckpt)), answers, interrupt_after)
        err, out = Console(file=io.StringIO(), width=200), Console(file=io.StringIO(), width=200)
        ui = Ui(err, out, live=False, can_confirm=False, json=json_out)
        cfg = SamplerConfig.from_options(gen_length=gen_length)
        opts = pipeline.CodeOptions(task=task, paths=paths, stdin_text=stdin, model=str(ckpt), cfg=cfg,
                                    infill=infill, show_context=show_context,
                                    review=ReviewOptions(yes=yes, dry_run=dry_run and not yes,
                                                         commit_message=task if commit else None,
                                                         model_name=ckpt.name))
        self.error = None
        try:
            pipeline.code(opts, ui, backend=LocalBackend(self.model))
            self.code = 0
        except DllmError as exc:
            self.error, self.code = exc, exc.exit_code
        self.out, self.err = out.file.getvalue(), err.file.getvalue()

    def decoded(self, tokenizer_dir):
        tok = Tokenizer.from_checkpoint(catalog.inspect(tokenizer_dir))
        return [(tok.decode(p), tok.decode(s)) for p, s in self.model.seen]


# ---- chat mode --------------------------------------------------------------------------------

def test_chat_answer_becomes_an_applied_patch_with_the_json_report(repo, dream_ckpt):
    before = snapshot(repo)
    run = Run(dream_ckpt, [EDIT], "make mean handle an empty list", "src/stats.py", json_out=True, yes=True)
    assert run.code == 0, run.err
    assert (repo / "src/stats.py").read_bytes() == b"def mean(xs):\r\n    return sum(xs) / len(xs) if xs else 0.0"
    data = json.loads(run.out)
    assert data["applied"] and data["files"] == ["src/stats.py"] and data["output"] == EDIT
    assert data["gen_tokens"] == len(run.model.scripts[0]) and data["exit_code"] == 0
    (prompt, suffix), = run.decoded(dream_ckpt)
    assert "Task: make mean handle an empty list" in prompt and "return sum(xs) / len(xs)" in prompt
    assert suffix == "" and data["prompt_tokens"] == len(run.model.seen[0][0])
    assert f"dllm: {data['gen_tokens']} tokens in" in run.err  # one tok/s figure: stderr and --json agree
    assert f"({data['tokens_per_second']:.1f} tok/s)" in run.err
    assert pipeline.catalog.inspect(dream_ckpt).name == data["model"] and snapshot(repo) != before


def test_no_edit_is_exit_3_and_the_json_report_says_so(repo, dream_ckpt):
    before = snapshot(repo)
    run = Run(dream_ckpt, ["I would rather not."], "fix mean", json_out=True)
    assert run.code == 3 and "no edit found" in str(run.error)
    data = json.loads(run.out)
    assert data["exit_code"] == 3 and data["patch"] is None and "no edit found" in data["error"]
    assert snapshot(repo) == before


def test_secrets_never_reach_the_encoded_prompt(repo, dream_ckpt):
    (repo / "deploy").mkdir()
    (repo / "deploy/id_ed25519").write_text("hunter2 mean key\n")
    git(repo, "add", "-f", ".env", "deploy/id_ed25519")  # even tracked secrets stay out
    run = Run(dream_ckpt, ["no edit"], "fix mean using API_TOKEN hunter2", ".env", "src", "deploy",
              stdin="piped log\n")
    (prompt, _), = run.decoded(dream_ckpt)
    assert "return sum(xs) / len(xs)" in prompt and "piped log" in prompt
    assert "hunter2 mean key" not in prompt and "API_TOKEN=hunter2" not in prompt
    assert "not sent: .env (secret: never sent)" in run.err
    assert "not sent: deploy/id_ed25519 (secret: never sent)" in run.err


def test_ranked_files_over_the_budget_are_named_skips_and_one_counted_line(repo, dream_ckpt):
    for i in range(6):
        (repo / f"src/mean_{i}.py").write_text("def mean(xs):\n" + "    total = mean(xs) + 1\n" * 700)
    run = Run(dream_ckpt, ["no edit here"], "fix mean", ".env", gen_length=32)
    assert run.code == 3 and "no edit found" in str(run.error)
    assert [line for line in run.err.splitlines() if "not sent" in line] == [
        "dllm: not sent: .env (secret: never sent)",
        "dllm: 6 relevant files not sent: over the token budget; --show-context lists them"]
    shown = Run(dream_ckpt, [], "fix mean", ".env", gen_length=32, show_context=True, json_out=True)
    skipped = {s["path"]: s for s in json.loads(shown.out)["skipped"]}
    assert shown.code == 0 and skipped[".env"]["ranked"] is False and not shown.model.seen
    assert sorted(p for p, s in skipped.items() if s["ranked"]) == [f"src/mean_{i}.py" for i in range(6)]


def test_the_prompt_is_measured_as_templated_and_fits_exactly(repo, dream_ckpt, tmp_path):
    """No margin fudge: the files are chosen by estimate, then the real templated prompt is encoded
    and ranked files are dropped until prompt + gen_length fit the context."""
    from dllm_cli.context import gather
    from dllm_cli.prompt import encode_chat, file_budget

    tok = Tokenizer.from_checkpoint(catalog.inspect(dream_ckpt))
    for i in range(8):
        (repo / f"src/mean_{i}.py").write_text("def mean(xs):\n" + "    total = mean(xs) + 1\n" * (20 + i))
    tree, context = Tree.open(repo), 700
    budget = file_budget(tok, "fix mean", context, 64)
    ctx = gather("fix mean", count_tokens=lambda t: len(tok.encode(t)), budget=budget, tree=tree)
    prompt = encode_chat(tok, "fix mean", ctx, context - 64)
    assert len(prompt.ids) <= context - 64 and prompt.context.files
    assert list(prompt.ids) == tok.encode(tok.apply_chat_template(list(prompt.messages)))  # built once
    tight = encode_chat(tok, "fix mean", ctx, len(prompt.ids) - 1)  # one token less: a ranked file goes
    assert len(tight.context.files) < len(prompt.context.files)
    assert any("the prompt is" in s.reason for s in tight.context.skipped if s.ranked)


def test_chat_mode_reads_each_file_once_and_never_scans_for_stubs(repo, dream_ckpt, monkeypatch):
    """Regression: with no file named, chat mode read and AST-parsed every tracked .py file for stubs,
    then read them again for ranking."""
    import dllm_cli.context as context
    import dllm_cli.infill as infill

    for i in range(5):
        (repo / f"src/m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n")
    reads, parses = [], []
    real_read, real_functions = context.read_file, infill.functions
    monkeypatch.setattr(context, "read_file", lambda path: reads.append(path.name) or real_read(path))
    monkeypatch.setattr(infill, "functions", lambda text: parses.append(text) or real_functions(text))
    run = Run(dream_ckpt, ["no edit"], "make mean handle an empty list")
    assert run.code == 3
    # only src/stats.py defines a function the task names (mean): it alone is parsed for stubs
    assert parses == [(repo / "src/stats.py").read_text().replace("\r\n", "\n")]
    assert sorted(reads) == sorted(set(reads)) and "m0.py" in reads  # ranking read each file once


# ---- infill mode --------------------------------------------------------------------------------

def test_infill_rewrites_only_the_named_stub_and_undo_restores(repo, dream_ckpt):
    (repo / "src/median.py").write_bytes(STUBS.replace("\n", "\r\n").encode())
    before = snapshot(repo)
    run = Run(dream_ckpt, [BODY], "implement median", json_out=True, yes=True)
    assert run.code == 0, run.err
    want = STUBS.replace("    ...\n", BODY).replace("\n", "\r\n")
    assert (repo / "src/median.py").read_bytes() == want.encode()        # CRLF kept, the rest exact
    (prefix, suffix), = run.decoded(dream_ckpt)                              # one region, found unnamed
    assert prefix.endswith('"""Middle value."""\n') and suffix.startswith("\n\ndef norm(v):")
    data = json.loads(run.out)
    assert data["applied"] and data["files"] == ["src/median.py"] and data["output"] == BODY
    assert data["prompt_tokens"] == sum(len(p) + len(s) for p, s in run.model.seen)
    assert "filling the body of median in src/median.py" in run.err
    from dllm_cli.journal import state_dir_for, undo

    undo(repo, state_dir=state_dir_for(repo))
    assert snapshot(repo) == before


def test_infill_options(repo, dream_ckpt):
    (repo / "src/median.py").write_text(STUBS)
    run = Run(dream_ckpt, [BODY, "    return v\n"], "fill in the stubs", "src/median.py")
    assert run.code == 0 and len(run.model.seen) == 2, run.err               # median and norm
    assert "+    return sorted" in run.out and "+    return v" in run.out and "-    pass" in run.out
    run = Run(dream_ckpt, ["no edit"], "implement median", infill=False)
    assert run.code == 3 and run.model.seen[0][1] == []                       # chat format, no suffix
    run = Run(dream_ckpt, [BODY], "implement mean", infill=True)
    assert run.code == 2 and "--infill: no stub function" in str(run.error)


def test_infill_never_sends_piped_input_and_says_so(repo, dream_ckpt):
    (repo / "src/median.py").write_text(STUBS)
    run = Run(dream_ckpt, [BODY], "implement median", stdin="a piped log\n", json_out=True)
    assert run.code == 0 and "piped input not sent: in infill mode" in run.err
    assert "a piped log" not in "".join(p + s for p, s in run.decoded(dream_ckpt))


def test_show_context_in_infill_mode_lists_the_regions_as_sent(repo, dream_ckpt):
    (repo / "src/median.py").write_text(STUBS)
    shown = Run(dream_ckpt, [], "implement median", show_context=True, json_out=True, gen_length=32)
    assert shown.code == 0 and not shown.model.seen                          # nothing was denoised
    data = json.loads(shown.out)
    (region,) = data["regions"]
    assert data["mode"] == "infill" and data["gen_length"] == 32
    assert (region["path"], region["function"], region["lines"]) == ("src/median.py", "median", [6, 6])
    text = Run(dream_ckpt, [], "implement median", show_context=True, gen_length=32)
    assert "body of median (lines 6-6)" in text.out and "the prompt's wording is not sent" in text.out
    run = Run(dream_ckpt, [BODY], "implement median", json_out=True, gen_length=32)
    assert json.loads(run.out)["prompt_tokens"] == region["prefix_tokens"] + region["suffix_tokens"]


def test_infill_warns_when_the_body_does_not_compile(repo, dream_ckpt):
    (repo / "src/median.py").write_text(STUBS)
    run = Run(dream_ckpt, ["return (xs\n"], "implement median")
    assert run.code == 0 and "+return (xs" in run.out
    assert "warning: src/median.py would not compile with this body (line " in run.err


def test_an_empty_body_is_exit_3(repo, dream_ckpt):
    (repo / "src/median.py").write_text(STUBS)
    before = snapshot(repo)
    run = Run(dream_ckpt, [""], "implement median")
    assert run.code == 3 and "wrote nothing for the body of median" in str(run.error)
    assert snapshot(repo) == before


def test_ctrl_c_while_committing_says_the_patch_is_applied(repo, dream_ckpt, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("dllm_cli.repo.commit", interrupted)
    (repo / "src/median.py").write_text(STUBS)
    git(repo, "add", "src/median.py")
    git(repo, "-c", "user.email=t@e", "-c", "user.name=t", "commit", "-qm", "stubs")
    run = Run(dream_ckpt, [BODY], "implement median", yes=True, commit=True)
    assert run.code == 130 and "applied but not committed" in str(run.error)
    assert "return sorted(xs)" in (repo / "src/median.py").read_text()


# ---- checkpoints without their own chat template ------------------------------------------------

def test_show_context_works_on_a_llada_folder_without_a_template(repo, tmp_path):
    """Regression: --show-context failed with "no chat template" on a LLaDA folder that dllm code ran
    (the fallback template was set only inside the loader); catalog.inspect now gives it."""
    from tiny import make_llada_checkpoint

    folder = make_llada_checkpoint(tmp_path / "llada-no-template", chat_template=None)
    assert catalog.inspect(folder).chat_template == catalog.LLADA_CHAT_TEMPLATE
    shown = Run(folder, [], "fix mean", "src/stats.py", show_context=True, json_out=True)
    assert shown.code == 0, shown.error
    assert [f["path"] for f in json.loads(shown.out)["files"]] == ["src/stats.py"]
    run = Run(folder, ["no edit"], "fix mean", "src/stats.py")
    (prompt, _), = run.decoded(folder)
    assert prompt.startswith("<|startoftext|><|start_header_id|>system<|end_header_id|>")


@pytest.mark.parametrize("interrupt_after", [1])
def test_ctrl_c_while_denoising_changes_nothing(repo, dream_ckpt, interrupt_after):
    before = snapshot(repo)
    with pytest.raises(KeyboardInterrupt):
        Run(dream_ckpt, [EDIT], "fix mean", "src/stats.py", yes=True, interrupt_after=interrupt_after)
    assert snapshot(repo) == before


# ---- the backend: a warm dllm serve by discovery, else a local load ---------------------------

def warm_run(ckpt, home, task, *paths, **opts):
    err, out = Console(file=io.StringIO(), width=200), Console(file=io.StringIO(), width=200)
    ui = Ui(err, out, live=False, can_confirm=False)
    options = pipeline.CodeOptions(task=task, paths=paths, model=str(ckpt), home=home,
                                   cfg=SamplerConfig.from_options(gen_length=32),
                                   review=ReviewOptions(dry_run=True), **opts)
    pipeline.code(options, ui)
    return out.file.getvalue(), err.file.getvalue()


def test_a_running_server_of_the_same_checkpoint_is_used_instead_of_loading(repo, dream_ckpt, tmp_path, monkeypatch):
    import time

    from dllm_cli import discovery, render

    from replay import Json, Replay, Sse, increment_chunks

    monkeypatch.setattr(render, "loading", None)  # a local load would fail loudly
    with Replay() as server:
        server.add("/health", Json(200, {"status": "ok", "instance": "i-1"}))
        server.add("/v1/chat/completions", Sse(increment_chunks([EDIT])))
        entry = discovery.ServerEntry(server.url, os.getpid(), str(dream_ckpt.resolve()), dream_ckpt.name, "cpu",
                                      "float32", False, "i-1", time.time())
        discovery.register(tmp_path, entry)
        out, err = warm_run(dream_ckpt, tmp_path, "make mean handle an empty list", "src/stats.py")
        assert f"using the warm server at {server.url}" in err and "+    return sum(xs) / len(xs) if xs else 0.0" in out
        sent = server.posts("/v1/chat/completions")[-1].body
        assert sent["model"] == dream_ckpt.name and sent["max_tokens"] == 32
        assert sent["dllm"] == {"block_length": 32, "threshold": 0.9, "alg": "low_confidence"}
        tok = Tokenizer.from_checkpoint(catalog.inspect(dream_ckpt))
        assert len(tok.encode(tok.apply_chat_template(sent["messages"]))) > 0  # the server templates them
        # a key it needs and does not have, or another device asked for: load here instead
        discovery.register(tmp_path, discovery.ServerEntry(**{**entry.as_dict(), "auth": True}))
        monkeypatch.delenv("DLLM_API_KEY", raising=False)
        with pytest.raises(TypeError):  # render.loading is None: the local load was attempted
            warm_run(dream_ckpt, tmp_path, "make mean handle an empty list", "src/stats.py")
        discovery.register(tmp_path, entry)
        with pytest.raises(TypeError):
            warm_run(dream_ckpt, tmp_path, "make mean handle an empty list", "src/stats.py", device="cuda")
        with pytest.raises(TypeError):
            warm_run(dream_ckpt, tmp_path, "make mean handle an empty list", "src/stats.py", no_server=True)

# ---- issue 14: secrets by content never reach the model ------------------------------------------

def test_every_planted_secret_is_redacted_in_the_decoded_prompt(repo, dream_ckpt):
    from planted import KEPT, NAMED_SECRETS, PLANTED, files

    planted = {**files(), **NAMED_SECRETS}
    for rel, text in planted.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git(repo, "add", "-f", *planted)
    paths = sorted(p for p in planted if p not in NAMED_SECRETS)
    run = Run(dream_ckpt, ["no edit"], "rotate the secret token and password", *paths, gen_length=32,
              stdin="log: AWS key AKIAQYLPMN5HHHFPZAM2 used\n")
    (prompt, _), = run.decoded(dream_ckpt)
    for kind, (_, _, secrets) in PLANTED.items():
        assert f"[dllm-redacted:{kind}]" in prompt, kind
        assert not [s for s in secrets if s in prompt], kind
    assert all(k in prompt for k in KEPT) and "log: AWS key [dllm-redacted:aws-access-key-id] used" in prompt
    assert "plain-kube-token" not in prompt and "plain-ppk-body" not in prompt
    assert "dllm: redacted 2 secrets in config.py" in run.err and "dllm: redacted 1 secret in (stdin)" in run.err


def test_show_context_reports_redactions_in_the_table_and_json(repo, dream_ckpt):
    (repo / "src/conf.py").write_text('GITHUB_TOKEN = "ghp_R4nd0mT0k3nV4lu3Xy9Qz8Wv7Ut6Sr5Pq4On1"\n')
    git(repo, "add", "src/conf.py")
    run = Run(dream_ckpt, [], "explain", "src/conf.py", json_out=True, show_context=True)
    data = json.loads(run.out)
    assert data["redacted"] == [{"path": "src/conf.py", "line": 1, "kind": "github-token"}]
    assert "redacted 1 secret in src/conf.py (github-token line 1)" in data["notes"]
    run = Run(dream_ckpt, [], "explain", "src/conf.py", show_context=True)
    assert "note: redacted 1 secret in src/conf.py (github-token line 1)" in run.out


def test_infill_never_rewrites_a_file_whose_text_was_redacted(repo, dream_ckpt):
    (repo / "src/stats.py").write_text('TOKEN = "ghp_R4nd0mT0k3nV4lu3Xy9Qz8Wv7Ut6Sr5Pq4On1"\n\n\n'
                                       'def median(xs):\n    """Middle value."""\n    ...\n')
    run = Run(dream_ckpt, [EDIT], "implement median", "src/stats.py", dry_run=True)
    assert "filling" not in run.err  # the file is not an infill source: chat mode, redacted
    (prompt, _), = run.decoded(dream_ckpt)
    assert "ghp_R4nd0m" not in prompt and "[dllm-redacted:github-token]" in prompt
