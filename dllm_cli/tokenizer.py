"""The checkpoint's tokenizer: `Tokenizer.from_checkpoint(catalog.inspect(folder))`.

Knows: `tokenizer.json`, or `vocab.json` + `merges.txt` (a Qwen2 byte-level BPE), the added
tokens and special-token names catalog.py read from the small files, how to find the mask / eos /
pad / bos ids (-> `events.SpecialTokens`), and how to render the chat template (in a jinja2
ImmutableSandboxedEnvironment). Must not: import torch or transformers (startup time), read
config files catalog.py already read, or run any `auto_map` code a checkpoint names.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from .catalog import SPECIAL_KEYS, read_json
from .errors import TokenizerError
from .events import SpecialTokens

if TYPE_CHECKING:
    from .catalog import Checkpoint

# Qwen2's pre-tokenizer split pattern (Qwen2TokenizerFast / tokenization_qwen2.PRETOKENIZE_REGEX).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

MASK_NAMES = ("<|mask|>", "<|mdm_mask|>", "<mask>", "[MASK]")
# Tokens that end an answer when present (eos is always one).
STOP_NAMES = ("<|endoftext|>", "<|eot_id|>", "<|im_end|>", "<|dlm_pad|>", "<|role_end|>")  # role_end: LLaDA2
EXPAND_TOKEN, DELETE_TOKEN = "<|expand|>", "<|delete|>"  # DreamOn


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """A byte-level BPE tokenizer plus chat template and special ids (see the contract)."""

    def __init__(self, backend: Any, *, tokenizer_config: Mapping[str, Any], chat_template: str | None,
                 model_config: Mapping[str, Any] | None = None, folder: Path | None = None,
                 source: Path | None = None):
        self._tok = backend  # tokenizers.Tokenizer
        self.config = tokenizer_config
        self.chat_template = chat_template
        self.folder = folder
        self.source: Path | str = source or folder or "tokenizer"  # the vocabulary file (for messages)
        cfg = model_config or {}
        eos = self._resolve("eos_token", cfg.get("eos_token_id"))
        self.bos_token_id = self._resolve("bos_token", cfg.get("bos_token_id"))
        self.pad_token_id = self._resolve("pad_token", cfg.get("pad_token_id"))
        self.mask_token_id: int = self._required(self._resolve_mask(cfg.get("mask_token_id")), "mask")
        self.eos_token_id: int = self._required(eos, "eos")
        self._check_ids()

    # ---- loading ----------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, ckpt: "Checkpoint") -> "Tokenizer":
        """The tokenizer of a checkpoint folder (never runs auto_map code)."""
        folder = ckpt.folder
        if (folder / "tokenizer.json").is_file():
            source = folder / "tokenizer.json"
            backend = _load_tokenizer_json(source)
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            source = folder / "vocab.json"
            backend = _load_vocab_merges(folder, ckpt.added_tokens)
        else:
            raise TokenizerError(f"{folder}: no tokenizer.json nor vocab.json + merges.txt; "
                                 "copy the tokenizer files of the checkpoint into this folder")
        _register_added(backend, ckpt.added_tokens, folder)
        return cls(backend, tokenizer_config=ckpt.tokenizer_config, chat_template=ckpt.chat_template,
                   model_config=ckpt.config, folder=folder, source=source)

    # ---- ids --------------------------------------------------------------------------

    def _resolve(self, key: str, fallback_id: Any) -> int | None:
        text = _token_text(self.config.get(key))
        if text is not None:
            tid = self._tok.token_to_id(text)
            if tid is None:
                raise TokenizerError(f"{self._where()}: {key} {text!r} is not in the vocabulary; "
                                     "fix tokenizer_config.json")
            return tid
        return int(fallback_id) if isinstance(fallback_id, int) else None

    def _resolve_mask(self, config_id: Any) -> int | None:
        if isinstance(config_id, int):
            return config_id
        text = _token_text(self.config.get("mask_token"))
        for name in ((text,) if text else ()) + MASK_NAMES:
            tid = self._tok.token_to_id(name)
            if tid is not None:
                return tid
        return None

    def _required(self, tid: int | None, what: str) -> int:
        if tid is not None:
            return tid
        if what == "mask":
            raise TokenizerError(f"{self._where()}: no mask token (mask_token_id in config.json, mask_token in "
                                 "tokenizer_config.json, or a <|mask|> token); is this a diffusion checkpoint?")
        raise TokenizerError(f"{self._where()}: no eos token; set eos_token in tokenizer_config.json")

    def _check_ids(self) -> None:
        where = self._where()
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

    def special_tokens(self) -> SpecialTokens:
        """The ids samplers need. DreamOn's delete token: `<|delete|>` when the vocabulary has one,
        else eos (DreamOn's generation config names it; it could not be read offline)."""
        expand = self.token_to_id(EXPAND_TOKEN)
        delete = self.token_to_id(DELETE_TOKEN)
        return SpecialTokens(mask=self.mask_token_id, eos=self.eos_token_id, pad=self.pad_token_id,
                             bos=self.bos_token_id, stops=self.stop_token_ids, expand=expand,
                             delete=self.eos_token_id if delete is None else delete)

    # ---- text -------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in it are recognised, none added."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special)

    def token_text(self, tid: int) -> str:
        """What one token prints as (decoded bytes, special tokens as their text)."""
        return self._tok.decode([tid], skip_special_tokens=False)

    def apply_chat_template(self, messages: Sequence[Any], add_generation_prompt: bool = True) -> str:
        """Render the checkpoint's chat template (sandboxed) for `messages` [{role, content}]."""
        if not self.chat_template:
            raise TokenizerError(f"{self._where()}: the checkpoint has no chat template; "
                                 "add chat_template.jinja or use a raw prompt")
        special = {k: _token_text(self.config.get(k)) or "" for k in SPECIAL_KEYS}
        msgs = [m.as_dict() if hasattr(m, "as_dict") else dict(m) for m in messages]
        try:
            return _compile(self.chat_template).render(
                messages=msgs, add_generation_prompt=add_generation_prompt, **special)
        except Exception as exc:  # jinja2 errors, raise_exception(), sandbox violations
            raise TokenizerError(f"{self._where()}: the chat template failed: {exc}") from None


# ---- helpers ------------------------------------------------------------------------------

def _load_tokenizer_json(path: Path) -> Any:
    from tokenizers import Tokenizer as Backend

    try:
        return Backend.from_file(str(path))
    except Exception as exc:
        raise TokenizerError(f"{path}: not a valid tokenizer file ({exc}); re-download it") from None


def _load_vocab_merges(folder: Path, added: Mapping[int, tuple[str, bool]]) -> Any:
    """A Qwen2 byte-level BPE from vocab.json + merges.txt (as Qwen2TokenizerFast builds it)."""
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    vocab = {k: int(v) for k, v in read_json(folder / "vocab.json", TokenizerError).items()}
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


def _register_added(backend: Any, added: Mapping[int, tuple[str, bool]], folder: Path) -> None:
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


_COMPILED: dict[str, Any] = {}


def _compile(template: str) -> Any:
    if template not in _COMPILED:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise ValueError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
        _COMPILED[template] = env.from_string(template)
    return _COMPILED[template]
