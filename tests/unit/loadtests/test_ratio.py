"""loadtests.ratio: alternating order, per-round ratios and the median verdict (no servers started)."""

from __future__ import annotations

from loadtests.benchmark import Row
from loadtests.ratio import Round, orders, verdict


def row(target: str, rps: float, p99: float | None, error_pct: float = 0.0) -> Row:
    return Row(target, "single", "closed", 8, rps, rps, p99_ms=p99, error_pct=error_pct)


def rnd(plain: float, graph: float, plain_p99: float = 100.0, graph_p99: float | None = 120.0) -> Round:
    return Round(("baseline", "ray"), row("baseline", plain, plain_p99), row("ray", graph, graph_p99))


def test_the_order_alternates_from_round_to_round() -> None:
    assert orders(3) == [("baseline", "ray"), ("ray", "baseline"), ("baseline", "ray")]


def test_each_round_has_its_own_ratios() -> None:
    r = rnd(100.0, 80.0, 100.0, 150.0)
    assert r.throughput_ratio == 0.8 and r.p99_ratio == 1.5
    assert rnd(0.0, 80.0).throughput_ratio == 0.0 and rnd(100.0, 80.0, graph_p99=None).p99_ratio is None


def test_the_verdict_reads_the_medians_so_one_lucky_round_cannot_pass_it() -> None:
    lucky = [rnd(100.0, 70.0), rnd(100.0, 95.0), rnd(100.0, 72.0)]
    assert verdict(lucky) == {"throughput_ratio_median": 0.72, "p99_ratio_median": 1.2, "errors": False,
                              "passed": False}  # fmt: skip
    assert verdict([rnd(100.0, 92.0), rnd(100.0, 88.0), rnd(100.0, 95.0)])["passed"]


def test_a_slow_p99_or_any_error_fails_it() -> None:
    assert not verdict([rnd(100.0, 95.0, 100.0, 160.0)])["passed"]
    erring = Round(("ray", "baseline"), row("baseline", 100.0, 100.0), row("ray", 95.0, 110.0, error_pct=0.1))
    assert verdict([erring])["errors"] and not verdict([erring])["passed"]
