"""A soak run: the service as ``emotion serve`` starts it, held at about half its capacity for many minutes.

    python -m loadtests.soak --out reports/soak --minutes 10          # make soak

First a short closed-loop probe (8 clients, single FER2013 faces to ``/v1/classify``) measures what the service
serves on this machine now; then an open loop sends ``--fraction`` of that rate, minute after minute. Every
``--sample-s`` seconds the resident memory (RSS) of every process of the service's tree is recorded: Ray's own
processes, each replica and HAProxy. Writes ``soak.json`` (per minute: sent, ok, shed, errors, p50/p99; every
memory sample), ``memory.csv``, ``soak.md`` (the table and the verdict) and ``memory.png``.

The verdict (issue 12): nothing lost (no error, no timeout), total RSS growth from minute 2 to the last minute
under 10 %, and the last minute's p99 at most 1.5x minute 2's. Minute 1 is warm-up and is not judged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from loadtests import httpclient
from loadtests.benchmark import judge_for, ray_command, requests_for
from loadtests.data import fer_faces
from loadtests.servers import REPO, Server, ServerError, cpu_meter, free_port
from models.contract import DEFAULT_MODEL_DIR, load_contract

logger = logging.getLogger("loadtests.soak")

MAX_RSS_GROWTH = 0.10
MAX_P99_RATIO = 1.5


@dataclass(frozen=True)
class Minute:
    """One minute of the open loop."""

    minute: int
    sent: int
    ok: int
    shed: int
    errors: int
    timeouts: int
    p50_ms: float | None
    p99_ms: float | None
    # CPU over the minute, % of one core: the service's tree, everything else on the machine but this load
    # generator (other tenants: what tells a slow minute of the service from a busy machine), hypervisor steal.
    service_cpu_pct: float | None = None
    other_cpu_pct: float | None = None
    steal_pct: float | None = None


def minute_from(
    index: int, tally: httpclient.Tally, cpu: dict[str, float] | None = None, seconds: float = 60.0
) -> Minute:
    lat = np.asarray(tally.latencies) * 1000.0
    p50, p99 = (round(float(np.percentile(lat, q)), 1) if lat.size else None for q in (50, 99))
    pct = {k: round(100.0 * v / seconds, 1) for k, v in (cpu or {}).items()}
    other = round(pct["machine"] - pct["server"] - pct["client"], 1) if cpu else None
    return Minute(index, tally.sent, len(tally.latencies), tally.shed, tally.errors, tally.timeouts, p50, p99,
                  pct.get("server"), other, pct.get("steal"))  # fmt: skip


def process_role(name: str, cmdline: Sequence[str]) -> str:
    """A stable name for one process of the service's tree: the replica or Ray component it is."""
    title = " ".join(cmdline)
    for role in ("Ingress", "Preprocessor", "EmotionModel", "ServeController", "HAProxyManager", "ProxyActor"):
        if role in title:
            return role
    if "haproxy" in name or "haproxy" in title:
        return "haproxy"
    for role in ("gcs_server", "raylet", "dashboard", "runtime_env", "log_monitor", "monitor.py"):
        if role in name or role in title:
            return role.removesuffix(".py")
    return "emotion-serve" if "serve.cli" in title else name or "other"


def sample_rss(procs: Sequence[psutil.Process]) -> dict[str, float]:
    """RSS in MB per role (summed over processes of the same role)."""
    out: dict[str, float] = {}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            role = process_role(proc.name(), proc.cmdline())
            out[role] = round(out.get(role, 0.0) + proc.memory_info().rss / 2**20, 1)
    return out


def mean_rss(samples: list[dict[str, Any]], minute: int) -> dict[str, float]:
    """Mean RSS per role (and ``total``) over the samples taken during ``minute`` (1-based)."""
    rows = [s["rss_mb"] for s in samples if minute - 1 <= s["t_s"] / 60.0 < minute]
    roles = sorted({role for row in rows for role in row})
    means = {role: round(float(np.mean([row.get(role, 0.0) for row in rows])), 1) for role in roles}
    means["total"] = round(float(np.mean([sum(row.values()) for row in rows])), 1) if rows else 0.0
    return means


def verdict(minutes: list[Minute], samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The soak's pass/fail numbers: losses, RSS growth minute 2 -> last, p99 last / minute 2."""
    last = minutes[-1].minute
    start_rss, end_rss = mean_rss(samples, 2), mean_rss(samples, last)
    growth = {
        role: round(end_rss[role] / start_rss[role] - 1.0, 4)
        for role in start_rss
        if role in end_rss and start_rss[role] > 0
    }
    p99_2, p99_last = minutes[1].p99_ms, minutes[-1].p99_ms
    ratio = round(p99_last / p99_2, 3) if p99_2 and p99_last else None
    lost = sum(m.errors for m in minutes)
    return {
        "lost": lost,
        "shed": sum(m.shed for m in minutes),
        "rss_growth": growth,
        "p99_ratio_last_vs_minute_2": ratio,
        "passed": lost == 0 and growth.get("total", 1.0) < MAX_RSS_GROWTH and ratio is not None
        and ratio <= MAX_P99_RATIO,
    }


class MemorySampler(threading.Thread):
    """Samples the server tree's RSS every ``every_s`` seconds until stopped."""

    def __init__(self, server: Server, every_s: float) -> None:
        super().__init__(daemon=True)
        self.server, self.every_s = server, every_s
        self.samples: list[dict[str, Any]] = []
        self.started_at = time.monotonic()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            t = time.monotonic() - self.started_at
            self.samples.append({"t_s": round(t, 1), "rss_mb": sample_rss(self.server.processes())})
            self._done.wait(self.every_s)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=10)


def soak(args: argparse.Namespace) -> dict[str, Any]:
    labels = load_contract(args.model_dir).answer_labels
    port = free_port()
    mport = free_port(taken=[port])
    env = {"EMOTION_HOST": "127.0.0.1", "EMOTION_PORT": str(port), "EMOTION_METRICS_EXPORT_PORT": str(mport),
           "EMOTION_MODEL_DIR": str(args.model_dir), "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    command = ray_command(None)
    assert command is not None
    server = Server("ray", command, port, args.out / "server.log", env)
    fer_faces()
    requests, judge = requests_for("single", port), judge_for("single", labels)
    server.start(timeout=args.start_timeout)
    try:
        probe = asyncio.run(httpclient.closed_loop("127.0.0.1", port, requests, judge, clients=8, seconds=20))
        capacity = len(probe.latencies) / probe.elapsed
        rate = round(capacity * args.fraction, 1)
        logger.info("capacity %.1f req/s (8 clients); soaking at %.1f req/s for %d min", capacity, rate, args.minutes)
        sampler = MemorySampler(server, args.sample_s)
        sampler.start()
        minutes = []
        for index in range(1, args.minutes + 1):
            with cpu_meter(server) as cpu:
                tally = asyncio.run(httpclient.open_loop("127.0.0.1", port, requests, judge, rate=rate, seconds=60))
            minutes.append(minute_from(index, tally, cpu))
            logger.info("%s | rss total %.0f MB", minutes[-1], sum(sampler.samples[-1]["rss_mb"].values()))
            if tally.error_samples:
                logger.warning("errors: %s", tally.error_samples)
        sampler.stop()
    finally:
        server.stop()
    return {
        "command": "python -m loadtests.soak " + " ".join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": psutil.cpu_count(), "load_average": list(psutil.getloadavg())},
        "capacity_req_s": round(capacity, 1),
        "rate_req_s": rate,
        "minutes": [asdict(m) for m in minutes],
        "memory": sampler.samples,
        "verdict": verdict(minutes, sampler.samples),
    }


def write(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    roles = sorted({r for s in result["memory"] for r in s["rss_mb"]})
    lines = ["t_s," + ",".join(roles) + ",total"]
    for s in result["memory"]:
        row = [s["rss_mb"].get(r, 0.0) for r in roles]
        lines.append(f"{s['t_s']}," + ",".join(str(v) for v in row) + f",{round(sum(row), 1)}")
    (out / "memory.csv").write_text("\n".join(lines) + "\n")
    v = result["verdict"]
    md = [f"# Soak: {len(result['minutes'])} minutes at {result['rate_req_s']} req/s "
          f"({result['capacity_req_s']} req/s measured capacity)", "", f"`{result['command']}` ({result['started']})",
          "", "CPU in % of one core: the service's processes, all other processes but the load generator, and the "
          "hypervisor's steal (a p99 that rises with the last two is the machine, not the service).", "",
          "| minute | sent | ok | shed | errors | timeouts | p50 ms | p99 ms | service CPU | other CPU | steal |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    md += [f"| {m['minute']} | {m['sent']} | {m['ok']} | {m['shed']} | {m['errors']} | {m['timeouts']} | "
           f"{m['p50_ms']} | {m['p99_ms']} | {m.get('service_cpu_pct')} | {m.get('other_cpu_pct')} | "
           f"{m.get('steal_pct')} |" for m in result["minutes"]]  # fmt: skip
    md += ["", f"Verdict: **{'passed' if v['passed'] else 'failed'}**; lost {v['lost']}, shed {v['shed']}, "
           f"p99 last minute / minute 2 = {v['p99_ratio_last_vs_minute_2']} (<= {MAX_P99_RATIO}), RSS growth minute 2 "
           f"-> last (< {MAX_RSS_GROWTH:.0%} in total):", "", "| process | growth |", "|---|---|"]  # fmt: skip
    md += [f"| {role} | {g:+.1%} |" for role, g in sorted(v["rss_growth"].items())]
    (out / "soak.md").write_text("\n".join(md) + "\n")
    with contextlib.suppress(ImportError):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 4))
        t = [s["t_s"] / 60 for s in result["memory"]]
        for role in roles:
            ax.plot(t, [s["rss_mb"].get(role, 0.0) for s in result["memory"]], label=role)
        ax.set(xlabel="minute", ylabel="RSS (MB)", title="resident memory per process role")
        ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        fig.savefig(out / "memory.png", dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "soak")
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=0.5, help="share of the probed capacity to offer")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between memory samples")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--start-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    if args.minutes < 3 or not 0 < args.fraction <= 1:
        parser.error("--minutes >= 3 (minute 1 is warm-up, minute 2 the reference) and 0 < --fraction <= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        result = soak(args)
    except ServerError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 1
    write(args.out, result)
    print((args.out / "soak.md").read_text())
    return 0 if result["verdict"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
