"""A free TCP port for a process that binds it later (HAProxy, the fallback proxy, servers under test)."""

from __future__ import annotations

import random
import socket
from collections.abc import Collection


def free_port(low: int, high: int, *, host: str = "127.0.0.1", taken: Collection[int] = ()) -> int:
    """A random port in [low, high], not in ``taken``, that ``host`` can bind now (without SO_REUSEADDR, so no
    listener and no TIME_WAIT leftovers hold it). Random rather than the first free one, so that concurrent
    starts on one machine rarely pick the same port; the caller still has to expect losing a race for it.

    Raises:
        OSError: no port in the range can be bound.
    """
    ports = list(range(low, high + 1))
    random.shuffle(ports)
    for port in ports:
        if port in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {low}-{high} on {host}")
