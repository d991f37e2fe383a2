"""Fault injection: SIGKILL replicas of a private service under a bounded closed-loop load; no request is lost.

The load (``tools/fault_probe.py``'s ``run_faults``): 6 keep-alive clients send FER2013 faces to
``/v1/classify`` (every 8th a 4-face ``/v1/classify/batch``, every 10th a photo to ``/v1/analyze``), through
HAProxy as real clients do. A replica is killed after a fixed number of answers (its PID from Serve's own replica
details: only this service's processes), the next one once the service is whole again and as many answers came
back, and the load ends a fixed number of requests after the last kill. Every answer must be a 200, or a 503 with
Retry-After (the service said when to come back); a dropped connection, a timeout or any other status is lost.

Nothing here depends on the machine's speed: the service runs without its queueing-delay bound and with the hang
guard as its request deadline (conftest), so a replica's restart, however slow, delays answers but fails none;
every wait is a generous hang guard.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import require_fer
from tests.integration.conftest import API_KEY, HANG_GUARD_S, start_private_service
from tools.fault_probe import FaultRun, replicas, run_faults, wait_whole

pytestmark = [pytest.mark.integration, pytest.mark.data, pytest.mark.timeout(1200)]

EXPECTED = {"Ingress": 1, "Preprocessor": 1, "EmotionModel": 1}  # deploy/serve_config.yaml: one replica each
KILL_AFTER = 60  # answers before each kill (and requests after the last one)
CLIENTS = 6


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    require_fer()
    url, _, stop = start_private_service()
    try:
        yield url
    finally:
        stop()


def assert_nothing_lost(run: FaultRun, kills: list[str], *, cut_allowed: bool = False) -> None:
    """Every answer 200 or 503 + Retry-After. With ``cut_allowed`` (an ingress killed): also a response cut off
    mid-body, only for a request in flight at a kill (the dead replica was writing it: nothing can replay that)."""
    print(json.dumps(run.summary()))  # pytest -s: the numbers of this run (reports/faults/README.md)
    assert [k.deployment for k in run.kills] == kills, run.summary()
    lost = run.lost()
    if cut_allowed:
        lost = [a for a in lost if not (a.cut and any(a.started < k.at <= a.ended for k in run.kills))]
    assert not lost, run.summary()
    for kill in run.kills:
        after = run.after(kill)
        assert sum(a.ok for a in after) >= KILL_AFTER // 2, run.summary()  # it answered again after each kill
    routes = {a.route for a in run.answers if a.ok}
    assert routes == {"/v1/classify", "/v1/classify/batch", "/v1/analyze"}, routes
    wait_whole(EXPECTED)
    alive = {int(r["pid"]) for rs in replicas().values() for r in rs}
    assert not alive & {k.pid for k in run.kills}  # each killed replica was replaced, not revived


def test_killing_the_model_and_then_the_preprocessor_loses_no_request(url: str) -> None:
    kills = ["EmotionModel", "Preprocessor"]
    run = run_faults(url, API_KEY, kills, expected=EXPECTED, kill_after=KILL_AFTER, clients=CLIENTS, analyze_every=10)
    assert_nothing_lost(run, kills)


def test_killing_the_only_ingress_loses_no_request(url: str) -> None:
    # HAProxy replays what the dead ingress dropped before answering (haproxy_loopback.sh: retry-on empty-response,
    # requests up to its 1 MiB buffer) and, with no ingress left, holds it at the head's fallback proxy until the
    # replacement is up; what it cannot replay gets the service's 503 + Retry-After. Only a response the replica
    # was writing when it died can arrive cut off (seen once in about 30 requests in flight at 6 ingress kills).
    wait_whole(EXPECTED)
    run = run_faults(url, API_KEY, ["Ingress"], expected=EXPECTED, kill_after=KILL_AFTER, clients=CLIENTS,
                     analyze_every=10)  # fmt: skip
    assert_nothing_lost(run, ["Ingress"], cut_allowed=True)


def test_a_stream_through_an_ingress_kill_accounts_for_every_frame(url: str) -> None:
    # The killed ingress held the WebSocket: the client sees the connection break (no close frame can come from a
    # SIGKILLed process), opens a new one and sends the frames that were unanswered again (client/stream.py).
    from websockets.sync.client import connect

    from client.stream import ReconnectPolicy, StreamStats, stream_frames
    from loadtests.data import video_frames
    from tools.fault_probe import kill_replica

    wait_whole(EXPECTED)
    frames = video_frames(limit=90)
    ws_url = url.replace("http", "ws", 1) + "/v1/stream"
    killed: list[int] = []

    def source() -> Iterator[tuple[int, bytes]]:
        for index, frame in enumerate(frames):
            if index == 30:  # with frames in flight (window 4)
                killed.append(kill_replica("Ingress"))
            yield index, frame

    def open_stream() -> Any:
        return connect(ws_url, additional_headers={"Authorization": f"Bearer {API_KEY}"}, max_size=None,
                       open_timeout=HANG_GUARD_S)  # fmt: skip

    stats = StreamStats()
    # Up to ~2 min of attempts after the loss: the replacement ingress may start slowly on a loaded machine.
    policy = ReconnectPolicy(attempts_per_loss=30)
    replies = list(stream_frames(open_stream, source(), window=4, policy=policy, stats=stats))
    print(json.dumps({"reconnects": stats.reconnects, "resent": stats.resent, "closes": stats.closes}))
    assert [r["index"] for r in replies] == list(range(len(frames))), "a frame went missing or came twice"
    assert stats.lost == 0 and not [r for r in replies if "error" in r], replies
    assert stats.reconnects >= 1 and killed
    assert sum("faces" in r for r in replies) >= len(frames) // 2  # answered, not only dropped
    wait_whole(EXPECTED, gone=killed)
