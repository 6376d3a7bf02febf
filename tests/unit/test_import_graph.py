"""No import circle among the bpftap modules (issue 18: "the house: no import circle").

The graph is read from the source with `ast`, not by importing: an edge
A -> B for every `import B` / `from B import x` / `from . import B` in A,
at module level and inside functions alike (a function-level import is
still a dependency, only a later one). Imports under `if TYPE_CHECKING:`
are left out: they never run, and a Protocol's owner naming its real
implementation for the type checker (metrics.AgentSource -> daemon.Agent)
is not a circle at run time. An edge goes to the most specific bpftap module
named (`from bpftap.tunnels import gre` -> bpftap.tunnels.gre); the implicit
import of a package's `__init__` by its submodules is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def modules(src: Path = SRC) -> dict[str, tuple[Path, bool]]:
    """Every module under src/bpftap: dotted name -> (file, is a package)."""
    found = {}
    for path in sorted((src / "bpftap").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return found


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`) bodies."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                    isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
                inside.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return inside


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """module -> the bpftap modules it imports (see the module docstring for what counts)."""
    mods = modules(src)
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        package = name if is_pkg else name.rpartition(".")[0]
        skip = _type_checking_only(tree)
        targets: list[str] = []
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets += [f"{base}.{alias.name}" if f"{base}.{alias.name}" in mods else base
                            for alias in node.names]
        edges = set()
        for dotted in targets:
            target = dotted
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert "bpftap.agent.daemon" in graph and "bpftap.agent.pods" in graph["bpftap.agent.daemon"]
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The checker itself: function-level and relative imports count, TYPE_CHECKING ones do not."""
    pkg = tmp_path / "bpftap"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from bpftap.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from bpftap import a\n")
    graph = import_graph(tmp_path)
    assert graph["bpftap.a"] == {"bpftap.sub.b"} and graph["bpftap.sub.b"] == {"bpftap.sub.c"}
    assert find_cycle(graph) is None
    (pkg / "sub" / "c.py").write_text("import bpftap.a\n")
    assert find_cycle(import_graph(tmp_path)) == ["bpftap.a", "bpftap.sub.b", "bpftap.sub.c", "bpftap.a"]
