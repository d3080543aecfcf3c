"""The house rules of the package layout (README "Layout"): wings never import a stage, the root
holds only the entry and what every wing shares, and no module imports itself back round a loop.

Imports are read from the source (every ``import``, at module level or inside a function), so a
loop that only a lazy import closes is caught too."""

from __future__ import annotations

import ast
from pathlib import Path

import alpacare

PACKAGE_DIR = Path(alpacare.__file__).resolve().parent
WINGS = ("data", "evaluation", "llm", "prompts", "report", "review", "training")
# The entry (cli, config, errors, package files) and the modules every wing and stage share.
ROOT_MODULES = {"__init__", "__main__", "cli", "config", "errors", "fingerprint", "rundir", "stats_schema", "tracking"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """alpacare modules this file imports; ``from pkg import name`` counts as pkg.name when that is a module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names]
        else:
            continue
        found.update(n for n in names if n == "alpacare" or n.startswith("alpacare."))
    return found


def with_parents(name: str) -> set[str]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(f): f for f in PACKAGE_DIR.rglob("*.py")}
    known = set(files)
    graph = {}
    for name, path in files.items():
        edges = set().union(*(with_parents(m) for m in imported_modules(path, known))) if path else set()
        graph[name] = {m for m in edges if m in known and m != name and m != "alpacare"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_no_import_loops():
    cycle = find_cycle(import_graph())
    assert not cycle, " -> ".join(cycle)


def test_no_wing_imports_a_stage_module():
    offenders = [
        f"{name} imports {dep}"
        for name, deps in import_graph().items()
        if not name.startswith("alpacare.stages")
        for dep in deps
        if dep.startswith("alpacare.stages.")
    ]
    assert not offenders, offenders


def test_root_holds_only_the_entry_and_shared_modules():
    loose = sorted(p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem not in ROOT_MODULES)
    assert not loose, f"modules at the root of alpacare/ that belong in a wing: {loose}"
    folders = sorted(p.name for p in PACKAGE_DIR.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders == sorted([*WINGS, "stages"])


def test_the_checker_sees_a_loop(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
