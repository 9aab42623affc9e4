"""The import graph of the four packages: no cycles, and the arrows of DESIGN.md.

Read with `ast` from the source (nothing is imported), counting imports inside
functions too: a function-level import still makes one module depend on another,
and hiding a cycle in a function body is still a cycle. Imports under
`if TYPE_CHECKING:` exist for annotations only; they count for the arrows but not
for cycles.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("edge_runtime", "partitioner", "transports", "devices")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    typing_only: bool


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, typing_only: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        inner = typing_only or (isinstance(child, ast.If) and _is_type_checking(child))
        yield child, inner
        yield from _walk(child, inner)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _edges(module: str) -> Iterator[Edge]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    for node, typing_only in _walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path.name == "__init__.py", node)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                       for alias in node.names]
        for target in targets:
            while target and target not in MODULES:  # `import a.b.c` of a name inside a.b
                target = target.rpartition(".")[0]
            if target and target != module:
                yield Edge(module, target, getattr(node, "lineno", 0), typing_only)


EDGES = [edge for module in MODULES for edge in _edges(module)]


def _cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for edge in edges:
        if not edge.typing_only:
            graph[edge.source].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def _violations(source_prefix: str, allowed: tuple[str, ...]) -> list[str]:
    return [f"{e.source}:{e.line} imports {e.target}" for e in EDGES
            if (e.source == source_prefix or e.source.startswith(source_prefix + "."))
            and not any(e.target == a or e.target.startswith(a + ".") for a in allowed)]


def test_the_graph_is_read() -> None:
    assert "edge_runtime.sdk.cluster" in MODULES and len(EDGES) > 100


def test_no_import_cycle_anywhere() -> None:
    assert _cycles(EDGES) == []


@pytest.mark.parametrize(("package", "allowed"), [
    ("devices", ("devices",)),
    ("transports", ("transports",)),
    ("partitioner", ("partitioner", "transports.cost")),
    ("edge_runtime.protocol", ("edge_runtime.protocol", "transports", "devices")),
])
def test_design_arrows(package: str, allowed: tuple[str, ...]) -> None:
    assert _violations(package, allowed) == []


def test_the_sdk_never_imports_the_agent() -> None:
    assert [f"{e.source}:{e.line}" for e in EDGES if e.source.startswith("edge_runtime.sdk")
            and e.target.startswith("edge_runtime.agent")] == []


def test_a_planted_cycle_would_be_found() -> None:
    """The checker itself: one edge back from errors to wire closes a cycle."""
    planted = Edge("transports.errors", "transports.wire", 1, False)
    assert any({"transports.errors", "transports.wire"} <= set(cycle)
               for cycle in _cycles([*EDGES, planted]))
    assert _cycles([*EDGES, dataclasses.replace(planted, typing_only=True)]) == []
