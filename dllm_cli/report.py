"""The --json documents of `dllm code`, as dataclasses with `as_dict()`.

Knows: the field names and meaning of each document (docs/cli.md lists them): the run report
(`CodeReport`, printed also when the patch fails), the chat-mode context listing
(`ContextReport`) and the infill-mode one (`InfillContextReport`). Must not: print (ui.py writes
the JSON), import torch, or compute figures (they arrive measured).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import DllmError
from .events import Generation

if TYPE_CHECKING:
    from .context import Context
    from .review import Outcome


@dataclass(frozen=True)
class CodeReport:
    """One `dllm code --json` run: the generation, and what became of its patch."""

    model: str
    gen: Generation
    outcome: "Outcome | None" = None
    error: DllmError | None = None  # what ended the run after generation (exit code and message)
    endpoint: str | None = None  # the remote endpoint's base URL; None: the model ran here

    def as_dict(self) -> dict[str, Any]:
        outcome, error = self.outcome, self.error
        patch = outcome.patch if outcome is not None else None
        g = self.gen
        data: dict[str, Any] = {
            "model": self.model, "prompt_tokens": g.prompt_tokens, "gen_tokens": g.gen_tokens,
            "steps": g.steps, "forwards": g.forwards, "edits": g.edits, "seconds": round(g.seconds, 4),
            "tokens_per_second": round(g.tokens_per_second, 2), "output": g.text,
            "patch": patch.diff if patch is not None else None,
            "files": list(patch.files) if patch is not None else [],
            "applied": bool(outcome and outcome.applied),
            "exit_code": error.exit_code if error is not None else 0, "endpoint": self.endpoint}
        if error is not None:
            data["error"] = str(error)
        return data


@dataclass(frozen=True)
class ContextReport:
    """`dllm code --show-context --json` in chat mode: what would be sent."""

    context: "Context"

    def as_dict(self) -> dict[str, Any]:
        ctx = self.context
        return {"root": str(ctx.root), "budget": ctx.budget, "tokens": ctx.tokens,
                "files": [{"path": f.path, "tokens": f.tokens, "reason": f.reason} for f in ctx.files],
                "stdin_tokens": ctx.stdin_tokens,
                "skipped": [{"path": s.path, "reason": s.reason, "ranked": s.ranked} for s in ctx.skipped],
                "redacted": [{"path": r.path, "line": r.line, "kind": r.kind} for r in ctx.redactions],
                "notes": list(ctx.notes)}


@dataclass(frozen=True)
class RegionRow:
    path: str
    function: str
    lines: tuple[int, int]  # 1-based, inclusive
    prefix_tokens: int
    suffix_tokens: int

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "function": self.function, "lines": list(self.lines),
                "prefix_tokens": self.prefix_tokens, "suffix_tokens": self.suffix_tokens}


@dataclass(frozen=True)
class InfillContextReport:
    """`dllm code --show-context --json` in infill mode: each region and the file around it."""

    root: str
    gen_length: int
    context: int
    regions: tuple[RegionRow, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"mode": "infill", "root": self.root, "gen_length": self.gen_length,
                "context": self.context, "regions": [r.as_dict() for r in self.regions]}
