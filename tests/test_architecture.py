"""The house rules of docs/ARCHITECTURE.md, checked on the code's own imports and definitions (read as text by
``ast``, nothing imported): no import circle; no route module imports ``main`` or another route module; no module
over 600 lines and no function over 80."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import APP_DIR

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    """``{"lib.api.infer": path, ..., "main": path}`` for every module of the app."""
    found = {}
    for path in sorted(APP_DIR.rglob("*.py")):
        parts = path.relative_to(APP_DIR).with_suffix("").parts
        if "migrations" in parts:  # alembic's scripts are loaded by alembic, not imported
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The app modules ``name`` imports (anywhere in the file, TYPE_CHECKING blocks and functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            bases = [alias.name for alias in node.names]
            names: list[str] = []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            bases, names = [base], [alias.name for alias in node.names]
        else:
            continue
        for base in bases:
            for candidate in [f"{base}.{n}" for n in names] or [base]:
                while candidate and candidate not in modules:
                    candidate = candidate.rpartition(".")[0]  # a name inside a module: the module
                if candidate and candidate != name:
                    targets.add(candidate)
    return targets


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circle(graph):
    circles = _circles(graph)
    assert not circles, "modules that import each other: " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_circle_check_can_fail():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_route_modules_import_neither_main_nor_each_other(graph):
    route_modules = [m for m in graph if m.startswith("lib.api.") and m not in ("lib.api.install", "lib.api.common")]
    assert len(route_modules) >= 10
    wrong = {
        module: sorted(t for t in graph[module] if t == "main" or (t.startswith("lib.api") and t != "lib.api.common"))
        for module in route_modules
    }
    assert not {m: t for m, t in wrong.items() if t}, wrong
    assert not [m for m, targets in graph.items() if "main" in targets], "only MONAI Label imports main"


def test_modules_and_functions_stay_small():
    too_long, long_functions = [], []
    for name, path in _modules().items():
        source = path.read_text()
        if source.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{name} ({source.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name} ({length} lines)")
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"
