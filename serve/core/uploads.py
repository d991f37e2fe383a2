"""Uploaded faces (``/v1/classify``, ``/v1/classify/batch``): decode each to the model's input, judge it with the
unreadable rule, and pair the model's probabilities back with the uploads in input order. Pure numpy/Pillow.

An upload is the face itself, so its quality is measured on its own size and on the detail left after resizing
(``serve.core.quality.measure_upload``); an undecodable upload becomes its ``ErrorInfo`` and loses no other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from models.contract import ModelContract
from serve.core.imaging import decode_face
from serve.core.inference import FaceScores
from serve.core.quality import QualityRule, UnreadableReason, measure_upload, unreadable_reason
from serve.errors import ErrorInfo, ServiceError

Verdict = UnreadableReason | None


@dataclass(frozen=True)
class DecodedUploads:
    """What ``UploadReader.read_all`` made of a list of uploads.

    Attributes:
        outcomes: per upload, in input order: its ErrorInfo, or the unreadable verdict of a decoded face.
        pixels: uint8 ``[n, H, W(, C)]`` of the decoded faces only, in input order (n may be 0).
    """

    outcomes: list[ErrorInfo | Verdict]
    pixels: np.ndarray

    def answer(self, probabilities: np.ndarray) -> list[FaceScores | ErrorInfo]:
        """Every upload's answer: the model's ``[n, num_classes]`` for the decoded ones, errors where they were."""
        if len(probabilities) != len(self.pixels):
            raise ValueError(f"{len(probabilities)} rows of probabilities for {len(self.pixels)} decoded faces")
        rows = iter(probabilities)
        return [o if isinstance(o, ErrorInfo) else FaceScores(next(rows), o) for o in self.outcomes]


@dataclass(frozen=True)
class UploadReader:
    """Decodes uploads to the contract's input.

    Attributes:
        contract: the model's preprocessing contract (size, channels).
        max_pixels: largest accepted width x height (EMOTION_MAX_IMAGE_PIXELS).
        quality: the unreadable rule (EMOTION_UNREADABLE_*).
    """

    contract: ModelContract
    max_pixels: int
    quality: QualityRule = field(default_factory=QualityRule)

    def read(self, data: bytes) -> tuple[np.ndarray, Verdict]:
        """One upload's pixels and verdict.

        Raises:
            serve.errors.ServiceError: not an image, too large, or not decodable.
        """
        pixels, size = decode_face(data, self.contract, max_pixels=self.max_pixels)
        return pixels, unreadable_reason(measure_upload(size, pixels), self.quality)

    def read_all(self, uploads: Sequence[bytes]) -> DecodedUploads:
        """Every upload, the undecodable ones as their ErrorInfo."""
        outcomes: list[ErrorInfo | Verdict] = []
        decoded: list[np.ndarray] = []
        for data in uploads:
            try:
                pixels, verdict = self.read(data)
            except ServiceError as exc:
                outcomes.append(exc.info())
                continue
            decoded.append(pixels)
            outcomes.append(verdict)
        if decoded:
            return DecodedUploads(outcomes, np.stack(decoded))
        size = self.contract.input
        channels = (size.channels,) if size.channels > 1 else ()  # decode_image's shape: [H, W] for grayscale
        return DecodedUploads(outcomes, np.zeros((0, size.height, size.width, *channels), np.uint8))
