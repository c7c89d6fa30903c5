"""Load a checkpoint folder into a `Model`: inspect, pick the layout, check, load strictly.

Knows: the weight files (safetensors single or sharded, refused `.bin` pickles), the strict
meta-device load (every tensor consumed, every shape checked), the memory check before any
weight is read, the tokenizer checks (a block-diffusion checkpoint's mask id must be a special
token of its tokenizer), and random weights of the published shapes (`dllm bench --shape`;
`reduced(shape, layers=N)` keeps the widths and cuts the depth), and `quant="int8"`: the linears
replaced on the meta model by engine/quant.py's Int8Linear, each weight quantised as it is read.
What the
folder is (layout, family, tokenizer files, template) comes from `catalog.inspect`.
Must not: know about terminals, or run checkpoint-supplied code. Every failure a user can
cause is a DllmError whose one-line message names the file.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from .. import catalog, footprint
from ..catalog import Checkpoint
from ..errors import CheckpointError, TokenizerError, UsageError
from ..events import SpecialTokens
from ..tokenizer import Tokenizer
from .device import check_memory, pick_device, pick_dtype
from .layouts import LAYOUTS, MODEL_CLASSES, DiffusionModel, ModelSpec
from .model import Model
from .quant import Int8Linear, prepare

IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # recomputed buffers some exporters save

# The published shapes (config.json values, see docs/models.md), for `dllm bench --shape`.
PUBLISHED_SHAPES: dict[str, dict[str, Any]] = {
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
    # Block diffusion (block-causal attention, exact block KV cache).
    "sdar-8b": {  # JetLM/SDAR-8B-Chat (JetAstra/SDAR training copy of its config.json)
        "model_type": "sdar", "architectures": ["SDARForCausalLM"], "hidden_size": 4096,
        "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "intermediate_size": 12288, "vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": False, "attention_bias": False, "block_size": 4, "mask_token_id": 151669,
        "eos_token_id": 151643, "pad_token_id": 151643, "bos_token_id": 151643,
    },
    "sdar-1.7b": {  # JetLM/SDAR-1.7B-Chat: Qwen3-1.7B shapes (its config.json was not read; untied
        # because the 4.06 GB safetensors file holds ~2.03 B parameters)
        "model_type": "sdar", "architectures": ["SDARForCausalLM"], "hidden_size": 2048,
        "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
        "intermediate_size": 6144, "vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": False, "attention_bias": False, "block_size": 4, "mask_token_id": 151669,
        "eos_token_id": 151643, "pad_token_id": 151643, "bos_token_id": 151643,
    },
    "stable-diffcoder-8b": {  # ByteDance-Seed/Stable-DiffCoder-8B-Instruct (transformers 5.3 revision)
        "model_type": "llama", "architectures": ["StableDiffcoderForCausalLM"], "hidden_size": 4096,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "intermediate_size": 14336, "vocab_size": 155136, "rms_norm_eps": 1e-6, "rope_theta": 500000.0,
        "max_position_embeddings": 8192, "tie_word_embeddings": False, "attention_bias": False,
        "mlp_bias": False, "mask_token_id": 5, "bos_token_id": 0, "eos_token_id": 2,
    },
    "fast-dllm-v2-7b": {  # Efficient-Large-Model/Fast_dLLM_v2_7B (vocab, eps, theta: Qwen2.5-7B's)
        "model_type": "Fast_dLLM_Qwen", "architectures": ["Fast_dLLM_QwenForCausalLM"], "hidden_size": 3584,
        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "intermediate_size": 18944, "vocab_size": 152064, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": False, "bd_size": 32, "mask_token_id": 151665, "bos_token_id": 151643,
        "eos_token_id": 151645, "pad_token_id": 151645,
    },
    # Mixtures of experts (block-causal too).
    "llada2-mini": {  # inclusionAI/LLaDA2.0-mini and LLaDA2.1-mini (the same config.json values)
        "model_type": "llada2_moe", "architectures": ["LLaDA2MoeModelLM"], "hidden_size": 2048,
        "num_hidden_layers": 20, "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 128,
        "intermediate_size": 5120, "moe_intermediate_size": 512, "num_experts": 256, "num_experts_per_tok": 8,
        "num_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 8, "topk_group": 4,
        "routed_scaling_factor": 2.5, "score_function": "sigmoid", "moe_router_enable_expert_bias": True,
        "norm_topk_prob": True, "router_dtype": "fp32", "partial_rotary_factor": 0.5, "rotary_dim": 64,
        "rope_theta": 600000, "rope_scaling": None, "rms_norm_eps": 1e-6, "vocab_size": 157184,
        "max_position_embeddings": 32768, "tie_word_embeddings": False, "use_bias": False, "use_qkv_bias": False,
        "use_qk_norm": True, "use_rmsnorm": True, "norm_head": False, "use_sliding_window": False,
        "mask_token_id": 156895, "eos_token_id": 156892, "pad_token_id": 156892, "bos_token_id": 156891,
    },
    "sdar-30b-a3b": {  # JetLM/SDAR-30B-A3B-Chat: Qwen3-30B-A3B shapes (its config.json was not read)
        "model_type": "sdar_moe", "architectures": ["SDARMoeForCausalLM"], "hidden_size": 2048,
        "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
        "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8,
        "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [], "vocab_size": 151936,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False, "attention_bias": False,
        "block_size": 4, "mask_token_id": 151669, "eos_token_id": 151643, "pad_token_id": 151643,
        "bos_token_id": 151643,
    },
}



def model_spec(config: Mapping[str, Any], where: str = "config.json", family: str | None = None) -> ModelSpec:
    """The layout and shape that config.json describes (CheckpointError if unsupported)."""
    layout = catalog.layout_of(config)
    if layout is None and catalog.refusal(config):
        raise CheckpointError(f"{where}: model_type {config.get('model_type')!r} is refused: {catalog.refusal(config)}")
    if layout is None:
        raise CheckpointError(
            f"{where}: model_type {config.get('model_type')!r} (architectures "
            f"{config.get('architectures')}) is not a supported diffusion layout; dllm runs "
            f"model_type {', '.join(catalog.supported_model_types())} (see docs/models.md)")
    family = family or catalog.family_of(config, layout, frozenset())
    try:
        spec: ModelSpec = LAYOUTS[layout].spec_from_config(dict(config), where, family=family)
    except (TypeError, ValueError, ZeroDivisionError) as exc:  # e.g. "rope_theta": "big", "head_dim": "x"
        raise CheckpointError(f"{where}: a shape value has the wrong type ({exc}); fix config.json "
                              "or re-download it") from None
    return spec


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
def _initialisers_skipped() -> Iterator[None]:
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


def _unchanged(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return tensor


def build_on_meta(spec: ModelSpec, dtype: torch.dtype) -> DiffusionModel:
    with torch.device("meta"), _initialisers_skipped():
        model = MODEL_CLASSES[spec.layout](spec)
    model = model.to(dtype)
    for name, p in model.named_parameters():
        if _keeps_fp32(model, name):
            _assign(model, name, p, p.device, torch.float32)
    return model


def _keeps_fp32(model: DiffusionModel, name: str) -> bool:
    """Tensors a layout keeps in fp32 whatever the load dtype (its module's FP32_TENSORS, e.g.
    LLaDA2's mlp.gate.expert_bias, an fp32 buffer in the source)."""
    return name.endswith(tuple(getattr(LAYOUTS[model.spec.layout], "FP32_TENSORS", ())))


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
            _assign(model, name, f.get(name), device, torch.float32 if _keeps_fp32(model, name) else dtype)
            seen.add(name)
    missing = [n for n in expected if n not in seen]
    if missing:
        raise CheckpointError(f"{files[0].parent}: tensor {missing[0]!r} is missing from the weight files "
                              f"({len(missing)} missing); download every shard of the checkpoint")


def _assign(model: nn.Module, name: str, tensor: torch.Tensor, device: torch.device, dtype: torch.dtype) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    if isinstance(module, Int8Linear) and leaf == "weight":  # --quant int8: quantised as it arrives
        module.load_weight(tensor.to(device=device))
        return
    module._parameters[leaf] = nn.Parameter(tensor.to(device=device, dtype=dtype), requires_grad=False)


# ---- the public entry points -----------------------------------------------------------------

def load_model(path: str | os.PathLike[str] | Checkpoint | None = catalog.DEFAULT, device: str | torch.device = "cpu",
               dtype: str | torch.dtype = torch.float32, allow_pickle: bool = False,
               memory_limit: int | None = None, tokenizer: Tokenizer | None = None, quant: str = "none") -> Model:
    """Load a checkpoint folder ("default" or None: the embedded model; or an inspected Checkpoint).

    device: "cpu" | "cuda[:N]" | "mps" | "auto"; dtype: a torch dtype or its name ("auto"
    too). memory_limit (bytes) replaces the free-memory probe (tests; $DLLM_MEMORY_LIMIT).
    tokenizer: the checkpoint's, when the caller has already read it. quant: "none" | "int8"
    (weight-only int8 linears, quantised tensor by tensor while loading: engine/quant.py).
    """
    quant = footprint.quant_mode(quant)
    ckpt = path if isinstance(path, Checkpoint) else catalog.inspect(path)
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    spec = model_spec(ckpt.config, str(ckpt.where), ckpt.family)
    tokenizer = tokenizer or Tokenizer.from_checkpoint(ckpt)
    files, kind = weight_files(ckpt.folder, allow_pickle)
    spec = _untie_if_head_present(spec, files, kind)
    check_tokenizer(tokenizer, spec, ckpt.folder)
    nbytes = None
    if quant == "int8" and kind == "safetensors":  # pickles: the load-dtype estimate (an upper bound)
        nbytes = footprint.weight_bytes(catalog.tensor_shapes(files), torch.empty((), dtype=dt).element_size(),
                                      quant, None if spec.tied else LAYOUTS[spec.layout].HEAD_NAME)
    check_memory(spec.param_count(), dt, dev, ckpt.folder, memory_limit, nbytes=nbytes)
    net = build_on_meta(spec, dt)
    if quant == "int8":
        prepare(net, net.layers(), _head_module(spec), dt)
    load_weights(net, files, kind, dev, dt)
    return Model(_frozen(net), tokenizer.special_tokens(), tokenizer, ckpt)


def _head_module(spec: ModelSpec) -> str | None:
    """The untied LM head's module name when it is quantised (footprint.QUANT_HEAD), else None."""
    if spec.tied or not footprint.QUANT_HEAD:
        return None
    return LAYOUTS[spec.layout].HEAD_NAME.rpartition(".")[0]


def _untie_if_head_present(spec: ModelSpec, files: list[Path], kind: str) -> ModelSpec:
    """A tied config whose files still hold the head: use the stored head (no tensor unused)."""
    if not spec.tied or kind != "safetensors":
        return spec
    head = LAYOUTS[spec.layout].HEAD_NAME
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
    if spec.block_causal and tokenizer.mask_token_id not in tokenizer.special_ids:
        text = tokenizer.id_to_token(tokenizer.mask_token_id)
        raise TokenizerError(f"{tokenizer.source}: the mask id {tokenizer.mask_token_id} is {text!r}, not a special "
                             f"token of this tokenizer; copy the tokenizer files of this {spec.family} checkpoint "
                             "(or set mask_token_id in config.json)")


def reduced(config: Mapping[str, Any], layers: int | None) -> dict[str, Any]:
    """A published shape with `layers` layers instead of its own (the widths, vocabulary and
    attention pattern unchanged): `dllm bench --shape X --layers N` on a CPU. A mixture of experts
    keeps at least one sparse layer (LLaDA2's dense first layers: at most N - 1)."""
    out = dict(config)
    if layers is None:
        return out
    if layers < 1:
        raise UsageError("--layers must be at least 1")
    key = "n_layers" if "n_layers" in out else "num_hidden_layers"
    out[key] = layers
    if isinstance(out.get("first_k_dense_replace"), int):
        out["first_k_dense_replace"] = min(out["first_k_dense_replace"], layers - 1)
    if isinstance(out.get("mlp_only_layers"), list):
        out["mlp_only_layers"] = [i for i in out["mlp_only_layers"] if i < layers]
    return out


def _frozen(net: DiffusionModel) -> DiffusionModel:
    """No gradients, eval mode; the spec records the parameter count."""
    net.spec = replace(net.spec, n_params=sum(p.numel() for p in net.parameters()))
    net.requires_grad_(False).eval()
    return net


def config_tokens(config: Mapping[str, Any]) -> SpecialTokens:
    """Special ids from config.json alone (random weights of a published shape, no tokenizer)."""
    if "mask_token_id" not in config:
        raise UsageError("random_model: the config needs mask_token_id (or pass a tokenizer)")
    eos = int(config.get("eos_token_id", 0))
    return SpecialTokens(mask=int(config["mask_token_id"]), eos=eos,
                         pad=int(config.get("pad_token_id", eos)), stops=frozenset({eos}))


def random_model(config: Mapping[str, Any], *, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype = torch.float32, tokenizer: Tokenizer | None = None,
                 seed: int = 0, quant: str = "none") -> Model:
    """A model of any shape (e.g. PUBLISHED_SHAPES[...]) with random weights, built on `device`.

    Weights ~ N(0, 0.02), norms 1, biases 0: for speed measurements, not for text. quant "int8":
    each linear quantised (engine/quant.py) right after its random fill.
    """
    quant = footprint.quant_mode(quant)
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    tokens = tokenizer.special_tokens() if tokenizer is not None else config_tokens(config)
    net = build_on_meta(model_spec(config, "config"), dt)
    if quant == "int8":  # each linear is drawn in full precision, then quantised: the same weights
        prepare(net, net.layers(), _head_module(net.spec), dt)  # as quant="none" with this seed
    net = net.to_empty(device=dev)
    gen = torch.Generator(device=dev).manual_seed(seed)
    with torch.no_grad():
        for name, p in list(net.named_parameters()):
            module = net.get_submodule(name.rpartition(".")[0])
            if isinstance(module, Int8Linear) and name.endswith(".weight"):
                module.load_weight(torch.empty(p.shape, dtype=dt, device=dev).normal_(0.0, 0.02, generator=gen))
            elif name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=gen)
    return Model(_frozen(net), tokens, tokenizer, None)
