"""Start the real app once per module on a small private local Ray instance, and talk HTTP to it.

Nothing here may depend on the machine's speed: the test service runs without its queueing-delay bound (on a busy
machine concurrent requests would otherwise be shed with 503, which only the shedding tests test, with their own
settings), and every wait is a generous deadline that only guards against a hang."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from serve.runtime import ports

API_KEY = "integration-test-key"
HANG_GUARD_S = 180.0  # one request, one reply, one metrics export: only against a hang


def free_port() -> int:
    return ports.free_port(20000, 32767)


@dataclass
class Service:
    url: str
    metrics_url: str
    client: httpx.Client

    def scrape(self) -> str:
        return httpx.get(self.metrics_url, timeout=HANG_GUARD_S).text

    def metric_total(self, text: str, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_for_metrics(self, done: Callable[[str], bool]) -> str:
        """Scrape until ``done(text)`` or the hang guard passes; the last text, for the caller's assertions.
        Ray exports metrics every few seconds, per process: poll, never sleep a fixed time."""
        deadline = time.monotonic() + HANG_GUARD_S
        while not done(text := self.scrape()) and time.monotonic() < deadline:
            time.sleep(1.0)
        return text

    def stream_one_by_one(self, frames: list[bytes]) -> list[dict[str, Any]]:
        """Every reply of ``WS /v1/stream`` to ``frames``, each frame sent once the previous one is answered (so
        none is dropped however slow the machine), then ``end``."""
        from websockets.exceptions import ConnectionClosedOK
        from websockets.sync.client import connect

        replies: list[dict[str, Any]] = []
        url = self.url.replace("http://", "ws://") + "/v1/stream"
        with connect(url, additional_headers={"x-api-key": API_KEY}, max_size=None) as ws:
            gate = threading.Semaphore(1)

            def send() -> None:
                for frame in frames:
                    gate.acquire()
                    ws.send(frame)
                ws.send("end")

            threading.Thread(target=send, daemon=True).start()
            while True:
                try:
                    replies.append(json.loads(ws.recv(timeout=HANG_GUARD_S)))
                except ConnectionClosedOK:
                    break
                gate.release()
        return replies

    def wait_for_metric(self, name: str) -> str:
        return self.wait_for_metrics(lambda text: re.search(rf"^{re.escape(name)}[{{ ]", text, re.M) is not None)


def start_private_service(**overrides: object) -> tuple[str, str, Callable[[], None]]:
    """Start the app as ``emotion serve`` does (the Serve config file, settings overriding it) on a small private
    local Ray (2 CPUs, 200 MB object store, short temp dir, free ports). ``overrides`` act as flags."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
    from serve.runtime import local

    flags: dict[str, object] = {
        "port": free_port(), "metrics_export_port": free_port(), "auth": "on", "api_keys": API_KEY,
        "max_body_bytes": 2_000_000, "max_image_pixels": 4_000_000, "max_images_per_request": 8,
        "max_queue_delay_s": 0, "request_timeout_s": HANG_GUARD_S, **overrides,
    }  # fmt: skip
    ray_options = local.RayOptions(num_cpus=2, object_store_mb=200, temp_dir=f"/tmp/rt{secrets.token_hex(3)}")
    url, settings = local.launch(flags, ray_options)
    return url, f"http://127.0.0.1:{settings.metrics_export_port}/metrics", local.stop


@contextlib.contextmanager
def private_service(**overrides: object) -> Iterator[Service]:
    """``start_private_service(**overrides)`` with an authenticated client; stopped on exit."""
    url, metrics_url, stop = start_private_service(**overrides)
    try:
        with httpx.Client(base_url=url, headers={"x-api-key": API_KEY}, timeout=HANG_GUARD_S) as client:
            yield Service(url, metrics_url, client)
    finally:
        stop()


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    with private_service() as running:
        yield running
