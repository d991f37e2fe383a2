"""IoU tracker: stable ids while boxes overlap, new ids for new faces, expiry, smoothing window."""

from __future__ import annotations

import numpy as np
import pytest

from serve.core.tracking import FaceTracker


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


def test_bad_settings_fail_fast() -> None:
    with pytest.raises(ValueError, match="window=0"):
        FaceTracker(window=0)
