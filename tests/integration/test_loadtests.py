"""Smoke tests: every locust scenario runs headless for a few seconds against the real service; no timing asserts.

The service is ``EMOTION_LOADTEST_URL`` when set, else ``python -m serve.cli serve`` (``emotion serve``) started
once for this module on free ports in 8100-8199. The two HTTP face scenarios also run
against the plain baseline server, so they are checked even without Ray. A scenario whose endpoint the service
does not have yet is skipped, naming the endpoint.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websocket
from PIL import Image

from loadtests.servers import REPO, Server, free_port
from models.data import default_data_dir

pytestmark = [pytest.mark.integration, pytest.mark.data, pytest.mark.timeout(600)]

SCENARIOS = {
    "single_face": ["-u", "2", "-r", "2", "-t", "4s"],
    "many_faces": ["-u", "1", "-r", "1", "-t", "4s"],
    "analyze_frames": ["-u", "1", "-r", "1", "-t", "4s"],
    "video_stream": ["-u", "2", "-r", "2", "-t", "4s", "--fps", "5"],
    "step_load": ["--step-users", "2", "--step-seconds", "2", "--max-users", "4"],
}
BIG_REQUEST = 48
MAIN_ROW = {
    "single_face": "POST /v1/classify",
    "many_faces": "POST /v1/classify/batch",
    "analyze_frames": "POST /v1/analyze",
    "video_stream": "connect",
    "step_load": "POST /v1/classify",
}


@pytest.fixture(scope="module", autouse=True)
def _needs_data() -> None:
    if not (default_data_dir() / "fer2013" / "test.parquet").is_file():
        pytest.skip(f"no FER2013 data under {default_data_dir()} (set EMOTION_DATA_DIR)")


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real service, started at most once."""
    if url := os.environ.get("EMOTION_LOADTEST_URL"):
        yield url.rstrip("/")
        return
    if not (REPO / "serve" / "app.py").is_file():
        pytest.skip("serve/app.py does not exist yet: no Ray Serve graph to load-test")
    port = free_port()
    metrics_port = free_port(taken=[port])
    env = {"EMOTION_HOST": "127.0.0.1", "EMOTION_PORT": str(port), "EMOTION_METRICS_EXPORT_PORT": str(metrics_port),
           "RAY_USAGE_STATS_ENABLED": "0",
           # Above the ingress's default batch of 32 images: a request this large must still fit one batch.
           "EMOTION_MAX_IMAGES_PER_REQUEST": str(BIG_REQUEST),
           # `emotion serve` starts its own Ray whatever the environment points at (here: nothing listens there).
           "RAY_ADDRESS": "127.0.0.1:9"}  # fmt: skip
    log = tmp_path_factory.mktemp("service") / "serve.log"
    server = Server("service", [sys.executable, "-m", "serve.cli", "serve"], port, log, env)
    server.start(timeout=240)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def baseline_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("baseline") / "baseline.log"
    server = Server("baseline", [sys.executable, "-m", "loadtests.baseline_server", "--port", str(port)], port, log)
    server.start(timeout=60)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def missing_endpoint(scenario: str, url: str) -> str | None:
    """Why the service cannot run ``scenario`` yet, or None."""
    if scenario == "analyze_frames":
        status = httpx.post(f"{url}/v1/analyze", content=b"", timeout=10).status_code
        return "POST /v1/analyze answers 404: the endpoint has not landed" if status in (404, 405) else None
    if scenario == "video_stream":
        try:
            websocket.create_connection(url.replace("http", "ws", 1) + "/v1/stream", timeout=10).close()
        except websocket.WebSocketBadStatusException as exc:
            return f"WS /v1/stream handshake answered {exc.status_code}: the endpoint has not landed"
    return None


def run_scenario(scenario: str, url: str, out: Path) -> dict[str, dict[str, str]]:
    """Run one locustfile headless; return its stats rows by name. Locust exits 1 on any failed request."""
    prefix = out / scenario
    cmd = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtests" / f"{scenario}.py"), "--headless",
           "-H", url, "--csv", str(prefix), "--html", f"{prefix}.html", "--only-summary", "--stop-timeout", "3",
           *SCENARIOS[scenario]]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"locust exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    with open(f"{prefix}_stats.csv", newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario_against_service(scenario: str, service_url: str, tmp_path: Path) -> None:
    if reason := missing_endpoint(scenario, service_url):
        pytest.skip(reason)
    stats = run_scenario(scenario, service_url, tmp_path)
    assert int(stats[MAIN_ROW[scenario]]["Request Count"]) > 0
    assert int(stats["Aggregated"]["Failure Count"]) == 0
    assert (tmp_path / f"{scenario}.html").is_file()


@pytest.mark.parametrize("scenario", ["single_face", "many_faces"])
def test_scenario_against_baseline(scenario: str, baseline_url: str, tmp_path: Path) -> None:
    stats = run_scenario(scenario, baseline_url, tmp_path)
    assert int(stats[MAIN_ROW[scenario]]["Request Count"]) > 0
    assert int(stats["Aggregated"]["Failure Count"]) == 0


def test_a_request_of_the_configured_maximum_is_served(service_url: str) -> None:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((48, 48)).save(buf, "PNG")
    files = [("files", (f"{i}.png", buf.getvalue(), "image/png")) for i in range(BIG_REQUEST)]
    resp = httpx.post(f"{service_url}/v1/classify/batch", files=files, timeout=60)
    assert resp.status_code == 200, resp.text
    assert [r["index"] for r in resp.json()["results"]] == list(range(BIG_REQUEST))
