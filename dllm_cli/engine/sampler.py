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
`new_cache()`, `window=(s, e)`, `tokens`), the contract in docs/architecture.md.

Must not: import rich/typer/git, decode text, or know which checkpoint layout the model has.
Sources: ML-GSAI/LLaDA generate.py, DreamLM/Dream generation_utils.py, NVlabs/Fast-dLLM,
Open-dCoder's `_mdm_sample`; docs/sampling.md explains every option and cites them.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from ..config import DREAM_ALGS, LLADA_ALGS, REMASK_ALGS, SamplerConfig
from ..errors import UsageError
from ..events import DenoiseStep, SpecialTokens
from .model import Denoiser

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
