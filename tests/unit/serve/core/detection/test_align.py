"""serve.core.detection.align: the similarity fit, the plausibility guard and the warp that cuts aligned crops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from serve.core.detection.align import (
    FER2013_TEMPLATE,
    aligned_crop,
    alignment_matrix,
    cut_region,
    eye_angle,
    face_alignment,
    frame_side,
    is_plausible,
    similarity,
    template_points,
    warp,
)

TEMPLATE_48 = template_points(48, 48)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points @ matrix[:, :2].T + matrix[:, 2])


def _rotation(deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * math.cos(math.radians(deg)), scale * math.sin(math.radians(deg))
    return np.array([[c, -s, tx], [s, c, ty]])


def test_the_template_is_mirror_symmetric_and_inside_the_frame() -> None:
    t = np.asarray(FER2013_TEMPLATE)
    assert t.shape == (5, 2) and np.all((t > 0) & (t < 1))
    np.testing.assert_allclose(t[[1, 0, 2, 4, 3], 0], 1 - t[:, 0], atol=1e-4)
    np.testing.assert_allclose(t[[1, 0, 2, 4, 3], 1], t[:, 1])
    assert t[0, 1] < t[2, 1] < t[3, 1]  # eyes above the nose above the mouth


def test_similarity_recovers_a_known_transform_exactly() -> None:
    truth = _rotation(25.0, 1.7, 12.0, -4.0)
    src = np.array([[10.0, 20.0], [40.0, 22.0], [25.0, 35.0], [14.0, 50.0], [38.0, 49.0]])
    np.testing.assert_allclose(similarity(src, _apply(truth, src)), truth, atol=1e-9)


def test_similarity_is_least_squares_and_never_reflects() -> None:
    src = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    mirrored = src * [-1.0, 1.0]
    m = similarity(src, mirrored)
    assert np.linalg.det(m[:, :2]) >= 0  # a rotation and a scale, no flip
    noisy = _apply(_rotation(10, 2.0, 3, 4), src) + np.array([[0.1, 0.0], [-0.1, 0.0], [0.0, 0.1]])
    fit = similarity(src, noisy)
    assert np.abs(_apply(fit, src) - noisy).max() < 0.2


@pytest.mark.parametrize(
    ("src", "dst"),
    [(np.zeros((5, 2)), TEMPLATE_48), (np.ones((1, 2)), np.ones((1, 2))), (np.ones((5, 2)), np.ones((4, 2)))],
)
def test_similarity_refuses_degenerate_input(src: np.ndarray, dst: np.ndarray) -> None:
    with pytest.raises(ValueError):
        similarity(src, dst)


def test_landmarks_on_the_template_need_no_change() -> None:
    m = alignment_matrix(TEMPLATE_48.tolist(), 48, 48)
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    assert frame_side(m, 48) == pytest.approx(48.0)


def test_a_tilted_face_is_levelled_and_scaled_onto_the_template() -> None:
    truth = _rotation(-30.0, 0.25, 5.0, 7.0)  # face 4x larger in the image, tilted by 30 degrees
    landmarks = _apply(np.linalg.inv(np.vstack([truth, [0, 0, 1]]))[:2], TEMPLATE_48)
    assert eye_angle(landmarks.tolist()) == pytest.approx(30.0)
    m = alignment_matrix(landmarks.tolist(), 48, 48)
    np.testing.assert_allclose(m, truth, atol=1e-9)
    np.testing.assert_allclose(_apply(m, landmarks), TEMPLATE_48, atol=1e-9)
    assert frame_side(m, 48) == pytest.approx(192.0)


def test_eye_angle_is_positive_when_the_right_eye_is_lower() -> None:
    assert eye_angle([(0.0, 0.0), (10.0, 10.0)]) == pytest.approx(45.0)
    assert eye_angle([(0.0, 0.0), (10.0, 0.0)]) == 0.0


def test_plausible_frames_are_a_sane_multiple_of_the_box() -> None:
    m = alignment_matrix((TEMPLATE_48 * 2).tolist(), 48, 48)  # frame side 96 image pixels
    assert is_plausible(m, (0, 0, 90, 100), 48)
    assert not is_plausible(m, (0, 0, 20, 30), 48)  # landmarks spread far beyond a small box
    assert not is_plausible(m, (0, 0, 400, 400), 48)  # landmarks bunched in a corner of a big box
    assert not is_plausible(m, (0, 0, 0, 0), 48)


def test_face_alignment_falls_back_on_missing_or_broken_landmarks() -> None:
    box = (0.0, 0.0, 45.0, 48.0)
    good = TEMPLATE_48.tolist()
    assert face_alignment(good, box, 48, 48) is not None
    assert face_alignment(None, box, 48, 48) is None
    assert face_alignment([[float("nan"), 0.0]] * 5, box, 48, 48) is None
    assert face_alignment([[3.0, 3.0]] * 5, box, 48, 48) is None  # coincident points
    assert face_alignment(good[:3], box, 48, 48) is None  # not five points
    assert face_alignment(good, (0.0, 0.0, 5.0, 5.0), 48, 48) is None  # implausible for the box


def test_cut_region_repeats_edges_like_the_box_crop() -> None:
    pixels = np.arange(16, dtype=np.uint8).reshape(4, 4)
    np.testing.assert_array_equal(cut_region(pixels, -1, -1, 2, 2), [[0, 0, 1], [0, 0, 1], [4, 4, 5]])


def test_warp_by_a_whole_pixel_shift_copies_the_pixels() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (40, 50), dtype=np.uint8)
    out = warp(pixels, np.array([[1.0, 0.0, -7.0], [0.0, 1.0, -3.0]]), (20, 10))
    np.testing.assert_array_equal(out, pixels[3:13, 7:27])


def test_warp_outside_the_image_repeats_the_edge_instead_of_black() -> None:
    pixels = np.full((10, 10), 200, np.uint8)
    out = warp(pixels, np.array([[1.0, 0.0, 20.0], [0.0, 1.0, 20.0]]), (48, 48))  # image sits inside the frame
    assert out.min() == 200


def test_warp_downscales_like_crop_and_resize() -> None:
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (24, 24), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(small).resize((240, 240), Image.Resampling.BICUBIC))  # smooth detail
    m = np.array([[0.2, 0.0, -4.0], [0.0, 0.2, -6.0]])  # frame = image[30:270, 20:260] at 1/5 scale
    out = warp(pixels, m, (48, 48))
    region = Image.fromarray(cut_region(pixels, 20, 30, 260, 270))
    reference = np.asarray(region.resize((48, 48), Image.Resampling.BILINEAR))
    assert out.shape == (48, 48) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - reference).max() <= 1  # the intermediate is an exact copy here


def test_aligned_crop_puts_the_eyes_where_the_template_has_them() -> None:
    """A synthetic tilted face: two bright eye dots; after alignment they sit on the template's eye positions."""
    truth = _rotation(20.0, 0.3, 2.0, -3.0)
    inverse = np.linalg.inv(np.vstack([truth, [0, 0, 1]]))[:2]
    landmarks = _apply(inverse, TEMPLATE_48)
    img = np.zeros((200, 200, 3), np.uint8)
    yy, xx = np.mgrid[0:200, 0:200]
    for x, y in landmarks[:2]:
        img[(xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2 <= 16] = 255
    out = aligned_crop(img, landmarks.tolist(), (48, 48))
    assert out.shape == (48, 48, 3)
    grey = out[..., 0].astype(float)
    for (tx, ty), half in zip(TEMPLATE_48[:2], (slice(0, 24), slice(24, 48)), strict=True):
        part = np.zeros_like(grey)
        part[:, half] = grey[:, half]
        ys, xs = np.nonzero(part > 100)
        w = part[ys, xs]
        assert abs((xs + 0.5) @ w / w.sum() - tx) < 0.6 and abs((ys + 0.5) @ w / w.sum() - ty) < 0.6
