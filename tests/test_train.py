"""The training recipe: corpus filter/dedup/split, tokenizer, synthesised samples, loss, checkpoint, eval."""

from __future__ import annotations

import json
import random
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dllm_cli.events import SpecialTokens
from dllm_cli.train import corpus, evaluate, synth
from dllm_cli.train.tokenizer_train import CHAT_TEMPLATE, SPECIAL_TOKENS, save_tokenizer, train_bpe

CODE = [
    textwrap.dedent('''\
        import os


        def join_parts(a, b):
            """Join two path parts with a slash."""
            if not a:
                return b
            return a.rstrip("/") + "/" + b


        class Counter:
            def __init__(self):
                self.n = 0

            def bump(self, k=1):
                """Add k to the counter."""
                self.n += k
                return self.n
        '''),
    textwrap.dedent('''\
        def mean(xs):
            """Arithmetic mean of a list."""
            total = 0
            for x in xs:
                total += x
            return total / len(xs)


        def clamp(x, lo, hi):
            """Keep x between lo and hi."""
            return max(lo, min(hi, x))
        '''),
]


def _dist(site: Path, name: str, licence: str, files: dict[str, str]) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\nLicense: {licence}\n")
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    (info / "RECORD").write_text("".join(f"{rel},,\n" for rel in files))


@pytest.fixture()
def roots(tmp_path):
    std, site = tmp_path / "std", tmp_path / "site"
    (std / "test").mkdir(parents=True)
    (std / "a.py").write_text(CODE[0])
    (std / "a_copy.py").write_text(CODE[0])                          # exact duplicate
    (std / "a_spaces.py").write_text(CODE[0].replace("    ", "\t"))  # whitespace variant
    (std / "test" / "test_a.py").write_text("def test(): pass\n")    # test dirs are skipped
    _dist(site, "goodpkg", "MIT", {"goodpkg/__init__.py": CODE[1]})
    _dist(site, "badpkg", "GNU General Public License v3 (GPLv3)", {"badpkg/__init__.py": "x = 1\n"})
    return std, site


def test_licence_filter():
    assert corpus.is_permissive("MIT") and corpus.is_permissive("Apache-2.0 OR BSD-3-Clause")
    assert corpus.is_permissive("Python Software Foundation License")
    for bad in ("", "GPL-3.0", "MPL-2.0 AND MIT", "LGPLv2+", "Proprietary"):
        assert not corpus.is_permissive(bad), bad


def test_corpus_filters_dedups_and_splits_deterministically(roots, tmp_path):
    std, site = roots
    m = corpus.build_corpus(tmp_path / "c1", std, site, heldout_percent=50.0)
    names = {p["name"] for p in m.packages}
    assert "goodpkg" in names and "badpkg" not in names
    assert [r["name"] for r in m.rejected] == ["badpkg"]
    assert m.counts["dup_exact"] == 1 and m.counts["dup_normalised"] == 1
    assert m.counts["train_files"] + m.counts["heldout_files"] == 2
    docs = corpus.read_docs(tmp_path / "c1" / "train.jsonl") + corpus.read_docs(tmp_path / "c1" / "heldout.jsonl")
    assert not any("test" in d["path"].split("/") for d in docs)
    corpus.build_corpus(tmp_path / "c2", std, site, heldout_percent=50.0)
    for name in ("train.jsonl", "heldout.jsonl"):
        assert (tmp_path / "c1" / name).read_bytes() == (tmp_path / "c2" / name).read_bytes()
    # the split depends on content only, not on order or path
    assert all(corpus.is_heldout(c, 50.0) == corpus.is_heldout(c + "\n\n", 50.0) for c in CODE)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(train_bpe(CODE * 20, vocab_size=320), out)
    return out


def test_tokenizer_specials_template_and_round_trip(tok_dir):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    code = CODE[0] + "\tx = '\u00e9'  # tabs, unicode\n"
    assert tok.decode(tok.encode(code).ids) == code
    assert tok.encode("<|mask|><|im_end|>").ids == [1, 3]
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert "auto_map" not in cfg and cfg["eos_token"] == cfg["pad_token"] == "<|endoftext|>"
    assert cfg["mask_token"] == "<|mask|>"
    assert (tok_dir / "chat_template.jinja").read_text() == CHAT_TEMPLATE


def test_chat_template_matches_engine_tokenizer(tok_dir):
    from dllm_cli.prompt import build_messages
    from dllm_cli.tokenizer import Tokenizer
    from dllm_cli.train.data import render_prompt
    msgs = build_messages("implement mean")
    from dllm_cli.catalog import inspect
    (tok_dir / "config.json").write_text(json.dumps({"model_type": "Dream", "mask_token_id": 1, "eos_token_id": 0}))
    text = Tokenizer.from_checkpoint(inspect(tok_dir)).apply_chat_template([m.as_dict() for m in msgs])
    assert text == render_prompt(msgs)
    assert text.startswith("<|im_start|>system\nYou are dllm") and text.endswith("<|im_start|>assistant\n")


def _apply(answer: str, view: str) -> str:
    from dllm_cli.edits import parse
    (e,) = parse(answer).edits
    assert view.count(e.search) == 1
    return view.replace(e.search, e.replace)


def test_synthesised_samples_are_consistent_edits():
    rng = random.Random(0)
    for f in synth.functions(CODE[1]):
        s = synth.implement_sample("m.py", CODE[1], f, rng, 10_000)
        view = s.messages[-1].content.split("```python\n", 1)[1].split("```\n", 1)[0]
        assert "    ...\n" in view
        assert _apply(s.answer, view) == CODE[1]      # the edit restores the original file
        a = synth.add_sample("m.py", CODE[1], f, rng, 10_000)
        if a is not None:
            view = a.messages[-1].content.split("```python\n", 1)[1].split("```\n", 1)[0]
            assert f"def {f.name}" not in view and _apply(a.answer, view) == CODE[1]
            assert "that" in a.messages[-1].content or ":" in a.messages[-1].content


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tok_dir):
    from dllm_cli.train.data import prepare
    root = tmp_path_factory.mktemp("data")
    c = root / "corpus"
    c.mkdir()
    rows = [{"source": "t", "package": "t", "path": f"m{i}.py", "text": CODE[i % 2]} for i in range(40)]
    (c / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (c / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    prepare(c, tok_dir, root / "tokens", seq_len=256, min_gen=32, seed=0)
    return root / "tokens"


def _tiny(**kw):
    from dllm_cli.train.train import PRESETS
    return replace(PRESETS["tiny"], **kw)


def test_two_steps_give_a_checkpoint_the_engine_loads(data_dir, tok_dir, tmp_path, roots):
    from dllm_cli.engine.loader import load_model
    from dllm_cli.train.train import load_checkpoint, package, train
    ckpt = train(_tiny(max_steps=2, seq_len=256, sft_ratio=0.5), data_dir, tok_dir, tmp_path / "run", echo=False)
    model = load_model(str(ckpt))
    assert model.spec.layout == "dream" and model.spec.shifted and model.spec.tied
    assert model.tokens.mask == 1 and model.tokens.eos == 0
    ids = torch.randint(4, 300, (1, 24))
    ids[0, 5] = 1
    with torch.no_grad():
        net, _ = load_checkpoint(ckpt)
        assert torch.allclose(model.logits(ids), net.eval().logits(ids), atol=1e-5)
    assert net.model.embed_tokens.weight.requires_grad  # trainable again (a second phase)
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "done" and log[-1]["step"] == 2
    corpus.build_corpus(tmp_path / "corpus", *roots)
    shipped = package(ckpt, tmp_path / "corpus", tmp_path / "weights" / "mini")
    assert "| goodpkg | 1.0 | MIT |" in (shipped / "DATA.md").read_text()
    assert (shipped / "train_log.jsonl").read_text() == (tmp_path / "run" / "train_log.jsonl").read_text()
    (tmp_path / "phase1.jsonl").write_text('{"event": "start"}\n')
    package(ckpt, tmp_path / "corpus", shipped, logs=[tmp_path / "phase1.jsonl", tmp_path / "run" / "train_log.jsonl"])
    joined = (shipped / "train_log.jsonl").read_text()
    assert joined.startswith('{"event": "start"}\n')
    assert joined.endswith((tmp_path / "run" / "train_log.jsonl").read_text())
    with pytest.raises(ValueError, match="training log not found"):
        package(ckpt, tmp_path / "corpus", shipped, logs=[tmp_path / "nope.jsonl"])
    assert load_model(str(shipped)).spec.family == "dllm"


def test_loss_goes_down_on_a_fixed_batch(data_dir):
    import numpy as np

    from dllm_cli.train.data import load_sft
    from dllm_cli.train.train import diffusion_loss, make_batch, make_optimizer, new_model
    cfg = _tiny(seq_len=128, sft_ratio=0.5)
    torch.manual_seed(0)
    model = new_model(cfg.model)  # the engine's own Dream-layout network
    opt = make_optimizer(model, cfg)
    ids, eligible = make_batch(np.random.default_rng(0), np.load(data_dir / "train_tokens.npy"),
                               load_sft(data_dir / "sft_train.npz"), cfg)
    assert not eligible[:, 0].any()
    losses = []
    for step in range(25):
        loss, _ = diffusion_loss(model, ids, eligible, 1, torch.Generator().manual_seed(step % 3))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.75 * sum(losses[:3])


class _Oracle:
    """A fake model whose aligned logits put all mass on `truth` (or on token 4 when wrong)."""

    tokens = SpecialTokens(mask=1, eos=0)

    def __init__(self, truth: torch.Tensor, wrong: bool = False):
        self.truth, self.wrong = truth, wrong

    def logits(self, ids):
        B, T = ids.shape
        out = torch.zeros(B, T, 10)
        for b in range(B):
            target = torch.full((T,), 4) if self.wrong else self._row(ids[b])
            out[b, torch.arange(T), target] = 5.0
        return out

    def _row(self, ids):
        for r in self.truth:   # find the true row this (partly masked) row came from
            if bool(((ids == r) | (ids == 1)).all()):
                return r
        raise AssertionError("unknown row")


def test_eval_figures_on_hand_made_cases():
    rows = torch.randint(5, 10, (3, 40))
    assert evaluate.masked_top1(_Oracle(rows), rows)["masked_top1_15"] == 1.0
    assert evaluate.masked_top1(_Oracle(rows, wrong=True), rows)["masked_top1_15"] == 0.0
    cases = [(rows[0].tolist(), [3, 4, 5]), (rows[1].tolist(), [10])]
    assert evaluate.infill_exact(_Oracle(rows), cases) == {"infill_exact": 1.0, "infill_lines": 2}
    assert evaluate.infill_exact(_Oracle(rows, wrong=True), cases)["infill_exact"] == 0.0
    head = ["def f(x):", '    """Double."""']
    good = ('m.py\n<<<<<<< SEARCH\n    """Double."""\n    ...\n=======\n    """Double."""\n    return 2 * x\n'
            '>>>>>>> REPLACE\n')
    assert evaluate.compiled_function(good, head) == (True, True)
    assert evaluate.compiled_function(good.replace("2 * x", "2 * (x"), head) == (True, False)
    assert evaluate.compiled_function("return 2 * x", head) == (False, False)
    assert evaluate.compiled_function(good.replace("    return 2 * x\n", "    ...\n"), head) == (True, False)


def test_line_cases_mask_exactly_one_line(tok_dir):
    from tokenizers import Tokenizer
    backend = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    docs = [{"path": "m.py", "text": CODE[0]}]
    for ids, pos in evaluate.line_cases(backend, docs, 5, seed=1):
        text = backend.decode([ids[p] for p in pos])
        assert "\n" not in text and text.strip() and text.strip() in CODE[0]
        assert pos == list(range(pos[0], pos[-1] + 1))


def test_ngram_baseline_and_bits_per_char():
    pattern = [5, 6, 7, 8, 9]
    rows = torch.tensor([pattern * 8, pattern[2:] + pattern * 7 + pattern[:2]])
    assert evaluate.ngram_top1(pattern * 50, rows) == 1.0            # a periodic text is a lookup
    assert evaluate.ngram_top1([4] * 50, rows) == 0.0                # a table of other tokens
    chars = torch.tensor([0, 0, 0, 0, 1, 2, 2, 2, 2, 2])
    res = evaluate.masked_top1(_Oracle(rows), rows, chars=chars)
    assert res["masked_top1_15"] == 1.0 and 0 < res["masked_bits_per_char"] < 0.1  # confident and right


def test_infill_eval_on_a_tiny_checkpoint(dream_ckpt):
    from dllm_cli.engine.loader import load_model
    model = load_model(str(dream_ckpt))
    docs = [{"path": "m.py", "text": CODE[1]}]
    cases = evaluate.infill_cases(docs, 5, seed=0)
    assert {c[3] for c in cases} == {"mean", "clamp"}
    for prefix, body, suffix, _ in cases:
        assert prefix + body + suffix == CODE[1] and prefix.rstrip().endswith('"""')
    res = evaluate.infill_compiles(model, cases, gen_length=32, context=128)
    assert res["bodies"] == 2 and 0 <= res["body_compiles"] <= res["body_compiles_any"] <= 1
    assert evaluate.is_stub_body("    pass\n") and evaluate.is_stub_body("    # later\n    ...\n")
    assert not evaluate.is_stub_body("    return 1\n")


def test_second_phase_starts_from_the_checkpoint(data_dir, tok_dir, tmp_path):
    from dllm_cli.train.train import init_model, load_checkpoint, train
    first = train(_tiny(max_steps=2, seq_len=256), data_dir, tok_dir, tmp_path / "a", echo=False)
    model = init_model(_tiny(init=str(first)))
    want = load_checkpoint(first)[0].state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="not the preset's"):
        init_model(_tiny(init=str(first), model=replace(_tiny().model, hidden_size=64)))
    second = train(_tiny(max_steps=2, seq_len=256, init=str(first), seed=1), data_dir, tok_dir,
                   tmp_path / "b", echo=False)
    assert not torch.equal(load_checkpoint(second)[0].model.norm.weight, want["model.norm.weight"])


def test_train_command_passes_phase_two_options(monkeypatch, tmp_path):
    import dllm_cli.train.train as train_mod
    from dllm_cli.train.__main__ import main
    seen = {}
    monkeypatch.setattr(train_mod, "train", lambda cfg, *a, **k: seen.setdefault("cfg", cfg))
    main(["train", "--preset", "tiny", "--init", str(tmp_path), "--lr", "3e-4", "--warmup-steps", "7",
          "--seed", "4", "--time-budget", "60"])
    cfg = seen["cfg"]
    assert (cfg.lr, cfg.warmup_steps, cfg.seed, cfg.time_budget_s, cfg.init) == (3e-4, 7, 4, 60, str(tmp_path))
    assert train_mod.PRESETS["tiny"].lr != 3e-4
