"""serve.core.detection.boxes: NMS, IoU and greedy matching on xywh boxes."""

from __future__ import annotations

import numpy as np
import pytest

from serve.core.detection.boxes import clip_boxes, greedy_match, iou_matrix, nms


def test_nms_and_matching() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 10, 10]], float)
    assert nms(boxes, np.array([0.5, 0.9, 0.7]), 0.3).tolist() == [1, 2]
    iou = iou_matrix(boxes, np.array([[50, 50, 10, 10], [0, 0, 10, 10]], float))
    assert iou[0, 1] == pytest.approx(1.0)
    assert sorted(greedy_match(iou, 0.5)) == [(0, 1), (2, 0)]


def test_disjoint_boxes_have_zero_iou_and_no_match() -> None:
    iou = iou_matrix(np.array([[0, 0, 10, 10]], float), np.array([[20, 20, 5, 5]], float))
    assert iou.tolist() == [[0.0]]
    assert greedy_match(iou, 0.1) == []


def test_clip_boxes_keeps_boxes_inside_the_frame() -> None:
    clipped = clip_boxes(np.array([[-5, -5, 20, 20], [90, 40, 30, 30]], float), width=100, height=60)
    x, y, w, h = clipped.T
    assert (x >= 0).all() and (y >= 0).all() and (x + w <= 100).all() and (y + h <= 60).all()
