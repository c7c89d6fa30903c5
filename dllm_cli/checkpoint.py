"""Load a checkpoint folder into a `DiffusionModel`: inspect, pick the layout, check, load.

Knows: the folder's files (config.json, safetensors single or sharded, refused `.bin`
pickles), the layout choice from `config.json` (`model_type`, else `architectures`; never
the folder name), the strict meta-device load (every tensor consumed, every shape checked),
the memory estimate before loading, device/dtype choice, and where the embedded default
model lives. Must not: know about terminals, or run checkpoint-supplied code.
Every failure a user can cause is a DllmError whose one-line message names the file.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, OutOfMemoryError, TokenizerError, UsageError
from .models import MODEL_CLASSES, LAYOUTS, DiffusionModel, ModelSpec, layout_of, supported_model_types
from .tokenizer import CHATML_TEMPLATE, LLADA_CHAT_TEMPLATE, Tokenizer

DEFAULT_MODEL = "dllm-coder-mini"
HEAD_NAMES = {"dream": "lm_head.weight", "llada": "model.transformer.ff_out.weight"}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # recomputed buffers some exporters save
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}

# The published shapes (config.json values, see docs/models.md), for `dllm bench --shape`.
PUBLISHED_SHAPES: dict[str, dict] = {
    "dream-7b": {
        "model_type": "Dream", "architectures": ["DreamModel"], "hidden_size": 3584,
        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "intermediate_size": 18944, "vocab_size": 152064, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "tie_word_embeddings": False, "mask_token_id": 151666,
        "eos_token_id": 151643, "pad_token_id": 151643, "bos_token_id": 151643,
    },
    "llada-8b": {
        "model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": 4096, "n_layers": 32,
        "n_heads": 32, "n_kv_heads": 32, "mlp_hidden_size": 12288, "vocab_size": 126464,
        "embedding_size": 126464, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "weight_tying": False, "mask_token_id": 126336, "eos_token_id": 126081, "pad_token_id": 126081,
    },
    "open-dcoder-0.5b": {  # Qwen2.5-Coder-0.5B shapes; its mask id comes from the tokenizer
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 896,
        "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "intermediate_size": 4864, "vocab_size": 151936, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "tie_word_embeddings": True, "mask_token_id": 151665,
        "eos_token_id": 151643, "pad_token_id": 151643,
    },
}


# ---- where --------------------------------------------------------------------------------

def weights_dir() -> Path:
    """$DLLM_WEIGHTS_DIR, else <repository>/weights (next to the dllm_cli package)."""
    env = os.environ.get("DLLM_WEIGHTS_DIR")
    return Path(env).expanduser() if env else Path(__file__).resolve().parent.parent / "weights"


def resolve_folder(path) -> Path:
    """The checkpoint folder for `path` ("default" = the embedded model); checks it exists."""
    if str(path) == "default":
        folder = weights_dir() / DEFAULT_MODEL
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"the embedded default model is not built yet ({folder} has no "
                                  "config.json); pass --model PATH to a checkpoint folder")
        return folder
    folder = Path(path).expanduser()
    if not folder.exists():
        raise CheckpointError(f"{folder}: no such folder; pass --model PATH to a downloaded "
                              "checkpoint folder (see docs/models.md)")
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder; pass the checkpoint folder that holds config.json")
    return folder


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a checkpoint folder needs its config.json "
                              "(download the whole model repository, see docs/models.md)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); re-download it") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object; re-download it")
    return cfg


def model_spec(config: dict, where: str = "config.json", tokenizer: Tokenizer | None = None) -> ModelSpec:
    """The layout and shape that config.json describes (CheckpointError if unsupported)."""
    layout = layout_of(config)
    if layout is None:
        raise CheckpointError(
            f"{where}: model_type {config.get('model_type')!r} (architectures "
            f"{config.get('architectures')}) is not a supported diffusion layout; dllm runs "
            f"model_type {', '.join(supported_model_types())} (see docs/models.md)")
    try:
        return LAYOUTS[layout].spec_from_config(config, where, family=guess_family(config, layout, tokenizer))
    except (TypeError, ValueError, ZeroDivisionError) as exc:  # e.g. "rope_theta": "big", "head_dim": "x"
        raise CheckpointError(f"{where}: a shape value has the wrong type ({exc}); fix config.json "
                              "or re-download it") from None


def guess_family(config: dict, layout: str, tokenizer: Tokenizer | None) -> str:
    """The checkpoint family (for recipes): config's "dllm_family" wins, else clues in the files."""
    if isinstance(config.get("dllm_family"), str):
        return config["dllm_family"]
    if layout == "llada":
        return "llada"
    if str(config.get("model_type", "")).lower() == "qwen2":
        return "open-dcoder"
    has = (lambda t: tokenizer.token_to_id(t) is not None) if tokenizer else (lambda t: False)
    if has("<|dlm_pad|>"):
        return "diffucoder"
    if has("<|expand|>"):
        return "dreamon"
    return "dream"


# ---- device, dtype, memory ------------------------------------------------------------------

def pick_device(device=None) -> torch.device:
    """"auto" / None -> cuda, else mps, else cpu; an unavailable device is a UsageError."""
    name = str(device or "auto")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s); pick another")
    if dev.type == "mps" and not _mps_available():
        raise UsageError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    return dev


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pick_dtype(dtype, device: torch.device) -> torch.dtype:
    """A torch dtype from a dtype or a name; "auto" = bf16 on CUDA, fp16 on MPS, fp32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype or "auto").lower().replace("torch.", "")
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if name not in DTYPES:
        raise UsageError(f"--dtype {dtype!r} is not supported; use float32, bfloat16, float16 or auto")
    return DTYPES[name]


def available_memory(device: torch.device) -> int | None:
    """Free bytes on `device`; $DLLM_MEMORY_LIMIT overrides; None when unknown."""
    env = os.environ.get("DLLM_MEMORY_LIMIT")
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise UsageError(f"DLLM_MEMORY_LIMIT={env!r} is not a number of bytes") from None
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(spec: ModelSpec, dtype: torch.dtype, device: torch.device, where,
                 memory_limit: int | None = None) -> int:
    """Refuse (OutOfMemoryError) when params x bytes (+5%) exceed the free memory; returns bytes."""
    need = int(spec.param_count() * torch.empty((), dtype=dtype).element_size() * 1.05)
    free = memory_limit if memory_limit is not None else available_memory(device)
    if free is not None and need > free:
        gib = 2 ** 30
        raise OutOfMemoryError(
            f"{where}: the model needs about {need / gib:.1f} GiB as {str(dtype).replace('torch.', '')} "
            f"but {device} has {free / gib:.1f} GiB free; use --dtype bfloat16, another --device, "
            "or a smaller model")
    return need


# ---- weight files ---------------------------------------------------------------------------

class _SafetensorsFile:
    def __init__(self, path: Path, device: str):
        from safetensors import safe_open

        self.path = path
        try:
            self._f = safe_open(str(path), framework="pt", device=device)
        except Exception as exc:  # SafetensorError: truncated, bad header, not safetensors
            raise CheckpointError(f"{path}: truncated or not a safetensors file ({exc}); "
                                  "re-download it") from None

    def keys(self) -> list[str]:
        return list(self._f.keys())

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._f.get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        return self._f.get_tensor(name)


class _PickleFile:
    """A PyTorch `.bin` state dict, read with torch.load(weights_only=True) (opt-in only)."""

    def __init__(self, path: Path, device: str):
        self.path = path
        try:
            try:
                self._sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (pre-zipfile) format cannot be memory-mapped
                self._sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot be read as a PyTorch state dict ({exc}); "
                                  "re-download it") from None

    def keys(self) -> list[str]:
        return list(self._sd)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._sd[name].shape)

    def get(self, name: str) -> torch.Tensor:
        return self._sd[name]


def weight_files(folder: Path, allow_pickle: bool = False) -> tuple[list[Path], str]:
    """The weight files to read and their kind ("safetensors" | "pickle")."""
    for index_name, kind in (("model.safetensors.index.json", "safetensors"),
                             ("pytorch_model.bin.index.json", "pickle")):
        index = folder / index_name
        if index.is_file():
            return _indexed_files(index), _allowed(kind, index, allow_pickle)
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"], "safetensors"
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return found, "safetensors"
    found = sorted(folder.glob("*.bin"))
    if found:
        return found, _allowed("pickle", found[0], allow_pickle)
    raise CheckpointError(f"{folder}: no weights (model.safetensors or a sharded index); "
                          "download the model's .safetensors files into this folder")


def _indexed_files(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index}: not a valid shard index ({exc}); re-download it") from None
    for name in names:
        if not (index.parent / name).is_file():
            raise CheckpointError(f"{index.parent / name}: missing shard listed in {index.name}; "
                                  "download every shard of the checkpoint")
    return [index.parent / n for n in names]


def _allowed(kind: str, path: Path, allow_pickle: bool) -> str:
    if kind == "pickle" and not allow_pickle:
        raise CheckpointError(f"{path}: pickle (.bin) weights are refused because unpickling can run "
                              "code; convert them to safetensors (or, if you trust them, load with allow_pickle=True)")
    return kind


# ---- strict loading -------------------------------------------------------------------------

_INITIALISERS = ("normal_", "uniform_", "kaiming_uniform_", "trunc_normal_", "xavier_uniform_",
                 "zeros_", "ones_", "constant_")


@contextmanager
def _initialisers_skipped():
    """torch.nn.init's in-place initialisers become no-ops: every tensor of a meta-built model
    is loaded afterwards, and on the meta device they import torch._dynamo (1-2 s of start-up)."""
    saved = {name: getattr(torch.nn.init, name) for name in _INITIALISERS}
    for name in _INITIALISERS:
        setattr(torch.nn.init, name, _unchanged)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def _unchanged(tensor, *args, **kwargs):
    return tensor


def build_on_meta(spec: ModelSpec, dtype: torch.dtype) -> DiffusionModel:
    with torch.device("meta"), _initialisers_skipped():
        model = MODEL_CLASSES[spec.layout](spec)
    return model.to(dtype)


def load_weights(model: DiffusionModel, files: list[Path], kind: str, device: torch.device,
                 dtype: torch.dtype) -> None:
    """Fill the meta model from `files`: every tensor consumed, every shape checked, strict."""
    expected = dict(model.named_parameters())
    seen: set[str] = set()
    open_on = "cpu"
    if device.type == "cuda":  # safetensors reads straight into CUDA memory
        open_on = f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    for path in files:
        f = _SafetensorsFile(path, open_on) if kind == "safetensors" else _PickleFile(path, "cpu")
        for name in f.keys():
            if name.endswith(IGNORED_SUFFIXES):
                continue
            if name not in expected:
                raise CheckpointError(f"{path}: unexpected tensor {name!r} for the {model.spec.layout} "
                                      "layout; this checkpoint does not match its config.json (re-download "
                                      "the config.json and weights of the same model)")
            want, got = tuple(expected[name].shape), f.shape(name)
            if got != want:
                raise CheckpointError(f"{path}: tensor {name!r} has shape {list(got)} but config.json "
                                      f"implies {list(want)}; the weights and config.json disagree (re-download "
                                      "the config.json and weights of the same model)")
            _assign(model, name, f.get(name).to(device=device, dtype=dtype))
            seen.add(name)
    missing = [n for n in expected if n not in seen]
    if missing:
        raise CheckpointError(f"{files[0].parent}: tensor {missing[0]!r} is missing from the weight files "
                              f"({len(missing)} missing); download every shard of the checkpoint")


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)


# ---- the public entry points -----------------------------------------------------------------

def load_model(path="default", device="cpu", dtype=torch.float32, allow_pickle: bool = False,
               memory_limit: int | None = None) -> DiffusionModel:
    """Load a checkpoint folder (or "default", the embedded model) as a DiffusionModel.

    device: "cpu" | "cuda[:N]" | "mps" | "auto"; dtype: a torch dtype or its name ("auto"
    too). memory_limit (bytes) replaces the free-memory probe (tests; $DLLM_MEMORY_LIMIT).
    """
    folder = resolve_folder(path)
    config = read_config(folder)
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    where = folder / "config.json"
    layout = layout_of(config)
    tokenizer = Tokenizer.from_dir(folder, config) if layout else None
    spec = model_spec(config, str(where), tokenizer)
    files, kind = weight_files(folder, allow_pickle)
    spec = _untie_if_head_present(spec, files, kind)
    check_tokenizer(tokenizer, spec, folder)
    check_memory(spec, dt, dev, folder, memory_limit)
    model = build_on_meta(spec, dt)
    load_weights(model, files, kind, dev, dt)
    finish(model, tokenizer, config, folder)
    return model


def _untie_if_head_present(spec: ModelSpec, files: list[Path], kind: str) -> ModelSpec:
    """A tied config whose files still hold the head: use the stored head (no tensor unused)."""
    if not spec.tied or kind != "safetensors":
        return spec
    head = HEAD_NAMES[spec.layout]
    for path in files:
        if head in _SafetensorsFile(path, "cpu").keys():
            return replace(spec, tied=False)
    return spec


def check_tokenizer(tokenizer: Tokenizer, spec: ModelSpec, folder: Path) -> None:
    if tokenizer.vocab_size > spec.vocab_size:
        raise TokenizerError(f"{tokenizer.source}: the tokenizer has {tokenizer.vocab_size} tokens but "
                             f"{folder / 'config.json'} has vocab_size {spec.vocab_size}; the tokenizer files "
                             "belong to another model: copy those of this checkpoint")
    if tokenizer.mask_token_id >= spec.vocab_size:
        raise TokenizerError(f"{folder / 'config.json'}: mask_token_id {tokenizer.mask_token_id} is "
                             f"outside the vocabulary ({spec.vocab_size}); fix config.json")
    if tokenizer.chat_template is None:
        tokenizer.chat_template = LLADA_CHAT_TEMPLATE if spec.layout == "llada" else (
            CHATML_TEMPLATE if tokenizer.token_to_id("<|im_start|>") is not None else None)


def finish(model: DiffusionModel, tokenizer: Tokenizer | None, config: dict, source) -> None:
    """Attach tokenizer and special ids, freeze, eval mode; count parameters."""
    n = sum(p.numel() for p in model.parameters())
    model.spec = replace(model.spec, n_params=n)
    model.requires_grad_(False).eval()
    model.tokenizer = tokenizer
    model.source = source
    if tokenizer is not None:
        model.mask_token_id, model.eos_token_id = tokenizer.mask_token_id, tokenizer.eos_token_id
        model.pad_token_id, model.stop_token_ids = tokenizer.pad_token_id, tokenizer.stop_token_ids
    else:
        model.mask_token_id = int(config["mask_token_id"])
        model.eos_token_id = int(config.get("eos_token_id", 0))
        model.pad_token_id = int(config.get("pad_token_id", model.eos_token_id))
        model.stop_token_ids = frozenset({model.eos_token_id})


def random_model(config: dict, *, device="cpu", dtype=torch.float32, tokenizer: Tokenizer | None = None,
                 seed: int = 0) -> DiffusionModel:
    """A model of any shape (e.g. PUBLISHED_SHAPES[...]) with random weights, built on `device`.

    Weights ~ N(0, 0.02), norms 1, biases 0: for speed measurements, not for text.
    """
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    spec = model_spec(config, "config", tokenizer)
    if "mask_token_id" not in config and tokenizer is None:
        raise UsageError("random_model: the config needs mask_token_id (or pass a tokenizer)")
    model = build_on_meta(spec, dt).to_empty(device=dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=gen)
    finish(model, tokenizer, config, None)
    return model
