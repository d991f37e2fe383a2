"""The embedded launch's checks that run before Ray starts (no Ray here)."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.contract import ContractError
from serve.runtime.local import RayOptions, StartupError, preflight
from serve.runtime.ports import free_port
from serve.runtime.settings import load_settings


@pytest.fixture
def held_port() -> Iterator[tuple[str, int]]:
    """A port this test binds and listens on, on every interface."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield "0.0.0.0", sock.getsockname()[1]


def test_preflight_passes_with_free_ports() -> None:
    port = free_port(20000, 40000)
    preflight(load_settings(port=port, metrics_export_port=free_port(20000, 40000, taken=[port])))


def test_preflight_refuses_an_http_port_in_use(held_port: tuple[str, int]) -> None:
    port = held_port[1]
    with pytest.raises(StartupError, match=rf"127\.0\.0\.1:{port} is already in use.*EMOTION_PORT="):
        preflight(load_settings(port=port, metrics_export_port=free_port(20000, 40000, taken=[port])))


def test_preflight_refuses_a_metrics_port_in_use(held_port: tuple[str, int]) -> None:
    port = held_port[1]
    with pytest.raises(StartupError, match=r"already in use.*EMOTION_METRICS_EXPORT_PORT="):
        preflight(load_settings(port=free_port(20000, 40000, taken=[port]), metrics_export_port=port))


def test_preflight_checks_the_model_first(tmp_path: Path, held_port: tuple[str, int]) -> None:
    with pytest.raises(ContractError):
        preflight(load_settings(model_dir=tmp_path, port=held_port[1]))


def test_ray_options_default_to_the_whole_machine() -> None:
    opts = RayOptions()
    assert opts.num_cpus is None and opts.temp_dir is None
    assert opts.object_store_mb == load_settings().object_store_mb  # the same default as EMOTION_OBJECT_STORE_MB
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.num_cpus = 2  # type: ignore[misc]
