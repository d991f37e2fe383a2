"""The serving install is enough to serve: every third-party module that ``serve/`` (and the light part of
``models/`` that it reads) imports comes with the runtime dependencies of pyproject.toml, directly or through
their own requirements. ``make serve`` installs only those; the test suite runs with the dev extra too, so without
this check a dev-only import in the serving path passes every other test and breaks the quick start."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
# Everything under serve/ plus the one module of models/ that serving may import (tests/unit/test_layers.py).
SERVING_CODE = [*sorted((REPO / "serve").rglob("*.py")), REPO / "models" / "contract.py"]
LOCAL_PACKAGES = {"serve", "models", "client", "tools", "loadtests", "tests"}


def installed_by(requirements: list[str]) -> set[str]:
    """Distributions that installing ``requirements`` brings in (transitively, extras and markers honoured)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    stack = [(Requirement(r), {""}) for r in requirements]
    while stack:
        req, extras_in_force = stack.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras_in_force):
            continue
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(key[0])
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue
        stack.extend((Requirement(r), {"", *req.extras}) for r in requires)
    return names


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_serving_code_imports_only_what_the_serving_install_provides() -> None:
    runtime = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    provided = installed_by(runtime)
    owners = metadata.packages_distributions()
    missing = {}
    for path in SERVING_CODE:
        for module in imported_modules(path) - LOCAL_PACKAGES - set(sys.stdlib_module_names):
            distributions = {canonicalize_name(d) for d in owners.get(module, [module])}
            if not distributions & provided:
                missing.setdefault(module, []).append(str(path.relative_to(REPO)))
    assert not missing, f"imported by serving code but not installed by the runtime dependencies: {missing}"


def test_the_check_sees_a_dev_only_package() -> None:
    runtime = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    provided = installed_by(runtime)
    assert {"ray", "fastapi", "starlette", "onnxruntime"} <= provided  # direct and transitive
    assert "locust" not in provided and "pytest" not in provided  # dev extra only
