"""A real 2-node Ray cluster on this machine, started the way docs/cluster.md tells an operator to, with a Serve
config deployed by ``serve deploy``: what ``tests/integration/test_cluster.py`` and ``tools/autoscale_timeline.py``
run on.

    with cluster.running(config_editor, expected={"Ingress": 2, ...}) as c:
        c.url, c.metrics_urls, c.head.kill(), ...

The steps of docs/cluster.md, as far as one machine allows:

1. one token for the cluster: ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` in the environment of every
   ``ray start``, of ``serve deploy`` and of the driver (a fresh token: the machine's ~/.ray/auth_token is never
   read or written);
2. fast mode in the environment of every node before its ``ray start`` (``python -m serve.runtime.fastmode``, run
   once per node, so each node draws its own HAProxy and fallback-proxy ports);
3. ``ray start --head`` and ``ray start --address=HEAD:PORT``, 2 logical CPUs and a 100 MB object store each. Two
   raylets share this host, so each gets its own node-manager, object-manager, dashboard-agent (HTTP and gRPC),
   runtime-env-agent and metrics ports and its own worker-port range (on separate machines the defaults do);
4. ``serve deploy`` of an edited copy of deploy/serve_config.yaml through the head's dashboard (what the operator
   runs). Every copy gets a free HTTP port and ``proxy_location: HeadOnly``: on separate machines every node runs
   its own HAProxy on the HTTP port of its own address (``EveryNode``, the file's value), but two nodes on one host
   cannot both bind 127.0.0.1:PORT.

The cluster is the caller's own: its processes run in two process sessions of their own and are killed by PID at
the end (never ``ray stop``, which kills every Ray process on the machine, other people's included).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from serve.runtime import ports as port_tools
from serve.runtime.settings import DEFAULT_SERVE_CONFIG

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HANG_GUARD_S = 600.0  # a cluster start, a deployment on two busy cores: only against a hang

ConfigEditor = Callable[[dict[str, Any]], None]  # edits the parsed Serve config in place


class ClusterError(RuntimeError):
    """A node or the deployment did not come up."""


def free_port() -> int:
    return port_tools.free_port(20000, 32767)


def fast_mode_env(base: dict[str, str]) -> dict[str, str]:
    """What ``eval "$(python -m serve.runtime.fastmode)"`` exports on a node: run as the operator runs it."""
    clean = {k: v for k, v in base.items() if not (k.startswith("RAY_SERVE_") or k.startswith("EMOTION_HAPROXY"))}
    out = subprocess.run([sys.executable, "-m", "serve.runtime.fastmode"], cwd=REPO, env=clean, check=True,
                         capture_output=True, text=True, timeout=HANG_GUARD_S).stdout  # fmt: skip
    exports = {}
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        exports[key] = shlex.split(value)[0]
    if "RAY_SERVE_ENABLE_HA_PROXY" not in exports:
        raise ClusterError(f"serve.runtime.fastmode printed no fast mode:\n{out}")
    return exports


@dataclass
class Node:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    ports: dict[str, int]

    @property
    def metrics_url(self) -> str:
        """This node's Prometheus export (``--metrics-export-port``): the metrics of every Ray process on it."""
        return f"http://127.0.0.1:{self.ports['metrics']}/metrics"

    def tree(self) -> list[psutil.Process]:
        """This node's processes: ``ray start --block`` and everything under it, plus its process group."""
        found: dict[int, psutil.Process] = {}
        try:
            root = psutil.Process(self.proc.pid)
            found = {p.pid: p for p in [root, *root.children(recursive=True)]}
        except psutil.NoSuchProcess:
            pass
        for proc in psutil.process_iter():
            try:
                if os.getpgid(proc.pid) == self.proc.pid:  # start_new_session: the group is this node's
                    found.setdefault(proc.pid, proc)
            except (OSError, psutil.Error):
                continue
        return list(found.values())

    def kill(self) -> int:
        """SIGKILL every process of this node at once (a machine that died); return the raylet's PID."""
        procs = self.tree()
        raylet = next((p.pid for p in procs if _name(p) == "raylet"), self.proc.pid)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        self.proc.wait(timeout=HANG_GUARD_S)
        return raylet


def _name(proc: psutil.Process) -> str:
    try:
        return str(proc.name())
    except psutil.Error:
        return ""


def alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def start_node(name: str, env: dict[str, str], temp: Path, head: Node | None = None) -> Node:
    ports = {key: free_port() for key in ("node_manager", "object_manager", "agent_http", "agent_grpc",
                                          "runtime_env_agent", "metrics")}  # fmt: skip
    worker_low = 11000 if head is None else 12000  # own worker-port ranges: the two raylets share this host
    args = [
        str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=2",
        f"--object-store-memory={100 * 1024 * 1024}", "--disable-usage-stats",
        f"--node-manager-port={ports['node_manager']}", f"--object-manager-port={ports['object_manager']}",
        f"--dashboard-agent-listen-port={ports['agent_http']}", f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
        f"--runtime-env-agent-port={ports['runtime_env_agent']}", f"--metrics-export-port={ports['metrics']}",
        f"--min-worker-port={worker_low}", f"--max-worker-port={worker_low + 999}",
    ]  # fmt: skip
    if head is None:
        ports |= {"gcs": free_port(), "dashboard": free_port(), "client": free_port()}
        args += [
            "--head", f"--port={ports['gcs']}", f"--temp-dir={temp}", "--include-dashboard=true",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}",
            f"--ray-client-server-port={ports['client']}",
        ]  # fmt: skip
    else:
        args.append(f"--address=127.0.0.1:{head.ports['gcs']}")
    log = temp.parent / f"{temp.name}-{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    node = Node(name, proc, log, ports)
    deadline = time.monotonic() + HANG_GUARD_S
    while "Ray runtime started" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            node.kill() if proc.poll() is None else None
            raise ClusterError(f"`ray start` of the {name} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    return node


def write_config(path: Path, http_port: int, edit: ConfigEditor | None = None) -> Path:
    """The shipped Serve config with a free HTTP port, ``proxy_location: HeadOnly`` and ``edit`` applied."""
    config = yaml.safe_load(DEFAULT_SERVE_CONFIG.read_text())
    config["proxy_location"] = "HeadOnly"
    config["http_options"]["port"] = http_port
    if edit is not None:
        edit(config)
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Cluster:
    head: Node
    worker: Node
    url: str
    env: dict[str, str]
    config: Path  # the Serve config that was deployed

    @property
    def metrics_urls(self) -> list[str]:
        return [self.head.metrics_url, self.worker.metrics_url]

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.head.ports['dashboard']}"


def _reload_auth() -> None:
    """Ray reads the auth mode and the token when it is imported and caches both: re-read them."""
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def running(edit: ConfigEditor | None = None, *, expected: dict[str, int] | None = None,
            extra_env: dict[str, str] | None = None, workdir: Path | None = None) -> Iterator[Cluster]:  # fmt: skip
    """Start head + worker, ``serve deploy`` the edited shipped config, join as a driver (namespace ``serve``, so
    ``tools.fault_probe.replicas`` works), wait for ``expected`` RUNNING replicas per deployment and ``/readyz``;
    yield the cluster; at the end kill every process it started, by PID. ``extra_env`` goes into the environment of
    every node (e.g. ``RAY_metrics_report_interval_ms``)."""
    import ray

    from tools.fault_probe import wait_whole

    temp = Path(f"/tmp/rt{secrets.token_hex(3)}")  # short: Ray's socket paths must stay under 108 bytes
    temp.mkdir()
    token = secrets.token_hex(32)  # what `ray get-auth-token --generate` makes
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    base = {**os.environ, **auth, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(temp), **(extra_env or {}),
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}  # fmt: skip
    nodes: list[Node] = []
    saved = {key: os.environ.get(key) for key in auth}
    try:
        nodes.append(start_node("head", {**base, **fast_mode_env(base)}, temp))
        nodes.append(start_node("worker", {**base, **fast_mode_env(base)}, temp, head=nodes[0]))
        http_port = free_port()
        config = write_config((workdir or temp) / "serve_config.yaml", http_port, edit)
        deploy = subprocess.run(
            [str(BIN / "serve"), "deploy", str(config), "--address", f"http://127.0.0.1:{nodes[0].ports['dashboard']}"],
            cwd=REPO, env=base, capture_output=True, text=True, timeout=HANG_GUARD_S,
        )  # fmt: skip
        if deploy.returncode != 0:
            raise ClusterError(f"serve deploy failed:\n{deploy.stdout}{deploy.stderr}")
        os.environ.update(auth)  # the driver joins with the same token
        _reload_auth()
        ray.init(address=f"127.0.0.1:{nodes[0].ports['gcs']}", namespace="serve", log_to_driver=False)
        if expected:
            wait_whole(expected, timeout_s=HANG_GUARD_S)
        url = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + HANG_GUARD_S
        while not _ready(url) and time.monotonic() < deadline:
            time.sleep(0.5)
        yield Cluster(nodes[0], nodes[1], url, base, config)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reload_auth()
        for node in reversed(nodes):  # only this cluster's processes, by PID; HAProxy's watchdog stops HAProxy
            node.kill()
        _wait_gone([p for node in nodes for p in node.tree()])


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=30.0).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_gone(procs: list[psutil.Process]) -> None:
    deadline = time.monotonic() + 60
    while any(alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.5)
