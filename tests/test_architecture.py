"""The layout keeps its promises (ARCHITECTURE.md): references/ is pure, no import cycles (lazy
imports inside functions count), no module over 350 lines, no function over 50 lines."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("harness", "references") for p in (ROOT / d).rglob("*.py"))
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 50


def module_name(p: Path) -> str:
    parts = list(p.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SOURCES}


def imports_of(p: Path) -> set[str]:
    """Every project module ``p`` imports, at any depth (a lazy import counts)."""
    out = set()
    for node in ast.walk(ast.parse(p.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out |= {n for n in names if n in MODULES}
    return out - {module_name(p)}


GRAPH = {m: imports_of(p) for m, p in MODULES.items()}


def test_references_import_nothing_from_harness():
    bad = {m: sorted(i for i in deps if i.startswith("harness")) for m, deps in GRAPH.items() if m.startswith("references")}
    assert not any(bad.values()), bad


def _cycle_from(start):
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in GRAPH.get(node, ()):
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_no_import_cycles():
    # a package __init__ that only re-exports its own submodules is not a cycle with them
    cycles = []
    for m in GRAPH:
        c = _cycle_from(m)
        if c and not all(x == c[0] or x.startswith(c[0] + ".") or c[0].startswith(x + ".") for x in c):
            cycles.append(" -> ".join(c))
    assert not cycles, cycles[:5]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_and_function_sizes(path):
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_MODULE_LINES, f"{len(lines)} lines"
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long


def test_cycle_detector_finds_a_lazy_cycle(monkeypatch):
    monkeypatch.setitem(GRAPH, "harness.runner", GRAPH["harness.runner"] | {"harness.x"})
    monkeypatch.setitem(GRAPH, "harness.x", {"harness.runner"})
    assert _cycle_from("harness.x") == ["harness.x", "harness.runner", "harness.x"]
