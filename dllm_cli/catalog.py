"""Which local checkpoint, and what it is, without loading it (no torch): the model choice
order, the embedded default's folder, config.json, and the rows of `dllm models` (family,
parameters and dtype from the safetensors headers, context, licence from the card)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import DllmError

DEFAULT_MODEL_NAME = "dllm-coder-mini"


def default_model_dir() -> Path:
    """$DLLM_WEIGHTS_DIR/<name>, else weights/<name> next to the package (as checkpoint.weights_dir,
    which cannot be imported here: it imports torch)."""
    env = os.environ.get("DLLM_WEIGHTS_DIR")
    base = Path(env).expanduser() if env else Path(__file__).resolve().parent.parent / "weights"
    return base / DEFAULT_MODEL_NAME


def resolve_model_path(cli_value: str | None) -> str:
    """--model > $DLLM_MODEL > user config > "default" (see config.resolve_model)."""
    from .config import resolve_model

    return resolve_model(cli_value)


def model_dir(model_path: str) -> Path:
    """The folder of a model choice; a missing one is a CheckpointError naming it."""
    from .errors import CheckpointError

    folder = default_model_dir() if model_path == "default" else Path(model_path).expanduser()
    if not (folder / "config.json").is_file():
        hint = ("the embedded model is not built yet; pass --model PATH to a checkpoint folder"
                if model_path == "default" else "pass --model PATH to a folder with config.json")
        raise CheckpointError(f"{folder}: no checkpoint here (config.json missing); {hint}")
    return folder


def model_name(model_path: str) -> str:
    return DEFAULT_MODEL_NAME if model_path == "default" else Path(model_path).expanduser().name


def read_model_config(folder: Path) -> dict:
    from .errors import CheckpointError

    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder / 'config.json'}: not readable JSON ({exc}); "
                              "re-download the checkpoint") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{folder / 'config.json'}: expected a JSON object")
    return data


def context_length(config: dict) -> int:
    """Positions the model was trained on (Qwen2: max_position_embeddings; OLMo: max_sequence_length)."""
    for key in ("max_position_embeddings", "max_sequence_length", "n_positions"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return config[key]
    return 4096


def model_candidates(paths: list[Path]) -> list[tuple[str, Path]]:
    from .config import home_dir, user_settings

    found = [("default", default_model_dir())]
    for source, value in (("$DLLM_MODEL", os.environ.get("DLLM_MODEL")), ("config", user_settings().model)):
        if value:
            found.append((source, Path(value).expanduser()))
    user_models = home_dir() / "models"
    if user_models.is_dir():
        found += [("user", d) for d in sorted(user_models.iterdir()) if (d / "config.json").is_file()]
    found += [("argument", Path(p).expanduser()) for p in paths]
    seen, unique = set(), []
    for source, folder in found:
        key = folder.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((source, folder))
    return unique


def describe_model(source: str, folder: Path, chosen: str) -> dict:
    """What config.json, the safetensors headers and the model card say (no weights read)."""
    is_chosen = (chosen == "default" and source == "default") or (
        chosen != "default" and Path(chosen).expanduser().resolve() == folder.resolve())
    row = {"name": DEFAULT_MODEL_NAME if source == "default" else folder.name, "path": str(folder),
           "source": source, "chosen": is_chosen, "family": "-", "params": None, "params_human": "-",
           "dtype": "-", "context": None, "licence": "-", "error": None}
    try:
        config = read_model_config(model_dir("default" if source == "default" else str(folder)))
    except DllmError as err:
        row["error"] = str(err)
        row["family"] = "missing" if not (folder / "config.json").exists() else "unreadable"
        return row
    params, header_dtype = safetensors_params(folder)
    row.update(family=model_family(config), params=params, params_human=human_count(params),
               dtype=str(config.get("torch_dtype") or config.get("dtype") or header_dtype or "-"),
               context=context_length(config), licence=model_licence(folder))
    return row


def model_family(config: dict) -> str:
    """`dllm_family` when the checkpoint names one (our own models), else from the model type."""
    if isinstance(config.get("dllm_family"), str) and config["dllm_family"]:
        return config["dllm_family"]
    kind = str(config.get("model_type") or "").lower()
    arch = " ".join(config.get("architectures") or []).lower()
    if "llada" in kind or "llada" in arch:
        return "llada"
    if "dream" in kind or "dream" in arch:
        return "dream"
    return kind or arch or "unknown"


def safetensors_params(folder: Path) -> tuple[int | None, str | None]:
    """Parameter count and dtype from the safetensors headers (8-byte length + JSON)."""
    import struct

    total, dtype = 0, None
    files = sorted(folder.glob("*.safetensors"))
    for path in files:
        try:
            with path.open("rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(min(size, 100_000_000)))
        except (OSError, ValueError, struct.error):
            return None, None
        for name, entry in header.items():
            if name != "__metadata__" and isinstance(entry, dict):
                n = 1
                for dim in entry.get("shape", []):
                    n *= dim
                total += n
                dtype = dtype or {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}.get(entry.get("dtype"))
    return (total if files else None), dtype


def human_count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def model_licence(folder: Path) -> str:
    """`license:` from the model card's front matter, else the LICENSE file's first line."""
    card = folder / "README.md"
    if card.is_file():
        lines = card.read_text(encoding="utf-8", errors="replace").splitlines()
        if lines and lines[0].strip() == "---":
            for line in lines[1:40]:
                if line.strip() == "---":
                    break
                if line.lower().startswith(("license:", "licence:")):
                    return line.split(":", 1)[1].strip().strip("'\"") or "-"
    for name in ("LICENSE", "LICENSE.txt", "LICENCE"):
        if (folder / name).is_file():
            first = (folder / name).read_text(encoding="utf-8", errors="replace").strip().splitlines()
            return first[0][:40] if first else "-"
    return "unknown"
