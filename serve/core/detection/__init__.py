"""Face detection for camera frames: a CenterFace detector on onnxruntime, frame decoding and contract crops."""

from serve.core.detection.base import DetectorConfig, Face, FaceDetector, select_faces
from serve.core.detection.centerface import CenterFaceDetector

__all__ = ["CenterFaceDetector", "DetectorConfig", "Face", "FaceDetector", "select_faces"]
