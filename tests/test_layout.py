"""The layout's rules: the packages import only downwards (pyproject.toml's import contracts,
checked by import-linter), no module imports another in a loop, and each package says what it
holds and what it may import."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import grimp

from tests.servers import ROOT

PACKAGES = ("model", "spec", "store", "pipeline", "receive", "read", "send", "cli", "emulator")


def test_the_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def cycles(graph: grimp.ImportGraph) -> list[set[str]]:
    """Groups of modules that import each other in a loop (Tarjan's strongly connected parts)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            part = set()
            while True:
                member = stack.pop()
                part.add(member)
                if member == module:
                    break
            if len(part) > 1:
                found.append(part)

    sys.setrecursionlimit(10_000)
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_another_in_a_loop_counting_imports_inside_functions() -> None:
    graph = grimp.build_graph("app", cache_dir=None)
    assert graph.find_modules_directly_imported_by("app.metrics") is not None
    # grimp reads every import statement, those inside functions too.
    assert "app.read.dashboard" in graph.find_modules_directly_imported_by("app")
    assert cycles(graph) == []


def test_each_package_says_what_it_holds_and_what_it_may_import() -> None:
    for name in PACKAGES:
        package = importlib.import_module(f"app.{name}")
        doc = package.__doc__ or ""
        assert len(doc.split()) >= 15, name
        assert "import" in doc.lower(), name
