"""The Ingress deployment's class with fake handles (no cluster): uploads decoded here and sent to the model,
readiness deadline, overload mapping, admission, retries of calls whose downstream replica was lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayError, RayTaskError
from ray.serve.exceptions import BackPressureError

from serve.core.inference import FaceScores
from serve.deployments import ingress as ingress_module
from serve.deployments.ingress import replica_lost
from serve.errors import ErrorInfo, Overloaded
from serve.runtime.autoscaling import OLDEST_REQUEST_AGE
from serve.runtime.metrics import null_ingress_metrics
from serve.runtime.settings import load_settings
from tests.conftest import encode

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


def face(level: int) -> bytes:
    """A flat grey upload: the fake model below answers its grey level, which tells the uploads apart."""
    return encode(Image.new("L", (48, 48), level))


async def grey_levels(pixels: np.ndarray) -> np.ndarray:
    """A model ``predict``: every row is the face's mean grey level, so order and pairing can be checked."""
    return np.repeat(pixels.reshape(len(pixels), -1).mean(axis=1, dtype=np.float32)[:, None], NUM_CLASSES, axis=1)


def levels(results: list[FaceScores | ErrorInfo]) -> list[float | str]:
    return [r.code if isinstance(r, ErrorInfo) else float(r.probabilities[0]) for r in results]


@pytest.fixture(autouse=True)
def no_ray_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingress_module, "ingress_metrics", null_ingress_metrics)
    monkeypatch.setattr(ingress_module, "keep_gauges_exported", lambda gauges: None)


def make(pre: Handle | None = None, model: Handle | None = None, **overrides: Any) -> Any:
    # Generous deadlines (only hang guards); a test that wants a deadline to pass sets a small one itself.
    settings = load_settings(**{"ready_timeout_s": 30.0, "request_timeout_s": 30.0, **overrides})
    return Ingress(pre or Handle(analyze=never), model or Handle(ready=never, predict=grey_levels), settings, ())


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


def test_classify_decodes_the_uploads_and_pairs_the_models_rows_with_them_in_order() -> None:
    model = Handle(ready=never, predict=grey_levels)
    results = asyncio.run(make(model=model).classify([face(10), face(30), face(20)]))
    assert levels(results) == [10.0, 30.0, 20.0]
    assert all(r.unreadable == "blurred" for r in results if isinstance(r, FaceScores))  # flat: no detail left
    assert model.predict.calls == 1  # one model call for the request


def test_an_undecodable_upload_is_its_error_and_costs_no_other_its_answer() -> None:
    model = Handle(ready=never, predict=grey_levels)
    ingress = make(model=model)
    assert levels(asyncio.run(ingress.classify([face(10), b"junk", face(20)]))) == [10.0, "invalid_image", 20.0]
    assert levels(asyncio.run(ingress.classify([b"junk", b"\x89PNG\r\n\x1a\n"]))) == ["invalid_image"] * 2
    assert model.predict.calls == 1  # nothing decoded: no model call


async def backpressure(*args: Any) -> Any:
    raise BackPressureError(num_queued_requests=9, max_queued_requests=8)


async def lost_replica(*args: Any) -> Any:
    raise RayError("actor died")


@pytest.mark.parametrize("failure", [backpressure, lost_replica, never], ids=["backpressure", "ray_error", "timeout"])
def test_downstream_failures_become_overloaded_and_release_admission(failure: Callable[..., Any]) -> None:
    ingress = make(Handle(analyze=failure), Handle(predict=failure), request_timeout_s=0.05)  # `never`: times out
    with pytest.raises(Overloaded):
        asyncio.run(ingress.classify([face(1), face(2)]))
    with pytest.raises(Overloaded):
        asyncio.run(ingress.analyze(b"frame"))
    assert ingress._admission.inflight == 0


class Gated:
    """A model ``predict`` that holds every call until ``gate`` is set: requests stay in flight."""

    def __init__(self) -> None:
        self.entered, self.gate = asyncio.Event(), asyncio.Event()

    async def predict(self, pixels: np.ndarray) -> np.ndarray:
        self.entered.set()
        await self.gate.wait()
        return await grey_levels(pixels)


def test_images_in_flight_beyond_the_limit_are_shed() -> None:
    model = Gated()

    async def scenario() -> None:
        ingress = make(model=Handle(predict=model.predict), max_inflight_images=2, max_queue_delay_s=0,
                       request_timeout_s=30)  # fmt: skip
        first = asyncio.create_task(ingress.classify([face(1), face(2)]))
        await model.entered.wait()
        with pytest.raises(Overloaded, match="2 images in progress"):
            await ingress.classify([face(3)])
        model.gate.set()
        assert len(await first) == 2
        assert len(await ingress.classify([face(3)])) == 1  # room again

    asyncio.run(scenario())


def test_the_autoscaling_signal_is_the_oldest_request_age_in_progress() -> None:
    model = Gated()

    async def scenario() -> None:
        ingress = make(model=Handle(predict=model.predict))
        assert ingress.record_autoscaling_stats() == {OLDEST_REQUEST_AGE: 0.0}  # idle
        task = asyncio.create_task(ingress.classify([face(1)]))
        await model.entered.wait()
        await asyncio.sleep(0.02)
        assert ingress.record_autoscaling_stats()[OLDEST_REQUEST_AGE] >= 0.02  # a lower bound: no speed assumed
        model.gate.set()
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
    assert len(asyncio.run(ingress.classify([face(1)] * 3))) == 3


def nested_actor_died() -> RayTaskError:
    """What the ingress gets (actor-call handles) when the replica behind the Preprocessor died."""
    return RayTaskError("Preprocessor.analyze", "traceback", ActorDiedError()).as_instanceof_cause()


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
    pre, model = Handle(analyze=lost_then(no_faces)), Handle(predict=lost_then(grey_levels))
    ingress = make(pre, model)
    assert levels(asyncio.run(ingress.classify([face(1), face(3)]))) == [1.0, 3.0]
    assert asyncio.run(ingress.analyze(b"frame")) == "faces of 5 bytes"
    assert model.predict.calls == 2 and pre.analyze.calls == 2
    assert ingress._admission.inflight == 0


def test_every_request_of_a_lost_coalesced_call_is_answered() -> None:
    model = Handle(predict=lost_then(grey_levels))

    async def scenario() -> list[list[FaceScores | ErrorInfo]]:
        ingress = make(model=model, max_queue_delay_s=0)
        ingress.reconfigure({"max_images": 8, "max_calls_in_flight": 1})
        return await asyncio.gather(*(ingress.classify([face(n)]) for n in (1, 2, 3)))

    answers = asyncio.run(scenario())
    assert [levels(a) for a in answers] == [[1.0], [2.0], [3.0]]


def test_a_replica_lost_on_every_attempt_ends_in_overloaded() -> None:
    pre, model = Handle(analyze=lost_then(no_faces, losses=100)), Handle(predict=lost_then(grey_levels, losses=100))
    ingress = make(pre, model)
    with pytest.raises(Overloaded):
        asyncio.run(ingress.classify([face(1)]))
    with pytest.raises(Overloaded):
        asyncio.run(ingress.analyze(b"frame"))
    assert model.predict.calls == ingress._retry.max_attempts and pre.analyze.calls == ingress._retry.max_attempts
    assert ingress._admission.inflight == 0


def test_retries_stay_inside_the_request_deadline() -> None:
    async def lost_after_a_while(pixels: np.ndarray) -> Any:
        await asyncio.sleep(0.02)
        raise ActorUnavailableError("Actor is unavailable.", None)

    model = Handle(predict=lost_after_a_while)
    # The deadline should pass: 3 attempts of 0.02 s and two backoffs (>= 0.025 s, >= 0.05 s) need over 0.06 s,
    # and a slower machine only makes fewer attempts fit.
    ingress = make(model=model, request_timeout_s=0.06)
    with pytest.raises(Overloaded):
        asyncio.run(ingress.classify([face(1)]))
    assert 1 <= model.predict.calls < ingress._retry.max_attempts


def test_other_downstream_errors_are_not_retried() -> None:
    pre, model = Handle(analyze=backpressure), Handle(predict=lost_replica)
    ingress = make(pre, model)
    with pytest.raises(Overloaded):
        asyncio.run(ingress.classify([face(1)]))
    with pytest.raises(Overloaded):
        asyncio.run(ingress.analyze(b"frame"))
    assert model.predict.calls == 1 and pre.analyze.calls == 1
