"""DESIGN.md's floors: a module never imports one on a higher floor, and the light floors stay
light (the config and the plots load without torch)."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "utils" / "training"
FLOORS = {
    "training_config": 1, "workspace": 1, "callbacks": 1, "metric_names": 1, "install": 1, "network": 1,
    "errors": 1,
    "data": 2, "models": 2, "hardware": 2, "sharding": 2,
    "checkpoints": 3, "experiment_db": 3, "db_schema": 3, "db_frames": 3,
    "metrics_tracker": 3, "gpu": 3, "wandb_setup": 3,
    "plot_style": 4, "live_plotting": 4, "dashboard": 4, "history": 4,
    "trainer": 5, "optimizer": 5, "training_result": 5, "device_metrics": 5,
    "run": 6, "search": 6, "search_space": 6, "search_result": 6, "search_storage": 6,
    "export": 6, "notebook": 6, "notebook_run": 6, "__main__": 6, "__init__": 6,
}


def module_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


@functools.cache
def syntax_tree(path: Path) -> ast.Module:
    """Each file parsed once. This Python (3.11.7) once failed an ast.parse in the full suite
    with "SystemError: AST constructor recursion depth mismatch", a CPython bug (gh-106905)
    that is not the file's fault and passes when parsed again."""
    try:
        return ast.parse(path.read_text())
    except SystemError:
        return ast.parse(path.read_text())


def imported_modules(path: Path) -> set[str]:
    """First component of every relative import target (function-local imports included)."""
    found = set()
    package_parts = path.relative_to(PACKAGE).parts[:-1]
    for node in ast.walk(syntax_tree(path)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(package_parts)[: len(package_parts) - (node.level - 1)]
            parts = base + (node.module.split(".") if node.module else [])
            if parts:
                found.add(parts[0])
            else:  # "from . import x" at the top level
                found |= {alias.name for alias in node.names}
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_floor(path):
    own = module_of(path)
    assert own in FLOORS, f"{own} has no floor: add it here and to DESIGN.md"
    for target in imported_modules(path) - {own}:
        assert target in FLOORS, target
        assert FLOORS[target] <= FLOORS[own], f"{own} (floor {FLOORS[own]}) imports {target} (floor {FLOORS[target]})"


def test_config_workspace_and_plots_load_without_torch():
    code = ("import sys, utils.training.training_config, utils.training.workspace, "
            "utils.training.dashboard, utils.training.live_plotting; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_import_cycles_counting_imports_inside_functions():
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        own = module_of(path)
        graph.setdefault(own, set()).update(imported_modules(path) - {own})

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    return [*trail, start]
                if nxt not in trail:
                    stack.append((nxt, [*trail, nxt]))
        return None

    cycles = {" -> ".join(c) for m in graph if (c := cycle_from(m))}
    assert not cycles, f"import cycles: {sorted(cycles)}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_siblings_are_imported_at_the_top(path):
    """Lazy imports are for heavy optional libraries (optuna, nbclient, IPython, google.colab,
    transformers); a sibling imported inside a function hides a dependency (or a cycle)."""
    late = [f"line {node.lineno}: from {'.' * node.level}{node.module or ''}"
            for fn in ast.walk(syntax_tree(path))
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(fn) if isinstance(node, ast.ImportFrom) and node.level]
    assert not late, late
