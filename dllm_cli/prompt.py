"""The instruction dllm sends: context files, piped stdin, the task, and the answer format.

Knows: the wording of the request and the edit formats the model is asked to produce
(the same formats `edits.py` parses and the embedded default model is trained on).
Produces chat messages; the checkpoint's own chat template (tokenizer.py) turns them
into text. Must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

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
    path: str  # repository-relative, "/" separators
    text: str


@dataclass(frozen=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


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
