"""One benchmark run on one machine: onnxruntime in-process, a no-op HTTP endpoint, the plain FastAPI baseline
and the Ray Serve graph, closed loop (N clients) and open loop (fixed rates), single images and 32-image requests.

    python -m loadtests.benchmark --out reports/benchmark            # full run, < ~10 minutes
    python -m loadtests.benchmark --out reports/tmp/bench --quick    # CI smoke, < ~60 s
    python -m loadtests.benchmark --out reports/tmp/ab --criteria-only --targets onnxruntime,baseline,ray \
        --ray-variant serial=EMOTION_ORT_PARALLEL_RUNS=1               # A/B of one change, ~3 minutes
    python -m loadtests.benchmark --streams-only --out reports/streams  # WS stream capacity only (stream_capacity)

Writes ``benchmark.md`` (table), ``throughput.png``, ``p99.png`` and ``results.json`` into ``--out``; server logs
go to ``--logs``; ``--streams`` adds ``streams.md`` and ``streams.json``. Servers bind 127.0.0.1 on free ports
in 8100-8199 and are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loadtests import httpclient, inproc, stream_capacity
from loadtests.checks import InvalidResponse, check_batch, check_classify
from loadtests.data import fer_faces, multipart
from loadtests.report import write_report
from loadtests.servers import REPO, Server, ServerError, cpu_meter, free_port, mean_batch_sizes, scrape
from models.contract import DEFAULT_MODEL_DIR, load_contract

logger = logging.getLogger("loadtests.benchmark")

BATCH = 32
TARGETS = ("onnxruntime", "noop", "baseline", "ray")


@dataclass(frozen=True)
class Plan:
    """Loads to measure and for how long. Closed loop: concurrent clients; open loop: requests per second."""

    seconds: float = 10.0
    warmup: float = 2.0
    ort_seconds: float = 3.0
    single_clients: tuple[int, ...] = (1, 4, 8, 16)
    single_rates: tuple[float, ...] = (25, 50, 100, 150)
    batch_clients: tuple[int, ...] = (1, 2, 4)
    batch_rates: tuple[float, ...] = (2, 4, 8)
    metrics_wait: float = 2.5  # Ray exports metrics every second (RAY_metrics_report_interval_ms below)


QUICK = Plan(
    seconds=1.5,
    warmup=0.5,
    ort_seconds=0.3,
    single_clients=(8,),
    single_rates=(50,),
    batch_clients=(2,),
    batch_rates=(),
    metrics_wait=1.5,
)

# A/B runs of one change: only the cells that the criteria read (closed loop), in a few minutes.
CRITERIA_ONLY = Plan(single_clients=(8,), single_rates=(), batch_clients=(1, 2, 4), batch_rates=())


@dataclass
class Row:
    """One measurement cell."""

    target: str
    workload: str  # "single" | "batch32"
    mode: str  # "closed" (load = clients) | "open" (load = offered req/s) | "in-process" (load = batch size)
    load: float
    requests_per_s: float
    images_per_s: float
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    error_pct: float = 0.0
    shed: int = 0
    timeouts: int = 0
    server_cpu_pct: float | None = None
    client_cpu_pct: float | None = None
    machine_cpu_pct: float | None = None
    batch: dict[str, float] = field(default_factory=dict)
    config: str = ""
    errors: list[str] = field(default_factory=list)


def judge_for(workload: str, labels: tuple[str, ...]) -> httpclient.Judge:
    def judge(status: int, headers: dict[bytes, bytes], body: bytes) -> httpclient.Outcome:
        if status == 503 and b"retry-after" in headers:
            return "shed"
        if status != 200:
            return "error"
        try:
            parsed = json.loads(body)
            if workload == "single":
                check_classify(parsed, labels)
            else:
                check_batch(parsed, BATCH, labels)
        except (InvalidResponse, ValueError):
            return "error"
        return "ok"

    return judge


def requests_for(workload: str, port: int) -> list[bytes]:
    host = f"127.0.0.1:{port}"
    faces = fer_faces()
    if workload == "single":
        return [httpclient.encode_request("POST", "/v1/classify", host, f.data, "image/jpeg") for f in faces[:256]]
    bodies = [multipart("files", [f.data for f in faces[i * BATCH : (i + 1) * BATCH]]) for i in range(8)]
    return [httpclient.encode_request("POST", "/v1/classify/batch", host, b, ct) for b, ct in bodies]


def _percentile(latencies: list[float], q: float) -> float | None:
    return round(float(np.percentile(latencies, q)) * 1000, 1) if latencies else None


def _row(target: str, workload: str, mode: str, load: float, tally: httpclient.Tally, cpu: dict[str, float]) -> Row:
    per = BATCH if workload == "batch32" else 1
    ok = len(tally.latencies)
    span = tally.elapsed or 1.0
    return Row(
        target=target, workload=workload, mode=mode, load=load,
        requests_per_s=round(ok / span, 1), images_per_s=round(ok * per / span, 1),
        p50_ms=_percentile(tally.latencies, 50), p95_ms=_percentile(tally.latencies, 95),
        p99_ms=_percentile(tally.latencies, 99),
        error_pct=round(100 * tally.errors / tally.sent, 2) if tally.sent else 0.0,
        shed=tally.shed, timeouts=tally.timeouts,
        server_cpu_pct=round(100 * cpu["server"] / span, 1), client_cpu_pct=round(100 * cpu["client"] / span, 1),
        machine_cpu_pct=round(100 * cpu["machine"] / span, 1), errors=tally.error_samples,
    )  # fmt: skip


def measure_http(server: Server, plan: Plan, labels: tuple[str, ...], metrics_port: int | None,
                 workloads: Sequence[str] = ("single", "batch32"), open_loop: bool = True,
                 timeout: float = httpclient.DEFAULT_TIMEOUT_S) -> list[Row]:  # fmt: skip
    """Every cell of ``plan`` against one running server; a request slower than ``timeout`` s is a timeout."""
    rows = []
    for workload in workloads:
        requests, judge = requests_for(workload, server.port), judge_for(workload, labels)
        port = server.port
        asyncio.run(httpclient.closed_loop("127.0.0.1", port, requests, judge, 2, plan.warmup, timeout))
        clients = plan.single_clients if workload == "single" else plan.batch_clients
        rates = plan.single_rates if workload == "single" else plan.batch_rates
        cells = [("closed", float(c)) for c in clients] + ([("open", r) for r in rates] if open_loop else [])
        for mode, load in cells:
            before = _scrape(metrics_port)
            with cpu_meter(server) as cpu:
                if mode == "closed":
                    run = httpclient.closed_loop("127.0.0.1", port, requests, judge, int(load), plan.seconds, timeout)
                else:
                    run = httpclient.open_loop("127.0.0.1", port, requests, judge, load, plan.seconds, timeout)
                tally = asyncio.run(run)
            row = _row(server.name, workload, mode, load, tally, cpu)
            if metrics_port is not None:
                time.sleep(plan.metrics_wait)
                row.batch = mean_batch_sizes(before, _scrape(metrics_port))
            logger.info("%s", _brief(row))
            rows.append(row)
    return rows


def _scrape(port: int | None) -> dict[tuple[str, str], float]:
    if port is None:
        return {}
    try:
        return scrape(port)
    except (OSError, ServerError) as exc:
        logger.warning("metrics scrape failed: %s", exc)
        return {}


def _brief(row: Row) -> str:
    return (
        f"{row.target:<11} {row.workload:<7} {row.mode:<10} {row.load:>5g}: {row.requests_per_s:7.1f} req/s "
        f"{row.images_per_s:7.1f} img/s p50 {row.p50_ms} p99 {row.p99_ms} err {row.error_pct}% shed {row.shed} "
        f"cpu srv {row.server_cpu_pct} cli {row.client_cpu_pct} all {row.machine_cpu_pct} {row.batch or ''}"
    )


def baseline_command(port: int, model_dir: Path, threads: int) -> list[str]:
    """The plain single-process server (``loadtests.baseline_server``) on ``port``."""
    return [sys.executable, "-m", "loadtests.baseline_server", "--port", str(port), "--model-dir", str(model_dir),
            "--threads", str(threads)]  # fmt: skip


def ray_env(port: int, metrics_port: int, model_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the graph runs under: its ports and model, Ray's metrics every second (batch sizes are read
    from them), no usage stats; ``extra`` (a variant's variables) last."""
    return {"EMOTION_HOST": "127.0.0.1", "EMOTION_PORT": str(port), "EMOTION_METRICS_EXPORT_PORT": str(metrics_port),
            "EMOTION_MODEL_DIR": str(model_dir), "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_metrics_report_interval_ms": "1000", **(extra or {})}  # fmt: skip


def ray_command(explicit: str | None) -> list[str] | None:
    """The command that starts the Ray Serve graph: ``--ray-cmd``, else ``emotion serve`` when serve/ has it."""
    if explicit:
        return shlex.split(explicit)
    if (REPO / "serve" / "cli.py").is_file() and (REPO / "serve" / "app.py").is_file():
        return [sys.executable, "-m", "serve.cli", "serve"]
    return None


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """``haproxy=RAY_SERVE_THROUGHPUT_OPTIMIZED=1,RAY_SERVE_ENABLE_HA_PROXY=1`` -> ("ray-haproxy", {...})."""
    name, _, assignments = spec.partition("=")
    env = dict(item.split("=", 1) for item in assignments.split(",") if "=" in item)
    if not name or not env:
        raise SystemExit(f"--ray-variant {spec!r}: expected NAME=VAR=VALUE[,VAR=VALUE...]")
    return f"ray-{name}", env


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = QUICK if args.quick else Plan(seconds=args.seconds)
    if args.criteria_only:
        plan = dataclasses.replace(CRITERIA_ONLY, seconds=args.seconds)
    contract = load_contract(args.model_dir)
    labels = contract.answer_labels
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.streams_only:  # streams go to the Ray graph only: the other targets have no WS /v1/stream
        targets = [t for t in targets if t == "ray"]
    stream_plan = stream_capacity.plan_from(args) if args.streams or args.streams_only else None
    streams: dict[str, Any] = {}
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    started = time.time()
    fer_faces()  # load the data before any timing

    if "onnxruntime" in targets:
        for cell in inproc.measure(args.model_dir, plan.ort_seconds, (1, BATCH)):
            row = Row(
                target=cell.kind,
                workload="single" if cell.batch == 1 else "batch32",
                mode="in-process",
                load=cell.batch,
                requests_per_s=round(cell.images_per_s / cell.batch, 1),
                images_per_s=cell.images_per_s,
                client_cpu_pct=cell.cpu_pct,
                config=cell.config,
            )
            rows.append(row)
            logger.info("%s", _brief(rows[-1]))

    taken: list[int] = []

    def port() -> int:
        taken.append(free_port(taken=taken))
        return taken[-1]

    py = sys.executable
    specs: list[tuple[str, list[str] | None, int, dict[str, str], int | None]] = []
    if "noop" in targets:
        p = port()
        specs.append(("noop", [py, "-m", "loadtests.baseline_server", "--noop", "--port", str(p)], p, {}, None))
    if "baseline" in targets:
        p = port()
        specs.append(("baseline", baseline_command(p, args.model_dir, args.baseline_threads), p, {}, None))
    variants: list[tuple[str, dict[str, str]]] = [("ray", {})] if "ray" in targets else []
    variants += [parse_variant(v) for v in args.ray_variant]
    for name, extra_env in variants:
        p, mport = port(), port()
        specs.append((name, ray_command(args.ray_cmd), p, ray_env(p, mport, args.model_dir, extra_env), mport))

    for name, cmd, p, env, metrics_port in specs:
        if cmd is None:
            skipped[name] = "no Ray Serve graph in serve/ yet (or pass --ray-cmd)"
            continue
        server = Server(name, cmd, p, args.logs / f"{name}.log", env)
        t0 = time.perf_counter()
        try:
            server.start(timeout=args.start_timeout)
            logger.info("%s ready in %.1f s", name, time.perf_counter() - t0)
            if not args.streams_only:
                rows += measure_http(server, plan, labels, metrics_port, open_loop=name != "noop",
                                     timeout=args.request_timeout)  # fmt: skip
            if stream_plan is not None and name.startswith("ray"):
                streams[name] = stream_capacity.measure(server, stream_plan)
        except ServerError as exc:
            skipped[name] = str(exc)
            logger.error("%s: %s", name, exc)
        finally:
            server.stop()
    return {
        "command": shlex.join(["python", "-m", "loadtests.benchmark", *args.argv]),
        "machine": inproc.machine(),
        "model": {"name": contract.name, "version": contract.version, "dir": str(args.model_dir)},
        "plan": asdict(plan),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "skipped": skipped,
        "rows": [asdict(r) for r in rows],
        **({"streams": streams} if stream_plan is not None else {}),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "benchmark", help="report folder")
    parser.add_argument("--logs", type=Path, default=REPO / "reports" / "tmp" / "benchmark-logs")
    parser.add_argument("--quick", action="store_true", help="CI smoke: 2 s cells, fewer loads (< ~60 s)")
    parser.add_argument("--criteria-only", action="store_true", help="A/B: only the cells the criteria read")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per cell (full run)")
    parser.add_argument("--request-timeout", type=float, default=httpclient.DEFAULT_TIMEOUT_S,
                        help="a request slower than this many seconds counts as a timeout (an error)")  # fmt: skip
    parser.add_argument("--start-timeout", type=float, default=300.0,
                        help="give up on a server not ready after this many seconds (a hang guard)")  # fmt: skip
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"subset of {','.join(TARGETS)}")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--baseline-threads", type=int, default=0, help="baseline's onnxruntime threads (0 = default)")
    parser.add_argument("--ray-cmd", help="command starting the Ray graph (default: python -m serve.cli serve)")
    parser.add_argument(
        "--ray-variant",
        action="append",
        default=[],
        metavar="NAME=VAR=VALUE[,VAR=VALUE]",
        help="also measure the graph with these environment variables, as target ray-NAME (repeatable)",
    )
    stream_capacity.add_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the report names the command that produced it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = run(args)
    if not args.streams_only:
        write_report(results, args.out)
    if "streams" in results:
        stream_capacity.write(results, args.out)
    logger.info("report written to %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
