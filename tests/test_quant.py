"""int8 weight-only quantisation (engine/quant.py, `--quant int8`): every layout loads both ways
with bounded logit drift; exactly the linears inside the layers and the untied head are int8
(embeddings, norms, biases, routers stay in the load dtype) and the torch-free byte count
(footprint.weight_bytes) names the same tensors and matches what is allocated; the memory check
uses it; bad values are one-line errors; the CLI runs the embedded model with --quant int8; the
exact block KV cache still gives the full-recompute tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dllm_cli import catalog, footprint
from dllm_cli.config import family_sampler
from dllm_cli.engine import quant
from dllm_cli.engine.layouts import LAYOUTS
from dllm_cli.engine.loader import PUBLISHED_SHAPES, load_model, random_model, reduced, weight_files
from dllm_cli.engine.sampler import denoise
from dllm_cli.errors import OutOfMemoryError, UsageError

from tiny import (
    make_dream_checkpoint,
    make_fast_dllm_v2_checkpoint,
    make_llada2_checkpoint,
    make_llada_checkpoint,
    make_sdar_checkpoint,
    make_sdar_moe_checkpoint,
    make_stable_diffcoder_checkpoint,
)

MAKERS = {"dream": make_dream_checkpoint, "llada": make_llada_checkpoint, "sdar": make_sdar_checkpoint,
          "stable-diffcoder": make_stable_diffcoder_checkpoint, "fast-dllm-v2": make_fast_dllm_v2_checkpoint,
          "llada2-moe": make_llada2_checkpoint, "sdar-moe": make_sdar_moe_checkpoint}
# Measured on the tiny checkpoints (docs/performance.md "int8 weights"): per-position relative L2
# error of the logits <= 0.018 max, 0.013 mean. A wrong scale axis, missing scales or a quantised
# embedding is off by 0.3 or more (checked once by breaking quantise_rows on purpose).
MAX_REL, MEAN_REL = 0.03, 0.02


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    found = {name: make(tmp_path_factory.mktemp(name)) for name, make in MAKERS.items()}
    found["dream-tied"] = make_dream_checkpoint(tmp_path_factory.mktemp("tied"), tied=True)
    return found


def drift(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """(max, mean) over positions of ||a - b||2 / ||a||2, and the argmax agreement."""
    rel = (a - b).norm(dim=-1) / a.norm(dim=-1)
    return float(rel.max()), float(rel.mean()), float((a.argmax(-1) == b.argmax(-1)).float().mean())


def canvas(model, n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 300, (1, n), generator=g)
    ids[0, n // 2:] = model.tokens.mask
    return ids


MOE = ("llada2-moe", "sdar-moe")
# The tiny MoE checkpoints' experts are 32 wide (64-element rows): measured 0.031 max / 0.018 mean
# on the positions whose routing int8 leaves unchanged (LLaDA2), 0.040 / 0.011 over all (SDAR-MoE).
MOE_MAX_REL, MOE_MEAN_REL = 0.05, 0.03


def routing(model, ids) -> torch.Tensor:
    """(layers, positions, k) sorted experts each sparse layer chose for each position of `ids`."""
    seen: list[torch.Tensor] = []
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, i, out: seen.append(out[0].sort(-1).values))
             for layer in model.net.layers() if hasattr(layer.mlp, "gate")]
    try:
        model.logits(ids)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack(seen)


@pytest.mark.parametrize("layout", [*MAKERS, "dream-tied"])
def test_every_layout_loads_int8_with_bounded_drift(folders, layout):
    full, q = load_model(folders[layout]), load_model(folders[layout], quant="int8")
    ids = canvas(full)
    a, b = full.logits(ids), q.logits(ids)
    if layout in MOE:
        # a mixture of experts: int8's small change of a hidden state can flip a near-tie routing
        # choice, which changes that position's output by a whole expert; the bound holds where
        # routing is unchanged, and routing must be unchanged for nearly every (position, layer)
        same = (routing(full, ids) == routing(q, ids)).all(-1)  # (layers, positions)
        assert same.float().mean() >= 0.9, same.float().mean()
        kept = same.all(0)
        assert kept.sum() >= ids.shape[1] // 2
        a, b = a[:, kept], b[:, kept]
    max_rel, mean_rel, agree = drift(a, b)
    bound = (MOE_MAX_REL, MOE_MEAN_REL) if layout in MOE else (MAX_REL, MEAN_REL)
    assert max_rel < bound[0] and mean_rel < bound[1], (max_rel, mean_rel)
    assert 0 < mean_rel  # it did quantise something
    assert agree >= 0.9
    assert torch.equal(q.net.embed_weight(), full.net.embed_weight())  # the embedding is untouched
    assert q.dtype == full.dtype == torch.float32


@pytest.mark.parametrize("layout", [*MAKERS, "dream-tied"])
def test_exactly_the_layer_linears_and_the_untied_head_are_int8(folders, layout):
    q = load_model(folders[layout], quant="int8")
    files, _ = weight_files(folders[layout])
    shapes = catalog.tensor_shapes(files)
    head = footprint.HEAD_NAMES[q.spec.layout]
    expected = {name[:-len(".weight")] for name, shape in shapes if footprint.is_quantised(name, shape, head)}
    modules = quant.quantised_modules(q.net)
    assert set(modules) == expected  # the engine's module rule = catalog's name rule
    if layout in ("llada2-moe", "sdar-moe"):  # every expert's three linears; never the router (mlp.gate)
        spec = q.spec
        attention = 2 if layout == "llada2-moe" else 4  # fused query_key_value + dense, or q/k/v/o
        sparse = sum(spec.sparse_layers)
        mlps = 3 * (spec.num_layers - sparse) + 3 * sparse * (spec.num_experts + bool(spec.shared_intermediate_size))
        assert len(modules) == attention * spec.num_layers + mlps + 1
        assert not any(name.endswith("mlp.gate") for name in modules)
        assert any(".experts.0.gate_proj" in name for name in modules)
    else:
        assert len(modules) == 7 * q.spec.num_layers + (0 if q.spec.tied else 1)
    head_module = head.rpartition(".")[0]
    assert (head_module in modules) == (not q.spec.tied)
    for name, p in q.net.named_parameters():
        owner = name.rpartition(".")[0]
        if owner in modules and name.endswith(".weight"):
            assert p.dtype == torch.int8 and modules[owner].scale.dtype == torch.float32
        else:  # embeddings, norms, biases
            assert p.dtype == torch.float32, name
    assert all(m.loaded for m in modules.values())
    assert not any(t.is_meta for t in [*q.net.parameters(), *q.net.buffers()])


def test_the_head_tables_agree():
    assert footprint.HEAD_NAMES == {name: module.HEAD_NAME for name, module in LAYOUTS.items()}


def test_quantise_rows_is_per_output_row_and_symmetric():
    w = torch.randn(5, 64) * torch.tensor([1e-3, 1.0, 10.0, 0.0, 3.0])[:, None]
    q, s = quant.quantise_rows(w)
    assert q.dtype == torch.int8 and s.shape == (5,) and int(q.abs().max()) == quant.QMAX
    assert torch.equal(q[3], torch.zeros(64, dtype=torch.int8))  # a zero row stays zero (no nan)
    err = (q.float() * s[:, None] - w).abs().amax(dim=1)
    assert torch.all(err <= w.abs().amax(dim=1) / quant.QMAX / 2 + 1e-12)  # half a step per row


def test_routers_and_non_layer_linears_stay_unquantised():
    class Expert(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj, self.down_proj = nn.Linear(8, 16, bias=False), nn.Linear(16, 8, bias=False)

    class MoE(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = nn.Linear(8, 4, bias=False)  # the router, even as an nn.Linear
            self.router_proj = nn.Linear(8, 4)
            self.experts = nn.ModuleList(Expert() for _ in range(2))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 8)
            self.layers = nn.ModuleList(nn.ModuleDict({"mlp": MoE()}) for _ in range(2))
            self.extra = nn.Linear(8, 8)
            self.lm_head = nn.Linear(8, 10, bias=False)

    net = Net()
    x = torch.randn(3, 8)
    before = net.layers[0]["mlp"].experts[1].down_proj(net.layers[0]["mlp"].experts[1].gate_proj(x))
    names = quant.quantise_(net, net.layers, "lm_head")
    assert sorted(names) == sorted([f"layers.{i}.mlp.experts.{e}.{p}" for i in range(2) for e in range(2)
                                    for p in ("gate_proj", "down_proj")] + ["lm_head"])
    assert isinstance(net.layers[0]["mlp"].gate, nn.Linear) and isinstance(net.extra, nn.Linear)
    expert = net.layers[0]["mlp"].experts[1]
    assert torch.allclose(expert.down_proj(expert.gate_proj(x)), before, rtol=0.05, atol=0.02)
    shapes = [(f"{n}.weight", tuple(m.weight.shape)) for n, m in Net().named_modules() if isinstance(m, nn.Linear)]
    assert {n[:-7] for n, s in shapes if footprint.is_quantised(n, s, "lm_head.weight")} == set(names)


def test_the_byte_count_matches_what_is_allocated_and_int8_is_smaller(folders):
    for layout in ("sdar", "llada", "dream-tied", "llada2-moe", "sdar-moe"):
        files, _ = weight_files(folders[layout])
        shapes = catalog.tensor_shapes(files)
        q = load_model(folders[layout], quant="int8")
        head = None if q.spec.tied else LAYOUTS[q.spec.layout].HEAD_NAME
        fp32 = footprint.weight_bytes(shapes, 4)
        int8 = footprint.weight_bytes(shapes, 4, "int8", head)
        assert int8 == quant.storage_bytes(q.net)  # parameters + scales, exactly
        assert fp32 == quant.storage_bytes(load_model(folders[layout]).net)
        assert footprint.weight_bytes(shapes, 2, "int8", head) < footprint.weight_bytes(shapes, 2) < fp32


def test_weight_bytes_is_pure_and_counts_scales():
    shapes = [("model.embed_tokens.weight", (100, 8)), ("model.layers.0.mlp.up_proj.weight", (32, 8)),
              ("model.layers.0.mlp.gate.weight", (4, 8)), ("model.layers.0.input_layernorm.weight", (8,)),
              ("model.layers.0.self_attn.q_proj.bias", (8,)), ("lm_head.weight", (100, 8))]
    assert footprint.weight_bytes(shapes, 2) == 2 * (800 + 256 + 32 + 8 + 8 + 800)
    head_q = 800 + 4 * 100 if footprint.QUANT_HEAD else 2 * 800
    want = 2 * 800 + (256 + 4 * 32) + 2 * 32 + 2 * 16 + head_q  # embedding, up_proj + scales, router, norm+bias
    assert footprint.weight_bytes(shapes, 2, "int8", "lm_head.weight") == want
    assert footprint.fits(100, 60, 90) == "int8" and footprint.fits(100, 60, 200) == "bf16"
    assert footprint.fits(100, 60, 50) == "no" and footprint.fits(100, 60, None) == "-"
    from dllm_cli.engine.device import MEMORY_MARGIN
    assert footprint.MEMORY_MARGIN == MEMORY_MARGIN


def test_the_memory_check_counts_int8(folders):
    folder = folders["sdar"]
    shapes = catalog.tensor_shapes(weight_files(folder)[0])
    need_q = footprint.weight_bytes(shapes, 4, "int8", "lm_head.weight") * 1.05
    limit = int(need_q) + 1000  # enough for int8, not for fp32
    with pytest.raises(OutOfMemoryError, match="--quant int8"):
        load_model(folder, memory_limit=limit)
    load_model(folder, memory_limit=limit, quant="int8")
    with pytest.raises(OutOfMemoryError, match="with int8 weights"):
        load_model(folder, memory_limit=int(need_q) - 1000, quant="int8")


def test_bad_quant_values_are_one_line_errors(folders, tmp_path):
    with pytest.raises(UsageError, match="use none or int8"):
        load_model(folders["dream"], quant="int4")
    from test_cli import run

    code, out, err = run(["bench", "--quant", "int4"])
    assert code == 2 and out == ""
    assert err.strip().splitlines() == ["dllm: error: --quant 'int4' is not supported; use none or int8 (int8: "
                                        "weight-only, about half the memory of bfloat16)"]
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.json").write_text(json.dumps({"quant": "fp4"}))
    code, _, err = run(["bench"], env={"DLLM_HOME": str(home)})
    assert code == 2 and len(err.strip().splitlines()) == 1 and "'quant'" in err and "fp4" in err


def test_random_weights_int8_are_the_same_weights_quantised():
    cfg = {**reduced(PUBLISHED_SHAPES["sdar-1.7b"], 1),
           "vocab_size": 2048, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 64}
    full, q = random_model(cfg), random_model(cfg, quant="int8")
    for name, module in quant.quantised_modules(q.net).items():
        w = full.net.get_submodule(name).weight
        assert torch.allclose(module.weight.float() * module.scale[:, None], w, atol=float(w.abs().max()) / 254 + 1e-7)
    ids = torch.randint(0, 2000, (1, 24))
    assert drift(full.logits(ids), q.logits(ids))[0] < MAX_REL


def test_the_exact_block_cache_still_matches_full_recompute_with_int8(folders):
    m = load_model(folders["sdar"], quant="int8")
    cfg = family_sampler("sdar", m.attention_block).with_(gen_length=m.attention_block * 4, early_stop=False,
                                                          threshold=None, temperature=0.0)
    prompt = torch.randint(0, 300, (9,), generator=torch.Generator().manual_seed(2)).tolist()
    on = list(denoise(m, prompt, cfg.with_(cache="exact")))[-1].tokens
    off = list(denoise(m, prompt, cfg.with_(cache="none")))[-1].tokens
    assert on == off and m.tokens.mask not in on
    m = load_model(folders["llada2-moe"], quant="int8")  # the MoE loop with token editing, too
    cfg = family_sampler("llada2.1", 32).with_(gen_length=64, early_stop=False, editing_threshold=0.0)
    steps = list(denoise(m, prompt, cfg.with_(cache="exact")))
    assert steps[-1].tokens == list(denoise(m, prompt, cfg.with_(cache="none")))[-1].tokens


def test_the_cli_runs_the_embedded_model_with_int8(tmp_path):
    """`dllm code --quant int8 --dry-run` on the embedded model prints a diff; `dllm bench --quant
    int8 --json` reports the drift against the unquantised model."""
    from test_default_model import _readme_main_command

    repo = Path(__file__).resolve().parents[1]
    args = _readme_main_command()  # the README's `dllm code ...` (infill of a stub, --dry-run)
    example = next(a for a in args if a.endswith(".py"))
    (tmp_path / example).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / example).write_text((repo / example).read_text())
    for git in (["init", "-q"], ["add", "."], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", *git], cwd=tmp_path, check=True, capture_output=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "XDG_CONFIG_HOME": str(tmp_path / "config")}
    for name in ("DLLM_MODEL", "DLLM_WEIGHTS_DIR", "DLLM_HOME"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "dllm_cli", *args[1:], "--quant", "int8"], cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"--- a/{example}\n+++ b/{example}\n" in done.stdout
    assert "int8 weights" in done.stderr  # the loading label says so
    done = subprocess.run([sys.executable, "-m", "dllm_cli", "bench", "--quant", "int8", "--prompts", "1",
                           "--gen-length", "16", "--json"], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    check = report["quant_check"]
    assert report["quant"] == "int8" and check["modules"] == 7 * 6  # tied: the head is the embedding
    assert check["weights_bytes_q"] < 0.7 * check["weights_bytes"]
    # the trained embedded model: mean 0.004, max 0.04 at one position (docs/performance.md)
    assert check["mean_rel"] < MEAN_REL and check["max_rel"] < 0.1 and check["argmax_agreement"] >= 0.9


@pytest.mark.parametrize("shape", [(1, 5, 16), (2, 5, 16), (7, 16), (1, 16), (1, 1, 16)])
def test_a_sliced_int8_matrix_gives_the_dequantised_product(monkeypatch, shape):
    """A matrix larger than a slice (the LM head) is dequantised slice by slice, with the CPU's
    batch-1 head product where it applies: the result is the dequantised weight's product for
    every input shape (3-D batch 1 and 2, 2-D as the MoE dispatch calls experts, one row)."""
    monkeypatch.setattr(quant, "CHUNK_ELEMENTS", 16 * 3)  # 3 rows a slice: 10 rows -> 4 slices
    w = torch.randn(10, 16, generator=torch.Generator().manual_seed(0))
    m = quant.Int8Linear(16, 10, False, torch.float32)
    m.load_weight(w)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    want = torch.nn.functional.linear(x, m.weight.float() * m.scale[:, None])
    assert m(x).shape == want.shape and torch.allclose(m(x), want, atol=1e-5)
