"""IoU tracker: stable ids while boxes overlap, new ids for new faces, expiry, smoothing window."""

from __future__ import annotations

import numpy as np
import pytest

from serve.core.tracking import FaceTracker, track_faces


def test_ids_stay_stable_while_faces_move_a_little() -> None:
    tracker = FaceTracker()
    first = tracker.update([(0, 0, 50, 50), (200, 0, 50, 50)])
    second = tracker.update([(205, 2, 50, 50), (4, 3, 50, 50)])  # order swapped, both moved
    assert [a.track_id for a in first] == [1, 2]
    assert [a.track_id for a in second] == [2, 1]


def test_new_face_gets_a_new_id_and_old_ids_are_not_reused() -> None:
    tracker = FaceTracker(max_age=1)
    tracker.update([(0, 0, 50, 50)])
    tracker.update([])
    tracker.update([])  # missed for two frames > max_age: dropped
    (again,) = tracker.update([(0, 0, 50, 50)])
    assert again.track_id == 2


def test_track_survives_short_gaps() -> None:
    tracker = FaceTracker(max_age=2)
    tracker.update([(0, 0, 50, 50)])
    tracker.update([])
    tracker.update([])
    assert tracker.update([(2, 2, 50, 50)])[0].track_id == 1


def test_probabilities_are_smoothed_over_the_window() -> None:
    tracker = FaceTracker(window=2)
    tracker.update([(0, 0, 50, 50)], [np.array([1.0, 0.0])])
    tracker.update([(0, 0, 50, 50)], [np.array([0.0, 1.0])])
    (third,) = tracker.update([(0, 0, 50, 50)], [np.array([0.0, 1.0])])
    assert third.smoothed is not None
    np.testing.assert_allclose(third.smoothed, [0.0, 1.0])
    assert tracker.update([(0, 0, 50, 50)])[0].smoothed is not None


def test_track_faces_smooths_any_number_of_labels() -> None:
    labels = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

    def face(top: str) -> dict[str, object]:
        probs = {label: (0.7 if label == top else 0.05) for label in labels}
        return {"box": [0.0, 0.0, 50.0, 50.0], "label": top, "probabilities": probs}

    tracker = FaceTracker(window=3)
    frames = [[face("neutral")], [face("surprise")], [face("neutral")]]
    for faces in frames:
        track_faces(tracker, faces, labels)
    assert [f[0]["track_id"] for f in frames] == [1, 1, 1]
    assert [f[0]["smoothed_label"] for f in frames] == ["neutral", "surprise", "neutral"]  # ties: first maximum
    np.testing.assert_allclose(tracker.tracks[0].smoothed().sum(), 1.0)
    assert tracker.tracks[0].smoothed().shape == (7,)


def test_bad_settings_fail_fast() -> None:
    with pytest.raises(ValueError, match="window=0"):
        FaceTracker(window=0)


def test_unreadable_faces_keep_their_track_but_never_move_the_smoothed_label() -> None:
    labels = ("angry", "happy", "sad", "other")

    def face(top: str, readable: bool = True) -> dict[str, object]:
        probs = {label: (0.7 if label == top else 0.1) for label in labels}
        return {"box": [0.0, 0.0, 50.0, 50.0], "label": top if readable else None, "probabilities": probs,
                "readable": readable}  # fmt: skip

    tracker = FaceTracker(window=3)
    frames = [[face("sad", readable=False)], [face("happy")], [face("sad", readable=False)], [face("other")]]
    for faces in frames:
        track_faces(tracker, faces, labels)
    assert [f[0]["track_id"] for f in frames] == [1, 1, 1, 1]
    # No readable frame yet: no smoothed label; then only the readable frames count (happy, then happy + other).
    assert [f[0]["smoothed_label"] for f in frames] == [None, "happy", "happy", "happy"]
    assert len(tracker.tracks[0].history) == 2
