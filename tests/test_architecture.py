"""The package's layers, kept by a test rather than by convention.

Every module of ``retryopt`` is parsed (not imported) and every import is collected, including
the ones inside functions, where a cycle would otherwise hide. The rules:

- **Layers.** Each subpackage may import only the layers listed for it in :data:`MAY_IMPORT`:
  ``features`` (data contract, time, taxonomy, features) imports no other layer; ``model`` (the
  bundle format, calibration, registry lookup) imports ``features``; ``serving`` (the policies
  and the HTTP service) never imports ``training``; ``training`` may use the policies it
  backtests; the public API and the command line sit on top.
- **No import cycle** between modules, function-level imports included.
- **Project imports at module level.** An import of a project module inside a function is
  allowed only at the edges that must stay light to start: the console commands, the lazy
  public API of ``retryopt/__init__.py``, and the MLflow pyfunc file that MLflow loads alone.
- **Modules readable in one sitting**: at most :data:`MAX_LINES` lines.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "retryopt"
MAX_LINES = 1000

# Layer of a module: the first name under ``retryopt`` (``retryopt.features.x`` -> ``features``);
# modules directly in the package are their own layer (``retryopt.cli`` -> ``cli``).
MAY_IMPORT: dict[str, frozenset[str]] = {
    "version": frozenset(),
    "features": frozenset({"version"}),
    "model": frozenset({"features", "version"}),
    "serving": frozenset({"features", "model", "version"}),
    "training": frozenset({"features", "model", "serving", "version"}),
    "api": frozenset({"features", "model", "serving", "training", "version"}),
    "": frozenset({"api", "version"}),  # retryopt/__init__.py: the lazy public API
    "cli": frozenset({"commands", "version"}),
    "__main__": frozenset({"cli"}),
    "commands": frozenset({"api", "features", "model", "serving", "training", "version"}),
}
# Modules that may import project modules inside functions (edges that must start fast).
LAZY_IMPORTS_ALLOWED: frozenset[str] = frozenset(
    {
        "retryopt",  # the public API is loaded on first use
        "retryopt.training.pyfunc_model",  # MLflow loads this file on its own ("models from code")
    }
)
LAZY_IMPORT_PREFIXES: tuple[str, ...] = ("retryopt.commands.",)


def _module_files() -> dict[str, Path]:
    """Every module of the package by dotted name (the linked layers followed once)."""
    out: dict[str, Path] = {}
    paths = [
        Path(folder) / name
        for folder, _, names in os.walk(PACKAGE, followlinks=True)
        for name in names
        if name.endswith(".py")
    ]
    for path in sorted(paths):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = ["retryopt", *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _module_files()


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(module: str, path: Path) -> Iterator[tuple[str, bool, int]]:
    """(imported project module, inside a function?, line) for every import of ``module``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST, in_function: bool) -> Iterator[tuple[str, bool, int]]:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for alias in child.names:
                    target = f"{base}.{alias.name}"
                    name = target if target in MODULES else base
                    if name in MODULES:
                        yield name, in_function, child.lineno
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name in MODULES:
                        yield alias.name, in_function, child.lineno
            yield from visit(child, inner)

    yield from visit(tree, False)


GRAPH: dict[str, list[tuple[str, bool, int]]] = {
    module: [edge for edge in _imports(module, path) if edge[0] != module]
    for module, path in MODULES.items()
}


def test_the_package_is_found() -> None:
    for name in ("retryopt.features", "retryopt.training", "retryopt.serving", "retryopt.model"):
        assert name in MODULES
    assert len(MODULES) > 40


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layers(module: str) -> None:
    layer = _layer(module)
    allowed = MAY_IMPORT.get(layer)
    assert allowed is not None, f"{module}: layer {layer!r} is not declared in MAY_IMPORT"
    wrong = [
        f"line {line}: {target}"
        for target, _, line in GRAPH[module]
        if _layer(target) != layer and _layer(target) not in allowed
    ]
    assert not wrong, f"{module} ({layer}) may import only {sorted(allowed)}: {wrong}"


def test_no_import_cycles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _, _ in GRAPH[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            connect(module)
    assert not cycles, f"import cycles: {cycles}"


def test_project_imports_are_at_module_level() -> None:
    hidden = [
        f"{module} line {line}: {target}"
        for module, edges in GRAPH.items()
        if module not in LAZY_IMPORTS_ALLOWED and not module.startswith(LAZY_IMPORT_PREFIXES)
        for target, in_function, line in edges
        if in_function
    ]
    assert not hidden, f"project imports inside functions (hoist them): {hidden}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_are_readable_in_one_sitting(module: str) -> None:
    n = MODULES[module].read_text(encoding="utf-8").count("\n")
    assert n <= MAX_LINES, f"{module} has {n} lines (> {MAX_LINES}): split it by responsibility"


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The parser finds a function-level import (the place cycles hide)."""
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from retryopt.version import __version__\n")
    assert list(_imports("retryopt.probe", path)) == [("retryopt.version", True, 2)]
