"""fastpath's core modules form a DAG: no module reaches, through `crate::` paths, a module that
reaches it back. docs/architecture.md draws the layers; this keeps the drawing true.

It reads the Rust sources (no build needed): every `crate::<module>` path in a module's file, or
in the files of its directory, is an edge. `super::` inside a directory module stays inside it.
"""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "fastpath" / "core" / "src"
CRATE_PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")


def graph() -> dict[str, set[str]]:
    """Module -> the crate modules it names, for each top-level module of the crate."""
    edges: dict[str, set[str]] = {}
    for path in SRC.rglob("*.rs"):
        rel = path.relative_to(SRC)
        module = rel.parts[0].removesuffix(".rs")
        if module in {"lib", "main"}:
            continue
        code = "\n".join(line.split("//", 1)[0] for line in path.read_text().splitlines())
        edges.setdefault(module, set()).update(m for m in CRATE_PATH.findall(code) if m != module)
    return edges


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_core_modules_form_a_dag() -> None:
    edges = graph()
    assert {"proxy", "state", "inbound", "outbound", "upstream"} <= edges.keys()
    found = cycle(edges)
    assert found is None, "module cycle: " + " -> ".join(found or [])


def test_only_the_lifecycle_spawns_the_directions() -> None:
    edges = graph()
    users = {m for m, to in edges.items() if {"inbound", "outbound"} & to}
    # capture hands captured connections to outbound; proxy spawns both directions
    assert users <= {"proxy", "capture"}, users
    assert not any("proxy" in to for m, to in edges.items()), "nothing reaches back into proxy"


def test_the_checker_finds_a_cycle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
