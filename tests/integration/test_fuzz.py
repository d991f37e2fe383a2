"""The >= 10,000-request fuzz run (slow: about 5 minutes on 2 cores; `make fuzz` runs the same thing).

A count, not a speed: shed answers (503 overloaded + Retry-After, which depend on the machine's load) are retried
by ``fuzz`` until admitted; the timeout below only guards against a hang."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.conftest import API_KEY, Service
from tools.fuzz_service import fuzz

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(3600)]


def test_ten_thousand_hostile_requests_give_no_5xx(service: Service) -> None:
    statuses = asyncio.run(fuzz(service.url, 10_000, 8, API_KEY))
    assert statuses.pop(-2) == 1, "unhealthy after the fuzz run"
    assert not [code for code in statuses if code >= 500 or code < 0], statuses
