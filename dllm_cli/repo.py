"""The git repository around the work: the only module that uses GitPython.

Knows: the work tree containing a directory, its git dir (a worktree's or submodule's `.git`
file is followed), which files are tracked or untracked-but-not-ignored, `.gitignore`, a
content search over those files (`git grep`), `git commit` of exactly a patch's files, which of
them hold changes git has not committed (`uncommitted`, for --commit's check), and whether a
commit is still on the branch (`is_ancestor`, for the revert by `dllm undo`).
GitPython is imported inside the functions so `dllm --help` never pays for it.
Must not: import torch, draw on a terminal, or write files other than through git.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .errors import DllmError


def find_root(start: Path | str = ".") -> Path | None:
    """The git work tree containing `start`, or None outside a repository."""
    import git

    try:
        repo = git.Repo(Path(start).resolve(), search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None
    if repo.bare or repo.working_tree_dir is None:
        return None
    return Path(repo.working_tree_dir).resolve()


def work_root(cwd: Path | None = None) -> Path:
    """The git work tree containing `cwd` (default: the current directory), else `cwd` itself."""
    here = (cwd or Path.cwd()).resolve()
    return find_root(here) or here


def listed_files(root: Path) -> list[str]:
    """Tracked plus untracked-but-not-ignored files (git's own .gitignore logic), regular files only."""
    import git

    out = git.Repo(root).git.ls_files("-z", "--cached", "--others", "--exclude-standard")
    paths = sorted({p for p in out.split("\0") if p})
    return [p for p in paths if (root / p).is_file() and not (root / p).is_symlink()]


def is_ignored(root: Path, rel: str) -> bool:
    import git

    try:
        return bool(git.Repo(root).ignored(rel))
    except git.GitCommandError:
        return False


def grep_files(root: Path, pattern: str, globs: Sequence[str] = ()) -> list[str]:
    """Files (tracked, and untracked but not ignored) whose text matches the extended regular
    expression `pattern`, found by `git grep` without reading them in Python; [] when none."""
    import git

    args = ["-l", "-I", "-E", "--untracked", "-e", pattern, "--", *globs]
    try:
        out = git.Repo(root).git.grep(*args)
    except git.GitCommandError as err:
        if err.status == 1:  # git grep: no match
            return []
        raise DllmError(f"git grep failed in {root}: {(err.stderr or '').strip() or err}") from None
    return sorted(p for p in out.splitlines() if p)


def git_dir(root: Path) -> Path | None:
    """The git dir of the repository holding `root`; a `.git` file (worktree, submodule) is followed."""
    here = Path(os.path.realpath(root))
    for folder in (here, *here.parents):
        dot = folder / ".git"
        if dot.is_dir():
            return dot
        if dot.is_file():
            text = dot.read_text(encoding="utf-8", errors="replace").strip()
            if text.startswith("gitdir:"):
                target = Path(text[len("gitdir:"):].strip())
                return Path(os.path.realpath(folder / target))
    return None


def commit(root: Path, present: Sequence[str], gone: Sequence[str], message: str) -> str:
    """Commit exactly these paths (relative to `root`; `present` files exist, `gone` ones were
    deleted); other staged changes stay staged. Returns the new commit's sha."""
    import git

    try:
        repo = git.Repo(root, search_parent_directories=True)
        top = Path(os.path.realpath(repo.working_tree_dir or root))
        base = Path(os.path.realpath(root))
        add = [os.path.relpath(base / p, top) for p in present]
        rm = [r for r in (os.path.relpath(base / p, top) for p in gone) if repo.git.ls_files("--", r)]
        if add:
            repo.git.add("--", *add)
        if not add and not rm:
            raise DllmError("nothing to commit: the patch only touched files git does not track")
        repo.git.commit("--only", "-m", message, "--", *add, *rm)
        return str(repo.head.commit.hexsha)
    except git.GitCommandError as err:
        detail = (err.stderr or str(err)).strip().splitlines()
        raise DllmError(f"git commit failed: {detail[-1] if detail else err}; the files are changed but "
                        "not committed") from None
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise DllmError(f"--commit needs a git repository, and {root} is not in one") from None


def uncommitted(root: Path, paths: Sequence[str]) -> list[tuple[str, str]]:
    """(path, what) for each of `paths` (relative to `root`) whose content in the work tree or the
    index differs from HEAD, that git does not track yet, or that it ignores: what `git commit`
    of those paths would take besides dllm's own change. DllmError outside a repository."""
    import git

    try:
        repo = git.Repo(root, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise DllmError(f"--commit needs a git repository, and {root} is not in one") from None
    top = Path(os.path.realpath(repo.working_tree_dir or root))
    base = Path(os.path.realpath(root))
    rels = {os.path.relpath(base / p, top): p for p in paths}
    out = repo.git.status("--porcelain=v1", "-z", "--ignored=matching", "--untracked-files=all",
                          "--", *rels)
    found: list[tuple[str, str]] = []
    entries = out.split("\0")
    i = 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if len(entry) < 4:
            continue
        code, name = entry[:2], entry[3:]
        if code[0] in "RC":
            i += 1  # a rename's or copy's source path follows
        what = ("not tracked by git" if code == "??" else "ignored by git" if code == "!!" else
                "staged changes" if code[1] == " " else "uncommitted changes")
        if name in rels:
            found.append((rels[name], what))
    return found


def is_ancestor(root: Path, sha: str) -> bool:
    """Whether commit `sha` is HEAD or one of its ancestors (False when unknown)."""
    import git

    try:
        repo = git.Repo(root, search_parent_directories=True)
        return bool(repo.is_ancestor(repo.commit(sha), repo.head.commit))
    except (git.GitCommandError, git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
        return False


def commit_subject(root: Path, sha: str) -> str:
    """The first line of commit `sha`'s message ("" when unknown)."""
    import git

    try:
        return str(git.Repo(root, search_parent_directories=True).commit(sha).summary)
    except (git.GitCommandError, git.InvalidGitRepositoryError, git.NoSuchPathError, ValueError):
        return ""
