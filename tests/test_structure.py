"""The package's shape: the extension shell on top, and no import cycle anywhere.

Function-level imports count: an import moved into a function to dodge a cycle is still a cycle.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "flask_mailoauth"
SHELL = "flask_mailoauth.extension"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, name: str) -> set[str]:
    """Every package module ``path`` imports, at any depth of its code (type-only ones too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {t for t in imported(path, name) if t in modules and t != name}
        # importing a submodule runs its package's __init__ first: not an edge worth a cycle
        edges[name] = {t for t in targets if not name.startswith(f"{t}.")}
    return edges


def test_the_import_graph_has_no_cycle():
    try:
        tuple(TopologicalSorter(graph()).static_order())
    except CycleError as cycle:
        raise AssertionError(f"import cycle: {' -> '.join(cycle.args[1])}") from None


def test_nothing_below_the_shell_imports_it():
    importers = sorted(
        name for name, targets in graph().items() if SHELL in targets and name != "flask_mailoauth"
    )
    assert importers == []
