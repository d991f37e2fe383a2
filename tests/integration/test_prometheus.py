"""A real Prometheus (Debian's, installed with apt-get when missing) scrapes the running service through a copy of
deploy/prometheus/prometheus.yml, with its alert rules loaded; the Grafana dashboard's expressions run against it.

One module-scoped scenario drives the service, then the tests read what Prometheus recorded:

1. healthy traffic, twice (every route, bad inputs, a frame, a stream): a counter or histogram that Ray creates on
   its first increment appears at its value, so only a second round makes rates non-zero. Then the alerts must be
   quiet after a rule evaluation that saw the traffic: none firing, none pending but the latency SLO (how fast a
   busy CI machine answers is no property of the service);
2. stress, twice: load shed with 503 (this module's service admits one HTTP request at a time) and a stream
   fire hose whose oldest frames are dropped. The shedding and stream-drop alerts must then go pending: their
   expressions match the real series.

Nothing depends on the machine's speed: every wait polls until the data is there, up to a generous hang guard."""

from __future__ import annotations

import contextlib
import json
import math
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from PIL import Image

from models.contract import load_contract
from serve.runtime.metrics import EXPORTED_NAMES
from serve.runtime.settings import load_settings
from tests.conftest import encode
from tests.integration.conftest import API_KEY, HANG_GUARD_S, Service, free_port, private_service
from tests.prometheus_tools import prometheus as prometheus_binary
from tests.unit.test_docs import dashboard_expressions, uses_metric

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]  # covers installing prometheus (apt-get)
REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "emotion-dashboard.json"
STRESS_ALERTS = ("EmotionSheddingSustained", "EmotionStreamDrops")  # pending after the stress phase
SPEED_DEPENDENT = "EmotionLatencySLO"  # may be pending under healthy traffic on a slow machine
JOBS = ("emotion-local", "ray")  # the static job and the file_sd job, both pointed at this module's service
# Scrape (and rule-evaluation) interval and scrape timeout of the test's Prometheus. One scrape of the service takes
# 0.15-0.7 s on a busy 2-core machine, and a timed-out scrape marks every series stale: with 1 s, about one scrape
# in 15 failed. Instant checks below read `last_over_time(...[1m])` so that a failed scrape cannot fail them.
SCRAPE_S = 2
# Grafana's variables, as Grafana would fill them in for this data source (a 15 s scrape: 4 x 15 s).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$interval": "15s", "$job": JOBS[0]}

FACE = encode(Image.linear_gradient("L").resize((48, 48)))
FRAME = encode(Image.linear_gradient("L").resize((320, 240)).convert("RGB"), "JPEG", quality=85)
PNG, JPEG = {"content-type": "image/png"}, {"content-type": "image/jpeg"}


def wait_until(what: str, probe: Callable[[], Any]) -> Any:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after the hang guard."""
    deadline = time.monotonic() + HANG_GUARD_S
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if result := probe():
                return result
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {HANG_GUARD_S:.0f} s waiting for {what}")
        time.sleep(0.5)


@dataclass
class Prometheus:
    url: str
    log: Path
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=HANG_GUARD_S))

    def api(self, path: str, **params: Any) -> Any:
        body = self.client.get(f"{self.url}/api/v1/{path}", params=params).json()
        assert body["status"] == "success", f"/api/v1/{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def series(self, match: str) -> list[dict[str, str]]:
        result: list[dict[str, str]] = self.api("series", **{"match[]": match})
        return result

    def wait_for(self, expr: str) -> list[dict[str, Any]]:
        return wait_until(f"Prometheus to answer {expr!r} with data", lambda: self.query(expr))  # type: ignore[no-any-return]

    def alerts(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return result


@dataclass
class Scenario:
    """What the module's traffic left behind, for the tests to assert on."""

    start: float
    quiet_alerts: list[dict[str, Any]]  # /api/v1/alerts after the healthy traffic
    stressed_alerts: list[dict[str, Any]]  # after shedding and the stream fire hose
    shed_statuses: list[int]
    fire_hose_replies: list[dict[str, Any]]


# --- the service and Prometheus -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    """This module's own service: it admits one HTTP request at a time per ingress replica
    (EMOTION_MAX_INFLIGHT_REQUESTS=1), so sequential traffic is served and concurrent requests are shed with 503."""
    with private_service(max_inflight_requests=1) as running:
        yield running


def derived_config(target: str, file_sd: Path) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml as shipped, pointed at ``target``: the static job scrapes it, and the
    file_sd job reads ``file_sd``; short intervals; the rule files by absolute path."""
    config = yaml.safe_load(CONFIG.read_text())
    config["global"] = {**config.get("global", {}), "scrape_interval": f"{SCRAPE_S}s",
                        "scrape_timeout": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"}  # fmt: skip
    config["rule_files"] = [str((CONFIG.parent / name).resolve()) for name in config["rule_files"]]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert tuple(jobs) == JOBS, f"expected the jobs {JOBS} in {CONFIG}, found {list(jobs)}"
    jobs["emotion-local"]["static_configs"] = [{"targets": [target]}]
    jobs["ray"]["file_sd_configs"] = [{"files": [str(file_sd)]}]
    return config


@pytest.fixture(scope="module")
def prometheus(service: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = prometheus_binary()
    root = tmp_path_factory.mktemp("prometheus")
    target = urlsplit(service.metrics_url).netloc
    # The file_sd job reads what Ray's head node writes (ray/_private/metrics_agent.py, one group, job "ray"); the
    # embedded test Ray runs without the dashboard, which writes it, so the test writes the same content.
    file_sd = root / "prom_metrics_service_discovery.json"
    file_sd.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": [target]}]))
    config = root / "prometheus.yml"
    config.write_text(yaml.safe_dump(derived_config(target, file_sd), sort_keys=False))
    port, log = free_port(), root / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            return httpx.get(f"{url}/-/ready", timeout=HANG_GUARD_S).status_code == 200

        wait_until("Prometheus to be ready", ready)
        yield Prometheus(url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


# --- traffic --------------------------------------------------------------------------------------------------------


def stream(service: Service, frames: list[bytes]) -> list[dict[str, Any]]:
    """Send ``frames`` over WS /v1/stream as fast as possible, then ``end``; every reply, in order."""
    from websockets.exceptions import ConnectionClosedOK
    from websockets.sync.client import connect

    ws_url = service.url.replace("http://", "ws://") + "/v1/stream"
    replies: list[dict[str, Any]] = []
    with connect(ws_url, additional_headers={"x-api-key": API_KEY}, max_size=None) as ws:
        for frame in frames:
            ws.send(frame)
        ws.send("end")
        with contextlib.suppress(ConnectionClosedOK):  # the service answered everything, then closed
            while True:
                replies.append(json.loads(ws.recv(timeout=HANG_GUARD_S)))
    assert [r["index"] for r in replies] == list(range(len(frames)))
    return replies


def healthy_traffic(service: Service) -> None:
    """One request at a time: every route, bad inputs (4xx are healthy answers), a frame and a short stream."""
    client = service.client
    for path in ("/healthz", "/readyz", "/v1/model"):
        assert client.get(path).status_code == 200, path
    for _ in range(4):
        assert client.post("/v1/classify", content=FACE, headers=PNG).status_code == 200
    files = [("files", (f"{i}.png", FACE, "image/png")) for i in range(3)] + [("files", ("junk.png", b"junk"))]
    batch = client.post("/v1/classify/batch", files=files)
    assert batch.status_code == 200 and batch.json()["results"][3]["error"]["code"] == "invalid_image"
    for content, headers, status in ((b"\x13\x37" * 500, JPEG, 422), (b"", PNG, 400),
                                     (FACE, {"content-type": "application/json"}, 415)):  # fmt: skip
        assert client.post("/v1/classify", content=content, headers=headers).status_code == status
    assert client.get("/no/such/route").status_code == 404
    assert httpx.post(f"{service.url}/v1/classify", content=FACE, headers=PNG, timeout=HANG_GUARD_S).status_code == 401
    assert client.post("/v1/analyze", content=FRAME, headers=JPEG).status_code == 200
    assert client.post("/v1/analyze", content=b"not a frame", headers=JPEG).status_code == 422
    replies = stream(service, [FRAME] * 3)
    assert all("faces" in reply for reply in replies), replies


def shed(service: Service) -> list[int]:
    """Bursts of 8 concurrent requests until one is shed (503): the service admits one at a time."""

    def post(_: int) -> int:
        return service.client.post("/v1/classify", content=FACE, headers=PNG).status_code

    def burst() -> list[int] | None:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(post, range(8)))
        assert set(statuses) <= {200, 503}, statuses
        return statuses if 503 in statuses else None

    return wait_until("a request shed with 503", burst)  # type: ignore[no-any-return]


def fire_hose(service: Service) -> list[dict[str, Any]]:
    """Streams of 30 frames sent at once until the service drops some (drop-oldest: 2 frames wait per stream).
    A connection lost mid-stream is tried again: seen once at a load average of 11 on 2 cores, and what this
    module needs is the drop metric; stream robustness is tests/integration/test_frames.py's."""
    from websockets.exceptions import ConnectionClosedError

    def one() -> list[dict[str, Any]] | None:
        try:
            replies = stream(service, [FRAME] * 30)
        except ConnectionClosedError:
            return None
        return replies if any(reply.get("dropped") for reply in replies) else None

    return wait_until("a stream frame dropped", one)  # type: ignore[no-any-return]


def seen_after(prometheus: Prometheus, since: float) -> bool:
    """Every rule group has been evaluated since ``since`` (epoch seconds)."""
    from datetime import datetime

    groups = prometheus.api("rules")["groups"]
    return bool(groups) and all(datetime.fromisoformat(group["lastEvaluation"]).timestamp() > since for group in groups)


# Series the healthy traffic creates; each is looked for in both jobs.
CREATED = [
    'ray_emotion_requests_total{route="/v1/classify", status="200"}',
    'ray_emotion_requests_total{route="/v1/classify", status="422"}',
    'ray_emotion_requests_total{route="/v1/analyze", status="200"}',
    'ray_emotion_requests_total{route="unmatched", status="404"}',
    'ray_emotion_images_total{outcome="invalid_image"}',
    'ray_emotion_frames_total{route="/v1/analyze", outcome="invalid_image"}',
    'ray_emotion_frames_total{route="/v1/stream", outcome="ok"}',
    "ray_emotion_stream_dropped_frames_count",
    "ray_emotion_batch_size_count",
    "ray_emotion_predictions_total",
]


def both_jobs(selector: str, wrap: str = "{}") -> str:
    """``count by (job) (...)`` of ``selector`` (wrapped, e.g. in increase()) that must answer for both jobs."""
    return f"count by (job) ({wrap.format(selector)})"


def wait_in_both_jobs(prometheus: Prometheus, selector: str, wrap: str = "{}") -> None:
    expr = both_jobs(selector, wrap)
    wait_until(f"{expr} for the jobs {JOBS}", lambda: {r["metric"]["job"] for r in prometheus.query(expr)} >= set(JOBS))


@pytest.fixture(scope="module")
def scenario(service: Service, prometheus: Prometheus) -> Scenario:
    start = time.time()
    wait_until("both scrape jobs up", lambda: len(prometheus.query('up{job=~"emotion-local|ray"} == 1')) == 2)
    healthy_traffic(service)
    for selector in CREATED:
        wait_in_both_jobs(prometheus, selector)
    healthy_traffic(service)  # now the counters created above increase
    for selector in CREATED:
        wait_in_both_jobs(prometheus, selector, "increase({}[5m]) > 0")
    seen = time.time()
    wait_until("a rule evaluation after the traffic", lambda: seen_after(prometheus, seen))
    quiet_alerts = prometheus.alerts()

    statuses = shed(service)
    replies = fire_hose(service)
    stressed = ['ray_emotion_requests_total{status="503"}', 'ray_emotion_frames_total{outcome="dropped"}']
    for selector in stressed:
        wait_in_both_jobs(prometheus, selector)
    statuses += shed(service)
    replies += fire_hose(service)
    for selector in stressed:
        wait_in_both_jobs(prometheus, selector, "increase({}[5m]) > 0")
    wanted = {(name, job) for name in STRESS_ALERTS for job in JOBS}
    stressed_alerts = wait_until(
        f"the alerts {sorted(wanted)} to go pending",
        lambda: (
            (alerts := prometheus.alerts())
            and wanted <= {(a["labels"]["alertname"], a["labels"]["job"]) for a in alerts}
            and alerts
        ),
    )
    return Scenario(start, quiet_alerts, stressed_alerts, statuses, replies)


# --- tests ----------------------------------------------------------------------------------------------------------


def test_both_scrape_jobs_find_the_service(service: Service, prometheus: Prometheus, scenario: Scenario) -> None:
    targets = prometheus.api("targets")["activeTargets"]
    assert sorted(t["labels"]["job"] for t in targets) == sorted(JOBS), targets
    assert {t["scrapeUrl"] for t in targets} == {service.metrics_url}, targets

    def all_up() -> bool:  # polled: a single scrape may time out on a busy machine
        return all(t["health"] == "up" for t in prometheus.api("targets")["activeTargets"])

    wait_until("both targets up", all_up)


def test_every_exported_metric_is_recorded_with_its_labels(prometheus: Prometheus, scenario: Scenario) -> None:
    for name in EXPORTED_NAMES:
        for job in JOBS:
            series = prometheus.series(f'{name}{{job="{job}"}}')
            assert series, f"{name} not recorded for job {job}"
            # Serve adds its labels to every metric created in a replica.
            assert all({"application", "deployment", "replica"} <= set(s) for s in series), (name, series[:2])

    def values(selector: str, label: str) -> set[str]:
        return {s[label] for s in prometheus.series(selector) if label in s}

    routes = values('ray_emotion_requests_total{job="emotion-local"}', "route")
    wanted = {"/healthz", "/readyz", "/v1/model", "/v1/classify", "/v1/classify/batch", "/v1/analyze", "unmatched"}
    assert wanted <= routes, routes
    statuses = values('ray_emotion_requests_total{job="emotion-local", route="/v1/classify"}', "status")
    assert {"200", "400", "415", "422"} <= statuses, statuses
    # Refused before routing (no API key, no such route, shed by the middleware): no route template.
    unmatched = values('ray_emotion_requests_total{job="emotion-local", route="unmatched"}', "status")
    assert {"401", "404", "503"} <= unmatched, unmatched
    assert "/v1/classify" in values('ray_emotion_request_latency_ms_bucket{job="emotion-local"}', "route")
    stages = values('ray_emotion_stage_latency_ms_bucket{job="emotion-local"}', "stage")
    assert {"preprocess_call", "decode", "detect", "model_call", "inference"} <= stages, stages
    assert values('ray_emotion_batch_size_bucket{job="emotion-local"}', "le") >= {"1.0", "+Inf"}
    labels = set(service_labels())
    assert values('ray_emotion_predictions_total{job="emotion-local"}', "emotion") <= labels
    assert values('ray_emotion_predictions_total{job="emotion-local"}', "emotion")
    assert {"ok", "invalid_image"} <= values('ray_emotion_images_total{job="emotion-local"}', "outcome")
    frames = {(s["route"], s["outcome"]) for s in prometheus.series('ray_emotion_frames_total{job="emotion-local"}')}
    assert {("/v1/analyze", "ok"), ("/v1/analyze", "invalid_image"), ("/v1/stream", "ok"),
            ("/v1/stream", "dropped")} <= frames, frames  # fmt: skip
    assert {"/v1/analyze", "/v1/stream"} <= values('ray_emotion_faces_per_frame_bucket{job="emotion-local"}', "route")
    assert 503 in scenario.shed_statuses
    shed = 'last_over_time(ray_emotion_requests_total{job="emotion-local", route="unmatched", status="503"}[1m])'
    assert prometheus.query(f"{shed} > 0")
    # The closed streams: 2 healthy ones and at least 2 fire hoses (each exported a moment after it closed).
    closed = 'sum(last_over_time(ray_emotion_stream_dropped_frames_count{job="emotion-local"}[1m])) >= 4'
    prometheus.wait_for(closed)
    assert prometheus.query('last_over_time(ray_emotion_model_load_seconds{job="emotion-local"}[1m]) > 0')


def service_labels() -> list[str]:
    return list(load_contract(load_settings().model_dir, require_onnx=False).labels)


def alert_rules() -> dict[str, dict[str, Any]]:
    alerts = yaml.safe_load((CONFIG.parent / "alerts.yml").read_text())
    return {rule["alert"]: rule for group in alerts["groups"] for rule in group["rules"]}


def test_alert_rules_load_and_stay_quiet_under_healthy_traffic(prometheus: Prometheus, scenario: Scenario) -> None:
    """Loaded without errors; after healthy traffic nothing fires and nothing is pending, except that the latency
    SLO may be pending: how long a request takes on this machine is no property of the service (a shared CI core
    can take a second for one), and alerts_test.yml tests that rule both ways with exact latencies."""
    rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
    assert {rule["name"] for rule in rules if rule["type"] == "alerting"} == set(alert_rules())
    broken = [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"]
    assert not broken, broken
    firing = [a for a in scenario.quiet_alerts if a["state"] == "firing"]
    assert not firing, f"alerts firing under healthy traffic: {firing}"
    pending = [a for a in scenario.quiet_alerts if a["labels"]["alertname"] != SPEED_DEPENDENT]
    assert not pending, f"alerts pending under healthy traffic: {pending}"


def test_latency_slo_is_computed_from_the_real_histogram(prometheus: Prometheus, scenario: Scenario) -> None:
    """The SLO rule's p99 (its expression without the bound) is a number for each job."""
    expr = alert_rules()[SPEED_DEPENDENT]["expr"]
    p99, bound = re.fullmatch(r"(.*\S)\s*>\s*([0-9.]+)\s*", expr, flags=re.S).groups()  # type: ignore[union-attr]
    assert float(bound) == 250
    values = {r["metric"]["job"]: float(r["value"][1]) for r in prometheus.query(p99)}
    assert set(values) == set(JOBS) and all(0 < v < float("inf") for v in values.values()), values


def test_shedding_and_stream_drop_alerts_match_the_real_series(scenario: Scenario) -> None:
    """The burst is short: pending (their `for:` has not passed), never firing, and only for the jobs scraped."""
    states = {(a["labels"]["alertname"], a["labels"]["job"]): a["state"] for a in scenario.stressed_alerts}
    for name in STRESS_ALERTS:
        for job in JOBS:
            assert states.get((name, job)) == "pending", states
    assert any(reply.get("dropped") for reply in scenario.fire_hose_replies)


def test_alert_selectors_use_real_labels_and_values(prometheus: Prometheus, scenario: Scenario) -> None:
    """Every selector of alerts.yml names a recorded metric by labels it has; every `label="value"` matcher
    matches recorded series (a misspelt route, application or label would make an alert that can never fire)."""
    exprs = [rule["expr"] for rule in alert_rules().values()]
    selectors = {m for expr in exprs for m in re.findall(r"\b(ray_[a-z_]+)\s*\{([^}]*)\}", expr)}
    assert selectors
    for metric, matchers in selectors:
        recorded = prometheus.series(metric)
        assert recorded, f"{metric} is not recorded"
        names = set().union(*(set(s) for s in recorded))
        for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
            assert label in names, f"{metric} has no label {label} (it has {sorted(names)})"
            if op == "=":
                assert prometheus.series(f'{metric}{{{label}="{value}"}}'), f'no {metric}{{{label}="{value}"}}'


def dashboard_targets() -> list[Any]:
    """Every panel target as pytest.param(title, expr, id="panel<id>-<refId>"), rows' inner panels included."""
    board = json.loads(DASHBOARD.read_text())
    found = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    param_id = f"panel{panel['id']}-{target.get('refId', '')}"
                    found.append(pytest.param(panel["title"], target["expr"], id=param_id))
            walk(panel.get("panels", []))

    walk(board["panels"])
    assert found and len(found) == len(dashboard_expressions())
    return found


def concrete(expr: str) -> str:
    """A panel expression with Grafana's variables filled in; none may be left."""
    for name, value in sorted(GRAFANA_VARIABLES.items(), key=lambda item: -len(item[0])):
        expr = expr.replace("${" + name[1:] + "}", value).replace(name, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


@pytest.mark.parametrize(("title", "expr"), dashboard_targets())
def test_dashboard_expression_returns_data(prometheus: Prometheus, scenario: Scenario, title: str, expr: str) -> None:
    """Each panel target, as Grafana would send it over the scenario's time range, is accepted and draws a line."""
    query = concrete(expr)
    assert prometheus.query(query) is not None  # an instant query: accepted
    # A range query evaluates at start + k * step only. Starting at the scenario's start, the last point could fall
    # just before the newest sample (CI once saw a 503 counter's two samples at 607.99 and 609.99 s, and the
    # last point at 609.48 s: no rate). So the grid is laid back from now, which comes after every sample the
    # scenario waited for.
    end = time.time()
    start = end - math.ceil((end - scenario.start) / SCRAPE_S) * SCRAPE_S
    result = prometheus.api("query_range", query=query, start=start, end=end, step=SCRAPE_S)["result"]
    finite = [v for series in result for _, v in series["values"] if v not in ("NaN", "+Inf", "-Inf")]
    assert finite, f"panel {title!r}: {query} returned no data over the scenario"


def test_dashboard_job_variable_lists_both_jobs(prometheus: Prometheus, scenario: Scenario) -> None:
    board = json.loads(DASHBOARD.read_text())
    (job,) = [v for v in board["templating"]["list"] if v["name"] == "job"]
    metric = re.fullmatch(r"label_values\((\w+),\s*job\)", job["query"])
    assert metric, job["query"]
    assert set(prometheus.api("label/job/values", **{"match[]": metric.group(1)})) == set(JOBS)


def test_dashboard_draws_every_metric_the_service_exports(prometheus: Prometheus, scenario: Scenario) -> None:
    """The scrape side of tests/unit/test_docs.py's check: every ray_emotion_* name Prometheus recorded (also any
    not in EXPORTED_NAMES) is used by some panel."""
    recorded = [n for n in prometheus.api("label/__name__/values") if n.startswith("ray_emotion_")]
    base = {re.sub(r"_(bucket|sum|count)$", "_bucket", n) if n.endswith(("_bucket", "_sum", "_count")) else n
            for n in recorded}  # fmt: skip
    assert base >= set(EXPORTED_NAMES), f"not recorded: {sorted(set(EXPORTED_NAMES) - base)}"
    exprs = dashboard_expressions()
    missing = sorted(name for name in base if not uses_metric(exprs, name))
    assert not missing, f"no Grafana panel uses {missing}"
