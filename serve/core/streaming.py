"""One WebSocket video stream: frames in, one reply per frame out, in order, with a bounded number in flight.

Policy when the client sends faster than the service analyses (documented in docs/api.md):

* at most ``concurrency`` frames of a connection are being analysed at once;
* at most ``max_pending`` further frames wait; when one more arrives, the OLDEST waiting frame is dropped and
  its reply is ``{"index": i, "dropped": true}`` (fresh frames matter more than stale ones for a live camera);
* replies are sent strictly in frame order; if the client stops reading replies, the server stops reading
  frames once ``max_pending + concurrency + max_unsent`` replies are outstanding (TCP backpressure).

Pure asyncio: the route supplies ``analyze`` (frame bytes -> reply dict) and ``send`` (reply dict -> None).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Reply = dict[str, Any]
Analyze = Callable[[bytes], Awaitable[Reply]]


@dataclass
class _Slot:
    index: int
    data: bytes
    received: float
    done: asyncio.Future[Reply] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class StreamSession:
    """Orders, bounds and drops frames of one connection.

    Args:
        analyze: coroutine turning one encoded frame into the reply body (``faces`` etc.; no ``index``).
        send: coroutine sending one reply to the client.
        max_pending: frames allowed to wait for analysis before the oldest is dropped.
        concurrency: frames of this connection analysed at the same time.
        max_unsent: finished replies the client may leave unread before reading frames pauses.
        on_reply: hook called with every reply in order before it is sent (tracking, metrics).
    """

    def __init__(
        self,
        analyze: Analyze,
        send: Callable[[Reply], Awaitable[None]],
        *,
        max_pending: int = 2,
        concurrency: int = 2,
        max_unsent: int = 8,
        on_reply: Callable[[Reply], None] | None = None,
    ) -> None:
        if max_pending < 0 or concurrency < 1 or max_unsent < 1:
            raise ValueError(f"max_pending={max_pending}, concurrency={concurrency}, max_unsent={max_unsent}")
        self._analyze, self._send, self._on_reply = analyze, send, on_reply
        self._max_pending, self._concurrency = max_pending, concurrency
        self._limit = max_pending + concurrency + max_unsent
        self._waiting: deque[_Slot] = deque()
        self._order: deque[_Slot] = deque()
        self._running: set[asyncio.Task[None]] = set()
        # Two events, each cleared only by the one coroutine that waits on it: with a single shared event, push()
        # could clear a wake-up meant for the sender (set by an earlier push() before the sender's wait had begun)
        # and both would wait for each other forever: a client filling the bound in one burst stalled its stream.
        self._space = asyncio.Event()  # set by the sender when a reply left; push() waits on it at the bound
        self._arrived = asyncio.Event()  # set by push() when a frame arrived; the sender waits on it when idle
        self.received = self.dropped = self.sent = 0
        self._closed = False

    async def push(self, data: bytes) -> None:
        """Accept the next frame; waits while too many replies are outstanding."""
        while len(self._order) >= self._limit:
            self._space.clear()
            await self._space.wait()
        slot = _Slot(self.received, data, time.perf_counter())
        self.received += 1
        self._order.append(slot)
        self._waiting.append(slot)
        if len(self._waiting) > self._max_pending:
            oldest = self._waiting.popleft()
            oldest.data = b""
            oldest.done.set_result({"index": oldest.index, "dropped": True})
            self.dropped += 1
        self._start()
        self._arrived.set()

    def _start(self) -> None:
        while not self._closed and self._waiting and len(self._running) < self._concurrency:
            slot = self._waiting.popleft()
            task = asyncio.create_task(self._run(slot))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, slot: _Slot) -> None:
        try:
            body = await self._analyze(slot.data)
            latency = round((time.perf_counter() - slot.received) * 1000.0, 1)
            slot.done.set_result({"index": slot.index, **body, "latency_ms": latency})
        except Exception as exc:  # the stream goes on; this frame's reply says what went wrong
            code = getattr(exc, "code", "internal_error")
            message = getattr(exc, "message", "internal error")
            slot.done.set_result({"index": slot.index, "error": {"code": code, "message": message}})
        finally:
            slot.data = b""
            self._running.discard(asyncio.current_task())  # free the seat before refilling
            self._start()

    async def send_replies(self, until_closed: asyncio.Event) -> None:
        """Send replies in frame order until ``until_closed`` is set and every received frame is answered."""
        while True:
            if not self._order:
                if until_closed.is_set():
                    return
                self._arrived.clear()
                closed = asyncio.create_task(until_closed.wait())
                arrived = asyncio.create_task(self._arrived.wait())
                await asyncio.wait({closed, arrived}, return_when=asyncio.FIRST_COMPLETED)
                closed.cancel()
                arrived.cancel()
                continue
            reply = await self._order[0].done
            self._order.popleft()
            if self._on_reply is not None:
                self._on_reply(reply)
            await self._send(reply)
            self.sent += 1
            self._space.set()

    async def cancel(self) -> None:
        """Stop every analysis in flight (the client went away)."""
        self._closed = True
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
