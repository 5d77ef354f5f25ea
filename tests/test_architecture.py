"""The package's shape, checked: each subpackage imports only from its own floor or the
floors below it (ARCHITECTURE.md lists them), no module imports itself back through
others, few modules at the top, and none past 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "pipeline"
# Lowest first. A module may import from its own floor and any floor below it.
FLOORS = [
    {"errors", "records"},
    {"io"},
    {"config"},
    {"sources"},
    {"http", "cost", "output", "quality"},
    {"engine", "dedupe"},
    {"testing"},
    {"executors"},
    {"jobs"},
    {"report"},
    {"cli", "api", "__init__", "__main__"},
]


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The pipeline modules `path` imports, anywhere in it (functions and TYPE_CHECKING
    blocks too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("pipeline."))
    return {m for m in out if m in known}


def floor(module: str) -> int:
    parts = module.split(".")
    room = parts[1] if len(parts) > 1 else "__init__"
    if module == "pipeline.__main__":
        room = "__main__"
    return next(i for i, rooms in enumerate(FLOORS) if room in rooms)


def test_every_import_goes_to_the_same_floor_or_below() -> None:
    known = modules()
    upward = [
        f"{m} -> {t}"
        for m, path in sorted(known.items())
        for t in sorted(imports(path, known))
        if floor(t) > floor(m)
    ]
    assert upward == []


def test_no_module_imports_itself_back() -> None:
    known = modules()
    graph = {m: imports(p, known) - {m} for m, p in known.items()}
    # A package's __init__ re-exporting its modules is not a circle of code.
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    circles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    circles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert circles == []


def test_few_modules_at_the_top_and_none_too_long() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 8, top
    long = {
        str(p.relative_to(REPO)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert long == {}
    assert all(floor(m) >= 0 for m in modules())  # every subpackage is on a floor
