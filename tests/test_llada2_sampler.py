"""The llada2 block loop (sampler.denoise with block_loop "llada2") on a tiny LLaDA2 MoE checkpoint:
token parity with plain transcriptions of LLaDA2.0's generate() and LLaDA2.1's editing loop
(tests/oracles_llada2.py, run on an HF-style model that recomputes the whole window every step),
at T = 0 and seeded at T > 0, with the exact block KV cache and with full recompute; what editing
may touch (never the prompt, never a finished block); the events (edits apart from reveals);
early stop; the recipes and option rules."""

from __future__ import annotations

import pytest
import torch

from dllm_cli.config import SamplerConfig, family_sampler, parse_editing_threshold, recipe
from dllm_cli.engine.loader import load_model
from dllm_cli.engine.sampler import cut_at_stop, denoise, llada2_edits
from dllm_cli.errors import UsageError

from oracles import NoMaskModel
from oracles_llada2 import llada2_1_generate, llada2_generate
from tiny import edit_config, make_llada2_checkpoint

NEVER = -1  # an eos id no model produces: the official loops then run every block
B = 8  # the tiny checkpoint's block (config.json block_size), so a short canvas has several blocks


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = make_llada2_checkpoint(tmp_path_factory.mktemp("llada2"))
    edit_config(folder, block_size=B)
    m = load_model(folder)
    assert m.attention_block == B
    return m


def prompt_of(n, seed=0):
    return torch.randint(0, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def cfg_of(G=24, steps=None, threshold=0.95, editing=None, post=16, **kw):
    return SamplerConfig(gen_length=G, block_length=B, block_loop="llada2", steps=steps or G, threshold=threshold,
                         editing_threshold=editing, max_post_steps=post, cache="exact", early_stop=False, seed=3,
                         **kw)


def run(m, prompt, cfg):
    return list(denoise(m, prompt, cfg))


def gen(seed=3):
    return torch.Generator().manual_seed(seed)


def oracle20(m, prompt, cfg, eos=NEVER):
    return llada2_generate(m.hf(), torch.tensor([prompt]), temperature=cfg.temperature, block_length=B,
                           steps=cfg.total_steps // cfg.num_blocks, gen_length=cfg.gen_length, top_p=cfg.top_p,
                           top_k=cfg.top_k, threshold=cfg.threshold if cfg.threshold is not None else 2.0,
                           eos_id=eos, mask_id=m.tokens.mask, generator=gen())


def oracle21(m, prompt, cfg, eos=NEVER, edits=None):
    return llada2_1_generate(m.hf(), torch.tensor([prompt]), temperature=cfg.temperature, block_length=B,
                             gen_length=cfg.gen_length, top_p=cfg.top_p, top_k=cfg.top_k,
                             threshold=cfg.threshold if cfg.threshold is not None else 2.0,
                             editing_threshold=cfg.editing_threshold, max_post_steps=cfg.max_post_steps,
                             eos_early_stop=eos != NEVER, eos_id=eos, mask_id=m.tokens.mask, generator=gen(),
                             edits=edits)


# ---- LLaDA2.0: threshold decoding ---------------------------------------------------------------

CASES_20 = [dict(), dict(threshold=0.02), dict(threshold=0.3), dict(steps=12), dict(threshold=None),
            dict(temperature=1.0), dict(temperature=0.7, top_k=20, top_p=0.9, threshold=0.05)]


@pytest.mark.parametrize("P", [3, 8, 13])
@pytest.mark.parametrize("case", CASES_20, ids=str)
def test_llada2_0_matches_generate(model, P, case):
    m = NoMaskModel(model)
    cfg = cfg_of(**case)
    prompt = prompt_of(P)
    want = oracle20(m, prompt, cfg)
    assert m.tokens.mask not in want
    for cache in ("exact", "none"):
        events = run(m, prompt, cfg.with_(cache=cache))
        assert events[-1].tokens[:len(want)] == want, cache
        assert events[-1].done and all(not e.edited for e in events)


def test_llada2_0_commits_at_least_the_schedule(model):
    """threshold 1 is never passed (p > 1): each step commits exactly its count, and a block of
    B masks takes B / (steps per block) forwards."""
    m = NoMaskModel(model)
    events = run(m, prompt_of(8), cfg_of(G=24, steps=12, threshold=1.0))
    assert [len(e.revealed) for e in events] == [2] * 12
    assert events[-1].forwards == 12


# ---- LLaDA2.1: token editing ---------------------------------------------------------------------

CASES_21 = [dict(threshold=0.7, editing=0.0), dict(threshold=0.5, editing=0.0, post=2),
            dict(threshold=0.3, editing=0.05), dict(threshold=0.02, editing=0.0, post=0),
            dict(threshold=0.9, editing=0.5), dict(threshold=0.2, editing=0.0, temperature=1.0)]


@pytest.mark.parametrize("P", [3, 8, 13])
@pytest.mark.parametrize("case", CASES_21, ids=str)
def test_llada2_1_matches_the_editing_loop(model, P, case):
    m = NoMaskModel(model)
    cfg = cfg_of(**case)
    prompt = prompt_of(P)
    want = oracle21(m, prompt, cfg)
    assert m.tokens.mask not in want
    for cache in ("exact", "none"):
        assert run(m, prompt, cfg.with_(cache=cache))[-1].tokens[:len(want)] == want, cache


def test_editing_revises_and_reports_it(model):
    """On random weights with editing at 0 (any disagreement), written tokens are revised: the
    events list them as edits (not reveals), each with p > editing_threshold, the same edits the
    plain loop makes; the prompt's tail in the first block and finished blocks are never edited."""
    m = NoMaskModel(model)
    P, cfg = 5, cfg_of(G=24, threshold=0.5, editing=0.0)
    prompt = prompt_of(P)
    official: list[tuple[int, int, int]] = []
    oracle21(m, prompt, cfg, edits=official)
    events = run(m, prompt, cfg)
    ours = [(P + pos, before.tokens[pos], step.tokens[pos])
            for before, step in zip(events, events[1:]) for pos in step.edited]
    if events[0].edited:  # the first step can only edit nothing: there is nothing written yet
        pytest.fail("edits at the first step")
    assert ours and ours == official
    for step in events:
        assert not set(step.edited) & set(step.revealed)
        assert len(step.edit_confidences) == len(step.edited)
        assert all(c > 0.0 for c in step.edit_confidences)
    block_of = [(P + i) // B for i in range(len(events[-1].tokens))]
    for before, step in zip(events, events[1:]):
        current = max(block_of[p] for p in step.revealed + step.edited) if step.revealed + step.edited else None
        for pos in step.edited:
            assert block_of[pos] == current  # only the block being decoded
            assert before.tokens[pos] not in (m.tokens.mask,)  # a revision of a written token


def test_no_edit_above_one_gives_the_2_0_tokens(model):
    """editing_threshold 1 never edits (p > 1): the tokens are LLaDA2.0's; each block then runs one
    more forward (the step that finds nothing to fill and nothing to change), as the loop does."""
    m = NoMaskModel(model)
    prompt, plain = prompt_of(8), cfg_of(G=24, threshold=0.3)
    a, b = run(m, prompt, plain), run(m, prompt, plain.with_(editing_threshold=1.0))
    assert a[-1].tokens == b[-1].tokens
    assert b[-1].forwards == a[-1].forwards + 3


def test_llada2_edits_rule():
    x0 = torch.tensor([5, 6, 7, 8])
    prob = torch.tensor([0.9, 0.9, 0.4, 0.9])
    current = torch.tensor([5, 1, 2, 3])
    editable = torch.tensor([True, True, True, False])
    assert llada2_edits(x0, prob, current, editable, 0.5).tolist() == [False, True, False, False]
    assert llada2_edits(x0, prob, current, editable, 0.0).tolist() == [False, True, True, False]
    assert llada2_edits(x0, prob, current, editable, 0.4).tolist() == [False, True, False, False]  # strict


def test_early_stop_after_the_block_that_holds_eos(model):
    """A finished block with eos ends the run (the rest filled with eos); the answer is the plain
    loop's, with fewer forwards than running every block."""
    m = NoMaskModel(model, eos_bias=9.0, eos_from=10)
    prompt = prompt_of(6)
    for cfg, oracle in ((cfg_of(G=40, threshold=0.5), oracle20), (cfg_of(G=40, threshold=0.5, editing=0.0), oracle21)):
        want = oracle(m, prompt, cfg, eos=m.tokens.eos)
        assert want[-1] == m.tokens.eos and len(want) < 30
        early = run(m, prompt, cfg.with_(early_stop=True))
        assert early[-1].done and m.tokens.mask not in early[-1].tokens
        assert cut_at_stop(early[-1].tokens, m.tokens.stops) == cut_at_stop(want, m.tokens.stops)
        assert early[-1].forwards < run(m, prompt, cfg)[-1].forwards


# ---- recipes and options -----------------------------------------------------------------------------

def test_recipes():
    v20, v21 = family_sampler("llada2.0", 32), family_sampler("llada2.1", 32)
    assert v20.block_loop == v21.block_loop == "llada2" and v20.block_length == 32
    assert v20.editing_threshold is None and v20.threshold == 0.95
    assert (v21.threshold, v21.editing_threshold, v21.max_post_steps) == (0.7, 0.5, 16)
    assert v20.total_steps // v20.num_blocks == 32  # 32 steps per 32-token block
    assert family_sampler("sdar-moe", 4) == family_sampler("sdar", 4)
    assert recipe("llada2.1-mini").stop_tokens == ("<|endoftext|>", "<|role_end|>")


def test_editing_options():
    base = family_sampler("llada2.1", 32)
    assert SamplerConfig.from_options(base, editing_threshold="off").editing_threshold is None
    assert SamplerConfig.from_options(base, editing_threshold="0").editing_threshold == 0.0
    assert SamplerConfig.from_options(family_sampler("llada2.0", 32), editing_threshold=0.8).editing_threshold == 0.8
    assert parse_editing_threshold("None") is None
    for bad in ("1.5", "-0.1", "often"):
        with pytest.raises(UsageError, match="--editing-threshold"):
            parse_editing_threshold(bad)
    with pytest.raises(UsageError, match="LLaDA2.1's token editing"):
        SamplerConfig.from_options(family_sampler("sdar", 4), editing_threshold=0.5)
    with pytest.raises(UsageError, match="LLaDA2.1's token editing"):
        SamplerConfig(editing_threshold=0.5)
    with pytest.raises(UsageError, match="max_post_steps"):
        base.with_(max_post_steps=-1)
