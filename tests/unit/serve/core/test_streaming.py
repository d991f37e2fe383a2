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


def test_a_burst_that_fills_the_bound_before_the_sender_runs_does_not_stall() -> None:
    """Regression: push() once cleared the sender's wake-up (one shared event), so a client whose frames arrived
    faster than the sender got scheduled stalled its stream for good. Frames here are pushed without yielding."""

    async def scenario() -> tuple[int, int]:
        sent: list[Reply] = []

        async def analyze(data: bytes) -> Reply:
            await asyncio.sleep(0)
            return {"faces": []}

        async def send(reply: Reply) -> None:
            sent.append(reply)

        session = StreamSession(analyze, send, max_pending=2, concurrency=2, max_unsent=8)
        closed = asyncio.Event()
        sender = asyncio.create_task(session.send_replies(closed))
        await asyncio.sleep(0)  # the sender is now idle, waiting for a frame
        for _ in range(100):  # 8x the bound (12), from this one task: push() yields only at the bound
            await session.push(b"f")
        closed.set()
        await sender
        return session.received, len(sent)

    async def guarded() -> tuple[int, int]:
        return await asyncio.wait_for(scenario(), HANG_GUARD_S)  # the old code hung here

    assert asyncio.run(guarded()) == (100, 100)


def test_bad_settings_fail_fast() -> None:
    async def make() -> None:
        StreamSession(lambda d: asyncio.sleep(0, {}), lambda r: asyncio.sleep(0), concurrency=0)

    with pytest.raises(ValueError, match="concurrency=0"):
        asyncio.run(make())


# --- fairness between streams -----------------------------------------------------------------------------------
# Streams share the service's workers (the preprocessor's thread pool and the model serve calls in arrival order).
# A fake shared worker runs one analysis per tick of a fake clock, first come first served; the clock only moves
# when the test ticks it, so every count below is exact on any machine.


class FifoWorker:
    """One shared worker: analyses queue in arrival order; ``tick`` finishes the oldest."""

    def __init__(self) -> None:
        self.queue: list[tuple[bytes, asyncio.Future[Reply]]] = []
        self.busy_ticks = 0

    async def analyze(self, data: bytes) -> Reply:
        done: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.queue.append((data, done))
        return await done

    def tick(self) -> None:
        if self.queue:
            data, done = self.queue.pop(0)
            done.set_result({"faces": [], "frame": data.decode()})
            self.busy_ticks += 1


async def settle() -> None:
    """Let every task run until it waits on the worker again (no wall time involved)."""
    for _ in range(50):
        await asyncio.sleep(0)


def test_a_greedy_stream_cannot_starve_a_polite_one() -> None:
    ticks, polite_every, concurrency = 400, 4, 2

    async def scenario() -> tuple[dict[int, int], list[Reply], list[Reply], int, int]:
        worker, now = FifoWorker(), 0
        pushed_at: dict[int, int] = {}
        answered_after: dict[int, int] = {}  # polite frame -> ticks from push to its reply
        polite_replies: list[Reply] = []
        greedy_replies: list[Reply] = []

        async def polite_send(reply: Reply) -> None:
            polite_replies.append(reply)
            answered_after[reply["index"]] = now - pushed_at[reply["index"]]

        async def greedy_send(reply: Reply) -> None:
            greedy_replies.append(reply)

        async def flood() -> None:  # as fast as the session reads: push only waits at the backpressure bound
            while True:
                await greedy.push(b"g")

        polite = StreamSession(worker.analyze, polite_send, max_pending=2, concurrency=concurrency)
        greedy = StreamSession(worker.analyze, greedy_send, max_pending=2, concurrency=concurrency)
        closed = asyncio.Event()
        senders = [asyncio.create_task(s.send_replies(closed)) for s in (polite, greedy)]
        flooding = asyncio.create_task(flood())
        for now in range(ticks):
            if now % polite_every == 0:  # a quarter of what the worker can do
                pushed_at[polite.received] = now
                await polite.push(b"p")
            await settle()
            worker.tick()
            await settle()
        flooding.cancel()
        closed.set()
        while worker.queue:  # finish what is in flight
            worker.tick()
            now += 1
            await settle()
        await asyncio.wait_for(asyncio.gather(*senders), HANG_GUARD_S)
        assert greedy.received > 2 * ticks  # it really flooded: more frames than the worker could ever analyse
        return answered_after, polite_replies, greedy_replies, worker.busy_ticks, greedy.received

    answered_after, polite_replies, greedy_replies, busy, greedy_received = asyncio.run(scenario())
    assert len(polite_replies) == ticks // polite_every
    assert not any(r.get("dropped") for r in polite_replies)  # the polite stream lost nothing to the greedy one
    # Each polite frame waits behind at most the greedy stream's `concurrency` analyses (its bound per session),
    # then its own turn: a latency bound in work units that holds however greedy the other stream is.
    assert max(answered_after.values()) <= concurrency + 1
    greedy_served = sum(1 for r in greedy_replies if "faces" in r)
    assert greedy_served >= ticks - ticks // polite_every - concurrency  # the greedy stream has the rest of the worker
    assert busy >= ticks  # never idle while anyone waited: fairness costs no throughput
    assert len(greedy_replies) == greedy_received  # every greedy frame answered or dropped, none lost
