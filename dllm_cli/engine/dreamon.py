"""DreamOn's variable-length infilling: the middle of prefix · masks · suffix grows and shrinks.

A DreamOn checkpoint (Dream layout) has an `<|expand|>` token. The canvas is bos + prefix, a few
masks, suffix + eos. Each step runs the model on the canvas, scores the masked positions with one
of Dream's confidence algs (maskgit_plus, topk_margin, entropy; temperature, top_p, top_k) and
commits the most confident one (DreamOn is tested with one token per step; `alg_temp` draws it
instead). Then:
  * a committed delete token (DreamOn: eos) is removed: the middle shrinks by one;
  * an `<|expand|>` becomes two masks: the middle grows by one.
Expansion is blocked (its logit −1e9) once the canvas has `max_length` tokens or the expansion
budget is spent. The loop ends when no mask is left, or after 2·max_gen_len + 2·budget steps
(then masks may remain, as in the official code).

Lengths as in the official code (DreamLM/DreamOn `eval/generator.py`, see docs/sampling.md):
`cfg.gen_length` is `max_new_tokens`, which counts the initial masks, so max_length =
len(canvas) − initial masks + gen_length; max_gen_len = max_length − len(bos + prefix); the
expansion budget defaults to 2·max_gen_len. The official loop pads the canvas to max_length and
masks the padding out of attention; running the model on the live canvas alone is the same
computation (right padding leaves positions 0..L−1 unchanged).

The expand and delete ids come from the model's `SpecialTokens` (the tokenizer resolves them:
`<|delete|>` when the vocabulary has one, else eos).

Must not: import rich/typer/git or decode text. Step events carry the middle as it is now, so
`tokens` changes length from step to step (unlike `sampler.denoise`).
"""

from __future__ import annotations

import time
from typing import Iterator, Sequence

import torch

from ..config import DREAM_ALGS, SamplerConfig
from ..errors import UsageError
from ..events import DenoiseStep
from .model import Denoiser
from .sampler import dream_propose, generator, prompt_tensor

CONFIDENCE_ALGS = tuple(a for a in DREAM_ALGS if a != "origin")  # the algs that rank positions


def dreamon_sampler(cfg: SamplerConfig) -> SamplerConfig:
    """`cfg` for the DreamOn loop: its alg if it is a confidence alg, else "entropy" (DreamOn's)."""
    if cfg.alg in CONFIDENCE_ALGS:
        return cfg
    return cfg.with_(alg="entropy")


def denoise_dreamon(model: Denoiser, prefix_ids: Sequence[int], suffix_ids: Sequence[int],
                    cfg: SamplerConfig, *, initial_masks: int = 4,
                    expand_budget: int | None = None) -> Iterator[DenoiseStep]:
    """Fill the middle between `prefix_ids` (bos included when the model wants one) and
    `suffix_ids` (the closing eos included), starting from `initial_masks` masks, yielding one
    event per step; the last has done=True and the final middle in `tokens`."""
    start = time.perf_counter()
    expand_id = model.tokens.expand
    if expand_id is None:
        raise UsageError("DreamOn infilling needs an <|expand|> token; this model has none")
    delete_id = model.tokens.eos if model.tokens.delete is None else model.tokens.delete
    if cfg.alg not in CONFIDENCE_ALGS:
        raise UsageError(f"DreamOn infilling ranks positions by confidence: use --alg maskgit_plus, "
                         f"topk_margin or entropy (not {cfg.alg})")
    if not 1 <= initial_masks <= cfg.gen_length:
        raise UsageError(f"initial masks ({initial_masks}) must be between 1 and --gen-length ({cfg.gen_length})")
    mask = model.tokens.mask
    prefix, suffix = prompt_tensor(prefix_ids, model, "prefix"), prompt_tensor(suffix_ids, model, "suffix")
    P = prefix.numel()
    x = torch.cat([prefix, prefix.new_full((initial_masks,), mask), suffix])
    max_length = x.numel() - initial_masks + cfg.gen_length
    max_gen_len = max_length - P
    budget = 2 * max_gen_len if expand_budget is None else expand_budget
    gen = generator(x.device, cfg.seed)
    n = initial_masks  # the middle's length
    rounds = 2 * max_gen_len + 2 * budget
    for i in range(rounds):
        masked = x == mask
        if not bool(masked.any()):
            break
        rows = masked.nonzero()[:, 0]  # canvas positions of the masks
        lg = model.logits(x[None])[0, rows].float()  # aligned logits (the Dream shift is inside)
        if x.numel() == max_length or budget == 0:
            lg[:, expand_id] -= 1e9
        x0, prob, conf = dream_propose(lg, cfg, mask, gen)
        if cfg.alg_temp:
            pick = torch.multinomial(torch.softmax(conf / cfg.alg_temp, dim=-1), 1, generator=gen)[0]
        else:
            pick = torch.topk(conf, 1).indices[0]
        pos, token, p = int(rows[pick]), int(x0[pick]), float(prob[pick])
        if token == delete_id:
            x = torch.cat([x[:pos], x[pos + 1:]])
            n -= 1
            revealed: list[int] = []
        elif token == expand_id:
            x = torch.cat([x[:pos], x.new_tensor([mask, mask]), x[pos + 1:]])
            n += 1
            budget -= 1
            revealed = []
        else:
            x[pos] = token
            revealed = [pos - P]
        middle = x[P:P + n].tolist()
        done = mask not in middle or i == rounds - 1  # the official bound may leave masks
        yield DenoiseStep(i, middle, revealed, [p] * len(revealed), i + 1, time.perf_counter() - start, done)
        if done:
            return
