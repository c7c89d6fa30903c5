"""config.py (SamplerConfig, its option rules, recipes) and settings.py (the user's choices)."""

import json

import pytest

from dllm_cli.config import RECIPES, SamplerConfig, recipe
from dllm_cli.errors import DllmError, UsageError
from dllm_cli.settings import Settings


def from_options(gen_length=None, steps=None, block_length=None, temperature=None, threshold=None, seed=None,
                 alg=None):
    return SamplerConfig.from_options(gen_length=gen_length, steps=steps, block_length=block_length,
                                      temperature=temperature, threshold=threshold, seed=seed, alg=alg)


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


def test_model_choice_order(tmp_path):
    env = {"DLLM_HOME": str(tmp_path)}
    assert Settings.load(env).model_choice(None) == (None, "default")
    (tmp_path / "config.json").write_text(json.dumps({"model": "/from/config"}))
    assert Settings.load(env).model_choice(None) == ("/from/config", "config")
    settings = Settings.load({**env, "DLLM_MODEL": "/from/env"})
    assert settings.model_choice(None) == ("/from/env", "$DLLM_MODEL")
    assert settings.model_choice("/from/flag") == ("/from/flag", "--model")


def test_user_config_device_and_dtype_under_xdg(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path), "HOME": str(tmp_path / "home")}
    settings = Settings.load(env)
    assert settings.home == tmp_path / "dllm"
    assert (settings.device_choice(None), settings.dtype_choice(None)) == ("auto", "auto")
    (tmp_path / "dllm").mkdir()
    (tmp_path / "dllm/config.json").write_text(json.dumps({"device": "cpu", "dtype": "bfloat16", "x": 1}))
    settings = Settings.load(env)
    assert (settings.device_choice(None), settings.dtype_choice(None)) == ("cpu", "bfloat16")
    assert (settings.device_choice("cuda:1"), settings.dtype_choice("float32")) == ("cuda:1", "float32")
    assert settings.extra == {"x": 1}


def test_settings_are_read_once(tmp_path, monkeypatch):
    """The user config is read when Settings.load() runs and never again for the run."""
    (tmp_path / "config.json").write_text(json.dumps({"device": "cpu"}))
    settings = Settings.load({"DLLM_HOME": str(tmp_path)})
    (tmp_path / "config.json").write_text("{broken")
    assert settings.device_choice(None) == "cpu"


@pytest.mark.parametrize("text, words", [("{not json", "not valid JSON"), ("[1]", "JSON object"),
                                         ('{"model": 3}', "'model' must be a string")])
def test_broken_user_config_is_a_clear_error(tmp_path, text, words):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(UsageError, match=words) as info:
        Settings.load({"DLLM_HOME": str(tmp_path)})
    assert str(tmp_path / "config.json") in str(info.value)


def test_fitting_block_divides_the_canvas():
    from dllm_cli.config import fitting_block
    assert [fitting_block(n) for n in (128, 100, 24, 7, 127, 18)] == [32, 25, 24, None, None, 18]
    assert from_options(100, None, None, None, None, None, None).block_length == 25
    assert from_options(None, None, None, None, None, None, None).block_length == 32
    assert from_options(64, None, 0, None, None, None, None).block_length is None


def test_alg_p2_from_the_command_line_turns_blocks_and_threshold_off():
    cfg = from_options(100, None, None, 0.8, None, 3, "p2")
    assert (cfg.alg, cfg.block_length, cfg.threshold, cfg.cache, cfg.gen_length) == ("p2", None, None, "none", 100)
    with pytest.raises(UsageError, match="--block-length 0 --threshold 0"):
        from_options(64, None, None, None, 0.9, None, "p2")
    with pytest.raises(UsageError, match="--block-length 0 --threshold 0"):
        from_options(64, None, 8, None, None, None, "p2")
    assert recipe("open-dcoder-0.5b").sampler.alg == "p2"
