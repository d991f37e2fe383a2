"""The house rules that `ls` promises: what each layer of serve/ may import, and what stays out of the service.

docs: README "Module map". A rule broken here is a layer leaking into another (a heavy import in the serving
install, Ray in the pure core, training code in the request path).
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / "serve"


def imports_of(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports (module level and inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def violations(
    paths: Iterable[Path], forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()
) -> dict[str, list[str]]:
    """{file: [imported names]} for imports that start with a forbidden prefix and no allowed one."""
    found: dict[str, list[str]] = {}
    for path in paths:
        bad = sorted(
            name for name in imports_of(path)
            if any(name == p or name.startswith(p + ".") for p in forbidden)
            and not any(name == a or name.startswith(a + ".") for a in allowed)
        )  # fmt: skip
        if bad:
            found[str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name] = bad
    return found


def python_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_the_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    leaky = tmp_path / "leaky.py"
    leaky.write_text("def f():\n    from models.data import load_split\n    import ray.serve\n")
    assert violations([leaky], ("models", "ray"), allowed=("models.contract",)) == {
        "leaky.py": ["models.data", "models.data.load_split", "ray.serve"]
    }
    leaky.write_text("from models.contract import load_contract\n")
    assert violations([leaky], ("models",), allowed=("models.contract",)) == {}


def test_serve_top_level_is_small() -> None:
    top = sorted(p.name for p in SERVE.glob("*.py"))
    assert len(top) <= 10, top
    assert {"app.py", "cli.py", "errors.py"} <= set(top)
    assert {p.name for p in SERVE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == {
        "core", "http", "deployments", "runtime"
    }  # fmt: skip


def test_serving_imports_only_the_contract_from_models() -> None:
    assert violations(python_files(SERVE), ("models",), allowed=("models.contract",)) == {}


def test_serving_never_imports_clients_tools_or_tests() -> None:
    assert violations(python_files(SERVE), ("client", "tools", "tests", "loadtests", "matplotlib", "av")) == {}


def test_the_core_is_pure() -> None:
    heavy = ("ray", "fastapi", "starlette", "uvicorn", "serve.http", "serve.deployments", "serve.runtime", "serve.app")
    assert violations(python_files(SERVE / "core"), heavy) == {}


def test_http_layer_does_not_know_ray_or_the_deployments() -> None:
    assert violations(python_files(SERVE / "http"), ("ray", "serve.deployments", "serve.app")) == {}


@pytest.mark.parametrize("layer", ["core", "http", "runtime"])
def test_only_deployments_and_the_builder_import_ray_serve(layer: str) -> None:
    # runtime/local.py starts Serve and runtime/metrics.py creates Ray metrics lazily; both are allowed Ray itself.
    allowed = ("ray.serve.metrics", "ray.serve.schema") if layer == "runtime" else ()
    found = violations(python_files(SERVE / layer), ("ray.serve",), allowed=allowed)
    if layer == "runtime":
        found.pop("serve/runtime/local.py", None)
    assert found == {}


def test_plots_and_video_are_not_runtime_dependencies() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"]).lower()
    assert "matplotlib" not in runtime and "av>" not in runtime
    assert any(dep.startswith("matplotlib") for dep in project["optional-dependencies"]["client"])


def test_each_pure_http_and_runtime_module_has_its_unit_test() -> None:
    missing = []
    for layer in ("core", "http", "runtime"):
        for path in python_files(SERVE / layer):
            if path.name == "__init__.py":
                continue
            rel = path.relative_to(SERVE)
            test = REPO / "tests" / "unit" / "serve" / rel.parent / f"test_{path.name}"
            if not test.exists():
                missing.append(str(rel))
    assert not missing, f"modules without tests/unit/serve/<same path>/test_<name>.py: {missing}"
