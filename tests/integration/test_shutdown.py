"""Nothing is left behind when `emotion serve` stops: not on Ctrl-C (SIGINT), not on SIGTERM, and not when its Ray
processes are killed under it (what `ray stop --force` or an out-of-memory kill does).

Each case runs the real command line (`python -m serve.cli serve`) in its own session with its own Ray temp folder
and free ports (the HTTP port, Ray's metrics port, HAProxy's stats and exporter ports), records the processes of
its tree while it serves, stops it, and then checks that the command exited, that every process of that tree is
gone (HAProxy included) and that nothing listens on any of its ports. Only this test's own processes are touched:
the "killed" case kills, in this service's tree, exactly the processes `ray stop --force` would kill anywhere
(Ray's own list of process names), and leaves HAProxy to the service's watchdog, as `ray stop` does.
"""

from __future__ import annotations

import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 180.0  # a shutdown, a port closing: only against a hang
START_GUARD_S = 600.0  # a start on a busy 2-core machine (Ray's own readiness wait, local.wait_ready, is 120 s)


def listening(ports: set[int]) -> set[int]:
    """The ``ports`` some socket on this machine listens on (TCP, IPv4 or IPv6), from /proc/net."""
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if port in ports:
                    found.add(port)
    return found


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def ray_stop_targets(tree: list[psutil.Process]) -> list[psutil.Process]:
    """The processes of ``tree`` that `ray stop --force` kills (Ray's RAY_PROCESSES: by name or by arguments)."""
    from ray.autoscaler._private.constants import RAY_PROCESSES

    targets = []
    for proc in tree:
        try:
            name, args = proc.name(), subprocess.list2cmdline(proc.cmdline())
        except psutil.Error:
            continue
        if any((keyword in name) if by_name else (keyword in args) for keyword, by_name in RAY_PROCESSES):
            targets.append(proc)
    return targets


@dataclass
class Running:
    proc: subprocess.Popen[str]
    url: str
    ports: dict[str, int]
    output: list[str] = field(default_factory=list)
    tree: list[psutil.Process] = field(default_factory=list)

    def wait_exit(self) -> int:
        try:
            return self.proc.wait(timeout=HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"emotion serve did not exit within {HANG_GUARD_S:.0f}s:\n" + "".join(self.output[-30:]))

    def leftovers(self) -> tuple[list[str], set[int]]:
        """Processes of the tree still running, and ports still listened on, once both settle (hang guard)."""
        deadline = time.monotonic() + HANG_GUARD_S
        while True:
            procs = [p for p in self.tree if alive(p)]
            ports = listening(set(self.ports.values()))
            if (not procs and not ports) or time.monotonic() > deadline:
                return [f"{p.pid} {p.name()}" for p in procs if alive(p)], ports
            time.sleep(0.5)


@pytest.fixture
def emotion_serve() -> Iterator[Running]:
    """`emotion serve` on free ports, ready (its /readyz answered 200 through HAProxy)."""
    ports = {name: free_port() for name in ("http", "metrics", "haproxy_stats", "haproxy_metrics")}
    while len(set(ports.values())) < len(ports):
        ports = {name: free_port() for name in ports}
    temp = Path(f"/tmp/rt{secrets.token_hex(3)}")
    temp.mkdir()
    env = {
        **os.environ, "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(temp),
        "EMOTION_PORT": str(ports["http"]), "EMOTION_METRICS_EXPORT_PORT": str(ports["metrics"]),
        "EMOTION_OBJECT_STORE_MB": "200",
        # Fast mode draws these itself; fixed here so that the test knows which ports must close.
        "RAY_SERVE_HAPROXY_STATS_PORT": str(ports["haproxy_stats"]),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(ports["haproxy_metrics"]),
    }  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "serve.cli", "serve"], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,  # signals reach it alone, as `kill PID` does
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    running = Running(proc, "", ports)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            running.output.append(line)
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + START_GUARD_S
        while not running.url:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail("emotion serve printed no `ready:` line in time:\n" + "".join(running.output[-30:]))
            if line.startswith("ready: "):
                running.url = line.split()[1]
            elif proc.poll() is not None and lines.empty():
                pytest.fail(f"emotion serve exited with {proc.returncode}:\n" + "".join(running.output[-30:]))
        assert httpx.get(f"{running.url}/readyz", timeout=HANG_GUARD_S).status_code == 200
        running.tree = psutil.Process(proc.pid).children(recursive=True)
        yield running
    finally:
        # Whatever the test found, leave nothing of ours running: only the PIDs of this service's tree.
        if proc.poll() is None:
            proc.kill()
        for child in running.tree:
            if alive(child):
                child.kill()
        proc.wait(timeout=HANG_GUARD_S)


def serving_processes(running: Running) -> list[str]:
    names = [p.name() for p in running.tree if alive(p)]
    assert "haproxy" in names, names  # fast mode: HAProxy owns the HTTP port
    assert listening(set(running.ports.values())) == set(running.ports.values())  # each port really was in use
    return names


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_everything_and_frees_every_port(emotion_serve: Running, signum: signal.Signals) -> None:
    serving_processes(emotion_serve)
    emotion_serve.proc.send_signal(signum)
    assert emotion_serve.wait_exit() == 0
    assert "shutting down" in "".join(emotion_serve.output)
    assert emotion_serve.leftovers() == ([], set())


def test_killed_ray_processes_leave_no_haproxy_and_the_command_exits(emotion_serve: Running) -> None:
    serving_processes(emotion_serve)
    targets = ray_stop_targets(emotion_serve.tree)
    assert {"raylet", "gcs_server"} <= {p.name() for p in targets}
    assert "haproxy" not in {p.name() for p in targets}  # `ray stop --force` does not know HAProxy
    for proc in targets:
        proc.kill()
    assert emotion_serve.wait_exit() == 1  # it noticed; it did not wait for Ray's 60 s GCS reconnect timeout
    assert "Ray stopped under the service" in "".join(emotion_serve.output)
    assert emotion_serve.leftovers() == ([], set())
