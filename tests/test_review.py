"""review.py: edits → patch → saved → diff → confirm (yes / no / edit / save) → apply → commit, on
string consoles in a temporary git repository; and the --json report when the review fails."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from dllm_cli.errors import NotConfirmed, PatchError
from dllm_cli.events import Generation
from dllm_cli.report import CodeReport
from dllm_cli.review import Outcome, ReviewOptions, review_output
from dllm_cli.ui import Ui

from gitrepo import git, snapshot

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
        ui = Ui(err, out, live=False, can_confirm=answers is not None, json=json_out)
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
    outcome = review_output(ANSWER, repo, ReviewOptions(yes=True, model_name="tiny"), ui)
    assert outcome.applied and outcome.patch.files == ("src/stats.py",)
    assert (repo / "src/stats.py").read_bytes() == b"def mean(xs):\r\n    return sum(xs) / len(xs) if xs else 0.0"
    assert outcome.saved.is_file() and outcome.saved.read_bytes() == outcome.patch.diff.encode()


def test_review_output_without_edits_is_exit_3(ui_with, repo):
    with pytest.raises(PatchError, match="no edit found") as info:
        review_output("I would rather not.", repo, ReviewOptions(yes=True), ui_with(None))
    assert info.value.exit_code == 3


@pytest.mark.parametrize("answers", ["n\n", "\x04"])
def test_declined_changes_nothing(ui_with, repo, answers):
    before = snapshot(repo)
    ui = ui_with(answers)
    with pytest.raises(NotConfirmed) as info:
        review_output(ANSWER, repo, ReviewOptions(), ui)
    assert info.value.exit_code == 4 and snapshot(repo) == before
    assert "src/stats.py" in ui.err.file.getvalue()  # the diff was shown before asking


def test_confirm_yes_applies_and_commit_names_the_model(ui_with, repo):
    outcome = review_output(ANSWER, repo, ReviewOptions(commit_message="guard mean",
                                                                  model_name="tiny-dream"), ui_with("y\n"))
    assert outcome.applied
    message = git(repo, "log", "-1", "--format=%B")
    assert message.startswith("guard mean") and "Generated-by: dllm (tiny-dream)" in message


def test_confirm_save_writes_the_patch_and_applies_nothing(ui_with, repo, tmp_path):
    before = snapshot(repo)
    target = tmp_path / "saved.patch"
    with pytest.raises(NotConfirmed, match="saved"):
        review_output(ANSWER, repo, ReviewOptions(), ui_with(f"s\n{target}\n"))  # typed: the whole answer
    assert snapshot(repo) == before and "+    return sum(xs) / len(xs) if xs else 0.0" in target.read_text()


def test_confirm_save_to_an_unwritable_path_is_a_one_line_error(ui_with, repo, tmp_path):
    from dllm_cli.errors import DllmError

    before = snapshot(repo)
    target = tmp_path / "no/such/dir/saved.patch"
    with pytest.raises(DllmError, match="cannot save the patch .*nothing was applied.*also kept at") as info:
        review_output(ANSWER, repo, ReviewOptions(), ui_with(f"s\n{target}\n"))  # typed: the whole answer
    assert info.value.exit_code == 1 and snapshot(repo) == before


def test_confirm_edit_applies_the_edited_patch(ui_with, repo, tmp_path, monkeypatch):
    editor = tmp_path / "editor.py"
    editor.write_text("import sys, pathlib\np = pathlib.Path(sys.argv[1])\n"
                      "p.write_text(p.read_text().replace('else 0.0', 'else None'))\n")
    monkeypatch.setenv("EDITOR", f"{sys.executable} {editor}")
    monkeypatch.delenv("VISUAL", raising=False)
    outcome = review_output(ANSWER, repo, ReviewOptions(), ui_with("e\ny\n"))
    assert outcome.applied and b"if xs else None" in (repo / "src/stats.py").read_bytes()


def test_json_report_keeps_the_patch_when_not_confirmed(ui_with, repo):
    ui = ui_with(None, json_out=True)
    gen = Generation(ANSWER, 40, 5, 6, 0.5, prompt_tokens=10)
    outcome = Outcome()
    with pytest.raises(NotConfirmed) as info:
        review_output(ANSWER, repo, ReviewOptions(), ui, outcome)
    data = CodeReport("tiny", gen, outcome, info.value).as_dict()
    assert data["exit_code"] == 4 and data["applied"] is False and data["files"] == ["src/stats.py"]
    assert "+    return sum(xs) / len(xs) if xs else 0.0" in data["patch"] and data["output"] == ANSWER
    assert data["tokens_per_second"] == 80.0 and data["gen_tokens"] == 40 and data["prompt_tokens"] == 10
    assert "no terminal to confirm on" in data["error"]
    assert json.loads(json.dumps(data)) == data


# ---- issue 14: --commit commits only dllm's change; undo reverts the commit -----------------------

def test_commit_is_refused_when_a_touched_file_has_uncommitted_edits(ui_with, repo):
    (repo / "src/stats.py").write_bytes(b"# my own work in progress\r\n" + (repo / "src/stats.py").read_bytes())
    before, head = snapshot(repo), git(repo, "rev-parse", "HEAD")
    with pytest.raises(PatchError, match=r"--commit refused: src/stats\.py: uncommitted changes") as info:
        review_output(ANSWER, repo, ReviewOptions(yes=True, commit_message="guard mean"), ui_with(None))
    assert info.value.exit_code == 3 and snapshot(repo) == before and git(repo, "rev-parse", "HEAD") == head
    git(repo, "add", "src/stats.py")  # staged is refused too
    with pytest.raises(PatchError, match="staged changes"):
        review_output(ANSWER, repo, ReviewOptions(yes=True, commit_message="guard mean"), ui_with(None))


def test_commit_is_refused_for_an_untracked_file_the_patch_edits(ui_with, repo):
    (repo / "notes.py").write_text("x = 1\n")
    answer = "notes.py\n<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE\n"
    with pytest.raises(PatchError, match="notes.py: not tracked by git"):
        review_output(answer, repo, ReviewOptions(yes=True, commit_message="bump"), ui_with(None))
    assert (repo / "notes.py").read_text() == "x = 1\n"


def test_undo_of_a_committed_patch_reverts_the_commit_with_a_new_commit(ui_with, repo):
    from dllm_cli.review import undo_last

    before = snapshot(repo)
    answer = ANSWER + "\nsrc/new.py\n```python\nNEW = 1\n```\n"
    review_output(answer, repo, ReviewOptions(yes=True, commit_message="guard mean", model_name="m"), ui_with(None))
    committed = git(repo, "rev-parse", "HEAD").strip()
    assert git(repo, "status", "--porcelain", "--", "src").strip() == ""
    ui = ui_with(None)
    undo_last(repo, ui)
    assert snapshot(repo) == before
    said = ui.err.file.getvalue()
    assert f"reverted commit {committed[:12]} with a new commit" in said
    message = git(repo, "log", "-1", "--format=%B")
    assert message.startswith('Revert "guard mean"') and f"This reverts commit {committed}." in message
    assert git(repo, "status", "--porcelain", "--", "src").strip() == ""  # the revert took every file of the patch
    assert git(repo, "diff", "HEAD~2", "HEAD", "--stat").strip() == ""


def test_undo_says_the_commit_stays_when_it_left_the_branch(ui_with, repo):
    from dllm_cli.review import undo_last

    review_output(ANSWER, repo, ReviewOptions(yes=True, commit_message="guard mean"), ui_with(None))
    committed = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "reset", "-q", "--soft", "HEAD~1")  # the commit is no longer on the branch
    ui = ui_with(None)
    undo_last(repo, ui)
    said = " ".join(ui.err.file.getvalue().split())
    assert f"committed as {committed[:12]}, which is no longer on this branch; the commit stays" in said
