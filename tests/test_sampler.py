"""sampler.denoise: token-exact parity with the official loops (tests/oracles.py) at temperature 0,
on a mock model and on the tiny checkpoints; invariants (prompt fixed, nothing remasked, schedule
counts, threshold/factor rules, seeds, early stop, cut at eos); the block KV cache (exact when
refreshed every step, the delayed write of finished blocks, agreement of prefix/dual)."""

from __future__ import annotations

import pytest
import torch

from dllm_cli.config import SamplerConfig
from dllm_cli.engine.loader import load_model
from dllm_cli.engine.sampler import (
    _parallel_accept,
    block_steps,
    cut_at_stop,
    denoise,
    dream_schedule,
    llada_schedule,
    p2_masked,
)
from dllm_cli.errors import UsageError
from dllm_cli.events import DenoiseStep

from oracles import MockModel, dream_generate, llada_generate, p2_generate

PROMPT = [3, 5, 7, 9, 11, 2, 40]
PLAIN = dict(threshold=None, cache="none", early_stop=False)  # the official loops' settings


def run(model, cfg, prompt=PROMPT, **kw) -> list[DenoiseStep]:
    return list(denoise(model, prompt, cfg, **kw))


def final(model, cfg, prompt=PROMPT, **kw) -> list[int]:
    return run(model, cfg, prompt, **kw)[-1].tokens


def llada_oracle(model, cfg, prompt=PROMPT, seed=0):
    out = llada_generate(model, torch.tensor([prompt]), steps=cfg.total_steps, gen_length=cfg.gen_length,
                         block_length=cfg.block, temperature=cfg.temperature, cfg_scale=cfg.cfg_scale,
                         remasking=cfg.alg, mask_id=model.tokens.mask, logits_eos_inf=cfg.logits_eos_inf,
                         confidence_eos_eot_inf=cfg.confidence_eos_eot_inf, eos_id=model.tokens.eos,
                         eot_ids=sorted(model.tokens.stops - {model.tokens.eos}),
                         generator=torch.Generator().manual_seed(seed))
    return out[0, len(prompt):].tolist()


def dream_oracle(model, cfg, prompt=PROMPT, seed=0):
    out = dream_generate(model, torch.tensor([prompt]), cfg.gen_length, cfg.total_steps, eps=cfg.eps,
                         temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, alg=cfg.alg,
                         alg_temp=cfg.alg_temp, mask_token_id=model.tokens.mask,
                         generator=torch.Generator().manual_seed(seed))
    return out[0, len(prompt):].tolist()


MOCKS = {"aligned": MockModel(), "shifted": MockModel(shifted=True, seed=1)}

LLADA_CASES = [
    dict(gen_length=32, steps=32, block_length=8),
    dict(gen_length=32, steps=16, block_length=16),
    dict(gen_length=24, steps=24, block_length=24),
    dict(gen_length=32, steps=64, block_length=16),
    dict(gen_length=32, steps=8, block_length=8, alg="random"),
    dict(gen_length=32, steps=32, block_length=16, alg="random"),
    dict(gen_length=32, steps=32, block_length=16, cfg_scale=1.5),
    dict(gen_length=32, steps=32, block_length=16, logits_eos_inf=True),
    dict(gen_length=32, steps=32, block_length=16, confidence_eos_eot_inf=True),
]
DREAM_CASES = [dict(gen_length=g, steps=s, alg=a) for a in ("origin", "maskgit_plus", "topk_margin", "entropy")
               for g, s in ((32, 32), (32, 16), (24, 7))]
DREAM_CASES += [dict(gen_length=32, steps=16, alg="entropy", top_p=0.9),
                dict(gen_length=32, steps=16, alg="maskgit_plus", top_k=5),
                dict(gen_length=32, steps=16, alg="origin", top_p=0.8, top_k=9)]


@pytest.mark.parametrize("mock", MOCKS)
@pytest.mark.parametrize("case", LLADA_CASES, ids=str)
def test_llada_loop_matches_official_generate(mock, case):
    model = MockModel(shifted=mock == "shifted", eos_bias=4.0, eos_from=20) if "eos" in str(case) else MOCKS[mock]
    cfg = SamplerConfig(**case, **PLAIN, seed=0)
    want = llada_oracle(model, cfg)
    assert model.tokens.mask not in want
    assert final(model, cfg) == want


@pytest.mark.parametrize("mock", MOCKS)
@pytest.mark.parametrize("case", DREAM_CASES, ids=str)
def test_dream_loop_matches_official_diffusion_generate(mock, case):
    cfg = SamplerConfig(**case, block_length=None, **PLAIN, seed=0)  # origin: same draws from one seed
    want = dream_oracle(MOCKS[mock], cfg)
    assert final(MOCKS[mock], cfg) == want


@pytest.fixture(scope="module")
def tiny_models(dream_ckpt, llada_ckpt):
    return {"dream": load_model(dream_ckpt), "llada": load_model(llada_ckpt)}


@pytest.mark.parametrize("layout", ["dream", "llada"])
def test_parity_on_tiny_checkpoints_every_alg(tiny_models, layout):
    model = tiny_models[layout]
    prompt = model.tokenizer.encode("def mean(numbers):")
    for alg in ("low_confidence", "random"):
        cfg = SamplerConfig(gen_length=16, steps=16, block_length=8, alg=alg, **PLAIN, seed=2)
        want = llada_oracle(model, cfg, prompt, seed=2)
        assert model.tokens.mask not in want
        assert final(model, cfg, prompt) == want, alg
    for alg in ("origin", "maskgit_plus", "topk_margin", "entropy"):
        cfg = SamplerConfig(gen_length=16, steps=8, block_length=None, alg=alg, **PLAIN, seed=2)
        want = dream_oracle(model, cfg, prompt, seed=2)
        assert model.tokens.mask not in want
        assert final(model, cfg, prompt) == want, alg


# ---- invariants -----------------------------------------------------------------------------

def check_events(events, gen_length, mask):
    """Indices count up, forwards/elapsed never decrease, done only last, nothing remasked."""
    prev = [mask] * gen_length
    for n, ev in enumerate(events):
        assert ev.index == n and len(ev.tokens) == gen_length
        assert ev.done == (n == len(events) - 1)
        assert len(ev.revealed) == len(ev.confidences) and ev.revealed == sorted(ev.revealed)
        for pos in range(gen_length):
            if pos in ev.revealed:
                assert prev[pos] == mask and ev.tokens[pos] != mask
            else:
                assert ev.tokens[pos] == prev[pos]  # a revealed position keeps its token
        prev = ev.tokens
    assert all(a.forwards <= b.forwards and a.elapsed <= b.elapsed for a, b in zip(events, events[1:]))
    assert mask not in events[-1].tokens


@pytest.mark.parametrize("cfg", [
    SamplerConfig(gen_length=32, steps=32, block_length=8, **PLAIN),
    SamplerConfig(gen_length=32, steps=16, block_length=None, alg="entropy", **PLAIN),
    SamplerConfig(gen_length=32, steps=8, block_length=8, alg="maskgit_plus", **PLAIN),
    SamplerConfig(gen_length=32, block_length=8, cache="dual", cfg_scale=1.0),
    SamplerConfig(gen_length=32, block_length=16, cache="prefix", alg="entropy", temperature=0.5, seed=1),
    SamplerConfig(gen_length=32, block_length=8, threshold=None, factor=1.0, cache="dual"),
], ids=["llada", "dream", "dream-blocks", "fast-cfg", "prefix-entropy", "factor"])
def test_prompt_fixed_and_nothing_remasked(cfg):
    model = MockModel(seed=3)
    model.record_ids = True
    events = run(model, cfg)
    check_events(events, cfg.gen_length, model.tokens.mask)
    for ids in model.seen:  # the conditional row always carries the prompt
        assert ids[0, :len(PROMPT)].tolist() == PROMPT


def test_blocks_are_decoded_left_to_right():
    cfg = SamplerConfig(gen_length=32, steps=16, block_length=8, alg="entropy", **PLAIN)
    for ev in run(MOCKS["aligned"], cfg):
        block = {p // 8 for p in ev.revealed}
        assert len(block) == 1
        b = block.pop()
        assert all(t != 63 for t in ev.tokens[:b * 8]) and all(t == 63 for t in ev.tokens[(b + 1) * 8:])


def test_schedule_counts():
    assert llada_schedule(32, 5) == [7, 7, 6, 6, 6]
    assert llada_schedule(8, 16) == [1] * 8 + [0] * 8
    assert dream_schedule(256, 256) == [0] + [1] * 254 + [2]  # samplers.md worked counts
    assert dream_schedule(256, 128) == [1] + [2] * 126 + [3]
    assert block_steps(SamplerConfig(gen_length=64, steps=10, block_length=16, alg="entropy")) == [3, 3, 2, 2]


def test_events_follow_the_schedules():
    model = MOCKS["aligned"]
    cfg = SamplerConfig(gen_length=256, steps=256, block_length=None, alg="maskgit_plus", **PLAIN)
    events = run(model, cfg, prompt=[1])
    assert [len(e.revealed) for e in events] == [1] * 254 + [2]  # the 0-token step runs no forward
    assert events[-1].forwards == 255
    with pytest.raises(UsageError):  # LLaDA: steps must be a multiple of the blocks
        SamplerConfig(gen_length=48, steps=10, block_length=16, **PLAIN)
    cfg = SamplerConfig(gen_length=48, steps=15, block_length=16, **PLAIN)
    assert [len(e.revealed) for e in run(model, cfg)] == llada_schedule(16, 5) * 3


def test_parallel_accept_rules():
    cfg = SamplerConfig(threshold=0.9)
    take = _parallel_accept(torch.tensor([0.95, 0.5, 0.92, 0.3]), cfg, 1)
    assert take.tolist() == [True, False, True, False]
    assert _parallel_accept(torch.tensor([0.2, 0.5, 0.1]), cfg, 1).tolist() == [False, True, False]
    assert _parallel_accept(torch.tensor([0.2, 0.5, 0.1]), cfg, 2).tolist() == [True, True, False]
    fac = SamplerConfig(threshold=None, factor=1.0)  # c_n >= 1 - 1/(n+1): 0.5, 0.667, 0.75, ...
    assert _parallel_accept(torch.tensor([0.7, 0.99, 0.8, 0.95]), fac, 1).tolist() == [False, True, True, True]
    assert _parallel_accept(torch.tensor([0.6, 0.99, 0.5]), fac, 1).tolist() == [False, True, False]
    assert _parallel_accept(torch.tensor([0.1, 0.2]), fac, 1).tolist() == [False, True]


@pytest.mark.parametrize("rule", [dict(threshold=0.9), dict(threshold=0.5), dict(threshold=None, factor=1.0)])
def test_threshold_and_factor_decoding(rule):
    model = MockModel(seed=4, scale=12.0)  # confident enough that several tokens pass
    cfg = SamplerConfig(gen_length=32, block_length=8, cache="none", early_stop=False, **rule)
    events = run(model, cfg)
    check_events(events, 32, model.tokens.mask)
    assert all(len(e.revealed) >= 1 for e in events)
    assert len(events) < 32 and events[-1].forwards == len(events)
    budget = run(model, cfg.with_(steps=8))  # steps is an upper bound: 2 steps per block
    check_events(budget, 32, model.tokens.mask)
    assert len(budget) <= 8


def test_threshold_one_is_the_one_token_per_step_loop():
    cfg = SamplerConfig(gen_length=32, block_length=8, threshold=1.0, cache="none", early_stop=False)
    assert final(MOCKS["aligned"], cfg) == llada_oracle(MOCKS["aligned"], cfg.with_(threshold=None))


@pytest.mark.parametrize("case", [dict(alg="low_confidence", temperature=0.7),
                                  dict(alg="random", temperature=1.0),
                                  dict(alg="entropy", temperature=0.5, top_p=0.95),
                                  dict(alg="maskgit_plus", temperature=0.0, alg_temp=0.5),
                                  dict(alg="origin", temperature=1.0)], ids=str)
def test_seeds(case):
    model = MOCKS["shifted"]
    cfg = SamplerConfig(gen_length=32, block_length=None if case["alg"] != "low_confidence" else 8,
                        steps=16, threshold=None, cache="dual", **case)
    a, b = final(model, cfg.with_(seed=7)), final(model, cfg.with_(seed=7))
    c = final(model, cfg.with_(seed=8))
    assert a == b and a != c


def test_early_stop_and_cut_at_first_eos():
    model = MockModel(seed=5, eos_bias=6.0, eos_from=14)  # an answer of ~14 tokens, then eos
    cfg = SamplerConfig(gen_length=64, block_length=8, threshold=None, cache="none", early_stop=False)
    full = run(model, cfg)
    short = run(model, cfg.with_(early_stop=True))
    stops = model.tokens.stops
    answer = cut_at_stop(full[-1].tokens, stops)
    assert 0 < len(answer) < 64 and model.tokens.mask not in answer
    assert cut_at_stop(short[-1].tokens, stops) == answer  # early stop never changes the answer
    assert short[-1].forwards < full[-1].forwards
    end = short[-1].tokens
    block_end = (len(answer) // 8 + 1) * 8  # later blocks were never decoded: all eos
    assert end[len(answer)] in stops and all(t == model.tokens.eos for t in end[block_end:])
    check_events(short, 64, model.tokens.mask)
    assert cut_at_stop([4, 5, model.tokens.eos, 6], stops) == [4, 5]
    assert cut_at_stop([4, 5], stops) == [4, 5]


def test_llada_gumbel_noise_is_float64(monkeypatch):
    """T > 0 with LLaDA algs: the Gumbel noise is drawn in float64 (fp32 noise hurts quality)."""
    drawn, real = [], torch.rand

    def spy(*args, **kwargs):
        drawn.append(kwargs.get("dtype"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "rand", spy)
    events = run(MOCKS["aligned"], SamplerConfig(gen_length=8, steps=8, block_length=8, temperature=0.7,
                                                 **PLAIN, seed=0))
    assert len(drawn) == len(events) == 8 and all(d is torch.float64 for d in drawn)


class MaskLover(MockModel):
    """Random weights gone wrong: the mask token has the largest logit everywhere."""

    def logits(self, ids, **kw):
        out = super().logits(ids, **kw)
        out[:, :, self.mask_token_id] = 50.0
        return out


@pytest.mark.parametrize("case", [dict(alg="low_confidence"), dict(alg="low_confidence", temperature=1.0),
                                  dict(alg="entropy"), dict(alg="origin", temperature=1.0, top_k=1),
                                  dict(alg="maskgit_plus", temperature=0.5, top_p=0.5)], ids=str)
def test_the_mask_token_is_never_committed(case):
    model = MaskLover()
    cfg = SamplerConfig(gen_length=16, block_length=8, steps=8, threshold=None, **case)
    check_events(run(model, cfg), 16, model.tokens.mask)


def test_bad_input_is_a_usage_error():
    model = MOCKS["aligned"]
    with pytest.raises(UsageError, match="empty"):
        denoise(model, [], SamplerConfig())
    with pytest.raises(UsageError, match="mask token"):
        denoise(model, [1, model.tokens.mask], SamplerConfig())
    with pytest.raises(UsageError, match="refresh"):
        denoise(model, [1], SamplerConfig(), cache_refresh="never")
    assert run(model, SamplerConfig(gen_length=8, block_length=8), prompt=torch.tensor(PROMPT))[-1].done


# ---- the block KV cache -----------------------------------------------------------------------

@pytest.mark.parametrize("mock", MOCKS)
@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("extra", [dict(), dict(cfg_scale=1.0), dict(alg="entropy", steps=16)], ids=str)
def test_cache_refreshed_every_step_is_exact(mock, mode, extra):
    cfg = SamplerConfig(gen_length=32, block_length=8, **{**PLAIN, **extra})
    want = final(MOCKS[mock], cfg)
    assert final(MOCKS[mock], cfg.with_(cache=mode), cache_refresh="step") == want


@pytest.mark.parametrize("layout", ["dream", "llada"])
def test_cache_refreshed_every_step_is_exact_on_tiny_checkpoints(tiny_models, layout):
    model = tiny_models[layout]
    prompt = model.tokenizer.encode("def mean(numbers):")
    cfg = SamplerConfig(gen_length=16, block_length=8, **PLAIN)
    want = final(model, cfg, prompt)
    for mode in ("prefix", "dual"):
        assert final(model, cfg.with_(cache=mode), prompt, cache_refresh="step") == want, mode
        approx = run(model, cfg.with_(cache=mode), prompt)
        check_events(approx, 16, model.tokens.mask)
        assert approx[-1].forwards == len(approx)  # the cache never adds a forward


@pytest.mark.parametrize("mock", MOCKS)
def test_delayed_write_of_finished_blocks(mock):
    model = MOCKS[mock]
    cfg = SamplerConfig(gen_length=32, block_length=8, steps=16, **{**PLAIN, "cache": "dual"})
    model.calls.clear()
    events = run(model, cfg)
    T = len(PROMPT) + 32
    P = len(PROMPT)
    windows = [c[2] for c in model.calls]
    # one full pass, then per block: a first window that also covers the previous block, then the block
    assert windows[0] is None and windows[1] == (P, P + 8)
    starts = [w for w in windows if w is not None and w[1] - w[0] == 16]
    assert starts == [(P + 8 * (b - 1), P + 8 * (b + 1)) for b in (1, 2, 3)]
    assert len(windows) == events[-1].forwards == 16 and all(c[1] == T for c in model.calls)
    # every finished block's K/V were last written from its final tokens
    src = model.last_cache.src[0, P:P + 24].tolist()
    assert src == events[-1].tokens[:24]
    model.calls.clear()
    run(model, cfg.with_(cache="prefix"))
    assert [c[2] for c in model.calls][4] == (P, T)  # block 1 starts at the previous block


def test_block_refresh_runs_a_full_pass_per_block():
    model = MOCKS["aligned"]
    model.calls.clear()
    run(model, SamplerConfig(gen_length=32, block_length=8, steps=16, **{**PLAIN, "cache": "dual"}),
        cache_refresh="block")
    assert [n for n, c in enumerate(model.calls) if c[2] is None] == [0, 4, 8, 12]


def test_cache_agreement_with_no_cache():
    """Approximate caches on the mock: report agreement (random weights: a floor, not a target)."""
    model = MockModel(seed=6, scale=6.0)
    cfg = SamplerConfig(gen_length=64, block_length=16, **PLAIN)
    ref = final(model, cfg)
    agree = {}
    for mode in ("prefix", "dual"):
        for refresh in ("block", "delayed"):
            out = final(model, cfg.with_(cache=mode), cache_refresh=refresh)
            agree[mode, refresh] = sum(a == b for a, b in zip(out, ref)) / len(ref)
    print("cache agreement with no cache (mock):", agree)
    assert min(agree.values()) >= 0.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_compile_matches_eager(llada_ckpt):
    model = load_model(llada_ckpt, device="cuda")
    prompt = model.tokenizer.encode("def mean(numbers):")
    cfg = SamplerConfig(gen_length=32, block_length=8)
    assert final(model, cfg, prompt, compile=True) == final(model, cfg, prompt)
    assert final(model, cfg.with_(**PLAIN), prompt) == llada_oracle(model, cfg.with_(**PLAIN), prompt)


# ---- anchored infilling: a fixed suffix after the masks -------------------------------------

SUFFIX = [13, 17, 19, 23]


def infill_reference(model, prompt, n, suffix):
    """A plain loop over the whole canvas prompt + n masks + suffix: one most-confident token per
    step (LLaDA low_confidence, one block), written independently of sampler.py."""
    mask = model.tokens.mask
    x = torch.tensor([list(prompt) + [mask] * n + list(suffix)])
    for _ in range(n):
        logits = model.logits(x)[0].float()
        pick = logits.clone()
        pick[:, mask] = -torch.inf
        x0 = pick.argmax(-1)
        conf = torch.softmax(logits, -1).gather(-1, x0[:, None])[:, 0]
        conf[x[0] != mask] = -torch.inf
        j = int(conf.argmax())
        x[0, j] = x0[j]
    assert x[0, len(prompt) + n:].tolist() == list(suffix)
    return x[0, len(prompt):len(prompt) + n].tolist()


@pytest.mark.parametrize("mock", MOCKS)
def test_infill_with_a_suffix_matches_a_plain_loop(mock):
    model = MOCKS[mock]
    cfg = SamplerConfig(gen_length=12, steps=12, block_length=None, **PLAIN)
    model.calls.clear()
    assert final(model, cfg, suffix_ids=SUFFIX) == infill_reference(model, PROMPT, 12, SUFFIX)
    assert all(c[1] == len(PROMPT) + 12 + len(SUFFIX) for c in model.calls)  # the suffix is seen


@pytest.mark.parametrize("layout", ["dream", "llada"])
def test_infill_on_tiny_checkpoints_plain_and_cached(tiny_models, layout):
    model = tiny_models[layout]
    prompt = model.tokenizer.encode("def mean(numbers):\n")
    suffix = model.tokenizer.encode("\n\ndef median(numbers):\n    pass\n")
    cfg = SamplerConfig(gen_length=16, steps=16, block_length=None, **PLAIN)
    want = infill_reference(model, prompt, 16, suffix)
    assert final(model, cfg, prompt, suffix_ids=suffix) == want
    blocks = cfg.with_(block_length=8)
    ref = final(model, blocks, prompt, suffix_ids=suffix)
    for mode in ("prefix", "dual"):
        assert final(model, blocks.with_(cache=mode), prompt, suffix_ids=suffix, cache_refresh="step") == ref
    with pytest.raises(UsageError, match="suffix contains the mask"):
        run(model, cfg, prompt, suffix_ids=[model.tokens.mask])


# ---- p2 (Open-dCoder's path planning) ---------------------------------------------------------

P2 = dict(alg="p2", block_length=None, threshold=None, cache="none", early_stop=False)


def p2_oracle(model, cfg, prompt=PROMPT, suffix=()):
    x = torch.tensor([list(prompt) + [model.tokens.mask] * cfg.gen_length + list(suffix)])
    out = p2_generate(model, x, cfg.total_steps, temperature=cfg.temperature, top_p=cfg.top_p,
                      top_k=cfg.top_k, mask_token_id=model.tokens.mask)
    assert out[0, len(prompt) + cfg.gen_length:].tolist() == list(suffix)
    return out[0, len(prompt):len(prompt) + cfg.gen_length].tolist()


@pytest.mark.parametrize("mock", MOCKS)
@pytest.mark.parametrize("case", [dict(gen_length=32, steps=32), dict(gen_length=32, steps=8),
                                  dict(gen_length=24, steps=7), dict(gen_length=32, steps=16, top_k=5)], ids=str)
def test_p2_matches_open_dcoder_loop(mock, case):
    cfg = SamplerConfig(**case, **P2)
    assert final(MOCKS[mock], cfg) == p2_oracle(MOCKS[mock], cfg)
    assert final(MOCKS[mock], cfg, suffix_ids=SUFFIX) == p2_oracle(MOCKS[mock], cfg, suffix=SUFFIX)


@pytest.mark.parametrize("layout", ["dream", "llada"])
def test_p2_on_tiny_checkpoints(tiny_models, layout):
    model = tiny_models[layout]
    prompt = model.tokenizer.encode("def mean(numbers):")
    cfg = SamplerConfig(gen_length=16, steps=8, **P2)
    want = p2_oracle(model, cfg, prompt)
    assert model.tokens.mask not in want and final(model, cfg, prompt) == want


def test_p2_schedule_revisions_and_seeds():
    model = MockModel(seed=3)
    cfg = SamplerConfig(gen_length=32, steps=16, **P2)
    events = run(model, cfg)
    mask = model.tokens.mask
    prev = [mask] * 32
    for i, ev in enumerate(events):
        assert ev.tokens.count(mask) == p2_masked(32, i, 16)  # the kappa schedule
        assert ev.forwards == i + 1 and ev.done == (i == len(events) - 1)
        for pos in range(32):
            if pos in ev.revealed:
                assert prev[pos] == mask and ev.tokens[pos] != mask
            elif pos in ev.remasked:
                assert prev[pos] != mask and ev.tokens[pos] == mask
            else:
                assert ev.tokens[pos] == prev[pos]
        prev = ev.tokens
    assert len(events) == 16 and mask not in events[-1].tokens
    assert any(ev.remasked for ev in events)  # decoded tokens do get revised on these weights
    hot = cfg.with_(temperature=0.8, top_p=0.95)
    assert final(model, hot.with_(seed=7)) == final(model, hot.with_(seed=7)) != final(model, hot.with_(seed=8))
    assert [p2_masked(128, i, 128) for i in (0, 63, 126, 127)] == [127, 64, 1, 0]


def test_p2_has_no_blocks_or_threshold():
    for bad in (dict(threshold=0.9), dict(block_length=8), dict(factor=1.0)):
        with pytest.raises(UsageError, match="--block-length 0 --threshold 0"):
            SamplerConfig(gen_length=32, **{**P2, **bad})
