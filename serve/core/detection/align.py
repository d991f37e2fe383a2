"""Aligned face crops: a similarity transform that puts a detected face's landmarks where FER2013 has them.

The model was trained on FER2013's registered 48x48 crops. A box crop (``crop.square_region``) frames a detected
face by its box only: it is neither levelled nor scaled like those crops. ``aligned_crop`` instead rotates, scales
and shifts the face (one similarity transform: no shear, no reflection) so that its five landmarks land as close as
possible (least squares) to ``FER2013_TEMPLATE``, the typical landmark positions of FER2013 test faces measured with
the same detector (reports/real_photos/alignment.md). Pure: numpy and Pillow (``Image.transform`` with AFFINE).

Coordinates are continuous pixels: pixel ``i`` spans ``[i, i + 1)``, like the detector's boxes and landmarks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

# Typical landmark positions of FER2013 faces as fractions of the frame's width / height: left eye, right eye,
# nose, mouth left, mouth right. CenterFace run on the 3,979 angry/happy/sad test faces (upscaled 4x, edge-padded;
# 3,731 found); each face's points fitted by `similarity` onto the running template, the per-point median taken and
# mirror-symmetrised (the model averages each face with its mirror image). In a 48x48 frame: eyes at (15.4, 19.2)
# and (32.6, 19.2), nose (24.0, 28.5), mouth corners (17.1, 35.9) and (30.9, 35.9).
# Measured by `python -m tools.real_photos --registration` (reports/real_photos/alignment.md).
FER2013_TEMPLATE: tuple[tuple[float, float], ...] = (
    (0.3217, 0.3994),
    (0.6783, 0.3994),
    (0.5000, 0.5933),
    (0.3554, 0.7477),
    (0.6446, 0.7477),
)

# An aligned frame whose side is outside these multiples of the face box's long side means the landmarks are not
# to be trusted (a profile face, a landmark on the background): the box crop is used instead.
PLAUSIBLE_FRAME_TO_BOX = (0.7, 2.0)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 similarity ``M`` (rotation, uniform scale, translation) minimising ``sum |M @ [src, 1] - dst|^2``.

    Umeyama (1991) without reflection; ``src`` and ``dst`` are ``[k, 2]`` point sets, ``k >= 2``.

    Raises:
        ValueError: fewer than 2 points, mismatched shapes, or all ``src`` points on one spot.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if len(src) < 2 or src.shape != dst.shape:
        raise ValueError(f"need two matching sets of >= 2 points, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    var = float((s**2).sum())
    if not var > 1e-12:
        raise ValueError("the source points coincide")
    # With complex numbers z = x + iy, the best rotation+scale is a = sum(conj(s) d) / sum(|s|^2).
    a = float((s[:, 0] * d[:, 0] + s[:, 1] * d[:, 1]).sum()) / var  # scale * cos
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / var  # scale * sin
    rot = np.array([[a, -b], [b, a]])
    return np.hstack([rot, (mu_d - rot @ mu_s)[:, None]])


def template_points(width: int, height: int, template: Sequence[tuple[float, float]] = FER2013_TEMPLATE) -> np.ndarray:
    """The template in pixels of a ``width`` x ``height`` frame: ``[k, 2]``."""
    return np.asarray(template, dtype=np.float64) * [width, height]


def alignment_matrix(
    landmarks: Sequence[Sequence[float]],
    width: int,
    height: int,
    template: Sequence[tuple[float, float]] = FER2013_TEMPLATE,
) -> np.ndarray:
    """The 2x3 similarity from image pixels to the ``width`` x ``height`` aligned frame for these landmarks."""
    return similarity(np.asarray(landmarks, dtype=np.float64), template_points(width, height, template))


def frame_side(matrix: np.ndarray, width: int) -> float:
    """How many image pixels the aligned frame's width covers (the inverse of the matrix's scale, times width)."""
    return width / math.hypot(matrix[0, 0], matrix[1, 0])


def eye_angle(landmarks: Sequence[Sequence[float]]) -> float:
    """Angle of the line from the left to the right eye, in degrees (positive: the right eye is lower)."""
    (lx, ly), (rx, ry) = landmarks[0][:2], landmarks[1][:2]
    return math.degrees(math.atan2(ry - ly, rx - lx))


def is_plausible(matrix: np.ndarray, box: Sequence[float], width: int) -> bool:
    """Whether the aligned frame's side is a sane multiple of the face box's long side (``PLAUSIBLE_FRAME_TO_BOX``)."""
    long_side = max(float(box[2]), float(box[3]))
    if not long_side > 0 or not np.all(np.isfinite(matrix)):
        return False
    low, high = PLAUSIBLE_FRAME_TO_BOX
    return low <= frame_side(matrix, width) / long_side <= high


def face_alignment(
    landmarks: Sequence[Sequence[float]] | None,
    box: Sequence[float],
    width: int,
    height: int,
    template: Sequence[tuple[float, float]] = FER2013_TEMPLATE,
) -> np.ndarray | None:
    """The alignment matrix of one detected face, or None (use the box crop): no landmarks, landmarks that are not
    finite or coincide, or an aligned frame implausibly large or small for the box (``is_plausible``)."""
    if landmarks is None:
        return None
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (len(template), 2) or not np.all(np.isfinite(points)):
        return None
    try:
        matrix = similarity(points, template_points(width, height, template))
    except ValueError:
        return None
    return matrix if is_plausible(matrix, box, width) else None


def cut_region(pixels: np.ndarray, left: int, top: int, right: int, bottom: int) -> np.ndarray:
    """``pixels[top:bottom, left:right]`` of ``[H, W(, C)]`` pixels; outside the image the edge pixels repeat."""
    height, width = pixels.shape[:2]
    rows = np.clip(np.arange(top, bottom), 0, height - 1)
    cols = np.clip(np.arange(left, right), 0, width - 1)
    out: np.ndarray = pixels[rows[:, None], cols[None, :]]
    return out


def warp(
    pixels: np.ndarray,
    matrix: np.ndarray,
    size: tuple[int, int],
    resample: Image.Resampling = Image.Resampling.BILINEAR,
) -> np.ndarray:
    """Warp ``[H, W(, C)]`` uint8 pixels by the 2x3 ``matrix`` (image -> frame) into a ``size = (w, h)`` frame.

    Only the part of the image under the frame is cut (edge pixels repeat outside the image, as in the box crop).
    When the frame shrinks the face, it is first warped at about the image's own resolution with bilinear sampling
    and then resized to ``size`` with ``resample``, so downscaling is filtered like the box crop's resize.
    """
    out_w, out_h = size
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(full)[:2]  # frame -> image
    step = math.hypot(inverse[0, 0], inverse[1, 0])  # image pixels per frame pixel
    factor = max(1, round(step))
    corners = np.array([[0, 0, 1], [out_w, 0, 1], [0, out_h, 1], [out_w, out_h, 1]], dtype=np.float64)
    src = corners @ inverse.T
    left, top = (math.floor(v) - 2 for v in src.min(axis=0))
    right, bottom = (math.ceil(v) + 2 for v in src.max(axis=0))
    patch = Image.fromarray(cut_region(pixels, left, top, right, bottom))
    # The intermediate frame is `factor` times larger: frame pixel (u, v) -> intermediate (u * factor, v * factor).
    a, b, c = inverse[0] / [factor, factor, 1.0]
    d, e, f = inverse[1] / [factor, factor, 1.0]
    data = (a, b, c - left, d, e, f - top)
    big = patch.transform((out_w * factor, out_h * factor), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
    if factor > 1:
        big = big.resize((out_w, out_h), resample)
    return np.asarray(big, dtype=np.uint8)


def aligned_crop(
    pixels: np.ndarray,
    landmarks: Sequence[Sequence[float]],
    size: tuple[int, int],
    resample: Image.Resampling = Image.Resampling.BILINEAR,
    template: Sequence[tuple[float, float]] = FER2013_TEMPLATE,
) -> np.ndarray:
    """The face with these five landmarks, warped so they land on ``template`` in a ``size = (w, h)`` frame."""
    return warp(pixels, alignment_matrix(landmarks, size[0], size[1], template), size, resample)
