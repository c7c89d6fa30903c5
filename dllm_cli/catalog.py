"""What a checkpoint folder is, without loading it: `inspect(folder) -> Checkpoint`.

Knows: where the embedded default model lives (the one place "default" is resolved), config.json,
which layout a config names (`model_type`, else `architectures`; never the folder name), the
checkpoint family (for recipes; LLaDA2.1 is told from LLaDA2.0 by its own `generate()` taking
`editing_threshold`, read as text from modeling_llada2_moe.py, or by "dllm_family"), the context
length, the attention block of a block-diffusion checkpoint (`attention_block`) and its mask id
when config.json lacks one (the published ids: SDAR / SDAR-MoE 151669, Fast-dLLM v2 151665,
Stable-DiffCoder 5, LLaDA2 156895, found by name in the tokenizer files first), the tokenizer
files (tokenizer_config.json, special_tokens_map.json, added_tokens.json, chat_template.jinja,
the added tokens of tokenizer.json) and the chat template, including the fallback for
checkpoints that ship none; the rows of `dllm models` (parameters and dtype from
the safetensors headers, licence from the card). Must not: import torch, read tensor data, or
run checkpoint-supplied code (an `auto_map` entry and LLaDA2's modeling file are read as text,
never imported).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import CheckpointError, DllmError, TokenizerError
from .footprint import HEAD_NAMES, fits, weight_bytes

DEFAULT = "default"  # the model path that names the embedded model (API and CLI)
DEFAULT_MODEL_NAME = "dllm-coder-mini"
FALLBACK_CONTEXT = 4096

# Layout name -> (config.json model_type values, architectures values). engine/layouts maps the
# same names to their modules; a test checks both tables agree.
LAYOUT_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "dream": (("dream", "qwen2"), ("DreamModel", "Qwen2ForCausalLM", "Qwen2Model")),
    "llada": (("llada",), ("LLaDAModelLM",)),
    "sdar": (("sdar",), ("SDARForCausalLM",)),
    "stable-diffcoder": (("llama",), ("StableDiffcoderForCausalLM", "SeedDiffcoderForCausalLM")),
    "fast-dllm-v2": (("fast_dllm_qwen",), ("Fast_dLLM_QwenForCausalLM",)),
    "llada2-moe": (("llada2_moe",), ("LLaDA2MoeModelLM",)),
    "sdar-moe": (("sdar_moe",), ("SDARMoeForCausalLM",)),
}
# model_types dllm recognises and refuses, with the reason (the loader and `dllm models` say it).
REFUSED_MODEL_TYPES: dict[str, str] = {
    "llada2_moe_veomni": ("dFactory's LLaDA2 training layout: its experts are fused 3-D tensors "
                          "(mlp.experts.gate_proj / up_proj / down_proj) that only its veomni code reads; "
                          "use the Hugging Face release (model_type llada2_moe, one tensor per expert)"),
}
# model_types that autoregressive checkpoints use too: the class name (architectures or an
# auto_map entry) must also name the diffusion model, or the folder is refused.
SHARED_MODEL_TYPES = frozenset({"llama"})
# Block-diffusion layouts: (config.json key of the block length, the published block length).
BLOCK_KEYS: dict[str, tuple[str, int]] = {
    "sdar": ("block_size", 4), "stable-diffcoder": ("block_size", 4), "fast-dllm-v2": ("bd_size", 32),
    "llada2-moe": ("block_size", 32), "sdar-moe": ("block_size", 4),
}
# Their mask tokens: (names in the tokenizer files, the published id) for a config.json without
# mask_token_id (docs/models.md has the sources; SDAR's files name it both ways).
BLOCK_MASKS: dict[str, tuple[tuple[str, ...], int]] = {
    "sdar": (("<|MASK|>", "<MASK>"), 151669),
    "stable-diffcoder": (("<[MASK_TOKEN]>",), 5),
    "fast-dllm-v2": (("|<MASK>|",), 151665),
    "llada2-moe": (("<|mask|>",), 156895),
    "sdar-moe": (("<|MASK|>", "<MASK>"), 151669),
}
# LLaDA2.1's own generate() (its modeling file, read as text, never imported) takes editing_threshold.
LLADA2_MODELING = "modeling_llada2_moe.py"
_MODELING_SCAN = 1 << 20

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# SDAR (Qwen3's ChatML, no default system prompt) for a checkpoint that ships no template.
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Seed-Coder-Instruct's format (Stable-DiffCoder builds on it): <[begin▁of▁sentence]>role\ncontent
# <[end▁of▁sentence]>, the system turn's content followed by a blank line.
SEED_CODER_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<[begin\u2581of\u2581sentence]>' + message['role'] + '\\n' + message['content'] }}"
    "{% if message['role'] == 'system' %}{{ '\\n\\n' }}{% endif %}"
    "{{ '<[end\u2581of\u2581sentence]>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<[begin\u2581of\u2581sentence]>assistant\\n' }}{% endif %}"
)
# LLaDA2 (Bailing's roles): <role>SYSTEM</role>…<|role_end|><role>HUMAN</role>…<|role_end|><role>ASSISTANT</role>,
# with the system turn the published examples use when there is none.
LLADA2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<role>SYSTEM</role>detailed thinking off<|role_end|>' }}{% endif %}"
    "{% set role = 'HUMAN' if message['role'] == 'user' else message['role'] | upper %}"
    "{{ '<role>' + role + '</role>' + message['content'] + '<|role_end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<role>ASSISTANT</role>' }}{% endif %}"
)
LLADA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token")
_ADDED_TOKENS_SCAN = 4 << 20  # tokenizer.json: its "added_tokens" list sits near the start


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder as its files describe it (no weights read)."""

    folder: Path
    name: str
    config: Mapping[str, Any]  # config.json; a block family's published mask_token_id added if it has none,
    #                            "dllm_family": "llada2.1" when the folder's LLaDA2 generate() edits
    layout: str | None  # None: a model_type dllm does not run
    family: str  # recipe family: "dream" | "dream-coder" | "diffucoder" | "dreamon" | "open-dcoder" | "llada"
    #              | "sdar" | "stable-diffcoder" | "fast-dllm-v2" | "llada2.0" | "llada2.1" | "sdar-moe" | "dllm"
    context_length: int
    tokenizer_config: Mapping[str, Any]  # tokenizer_config.json, special_tokens_map.json merged under it
    added_tokens: Mapping[int, tuple[str, bool]]  # id -> (content, special) from the config files
    token_names: frozenset[str]  # every added token's text (config files and tokenizer.json)
    chat_template: str | None  # the checkpoint's own, else a fallback for its layout, else None
    is_default: bool = False

    @property
    def where(self) -> Path:
        return self.folder / "config.json"

    def has_token(self, text: str) -> bool:
        return text in self.token_names

    @property
    def attention_block(self) -> int | None:
        """The block length a block-diffusion checkpoint attends in (None: bidirectional)."""
        return attention_block(self.config, self.layout)


# ---- where ----------------------------------------------------------------------------------

def weights_dir() -> Path:
    """$DLLM_WEIGHTS_DIR, else weights/ next to the dllm_cli package."""
    env = os.environ.get("DLLM_WEIGHTS_DIR")
    return Path(env).expanduser() if env else Path(__file__).resolve().parent.parent / "weights"


def default_model_dir() -> Path:
    return weights_dir() / DEFAULT_MODEL_NAME


def is_default(path: str | os.PathLike[str] | None) -> bool:
    return path is None or str(path) == DEFAULT


def resolve(path: str | os.PathLike[str] | None) -> Path:
    """The folder of a model choice (None or "default": the embedded model); CheckpointError when
    it is missing, not a folder, or has no config.json."""
    if is_default(path):
        folder = default_model_dir()
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"the embedded default model is missing ({folder} has no config.json; "
                                  "reinstall dllm or set $DLLM_WEIGHTS_DIR); pass --model PATH to a "
                                  "checkpoint folder")
        return folder
    folder = Path(str(path)).expanduser()
    if not folder.exists():
        raise CheckpointError(f"{folder}: no such folder; pass --model PATH to a downloaded "
                              "checkpoint folder (see docs/models.md)")
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder; pass the checkpoint folder that holds config.json")
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder / 'config.json'}: missing; a checkpoint folder needs its config.json "
                              "(download the whole model repository, see docs/models.md)")
    return folder


def model_name(path: str | os.PathLike[str] | None) -> str:
    return DEFAULT_MODEL_NAME if is_default(path) else Path(str(path)).expanduser().name


# ---- inspect ----------------------------------------------------------------------------------

def inspect(path: str | os.PathLike[str] | None) -> Checkpoint:
    """Read what a checkpoint's small files say: config, layout, family, context, tokenizer
    files, chat template (with its fallback). CheckpointError / TokenizerError name the file."""
    folder = resolve(path)
    config = read_json(folder / "config.json", CheckpointError)
    layout = layout_of(config)
    tok_config = _tokenizer_config(folder)
    added = _added_tokens(folder, tok_config)
    json_added = _tokenizer_json_added(folder)
    names = frozenset(content for content, _ in added.values()) | frozenset(json_added)
    config = with_block_mask_id(config, layout, {**json_added, **{c: i for i, (c, _) in added.items()}})
    config = with_llada2_family(config, layout, folder)
    template = _chat_template(folder, tok_config)
    if template is None:
        template = fallback_template(layout, names)
    return Checkpoint(folder=folder, name=model_name(path), config=config, layout=layout,
                      family=family_of(config, layout, names), context_length=context_length(config),
                      tokenizer_config=tok_config, added_tokens=added, token_names=names,
                      chat_template=template, is_default=is_default(path))


def read_json(path: Path, error: type[DllmError] = CheckpointError) -> dict[str, Any]:
    """A JSON object from `path`; `error` (naming the file) when unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise error(f"{path}: not valid JSON ({exc}); re-download the checkpoint") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object; re-download the checkpoint")
    return data


def layout_of(config: Mapping[str, Any]) -> str | None:
    """The layout config.json names: from model_type, else architectures; None if unknown.

    A model_type that is present but unknown is not second-guessed from architectures:
    e.g. block-causal Qwen2 variants share Qwen2 architectures but not its attention. A
    model_type that autoregressive models share ("llama") needs the diffusion class by name too
    (architectures, or an auto_map entry's class name: Stable-DiffCoder's older revision)."""
    model_type = str(config.get("model_type") or "").lower()
    classes = class_names(config)
    if model_type:
        for name, (types, architectures) in LAYOUT_TYPES.items():
            if model_type in types and (model_type not in SHARED_MODEL_TYPES
                                        or any(c in architectures for c in classes)):
                return name
        return None
    for name, (_, architectures) in LAYOUT_TYPES.items():
        if any(c in architectures for c in classes):
            return name
    return None


def class_names(config: Mapping[str, Any]) -> list[str]:
    """`architectures`, then the class names `auto_map` points at ("modeling_x.Cls" -> "Cls")."""
    names = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    auto_map = config.get("auto_map")
    if isinstance(auto_map, dict):
        for value in auto_map.values():
            for ref in (value if isinstance(value, list) else [value]):
                if isinstance(ref, str):
                    names.append(ref.rsplit(".", 1)[-1])
    return names


def attention_block(config: Mapping[str, Any], layout: str | None) -> int | None:
    """The block length of a block-diffusion layout's attention (config.json's `block_size` /
    `bd_size` when it is a positive int, else the published one); None for bidirectional layouts."""
    if layout not in BLOCK_KEYS:
        return None
    key, published = BLOCK_KEYS[layout]
    value = config.get(key)
    if value is None:
        return published
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CheckpointError(f"config.json: {key!r} {value!r} is not a positive integer; fix config.json")
    return value


def with_block_mask_id(config: dict[str, Any], layout: str | None, token_ids: Mapping[str, int]) -> dict[str, Any]:
    """`config` with mask_token_id for a block-diffusion layout whose config.json has none: the
    id of the family's mask token in the tokenizer files, else its published id."""
    if layout not in BLOCK_MASKS or config.get("mask_token_id") is not None:
        return config
    names, published = BLOCK_MASKS[layout]
    found = next((token_ids[n] for n in names if n in token_ids), published)
    return {**config, "mask_token_id": found}


def with_llada2_family(config: dict[str, Any], layout: str | None, folder: Path) -> dict[str, Any]:
    """`config` with "dllm_family": "llada2.1" for a LLaDA2 folder without one whose modeling file
    (read as text, never imported) has LLaDA2.1's generate(): it takes `editing_threshold`."""
    if layout != "llada2-moe" or config.get("dllm_family"):
        return config
    try:
        with (folder / LLADA2_MODELING).open("rb") as fh:
            text = fh.read(_MODELING_SCAN).decode("utf-8", errors="ignore")
    except OSError:
        return config
    return {**config, "dllm_family": "llada2.1"} if "editing_threshold" in text else config


def refusal(config: Mapping[str, Any]) -> str | None:
    """Why dllm refuses a model_type it recognises (REFUSED_MODEL_TYPES), else None."""
    return REFUSED_MODEL_TYPES.get(str(config.get("model_type") or "").lower())


def supported_model_types() -> list[str]:
    return [t for types, _ in LAYOUT_TYPES.values() for t in types]


def family_of(config: Mapping[str, Any], layout: str | None, token_names: frozenset[str]) -> str:
    """The checkpoint family (for recipes): config's "dllm_family" wins, else clues in the files.
    The loader, `dllm models` and the recipes all take it from here."""
    named = config.get("dllm_family")
    if isinstance(named, str) and named:
        return named
    if layout in ("llada", "sdar", "stable-diffcoder", "fast-dllm-v2", "sdar-moe"):
        return layout  # TraDo / DiRL share SDAR's architecture and recipe
    if layout == "llada2-moe":
        return "llada2.0"  # LLaDA2.1: "dllm_family" (with_llada2_family sets it from the modeling file)
    if layout == "dream":
        if str(config.get("model_type", "")).lower() == "qwen2":
            return "open-dcoder"
        if "<|dlm_pad|>" in token_names:
            return "diffucoder"
        if "<|expand|>" in token_names:
            return "dreamon"
        return "dream"
    return str(config.get("model_type") or "unknown").lower()


def context_length(config: Mapping[str, Any]) -> int:
    """Positions the model was trained on (Qwen2: max_position_embeddings; OLMo: max_sequence_length)."""
    for key in ("max_position_embeddings", "max_sequence_length", "n_positions"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return FALLBACK_CONTEXT


def fallback_template(layout: str | None, token_names: frozenset[str]) -> str | None:
    """The chat template for a checkpoint that ships none: LLaDA's format for the LLaDA layout,
    LLaDA2's roles for LLaDA2, Seed-Coder's for Stable-DiffCoder, Qwen3's ChatML (no system
    prompt) for SDAR and SDAR-MoE, ChatML with the default system prompt when the vocabulary has
    <|im_start|> (Dream, Fast-dLLM v2), else None (raw prompts only)."""
    if layout == "llada":
        return LLADA_CHAT_TEMPLATE
    if layout == "llada2-moe":
        return LLADA2_CHAT_TEMPLATE
    if layout == "stable-diffcoder":
        return SEED_CODER_CHAT_TEMPLATE
    if layout in ("sdar", "sdar-moe") and "<|im_start|>" in token_names:
        return QWEN3_CHAT_TEMPLATE
    if "<|im_start|>" in token_names:
        return CHATML_TEMPLATE
    return None


# ---- tokenizer files -------------------------------------------------------------------------

def _tokenizer_config(folder: Path) -> dict[str, Any]:
    """tokenizer_config.json with special_tokens_map.json's special tokens under it (transformers
    merges them too; tokenizer_config.json wins)."""
    path = folder / "tokenizer_config.json"
    config = read_json(path, TokenizerError) if path.is_file() else {}
    map_path = folder / "special_tokens_map.json"
    if map_path.is_file():
        special = {k: v for k, v in read_json(map_path, TokenizerError).items() if k in SPECIAL_KEYS}
        config = {**special, **config}
    return config


def _added_tokens(folder: Path, tok_config: Mapping[str, Any]) -> dict[int, tuple[str, bool]]:
    """{id: (content, special)} from added_tokens.json and tokenizer_config.json."""
    added: dict[int, tuple[str, bool]] = {}
    path = folder / "added_tokens.json"
    try:
        if path.is_file():
            for content, tid in read_json(path, TokenizerError).items():
                added[int(tid)] = (content, True)
        path = folder / "tokenizer_config.json"
        for tid, entry in (tok_config.get("added_tokens_decoder") or {}).items():
            if isinstance(entry, dict) and isinstance(entry.get("content"), str):
                added[int(tid)] = (entry["content"], bool(entry.get("special", True)))
    except (TypeError, ValueError, AttributeError) as exc:
        raise TokenizerError(f"{path}: an added token id is not an integer ({exc}); re-download it") from None
    return added


def _tokenizer_json_added(folder: Path) -> dict[str, int]:
    """{content: id} of tokenizer.json's "added_tokens" list, read from the head of the file
    (the list precedes the vocabulary); empty when absent or unreadable (the loader reports it)."""
    path = folder / "tokenizer.json"
    try:
        with path.open("rb") as fh:
            head = fh.read(_ADDED_TOKENS_SCAN).decode("utf-8", errors="ignore")
    except OSError:
        return {}
    at = head.find('"added_tokens"')
    start = head.find("[", at) if at >= 0 else -1
    if start < 0:
        return {}
    try:
        entries, _ = json.JSONDecoder().raw_decode(head, start)
    except ValueError:
        return {}
    return {e["content"]: e["id"] for e in entries if isinstance(e, dict) and isinstance(e.get("content"), str)
            and isinstance(e.get("id"), int)}


def _chat_template(folder: Path, tok_config: Mapping[str, Any]) -> str | None:
    """chat_template.jinja, else tokenizer_config's chat_template (a string or a named list)."""
    path = folder / "chat_template.jinja"
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        return text if text.strip() else None
    value = tok_config.get("chat_template")
    if isinstance(value, list):  # [{"name": "default", "template": ...}, ...]
        named = {e.get("name"): e.get("template") for e in value if isinstance(e, dict)}
        value = named.get("default") or next(iter(named.values()), None)
    return value if isinstance(value, str) else None


# ---- dllm models ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelRow:
    """One row of `dllm models` (what the files say; no weights read)."""

    name: str
    path: str
    source: str  # "default" | "$DLLM_MODEL" | "config" | "user" | "argument"
    chosen: bool
    family: str = "-"
    layout: str | None = None
    params: int | None = None
    params_human: str = "-"
    dtype: str = "-"
    context: int | None = None
    licence: str = "-"
    memory_bf16: int | None = None  # weight bytes in bfloat16 (from the headers)
    memory_int8: int | None = None  # weight bytes with --quant int8 (weight_bytes)
    fits: str = "-"  # "bf16" | "int8" (only with --quant int8) | "no" | "-": against free RAM (fits())
    error: str | None = None  # why the checkpoint cannot be used (status other than "ok")
    status: str = "ok"  # "ok" | "missing" | "unreadable" | "broken" | "unsupported"

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


@dataclass(frozen=True)
class Candidate:
    source: str
    folder: Path
    default: bool = field(default=False)


def model_candidates(models_dir: Path, choices: list[tuple[str, str]], paths: list[Path]) -> list[Candidate]:
    """The embedded default, the user's choices ((source, path) pairs: $DLLM_MODEL, config), the
    folders in `models_dir`, then `paths`; each folder once."""
    found = [Candidate("default", default_model_dir(), True)]
    found += [Candidate(source, Path(value).expanduser()) for source, value in choices if value]
    if models_dir.is_dir():
        found += [Candidate("user", d) for d in sorted(models_dir.iterdir()) if (d / "config.json").is_file()]
    found += [Candidate("argument", Path(p).expanduser()) for p in paths]
    seen: set[Path] = set()
    unique = []
    for c in found:
        key = c.folder.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def describe(candidate: Candidate, chosen: Path | None, free: int | None = None) -> ModelRow:
    """A `dllm models` row: inspect() plus the safetensors headers and the card's licence; `free`
    (bytes, e.g. available_ram()): whether the weights fit in bfloat16 or only as int8."""
    folder = candidate.folder
    name = DEFAULT_MODEL_NAME if candidate.default else folder.name
    is_chosen = chosen is not None and folder.resolve() == chosen.resolve()
    base = ModelRow(name=name, path=str(folder), source=candidate.source, chosen=is_chosen)
    try:
        ckpt = inspect(DEFAULT if candidate.default else folder)
    except DllmError as err:
        family = "missing" if not (folder / "config.json").exists() else "unreadable"
        return ModelRow(**{**base.as_dict(), "family": family, "error": str(err), "status": family})
    params, header_dtype = safetensors_params(folder)
    dtype = ckpt.config.get("torch_dtype") or ckpt.config.get("dtype") or header_dtype or "-"
    problem = checkpoint_problem(ckpt)
    status, error = problem if problem else ("ok", None)
    bf16 = int8 = None
    if status == "ok" and ckpt.layout is not None:
        try:
            shapes = tensor_shapes(sorted(folder.glob("*.safetensors")))
        except CheckpointError:
            shapes = []
        if shapes:
            head = HEAD_NAMES.get(ckpt.layout, "lm_head.weight")  # absent from the files when tied
            bf16, int8 = weight_bytes(shapes, 2), weight_bytes(shapes, 2, "int8", head)
    return ModelRow(**{**base.as_dict(), "family": ckpt.family, "layout": ckpt.layout, "params": params,
                       "params_human": human_count(params), "dtype": str(dtype),
                       "context": ckpt.context_length, "licence": model_licence(folder),
                       "memory_bf16": bf16, "memory_int8": int8, "fits": fits(bf16, int8, free),
                       "status": status, "error": error})


def checkpoint_problem(ckpt: Checkpoint) -> tuple[str, str] | None:
    """("unsupported" | "broken", why) when `dllm code` could not load the checkpoint, judged from
    its files without reading tensor data: a model_type dllm does not run, pickle-only weights
    (never unpickled), no weights, a missing shard, a truncated or unreadable safetensors file,
    no tokenizer files. None when nothing is wrong that the files show."""
    folder = ckpt.folder
    if ckpt.layout is None:
        kind = ckpt.config.get("model_type") or ckpt.config.get("architectures") or "?"
        why = refusal(ckpt.config)
        if why:
            return "unsupported", f"model_type {kind}: {why}"
        return "unsupported", (f"model_type {kind} is not a layout dllm runs "
                               f"(supported: {', '.join(supported_model_types())})")
    files: list[Path] = []
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return "broken", f"{index.name} is not a valid shard index"
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            return "broken", f"shard {missing[0]} listed in {index.name} is missing"
        files = [folder / n for n in names]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        if any(folder.glob("*.bin")):
            return "unsupported", "only pickle weights (*.bin); dllm loads safetensors and never unpickles"
        return "broken", "no weights (*.safetensors)"
    for path in files:
        why = _safetensors_problem(path)
        if why:
            return "broken", f"{path.name}: {why}"
    if not (folder / "tokenizer.json").is_file() and not (
            (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
        return "broken", "no tokenizer.json nor vocab.json + merges.txt"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file cannot be read (bad header, truncated data), from its header only."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > min(size - 8, 100_000_000):
                return "truncated or not a safetensors file (header length past the end)"
            header = json.loads(fh.read(length))
    except (OSError, ValueError, struct.error):
        return "truncated or not a safetensors file (unreadable header)"
    if not isinstance(header, dict):
        return "not a safetensors file (the header is not a JSON object)"
    end = max((e["data_offsets"][1] for k, e in header.items() if k != "__metadata__" and isinstance(e, dict)
               and isinstance(e.get("data_offsets"), list) and len(e["data_offsets"]) == 2), default=0)
    if 8 + length + end > size:
        return f"truncated ({size} bytes; the header needs {8 + length + end})"
    return None


def safetensors_params(folder: Path) -> tuple[int | None, str | None]:
    """Parameter count and dtype from the safetensors headers (8-byte length + JSON)."""
    total, dtype = 0, None
    files = sorted(folder.glob("*.safetensors"))
    for path in files:
        header = safetensors_header(path)
        if header is None:
            return None, None
        for entry in header.values():
            n = 1
            for dim in entry.get("shape", []):
                n *= dim
            total += n
            dtype = dtype or SAFETENSORS_DTYPES.get(str(entry.get("dtype")))
    return (total if files else None), dtype


def safetensors_header(path: Path) -> dict[str, dict[str, Any]] | None:
    """A safetensors file's tensor entries by name (its header: 8-byte length + JSON, no data
    read), "__metadata__" left out; None when it cannot be read as one."""
    try:
        with path.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(min(size, 100_000_000)))
    except (OSError, ValueError, struct.error):
        return None
    if not isinstance(header, dict):
        return {}
    return {name: entry for name, entry in header.items() if name != "__metadata__" and isinstance(entry, dict)}


def tensor_shapes(files: list[Path]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor in safetensors files, from their headers (no data read)."""
    out: list[tuple[str, tuple[int, ...]]] = []
    for path in files:
        header = safetensors_header(path)
        if header is None:
            raise CheckpointError(f"{path}: truncated or not a safetensors file (unreadable header); "
                                  "re-download it")
        out += [(name, tuple(int(d) for d in entry.get("shape", []))) for name, entry in header.items()]
    return out


def human_bytes(n: int | None) -> str:
    return "-" if n is None else f"{n / 2 ** 30:.1f}G" if n >= 2 ** 27 else f"{n / 2 ** 20:.1f}M"


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
