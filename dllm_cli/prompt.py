"""The instruction dllm sends: context files, piped stdin, the task, the answer format, and the
token budget measured on the real chat-templated prompt.

Knows: the wording of the request and the edit formats the model is asked to produce (the same
formats `edits.py` parses and the embedded default model is trained on); chat messages, which
the checkpoint's own chat template (tokenizer.py) turns into text; how many tokens the files may
take (`file_budget`) and the final encoding (`encode_chat`), which drops ranked files until the
templated prompt itself fits. Must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Protocol

from .errors import UsageError
from .events import Message

if TYPE_CHECKING:
    from .context import Context
    from .tokenizer import Tokenizer

SYSTEM_PROMPT = (
    "You are dllm, a coding assistant. Answer only with edits. To change a file, write its "
    "path on one line, then a block:\n"
    "<<<<<<< SEARCH\n(exact lines from the file)\n=======\n(the new lines)\n>>>>>>> REPLACE\n"
    "To create a file, write its path on one line, then the whole file in a fenced code block."
)

SEARCH_MARK = "<<<<<<< SEARCH"
DIVIDER_MARK = "======="
REPLACE_MARK = ">>>>>>> REPLACE"


class HasPathAndText(Protocol):
    @property
    def path(self) -> str: ...  # repository-relative, "/" separators

    @property
    def text(self) -> str: ...


def fence_for(text: str) -> str:
    """A backtick fence longer than any run of backticks inside `text`."""
    longest = run = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return "`" * max(3, longest + 1)


def language_of(path: str) -> str:
    suffix = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    return {"py": "python", "js": "javascript", "ts": "typescript", "rs": "rust", "go": "go",
            "sh": "bash", "md": "markdown", "json": "json", "toml": "toml", "yml": "yaml",
            "yaml": "yaml", "c": "c", "h": "c", "cpp": "cpp", "java": "java"}.get(suffix, "")


def format_file(path: str, text: str) -> str:
    fence = fence_for(text)
    body = text if text.endswith("\n") or not text else text + "\n"
    return f"{path}\n{fence}{language_of(path)}\n{body}{fence}\n"


def user_message(task: str, files: Iterable[HasPathAndText] = (), stdin_text: str | None = None) -> str:
    """The user turn: files first, then piped input, then the task."""
    parts = [format_file(f.path, f.text) for f in files]
    if stdin_text:
        fence = fence_for(stdin_text)
        body = stdin_text if stdin_text.endswith("\n") else stdin_text + "\n"
        parts.append(f"stdin\n{fence}\n{body}{fence}\n")
    parts.append(f"Task: {task.strip()}\n")
    return "\n".join(parts)


def build_messages(task: str, files: Iterable[HasPathAndText] = (), stdin_text: str | None = None,
                   system: str | None = SYSTEM_PROMPT) -> list[Message]:
    messages = [Message("system", system)] if system else []
    messages.append(Message("user", user_message(task, files, stdin_text)))
    return messages


def search_replace(path: str, search: str, replace: str) -> str:
    """One SEARCH/REPLACE edit in the answer format (used to synthesise training answers)."""
    def block(text: str) -> str:
        return text if text.endswith("\n") or not text else text + "\n"
    return f"{path}\n{SEARCH_MARK}\n{block(search)}{DIVIDER_MARK}\n{block(replace)}{REPLACE_MARK}\n"


# ---- the token budget ----------------------------------------------------------------------

@dataclass(frozen=True)
class ChatPrompt:
    """The request as sent: its messages, their chat-templated encoding, and the context in it."""

    messages: tuple[Message, ...]
    ids: tuple[int, ...]
    context: "Context"


def encoded_length(tokenizer: "Tokenizer", messages: Iterable[Message]) -> int:
    return len(tokenizer.encode(tokenizer.apply_chat_template(list(messages))))


def file_budget(tokenizer: "Tokenizer", task: str, context_length: int, gen_length: int) -> int:
    """Tokens the files and stdin may take: the model's context − the templated prompt without
    them − gen_length (an estimate per file; `encode_chat` measures the whole)."""
    overhead = encoded_length(tokenizer, build_messages(task))
    budget = context_length - overhead - gen_length
    if budget < 0:
        raise UsageError(f"the prompt and --gen-length {gen_length} do not fit the model's "
                         f"{context_length}-token context; shorten the prompt or lower --gen-length")
    return budget


def encode_chat(tokenizer: "Tokenizer", task: str, ctx: "Context", limit: int) -> ChatPrompt:
    """Build the messages, apply the chat template and encode, once per try: while the encoded
    prompt is over `limit` tokens (joins can merge differently than files counted alone), drop
    the last ranked file; over the limit with none left is a UsageError."""
    while True:
        messages = tuple(build_messages(task, ctx.files, ctx.stdin_text))
        ids = tuple(tokenizer.encode(tokenizer.apply_chat_template(list(messages))))
        if len(ids) <= limit:
            return ChatPrompt(messages, ids, ctx)
        smaller = ctx.without_last_ranked(f"over the token budget (the prompt is {len(ids)} > {limit})")
        if smaller is None:
            raise UsageError(f"the prompt is {len(ids)} tokens but {limit} fit beside --gen-length; "
                             "name fewer or smaller files, or lower --gen-length")
        ctx = smaller
