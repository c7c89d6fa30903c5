"""Logit parity of both layouts with transformers on the same random weights, made bidirectional;
alignment of Dream's shifted logits; the block KV cache windows; random_model shapes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dllm_cli.engine.layouts.llada import llama_name
from dllm_cli.engine.loader import PUBLISHED_SHAPES, load_model, model_spec, random_model

from tiny import make_dream_checkpoint, make_llada_checkpoint

TOL = 1e-4


def _state_dict(folder, rename=lambda n: n):
    sd = {}
    for f in sorted(folder.glob("*.safetensors")):
        sd.update({rename(k): v for k, v in load_file(str(f)).items()})
    return sd


def hf_qwen2(folder):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    c = json.loads((folder / "config.json").read_text())
    cfg = Qwen2Config(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
                      intermediate_size=c["intermediate_size"], num_hidden_layers=c["num_hidden_layers"],
                      num_attention_heads=c["num_attention_heads"],
                      num_key_value_heads=c["num_key_value_heads"], rms_norm_eps=c["rms_norm_eps"],
                      rope_theta=c["rope_theta"], tie_word_embeddings=c["tie_word_embeddings"],
                      attn_implementation="sdpa")
    model = Qwen2ForCausalLM(cfg).eval()
    missing, unexpected = model.load_state_dict(_state_dict(folder), strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if c["tie_word_embeddings"] else set())
    if c["tie_word_embeddings"]:
        model.tie_weights()
    return model


def hf_llama(folder):
    from transformers import LlamaConfig, LlamaForCausalLM

    c = json.loads((folder / "config.json").read_text())
    cfg = LlamaConfig(vocab_size=c["embedding_size"], hidden_size=c["d_model"],
                      intermediate_size=c["mlp_hidden_size"], num_hidden_layers=c["n_layers"],
                      num_attention_heads=c["n_heads"], num_key_value_heads=c["n_kv_heads"],
                      rms_norm_eps=c["rms_norm_eps"], rope_theta=c["rope_theta"],
                      tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                      attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).eval()
    model.load_state_dict(_state_dict(folder, llama_name), strict=True)  # the one name mapping
    return model


def hf_logits(model, ids, mask=None, causal=False, positions=None):
    """Run a transformers model with a 4-D additive mask: zeros (bidirectional) + padding."""
    B, T = ids.shape
    bias = torch.zeros(B, 1, T, T)
    if causal:
        bias = bias + torch.full((T, T), float("-inf")).triu(1)
    if mask is not None:
        bias = bias.masked_fill(mask[:, None, None, :] == 0, torch.finfo(torch.float32).min)
    if positions is None:
        positions = torch.arange(T).expand(B, T)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=bias, position_ids=positions).logits


def shift(raw):
    """Dream's official realignment: cat(logits[:, :1], logits[:, :-1])."""
    return torch.cat([raw[:, :1], raw[:, :-1]], dim=1)


def _ids(model, B=2, T=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.tokenizer.vocab_size, (B, T), generator=g)


def _left_pad_mask(B, T, pads=(0, 4)):
    mask = torch.ones(B, T, dtype=torch.long)
    for b, p in enumerate(pads):
        mask[b, :p] = 0
    return mask


DREAM_CASES = {
    "untied-gqa": dict(),
    "tied-sharded-qwen2": dict(tied=True, sharded=True, model_type="qwen2"),
    "mha-vocab-merges": dict(num_kv_heads=4, tokenizer_format="vocab-merges"),
}
LLADA_CASES = {"mha": dict(), "gqa-sharded": dict(num_kv_heads=2, sharded=True)}


@pytest.fixture(scope="module", params=list(DREAM_CASES))
def dream_pair(request, tmp_path_factory):
    folder = make_dream_checkpoint(tmp_path_factory.mktemp("dp"), **DREAM_CASES[request.param])
    return load_model(folder), hf_qwen2(folder)


@pytest.fixture(scope="module", params=list(LLADA_CASES))
def llada_pair(request, tmp_path_factory):
    folder = make_llada_checkpoint(tmp_path_factory.mktemp("lp"), **LLADA_CASES[request.param])
    return load_model(folder), hf_llama(folder)


def test_dream_parity_shifted(dream_pair):
    ours, ref = dream_pair
    ids = _ids(ours)
    expected = shift(hf_logits(ref, ids))
    assert (ours.logits(ids) - expected).abs().max().item() < TOL
    # and the shift really matters: unshifted reference logits disagree
    assert (ours.logits(ids) - hf_logits(ref, ids)).abs().max().item() > 0.1


def test_dream_parity_left_padding(dream_pair):
    ours, ref = dream_pair
    ids, mask = _ids(ours), _left_pad_mask(2, 12)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    expected = shift(hf_logits(ref, ids, mask, positions=positions))
    got = ours.logits(ids, attention_mask=mask)
    real = mask.bool()
    real[:, 1:] &= mask[:, :-1].bool()  # aligned position i uses hidden i-1: both must be real
    assert (got - expected)[real].abs().max().item() < TOL


def test_llada_parity(llada_pair):
    ours, ref = llada_pair
    ids = _ids(ours)
    assert (ours.logits(ids) - hf_logits(ref, ids)).abs().max().item() < TOL


def test_llada_parity_left_padding(llada_pair):
    ours, ref = llada_pair
    ids, mask = _ids(ours), _left_pad_mask(2, 12)
    got = ours.logits(ids, attention_mask=mask)  # LLaDA: positions stay 0..T-1
    expected = hf_logits(ref, ids, mask)
    assert (got - expected)[mask.bool()].abs().max().item() < TOL


def test_llada_oracle_is_bidirectional(llada_pair):
    """The parity above would fail under a causal mask: the reference is truly bidirectional."""
    ours, ref = llada_pair
    ids = _ids(ours)
    assert (ours.logits(ids) - hf_logits(ref, ids, causal=True)).abs().max().item() > 0.1


def test_dream_oracle_is_bidirectional(dream_pair):
    ours, ref = dream_pair
    ids = _ids(ours)
    assert (ours.logits(ids) - shift(hf_logits(ref, ids, causal=True))).abs().max().item() > 0.1


@pytest.mark.parametrize("layout", ["dream", "llada"])
def test_attention_sees_later_tokens(layout, dream_ckpt, llada_ckpt):
    model = load_model(dream_ckpt if layout == "dream" else llada_ckpt)
    ids = _ids(model, B=1)
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % model.tokenizer.vocab_size
    assert (model.logits(ids)[0, :3] - model.logits(changed)[0, :3]).abs().max().item() > 1e-3


def test_padding_is_invisible(dream_ckpt):
    """Padded keys do not change real positions' logits (left padding, Dream positions)."""
    model = load_model(dream_ckpt)
    ids = _ids(model, B=1, T=8)
    pad = torch.full((1, 3), model.tokens.pad)
    padded = torch.cat([pad, ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)], 1)
    alone, with_pad = model.logits(ids), model.logits(padded, attention_mask=mask)
    assert (alone[:, 1:] - with_pad[:, 4:]).abs().max().item() < 1e-4


# ---- block KV cache ------------------------------------------------------------------------

WINDOWS = [(0, 4), (4, 8), (5, 12), (11, 12), (0, 12)]


@pytest.mark.parametrize("layout", ["dream", "dream_tied", "llada"])
def test_window_matches_full_pass(layout, dream_ckpt, dream_tied_ckpt, llada_ckpt):
    model = load_model({"dream": dream_ckpt, "dream_tied": dream_tied_ckpt, "llada": llada_ckpt}[layout])
    ids = _ids(model)
    for mask in (None, _left_pad_mask(2, 12, pads=(0, 2))):
        cache = model.new_cache()
        full = model.logits(ids, attention_mask=mask, cache=cache)
        assert cache.length == 12
        for s, e in WINDOWS:
            win = model.logits(ids, attention_mask=mask, cache=cache, window=(s, e))
            assert win.shape == (2, e - s, model.spec.vocab_size)
            scale = max(1.0, full.abs().max().item())  # fp32 rounding grows with |logit|
            assert (win - full[:, s:e]).abs().max().item() < 1e-5 * scale, (s, e)


def test_window_uses_cache_outside_and_fresh_inside(llada_ckpt):
    model = load_model(llada_ckpt)
    ids = _ids(model, B=1)
    cache = model.new_cache()
    model.logits(ids, cache=cache)
    edited = ids.clone()
    edited[0, 1] = (edited[0, 1] + 1) % 300  # outside the window: the stale cache is used
    stale = model.logits(edited, cache=cache, window=(6, 10))
    assert (stale - model.logits(ids)[:, 6:10]).abs().max().item() < 1e-5
    edited[0, 7] = (edited[0, 7] + 1) % 300  # inside: fresh K/V are written into the cache
    keys_before = cache.keys[0][:, :, 7].clone()
    model.logits(edited, cache=cache, window=(6, 10))
    assert (cache.keys[0][:, :, 7] - keys_before).abs().max().item() > 1e-4


def test_window_needs_a_matching_cache(dream_ckpt):
    model = load_model(dream_ckpt)
    ids = _ids(model)
    with pytest.raises(ValueError):
        model.logits(ids, window=(0, 4))
    cache = model.new_cache()
    model.logits(ids[:, :8], cache=cache)
    with pytest.raises(ValueError):
        model.logits(ids, cache=cache, window=(0, 4))


# ---- dtypes, random models -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_fp32(dtype, dream_ckpt):
    ref, half = load_model(dream_ckpt), load_model(dream_ckpt, dtype=dtype)
    assert half.dtype == dtype and half.device.type == "cpu"
    ids = _ids(ref)
    out = half.logits(ids)
    assert out.dtype == dtype
    assert (out.float() - ref.logits(ids)).abs().max().item() < 0.25


def test_bf16_checkpoint_loads_as_fp32(tmp_path):
    folder = make_llada_checkpoint(tmp_path, dtype="bfloat16")
    model = load_model(folder, dtype="float32")
    assert model.dtype == torch.float32
    assert torch.isfinite(model.logits(_ids(model))).all()


@pytest.mark.parametrize("shape", sorted(PUBLISHED_SHAPES))
def test_published_shapes_param_counts(shape):
    spec = model_spec(PUBLISHED_SHAPES[shape])
    billions = spec.param_count() / 1e9
    published = {"dream-7b": 7.6, "llada-8b": 8.0, "open-dcoder-0.5b": 0.49, "sdar-8b": 8.19, "sdar-1.7b": 2.03,
                 "stable-diffcoder-8b": 8.25, "fast-dllm-v2-7b": 7.62, "llada2-mini": 16.26, "sdar-30b-a3b": 30.53}
    assert published[shape] == pytest.approx(billions, abs=0.06)


def test_random_model_small_shape():
    cfg = dict(PUBLISHED_SHAPES["open-dcoder-0.5b"], num_hidden_layers=1, hidden_size=64,
               num_attention_heads=4, num_key_value_heads=2, intermediate_size=96, vocab_size=512,
               mask_token_id=500, eos_token_id=1)
    model = random_model(cfg, device="cpu", dtype=torch.float32, seed=3)
    assert model.spec.tied and model.tokens.mask == 500 and model.tokenizer is None
    out = model.logits(torch.randint(0, 512, (1, 16)))
    assert out.shape == (1, 16, 512) and torch.isfinite(out).all()
    again = random_model(cfg, device="cpu", dtype=torch.float32, seed=3)
    assert torch.equal(again.net.model.embed_tokens.weight, model.net.model.embed_tokens.weight)


def test_logits_are_plain_tensors(dream_ckpt):
    """Samplers edit logits in place (e.g. eos to -inf): no inference-mode tensors, no grad."""
    model = load_model(dream_ckpt)
    out = model.logits(_ids(model))
    out[:, :, model.tokens.eos] = -torch.inf
    assert not out.requires_grad


def test_param_count_with_explicit_head_dim():
    """Qwen2 configs may set head_dim with heads x head_dim != hidden_size: q/o shapes follow it."""
    cfg = dict(PUBLISHED_SHAPES["dream-7b"], num_hidden_layers=1, hidden_size=64, num_attention_heads=4,
               num_key_value_heads=2, head_dim=32, intermediate_size=96, vocab_size=256, mask_token_id=250)
    model = random_model(cfg, device="cpu", dtype=torch.float32)
    assert model.net.model.layers[0].self_attn.q_proj.weight.shape == (128, 64)
    assert model.spec.n_params == model.spec.param_count()
    assert model.logits(torch.randint(0, 250, (1, 8))).shape == (1, 8, 256)
