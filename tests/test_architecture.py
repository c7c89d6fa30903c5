"""The import contracts of docs/architecture.md, read from the source with `ast` (no import runs):

- only `engine/` (and `train/`, the separate training program) import torch at module level;
- `engine/` imports nothing that draws on a terminal or touches git (rich, typer, prompt_toolkit,
  GitPython, and dllm's own ui / render / cli / pipeline / review / context / repo modules);
- GitPython is imported by repo.py only; transformers by nothing in dllm_cli;
- nothing imports `cli` (but `__main__`); nothing outside `train/` imports `train/`;
- no import cycles among dllm's modules (imports inside functions count; `if TYPE_CHECKING:`
  imports do not: they never run);
- every module opens with a docstring that says what it knows and what it must not do.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dllm_cli"
TERMINAL_OR_GIT = ("rich", "typer", "click", "prompt_toolkit", "git", "dllm_cli.ui", "dllm_cli.render",
                   "dllm_cli.cli", "dllm_cli.pipeline", "dllm_cli.review", "dllm_cli.context", "dllm_cli.repo")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for _ in range(node.level - 1):
            package = package.rsplit(".", 1)[0]
        base = f"{package}.{node.module}" if node.module else package
    names = [f"{base}.{a.name}" for a in node.names]
    return [n for n in names if n in MODULES] or [base]  # `from . import x`: x is a module


def imports(module: str) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import that can run."""
    path = MODULES[module]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, top)
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                found.extend((name, top) for name in _resolve(module, path, child))
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8")), True)
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


GRAPH = {m: imports(m) for m in MODULES}


def test_the_package_is_scanned():
    assert {"dllm_cli.cli", "dllm_cli.engine.loader", "dllm_cli.engine.sampler", "dllm_cli.catalog"} <= set(MODULES)
    assert ("torch", True) in GRAPH["dllm_cli.engine.sampler"]
    assert ("dllm_cli.pipeline", False) in GRAPH["dllm_cli.cli"]  # lazy imports are seen too


def test_only_the_engine_imports_torch_at_module_level():
    offenders = [(m, name) for m, found in GRAPH.items() for name, top in found
                 if top and _under(name, "torch") and not _under(m, "dllm_cli.engine")
                 and not _under(m, "dllm_cli.train")]
    assert offenders == []


def test_the_engine_draws_nothing_and_touches_no_git():
    offenders = [(m, name) for m, found in GRAPH.items() if _under(m, "dllm_cli.engine")
                 for name, _ in found if any(_under(name, t) for t in TERMINAL_OR_GIT)]
    assert offenders == []


def test_gitpython_only_in_repo_and_no_transformers():
    git_users = {m for m, found in GRAPH.items() for name, _ in found if _under(name, "git")}
    assert git_users == {"dllm_cli.repo"}
    assert not [m for m, found in GRAPH.items() for name, _ in found if _under(name, "transformers")]


def test_nothing_imports_cli_and_only_train_imports_train():
    cli_users = {m for m, found in GRAPH.items() for name, _ in found if _under(name, "dllm_cli.cli")}
    assert cli_users <= {"dllm_cli.__main__"}
    train_users = {m for m, found in GRAPH.items() for name, _ in found
                   if _under(name, "dllm_cli.train") and not _under(m, "dllm_cli.train")}
    assert train_users == set()


def test_no_import_cycles():
    edges = {m: sorted({n for n, _ in found if n in MODULES and n != m}) for m, found in GRAPH.items()}
    state: dict[str, int] = {}
    path: list[str] = []
    cycles: list[list[str]] = []

    def walk(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in edges[m]:
            if state.get(n) == 1 and not _package_of(m, n):
                cycles.append(path[path.index(n):] + [n])
            elif n not in state:
                walk(n)
        path.pop()
        state[m] = 2

    for m in edges:
        if m not in state:
            walk(m)
    assert cycles == []


def _package_of(m: str, n: str) -> bool:
    """A package's __init__ importing its own submodule (and that submodule the package) is how
    Python packages work, not a design cycle."""
    return _under(m, n) or _under(n, m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_says_what_it_knows_and_must_not(module):
    doc = ast.get_docstring(ast.parse(MODULES[module].read_text(encoding="utf-8")))
    assert doc, f"{module} has no module docstring"
    if module in ("dllm_cli", "dllm_cli.__main__") or module.endswith(("engine", "layouts", "train")):
        return  # entry points and package indexes: a line says what they hold
    text = " ".join(doc.split()).lower()
    assert "must not" in text, f"{module}'s docstring does not say what it must not do"
