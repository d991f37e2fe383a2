"""StreamSession: order, the drop-oldest bound, per-frame errors, backpressure, cancellation.

No timing decides an outcome: frames are pushed without yielding (``push`` only waits at the backpressure bound),
so which frames drop is fixed; the ``wait_for`` deadlines only guard against a hang."""

from __future__ import annotations

import asyncio

import pytest

from serve.core.streaming import Reply, StreamSession
from serve.errors import InvalidImage

HANG_GUARD_S = 60.0


async def _run(frames: list[bytes], *, delay: float, max_pending: int, concurrency: int) -> list[Reply]:
    sent: list[Reply] = []

    async def analyze(data: bytes) -> Reply:
        await asyncio.sleep(delay)
        if data == b"bad":
            raise InvalidImage("not an image")
        return {"faces": [], "data": data.decode()}

    async def send(reply: Reply) -> None:
        sent.append(reply)

    session = StreamSession(analyze, send, max_pending=max_pending, concurrency=concurrency)
    closed = asyncio.Event()
    sender = asyncio.create_task(session.send_replies(closed))
    for frame in frames:
        await session.push(frame)
    closed.set()
    await asyncio.wait_for(sender, HANG_GUARD_S)
    return sent


def test_every_frame_is_answered_in_order() -> None:
    frames = [str(i).encode() for i in range(6)] + [b"bad"]
    sent = asyncio.run(_run(frames, delay=0.001, max_pending=100, concurrency=3))
    assert [r["index"] for r in sent] == list(range(7))
    assert [r.get("data") for r in sent[:6]] == [str(i) for i in range(6)]
    assert sent[6]["error"] == {"code": "invalid_image", "message": "not an image"}


def test_a_burst_drops_the_oldest_waiting_frames_and_says_so() -> None:
    frames = [str(i).encode() for i in range(10)]
    sent = asyncio.run(_run(frames, delay=0.05, max_pending=2, concurrency=1))
    assert [r["index"] for r in sent] == list(range(10))
    dropped = [r["index"] for r in sent if r.get("dropped")]
    assert dropped == list(range(1, 8))  # frame 0 started at once; 8 and 9 were the newest waiting
    assert all("faces" in r for r in sent if not r.get("dropped"))


def test_cancel_stops_work_in_flight() -> None:
    async def scenario() -> int:
        started = asyncio.Event()
        cancelled = asyncio.Event()

        async def analyze(data: bytes) -> Reply:
            started.set()
            try:
                await asyncio.Event().wait()  # never finishes by itself: only cancel() ends it
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return {}

        async def send(reply: Reply) -> None:
            raise AssertionError("nothing should be sent")

        session = StreamSession(analyze, send, max_pending=1, concurrency=1)
        await session.push(b"a")
        await asyncio.wait_for(started.wait(), HANG_GUARD_S)
        await asyncio.wait_for(session.cancel(), HANG_GUARD_S)
        assert cancelled.is_set()
        return session.received

    assert asyncio.run(scenario()) == 1


def test_bad_settings_fail_fast() -> None:
    async def make() -> None:
        StreamSession(lambda d: asyncio.sleep(0, {}), lambda r: asyncio.sleep(0), concurrency=0)

    with pytest.raises(ValueError, match="concurrency=0"):
        asyncio.run(make())
