"""Can the model read this face? Measurable reasons why not: too small, too blurred, barely a detection. Pure numpy.

A proposal (reports/real_photos/README.md, "unreadable"): the thresholds were chosen on 388 hand-labelled real
faces (reports/real_photos/labels.csv) so that almost no readable face is flagged; nothing in the service calls
this yet. ``unreadable_reason`` returns the first failing rule's name, or None for a face worth classifying.
Masks, hands over the mouth and darkness are not measured here: about half of the hand-labelled unreadable faces
(mostly masked) pass the rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TOO_SMALL = "too_small"
BLURRED = "blurred"
WEAK_DETECTION = "weak_detection"
REASONS = (TOO_SMALL, BLURRED, WEAK_DETECTION)


@dataclass(frozen=True)
class QualityRule:
    """Thresholds of ``unreadable_reason`` (defaults: reports/real_photos/README.md).

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
    """What ``unreadable_reason`` looks at."""

    face_px: float
    sharpness: float
    score: float


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


def unreadable_reason(quality: FaceQuality, rule: QualityRule | None = None) -> str | None:
    """``TOO_SMALL``, ``BLURRED`` or ``WEAK_DETECTION`` (checked in that order) for a face the model cannot read,
    else None."""
    rule = rule or QualityRule()
    if quality.face_px < rule.min_face_px:
        return TOO_SMALL
    if quality.sharpness < rule.min_sharpness:
        return BLURRED
    if quality.score < rule.min_score:
        return WEAK_DETECTION
    return None
