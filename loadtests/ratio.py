"""The graph against the plain server, single images from 8 closed-loop clients, in alternating rounds: issue 12's
"graph >= 0.9x the plain server's throughput, p99 <= 1.5x" measured so that the machine's drift cannot decide it.

    python -m loadtests.ratio --rounds 4 --seconds 15 --out reports/benchmark/ratio

A benchmark run measures each server once, minutes apart, and the plain server's own rate moved 108-138 req/s
between runs on the 2-core machine (reports/benchmark/ab/ab19.md). Here every round measures both, one after the
other, each alone on the machine (started, measured, stopped), and the order alternates from round to round. The
verdict reads the median of the rounds' ratios. Writes ``ratio.md`` and ``ratio.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtests.benchmark import CRITERIA_ONLY, Row, baseline_command, measure_http, ray_command, ray_env
from loadtests.data import fer_faces
from loadtests.servers import REPO, Server, free_port
from models.contract import DEFAULT_MODEL_DIR, load_contract

logger = logging.getLogger("loadtests.ratio")
MIN_THROUGHPUT_RATIO = 0.9  # issue 12, item 6
MAX_P99_RATIO = 1.5


@dataclass(frozen=True)
class Round:
    """One round: both servers' cells, and graph / plain."""

    order: tuple[str, str]
    plain: Row
    graph: Row

    @property
    def throughput_ratio(self) -> float:
        return self.graph.requests_per_s / self.plain.requests_per_s if self.plain.requests_per_s else 0.0

    @property
    def p99_ratio(self) -> float | None:
        if self.graph.p99_ms is None or not self.plain.p99_ms:
            return None
        return self.graph.p99_ms / self.plain.p99_ms


def orders(rounds: int) -> list[tuple[str, str]]:
    """Plain first in even rounds, the graph first in odd ones."""
    return [("baseline", "ray") if i % 2 == 0 else ("ray", "baseline") for i in range(rounds)]


def verdict(rounds: Sequence[Round]) -> dict[str, Any]:
    """Medians over the rounds and whether they meet the bounds; errors in any cell fail it."""
    throughput = statistics.median(r.throughput_ratio for r in rounds)
    p99s = [p for r in rounds if (p := r.p99_ratio) is not None]
    p99 = statistics.median(p99s) if p99s else None
    errors = any(row.error_pct > 0 for r in rounds for row in (r.plain, r.graph))
    passed = throughput >= MIN_THROUGHPUT_RATIO and p99 is not None and p99 <= MAX_P99_RATIO and not errors
    return {"throughput_ratio_median": round(throughput, 3), "p99_ratio_median": None if p99 is None else round(p99, 3),
            "errors": errors, "passed": passed}  # fmt: skip


def measure(args: argparse.Namespace) -> list[Round]:
    labels = load_contract(args.model_dir).answer_labels
    plan = dataclasses.replace(CRITERIA_ONLY, seconds=args.seconds, batch_clients=())
    fer_faces()  # load the data before any timing
    rounds = []
    for i, order in enumerate(orders(args.rounds)):
        rows: dict[str, Row] = {}
        for target in order:
            port = free_port()
            if target == "baseline":
                server = Server("baseline", baseline_command(port, args.model_dir, 0), port,
                                args.logs / f"baseline-{i}.log")  # fmt: skip
                metrics_port = None
            else:
                metrics_port = free_port(taken=[port])
                command = ray_command(args.ray_cmd)
                assert command is not None, "no Ray Serve graph: pass --ray-cmd"
                server = Server("ray", command, port, args.logs / f"ray-{i}.log",
                                ray_env(port, metrics_port, args.model_dir))  # fmt: skip
            try:
                server.start(timeout=args.start_timeout)
                (rows[target],) = measure_http(server, plan, labels, metrics_port, workloads=("single",),
                                               open_loop=False)  # fmt: skip
            finally:
                server.stop()
        rounds.append(Round(order, rows["baseline"], rows["ray"]))
        logger.info("round %d (%s first): graph / plain = %.2f", i + 1, order[0], rounds[-1].throughput_ratio)
    return rounds


def write(rounds: Sequence[Round], result: dict[str, Any], out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "ratio.json").write_text(json.dumps(
        {"command": command, **result, "rounds": [{"order": r.order, "plain": asdict(r.plain), "graph": asdict(r.graph)}
                                                  for r in rounds]}, indent=2) + "\n")  # fmt: skip
    lines = [
        "# Graph vs plain server, single images, 8 clients, alternating rounds", "",
        f"`{command}`, {time.strftime('%Y-%m-%d %H:%M')}.", "",
        "| round | first | plain req/s | graph req/s | ratio | plain p99 ms | graph p99 ms | p99 ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for i, r in enumerate(rounds, 1):
        p99 = "" if r.p99_ratio is None else f"{r.p99_ratio:.2f}"
        lines.append(f"| {i} | {r.order[0]} | {r.plain.requests_per_s} | {r.graph.requests_per_s} | "
                     f"{r.throughput_ratio:.2f} | {r.plain.p99_ms} | {r.graph.p99_ms} | {p99} |")  # fmt: skip
    lines += ["", f"Median throughput ratio {result['throughput_ratio_median']} (>= {MIN_THROUGHPUT_RATIO}), "
              f"median p99 ratio {result['p99_ratio_median']} (<= {MAX_P99_RATIO}), errors: {result['errors']}: "
              f"**{'passed' if result['passed'] else 'not passed'}**.", ""]  # fmt: skip
    (out / "ratio.md").write_text("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per cell")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "benchmark" / "ratio")
    parser.add_argument("--logs", type=Path, default=REPO / "reports" / "tmp" / "ratio-logs")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--ray-cmd", help="command starting the Ray graph (default: python -m serve.cli serve)")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="hang guard for a server's start")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rounds = measure(args)
    result = verdict(rounds)
    write(rounds, result, args.out, shlex.join(["python", "-m", "loadtests.ratio", *(sys.argv[1:] if argv is None
                                                                                       else argv)]))  # fmt: skip
    logger.info("%s; report in %s", result, args.out)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
