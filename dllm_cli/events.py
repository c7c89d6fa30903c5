"""The plain values that cross dllm's seams: chat messages, a generation request, special token
ids, denoising step events, a remote draft's text snapshots, the finished generation, and the union
of events a backend yields.

Knows: what a request asks, what a step of denoising reports and what a finished generation is,
in plain Python values (ints, lists, floats, strings). Must not: import torch, decode text, or
know which backend or checkpoint produced them. Every other module may import this one; it
imports nothing of dllm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Request:
    """One generation to run. Chat mode: `prompt_ids` is the chat-templated prompt (`messages` its
    text). Infill mode: the canvas of `cfg.gen_length` masks sits between `prompt_ids` and
    `suffix_ids` (`prefix` / `suffix` their text)."""

    prompt_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...] | None = None
    messages: tuple[Message, ...] = ()
    prefix: str = ""
    suffix: str = ""

    @property
    def infill(self) -> bool:
        return self.suffix_ids is not None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.suffix_ids or ())


@dataclass(frozen=True)
class SpecialTokens:
    """The ids a sampler and a decoder need (resolved from the checkpoint's files once).

    `stops`: eos plus the eos-like ids that end an answer (eot, im_end, dlm_pad);
    `expand` / `delete`: DreamOn's variable-length tokens (`expand` None: not a DreamOn model).
    """

    mask: int
    eos: int
    pad: int | None = None
    bos: int | None = None
    stops: frozenset[int] = frozenset()
    expand: int | None = None
    delete: int | None = None

    def __post_init__(self) -> None:
        if self.eos not in self.stops:
            object.__setattr__(self, "stops", frozenset(self.stops | {self.eos}))


@dataclass(frozen=True)
class DenoiseStep:
    """One denoising step (the renderer decodes, never the sampler).

    `tokens` is the generated region as it is now (`SpecialTokens.mask` where still masked); its
    length is gen_length, except in DreamOn's loop where the region grows and shrinks.
    Positions are 0-based offsets into `tokens`.
    """

    index: int  # 0-based number of the step (steps the schedule gives no token are skipped)
    tokens: list[int]
    revealed: list[int]  # positions unmasked at this step, ascending
    confidences: list[float]  # p(token) for each revealed position (0.0 for an early-stop fill)
    forwards: int  # model forwards so far
    elapsed: float  # seconds since denoising started
    done: bool  # True on the last event
    remasked: list[int] = field(default_factory=list)  # decoded positions masked again (p2)
    # positions whose written token was replaced by another (LLaDA2.1's token editing), ascending,
    # with p(new token) for each: a revision, drawn apart from a reveal
    edited: list[int] = field(default_factory=list)
    edit_confidences: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Generation:
    """A finished generation: the answer text and what it cost."""

    text: str  # the decoded answer, cut at the first stop token, special tokens dropped
    gen_tokens: int  # tokens in the answer (before the first stop token)
    steps: int
    forwards: int
    seconds: float  # denoising time (model load excluded)
    prompt_tokens: int = 0  # tokens the model saw besides the canvas (prompt, or prefix + suffix)
    edits: int = 0  # written tokens replaced by others on the way (LLaDA2.1's token editing)

    @property
    def tokens_per_second(self) -> float:
        """Answer tokens per second of denoising: the one tok/s figure dllm reports."""
        return self.gen_tokens / self.seconds if self.seconds > 0 else 0.0

    @classmethod
    def combined(cls, parts: list["Generation"], text: str) -> "Generation":
        """Several generations of one run (infill regions) as one: sums, with `text`."""
        return cls(text, sum(g.gen_tokens for g in parts), sum(g.steps for g in parts),
                   sum(g.forwards for g in parts), sum(g.seconds for g in parts),
                   sum(g.prompt_tokens for g in parts), sum(g.edits for g in parts))


@dataclass(frozen=True)
class TextSnapshot:
    """A remote backend's draft after one streamed chunk (a server sends text, not token ids).

    `text` is the whole draft as it is now: servers that stream diffusion snapshots (Mercury's
    `"diffusing": true`, `dllm serve`) replace it on every chunk (`mode` "snapshot"); servers that
    stream increments (SGLang, vLLM) have their pieces joined (`mode` "append"). A `dllm serve`
    adds what only a local engine knows (its per-chunk extension): `canvas` (each position's text,
    None while masked), `revealed` / `confidences` (as in DenoiseStep), `step` and `forwards`.
    """

    index: int  # 0-based number of the chunk that carried text
    text: str
    elapsed: float  # seconds since the request was sent
    done: bool = False
    mode: str = "snapshot"  # "snapshot" | "append"
    canvas: tuple[str | None, ...] | None = None
    revealed: tuple[int, ...] = ()
    confidences: tuple[float, ...] = ()
    edited: tuple[int, ...] = ()  # as DenoiseStep.edited
    step: int | None = None
    forwards: int | None = None

    @property
    def masked(self) -> int | None:
        """Positions still masked (servers that report a canvas), else None."""
        return None if self.canvas is None else sum(1 for piece in self.canvas if piece is None)


Event = Union[DenoiseStep, TextSnapshot, Generation]  # what a Backend yields: steps or snapshots, then one Generation
