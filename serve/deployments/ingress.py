"""The ingress deployment: serves the FastAPI app. Uploaded faces (``/v1/classify``) are decoded here and the
uploads of concurrent requests go to the model as one call (``serve.core.coalesce``: a call is formed when one of
its slots frees up, so batches grow with the load). Frames (``/v1/analyze``, ``/v1/stream``) need face detection
and go to the Preprocessor.

A downstream call whose replica died after accepting it is sent again within the request's deadline
(``serve.core.retry``; Serve itself re-routes only calls no replica accepted yet); what cannot be answered in time
is ``503 overloaded`` + ``Retry-After``.

The app is built inside the replica (``__serve_build_asgi_app__``), around this object as its ``Pipeline``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import numpy as np
from fastapi import FastAPI
from grpc.aio import AioRpcError
from ray import serve
from ray.exceptions import RayActorError, RayError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from models.contract import load_contract, load_metrics
from serve.core.admission import FRAME_COST, Admission
from serve.core.batching import CoalesceConfig
from serve.core.coalesce import Coalescer
from serve.core.frames import FrameFaces, quality_rule
from serve.core.imaging import configure_pillow
from serve.core.inference import FaceScores
from serve.core.retry import RetryPolicy, call_with_retries
from serve.core.uploads import UploadReader
from serve.errors import ErrorInfo, Overloaded
from serve.http.state import ServiceState
from serve.http.webapp import create_app
from serve.runtime.autoscaling import OLDEST_REQUEST_AGE
from serve.runtime.metrics import ingress_metrics, keep_gauges_exported
from serve.runtime.settings import Settings

logger = logging.getLogger("emotion.ingress")
T = TypeVar("T")


@serve.deployment(name="Ingress")  # options: deploy/serve_config.yaml
@serve.ingress()
class Ingress:
    """HTTP front door.

    Args:
        preprocessor: handle to the Preprocessor deployment (frames).
        model: handle to the EmotionModel deployment (uploaded faces, readiness).
        settings: the service settings, resolved once when the app was built.
        key_digests: SHA-256 digests of the API keys (the keys themselves never leave the builder).
    """

    def __init__(
        self,
        preprocessor: DeploymentHandle[Any],
        model: DeploymentHandle[Any],
        settings: Settings,
        key_digests: tuple[str, ...],
    ) -> None:
        self._pre = preprocessor
        self._model = model
        self._settings = settings
        self._retry = RetryPolicy()
        self._metrics = ingress_metrics()
        self.reconfigure({})  # CoalesceConfig's defaults until Serve passes a user_config
        self._admission = Admission(settings.max_inflight_images, settings.max_queue_delay_s)
        contract = load_contract(settings.model_dir, require_onnx=False)
        configure_pillow(settings.max_image_pixels)
        self._uploads = UploadReader(contract, settings.max_image_pixels, quality_rule(settings))
        self._state = ServiceState(
            pipeline=self, settings=settings, contract=contract, model_metrics=load_metrics(settings.model_dir),
            metrics=self._metrics, key_digests=key_digests, echo_request_id=False, admission=self._admission,
        )  # fmt: skip

        keep_gauges_exported(
            [
                (self._metrics.ongoing, lambda: float(self._state.ongoing)),
                (self._metrics.open_streams, lambda: float(self._state.open_streams)),
            ]
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self._state)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = CoalesceConfig(**user_config)
        # Requests already waiting in a replaced coalescer are still sent by it as its calls finish.
        self._coalescer: Coalescer[bytes, FaceScores | ErrorInfo] = Coalescer(
            self._call, max_items=config.max_images, slots=config.max_calls_in_flight, on_call=self._observe_call
        )

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve calls this every few seconds: the signal ``serve.runtime.autoscaling.GraphDelayPolicy`` scales the
        graph on (ignored by Ray's default policy)."""
        return {OLDEST_REQUEST_AGE: self._admission.oldest_age_s()}

    async def ready(self) -> bool:
        ready: bool = await asyncio.wait_for(self._model.ready.remote(), self._settings.ready_timeout_s)
        return ready

    async def analyze(self, frame: bytes) -> FrameFaces | ErrorInfo:
        with self._admission.admit(FRAME_COST), _overload_as_503():
            start = time.perf_counter()
            result: FrameFaces | ErrorInfo = await self._with_retries(
                "analyze", lambda: self._pre.analyze.remote(frame)
            )
            self._metrics.stage.observe((time.perf_counter() - start) * 1000.0, tags={"stage": "preprocess_call"})
            return result

    async def classify(self, images: list[bytes]) -> list[FaceScores | ErrorInfo]:
        with self._admission.admit(len(images)), _overload_as_503():
            # A lost call fails every request it carried; each comes back through the coalescer on its own.
            result: list[FaceScores | ErrorInfo] = await self._with_retries(
                "classify", lambda: self._coalescer.submit(images)
            )
            return result

    async def _with_retries(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` (idempotent) within EMOTION_REQUEST_TIMEOUT_S, sent again when its replica was lost."""

        def log_retry(attempt: int, error: BaseException, delay: float) -> None:
            logger.warning("%s: downstream replica lost (%s); retry %d in %.2fs", what, type(error).__name__,
                           attempt, delay)  # fmt: skip

        return await call_with_retries(
            call, deadline=time.monotonic() + self._settings.request_timeout_s, retryable=replica_lost,
            policy=self._retry, on_retry=log_retry,
        )  # fmt: skip

    def _observe_call(self, requests: int, images: int) -> None:
        # Counters, not a histogram: Ray estimates histogram sums from bucket midpoints; these means are exact.
        for count, value in (("calls", 1), ("requests", requests), ("images", images)):
            self._metrics.coalesced[count].inc(value)

    async def _call(self, images: list[bytes]) -> list[FaceScores | ErrorInfo]:
        """One coalesced call: the uploads are decoded here and go to the model as one uint8 stack. An upload is a
        face already (no detection), so a hop through the Preprocessor would only add its cost (ab17: 5-7 % of
        the graph's single-image throughput). At most ``max_calls_in_flight`` decodes run at once."""
        start = time.perf_counter()
        decoded = await asyncio.to_thread(self._uploads.read_all, images)
        self._metrics.stage.observe((time.perf_counter() - start) * 1000.0, tags={"stage": "decode"})
        if not len(decoded.pixels):
            return decoded.answer(np.zeros((0, self._state.contract.num_classes), np.float32))  # no model call
        start = time.perf_counter()
        probs = await self._model.predict.remote(decoded.pixels)
        self._metrics.stage.observe((time.perf_counter() - start) * 1000.0, tags={"stage": "model_call"})
        return decoded.answer(probs)


def replica_lost(error: BaseException) -> bool:
    """The downstream call's replica (or one behind it) died or became unreachable: worth sending again.

    Measured on Ray 2.60 (SIGKILL of a replica while it held the call; reports/faults/README.md): with fast mode's
    gRPC handles the caller gets ``ActorUnavailableError``, whether the callee or the replica behind it died; with
    actor-call handles ``ActorDiedError``, or ``RayTaskError(ActorDiedError)`` (an instance of both, its ``cause``
    the ActorDiedError) when the replica behind the callee died. All are ``RayActorError``.
    """
    return isinstance(error, RayActorError) or isinstance(getattr(error, "cause", None), RayActorError)


@contextlib.contextmanager
def _overload_as_503() -> Iterator[None]:
    """Full downstream queues (max_queued_requests), timeouts and lost replicas become 503 overloaded + Retry-After."""
    try:
        yield
    except BackPressureError:
        raise Overloaded("the service is saturated (queues full); retry later") from None
    except (TimeoutError, RayError, AioRpcError):  # AioRpcError: a gRPC handle call broken off (fast mode)
        raise Overloaded("the service could not answer in time; retry later") from None
