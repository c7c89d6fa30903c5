"""engine/loader.py (with catalog.inspect and engine/device.py): loading checkpoint folders: layout
choice, sharding, strictness, memory check, pickle refusal, the embedded default, and every user
error (a one-line DllmError naming the file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from dllm_cli.engine.device import pick_device, pick_dtype
from dllm_cli.engine.loader import load_model
from dllm_cli.errors import CheckpointError, DllmError, OutOfMemoryError, TokenizerError, UsageError

from tiny import AUTO_MAP_MARKER, DROP, edit_config, make_dream_checkpoint, make_llada_checkpoint


def _raises(exc_type, fn, *words):
    """fn() raises exc_type with a one-line message containing every word."""
    with pytest.raises(exc_type) as info:
        fn()
    message = str(info.value)
    assert isinstance(info.value, DllmError) and "\n" not in message
    for word in words:
        assert str(word) in message, (word, message)
    return message


def test_contract_attributes(dream_ckpt, llada_ckpt):
    for folder, layout in ((dream_ckpt, "dream"), (llada_ckpt, "llada")):
        model = load_model(folder)
        tok = model.tokenizer
        assert model.spec.layout == layout and model.spec.shifted == (layout == "dream")
        assert model.tokens == tok.special_tokens() and model.tokens.mask == tok.mask_token_id
        assert model.tokens.eos == tok.eos_token_id and model.tokens.eos in model.tokens.stops
        assert model.checkpoint.folder == folder and model.checkpoint.layout == layout
        assert model.device == torch.device("cpu") and model.dtype == torch.float32
        assert model.spec.n_params == sum(p.numel() for p in model.parameters()) == model.spec.param_count()
        assert not any(p.requires_grad for p in model.parameters())


def test_layout_from_config_not_folder_name(tmp_path, dream_ckpt):
    folder = make_dream_checkpoint(tmp_path / "LLaDA-8B-Instruct")
    assert load_model(folder).spec.layout == "dream"
    edit_config(folder, model_type=DROP)  # architectures decide when model_type is absent
    assert load_model(folder).spec.layout == "dream"


def test_sharded_equals_single(tmp_path, llada_ckpt):
    sharded = make_llada_checkpoint(tmp_path, sharded=True)
    ids = torch.arange(12).view(1, 12)
    assert torch.equal(load_model(sharded).logits(ids), load_model(llada_ckpt).logits(ids))


def test_tied_open_dcoder_like(dream_tied_ckpt):
    model = load_model(dream_tied_ckpt)
    assert model.spec.tied and model.spec.family == "open-dcoder"
    assert not hasattr(model.net, "lm_head")


def test_tied_config_with_stored_head_uses_it(tmp_path):
    folder = make_dream_checkpoint(tmp_path)  # untied files...
    edit_config(folder, tie_word_embeddings=True)  # ...under a tied config: every tensor is used
    model = load_model(folder)
    assert not model.spec.tied and hasattr(model.net, "lm_head")


def test_family_clues(tmp_path):
    folder = make_dream_checkpoint(tmp_path, extra_tokens=("<|dlm_pad|>",))
    model = load_model(folder)
    assert model.spec.family == "diffucoder"
    assert model.tokenizer.token_to_id("<|dlm_pad|>") in model.tokens.stops


def test_bf16_and_fp16_files(tmp_path):
    for dtype in ("bfloat16", "float16"):
        folder = make_dream_checkpoint(tmp_path / dtype, dtype=dtype)
        model = load_model(folder, dtype=dtype)
        assert model.dtype == getattr(torch, dtype)


def test_no_transformers_no_auto_map(dream_ckpt):
    """Loading imports neither transformers nor checkpoint code; tokenizer.py needs no torch."""
    code = ("import sys, dllm_cli.tokenizer; assert 'torch' not in sys.modules; "
            "from dllm_cli.engine import load_model; load_model(sys.argv[1]); "
            "print('transformers' in sys.modules, 'torch._dynamo' in sys.modules)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(dream_ckpt)], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    # torch._dynamo (1-2 s of start-up) is not pulled in by initialisers run on the meta device
    assert out.stdout.strip() == "False False"
    assert not (dream_ckpt / AUTO_MAP_MARKER).exists()


def test_initialisers_are_restored_after_a_load(dream_ckpt):
    before = torch.nn.init.normal_
    load_model(str(dream_ckpt))
    assert torch.nn.init.normal_ is before
    t = torch.zeros(1000)
    torch.nn.init.normal_(t)
    assert t.std() > 0.5


# ---- errors ------------------------------------------------------------------------------------

def test_missing_folder(tmp_path):
    _raises(CheckpointError, lambda: load_model(tmp_path / "nope"), "nope", "no such folder", "--model")
    (tmp_path / "file").write_text("x")
    _raises(CheckpointError, lambda: load_model(tmp_path / "file"), "not a folder")


def test_missing_and_invalid_config(tmp_path):
    folder = make_dream_checkpoint(tmp_path)
    (folder / "config.json").write_text("{oops")
    _raises(CheckpointError, lambda: load_model(folder), folder / "config.json", "not valid JSON", "re-download")
    (folder / "config.json").write_text("[1, 2]")
    _raises(CheckpointError, lambda: load_model(folder), folder / "config.json", "JSON object", "re-download")
    (folder / "config.json").unlink()
    _raises(CheckpointError, lambda: load_model(folder), folder / "config.json", "missing", "download")


def test_config_missing_key(tmp_path):
    folder = make_llada_checkpoint(tmp_path)
    edit_config(folder, n_layers=DROP)
    _raises(CheckpointError, lambda: load_model(folder), "config.json", "n_layers", "fix config.json")


@pytest.mark.parametrize("key, value", [("rope_theta", "big"), ("num_key_value_heads", "2"), ("head_dim", "x")])
def test_config_value_of_the_wrong_type(tmp_path, key, value):
    folder = make_dream_checkpoint(tmp_path)
    edit_config(folder, **{key: value})
    _raises(CheckpointError, lambda: load_model(folder), folder / "config.json", "fix config.json")


def test_unknown_model_type(tmp_path):
    folder = make_dream_checkpoint(tmp_path)
    edit_config(folder, model_type="mistral")
    _raises(CheckpointError, lambda: load_model(folder), folder / "config.json", "'mistral'", "not a supported",
            "dream, qwen2, llada", "docs/models.md")


def test_missing_weights(tmp_path):
    folder = make_dream_checkpoint(tmp_path)
    (folder / "model.safetensors").unlink()
    _raises(CheckpointError, lambda: load_model(folder), folder, "no weights", "download", ".safetensors")


def test_missing_shard(tmp_path):
    folder = make_dream_checkpoint(tmp_path, sharded=True)
    (folder / "model-00002-of-00002.safetensors").unlink()
    _raises(CheckpointError, lambda: load_model(folder), folder / "model-00002-of-00002.safetensors",
            "missing shard", "download every shard")


def test_truncated_safetensors(tmp_path):
    folder = make_dream_checkpoint(tmp_path)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    _raises(CheckpointError, lambda: load_model(folder), path, "truncated", "re-download")


def test_truncated_shard(tmp_path):
    folder = make_llada_checkpoint(tmp_path, sharded=True)
    path = folder / "model-00001-of-00002.safetensors"
    path.write_bytes(path.read_bytes()[:100])  # cut inside the header
    _raises(CheckpointError, lambda: load_model(folder), path, "truncated", "re-download")


def test_shape_mismatch_names_tensor_file_and_shapes(tmp_path):
    folder = make_llada_checkpoint(tmp_path)
    edit_config(folder, mlp_hidden_size=96)
    _raises(CheckpointError, lambda: load_model(folder), folder / "model.safetensors",
            "model.transformer.blocks.0.ff_out.weight", "[64, 128]", "[64, 96]",  # first in file order
            "re-download")


def test_unexpected_and_missing_tensors(tmp_path):
    folder = make_dream_checkpoint(tmp_path)
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    save_file({**tensors, "model.extra.weight": torch.zeros(2)}, str(path))
    _raises(CheckpointError, lambda: load_model(folder), path, "unexpected tensor", "model.extra.weight",
            "re-download")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(path))
    _raises(CheckpointError, lambda: load_model(folder), folder, "model.layers.1.mlp.up_proj.weight", "missing",
            "download")


def test_tokenizer_larger_than_vocab(tmp_path):
    folder = make_dream_checkpoint(tmp_path, vocab_size=256)
    _raises(TokenizerError, lambda: load_model(folder), folder / "tokenizer.json", "321 tokens",
            folder / "config.json", "vocab_size 256", "copy those of this checkpoint")


def test_pad_equals_mask(tmp_path):
    folder = make_llada_checkpoint(tmp_path)
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    tc["pad_token"] = "<|mdm_mask|>"
    (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    _raises(TokenizerError, lambda: load_model(folder), folder / "tokenizer_config.json",
            "pad token is the mask token", "fix pad_token")


def test_too_little_memory(dream_ckpt, monkeypatch):
    _raises(OutOfMemoryError, lambda: load_model(dream_ckpt, memory_limit=100_000), dream_ckpt, "GiB", "--dtype")
    monkeypatch.setenv("DLLM_MEMORY_LIMIT", "1000")
    _raises(OutOfMemoryError, lambda: load_model(dream_ckpt), "needs about")
    monkeypatch.setenv("DLLM_MEMORY_LIMIT", str(10 ** 9))
    assert load_model(dream_ckpt).spec.layout == "dream"


def test_memory_is_checked_before_any_weight_is_read(tmp_path):
    folder = make_dream_checkpoint(tmp_path, sharded=True)
    for shard in folder.glob("*.safetensors"):
        shard.write_bytes(b"garbage")  # reading any weight file would raise a CheckpointError
    _raises(OutOfMemoryError, lambda: load_model(folder, memory_limit=100_000), "needs about")
    _raises(CheckpointError, lambda: load_model(folder), "truncated")


def test_pickle_refused_unless_allowed(tmp_path, dream_ckpt):
    folder = make_dream_checkpoint(tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(tensors, folder / "pytorch_model.bin")
    _raises(CheckpointError, lambda: load_model(folder), folder / "pytorch_model.bin", "pickle",
            "convert them to safetensors", "allow_pickle=True")
    ids = torch.arange(10).view(1, 10)
    pickled = load_model(folder, allow_pickle=True)
    assert torch.equal(pickled.logits(ids), load_model(dream_ckpt).logits(ids))


def test_default_model(tmp_path, monkeypatch):
    monkeypatch.setenv("DLLM_WEIGHTS_DIR", str(tmp_path))
    _raises(CheckpointError, lambda: load_model("default"), "embedded default model is missing", "--model PATH")
    make_llada_checkpoint(tmp_path / "dllm-coder-mini")
    assert load_model("default").spec.layout == "llada"


def test_device_and_dtype_choice():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    _raises(UsageError, lambda: pick_dtype("int8", torch.device("cpu")), "--dtype", "int8")
    _raises(UsageError, lambda: pick_device("tpu9"), "--device")
    if not torch.cuda.is_available():
        _raises(UsageError, lambda: pick_device("cuda"), "CUDA is not available", "--device cpu")
        assert pick_device("auto") in (torch.device("cpu"), torch.device("mps"))


def test_api_doc_example_runs(tmp_path, capsys):
    """docs/api.md's runnable example runs as written (on a tiny random checkpoint)."""
    import re
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "api.md").read_text()
    code = re.search(r"```python\n(import sys\n.*?)```", doc, re.S).group(1)
    exec(compile(code.replace("/tmp/dllm-demo", str(tmp_path / "demo")), "docs/api.md", "exec"), {})
    out = capsys.readouterr().out
    assert "masks left" in out and "dream" in out
