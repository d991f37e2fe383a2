"""A real 2-node Ray cluster on this machine, started the way docs/cluster.md tells an operator to: the shipped Serve
config deployed with `serve deploy`, replicas on both nodes, requests served through the graph, and the worker
node killed under load without losing a request.

The steps of docs/cluster.md, as far as one machine allows:

1. one token for the cluster: ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` in the environment of every
   ``ray start``, of ``serve deploy`` and of this test's driver (a fresh token: the machine's ~/.ray/auth_token is
   never read or written);
2. fast mode in the environment of every node before its ``ray start`` (``python -m serve.runtime.fastmode``, run
   once per node, so each node draws its own HAProxy and fallback-proxy ports);
3. ``ray start --head`` and ``ray start --address=HEAD:PORT``, 2 logical CPUs and a 100 MB object store each. Two
   raylets share this host, so each gets its own node-manager, object-manager, dashboard-agent (HTTP and gRPC),
   runtime-env-agent and metrics ports and its own worker-port range (on separate machines the defaults do);
4. ``serve deploy`` of a copy of deploy/serve_config.yaml through the head's dashboard (what the operator runs).

The copy differs from the shipped file only where this test needs it: 2 replicas per deployment instead of 1 (the
file's number is for one 2-core node), at most one replica of a deployment per node (so that each node holds one
of each and the head can carry on alone), a free HTTP port, and ``proxy_location: HeadOnly``: on separate machines
every node runs its own HAProxy on the HTTP port of its own address (``EveryNode``, the file's value), but two nodes
on one host cannot both bind 127.0.0.1:PORT.

The cluster is this test's own: its processes run in two process sessions of their own and are killed by PID at
the end (never ``ray stop``, which kills every Ray process on the machine, other people's included).
"""

from __future__ import annotations

import contextlib
import json
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
import pytest
import yaml

from serve.runtime.settings import DEFAULT_SERVE_CONFIG
from tests.conftest import require_fer
from tests.integration.conftest import free_port
from tools.fault_probe import deployment_details, replicas, run_faults, wait_whole

pytestmark = [pytest.mark.integration, pytest.mark.data, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HANG_GUARD_S = 600.0  # a cluster start, a deployment on two busy cores: only against a hang
DEPLOYMENTS = ("Ingress", "Preprocessor", "EmotionModel")
EXPECTED = dict.fromkeys(DEPLOYMENTS, 2)


def fast_mode_env(base: dict[str, str]) -> dict[str, str]:
    """What ``eval "$(python -m serve.runtime.fastmode)"`` exports on a node: run as the operator runs it."""
    clean = {k: v for k, v in base.items() if not (k.startswith("RAY_SERVE_") or k.startswith("EMOTION_HAPROXY"))}
    out = subprocess.run([sys.executable, "-m", "serve.runtime.fastmode"], cwd=REPO, env=clean, check=True,
                         capture_output=True, text=True, timeout=HANG_GUARD_S).stdout  # fmt: skip
    exports = {}
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        exports[key] = shlex.split(value)[0]
    assert "RAY_SERVE_ENABLE_HA_PROXY" in exports, out
    return exports


@dataclass
class Node:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    ports: dict[str, int]

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
        return proc.name()
    except psutil.Error:
        return ""


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
            pytest.fail(f"`ray start` of the {name} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    return node


def cluster_config(path: Path, http_port: int) -> Path:
    """The shipped Serve config with this test's changes (see the module docstring)."""
    config = yaml.safe_load(DEFAULT_SERVE_CONFIG.read_text())
    config["proxy_location"] = "HeadOnly"
    config["http_options"]["port"] = http_port
    for deployment in config["applications"][0]["deployments"]:
        deployment["num_replicas"] = 2
        deployment["max_replicas_per_node"] = 1
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Cluster:
    head: Node
    worker: Node
    url: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_fer()
    import ray
    from ray._raylet import AuthenticationTokenLoader, Config

    temp = Path(f"/tmp/rt{secrets.token_hex(3)}")  # short: Ray's socket paths must stay under 108 bytes
    temp.mkdir()
    token = secrets.token_hex(32)  # what `ray get-auth-token --generate` makes
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    base = {**os.environ, **auth, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TMPDIR": str(temp),
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}  # fmt: skip
    nodes: list[Node] = []
    saved = {key: os.environ.get(key) for key in auth}
    try:
        nodes.append(start_node("head", {**base, **fast_mode_env(base)}, temp))
        nodes.append(start_node("worker", {**base, **fast_mode_env(base)}, temp, head=nodes[0]))
        http_port = free_port()
        config = cluster_config(tmp_path_factory.mktemp("cluster") / "serve_config.yaml", http_port)
        deploy = subprocess.run(
            [str(BIN / "serve"), "deploy", str(config), "--address", f"http://127.0.0.1:{nodes[0].ports['dashboard']}"],
            cwd=REPO, env=base, capture_output=True, text=True, timeout=HANG_GUARD_S,
        )  # fmt: skip
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        # This test's driver joins with the same token. Ray read the mode and the token when it was imported and
        # caches both: re-read them after the change (and again after restoring the environment).
        os.environ.update(auth)
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
        ray.init(address=f"127.0.0.1:{nodes[0].ports['gcs']}", namespace="serve", log_to_driver=False)
        wait_whole(EXPECTED, timeout_s=HANG_GUARD_S)
        url = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + HANG_GUARD_S
        while not _ready(url) and time.monotonic() < deadline:
            time.sleep(0.5)
        yield Cluster(nodes[0], nodes[1], url, base)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
        for node in reversed(nodes):  # only this test's processes, by PID; HAProxy's watchdog stops HAProxy
            node.kill()
        _wait_gone([p for node in nodes for p in node.tree()])


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=30.0).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_gone(procs: list[psutil.Process]) -> None:
    deadline = time.monotonic() + 60
    while any(_alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.5)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def node_ids() -> dict[str, str]:
    """Alive node id -> "head" / "worker" (the head has the ``node:__internal_head__`` resource)."""
    import ray

    alive = [n for n in ray.nodes() if n["Alive"]]
    return {n["NodeID"]: "head" if "node:__internal_head__" in n["Resources"] else "worker" for n in alive}


def test_replicas_of_every_deployment_sit_on_both_nodes(cluster: Cluster) -> None:
    nodes = node_ids()
    assert sorted(nodes.values()) == ["head", "worker"]
    placement = {name: sorted(nodes.get(r["node_id"], "?") for r in rs) for name, rs in replicas().items()}
    assert placement == {name: ["head", "worker"] for name in DEPLOYMENTS}, placement
    details: dict[str, Any] = deployment_details()
    assert {name: d["status"] for name, d in details.items()} == dict.fromkeys(DEPLOYMENTS, "HEALTHY")


def test_requests_are_served_through_the_graph_on_both_nodes(cluster: Cluster) -> None:
    from loadtests.data import fer_faces

    faces = fer_faces(16)
    with httpx.Client(base_url=cluster.url, timeout=HANG_GUARD_S) as client:
        answers = [client.post("/v1/classify", content=f.data, headers={"content-type": "image/jpeg"}) for f in faces]
    assert [a.status_code for a in answers] == [200] * len(faces), [a.text for a in answers if a.status_code != 200]
    assert all(a.json()["label"] in {"angry", "happy", "sad"} for a in answers)
    run = run_faults(cluster.url, None, [], expected=EXPECTED, kill_after=200, clients=6, analyze_every=10)
    assert not run.lost() and len(run.answers) == 200, run.summary()


def test_killing_the_worker_node_under_load_loses_no_request(cluster: Cluster) -> None:
    wait_whole(EXPECTED, timeout_s=HANG_GUARD_S)

    def kill_worker() -> tuple[str, int]:
        return "worker node", cluster.worker.kill()

    kills: list[Callable[[], tuple[str, int]]] = [kill_worker]
    run = run_faults(cluster.url, None, kills, expected=EXPECTED, kill_after=100, clients=6, analyze_every=10)
    print(json.dumps(run.summary()))  # pytest -s: the numbers of this run (reports/faults/README.md)
    assert [k.deployment for k in run.kills] == ["worker node"], run.summary()
    kill = run.kills[0]
    # Only a response the worker's ingress replica was writing when it died may arrive cut off (test_faults.py).
    assert not [a for a in run.lost() if not (a.cut and a.started < kill.at <= a.ended)], run.summary()
    assert sum(a.ok for a in run.after(run.kills[0])) >= 50, run.summary()  # the head carried on alone
    assert not [p.pid for p in cluster.worker.tree() if _alive(p)]
    deadline = time.monotonic() + HANG_GUARD_S  # a real node loss: the GCS declares the worker dead
    while sorted(node_ids().values()) != ["head"] and time.monotonic() < deadline:
        time.sleep(1.0)
    assert sorted(node_ids().values()) == ["head"]
