"""The Ingress deployment's class with fake handles (no cluster): readiness deadline, overload mapping, admission,
retries of calls whose downstream replica was lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayError, RayTaskError
from ray.serve.exceptions import BackPressureError

from serve.deployments import ingress as ingress_module
from serve.deployments.ingress import replica_lost
from serve.errors import Overloaded
from serve.runtime.autoscaling import OLDEST_REQUEST_AGE
from serve.runtime.metrics import null_ingress_metrics
from serve.runtime.settings import load_settings

# @serve.ingress wraps the class (its async __init__ needs a replica); the user's class is the wrapper's base.
Ingress: Any = ingress_module.Ingress.func_or_class.__bases__[0]
NUM_CLASSES = 3


class Method:
    """``handle.method``: ``.remote(...)`` returns an awaitable, like a DeploymentResponse."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.calls = fn, 0

    def remote(self, *args: Any) -> Any:
        self.calls += 1
        return self.fn(*args)


class Handle:
    def __init__(self, **methods: Callable[..., Any]) -> None:
        for name, fn in methods.items():
            setattr(self, name, Method(fn))


async def never(*args: Any) -> Any:
    await asyncio.Event().wait()


async def echo_rows(images: list[bytes]) -> list[np.ndarray]:
    return [np.full(NUM_CLASSES, len(data), np.float32) for data in images]


@pytest.fixture(autouse=True)
def no_ray_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingress_module, "ingress_metrics", null_ingress_metrics)
    monkeypatch.setattr(ingress_module, "keep_gauges_exported", lambda gauges: None)


def make(pre: Handle | None = None, model: Handle | None = None, **overrides: Any) -> Any:
    # Generous deadlines (only hang guards); a test that wants a deadline to pass sets a small one itself.
    settings = load_settings(**{"ready_timeout_s": 30.0, "request_timeout_s": 30.0, **overrides})
    return Ingress(pre or Handle(classify=echo_rows), model or Handle(ready=never), settings, ())


def test_ready_answers_within_the_readiness_deadline() -> None:
    async def yes() -> bool:
        return True

    assert asyncio.run(make(model=Handle(ready=yes)).ready()) is True
    with pytest.raises(TimeoutError):  # the model replica never answers: given up after ready_timeout_s
        asyncio.run(make(model=Handle(ready=never), ready_timeout_s=0.05).ready())


def test_the_app_reports_not_ready_when_the_model_does_not_answer() -> None:
    ingress = make(model=Handle(ready=never), ready_timeout_s=0.05)
    with TestClient(ingress.__serve_build_asgi_app__(), raise_server_exceptions=False) as client:
        resp = client.get("/readyz")
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "not_ready"


def test_classify_returns_the_preprocessors_rows_in_order() -> None:
    results = asyncio.run(make().classify([b"a", b"bbb", b"cc"]))
    assert [float(r[0]) for r in results] == [1.0, 3.0, 2.0]


async def backpressure(*args: Any) -> Any:
    raise BackPressureError(num_queued_requests=9, max_queued_requests=8)


async def lost_replica(*args: Any) -> Any:
    raise RayError("actor died")


@pytest.mark.parametrize("failure", [backpressure, lost_replica, never], ids=["backpressure", "ray_error", "timeout"])
def test_downstream_failures_become_overloaded_and_release_admission(failure: Callable[..., Any]) -> None:
    ingress = make(Handle(classify=failure, analyze=failure), request_timeout_s=0.05)  # `never`: the deadline passes
    with pytest.raises(Overloaded):
        asyncio.run(ingress.classify([b"a", b"b"]))
    with pytest.raises(Overloaded):
        asyncio.run(ingress.analyze(b"frame"))
    assert ingress._admission.inflight == 0


class Gated:
    """A preprocessor ``classify`` that holds every call until ``gate`` is set: requests stay in flight."""

    def __init__(self) -> None:
        self.entered, self.gate = asyncio.Event(), asyncio.Event()

    async def classify(self, images: list[bytes]) -> list[np.ndarray]:
        self.entered.set()
        await self.gate.wait()
        return await echo_rows(images)


def test_images_in_flight_beyond_the_limit_are_shed() -> None:
    pre = Gated()

    async def scenario() -> None:
        ingress = make(Handle(classify=pre.classify), max_inflight_images=2, max_queue_delay_s=0, request_timeout_s=30)
        first = asyncio.create_task(ingress.classify([b"a", b"b"]))
        await pre.entered.wait()
        with pytest.raises(Overloaded, match="2 images in progress"):
            await ingress.classify([b"c"])
        pre.gate.set()
        assert len(await first) == 2
        assert len(await ingress.classify([b"c"])) == 1  # room again

    asyncio.run(scenario())


def test_the_autoscaling_signal_is_the_oldest_request_age_in_progress() -> None:
    pre = Gated()

    async def scenario() -> None:
        ingress = make(Handle(classify=pre.classify))
        assert ingress.record_autoscaling_stats() == {OLDEST_REQUEST_AGE: 0.0}  # idle
        task = asyncio.create_task(ingress.classify([b"a"]))
        await pre.entered.wait()
        await asyncio.sleep(0.02)
        assert ingress.record_autoscaling_stats()[OLDEST_REQUEST_AGE] >= 0.02  # a lower bound: no speed assumed
        pre.gate.set()
        await task
        assert ingress.record_autoscaling_stats() == {OLDEST_REQUEST_AGE: 0.0}

    asyncio.run(scenario())


def test_reconfigure_validates_the_coalescing_config() -> None:
    ingress = make()
    before = ingress._coalescer
    with pytest.raises(ValidationError):
        ingress.reconfigure({"max_images": 0})
    with pytest.raises(ValidationError):
        ingress.reconfigure({"max_image": 8})
    assert ingress._coalescer is before
    ingress.reconfigure({"max_images": 8, "max_calls_in_flight": 1})
    assert ingress._coalescer is not before
    assert len(asyncio.run(ingress.classify([b"x"] * 3))) == 3


def nested_actor_died() -> RayTaskError:
    """What the ingress gets (actor-call handles) when the replica behind the Preprocessor died."""
    return RayTaskError("Preprocessor.classify", "traceback", ActorDiedError()).as_instanceof_cause()


@pytest.mark.parametrize(
    ("error", "lost"),
    [
        (ActorUnavailableError("Actor is unavailable.", None), True),  # fast mode's gRPC handles
        (ActorDiedError(), True),  # actor-call handles
        (nested_actor_died(), True),
        (RayTaskError("f", "tb", ValueError("bad")), False),  # the callee's own failure: not a lost replica
        (RayError("something else"), False),
        (BackPressureError(num_queued_requests=9, max_queued_requests=8), False),
        (TimeoutError(), False),
    ],
    ids=["unavailable", "died", "died_behind", "task_error", "ray_error", "backpressure", "timeout"],
)
def test_replica_lost_knows_rays_errors_for_a_dead_replica(error: BaseException, lost: bool) -> None:
    assert replica_lost(error) is lost


def lost_then(result: Callable[..., Any], losses: int = 1) -> Callable[..., Any]:
    """A downstream method whose replica dies under its first ``losses`` calls."""
    calls = 0

    async def method(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls <= losses:
            raise ActorUnavailableError("Actor is unavailable.", None)
        return await result(*args)

    return method


async def no_faces(frame: bytes) -> str:
    return f"faces of {len(frame)} bytes"


def test_a_call_whose_replica_died_is_sent_again() -> None:
    pre = Handle(classify=lost_then(echo_rows), analyze=lost_then(no_faces))
    ingress = make(pre)
    results = asyncio.run(ingress.classify([b"a", b"bbb"]))
    assert [float(r[0]) for r in results] == [1.0, 3.0]
    assert asyncio.run(ingress.analyze(b"frame")) == "faces of 5 bytes"
    assert pre.classify.calls == 2 and pre.analyze.calls == 2
    assert ingress._admission.inflight == 0


def test_every_request_of_a_lost_coalesced_call_is_answered() -> None:
    pre = Handle(classify=lost_then(echo_rows))

    async def scenario() -> list[list[np.ndarray | Any]]:
        ingress = make(pre, max_queue_delay_s=0)
        ingress.reconfigure({"max_images": 8, "max_calls_in_flight": 1})
        return await asyncio.gather(*(ingress.classify([b"x" * n]) for n in (1, 2, 3)))

    answers = asyncio.run(scenario())
    assert [float(a[0][0]) for a in answers] == [1.0, 2.0, 3.0]


def test_a_replica_lost_on_every_attempt_ends_in_overloaded() -> None:
    pre = Handle(classify=lost_then(echo_rows, losses=100), analyze=lost_then(no_faces, losses=100))
    ingress = make(pre)
    with pytest.raises(Overloaded):
        asyncio.run(ingress.classify([b"a"]))
    with pytest.raises(Overloaded):
        asyncio.run(ingress.analyze(b"frame"))
    assert pre.classify.calls == ingress._retry.max_attempts and pre.analyze.calls == ingress._retry.max_attempts
    assert ingress._admission.inflight == 0


def test_retries_stay_inside_the_request_deadline() -> None:
    async def lost_after_a_while(images: list[bytes]) -> Any:
        await asyncio.sleep(0.02)
        raise ActorUnavailableError("Actor is unavailable.", None)

    pre = Handle(classify=lost_after_a_while)
    # The deadline should pass: 3 attempts of 0.02 s and two backoffs (>= 0.025 s, >= 0.05 s) need over 0.06 s,
    # and a slower machine only makes fewer attempts fit.
    ingress = make(pre, request_timeout_s=0.06)
    with pytest.raises(Overloaded):
        asyncio.run(ingress.classify([b"a"]))
    assert 1 <= pre.classify.calls < ingress._retry.max_attempts


def test_other_downstream_errors_are_not_retried() -> None:
    pre = Handle(classify=lost_replica, analyze=backpressure)
    ingress = make(pre)
    with pytest.raises(Overloaded):
        asyncio.run(ingress.classify([b"a"]))
    with pytest.raises(Overloaded):
        asyncio.run(ingress.analyze(b"frame"))
    assert pre.classify.calls == 1 and pre.analyze.calls == 1
