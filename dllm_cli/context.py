"""What dllm sends the model besides the task: repository files (and piped stdin's budget).

Knows: the `Tree` of files dllm may read (the work tree's tracked and untracked-but-not-ignored
files, each read at most once per run and shared by every step that needs it), how to rank files
against the prompt, the token budget, the secrets filter, and which files an anchored edit may
rewrite (`source_files`). Tokens are counted with a callable passed in (the model's tokenizer),
so this module never loads a model. Git questions go through repo.py.
Secrets: files that are secret by name (`is_secret`) are never read; every other file (and piped
stdin) is read through files.py (regular files only: a FIFO, socket or device is refused before
it is opened; at most MAX_FILE_BYTES) and its secrets are redacted in place by redact.py, so the
file still gives context; each redaction is reported (`Context.redactions`, a note per file).
Must not: import torch or GitPython, touch the terminal, read a file the secrets filter refuses,
or send a secret redact.py finds.

Order of selection: explicit paths (command-line arguments), then `@path` mentions in the
prompt, then tracked files ranked by relevance, each while it fits the budget. Outside a
git repository only explicitly named files are sent (there is nothing to rank safely).
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Sequence

from . import repo
from .errors import UsageError
from .files import Unreadable, not_regular, read_regular
from .prompt import format_file
from .redact import Finding, redact

MAX_FILE_BYTES = 256 * 1024  # a bigger file is "huge": never sent
MAX_RANKED_FILES = 5000  # ranking reads at most this many tracked files
MAX_RANKED_BYTES = 32 * 1024 * 1024  # ... and at most this much text in all
BINARY_SNIFF_BYTES = 8192

# Secret file names, matched on the lower-cased base name (fnmatch syntax).
SECRET_NAMES = (
    ".env", ".env.*", "*.env", ".envrc", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks",
    "*.keystore", "*.kdbx", ".netrc", "_netrc", ".git-credentials", "credentials*",
    ".npmrc", ".pypirc", ".pgpass", ".htpasswd", "*.asc", "*.gpg", "*.ppk", "secrets.*",
    "kubeconfig", "kubeconfig.*", "*.kubeconfig",
)
SECRET_DIRS = (".ssh", ".gnupg", ".aws", ".kube")
SSH_KEY_NAME = re.compile(r"^id_[a-z0-9_]+(\.pub)?$")  # id_rsa, id_ed25519(.pub), ...

WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MENTION = re.compile(r"(?<![\w@])@([\w./~-]+)")
STOP_WORDS = frozenset(
    "a an and are as at be but by can do does for from has have how i in into is it its "
    "make me my new no not of on or our so some that the their them then this to use "
    "was we when where which while with without you your add fix change update file "
    "files code function functions method class please should would could all".split()
)


@dataclass(frozen=True)
class ContextFile:
    """One file as sent: repository-relative `path` ("/" separators), its text, the
    tokens it costs in the prompt (path line and fences included), and why it was picked."""

    path: str
    text: str
    tokens: int
    reason: str  # "named" | "mentioned" | "relevant (score 3.2)"


@dataclass(frozen=True)
class Skipped:
    """A file that was considered and not sent, with the reason shown to the user. `ranked`:
    found by ranking (not named or @mentioned), so only worth a count on stderr."""

    path: str
    reason: str
    ranked: bool = False


@dataclass(frozen=True)
class Redaction:
    """A secret found by content in a sent file (or "(stdin)") and replaced by its marker."""

    path: str
    line: int
    kind: str


def redaction_note(path: str, found: Sequence[Redaction]) -> str:
    """One line for the user: "redacted 2 secrets in config.py (aws-access-key-id line 3, ...)"."""
    what = ", ".join(f"{r.kind} line {r.line}" for r in found)
    return f"redacted {len(found)} secret{'' if len(found) == 1 else 's'} in {path} ({what})"


@dataclass(frozen=True)
class Context:
    root: Path  # the work tree (or the current directory outside git)
    in_git: bool
    files: tuple[ContextFile, ...]
    stdin_text: str | None
    stdin_tokens: int
    budget: int  # tokens available for files + stdin
    skipped: tuple[Skipped, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())  # e.g. "stdin cut to 64 KiB"
    redactions: tuple["Redaction", ...] = field(default=())  # secrets replaced in what is sent

    @property
    def tokens(self) -> int:
        return sum(f.tokens for f in self.files) + self.stdin_tokens

    def without_last_ranked(self, why: str) -> "Context | None":
        """This context with its last ranked file moved to `skipped` (None: no ranked file left)."""
        for i in range(len(self.files) - 1, -1, -1):
            f = self.files[i]
            if f.reason.startswith("relevant"):
                gone = [r for r in self.redactions if r.path == f.path]
                note = redaction_note(f.path, gone) if gone else None
                return replace(self, files=self.files[:i] + self.files[i + 1:],
                               skipped=self.skipped + (Skipped(f.path, why, True),),
                               redactions=tuple(r for r in self.redactions if r.path != f.path),
                               notes=tuple(n for n in self.notes if n != note))
        return None

    def report_lines(self) -> list[str]:
        """What stderr says about the selection: the notes, one line per skipped file the user
        named or mentioned (secret, binary, ignored, ...), and one line per reason for the ranked
        files left out ("12 relevant files not sent: over the token budget")."""
        lines = list(self.notes)
        lines += [f"not sent: {s.path} ({s.reason})" for s in self.skipped if not s.ranked]
        kinds = Counter(s.reason.split(" (", 1)[0] for s in self.skipped if s.ranked)
        for kind, n in kinds.items():
            lines.append(f"{n} relevant file{'' if n == 1 else 's'} not sent: {kind}; "
                         "--show-context lists them")
        return lines


# ---- the files dllm may read ---------------------------------------------------------------

class Tree:
    """The work tree of one run: its root, whether it is a git repository, its listed files, and
    every file read so far (each file is read at most once, whoever asks)."""

    def __init__(self, root: Path, in_git: bool, cwd: Path | None = None) -> None:
        self.root, self.in_git = root, in_git
        self.cwd = cwd or root
        self._listed: list[str] | None = None
        self._listed_set: frozenset[str] | None = None
        self._texts: dict[str, tuple[str | None, str]] = {}
        self._found: dict[str, tuple[Finding, ...]] = {}

    @classmethod
    def open(cls, cwd: Path | str = ".") -> "Tree":
        """The git work tree containing `cwd`, else `cwd` itself (named files only)."""
        here = Path(cwd).resolve()
        root = repo.find_root(here)
        return cls(root or here, root is not None, here)

    @property
    def listed(self) -> list[str]:
        """Tracked plus untracked-but-not-ignored files ([] outside git)."""
        if self._listed is None:
            self._listed = repo.listed_files(self.root) if self.in_git else []
        return self._listed

    def is_listed(self, rel: str) -> bool:
        if self._listed_set is None:
            self._listed_set = frozenset(self.listed)
        return rel in self._listed_set

    def ignored(self, rel: str) -> bool:
        """Ignored by .gitignore (a listed file never is)."""
        return self.in_git and not self.is_listed(rel) and repo.is_ignored(self.root, rel)

    def read(self, rel: str) -> tuple[str | None, str]:
        """(text with its secrets redacted, "") for a sendable file, else (None, why not); read
        once, then remembered."""
        if rel not in self._texts:
            text, why, found = read_file(self.root / rel)
            self._texts[rel], self._found[rel] = (text, why), found
        return self._texts[rel]

    def redactions(self, rel: str) -> tuple[Finding, ...]:
        """The secrets redacted in `rel`'s text as `read` returns it (read first)."""
        return self._found.get(rel, ())

    def grep(self, pattern: str, globs: Sequence[str]) -> list[str]:
        """Listed files whose text matches `pattern` (git grep: no file is read here)."""
        return repo.grep_files(self.root, pattern, globs) if self.in_git else []


# ---- filters ---------------------------------------------------------------------------

def is_secret(path: str) -> bool:
    """True for key, credential and environment files, wherever they are (by name)."""
    parts = [p.lower() for p in PurePosixPath(path.replace(os.sep, "/")).parts]
    if not parts:
        return False
    name = parts[-1]
    if any(d in SECRET_DIRS for d in parts[:-1]):
        return True
    if SSH_KEY_NAME.match(name):
        return True
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SECRET_NAMES)


def read_text(path: Path) -> tuple[str | None, str]:
    """(text with its secrets redacted, "") for a sendable file, else (None, why it is not sent)."""
    text, why, _ = read_file(path)
    return text, why


def read_file(path: Path) -> tuple[str | None, str, tuple[Finding, ...]]:
    """(redacted text, "", what was redacted) for a sendable file, else (None, why not, ())."""
    try:
        data = read_regular(path, MAX_FILE_BYTES)
    except Unreadable as exc:
        return None, exc.reason, ()
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})", ()
    if b"\0" in data[:BINARY_SNIFF_BYTES]:
        return None, "binary", ()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "binary (not UTF-8)", ()
    redacted, found = redact(text)
    return redacted, "", found


# ---- ranking -----------------------------------------------------------------------------

def prompt_words(prompt: str) -> set[str]:
    """Lower-cased identifiers and their snake/camel parts, minus stop words."""
    words: set[str] = set()
    for ident in WORD.findall(prompt):
        pieces = [ident] + re.split(r"_+|(?<=[a-z0-9])(?=[A-Z])", ident)
        words.update(p.lower() for p in pieces if len(p) >= 3)
    return words - STOP_WORDS


def mentions(prompt: str) -> list[str]:
    """`@path` mentions, trailing punctuation removed ("see @src/a.py." -> "src/a.py")."""
    return [m.rstrip(".,:;!?)]}'\"") for m in MENTION.findall(prompt)]


def rank(words: set[str], texts: dict[str, str]) -> list[tuple[float, str]]:
    """(score, path), best first; score = idf-weighted word overlap, path matches x3."""
    if not words:
        return []
    vocab = {path: {w.lower() for w in WORD.findall(text)} for path, text in texts.items()}
    for seen in vocab.values():
        seen.update(p.lower() for ident in list(seen) for p in ident.split("_") if len(p) >= 3)
    df = Counter(w for seen in vocab.values() for w in words & seen)
    n = len(texts)
    scored = []
    for path, seen in vocab.items():
        path_words = {p.lower() for p in re.split(r"[^A-Za-z0-9]+", path) if p}
        score = sum(math.log(1 + n / df[w]) for w in words & seen)
        score += 3 * sum(math.log(1 + n / max(df[w], 1)) for w in words & path_words)
        if score > 0:
            scored.append((round(score, 1), path))
    scored.sort(key=lambda sp: (-sp[0], len(texts[sp[1]]), sp[1]))
    return scored


# ---- selection ----------------------------------------------------------------------------

MAX_RANKED = 5  # ranked (not named) files sent at most: a long prompt slows every forward


def gather(prompt: str, paths: Sequence[str] = (), *, count_tokens: Callable[[str], int],
           budget: int, stdin_text: str | None = None, tree: Tree | None = None,
           cwd: Path | str = ".", notes: Iterable[str] = ()) -> Context:
    """Pick the files (and stdin) to send for `prompt`, within `budget` tokens.

    `paths` are relative to the tree's cwd (files or directories); `tree` defaults to
    Tree.open(cwd). A named file that does not fit the budget is a UsageError; a named secret,
    binary, huge or ignored file is skipped with its reason (never sent)."""
    tree = tree or Tree.open(cwd)
    sel = _Selection(tree, count_tokens, budget, list(notes))
    if stdin_text:
        sel.add_stdin(stdin_text)
    for raw in paths:
        for rel in sel.expand(raw, strict=True):
            sel.add(rel, "named", strict=True)
    for raw in mentions(prompt):
        for rel in sel.expand(raw, strict=False):
            sel.add(rel, "mentioned", strict=True)
    if tree.in_git:
        sel.add_ranked(prompt_words(prompt))
    return sel.context()


def named_files(prompt: str, paths: Sequence[str], tree: Tree) -> list[str]:
    """The files `paths` and the prompt's @mentions name (directories expanded), in order."""
    sel = _Selection(tree, lambda text: 0, 0, [])
    wanted = [rel for raw in paths for rel in sel.expand(raw, strict=True)]
    wanted += [rel for raw in mentions(prompt) for rel in sel.expand(raw, strict=False)]
    return list(dict.fromkeys(wanted))


def source_files(rels: Iterable[str], tree: Tree, suffixes: tuple[str, ...] = (".py",)) -> list[tuple[str, str]]:
    """(path, text) of the files among `rels` an anchored edit may rewrite, whatever their size in
    tokens: only `suffixes`; secret, ignored, binary and huge files are left out, as for the prompt,
    and so are files with a secret redacted (their text is not the file's: rewriting it from the
    redacted text would destroy the secret)."""
    out: list[tuple[str, str]] = []
    total = 0
    for rel in rels:
        if not rel.endswith(suffixes) or is_secret(rel) or tree.ignored(rel):
            continue
        text, _ = tree.read(rel)
        if text is not None and not tree.redactions(rel):
            out.append((rel, text))
            total += len(text)
            if total > MAX_RANKED_BYTES:
                break
    return out


class _Selection:
    """The running choice of files: what is in, what was skipped, tokens left."""

    def __init__(self, tree: Tree, count: Callable[[str], int], budget: int, notes: list[str]) -> None:
        self.tree, self.count, self.budget = tree, count, budget
        self.left = budget
        self.files: list[ContextFile] = []
        self.skipped: list[Skipped] = []
        self.seen: set[str] = set()
        self.notes = notes
        self.stdin_text: str | None = None
        self.stdin_tokens = 0
        self.redactions: list[Redaction] = []

    def redacted(self, path: str, found: Sequence[Finding]) -> None:
        if found:
            rows = [Redaction(path, f.line, f.kind) for f in found]
            self.redactions += rows
            self.notes.append(redaction_note(path, rows))

    def add_stdin(self, text: str) -> None:
        text, found = redact(text)
        tokens = self.count(f"stdin\n```\n{text}\n```\n") + 1
        if tokens > self.left:
            raise UsageError(f"piped input is {tokens} tokens but only {self.left} fit the model's "
                             "context; pipe less, or lower --gen-length")
        self.stdin_text, self.stdin_tokens = text, tokens
        self.left -= tokens
        self.redacted("(stdin)", found)

    def expand(self, raw: str, *, strict: bool) -> list[str]:
        """Repository-relative files named by `raw` (a file, or a directory's files)."""
        root, in_git = self.tree.root, self.tree.in_git
        target = Path(os.path.normpath(self.tree.cwd / Path(raw).expanduser()))
        real = target.resolve()
        if not _inside(target, root) or not _inside(real, root):
            if strict:
                raise UsageError(f"{raw}: outside the {'repository' if in_git else 'current directory'} "
                                 f"{root}; name files inside it")
            return []
        if not target.exists():
            if strict:
                raise UsageError(f"{raw}: no such file; check the path (relative to {self.tree.cwd})")
            return []
        rel = target.relative_to(root).as_posix()
        if ".git" in PurePosixPath(rel).parts:
            self.skipped.append(Skipped(rel, "inside .git: never sent"))
            return []
        if target.is_file():
            return [rel]
        other = not_regular(target)
        if other and other != "a directory":
            self.skipped.append(Skipped(rel, f"{other}, not a regular file: never read"))
            return []
        if in_git:
            prefix = "" if rel == "." else rel + "/"
            return [p for p in self.tree.listed if p.startswith(prefix)]
        return sorted(p.relative_to(root).as_posix() for p in target.rglob("*")
                      if p.is_file() and not any(s.startswith(".") for s in p.relative_to(root).parts))

    def add(self, rel: str, reason: str, *, strict: bool) -> None:
        """Send `rel` if it may be sent and fits. `strict`: the user named or mentioned it (a
        skip is reported by name); otherwise it was ranked (a skip is only counted)."""
        if rel in self.seen:
            return
        self.seen.add(rel)
        ranked = not strict
        if is_secret(rel):
            self.skipped.append(Skipped(rel, "secret: never sent", ranked))
            return
        if self.tree.ignored(rel):
            self.skipped.append(Skipped(rel, "ignored by .gitignore", ranked))
            return
        text, why = self.tree.read(rel)
        if text is None:
            self.skipped.append(Skipped(rel, why, ranked))
            return
        tokens = self.count(format_file(rel, text)) + 1
        if tokens > self.left:
            if strict and reason == "named":
                raise UsageError(f"{rel}: {tokens} tokens do not fit the {self.left} left in the model's "
                                 "context; name a smaller file, or lower --gen-length")
            self.skipped.append(Skipped(rel, f"over the token budget ({tokens} > {self.left} left)", ranked))
            return
        self.files.append(ContextFile(rel, text, tokens, reason))
        self.left -= tokens
        self.redacted(rel, self.tree.redactions(rel))

    def add_ranked(self, words: set[str]) -> None:
        texts: dict[str, str] = {}
        total = 0
        for rel in self.tree.listed[:MAX_RANKED_FILES]:
            if rel in self.seen or is_secret(rel):
                continue
            text, _ = self.tree.read(rel)
            if text is not None:
                texts[rel] = text
                total += len(text)
                if total > MAX_RANKED_BYTES:
                    break
        added = 0
        for score, rel in rank(words, texts):
            if added == MAX_RANKED or self.left <= 0:
                break
            before = len(self.files)
            self.add(rel, f"relevant (score {score})", strict=False)
            added += len(self.files) - before

    def context(self) -> Context:
        return Context(self.tree.root, self.tree.in_git, tuple(self.files), self.stdin_text, self.stdin_tokens,
                       self.budget, tuple(self.skipped), tuple(self.notes), tuple(self.redactions))


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True
