"""Tokenizer files (tokenizer.json, vocab.json + merges.txt), added tokens, special ids, chat
templates (sandboxed), and auto_map code never run; transformers' tokenizers are the oracle."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from dllm_cli.catalog import inspect
from dllm_cli.errors import TokenizerError
from dllm_cli.tokenizer import Tokenizer

from tiny import AUTO_MAP_MARKER, make_dream_checkpoint, make_llada_checkpoint

TEXT = "def f(x):\n\treturn x**2  # héllo wörld 12345 \n\n  <|mask|>!! it's"
MESSAGES = [{"role": "user", "content": "  add a mean function \n"}]


@pytest.fixture(scope="module")
def dream_vm(tmp_path_factory):
    return make_dream_checkpoint(tmp_path_factory.mktemp("vm"), tokenizer_format="vocab-merges")


def _load(folder, config_ids: bool = True):
    """The tokenizer as the loader builds it; config_ids=False drops config.json's *_token_id
    values, so only the tokenizer files' names decide."""
    ckpt = inspect(folder)
    if not config_ids:
        ckpt = replace(ckpt, config={k: v for k, v in ckpt.config.items() if not k.endswith("_token_id")})
    return Tokenizer.from_checkpoint(ckpt)


def test_both_formats_agree_with_transformers(dream_ckpt, dream_vm):
    from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer

    fast = _load(dream_ckpt)
    slow = _load(dream_vm)
    ref_fast = PreTrainedTokenizerFast(tokenizer_file=str(dream_ckpt / "tokenizer.json"))
    ref_vm = Qwen2Tokenizer.from_pretrained(str(dream_vm))
    expected = ref_fast.encode(TEXT, add_special_tokens=False)
    assert fast.encode(TEXT) == expected == slow.encode(TEXT)
    assert ref_vm.encode(TEXT, add_special_tokens=False) == expected
    assert fast.decode(expected) == TEXT == slow.decode(expected)


def test_added_tokens_are_atomic_with_their_ids(dream_vm):
    tok = _load(dream_vm)
    added = json.loads((dream_vm / "added_tokens.json").read_text())
    for content, tid in added.items():
        assert tok.token_to_id(content) == tid
        assert tok.encode(f"a{content}b")[1:-1] == [tid]
    assert tok.vocab_size == max(added.values()) + 1


def test_special_ids_resolved(dream_ckpt, llada_ckpt):
    dream = _load(dream_ckpt)
    cfg = json.loads((dream_ckpt / "config.json").read_text())
    assert dream.mask_token_id == cfg["mask_token_id"] == dream.token_to_id("<|mask|>")
    assert dream.eos_token_id == dream.pad_token_id == dream.token_to_id("<|endoftext|>")
    assert dream.bos_token_id == dream.token_to_id("<|beginoftext|>")
    assert dream.stop_token_ids == {dream.token_to_id("<|endoftext|>"), dream.token_to_id("<|im_end|>")}
    llada = _load(llada_ckpt)
    assert llada.mask_token_id == llada.token_to_id("<|mdm_mask|>")
    assert llada.bos_token_id == llada.token_to_id("<|startoftext|>")
    assert llada.eos_token_id == llada.token_to_id("<|endoftext|>")
    assert llada.token_to_id("<|eot_id|>") in llada.stop_token_ids


def test_mask_found_by_name_without_config(dream_ckpt):
    tok = _load(dream_ckpt, config_ids=False)  # no config.json ids: tokenizer_config's mask_token
    assert tok.mask_token_id == tok.token_to_id("<|mask|>")


def test_decode_keeps_or_skips_specials(dream_ckpt):
    tok = _load(dream_ckpt)
    ids = tok.encode("hi<|im_end|>")
    assert tok.decode(ids) == "hi<|im_end|>"
    assert tok.decode(ids, skip_special=True) == "hi"


@pytest.mark.parametrize("family", ["dream", "llada"])
def test_chat_template_matches_transformers(family, dream_ckpt, llada_ckpt):
    from transformers import PreTrainedTokenizerFast

    folder = dream_ckpt if family == "dream" else llada_ckpt
    tok = _load(folder)
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    ref = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                  bos_token=tc["bos_token"], eos_token=tc["eos_token"])
    ref.chat_template = tc["chat_template"]
    for gen in (True, False):
        expected = ref.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=gen)
        assert tok.apply_chat_template(MESSAGES, add_generation_prompt=gen) == expected


def test_chat_template_shapes(dream_ckpt, llada_ckpt):
    dream = _load(dream_ckpt).apply_chat_template(MESSAGES)
    assert dream.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert dream.endswith("<|im_end|>\n<|im_start|>assistant\n")
    llada = _load(llada_ckpt).apply_chat_template(MESSAGES)
    assert llada == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nadd a mean function"
                     "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_chat_template_file_wins(tmp_path):
    folder = make_dream_checkpoint(tmp_path, chat_template="{{ messages[0]['content'] }}!", template_in="file")
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc["chat_template"] = "ignored"
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    assert _load(folder).apply_chat_template([{"role": "user", "content": "x"}]) == "x!"


def test_chat_template_is_sandboxed(tmp_path):
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    folder = make_dream_checkpoint(tmp_path, chat_template=evil)
    with pytest.raises(TokenizerError, match="chat template failed"):
        _load(folder).apply_chat_template(MESSAGES)


def test_chat_template_raise_exception(tmp_path):
    folder = make_dream_checkpoint(tmp_path, chat_template="{{ raise_exception('only user turns') }}")
    with pytest.raises(TokenizerError, match="only user turns"):
        _load(folder).apply_chat_template(MESSAGES)


def test_auto_map_code_never_runs(dream_vm):
    _load(dream_vm).encode(TEXT)
    assert (dream_vm / "tokenization_dream.py").is_file()
    assert not (dream_vm / AUTO_MAP_MARKER).exists()


def test_missing_tokenizer_files(tmp_path):
    folder = make_llada_checkpoint(tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        _load(folder)


def test_pad_equal_to_mask_refused(tmp_path):
    folder = make_dream_checkpoint(tmp_path)
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc["pad_token"] = "<|mask|>"
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    with pytest.raises(TokenizerError, match="pad token is the mask token"):
        _load(folder)


def test_added_token_ids_may_have_gaps(tmp_path):
    folder = make_dream_checkpoint(tmp_path, tokenizer_format="vocab-merges")
    added = json.loads((folder / "added_tokens.json").read_text())
    added["<|mask|>"] += 5
    (folder / "added_tokens.json").write_text(json.dumps(added))
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    del tc["added_tokens_decoder"]
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    tok = _load(folder, config_ids=False)
    assert tok.mask_token_id == added["<|mask|>"] == tok.vocab_size - 1
    assert tok.encode("x<|mask|>")[-1] == added["<|mask|>"]


def test_added_token_id_conflict_refused(tmp_path):
    folder = make_dream_checkpoint(tmp_path)
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    entry = next(k for k, v in tc["added_tokens_decoder"].items() if v["content"] == "<|mask|>")
    tc["added_tokens_decoder"][str(int(entry) + 7)] = tc["added_tokens_decoder"].pop(entry)
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    with pytest.raises(TokenizerError, match="<\\|mask\\|>"):
        _load(folder, config_ids=False)


def test_bad_tokenizer_config_json(tmp_path):
    folder = make_dream_checkpoint(tmp_path)
    (folder / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer_config.json"):
        _load(folder)


def test_special_tokens_map_fills_what_tokenizer_config_leaves_out(tmp_path):
    folder = make_dream_checkpoint(tmp_path)
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    for key in ("mask_token", "bos_token"):
        del tc[key]
    tc["eos_token"] = "<|im_end|>"  # tokenizer_config.json wins over the map
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "mask_token": {"content": "<|mask|>", "special": True}, "bos_token": "<|beginoftext|>",
        "eos_token": "<|endoftext|>"}))
    tok = _load(folder, config_ids=False)  # no config.json ids: the names decide
    assert tok.mask_token_id == tok.token_to_id("<|mask|>")
    assert tok.bos_token_id == tok.token_to_id("<|beginoftext|>")
    assert tok.eos_token_id == tok.token_to_id("<|im_end|>")


def test_bad_added_token_id(tmp_path):
    folder = make_dream_checkpoint(tmp_path, tokenizer_format="vocab-merges")
    (folder / "added_tokens.json").write_text(json.dumps({"<|mask|>": "many"}))
    with pytest.raises(TokenizerError, match="added_tokens.json.*not an integer.*re-download"):
        _load(folder)
