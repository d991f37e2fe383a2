"""CenterFace wrapper: decoding, resizing, flip TTA and filters on a fake session; real detections on real photos."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.data import default_data_dir
from serve.core.detection import CenterFaceDetector, DetectorConfig
from serve.core.detection.centerface import decode, input_size


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
        heat[0, 0, 10, 20] = 0.9
        scale[0, 0], scale[0, 1] = np.log(24 / 4), np.log(16 / 4)
        if b == 2:  # the mirrored pass sees the face mirrored
            heat[1, 0, 10, w // 4 - 1 - 20] = 0.7
            scale[1, 0], scale[1, 1] = np.log(24 / 4), np.log(16 / 4)
        return [heat, scale, np.zeros((b, 2, h // 4, w // 4), np.float32), np.zeros((b, 10, h // 4, w // 4))]


def test_input_size_is_a_multiple_of_32_with_the_long_side_scaled() -> None:
    assert input_size(640, 480, 640) == (640, 480)
    assert input_size(400, 300, 640) == (640, 480)
    assert input_size(1920, 1080, 640) == (640, 352)
    assert input_size(100, 50, 0) == (96, 64)


def test_decode_gives_boxes_in_input_pixels() -> None:
    heat = np.zeros((8, 8), np.float32)
    heat[2, 3] = 0.8
    scale = np.stack([np.full((8, 8), np.log(8.0)), np.full((8, 8), np.log(4.0))])
    boxes, scores = decode(heat, scale, np.zeros((2, 8, 8)), 0.5)
    np.testing.assert_allclose(boxes, [[14 - 8, 10 - 16, 16, 32]])
    np.testing.assert_allclose(scores, [0.8], rtol=1e-6)


def test_boxes_come_back_in_original_coordinates() -> None:
    session = FakeSession()
    det = CenterFaceDetector(DetectorConfig(input_long_side=640, min_face_px=0), session=session)
    faces = det.detect(np.zeros((240, 320, 3), np.uint8))  # upscaled 2x to 640x480
    assert session.inputs[0].shape == (1, 3, 480, 640)
    (face,) = faces
    np.testing.assert_allclose(face.box, [(82 - 8) / 2, (42 - 12) / 2, 8, 12])
    assert face.score == pytest.approx(0.9)


def test_flip_tta_averages_the_mirrored_heatmap() -> None:
    session = FakeSession()
    det = CenterFaceDetector(DetectorConfig(flip_tta=True, min_face_px=0), session=session)
    (face,) = det.detect(np.zeros((480, 640, 3), np.uint8))
    assert session.inputs[0].shape[0] == 2
    np.testing.assert_array_equal(session.inputs[0][1], session.inputs[0][0][..., ::-1])
    assert face.score == pytest.approx(0.8)
    np.testing.assert_allclose(face.box, [82 - 8, 42 - 12, 16, 24])


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
