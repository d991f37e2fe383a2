"""The service's Prometheus metrics (``ray.serve.metrics``), created inside replicas, never at import.

Ray exports each as ``ray_<name>`` (counters also get ``_total``) on every node's metrics export port, together
with Serve's own ``ray_serve_*`` series; Serve adds ``deployment``/``replica``/``application`` tags. Tags here are
bounded sets (route templates, status codes, stage names, labels): never request ids or user input.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

REQUESTS = "emotion_requests"
REQUEST_LATENCY = "emotion_request_latency_ms"
STAGE_LATENCY = "emotion_stage_latency_ms"
BATCH_SIZE = "emotion_batch_size"
ONGOING = "emotion_ongoing_requests"
PREDICTIONS = "emotion_predictions"
IMAGES = "emotion_images"
COALESCER = "emotion_coalescer"  # _calls, _requests, _images
MODEL_LOAD = "emotion_model_load_seconds"
FACES_PER_FRAME = "emotion_faces_per_frame"
FRAMES = "emotion_frames"
STREAM_DROPPED = "emotion_stream_dropped_frames"
OPEN_STREAMS = "emotion_open_streams"

# Exported names, as a scrape shows them (histograms also have _bucket/_count/_sum).
EXPORTED_NAMES = (
    f"ray_{REQUESTS}_total",
    f"ray_{REQUEST_LATENCY}_bucket",
    f"ray_{STAGE_LATENCY}_bucket",
    f"ray_{BATCH_SIZE}_bucket",
    f"ray_{ONGOING}",
    f"ray_{PREDICTIONS}_total",
    f"ray_{IMAGES}_total",
    *(f"ray_{COALESCER}_{count}_total" for count in ("calls", "requests", "images")),
    f"ray_{MODEL_LOAD}",
    f"ray_{FACES_PER_FRAME}_bucket",
    f"ray_{FRAMES}_total",
    f"ray_{STREAM_DROPPED}_bucket",
    f"ray_{OPEN_STREAMS}",
)

LATENCY_MS_BUCKETS: list[float] = [1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000, 2500, 5000, 10000, 30000]
BATCH_BUCKETS: list[float] = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128]
# Ray histogram boundaries must be > 0: the first bucket (<= 0.5) counts frames with no face / no drop.
FACES_BUCKETS: list[float] = [0.5, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64]
DROPPED_BUCKETS: list[float] = [0.5, 1, 2, 5, 10, 20, 50, 100, 500]


@dataclass
class IngressMetrics:
    requests: Any
    latency: Any
    stage: Any
    ongoing: Any
    images: Any
    coalesced: dict[str, Any]  # "calls" / "requests" / "images" counters of the ingress coalescer
    faces: Any  # faces per analysed frame, by route (/v1/analyze, /v1/stream)
    frames: Any  # frames by route and outcome
    stream_dropped: Any  # frames dropped per closed stream
    open_streams: Any


@dataclass
class ModelMetrics:
    batch_size: Any
    stage: Any
    predictions: Any
    load_seconds: Any


def stage_histogram() -> Any:
    from ray.serve.metrics import Histogram

    return Histogram(
        STAGE_LATENCY, description="Latency of one pipeline stage (decode, preprocess_call, model_call, "
        "batch_wait, inference).", boundaries=LATENCY_MS_BUCKETS, tag_keys=("stage",),
    )  # fmt: skip


def ingress_metrics() -> IngressMetrics:
    from ray.serve.metrics import Counter, Gauge, Histogram

    return IngressMetrics(
        requests=Counter(REQUESTS, description="HTTP requests by route and status.", tag_keys=("route", "status")),  # type: ignore[arg-type]
        latency=Histogram(
            REQUEST_LATENCY, description="End-to-end latency inside the ingress, by route.",
            boundaries=LATENCY_MS_BUCKETS, tag_keys=("route",),
        ),
        stage=stage_histogram(),
        ongoing=Gauge(ONGOING, description="Requests in flight in this ingress replica."),
        images=Counter(IMAGES, description="Images received, by outcome (ok or an error code).", tag_keys=("outcome",)),
        coalesced={
            count: Counter(f"{COALESCER}_{count}", description=f"Ingress coalescing: {what}.")
            for count, what in (("calls", "model calls for uploads"), ("requests", "HTTP requests carried by them"),
                                ("images", "images carried by them"))
        },
        faces=Histogram(FACES_PER_FRAME, description="Faces found per analysed frame.", boundaries=FACES_BUCKETS,
                        tag_keys=("route",)),
        frames=Counter(FRAMES, description="Frames received, by route and outcome (ok, dropped, or an error code).",
                       tag_keys=("route", "outcome")),  # type: ignore[arg-type]
        stream_dropped=Histogram(STREAM_DROPPED, description="Frames dropped per closed stream (drop-oldest policy).",
                                 boundaries=DROPPED_BUCKETS),
        open_streams=Gauge(OPEN_STREAMS, description="WebSocket streams open in this ingress replica."),
    )  # fmt: skip


def model_metrics() -> ModelMetrics:
    from ray.serve.metrics import Counter, Gauge, Histogram

    return ModelMetrics(
        batch_size=Histogram(
            BATCH_SIZE, description="Images per onnxruntime run (realised batch size).", boundaries=BATCH_BUCKETS
        ),
        stage=stage_histogram(),
        predictions=Counter(PREDICTIONS, description="Predicted emotions.", tag_keys=("emotion",)),
        load_seconds=Gauge(MODEL_LOAD, description="Seconds to load the model and pass warm-up."),
    )


class _NullMetric:
    """Stands in for a Ray metric where Ray is not running (unit tests, ``create_app`` without Serve)."""

    def inc(self, *args: object, **kwargs: object) -> None:
        """Do nothing."""

    def observe(self, *args: object, **kwargs: object) -> None:
        """Do nothing."""

    def set(self, *args: object, **kwargs: object) -> None:
        """Do nothing."""


def null_ingress_metrics() -> IngressMetrics:
    null = _NullMetric()
    return IngressMetrics(requests=null, latency=null, stage=null, ongoing=null, images=null,
                          coalesced={"calls": null, "requests": null, "images": null},
                          faces=null, frames=null, stream_dropped=null, open_streams=null)  # fmt: skip


def keep_gauges_exported(gauges: list[tuple[Any, Callable[[], float]]], period_s: float = 2.0) -> threading.Thread:
    """Re-set gauges every ``period_s`` from a daemon thread.

    Ray only exports a gauge in the reporting interval after it was set, so a value set once (model load time) or
    only while requests arrive (ongoing requests) would vanish from the scrape.
    """

    def loop() -> None:
        while True:
            for gauge, value in gauges:
                gauge.set(value())
            time.sleep(period_s)

    thread = threading.Thread(target=loop, name="emotion-gauges", daemon=True)
    thread.start()
    return thread
