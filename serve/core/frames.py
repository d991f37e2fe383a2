"""Whole camera frames: decode, detect faces, crop them per the model contract, judge whether each is readable
(``serve.core.quality``); the answer that crosses handles.

Pure (no Ray): the Preprocessor deployment runs ``FrameAnalyzer.prepare`` and sends all crops of a frame to the
model as one batch; ``emotion analyze-video`` runs the same code in-process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from models.contract import ModelContract
from serve.core.detection import DetectorConfig, FaceDetector
from serve.core.detection.crop import crop_faces, decode_frame
from serve.core.inference import OnnxClassifier, answer
from serve.core.quality import QualityRule, UnreadableReason, measure, unreadable_reason
from serve.errors import ErrorInfo


@dataclass(frozen=True)
class FrameFaces:
    """Every face of one frame. Small and picklable: float32 arrays, no images."""

    width: int
    height: int
    boxes: np.ndarray  # float32 [n, 4] xywh in original frame pixels
    scores: np.ndarray  # float32 [n]
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # [n, num_classes]
    detect_ms: float = 0.0
    unreadable: tuple[UnreadableReason | None, ...] = ()  # per face; () = nobody judged them: all readable

    def reasons(self) -> tuple[UnreadableReason | None, ...]:
        """The unreadable reason of every face (None = readable), one per box."""
        return self.unreadable or (None,) * len(self.boxes)


class FrameAnalyzer:
    """Decode -> detect -> crop. ``prepare`` returns the faces (no probabilities yet) and their uint8 crops.

    Args:
        contract: the model contract (how to crop).
        detector: any FaceDetector (the service uses CenterFaceDetector).
        max_pixels: largest accepted frame (width x height).
        align: cut faces that have landmarks by ``detection.align`` (the service's behaviour); False = box crops
            only (the measurement tools compare both: reports/real_photos/README.md).
        quality: the unreadable rule run on every face's box, crop and score (None: ``QualityRule()``).
    """

    def __init__(self, contract: ModelContract, detector: FaceDetector, max_pixels: int, align: bool = True,
                 quality: QualityRule | None = None) -> None:  # fmt: skip
        self.contract, self.detector, self.max_pixels, self.align = contract, detector, max_pixels, align
        self.quality = quality or QualityRule()

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
        landmarks = [f.landmarks for f in faces] if self.align else None
        pil = image if image is not None else Image.fromarray(rgb)
        crops = crop_faces(pil, boxes.tolist(), self.contract, landmarks)
        scores = np.asarray([f.score for f in faces], dtype=np.float32)
        # Judged on the crop the model gets (its detail, not the frame's), the box and the detector's own score.
        reasons = tuple(unreadable_reason(measure(f.box, crop, f.score), self.quality)
                        for f, crop in zip(faces, crops, strict=True))  # fmt: skip
        height, width = rgb.shape[:2]
        return FrameFaces(width, height, boxes, scores, detect_ms=detect_ms, unreadable=reasons), crops


def with_probabilities(frame: FrameFaces, probabilities: np.ndarray) -> FrameFaces:
    if len(probabilities) != len(frame.boxes):
        raise ValueError(f"{len(probabilities)} probability rows for {len(frame.boxes)} faces")
    return replace(frame, probabilities=np.asarray(probabilities, dtype=np.float32))


def face_records(frame: FrameFaces, contract: ModelContract) -> list[dict[str, Any]]:
    """The JSON ``faces`` list: box (rounded to 0.1 px), score, then ``inference.answer``'s fields (label,
    probabilities in answer order, readable, unreadable_reason)."""
    return [
        {"box": [round(float(v), 1) for v in box], "score": round(float(score), 4),
         **answer(probs, contract, reason).to_json()}
        for box, score, probs, reason in zip(frame.boxes, frame.scores, frame.probabilities, frame.reasons(),
                                             strict=True)
    ]  # fmt: skip


def quality_rule(settings: Any) -> QualityRule:
    """The QualityRule that the ``EMOTION_UNREADABLE_*`` settings describe."""
    return QualityRule(
        min_face_px=settings.unreadable_min_face_px, min_sharpness=settings.unreadable_min_sharpness,
        min_score=settings.unreadable_min_score,
    )  # fmt: skip


def detector_config(settings: Any) -> DetectorConfig:
    """The DetectorConfig that the ``EMOTION_DETECTOR_*`` / face settings describe."""
    return DetectorConfig(
        input_long_side=settings.detector_input_size, threshold=settings.detector_threshold,
        min_face_px=settings.min_face_px, max_faces=settings.max_faces, threads=settings.detector_threads,
    )  # fmt: skip


class InProcessFrames:
    """Detection + classification in this process (no Ray): ``emotion analyze-video`` and the HTTP unit tests.

    Args:
        model_dir: model folder (model.onnx + config.json).
        detector: face detector settings.
        max_pixels: largest accepted frame.
        threads: onnxruntime threads of the classifier.
        quality: the unreadable rule (None: ``QualityRule()``).
    """

    def __init__(self, model_dir: Any, detector: DetectorConfig | None = None, max_pixels: int = 16_000_000,
                 threads: int = 1, quality: QualityRule | None = None) -> None:  # fmt: skip
        from serve.core.detection import CenterFaceDetector

        self.classifier = OnnxClassifier(model_dir, intra_op_threads=threads)
        self.frames = FrameAnalyzer(self.classifier.contract, CenterFaceDetector(detector), max_pixels,
                                    quality=quality)  # fmt: skip

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
