"""Smoke test of ``python -m loadtests.benchmark --quick``: every target measured, report files written.

No speed is asserted: every closed-loop client sends at least one request, and the request and start-up timeouts
and the subprocess deadline are generous hang guards (the quick run takes about a minute on an idle machine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.report import CRITERIA
from loadtests.servers import REPO
from models.data import default_data_dir

pytestmark = [pytest.mark.integration, pytest.mark.data, pytest.mark.timeout(1800)]


def test_quick_benchmark_writes_a_complete_report(tmp_path: Path) -> None:
    if not (default_data_dir() / "fer2013" / "test.parquet").is_file():
        pytest.skip(f"no FER2013 data under {default_data_dir()} (set EMOTION_DATA_DIR)")
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "loadtests.benchmark", "--quick", "--out", str(out), "--logs", str(tmp_path / "logs"),
           "--request-timeout", "120", "--start-timeout", "300"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1700)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    targets = {row["target"] for row in results["rows"]}
    expected = {"preprocess", "onnxruntime", "noop", "baseline"}
    if (REPO / "serve" / "app.py").is_file():
        expected.add("ray")
    assert expected <= targets, f"missing targets {expected - targets}; skipped: {results['skipped']}"
    for row in results["rows"]:
        if row["mode"] == "closed":
            assert row["error_pct"] == 0, f"{row['target']} {row['workload']}: errors {row['errors']}"
            # at least one answer was served (a count: requests_per_s is rounded, so a slow cell could read 0.0)
            assert row["p50_ms"] is not None, f"{row['target']} {row['workload']}: no answer served"
    for name in ("benchmark.md", "throughput.png", "p99.png"):
        assert (out / name).stat().st_size > 0
    table = (out / "benchmark.md").read_text()
    for label, _, _ in CRITERIA:
        assert table.count(f"| {label} |") == 1, f"criterion row {label!r} is not in the report exactly once"
