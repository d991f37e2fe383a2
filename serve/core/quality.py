"""Can the model read this face? Measurable reasons why not: too small, too blurred, barely a detection. Pure numpy.

The thresholds were chosen on 388 hand-labelled real faces (reports/real_photos/README.md, "unreadable") so that
almost no readable face is flagged. ``unreadable_reason`` returns the first failing rule's name, or None for a face
worth classifying; the service answers a flagged face with ``"label": null`` (docs/api.md). The preprocessor runs
it on every detected face (``/v1/analyze``, ``/v1/stream``) and, without the detection rule, on every uploaded
crop (``/v1/classify``). Masks, hands over the mouth and darkness are not measured here: about half of the
hand-labelled unreadable faces (mostly masked) pass the rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np

UnreadableReason = Literal["too_small", "blurred", "weak_detection"]
TOO_SMALL: Final = "too_small"
BLURRED: Final = "blurred"
WEAK_DETECTION: Final = "weak_detection"
REASONS: tuple[UnreadableReason, ...] = (TOO_SMALL, BLURRED, WEAK_DETECTION)


@dataclass(frozen=True)
class QualityRule:
    """Thresholds of ``unreadable_reason`` (defaults: reports/real_photos/README.md). The service reads them from
    its ``EMOTION_UNREADABLE_*`` settings, whose defaults are these; 0 turns a rule off.

    Attributes:
        min_face_px: the face box's short side in original frame pixels must be at least this.
        min_sharpness: ``sharpness`` of the model's input crop (48x48 for the bundled model) must be at least this.
        min_score: the detector's score must be at least this (CenterFace: the service keeps faces from 0.45).
    """

    min_face_px: float = 16.0
    min_sharpness: float = 80.0
    min_score: float = 0.55

    def __post_init__(self) -> None:
        if self.min_face_px < 0 or self.min_sharpness < 0 or not 0 <= self.min_score < 1:
            raise ValueError(f"bad quality rule {self}: sizes >= 0, min_score within [0, 1)")


@dataclass(frozen=True)
class FaceQuality:
    """What ``unreadable_reason`` looks at. ``score`` is None for a face nobody detected (an uploaded crop)."""

    face_px: float
    sharpness: float
    score: float | None = None


def sharpness(crop: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a grey uint8 ``[H, W]`` crop (RGB is averaged to grey first).

    Measured on the model's own input, so it says how much detail the model gets, whatever the face's size in the
    frame (a large defocused face is blurred at 48 px too; a small sharp one is not). A flat crop gives 0.
    """
    grey = np.asarray(crop, dtype=np.float64)
    if grey.ndim == 3:
        grey = grey.mean(axis=2)
    if grey.ndim != 2 or min(grey.shape) < 3:
        raise ValueError(f"expected a [H, W] crop of at least 3x3, got {grey.shape}")
    lap = grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4.0 * grey[1:-1, 1:-1]
    return float(lap.var())


def measure(box: Sequence[float], crop: np.ndarray, score: float) -> FaceQuality:
    """The quality measures of one detected face: its xywh box, its model input crop and its detection score."""
    return FaceQuality(face_px=float(min(box[2], box[3])), sharpness=sharpness(crop), score=float(score))


def measure_upload(size: tuple[int, int], crop: np.ndarray) -> FaceQuality:
    """The quality measures of an uploaded face crop (``/v1/classify``): the upload is the face, so its short side
    (``size`` = width, height as uploaded) stands for the box's; there is no detection score."""
    return FaceQuality(face_px=float(min(size)), sharpness=sharpness(crop))


def unreadable_reason(quality: FaceQuality, rule: QualityRule | None = None) -> UnreadableReason | None:
    """``TOO_SMALL``, ``BLURRED`` or ``WEAK_DETECTION`` (checked in that order) for a face the model cannot read,
    else None. The score rule is skipped for a face without a detection score."""
    rule = rule or QualityRule()
    if quality.face_px < rule.min_face_px:
        return TOO_SMALL
    if quality.sharpness < rule.min_sharpness:
        return BLURRED
    if quality.score is not None and quality.score < rule.min_score:
        return WEAK_DETECTION
    return None
