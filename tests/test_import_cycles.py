"""The package's modules import each other in one direction only.

Every ``import`` of a ``harness`` module counts, including the ones inside
functions and under ``if TYPE_CHECKING:``: a deferred or type-only import still
ties two modules together, it only hides the cycle from the interpreter.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import harness

ROOT = Path(harness.__file__).resolve().parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _known_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The harness module ``name`` refers to (``a.b.c`` may be ``a.b``'s
    attribute c); ``pkg:name`` is ``from pkg import name``."""
    if ":" in name:
        prefix, _, attr = name.partition(":")
        return f"{prefix}.{attr}" if f"{prefix}.{attr}" in known else _resolve(prefix, known)
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.module, self.is_package = module, is_package
        self.found: set[str] = set()

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.module.split(".")
            if not self.is_package:
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        for alias in node.names:
            # ``from pkg import mod`` names a submodule; ``from pkg import name``
            # names the package itself: the resolver decides which.
            self.found.add(f"{prefix}:{alias.name}")


def import_graph() -> dict[str, set[str]]:
    known = _known_modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        visitor = _Imports(name, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        targets = {_resolve(t, known) for t in visitor.found if t.startswith("harness")}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_finder_sees_a_cycle() -> None:
    """The walker itself can fail: a two-module cycle is found."""
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_sees_function_level_imports(tmp_path: Path) -> None:
    tree = ast.parse("def f():\n    from harness.results import CellResult\n")
    visitor = _Imports("harness.x", False)
    visitor.visit(tree)
    assert "harness.results:CellResult" in visitor.found
    assert _resolve("harness.results:CellResult", _known_modules()) == "harness.results"
    assert _resolve("harness.matrix:load", _known_modules()) == "harness.matrix.load"


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    if cycle:
        pytest.fail("import cycle: " + " -> ".join(cycle))
