"""Unit tests run without Ray: any attempt to start it fails loudly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _forbid_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Unit tests should not depend on Ray being initialized.")

    try:
        import ray
    except ImportError:
        yield
        return
    monkeypatch.setattr(ray, "init", refuse)
    yield
