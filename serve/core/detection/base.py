"""What every face detector returns and the knobs they share. Pure: no onnxruntime, no Ray."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

Point = tuple[float, float]
# The five landmarks, in this order, as CenterFace (and RetinaFace, MTCNN) return them. "Left" is the image's left:
# the person's right eye for a frontal face.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True)
class Face:
    """One detected face: ``box`` is ``(x, y, w, h)`` in pixels of the original (EXIF-upright) image.

    ``landmarks``: the five points of ``LANDMARK_NAMES`` as ``(x, y)`` in the same pixels, or None when the
    detector gives none.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[Point, Point, Point, Point, Point] | None = None


class FaceDetector(Protocol):
    """Anything that finds faces in an RGB uint8 ``[H, W, 3]`` image."""

    name: str

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces sorted by descending score, boxes in the image's own pixel coordinates."""
        ...


@dataclass(frozen=True)
class DetectorConfig:
    """Knobs of the CenterFace detector (defaults = the shipped setting; see reports/detection/README.md).

    Attributes:
        input_long_side: the frame is resized (up or down) so its long side is this many pixels (then to a
            multiple of 32) before detection; 0 = detect at the native size.
        threshold: minimum heatmap score of a face.
        nms_iou: boxes overlapping a better one by at least this IoU are dropped.
        flip_tta: also run the mirrored frame and average the two heatmaps (2x the cost).
        min_face_px: faces whose box is smaller (width or height, original pixels) are dropped.
        max_faces: keep at most this many faces per frame, the highest scores.
        threads: onnxruntime intra-op threads (set explicitly: ORT ignores OMP_NUM_THREADS).
    """

    input_long_side: int = 640
    threshold: float = 0.45
    nms_iou: float = 0.3
    flip_tta: bool = False
    min_face_px: int = 0
    max_faces: int = 64
    threads: int = 1

    def __post_init__(self) -> None:
        if self.input_long_side != 0 and not 32 <= self.input_long_side <= 4096:
            raise ValueError(f"input_long_side={self.input_long_side} must be 0 or within 32..4096")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold={self.threshold} must be within (0, 1)")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou={self.nms_iou} must be within (0, 1]")
        if self.min_face_px < 0 or self.max_faces < 1 or self.threads < 1:
            raise ValueError(
                f"min_face_px={self.min_face_px} must be >= 0, max_faces={self.max_faces} and "
                f"threads={self.threads} >= 1"
            )


def select_faces(faces: list[Face], *, min_face_px: int, max_faces: int) -> list[Face]:
    """Drop faces under ``min_face_px`` (either side), keep the ``max_faces`` best, sorted by descending score."""
    kept = [f for f in faces if min(f.box[2], f.box[3]) >= min_face_px]
    kept.sort(key=lambda f: -f.score)
    return kept[:max_faces]
