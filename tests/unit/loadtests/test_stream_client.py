"""loadtests.stream_client against a scripted in-process WebSocket server: every frame ends as exactly one of
answered, dropped, error or lost.

Runs are bounded by frame count (``max_frames``), never by time: the seconds bound is set far above what any
machine needs, so a slow CI runner changes no count."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from loadtests.stream_client import StreamTally, run_stream

GENEROUS_S = 60.0


async def scripted(connection: ServerConnection) -> None:
    """Answers like the service: ``ok`` frames with faces, ``drop`` as dropped, ``bad`` as an error; ``lose`` frames
    get no answer at all. ``end`` closes the socket (the service's graceful close)."""
    index = 0
    async for message in connection:
        if message == "end":
            await connection.close()
            return
        replies: dict[bytes, dict[str, Any]] = {
            b"ok": {"index": index, "faces": []},
            b"drop": {"index": index, "dropped": True},
            b"bad": {"index": index, "error": {"code": "invalid_image", "message": "no"}},
        }
        reply = replies.get(message if isinstance(message, bytes) else message.encode())
        if reply is not None:
            await connection.send(json.dumps(reply))
        index += 1


def with_server(body: Callable[[str], Awaitable[StreamTally]]) -> StreamTally:
    async def main() -> StreamTally:
        async with serve(scripted, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            return await asyncio.wait_for(body(f"ws://127.0.0.1:{port}/v1/stream"), GENEROUS_S)

    return asyncio.run(main())


def test_every_frame_is_accounted_for() -> None:
    frames = [b"ok", b"drop", b"ok", b"bad", b"lose", b"ok"]
    tally = with_server(lambda url: run_stream(url, frames, fps=1000.0, seconds=GENEROUS_S, max_frames=12))
    assert (tally.sent, tally.answered, tally.dropped, tally.errors, tally.lost) == (12, 6, 2, 2, 2)
    assert len(tally.latencies_ms) == 6 and all(v >= 0 for v in tally.latencies_ms)
    assert tally.broken is None
    summary = tally.summary()
    assert summary["p99_ms"] is not None and "latencies_ms" not in summary
    assert any("without an answer" in s for s in summary["samples"])


def test_a_greedy_stream_is_bounded_by_its_frame_count() -> None:
    tally = with_server(lambda url: run_stream(url, [b"ok"], fps=0.0, seconds=GENEROUS_S, role="greedy",
                                               max_frames=50))  # fmt: skip
    assert (tally.role, tally.sent, tally.answered, tally.lost) == ("greedy", 50, 50, 0)


def test_a_stream_that_cannot_connect_is_broken_not_empty() -> None:
    async def refused() -> StreamTally:
        async with serve(scripted, "127.0.0.1", 0) as server:
            port = next(iter(server.sockets)).getsockname()[1]
        return await run_stream(f"ws://127.0.0.1:{port}/v1/stream", [b"ok"], fps=10.0, seconds=1.0)  # closed now

    tally = asyncio.run(refused())
    assert tally.broken and tally.sent == 0
