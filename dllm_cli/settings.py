"""Where dllm's user files live and what the user chose: read once, at the edge, then handed down.

Knows: DLLM_HOME / XDG_CONFIG_HOME, `<home>/config.json` ({"model": ..., "device": ..., "dtype":
..., "quant": "none" | "int8", "endpoint": ..., "api_key_env": ..., "timeout": ...}), $DLLM_MODEL, $DLLM_ENDPOINT,
$DLLM_TIMEOUT, and the precedence of every choice: command-line option > environment > user
config > built-in default. It holds the *name* of the variable with an API key, never a key.
Must not: import torch, look inside a checkpoint (catalog.py does), or read the config file
more than once per `Settings.load()`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import UsageError

KNOWN_KEYS = ("model", "device", "dtype", "endpoint", "api_key_env", "quant")
DEFAULT_TIMEOUT = 120.0  # seconds a remote endpoint may stay silent (read timeout)


def home_dir(environ: Mapping[str, str] | None = None) -> Path:
    """dllm's user directory: $DLLM_HOME, else $XDG_CONFIG_HOME/dllm, else ~/.config/dllm."""
    env = os.environ if environ is None else environ
    if env.get("DLLM_HOME"):
        return Path(env["DLLM_HOME"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "dllm"


@dataclass(frozen=True)
class Settings:
    """The user's choices, read once: the user config file and the environment."""

    home: Path
    model: str | None = None  # "model" in the user config
    device: str | None = None
    dtype: str | None = None
    env_model: str | None = None  # $DLLM_MODEL
    endpoint: str | None = None  # "endpoint" in the user config: a URL or a preset name
    env_endpoint: str | None = None  # $DLLM_ENDPOINT
    api_key_env: str | None = None  # "api_key_env": the variable that holds the endpoint's key
    timeout: float | None = None  # $DLLM_TIMEOUT, else "timeout" in the user config
    quant: str | None = None  # "quant" in the user config: "none" | "int8" (weight-only int8)
    extra: Mapping[str, Any] = field(default_factory=dict)  # other keys of the user config

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Read <home>/config.json (absent: no choices) and the environment; UsageError if the
        file is not a JSON object."""
        env = os.environ if environ is None else environ
        home = home_dir(env)
        path = home / "config.json"
        data: dict[str, Any] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise UsageError(f"{path}: not valid JSON ({exc}); fix or delete the file") from None
            if not isinstance(data, dict):
                raise UsageError(f"{path}: expected a JSON object such as {{\"model\": \"/path\"}}")
        for key in KNOWN_KEYS:
            if data.get(key) is not None and not isinstance(data[key], str):
                raise UsageError(f"{path}: {key!r} must be a string; fix the file")
        return cls(home=home, model=data.get("model"), device=data.get("device"),
                   dtype=data.get("dtype"), env_model=env.get("DLLM_MODEL") or None,
                   endpoint=data.get("endpoint"), env_endpoint=env.get("DLLM_ENDPOINT") or None,
                   api_key_env=data.get("api_key_env"), timeout=_timeout(env, data, path),
                   quant=data.get("quant"),
                   extra={k: v for k, v in data.items() if k not in KNOWN_KEYS + ("timeout",)})

    @property
    def models_dir(self) -> Path:
        """<home>/models: checkpoint folders `dllm models` lists."""
        return self.home / "models"

    def model_choice(self, option: str | None) -> tuple[str | None, str]:
        """(the checkpoint path the user chose, where the choice came from); (None, "default")
        means the embedded default model. --model > $DLLM_MODEL > user config > default."""
        for value, source in ((option, "--model"), (self.env_model, "$DLLM_MODEL"), (self.model, "config")):
            if value:
                return value, source
        return None, "default"

    def endpoint_choice(self, option: str | None, no_server: bool = False) -> str | None:
        """The remote endpoint (URL or preset name) `dllm code` uses, or None for a local model:
        --endpoint > $DLLM_ENDPOINT > user config. --no-server (a local load) turns the last two off."""
        if option:
            return option
        return None if no_server else (self.env_endpoint or self.endpoint or None)

    def timeout_choice(self) -> float:
        """Seconds a remote endpoint may stay silent: $DLLM_TIMEOUT > user config > 120."""
        return self.timeout or DEFAULT_TIMEOUT

    def device_choice(self, option: str | None) -> str:
        """--device > user config > "auto" (cuda, then mps, then cpu)."""
        return option or self.device or "auto"

    def quant_choice(self, option: str | None) -> str:
        """--quant > user config > "none"; "none" | "int8" (UsageError for anything else)."""
        from .footprint import quant_mode

        if option is not None:
            return quant_mode(option)
        return quant_mode(self.quant, f"{self.home / 'config.json'}: 'quant'")

    def dtype_choice(self, option: str | None) -> str:
        """--dtype > user config > "auto" (bfloat16 on cuda, float16 on mps, float32 on cpu)."""
        return option or self.dtype or "auto"


def _timeout(env: Mapping[str, str], data: Mapping[str, Any], path: Path) -> float | None:
    """$DLLM_TIMEOUT, else "timeout" in the config: a positive number of seconds (UsageError)."""
    for value, where in ((env.get("DLLM_TIMEOUT"), "$DLLM_TIMEOUT"), (data.get("timeout"), f"{path}: 'timeout'")):
        if value is None or value == "":
            continue
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = -1.0
        if not seconds > 0 or isinstance(value, bool):
            raise UsageError(f"{where} must be a number of seconds above 0, not {value!r}")
        return seconds
    return None
