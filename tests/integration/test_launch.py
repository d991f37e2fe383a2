"""`emotion serve`'s launch path runs the Serve config file: values changed in a copy of it show in the running app."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serve.runtime.settings import DEFAULT_SERVE_CONFIG
from tests.integration.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def edited_config(tmp_path: Path) -> Path:
    """deploy/serve_config.yaml with three values changed: a builder arg, a deployment option, a user_config field."""
    config = yaml.safe_load(DEFAULT_SERVE_CONFIG.read_text())
    app = config["applications"][0]
    app["args"]["max_images_per_request"] = 3
    deployments = {d["name"]: d for d in app["deployments"]}
    deployments["Ingress"]["max_ongoing_requests"] = 77
    deployments["EmotionModel"]["user_config"]["run_batch_size"] = 5
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    from ray.serve.context import _get_global_client

    from serve.runtime import local
    from serve.runtime.serve_config import resolve_launch

    flags = {
        "serve_config": str(edited_config(tmp_path_factory.mktemp("config"))),
        "port": free_port(), "metrics_export_port": free_port(),
    }  # fmt: skip
    settings, config = resolve_launch(flags)  # exactly what `emotion serve --config FILE --port N` resolves
    options = local.RayOptions(num_cpus=2, object_store_mb=200, temp_dir=f"/tmp/rt{secrets.token_hex(3)}")
    try:
        url = local.start(settings, config, options)
        details = _get_global_client().get_serve_details()
        yield url, details
    finally:
        local.stop()


def test_deployment_options_and_user_config_come_from_the_file(launched: tuple[str, dict[str, Any]]) -> None:
    _, details = launched
    deployments = details["applications"]["emotion"]["deployments"]
    assert deployments["Ingress"]["deployment_config"]["max_ongoing_requests"] == 77
    model_config = deployments["EmotionModel"]["deployment_config"]
    assert model_config["user_config"]["run_batch_size"] == 5
    assert model_config["max_ongoing_requests"] == 64  # untouched values are the file's too, not Ray's default 5


def test_builder_args_come_from_the_file(launched: tuple[str, dict[str, Any]], face_png: bytes) -> None:
    url, _ = launched
    files = [("files", (f"{i}.png", face_png, "image/png")) for i in range(4)]
    with httpx.Client(base_url=url, timeout=60.0) as client:
        assert client.post("/v1/classify/batch", files=files[:3]).status_code == 200
        refused = client.post("/v1/classify/batch", files=files)
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "too_many_images"

