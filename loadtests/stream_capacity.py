"""Camera-stream capacity: how many concurrent WS /v1/stream streams at 10 fps the service holds within the bound
(<= 1 % of frames not answered, p99 send -> reply <= 500 ms), per clip, and whether one greedy stream starves others.

Run from the benchmark, against the service it starts (``emotion serve`` with deploy/serve_config.yaml):

    python -m loadtests.benchmark --streams-only --out reports/streams      # only this, ~8 minutes
    python -m loadtests.benchmark --streams --out reports/benchmark         # the HTTP cells, then this

Per clip (the close-up and the crowd clip, decoded once up front into JPEG bytes) it searches upward N = 1, 2, ...
polite streams and stops at the first N outside the bound: the capacity is the largest N inside it. Then the
fairness cell: one greedy stream (``--greedy-fps``, 100) next to ``max(1, capacity - 1)`` polite ones, so the
machine holds as many streams as it can serve; the polite streams must stay inside the bound. Dropped, error and
lost frames all count against the 1 % (a frame the camera sent and nobody analysed is a frame missing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtests.data import video_frames
from loadtests.servers import Server, cpu_meter
from loadtests.stream_client import StreamTally, percentile, run_stream

logger = logging.getLogger("loadtests.stream_capacity")

CLIPS = {"close-up": "pexels_wolfgang_langer_expressions.mp4", "crowd": "facenet_pytorch_walking_crowd.mp4"}
MAX_NOT_ANSWERED_PCT = 1.0
MAX_P99_MS = 500.0


@dataclass(frozen=True)
class StreamPlan:
    clips: tuple[str, ...] = tuple(CLIPS)
    fps: float = 10.0
    seconds: float = 20.0  # per cell: 200 frames per polite stream, so 1 % is 2 frames of a single stream
    max_streams: int = 16  # a hang guard for the upward search, far above what 2 cores hold
    greedy_fps: float = 100.0  # 0 = as fast as the socket takes frames (then the load generator costs CPU too)
    reply_timeout: float = 10.0
    warmup_s: float = 3.0
    frames_per_clip: int = 240


@dataclass
class Cell:
    """One measurement: ``polite`` streams at ``fps`` (and ``greedy`` greedy ones) for ``seconds``."""

    clip: str
    polite: int
    greedy: int
    sent: int = 0  # polite streams only, from here to p99_ms
    answered: int = 0
    dropped: int = 0
    errors: int = 0
    lost: int = 0
    not_answered_pct: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    worst_stream_not_answered_pct: float = 0.0
    worst_stream_p99_ms: float | None = None
    greedy_sent: int = 0
    greedy_answered: int = 0
    greedy_dropped: int = 0
    server_cpu_pct: float | None = None
    client_cpu_pct: float | None = None
    machine_cpu_pct: float | None = None
    passed: bool = False
    why: str = ""
    streams: list[dict[str, Any]] = field(default_factory=list)


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def judge(clip: str, tallies: Sequence[StreamTally]) -> Cell:
    """Aggregate the polite streams and hold them to the bound; greedy streams are reported, not judged."""
    polite = [t for t in tallies if t.role == "polite"]
    greedy = [t for t in tallies if t.role != "polite"]
    latencies = [v for t in polite for v in t.latencies_ms]
    cell = Cell(clip=clip, polite=len(polite), greedy=len(greedy), streams=[t.summary() for t in tallies])
    cell.sent, cell.answered = sum(t.sent for t in polite), sum(t.answered for t in polite)
    cell.dropped, cell.errors, cell.lost = (sum(getattr(t, k) for t in polite) for k in ("dropped", "errors", "lost"))
    cell.not_answered_pct = _pct(cell.sent - cell.answered, cell.sent)
    cell.p50_ms, cell.p99_ms = percentile(latencies, 50), percentile(latencies, 99)
    cell.worst_stream_not_answered_pct = max((_pct(t.sent - t.answered, t.sent) for t in polite), default=0.0)
    cell.worst_stream_p99_ms = max((p for t in polite if (p := percentile(t.latencies_ms, 99)) is not None),
                                   default=None)  # fmt: skip
    cell.greedy_sent, cell.greedy_answered = sum(t.sent for t in greedy), sum(t.answered for t in greedy)
    cell.greedy_dropped = sum(t.dropped for t in greedy)
    reasons = [f"{t.role} stream broke: {t.broken}" for t in tallies if t.broken]
    if not cell.sent:
        reasons.append("no frame sent")
    if cell.not_answered_pct > MAX_NOT_ANSWERED_PCT:
        reasons.append(f"{cell.not_answered_pct}% not answered > {MAX_NOT_ANSWERED_PCT:g}%")
    if cell.p99_ms is None or cell.p99_ms > MAX_P99_MS:
        reasons.append(f"p99 {cell.p99_ms} ms > {MAX_P99_MS:g} ms")
    cell.passed, cell.why = not reasons, "; ".join(reasons)
    return cell


async def run_cell(url: str, frames: Sequence[bytes], polite: int, greedy: int, plan: StreamPlan) -> list[StreamTally]:
    """All streams of one cell at once. Polite streams start spread over one frame interval, as independent
    cameras would be: starting them together would time every stream's frames to arrive in the same instant."""

    async def polite_stream(i: int) -> StreamTally:
        await asyncio.sleep(i / (max(polite, 1) * plan.fps))
        return await run_stream(url, frames, fps=plan.fps, seconds=plan.seconds, reply_timeout=plan.reply_timeout)

    greedy_streams = [run_stream(url, frames, fps=plan.greedy_fps, seconds=plan.seconds, role="greedy",
                                 reply_timeout=plan.reply_timeout) for _ in range(greedy)]  # fmt: skip
    return list(await asyncio.gather(*(polite_stream(i) for i in range(polite)), *greedy_streams))


def measure_cell(url: str, clip: str, frames: Sequence[bytes], polite: int, greedy: int, plan: StreamPlan,
                 server: Server | None = None) -> Cell:  # fmt: skip
    start = time.perf_counter()
    with cpu_meter(server) as cpu:
        tallies = asyncio.run(run_cell(url, frames, polite, greedy, plan))
    cell = judge(clip, tallies)
    # The cell's wall time, not plan.seconds: after its last frame a stream waits for the replies still owed.
    span = max(time.perf_counter() - start, 1e-3)
    cell.server_cpu_pct, cell.client_cpu_pct, cell.machine_cpu_pct = (
        round(100 * cpu[k] / span, 1) for k in ("server", "client", "machine")
    )
    logger.info("%s", brief(cell))
    return cell


def search(measure: Callable[[int], Cell], max_streams: int) -> tuple[int, list[Cell]]:
    """Upward search: N = 1, 2, ... until the first cell outside the bound (or ``max_streams``). Returns the
    largest N inside it (0 if even one stream is not) and every cell measured. Upward rather than bisection:
    cells below the capacity are the cheap ones, and the first failure is itself worth recording."""
    capacity, cells = 0, []
    for n in range(1, max_streams + 1):
        cells.append(measure(n))
        if not cells[-1].passed:
            break
        capacity = n
    return capacity, cells


def measure(server: Server, plan: StreamPlan) -> dict[str, Any]:
    """Capacity and fairness of every clip in ``plan`` against one running service."""
    url = f"ws://127.0.0.1:{server.port}/v1/stream"
    clips: dict[str, Any] = {}
    decoded = {clip: video_frames(CLIPS[clip], plan.frames_per_clip) for clip in plan.clips}  # before any timing
    for clip, frames in decoded.items():
        warm = StreamPlan(seconds=plan.warmup_s, fps=plan.fps, reply_timeout=plan.reply_timeout)
        asyncio.run(run_cell(url, frames, 1, 0, warm))  # first frames of a clip are slow (allocations, caches)
        def cell(n: int, clip: str = clip, frames: Sequence[bytes] = frames) -> Cell:
            return measure_cell(url, clip, frames, n, 0, plan, server)

        capacity, cells = search(cell, plan.max_streams)
        polite = max(1, capacity - 1)
        fairness = measure_cell(url, clip, frames, polite, 1, plan, server)
        clips[clip] = {
            "file": CLIPS[clip], "frames": len(frames), "mean_frame_bytes": sum(map(len, frames)) // len(frames),
            "capacity": capacity, "cells": [asdict(c) for c in cells], "fairness": asdict(fairness),
        }  # fmt: skip
    return {"plan": asdict(plan), "bound": {"max_not_answered_pct": MAX_NOT_ANSWERED_PCT, "max_p99_ms": MAX_P99_MS},
            "clips": clips}  # fmt: skip


def brief(cell: Cell) -> str:
    extra = f" + greedy sent {cell.greedy_sent} answered {cell.greedy_answered}" if cell.greedy else ""
    return (
        f"stream {cell.clip:<8} {cell.polite:>2} polite{extra}: sent {cell.sent} answered {cell.answered} "
        f"dropped {cell.dropped} errors {cell.errors} lost {cell.lost} p50 {cell.p50_ms} p99 {cell.p99_ms} "
        f"cpu srv {cell.server_cpu_pct} cli {cell.client_cpu_pct} all {cell.machine_cpu_pct} "
        f"{'ok' if cell.passed else 'OUT: ' + cell.why}"
    )


_COLUMNS = ("clip", "polite streams", "greedy", "sent", "answered", "dropped", "errors", "lost", "not answered %",
            "p50 ms", "p99 ms", "worst stream p99 ms", "greedy sent / answered", "server CPU %", "machine CPU %",
            "within bound")  # fmt: skip


def _row(c: dict[str, Any]) -> str:
    greedy = f"{c['greedy_sent']} / {c['greedy_answered']}" if c["greedy"] else ""
    values = (c["clip"], c["polite"], c["greedy"], c["sent"], c["answered"], c["dropped"], c["errors"], c["lost"],
              c["not_answered_pct"], c["p50_ms"], c["p99_ms"], c["worst_stream_p99_ms"], greedy, c["server_cpu_pct"],
              c["machine_cpu_pct"], "yes" if c["passed"] else f"no ({c['why']})")  # fmt: skip
    return "| " + " | ".join("n/a" if v is None else str(v) for v in values) + " |"


def summary_lines(streams: dict[str, Any]) -> list[str]:
    """The per-target capacity table (also a section of benchmark.md)."""
    lines = ["| target | clip | capacity (streams at 10 fps) | greedy + polite: polite p99 ms, not answered % | fair |",
             "|---|---|---|---|---|"]  # fmt: skip
    for target, result in streams.items():
        for clip, r in result["clips"].items():
            f = r["fairness"]
            lines.append(f"| {target} | {clip} | {r['capacity']} | 1 + {f['polite']}: {f['p99_ms']}, "
                         f"{f['not_answered_pct']} | {'yes' if f['passed'] else 'no'} |")  # fmt: skip
    return lines


def markdown(results: dict[str, Any]) -> str:
    streams: dict[str, Any] = results["streams"]
    lines = ["# Stream capacity: WS /v1/stream at 10 fps", "", f"Command: `{results.get('command', 'n/a')}`", ""]
    m = results.get("machine", {})
    if m:
        lines += [f"Run {results.get('started')}, commit {m.get('git_commit')}, {m.get('cpu')}, "
                  f"{m.get('logical_cpus')} logical CPUs, load average at start {m.get('load_avg_at_start')}.",
                  ""]  # fmt: skip
    for target, result in streams.items():
        p = result["plan"]
        lines += [
            f"Bound: <= {MAX_NOT_ANSWERED_PCT:g} % of frames not answered (dropped + errors + lost) and p99 "
            f"send -> reply <= {MAX_P99_MS:g} ms, over the polite streams of a cell. Cells: {p['seconds']:g} s, "
            f"{p['fps']:g} fps per stream, greedy stream {p['greedy_fps']:g} fps. A greedy stream's frames without "
            "an answer are mostly frames the service never read (it stops reading a stream with 12 replies "
            "outstanding: TCP backpressure), still queued when the reply timeout after its last frame ran out.",
            "", *summary_lines({target: result}), "",
            "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS),
        ]  # fmt: skip
        for r in result["clips"].values():
            lines += [_row(c) for c in r["cells"]] + [_row(r["fairness"])]
        lines.append("")
    return "\n".join(lines)


def write(results: dict[str, Any], out: Path) -> None:
    """``streams.json`` (every cell, every stream) and ``streams.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    names = ("command", "started", "machine", "model", "streams")
    keep: dict[str, Any] = {k: results[k] for k in names if k in results}
    (out / "streams.json").write_text(json.dumps(keep, indent=1) + "\n")
    (out / "streams.md").write_text(markdown(keep))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("stream capacity (WS /v1/stream)")
    group.add_argument("--streams", action="store_true", help="also measure stream capacity on every Ray target")
    group.add_argument("--streams-only", action="store_true", help="only stream capacity, on the Ray target(s)")
    group.add_argument("--stream-clips", default=",".join(CLIPS), help=f"subset of {','.join(CLIPS)}")
    group.add_argument("--stream-seconds", type=float, default=StreamPlan.seconds, help="seconds per cell")
    group.add_argument("--stream-max", type=int, default=StreamPlan.max_streams, help="most streams tried")
    group.add_argument("--greedy-fps", type=float, default=StreamPlan.greedy_fps,
                       help="the greedy stream's rate (0: as fast as the socket takes frames)")  # fmt: skip


def plan_from(args: argparse.Namespace) -> StreamPlan:
    clips = tuple(c.strip() for c in args.stream_clips.split(",") if c.strip())
    unknown = set(clips) - set(CLIPS)
    if unknown:
        raise SystemExit(f"--stream-clips: unknown {sorted(unknown)}; choose from {sorted(CLIPS)}")
    return StreamPlan(clips=clips, seconds=args.stream_seconds, max_streams=args.stream_max,
                      greedy_fps=args.greedy_fps, reply_timeout=args.request_timeout)  # fmt: skip
