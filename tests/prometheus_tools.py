"""Debian's Prometheus for the tests: ``promtool()`` and ``prometheus()`` find the binaries, installing the
``prometheus`` package with apt-get when they are missing (CI runs as root), or skip with the reason.

Shared by tests/unit/deploy/test_alerts.py (promtool) and tests/integration/test_prometheus.py (the server)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

PACKAGE = "prometheus"  # Debian 12: Prometheus 2.42 and promtool, built without Kubernetes service discovery


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{name} is not installed and apt-get cannot install it here (needs root + apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Another apt-get (a parallel test installing chromium) may hold dpkg's lock: wait for it instead of failing.
    wait = ["-o", "DPkg::Lock::Timeout=600"]
    subprocess.run(["apt-get", *wait, "update", "-q"], check=False, env=env, capture_output=True, timeout=900)
    # --no-install-recommends: the package recommends node-exporter, which a test does not need.
    done = subprocess.run(
        ["apt-get", *wait, "install", "-y", "-q", "--no-install-recommends", PACKAGE],
        env=env, capture_output=True, timeout=1500,
    )  # fmt: skip
    found = shutil.which(name)
    if not found:
        pytest.skip(f"apt-get install {PACKAGE} failed: {done.stderr.decode()[-500:]}")
    return found


def promtool() -> str:
    return _binary("promtool")


def prometheus() -> str:
    return _binary("prometheus")
