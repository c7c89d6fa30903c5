"""How to denoise: the sampler configuration, the CLI's option rules, and per-model recipes.

Knows: option values and their validation, how command-line options turn into a SamplerConfig
(`SamplerConfig.from_options`, usable from Python too), the recipes of the published checkpoints
(docs/models.md). Must not: import torch, or know where files live (settings.py) or what a
checkpoint is (catalog.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .errors import UsageError

LLADA_ALGS = ("low_confidence", "random")
DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
REMASK_ALGS = ("p2",)  # Open-dCoder's path planning: decoded tokens can be masked again
CACHE_MODES = ("none", "prefix", "dual")
DEFAULT_BLOCK = 32  # Fast-dLLM's best trade-off


@dataclass(frozen=True)
class SamplerConfig:
    """How to denoise a canvas of `gen_length` masks (names follow the papers).

    `alg` in LLADA_ALGS uses LLaDA's semi-autoregressive block schedule; `alg` in
    DREAM_ALGS uses Dream's time schedule (eps .. 1) over one block unless
    `block_length` is set; "p2" is Open-dCoder's path-planning loop (the whole canvas every
    step; low-confidence tokens may be masked again; no blocks, threshold or cache).
    `threshold` switches to Fast-dLLM confidence-threshold decoding inside blocks (`steps` is then
    an upper bound). The defaults are dllm's fast mode: threshold 0.9 inside 32-token blocks with
    the block KV cache.
    """

    gen_length: int = 128
    steps: int | None = None  # None: gen_length (one token per step at most)
    block_length: int | None = DEFAULT_BLOCK  # None: the whole canvas is one block
    alg: str = "low_confidence"
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    alg_temp: float | None = None
    threshold: float | None = 0.9
    factor: float | None = None
    cfg_scale: float = 0.0
    eps: float = 1e-3
    seed: int | None = None
    cache: str = "dual"
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    early_stop: bool = True  # stop once eos fills the rest of the canvas

    def __post_init__(self) -> None:
        _check(self.gen_length >= 1, "--gen-length must be at least 1")
        _check(self.steps is None or self.steps >= 1, "--steps must be at least 1")
        algs = LLADA_ALGS + DREAM_ALGS + REMASK_ALGS
        _check(self.alg in algs, f"unknown --alg {self.alg!r}; choose one of {', '.join(algs)}")
        _check(self.cache in CACHE_MODES,
               f"unknown cache mode {self.cache!r}; choose one of {', '.join(CACHE_MODES)}")
        _check(self.temperature >= 0, "--temperature must be >= 0")
        _check(self.top_p is None or 0 < self.top_p <= 1, "--top-p must be in (0, 1]")
        _check(self.top_k is None or self.top_k >= 1, "--top-k must be at least 1")
        _check(self.threshold is None or 0 < self.threshold <= 1, "--threshold must be in (0, 1]")
        _check(self.factor is None or self.factor > 0, "--factor must be > 0")
        _check(not (self.threshold is not None and self.factor is not None),
               "use either --threshold or --factor, not both")
        _check(0 < self.eps < 1, "eps must be in (0, 1)")
        _check(self.cfg_scale >= 0, "--cfg-scale must be >= 0")
        if self.block_length is not None:
            _check(self.block_length >= 1, "--block-length must be at least 1")
            _check(self.gen_length % self.block_length == 0,
                   f"--gen-length {self.gen_length} must be a multiple of --block-length {self.block_length}")
        if self.alg in REMASK_ALGS:
            _check(self.threshold is None and self.factor is None and self.block_length is None,
                   f"--alg {self.alg} revises the whole canvas on a fixed schedule: it has no blocks and "
                   "no threshold; use --block-length 0 --threshold 0 (block_length=None, threshold=None)")
        if self.parallel is None and self.alg in LLADA_ALGS:
            blocks = self.num_blocks
            _check(self.total_steps % blocks == 0,
                   f"--steps {self.total_steps} must be a multiple of the number of blocks ({blocks})")

    @property
    def parallel(self) -> str | None:
        """'threshold', 'factor' or None (a fixed schedule)."""
        if self.threshold is not None:
            return "threshold"
        if self.factor is not None:
            return "factor"
        return None

    @property
    def block(self) -> int:
        return self.block_length or self.gen_length

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block

    @property
    def total_steps(self) -> int:
        return self.steps or self.gen_length

    def with_(self, **changes: Any) -> "SamplerConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    @classmethod
    def from_options(cls, base: "SamplerConfig | None" = None, *, gen_length: int | None = None,
                     steps: int | None = None, block_length: int | None = None,
                     temperature: float | None = None, threshold: float | None = None,
                     seed: int | None = None, alg: str | None = None) -> "SamplerConfig":
        """`base` (default: SamplerConfig(), dllm's fast mode) with the command-line options given
        (None: not given). The CLI's rules: 0 turns --block-length / --threshold off; a
        --gen-length without --block-length gets a block that divides it (fitting_block);
        --alg p2 (the whole canvas, no blocks, threshold or cache) turns both off unless given."""
        changes: dict[str, Any] = {k: v for k, v in dict(gen_length=gen_length, steps=steps,
                                                         temperature=temperature, seed=seed,
                                                         alg=alg).items() if v is not None}
        if alg in REMASK_ALGS:
            changes.update(block_length=None, threshold=None, cache="none")
        if block_length is not None:
            changes["block_length"] = block_length or None
        elif gen_length is not None and alg not in REMASK_ALGS:
            changes["block_length"] = fitting_block(gen_length)
        if threshold is not None:
            changes["threshold"] = threshold or None
        return (base or cls()).with_(**changes)

    @classmethod
    def reference(cls, gen_length: int = 128, block_length: int | None = 32,
                  alg: str = "low_confidence") -> "SamplerConfig":
        """The official loop: one token per step, the full canvas every step, no cache."""
        return cls(gen_length=gen_length, steps=gen_length, block_length=block_length, alg=alg,
                   threshold=None, cache="none", early_stop=False)


def fitting_block(gen_length: int, preferred: int = DEFAULT_BLOCK) -> int | None:
    """The block length to use when none was asked for: `preferred` when it divides
    gen_length, else the largest divisor below it if that is at least 8, else one block."""
    for b in range(min(preferred, gen_length), 7, -1):
        if gen_length % b == 0:
            return b
    return None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


@dataclass(frozen=True)
class Recipe:
    """How the authors run a checkpoint: prompt style, sampler settings, stop tokens."""

    name: str
    family: str  # "llada" | "dream" | "dream-coder" | "diffucoder" | "open-dcoder" | "dllm"
    prompt: str  # "llada-chat" | "chatml" | "own-template" | "raw"
    sampler: SamplerConfig
    stop_tokens: tuple[str, ...] = ()
    note: str = ""


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("llada-8b-instruct", "llada", "llada-chat",
               SamplerConfig(gen_length=512, steps=512, block_length=32, alg="low_confidence",
                             threshold=None, cache="none", early_stop=False,
                             confidence_eos_eot_inf=True),
               ("<|endoftext|>", "<|eot_id|>")),
        Recipe("dream-v0-instruct-7b", "dream", "chatml",
               SamplerConfig(gen_length=512, steps=512, block_length=None, alg="entropy",
                             temperature=0.2, top_p=0.95, threshold=None, cache="none",
                             early_stop=False),
               ("<|endoftext|>",)),
        Recipe("dream-coder-v0-instruct-7b", "dream-coder", "own-template",
               SamplerConfig(gen_length=768, steps=768, block_length=None, alg="entropy",
                             temperature=0.1, top_p=0.95, threshold=None, cache="none",
                             early_stop=False),
               ("<|endoftext|>", "<|im_end|>")),
        Recipe("diffucoder-7b-instruct", "diffucoder", "chatml",
               SamplerConfig(gen_length=256, steps=256, block_length=None, alg="entropy",
                             temperature=0.3, top_p=0.95, threshold=None, cache="none",
                             early_stop=False),
               ("<|dlm_pad|>", "<|endoftext|>", "<|im_end|>"),
               "research-only weights licence (apple-amlr)"),
        Recipe("diffucoder-7b-cpgrpo", "diffucoder", "chatml",
               SamplerConfig(gen_length=256, steps=256, block_length=None, alg="entropy",
                             temperature=0.4, top_p=0.95, threshold=None, cache="none",
                             early_stop=False),
               ("<|dlm_pad|>", "<|endoftext|>", "<|im_end|>"),
               "research-only weights licence (apple-amlr)"),
        Recipe("open-dcoder-0.5b", "open-dcoder", "raw",
               SamplerConfig(gen_length=128, steps=128, block_length=None, alg="p2",
                             temperature=0.8, top_p=0.95, threshold=None, cache="none",
                             early_stop=False),
               ("<|endoftext|>",)),
        Recipe("fast", "any", "model", SamplerConfig()),
    )
}


def recipe(name: str) -> Recipe:
    """The recipe called `name` (see RECIPES); raises UsageError for an unknown one."""
    key = name.lower()
    if key not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[key]
