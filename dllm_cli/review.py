"""From edits to a change on disk: build the patch, save it, show the diff, confirm (yes / no /
edit / save), apply atomically, optionally commit. The same path serves `dllm code` (chat and
infill modes, the model's edits read tolerantly) and `dllm apply` (a diff from outside, read
strictly by diffs.py); `undo_last` is `dllm undo`.

Knows: the order of the review and what each answer does; records how far it got in an
`Outcome` the caller passes in (so a --json report can say what happened when a step fails).
--commit: refused before anything is written when a file the patch touches has changes git has
not committed (they would go into dllm's commit); `dllm undo` of a committed patch restores the
files and reverts that commit with a new commit when it is still on the branch, and says so
when it is not (the commit then stays).
Must not: import torch, parse model output beyond handing it to edits.py, or write files
except through journal.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import repo
from .edits import Edit, parse_edits, parse_unified_diff
from .errors import DllmError, Interrupted, NotConfirmed, PatchError
from .journal import AppliedPatch, apply_patch, commit_patch, save_patch, state_dir_for, undo
from .patch import Patch, build_patch
from .ui import Ui


@dataclass(frozen=True)
class ReviewOptions:
    yes: bool = False
    dry_run: bool = False
    commit_message: str | None = None  # --commit: the commit's subject
    model_name: str = ""
    save: bool = True  # keep the patch in the state dir (generated patches)


@dataclass
class Outcome:
    """How far the review got: the patch shown, where it was saved, whether it was applied."""

    patch: Patch | None = None
    applied: bool = False
    saved: Path | None = None


def review_output(output: str, root: Path, opts: ReviewOptions, ui: Ui,
                  outcome: Outcome | None = None) -> Outcome:
    """The post-generation pipeline: decoded text → edits → patch → diff → confirm → apply."""
    edits = parse_edits(output)
    if not edits:
        raise PatchError("no edit found in the model output; rephrase the request, "
                         "name the file to change, or raise --gen-length")
    return review_edits(edits, root, opts, ui, outcome)


def review_edits(edits: Sequence[Edit], root: Path, opts: ReviewOptions, ui: Ui,
                 outcome: Outcome | None = None) -> Outcome:
    """Build, save, show, confirm, apply; `outcome` (filled as it goes) is returned."""
    return review_patch(build_patch(root, edits), root, opts, ui, outcome)


def review_diff(text: str, source: str, root: Path, opts: ReviewOptions, ui: Ui) -> Outcome:
    """`dllm apply`: a unified diff from outside, checked as `git apply --check` would (diffs.py;
    a diff holding colour codes is refused), then the same review."""
    from .diffs import strict_patch

    return review_patch(strict_patch(root, text, source), root, opts, ui)


def review_patch(patch: Patch, root: Path, opts: ReviewOptions, ui: Ui,
                 outcome: Outcome | None = None) -> Outcome:
    """Save, show, confirm, apply an already checked patch."""
    outcome = outcome if outcome is not None else Outcome()
    if patch.is_empty:
        raise PatchError("the edits change nothing in the files; nothing to apply")
    outcome.patch = patch
    if opts.save:
        outcome.saved = save_patch(patch, state_dir_for(root))
        ui.say(f"dllm: patch saved to {outcome.saved}", style="dim")
    if opts.dry_run:
        _print_diff(ui, patch)
        return outcome
    if opts.commit_message:
        check_commit(root, patch)
    if not opts.yes:
        outcome.patch = patch = confirm(root, patch, outcome, ui)
    elif not ui.out.is_terminal:
        _print_diff(ui, patch)
    else:
        _show_diff(ui, patch)
    return apply(root, patch, opts, outcome, ui)


def confirm(root: Path, patch: Patch, outcome: Outcome, ui: Ui) -> Patch:
    """Ask yes / no / edit / save; return the (possibly edited) patch to apply."""
    if not ui.can_confirm:
        _print_diff(ui, patch)
        where = f" (saved: {outcome.saved})" if outcome.saved else ""
        raise NotConfirmed(f"no terminal to confirm on and no --yes; the diff is on stdout{where}; "
                           "rerun with --yes, or apply it with `dllm apply FILE`")
    while True:
        _show_diff(ui, patch)
        choice = ui.confirm()
        if choice == "yes":
            return patch
        if choice == "edit":
            patch = build_patch(root, parse_unified_diff(ui.edit(patch.diff)))
            if patch.is_empty:
                raise NotConfirmed("the edited patch changes nothing; nothing was applied")
            continue
        if choice == "save":
            target = ui.ask_text("save the patch to", "dllm.patch")
            if target:
                try:
                    Path(target).expanduser().write_text(patch.diff, encoding="utf-8")
                except OSError as exc:
                    raise DllmError(f"{target}: cannot save the patch ({exc.strerror or exc}); nothing "
                                    f"was applied; it is also kept at {outcome.saved}") from None
                raise NotConfirmed(f"patch saved to {target}; not applied (apply it with `dllm apply {target}`)")
        raise NotConfirmed("declined; nothing was changed")


def check_commit(root: Path, patch: Patch) -> None:
    """--commit commits only dllm's change: refused (exit 3, nothing written) when a file the
    patch touches already holds changes that git has not committed."""
    dirty = repo.uncommitted(root, patch.files)
    if dirty:
        what = "; ".join(f"{path}: {why}" for path, why in dirty)
        raise PatchError(f"--commit refused: {what} — the commit would carry them with dllm's change; "
                         "commit or stash them first, or run without --commit; nothing was changed")


def apply(root: Path, patch: Patch, opts: ReviewOptions, outcome: Outcome, ui: Ui) -> Outcome:
    if opts.commit_message:
        check_commit(root, patch)  # again: the files may have changed while the user read the diff
    applied = apply_patch(root, patch, state_dir=state_dir_for(root))
    for line in applied.recovered:
        ui.say(f"dllm: {line}", style="yellow")
    outcome.applied = True
    ui.say(f"dllm: applied to {', '.join(patch.files)}; `dllm undo` reverts it", style="green")
    if opts.commit_message:
        try:
            commit_patch(root, applied, opts.commit_message, opts.model_name)
        except KeyboardInterrupt:
            raise Interrupted("interrupted while committing; the patch is applied but not committed "
                              "(`dllm undo` reverts it)") from None
        ui.say("dllm: committed", style="green")
    return outcome


def undo_last(root: Path, ui: Ui) -> AppliedPatch:
    """`dllm undo`: restore the last applied patch's files; revert its commit if it made one."""
    restored = undo(root, state_dir=state_dir_for(root))
    for line in restored.recovered:
        ui.say(f"dllm: {line}", style="yellow")
    ui.say(f"dllm: undone: {', '.join(restored.files)}", style="green")
    if restored.commit:
        revert_commit(root, restored, ui)
    return restored


def revert_commit(root: Path, restored: AppliedPatch, ui: Ui) -> None:
    sha = restored.commit
    assert sha is not None
    short = sha[:12]
    if not repo.is_ancestor(root, sha):
        ui.say(f"dllm: the patch was committed as {short}, which is no longer on this branch; the commit "
               "stays and no revert commit was made", style="yellow")
        return
    subject = repo.commit_subject(root, sha) or "dllm patch"
    message = f'Revert "{subject}"\n\nThis reverts commit {sha}.\n\nGenerated-by: dllm undo\n'
    changes = restored.patch.changes
    try:
        new = repo.commit(root, [c.path for c in changes if c.new is not None],
                          [c.path for c in changes if c.new is None], message)
    except DllmError as err:
        raise DllmError(f"the files are restored, but reverting commit {short} failed ({err}); the commit "
                        "stays — revert it with git revert") from None
    ui.say(f"dllm: reverted commit {short} with a new commit {new[:12]}", style="green")


def _show_diff(ui: Ui, patch: Patch) -> None:
    from .render import render_diff

    render_diff(ui.err, patch)


def _print_diff(ui: Ui, patch: Patch) -> None:
    """The diff as data on stdout (not in --json mode, where it is a field)."""
    if not ui.json:
        ui.data(patch.diff, syntax="diff")
