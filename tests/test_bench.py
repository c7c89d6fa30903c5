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
