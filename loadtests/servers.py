"""Start, watch and stop the servers under test; measure the CPU of their process trees; scrape Ray metrics."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from serve.runtime import ports

REPO = Path(__file__).resolve().parents[1]


class ServerError(RuntimeError):
    """A server under test did not start, or died."""


def free_port(low: int = 8100, high: int = 8199, taken: Sequence[int] = ()) -> int:
    """A random port in [low, high] that binds on all interfaces now (servers that check their port strictly accept
    it too); ``Server.start`` also checks that the server it started owns it."""
    try:
        return ports.free_port(low, high, host="0.0.0.0", taken=taken)
    except OSError as exc:
        raise ServerError(str(exc)) from None


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclass
class Server:
    """One server process (and everything it spawns) started from ``cmd`` with extra ``env``."""

    name: str
    cmd: list[str]
    port: int
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    ready_path: str = "/readyz"
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.cmd, cwd=REPO, env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.proc.returncode}; {self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if http_get(self.port, self.ready_path)[0] == 200 and self.owns_port():
                    return
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"{self.name} not ready on port {self.port} after {timeout:.0f} s; {self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log, so that a failure on a machine we cannot log into explains itself."""
        try:
            tail = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            return f"its log {self.log} cannot be read ({exc})"
        return f"last {len(tail)} lines of {self.log}:\n" + "\n".join(tail)

    def owns_port(self) -> bool:
        """True when a process of this server's tree listens on ``port`` (not some other run's server)."""
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                if any(c.laddr.port == self.port and c.status == psutil.CONN_LISTEN for c in proc.net_connections()):
                    return True
        return False

    def processes(self) -> list[psutil.Process]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the server, wait ``grace`` s, then SIGKILL whatever of its tree is left (only our own pids)."""
        if self.proc is None:
            return
        tree = self.processes()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        _, alive = psutil.wait_procs(tree, timeout=1.0)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def _cpu_seconds(procs: Sequence[psutil.Process]) -> dict[int, float]:
    out = {}
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
    return out


@contextlib.contextmanager
def cpu_meter(server: Server | None) -> Iterator[dict[str, float]]:
    """Yields a dict filled on exit with CPU seconds used: ``server`` (its tree), ``client`` (this process),
    ``machine`` (all cores, everyone; the rest is the other tenants of the machine), ``steal`` (time the hypervisor
    gave this VM's cores to other VMs: slowness no process here shows)."""
    usage: dict[str, float] = {}
    me = psutil.Process()
    before = _cpu_seconds(server.processes()) if server else {}
    client0 = me.cpu_times()
    machine0 = psutil.cpu_times()
    yield usage
    after = _cpu_seconds(server.processes()) if server else {}
    client1 = me.cpu_times()
    machine1 = psutil.cpu_times()
    usage["server"] = sum(t - before.get(pid, 0.0) for pid, t in after.items())
    usage["client"] = (client1.user + client1.system) - (client0.user + client0.system)
    busy = [sum(m) - m.idle - getattr(m, "iowait", 0.0) for m in (machine0, machine1)]
    usage["machine"] = busy[1] - busy[0]
    usage["steal"] = getattr(machine1, "steal", 0.0) - getattr(machine0, "steal", 0.0)


_SERIES = re.compile(r"^([a-zA-Z_:][\w:]*)(\{.*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(port: int) -> dict[tuple[str, str], float]:
    """Prometheus text from ``127.0.0.1:port/metrics``, as ``{(metric, deployment tag): summed value}``."""
    status, body = http_get(port, "/metrics", timeout=5.0)
    if status != 200:
        raise ServerError(f"metrics endpoint on port {port} answered {status}")
    out: dict[tuple[str, str], float] = defaultdict(float)
    for line in body.decode(errors="replace").splitlines():
        match = _SERIES.match(line)
        if not match or line.startswith("#"):
            continue
        labels = dict(_LABEL.findall(match.group(2) or ""))
        with contextlib.suppress(ValueError):
            out[(match.group(1), labels.get("deployment", ""))] += float(match.group(3))
    return out


def mean_batch_sizes(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> dict[str, float]:
    """Per deployment with ``@serve.batch``: handle calls per executed batch (exact counters, not histogram sums);
    for the ingress, HTTP requests per coalesced model call."""
    out = {}
    for (metric, deployment), value in after.items():
        if metric != "ray_serve_batches_processed_total":
            continue
        batches = value - before.get((metric, deployment), 0.0)
        key = ("ray_serve_deployment_request_counter_total", deployment)
        calls = after.get(key, 0.0) - before.get(key, 0.0)
        if batches > 0:
            out[deployment] = round(calls / batches, 2)

    # The ingress coalesces with its own coalescer (serve/core/coalesce.py): requests per model call, from counters.
    def delta(count: str) -> float:
        key = (f"ray_emotion_coalescer_{count}_total", "Ingress")
        return after.get(key, 0.0) - before.get(key, 0.0)

    if delta("calls") > 0:
        out["Ingress"] = round(delta("requests") / delta("calls"), 2)
    return out
