"""From edits to a change on disk: build the patch, save it, show the diff, confirm (yes / no /
edit / save), apply atomically, optionally commit; and the --json report of `dllm code`.
The same path serves `dllm code` (chat and infill modes) and `dllm apply`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DllmError, Interrupted, NotConfirmed, PatchError
from .ui import Ui, write_json

if TYPE_CHECKING:
    from .cli import Generation


@dataclass(frozen=True)
class ReviewOptions:
    yes: bool = False
    dry_run: bool = False
    commit_message: str | None = None  # --commit: the commit's subject
    model_name: str = ""
    save: bool = True  # keep the patch in the state dir (generated patches)


@dataclass
class Outcome:
    patch: object | None = None  # patch.Patch
    applied: bool = False
    saved: Path | None = None
    exit_code: int = 0


def review_output(output: str, root: Path, opts: ReviewOptions, ui: Ui) -> Outcome:
    """The post-generation pipeline: decoded text → edits → patch → diff → confirm → apply."""
    from .edits import parse_edits

    edits = parse_edits(output)
    if not edits:
        raise PatchError("no edit found in the model output; rephrase the request, "
                         "name the file to change, or raise --gen-length")
    return review_edits(edits, root, opts, ui)


def review_edits(edits, root: Path, opts: ReviewOptions, ui: Ui) -> Outcome:
    """Build, save, show, confirm, apply. A DllmError leaves with `.outcome` (for --json)."""
    from .patch import build_patch

    patch = build_patch(root, edits)
    if patch.is_empty:
        raise PatchError("the edits change nothing in the files; nothing to apply")
    outcome = Outcome(patch=patch)
    try:
        return _decide(root, patch, opts, outcome, ui)
    except DllmError as err:
        err.outcome = outcome
        raise


def _decide(root: Path, patch, opts: ReviewOptions, outcome: Outcome, ui: Ui) -> Outcome:
    from .patch import save_patch, state_dir_for

    if opts.save:
        outcome.saved = save_patch(patch, state_dir_for(root))
        ui.say(f"dllm: patch saved to {outcome.saved}", style="dim")
    if opts.dry_run:
        _print_diff(ui, patch.diff)
        return outcome
    if not opts.yes:
        outcome.patch = patch = confirm(root, patch, outcome, ui)
    elif not ui.out.is_terminal:
        _print_diff(ui, patch.diff)
    else:
        _show_diff(ui, patch.diff)
    return apply(root, patch, opts, outcome, ui)


def confirm(root: Path, patch, outcome: Outcome, ui: Ui):
    """Ask yes / no / edit / save; return the (possibly edited) patch to apply."""
    from .edits import parse_unified_diff
    from .patch import build_patch
    from .render import ask_confirm, ask_text, edit_in_editor

    if not ui.can_confirm:
        _print_diff(ui, patch.diff)
        where = f" (saved: {outcome.saved})" if outcome.saved else ""
        raise NotConfirmed(f"no terminal to confirm on and no --yes; the diff is on stdout{where}; "
                           "rerun with --yes, or apply it with `dllm apply FILE`")
    while True:
        _show_diff(ui, patch.diff)
        choice = ask_confirm(input=ui.prompt_input, output=ui.prompt_output)
        if choice == "yes":
            return patch
        if choice == "edit":
            patch = build_patch(root, parse_unified_diff(edit_in_editor(patch.diff)))
            if patch.is_empty:
                raise NotConfirmed("the edited patch changes nothing; nothing was applied")
            continue
        if choice == "save":
            target = ask_text("save the patch to", "dllm.patch", input=ui.prompt_input,
                              output=ui.prompt_output)
            if target:
                try:
                    Path(target).expanduser().write_text(patch.diff, encoding="utf-8")
                except OSError as exc:
                    raise DllmError(f"{target}: cannot save the patch ({exc.strerror or exc}); nothing "
                                    f"was applied; it is also kept at {outcome.saved}") from None
                raise NotConfirmed(f"patch saved to {target}; not applied (apply it with `dllm apply {target}`)")
        raise NotConfirmed("declined; nothing was changed")


def apply(root: Path, patch, opts: ReviewOptions, outcome: Outcome, ui: Ui) -> Outcome:
    from .patch import apply_patch, commit_patch, state_dir_for

    applied = apply_patch(root, patch, state_dir=state_dir_for(root))
    outcome.applied = True
    files = ", ".join(patch.files)
    ui.say(f"dllm: applied to {files}; `dllm undo` reverts it", style="green")
    if opts.commit_message:
        try:
            commit_patch(root, applied, opts.commit_message, opts.model_name)
        except KeyboardInterrupt:
            raise Interrupted("interrupted while committing; the patch is applied but not committed "
                              "(`dllm undo` reverts it)") from None
        ui.say("dllm: committed", style="green")
    return outcome


def _show_diff(ui: Ui, diff: str) -> None:
    from .render import render_diff

    render_diff(ui.err, diff)


def _print_diff(ui: Ui, diff: str) -> None:
    """The diff as data on stdout (not in --json mode, where it is a field)."""
    from .render import print_data

    if not ui.json:
        print_data(diff, ui.out, syntax="diff")


@dataclass
class Report:
    """The --json object of `dllm code` (one line on stdout, also when the patch fails)."""

    model: str
    prompt_tokens: int
    gen: Generation
    extra: dict = field(default_factory=dict)

    def as_dict(self, outcome: Outcome | None, exit_code: int, error: str | None = None) -> dict:
        patch = outcome.patch if outcome else None
        g = self.gen
        data = {"model": self.model, "prompt_tokens": self.prompt_tokens, "gen_tokens": g.gen_tokens,
                "steps": g.steps, "forwards": g.forwards, "seconds": round(g.seconds, 4),
                "tokens_per_second": round(g.tokens_per_second, 2), "output": g.text,
                "patch": patch.diff if patch is not None else None,
                "files": list(patch.files) if patch is not None else [],
                "applied": bool(outcome and outcome.applied), "exit_code": exit_code}
        if error:
            data["error"] = error
        return data

    def emit(self, ui: Ui, outcome: Outcome) -> None:
        if ui.json:
            write_json(ui, self.as_dict(outcome, 0))

    def on_error(self, ui: Ui):
        """In --json mode, a DllmError after generation still prints the object (then re-raises)."""
        from contextlib import contextmanager

        @contextmanager
        def guard():
            try:
                yield
            except DllmError as err:
                if ui.json:
                    write_json(ui, self.as_dict(getattr(err, "outcome", None), err.exit_code, str(err)))
                raise

        return guard()
