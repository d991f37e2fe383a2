"""Other detectors measured against CenterFace by ``tools.detector_benchmark`` (not used for serving).

Each is optional: built only when its package is installed (``pip install yuface`` or ``mediapipe``);
``available()`` says which are.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from serve.core.detection.base import Face, FaceDetector


def _resize_long(rgb: np.ndarray, long_side: int) -> tuple[np.ndarray, float]:
    height, width = rgb.shape[:2]
    if long_side == 0:
        return rgb, 1.0
    scale = long_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)), scale


def _faces(boxes: np.ndarray, scores: np.ndarray, scale: float) -> list[Face]:
    faces = [Face(tuple(float(v) / scale for v in b), float(s)) for b, s in zip(boxes, scores, strict=True)]  # type: ignore[arg-type]
    return sorted(faces, key=lambda f: -f.score)


class YuNet:
    """libfacedetection's YuNet, compiled into the ``yuface`` wheel (BSD-3); C++, not onnxruntime."""

    def __init__(self, long_side: int = 640, threshold: float = 0.5) -> None:
        import yuface

        self._detect = yuface.detect
        self.name = f"yunet(yuface) long{long_side} thr{threshold}"
        self._long, self._thr = long_side, threshold

    def detect(self, rgb: np.ndarray) -> list[Face]:
        img, scale = _resize_long(rgb, self._long)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            confs, boxes, _ = self._detect(np.ascontiguousarray(img[:, :, ::-1]), self._thr)
        scores = np.asarray(confs, dtype=np.float64).reshape(-1)
        scores = scores / 100.0 if scores.size and scores.max() > 1 else scores
        return _faces(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), scores, scale)


class BlazeFace:
    """MediaPipe BlazeFace (legacy ``solutions.face_detection``; model 1 = full range), TFLite inside the wheel."""

    def __init__(self, model_selection: int = 1, threshold: float = 0.5) -> None:
        import mediapipe as mp

        self._det = mp.solutions.face_detection.FaceDetection(
            model_selection=model_selection, min_detection_confidence=threshold
        )
        self.name = f"blazeface(mediapipe) {'full' if model_selection else 'short'} thr{threshold}"

    def detect(self, rgb: np.ndarray) -> list[Face]:
        height, width = rgb.shape[:2]
        result = self._det.process(np.ascontiguousarray(rgb))
        faces = []
        for d in result.detections or []:
            r = d.location_data.relative_bounding_box
            faces.append(Face((r.xmin * width, r.ymin * height, r.width * width, r.height * height), d.score[0]))
        return sorted(faces, key=lambda f: -f.score)


_PACKAGES: dict[str, tuple[str, Callable[..., FaceDetector]]] = {
    "yunet": ("yuface", YuNet),
    "blazeface": ("mediapipe", BlazeFace),
}


def available() -> list[str]:
    """Names of the candidates whose package is installed here."""
    return [name for name, (module, _) in _PACKAGES.items() if importlib.util.find_spec(module) is not None]


def build(name: str, **kwargs: Any) -> FaceDetector:
    """Build a candidate by name (``yunet``, ``blazeface``)."""
    return _PACKAGES[name][1](**kwargs)
