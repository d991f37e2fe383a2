"""Frames through ``WS /v1/stream`` that survive a lost connection: every frame ends answered, dropped or lost.

The server numbers its replies per connection (the i-th binary message gets ``"index": i``); this client keeps the
frames it sent and has not had a reply for, and maps each reply back to the frame's own index. A connection that
closes before the client's ``end`` (its ingress replica died, a proxy restarted, the network broke) is opened
again, with backoff, up to ``ReconnectPolicy.max_reconnects`` times, and the frames it held unanswered are sent
again: analysing a frame twice gives the same faces, so a resend is safe. What a reconnect does lose is the
server's per-connection state: track ids (``track_id``) begin again.

When the client gives up (the policy is used up, or the server refused the stream for a reason a retry cannot
change: a bad API key, a frame over the size limit), every frame not answered, and every frame not yet sent,
comes back as ``{"index": i, "lost": true, "reason": ...}``: no frame goes missing without a word.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

# Close codes that say the stream itself is refused; reconnecting cannot help (RFC 6455 section 7.4.1).
FATAL_CLOSE_CODES = frozenset({1003, 1007, 1008, 1009, 1010})


class Connection(Protocol):
    """What this module needs of a WebSocket (``websockets.sync.client.ClientConnection`` has it)."""

    def send(self, message: str | bytes) -> None: ...

    def recv(self, timeout: float | None = None) -> str | bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ReconnectPolicy:
    """How a lost connection is opened again.

    Attributes:
        max_reconnects: reconnects in all over the stream's life; 0 = never reconnect.
        first_backoff_s: wait before the first attempt after a loss; doubles per failed attempt.
        max_backoff_s: the longest wait between attempts.
        attempts_per_loss: connection attempts after one loss before the client gives up (a replacement ingress
            takes seconds to start: the default waits about 0.5 + 1 + 2 + 4 + 4 + 4 = 15.5 s in all).
    """

    max_reconnects: int = 10
    first_backoff_s: float = 0.5
    max_backoff_s: float = 4.0
    attempts_per_loss: int = 6

    def __post_init__(self) -> None:
        if self.max_reconnects < 0 or self.attempts_per_loss < 1:
            raise ValueError(f"{self}: max_reconnects >= 0 and attempts_per_loss >= 1")
        if not 0 <= self.first_backoff_s <= self.max_backoff_s:
            raise ValueError(f"{self}: need 0 <= first_backoff_s <= max_backoff_s")

    def backoff_s(self, attempt: int) -> float:
        """The wait before connection attempt ``attempt`` (1 = the first after a loss)."""
        return min(self.max_backoff_s, self.first_backoff_s * 2.0 ** (attempt - 1))


@dataclass
class StreamStats:
    """What happened on the way: reported beside the frames' own counts."""

    reconnects: int = 0
    resent: int = 0
    lost: int = 0
    closes: list[str] = field(default_factory=list)  # why each connection ended early


def close_reason(error: BaseException) -> tuple[int | None, str]:
    """(close code or None, a readable reason) of a broken connection or a failed connection attempt."""
    rcvd = getattr(error, "rcvd", None)
    if rcvd is not None:
        return int(rcvd.code), f"closed by the server: {rcvd.code} {rcvd.reason}".strip()
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return None, f"the server answered the upgrade with HTTP {status}"
    detail = str(error)
    return None, f"connection lost ({type(error).__name__}{': ' + detail if detail else ''})"


def retryable(error: BaseException) -> bool:
    """A lost connection or a failed attempt worth trying again: not a refusal of the stream itself."""
    code, _ = close_reason(error)
    if code in FATAL_CLOSE_CODES:
        return False
    status = getattr(getattr(error, "response", None), "status_code", None)
    return status is None or status >= 500 or status == 429


def stream_frames(
    connect: Callable[[], Connection],
    frames: Iterable[tuple[int, bytes]],
    *,
    window: int = 4,
    policy: ReconnectPolicy | None = None,
    stats: StreamStats | None = None,
    sleep: Callable[[float], object] = time.sleep,
) -> Iterator[dict[str, Any]]:
    """Send ``(index, encoded frame)`` pairs, yield one reply per frame in frame order.

    Args:
        connect: opens a new connection to ``/v1/stream`` (called again after a loss).
        window: frames in flight at most (0 = no limit: send as fast as the frames come).
        stats: filled in as the stream goes (reconnects, resent and lost frames, why connections ended).

    Raises:
        Exception: the first connection attempt's own error (nothing listens at the URL, a bad API key): there is
            no stream to recover yet.
    """
    policy = policy or ReconnectPolicy()
    stats = stats if stats is not None else StreamStats()
    source = iter(frames)
    pending: OrderedDict[int, bytes] = OrderedDict()  # sent on some connection, not answered yet
    on_this_connection: list[int] = []  # frame indices in the order this connection got them
    exhausted = False
    ws = connect()
    resend = False
    while True:
        try:
            if resend:  # a fresh connection: first the frames the lost one held, then "end" if it was sent
                on_this_connection = []
                for index, payload in pending.items():
                    on_this_connection.append(index)
                    ws.send(payload)
                    stats.resent += 1
                if exhausted:
                    ws.send("end")
                resend = False
            if not exhausted and (window <= 0 or len(pending) < window):
                item = next(source, None)
                if item is None:
                    exhausted = True
                    ws.send("end")
                    continue
                index, payload = item
                pending[index] = payload
                on_this_connection.append(index)
                ws.send(payload)
                timeout: float | None = 0.0  # collect what is ready, then go on sending
            elif exhausted and not pending:
                ws.close()
                return
            else:
                timeout = None
            try:
                message = ws.recv(timeout=timeout)
            except TimeoutError:
                continue
            reply = json.loads(message)
            index = on_this_connection[int(reply["index"])]
            pending.pop(index, None)
            yield {**reply, "index": index}
        except Exception as exc:
            if not _is_disconnect(exc):
                raise
            if exhausted and not pending:
                return
            code, reason = close_reason(exc)
            stats.closes.append(reason)
            ws_or_none = None
            if retryable(exc) and stats.reconnects < policy.max_reconnects:
                ws_or_none = _reconnect(connect, policy, stats, sleep)
            if ws_or_none is None:
                yield from _lost(pending, source, stats, reason if code in FATAL_CLOSE_CODES else
                                 f"gave up after {stats.reconnects} reconnects; last: {reason}")  # fmt: skip
                return
            ws = ws_or_none
            stats.reconnects += 1
            resend = True


def _is_disconnect(error: BaseException) -> bool:
    from websockets.exceptions import ConnectionClosed

    return isinstance(error, (ConnectionClosed, OSError, EOFError))


def _reconnect(
    connect: Callable[[], Connection], policy: ReconnectPolicy, stats: StreamStats, sleep: Callable[[float], object]
) -> Connection | None:
    """A new connection, or None when every attempt of this loss failed (or one was refused for good)."""
    from websockets.exceptions import InvalidHandshake

    for attempt in range(1, policy.attempts_per_loss + 1):
        sleep(policy.backoff_s(attempt))
        try:
            return connect()
        except (InvalidHandshake, OSError, TimeoutError, EOFError) as exc:
            stats.closes.append(f"reconnect attempt {attempt}: {close_reason(exc)[1]}")
            if not retryable(exc):
                return None
    return None


def _lost(
    pending: OrderedDict[int, bytes], source: Iterator[tuple[int, bytes]], stats: StreamStats, reason: str
) -> Iterator[dict[str, Any]]:
    """Every frame still unanswered, then every frame never sent, reported lost (in frame order)."""
    for index in list(pending):
        stats.lost += 1
        yield {"index": index, "lost": True, "reason": reason}
    pending.clear()
    for index, _ in source:
        stats.lost += 1
        yield {"index": index, "lost": True, "reason": reason}
