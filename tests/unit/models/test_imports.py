"""No import cycle among the models/ modules, counting imports inside functions (which hide a cycle at run time)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parents[3] / "models"


def models_imports(source: str, package: str = "models") -> set[str]:
    """The ``models.*`` modules that ``source`` imports anywhere: module level, inside functions, any form."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # ``from .contract import x``, ``from . import data``: inside the package
                module = f"{package}.{module}".rstrip(".")
            if module == package:  # ``from models import contract``
                found.update(f"{package}.{alias.name}" for alias in node.names)
            else:
                found.add(module)
    # ``import models.contract.x`` -> ``models.contract``: the graph's nodes are the files under models/.
    return {".".join(name.split(".")[:2]) for name in found if name.startswith(f"{package}.")}


def import_graph(folder: Path) -> dict[str, set[str]]:
    """``models.<file>`` -> the ``models.*`` modules it imports, for every ``*.py`` in ``folder``."""
    modules = {f"models.{p.stem}": p for p in sorted(folder.glob("*.py")) if p.stem != "__init__"}
    return {name: models_imports(path.read_text()) & set(modules) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None when the graph is acyclic (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_models_has_no_import_cycle() -> None:
    graph = import_graph(MODELS)
    assert len(graph) >= 10 and graph["models.evaluate"] >= {"models.predictors"}  # the parse really found imports
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle among models/: {' -> '.join(cycle or [])}"


def test_evaluate_export_quantize_share_predictors_downward() -> None:
    graph = import_graph(MODELS)
    for command in ("models.evaluate", "models.export", "models.quantize"):
        assert "models.predictors" in graph[command]
    assert not graph["models.predictors"] & {"models.evaluate", "models.export", "models.quantize"}


def test_function_level_and_from_package_imports_are_seen() -> None:
    source = (
        "import numpy\n"
        "from models.contract import load_contract\n"
        "from models import data\n"
        "from . import metrics\n"
        "def f():\n"
        "    from models.export import load_checkpoint\n"
        "    import models.loop.inner\n"
    )
    assert models_imports(source) == {
        "models.contract", "models.data", "models.metrics", "models.export", "models.loop"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),  # a diamond is no cycle
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
        ({"a": {"a"}}, ["a", "a"]),
    ],
)
def test_find_cycle_on_synthetic_graphs(graph: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert find_cycle(graph) == cycle


def test_the_old_evaluate_export_cycle_would_fail(tmp_path: Path) -> None:
    (tmp_path / "evaluate.py").write_text("def load_model():\n    from models.export import checkpoint_predictor\n")
    (tmp_path / "export.py").write_text("def parity():\n    from models.evaluate import make_session\n")
    assert find_cycle(import_graph(tmp_path)) == ["models.evaluate", "models.export", "models.evaluate"]
