"""No import circles among qgn's modules.

The graph is read from the source (nothing is imported): every ``import`` and ``from ... import``
anywhere in a module counts, at module level, inside functions and under ``TYPE_CHECKING`` alike,
since each of them ties the two modules together. ``from qgn.pkg import name`` is an edge to the
submodule ``qgn.pkg.name`` when there is one, else to the package ``qgn.pkg`` itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def qgn_modules(root: Path = ROOT) -> dict[str, Path]:
    """``{"qgn.metrics.scorer": path, "qgn.metrics": .../__init__.py, ...}``"""
    modules = {}
    for path in sorted((root / "qgn").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The qgn modules that module ``name`` (at ``path``) imports, wherever the import statement is."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from ..data import y
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target in modules:
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in modules else target)
    found.discard(name)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = qgn_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or ``None`` when the graph has none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_qgn_has_no_import_circles():
    graph = import_graph()
    assert len(graph) > 40 and "qgn.metrics.scorer" in graph["qgn.metrics"]  # the graph was read
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize(
    "files, cycle",
    [
        # the two circles that were broken: a function-level import back, and one under TYPE_CHECKING
        (
            {
                "qgn/__init__.py": "",
                "qgn/hub.py": "def f():\n    from qgn.modeling import Model\n",
                "qgn/modeling/__init__.py": "from qgn.modeling.model import Model\n",
                "qgn/modeling/model.py": "class Model:\n    def save(self):\n        from qgn.hub import f\n",
            },
            ["qgn.hub", "qgn.modeling", "qgn.modeling.model", "qgn.hub"],
        ),
        (
            {
                "qgn/__init__.py": "",
                "qgn/metrics/__init__.py": "",
                "qgn/metrics/scorer.py": "def table():\n    from qgn.metrics.report import fmt\n",
                "qgn/metrics/report.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                "    from qgn.metrics.scorer import Report\n",
            },
            ["qgn.metrics.report", "qgn.metrics.scorer", "qgn.metrics.report"],
        ),
        # relative imports and "from package import submodule"
        (
            {"qgn/__init__.py": "", "qgn/a.py": "from . import b\n", "qgn/b.py": "from .a import x\n"},
            ["qgn.a", "qgn.b", "qgn.a"],
        ),
        (
            {
                "qgn/__init__.py": "",
                "qgn/a.py": "import qgn.b\n",
                "qgn/b.py": "import os\nfrom qgn import c\n",
                "qgn/c.py": "import json\n",
            },
            None,
        ),
    ],
)
def test_find_cycle_sees_every_kind_of_import(tmp_path, files, cycle):
    assert find_cycle(import_graph(_write(tmp_path, files))) == cycle
