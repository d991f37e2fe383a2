"""Free-port picking for processes that bind later."""

from __future__ import annotations

import socket

import pytest

from serve.runtime.fastmode import PORT_RANGE
from serve.runtime.ports import free_port


def test_free_port_never_returns_a_bound_or_taken_port() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        busy = held.getsockname()[1]
        with pytest.raises(OSError, match="no free port"):
            free_port(busy, busy)
    port = free_port(*PORT_RANGE)
    assert PORT_RANGE[0] <= port <= PORT_RANGE[1]
    with pytest.raises(OSError, match="no free port"):
        free_port(port, port, taken={port})
