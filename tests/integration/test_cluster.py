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

The cluster is this test's own (``tools/cluster.py`` starts and stops it, shared with tools/autoscale_timeline.py):
its processes run in two process sessions of their own and are killed by PID at the end (never ``ray stop``, which
kills every Ray process on the machine, other people's included).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import require_fer
from tools import cluster as cluster_tools
from tools.cluster import Cluster, alive
from tools.fault_probe import deployment_details, replicas, run_faults, wait_whole

pytestmark = [pytest.mark.integration, pytest.mark.data, pytest.mark.timeout(2400)]

HANG_GUARD_S = cluster_tools.HANG_GUARD_S
DEPLOYMENTS = ("Ingress", "Preprocessor", "EmotionModel")
EXPECTED = dict.fromkeys(DEPLOYMENTS, 2)


def two_per_deployment(config: dict[str, Any]) -> None:
    """This test's changes to the shipped config (see the module docstring)."""
    for deployment in config["applications"][0]["deployments"]:
        deployment["num_replicas"] = 2
        deployment["max_replicas_per_node"] = 1


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_fer()
    with cluster_tools.running(two_per_deployment, expected=EXPECTED, workdir=tmp_path_factory.mktemp("cluster")) as c:
        yield c


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
    assert not [p.pid for p in cluster.worker.tree() if alive(p)]
    deadline = time.monotonic() + HANG_GUARD_S  # a real node loss: the GCS declares the worker dead
    while sorted(node_ids().values()) != ["head"] and time.monotonic() < deadline:
        time.sleep(1.0)
    assert sorted(node_ids().values()) == ["head"]
