"""Face tracks across video frames: stable ids by box overlap, and each track's emotion smoothed over a window.

Pure numpy: the WebSocket route keeps one ``FaceTracker`` per connection, the video command one per file.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve.core.detection.boxes import greedy_match, iou_matrix


@dataclass
class Track:
    """One face followed over frames."""

    track_id: int
    box: tuple[float, float, float, float]
    last_frame: int
    history: deque[np.ndarray] = field(default_factory=deque)

    def smoothed(self) -> np.ndarray:
        """Mean of the class probabilities in the window (sums to 1)."""
        out: np.ndarray = np.mean(np.stack(list(self.history)), axis=0)
        return out


@dataclass(frozen=True)
class Assignment:
    """What the tracker says about one detection of the current frame."""

    track_id: int
    smoothed: np.ndarray | None  # None when the detection carried no probabilities


class FaceTracker:
    """Greedy IoU tracker.

    Args:
        iou_threshold: a detection continues a track when their boxes overlap at least this much.
        max_age: a track not seen for more than this many frames is dropped (its id is never reused).
        window: number of recent frames whose probabilities are averaged per track.
    """

    def __init__(self, iou_threshold: float = 0.3, max_age: int = 5, window: int = 5) -> None:
        if not 0.0 < iou_threshold <= 1.0 or max_age < 0 or window < 1:
            raise ValueError(f"bad tracker settings: iou_threshold={iou_threshold}, max_age={max_age}, window={window}")
        self.iou_threshold, self.max_age, self.window = iou_threshold, max_age, window
        self.tracks: list[Track] = []
        self._next_id = 1
        self._frame = -1

    def update(
        self, boxes: Sequence[Sequence[float]], probabilities: Sequence[np.ndarray | None] | None = None
    ) -> list[Assignment]:
        """Advance one frame: one Assignment per box, in the order given. A None row (an unreadable face) moves its
        track but adds nothing to its window: a blurred frame must not pull the smoothed emotion anywhere."""
        self._frame += 1
        self.tracks = [t for t in self.tracks if self._frame - t.last_frame <= self.max_age + 1]
        det = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        old = np.asarray([t.box for t in self.tracks], dtype=np.float64).reshape(-1, 4)
        matched = dict(greedy_match(iou_matrix(det, old), self.iou_threshold))
        out = []
        for i, box in enumerate(det):
            if i in matched:
                track = self.tracks[matched[i]]
            else:
                track = Track(self._next_id, (0.0, 0.0, 0.0, 0.0), self._frame, deque(maxlen=self.window))
                self._next_id += 1
                self.tracks.append(track)
            track.box = (float(box[0]), float(box[1]), float(box[2]), float(box[3]))
            track.last_frame = self._frame
            if probabilities is not None and probabilities[i] is not None:
                track.history.append(np.asarray(probabilities[i], dtype=np.float64))
            out.append(Assignment(track.track_id, track.smoothed() if track.history else None))
        return out


def track_faces(tracker: FaceTracker, faces: list[dict[str, Any]], labels: Sequence[str]) -> None:
    """Add ``track_id`` and ``smoothed_label`` to JSON face records (``box``, ``probabilities``, ``readable``) of one
    frame. ``labels``: the keys of ``probabilities`` (the contract's answer labels), in the order to smooth them.

    ``smoothed_label`` is the argmax of the mean probabilities over the track's recent readable frames, so any
    number of labels (``other`` included) works; it is None while the track has no readable frame yet.
    """
    probs = [
        None if f.get("readable") is False else np.fromiter((f["probabilities"][k] for k in labels), np.float64)
        for f in faces
    ]
    for face, assignment in zip(faces, tracker.update([f["box"] for f in faces], probs), strict=True):
        face["track_id"] = assignment.track_id
        smoothed = assignment.smoothed
        face["smoothed_label"] = None if smoothed is None else labels[int(np.argmax(smoothed))]
