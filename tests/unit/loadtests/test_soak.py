"""loadtests.soak's pure parts: process roles, per-minute numbers, memory means and the verdict."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtests import httpclient
from loadtests.soak import Minute, mean_rss, minute_from, process_role, verdict


def test_process_roles_name_replicas_ray_and_haproxy() -> None:
    assert process_role("python", ["ray::ServeReplica:emotion:EmotionModel"]) == "EmotionModel"
    assert process_role("haproxy", ["/usr/sbin/haproxy", "-f", "x.cfg"]) == "haproxy"
    assert process_role("raylet", ["/x/raylet", "--a"]) == "raylet"
    assert process_role("python", ["python", "-m", "serve.cli", "serve"]) == "emotion-serve"
    assert process_role("python", ["python", "/x/ray/autoscaler/_private/monitor.py"]) == "monitor"


def test_minute_from_a_tally() -> None:
    tally = httpclient.Tally(latencies=[0.01] * 99 + [0.5], shed=2, errors=1, timeouts=1, sent=103)
    m = minute_from(3, tally)
    assert (m.minute, m.sent, m.ok, m.shed, m.errors, m.timeouts) == (3, 103, 100, 2, 1, 1)
    assert m.p50_ms == 10.0 and m.p99_ms is not None and 10.0 < m.p99_ms <= 500.0
    assert minute_from(1, httpclient.Tally()).p99_ms is None
    assert m.service_cpu_pct is None and m.other_cpu_pct is None  # no CPU measured


def test_a_minutes_cpu_is_split_into_the_service_other_processes_and_steal() -> None:
    cpu = {"server": 60.0, "client": 12.0, "machine": 90.0, "steal": 3.0}  # CPU seconds over 60 s
    m = minute_from(2, httpclient.Tally(latencies=[0.01]), cpu)
    assert (m.service_cpu_pct, m.other_cpu_pct, m.steal_pct) == (100.0, 30.0, 5.0)


def samples(per_minute: list[dict[str, float]], every_s: float = 10.0) -> list[dict[str, Any]]:
    out = []
    for minute, rss in enumerate(per_minute):
        out += [{"t_s": minute * 60 + k * every_s, "rss_mb": rss} for k in range(int(60 / every_s))]
    return out


def minutes(p99s: list[float], errors: int = 0) -> list[Minute]:
    return [Minute(i + 1, 100, 100, 0, errors if i == 0 else 0, 0, 5.0, p) for i, p in enumerate(p99s)]


def test_verdict_passes_a_flat_soak_and_fails_each_criterion() -> None:
    flat = samples([{"EmotionModel": 300.0, "haproxy": 20.0}] * 4)
    assert mean_rss(flat, 2) == {"EmotionModel": 300.0, "haproxy": 20.0, "total": 320.0}
    ok = verdict(minutes([80.0, 40.0, 42.0, 50.0]), flat)
    assert ok["passed"] and ok["rss_growth"]["total"] == 0.0 and ok["p99_ratio_last_vs_minute_2"] == 1.25
    growing = samples([{"EmotionModel": 300.0}, {"EmotionModel": 300.0}, {"EmotionModel": 320.0},
                       {"EmotionModel": 340.0}])  # fmt: skip
    assert not verdict(minutes([40.0] * 4), growing)["passed"]  # +13 %
    assert not verdict(minutes([40.0, 40.0, 40.0, 61.0]), flat)["passed"]  # p99 1.53x
    lost = verdict(minutes([40.0] * 4, errors=1), flat)
    assert lost["lost"] == 1 and not lost["passed"]  # even a warm-up loss counts


def test_write_makes_the_report_files(tmp_path: Path) -> None:
    from loadtests.soak import write

    mem = samples([{"EmotionModel": 300.0, "haproxy": 20.0}] * 3)
    mins = minutes([80.0, 40.0, 42.0])
    result = {"command": "python -m loadtests.soak", "started": "now", "capacity_req_s": 50.0, "rate_req_s": 25.0,
              "minutes": [asdict(m) for m in mins], "memory": mem, "verdict": verdict(mins, mem)}  # fmt: skip
    write(tmp_path, result)
    assert "Verdict: **passed**" in (tmp_path / "soak.md").read_text()
    csv = (tmp_path / "memory.csv").read_text().splitlines()
    assert csv[0] == "t_s,EmotionModel,haproxy,total" and csv[1].endswith(",320.0") and len(csv) == 1 + len(mem)
    assert json.loads((tmp_path / "soak.json").read_text())["verdict"]["passed"]
