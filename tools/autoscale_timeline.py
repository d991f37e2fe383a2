"""Autoscaling seen working: an open-loop step load on the 2-node cluster, one row per second.

    python -m tools.autoscale_timeline --candidate ray-defaults --out reports/autoscaling/ray-defaults
    python -m tools.autoscale_timeline --candidate tuned --out reports/autoscaling/tuned
    python -m tools.autoscale_timeline --candidate recommended --rates 20,80,160,320,160,80,20,20,20,20,20 \
        --step-s 30 --out reports/autoscaling/recommended        # and --candidate queue-delay, the same way
    python -m tools.autoscale_timeline --candidate tuned --rates 20,80,160 --step-s 30 --out /tmp/quick

It starts the 2-node cluster of ``tools/cluster.py`` (docs/cluster.md's steps on two raylets of 2 logical CPUs)
and ``serve deploy``s a copy of deploy/serve_config.yaml in which every deployment has the candidate's
``autoscaling_config`` (min 1, max 2, ``max_replicas_per_node: 1``: one replica per node at most) instead of
``num_replicas``. Then an open-loop load: single FER2013 faces to ``/v1/classify``, ``--rates`` requests per
second, each for ``--step-s`` seconds (a bounded count: sum(rate x step) requests). Latency counts from each
request's scheduled start, so a slow server cannot hide its queue (no coordinated omission); a well-behaved client
would honour Retry-After, an open loop does not, so 503s are the overload itself.

Every second it records: the offered load, the served throughput (200s answered in that second), p99 of the 200s
answered in that second, 503s/s, other errors/s, and per deployment the replicas as Serve's own Prometheus metrics
say (``ray_serve_deployment_replica_healthy``: healthy replicas; ``ray_serve_autoscaling_target_replicas``: what the
autoscaler decided; ``ray_serve_autoscaling_total_requests``: the ongoing requests it decided on), scraped from
both nodes' ``--metrics-export-port``; and, as a cross-check, the RUNNING replicas of Serve's replica details.
Writes ``timeline.csv``, ``timeline.png`` and ``summary.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DEPLOYMENTS = ("Ingress", "Preprocessor", "EmotionModel")
DEFAULT_RATES = (20, 80, 160, 240, 160, 80, 20)
REQUEST_TIMEOUT_S = 10.0  # an answer later than this is an error (the service's own bound sheds long before)
MAX_CONNECTIONS = 1024  # above the service's in-flight limits, so overload reaches it
# The metrics this tool reads; Ray exports them with the ``ray_`` prefix.
HEALTHY = "ray_serve_deployment_replica_healthy"
TARGET = "ray_serve_autoscaling_target_replicas"
TOTAL_REQUESTS = "ray_serve_autoscaling_total_requests"
METRICS = (HEALTHY, TARGET, TOTAL_REQUESTS)


def _fast(target_ongoing_requests: float) -> dict[str, Any]:
    """React within seconds, not Ray's 30 s up / 600 s down, and scale down once a step's load is gone."""
    return {"target_ongoing_requests": target_ongoing_requests, "upscale_delay_s": 5, "downscale_delay_s": 60,
            "look_back_period_s": 10, "metrics_interval_s": 2}  # fmt: skip


def _cluster(target_ongoing_requests: float) -> dict[str, Any]:
    """10 s up (damps flapping), 120 s down (keeps replicas through a short lull), 10 s look-back, 2 s reports."""
    return {"target_ongoing_requests": target_ongoing_requests, "upscale_delay_s": 10, "downscale_delay_s": 120,
            "look_back_period_s": 10, "metrics_interval_s": 2}  # fmt: skip


# Candidates: autoscaling_config per deployment (min/max are added by ``autoscaled``).
CANDIDATES: dict[str, dict[str, dict[str, Any]]] = {
    # Ray 2.60's defaults: target_ongoing_requests 2, upscale_delay_s 30, downscale_delay_s 600, look_back_period_s
    # 30, metrics_interval_s 10.
    "ray-defaults": {name: {} for name in DEPLOYMENTS},
    # The ingress's coalescer sends at most ``max_calls_in_flight`` (2) calls downstream per ingress replica, so a
    # downstream target of 2 could never ask for a second replica while one ingress serves: 1 downstream.
    "tuned": {"Ingress": _fast(4), "Preprocessor": _fast(1), "EmotionModel": _fast(1)},
    # The values reports/autoscaling/README.md recommends for clusters (min_replicas 2 there; 1 here, to see scaling).
    "recommended": {"Ingress": _cluster(8), "Preprocessor": _cluster(1.5), "EmotionModel": _cluster(1.5)},
    # The same bounds and delays; the decision is GraphDelayPolicy's (APP_POLICIES), targets are ignored.
    "queue-delay": {"Ingress": _cluster(8), "Preprocessor": _cluster(1.5), "EmotionModel": _cluster(1.5)},
}
# Candidates with an application-level policy (serve.runtime.autoscaling), which overrides per-deployment policies.
APP_POLICIES: dict[str, dict[str, Any]] = {
    "queue-delay": {
        "policy_function": "serve.runtime.autoscaling:GraphDelayPolicy",
        "policy_kwargs": {"target_age_s": 0.25},
    },
}


# ---- pure parts (tests/unit/tools/test_autoscale_timeline.py) -------------------------------------------------


def autoscaled(
    config: dict[str, Any], per_deployment: dict[str, dict[str, Any]], max_replicas: int = 2,
    app_policy: dict[str, Any] | None = None,
) -> None:
    """Replace ``num_replicas`` by an ``autoscaling_config`` (min 1, max ``max_replicas``, plus the candidate's
    values) in the parsed Serve config, one replica per node at most (so a scale-up lands on the other node); with
    ``app_policy``, the application's ``autoscaling_policy`` too."""
    if app_policy is not None:
        config["applications"][0]["autoscaling_policy"] = app_policy
    for deployment in config["applications"][0]["deployments"]:
        extra = per_deployment.get(deployment["name"])
        if extra is None:
            continue
        deployment.pop("num_replicas", None)
        deployment["autoscaling_config"] = {"min_replicas": 1, "max_replicas": max_replicas, **extra}
        deployment["max_replicas_per_node"] = 1


def schedule(rates: Sequence[float], step_s: float) -> list[float]:
    """Send times (s from the start) of an open loop at ``rates[i]`` req/s for ``step_s`` s each, evenly spaced."""
    times: list[float] = []
    for i, rate in enumerate(rates):
        if rate <= 0:  # an idle step: nothing sent, the sampler still records
            continue
        count = round(rate * step_s)
        times += [i * step_s + k / rate for k in range(count)]
    return times


_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\}\s+(\S+)")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def parse_metrics(texts: Iterable[str], names: tuple[str, ...] = METRICS) -> dict[str, dict[str, float]]:
    """``{metric: {deployment: value}}`` from Prometheus texts (one per node): samples summed per deployment (the
    controller exports its gauges on the head only; with source tags on, one series per replica)."""
    out: dict[str, dict[str, float]] = {name: {} for name in names}
    for text in texts:
        for line in text.splitlines():
            if not line.startswith(names):  # cheap filter: a scrape is ~1 MB per node
                continue
            match = _SAMPLE.match(line)
            if match is None or match.group(1) not in out:
                continue
            labels = dict(_LABEL.findall(match.group(2)))
            deployment = labels.get("deployment")
            if deployment is None:
                continue
            value = float(match.group(3))
            if math.isfinite(value):
                per = out[match.group(1)]
                per[deployment] = per.get(deployment, 0.0) + value
    return out


@dataclass(frozen=True)
class Answer:
    scheduled: float  # s from the start of the load
    ended: float
    status: int  # 0: no HTTP answer (timeout, connection lost)


@dataclass
class Sample:
    """What the sampler saw at ``at`` (s from the start of the load)."""

    at: float
    metrics: dict[str, dict[str, float]]
    running: dict[str, int] = field(default_factory=dict)  # Serve's replica details (cross-check)
    host_cpu_pct: float | None = None  # the whole machine: other tenants share these 2 cores


def p99(values: Sequence[float]) -> float | None:
    """Nearest-rank 99th percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def per_second(answers: Sequence[Answer], sent: Sequence[float], samples: Sequence[Sample], seconds: int
               ) -> list[dict[str, Any]]:  # fmt: skip
    """One row per second ``t`` (covering [t, t+1)): offered (sends scheduled in it), ok/503/other answered in it,
    p99 (ms) of its 200s, and the last sample taken in it (replicas per deployment)."""
    offered = [0] * seconds
    for at in sent:
        if 0 <= int(at) < seconds:
            offered[int(at)] += 1
    ok: list[list[float]] = [[] for _ in range(seconds)]
    shed, other = [0] * seconds, [0] * seconds
    for a in answers:
        sec = int(a.ended)
        if not 0 <= sec < seconds:
            continue
        if a.status == 200:
            ok[sec].append((a.ended - a.scheduled) * 1000.0)
        elif a.status == 503:
            shed[sec] += 1
        else:
            other[sec] += 1
    by_second: dict[int, Sample] = {}
    for s in samples:
        by_second[int(s.at)] = s  # the last one of that second
    rows: list[dict[str, Any]] = []
    last: Sample | None = None
    for t in range(seconds):
        last = by_second.get(t, last)  # a missed scrape repeats the previous one, as a gauge would
        tail = p99(ok[t])
        row: dict[str, Any] = {"t": t, "offered": offered[t], "ok": len(ok[t]), "p99_ms": None if tail is None
                               else round(tail, 1), "shed_503": shed[t], "errors": other[t],
                               "host_cpu_pct": last.host_cpu_pct if last else None}  # fmt: skip
        for d in DEPLOYMENTS:
            metrics = last.metrics if last else {}
            row[f"healthy_{d}"] = metrics.get(HEALTHY, {}).get(d)
            row[f"target_{d}"] = metrics.get(TARGET, {}).get(d)
            row[f"ongoing_{d}"] = metrics.get(TOTAL_REQUESTS, {}).get(d)
            row[f"running_api_{d}"] = last.running.get(d) if last else None
        rows.append(row)
    return rows


def summarize(rows: Sequence[dict[str, Any]], rates: Sequence[float], step_s: float) -> dict[str, Any]:
    """Per step: offered, served, 503s, other errors (per second), p99 over the step's 200s is not derivable from
    per-second p99s, so the step's worst per-second p99; per deployment the most healthy replicas and when
    (s from the start) the healthy count first rose above 1 and last fell back to 1."""
    steps = []
    for i, rate in enumerate(rates):
        part = [r for r in rows if i * step_s <= r["t"] < (i + 1) * step_s]
        secs = max(1, len(part))
        p99s = [r["p99_ms"] for r in part if r["p99_ms"] is not None]
        steps.append({
            "rate": rate, "offered_per_s": round(sum(r["offered"] for r in part) / secs, 1),
            "ok_per_s": round(sum(r["ok"] for r in part) / secs, 1),
            "shed_503_per_s": round(sum(r["shed_503"] for r in part) / secs, 1),
            "errors": sum(r["errors"] for r in part), "worst_p99_ms": max(p99s) if p99s else None,
            "median_p99_ms": sorted(p99s)[len(p99s) // 2] if p99s else None,
            "healthy": {d: max((r[f"healthy_{d}"] or 0 for r in part), default=0) for d in DEPLOYMENTS},
        })  # fmt: skip
    scaling = {}
    for d in DEPLOYMENTS:
        up = next((r["t"] for r in rows if (r[f"healthy_{d}"] or 0) > 1), None)
        down = None
        if up is not None:
            later = [r["t"] for r in rows if r["t"] > up and (r[f"healthy_{d}"] or 0) <= 1
                     and (r[f"healthy_{d}"] is not None)]  # fmt: skip
            down = later[0] if later else None
        target_up = next((r["t"] for r in rows if (r[f"target_{d}"] or 0) > 1), None)
        scaling[d] = {"target_above_1_at_s": target_up, "healthy_above_1_at_s": up, "healthy_back_to_1_at_s": down}
    return {"steps": steps, "scaling": scaling}


# ---- the run ----------------------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Scrape both nodes' metrics (and Serve's replica details) about once a second, in the background."""

    def __init__(self, urls: Sequence[str], start: float) -> None:
        super().__init__(name="autoscale-sampler", daemon=True)
        self.urls, self.start_at = list(urls), start
        self.samples: list[Sample] = []
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        from tools.fault_probe import replicas

        psutil.cpu_percent(interval=None)  # the first call only starts the measurement
        with httpx.Client(timeout=5.0) as client:
            while not self.stop.is_set():
                began = time.monotonic()
                texts = []
                for url in self.urls:
                    try:
                        texts.append(client.get(url).text)
                    except httpx.HTTPError:
                        continue  # a node busy for a moment: the next second's scrape fills in
                try:
                    running = {d: sum(r["state"] == "RUNNING" for r in rs) for d, rs in replicas().items()}
                except Exception:  # the controller busy: the cross-check only
                    running = {}
                self.samples.append(Sample(time.monotonic() - self.start_at, parse_metrics(texts), running,
                                           psutil.cpu_percent(interval=None)))  # fmt: skip
                self.stop.wait(max(0.0, 1.0 - (time.monotonic() - began)))


async def open_loop(host: str, port: int, bodies: Sequence[bytes], sent: Sequence[float], start: float
                    ) -> list[Answer]:  # fmt: skip
    """Send request ``i`` at ``start + sent[i]`` whatever the answers do, on up to ``MAX_CONNECTIONS`` keep-alive
    connections; every answer (or its absence) is recorded."""
    from loadtests.httpclient import Connection

    idle: asyncio.Queue[Connection] = asyncio.Queue()
    opened = 0
    answers: list[Answer] = []

    async def fire(request: bytes, scheduled: float) -> None:
        nonlocal opened
        status = 0
        conn: Connection | None = None
        try:
            try:
                conn = idle.get_nowait()
            except asyncio.QueueEmpty:
                if opened >= MAX_CONNECTIONS:
                    conn = await asyncio.wait_for(idle.get(), REQUEST_TIMEOUT_S)
                else:
                    opened += 1
                    conn = await asyncio.wait_for(Connection.open(host, port), REQUEST_TIMEOUT_S)
            remaining = max(0.001, REQUEST_TIMEOUT_S - (time.monotonic() - start - scheduled))
            status, headers, _ = await asyncio.wait_for(conn.send(request), remaining)
            if headers.get(b"connection", b"").lower() == b"close":
                raise ConnectionResetError("server closed the connection")
            idle.put_nowait(conn)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
            if conn is not None:
                conn.close()
                opened -= 1
        answers.append(Answer(scheduled, time.monotonic() - start, status))

    tasks = []
    payloads = itertools.cycle(bodies)
    for at in sent:
        delay = start + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(next(payloads), at)))
    await asyncio.gather(*tasks)
    while not idle.empty():
        idle.get_nowait().close()
    return answers


def face_requests(host_port: str, count: int = 256) -> list[bytes]:
    """Pre-encoded ``POST /v1/classify`` requests of single FER2013 test faces (as tools/fault_probe.py loads them)."""
    from loadtests.data import content_type, fer_faces
    from loadtests.httpclient import encode_request

    return [encode_request("POST", "/v1/classify", host_port, f.data, content_type(f.data)) for f in fer_faces(count)]


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(path: Path, rows: Sequence[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on the measuring machine
    import matplotlib.pyplot as plt

    t = [r["t"] for r in rows]
    fig, axes = plt.subplots(4, 1, sharex=True, figsize=(11, 10), constrained_layout=True)
    load, lat, reps, ongoing = axes
    load.plot(t, [r["offered"] for r in rows], label="offered req/s", color="grey", drawstyle="steps-post")
    load.plot(t, [r["ok"] for r in rows], label="served (200) /s", color="tab:green")
    load.plot(t, [r["shed_503"] for r in rows], label="503 /s", color="tab:red")
    load.plot(t, [r["errors"] for r in rows], label="other errors /s", color="black", linestyle=":")
    load.set_ylabel("requests / s")
    load.legend(loc="upper left", fontsize=8)
    lat.plot(t, [r["p99_ms"] if r["p99_ms"] is not None else math.nan for r in rows], color="tab:purple")
    lat.set_yscale("log")
    lat.set_ylabel("p99 of the second (ms)")
    cpu = lat.twinx()  # the whole machine's CPU: contention from other tenants shows here
    cpu.plot(t, [r["host_cpu_pct"] if r["host_cpu_pct"] is not None else math.nan for r in rows], color="grey",
             alpha=0.4, linewidth=0.8)  # fmt: skip
    cpu.set_ylim(0, 105)
    cpu.set_ylabel("host CPU % (grey)")
    colors = dict(zip(DEPLOYMENTS, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    for i, d in enumerate(DEPLOYMENTS):
        offset = (i - 1) * 0.04  # keep equal counts apart
        healthy = [r[f"healthy_{d}"] + offset if r[f"healthy_{d}"] is not None else math.nan for r in rows]
        target = [r[f"target_{d}"] + offset if r[f"target_{d}"] is not None else math.nan for r in rows]
        reps.plot(t, healthy, color=colors[d], label=f"{d} healthy", drawstyle="steps-post")
        reps.plot(t, target, color=colors[d], label=f"{d} target", linestyle="--", drawstyle="steps-post", alpha=0.6)
        ongoing.plot(t, [r[f"ongoing_{d}"] if r[f"ongoing_{d}"] is not None else math.nan for r in rows],
                     color=colors[d], label=d)  # fmt: skip
    reps.set_ylabel("replicas\n(Serve's metrics)")
    reps.set_ylim(0, 2.6)
    reps.legend(loc="upper left", fontsize=7, ncol=3)
    ongoing.set_ylabel("autoscaler's input:\nongoing requests")
    ongoing.set_xlabel("seconds since the load began")
    ongoing.legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(candidate: str, rates: Sequence[float], step_s: float, out: Path) -> dict[str, Any]:
    from tools import cluster
    from tools.fault_probe import wait_whole

    per_deployment = CANDIDATES[candidate]
    out.mkdir(parents=True, exist_ok=True)
    # Ray exports metrics every 10 s by default: every second, so the timeline's replica counts lag <= ~1 s. The
    # controller re-sets each replica's healthy gauge only every RAY_SERVE_STATUS_GAUGE_REPORT_INTERVAL_S (10 s)
    # and a series not set since the last export is left out of it: a scrape then misses replicas (measured: the
    # ray-defaults run read 1 healthy Ingress replica while Serve's details listed 2 RUNNING). Every second here.
    env = {"RAY_metrics_report_interval_ms": "1000", "RAY_SERVE_STATUS_GAUGE_REPORT_INTERVAL_S": "1"}
    before = os.getloadavg()
    app_policy = APP_POLICIES.get(candidate)
    with cluster.running(lambda c: autoscaled(c, per_deployment, app_policy=app_policy), extra_env=env,
                         workdir=out) as c:  # fmt: skip
        wait_whole(dict.fromkeys(DEPLOYMENTS, 1))
        host_port = c.url.split("://", 1)[1]
        host, _, port = host_port.rpartition(":")
        bodies = face_requests(host_port)
        sent = schedule(rates, step_s)
        seconds = math.ceil(len(rates) * step_s + REQUEST_TIMEOUT_S)
        start = time.monotonic()
        sampler = Sampler(c.metrics_urls, start)
        sampler.start()
        try:
            answers = asyncio.run(open_loop(host, int(port), bodies, sent, start))
            # Keep sampling until the last second of the rows is covered.
            while time.monotonic() - start < seconds:
                time.sleep(0.5)
        finally:
            sampler.stop.set()
            sampler.join(timeout=10)
    rows = per_second(answers, sent, sampler.samples, seconds)
    seen = {name for s in sampler.samples for name, per in s.metrics.items() if per}
    summary = {
        "candidate": candidate, "autoscaling_config": per_deployment, "autoscaling_policy": app_policy,
        "rates": list(rates), "step_s": step_s,
        "requests": len(sent), "answers": len(answers), "load_average_before_after": [before, os.getloadavg()],
        "statuses": {str(k): v for k, v in sorted(_count(a.status for a in answers).items())},
        "replica_source": "Serve's Prometheus metrics" if HEALTHY in seen else "Serve's replica details (fallback)",
        "metrics_seen": sorted(seen), **summarize(rows, rates, step_s),
    }  # fmt: skip
    write_csv(out / "timeline.csv", rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(out / "timeline.png", rows, f"{candidate}: open-loop step load {list(rates)} req/s x {step_s:g} s, "
         "single FER2013 faces, 2 raylets x 2 CPUs on one 2-core host")  # fmt: skip
    return summary


def _count(values: Iterable[int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidate", choices=sorted(CANDIDATES), default="tuned")
    parser.add_argument("--rates", default=",".join(map(str, DEFAULT_RATES)), help="req/s per step, comma-separated")
    parser.add_argument("--step-s", type=float, default=40.0, help="seconds per step")
    parser.add_argument("--out", type=Path, default=Path("reports/autoscaling"))
    opts = parser.parse_args(argv)
    rates = [float(r) for r in opts.rates.split(",")]
    summary = run(opts.candidate, rates, opts.step_s, opts.out)
    print(json.dumps({k: v for k, v in summary.items() if k != "metrics_seen"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
