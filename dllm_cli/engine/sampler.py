"""Denoising loops: turn a canvas of masks into tokens, yielding one event per step.

Knows: LLaDA's semi-autoregressive block loop (low_confidence / random remasking, its transfer
schedule, fp64 Gumbel, cfg_scale, logits_eos_inf, confidence_eos_eot_inf); Dream's time-schedule
loop (origin / maskgit_plus / topk_margin / entropy, eps, temperature, top_p, top_k, alg_temp);
Open-dCoder's p2 (path planning: every step re-samples the region and masks the least confident
tokens again, so decoded tokens can be revised);
Fast-dLLM threshold and factor decoding inside blocks; the block KV cache (prefix / dual, with
the finished block's K/V written late instead of a full refresh); early stop once a committed
stop token has only masks after it; an optional fixed suffix after the masks (anchored
infilling). Talks to the model only through `engine.model.Denoiser` (aligned logits,
`new_cache()`, `window=(s, e)`, `tokens`, `attention_block`), the contract in
docs/architecture.md.

Block diffusion (`cfg.block_loop`, for block-causal models): SDAR's `block_diffusion_generate`,
Stable-DiffCoder's `generate_block`, Fast-dLLM v2's block + sub-block loop with its token
shift, and LLaDA2's threshold `generate` with LLaDA2.1's token editing (mask-to-token and
token-to-token updates from one forward; written tokens of the current block are revised,
never the prompt's or an earlier block's), as published, over the exact block KV cache (or
full recompute, `cache="none"`: the same tokens). Its phases are `block_plan` (canvas and
blocks: how the prompt meets the first block), `_BlockRun.block_logits` / `next_token_logits`
(the forwards), `*_propose` (tokens and confidences), `*_select` / `llada2_edits` (which
positions to write) and `_BlockRun.commit` (the event).

Must not: import rich/typer/git, decode text, or know which checkpoint layout the model has.
Sources: ML-GSAI/LLaDA generate.py, DreamLM/Dream generation_utils.py, NVlabs/Fast-dLLM,
Open-dCoder's `_mdm_sample`, JetAstra/SDAR generate.py, ByteDance-Seed Stable-DiffCoder's
`generate_block`, Fast-dLLM v2's `generate`, inclusionAI's LLaDA2 `generate` (2.0) and the
LLaDA2.1 editing loop as sglang's JointThreshold and diffusers' BlockRefinementScheduler
implement it; docs/sampling.md explains every option and cites them.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from ..config import DREAM_ALGS, LLADA_ALGS, REMASK_ALGS, SamplerConfig
from ..errors import UsageError
from ..events import DenoiseStep, SpecialTokens
from .model import Denoiser, attention_block

CACHE_REFRESH = ("delayed", "block", "step")
_ENTROPY_EPS = 1e-10  # Dream's sample_tokens: log(p + 1e-10)


def denoise(model: Denoiser, prompt_ids: Sequence[int] | torch.Tensor, cfg: SamplerConfig | None = None, *,
            suffix_ids: Sequence[int] | torch.Tensor | None = None, cache_refresh: str = "delayed",
            compile: bool = False) -> Iterator[DenoiseStep]:
    """Denoise `cfg.gen_length` masks after `prompt_ids` (batch 1), yielding a DenoiseStep per step.

    suffix_ids: tokens after the masks (anchored infilling, `dllm_cli.infill`): they stay fixed
    and are attended to like the prompt; the generated region sits between the two.

    cache_refresh (only with cfg.cache != "none"): "delayed" writes each finished block's K/V in
    the next block's first forward (default); "block" re-runs the full canvas at every block start
    (Fast-dLLM as published); "step" re-runs it at every step (exact; for tests).
    compile: wrap model.logits in torch.compile on CUDA (ignored on other devices).
    """
    start = time.perf_counter()
    cfg = cfg if cfg is not None else SamplerConfig()
    if cache_refresh not in CACHE_REFRESH:
        raise UsageError(f"unknown cache refresh {cache_refresh!r}; choose one of {', '.join(CACHE_REFRESH)}")
    prompt = prompt_tensor(prompt_ids, model)
    suffix = prompt_tensor(suffix_ids, model, "suffix") if suffix_ids is not None and len(suffix_ids) else None
    block = attention_block(model)
    if block is not None or cfg.block_loop is not None:
        check_block_loop(cfg, block, suffix is not None)
        return _BlockRun(model, prompt, cfg, _logits_fn(model, compile), start).steps()
    return _steps(model, prompt, suffix, cfg, cache_refresh, compile, start)


def cut_at_stop(tokens: Sequence[int], stop_token_ids: Iterable[int]) -> list[int]:
    """The answer: `tokens` up to (not including) the first stop token."""
    stops = set(stop_token_ids)
    for i, t in enumerate(tokens):
        if t in stops:
            return list(tokens[:i])
    return list(tokens)


# ---- schedules (plain ints, shared with tests and docs) ----------------------------------

def llada_schedule(masks: int, steps: int) -> list[int]:
    """LLaDA get_num_transfer_tokens: ⌊m/steps⌋ per step, one more for the first m mod steps."""
    base, extra = divmod(masks, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def dream_timesteps(steps: int, eps: float) -> torch.Tensor:
    """t = linspace(1, eps, steps + 1) in float32 on the CPU, as Dream computes it."""
    return torch.linspace(1, eps, steps + 1)


def dream_k(masks: int, ts: torch.Tensor, i: int) -> int:
    """Dream's count at step i: int(M·(1 − s/t)) in float32, all M at the last step."""
    if i == len(ts) - 2:
        return masks
    return int(torch.tensor(float(masks)) * (1 - ts[i + 1] / ts[i]))


def dream_schedule(masks: int, steps: int, eps: float = 1e-3) -> list[int]:
    """Tokens per step of Dream's confidence algs when every step commits exactly its count."""
    ts, counts = dream_timesteps(steps, eps), []
    for i in range(steps):
        counts.append(dream_k(masks, ts, i))
        masks -= counts[-1]
    return counts


def block_steps(cfg: SamplerConfig) -> list[int]:
    """Step budget of each block: cfg.total_steps spread evenly, earlier blocks first, ≥ 1 each."""
    base, extra = divmod(cfg.total_steps, cfg.num_blocks)
    return [max(1, base + (1 if b < extra else 0)) for b in range(cfg.num_blocks)]


# ---- the loop ------------------------------------------------------------------------------

def prompt_tensor(prompt_ids: Sequence[int] | torch.Tensor, model: Denoiser, what: str = "prompt") -> torch.Tensor:
    """The ids as a 1-D long tensor on the model's device; UsageError if empty or holding a mask."""
    ids = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(-1).to(model.device)
    if ids.numel() == 0:
        raise UsageError(f"the {what} is empty; give denoise() at least one token id")
    if bool((ids == model.tokens.mask).any()):
        raise UsageError(f"the {what} contains the mask token id {model.tokens.mask}; "
                         "remove it (masks are for the generated region only)")
    return ids


class _Canvas:
    """The device canvas (1, P + gen_length + S) and its host copy of the generated region."""

    def __init__(self, model: Denoiser, prompt: torch.Tensor, gen_length: int, suffix: torch.Tensor | None = None):
        self.mask, self.P, self.N = model.tokens.mask, prompt.numel(), gen_length
        S = 0 if suffix is None else suffix.numel()
        self.x = torch.full((1, self.P + gen_length + S), self.mask, dtype=torch.long, device=prompt.device)
        self.x[0, :self.P] = prompt
        if suffix is not None and S:
            self.x[0, self.P + gen_length:] = suffix
        self.tokens = [self.mask] * gen_length  # host copy of x[0, P:]

    def masked(self, bs: int, be: int) -> list[int]:
        """Canvas positions still masked in [bs, be)."""
        return [p for p in range(bs, be) if self.tokens[p - self.P] == self.mask]

    def masks_left(self) -> int:
        return self.tokens.count(self.mask)


def generator(device: torch.device, seed: int | None) -> torch.Generator:
    """A generator on `device`: seeded, or from fresh entropy when seed is None."""
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()
    return gen


def _steps(model: Denoiser, prompt: torch.Tensor, suffix: torch.Tensor | None, cfg: SamplerConfig,
           refresh: str, compile: bool, start: float) -> Iterator[DenoiseStep]:
    canvas = _Canvas(model, prompt, cfg.gen_length, suffix)
    if cfg.alg in REMASK_ALGS:
        yield from _p2_steps(model, canvas, cfg, _logits_fn(model, compile), start)
        return
    fwd = _Forwarder(model, cfg, refresh, canvas.P, compile)
    gen = generator(canvas.x.device, cfg.seed)
    index = 0
    for b, n_steps in enumerate(block_steps(cfg)):
        bs = canvas.P + b * cfg.block
        be = bs + cfg.block
        fwd.begin_block(bs)
        counts = llada_schedule(len(canvas.masked(bs, be)), n_steps) if cfg.alg in LLADA_ALGS else None
        ts = dream_timesteps(n_steps, cfg.eps) if cfg.alg in DREAM_ALGS else None
        for i in range(n_steps):
            rows = canvas.masked(bs, be)
            if not rows:
                break  # threshold/factor finished the block early
            step = _step(model, cfg, canvas, fwd, gen, rows, bs, be, i, n_steps, counts, ts)
            if step is None:
                continue
            revealed, probs = step
            if cfg.early_stop:
                fill = _early_stop_fill(canvas.tokens, canvas.mask, model.tokens.stops)
                for pos in fill:
                    canvas.tokens[pos] = model.tokens.eos
                revealed, probs = _merge(revealed, probs, fill)
            done = canvas.masks_left() == 0
            yield DenoiseStep(index, list(canvas.tokens), revealed, probs, fwd.count,
                              time.perf_counter() - start, done)
            index += 1
            if done:
                return
    assert canvas.masks_left() == 0, "every schedule ends with no masks left"


def p2_masked(n: int, i: int, steps: int) -> int:
    """Open-dCoder's p2: positions of the n-token region left masked after step i (0-based):
    ⌊n·(1 − κ)⌋ with κ = (i + 1)/steps, computed in float32 as the official loop does."""
    return int(torch.tensor(float(n)) * (1 - (i + 1) / steps))


def _p2_steps(model: Denoiser, canvas: _Canvas, cfg: SamplerConfig, call: Callable[..., torch.Tensor],
              start: float) -> Iterator[DenoiseStep]:
    """Path planning (Open-dCoder's "p2"): each step runs the full canvas, samples every position
    of the region (Dream's sample_tokens: temperature, top_p, top_k; confidence p(x0)), then masks
    the p2_masked(...) least confident positions, decoded ones included; masked positions outside
    that set take their sample, decoded ones keep their token. No cache, blocks or early stop."""
    gen = generator(canvas.x.device, cfg.seed)
    P, N, mask = canvas.P, canvas.N, canvas.mask
    steps = cfg.total_steps
    for i in range(steps):
        region = canvas.x[0, P:P + N]
        masked = region == mask
        if not bool(masked.any()):  # the official loop stops once nothing is masked
            break
        lg = call(canvas.x)[0, P:P + N].float()  # (N, V)
        x0, prob, conf = dream_propose(lg, cfg, model.tokens.mask, gen)
        k = p2_masked(N, i, steps)
        again = torch.zeros(N, dtype=torch.bool, device=region.device)
        again[torch.argsort(conf, stable=True)[:k]] = True  # ascending: least confident first
        new = torch.where(again, torch.full_like(region, mask), torch.where(masked, x0, region))
        canvas.x[0, P:P + N] = new
        tokens, was, ps = torch.stack([new.double(), masked.double(), prob.double()]).tolist()  # one sync
        tokens = [int(t) for t in tokens]
        revealed = [p for p in range(N) if was[p] and tokens[p] != mask]
        remasked = [p for p in range(N) if not was[p] and tokens[p] == mask]
        canvas.tokens = tokens
        done = mask not in tokens
        yield DenoiseStep(i, list(tokens), revealed, [ps[p] for p in revealed], i + 1,
                          time.perf_counter() - start, done, remasked)
        if done:
            return


def _step(model, cfg, canvas, fwd, gen, rows, bs, be, i, n_steps, counts, ts):
    """One step over the masked `rows` of block [bs, be): forward, choose, commit. -> host lists."""
    k = _planned(cfg, len(rows), i, n_steps, counts, ts)
    if k == 0:
        return None  # the official loop runs a forward here and commits nothing: skip the step
    dev = canvas.x.device
    local = torch.tensor([p - bs for p in rows], device=dev)  # (M,) rows of the block
    logits = fwd.logits(canvas.x, bs, be)  # (B, L, V)
    lg = _guided(logits, local, cfg.cfg_scale)  # (M, V) fp32
    if cfg.logits_eos_inf:
        lg[:, model.tokens.eos] = -torch.inf
    accept, x0, prob = _decide(lg, cfg, model, gen, k, i, n_steps, ts, rows, canvas.x.shape[1])
    canvas.x[0, local + bs] = torch.where(accept, x0, torch.full_like(x0, canvas.mask))
    flags, toks, ps = torch.stack([accept.double(), x0.double(), prob.double()]).tolist()  # the one sync
    revealed, probs = [], []
    for pos, f, t, p in zip(rows, flags, toks, ps):
        if f:
            canvas.tokens[pos - canvas.P] = int(t)
            revealed.append(pos - canvas.P)
            probs.append(p)
    return revealed, probs


def _planned(cfg, masks, i, n_steps, counts, ts) -> int | None:
    """Tokens to commit at step i of a block: exact for fixed schedules, the minimum for
    threshold/factor (enough to finish the block within its step budget), None for origin."""
    if cfg.parallel is not None:
        return max(1, math.ceil(masks / (n_steps - i)))
    if cfg.alg in LLADA_ALGS:
        return counts[i]
    if cfg.alg == "origin":
        return None
    return dream_k(masks, ts, i)


def _guided(logits: torch.Tensor, local: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """(B, L, V) -> (M, V) fp32 logits of the masked rows; with cfg: un + (s + 1)(cond − un)."""
    cond = logits[0, local].float()
    if cfg_scale <= 0:
        return cond
    un = logits[1, local].float()
    return un + (cfg_scale + 1) * (cond - un)


def _decide(lg, cfg, model, gen, k, i, n_steps, ts, rows, canvas_len):
    """Choose tokens and which rows to commit. -> accept (M,) bool, x0 (M,), p(x0) (M,)."""
    M = lg.shape[0]
    if cfg.alg == "origin" and cfg.parallel is None:
        p_transfer = 1 - ts[i + 1] / ts[i] if i < n_steps - 1 else 1
        move = torch.rand(M, generator=gen, device=lg.device) < p_transfer  # drawn first, as Dream
        x0, prob, _ = dream_propose(lg, cfg, model.tokens.mask, gen)
        return move, x0, prob
    if cfg.alg in LLADA_ALGS:
        x0, prob, prio = _llada_propose(lg, cfg, model.tokens, gen)
        if cfg.alg == "random" and cfg.parallel is None:
            u = torch.rand((1, canvas_len), generator=gen, device=lg.device)  # (1, T) as LLaDA draws it
            prio = u[0, torch.tensor(rows, device=lg.device)]
        elif cfg.alg == "random":
            prio = prob
    else:
        x0, prob, prio = dream_propose(lg, cfg, model.tokens.mask, gen)
        if cfg.parallel:
            prio = prob
    if cfg.parallel is not None:
        return _parallel_accept(prio, cfg, k), x0, prob
    if cfg.alg in DREAM_ALGS and cfg.alg_temp:  # Gumbel-top-k == k draws from softmax(conf/alg_temp)
        u = torch.rand(M, generator=gen, device=lg.device, dtype=torch.float64)
        prio = prio.double() / cfg.alg_temp - torch.log(-torch.log(u))
    accept = torch.zeros(M, dtype=torch.bool, device=lg.device)
    accept[torch.topk(prio, k).indices] = True
    return accept, x0, prob


def _llada_propose(lg: torch.Tensor, cfg: SamplerConfig, tokens: SpecialTokens,
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x0 by argmax (T = 0) or fp64 Gumbel-max; p(x0) untempered; ranking per LLaDA."""
    pick = _without_mask(lg, tokens.mask)
    if cfg.temperature > 0:
        u = torch.rand(lg.shape, generator=gen, device=lg.device, dtype=torch.float64)
        # fp64: low-precision Gumbel hurts. argmax(exp(l)/(-log u)^T) == argmax(l - T·log(-log u))
        x0 = torch.argmax(pick.double() - cfg.temperature * torch.log(-torch.log(u)), dim=-1)
    else:
        x0 = torch.argmax(pick, dim=-1)
    prob = torch.softmax(lg, dim=-1).gather(-1, x0[:, None])[:, 0]
    if not cfg.confidence_eos_eot_inf:
        return x0, prob, prob
    # LLaDA sets the eos/eot logits to -inf after choosing x0 and then takes softmax(logits)[x0]:
    # eos-like picks get p = 0 and the other rows renormalise. At T > 0 only eot is hit there.
    hit = sorted(tokens.stops if cfg.temperature == 0 else set(tokens.stops) - {tokens.eos})
    cut = lg.clone()
    cut[:, hit] = -torch.inf
    return x0, prob, torch.softmax(cut, dim=-1).gather(-1, x0[:, None])[:, 0]


def dream_propose(lg: torch.Tensor, cfg: SamplerConfig, mask_id: int,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dream's sample_tokens on (M, V) logits -> x0, p(x0), the alg's confidence."""
    logits = lg / cfg.temperature if cfg.temperature > 0 else lg
    if cfg.top_p is not None and cfg.top_p < 1:
        logits = _top_p(logits, cfg.top_p)
    if cfg.top_k is not None:
        logits = _top_k(logits, cfg.top_k)
    probs = torch.softmax(logits, dim=-1)
    if cfg.temperature > 0:
        w = _without_mask(probs, mask_id, 0.0)
        dead = w.sum(-1, keepdim=True) <= 0  # only the mask survived top-p/top-k (random weights)
        w = torch.where(dead, _without_mask(torch.ones_like(w), mask_id, 0.0), w)
        x0 = torch.multinomial(w, 1, generator=gen)[:, 0]
    else:
        x0 = torch.argmax(_without_mask(probs, mask_id, -1.0), dim=-1)
    prob = probs.gather(-1, x0[:, None])[:, 0]
    if cfg.alg == "topk_margin":
        top2 = probs.topk(2, dim=-1).values
        return x0, prob, top2[:, 0] - top2[:, 1]
    if cfg.alg == "entropy":
        return x0, prob, (probs * torch.log(probs + _ENTROPY_EPS)).sum(-1)
    return x0, prob, prob


def _without_mask(t: torch.Tensor, mask_id: int, fill: float = -torch.inf) -> torch.Tensor:
    """A copy of (M, V) scores where the mask token can never be picked. Trained models never
    propose it (so this changes nothing there); random weights can, and a committed mask would
    leave a hole no schedule fills. Probabilities/confidences still use the unmodified scores."""
    t = t.clone()
    t[:, mask_id] = fill
    return t


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter keeping at least the top-1 (Dream's top_p_logits)."""
    sorted_logits, order = torch.sort(logits, descending=True)
    drop = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1) > top_p
    drop[..., 1:] = drop[..., :-1].clone()  # keep the first token above the threshold
    drop[..., 0] = False
    mask = torch.zeros_like(drop).scatter_(-1, order, drop)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def _top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    kth = torch.topk(logits, min(top_k, logits.shape[-1]))[0][..., -1, None]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def _parallel_accept(prio: torch.Tensor, cfg: SamplerConfig, k_min: int) -> torch.Tensor:
    """Fast-dLLM: the leading run of sorted confidences passing the threshold (c ≥ τ) or the
    factor rule (c_n ≥ 1 − f/(n + 1), n from 1), and never fewer than k_min (≥ 1)."""
    sorted_p, order = torch.sort(prio, descending=True)
    rank = torch.arange(prio.numel(), device=prio.device)
    if cfg.threshold is not None:
        ok = sorted_p >= cfg.threshold
    else:
        assert cfg.factor is not None
        ok = sorted_p >= 1 - cfg.factor / (rank + 2)
    lead = torch.cumprod(ok.int(), dim=0).bool()
    take = lead | (rank < k_min)
    return torch.zeros_like(take).scatter(0, order, take)


def _early_stop_fill(tokens: list[int], mask: int, stop_ids: frozenset[int]) -> list[int]:
    """Positions to fill with eos once every mask lies after a committed stop token, else []."""
    first = next((i for i, t in enumerate(tokens) if t in stop_ids), None)
    if first is None or mask in tokens[:first]:
        return []
    return [i for i in range(first + 1, len(tokens)) if tokens[i] == mask]


def _merge(revealed: list[int], probs: list[float], fill: list[int]):
    if not fill:
        return revealed, probs
    pairs = sorted(list(zip(revealed, probs)) + [(p, 0.0) for p in fill])
    return [p for p, _ in pairs], [c for _, c in pairs]


# ---- forwards and the block KV cache -------------------------------------------------------

class _Forwarder:
    """Runs the model for a block and counts forwards; owns the KV cache of one denoise() run.

    cache "none": the full canvas every step. "prefix": queries from the block start to the end
    of the canvas against cached K/V of everything left of the block. "dual": queries only in the
    block, K/V of the prefix and of the masked suffix from the cache. The first forward of a run
    is always a full pass that writes every K/V (and decodes the first step).
    """

    def __init__(self, model: Denoiser, cfg: SamplerConfig, refresh: str, prompt_len: int, compile: bool):
        self.model, self.mode, self.refresh = model, cfg.cache, refresh
        self.cfg_scale, self.P = cfg.cfg_scale, prompt_len
        self.call = _logits_fn(model, compile)
        self.cache: Any = None
        self.count = 0
        self.block_start: int | None = None
        self.pending: int | None = None
        self.first = True

    def begin_block(self, bs: int) -> None:
        self.pending = self.block_start  # the finished block whose final K/V are not written yet
        self.block_start, self.first = bs, True

    def logits(self, x: torch.Tensor, bs: int, be: int) -> torch.Tensor:
        """(1, T) canvas -> (B, be - bs, V) aligned logits of the block (B = 2 with cfg_scale)."""
        ids = self._batch(x)
        first, self.first = self.first, False
        self.count += 1
        if self.mode == "none":
            return self.call(ids)[:, bs:be]
        end = ids.shape[1] if self.mode == "prefix" else be
        if self.refresh == "step":  # exact: rewrite every K/V, then query the window
            self.cache = self.cache or self.model.new_cache()
            self.call(ids, cache=self.cache)
            self.count += 1
            return self.call(ids, cache=self.cache, window=(bs, end))[:, :be - bs]
        if self.cache is None or (first and self.refresh == "block"):
            self.cache = self.cache or self.model.new_cache()
            return self.call(ids, cache=self.cache)[:, bs:be]
        s = self.pending if first and self.pending is not None else bs  # delayed write
        return self.call(ids, cache=self.cache, window=(s, end))[:, bs - s:be - s]

    def _batch(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg_scale <= 0:
            return x
        un = x.clone()
        un[:, :self.P] = self.model.tokens.mask  # unconditional copy: prompt masked
        return torch.cat([x, un], dim=0)  # (2, T)


def _logits_fn(model: Denoiser, compile: bool) -> Callable[..., torch.Tensor]:
    """model.logits, or its torch.compile'd version on CUDA when asked (GPU-only, see docs)."""
    if compile and torch.device(model.device).type == "cuda":
        return torch.compile(model.logits)  # shapes: full canvas, block, 2 blocks (prefix: shrinking)
    return model.logits


# ---- block diffusion: SDAR, Stable-DiffCoder, Fast-dLLM v2 -----------------------------------

def check_block_loop(cfg: SamplerConfig, block: int | None, has_suffix: bool) -> None:
    """The model and the loop must agree: a block loop needs a block-causal model whose attention
    block is cfg.block_length, and block-causal models decode only with a block loop."""
    if block is None:
        raise UsageError(f"the {cfg.block_loop} loop needs a block-causal model (SDAR, Stable-DiffCoder, "
                         "Fast-dLLM v2, LLaDA2); this model attends bidirectionally: leave block_loop unset")
    if cfg.block_loop is None:
        raise UsageError("this model attends block-causally and decodes with its own loop: use its recipe "
                         "(dllm_cli.config.family_sampler(family, block), or SamplerConfig(block_loop=...))")
    if cfg.block_length != block:
        raise UsageError(f"this checkpoint attends in blocks of {block} tokens (config.json block_size / bd_size, "
                         f"else its published block); --block-length must be {block}, not {cfg.block_length}")
    if has_suffix:
        raise UsageError("a block-diffusion model cannot fill a region between a prefix and a suffix (its "
                         "attention is causal across blocks): use chat mode (--no-infill)")


@dataclass(frozen=True)
class BlockPlan:
    """Where a block-diffusion run writes: canvas positions [prompt_len, end) are generated,
    blocks are aligned at absolute position 0 (the prompt included), so the first block holds
    the prompt's last prompt_len % B tokens before its masks, and the prompt's whole blocks are
    prefilled once (with the block-causal mask)."""

    prompt_len: int
    end: int
    blocks: tuple[tuple[int, int], ...]  # (start, end) of each decoded block
    steps_per_block: int

    @property
    def prefill(self) -> int:
        return self.blocks[0][0]


def block_plan(cfg: SamplerConfig, prompt_len: int) -> BlockPlan:
    """The canvas of each loop, as the official code builds it (G = gen_length, B = block):
    sdar and llada2: ceil((P + G) / B) * B positions (they round the last block up); stable-diffcoder:
    exactly P + G (its last block is cut to P mod B tokens); fast-dllm-v2: floor(P / B) * B + G
    (G // B blocks from the block that holds the prompt's end). Steps per block:
    steps // (G / B) (SDAR's denoising_steps; Stable-DiffCoder's steps // gen_blocks)."""
    B, G, P = cfg.block, cfg.gen_length, prompt_len
    first = P // B * B
    if cfg.block_loop in ("sdar", "llada2"):
        end = -(-(P + G) // B) * B
    elif cfg.block_loop == "stable-diffcoder":
        end = P + G
    else:
        end = first + G
    blocks = tuple((b, min(b + B, end)) for b in range(first, end, B))
    return BlockPlan(P, end, blocks, max(1, cfg.total_steps // cfg.num_blocks))


def sdar_propose(lg: torch.Tensor, cfg: SamplerConfig, mask_id: int,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """SDAR's sample_with_temperature_topk_topp on the block's (L, V) logits -> x0, p(x0): ÷ T
    (unless T = 1), top-k, then top-p, softmax, one multinomial draw per row. T = 0 is argmax with
    p = softmax(logits)[argmax] (the official file has no greedy path; lmdeploy's and sglang's)."""
    if cfg.temperature == 0:
        probs = torch.softmax(lg, dim=-1)
        x0 = torch.argmax(_without_mask(probs, mask_id, -1.0), dim=-1)
        return x0, probs.gather(-1, x0[:, None])[:, 0]
    logits = lg / cfg.temperature if cfg.temperature != 1 else lg
    if cfg.top_k is not None:
        logits = _top_k(logits, cfg.top_k)
    if cfg.top_p is not None and cfg.top_p < 1:
        logits = _top_p(logits, cfg.top_p)
    probs = torch.softmax(logits, dim=-1)
    x0 = _draw(probs, mask_id, gen)
    return x0, probs.gather(-1, x0[:, None])[:, 0]


def _draw(probs: torch.Tensor, mask_id: int, gen: torch.Generator) -> torch.Tensor:
    """One multinomial draw per row of (L, V) probabilities, never the mask token (a row left with
    nothing else, as random weights can give, draws uniformly from the other tokens)."""
    w = _without_mask(probs, mask_id, 0.0)
    dead = w.sum(-1, keepdim=True) <= 0
    w = torch.where(dead, _without_mask(torch.ones_like(w), mask_id, 0.0), w)
    return torch.multinomial(w, 1, generator=gen)[:, 0]


def sdar_select(conf: torch.Tensor, masked: torch.Tensor, k: int, threshold: float | None,
                masks: int | None = None) -> torch.Tensor:
    """SDAR's choice among the block's masked rows (conf: -inf elsewhere; `masks` their number,
    when the caller knows it without a device sync). threshold None (low_confidence_static): the
    top-k. threshold t (low_confidence_dynamic): every masked row with p > t (strict) if there are
    at least k of them, else the top-k. k is clamped to the masks left: the official topk is not,
    and overwrites prompt tokens in the first block when k exceeds them (docs/sampling.md)."""
    k = min(k, int(masked.sum()) if masks is None else masks)
    accept = torch.zeros_like(masked)
    if k > 0:
        accept[torch.topk(conf, k).indices] = True
    if threshold is None:
        return accept
    high = (conf > threshold) & masked
    return torch.where(high.sum() >= k, high, accept)  # on the device: no sync


def sdc_propose(lg: torch.Tensor, cfg: SamplerConfig, mask_id: int,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable-DiffCoder's _get_transfer_index proposal on the block's (L, V) logits -> x0 and its
    confidence: argmax at T = 0, else Gumbel-max in float64 (argmax exp(l) / (-log u)^T, computed
    as l - T log(-log u)); low_confidence: softmax(logits in float64)[x0]; random: U(0, 1)."""
    pick = _without_mask(lg, mask_id)
    if cfg.temperature > 0:
        u = torch.rand(lg.shape, generator=gen, device=lg.device, dtype=torch.float64)
        x0 = torch.argmax(pick.double() - cfg.temperature * torch.log(-torch.log(u)), dim=-1)
    else:
        x0 = torch.argmax(pick, dim=-1)
    if cfg.alg == "random":
        return x0, torch.rand(lg.shape[0], generator=gen, device=lg.device).double()
    return x0, torch.softmax(lg.double(), dim=-1).gather(-1, x0[:, None])[:, 0]


def sdc_select(conf: torch.Tensor, masked: torch.Tensor, k: int, threshold: float | None,
               masks: int | None = None) -> torch.Tensor:
    """Stable-DiffCoder's choice (conf: -inf outside the masked rows; `masks` their number): the
    top-k without a threshold; with one, the most confident masked row plus every masked row with
    p >= t (never fewer than k, the minimum that finishes the block within its steps: 1 whenever
    steps >= masks, where this is the official rule)."""
    accept = torch.zeros_like(masked)
    m = int(masked.sum()) if masks is None else masks
    order = torch.topk(conf, m if threshold is not None else min(k, m)).indices
    accept[order] = True
    if threshold is not None:
        rank = torch.arange(m, device=conf.device)
        accept[order] = (rank < max(1, k)) | (conf[order] >= threshold)
    return accept


def v2_propose(lg: torch.Tensor, cfg: SamplerConfig, mask_id: int,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Fast-dLLM v2's sample_with_top_p on a sub-block's (L, V) logits -> x0, p(x0): T = 0 is the
    argmax of the softmax; else softmax(l / T), top-p (probabilities past the nucleus set to 0,
    the first always kept) renormalised, one multinomial draw per row."""
    if cfg.temperature == 0:
        probs = torch.softmax(lg, dim=-1)
        x0 = torch.argmax(_without_mask(probs, mask_id, -1.0), dim=-1)
        return x0, probs.gather(-1, x0[:, None])[:, 0]
    probs = torch.softmax(lg / cfg.temperature, dim=-1)
    if cfg.top_p is not None and cfg.top_p < 1:
        sorted_p, order = torch.sort(probs, descending=True)
        drop = torch.cumsum(sorted_p, dim=-1) > cfg.top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        probs = probs.masked_fill(torch.zeros_like(drop).scatter_(-1, order, drop), 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    x0 = _draw(probs, mask_id, gen)
    return x0, probs.gather(-1, x0[:, None])[:, 0]


def v2_select(conf: torch.Tensor, masked: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Fast-dLLM v2's choice in a sub-block (conf: -inf outside its masked rows): every masked row
    with p > t (strict) plus the most confident one; threshold None is its default t = 1 (exactly
    one token per forward)."""
    accept = conf > (1.0 if threshold is None else threshold)
    accept[torch.argmax(conf)] = True
    return accept & masked


def llada2_edits(x0: torch.Tensor, prob: torch.Tensor, current: torch.Tensor, editable: torch.Tensor,
                 editing_threshold: float) -> torch.Tensor:
    """LLaDA2.1's token-to-token set Δ: the editable rows (written, not the prompt's) whose
    proposal differs from what is written and has p > editing_threshold (strict: 0 edits on any
    disagreement, as sglang and the MLX port read it)."""
    return editable & (x0 != current) & (prob > editing_threshold)


class _BlockRun:
    """One block-diffusion denoise() run (batch 1): the canvas, the forwards over the exact
    BlockKVCache (cfg.cache "exact") or full recomputes ("none"), the random stream, the events.

    With the cache, every forward runs the positions the cache does not hold yet up to the
    current block's end and keeps what precedes the block: the first one prefills the prompt,
    each block's first one also writes the finished previous block's final K/V (one forward, not
    the official extra one), and the block's own K/V are cropped away until it is finished.
    Fast-dLLM v2's next-token step after a block is the forward that keeps it.
    """

    def __init__(self, model: Denoiser, prompt: torch.Tensor, cfg: SamplerConfig,
                 call: Callable[..., torch.Tensor], start: float):
        self.model, self.cfg, self.call, self.start = model, cfg, call, start
        self.plan = block_plan(cfg, prompt.numel())
        self.mask, self.P = model.tokens.mask, prompt.numel()
        self.x = torch.full((1, self.plan.end), self.mask, dtype=torch.long, device=prompt.device)
        self.x[0, :self.P] = prompt
        self.tokens = [self.mask] * (self.plan.end - self.P)  # host copy of x[0, P:end]
        self.cache = model.new_cache() if cfg.cache == "exact" else None
        self.gen = generator(prompt.device, cfg.seed)
        self.forwards = self.index = 0

    # ---- forwards ------------------------------------------------------------------------

    def block_logits(self, bs: int, be: int, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """(b - a, V) fp32 aligned logits of positions rows = (a, b) (default: the block), from a
        forward of the block [bs, be) given everything before it."""
        a, b = rows or (bs, be)
        self.forwards += 1
        if self.cache is None:
            return self.call(self.x[:, :be], window=(bs, be), rows=(a, b))[0].float()
        s = self.cache.length
        out = self.call(self.x[:, :be], cache=self.cache, window=(s, be), rows=(a, b))
        self.cache.crop(bs)
        return out[0].float()

    def next_token_logits(self, pos: int) -> torch.Tensor:
        """(V,) fp32 logits that score position `pos` from the positions before it (Fast-dLLM v2's
        next-token step: the last query of the finished block or prompt, shifted); with the cache
        this forward also keeps everything before `pos`."""
        self.forwards += 1
        if self.cache is None:
            return self.call(self.x[:, :pos + 1], window=(pos - 1, pos + 1), rows=(pos, pos + 1))[0, -1].float()
        s = self.cache.length
        out = self.call(self.x[:, :pos + 1], cache=self.cache, window=(s, pos + 1), rows=(pos, pos + 1))
        self.cache.crop(pos)
        return out[0, -1].float()

    # ---- commit and events ---------------------------------------------------------------

    def masked(self, bs: int, be: int) -> torch.Tensor:
        """(be - bs,) bool, device: the block's rows still masked."""
        return self.x[0, bs:be] == self.mask

    def masks_left(self, bs: int, be: int) -> int:
        """How many of [bs, be) are masked, from the host copy (prompt positions never are)."""
        return self.tokens[max(bs, self.P) - self.P:max(be, self.P) - self.P].count(self.mask)

    def commit(self, bs: int, accept: torch.Tensor, x0: torch.Tensor, prob: torch.Tensor,
               edit: torch.Tensor | None = None) -> DenoiseStep:
        """Write x0 where accept (a reveal) or `edit` (a revision) in the rows of the block at bs;
        one host sync. The llada2 loop passes `edit` (zeros without editing): its block can still
        change until it ends, so there is no early stop inside it and the step is not `done`
        (block_end decides both); the other loops stop early after any step."""
        n = accept.numel()
        write = accept if edit is None else accept | edit
        self.x[0, bs:bs + n] = torch.where(write, x0, self.x[0, bs:bs + n])  # no boolean indexing: no sync
        rows = [accept, x0, prob] if edit is None else [accept, x0, prob, edit]
        cols = torch.stack([r.double() for r in rows]).tolist()
        edits = cols[3] if edit is not None else [0.0] * n
        revealed: list[int] = []
        edited: list[int] = []
        probs: list[float] = []
        edit_probs: list[float] = []
        for j, (f, t, p, e) in enumerate(zip(cols[0], cols[1], cols[2], edits)):
            if f or e:
                self.tokens[bs + j - self.P] = int(t)
                (revealed if f else edited).append(bs + j - self.P)
                (probs if f else edit_probs).append(p)
        return self.event(revealed, probs, edited, edit_probs, revisable=edit is not None)

    def event(self, revealed: list[int], probs: list[float], edited: list[int] | None = None,
              edit_probs: list[float] | None = None, revisable: bool = False) -> DenoiseStep:
        fill = []
        if self.cfg.early_stop and not revisable:
            fill = _early_stop_fill(self.tokens, self.mask, self.model.tokens.stops)
        for pos in fill:
            self.tokens[pos] = self.model.tokens.eos
        revealed, probs = _merge(revealed, probs, fill)
        done = not revisable and self.mask not in self.tokens
        step = DenoiseStep(self.index, list(self.tokens), revealed, probs, self.forwards,
                           time.perf_counter() - self.start, done, edited=edited or [],
                           edit_confidences=edit_probs or [])
        self.index += 1
        return step

    # ---- the loops ------------------------------------------------------------------------

    def steps(self) -> Iterator[DenoiseStep]:
        loop = {"sdar": self.sdar_block, "stable-diffcoder": self.sdc_block, "fast-dllm-v2": self.v2_block,
                "llada2": self.llada2_block}
        decode = loop[str(self.cfg.block_loop)]
        blocks = self.plan.blocks
        if self.cfg.block_loop == "fast-dllm-v2" and self.plan.prefill == self.P:
            step = self.next_token(self.P)  # whole blocks of prompt: their next token, AR-style, starts block 1
            yield step
            if step.done:
                return
        for n, (bs, be) in enumerate(blocks):
            for step in decode(bs, be):
                yield step
                if step.done:
                    return
            if self.cfg.block_loop == "fast-dllm-v2" and n + 1 < len(blocks):
                step = self.next_token(be)
                yield step
                if step.done:
                    return
        assert self.mask not in self.tokens, "every block loop ends with no masks left"

    def sdar_block(self, bs: int, be: int) -> Iterator[DenoiseStep]:
        """JetAstra/SDAR block_diffusion_generate, one block: a transfer schedule over the block
        length (llada_schedule(B, steps)), then per step: forward, sample every row, commit."""
        counts = llada_schedule(self.cfg.block, self.plan.steps_per_block)
        for k in counts:
            m = self.masks_left(bs, be)
            if m == 0:
                return
            masked = self.masked(bs, be)
            lg = self.block_logits(bs, be)
            x0, prob = sdar_propose(lg, self.cfg, self.mask, self.gen)
            conf = prob if self.cfg.alg != "random" else torch.rand(prob.shape, generator=self.gen,
                                                                    device=prob.device).to(prob.dtype)
            conf = torch.where(masked, conf, torch.full_like(conf, -torch.inf))
            yield self.commit(bs, sdar_select(conf, masked, k, self.cfg.threshold, m), x0, prob)

    def sdc_block(self, bs: int, be: int) -> Iterator[DenoiseStep]:
        """Stable-DiffCoder generate_block, one block: a transfer schedule over the block's masks
        (llada_schedule(masks, steps_per_block)); steps whose count is 0 run no forward."""
        counts = llada_schedule(self.masks_left(bs, be), self.plan.steps_per_block)
        left = sum(1 for c in counts if c > 0)
        for k in counts:
            m = self.masks_left(bs, be)
            if m == 0:
                return
            if k == 0:
                continue
            masked = self.masked(bs, be)
            lg = self.block_logits(bs, be)
            x0, score = sdc_propose(lg, self.cfg, self.mask, self.gen)
            conf = torch.where(masked, score, torch.full_like(score, -torch.inf))
            need = -(-m // left)  # threshold mode: enough to finish within the steps left
            left -= 1
            accept = sdc_select(conf, masked, k if self.cfg.threshold is None else need, self.cfg.threshold, m)
            prob = score if self.cfg.alg != "random" else torch.softmax(lg, -1).gather(-1, x0[:, None])[:, 0]
            yield self.commit(bs, accept, x0, prob)

    def v2_block(self, bs: int, be: int) -> Iterator[DenoiseStep]:
        """Fast-dLLM v2 generate, one block: its sub-blocks left to right, each until no mask is
        left; every forward runs the whole block and uses the sub-block's (shifted) rows."""
        sub = self.cfg.sub_block_length or self.cfg.block
        for ss in range(bs, be, sub):
            se = min(ss + sub, be)
            while self.masks_left(ss, se):
                masked = self.masked(ss, se)
                lg = self.block_logits(bs, be, rows=(ss, se))
                x0, prob = v2_propose(lg, self.cfg, self.mask, self.gen)
                conf = torch.where(masked, prob, torch.full_like(prob, -torch.inf))
                yield self.commit(ss, v2_select(conf, masked, self.cfg.threshold), x0, prob)

    def llada2_block(self, bs: int, be: int) -> Iterator[DenoiseStep]:
        """LLaDA2 generate, one block. 2.0 (no editing_threshold): a transfer schedule over the
        block length (llada_schedule(B, steps)); each step forwards, proposes every row (SDAR's
        sampling: argmax at T = 0) and commits the masked rows with p > threshold if there are at
        least the step's count of them, else the count's most confident; the block ends when no
        mask is left. 2.1: each step also edits (llada2_edits, from the same forward); steps go on
        past the schedule (one token at least) while masks remain, then at most max_post_steps
        steps of editing alone, the block ending early on a step that changes nothing. A finished
        block that holds a stop token ends the generation (cfg.early_stop)."""
        cfg = self.cfg
        counts = llada_schedule(cfg.block, self.plan.steps_per_block)
        editing = cfg.editing_threshold is not None
        last_block = be == self.plan.end
        not_prompt = torch.arange(bs, be, device=self.x.device) >= self.P  # prompt rows are never edited
        post = 0  # steps run on a block with no mask left
        for i in itertools.count():
            m = self.masks_left(bs, be)
            post += m == 0
            masked = self.masked(bs, be)
            lg = self.block_logits(bs, be)
            x0, prob = sdar_propose(lg, cfg, self.mask, self.gen)
            accept = torch.zeros_like(masked)
            if m:
                conf = prob if cfg.alg != "random" else torch.rand(prob.shape, generator=self.gen,
                                                                    device=prob.device).to(prob.dtype)
                conf = torch.where(masked, conf, torch.full_like(conf, -torch.inf))
                accept = sdar_select(conf, masked, counts[i] if i < len(counts) else 1, cfg.threshold, m)
            edit = torch.zeros_like(masked)
            if cfg.editing_threshold is not None:
                edit = llada2_edits(x0, prob, self.x[0, bs:be], ~masked & not_prompt, cfg.editing_threshold)
            step = self.commit(bs, accept, x0, prob, edit=edit)
            filled = self.masks_left(bs, be) == 0
            # the block's last step: filled without editing; with it, a step that changed nothing
            # or the last of the post steps (the next one would not run)
            end = filled and (not editing or (m == 0 and not step.edited) or post + 1 > cfg.max_post_steps)
            if end:
                step = self.block_end(step, last_block)
            yield step
            if end:
                return

    def block_end(self, step: DenoiseStep, last_block: bool) -> DenoiseStep:
        """The finished block's last step: `done` when it is the last block, or when a stop token
        has been written (cfg.early_stop; the masks after it are filled with eos, as revealed)."""
        stops = self.model.tokens.stops
        if not last_block and not (self.cfg.early_stop and any(t in stops for t in self.tokens)):
            return step
        fill = [p for p, t in enumerate(self.tokens) if t == self.mask]
        for pos in fill:
            self.tokens[pos] = self.model.tokens.eos
        revealed, probs = _merge(step.revealed, step.confidences, fill)
        return replace(step, tokens=list(self.tokens), revealed=revealed, confidences=probs, done=True)

    def next_token(self, pos: int) -> DenoiseStep:
        """Fast-dLLM v2: the token at `pos` (a block's first) by argmax of the logits of the
        position before it, always greedy, as the official loop appends it."""
        probs = torch.softmax(self.next_token_logits(pos)[None], dim=-1)  # (1, V)
        x0 = torch.argmax(_without_mask(probs, self.mask, -1.0), dim=-1)
        return self.commit(pos, torch.ones(1, dtype=torch.bool, device=probs.device), x0,
                           probs.gather(-1, x0[:, None])[:, 0])
