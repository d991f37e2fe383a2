"""Load shedding per ingress replica: images in flight and the oldest request's age, on a fake clock."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from serve.core import admission as admission_module
from serve.core.admission import Admission
from serve.errors import Overloaded


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(admission_module, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


def test_admits_up_to_the_image_limit_then_sheds(clock: Clock) -> None:
    guard = Admission(limit=4, max_delay_s=1.0)
    with guard.admit(2), guard.admit(2):
        assert guard.inflight == 4
        with pytest.raises(Overloaded, match="4 images in progress"), guard.admit(1):
            pass
        assert guard.inflight == 4  # a refused request holds nothing
    assert guard.inflight == 0


def test_an_idle_replica_admits_a_request_bigger_than_the_limit(clock: Clock) -> None:
    guard = Admission(limit=4, max_delay_s=1.0)
    with guard.admit(10), pytest.raises(Overloaded), guard.admit(1):
        pass


def test_sheds_while_the_oldest_request_is_older_than_the_delay_bound(clock: Clock) -> None:
    guard = Admission(limit=100, max_delay_s=1.0)
    with guard.admit(1):
        clock.now += 0.9
        with guard.admit(1):
            pass
        clock.now += 0.2  # the first request has now waited 1.1 s
        assert guard.oldest_age_s() == pytest.approx(1.1)
        with pytest.raises(Overloaded, match="wait over 1 s"), guard.admit(1):
            pass
    with guard.admit(1):  # nothing old is left once it finished
        pass


def test_the_age_is_that_of_the_oldest_request_still_running(clock: Clock) -> None:
    guard = Admission(limit=100, max_delay_s=1.0)
    first, second = guard.admit(1), guard.admit(1)
    first.__enter__()
    clock.now += 0.5
    second.__enter__()
    clock.now += 0.7  # first: 1.2 s old, second: 0.7 s
    with pytest.raises(Overloaded), guard.admit(1):
        pass
    first.__exit__(None, None, None)
    assert guard.oldest_age_s() == pytest.approx(0.7)
    with guard.admit(1):
        pass
    second.__exit__(None, None, None)


def test_zero_delay_bound_is_off(clock: Clock) -> None:
    guard = Admission(limit=100, max_delay_s=0.0)
    with guard.admit(1):
        clock.now += 1000.0
        with guard.admit(1):
            assert guard.inflight == 2


def test_units_are_released_when_the_block_raises(clock: Clock) -> None:
    guard = Admission(limit=4, max_delay_s=1.0)
    with pytest.raises(ValueError), guard.admit(3):
        raise ValueError("downstream failed")
    assert guard.inflight == 0
    assert guard.oldest_age_s() == 0.0
    with guard.admit(4):
        pass
