"""Whole camera frames: decode, detect faces, crop them per the model contract; the answer that crosses handles.

Pure (no Ray): the Preprocessor deployment runs ``FrameAnalyzer.prepare`` and sends all crops of a frame to the
model as one batch; ``emotion analyze-video`` runs the same code in-process. Routes reach it through a pipeline
that also satisfies ``FramePipeline``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from models.contract import ModelContract
from serve.core.detection import DetectorConfig, FaceDetector
from serve.core.detection.crop import crop_faces, decode_frame
from serve.errors import ErrorInfo

# Ray histogram boundaries must be > 0: the first bucket (<= 0.5) counts frames with no face / no drop.
FACES_BUCKETS: list[float] = [0.5, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64]
DROPPED_BUCKETS: list[float] = [0.5, 1, 2, 5, 10, 20, 50, 100, 500]


@dataclass(frozen=True)
class FrameFaces:
    """Every face of one frame. Small and picklable: float32 arrays, no images."""

    width: int
    height: int
    boxes: np.ndarray  # float32 [n, 4] xywh in original frame pixels
    scores: np.ndarray  # float32 [n]
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # [n, num_classes]
    detect_ms: float = 0.0


class FrameAnalyzer:
    """Decode -> detect -> crop. ``prepare`` returns the faces (no probabilities yet) and their uint8 crops.

    Args:
        contract: the model contract (how to crop).
        detector: any FaceDetector (the service uses CenterFaceDetector).
        max_pixels: largest accepted frame (width x height).
    """

    def __init__(self, contract: ModelContract, detector: FaceDetector, max_pixels: int) -> None:
        self.contract, self.detector, self.max_pixels = contract, detector, max_pixels

    def prepare(self, data: bytes) -> tuple[FrameFaces, np.ndarray]:
        """Raises EmptyBody, InvalidImage or ImageTooLarge for a bad frame."""
        image = decode_frame(data, max_pixels=self.max_pixels)
        return self.prepare_image(np.asarray(image), image)

    def prepare_image(self, rgb: np.ndarray, image: Any = None) -> tuple[FrameFaces, np.ndarray]:
        """The same for already-decoded RGB uint8 pixels (video frames)."""
        from PIL import Image

        start = time.perf_counter()
        faces = self.detector.detect(rgb)
        detect_ms = (time.perf_counter() - start) * 1000.0
        boxes = np.asarray([f.box for f in faces], dtype=np.float32).reshape(-1, 4)
        crops = crop_faces(image if image is not None else Image.fromarray(rgb), boxes.tolist(), self.contract)
        scores = np.asarray([f.score for f in faces], dtype=np.float32)
        height, width = rgb.shape[:2]
        return FrameFaces(width, height, boxes, scores, detect_ms=detect_ms), crops


def with_probabilities(frame: FrameFaces, probabilities: np.ndarray) -> FrameFaces:
    if len(probabilities) != len(frame.boxes):
        raise ValueError(f"{len(probabilities)} probability rows for {len(frame.boxes)} faces")
    return replace(frame, probabilities=np.asarray(probabilities, dtype=np.float32))


def face_records(frame: FrameFaces, labels: tuple[str, ...]) -> list[dict[str, Any]]:
    """The JSON ``faces`` list: box (rounded to 0.1 px), score, label, probabilities in label order."""
    out = []
    for box, score, probs in zip(frame.boxes, frame.scores, frame.probabilities, strict=True):
        out.append({
            "box": [round(float(v), 1) for v in box],
            "score": round(float(score), 4),
            "label": labels[int(np.argmax(probs))],
            "probabilities": {label: float(p) for label, p in zip(labels, probs, strict=True)},
        })  # fmt: skip
    return out


def detector_config(settings: Any) -> DetectorConfig:
    """The DetectorConfig that the ``EMOTION_DETECTOR_*`` / face settings describe."""
    return DetectorConfig(
        input_long_side=settings.detector_input_size, threshold=settings.detector_threshold,
        min_face_px=settings.min_face_px, max_faces=settings.max_faces, threads=settings.detector_threads,
    )  # fmt: skip


@dataclass
class FrameMetrics:
    """Ingress-side metrics of the frame and stream routes (Ray metrics in Serve, no-ops elsewhere)."""

    faces: Any
    frames: Any
    dropped: Any
    open_streams: Any
    open_count: int = 0


class _Null:
    def inc(self, *args: object, **kwargs: object) -> None:
        """Do nothing."""

    def observe(self, *args: object, **kwargs: object) -> None:
        """Do nothing."""

    def set(self, *args: object, **kwargs: object) -> None:
        """Do nothing."""


def null_frame_metrics() -> FrameMetrics:
    return FrameMetrics(_Null(), _Null(), _Null(), _Null())


def frame_metrics() -> FrameMetrics:
    """Create the Ray metrics (inside a replica only)."""
    from ray.serve.metrics import Counter, Gauge, Histogram

    return FrameMetrics(
        faces=Histogram("emotion_faces_per_frame", description="Faces found per analysed frame.",
                        boundaries=FACES_BUCKETS, tag_keys=("route",)),
        frames=Counter("emotion_frames", description="Frames received, by route and outcome (ok, dropped, "
                       "or an error code).", tag_keys=("route", "outcome")),  # type: ignore[arg-type]
        dropped=Histogram("emotion_stream_dropped_frames", description="Frames dropped per closed stream "
                          "(drop-oldest policy).", boundaries=DROPPED_BUCKETS),
        open_streams=Gauge("emotion_open_streams", description="WebSocket streams open in this ingress replica."),
    )  # fmt: skip


@runtime_checkable
class FramePipeline(Protocol):
    """What the frame routes need from the deployment graph besides ``Pipeline``."""

    frame_metrics: FrameMetrics

    async def analyze(self, frame: bytes) -> FrameFaces | ErrorInfo:
        """Faces with probabilities, or an ErrorInfo for a bad frame."""
        ...


class InProcessFrames:
    """Detection + classification in this process (no Ray): ``emotion analyze-video`` and the HTTP unit tests.

    Args:
        model_dir: model folder (model.onnx + config.json).
        detector: face detector settings.
        max_pixels: largest accepted frame.
        threads: onnxruntime threads of the classifier.
    """

    def __init__(self, model_dir: Any, detector: DetectorConfig | None = None, max_pixels: int = 16_000_000,
                 threads: int = 1) -> None:  # fmt: skip
        from serve.core.detection import CenterFaceDetector
        from serve.core.inference import OnnxClassifier

        self.classifier = OnnxClassifier(model_dir, intra_op_threads=threads)
        self.frames = FrameAnalyzer(self.classifier.contract, CenterFaceDetector(detector), max_pixels)
        self.frame_metrics = null_frame_metrics()

    def _finish(self, faces: FrameFaces, crops: np.ndarray) -> FrameFaces:
        n = self.classifier.contract.num_classes
        probs = self.classifier.predict_proba(crops) if len(crops) else np.zeros((0, n), np.float32)
        return with_probabilities(faces, probs)

    def analyze_rgb(self, rgb: np.ndarray) -> FrameFaces:
        return self._finish(*self.frames.prepare_image(rgb))

    async def analyze(self, frame: bytes) -> FrameFaces | ErrorInfo:
        from serve.errors import ServiceError

        try:
            return self._finish(*self.frames.prepare(frame))
        except ServiceError as exc:
            return exc.info()
