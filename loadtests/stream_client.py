"""One WebSocket stream client for the capacity measurement: frames at a fixed rate, every frame accounted for.

Asyncio, so that many streams share one process (and the load generator's own CPU stays small next to the
service on a 2-core machine). Frames are paced by the wall clock (frame ``i`` is due at ``start + i / fps``),
never by replies: a camera does not wait for the service. A stream is bounded both by its frame count and by
``seconds``; after its last frame it sends ``end`` and waits for the answers (the service answers what it has and
closes), at most ``reply_timeout`` after that frame. Every frame sent ends as exactly one of: answered (faces),
dropped (``{"dropped": true}``), error (``{"error": ...}``) or lost (no answer at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

SAMPLES = 5  # error messages kept per stream: enough to explain a failure, small enough for the JSON report


@dataclass
class StreamTally:
    """What happened to the frames of one stream; latencies are send -> reply, answered frames only."""

    role: str  # "polite" (fixed fps) | "greedy"
    fps: float  # offered frames per second; 0 = as fast as the socket takes them
    sent: int = 0
    answered: int = 0
    dropped: int = 0
    errors: int = 0
    lost: int = 0
    broken: str | None = None  # the socket could not connect or broke: the stream failed whatever its counts
    latencies_ms: list[float] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        if len(self.samples) < SAMPLES:
            self.samples.append(message)

    def summary(self) -> dict[str, Any]:
        """The tally without the raw latencies (the report keeps percentiles, not every value)."""
        return {
            "role": self.role, "fps": self.fps, "sent": self.sent, "answered": self.answered,
            "dropped": self.dropped, "errors": self.errors, "lost": self.lost, "broken": self.broken,
            "p50_ms": percentile(self.latencies_ms, 50), "p99_ms": percentile(self.latencies_ms, 99),
            "samples": self.samples,
        }  # fmt: skip


def percentile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


async def run_stream(
    url: str,
    frames: Sequence[bytes],
    *,
    fps: float,
    seconds: float,
    role: str = "polite",
    reply_timeout: float = 10.0,
    max_frames: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> StreamTally:
    """Stream ``frames`` (looped) to ``url`` for ``seconds`` at ``fps`` (0: as fast as the socket takes them)
    and account for every frame. At most ``seconds * fps`` frames, and at most ``max_frames``."""
    tally = StreamTally(role, fps)
    pending: dict[int, float] = {}  # send time of every frame not answered yet, by index
    bounds = [b for b in (round(seconds * fps) if fps > 0 else None, max_frames) if b is not None]
    limit = min(bounds) if bounds else None
    try:
        async with connect(url, max_size=None, compression=None, open_timeout=reply_timeout) as ws:
            receiver = asyncio.create_task(_receive(ws, pending, tally, clock))
            last_sent = await _send(ws, frames, fps, seconds, limit, pending, tally, clock)
            with contextlib.suppress(WebSocketException, OSError):
                await ws.send("end")
            wait = max(0.0, last_sent + reply_timeout - clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(receiver), wait)
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver
    except (WebSocketException, OSError, TimeoutError) as exc:
        tally.broken = f"{type(exc).__name__}: {exc}"
    tally.lost += len(pending)  # sent and never answered in any way
    if tally.lost:
        tally.note(f"{tally.lost} frame(s) without an answer within {reply_timeout:g} s of the last frame")
    return tally


async def _send(ws: Any, frames: Sequence[bytes], fps: float, seconds: float, limit: int | None,
                pending: dict[int, float], tally: StreamTally, clock: Callable[[], float]) -> float:  # fmt: skip
    """Send frames on the wall-clock schedule; returns when the last one went out."""
    start = last = clock()
    index = 0
    while (limit is None or index < limit) and clock() - start < seconds:
        if fps > 0:
            # Late frames (the socket blocked) go out at once; the schedule itself never shifts.
            await asyncio.sleep(max(0.0, start + index / fps - clock()))
        else:
            await asyncio.sleep(0)  # a send into a non-full buffer never yields: let the receiver read
        last = clock()
        pending[index] = last
        await ws.send(frames[index % len(frames)])
        tally.sent += 1
        index += 1
    return last


async def _receive(ws: Any, pending: dict[int, float], tally: StreamTally, clock: Callable[[], float]) -> None:
    """Read replies until the service closes the socket."""
    with contextlib.suppress(WebSocketException, OSError):
        async for message in ws:
            received = clock()
            try:
                reply = json.loads(message)
                index = int(reply["index"])
            except (ValueError, TypeError, KeyError) as exc:
                tally.note(f"unreadable reply: {exc}")
                continue
            sent_at = pending.pop(index, None)
            if sent_at is None:
                tally.note(f"reply for a frame never sent (or answered twice): index {index}")
            elif reply.get("dropped") is True:
                tally.dropped += 1
            elif "error" in reply:
                tally.errors += 1
                tally.note(f"frame {index}: error {reply['error'].get('code')}")
            else:
                tally.answered += 1
                tally.latencies_ms.append((received - sent_at) * 1000.0)
