"""Bounded admission: the ingress answers 503 at once instead of queueing work it cannot finish in time.

With direct ingress (fast mode) no Serve proxy queue sits in front of the ingress, so ``max_queued_requests`` no
longer sheds HTTP load; this guard does, per ingress replica, on two signals:

* queueing delay: the oldest request in progress has waited longer than ``max_delay_s``; the rate this replica can
  serve moves with the machine's load, so a delay bound keeps admitted requests fast where a fixed count would not;
* work in flight: more than ``limit`` images (a 32-image request weighs 32 single ones; a frame ``FRAME_COST``).

One request is always admitted when nothing is in flight, so a request bigger than the limit runs on an idle replica.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import OrderedDict
from collections.abc import Iterator

from serve.errors import Overloaded

FRAME_COST = 4  # a /v1/analyze frame (detection + its faces) costs about four face images of CPU


class Admission:
    """Images in flight through one ingress replica, bounded by ``limit`` and by the oldest one's age."""

    def __init__(self, limit: int, max_delay_s: float) -> None:
        self.limit, self.max_delay_s = limit, max_delay_s
        self.inflight = 0
        self._started: OrderedDict[int, float] = OrderedDict()  # request -> admission time, oldest first
        self._ids = itertools.count()

    def oldest_age_s(self) -> float:
        return time.monotonic() - next(iter(self._started.values())) if self._started else 0.0

    def check(self, cost: int = 1) -> None:
        """Raise Overloaded (503 + Retry-After) when ``cost`` more units would not be admitted now."""
        if self.inflight:
            if self.inflight + cost > self.limit:
                raise Overloaded(f"the service is saturated ({self.inflight} images in progress); retry later")
            if self.max_delay_s and self.oldest_age_s() > self.max_delay_s:
                raise Overloaded(f"the service is saturated (requests wait over {self.max_delay_s:g} s); retry later")

    @contextlib.contextmanager
    def admit(self, cost: int) -> Iterator[None]:
        """Hold ``cost`` units while the block runs; raise Overloaded when saturated (see ``check``)."""
        self.check(cost)
        token = next(self._ids)
        self._started[token] = time.monotonic()
        self.inflight += cost
        try:
            yield
        finally:
            self.inflight -= cost
            del self._started[token]
