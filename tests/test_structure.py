"""The package's structure, checked from its source: layers without import cycles, short functions, and each
method's name written in few places (DESIGN.md states the rules)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "rcnn_cli"

#: The layers, lowest first: a unit may import units of its own layer's left or of lower layers only
#: (DESIGN.md, "Layers"). A unit is a top-level module or a subpackage of ``rcnn_cli``.
LAYERS = [
    ("errors", "log", "config", "memory", "boxes", "method"),
    ("io",),
    ("visualize",),
    ("data",),
    ("proposals", "device", "backbones", "backends"),
    ("detector", "evaluation", "fitting", "engine"),
    ("inference",),
    ("models",),
    ("rcnn",),
    ("registry",),
    ("workflows",),
    ("cli",),
    ("entry", "__main__"),
]
RANK = {unit: (i, j) for i, layer in enumerate(LAYERS) for j, unit in enumerate(layer)}


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        return [target] + [f"{target}.{a.name}" for a in node.names]
    return []


def import_edges() -> dict[tuple[str, str], list[str]]:
    """``{(unit, imported unit): ["module imports target", ...]}`` over every import of the package,
    at module level, inside functions and under ``if TYPE_CHECKING:``."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in SRC.rglob("*.py"):
        module = _module(path)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            for target in _imported(node, module, path.name == "__init__.py"):
                if not target.startswith("rcnn_cli."):
                    continue
                src, dst = _unit(module), _unit(target)
                if src and dst and src != dst and dst in RANK:
                    edges.setdefault((src, dst), []).append(f"{module} imports {target}")
    return edges


def _cycles(edges) -> list[list[str]]:
    """Strongly connected components of more than one unit (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in SRC.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").is_file())}
    assert units == set(RANK), f"units without a layer: {sorted(units - set(RANK))}; gone: {sorted(set(RANK) - units)}"


def test_no_import_cycle_between_units():
    assert _cycles(import_edges()) == []


def test_imports_point_down_the_layers():
    upward = [f"{a} -> {b}: {why[0]}" for (a, b), why in import_edges().items() if RANK[b] >= RANK[a]]
    assert upward == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({("a", "b"): [], ("b", "c"): [], ("c", "a"): [], ("c", "d"): []}) == [["a", "b", "c"]]


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body[1:] if ast.get_docstring(node) else node.body
            if body:
                yield node.name, body[0].lineno, body[-1].end_lineno - body[0].lineno + 1


def test_no_function_body_is_longer_than_80_lines():
    long = [f"{path.relative_to(SRC)}:{name} ({n} lines)" for path in SRC.rglob("*.py")
            for name, _, n in _functions(ast.parse(path.read_text())) if n > 80]
    assert long == []


@pytest.mark.parametrize("name", ["overfeat", "localize", "faster"])
def test_a_methods_name_is_written_in_at_most_three_modules(name):
    """Its own module (``NAME``), its command group and the format-1 reader at most: everything else asks
    the registry. (``fast``, ``yolo`` and ``rcnn`` are also a selective-search mode, a data format and the
    program's name, so they are not counted.)"""
    modules = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.Constant) and n.value == name for n in ast.walk(tree)):
            modules.append(str(path.relative_to(SRC)))
    assert len(modules) <= 3, modules
