"""The package's shape: folders are concepts, few top-level modules, no import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "rlsparse_lib"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> rlsparse modules it imports anywhere in its body (function-local included)."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    compiled = {_module_name(p.with_suffix(".py")) for p in PKG.rglob("*.pyx")}  # C extensions
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # imports for annotations only (``if TYPE_CHECKING:``) never run, so they make no cycle
        typing_only = {
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
            for stmt in block.body
            for n in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".")[: len(mod.split(".")) - node.level + is_pkg]
                    base = ".".join([*anchor, base] if base else anchor)
                # ``from pkg import submodule`` depends on the submodule; ``from pkg import name``
                # on the package
                subs = [
                    f"{base}.{a.name}"
                    for a in node.names
                    if f"{base}.{a.name}" in modules or f"{base}.{a.name}" in compiled
                ]
                targets = subs + ([base] if len(subs) < len(node.names) else [])
            for t in targets:
                if t in modules and t != mod:  # a C extension imports nothing of ours
                    graph[mod].add(t)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*stack[stack.index(n) :], n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle() -> None:
    assert _cycle(_import_graph()) is None, " -> ".join(_cycle(_import_graph()) or [])


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    # a package whose __init__ imports a submodule that imports the package back
    assert _cycle({"p": {"p.a"}, "p.a": {"p"}}) == ["p", "p.a", "p"]


def test_top_level_is_infrastructure_only() -> None:
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert len(top) <= 8, top
    folders = {p.name for p in PKG.iterdir() if (p / "__init__.py").exists()}
    expected = {
        "io",
        "diff",
        "masks",
        "analysis",
        "training",
        "experiments",
        "plotting",
        "cli",
        "patches",
    }
    assert folders == expected


def test_notebooks_import_names_the_library_has() -> None:
    """A moved module or name breaks a notebook only when it runs (minutes); catch it here."""
    import importlib
    import importlib.util
    import json

    notebooks = sorted((PKG.parent / "notebooks").glob("*.ipynb"))
    assert notebooks
    for nb in notebooks:
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        for node in ast.walk(ast.parse(code)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rlsparse_lib"):
                module = importlib.import_module(node.module or "")
                for alias in node.names:
                    assert hasattr(module, alias.name) or importlib.util.find_spec(
                        f"{node.module}.{alias.name}"
                    ), f"{nb.name}: from {node.module} import {alias.name}"
