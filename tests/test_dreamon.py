"""dreamon.denoise_dreamon: token-exact parity with a transcription of DreamOn's official loop
(tests/oracles.py: dreamon_generate), the middle growing (<|expand|>) and shrinking (eos), the
length limits, seeds and errors."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from dllm_cli.config import SamplerConfig
from dllm_cli.engine.dreamon import denoise_dreamon
from dllm_cli.engine.loader import load_model
from dllm_cli.errors import UsageError

from oracles import MockModel, dreamon_generate

PREFIX, SUFFIX = [3, 5, 7, 9, 11], [13, 17, 19]
EXPAND = 60  # a token of MockModel's 64-entry vocabulary standing in for <|expand|>


def cfg(**kw) -> SamplerConfig:
    base = dict(gen_length=16, alg="entropy", block_length=None, threshold=None, cache="none", early_stop=False)
    return SamplerConfig(**{**base, **kw})


def ours(model, c, prefix=PREFIX, suffix=SUFFIX, **kw):
    return list(denoise_dreamon(model, prefix, suffix + [model.tokens.eos], c, **kw))


def oracle(model, c, prefix=PREFIX, suffix=SUFFIX, initial=4, padded=False, **kw):
    ids = torch.tensor([prefix + [model.tokens.mask] * initial + suffix + [model.tokens.eos]])
    return dreamon_generate(model, ids, c.gen_length, alg=c.alg, temperature=c.temperature, top_p=c.top_p,
                            top_k=c.top_k, alg_temp=c.alg_temp, mask_token_id=model.tokens.mask,
                            expand_token_id=EXPAND, delete_token_id=model.tokens.eos,
                            eos_token_id=model.tokens.eos, padded=padded, **kw)


MODELS = {
    "grows": MockModel(seed=5, token_bias={EXPAND: 5.0}, expand_token_id=EXPAND),
    "shrinks": MockModel(seed=6, shifted=True, eos_bias=8.0, expand_token_id=EXPAND),
    "both": MockModel(seed=9, token_bias={EXPAND: 5.0}, eos_bias=5.0, expand_token_id=EXPAND),
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
def test_matches_the_official_loop(name, alg):
    model = MODELS[name]
    c = cfg(alg=alg)
    events = ours(model, c)
    assert events[-1].done and events[-1].tokens == oracle(model, c)
    lengths = [len(e.tokens) for e in events]
    assert [e.index for e in events] == list(range(len(events)))
    assert all(e.forwards == e.index + 1 for e in events)
    if name in ("grows", "both"):
        assert max(lengths) > 4  # the middle grew
    if name in ("shrinks", "both"):
        assert any(b < a for a, b in zip(lengths, lengths[1:]))  # and shrank
    assert max(lengths) <= c.gen_length and model.tokens.mask not in events[-1].tokens


def test_the_window_alone_equals_the_padded_official_canvas(dream_ckpt):
    """The official loop pads to max_length and masks the padding out of attention; dllm runs the
    live canvas alone. On a real Dream-layout checkpoint both give the same tokens."""
    model = load_model(str(dream_ckpt))
    model.tokens = replace(model.tokens, expand=EXPAND, delete=model.tokens.eos)  # a stand-in <|expand|>
    prefix = model.tokenizer.encode("def mean(xs):\n")
    suffix = model.tokenizer.encode("\n\ndef median(xs):\n    pass\n")
    c = cfg(gen_length=12, alg="maskgit_plus")
    got = list(denoise_dreamon(model, prefix, suffix + [model.tokens.eos], c))
    assert got[-1].tokens == oracle(model, c, prefix, suffix, padded=True)


def test_budget_and_max_length_stop_the_growth():
    model = MockModel(seed=5, token_bias={EXPAND: 6.0}, expand_token_id=EXPAND)  # wants to expand everywhere
    c = cfg(gen_length=10)
    events = ours(model, c)
    assert max(len(e.tokens) for e in events) == 10  # max_length: expansion blocked there
    assert events[-1].tokens == oracle(model, c)
    fixed = ours(model, c, expand_budget=0)
    assert {len(e.tokens) for e in fixed} == {4} and fixed[-1].tokens == oracle(model, c, expand_budget=0)


def test_seeds_and_alg_temp():
    model = MODELS["both"]
    hot = cfg(temperature=0.8, top_p=0.95, alg_temp=0.5)
    a, b, d = (ours(model, hot.with_(seed=s))[-1].tokens for s in (1, 1, 2))
    assert a == b and a != d


def test_errors_and_the_expand_token():
    model = MODELS["grows"]
    with pytest.raises(UsageError, match="maskgit_plus, topk_margin or entropy"):
        ours(model, cfg(alg="origin"))
    with pytest.raises(UsageError, match="initial masks"):
        ours(model, cfg(gen_length=3))
    with pytest.raises(UsageError, match="mask token"):
        ours(model, cfg(), prefix=[model.tokens.mask])
    with pytest.raises(UsageError, match="needs an <|expand|> token"):
        ours(MockModel(seed=5), cfg())


def test_expand_and_delete_tokens_come_from_the_tokenizer(tmp_path):
    from tiny import make_dream_checkpoint
    plain = load_model(str(make_dream_checkpoint(tmp_path / "a")))
    assert plain.tokens.expand is None and plain.tokens.delete == plain.tokens.eos
    on = load_model(str(make_dream_checkpoint(tmp_path / "b", extra_tokens=("<|expand|>", "<|delete|>"))))
    tok = on.tokenizer
    assert on.tokens.expand == tok.token_to_id("<|expand|>") is not None
    assert on.tokens.delete == tok.token_to_id("<|delete|>") != on.tokens.eos
    assert on.checkpoint.family == "dreamon"
