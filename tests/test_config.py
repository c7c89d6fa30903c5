import json

import pytest

from dllm_cli.config import RECIPES, SamplerConfig, recipe, resolve_model, user_settings
from dllm_cli.errors import DllmError, UsageError


def test_defaults_are_fast_mode():
    cfg = SamplerConfig()
    assert cfg.parallel == "threshold" and cfg.threshold == 0.9
    assert cfg.block == 32 and cfg.cache == "dual" and cfg.early_stop


def test_reference_is_official_loop():
    cfg = SamplerConfig.reference(gen_length=64, block_length=32)
    assert cfg.total_steps == 64 and cfg.parallel is None and cfg.cache == "none"


@pytest.mark.parametrize("kwargs, words", [
    (dict(gen_length=100, block_length=32), "multiple of --block-length"),
    (dict(gen_length=64, block_length=32, steps=63, threshold=None), "multiple of the number of blocks"),
    (dict(alg="greedy"), "unknown --alg"),
    (dict(threshold=1.5), "--threshold"),
    (dict(threshold=0.9, factor=1.0), "not both"),
    (dict(cache="full"), "unknown cache mode"),
    (dict(temperature=-1), "--temperature"),
])
def test_bad_values_raise_usage_error(kwargs, words):
    with pytest.raises(UsageError, match=words) as info:
        SamplerConfig(**kwargs)
    assert info.value.exit_code == 2 and isinstance(info.value, DllmError)


def test_recipes_by_name():
    assert recipe("LLaDA-8B-Instruct").sampler.confidence_eos_eot_inf
    assert recipe("dream-v0-instruct-7b").sampler.alg == "entropy"
    assert "research" in recipe("diffucoder-7b-instruct").note
    with pytest.raises(UsageError, match="unknown recipe"):
        recipe("gpt-4")
    assert all(r.sampler.gen_length > 0 for r in RECIPES.values())


def test_model_choice_order(tmp_path, monkeypatch):
    monkeypatch.setenv("DLLM_HOME", str(tmp_path))
    monkeypatch.delenv("DLLM_MODEL", raising=False)
    assert resolve_model(None) == "default"
    (tmp_path / "config.json").write_text(json.dumps({"model": "/from/config"}))
    assert resolve_model(None) == "/from/config"
    monkeypatch.setenv("DLLM_MODEL", "/from/env")
    assert resolve_model(None) == "/from/env"
    assert resolve_model("/from/flag") == "/from/flag"


def test_user_config_device_and_dtype_under_xdg(tmp_path, monkeypatch):
    from dllm_cli.cli import device_choice, dtype_choice

    monkeypatch.delenv("DLLM_HOME", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert (device_choice(None), dtype_choice(None)) == ("auto", "auto")
    (tmp_path / "dllm").mkdir()
    (tmp_path / "dllm/config.json").write_text(json.dumps({"device": "cpu", "dtype": "bfloat16"}))
    assert (device_choice(None), dtype_choice(None)) == ("cpu", "bfloat16")
    assert (device_choice("cuda:1"), dtype_choice("float32")) == ("cuda:1", "float32")  # options win


def test_broken_user_config_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DLLM_HOME", str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match="config.json"):
        user_settings()


def test_fitting_block_divides_the_canvas():
    from dllm_cli.cli import sampler_config
    from dllm_cli.config import fitting_block
    assert [fitting_block(n) for n in (128, 100, 24, 7, 127, 18)] == [32, 25, 24, None, None, 18]
    assert sampler_config(100, None, None, None, None, None, None).block_length == 25
    assert sampler_config(None, None, None, None, None, None, None).block_length == 32
    assert sampler_config(64, None, 0, None, None, None, None).block_length is None


def test_alg_p2_from_the_command_line_turns_blocks_and_threshold_off():
    from dllm_cli.cli import sampler_config
    cfg = sampler_config(100, None, None, 0.8, None, 3, "p2")
    assert (cfg.alg, cfg.block_length, cfg.threshold, cfg.cache, cfg.gen_length) == ("p2", None, None, "none", 100)
    with pytest.raises(UsageError, match="--block-length 0 --threshold 0"):
        sampler_config(64, None, None, None, 0.9, None, "p2")
    with pytest.raises(UsageError, match="--block-length 0 --threshold 0"):
        sampler_config(64, None, 8, None, None, None, "p2")
    assert recipe("open-dcoder-0.5b").sampler.alg == "p2"
