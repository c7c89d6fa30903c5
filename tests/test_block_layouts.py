"""The block-diffusion layouts (SDAR, Stable-DiffCoder, Fast-dLLM v2): logit parity with
transformers' Qwen3 / Llama / Qwen2 reference classes on the same random weights under the same
block-causal mask (max |Δ| < 1e-4 in fp32), the pattern itself (block-causal, aligned at position
0: neither bidirectional nor causal), the exact BlockKVCache (windows over it equal the full pass),
and what loading reads from the published files: layout from config.json (never the folder name),
family, block length, mask id, tensor names and counts, strictness, refused configurations."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dllm_cli import catalog
from dllm_cli.engine.layouts import LAYOUTS, BlockKVCache
from dllm_cli.engine.layouts.common import block_causal_mask
from dllm_cli.engine.loader import PUBLISHED_SHAPES, load_model, model_spec, random_model, reduced
from dllm_cli.errors import CheckpointError, TokenizerError, UsageError

from oracles import raw_logits, reference
from tiny import (
    AUTO_MAP_MARKER,
    DROP,
    edit_config,
    make_fast_dllm_v2_checkpoint,
    make_sdar_checkpoint,
    make_stable_diffcoder_checkpoint,
)

TOL = 1e-4
MAKERS = {"sdar": make_sdar_checkpoint, "stable-diffcoder": make_stable_diffcoder_checkpoint,
          "fast-dllm-v2": make_fast_dllm_v2_checkpoint}
CASES = {
    "sdar": ("sdar", dict()),
    "sdar-training-copy-sharded-mha": ("sdar", dict(training_copy=True, sharded=True, num_kv_heads=4)),
    "sdar-tied-b8": ("sdar", dict(tied=True, block_size=8)),
    "stable-diffcoder": ("stable-diffcoder", dict()),
    "stable-diffcoder-old-sharded": ("stable-diffcoder", dict(revision="old", sharded=True)),
    "fast-dllm-v2": ("fast-dllm-v2", dict()),
    "fast-dllm-v2-bd8-tied": ("fast-dllm-v2", dict(bd_size=8, tied=True)),
}


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    layout, kw = CASES[request.param]
    folder = MAKERS[layout](tmp_path_factory.mktemp(request.param), **kw)
    return layout, load_model(folder), reference(folder, layout)


def _ids(model, T=43, seed=1):
    return torch.randint(0, model.tokenizer.vocab_size, (1, T), generator=torch.Generator().manual_seed(seed))


def aligned(layout, raw):
    """Fast-dLLM v2 is shifted: token i is scored at position i - 1 (dllm realigns)."""
    return torch.cat([raw[:, :1], raw[:, :-1]], dim=1) if layout == "fast-dllm-v2" else raw


def test_parity_with_transformers_under_the_block_causal_mask(pair):
    layout, ours, ref = pair
    ids, B = _ids(ours), ours.attention_block
    expected = aligned(layout, raw_logits(ref, ids, B))
    assert (ours.logits(ids) - expected).abs().max().item() < TOL


def test_the_pattern_is_block_causal(pair):
    """Not bidirectional, not causal: the same reference with another mask disagrees."""
    layout, ours, ref = pair
    ids, B = _ids(ours), ours.attention_block
    got = ours.logits(ids)
    bidirectional = aligned(layout, raw_logits(ref, ids, 10 ** 6))  # one block: no mask
    causal = aligned(layout, raw_logits(ref, ids, B, causal_within=True))
    assert (got - bidirectional).abs().max().item() > 0.1
    assert (got - causal).abs().max().item() > 0.1
    later = ids.clone()
    later[0, -1] = (later[0, -1] + 1) % 300  # a token in the last block never reaches earlier blocks
    last_start = (ids.shape[1] - 1) // B * B
    assert torch.equal(ours.logits(later)[:, :last_start], got[:, :last_start])
    inside = ids.clone()
    inside[0, last_start] = (inside[0, last_start] + 1) % 300  # ... but reaches its whole block
    assert (ours.logits(inside)[:, last_start:] - got[:, last_start:]).abs().max().item() > 1e-3


def test_exact_cache_windows_equal_the_full_pass(pair):
    """Prefill, denoise a block (appended then cropped), keep it, go on: the logits of every
    window equal the full pass's (the shifted layout realigns inside the window)."""
    layout, ours, _ = pair
    ids, B = _ids(ours, T=5 * 8), ours.attention_block
    T = ids.shape[1]
    full = ours.logits(ids)
    cache = ours.new_cache()
    assert isinstance(cache, BlockKVCache)
    first = (T // 3) // B * B or B
    ours.logits(ids[:, :first], cache=cache)
    assert cache.length == first
    starts = [s for s in range(first, T, B)]
    for s in starts:
        e = min(s + B, T)
        win = ours.logits(ids[:, :e], cache=cache, window=(s, e))
        cache.crop(s)
        skip = 1 if layout == "fast-dllm-v2" else 0  # a block's first row: its own hidden state there
        assert (win[:, skip:] - full[:, s + skip:e]).abs().max().item() < 1e-5 * max(1.0, full.abs().max().item())
        assert cache.length == s
        part = ours.logits(ids[:, :e], cache=cache, window=(s, e), rows=(e - 2, e))  # score two rows only
        cache.crop(s)
        assert part.shape[1] == 2 and torch.allclose(part, win[:, -2:], atol=1e-5, rtol=1e-5)
        two = ours.logits(ids[:, :e], cache=cache, window=(s, e))  # the same block again: keep it
        assert torch.allclose(two, win, atol=1e-6)
        assert cache.length == e
    no_cache = ours.logits(ids, window=(T - B, T))  # full recompute, head on the window only
    assert no_cache.shape[1] == B
    if layout != "fast-dllm-v2":
        assert (no_cache - full[:, T - B:]).abs().max().item() < 1e-5 * max(1.0, full.abs().max().item())


def test_rows_outside_the_window_or_on_a_bidirectional_model_are_refused(tmp_path, dream_ckpt):
    model = load_model(make_sdar_checkpoint(tmp_path))
    with pytest.raises(ValueError, match="outside the window"):
        model.logits(_ids(model, T=8), window=(4, 8), rows=(2, 6))
    dream = load_model(dream_ckpt)
    with pytest.raises(ValueError, match="block-causal"):
        dream.logits(_ids(dream, T=8), rows=(0, 2))


def test_cache_misuse_is_refused(tmp_path):
    model = load_model(make_sdar_checkpoint(tmp_path))
    ids = _ids(model, T=16)
    cache = model.new_cache()
    model.logits(ids[:, :8], cache=cache)
    with pytest.raises(ValueError, match="must start where the cache ends"):
        model.logits(ids, cache=cache, window=(4, 12))
    with pytest.raises(ValueError, match="crop"):
        cache.crop(9)
    with pytest.raises(ValueError, match="its own cache"):
        from dllm_cli.engine.layouts import KVCache
        model.logits(ids, cache=KVCache(2))


def test_mask_helper():
    assert block_causal_mask(8, 12, 12, 4) is None  # one block over the keys before and in it
    m = block_causal_mask(0, 8, 8, 4)[0, 0]
    assert m[:4, :4].all() and not m[:4, 4:].any() and m[4:].all()
    m = block_causal_mask(6, 10, 10, 4)[0, 0]  # a window across a block boundary
    assert m[:2, :8].all() and not m[:2, 8:].any() and m[2:].all()


# ---- what loading reads from the files ---------------------------------------------------------

@pytest.mark.parametrize("layout", list(MAKERS))
def test_layout_family_block_and_tokens_from_the_files(layout, tmp_path):
    folder = MAKERS[layout](tmp_path / "LLaDA-8B-Instruct")  # the folder name says nothing
    model = load_model(folder)
    ckpt = model.checkpoint
    assert model.spec.layout == ckpt.layout == layout and ckpt.family == layout
    assert model.spec.block_causal and model.attention_block == ckpt.attention_block
    assert model.attention_block == {"sdar": 4, "stable-diffcoder": 4, "fast-dllm-v2": 32}[layout]
    tok = model.tokenizer
    mask_name = {"sdar": "<|MASK|>", "stable-diffcoder": "<[MASK_TOKEN]>", "fast-dllm-v2": "|<MASK>|"}[layout]
    assert model.tokens.mask == tok.token_to_id(mask_name) and model.tokens.mask in tok.special_ids
    eos = {"sdar": "<|endoftext|>", "stable-diffcoder": "<[end\u2581of\u2581sentence]>",
           "fast-dllm-v2": "<|im_end|>"}[layout]
    assert model.tokens.eos == tok.token_to_id(eos)
    if layout != "stable-diffcoder":
        assert {tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")} <= model.tokens.stops
    assert model.spec.n_params == model.spec.param_count()
    names = set()
    for f in folder.glob("*.safetensors"):
        names |= set(load_file(str(f)))
    per_layer = {"sdar": 11, "stable-diffcoder": 9, "fast-dllm-v2": 12}[layout]  # q/k norms; q/k/v biases
    assert len(names) == per_layer * model.spec.num_layers + 3  # + embed, norm, lm_head
    assert not (folder / AUTO_MAP_MARKER).exists()


def test_sdar_block_size_and_mask_id_in_the_training_copy(tmp_path):
    folder = make_sdar_checkpoint(tmp_path / "a", training_copy=True)
    assert load_model(folder).attention_block == 4
    folder = make_sdar_checkpoint(tmp_path / "b", block_size=16)
    assert load_model(folder).attention_block == 16 == catalog.inspect(folder).attention_block
    edit_config(folder, block_size="big")
    with pytest.raises(CheckpointError, match="block_size"):
        load_model(folder)


def test_fast_dllm_bd_size(tmp_path):
    folder = make_fast_dllm_v2_checkpoint(tmp_path, bd_size=16)
    assert load_model(folder).attention_block == 16


def test_mask_id_falls_back_to_the_published_one():
    cfg = {"model_type": "sdar"}
    assert catalog.with_block_mask_id(cfg, "sdar", {})["mask_token_id"] == 151669
    assert catalog.with_block_mask_id(cfg, "sdar", {"<MASK>": 7})["mask_token_id"] == 7
    assert catalog.with_block_mask_id({"mask_token_id": 3}, "sdar", {"<MASK>": 7})["mask_token_id"] == 3
    assert catalog.with_block_mask_id({}, "fast-dllm-v2", {})["mask_token_id"] == 151665
    assert catalog.with_block_mask_id({}, "stable-diffcoder", {})["mask_token_id"] == 5
    assert "mask_token_id" not in catalog.with_block_mask_id({}, "dream", {})


def test_a_mask_id_that_is_no_special_token_is_refused(tmp_path):
    folder = make_fast_dllm_v2_checkpoint(tmp_path)
    edit_config(folder, mask_token_id=100)  # an ordinary BPE token
    with pytest.raises(TokenizerError, match="not a special token"):
        load_model(folder)


def test_stable_diffcoder_needs_its_class_name(tmp_path):
    """model_type llama is also every autoregressive Llama: the class must name the diffusion model."""
    folder = make_stable_diffcoder_checkpoint(tmp_path / "new")
    edit_config(folder, architectures=["LlamaForCausalLM"], auto_map=DROP)
    with pytest.raises(CheckpointError, match="not a supported diffusion layout"):
        load_model(folder)
    old = make_stable_diffcoder_checkpoint(tmp_path / "old", revision="old")
    assert catalog.inspect(old).layout == "stable-diffcoder"
    assert catalog.layout_of({"architectures": ["SDARForCausalLM"]}) == "sdar"
    assert catalog.layout_of({"model_type": "Fast_dLLM_Qwen"}) == "fast-dllm-v2"
    assert catalog.layout_of({"model_type": "sdar_moe"}) == "sdar-moe"  # the MoE variant is its own layout


@pytest.mark.parametrize("change, words", [
    (dict(rope_scaling={"type": "yarn", "factor": 4.0}), ["rope_scaling", "not supported"]),
    (dict(use_sliding_window=True), ["sliding-window"]),
    (dict(attention_bias=True), ["attention_bias=true"]),
    (dict(hidden_act="gelu"), ["hidden_act"]),
    (dict(head_dim=DROP, num_attention_heads=3), ["do not divide"]),
])
def test_unsupported_configs_are_refused(tmp_path, change, words):
    folder = make_sdar_checkpoint(tmp_path)
    edit_config(folder, **change)
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    assert all(w in str(info.value) for w in words) and str(folder / "config.json") in str(info.value)


def test_strict_loading_names_the_missing_q_norm(tmp_path):
    folder = make_sdar_checkpoint(tmp_path)
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    del tensors["model.layers.1.self_attn.k_norm.weight"]
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match="model.layers.1.self_attn.k_norm.weight"):
        load_model(folder)


def test_explicit_head_dim_sets_q_width(tmp_path):
    """SDAR-4B: 32 heads x 128 = 4096 != hidden 2560, so head_dim must come from config.json."""
    model = load_model(make_sdar_checkpoint(tmp_path, head_dim=32))  # 4 heads x 32 = 128 != hidden 64
    q = model.net.model.layers[0].self_attn.q_proj.weight
    assert q.shape == (128, 64) and model.spec.head_dim == 32


def test_layout_tables_agree():
    for name, (types, archs) in catalog.LAYOUT_TYPES.items():
        assert LAYOUTS[name].MODEL_TYPES == types and LAYOUTS[name].ARCHITECTURES == archs, name


# ---- the published shapes --------------------------------------------------------------------

@pytest.mark.parametrize("shape, billions, tensors_per_layer", [
    ("sdar-8b", 8.191, 11), ("sdar-1.7b", 2.032, 11), ("stable-diffcoder-8b", 8.25, 9),
    ("fast-dllm-v2-7b", 7.616, 12)])
def test_published_block_shapes(shape, billions, tensors_per_layer):
    spec = model_spec(PUBLISHED_SHAPES[shape])
    assert spec.block_causal and spec.param_count() / 1e9 == pytest.approx(billions, abs=0.005)
    small = dict(reduced(PUBLISHED_SHAPES[shape], 1), hidden_size=64, intermediate_size=96, vocab_size=512,
                 num_attention_heads=4, num_key_value_heads=2, mask_token_id=500, eos_token_id=1, pad_token_id=1,
                 bos_token_id=0)
    small.pop("head_dim", None)
    model = random_model(small, seed=1)
    assert len(dict(model.net.named_parameters())) == tensors_per_layer + 3
    out = model.logits(torch.randint(0, 500, (1, 40)))
    assert out.shape == (1, 40, 512) and torch.isfinite(out).all()


def test_reduced_depth():
    assert reduced(PUBLISHED_SHAPES["sdar-8b"], 2)["num_hidden_layers"] == 2
    assert reduced(PUBLISHED_SHAPES["llada-8b"], 3)["n_layers"] == 3
    assert reduced(PUBLISHED_SHAPES["sdar-8b"], None) == PUBLISHED_SHAPES["sdar-8b"]
    with pytest.raises(UsageError, match="--layers"):
        reduced(PUBLISHED_SHAPES["sdar-8b"], 0)


@pytest.mark.parametrize("layout, template", [("sdar", catalog.QWEN3_CHAT_TEMPLATE),
                                              ("stable-diffcoder", catalog.SEED_CODER_CHAT_TEMPLATE),
                                              ("fast-dllm-v2", catalog.CHATML_TEMPLATE)])
def test_fallback_chat_templates(tmp_path, layout, template):
    folder = MAKERS[layout](tmp_path)
    shipped = catalog.inspect(folder).chat_template
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc.pop("chat_template")
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    assert shipped != template and catalog.inspect(folder).chat_template == template
    model = load_model(folder)
    text = model.tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": "hi"}])
    ids = model.tokenizer.encode(text)
    if layout == "stable-diffcoder":  # the turn markers are the checkpoint's special tokens
        assert text.startswith("<[begin\u2581of\u2581sentence]>system\nBe brief.\n\n<[end\u2581of\u2581sentence]>")
        assert text.endswith("<[begin\u2581of\u2581sentence]>assistant\n")
        assert ids.count(model.tokens.bos) == 3 and ids.count(model.tokens.eos) == 2
    else:
        assert text.endswith("<|im_start|>assistant\n")
        assert ids.count(model.tokenizer.token_to_id("<|im_start|>")) == 3
