"""CenterFace wrapper: decoding, resizing, flip TTA and filters on a fake session; real detections on real photos."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.data import default_data_dir
from serve.core.detection import CenterFaceDetector, DetectorConfig
from serve.core.detection.centerface import decode, input_size, mirror_landmarks

# Landmark fractions (x, y) of the box for the fake face: left eye, right eye, nose, mouth left, mouth right.
MARKS = np.array([[0.25, 0.4], [0.75, 0.35], [0.5, 0.6], [0.3, 0.8], [0.7, 0.8]])


def landmark_map(h: int, w: int, row: int, col: int, marks: np.ndarray) -> np.ndarray:
    out = np.zeros((10, h, w), np.float32)
    out[0::2, row, col] = marks[:, 1]  # y fractions in the even channels
    out[1::2, row, col] = marks[:, 0]  # x fractions in the odd ones
    return out


class FakeSession:
    """Puts one face centre at heatmap cell (row 10, col 20), 16x24 px (w x h) in network-input pixels."""

    def __init__(self) -> None:
        self.inputs: list[np.ndarray] = []

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds["input.1"]
        self.inputs.append(x)
        b, _, h, w = x.shape
        heat = np.zeros((b, 1, h // 4, w // 4), np.float32)
        scale = np.zeros((b, 2, h // 4, w // 4), np.float32)
        marks = np.zeros((b, 10, h // 4, w // 4), np.float32)
        heat[0, 0, 10, 20] = 0.9
        scale[0, 0], scale[0, 1] = np.log(24 / 4), np.log(16 / 4)
        marks[0] = landmark_map(h // 4, w // 4, 10, 20, MARKS)
        if b == 2:  # the mirrored pass sees the face mirrored: x fractions 1 - x, left and right swapped
            heat[1, 0, 10, w // 4 - 1 - 20] = 0.7
            scale[1, 0], scale[1, 1] = np.log(24 / 4), np.log(16 / 4)
            mirrored = MARKS[[1, 0, 2, 4, 3]] * [-1, 1] + [1, 0]
            marks[1] = landmark_map(h // 4, w // 4, 10, w // 4 - 1 - 20, mirrored)
        return [heat, scale, np.zeros((b, 2, h // 4, w // 4), np.float32), marks]


def test_input_size_is_a_multiple_of_32_with_the_long_side_scaled() -> None:
    assert input_size(640, 480, 640) == (640, 480)
    assert input_size(400, 300, 640) == (640, 480)
    assert input_size(1920, 1080, 640) == (640, 352)
    assert input_size(100, 50, 0) == (96, 64)


def test_decode_gives_boxes_and_landmarks_in_input_pixels() -> None:
    heat = np.zeros((8, 8), np.float32)
    heat[2, 3] = 0.8
    scale = np.stack([np.full((8, 8), np.log(8.0)), np.full((8, 8), np.log(4.0))])
    boxes, scores, points = decode(heat, scale, np.zeros((2, 8, 8)), landmark_map(8, 8, 2, 3, MARKS), 0.5)
    np.testing.assert_allclose(boxes, [[14 - 8, 10 - 16, 16, 32]])
    np.testing.assert_allclose(scores, [0.8], rtol=1e-6)
    assert points.shape == (1, 5, 2)
    np.testing.assert_allclose(points[0], MARKS * [16, 32] + [6, -6], rtol=1e-6)


def test_decode_without_faces_is_empty_but_well_shaped() -> None:
    empty = np.zeros((4, 4))
    boxes, scores, points = decode(empty, np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), np.zeros((10, 4, 4)), 0.5)
    assert boxes.shape == (0, 4) and scores.shape == (0,) and points.shape == (0, 5, 2)


def test_mirror_landmarks_undoes_a_mirrored_pass() -> None:
    mirrored = MARKS[[1, 0, 2, 4, 3]] * [-1, 1] + [1, 0]
    back = mirror_landmarks(landmark_map(4, 8, 1, 8 - 1 - 2, mirrored))
    np.testing.assert_allclose(back[:, 1, 2], landmark_map(4, 8, 1, 2, MARKS)[:, 1, 2], atol=1e-6)


def test_boxes_come_back_in_original_coordinates() -> None:
    session = FakeSession()
    det = CenterFaceDetector(DetectorConfig(input_long_side=640, min_face_px=0), session=session)
    faces = det.detect(np.zeros((240, 320, 3), np.uint8))  # upscaled 2x to 640x480
    assert session.inputs[0].shape == (1, 3, 480, 640)
    (face,) = faces
    np.testing.assert_allclose(face.box, [(82 - 8) / 2, (42 - 12) / 2, 8, 12])
    assert face.score == pytest.approx(0.9)
    assert face.landmarks is not None and len(face.landmarks) == 5
    np.testing.assert_allclose(face.landmarks, (MARKS * [16, 24] + [82 - 8, 42 - 12]) / 2, rtol=1e-6)


def test_flip_tta_averages_the_mirrored_heatmap() -> None:
    session = FakeSession()
    det = CenterFaceDetector(DetectorConfig(flip_tta=True, min_face_px=0), session=session)
    (face,) = det.detect(np.zeros((480, 640, 3), np.uint8))
    assert session.inputs[0].shape[0] == 2
    np.testing.assert_array_equal(session.inputs[0][1], session.inputs[0][0][..., ::-1])
    assert face.score == pytest.approx(0.8)
    np.testing.assert_allclose(face.box, [82 - 8, 42 - 12, 16, 24])
    np.testing.assert_allclose(face.landmarks, MARKS * [16, 24] + [82 - 8, 42 - 12], rtol=1e-5)  # both passes agree


def test_rejects_non_rgb_input() -> None:
    det = CenterFaceDetector(session=FakeSession())
    with pytest.raises(ValueError, match="RGB uint8"):
        det.detect(np.zeros((10, 10), np.uint8))


def _boxes_parquet() -> Path:
    path = default_data_dir() / "faces" / "boxes.parquet"
    if not path.is_file():
        pytest.skip(f"faces/boxes.parquet not found under {default_data_dir()} (set EMOTION_DATA_DIR)")
    return path


@pytest.mark.data
@pytest.mark.timeout(120)
def test_real_detector_finds_the_faces_of_real_photos() -> None:
    from tools.detector_benchmark import load_samples, score

    samples = load_samples(_boxes_parquet(), limit_per_subset=4)
    result: Any = score(CenterFaceDetector(DetectorConfig(min_face_px=0)), samples).summary()
    assert result["widerface_val"]["recall"] >= 0.75
    assert result["facemask"]["recall"] >= 0.75
    assert all(r["fp_per_image"] <= 1.0 for r in result.values())


@pytest.mark.data
@pytest.mark.timeout(120)
def test_real_landmarks_sit_inside_the_face_in_anatomical_order() -> None:
    from tools.detector_benchmark import load_samples

    detector = CenterFaceDetector(DetectorConfig(min_face_px=0))
    for sample in load_samples(_boxes_parquet(), limit_per_subset=3)[3:]:  # the one-face WIDER / UFDD photos
        for face in detector.detect(sample.rgb)[:1]:
            x, y, w, h = face.box
            (lx, ly), (rx, ry), (_, ny), (mlx, mly), (mrx, mry) = face.landmarks or ()
            assert x - 0.1 * w <= min(lx, mlx) and max(rx, mrx) <= x + 1.1 * w
            assert lx < rx and mlx < mrx and max(ly, ry) < ny < min(mly, mry) <= y + 1.1 * h
