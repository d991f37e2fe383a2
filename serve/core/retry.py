"""Retrying an idempotent downstream call whose replica died, within the request's deadline.

Ray Serve re-routes a handle call only while no replica has accepted it; once a replica accepted it and then died
(SIGKILL, out-of-memory kill, a lost node), the caller gets the error (``ActorUnavailableError`` or
``ActorDiedError``, possibly wrapped by the stage in between). Every route that calls downstream
(``/v1/classify``, ``/v1/classify/batch``, ``/v1/analyze``, each frame of ``/v1/stream``) is idempotent, so the
ingress sends such a call again instead of failing the request:

* only errors the caller's ``retryable`` predicate accepts are retried (this module is pure: the deployment layer
  knows Ray's exception types);
* at most ``max_attempts`` attempts in all, so a request that itself kills replicas (a poison input) kills few;
* backoff doubles from ``first_backoff_s`` up to ``max_backoff_s``, with jitter so that the many requests of one
  lost batch do not come back in lockstep;
* everything stays inside the request's deadline: each attempt gets only the time left, and no retry starts whose
  backoff would end past the deadline. The last error (or ``TimeoutError``) then reaches the caller, which maps it
  to ``503`` + ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how fast a lost downstream call is sent again."""

    max_attempts: int = 3  # the first call and two retries: one replica death needs one
    first_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0
    jitter: float = 0.5  # the backoff is scaled by a random factor in [1 - jitter, 1]

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts={self.max_attempts} must be >= 1")
        if not 0 <= self.first_backoff_s <= self.max_backoff_s:
            raise ValueError(f"backoffs {self.first_backoff_s}, {self.max_backoff_s}: need 0 <= first <= max")
        if self.multiplier < 1 or not 0 <= self.jitter <= 1:
            raise ValueError(f"multiplier={self.multiplier} must be >= 1 and jitter={self.jitter} in [0, 1]")


def backoff_s(policy: RetryPolicy, retry: int, rand: float = 1.0) -> float:
    """The wait before retry number ``retry`` (1 = the first retry); ``rand`` in [0, 1] picks the jitter."""
    if retry < 1:
        raise ValueError(f"retry={retry} must be >= 1")
    base = min(policy.max_backoff_s, policy.first_backoff_s * policy.multiplier ** (retry - 1))
    return base * (1.0 - policy.jitter * (1.0 - rand))


def next_delay(
    policy: RetryPolicy, error: BaseException, attempts: int, now: float, deadline: float,
    retryable: Callable[[BaseException], bool], rand: float = 1.0,
) -> float | None:  # fmt: skip
    """How long to wait before the next attempt after ``attempts`` attempts failed, the last with ``error``;
    None = give up: the error is not retryable, the attempts are used up, or the backoff would end past the
    deadline (the next attempt would have no time left)."""
    if not retryable(error) or attempts >= policy.max_attempts:
        return None
    delay = backoff_s(policy, attempts, rand)
    return delay if now + delay < deadline else None


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    *,
    deadline: float,
    retryable: Callable[[BaseException], bool],
    policy: RetryPolicy | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
) -> T:
    """``await call()`` until it succeeds, the policy gives up or ``deadline`` (on ``clock``) passes.

    Args:
        call: makes a new attempt each time it is called (a fresh handle call, not the same awaitable).
        deadline: the request's deadline on ``clock``; each attempt is cancelled when it passes.
        retryable: which errors mean "the replica was lost, send it again".
        on_retry: told ``(retry number, error, backoff)`` before each retry, e.g. for a log line.

    Raises:
        TimeoutError: the deadline passed during an attempt.
        Exception: the last attempt's error when it is not retried.
    """
    policy = policy or RetryPolicy()
    attempts = 0
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            raise TimeoutError("the request's deadline passed")
        attempts += 1
        try:
            return await asyncio.wait_for(call(), remaining)
        except Exception as exc:
            delay = None if isinstance(exc, TimeoutError) else next_delay(
                policy, exc, attempts, clock(), deadline, retryable, rand()
            )  # fmt: skip
            if delay is None:
                raise
            if on_retry is not None:
                on_retry(attempts, exc, delay)
            await sleep(delay)
