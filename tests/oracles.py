"""Test references for the sampler: plain transcriptions of the official loops, and a mock model.

`llada_generate` follows LLaDA's `generate` (ML-GSAI/LLaDA generate.py) and `dream_generate`
follows Dream's `diffusion_generate` `_sample` loop (DreamLM/Dream generation_utils.py), written
from their published code's behaviour (described in docs/sampling.md): full canvas every step, no cache, the
final tensor returned. Deliberately literal and slow; differences from the originals:
- `model.logits` is already aligned, so Dream's `cat(logits[:, :1], logits[:, :-1])` is inside
  the model, not here;
- random draws take an explicit `generator` instead of the global RNG;
- eos/eot ids are parameters instead of LLaDA's hard-coded 126081 / 126348.

`MockModel` is a tiny bidirectional transformer with random weights that implements the model
contract (`engine.model.Denoiser`, docs/architecture.md), the KV cache included (`new_cache`, `window=(s, e)`), aligned
or Dream-style shifted, so the sampler can be tested without a checkpoint.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from dllm_cli.events import SpecialTokens

# ---- LLaDA generate ------------------------------------------------------------------------

def add_gumbel_noise(logits, temperature, generator=None):
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand(logits.shape, dtype=torch.float64, generator=generator, device=logits.device)
    gumbel_noise = (-torch.log(noise)) ** temperature
    return logits.exp() / gumbel_noise


def get_num_transfer_tokens(mask_index, steps):
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    num_transfer_tokens = torch.zeros(mask_num.size(0), steps, device=mask_index.device,
                                      dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        num_transfer_tokens[i, :remainder[i]] += 1
    return num_transfer_tokens


@torch.no_grad()
def llada_generate(model, prompt, steps=128, gen_length=128, block_length=128, temperature=0.0,
                   cfg_scale=0.0, remasking="low_confidence", mask_id=126336, logits_eos_inf=False,
                   confidence_eos_eot_inf=False, eos_id=126081, eot_ids=(126348,), generator=None):
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), mask_id, dtype=torch.long,
                   device=model.device)
    x[:, :prompt.shape[1]] = prompt.clone()
    prompt_index = x != mask_id
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps = steps // num_blocks
    for num_block in range(num_blocks):
        block_mask_index = x[:, prompt.shape[1] + num_block * block_length:
                             prompt.shape[1] + (num_block + 1) * block_length] == mask_id
        num_transfer_tokens = get_num_transfer_tokens(block_mask_index, steps)
        for i in range(steps):
            mask_index = x == mask_id
            if cfg_scale > 0.0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                x_ = torch.cat([x, un_x], dim=0)
                logits = model.logits(x_)
                logits, un_logits = torch.chunk(logits, 2, dim=0)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = model.logits(x)
            if logits_eos_inf:
                logits[:, :, eos_id] = -torch.inf
            logits_with_noise = add_gumbel_noise(logits, temperature=temperature, generator=generator)
            x0 = torch.argmax(logits_with_noise, dim=-1)  # b, l
            if confidence_eos_eot_inf:
                logits_with_noise[:, :, eos_id] = logits[:, :, list(eot_ids)] = -torch.inf
            if remasking == "low_confidence":
                p = F.softmax(logits, dim=-1)
                x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            elif remasking == "random":
                x0_p = torch.rand((x0.shape[0], x0.shape[1]), generator=generator, device=x0.device)
            else:
                raise NotImplementedError(remasking)
            x0_p[:, prompt.shape[1] + (num_block + 1) * block_length:] = -np.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -np.inf)
            transfer_index = torch.zeros_like(x0, dtype=torch.bool, device=x0.device)
            for j in range(confidence.shape[0]):
                _, select_index = torch.topk(confidence[j], k=int(num_transfer_tokens[j, i]))
                transfer_index[j, select_index] = True
            x[transfer_index] = x0[transfer_index]
    return x


# ---- Dream diffusion_generate ----------------------------------------------------------------

def top_p_logits(logits, top_p=None):
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    sorted_indices_to_remove = cumulative_probs > top_p
    sorted_indices_to_remove[..., 1:] = sorted_indices_to_remove[..., :-1].clone()
    sorted_indices_to_remove[..., 0] = 0
    mask = torch.zeros_like(logits, dtype=torch.bool, device=logits.device)
    mask = mask.scatter_(-1, sorted_indices, sorted_indices_to_remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def top_k_logits(logits, top_k=None):
    top_k = min(top_k, logits.size(-1))
    indices_to_remove = logits < torch.topk(logits, top_k)[0][..., -1, None]
    return logits.masked_fill(indices_to_remove, torch.finfo(logits.dtype).min)


def sample_tokens(logits, temperature=0.0, top_p=None, top_k=None, margin_confidence=False,
                  neg_entropy=False, generator=None):
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = top_p_logits(logits, top_p)
    if top_k is not None:
        logits = top_k_logits(logits, top_k)
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        x0 = torch.multinomial(probs, 1, generator=generator)[:, 0]  # Categorical(probs).sample()
        confidence = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
    else:
        confidence, x0 = probs.max(dim=-1)
    if margin_confidence:
        sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
        confidence = sorted_probs[:, 0] - sorted_probs[:, 1]
    if neg_entropy:
        epsilon = 1e-10
        log_probs = torch.log(probs + epsilon)
        confidence = torch.sum(probs * log_probs, dim=-1)
    return confidence, x0


@torch.no_grad()
def dream_generate(model, input_ids, max_new_tokens, steps, eps=1e-3, temperature=0.0, top_p=None,
                   top_k=None, alg="origin", alg_temp=None, mask_token_id=151666, generator=None):
    max_length = input_ids.shape[1] + max_new_tokens
    x = F.pad(input_ids, (0, max_length - input_ids.shape[1]), value=mask_token_id)
    timesteps = torch.linspace(1, eps, steps + 1, device=x.device)
    for i in range(steps):
        mask_index = x == mask_token_id
        logits = model.logits(x)  # aligned: the official shift happens inside the model
        mask_logits = logits[mask_index]
        t = timesteps[i]
        s = timesteps[i + 1]
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            x0 = torch.zeros_like(x[mask_index], device=x.device, dtype=torch.long) + mask_token_id
            transfer_index_t_s = torch.rand(*x0.shape, generator=generator, device=x.device) < p_transfer
            _, x0[transfer_index_t_s] = sample_tokens(mask_logits[transfer_index_t_s], temperature=temperature,
                                                      top_p=top_p, top_k=top_k, generator=generator)
            x[mask_index] = x0.clone()
        else:
            if alg == "maskgit_plus":
                confidence, x0 = sample_tokens(mask_logits, temperature=temperature, top_p=top_p,
                                               top_k=top_k, generator=generator)
            elif alg == "topk_margin":
                confidence, x0 = sample_tokens(mask_logits, temperature=temperature, top_p=top_p,
                                               top_k=top_k, margin_confidence=True, generator=generator)
            elif alg == "entropy":
                confidence, x0 = sample_tokens(mask_logits, temperature, top_p=top_p, top_k=top_k,
                                               neg_entropy=True, generator=generator)
            else:
                raise RuntimeError(f"Unknown alg: {alg}")
            num_mask_token = mask_index.sum() / mask_index.shape[0]
            number_transfer_tokens = (int(num_mask_token * (1 - s / t)) if i < steps - 1
                                      else int(num_mask_token))
            full_confidence = torch.full_like(x, -torch.inf, device=x.device, dtype=logits.dtype)
            full_confidence[mask_index] = confidence
            if number_transfer_tokens > 0:
                if alg_temp is None or alg_temp == 0:
                    _, transfer_index = torch.topk(full_confidence, number_transfer_tokens)
                else:
                    full_confidence = full_confidence / alg_temp
                    full_confidence = F.softmax(full_confidence, dim=-1)
                    transfer_index = torch.multinomial(full_confidence, num_samples=number_transfer_tokens,
                                                       generator=generator)
                x_ = torch.zeros_like(x, device=x.device, dtype=torch.long) + mask_token_id
                x_[mask_index] = x0.clone()
                row_indices = torch.arange(x.size(0), device=x.device).unsqueeze(1).expand_as(transfer_index)
                x[row_indices, transfer_index] = x_[row_indices, transfer_index]
    return x


# ---- Open-dCoder p2 (path planning) ----------------------------------------------------------

@torch.no_grad()
def p2_generate(model, x, steps, temperature=0.0, top_p=None, top_k=None, mask_token_id=151666,
                generator=None):
    """The p2 branch of Open-dCoder's `_mdm_sample`, literally: `x` is the whole canvas (prompt,
    masks, any fixed suffix); every step scores every position, gives fixed positions confidence
    +inf, masks the ⌊n·(1 − κ)⌋ lowest (κ = (i+1)/steps, n = positions not fixed), and fills the
    positions that were masked and are not chosen."""
    x = x.clone()
    fix_mask = x != mask_token_id
    for i in range(steps):
        mask_index = x == mask_token_id
        if not mask_index.any():
            break
        logits = model.logits(x)  # aligned (the shift is inside the model)
        kappa_t = (i + 1) / steps
        B, T, V = logits.shape
        confidence, x0 = sample_tokens(logits.reshape(B * T, V), temperature, top_p, top_k,
                                       generator=generator)
        confidence, x0 = confidence.reshape(B, T), x0.reshape(B, T)
        confidence[fix_mask] = float("inf")
        num_positions = (~fix_mask).sum(dim=1, keepdim=True)
        num_to_mask = (num_positions.float() * (1 - kappa_t)).long()
        sorted_idx = torch.argsort(confidence, dim=-1, descending=False, stable=True)
        to_mask = torch.zeros_like(x, dtype=torch.bool)
        for b in range(B):
            to_mask[b, sorted_idx[b, :int(num_to_mask[b])]] = True
        x[to_mask] = mask_token_id
        unmask_positions = mask_index & ~to_mask
        x[unmask_positions] = x0[unmask_positions]
    return x


# ---- DreamOn (variable-length infilling) -------------------------------------------------------

@torch.no_grad()
def dreamon_generate(model, input_ids, max_new_tokens, alg="entropy", temperature=0.0, top_p=None,
                     top_k=None, alg_temp=0.0, mask_token_id=151666, expand_token_id=151667,
                     delete_token_id=151643, eos_token_id=151643, expand_budget=None,
                     number_transfer_tokens=1, padded=True, generator=None):
    """DreamOn's `_sample` (DreamLM/DreamOn eval/generator.py), literally: the canvas padded with
    eos to max_length, an attention mask over the live window (padded=False runs the window alone,
    for models without padding support), one committed token per step, committed deletes removed
    (a mask appended at the far end keeps the length), expands turned into two masks."""
    mask_token_indices = torch.where(input_ids == mask_token_id)[1]
    start_gen_len = mask_token_indices.numel()
    prefix_len = int(mask_token_indices[0])
    max_length = input_ids.shape[1] - start_gen_len + max_new_tokens
    num_generation_tokens = start_gen_len
    max_gen_len = max_length - prefix_len
    if expand_budget is None:
        expand_budget = max_gen_len * 2
    x = F.pad(input_ids, (0, max_length - input_ids.shape[1]), value=eos_token_id)
    for _ in range(2 * max_gen_len + 2 * expand_budget):
        current_window_length = input_ids.shape[1] - start_gen_len + num_generation_tokens
        attention_mask = torch.ones([input_ids.shape[0], current_window_length], dtype=torch.int16)
        attention_mask = F.pad(attention_mask, (0, max_length - attention_mask.shape[1]), value=0)
        mask_index = (x == mask_token_id) & (attention_mask == 1)
        if torch.all(~mask_index[:, :current_window_length]):
            break
        if padded:
            logits = model.logits(x, attention_mask=attention_mask.bool())
        else:
            logits = F.pad(model.logits(x[:, :current_window_length]), (0, 0, 0, max_length - current_window_length))
        logits = logits[mask_index]
        if current_window_length == max_length or expand_budget == 0:
            logits[:, expand_token_id] -= 1e9
        if alg == "maskgit_plus":
            confidence, x0 = sample_tokens(logits, temperature=temperature, top_p=top_p, top_k=top_k,
                                           generator=generator)
        elif alg == "topk_margin":
            confidence, x0 = sample_tokens(logits, temperature=temperature, top_p=top_p, top_k=top_k,
                                           margin_confidence=True, generator=generator)
        else:
            confidence, x0 = sample_tokens(logits, temperature=temperature, top_p=top_p, top_k=top_k,
                                           neg_entropy=True, generator=generator)
        if alg_temp is None or alg_temp == 0:
            _, transfer_index = torch.topk(confidence, number_transfer_tokens)
        else:
            confidence = F.softmax(confidence / alg_temp, dim=-1)
            transfer_index = torch.multinomial(confidence, num_samples=number_transfer_tokens, generator=generator)
        x0_ = torch.zeros_like(x0) + mask_token_id
        x0_[transfer_index] = x0[transfer_index].clone()
        x[mask_index] = x0_
        delete_indices = ((x[0] == delete_token_id) & (mask_index[0] == 1)).nonzero(as_tuple=False).squeeze(1)
        for idx in sorted(delete_indices.tolist(), reverse=True):
            x = torch.cat((x[:, :idx], x[:, idx + 1:], torch.tensor([[mask_token_id]])), dim=1)
            num_generation_tokens -= 1
        expand_indices = (x[0] == expand_token_id).nonzero(as_tuple=False).squeeze(1)
        for idx in sorted(expand_indices.tolist(), reverse=True):
            x = torch.cat((x[:, :idx], torch.tensor([[mask_token_id, mask_token_id]]), x[:, idx + 1:]), dim=1)
            num_generation_tokens += 1
            expand_budget -= 1
            if x.shape[1] > max_length:
                x = x[:, :max_length]
    return x[0, prefix_len:prefix_len + num_generation_tokens].tolist()


# ---- a mock model with the full model contract ------------------------------------------------

class MockCache:
    """Per-layer K/V (B, T, D); `src` records the token each position's K/V was last written from."""

    def __init__(self):
        self.k, self.v, self.src = {}, {}, None


class MockModel:
    """Tiny bidirectional transformer (random weights) with aligned logits and a KV cache.

    shifted=True imitates a Dream-layout model: it scores token i+1 at position i internally and
    returns aligned logits (a window (s, e) runs queries at s-1..e-1). `eos_from`: positions at or
    after it get `eos_bias` added to the eos logit, so answers end like an instruct model's.
    """

    def __init__(self, vocab=64, dim=32, layers=2, max_len=512, shifted=False, seed=0,
                 eos_bias=0.0, eos_from=0, scale=3.0, token_bias=None, expand_token_id=None,
                 delete_token_id=None):
        g = torch.Generator().manual_seed(seed)
        r = lambda *shape: torch.randn(*shape, generator=g) / math.sqrt(shape[0])  # noqa: E731
        self.emb, self.pos = torch.randn(vocab, dim, generator=g), torch.randn(max_len, dim, generator=g)
        self.layers = [dict(q=r(dim, dim), k=r(dim, dim), v=r(dim, dim), o=r(dim, dim),
                            up=r(dim, 2 * dim), down=r(2 * dim, dim)) for _ in range(layers)]
        self.head = r(dim, vocab) * scale
        self.vocab, self.shifted = vocab, shifted
        self.mask_token_id, self.eos_token_id, self.eot_token_id = vocab - 1, vocab - 2, vocab - 3
        self.stop_token_ids = frozenset({self.eos_token_id, self.eot_token_id})
        self.expand_token_id = expand_token_id
        self.tokens = SpecialTokens(mask=self.mask_token_id, eos=self.eos_token_id, stops=self.stop_token_ids,
                                    expand=expand_token_id, delete=delete_token_id)
        self.tokenizer = self.checkpoint = None  # the handle's other fields (engine.model.Model)
        self.eos_bias, self.eos_from = eos_bias, eos_from
        self.token_bias = dict(token_bias or {})  # token id -> logit bias at every position
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.calls: list[tuple] = []  # (B, T, window) of every call
        self.seen: list[torch.Tensor] = []  # ids of every call (when record_ids)
        self.record_ids, self.last_cache = False, None

    def parameters(self):
        yield from (self.emb, self.pos, self.head)
        for w in self.layers:
            yield from w.values()

    def new_cache(self) -> MockCache:
        self.last_cache = MockCache()
        return self.last_cache

    @torch.no_grad()
    def logits(self, ids, attention_mask=None, cache=None, window=None):
        B, T = ids.shape
        self.calls.append((B, T, window))
        if self.record_ids:
            self.seen.append(ids.clone())
        q0, q1 = (0, T) if window is None else ((max(window[0] - 1, 0) if self.shifted else window[0]),
                                                window[1])
        h = self.emb[ids[:, q0:q1]] + self.pos[q0:q1]  # (B, Lq, D)
        for n, w in enumerate(self.layers):
            a = F.layer_norm(h, h.shape[-1:])
            k, v = a @ w["k"], a @ w["v"]
            if window is not None:
                cache.k[n][:, q0:q1], cache.v[n][:, q0:q1] = k, v
                k, v = cache.k[n], cache.v[n]
            elif cache is not None:
                cache.k[n], cache.v[n] = k.clone(), v.clone()
            att = torch.softmax((a @ w["q"]) @ k.transpose(1, 2) / math.sqrt(h.shape[-1]), dim=-1)
            h = h + (att @ v) @ w["o"]
            h = h + torch.tanh(F.layer_norm(h, h.shape[-1:]) @ w["up"]) @ w["down"]
        if cache is not None:
            if window is None:
                cache.src = ids.clone()
            else:
                cache.src[:, q0:q1] = ids[:, q0:q1]
        out = F.layer_norm(h, h.shape[-1:]) @ self.head  # (B, Lq, V), raw
        out[:, :, self.mask_token_id] = -1e4  # never predict the mask
        start = q0 + 1 if self.shifted else q0  # raw row j scores token at q0 + j (+1 if shifted)
        pos = torch.arange(start, start + out.shape[1])
        out[:, pos >= self.eos_from, self.eos_token_id] += self.eos_bias
        for token, bias in self.token_bias.items():
            out[:, :, token] += bias
        if self.shifted:
            if window is None or window[0] == 0:
                out = torch.cat([out[:, :1], out[:, :-1]], dim=1)
            else:
                out = out[:, :-1]
        return out
