"""bench: the reference and fast settings timed side by side on the same prompts; fixed k rows;
the report's derived figures, its table and JSON; the shape (random weights) path."""

from __future__ import annotations

import json

import pytest

from dllm_cli.bench import _agreement, bench_configs, bench_model, format_report, run_bench
from dllm_cli.engine import loader
from dllm_cli.engine.device import measure_bandwidth
from dllm_cli.errors import UsageError

from oracles import MockModel

PROMPTS = [[3, 5, 7, 9], [11, 2, 40, 41, 42, 8]]


def test_bench_model_rows_and_ratios():
    model = MockModel(seed=2, scale=12.0)  # confident: threshold decoding commits several per forward
    report = bench_model(model, label="mock", prompt_ids=PROMPTS, gen_length=32, ks=(1, 2, 3), repeats=2)
    assert [r.name for r in report.rows] == ["reference", "fast", "fast-refresh", "k=1", "k=2", "k=3"]
    ref, fast = report.row("reference"), report.row("fast")
    assert ref.forwards == 2 * 32 and ref.tokens_per_forward == 1.0 and ref.agreement is None
    assert ref.speedup is None and ref.tokens == 64 and ref.decoded == 64
    assert fast.forwards < ref.forwards and fast.tokens_per_forward > 1.0
    assert report.row("k=1").forwards == 64 and report.row("k=2").forwards == 32
    assert report.row("k=3").forwards == 2 * 11  # ceil(32 / 3) steps per 32-token block
    assert report.row("k=2").tokens_per_forward == 2.0
    for row in report.rows[1:]:
        assert 0.0 <= row.agreement <= 1.0 and row.speedup > 0
    assert report.row("k=1").agreement > 0.5  # dual cache, one token per step, same order as reference
    for row in report.rows:
        assert row.tok_s == pytest.approx(row.tokens / row.seconds)
        assert row.forward_ms == pytest.approx(1e3 * row.seconds / row.forwards)
        assert 0 < row.first_frame_s <= row.seconds and row.peak_memory_bytes > 0
    assert report.weights_bytes == sum(p.numel() * 4 for p in model.parameters())
    assert report.floor_ms == pytest.approx(1e3 * report.weights_bytes / (report.bandwidth_gbs * 1e9))
    assert report.prompts == 2 and report.prompt_tokens == 5


def test_report_text_and_json():
    report = bench_model(MockModel(), label="mock", prompt_ids=PROMPTS[:1], gen_length=16, ks=(2,))
    text = format_report(report)
    for word in ("tok/s", "ms/fwd", "agreement", "reference", "fast", "k=2", "floor", "load"):
        assert word in text
    data = json.loads(json.dumps(report.as_dict()))
    assert data["rows"][0]["name"] == "reference" and data["gen_length"] == 16


def test_early_stop_counts_only_model_decisions():
    model = MockModel(seed=5, eos_bias=6.0, eos_from=10)
    report = bench_model(model, label="mock", prompt_ids=PROMPTS, gen_length=64)
    fast = report.row("fast")
    assert fast.decoded < fast.tokens == 128  # the eos tail was filled, not decoded
    assert fast.forwards < report.row("reference").forwards
    assert fast.answer_tokens < 128


def test_agreement_cuts_at_the_first_stop():
    stops, eos = {9}, 9
    assert _agreement([1, 2, 9, 4], [1, 2, 9, 5], stops, eos) == 1.0
    assert _agreement([1, 2, 3, 4], [1, 7, 3, 9], stops, eos) == 0.5
    assert _agreement([9, 1], [9, 2], stops, eos) == 1.0


def test_configs_and_bandwidth():
    rows = bench_configs(512, ks=(1, 2, 3, 4))
    assert rows[0][2].total_steps == 512 and rows[0][2].cache == "none"
    assert [r[2].total_steps for r in rows[3:]] == [512, 256, 16 * 11, 128]
    assert rows[1][2].cache == "dual" and rows[2][3] == "block"
    assert measure_bandwidth("cpu", nbytes=1 << 22, iters=2) > 1e8  # > 0.1 GB/s on any machine


def test_run_bench_on_a_tiny_checkpoint(llada_ckpt):
    report = run_bench(str(llada_ckpt), device="cpu", dtype="float32", gen_length=16)
    assert report.prompts == 4 and report.prompt_tokens > 10 and report.load_s > 0
    assert report.row("reference").forwards == 4 * 16
    assert f"dllm bench: {llada_ckpt.name} (" in format_report(report)


def test_run_bench_shape_uses_random_weights(monkeypatch):
    tiny = dict(loader.PUBLISHED_SHAPES["open-dcoder-0.5b"], hidden_size=32, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, intermediate_size=64, vocab_size=512,
                mask_token_id=500, eos_token_id=501, pad_token_id=501)
    monkeypatch.setitem(loader.PUBLISHED_SHAPES, "tiny-test", tiny)
    report = run_bench(None, shape="tiny-test", device="cpu", dtype="float32", gen_length=32, ks=(4,))
    assert report.shape == "tiny-test" and report.prompt_tokens == 64
    assert report.row("k=4").forwards == 4 * 8 and report.row("k=4").tokens_per_forward == 4.0
    assert any("random weights" in n for n in report.notes)


def test_bad_options():
    with pytest.raises(UsageError, match="shape"):
        run_bench(None, shape="gpt-9", device="cpu")
    with pytest.raises(UsageError, match="either"):
        run_bench("x", shape="dream-7b", device="cpu")
    with pytest.raises(UsageError):
        bench_model(MockModel(), label="m", prompt_ids=PROMPTS, ks=(0,))


# ---- block-diffusion models: exact cache vs full recompute -------------------------------------------

def _tiny_block_shape(name, **extra):
    base = dict(loader.PUBLISHED_SHAPES[name], hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=96, vocab_size=512, mask_token_id=500, eos_token_id=501, pad_token_id=501,
                bos_token_id=502, **extra)
    base.pop("head_dim", None)
    return base


@pytest.mark.parametrize("shape", ["sdar-8b", "stable-diffcoder-8b", "fast-dllm-v2-7b"])
def test_block_shapes_time_the_exact_cache_against_full_recompute(monkeypatch, shape):
    extra = {"bd_size": 8} if shape == "fast-dllm-v2-7b" else {}
    monkeypatch.setitem(loader.PUBLISHED_SHAPES, "tiny-block", _tiny_block_shape(shape, **extra))
    report = run_bench(None, shape="tiny-block", layers=2, device="cpu", dtype="float32", gen_length=32,
                       ks=(2,), prompt_tokens=37, n_prompts=2)
    assert report.prompts == 2 and report.prompt_tokens == 37 and "2 layers" in report.model
    names = [r.name for r in report.rows]
    assert names[:3] == ["reference", "exact-cache", "fast"]
    ref, exact = report.row("reference"), report.row("exact-cache")
    assert exact.identical is True and exact.agreement == 1.0 and ref.identical is None
    assert exact.forwards == ref.forwards and ref.tokens_per_forward == pytest.approx(1.0, abs=0.05)
    assert any("block diffusion" in n for n in report.notes)
    if shape == "fast-dllm-v2-7b":
        assert "k=2" not in names  # its loop has no step budget
    else:
        k2 = report.row("k=2")
        assert k2.tokens_per_forward == pytest.approx(2.0, abs=0.2) and k2.forwards < exact.forwards
    text = format_report(report)
    assert "exact-cache" in text and "identical" in text and "yes" in text


def test_block_configs():
    from dllm_cli.bench import block_configs
    from dllm_cli.config import family_sampler

    rows = block_configs(256, (1, 4), family_sampler("sdar", 4))
    ref, exact, fast = (r[2] for r in rows[:3])
    assert ref.cache == "none" and exact.cache == "exact" and ref.with_(cache="exact") == exact
    assert ref.threshold is None and ref.total_steps == 256 and not ref.early_stop
    assert fast.threshold == 0.9 and fast.early_stop and fast.gen_length == 256
    assert [r[2].total_steps for r in rows[3:]] == [256, 64]
    assert block_configs(100, (), family_sampler("fast-dllm-v2", 32))[0][2].gen_length == 96


def test_layers_only_with_a_shape():
    with pytest.raises(UsageError, match="--layers"):
        run_bench("x", layers=2, device="cpu")
