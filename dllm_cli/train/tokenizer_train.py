"""Train the byte-level BPE tokenizer of the embedded model and write its checkpoint files.

Knows: the special tokens the engine expects (<|endoftext|> = eos = pad, <|mask|>, <|im_start|>,
<|im_end|>), the ChatML template `dllm code` is answered in, and the files a checkpoint folder
holds for its tokenizer (tokenizer.json, tokenizer_config.json, chat_template.jinja; no auto_map).
Must not: import torch, train the model.

Byte-level BPE with GPT-2 style pre-tokenisation keeps runs of spaces (indentation) as their own
tokens, which suits Python.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

EOS = "<|endoftext|>"
MASK = "<|mask|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOS, MASK, IM_START, IM_END]  # ids 0..3 in this order

# ChatML, as Qwen2/Dream: every turn `<|im_start|>{role}\n{content}<|im_end|>\n`.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_bpe(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2):
    """A `tokenizers.Tokenizer` (byte-level BPE) trained on `texts`; special tokens get ids 0..3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def tokenizer_config(model_max_length: int) -> dict:
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for i, t in enumerate(SPECIAL_TOKENS)}
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": None,
        "eos_token": EOS,
        "pad_token": EOS,
        "mask_token": MASK,
        "additional_special_tokens": [IM_START, IM_END],
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }


def save_tokenizer(tok, out: Path, model_max_length: int = 2048) -> None:
    """tokenizer.json + tokenizer_config.json + chat_template.jinja into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(model_max_length), indent=1))
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)


def load_tokenizer(folder: Path):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))


def sample_texts(docs: list[dict], every: int = 1) -> Iterator[str]:
    """Every `every`-th file of the corpus (deterministic) for tokenizer training."""
    for i, d in enumerate(docs):
        if i % every == 0:
            yield d["text"]
