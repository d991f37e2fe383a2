"""A minimal asyncio HTTP/1.1 keep-alive load generator: closed loop (N clients) and open loop (fixed rate).

Requests are pre-encoded bytes and responses are parsed by hand (status, Content-Length or chunked body), so
the generator costs little CPU on the machine it measures. Open-loop latency counts from each request's
scheduled start, so a slow server cannot hide queueing delay (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Outcome = str  # "ok" | "shed" | "error"
Judge = Callable[[int, dict[bytes, bytes], bytes], Outcome]

MAX_OPEN_LOOP_CONNECTIONS = 1024  # above any server's in-flight limit, so overload reaches it
DEFAULT_TIMEOUT_S = 10.0  # a request slower than this is a timeout (an error)


@dataclass
class Tally:
    """What one measurement cell saw: latencies (s) of successful requests and counts of everything else."""

    latencies: list[float] = field(default_factory=list)
    shed: int = 0
    errors: int = 0
    timeouts: int = 0
    sent: int = 0
    elapsed: float = 0.0
    error_samples: list[str] = field(default_factory=list)

    def record(self, outcome: Outcome, latency: float, detail: str = "") -> None:
        if outcome == "ok":
            self.latencies.append(latency)
        elif outcome == "shed":
            self.shed += 1
        else:
            self.errors += 1
            if len(self.error_samples) < 3:
                self.error_samples.append(detail[:200])


def encode_request(method: str, path: str, host: str, body: bytes = b"", content_type: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return (head + "\r\n").encode() + body


class Connection:
    """One keep-alive connection; ``send`` writes a request and reads the whole response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(b":")
            headers[key.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = await self._chunked()
        else:
            body = await self.reader.readexactly(int(headers.get(b"content-length", b"0")))
        return status, headers, body

    async def _chunked(self) -> bytes:
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await self.reader.readexactly(size + 2))
            if size == 0:
                return b"".join(p[:-2] for p in parts)

    def close(self) -> None:
        self.writer.close()


async def _one(conn: Connection, request: bytes, judge: Judge, tally: Tally, started: float, timeout: float) -> bool:
    """Send one request, record its outcome; False when the connection must be dropped."""
    try:
        status, headers, body = await asyncio.wait_for(conn.send(request), timeout)
    except TimeoutError:
        tally.timeouts += 1
        tally.record("error", 0.0, "timeout")
        return False
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        tally.record("error", 0.0, f"{type(exc).__name__}: {exc}")
        return False
    tally.record(judge(status, headers, body), time.perf_counter() - started, f"HTTP {status} {body[:120]!r}")
    return headers.get(b"connection", b"").lower() != b"close"


async def closed_loop(
    host: str,
    port: int,
    requests: Sequence[bytes],
    judge: Judge,
    clients: int,
    seconds: float,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Tally:
    """``clients`` connections, each sending its next request as soon as the last answer arrived, for ``seconds``;
    every client sends at least one request, however late it got to run."""
    tally = Tally()
    deadline = time.perf_counter() + seconds
    payloads = itertools.cycle(requests)

    async def client() -> None:
        conn: Connection | None = None
        first = True
        while first or time.perf_counter() < deadline:
            first = False
            tally.sent += 1
            started = time.perf_counter()
            try:
                conn = conn or await Connection.open(host, port)
            except OSError as exc:
                tally.record("error", 0.0, f"connect: {exc}")
                await asyncio.sleep(0.1)
                continue
            if not await _one(conn, next(payloads), judge, tally, started, timeout):
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    tally.elapsed = time.perf_counter() - start
    return tally


async def open_loop(
    host: str,
    port: int,
    requests: Sequence[bytes],
    judge: Judge,
    rate: float,
    seconds: float,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Tally:
    """Start one request every ``1/rate`` s for ``seconds``, whatever the answers do (up to 1024 connections)."""
    tally = Tally()
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    opened = 0
    payloads = itertools.cycle(requests)

    async def fire(request: bytes, scheduled: float) -> None:
        nonlocal opened
        try:
            conn = idle.get_nowait()
        except asyncio.QueueEmpty:
            if opened < MAX_OPEN_LOOP_CONNECTIONS:
                opened += 1
                try:
                    conn = await Connection.open(host, port)
                except OSError as exc:
                    opened -= 1
                    tally.record("error", 0.0, f"connect: {exc}")
                    return
            else:
                try:
                    conn = await asyncio.wait_for(idle.get(), timeout - (time.perf_counter() - scheduled))
                except (TimeoutError, ValueError):
                    tally.timeouts += 1
                    tally.record("error", 0.0, "timeout waiting for a free connection")
                    return
        remaining = max(0.001, timeout - (time.perf_counter() - scheduled))
        if await _one(conn, request, judge, tally, scheduled, remaining):
            idle.put_nowait(conn)
        else:
            conn.close()
            opened -= 1

    start = time.perf_counter()
    tasks = []
    for i in range(int(rate * seconds)):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tally.sent += 1
        tasks.append(asyncio.create_task(fire(next(payloads), scheduled)))
    await asyncio.gather(*tasks)
    tally.elapsed = max(seconds, time.perf_counter() - start)
    while not idle.empty():
        idle.get_nowait().close()
    return tally
