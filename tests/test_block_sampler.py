"""The block-diffusion loops (sampler.denoise with cfg.block_loop): token-exact parity with plain
transcriptions of SDAR's `block_diffusion_generate`, Stable-DiffCoder's `generate_block` and
Fast-dLLM v2's `generate` (tests/oracles.py, run on an HF-style model that recomputes every
forward from the ids), at T = 0 and, seeded, at T > 0; the exact block KV cache gives identical
tokens to full recompute; where an official loop has a bug (SDAR's unclamped top-k, Fast-dLLM
v2's dropped one-block prompt) the fixed behaviour is tested, and equality where it is harmless;
the end-to-end chain against transformers' reference models; invariants and user errors."""

from __future__ import annotations

import pytest
import torch

from dllm_cli.config import SamplerConfig, family_sampler
from dllm_cli.engine.loader import load_model
from dllm_cli.engine.sampler import block_plan, cut_at_stop, denoise, sdar_select, sdc_select, v2_select
from dllm_cli.errors import UsageError

from oracles import NoMaskModel, fast_dllm_v2_generate, raw_logits, reference, sdar_generate, sdc_generate_block
from tiny import make_fast_dllm_v2_checkpoint, make_sdar_checkpoint, make_stable_diffcoder_checkpoint

NEVER = -1  # a stop id no model produces: the official loops then run every block


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {"sdar": make_sdar_checkpoint(tmp_path_factory.mktemp("sdar")),
            "stable-diffcoder": make_stable_diffcoder_checkpoint(tmp_path_factory.mktemp("sdc")),
            "fast-dllm-v2": make_fast_dllm_v2_checkpoint(tmp_path_factory.mktemp("v2"), bd_size=8)}


@pytest.fixture(scope="module")
def models(folders):
    return {k: load_model(v) for k, v in folders.items()}


def prompt_of(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 300, (n,), generator=g).tolist()


def run(model, prompt, cfg):
    return list(denoise(model, prompt, cfg))


def final(model, prompt, cfg):
    return run(model, prompt, cfg)[-1].tokens


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---- SDAR ---------------------------------------------------------------------------------------

SDAR_CASES = [dict(steps=4), dict(steps=2), dict(steps=4, threshold=0.9), dict(steps=2, threshold=0.02),
              dict(steps=4, temperature=1.0), dict(steps=4, temperature=0.7, top_k=20, top_p=0.9),
              dict(steps=1, threshold=0.5)]


def sdar_cfg(G=16, B=4, steps=4, threshold=None, **kw):
    return SamplerConfig(gen_length=G, block_length=B, block_loop="sdar", steps=steps * G // B, threshold=threshold,
                         cache="exact", early_stop=False, seed=3, **kw)


def sdar_oracle(m, prompt, cfg, steps, clamp=True):
    out = sdar_generate(m.hf(), torch.tensor([prompt]), m.tokens.mask, gen_length=cfg.gen_length,
                        block_length=cfg.block, denoising_steps=steps, temperature=cfg.temperature,
                        top_k=cfg.top_k or 0, top_p=cfg.top_p or 1.0,
                        remasking_strategy="low_confidence_dynamic" if cfg.threshold else "low_confidence_static",
                        confidence_threshold=cfg.threshold, generator=gen(3), clamp_topk=clamp)
    return out[0].tolist()


@pytest.mark.parametrize("P", [3, 4, 9, 14])
@pytest.mark.parametrize("case", SDAR_CASES, ids=str)
def test_sdar_matches_block_diffusion_generate(models, P, case):
    m = NoMaskModel(models["sdar"])
    cfg = sdar_cfg(**case)
    prompt = prompt_of(P)
    want = sdar_oracle(m, prompt, cfg, case["steps"])
    assert want[:P] == prompt and m.tokens.mask not in want
    for cache in ("exact", "none"):
        assert final(m, prompt, cfg.with_(cache=cache)) == want[P:], cache


def test_sdar_unclamped_topk_overwrites_the_prompt(models):
    """The official top-k is not clamped to the masks left: with 2 tokens per step and a first
    block holding 3 prompt tokens and 1 mask, it also rewrites a prompt token. Fixed here; with
    one token per step (k never exceeds the masks) the official loop is followed exactly."""
    m = NoMaskModel(models["sdar"])
    prompt = prompt_of(3)
    official = sdar_oracle(m, prompt, sdar_cfg(steps=2), 2, clamp=False)
    assert official[:3] != prompt
    ours = run(m, prompt, sdar_cfg(steps=2))
    assert ours[-1].tokens == sdar_oracle(m, prompt, sdar_cfg(steps=2), 2)[3:]
    assert sdar_oracle(m, prompt, sdar_cfg(steps=4), 4, clamp=False)[3:] == final(m, prompt, sdar_cfg(steps=4))


def test_sdar_canvas_rounds_up_to_a_block(models):
    """ceil((P + G) / B) * B positions, as the official loop builds them."""
    cfg = sdar_cfg(G=16, B=4)
    assert block_plan(cfg, 5).end == 24 and block_plan(cfg, 5).blocks[0] == (4, 8)
    events = run(NoMaskModel(models["sdar"]), prompt_of(5), cfg)
    assert len(events[-1].tokens) == 24 - 5
    assert events[-1].forwards == len(events)  # one forward per step: prefill and commits fused


def test_sdar_stop_ids(models):
    m = NoMaskModel(models["sdar"], eos_bias=8.0, eos_from=13)
    prompt, cfg = prompt_of(6), sdar_cfg(G=32, threshold=0.9)
    want = sdar_generate(m.hf(), torch.tensor([prompt]), m.tokens.mask, gen_length=32, block_length=4,
                         denoising_steps=4, temperature=0.0, confidence_threshold=0.9,
                         stopping_criteria_idx=sorted(m.tokens.stops), generator=gen(3), clamp_topk=True)
    answer = cut_at_stop(want[0, 6:].tolist(), m.tokens.stops)
    assert 0 < len(answer) < 20
    early = run(m, prompt, cfg.with_(early_stop=True))
    assert cut_at_stop(early[-1].tokens, m.tokens.stops) == answer
    assert early[-1].forwards < run(m, prompt, cfg)[-1].forwards


# ---- Stable-DiffCoder -------------------------------------------------------------------------------

SDC_CASES = [dict(steps=16), dict(steps=8), dict(steps=16, threshold=0.95), dict(steps=16, threshold=0.02),
             dict(steps=16, alg="random"), dict(steps=16, temperature=1.0), dict(steps=8, temperature=0.5,
                                                                                   alg="random")]


def sdc_cfg(G=16, B=4, steps=16, threshold=None, **kw):
    return SamplerConfig(gen_length=G, block_length=B, block_loop="stable-diffcoder", steps=steps,
                         threshold=threshold, cache="exact", early_stop=False, seed=5, **kw)


def sdc_oracle(m, prompt, cfg, eos=None):
    x, nfe = sdc_generate_block(m.hf(), torch.tensor([prompt]), steps=cfg.total_steps, gen_length=cfg.gen_length,
                                block_length=cfg.block, temperature=cfg.temperature, remasking=cfg.alg,
                                mask_id=m.tokens.mask, threshold=cfg.threshold, eos_id=eos, generator=gen(5))
    return x[0].tolist(), nfe


@pytest.mark.parametrize("P", [3, 4, 9, 16])
@pytest.mark.parametrize("case", SDC_CASES, ids=str)
def test_stable_diffcoder_matches_generate_block(models, P, case):
    m = NoMaskModel(models["stable-diffcoder"])
    cfg = sdc_cfg(**case)
    prompt = prompt_of(P, seed=1)
    want, nfe = sdc_oracle(m, prompt, cfg)
    assert want[:P] == prompt and len(want) == P + 16 and m.tokens.mask not in want
    for cache in ("exact", "none"):
        events = run(m, prompt, cfg.with_(cache=cache))
        assert events[-1].tokens == want[P:], cache
    blocks = len(block_plan(cfg, P).blocks)
    assert events[-1].forwards == nfe - (blocks - 1) - 1  # no extra forward per block to write its cache


def test_stable_diffcoder_canvas_and_residual_blocks():
    cfg = sdc_cfg(G=16, B=4)
    plan = block_plan(cfg, 6)  # r = 2: blocks [2, 4, 4, 4, 2] masks, the canvas ends at P + G
    assert plan.end == 22 and plan.blocks == ((4, 8), (8, 12), (12, 16), (16, 20), (20, 22))
    assert block_plan(cfg, 8).blocks == ((8, 12), (12, 16), (16, 20), (20, 24))


def test_stable_diffcoder_eos(models):
    m = NoMaskModel(models["stable-diffcoder"], eos_bias=8.0, eos_from=13)
    prompt, cfg = prompt_of(6, seed=2), sdc_cfg(G=32, steps=32)
    want, _ = sdc_oracle(m, prompt, cfg, eos=m.tokens.eos)
    answer = cut_at_stop(want[6:], m.tokens.stops)
    assert 0 < len(answer) < 20 and len(want) < 6 + 32  # the official loop cut x at that block
    for cache in ("exact", "none"):
        events = run(m, prompt, cfg.with_(early_stop=True, cache=cache))
        assert cut_at_stop(events[-1].tokens, m.tokens.stops) == answer


def test_stable_diffcoder_threshold_finishes_with_few_steps(models):
    """Threshold mode with fewer steps than masks: the official loop leaves the block unfinished
    (and cannot go on); dllm commits enough per step to finish within the steps."""
    m = NoMaskModel(models["stable-diffcoder"])
    events = run(m, prompt_of(8), sdc_cfg(G=16, steps=4, threshold=0.99))  # 1 step per 4-token block
    assert m.tokens.mask not in events[-1].tokens and len(events) == 4


# ---- Fast-dLLM v2 ------------------------------------------------------------------------------------

V2_CASES = [dict(), dict(threshold=0.9), dict(threshold=0.01), dict(sub_block_length=8),
            dict(temperature=1.0, top_p=0.95), dict(temperature=0.6, top_p=0.8, threshold=0.05)]


def v2_cfg(G=24, B=8, sub=4, threshold=None, **kw):
    kw.setdefault("sub_block_length", sub)
    return SamplerConfig(gen_length=G, block_length=B, block_loop="fast-dllm-v2", threshold=threshold,
                         cache="exact", early_stop=False, seed=7, **kw)


def v2_oracle(m, prompt, cfg, stop=NEVER, prefill_equal=True, raw=None):
    out = fast_dllm_v2_generate(m.hf(raw), torch.tensor([prompt]), cfg.gen_length, mask_id=m.tokens.mask,
                                threshold=1 if cfg.threshold is None else cfg.threshold,
                                small_block_size=cfg.sub_block_length or cfg.block, block_size=cfg.block,
                                stop_token=stop, top_p=cfg.top_p or 0.95, temperature=cfg.temperature,
                                generator=gen(7), prefill_equal=prefill_equal)
    return out[0].tolist()


@pytest.mark.parametrize("P", [3, 9, 13, 16])
@pytest.mark.parametrize("case", V2_CASES, ids=str)
def test_fast_dllm_v2_matches_generate(models, P, case):
    m = NoMaskModel(models["fast-dllm-v2"])
    cfg = v2_cfg(**case)
    prompt = prompt_of(P, seed=3)
    want = v2_oracle(m, prompt, cfg)
    assert want[:P] == prompt and m.tokens.mask not in want
    for cache in ("exact", "none"):
        events = run(m, prompt, cfg.with_(cache=cache))
        # the official loop also appends the next block's first token after the last block
        assert events[-1].tokens == want[P:-1], cache
    assert len(want) == block_plan(cfg, P).end + 1


def test_fast_dllm_v2_one_block_prompt(models):
    """P == block: the official `P > block_size` skips the prefill and the first block's forwards
    run on its masks alone (the prompt drops out: two prompts give the same tokens). dllm
    prefills it; that equals the official loop with the prefill condition fixed."""
    m = NoMaskModel(models["fast-dllm-v2"])
    cfg = v2_cfg()
    a, b = prompt_of(8, seed=4), prompt_of(8, seed=5)
    assert v2_oracle(m, a, cfg, prefill_equal=False)[8:] == v2_oracle(m, b, cfg, prefill_equal=False)[8:]
    ours = final(m, a, cfg)
    assert ours == v2_oracle(m, a, cfg)[8:-1] and ours != final(m, b, cfg)


def test_fast_dllm_v2_stop(models):
    m = NoMaskModel(models["fast-dllm-v2"], eos_bias=9.0, eos_from=20)
    prompt, cfg = prompt_of(11, seed=6), v2_cfg(G=32, threshold=0.9)
    want = v2_oracle(m, prompt, cfg, stop=m.tokens.eos)
    assert want[-1] == m.tokens.eos and len(want) < 11 + 30
    events = run(m, prompt, cfg.with_(early_stop=True))
    assert cut_at_stop(events[-1].tokens, m.tokens.stops) == want[11:-1]


def test_fast_dllm_v2_first_block_token_is_autoregressive(models):
    """A block starts with the prompt's tail or the token the previous block's last position
    predicts (greedy, even at T > 0); it is reported as a step of its own."""
    m = NoMaskModel(models["fast-dllm-v2"])
    events = run(m, prompt_of(16, seed=8), v2_cfg(temperature=1.0, top_p=0.9))
    ar = [e for e in events if e.revealed in ([0], [8], [16])]
    assert [e.revealed for e in ar] == [[0], [8], [16]]


# ---- the whole chain against transformers' reference models -------------------------------------

@pytest.mark.parametrize("layout", ["sdar", "stable-diffcoder", "fast-dllm-v2"])
def test_official_loops_on_transformers_match_dllm(folders, models, layout):
    """The official loop driving transformers' Qwen3 / Llama / Qwen2 (block-causal 4-D mask) and
    dllm's loop with its own network and exact cache write the same tokens."""
    ref = reference(folders[layout], layout)
    m = NoMaskModel(models[layout])
    B = m.attention_block
    raw = lambda ids: m._edit(raw_logits(ref, ids, B), 1 if m.shift else 0)  # noqa: E731
    prompt = prompt_of(10, seed=9)
    if layout == "sdar":
        cfg = sdar_cfg(G=16, threshold=0.9)
        out = sdar_generate(m.hf(raw), torch.tensor([prompt]), m.tokens.mask, gen_length=16, block_length=4,
                            denoising_steps=4, temperature=0.0, confidence_threshold=0.9, generator=gen(3))
        want = out[0, 10:].tolist()
    elif layout == "stable-diffcoder":
        cfg = sdc_cfg(G=16, steps=16)
        x, _ = sdc_generate_block(m.hf(raw), torch.tensor([prompt]), steps=16, gen_length=16, block_length=4,
                                  mask_id=m.tokens.mask, threshold=None, generator=gen(5))
        want = x[0, 10:].tolist()
    else:
        cfg = v2_cfg(G=24, threshold=0.9)
        want = v2_oracle(m, prompt, cfg, raw=raw)[10:-1]
    assert final(m, prompt, cfg) == want


# ---- rules, invariants, errors ----------------------------------------------------------------------

def test_select_rules():
    masked = torch.tensor([True, True, False, True])
    conf = torch.tensor([0.5, 0.95, -torch.inf, 0.2])
    assert sdar_select(conf, masked, 1, None).tolist() == [False, True, False, False]
    assert sdar_select(conf, masked, 5, None).tolist() == [True, True, False, True]  # clamped to the masks
    assert sdar_select(conf, masked, 1, 0.9).tolist() == [False, True, False, False]  # > 0.9, at least 1
    assert sdar_select(conf, masked, 2, 0.9).tolist() == [True, True, False, False]  # too few high: top-2
    assert sdar_select(torch.tensor([0.9, 0.3]), torch.tensor([True, True]), 1, 0.9).tolist() == [True, False]
    assert sdc_select(conf, masked, 2, None).tolist() == [True, True, False, False]
    assert sdc_select(conf, masked, 1, 0.5).tolist() == [True, True, False, False]  # >= 0.5, at least 1
    assert sdc_select(conf, masked, 1, 0.99).tolist() == [False, True, False, False]
    assert sdc_select(conf, masked, 3, 0.99).tolist() == [True, True, False, True]  # enough to finish
    assert v2_select(conf, masked, 0.4).tolist() == [True, True, False, False]  # > 0.4, plus the best
    assert v2_select(conf, masked, None).tolist() == [False, True, False, False]  # one per forward


@pytest.mark.parametrize("loop", ["sdar", "stable-diffcoder", "fast-dllm-v2"])
def test_events_prompt_and_cache(models, loop):
    m = models[loop]
    cfg = family_sampler(loop, m.attention_block).with_(gen_length=m.attention_block * 4, early_stop=False,
                                                      seed=1)
    if loop == "fast-dllm-v2":
        cfg = cfg.with_(sub_block_length=4)
    prompt = prompt_of(7)
    events = run(m, prompt, cfg)
    prev = [m.tokens.mask] * len(events[0].tokens)
    for n, ev in enumerate(events):
        assert ev.index == n and ev.done == (n == len(events) - 1) and ev.revealed
        for pos in range(len(prev)):
            if pos in ev.revealed:
                assert prev[pos] == m.tokens.mask != ev.tokens[pos]
            else:
                assert ev.tokens[pos] == prev[pos]
        prev = ev.tokens
    assert m.tokens.mask not in events[-1].tokens
    assert events[-1].forwards == len(events)
    assert final(m, prompt, cfg.with_(cache="none")) == events[-1].tokens


def test_the_mask_token_is_never_committed(models):
    class MaskLover:
        def __init__(self, model):
            self.model, self.tokens, self.device = model, model.tokens, model.device
            self.attention_block = model.attention_block

        def new_cache(self):
            return self.model.new_cache()

        def logits(self, ids, **kw):
            out = self.model.logits(ids, **kw)
            out[..., self.tokens.mask] = 50.0
            return out

    for loop in ("sdar", "stable-diffcoder", "fast-dllm-v2"):
        m = MaskLover(models[loop])
        cfg = family_sampler(loop, m.attention_block).with_(gen_length=m.attention_block * 2, temperature=0.8)
        assert m.tokens.mask not in final(m, prompt_of(5), cfg)


def test_loop_and_model_must_agree(models, dream_ckpt):
    sdar = models["sdar"]
    with pytest.raises(UsageError, match="attends block-causally"):
        denoise(sdar, [1, 2], SamplerConfig())
    with pytest.raises(UsageError, match="blocks of 4 tokens"):
        denoise(sdar, [1, 2], family_sampler("sdar").with_(block_length=8))
    with pytest.raises(UsageError, match="needs a block-causal model"):
        denoise(load_model(dream_ckpt), [1, 2], family_sampler("sdar"))
    with pytest.raises(UsageError, match="prefix and a suffix"):
        denoise(sdar, [1, 2], family_sampler("sdar"), suffix_ids=[3, 4])


def test_official_masks_are_the_models_pattern(models):
    """HFStyleLM checks every mask an official loop builds against the network's block-causal
    pattern: the check runs, and it would catch a loop built for another block length."""
    m = NoMaskModel(models["stable-diffcoder"])
    lm = m.hf()
    sdc_generate_block(lm, torch.tensor([prompt_of(6)]), steps=8, gen_length=8, block_length=4,
                       mask_id=m.tokens.mask, threshold=None)
    assert lm.masks_checked >= 1 + 8  # the prefill, then every step
    with pytest.raises(AssertionError, match="differs from the model's block-causal pattern"):
        sdc_generate_block(m.hf(), torch.tensor([prompt_of(6)]), steps=4, gen_length=8, block_length=8,
                           mask_id=m.tokens.mask, threshold=None)
