"""serve.core.detection.base: detector settings and the face filters every detector shares."""

from __future__ import annotations

import pytest

from serve.core.detection import DetectorConfig, Face, select_faces


def test_config_fails_fast_naming_the_value() -> None:
    with pytest.raises(ValueError, match=r"threshold=1\.5"):
        DetectorConfig(threshold=1.5)
    with pytest.raises(ValueError, match="max_faces=0"):
        DetectorConfig(max_faces=0)


def test_select_faces_applies_min_size_and_max_count() -> None:
    faces = [Face((0, 0, 5, 50), 0.99), Face((0, 0, 20, 20), 0.5), Face((0, 0, 30, 30), 0.9), Face((0, 0, 9, 9), 0.8)]
    kept = select_faces(faces, min_face_px=8, max_faces=2)
    assert [f.score for f in kept] == [0.9, 0.8]


def test_select_faces_keeps_everything_without_limits() -> None:
    faces = [Face((0, 0, 5, 5), 0.2), Face((0, 0, 30, 30), 0.9)]
    assert [f.score for f in select_faces(faces, min_face_px=0, max_faces=10)] == [0.9, 0.2]


def test_faces_carry_optional_landmarks_in_a_fixed_order() -> None:
    from serve.core.detection.base import LANDMARK_NAMES

    assert Face((0, 0, 1, 1), 0.5).landmarks is None
    points = ((1.0, 2.0), (3.0, 2.0), (2.0, 3.0), (1.5, 4.0), (2.5, 4.0))
    assert Face((0, 0, 5, 5), 0.5, points).landmarks == points
    assert LANDMARK_NAMES == ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
