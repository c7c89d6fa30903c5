"""The checkpoint's tokenizer and chat template, read from its files; special ids resolved.

Knows: `tokenizer.json`, or `vocab.json` + `merges.txt` (a Qwen2 byte-level BPE),
`tokenizer_config.json` (special tokens, `added_tokens_decoder`, `chat_template`),
`special_tokens_map.json` (special tokens tokenizer_config.json leaves out), `added_tokens.json`,
`chat_template.jinja`; how to find the mask / eos / pad / bos ids.
Templates render in a jinja2 ImmutableSandboxedEnvironment. Must not: import torch or
transformers (startup time), or run any `auto_map` code a checkpoint names.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from .errors import TokenizerError

# Qwen2's pre-tokenizer split pattern (Qwen2TokenizerFast / tokenization_qwen2.PRETOKENIZE_REGEX).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "mask_token")
MASK_NAMES = ("<|mask|>", "<|mdm_mask|>", "<mask>", "[MASK]")
# Tokens that end an answer when present (eos is always one).
STOP_NAMES = ("<|endoftext|>", "<|eot_id|>", "<|im_end|>", "<|dlm_pad|>")

CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLADA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"{path}: cannot read it as JSON ({exc}); re-download the checkpoint") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: expected a JSON object; re-download the checkpoint")
    return data


def _token_text(value) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """A byte-level BPE tokenizer plus chat template and special ids (see the contract)."""

    def __init__(self, backend, *, tokenizer_config: dict, chat_template: str | None,
                 model_config: dict | None = None, folder: Path | None = None, source: Path | None = None):
        self._tok = backend  # tokenizers.Tokenizer
        self.config = tokenizer_config
        self.chat_template = chat_template
        self.folder = folder
        self.source = source or folder or "tokenizer"  # the vocabulary file (for messages)
        cfg = model_config or {}
        self.eos_token_id = self._resolve("eos_token", cfg.get("eos_token_id"))
        self.bos_token_id = self._resolve("bos_token", cfg.get("bos_token_id"))
        self.pad_token_id = self._resolve("pad_token", cfg.get("pad_token_id"))
        self.mask_token_id = self._resolve_mask(cfg.get("mask_token_id"))
        self._check_ids()

    # ---- loading ----------------------------------------------------------------------

    @classmethod
    def from_dir(cls, folder, model_config: dict | None = None) -> "Tokenizer":
        """Read the tokenizer files of a checkpoint folder (never runs auto_map code)."""
        folder = Path(folder)
        cfg_path = folder / "tokenizer_config.json"
        tok_config = _read_json(cfg_path) if cfg_path.is_file() else {}
        map_path = folder / "special_tokens_map.json"
        if map_path.is_file():  # transformers merges it too; tokenizer_config.json wins
            tok_config = {**{k: v for k, v in _read_json(map_path).items() if k in SPECIAL_KEYS}, **tok_config}
        added = _added_tokens(folder, tok_config)
        if (folder / "tokenizer.json").is_file():
            source = folder / "tokenizer.json"
            backend = _load_tokenizer_json(source)
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            source = folder / "vocab.json"
            backend = _load_vocab_merges(folder, added)
        else:
            raise TokenizerError(f"{folder}: no tokenizer.json nor vocab.json + merges.txt; "
                                 "copy the tokenizer files of the checkpoint into this folder")
        _register_added(backend, added, folder)
        template = _chat_template(folder, tok_config)
        return cls(backend, tokenizer_config=tok_config, chat_template=template,
                   model_config=model_config, folder=folder, source=source)

    # ---- ids --------------------------------------------------------------------------

    def _resolve(self, key: str, fallback_id) -> int | None:
        text = _token_text(self.config.get(key))
        if text is not None:
            tid = self._tok.token_to_id(text)
            if tid is None:
                raise TokenizerError(f"{self._where()}: {key} {text!r} is not in the vocabulary; "
                                     "fix tokenizer_config.json")
            return tid
        return int(fallback_id) if isinstance(fallback_id, int) else None

    def _resolve_mask(self, config_id) -> int | None:
        if isinstance(config_id, int):
            return config_id
        text = _token_text(self.config.get("mask_token"))
        for name in ((text,) if text else ()) + MASK_NAMES:
            tid = self._tok.token_to_id(name)
            if tid is not None:
                return tid
        return None

    def _check_ids(self) -> None:
        where = self._where()
        if self.mask_token_id is None:
            raise TokenizerError(f"{where}: no mask token (mask_token_id in config.json, mask_token in "
                                 "tokenizer_config.json, or a <|mask|> token); is this a diffusion checkpoint?")
        if self.eos_token_id is None:
            raise TokenizerError(f"{where}: no eos token; set eos_token in tokenizer_config.json")
        if self.pad_token_id is None:
            self.pad_token_id = self.eos_token_id
        if self.pad_token_id == self.mask_token_id:
            raise TokenizerError(f"{where}: the pad token is the mask token (id {self.mask_token_id}); "
                                 "fix pad_token in tokenizer_config.json")
        for name in ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id"):
            tid = getattr(self, name)
            if tid is not None and not 0 <= tid < max(self.vocab_size, 1):
                raise TokenizerError(f"{where}: {name} {tid} is outside the tokenizer's "
                                     f"{self.vocab_size} tokens; fix config.json / tokenizer_config.json")

    def _where(self) -> str:
        return str(self.folder / "tokenizer_config.json") if self.folder else "tokenizer"

    @cached_property
    def vocab_size(self) -> int:
        """Highest id + 1, added tokens included (ids may have gaps)."""
        return max(self._tok.get_vocab(with_added_tokens=True).values(), default=-1) + 1

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, tid: int) -> str | None:
        return self._tok.id_to_token(tid)

    @cached_property
    def special_ids(self) -> frozenset[int]:
        return frozenset(tid for tid, t in self._tok.get_added_tokens_decoder().items() if t.special)

    @cached_property
    def stop_token_ids(self) -> frozenset[int]:
        """eos plus the eos-like tokens this vocabulary has (eot, im_end, dlm_pad)."""
        ids = {self.eos_token_id}
        ids.update(t for t in map(self._tok.token_to_id, STOP_NAMES) if t is not None)
        return frozenset(ids)

    # ---- text -------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in it are recognised, none added."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special)

    def token_text(self, tid: int) -> str:
        """What one token prints as (decoded bytes, special tokens as their text)."""
        return self._tok.decode([tid], skip_special_tokens=False)

    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        """Render the checkpoint's chat template (sandboxed) for `messages` [{role, content}]."""
        if not self.chat_template:
            raise TokenizerError(f"{self._where()}: the checkpoint has no chat template; "
                                 "add chat_template.jinja or use a raw prompt")
        msgs = [m.as_dict() if hasattr(m, "as_dict") else dict(m) for m in messages]
        special = {k: _token_text(self.config.get(k)) or "" for k in SPECIAL_KEYS}
        try:
            return _compile(self.chat_template).render(
                messages=msgs, add_generation_prompt=add_generation_prompt, **special)
        except Exception as exc:  # jinja2 errors, raise_exception(), sandbox violations
            raise TokenizerError(f"{self._where()}: the chat template failed: {exc}") from None


# ---- helpers ------------------------------------------------------------------------------

def _added_tokens(folder: Path, tok_config: dict) -> dict[int, tuple[str, bool]]:
    """{id: (content, special)} from added_tokens.json and tokenizer_config.json."""
    added: dict[int, tuple[str, bool]] = {}
    path = folder / "added_tokens.json"
    try:
        if path.is_file():
            for content, tid in _read_json(path).items():
                added[int(tid)] = (content, True)
        path = folder / "tokenizer_config.json"
        for tid, entry in (tok_config.get("added_tokens_decoder") or {}).items():
            if isinstance(entry, dict) and isinstance(entry.get("content"), str):
                added[int(tid)] = (entry["content"], bool(entry.get("special", True)))
    except (TypeError, ValueError, AttributeError) as exc:
        raise TokenizerError(f"{path}: an added token id is not an integer ({exc}); re-download it") from None
    return added


def _load_tokenizer_json(path: Path):
    from tokenizers import Tokenizer as Backend

    try:
        return Backend.from_file(str(path))
    except Exception as exc:
        raise TokenizerError(f"{path}: not a valid tokenizer file ({exc}); re-download it") from None


def _load_vocab_merges(folder: Path, added: dict[int, tuple[str, bool]]):
    """A Qwen2 byte-level BPE from vocab.json + merges.txt (as Qwen2TokenizerFast builds it)."""
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    vocab = {k: int(v) for k, v in _read_json(folder / "vocab.json").items()}
    for tid, (content, _) in added.items():  # added tokens keep their file ids
        vocab.setdefault(content, tid)
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = []
    for n, line in enumerate(lines, 1):
        if not line or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise TokenizerError(f"{folder / 'merges.txt'}:{n}: expected two symbols; re-download it")
        merges.append((parts[0], parts[1]))
    try:
        backend = Backend(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    except Exception as exc:
        raise TokenizerError(f"{folder / 'vocab.json'}: cannot build the BPE model ({exc})") from None
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    return backend


def _register_added(backend, added: dict[int, tuple[str, bool]], folder: Path) -> None:
    """Make every added token atomic at its declared id (tokenizer_config wins)."""
    from tokenizers import AddedToken

    for tid, (content, special) in sorted(added.items()):
        existing = backend.token_to_id(content)
        if existing is not None and existing != tid:
            raise TokenizerError(f"{folder}: token {content!r} has id {existing} in the vocabulary but "
                                 f"{tid} in tokenizer_config.json / added_tokens.json; re-download them")
        token = AddedToken(content, normalized=False, special=special)
        (backend.add_special_tokens if special else backend.add_tokens)([token])
        if backend.token_to_id(content) != tid:
            raise TokenizerError(f"{folder}: added token {content!r} should have id {tid} but the "
                                 "vocabulary has a gap before it; re-download the tokenizer files")


def _chat_template(folder: Path, tok_config: dict) -> str | None:
    """chat_template.jinja, else tokenizer_config's chat_template (a string or a named list)."""
    path = folder / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    value = tok_config.get("chat_template")
    if isinstance(value, list):  # [{"name": "default", "template": ...}, ...]
        named = {e.get("name"): e.get("template") for e in value if isinstance(e, dict)}
        value = named.get("default") or next(iter(named.values()), None)
    return value if isinstance(value, str) else None


_COMPILED: dict[str, object] = {}


def _compile(template: str):
    if template not in _COMPILED:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise ValueError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
        _COMPILED[template] = env.from_string(template)
    return _COMPILED[template]
