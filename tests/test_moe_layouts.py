"""The mixture-of-experts layouts (LLaDA2.0 / 2.1 `llada2_moe`, SDAR-MoE `sdar_moe`): logit parity
with transformers' Glm4MoeForCausalLM / Qwen3MoeForCausalLM on the same random weights under the
same block-causal mask (max |Δ| < 1e-4 in fp32), the same experts chosen for every token of every
layer (the reference routers hooked), an expert bias that really changes the choice, the exact
block KV cache, and what loading reads from the files: strict tensor names, the fp32 expert bias,
refused configurations, family 2.0 vs 2.1, the fallback chat template and its stop token, the
published shapes (total and active parameters) and the `dllm models` row."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dllm_cli import catalog
from dllm_cli.engine.layouts import BlockKVCache, llada2_moe
from dllm_cli.engine.layouts.moe import MoESpec, SparseMoE, grouped_sigmoid, softmax_topk
from dllm_cli.engine.loader import PUBLISHED_SHAPES, build_on_meta, load_model, model_spec, random_model, reduced
from dllm_cli.errors import CheckpointError

from oracles import glm4moe_reference, qwen3moe_reference, raw_logits
from tiny import (
    AUTO_MAP_MARKER,
    DROP,
    MOE_EXPERTS,
    MOE_TOPK,
    edit_config,
    make_llada2_checkpoint,
    make_sdar_moe_checkpoint,
)

TOL = 1e-4
CASES = {
    # LLaDA2: untied, one shared expert, layer 0 dense, half of each head rotated (the published mini)
    "llada2": ("llada2-moe", dict()),
    # tied, no shared expert, every layer sparse, q/k/v biases, full rotary, sharded files
    "llada2-tied-sparse-qkvbias-fullrope": ("llada2-moe", dict(tied=True, shared=0, first_dense=0, use_qkv_bias=True,
                                                               partial_rotary_factor=1.0, sharded=True)),
    "sdar-moe": ("sdar-moe", dict()),
    # layers 1 and 3 by decoder_sparse_step 2, layer 3 dense again by mlp_only_layers; weights not renormalised
    "sdar-moe-step2-mlp-only-nonorm": ("sdar-moe", dict(layers=4, decoder_sparse_step=2, mlp_only_layers=(3,),
                                                        norm_topk_prob=False, sharded=True)),
}
SPARSE = {"llada2": (False, True, True), "llada2-tied-sparse-qkvbias-fullrope": (True, True, True),
          "sdar-moe": (True, True, True), "sdar-moe-step2-mlp-only-nonorm": (False, True, False, False)}


def _make(layout, folder, **kw):
    return (make_llada2_checkpoint if layout == "llada2-moe" else make_sdar_moe_checkpoint)(folder, **kw)


def _reference(layout, folder):
    return (glm4moe_reference if layout == "llada2-moe" else qwen3moe_reference)(folder)


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    layout, kw = CASES[request.param]
    folder = _make(layout, tmp_path_factory.mktemp(request.param), **kw)
    return request.param, load_model(folder), _reference(layout, folder)


def _ids(model, T=45, seed=1):
    return torch.randint(0, model.tokenizer.vocab_size, (1, T), generator=torch.Generator().manual_seed(seed))


def _our_routes(model, ids, **kw) -> dict[int, torch.Tensor]:
    """layer -> (T, k) experts chosen by our routers during one forward."""
    routes: dict[int, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(model.net.layers()):
        if isinstance(layer.mlp, SparseMoE):
            hooks.append(layer.mlp.gate.register_forward_hook(
                lambda mod, args, out, i=i: routes.__setitem__(i, out[0].clone())))
    try:
        model.logits(ids, **kw)
    finally:
        for h in hooks:
            h.remove()
    return routes


def _reference_routes(ref, ids, block) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """layer -> (T, k) experts and their weights chosen by transformers' routers (Glm4MoeTopkRouter,
    Qwen3MoeTopKRouter: both return (logits, weights, indices))."""
    chosen: dict[int, torch.Tensor] = {}
    weights: dict[int, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(ref.model.layers):
        gate = getattr(layer.mlp, "gate", None)
        if gate is not None:
            def hook(mod, args, out, i=i):
                weights[i], chosen[i] = out[1].detach().clone(), out[2].clone()
            hooks.append(gate.register_forward_hook(hook))
    try:
        with torch.no_grad():
            raw_logits(ref, ids, block)
    finally:
        for h in hooks:
            h.remove()
    return chosen, weights


def _sets(chosen: torch.Tensor) -> list[frozenset[int]]:
    return [frozenset(row.tolist()) for row in chosen]


# ---- the networks against transformers -----------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # Glm4Moe's zero-width shared expert
def test_parity_with_transformers_under_the_block_causal_mask(pair):
    name, ours, ref = pair
    ids, B = _ids(ours), ours.attention_block
    assert ours.spec.sparse_layers == SPARSE[name]
    expected = raw_logits(ref, ids, B)
    assert (ours.logits(ids) - expected).abs().max().item() < TOL
    assert (ours.logits(ids) - raw_logits(ref, ids, 10 ** 6)).abs().max().item() > 0.1  # the mask matters


def test_routing_decisions_equal_the_reference_routers(pair):
    """Every token of every sparse layer goes to the same set of experts, with the same weights."""
    name, ours, ref = pair
    ids = _ids(ours)
    mine = _our_routes(ours, ids)
    theirs, their_weights = _reference_routes(ref, ids, ours.attention_block)
    sparse = [i for i, s in enumerate(SPARSE[name]) if s]
    assert sorted(mine) == sorted(theirs) == sparse
    for i in sparse:
        assert mine[i].shape == (ids.shape[1], MOE_TOPK)
        assert _sets(mine[i]) == _sets(theirs[i]), f"layer {i}"
    layer = ours.net.layers()[sparse[0]].mlp
    x = torch.randn(ids.shape[1], ours.spec.hidden_size, generator=torch.Generator().manual_seed(3))
    chosen, w = layer.route(x)
    ref_gate = ref.model.layers[sparse[0]].mlp.gate
    _, ref_w, ref_chosen = ref_gate(x)
    ours_by_expert = torch.zeros(x.shape[0], ours.spec.num_experts).scatter_(1, chosen, w.float())
    ref_by_expert = torch.zeros(x.shape[0], ours.spec.num_experts).scatter_(1, ref_chosen, ref_w.float())
    assert torch.allclose(ours_by_expert, ref_by_expert, atol=1e-6)


def test_the_expert_bias_changes_choices_but_not_weights(tmp_path):
    """The tiny checkpoint's bias is large enough to move choices (else the routing test could not
    fail on a bias added in the wrong place); the weights stay the unbiased sigmoid scores."""
    model = load_model(make_llada2_checkpoint(tmp_path))
    ids = _ids(model)
    with_bias = _our_routes(model, ids)
    for layer in model.net.layers():
        if isinstance(layer.mlp, SparseMoE):
            layer.mlp.gate.expert_bias.data.zero_()
    without = _our_routes(model, ids)
    assert any(_sets(with_bias[i]) != _sets(without[i]) for i in with_bias)
    spec = model.spec
    assert isinstance(spec, MoESpec)
    logits = torch.randn(5, MOE_EXPERTS, generator=torch.Generator().manual_seed(0))
    bias = torch.zeros(MOE_EXPERTS)
    bias[0] = 10.0  # expert 0 always chosen, but weighted by its own (unbiased) score
    chosen, weights = grouped_sigmoid(logits, bias, spec)
    assert (chosen == 0).any(dim=1).all()
    scores = torch.sigmoid(logits).gather(1, chosen)
    assert torch.allclose(weights, scores / scores.sum(-1, keepdim=True) * spec.routed_scaling_factor)


def test_grouped_router_rules():
    """Choice limited to the topk_group best groups (a group scored by its two best experts); k = 1
    is not renormalised (LLaDA2's gate divides only when k > 1), then × routed_scaling_factor."""
    spec = model_spec(dict(PUBLISHED_SHAPES["llada2-mini"], num_experts=8, n_group=4, topk_group=1,
                           num_experts_per_tok=1))
    assert isinstance(spec, MoESpec)
    logits = torch.tensor([[5.0, -9.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]])  # group 0: 5 + -9; group 1: 1 + 1
    chosen, weights = grouped_sigmoid(logits, None, spec)
    assert chosen.tolist() in ([[2]], [[3]])  # expert 0 has the best score, but its group is not kept
    assert weights.item() == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item() * 2.5)
    soft = MoESpec(**{**spec.__dict__, "router": "softmax", "norm_topk_prob": False, "experts_per_token": 2})
    chosen, weights = softmax_topk(logits, soft)
    probs = torch.softmax(logits, -1)
    assert chosen[0, 0].item() == 0 and torch.allclose(weights, probs.topk(2).values)


def test_exact_cache_windows_equal_the_full_pass(pair):
    """Prefill, denoise each block against the cache (appended, cropped, kept): every window's
    logits equal the full pass's, and the windowed forward routes each token as the full one."""
    name, ours, _ = pair
    B = ours.attention_block
    ids = _ids(ours, T=3 * B + B // 2)
    T = ids.shape[1]
    full = ours.logits(ids)
    full_routes = _our_routes(ours, ids)
    scale = max(1.0, full.abs().max().item())
    cache = ours.new_cache()
    assert isinstance(cache, BlockKVCache)
    ours.logits(ids[:, :B], cache=cache)
    assert cache.length == B
    for s in range(B, T, B):
        e = min(s + B, T)
        win = ours.logits(ids[:, :e], cache=cache, window=(s, e))
        cache.crop(s)
        assert (win - full[:, s:e]).abs().max().item() < 1e-5 * scale
        routes = _our_routes(ours, ids[:, :e], cache=cache, window=(s, e))
        cache.crop(s)
        assert all(_sets(routes[i]) == _sets(full_routes[i][s:e]) for i in routes)
        part = ours.logits(ids[:, :e], cache=cache, window=(s, e), rows=(e - 2, e))
        cache.crop(s)
        assert part.shape[1] == 2 and torch.allclose(part, win[:, -2:], atol=1e-5, rtol=1e-5)
        ours.logits(ids[:, :e], cache=cache, window=(s, e))  # keep the block
        assert cache.length == e
    no_cache = ours.logits(ids, window=(T - B, T))  # full recompute, head on the window only
    assert (no_cache - full[:, T - B:]).abs().max().item() < 1e-5 * scale


# ---- what loading reads from the files -----------------------------------------------------------



@pytest.mark.parametrize("layout", ["llada2-moe", "sdar-moe"])
def test_layout_family_block_tokens_and_tensors(layout, tmp_path):
    folder = _make(layout, tmp_path / "Dream-v0-Instruct-7B")  # the folder name says nothing
    model = load_model(folder)
    ckpt, tok = model.checkpoint, model.tokenizer
    assert model.spec.layout == ckpt.layout == layout and model.spec.block_causal
    assert ckpt.family == {"llada2-moe": "llada2.0", "sdar-moe": "sdar-moe"}[layout]
    assert model.attention_block == {"llada2-moe": 32, "sdar-moe": 4}[layout] == ckpt.attention_block
    mask, eos = {"llada2-moe": ("<|mask|>", "<|endoftext|>"), "sdar-moe": ("<|MASK|>", "<|endoftext|>")}[layout]
    assert model.tokens.mask == tok.token_to_id(mask) and model.tokens.eos == tok.token_to_id(eos)
    assert model.spec.n_params == model.spec.param_count()
    names = set()
    for f in folder.glob("*.safetensors"):
        names |= set(load_file(str(f)))
    assert names == set(dict(model.net.named_parameters()))
    experts = {n for n in names if ".mlp.experts." in n}
    assert len(experts) == 3 * MOE_EXPERTS * sum(model.spec.sparse_layers)
    assert not (folder / AUTO_MAP_MARKER).exists()  # modeling / configuration traps never ran
    catalog.inspect(folder)
    assert not (folder / AUTO_MAP_MARKER).exists()


def test_llada2_family_2_0_or_2_1_from_the_modeling_file(tmp_path):
    assert catalog.inspect(make_llada2_checkpoint(tmp_path / "a")).family == "llada2.0"
    folder = make_llada2_checkpoint(tmp_path / "b", editing=True)  # generate(..., editing_threshold=...)
    ckpt = catalog.inspect(folder)
    assert ckpt.family == "llada2.1" and load_model(folder).spec.family == "llada2.1"
    assert not (folder / AUTO_MAP_MARKER).exists()  # read as text, never imported
    (folder / "modeling_llada2_moe.py").unlink()
    assert catalog.inspect(folder).family == "llada2.0"
    edit_config(folder, dllm_family="llada2.1")
    assert catalog.inspect(folder).family == "llada2.1"


def test_llada2_fallback_chat_template_and_role_end_stop(tmp_path):
    folder = make_llada2_checkpoint(tmp_path, chat_template=None)
    ckpt = catalog.inspect(folder)
    assert ckpt.chat_template == catalog.LLADA2_CHAT_TEMPLATE
    model = load_model(folder)
    tok = model.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == ("<role>SYSTEM</role>detailed thinking off<|role_end|><role>HUMAN</role>hi<|role_end|>"
                    "<role>ASSISTANT</role>")
    text = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    assert text.startswith("<role>SYSTEM</role>Be brief.<|role_end|><role>HUMAN</role>")
    role_end = tok.token_to_id("<|role_end|>")
    assert tok.encode(text).count(role_end) == 2
    assert {role_end, tok.token_to_id("<|endoftext|>")} <= model.tokens.stops


def test_sdar_moe_fallback_template_is_qwen3s(tmp_path):
    folder = make_sdar_moe_checkpoint(tmp_path)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    assert catalog.inspect(folder).chat_template == catalog.QWEN3_CHAT_TEMPLATE


def test_bf16_keeps_the_expert_bias_in_fp32(tmp_path):
    for folder in (make_llada2_checkpoint(tmp_path / "f32"),
                   make_llada2_checkpoint(tmp_path / "b16", dtype="bfloat16")):
        model = load_model(folder, dtype=torch.bfloat16)
        gate = model.net.layers()[1].mlp.gate
        assert gate.expert_bias.dtype == torch.float32 and gate.weight.dtype == torch.bfloat16
        assert model.net.layers()[1].mlp.experts[0].up_proj.weight.dtype == torch.bfloat16
        out = model.logits(_ids(model))
        assert torch.isfinite(out.float()).all()
    stored = load_file(str(tmp_path / "f32" / "model.safetensors"))["model.layers.1.mlp.gate.expert_bias"]
    loaded = load_model(tmp_path / "f32", dtype=torch.bfloat16).net.layers()[1].mlp.gate.expert_bias
    assert torch.equal(stored, loaded)  # not rounded through bf16
    spec = model_spec(dict(PUBLISHED_SHAPES["llada2-mini"], num_hidden_layers=2))
    meta = build_on_meta(spec, torch.bfloat16)
    assert meta.model.layers[1].mlp.gate.expert_bias.dtype == torch.float32


@pytest.mark.parametrize("layout", ["llada2-moe", "sdar-moe"])
@pytest.mark.parametrize("damage", ["missing", "extra", "shape"])
def test_strict_loading_names_the_tensor(layout, damage, tmp_path):
    folder = _make(layout, tmp_path)
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    name = "model.layers.1.mlp.experts.3.down_proj.weight"
    if damage == "missing":
        del tensors[name]
    elif damage == "extra":
        name = "model.layers.1.mlp.experts.99.down_proj.weight"
        tensors[name] = torch.zeros(4, 4)
    else:
        tensors[name] = tensors[name][:, :-1].contiguous()
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_model(folder)


LLADA2_REFUSED = [
    *[(dict({key: bad}), [key]) for key, bad in [
        ("hidden_act", "gelu"), ("score_function", "softmax"), ("use_rmsnorm", False), ("norm_head", True),
        ("norm_softmax", True), ("norm_topk_prob", False), ("moe_router_enable_expert_bias", False),
        ("use_qk_norm", False), ("use_bias", True), ("using_split_qkv_in_self_attention", True),
        ("use_sliding_window", True), ("router_dtype", "bf16")]],
    (dict(use_bias=DROP), ["use_bias", "add \"use_bias\": false"]),
    (dict(num_experts=DROP), ["num_experts"]),
    (dict(rope_scaling={"type": "yarn", "factor": 4.0}), ["rope_scaling"]),
    (dict(n_group=3), ["n_group 3"]),  # 16 experts do not split into 3 groups
    (dict(topk_group=5), ["topk_group 5"]),  # more kept groups than groups
    (dict(n_group=8, topk_group=1), ["topk_group 1"]),  # 1 group of 2 experts < top-4
    (dict(n_group=16), ["n_group 16"]),  # groups of 1: no two best
    (dict(rotary_dim=8), ["rotary_dim"]),
    (dict(partial_rotary_factor=0.0), ["partial_rotary_factor"]),
    (dict(use_qkv_bias="no"), ["use_qkv_bias"]),
    (dict(first_k_dense_replace=-1), ["first_k_dense_replace"]),
    (dict(num_shared_experts=1.5), ["num_shared_experts"]),
    (dict(routed_scaling_factor="big"), ["routed_scaling_factor"]),
    (dict(num_key_value_heads=3), ["num_key_value_heads"]),
]


@pytest.mark.parametrize("change, words", LLADA2_REFUSED, ids=lambda v: str(v)[:40])
def test_llada2_configs_are_checked(tmp_path, change, words):
    folder = make_llada2_checkpoint(tmp_path)
    edit_config(folder, **change)
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    assert all(w in str(info.value) for w in words) and str(folder / "config.json") in str(info.value)


@pytest.mark.parametrize("change, words", [
    (dict(num_experts_per_tok=MOE_EXPERTS + 1), ["num_experts_per_tok"]),
    (dict(mlp_only_layers="all"), ["mlp_only_layers"]),
    (dict(shared_expert_intermediate_size=64), ["shared_expert_intermediate_size"]),
    (dict(norm_topk_prob="yes"), ["norm_topk_prob"]),
    (dict(decoder_sparse_step=0), ["decoder_sparse_step"]),
    (dict(num_experts=DROP), ["num_experts"]),
    (dict(rope_scaling={"type": "yarn", "factor": 4.0}), ["rope_scaling"]),
    (dict(use_sliding_window=True), ["sliding-window"]),
])
def test_sdar_moe_configs_are_checked(tmp_path, change, words):
    folder = make_sdar_moe_checkpoint(tmp_path)
    edit_config(folder, **change)
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    assert all(w in str(info.value) for w in words)


def test_the_training_layout_is_refused_with_the_reason(tmp_path):
    folder = make_llada2_checkpoint(tmp_path / "veomni")
    edit_config(folder, model_type="llada2_moe_veomni")
    with pytest.raises(CheckpointError, match="fused 3-D tensors"):
        load_model(folder)
    row = catalog.describe(catalog.Candidate("argument", folder), None)
    assert row.status == "unsupported" and "fused 3-D tensors" in (row.error or "")
    assert not (folder / AUTO_MAP_MARKER).exists()


@pytest.mark.parametrize("layout", ["llada2-moe", "sdar-moe"])
def test_dllm_models_row(layout, tmp_path):
    folder = _make(layout, tmp_path / layout)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# card\n")
    row = catalog.describe(catalog.Candidate("argument", folder), None)
    model = load_model(folder)
    assert row.status == "ok" and row.layout == layout and row.licence == "apache-2.0"
    assert row.family == model.checkpoint.family and row.params == model.spec.param_count()


# ---- the published shapes ----------------------------------------------------------------------

@pytest.mark.parametrize("shape, total, active, tensors", [
    # 3 + 9 + 19 x 779 tensors; x 2 bytes = 32,511,286,784 B, LLaDA2.0-mini's reported safetensors total_size
    ("llada2-mini", 16.255, 1.44, 14813),
    ("sdar-30b-a3b", 30.53, 3.35, 18867),  # Qwen3-30B-A3B: 30.5B total, 3.3B active
])
def test_published_moe_shapes(shape, total, active, tensors):
    spec = model_spec(PUBLISHED_SHAPES[shape])
    assert isinstance(spec, MoESpec) and spec.block_causal
    assert spec.param_count() / 1e9 == pytest.approx(total, abs=0.01)
    assert spec.active_param_count() / 1e9 == pytest.approx(active, abs=0.01)
    meta = build_on_meta(spec, torch.bfloat16)
    assert len(dict(meta.named_parameters())) == tensors
    assert sum(p.numel() for p in meta.parameters()) == spec.param_count()
    if shape == "llada2-mini":
        assert spec.param_count() * 2 == 32_511_286_784


@pytest.mark.parametrize("shape", ["llada2-mini", "sdar-30b-a3b"])
def test_reduced_moe_shape_runs(shape):
    """--layers 1 keeps one sparse layer (LLaDA2's dense first layer goes); narrowed to run fast."""
    cfg = reduced(PUBLISHED_SHAPES[shape], 1)
    assert model_spec(cfg).sparse_layers == (True,)
    assert reduced(PUBLISHED_SHAPES[shape], 3)["num_hidden_layers"] == 3
    assert model_spec(reduced(PUBLISHED_SHAPES["llada2-mini"], 3)).sparse_layers == (False, True, True)
    small = dict(cfg, hidden_size=64, vocab_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 moe_intermediate_size=16, num_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4,
                 mask_token_id=500, eos_token_id=1, pad_token_id=1, bos_token_id=0, rotary_dim=None)
    small = {k: v for k, v in small.items() if v is not None}
    model = random_model(small, seed=1)
    out = model.logits(torch.randint(0, 500, (1, 40)))
    assert out.shape == (1, 40, 512) and torch.isfinite(out).all()


def test_layout_modules_name_their_types():
    assert llada2_moe.MODEL_TYPES == catalog.LAYOUT_TYPES["llada2-moe"][0]
    assert catalog.layout_of({"model_type": "llada2_moe_veomni"}) is None
    assert catalog.layout_of({"architectures": ["LLaDA2MoeModelLM"]}) == "llada2-moe"
    assert catalog.layout_of({"architectures": ["SDARMoeForCausalLM"]}) == "sdar-moe"


# ---- dllm bench on a mixture of experts ----------------------------------------------------------

def test_bench_a_moe_against_its_active_parameter_floor(tmp_path):
    """The MoE rows: full recompute vs the exact block cache (identical tokens), and the floor of
    the active parameters next to the floor of all weights."""
    from dllm_cli.bench import bench_model, format_report

    model = load_model(make_llada2_checkpoint(tmp_path))
    report = bench_model(model, label="tiny llada2", prompt_ids=[_ids(model, T=20)[0].tolist()], gen_length=32)
    assert [r.name for r in report.rows][:3] == ["reference", "exact-cache", "fast"]
    assert report.row("exact-cache").identical and report.gen_length == 32
    assert report.active_params == model.spec.active_param_count() < report.n_params == model.spec.param_count()
    assert report.active_floor_ms == pytest.approx(report.floor_ms * report.active_params / report.n_params)
    text = format_report(report)
    assert "x active" in text and "active params per token" in text
