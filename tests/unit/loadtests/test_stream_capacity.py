"""loadtests.stream_capacity: the bound each cell is held to, the upward search, the report files, the options.

Tallies are built by hand: no service, no timing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from loadtests.stream_capacity import (
    CLIPS,
    Cell,
    add_arguments,
    judge,
    measure_cell,
    plan_from,
    search,
    write,
)
from loadtests.stream_client import StreamTally


def tally(sent: int = 200, dropped: int = 0, lost: int = 0, errors: int = 0, latency_ms: float = 80.0,
          role: str = "polite") -> StreamTally:  # fmt: skip
    answered = sent - dropped - lost - errors
    return StreamTally(role, 10.0, sent, answered, dropped, errors, lost, latencies_ms=[latency_ms] * answered)


def test_one_percent_not_answered_is_inside_the_bound_and_more_is_not() -> None:
    assert judge("close-up", [tally(dropped=1), tally(lost=1)]).passed  # 2 of 400 = 0.5 %
    edge = judge("close-up", [tally(dropped=2, errors=1, lost=1)])  # 4 of 200 = 2 %
    assert not edge.passed and "2.0% not answered" in edge.why
    assert (edge.dropped, edge.errors, edge.lost, edge.answered) == (2, 1, 1, 196)


def test_p99_over_500_ms_is_out() -> None:
    slow = judge("crowd", [tally(latency_ms=80.0), tally(latency_ms=700.0)])
    assert not slow.passed and "p99 700.0 ms" in slow.why and slow.worst_stream_p99_ms == 700.0
    assert judge("crowd", [tally(latency_ms=500.0)]).passed


def test_greedy_streams_are_reported_but_only_polite_ones_are_judged() -> None:
    greedy = tally(sent=2000, dropped=1500, latency_ms=900.0, role="greedy")
    cell = judge("close-up", [tally(), greedy])
    assert cell.passed and (cell.polite, cell.greedy, cell.sent) == (1, 1, 200)
    assert (cell.greedy_sent, cell.greedy_answered, cell.greedy_dropped) == (2000, 500, 1500)


def test_a_broken_stream_or_nothing_sent_fails_the_cell() -> None:
    broken = tally()
    broken.broken = "ConnectionRefusedError"
    assert not judge("close-up", [broken]).passed
    assert "no frame sent" in judge("close-up", [tally(sent=0)]).why


def test_search_stops_at_the_first_cell_outside_the_bound() -> None:
    tried: list[int] = []

    def measure(n: int) -> Cell:
        tried.append(n)
        return Cell("close-up", n, 0, passed=n <= 3)

    assert search(measure, max_streams=10)[0] == 3 and tried == [1, 2, 3, 4]
    assert search(lambda n: Cell("crowd", n, 0, passed=False), 10)[0] == 0
    assert search(lambda n: Cell("crowd", n, 0, passed=True), 5)[0] == 5  # the hang guard


def test_nothing_listening_is_a_failed_cell_not_a_crash() -> None:
    args = argparse.ArgumentParser()
    add_arguments(args)
    args.add_argument("--request-timeout", type=float, default=2.0)
    plan = plan_from(args.parse_args(["--stream-seconds", "1", "--stream-clips", "close-up"]))
    cell = measure_cell("ws://127.0.0.1:9/v1/stream", "close-up", [b"x"], 2, 1, plan)  # port 9: discard, closed
    assert not cell.passed and "broke" in cell.why and cell.server_cpu_pct == 0.0


def test_the_options_and_the_report_files(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parser.add_argument("--request-timeout", type=float, default=10.0)
    plan = plan_from(parser.parse_args(["--stream-clips", "crowd", "--greedy-fps", "0", "--stream-max", "4"]))
    assert (plan.clips, plan.greedy_fps, plan.max_streams) == (("crowd",), 0.0, 4)
    with pytest.raises(SystemExit, match="unknown"):
        plan_from(parser.parse_args(["--stream-clips", "nope"]))

    from dataclasses import asdict

    cells = [asdict(judge("crowd", [tally()])), asdict(judge("crowd", [tally(), tally(latency_ms=900.0)]))]
    fair = asdict(judge("crowd", [tally(), tally(sent=1000, dropped=800, role="greedy")]))
    clip = {"file": CLIPS["crowd"], "frames": 1, "mean_frame_bytes": 1, "capacity": 1, "cells": cells,
            "fairness": fair}  # fmt: skip
    results = {"command": "python -m loadtests.benchmark --streams-only", "streams": {
        "ray": {"plan": {"seconds": 20.0, "fps": 10.0, "greedy_fps": 100.0}, "bound": {}, "clips": {"crowd": clip}}}}
    write(results, tmp_path)
    saved = json.loads((tmp_path / "streams.json").read_text())
    assert saved["streams"]["ray"]["clips"]["crowd"]["capacity"] == 1
    text = (tmp_path / "streams.md").read_text()
    assert "`python -m loadtests.benchmark --streams-only`" in text
    assert "| ray | crowd | 1 | 1 + 1: 80.0, 0.0 | yes |" in text
    assert text.count("\n| crowd |") == 3  # two search cells and the fairness cell
