"""The embedded launch's checks that run before Ray starts, its liveness check and stop, and the HAProxy wrapper it
installs through fast mode (no Ray here: fakes, and a fake HAProxy binary)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.contract import ContractError
from serve.runtime.fastmode import WRAPPER
from serve.runtime.local import RayOptions, StartupError, preflight, ray_alive, stop
from serve.runtime.ports import free_port
from serve.runtime.settings import load_settings

HANG_GUARD_S = 60.0  # a shell script, a process going away: only against a hang


@pytest.fixture
def held_port() -> Iterator[tuple[str, int]]:
    """A port this test binds and listens on, on every interface."""
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        yield "0.0.0.0", sock.getsockname()[1]


def test_preflight_passes_with_free_ports() -> None:
    port = free_port(20000, 40000)
    preflight(load_settings(port=port, metrics_export_port=free_port(20000, 40000, taken=[port])))


def test_preflight_refuses_an_http_port_in_use(held_port: tuple[str, int]) -> None:
    port = held_port[1]
    with pytest.raises(StartupError, match=rf"127\.0\.0\.1:{port} is already in use.*EMOTION_PORT="):
        preflight(load_settings(port=port, metrics_export_port=free_port(20000, 40000, taken=[port])))


def test_preflight_refuses_a_metrics_port_in_use(held_port: tuple[str, int]) -> None:
    port = held_port[1]
    with pytest.raises(StartupError, match=r"already in use.*EMOTION_METRICS_EXPORT_PORT="):
        preflight(load_settings(port=free_port(20000, 40000, taken=[port]), metrics_export_port=port))


def test_preflight_checks_the_model_first(tmp_path: Path, held_port: tuple[str, int]) -> None:
    with pytest.raises(ContractError):
        preflight(load_settings(model_dir=tmp_path, port=held_port[1]))


def test_ray_options_default_to_the_whole_machine() -> None:
    opts = RayOptions()
    assert opts.num_cpus is None and opts.temp_dir is None
    assert opts.object_store_mb == load_settings().object_store_mb  # the same default as EMOTION_OBJECT_STORE_MB
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.num_cpus = 2  # type: ignore[misc]


# ---- Ray's liveness and stop (fakes: no Ray starts here) -----------------------------------------------------


class FakeNode:
    def __init__(self, *dead: str) -> None:
        self.dead = dead

    def dead_processes(self) -> list[tuple[str, object]]:
        return [(kind, object()) for kind in self.dead]


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """ray.is_initialized() is True; serve.shutdown / ray.shutdown only record that they were called."""
    import ray
    from ray import serve

    calls: list[str] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("ray.shutdown"))
    monkeypatch.setattr(serve, "shutdown", lambda: calls.append("serve.shutdown"))
    return calls


@pytest.mark.parametrize(
    ("dead", "alive"), [((), True), (("dashboard",), True), (("raylet",), False), (("gcs_server", "raylet"), False)]
)
def test_ray_is_alive_while_its_gcs_and_raylet_are(
    fake_ray: list[str], monkeypatch: pytest.MonkeyPatch, dead: tuple[str, ...], alive: bool
) -> None:
    from ray._private import worker

    monkeypatch.setattr(worker, "_global_node", FakeNode(*dead))
    assert ray_alive() is alive


def test_ray_is_not_alive_when_not_started_and_assumed_alive_when_joined(
    fake_ray: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray
    from ray._private import worker

    monkeypatch.setattr(worker, "_global_node", None)  # joined a cluster this process did not start
    assert ray_alive() is True
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert ray_alive() is False


def test_stop_asks_serve_only_while_ray_lives(fake_ray: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from ray._private import worker

    monkeypatch.setattr(worker, "_global_node", FakeNode())
    stop()
    assert fake_ray == ["serve.shutdown", "ray.shutdown"]
    fake_ray.clear()
    monkeypatch.setattr(worker, "_global_node", FakeNode("gcs_server"))  # killed under us: the controller is gone
    stop()
    assert fake_ray == ["ray.shutdown"]


# ---- haproxy_loopback.sh: the rewritten config, the error page, the watchdog -------------------------------------

RAY_CONFIG = """global
    stats socket /x/admin.sock mode 666 level admin expose-fd listeners
    tune.bufsize 16384
defaults
    mode http
    option redispatch 1
    retry-on conn-failure
    option http-no-delay
    errorfile 502 {dir}/500.http
    errorfile 503 {dir}/500.http
    errorfile 504 {dir}/500.http
    balance leastconn
frontend prometheus
    bind :29476
frontend http_frontend
    bind 127.0.0.1:8000
backend http-emotion
    retry-on all-retryable-errors
    server SERVE_REPLICA_emotion-Ingress-1 127.0.0.1:30000 check
listen stats
  bind *:32241
"""


@pytest.fixture
def fake_haproxy(tmp_path: Path) -> dict[str, str]:
    """The wrapper's environment with a fake real HAProxy that records its arguments and its config file."""
    real = tmp_path / "real-haproxy"
    real.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$0.args"\nwhile [ "$1" != "-f" ]; do shift; done\n'
                    'cp "$2" "$0.cfg"\n')  # fmt: skip
    real.chmod(0o755)
    return {"PATH": os.environ["PATH"], "EMOTION_HAPROXY_BINARY": str(real)}


def run_wrapper(env: dict[str, str], *args: str) -> None:
    subprocess.run(["sh", str(WRAPPER), *args], env=env, check=True, timeout=HANG_GUARD_S)


def test_the_wrapper_binds_stats_on_loopback_and_retries_requests_a_dead_replica_dropped(
    tmp_path: Path, fake_haproxy: dict[str, str]
) -> None:
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(RAY_CONFIG.format(dir=tmp_path))
    run_wrapper(fake_haproxy, "-db", "-f", str(cfg), "-dR")
    real = Path(fake_haproxy["EMOTION_HAPROXY_BINARY"])
    assert real.with_suffix(".args").read_text().split() == ["-db", "-f", f"{cfg}.loopback", "-dR"]
    out = real.with_suffix(".cfg").read_text()
    assert "bind 127.0.0.1:29476" in out and "bind 127.0.0.1:32241" in out
    assert "bind 127.0.0.1:8000" in out  # the HTTP frontend keeps the Serve host
    assert "    tune.bufsize 1048576\n" in out and "16384" not in out
    assert "    retry-on conn-failure empty-response\n    retries 6\n    option http-buffer-request\n" in out
    assert "retry-on all-retryable-errors" in out  # a backend's own policy is left alone
    page = tmp_path / "emotion-503.http"
    assert out.count("errorfile 50") == 3 and out.count(f" {page}\n") == 3 and "500.http" not in out
    assert cfg.read_text() == RAY_CONFIG.format(dir=tmp_path)  # Ray's own file is never changed


def test_the_wrapper_keeps_an_operators_retry_policy_and_buffer(tmp_path: Path, fake_haproxy: dict[str, str]) -> None:
    cfg = tmp_path / "haproxy.cfg"
    own = RAY_CONFIG.replace("    retry-on conn-failure\n", "    retry-on conn-failure junk-response\n    retries 2\n")
    cfg.write_text(own.replace("tune.bufsize 16384", "tune.bufsize 65536").format(dir=tmp_path))
    run_wrapper({**fake_haproxy, "EMOTION_HAPROXY_RETRIES": "9"}, "-f", f"{cfg}.loopback")  # a reload: the copy
    out = Path(fake_haproxy["EMOTION_HAPROXY_BINARY"]).with_suffix(".cfg").read_text()
    assert "retry-on conn-failure junk-response\n    retries 2\n" in out and "retries 9" not in out
    assert "tune.bufsize 65536" in out and "http-buffer-request" not in out


def test_the_error_page_is_the_services_503_with_retry_after(tmp_path: Path, fake_haproxy: dict[str, str]) -> None:
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(RAY_CONFIG.format(dir=tmp_path))
    run_wrapper({**fake_haproxy, "EMOTION_RETRY_AFTER_S": "3"}, "-f", str(cfg))
    head, _, body = (tmp_path / "emotion-503.http").read_bytes().partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert lines[0] == "HTTP/1.1 503 Service Unavailable" and headers["Retry-After"] == "3"
    assert int(headers["Content-Length"]) == len(body) and headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "overloaded"


def _state(pid: int) -> str | None:
    """The process's state letter (``Z`` = zombie), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_the_watchdog_stops_haproxy_once_its_parent_is_gone(tmp_path: Path) -> None:
    real = tmp_path / "real-haproxy"
    real.write_text("#!/bin/sh\nexec sleep 600\n")  # stands for HAProxy in the foreground: same PID as the wrapper
    real.chmod(0o755)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(RAY_CONFIG.format(dir=tmp_path))
    pid_file = tmp_path / "haproxy.pid"
    # The "HAProxyManager": a shell that starts the wrapper and waits for it, as Ray's actor does.
    manager = subprocess.Popen(
        ["sh", "-c", f'sh "{WRAPPER}" -db -f "{cfg}" & echo $! > "{pid_file}"; wait'],
        env={"PATH": os.environ["PATH"], "EMOTION_HAPROXY_BINARY": str(real)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + HANG_GUARD_S
        while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        haproxy = int(pid_file.read_text())
        while "sleep" not in Path(f"/proc/{haproxy}/cmdline").read_bytes().decode() and time.monotonic() < deadline:
            time.sleep(0.05)  # until the wrapper has exec'd "HAProxy"
        manager.kill()  # SIGKILL: HAProxy is orphaned, nobody stops it but the watchdog
        manager.wait(timeout=HANG_GUARD_S)
        while _state(haproxy) not in (None, "Z") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _state(haproxy) in (None, "Z"), "the orphaned HAProxy still runs"
    finally:
        if pid_file.exists() and pid_file.read_text().strip() and _state(int(pid_file.read_text())) not in (None, "Z"):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        if manager.poll() is None:
            manager.kill()
