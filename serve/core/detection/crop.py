"""Pure frame decoding and face cropping: the detector's boxes become model inputs cut like the training data.

FER2013 faces are square, grey, 48x48 and include forehead and chin; the model contract says so in
``preprocessing.face_margin`` (fraction of the box added on every side), ``color_mode``, ``resize`` and the input
size. A face with landmarks is cut by ``align.aligned_crop`` instead (levelled and scaled so its landmarks land
where FER2013's do); the box crop is the fallback when there are none or they are implausible. Boxes stay in the
original (EXIF-upright) image's pixel coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from models.contract import RESAMPLING, ModelContract
from serve.core.detection.align import cut_region, face_alignment, warp
from serve.core.imaging import open_image

Landmarks = Sequence[Sequence[float]]


def decode_frame(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode a camera frame (JPEG, PNG or WebP), EXIF orientation applied, as an RGB Pillow image.

    Raises:
        EmptyBody, InvalidImage, ImageTooLarge (checked from the header, before any pixel is decoded).
    """
    return open_image(data, max_pixels=max_pixels, what="frame").convert("RGB")


def square_region(box: Sequence[float], margin: float) -> tuple[int, int, int, int]:
    """The square ``(left, top, right, bottom)`` centred on an xywh box: side = max(w, h) * (1 + 2 * margin)."""
    x, y, w, h = box
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2.0, y + h / 2.0
    left, top = round(cx - side / 2.0), round(cy - side / 2.0)
    size = max(1, round(side))
    return left, top, left + size, top + size


def crop_square(pixels: np.ndarray, region: tuple[int, int, int, int]) -> np.ndarray:
    """Cut ``region`` out of ``[H, W(, C)]`` pixels; parts outside the image repeat the edge pixels."""
    return cut_region(pixels, *region)


def crop_faces(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    contract: ModelContract,
    landmarks: Sequence[Landmarks | None] | None = None,
) -> np.ndarray:
    """Crop every face the way the training data was cropped.

    Args:
        image: the decoded, upright frame (any mode; converted to the contract's colour mode once).
        boxes: xywh face boxes in the frame's pixel coordinates.
        contract: the model contract (face_margin, color_mode, resize, input size).
        landmarks: per box, its five landmarks (``base.LANDMARK_NAMES``) or None; None = box crops only. A face
            with plausible landmarks is aligned (``align``), any other gets the box crop.

    Returns:
        uint8 ``[N, H, W]`` (colour mode L) or ``[N, H, W, 3]`` (RGB), ready for the model deployment.
    """
    pre, spec = contract.preprocessing, contract.input
    shape = (spec.height, spec.width) if pre.color_mode == "L" else (spec.height, spec.width, 3)
    if not boxes:
        return np.zeros((0, *shape), dtype=np.uint8)
    if landmarks is not None and len(landmarks) != len(boxes):
        raise ValueError(f"{len(landmarks)} landmark sets for {len(boxes)} boxes")
    pixels = np.asarray(image.convert(pre.color_mode), dtype=np.uint8)
    resample = RESAMPLING[pre.resize]
    out = np.empty((len(boxes), *shape), dtype=np.uint8)
    for i, box in enumerate(boxes):
        matrix = face_alignment(landmarks[i], box, spec.width, spec.height) if landmarks is not None else None
        if matrix is not None:
            out[i] = warp(pixels, matrix, (spec.width, spec.height), resample)
            continue
        face = crop_square(pixels, square_region(box, pre.face_margin))
        resized = Image.fromarray(face).resize((spec.width, spec.height), resample)
        out[i] = np.asarray(resized, dtype=np.uint8)
    return out
