"""client.stream against a scripted fake server: every frame ends answered, dropped or lost, in frame order."""

from __future__ import annotations

import json
from collections import deque

import pytest
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK
from websockets.frames import Close

from client.stream import ReconnectPolicy, StreamStats, close_reason, retryable, stream_frames


class FakeServer:
    """Answers each frame at once with ``{"index": <per-connection number>, "frame": <payload>}``.

    ``die_after[n]`` = connection n breaks (no close frame, as when its ingress replica is SIGKILLed) once it has
    sent that many replies; ``refuse_reconnects`` = how many attempts after the first connection fail (the replacement
    ingress is not up yet); ``close_with`` = a close frame instead of a bare break.
    """

    def __init__(
        self, die_after: dict[int, int] | None = None, refuse_reconnects: int = 0, close_with: Close | None = None,
        drop: set[bytes] | None = None, hold: bool = False,
    ) -> None:  # fmt: skip
        self.die_after = die_after or {}
        self.refuse_reconnects = refuse_reconnects
        self.close_with = close_with
        self.drop = drop or set()
        self.hold = hold  # no reply before the client's "end" (a slow server)
        self.connections: list[FakeConnection] = []

    def connect(self) -> FakeConnection:
        if self.connections and self.refuse_reconnects:
            self.refuse_reconnects -= 1
            raise ConnectionRefusedError("nothing listens")
        conn = FakeConnection(self, len(self.connections))
        self.connections.append(conn)
        return conn


class FakeConnection:
    def __init__(self, server: FakeServer, number: int) -> None:
        self.server, self.number = server, number
        self.received: list[bytes | str] = []
        self.replies: deque[str] = deque()
        self.sent = 0
        self.ended = self.closed = False
        self.max_unanswered = 0

    def _broken(self) -> bool:
        limit = self.server.die_after.get(self.number)
        return limit is not None and self.sent >= limit

    def _raise_broken(self) -> None:
        raise ConnectionClosedError(self.server.close_with, None)

    def send(self, message: str | bytes) -> None:
        if self._broken():
            self._raise_broken()
        self.received.append(message)
        if message == "end":
            self.ended = True
            return
        assert isinstance(message, bytes)
        index = len([m for m in self.received if m != "end"]) - 1
        reply = {"index": index, "dropped": True} if message in self.server.drop else {"index": index, "faces": []}
        self.replies.append(json.dumps({**reply, "frame": message.decode()}))
        self.max_unanswered = max(self.max_unanswered, len(self.replies))

    def recv(self, timeout: float | None = None) -> str:
        if self._broken():
            self._raise_broken()
        if self.server.hold and not self.ended and timeout is not None:
            raise TimeoutError
        if self.replies:
            self.sent += 1
            return self.replies.popleft()
        if timeout is not None:
            raise TimeoutError
        assert self.ended, "the client waits for a reply that can never come"
        raise ConnectionClosedOK(Close(1000, ""), Close(1000, ""))

    def close(self) -> None:
        self.closed = True


def frames(n: int) -> list[tuple[int, bytes]]:
    return [(100 + i, f"f{100 + i}".encode()) for i in range(n)]


def run(server: FakeServer, n: int = 10, window: int = 4, policy: ReconnectPolicy | None = None,
        ) -> tuple[list[dict[str, object]], StreamStats, list[float]]:  # fmt: skip
    stats, sleeps = StreamStats(), []
    replies = list(stream_frames(server.connect, frames(n), window=window, policy=policy, stats=stats,
                                 sleep=sleeps.append))  # fmt: skip
    return replies, stats, sleeps


def test_every_frame_answered_in_order_with_its_own_index() -> None:
    server = FakeServer()
    replies, stats, _ = run(server)
    assert [r["index"] for r in replies] == [i for i, _ in frames(10)]
    assert all(r["frame"] == f"f{r['index']}" for r in replies)  # the reply belongs to that frame
    assert (stats.reconnects, stats.resent, stats.lost) == (0, 0, 0)
    assert server.connections[0].received[-1] == "end" and server.connections[0].closed


def test_window_bounds_the_frames_in_flight() -> None:
    server = FakeServer()
    run(server, n=20, window=3)
    assert server.connections[0].max_unanswered <= 3


def test_a_broken_connection_is_reopened_and_its_unanswered_frames_sent_again() -> None:
    server = FakeServer(die_after={0: 3})
    replies, stats, sleeps = run(server, n=10, window=4)
    indices = [r["index"] for r in replies]
    assert indices == [i for i, _ in frames(10)]  # each once, in order, none lost
    assert all(r["frame"] == f"f{r['index']}" for r in replies)
    assert stats.reconnects == 1 and stats.lost == 0
    second = server.connections[1].received
    assert second[: stats.resent] == [f"f{i}".encode() for i in range(103, 103 + stats.resent)]  # oldest first
    assert 1 <= stats.resent <= 4 and sleeps == [0.5]
    assert stats.closes and "connection lost" in stats.closes[0]


def test_a_break_after_end_was_sent_resends_and_ends_again() -> None:
    server = FakeServer(die_after={0: 8}, hold=True)
    replies, stats, _ = run(server, n=10, window=0)  # no window: everything and "end" sent before a reply
    assert [r["index"] for r in replies] == [i for i, _ in frames(10)]
    assert server.connections[0].received[-1] == "end"
    assert server.connections[1].received == [f"f{i}".encode() for i in (108, 109)] + ["end"]
    assert stats.resent == 2


def test_failed_attempts_back_off_then_succeed() -> None:
    server = FakeServer(die_after={0: 2}, refuse_reconnects=2)
    replies, stats, sleeps = run(server, n=6, window=2)
    assert [r["index"] for r in replies] == [i for i, _ in frames(6)]
    assert sleeps == [0.5, 1.0, 2.0] and stats.reconnects == 1
    assert sum("reconnect attempt" in c for c in stats.closes) == 2


def test_giving_up_reports_every_unanswered_and_unsent_frame_lost() -> None:
    server = FakeServer(die_after={0: 3}, refuse_reconnects=99)
    replies, stats, sleeps = run(server, n=10, window=4, policy=ReconnectPolicy(attempts_per_loss=2))
    assert [r["index"] for r in replies] == [i for i, _ in frames(10)]  # every frame has its line
    lost = [r for r in replies if r.get("lost")]
    assert len(lost) == 7 == stats.lost and [r["index"] for r in lost] == list(range(103, 110))
    assert all("gave up after 0 reconnects" in str(r["reason"]) for r in lost)
    assert sleeps == [0.5, 1.0]


def test_a_refused_stream_is_not_retried() -> None:
    server = FakeServer(die_after={0: 2}, close_with=Close(1008, "invalid API key"))
    replies, stats, sleeps = run(server, n=5, window=2)
    assert [r["index"] for r in replies] == [i for i, _ in frames(5)]
    assert stats.reconnects == 0 and sleeps == [] and stats.lost == 3
    assert "1008 invalid API key" in str(replies[-1]["reason"])


def test_the_reconnect_budget_is_for_the_whole_stream() -> None:
    server = FakeServer(die_after={0: 1, 1: 1, 2: 1})
    replies, stats, _ = run(server, n=6, window=1, policy=ReconnectPolicy(max_reconnects=2))
    assert [r["index"] for r in replies] == [i for i, _ in frames(6)]
    assert stats.reconnects == 2 and stats.lost == 3 and replies[3]["lost"]


def test_dropped_frames_are_answers_not_losses() -> None:
    server = FakeServer(drop={b"f102"})
    replies, stats, _ = run(server, n=4)
    assert replies[2]["dropped"] is True and stats.lost == 0


def test_which_errors_are_retried() -> None:
    assert retryable(ConnectionClosedError(None, None))
    assert retryable(ConnectionClosedError(Close(1011, "internal error"), None))
    assert retryable(ConnectionClosedError(Close(1012, "service restart"), None))
    assert not retryable(ConnectionClosedError(Close(1008, "policy"), None))
    assert not retryable(ConnectionClosedError(Close(1009, "too big"), None))
    assert retryable(ConnectionRefusedError("refused"))
    assert close_reason(ConnectionClosedError(Close(1011, "boom"), None)) == (1011, "closed by the server: 1011 boom")


def test_policy_backoff_and_validation() -> None:
    policy = ReconnectPolicy(first_backoff_s=0.5, max_backoff_s=4.0)
    assert [policy.backoff_s(a) for a in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    with pytest.raises(ValueError):
        ReconnectPolicy(attempts_per_loss=0)
    with pytest.raises(ValueError):
        ReconnectPolicy(first_backoff_s=5.0, max_backoff_s=1.0)
