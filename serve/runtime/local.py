"""An embedded, single-machine deployment: start a private local Ray, run the app, wait until ready, shut down.

Used by ``emotion serve`` and by the integration tests, so both exercise the same start-up path.
"""

from __future__ import annotations

import errno
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve.core.inference import OnnxClassifier
from serve.runtime.fastmode import apply_fast_mode
from serve.runtime.serve_config import ServeConfig
from serve.runtime.settings import Settings


class StartupError(RuntimeError):
    """The service cannot start; the message says why and what to change."""


@dataclass(frozen=True)
class RayOptions:
    """How big the embedded Ray instance is."""

    num_cpus: int | None = None  # None = every core of this machine
    object_store_mb: int = 256
    temp_dir: str | None = None


def preflight(settings: Settings) -> None:
    """Check the model and the ports before paying for a Ray start-up."""
    OnnxClassifier(settings.model_dir, intra_op_threads=1)  # ContractError on a missing or mismatched model
    for what, port in (("EMOTION_PORT", settings.port), ("EMOTION_METRICS_EXPORT_PORT", settings.metrics_export_port)):
        _check_port_free(settings.host if what == "EMOTION_PORT" else "0.0.0.0", port, what)


def _check_port_free(host: str, port: int, what: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            reason = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            raise StartupError(f"{host}:{port} {reason}; choose another port with {what}=<port>") from None


def start(settings: Settings, config: ServeConfig, ray_options: RayOptions | None = None) -> str:
    """Start Ray + Serve and run the Serve config's application; return the base URL once /readyz answers 200.

    Args:
        settings: resolved for this launch (``ServeConfig.settings``: flags > environment > file > defaults).
        config: the Serve config file: HTTP options, logging, proxy location and every deployment's options.
        ray_options: the embedded Ray instance's size.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Before ray.init, so every Ray process (controller, HAProxy, replicas) starts with it, and before this process
    # imports ray.serve: Serve reads its constants at import, and the handles that this process builds into the
    # graph keep the default they were made with (gRPC between deployments in fast mode, Ray actor calls otherwise;
    # gRPC measured 8% less CPU per image at 8 clients).
    added = apply_fast_mode()
    import ray
    from ray import serve

    from serve.app import compose

    opts = ray_options or RayOptions(object_store_mb=settings.object_store_mb)
    init_kwargs: dict[str, Any] = {
        # Always a new private instance: without an address, ray.init joins any Ray it finds on this machine
        # (RAY_ADDRESS, the last `ray start`, or any running gcs_server process, e.g. a test's or a benchmark's
        # instance still shutting down) and then refuses num_cpus with "When connecting to an existing cluster...".
        "address": "local",
        "num_cpus": opts.num_cpus or os.cpu_count() or 1,
        "include_dashboard": False,
        "log_to_driver": False,
        "object_store_memory": opts.object_store_mb * 1024 * 1024,
        "_metrics_export_port": settings.metrics_export_port,
    }
    # Replicas must import this package even when it is not pip-installed and the CWD is elsewhere.
    root = str(Path(__file__).resolve().parents[2])
    pythonpath = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    init_kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": pythonpath}}
    if opts.temp_dir:
        init_kwargs["_temp_dir"] = opts.temp_dir
    ray.init(**init_kwargs)
    # Ray's processes took fast mode (and its per-instance free ports) when they started. Keep it out of this
    # process's environment so that anything started from here later (another service, a test's subprocess)
    # picks its own ports instead of inheriting ours and colliding with them.
    for key in added:
        os.environ.pop(key, None)
    serve.start(
        http_options=config.http_options(settings),
        logging_config=config.logging_config,
        proxy_location=config.proxy_location,
    )
    app = compose(settings, config.deployment_options)
    serve.run(app, name=config.app["name"], route_prefix=config.app.get("route_prefix", "/"), blocking=False)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{'127.0.0.1' if settings.host in ('0.0.0.0', '::') else host}:{settings.port}"
    wait_ready(url)
    return url


def launch(flags: Mapping[str, object], ray_options: RayOptions | None = None) -> tuple[str, Settings]:
    """``emotion serve`` without its command line (tests, tools): resolve ``flags`` against the Serve config, start,
    and return the URL and the settings it runs with; Ray is stopped again if the start fails."""
    from serve.runtime.serve_config import resolve_launch

    settings, config = resolve_launch(flags)
    try:
        return start(settings, config, ray_options), settings
    except BaseException:
        stop()
        raise


def wait_ready(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # The standard library, not httpx: `emotion serve` must run with the serving dependencies alone.
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):  # not listening yet, or 503 while warming up
            pass
        time.sleep(0.25)
    raise StartupError(f"the service did not become ready at {url}/readyz within {timeout_s:.0f}s")


def ray_alive() -> bool:
    """Whether the Ray instance that ``start`` launched in this process still has its GCS and raylet.

    False once either died under the service (SIGKILL, out-of-memory kill, ``ray stop --force``): nothing can be
    served any more, and ``emotion serve`` exits instead of waiting for Ray's own 60 s GCS reconnect timeout.
    True when this process joined a Ray it did not start (it cannot tell) or Ray's internals are not as expected.
    """
    import ray
    from ray._private import ray_constants
    from ray._private import worker as ray_worker

    if not ray.is_initialized():
        return False
    node = getattr(ray_worker, "_global_node", None)
    if node is None:
        return True
    try:
        dead = {kind for kind, _ in node.dead_processes()}
    except Exception:  # a private API: never let it stop a healthy service
        return True
    return not dead & {ray_constants.PROCESS_TYPE_RAYLET, ray_constants.PROCESS_TYPE_GCS_SERVER}


def stop() -> None:
    """Shut Serve and Ray down (both are no-ops when not running).

    With Ray's GCS or raylet already dead, Serve cannot be asked to stop (its controller is gone and the call would
    wait for the GCS): only ``ray.shutdown`` runs, which kills the rest of the processes this one started. HAProxy,
    which Serve starts under its HAProxyManager actor, is stopped by its watchdog (``haproxy_loopback.sh``) once
    that actor is gone.
    """
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            if ray_alive():
                serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            ray.shutdown()
