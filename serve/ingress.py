"""The ingress deployment: serves the FastAPI app and coalesces concurrent requests into one preprocessor call.

The app is built inside the replica (``__serve_build_asgi_app__``), around this object as its ``Pipeline``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from models.contract import load_contract, load_metrics
from serve.admission import FRAME_COST, Admission
from serve.batching import BatchConfig, apply_batch_config, count_images
from serve.errors import ErrorInfo, Overloaded
from serve.frames import FrameFaces, frame_metrics
from serve.metrics import ingress_metrics, keep_gauges_exported
from serve.settings import Settings
from serve.state import ServiceState
from serve.webapp import create_app


@serve.deployment(
    name="Ingress",
    max_ongoing_requests=256,
    max_queued_requests=512,
    ray_actor_options={"num_cpus": 0.5},
    backpressure_config={"status_code": 503, "retry_after_s": 1},
)
@serve.ingress()
class Ingress:
    """HTTP front door.

    Args:
        preprocessor: handle to the Preprocessor deployment.
        model: handle to the EmotionModel deployment (readiness).
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
        # Applied to the batch queue now, not only on a user_config: a request of max_images_per_request images
        # must fit one batch (Serve refuses an item larger than max_batch_size).
        self.reconfigure({"max_batch_size": max(16, settings.max_images_per_request), "batch_wait_timeout_s": 0.002})
        self._metrics = ingress_metrics()
        self._admission = Admission(settings.max_inflight_images, settings.max_queue_delay_s)
        self.frame_metrics = frame_metrics()
        contract = load_contract(settings.model_dir, require_onnx=False)
        self._state = ServiceState(
            pipeline=self, settings=settings, contract=contract, model_metrics=load_metrics(settings.model_dir),
            metrics=self._metrics, key_digests=key_digests, echo_request_id=False, admission=self._admission,
        )  # fmt: skip

        keep_gauges_exported(
            [
                (self._metrics.ongoing, lambda: float(self._state.ongoing)),
                (self.frame_metrics.open_streams, lambda: float(self.frame_metrics.open_count)),
            ]
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self._state)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self._config = BatchConfig(**user_config)
        apply_batch_config(self._coalesce, self._config)

    async def ready(self) -> bool:
        ready: bool = await asyncio.wait_for(self._model.ready.remote(), timeout=5.0)
        return ready

    async def analyze(self, frame: bytes) -> FrameFaces | ErrorInfo:
        with self._admission.admit(FRAME_COST), _overload_as_503():
            result: FrameFaces | ErrorInfo = await asyncio.wait_for(
                self._pre.analyze.remote(frame), self._settings.request_timeout_s
            )
            return result

    async def classify(self, images: list[bytes]) -> list[np.ndarray | ErrorInfo]:
        with self._admission.admit(len(images)), _overload_as_503():
            if len(images) > self._config.max_batch_size:
                return await asyncio.wait_for(self._call(images), self._settings.request_timeout_s)
            result: list[np.ndarray | ErrorInfo] = await asyncio.wait_for(
                self._coalesce(images), self._settings.request_timeout_s
            )
            return result

    # Batches are formed as requests arrive and then wait for a free slot: with one slot (the default), requests
    # arriving one by one form batches of one that run strictly in turn (~50 req/s, at any offered load).
    # Size and wait are set by reconfigure (from __init__ or a user_config).
    @serve.batch(batch_size_fn=count_images, max_concurrent_batches=8)
    async def _coalesce(self, requests: list[list[bytes]]) -> list[list[np.ndarray | ErrorInfo]]:
        flat = [image for request in requests for image in request]
        results = await self._call(flat)
        out, pos = [], 0
        for request in requests:
            out.append(results[pos : pos + len(request)])
            pos += len(request)
        return out

    async def _call(self, images: list[bytes]) -> list[np.ndarray | ErrorInfo]:
        start = time.perf_counter()
        results: list[np.ndarray | ErrorInfo] = await self._pre.classify.remote(images)
        self._metrics.stage.observe((time.perf_counter() - start) * 1000.0, tags={"stage": "preprocess_call"})
        return results


@contextlib.contextmanager
def _overload_as_503() -> Iterator[None]:
    """Full downstream queues (max_queued_requests), timeouts and lost replicas become 503 overloaded + Retry-After."""
    try:
        yield
    except BackPressureError:
        raise Overloaded("the service is saturated (queues full); retry later") from None
    except (TimeoutError, RayError):
        raise Overloaded("the service could not answer in time; retry later") from None
