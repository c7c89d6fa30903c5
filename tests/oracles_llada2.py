"""Plain transcriptions of LLaDA2's published loops, for token parity with dllm's llada2 block loop
(tests/test_llada2_sampler.py). Written from the published descriptions, as the official code
would run them, with no dllm code (docs/sampling.md cites the sources):

* `llada2_generate`: LLaDA2.0's `generate()` (inclusionAI's modeling_llada2_moe.py, HF remote
  code): a canvas of ceil((P + G) / B) blocks, an additive block-causal mask (tril over blocks,
  repeated B times), NO KV cache (every step re-runs the window x[:, :end] and keeps the logits of
  its last B positions), a transfer schedule `base = B // steps` (+1 for the first B % steps
  steps), per step: greedy (argmax, p = softmax[argmax]) at T = 0 else temperature / top-k /
  top-p / multinomial, confidence on masked rows, every row with p > threshold when there are at
  least the step's count of them, else the top-min(count, masks); after a block, stop when eos
  appears in the generated region. Returns the generated tokens cut after the first eos.
* `llada2_1_generate`: LLaDA2.1's token editing as sglang's JointThreshold and the MLX port run
  it: per block, while masks remain or edits change tokens (at most `max_post_steps` steps after
  the masks are gone): mask-to-token (masked rows with p > threshold, else the
  `num_to_transfer` most confident) and token-to-token (rows that were written before this step,
  outside the prompt, whose proposal differs with p > editing_threshold) from the same forward.

`model` is tests/oracles.HFStyleLM (raw logits of the window, the mask checked against the
network's block-causal pattern).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from oracles import sdar_top_k_logits, sdar_top_p_logits


def llada2_block_mask(num_blocks: int, block_length: int) -> torch.Tensor:
    """(1, 1, T, T) additive: 0.0 where allowed (same or earlier block), -inf elsewhere."""
    allowed = torch.tril(torch.ones(num_blocks, num_blocks))
    allowed = allowed.repeat_interleave(block_length, dim=0).repeat_interleave(block_length, dim=1)
    return torch.where(allowed.bool(), 0.0, float("-inf"))[None, None]


def llada2_num_transfer_tokens(block_length: int, steps: int) -> torch.Tensor:
    base, remainder = block_length // steps, block_length % steps
    out = torch.zeros(steps, dtype=torch.int64) + base
    out[:remainder] += 1
    return out


def llada2_sample(logits, temperature=0.0, top_k=None, top_p=None, generator=None):
    """(B, L, V) -> tokens, p(token): argmax at T = 0 without top-k / top-p (the remote code's
    greedy branch); else ÷T, top-k, top-p, softmax, one multinomial draw per row."""
    if temperature == 0 and top_k is None and top_p is None:
        probs = F.softmax(logits, dim=-1)
        token = probs.argmax(-1)
        return token, probs.gather(-1, token[..., None])[..., 0]
    shape = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1])
    if temperature not in (0, 1):
        flat = flat / temperature
    if top_k is not None:
        flat = sdar_top_k_logits(flat, top_k)
    if top_p is not None and top_p < 1:
        flat = sdar_top_p_logits(flat, top_p)
    probs = F.softmax(flat, dim=-1)
    token = torch.multinomial(probs, 1, generator=generator)
    return token.view(shape), probs.gather(-1, token).view(shape)


def _window_logits(model, x, end, mask, block_length):
    return model(x[:, :end], attention_mask=mask[:, :, :end, :end],
                 position_ids=torch.arange(end)[None])[:, -block_length:]


def _cut(x, prompt_length, eos_id):
    out = x[0, prompt_length:].tolist()
    return out[:out.index(eos_id) + 1] if eos_id in out else out


@torch.no_grad()
def llada2_generate(model, input_ids, temperature=0.0, block_length=32, steps=32, gen_length=2048, top_p=None,
                    top_k=None, minimal_topk=1, threshold=0.95, eos_id=156892, mask_id=156895, generator=None):
    steps = min(steps, gen_length // minimal_topk)
    P = input_ids.shape[1]
    num_blocks = (P + gen_length + block_length - 1) // block_length
    mask = llada2_block_mask(num_blocks, block_length)
    x = torch.full((1, num_blocks * block_length), mask_id, dtype=torch.long)
    x[:, :P] = input_ids
    schedule = llada2_num_transfer_tokens(block_length, steps)
    for b in range(P // block_length, num_blocks):
        end = (b + 1) * block_length
        for step in range(steps):
            block = x[:, end - block_length:end]
            active = block == mask_id
            if active.sum() == 0:
                break
            logits = _window_logits(model, x, end, mask, block_length)
            x0, x0_p = llada2_sample(logits, temperature, top_k, top_p, generator)
            n = int(schedule[step])
            confidence = torch.where(active, x0_p, -torch.inf)
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            high = confidence[0] > threshold
            if high.sum() >= n:
                transfer[0] = high
            else:
                _, idx = torch.topk(confidence[0], k=min(n, int(active.sum())))
                transfer[0, idx] = True
            block[transfer] = x0[transfer]
        if (x[0, P:end] == eos_id).any():
            break
    return _cut(x, P, eos_id)


@torch.no_grad()
def llada2_1_generate(model, input_ids, temperature=0.0, block_length=32, gen_length=2048, top_p=None, top_k=None,
                      threshold=0.95, editing_threshold=0.9, max_post_steps=16, num_to_transfer=1,
                      eos_early_stop=True, eos_id=156892, mask_id=156895, generator=None, edits=None):
    """`edits`: a list that receives (absolute position, old token, new token) of every edit."""
    P = input_ids.shape[1]
    num_blocks = (P + gen_length + block_length - 1) // block_length
    mask = llada2_block_mask(num_blocks, block_length)
    x = torch.full((1, num_blocks * block_length), mask_id, dtype=torch.long)
    x[:, :P] = input_ids
    for b in range(P // block_length, num_blocks):
        start, end = b * block_length, (b + 1) * block_length
        prompt_in_block = torch.arange(start, end)[None] < P
        post_steps = 0
        while True:
            old = x[:, start:end].clone()
            masked = old == mask_id
            has_mask = bool(masked.any())
            if not has_mask:
                post_steps += 1
                if post_steps > max_post_steps:
                    break
            logits = _window_logits(model, x, end, mask, block_length)
            x0, p = llada2_sample(logits, temperature, top_k, top_p, generator)
            transfer = torch.zeros_like(masked)
            if has_mask:
                confidence = torch.where(masked, p, -torch.inf)
                high = confidence > threshold
                if high.sum() >= num_to_transfer:
                    transfer = high
                else:
                    _, idx = torch.topk(confidence[0], k=min(num_to_transfer, int(masked.sum())))
                    transfer[0, idx] = True
            edit = ~masked & ~prompt_in_block & (p > editing_threshold) & (x0 != old)
            if edits is not None:
                edits.extend((start + int(j), int(old[0, j]), int(x0[0, j])) for j in edit[0].nonzero()[:, 0])
            x[:, start:end] = torch.where(transfer | edit, x0, old)
            if not has_mask and not edit.any():
                break
        generated = x[0, P:end]
        if eos_early_stop and not (generated == mask_id).any() and (generated == eos_id).any():
            break
    return _cut(x, P, eos_id)
