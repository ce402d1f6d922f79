"""The package's shape: subpackages with explicit re-exports, an acyclic import graph between them, layers kept.

``python tests/test_layout.py`` prints the graph (nodes, edges, levels, cycles) that the closing notes quote.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "maskseg_monai"
SUBPACKAGES = ("masking", "networks", "networks.blocks", "losses", "metrics", "handlers", "transforms", "data")
#: rooms that must import nothing else of the package (the ground floor)
GROUND = ("masking", "utils", "engines")
#: (importer, imported) pairs that would turn the layers upside down
FORBIDDEN = {("metrics", "losses"), ("masking", "networks"), ("networks", "handlers"), ("losses", "metrics")}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def room(module: str) -> str:
    """The top-level module or subpackage a module belongs to (``maskseg_monai.metrics.x`` -> ``metrics``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_graph() -> tuple[set[str], set[tuple[str, str]], set[tuple[str, str]]]:
    """Modules of the package, module -> module import edges, room -> room edges."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = set()
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("maskseg_monai"):
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            edges |= {(name, t) for t in targets if t in modules and t not in (name, "maskseg_monai")}
    rooms = {(room(a), room(b)) for a, b in edges if room(a) != room(b)}
    return set(modules), edges, rooms


def cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    adj: dict[str, set[str]] = {}
    for a, b in edges:
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set())
    found, state = [], {}

    def visit(v: str, stack: list[str]) -> None:
        state[v] = 1
        stack.append(v)
        for w in sorted(adj[v]):
            if state.get(w) == 1:
                found.append([*stack[stack.index(w) :], w])
            elif w not in state:
                visit(w, stack)
        stack.pop()
        state[v] = 2

    for v in sorted(adj):
        if v not in state:
            visit(v, [])
    return found


def levels(edges: set[tuple[str, str]]) -> dict[str, int]:
    """1 for a node that imports nothing of the package, else 1 + the highest level it imports (acyclic graph)."""
    adj: dict[str, set[str]] = {}
    for a, b in edges:
        adj.setdefault(a, set()).add(b)
        adj.setdefault(b, set())
    level: dict[str, int] = {}

    def of(v: str) -> int:
        if v not in level:
            level[v] = 1 + max((of(w) for w in adj[v]), default=0)
        return level[v]

    return {v: of(v) for v in adj}


def test_no_import_cycles():
    _, edges, rooms = import_graph()
    assert cycles(edges) == []
    assert cycles(rooms) == []


def test_layers_are_kept():
    _, _, rooms = import_graph()
    assert not {(a, b) for a, b in rooms if a in GROUND}, "the ground floor imports the package"
    assert not rooms & FORBIDDEN, rooms & FORBIDDEN


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackages_re_export_explicitly(name):
    """Each ``__init__`` lists its public names in ``__all__``, and each of them resolves."""
    module = importlib.import_module(f"maskseg_monai.{name}")
    assert module.__all__ and len(module.__all__) == len(set(module.__all__))
    for attr in module.__all__:
        assert hasattr(module, attr), f"maskseg_monai.{name}.__all__ names {attr!r}, which it does not define"


def test_cycle_finder_finds_a_cycle():
    assert cycles({("a", "b"), ("b", "c"), ("c", "a")}) == [["a", "b", "c", "a"]]
    assert levels({("a", "b"), ("b", "c")}) == {"a": 3, "b": 2, "c": 1}


if __name__ == "__main__":
    modules, edges, rooms = import_graph()
    for label, nodes, graph in (
        ("rooms", {room(m) for m in modules} - {"__init__"}, rooms),
        ("modules", modules, edges),
    ):
        graph = {(a, b) for a, b in graph if "__init__" not in (a, b)}
        lv = levels(graph)
        print(
            f"{label}: {len(nodes)} nodes, {len(graph)} edges, {max(lv.values())} levels, {len(cycles(graph))} cycles"
        )
        if label == "rooms":
            for v in sorted(lv, key=lambda k: (lv[k], k)):
                print(f"  L{lv[v]} {v} -> {', '.join(sorted(b for a, b in graph if a == v)) or '-'}")
    sys.exit(0)
