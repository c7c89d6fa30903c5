"""How to denoise: the sampler configuration, the CLI's option rules, and per-model recipes.

Knows: option values and their validation, how command-line options turn into a SamplerConfig
(`SamplerConfig.from_options`, usable from Python too), the recipes of the published checkpoints
(docs/models.md) and which one a checkpoint family gets by default (`family_sampler`: the
block-diffusion families their own loop, every other family dllm's fast mode). Must not: import
torch, or know where files live (settings.py) or what a checkpoint is (catalog.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .errors import UsageError

LLADA_ALGS = ("low_confidence", "random")
DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
REMASK_ALGS = ("p2",)  # Open-dCoder's path planning: decoded tokens can be masked again
CACHE_MODES = ("none", "prefix", "dual", "exact")
DEFAULT_BLOCK = 32  # Fast-dLLM's best trade-off
# The published block-diffusion loops (block-causal models): SDAR's block_diffusion_generate,
# Stable-DiffCoder's generate_block, Fast-dLLM v2's block + sub-block generate, LLaDA2's
# threshold generate (2.0) with 2.1's token editing (`editing_threshold`).
BLOCK_LOOPS = ("sdar", "stable-diffcoder", "fast-dllm-v2", "llada2")
EDITING_OFF = ("off", "none")  # --editing-threshold values that turn LLaDA2.1's token editing off
BLOCK_CACHES = ("none", "exact")  # full recompute, or the exact block KV cache: the same tokens


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

    `block_loop` (block-causal models only) runs a published block-diffusion loop instead, with
    `block_length` = the checkpoint's attention block, `steps` // (gen_length / block_length)
    steps per block, `threshold` as that loop defines it, `cache` "exact" (the exact block KV
    cache) or "none" (full recompute; identical tokens) and, for fast-dllm-v2,
    `sub_block_length` (its small_block_size). The llada2 loop also revises: with
    `editing_threshold` set (LLaDA2.1), each step replaces already written tokens of the current
    block (never the prompt's) whose argmax changed with p > editing_threshold, and a block whose
    masks are all filled gets at most `max_post_steps` more steps of editing alone.
    docs/sampling.md has each loop's rules.
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
    block_loop: str | None = None  # one of BLOCK_LOOPS (block-causal models); None: the loops above
    sub_block_length: int | None = None  # fast-dllm-v2: sub-blocks decoded in order inside a block
    editing_threshold: float | None = None  # llada2: token editing (LLaDA2.1's T2T); None: off (2.0)
    max_post_steps: int = 16  # llada2 with editing: steps of editing alone after a block's masks are filled

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
        if self.block_loop is not None:
            self._check_block_loop()
        else:
            _check(self.cache != "exact", "cache 'exact' is the block-diffusion loops' cache (set block_loop)")
            _check(self.sub_block_length is None, "sub_block_length is Fast-dLLM v2's (block_loop 'fast-dllm-v2')")
        if self.block_loop != "llada2":
            _check(self.editing_threshold is None, "--editing-threshold is LLaDA2.1's token editing (the llada2 "
                   "loop of a LLaDA2 checkpoint); this model decodes without it")
        if self.parallel is None and self.alg in LLADA_ALGS:
            blocks = self.num_blocks
            _check(self.total_steps % blocks == 0,
                   f"--steps {self.total_steps} must be a multiple of the number of blocks ({blocks})")

    def _check_block_loop(self) -> None:
        loop = self.block_loop
        _check(loop in BLOCK_LOOPS, f"unknown block loop {loop!r}; choose one of {', '.join(BLOCK_LOOPS)}")
        algs = ("low_confidence",) if loop == "fast-dllm-v2" else LLADA_ALGS
        _check(self.alg in algs, f"--alg {self.alg} is not a {loop} remasking rule; use {' or '.join(algs)}")
        _check(self.block_length is not None, f"the {loop} loop decodes in blocks: set --block-length")
        _check(self.cache in BLOCK_CACHES, f"the {loop} loop's cache is 'exact' (or 'none': full recompute), "
               f"not {self.cache!r}")
        _check(self.factor is None and self.cfg_scale == 0 and not self.alg_temp,
               f"--factor, --cfg-scale and alg_temp are not part of the {loop} loop")
        _check(not (self.logits_eos_inf or self.confidence_eos_eot_inf),
               f"logits_eos_inf / confidence_eos_eot_inf are LLaDA's options, not the {loop} loop's")
        _check(self.total_steps >= self.num_blocks,
               f"--steps {self.total_steps} gives a block no step ({self.num_blocks} blocks)")
        if loop == "stable-diffcoder":
            _check(self.top_p is None and self.top_k is None, "the stable-diffcoder loop has no top_p / top_k")
        if loop == "llada2":
            e = self.editing_threshold
            _check(e is None or 0 <= e <= 1, "--editing-threshold must be in [0, 1] (0: edit on any "
                   "disagreement), or off")
            _check(self.max_post_steps >= 0, "max_post_steps must be >= 0")
        if loop == "fast-dllm-v2":
            _check(self.top_k is None, "the fast-dllm-v2 loop has no top_k")
            sub = self.sub_block_length
            _check(sub is None or (sub >= 1 and self.block % sub == 0),
                   f"sub_block_length {sub} must divide --block-length {self.block_length}")
        else:
            _check(self.sub_block_length is None, "sub_block_length is Fast-dLLM v2's (block_loop 'fast-dllm-v2')")

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
                     seed: int | None = None, alg: str | None = None,
                     editing_threshold: float | str | None = None) -> "SamplerConfig":
        """`base` (default: SamplerConfig(), dllm's fast mode) with the command-line options given
        (None: not given). The CLI's rules: 0 turns --block-length / --threshold off; a
        --gen-length without --block-length gets a block that divides it (fitting_block);
        --alg p2 (the whole canvas, no blocks, threshold or cache) turns both off unless given.
        A block-diffusion base (`block_loop`) keeps its block length: it is the checkpoint's.
        editing_threshold: a number in [0, 1] or "off" (EDITING_OFF; LLaDA2 checkpoints only)."""
        changes: dict[str, Any] = {k: v for k, v in dict(gen_length=gen_length, steps=steps,
                                                         temperature=temperature, seed=seed,
                                                         alg=alg).items() if v is not None}
        block_loop = base.block_loop if base is not None else None
        if block_loop is not None and alg is not None and alg not in LLADA_ALGS:
            raise UsageError(f"--alg {alg}: this checkpoint decodes with the {block_loop} block-diffusion loop; "
                             "use --alg low_confidence or random")
        if alg in REMASK_ALGS:
            changes.update(block_length=None, threshold=None, cache="none")
        if block_length is not None:
            changes["block_length"] = block_length or None
        elif gen_length is not None and alg not in REMASK_ALGS and block_loop is None:
            changes["block_length"] = fitting_block(gen_length)
        if threshold is not None:
            changes["threshold"] = threshold or None
        if editing_threshold is not None:
            changes["editing_threshold"] = parse_editing_threshold(editing_threshold)
        return (base or cls()).with_(**changes)

    @classmethod
    def reference(cls, gen_length: int = 128, block_length: int | None = 32,
                  alg: str = "low_confidence") -> "SamplerConfig":
        """The official loop: one token per step, the full canvas every step, no cache."""
        return cls(gen_length=gen_length, steps=gen_length, block_length=block_length, alg=alg,
                   threshold=None, cache="none", early_stop=False)


def parse_editing_threshold(value: float | str) -> float | None:
    """--editing-threshold's value: a number in [0, 1], or "off" / "none" (None: no editing)."""
    if isinstance(value, str):
        if value.strip().lower() in EDITING_OFF:
            return None
        try:
            value = float(value)
        except ValueError:
            raise UsageError(f"--editing-threshold {value!r} is not a number in [0, 1] or 'off'") from None
    if not 0 <= value <= 1:
        raise UsageError(f"--editing-threshold {value:g} must be in [0, 1] (0: edit on any disagreement), or off")
    return float(value)


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
    family: str  # "llada" | "dream" | "dream-coder" | "diffucoder" | "open-dcoder" | "dllm" | a block family
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
        # Block diffusion (block-causal attention, exact block KV cache; docs/models.md).
        Recipe("sdar-chat", "sdar", "own-template",
               SamplerConfig(gen_length=512, block_length=4, block_loop="sdar", alg="low_confidence",
                             threshold=0.9, cache="exact", early_stop=True),
               ("<|im_end|>", "<|endoftext|>"),
               "SDAR / TraDo / DiRL: greedy, 4 steps per 4-token block, low_confidence_dynamic at 0.9"),
        Recipe("stable-diffcoder-8b-instruct", "stable-diffcoder", "own-template",
               SamplerConfig(gen_length=512, block_length=4, block_loop="stable-diffcoder",
                             alg="low_confidence", threshold=None, cache="exact", early_stop=True),
               ("<[end\u2581of\u2581sentence]>",),
               "the README's call: steps = gen_length (4 per 4-token block), greedy, no threshold, eos stop"),
        Recipe("fast-dllm-v2", "fast-dllm-v2", "own-template",
               SamplerConfig(gen_length=512, block_length=32, sub_block_length=8, block_loop="fast-dllm-v2",
                             alg="low_confidence", threshold=0.9, top_p=0.95, cache="exact", early_stop=True),
               ("<|im_end|>",),
               "the chatbot's settings: 32-token blocks, 8-token sub-blocks, threshold 0.9, greedy"),
        Recipe("llada2.0-mini", "llada2.0", "own-template",
               SamplerConfig(gen_length=512, block_length=32, block_loop="llada2", alg="low_confidence",
                             threshold=0.95, cache="exact", early_stop=True),
               ("<|endoftext|>", "<|role_end|>"),
               "generate()'s defaults: greedy, 32 steps per 32-token block, threshold 0.95, no editing"),
        Recipe("llada2.1-mini", "llada2.1", "own-template",
               SamplerConfig(gen_length=512, block_length=32, block_loop="llada2", alg="low_confidence",
                             threshold=0.7, editing_threshold=0.5, max_post_steps=16, cache="exact",
                             early_stop=True),
               ("<|endoftext|>", "<|role_end|>"),
               "quality mode as the diffusers docs give it: threshold 0.7, editing 0.5, 16 post steps, greedy"),
        Recipe("fast", "any", "model", SamplerConfig()),
    )
}

# The recipe `dllm code` starts from for a checkpoint family (options given on the command line
# are applied over it). Block-diffusion checkpoints run their own loop; the 2025 families run
# dllm's fast mode (their official recipes above are opt-in: slow but faithful).
FAMILY_RECIPES = {"sdar": "sdar-chat", "sdar-moe": "sdar-chat", "stable-diffcoder": "stable-diffcoder-8b-instruct",
                  "fast-dllm-v2": "fast-dllm-v2", "llada2.0": "llada2.0-mini", "llada2.1": "llada2.1-mini"}


def family_sampler(family: str, block_length: int | None = None) -> SamplerConfig:
    """The default SamplerConfig for a checkpoint family: its recipe's (block-diffusion families,
    with `block_length` = the block the checkpoint attends in), else dllm's fast mode."""
    name = FAMILY_RECIPES.get(family)
    if name is None:
        return SamplerConfig()
    cfg = RECIPES[name].sampler
    if block_length is not None and block_length != cfg.block_length:
        gen = max(cfg.gen_length // block_length, 1) * block_length
        sub = cfg.sub_block_length if cfg.sub_block_length and block_length % cfg.sub_block_length == 0 else None
        cfg = cfg.with_(block_length=block_length, gen_length=gen, sub_block_length=sub)
    return cfg


def recipe(name: str) -> Recipe:
    """The recipe called `name` (see RECIPES); raises UsageError for an unknown one."""
    key = name.lower()
    if key not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[key]
