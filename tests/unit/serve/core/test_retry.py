"""The retry policy for lost downstream calls: which errors, how many attempts, backoff, the deadline budget."""

from __future__ import annotations

import asyncio

import pytest

from serve.core.retry import RetryPolicy, backoff_s, call_with_retries, next_delay


class Lost(Exception):
    """Stands for "the replica died" (the deployment layer passes Ray's types)."""


def lost(exc: BaseException) -> bool:
    return isinstance(exc, Lost)


class FakeClock:
    """Time moves only when the code under test sleeps (no real waiting)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Flaky:
    """Fails with the given errors in turn, then answers ``"ok"``; counts its calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors, self.calls = list(errors), 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def run(call: Flaky, clock: FakeClock, deadline_s: float = 30.0, policy: RetryPolicy | None = None) -> str:
    return asyncio.run(
        call_with_retries(call, deadline=clock() + deadline_s, retryable=lost, policy=policy, clock=clock,
                          sleep=clock.sleep, rand=lambda: 1.0)
    )  # fmt: skip


def test_backoff_doubles_up_to_the_cap_and_jitter_only_shortens_it() -> None:
    policy = RetryPolicy(first_backoff_s=0.1, max_backoff_s=0.5, multiplier=2.0, jitter=0.5)
    assert [backoff_s(policy, n) for n in (1, 2, 3, 4, 5)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    assert backoff_s(policy, 2, rand=0.0) == pytest.approx(0.1)  # half of 0.2 at the most jitter
    assert backoff_s(RetryPolicy(jitter=0.0), 1, rand=0.0) == pytest.approx(0.05)
    with pytest.raises(ValueError):
        backoff_s(policy, 0)


@pytest.mark.parametrize(
    "fields", [{"max_attempts": 0}, {"first_backoff_s": 2.0, "max_backoff_s": 1.0}, {"multiplier": 0.5}, {"jitter": 2}]
)
def test_nonsense_policies_are_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**fields)  # type: ignore[arg-type]


def test_next_delay_gives_up_on_other_errors_used_up_attempts_and_the_deadline() -> None:
    policy = RetryPolicy(max_attempts=3, first_backoff_s=0.5, max_backoff_s=1.0, jitter=0.0)
    assert next_delay(policy, Lost(), attempts=1, now=0.0, deadline=10.0, retryable=lost) == pytest.approx(0.5)
    assert next_delay(policy, Lost(), attempts=2, now=0.0, deadline=10.0, retryable=lost) == pytest.approx(1.0)
    assert next_delay(policy, Lost(), attempts=3, now=0.0, deadline=10.0, retryable=lost) is None  # used up
    assert next_delay(policy, ValueError(), attempts=1, now=0.0, deadline=10.0, retryable=lost) is None
    assert next_delay(policy, Lost(), attempts=1, now=9.6, deadline=10.0, retryable=lost) is None  # no time left


def test_a_lost_call_is_sent_again_after_its_backoff() -> None:
    clock, call = FakeClock(), Flaky(Lost(), Lost())
    assert run(call, clock, policy=RetryPolicy(first_backoff_s=0.05, jitter=0.0)) == "ok"
    assert call.calls == 3 and clock.sleeps == pytest.approx([0.05, 0.1])


def test_other_errors_reach_the_caller_at_once() -> None:
    clock, call = FakeClock(), Flaky(ValueError("bad input"))
    with pytest.raises(ValueError, match="bad input"):
        run(call, clock)
    assert call.calls == 1 and clock.sleeps == []


def test_the_last_error_reaches_the_caller_when_attempts_are_used_up() -> None:
    clock, call = FakeClock(), Flaky(Lost("1"), Lost("2"), Lost("3"))
    with pytest.raises(Lost, match="2"):
        run(call, clock, policy=RetryPolicy(max_attempts=2))
    assert call.calls == 2


def test_no_retry_starts_past_the_deadline() -> None:
    clock, call = FakeClock(), Flaky(Lost(), Lost(), Lost())
    with pytest.raises(Lost):  # backoffs 0.5 (ends at 0.5 < 0.8), then 1.0 (would end at 1.5 > 0.8): given up
        run(call, clock, deadline_s=0.8, policy=RetryPolicy(max_attempts=5, first_backoff_s=0.5, jitter=0.0))
    assert call.calls == 2 and clock.sleeps == pytest.approx([0.5])


def test_each_attempt_gets_only_the_time_left() -> None:
    calls = 0

    async def hangs_after_a_loss() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Lost()
        await asyncio.Event().wait()  # the second attempt never answers: the deadline cancels it
        return "never"

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            await call_with_retries(hangs_after_a_loss, deadline=loop.time() + 0.2, retryable=lost,
                                    policy=RetryPolicy(first_backoff_s=0.01), clock=loop.time)  # fmt: skip

    asyncio.run(scenario())
    assert calls == 2


def test_a_timeout_inside_a_call_is_not_retried_and_a_passed_deadline_makes_no_call() -> None:
    clock = FakeClock()
    call = Flaky(TimeoutError("slow"))
    with pytest.raises(TimeoutError):
        run(call, clock)
    assert call.calls == 1
    call = Flaky()
    with pytest.raises(TimeoutError):
        run(call, clock, deadline_s=0.0)
    assert call.calls == 0


def test_on_retry_hears_every_retry() -> None:
    clock, call, heard = FakeClock(), Flaky(Lost("a"), Lost("b")), []

    async def scenario() -> str:
        return await call_with_retries(
            call, deadline=clock() + 30, retryable=lost, clock=clock, sleep=clock.sleep, rand=lambda: 1.0,
            on_retry=lambda n, exc, delay: heard.append((n, str(exc), delay)),
        )  # fmt: skip

    assert asyncio.run(scenario()) == "ok"
    assert heard == [(1, "a", pytest.approx(0.05)), (2, "b", pytest.approx(0.1))]
