"""Where the Ray graph's CPU goes per request: CPU by process (proxy, each replica, raylet, ...) under a fixed
closed-loop load, and py-spy's hottest frames in the busiest Python processes.

    python -m loadtests.profile_graph --out reports/profile [--clients 8] [--workload single] [--seconds 15]

Starts ``emotion serve`` itself (settings from EMOTION_* variables, e.g. RAY_SERVE_THROUGHPUT_OPTIMIZED=1 or
EMOTION_ACCESS_LOG=true to compare variants), or profiles a running one with ``--pid <emotion serve pid>
--port <http port>``. Writes ``profile.md`` and py-spy's raw collapsed stacks (``<process>.txt``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psutil

from loadtests import httpclient
from loadtests.benchmark import judge_for, requests_for
from loadtests.servers import REPO, Server, free_port, mean_batch_sizes, scrape
from models.contract import DEFAULT_MODEL_DIR, load_contract

PY_SPY = str(Path(sys.executable).with_name("py-spy"))


def role(proc: psutil.Process) -> str:
    """A readable name for a Ray process: ``ray::ServeReplica:emotion:Ingress`` -> ``Ingress``."""
    with contextlib.suppress(psutil.Error):
        cmd = " ".join(proc.cmdline())
        if cmd.startswith("ray::ServeReplica"):
            return cmd.split()[0].rsplit(":", 1)[-1]
        if cmd.startswith("ray::"):
            return cmd.split()[0].removeprefix("ray::")
        name = proc.name()
        for known in ("raylet", "gcs_server", "dashboard", "log_monitor", "runtime_env", "monitor"):
            if known in cmd.split()[0] or known in name:
                return known
        return "driver (emotion serve)" if "serve.cli" in cmd else name
    return "?"


def cpu_by_process(root: psutil.Process) -> dict[int, tuple[str, float]]:
    out = {}
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            out[proc.pid] = (role(proc), t.user + t.system)
    return out


def top_frames(raw: str, limit: int = 12) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(self, inclusive) shares of samples per ``function (file)`` from py-spy's raw collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return [], []
    return ([(f, n / total) for f, n in own.most_common(limit)],
            [(f, n / total) for f, n in inclusive.most_common(limit * 3)])  # fmt: skip


def _ms(latencies: list[float], q: float) -> str:
    return f"{np.percentile(latencies, q) * 1000:.0f}" if latencies else "n/a"


def _frame(frame: str) -> str:
    # "handle_request (ray/serve/_private/proxy.py:123)" -> "handle_request (proxy.py)"
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(Path(path).parts[-2:])})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "profile")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workload", choices=("single", "batch32"), default="single")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--pid", type=int, help="profile this running `emotion serve` instead of starting one")
    parser.add_argument("--port", type=int, help="its HTTP port (with --pid)")
    parser.add_argument("--metrics-port", type=int, help="its Ray metrics port (with --pid): batch sizes")
    parser.add_argument("--top", type=int, default=4, help="py-spy the N busiest Python processes")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    labels = load_contract(DEFAULT_MODEL_DIR).answer_labels
    server = None
    if args.pid:
        root, port = psutil.Process(args.pid), args.port
    else:
        port = free_port()
        args.metrics_port = free_port(taken=[port])
        env = {"EMOTION_HOST": "127.0.0.1", "EMOTION_PORT": str(port), "RAY_metrics_report_interval_ms": "1000",
               "EMOTION_METRICS_EXPORT_PORT": str(args.metrics_port), "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
        server = Server("ray", [sys.executable, "-m", "serve.cli", "serve"], port, args.out / "serve.log", env)
        server.start()
        assert server.proc is not None
        root = psutil.Process(server.proc.pid)
    try:
        requests, judge = requests_for(args.workload, port), judge_for(args.workload, labels)
        asyncio.run(httpclient.closed_loop("127.0.0.1", port, requests, judge, args.clients, 3.0))  # warm-up
        report = profile(root, port, requests, judge, args)
    finally:
        if server is not None:
            server.stop()
    (args.out / "profile.md").write_text(report)
    print(report)
    return 0


def profile(root: psutil.Process, port: int, requests: list[bytes], judge: httpclient.Judge,
            args: argparse.Namespace) -> str:  # fmt: skip
    metrics_before = scrape(args.metrics_port) if args.metrics_port else {}
    before = cpu_by_process(root)
    t0 = time.perf_counter()
    tally = asyncio.run(httpclient.closed_loop("127.0.0.1", port, requests, judge, args.clients, args.seconds))
    span = time.perf_counter() - t0
    after = cpu_by_process(root)
    batches = {}
    if args.metrics_port:
        time.sleep(2.5)
        batches = mean_batch_sizes(metrics_before, scrape(args.metrics_port))
    ok = len(tally.latencies)
    per_proc = sorted(((name, after[pid][1] - before.get(pid, (name, 0.0))[1], pid)
                       for pid, (name, _) in after.items()), key=lambda r: -r[1])  # fmt: skip
    total = sum(cpu for _, cpu, _ in per_proc)
    lines = [f"# Ray graph CPU profile: {args.workload}, {args.clients} closed-loop clients, {span:.0f} s", "",
             f"{ok} ok requests ({ok / span:.1f}/s), {tally.errors} errors; server tree CPU {total / span * 100:.0f}% "
             f"of one core = {total / max(ok, 1) * 1000:.1f} ms CPU per request; p50 "
             f"{_ms(tally.latencies, 50)} ms, p99 {_ms(tally.latencies, 99)} ms; calls per batch {batches or None}", "",
             "| process | CPU % of a core | CPU ms per request |", "|---|---|---|"]  # fmt: skip
    for name, cpu, pid in per_proc:
        if cpu > 0.01 * span:
            lines.append(f"| {name} (pid {pid}) | {cpu / span * 100:.1f} | {cpu / max(ok, 1) * 1000:.2f} |")
    # Second pass under the same load: sample the busiest Python processes with py-spy.
    targets = [(n, pid) for n, _, pid in per_proc if n not in ("raylet", "gcs_server")][: args.top]
    load = subprocess.Popen([sys.executable, "-c", _LOAD.format(port=port, workload=args.workload,
                             clients=args.clients, seconds=args.seconds + 4)], cwd=REPO)  # fmt: skip
    spies = []
    for name, pid in targets:
        path = args.out / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}.txt"
        cmd = [PY_SPY, "record", "--pid", str(pid), "--duration", str(int(args.seconds)), "--rate", "50",
               "--format", "raw", "--nonblocking", "--output", str(path)]  # fmt: skip
        spies.append((name, path, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    for _, _, spy in spies:
        spy.wait()
    load.wait()
    for name, path, _ in spies:
        raw = path.read_text() if path.is_file() else ""
        own, incl = top_frames(raw)
        lines += ["", f"## {name}: hottest frames (share of samples, all threads incl. idle waits excluded)", "",
                  "| self | frame |", "|---|---|", *[f"| {s:.0%} | {f} |" for f, s in own],
                  "", "<details><summary>inclusive</summary>", "", "| inclusive | frame |", "|---|---|",
                  *[f"| {s:.0%} | {f} |" for f, s in incl], "", "</details>"]  # fmt: skip
    return "\n".join(lines) + "\n"


_LOAD = """
import asyncio
from loadtests import httpclient
from loadtests.benchmark import judge_for, requests_for
from models.contract import DEFAULT_MODEL_DIR, load_contract
judge = judge_for("{workload}", load_contract(DEFAULT_MODEL_DIR).answer_labels)
requests = requests_for("{workload}", {port})
asyncio.run(httpclient.closed_loop("127.0.0.1", {port}, requests, judge, {clients}, {seconds}))
"""


if __name__ == "__main__":
    sys.exit(main())
