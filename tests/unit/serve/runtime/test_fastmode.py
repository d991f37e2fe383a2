"""Fast mode's environment: what it adds, what it leaves to the user, and the HAProxy wrapper pairing."""

from __future__ import annotations

from serve.runtime.fastmode import PORT_RANGE, WRAPPER, fast_mode_env


def test_fresh_environment_gets_fast_mode_and_loopback_ports() -> None:
    added = fast_mode_env({})
    assert added["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert added["RAY_worker_niceness"] == "0"  # replicas compete for the cores at normal priority
    assert added["RAY_SERVE_HAPROXY_BINARY_PATH"] == str(WRAPPER)
    assert added["EMOTION_HAPROXY_BINARY"]
    assert added["RAY_SERVE_HAPROXY_STATS_PORT"] != added["RAY_SERVE_HAPROXY_METRICS_PORT"]


def test_inherited_wrapper_path_without_real_binary_is_completed() -> None:
    # A parent that cleared EMOTION_* variables passed the wrapper on without the binary it wraps.
    added = fast_mode_env({"RAY_SERVE_HAPROXY_BINARY_PATH": str(WRAPPER)})
    assert "RAY_SERVE_HAPROXY_BINARY_PATH" not in added
    assert added["EMOTION_HAPROXY_BINARY"]


def test_user_settings_win() -> None:
    added = fast_mode_env({"RAY_SERVE_HAPROXY_BINARY_PATH": "/opt/haproxy", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0",
                           "RAY_worker_niceness": "15"})
    assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in added and "RAY_worker_niceness" not in added
    assert "EMOTION_HAPROXY_BINARY" not in added


def test_haproxy_off_adds_no_haproxy_settings() -> None:
    added = fast_mode_env({"RAY_SERVE_ENABLE_HA_PROXY": "0"})
    assert not any(key.startswith("RAY_SERVE_HAPROXY") for key in added)
    assert "EMOTION_HAPROXY_BINARY" not in added


def test_drawn_ports_stay_out_of_the_ephemeral_and_ray_worker_ranges() -> None:
    added = fast_mode_env({})
    keys = ["RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT",
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT"]  # fmt: skip
    ports = [int(added[key]) for key in keys]
    assert all(PORT_RANGE[0] <= port <= PORT_RANGE[1] for port in ports)
    assert len(set(ports)) == len(ports)
