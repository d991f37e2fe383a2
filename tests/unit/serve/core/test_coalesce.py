"""The adaptive coalescer: batches form when a slot frees up, results go back in order, errors reach every caller."""

from __future__ import annotations

import asyncio

import pytest

from serve.core.coalesce import Coalescer


class Downstream:
    """Records each call; ``gate`` holds calls until released."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.gate = asyncio.Event()
        self.fail: Exception | None = None

    async def __call__(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [item * 10 for item in items]


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_idle_requests_go_at_once_and_busy_ones_leave_together() -> None:
    async def scenario() -> None:
        down = Downstream()
        seen: list[tuple[int, int]] = []
        co: Coalescer[int, int] = Coalescer(down, max_items=8, slots=1, on_call=lambda r, i: seen.append((r, i)))
        first = asyncio.create_task(co.submit([1]))
        await _settle()
        assert down.calls == [[1]]  # an idle coalescer does not wait for company
        rest = [asyncio.create_task(co.submit([n, n + 1])) for n in (2, 4, 6)]
        await _settle()
        assert co.queued == 3 and len(down.calls) == 1  # the only slot is busy: they wait
        down.gate.set()
        assert await first == [10]
        assert [await t for t in rest] == [[20, 30], [40, 50], [60, 70]]
        assert down.calls == [[1], [2, 3, 4, 5, 6, 7]]  # one call for the three that waited
        assert seen == [(1, 1), (3, 6)]

    asyncio.run(scenario())


def test_max_items_never_splits_a_request() -> None:
    async def scenario() -> None:
        down = Downstream()
        co: Coalescer[int, int] = Coalescer(down, max_items=4, slots=1)
        blocker = asyncio.create_task(co.submit([0]))
        await _settle()
        waiting = [asyncio.create_task(co.submit(items)) for items in ([1, 2, 3], [4, 5], [6, 7, 8, 9, 10])]
        await _settle()
        down.gate.set()
        await asyncio.gather(blocker, *waiting)
        assert down.calls == [[0], [1, 2, 3], [4, 5], [6, 7, 8, 9, 10]]  # an oversized request goes alone

    asyncio.run(scenario())


def test_errors_reach_every_caller_and_cancelled_requests_are_skipped() -> None:
    async def scenario() -> None:
        down = Downstream()
        co: Coalescer[int, int] = Coalescer(down, max_items=8, slots=1)
        blocker = asyncio.create_task(co.submit([0]))
        await _settle()
        gone = asyncio.create_task(co.submit([1]))
        kept = [asyncio.create_task(co.submit([n])) for n in (2, 3)]
        await _settle()
        gone.cancel()  # its caller timed out while waiting for a slot
        down.fail = RuntimeError("downstream full")
        down.gate.set()
        for task in (blocker, *kept):
            with pytest.raises(RuntimeError, match="downstream full"):
                await task
        assert down.calls == [[0], [2, 3]]  # the cancelled request was never sent
        down.fail = None
        assert await co.submit([4]) == [40]  # the coalescer keeps working after an error

    asyncio.run(scenario())


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="slots=0"):
        Coalescer(Downstream(), max_items=4, slots=0)
