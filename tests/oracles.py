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

`reference(folder, layout)` builds transformers' reference class of a block-diffusion layout
(Qwen3 / Llama / Qwen2) on a tiny checkpoint's weights; `raw_logits` runs it under the block mask.

The block-diffusion loops (docs/sampling.md): `sdar_generate` (JetAstra/SDAR generate.py
`block_diffusion_generate`), `sdc_generate_block` (Stable-DiffCoder's `generate_block`) and
`fast_dllm_v2_generate` (Fast-dLLM v2's HF `generate`), each as the official code runs it: raw
(unshifted) logits from a model called the Hugging Face way (a chunk of ids, the loop's own
attention mask and position ids, a past-key-values cache to store into or not, `crop`). Here that
model is `HFStyleLM`: it keeps the cached *ids* and recomputes every forward from them on the
network's full block-causal pass (no dllm KV cache involved), and it checks that the mask each
loop builds (tril over blocks, repeat-interleaved) is exactly the pattern dllm's model applies.
Differences from the originals, each a flag or a documented necessity:
- `generator` instead of the global RNG; at temperature 0 SDAR's loop takes the argmax with
  p = softmax[argmax] (the official file divides by zero: it has no greedy path);
- `clamp_topk=True` (SDAR) clamps its top-k to the masks left (the official one does not, and
  overwrites prompt tokens when k exceeds them); `prefill_equal=True` (Fast-dLLM v2) prefills a
  prompt of exactly one block (the official `P > block_size` drops it from the context);
- stop ids are parameters.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

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


# ---- block diffusion: an HF-style model over recomputed ids ---------------------------------------

class IdsCache:
    """A DynamicCache stand-in: the ids whose K/V an HF cache would hold (`crop` as HF's)."""

    def __init__(self):
        self.ids = torch.zeros(1, 0, dtype=torch.long)

    def get_seq_length(self):
        return self.ids.shape[1]

    def crop(self, n):
        self.ids = self.ids[:, :n]


class HFStyleLM:
    """`lm(chunk, attention_mask, position_ids, past_key_values, store)` -> raw logits (1, t, V) of
    the chunk, computed by running `raw(ids)` (raw logits of a full block-causal pass) on the
    cached ids + the chunk; with store=True the chunk joins the cache. `attention_mask` is the
    official loop's slice, read as an HF model reads it (bool: True = attend; float: additive,
    finite = attend: Stable-DiffCoder's is 1.0 / -inf), shape (..., t, T); it must allow exactly
    what the network's block-causal pattern allows (`pattern(q_start, q_end, k_end, block)`)."""

    def __init__(self, raw, block, pattern):
        self.raw, self.block, self.pattern = raw, block, pattern
        self.masks_checked = 0

    def __call__(self, chunk, attention_mask=None, position_ids=None, past_key_values=None, store=True):
        past = past_key_values.ids if past_key_values is not None else chunk[:, :0]
        n, T = past.shape[1], past.shape[1] + chunk.shape[1]
        if position_ids is not None:
            assert position_ids.reshape(-1).tolist() == list(range(n, T))
        if attention_mask is not None:
            m = attention_mask.reshape(attention_mask.shape[-2:])
            allowed = m > torch.finfo(m.dtype).min / 2 if m.dtype.is_floating_point else m.bool()
            want = self.pattern(n, T, T, self.block)
            want = torch.ones(T - n, T, dtype=torch.bool) if want is None else want.reshape(T - n, T)
            assert torch.equal(allowed, want), "the loop's mask differs from the model's block-causal pattern"
            self.masks_checked += 1
        full = torch.cat([past, chunk], dim=1)
        if store and past_key_values is not None:
            past_key_values.ids = full
        return self.raw(full)[:, n:]


class NoMaskModel:
    """A dllm model seen as a trained one: its logits never favour the mask token (column -1e4),
    optionally with `eos_bias` added to the eos logit of canvas positions >= `eos_from` (so answers
    end). `logits` is the Denoiser the sampler runs; `raw(ids)` the same network's raw (unshifted)
    full block-causal pass for HFStyleLM, with the same edits; `hf()` that HFStyleLM."""

    def __init__(self, model, eos_bias=0.0, eos_from=0):
        self.model, self.tokens, self.device = model, model.tokens, model.device
        self.attention_block = model.attention_block
        self.eos_bias, self.eos_from = eos_bias, eos_from
        self.shift = model.spec.shifted

    def new_cache(self):
        return self.model.new_cache()

    def _edit(self, out, first):
        out[..., self.tokens.mask] = -1e4
        pos = torch.arange(first, first + out.shape[1])
        out[:, pos >= self.eos_from, self.tokens.eos] += self.eos_bias
        return out

    def logits(self, ids, attention_mask=None, cache=None, window=None, rows=None):
        out = self.model.logits(ids, attention_mask, cache, window, rows)
        return self._edit(out, rows[0] if rows else (0 if window is None else window[0]))

    @torch.no_grad()
    def raw(self, ids):
        net = self.model.net
        out = net.head(net.hidden(ids))  # raw: position i scores token i + 1 when shifted
        return self._edit(out, 1 if self.shift else 0)

    def hf(self, raw=None):
        from dllm_cli.engine.layouts.common import block_causal_mask
        return HFStyleLM(raw or self.raw, self.attention_block, block_causal_mask)


# ---- transformers references for the block-diffusion layouts ---------------------------------------
# (the test extra installs transformers; dllm never imports it): Qwen3ForCausalLM for SDAR,
# LlamaForCausalLM for Stable-DiffCoder, Qwen2ForCausalLM for Fast-dLLM v2, built from a tiny
# checkpoint's config.json, loaded strictly with its safetensors under the same names, and run
# with a 4-D block-causal mask.

CLASSES = {"sdar": ("Qwen3Config", "Qwen3ForCausalLM"), "stable-diffcoder": ("LlamaConfig", "LlamaForCausalLM"),
           "fast-dllm-v2": ("Qwen2Config", "Qwen2ForCausalLM")}


def state_dict(folder: Path) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        sd.update(load_file(str(f)))
    return sd


def reference(folder: Path, layout: str):
    """The transformers model of `layout` with the checkpoint's weights (eval, fp32, SDPA)."""
    import transformers

    c = json.loads((Path(folder) / "config.json").read_text())
    config_cls, model_cls = (getattr(transformers, n) for n in CLASSES[layout])
    kwargs = dict(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
                  num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
                  num_key_value_heads=c["num_key_value_heads"], rms_norm_eps=c["rms_norm_eps"],
                  rope_theta=c["rope_theta"], tie_word_embeddings=c["tie_word_embeddings"],
                  max_position_embeddings=c["max_position_embeddings"], attn_implementation="sdpa")
    if c.get("head_dim"):
        kwargs["head_dim"] = c["head_dim"]
    if layout == "stable-diffcoder":
        kwargs.update(attention_bias=False, mlp_bias=False)
    model = model_cls(config_cls(**kwargs)).eval()
    model.load_state_dict(state_dict(folder), strict=not c["tie_word_embeddings"])
    if c["tie_word_embeddings"]:
        model.tie_weights()
    return model


# ---- transformers references for the mixtures of experts ---------------------------------------
# LLaDA2 (Bailing-MoE-V2 names) against Glm4MoeForCausalLM: the same grouped sigmoid router with
# a choice-only bias (e_score_correction_bias), partial rotary on the first dims of a head,
# shared experts, first_k_dense_replace, q/k norms; transformers maps Bailing-style checkpoints
# onto it too (its sarvam_moe conversion). SDAR-MoE against Qwen3MoeForCausalLM. The fused QKV
# is split by heads, the per-expert tensors stacked into transformers' 3-D expert parameters.

def _stack_experts(sd: dict[str, torch.Tensor], prefix: str, experts: int) -> dict[str, torch.Tensor]:
    """prefix.experts.E.{gate,up,down}_proj.weight -> prefix.experts.gate_up_proj / down_proj (3-D)."""
    gate_up = [torch.cat([sd.pop(f"{prefix}experts.{e}.gate_proj.weight"),
                          sd.pop(f"{prefix}experts.{e}.up_proj.weight")], dim=0) for e in range(experts)]
    down = [sd.pop(f"{prefix}experts.{e}.down_proj.weight") for e in range(experts)]
    return {f"{prefix}experts.gate_up_proj": torch.stack(gate_up), f"{prefix}experts.down_proj": torch.stack(down)}


def glm4moe_state_dict(sd: dict[str, torch.Tensor], c: dict) -> dict[str, torch.Tensor]:
    """A LLaDA2 checkpoint's tensors under Glm4Moe's names."""
    sd = dict(sd)
    H, KV, d = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    out = {"model.embed_tokens.weight": sd.pop("model.word_embeddings.weight")}
    for i in range(c["num_hidden_layers"]):
        p, q = f"model.layers.{i}.attention.", f"model.layers.{i}.self_attn."
        for kind in ("weight", "bias"):
            if p + f"query_key_value.{kind}" in sd:
                wq, wk, wv = sd.pop(p + f"query_key_value.{kind}").split([H * d, KV * d, KV * d], dim=0)
                out.update({q + f"q_proj.{kind}": wq, q + f"k_proj.{kind}": wk, q + f"v_proj.{kind}": wv})
        for ours, theirs in (("query_layernorm", "q_norm"), ("key_layernorm", "k_norm"), ("dense", "o_proj")):
            for kind in ("weight", "bias"):
                if p + f"{ours}.{kind}" in sd:
                    out[q + f"{theirs}.{kind}"] = sd.pop(p + f"{ours}.{kind}")
        m = f"model.layers.{i}.mlp."
        if m + "gate.weight" in sd:
            out[m + "gate.e_score_correction_bias"] = sd.pop(m + "gate.expert_bias").float()
            out.update(_stack_experts(sd, m, c["num_experts"]))
            if not c["num_shared_experts"]:  # Glm4Moe always has one: a zero-width one adds nothing
                h = c["hidden_size"]
                out.update({m + "shared_experts.gate_proj.weight": torch.zeros(0, h),
                            m + "shared_experts.up_proj.weight": torch.zeros(0, h),
                            m + "shared_experts.down_proj.weight": torch.zeros(h, 0)})
    out.update(sd)
    return out


def glm4moe_reference(folder: Path):
    """Glm4MoeForCausalLM with a LLaDA2 checkpoint's config and weights (eval, fp32, SDPA). A
    The tensors are renamed as transformers' sarvam_moe conversion does."""
    import transformers

    c = json.loads((Path(folder) / "config.json").read_text())
    config = transformers.Glm4MoeConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
        num_key_value_heads=c["num_key_value_heads"], head_dim=c["head_dim"], rms_norm_eps=c["rms_norm_eps"],
        max_position_embeddings=c["max_position_embeddings"], tie_word_embeddings=c["tie_word_embeddings"],
        rope_parameters={"rope_type": "default", "rope_theta": float(c["rope_theta"]),
                         "partial_rotary_factor": c["partial_rotary_factor"]},
        attention_bias=c["use_qkv_bias"], use_qk_norm=c.get("use_qk_norm", True),
        moe_intermediate_size=c["moe_intermediate_size"], num_experts_per_tok=c["num_experts_per_tok"],
        n_shared_experts=c["num_shared_experts"], n_routed_experts=c["num_experts"],
        routed_scaling_factor=c["routed_scaling_factor"], n_group=c["n_group"], topk_group=c["topk_group"],
        first_k_dense_replace=c["first_k_dense_replace"], norm_topk_prob=True, attn_implementation="sdpa")
    model = transformers.Glm4MoeForCausalLM(config).eval()
    model.load_state_dict(glm4moe_state_dict(state_dict(folder), c), strict=not c["tie_word_embeddings"])
    if c["tie_word_embeddings"]:
        model.tie_weights()
    return model


def qwen3moe_reference(folder: Path):
    """Qwen3MoeForCausalLM with an SDAR-MoE checkpoint's config and weights (eval, fp32, SDPA)."""
    import transformers

    c = json.loads((Path(folder) / "config.json").read_text())
    config = transformers.Qwen3MoeConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
        num_key_value_heads=c["num_key_value_heads"], head_dim=c["head_dim"], rms_norm_eps=c["rms_norm_eps"],
        max_position_embeddings=c["max_position_embeddings"], tie_word_embeddings=c["tie_word_embeddings"],
        rope_parameters={"rope_type": "default", "rope_theta": float(c["rope_theta"])},
        moe_intermediate_size=c["moe_intermediate_size"], num_experts=c["num_experts"],
        num_experts_per_tok=c["num_experts_per_tok"], norm_topk_prob=c["norm_topk_prob"],
        decoder_sparse_step=c["decoder_sparse_step"], mlp_only_layers=c["mlp_only_layers"],
        attn_implementation="sdpa")
    model = transformers.Qwen3MoeForCausalLM(config).eval()
    sd = state_dict(folder)
    for i in range(c["num_hidden_layers"]):
        m = f"model.layers.{i}.mlp."
        if m + "gate.weight" in sd:
            sd.update(_stack_experts(sd, m, c["num_experts"]))
    model.load_state_dict(sd, strict=True)
    return model


def block_bias(T: int, block: int, causal_within: bool = False) -> torch.Tensor:
    """(1, 1, T, T) additive fp32 mask: 0 where query i may see key j (j // block <= i // block),
    the dtype minimum elsewhere; causal_within=True also hides later keys of the same block."""
    i = torch.arange(T)
    allow = (i[None, :] // block) <= (i[:, None] // block)
    if causal_within:
        allow &= i[None, :] <= i[:, None]
    bias = torch.zeros(1, 1, T, T)
    return bias.masked_fill(~allow, torch.finfo(torch.float32).min)


@torch.no_grad()
def raw_logits(model, ids: torch.Tensor, block: int, **kw) -> torch.Tensor:
    """Raw (unshifted) logits of `ids` (B, T) under the block-causal mask, positions 0..T-1."""
    T = ids.shape[1]
    return model(input_ids=ids, attention_mask=block_bias(T, block, **kw).expand(ids.shape[0], 1, T, T),
                 position_ids=torch.arange(T).expand(ids.shape[0], T)).logits


# ---- SDAR block_diffusion_generate (JetAstra/SDAR generate.py) -----------------------------------

def sdar_top_k_logits(logits, k):
    if k <= 0:
        return logits
    values, _ = torch.topk(logits, k)
    min_values = values[..., -1, None]
    return torch.where(logits < min_values, torch.full_like(logits, float("-inf")), logits)


def sdar_top_p_logits(logits, p):
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    sorted_mask = cumulative_probs > p
    sorted_mask[..., 1:] = sorted_mask[..., :-1].clone()
    sorted_mask[..., 0] = False
    mask_indices = torch.scatter(torch.full_like(logits, False, dtype=torch.bool), -1, sorted_indices, sorted_mask)
    return logits.masked_fill(mask_indices, float("-inf"))


def sdar_sample(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    orig_shape = logits.shape[:-1]
    logits = logits.reshape(-1, logits.shape[-1])
    if temperature == 0:  # not in the official file (it divides by zero): lmdeploy's greedy
        probs = F.softmax(logits, dim=-1)
        token = probs.argmax(-1, keepdim=True)
        return token.view(*orig_shape), torch.gather(probs, -1, token).view(*orig_shape)
    if temperature != 1.0:
        logits = logits / temperature
    if top_k > 0:
        logits = sdar_top_k_logits(logits, top_k)
    if top_p < 1.0:
        logits = sdar_top_p_logits(logits, top_p)
    probs = F.softmax(logits, dim=-1)
    token = torch.multinomial(probs, num_samples=1, generator=generator)
    token_prob = torch.gather(probs, -1, token)
    return token.view(*orig_shape), token_prob.view(*orig_shape)


def sdar_num_transfer_tokens(block_length, steps):
    base = block_length // steps
    remainder = block_length % steps
    num_transfer_tokens = torch.zeros(steps, dtype=torch.int64) + base
    num_transfer_tokens[:remainder] += 1
    return num_transfer_tokens


@torch.no_grad()
def sdar_generate(model, input_ids, mask_id, gen_length=128, block_length=8, denoising_steps=8, temperature=1.0,
                  top_k=0, top_p=1.0, remasking_strategy="low_confidence_dynamic", confidence_threshold=0.85,
                  stopping_criteria_idx=None, generator=None, clamp_topk=False):
    """block_diffusion_generate; `model` an HFStyleLM; returns the whole x (prompt included)."""
    prompt_length = input_ids.shape[1]
    past_key_values = IdsCache()
    num_blocks = (prompt_length + gen_length + block_length - 1) // block_length
    total_length = num_blocks * block_length
    block_mask = torch.tril(torch.ones(num_blocks, num_blocks))
    block_diffusion_attention_mask = block_mask.repeat_interleave(block_length, dim=0) \
        .repeat_interleave(block_length, dim=1).unsqueeze(0)
    position_ids = torch.arange(total_length).unsqueeze(0)
    x = torch.full((1, total_length), mask_id, dtype=torch.long)
    x[:, :prompt_length] = input_ids
    prefill_blocks = prompt_length // block_length
    prefill_length = prefill_blocks * block_length
    # (the modeling reads the 0/1 mask with .bool())
    if prefill_length > 0:
        model(x[:, :prefill_length],
              attention_mask=block_diffusion_attention_mask[:, :prefill_length, :prefill_length].bool(),
              position_ids=position_ids[:, :prefill_length], past_key_values=past_key_values, store=True)
    num_transfer_tokens = sdar_num_transfer_tokens(block_length, denoising_steps)
    for num_block in range(prefill_blocks, num_blocks):
        bs, be = num_block * block_length, (num_block + 1) * block_length
        cur_x = x[:, bs:be].clone()
        cur_attn_mask = block_diffusion_attention_mask[:, bs:be, :be].bool()
        cur_position_ids = position_ids[:, bs:be]
        for step in range(denoising_steps + 1):
            mask_index = cur_x == mask_id
            if mask_index.sum() == 0:
                model(cur_x, attention_mask=cur_attn_mask, position_ids=cur_position_ids,
                      past_key_values=past_key_values, store=True)
                break
            logits = model(cur_x, attention_mask=cur_attn_mask, position_ids=cur_position_ids,
                           past_key_values=past_key_values, store=False)
            x0, x0_p = sdar_sample(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            k = int(num_transfer_tokens[step])
            if clamp_topk:
                k = min(k, int(mask_index.sum()))
            if remasking_strategy == "low_confidence_static":
                confidence = torch.where(mask_index, x0_p, -torch.inf)
                transfer_index = torch.zeros_like(x0, dtype=torch.bool)
                _, idx = torch.topk(confidence[0], k)
                transfer_index[0, idx] = True
            elif remasking_strategy == "low_confidence_dynamic":
                confidence = torch.where(mask_index, x0_p, -torch.inf)
                transfer_index = torch.zeros_like(x0, dtype=torch.bool)
                high_conf_mask = confidence[0] > confidence_threshold
                if high_conf_mask.sum() >= k:
                    transfer_index[0] = high_conf_mask
                else:
                    _, idx = torch.topk(confidence[0], k)
                    transfer_index[0, idx] = True
            else:
                raise ValueError(remasking_strategy)
            cur_x[transfer_index] = x0[transfer_index]
        x[:, bs:be] = cur_x
        if stopping_criteria_idx is not None and any(s in x[:, prompt_length:] for s in stopping_criteria_idx):
            break
    return x


# ---- Stable-DiffCoder generate_block (modeling_stable_diffcoder.py) ------------------------------

def sdc_make_block_causal_mask(seq_len, block_size=2, dtype=torch.float32):
    num_blocks = (seq_len + block_size - 1) // block_size
    block_mask = torch.tril(torch.ones((num_blocks, num_blocks), dtype=torch.bool))
    local_block = torch.ones((block_size, block_size), dtype=torch.bool)
    mask = block_mask.kron(local_block)[:seq_len, :seq_len]
    attention_mask = mask.float()
    attention_mask.masked_fill_(~mask, -torch.inf)
    return attention_mask.unsqueeze(0).unsqueeze(0).to(dtype)


def sdc_num_transfer_tokens(mask_map, steps):
    mask_num = mask_map.sum().long().item()
    base, remainder = mask_num // steps, mask_num % steps
    num_transfer_tokens = torch.full((steps,), fill_value=base, dtype=torch.long)
    num_transfer_tokens[:remainder] += 1
    return num_transfer_tokens


def sdc_transfer_index(logits, temperature, remasking, mask_index, x, num_transfer_token, threshold=None,
                       generator=None):
    if temperature == 0:
        logits_with_noise = logits
    else:
        lg = logits.to(torch.float64)
        noise = torch.rand(lg.shape, dtype=torch.float64, generator=generator)
        logits_with_noise = lg.exp() / (-torch.log(noise)) ** temperature
    x0 = torch.argmax(logits_with_noise, dim=-1)
    if remasking == "low_confidence":
        p = F.softmax(logits.to(torch.float64), dim=-1)
        x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
    elif remasking == "random":
        x0_p = torch.rand((x0.shape[0], x0.shape[1]), generator=generator)
    else:
        raise NotImplementedError(remasking)
    x0 = torch.where(mask_index, x0, x)
    confidence = torch.where(mask_index, x0_p, -np.inf)
    transfer_map = torch.zeros_like(x0, dtype=torch.bool)
    if threshold is not None:
        num_transfer_token = int(mask_index.sum(dim=1, keepdim=True))
    _, select_index = torch.topk(confidence[0], k=num_transfer_token)
    transfer_map[0, select_index] = True
    if threshold is not None:
        for k in range(1, num_transfer_token):
            if confidence[0, select_index[k]] < threshold:
                transfer_map[0, select_index[k]] = False
    return x0, transfer_map


@torch.no_grad()
def sdc_generate_block(model, input_ids, steps=128, gen_length=128, block_length=4, temperature=0.0,
                       remasking="low_confidence", mask_id=5, threshold=0.95, eos_id=None, generator=None):
    """generate_block (shift=False, as every caller uses it); `model` an HFStyleLM. Returns
    (x, nfe): x is the prompt + the generated tokens (cut at the block of the first eos)."""
    x = torch.cat([input_ids, torch.full((1, gen_length), mask_id, dtype=torch.long)], dim=1)
    assert gen_length % block_length == 0
    gen_blocks = gen_length // block_length
    assert steps % gen_blocks == 0
    steps = steps // gen_blocks
    prompt_length = input_ids.shape[1]
    gen_block_list = [block_length for _ in range(gen_blocks)]
    remainder = prompt_length % block_length
    if remainder != 0:
        res_block = block_length - remainder
        gen_block_list = [res_block] + gen_block_list
        gen_block_list[-1] = block_length - res_block
        gen_blocks += 1
    cum_block = [sum(gen_block_list[: i + 1]) for i in range(len(gen_block_list))]
    mask = sdc_make_block_causal_mask(prompt_length + gen_length, block_length)
    past_key_values = IdsCache()
    nfe = 0
    final_flag = False
    prefill_length = prompt_length // block_length * block_length
    if prefill_length > 0:
        model(x[:, :prefill_length], attention_mask=mask[..., :prefill_length, :prefill_length],
              position_ids=torch.arange(prefill_length), past_key_values=past_key_values)
    for block_id, _ in enumerate(gen_block_list):
        block_start = prompt_length + cum_block[block_id - 1] if block_id > 0 else prefill_length
        block_end = prompt_length + cum_block[block_id]
        num_transfer_tokens = sdc_num_transfer_tokens(x[:, block_start:block_end] == mask_id, steps)
        for token_count in num_transfer_tokens:
            if token_count > 0:
                nfe += 1
                mask_map = x[:, block_start:block_end] == mask_id
                logits = model(x[:, block_start:block_end], attention_mask=mask[..., block_start:block_end, :block_end],
                               position_ids=torch.arange(block_start, block_end), past_key_values=past_key_values)
                past_key_values.crop(block_start)
                x0, transfer_map = sdc_transfer_index(logits, temperature, remasking, mask_map,
                                                      x[:, block_start:block_end],
                                                      token_count.item() if threshold is None else None, threshold,
                                                      generator=generator)
                x[:, block_start:block_end][transfer_map] = x0[transfer_map]
            if (x[:, block_start:block_end] == mask_id).sum() == 0:
                gen_start = max(block_start, prompt_length)
                if eos_id is not None and gen_start < block_end and (x[:, gen_start:block_end] == eos_id).sum() > 0:
                    final_flag = True
                    x = x[:, :block_end]
                    eos_pos = (x[:, gen_start:block_end] == eos_id).nonzero(as_tuple=True)[1][0].item() + gen_start
                    x[0, eos_pos:] = eos_id
                    break
                nfe += 1
                model(x[:, block_start:block_end], attention_mask=mask[..., block_start:block_end, :block_end],
                      position_ids=torch.arange(block_start, block_end), past_key_values=past_key_values)
                break
        if final_flag:
            break
    return x, nfe


# ---- Fast-dLLM v2 generate (the HF modeling.py's Fast_dLLM_QwenForCausalLM.generate) ------------

def v2_sample_with_top_p(logits, top_p=0.95, temperature=1.0, generator=None):
    if temperature > 0:
        scaled_logits = logits / temperature
    else:
        p_1t = torch.softmax(logits, dim=-1)
        return p_1t.argmax(dim=-1), p_1t
    probs = F.softmax(scaled_logits, dim=-1)
    sorted_probs, sorted_indices = torch.sort(probs, descending=True)
    cumulative_probs = torch.cumsum(sorted_probs, dim=-1)
    sorted_indices_to_remove = cumulative_probs > top_p
    sorted_indices_to_remove[..., 1:] = sorted_indices_to_remove[..., :-1].clone()
    sorted_indices_to_remove[..., 0] = 0
    indices_to_remove = torch.zeros_like(probs, dtype=torch.bool).scatter_(
        dim=-1, index=sorted_indices, src=sorted_indices_to_remove)
    probs[indices_to_remove] = 0
    p_1t = probs / torch.sum(probs, dim=-1, keepdim=True)
    x_1 = torch.multinomial(p_1t[0], num_samples=1, generator=generator).unsqueeze(0).squeeze(-1)
    return x_1, p_1t


def v2_eval_mask(seqlen, block_size, cache_seq_len):
    q_indices = torch.arange(seqlen) + cache_seq_len
    k_indices = torch.arange(seqlen + cache_seq_len)
    return (q_indices[:, None] // block_size) >= (k_indices[None, :] // block_size)


@torch.no_grad()
def fast_dllm_v2_generate(model, input_ids, max_new_tokens, mask_id=151665, threshold=1, small_block_size=8,
                          block_size=32, stop_token=151645, top_p=0.95, temperature=0, generator=None,
                          prefill_equal=False):
    """generate (use_block_cache=False); `model` an HFStyleLM. Returns the prompt + the generated
    tokens, cut after the first stop token, as the official one does."""
    def forward(chunk, past, store):
        cache_len = past.get_seq_length() if past is not None else 0
        return model(chunk, attention_mask=v2_eval_mask(chunk.shape[1], block_size, cache_len),
                     position_ids=torch.arange(cache_len, cache_len + chunk.shape[1]),
                     past_key_values=past, store=store)

    num_blocks = max_new_tokens // block_size
    original_input_length = input_ids.shape[1]
    if input_ids.shape[1] > block_size or (prefill_equal and input_ids.shape[1] == block_size):
        past_key_values = IdsCache()
        logits = forward(input_ids[:, :(input_ids.shape[1] // block_size * block_size)], past_key_values, True)
        if input_ids.shape[1] % block_size == 0:
            next_token = logits[:, -1:, :].argmax(dim=-1)
            input_ids = torch.cat([input_ids, next_token], dim=1)
    else:
        past_key_values = None
    num_small_blocks = block_size // small_block_size
    for _ in range(num_blocks):
        if stop_token in input_ids[:, original_input_length:]:
            break
        prompt_length = input_ids.shape[1]
        x_init = mask_id * torch.ones((input_ids.shape[0], block_size - prompt_length % block_size), dtype=torch.long)
        x_t = torch.cat([input_ids, x_init], dim=1)
        while True:
            if stop_token in x_t[:, prompt_length:]:
                stop_token_idx = (x_t[:, prompt_length:] == stop_token).nonzero()[0][1]
                if (x_t[:, prompt_length:prompt_length + stop_token_idx] == mask_id).sum() == 0:
                    break
            mask_idx = x_t[:, -block_size:] == mask_id
            if mask_idx.sum() == 0:
                if past_key_values is None:
                    past_key_values = IdsCache()
                logits = forward(x_t[:, -block_size:], past_key_values, True)
                next_token = logits[:, -1:, :].argmax(dim=-1)
                x_t = torch.cat([x_t, next_token], dim=1)
                break
            for small_block_idx in range(num_small_blocks):
                small_block_start_idx = small_block_idx * small_block_size
                small_block_end_idx = small_block_start_idx + small_block_size
                start = -block_size + small_block_start_idx
                end = None if block_size == small_block_end_idx else -block_size + small_block_end_idx
                while True:
                    mask_idx = x_t[:, -block_size:] == mask_id
                    if mask_idx[:, start:end].sum() == 0:
                        break
                    if stop_token in x_t[:, prompt_length:]:
                        stop_token_idx = (x_t[:, prompt_length:] == stop_token).nonzero()[0][1]
                        if (x_t[:, prompt_length:prompt_length + stop_token_idx] == mask_id).sum() == 0:
                            break
                    logits = forward(x_t[:, -block_size:], past_key_values, False)
                    logits = torch.cat([logits[:, :1, :], logits[:, :-1, :]], dim=1)
                    logits = logits[:, start:end]
                    x_1, p_1t = v2_sample_with_top_p(logits, top_p=top_p, temperature=temperature, generator=generator)
                    x1_p = torch.squeeze(torch.gather(p_1t, dim=-1, index=torch.unsqueeze(x_1, -1)), -1)
                    x1_p = torch.where(mask_idx[:, start:end], x1_p, -torch.inf)
                    unmask_idx = x1_p > threshold
                    max_prob_idx = x1_p.argmax(dim=-1)
                    unmask_idx[torch.arange(x_1.shape[0]), max_prob_idx] = True
                    unmask_idx = unmask_idx & mask_idx[:, start:end]
                    x_t[:, start:end][unmask_idx] = x_1[unmask_idx]
        input_ids = x_t
    if stop_token in input_ids[:, original_input_length:]:
        stop_token_idx = (input_ids[:, original_input_length:] == stop_token).nonzero()[0][1]
        input_ids = input_ids[:, :stop_token_idx + original_input_length + 1]
    return input_ids


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
