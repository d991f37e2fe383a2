"""Start the real app once per module on a small private local Ray instance, and talk HTTP to it."""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

API_KEY = "integration-test-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Service:
    url: str
    metrics_url: str
    client: httpx.Client

    def scrape(self) -> str:
        return httpx.get(self.metrics_url, timeout=10.0).text

    def metric_total(self, text: str, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_for_metric(self, predicate_name: str, timeout_s: float = 40.0) -> str:
        """Ray exports metrics every few seconds: poll until ``predicate_name`` shows up."""
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            text = self.scrape()
            if re.search(rf"^{re.escape(predicate_name)}[{{ ]", text, re.M):
                return text
            time.sleep(1.0)
        return text


def start_private_service(**overrides: object) -> tuple[str, str, Callable[[], None]]:
    """Start the app as ``emotion serve`` does (the Serve config file, settings overriding it) on a small private
    local Ray (2 CPUs, 200 MB object store, short temp dir, free ports). ``overrides`` act as flags."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
    from serve.runtime import local
    from serve.runtime.serve_config import resolve_launch

    options: dict[str, object] = {
        "port": free_port(), "metrics_export_port": free_port(), "auth": "on", "api_keys": API_KEY,
        "max_body_bytes": 2_000_000, "max_image_pixels": 4_000_000, "max_images_per_request": 8, **overrides,
    }  # fmt: skip
    settings, config = resolve_launch(options)
    temp_dir = f"/tmp/rt{secrets.token_hex(3)}"
    try:
        url = local.start(settings, config, local.RayOptions(num_cpus=2, object_store_mb=200, temp_dir=temp_dir))
    except BaseException:
        local.stop()
        raise
    return url, f"http://127.0.0.1:{settings.metrics_export_port}/metrics", local.stop


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    url, metrics_url, stop = start_private_service()
    try:
        with httpx.Client(base_url=url, headers={"x-api-key": API_KEY}, timeout=60.0) as client:
            yield Service(url, metrics_url, client)
    finally:
        stop()
