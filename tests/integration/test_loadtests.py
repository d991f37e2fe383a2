"""Smoke tests: every locust scenario runs headless against the real service for a fixed number of requests.

Nothing here depends on how fast the machine is: each user sends ``--requests-per-user`` requests and locust quits
when all have (step_load: each step lasts ``--step-requests`` answers), so the counts below are exact; ``-t``, the
timeouts and the subprocess deadline are generous hang guards, and a run they cut short fails (locust exits 1).

The service is ``EMOTION_LOADTEST_URL`` when set, else ``python -m serve.cli serve`` (``emotion serve``) started
once for this module on free ports in 8100-8199. The two HTTP face scenarios also run
against the plain baseline server, so they are checked even without Ray. A scenario whose endpoint the service
does not have yet is skipped, naming the endpoint.
"""

from __future__ import annotations

import io
import json
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

# Hang guards only (a run that reaches one fails): the whole test, locust's own -t, one request, one step.
pytestmark = [pytest.mark.integration, pytest.mark.data, pytest.mark.timeout(1200)]
RUN_GUARD_S = 300
REQUEST_TIMEOUT_S = 120
SERVICE_START_S = 300

# scenario -> (users, requests (frames) per user); step_load: (users per step, requests per step), two steps.
SCENARIOS = {
    "single_face": (2, 16),
    "many_faces": (1, 4),
    "analyze_frames": (1, 4),
    "video_stream": (2, 10),
    "step_load": (2, 8),
}
EXTRA_ARGS = {"video_stream": ["--fps", "5"]}
BIG_REQUEST = 48
MAIN_ROW = {
    "single_face": "POST /v1/classify",
    "many_faces": "POST /v1/classify/batch",
    "analyze_frames": "POST /v1/analyze",
    "video_stream": "frame",
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
           # No queueing-delay bound and a hang-guard request timeout: on a slow or shared CI machine a smoke run
           # must not be shed or time out (shedding has its own tests), or its asserts would depend on speed.
           "EMOTION_MAX_QUEUE_DELAY_S": "0", "EMOTION_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
           # `emotion serve` starts its own Ray whatever the environment points at (here: nothing listens there).
           "RAY_ADDRESS": "127.0.0.1:9"}  # fmt: skip
    log = tmp_path_factory.mktemp("service") / "serve.log"
    server = Server("service", [sys.executable, "-m", "serve.cli", "serve"], port, log, env)
    server.start(timeout=SERVICE_START_S)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def baseline_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("baseline") / "baseline.log"
    server = Server("baseline", [sys.executable, "-m", "loadtests.baseline_server", "--port", str(port)], port, log)
    server.start(timeout=SERVICE_START_S)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def missing_endpoint(scenario: str, url: str) -> str | None:
    """Why the service cannot run ``scenario`` yet, or None."""
    if scenario == "analyze_frames":
        status = httpx.post(f"{url}/v1/analyze", content=b"", timeout=REQUEST_TIMEOUT_S).status_code
        return "POST /v1/analyze answers 404: the endpoint has not landed" if status in (404, 405) else None
    if scenario == "video_stream":
        try:
            websocket.create_connection(url.replace("http", "ws", 1) + "/v1/stream", timeout=REQUEST_TIMEOUT_S).close()
        except websocket.WebSocketBadStatusException as exc:
            return f"WS /v1/stream handshake answered {exc.status_code}: the endpoint has not landed"
    return None


def locust_args(scenario: str) -> list[str]:
    users, count = SCENARIOS[scenario]
    if scenario == "step_load":
        load = ["--step-users", str(users), "--step-requests", str(count), "--max-users", str(2 * users),
                "--step-timeout", str(RUN_GUARD_S)]  # fmt: skip
    else:
        load = ["-u", str(users), "-r", str(users), "--requests-per-user", str(count), "-t", f"{RUN_GUARD_S}s"]
    return [*load, "--request-timeout", str(REQUEST_TIMEOUT_S), *EXTRA_ARGS.get(scenario, [])]


Stats = dict[str, dict[str, int]]


def run_scenario(scenario: str, url: str, out: Path) -> Stats:
    """Run one locustfile headless; return its final stats by request name (``--json-file``, written at exit:
    the CSV files are rewritten once a second and can miss the last requests). Locust exits 1 on any failed
    request, and when a hang guard ended the run before every request was sent."""
    prefix = out / scenario
    cmd = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtests" / f"{scenario}.py"), "--headless",
           "-H", url, "--csv", str(prefix), "--html", f"{prefix}.html", "--json-file", str(prefix),
           "--only-summary", "--stop-timeout", "10", *locust_args(scenario)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=2 * RUN_GUARD_S)
    assert proc.returncode == 0, f"locust exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    stats: Stats = {}
    for entry in json.loads(Path(f"{prefix}.json").read_text()):
        row = stats.setdefault(entry["name"], {"requests": 0, "failures": 0})
        row["requests"] += entry["num_requests"]
        row["failures"] += entry["num_failures"]
    return stats


def count(stats: Stats, name: str) -> int:
    return stats[name]["requests"] if name in stats else 0


def check_counts(scenario: str, stats: Stats, out: Path) -> None:
    """Every request of the budget was answered: served, shed (503 + Retry-After) or, for frames, dropped. At least
    one was served: the service admits a request whenever nothing is in flight, and analyses a stream's first frame."""
    assert sum(row["failures"] for row in stats.values()) == 0, stats
    users, per_user = SCENARIOS[scenario]
    main = MAIN_ROW[scenario]
    served = count(stats, main)
    assert served >= 1, f"no {main!r} answer was served: {sorted(stats)}"
    if scenario == "video_stream":
        assert count(stats, "connect") == users
        assert served + count(stats, "frame dropped") == users * per_user
    elif scenario == "step_load":
        assert served + count(stats, main + " [shed]") >= 2 * per_user  # two steps of per_user answers at least
        steps = json.loads((out / "step_load_steps.json").read_text())["steps"]
        assert [step["users"] for step in steps] == [users, 2 * users]
    else:
        assert served + count(stats, main + " [shed]") == users * per_user


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario_against_service(scenario: str, service_url: str, tmp_path: Path) -> None:
    if reason := missing_endpoint(scenario, service_url):
        pytest.skip(reason)
    stats = run_scenario(scenario, service_url, tmp_path)
    check_counts(scenario, stats, tmp_path)
    assert (tmp_path / f"{scenario}.html").is_file()


@pytest.mark.parametrize("scenario", ["single_face", "many_faces"])
def test_scenario_against_baseline(scenario: str, baseline_url: str, tmp_path: Path) -> None:
    stats = run_scenario(scenario, baseline_url, tmp_path)
    check_counts(scenario, stats, tmp_path)


def test_a_request_of_the_configured_maximum_is_served(service_url: str) -> None:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((48, 48)).save(buf, "PNG")
    files = [("files", (f"{i}.png", buf.getvalue(), "image/png")) for i in range(BIG_REQUEST)]
    resp = httpx.post(f"{service_url}/v1/classify/batch", files=files, timeout=REQUEST_TIMEOUT_S)
    assert resp.status_code == 200, resp.text
    assert [r["index"] for r in resp.json()["results"]] == list(range(BIG_REQUEST))
