"""FrameAnalyzer with a fake detector: decode, crop per the bundled model's contract, and the JSON face records."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from models.contract import DEFAULT_MODEL_DIR, AnswerSpec, load_contract
from serve.core.detection import Face
from serve.core.frames import (
    FrameAnalyzer,
    FrameFaces,
    detector_config,
    face_records,
    quality_rule,
    with_probabilities,
)
from serve.errors import EmptyBody, ImageTooLarge, InvalidImage
from serve.runtime.settings import load_settings
from tests.conftest import encode

CONTRACT = load_contract(DEFAULT_MODEL_DIR, require_onnx=False)
BOXES = [(20.0, 10.0, 40.0, 40.0), (130.0, 50.0, 30.5, 30.0)]


class FakeDetector:
    name = "fake"

    def __init__(self, faces: list[Face]) -> None:
        self.faces, self.seen = faces, []

    def detect(self, rgb: np.ndarray) -> list[Face]:
        self.seen.append(rgb)
        return self.faces


def frame_png() -> bytes:
    """200x120: left half black, right half white, so a crop shows where it was cut."""
    pixels = np.zeros((120, 200, 3), np.uint8)
    pixels[:, 100:] = 255
    return encode(Image.fromarray(pixels))


def analyzer(faces: list[Face], max_pixels: int = 1_000_000) -> tuple[FrameAnalyzer, FakeDetector]:
    detector = FakeDetector(faces)
    return FrameAnalyzer(CONTRACT, detector, max_pixels), detector


def test_prepare_crops_every_box_to_the_contract() -> None:
    frames, detector = analyzer([Face(BOXES[0], 0.9), Face(BOXES[1], 0.7)])
    faces, crops = frames.prepare(frame_png())
    (rgb,) = detector.seen
    assert rgb.shape == (120, 200, 3) and rgb.dtype == np.uint8
    assert (faces.width, faces.height) == (200, 120)
    assert faces.boxes.dtype == np.float32 and faces.boxes.tolist() == [list(b) for b in BOXES]
    np.testing.assert_allclose(faces.scores, [0.9, 0.7])
    assert faces.scores.dtype == np.float32
    spec = CONTRACT.input
    assert CONTRACT.preprocessing.color_mode == "L"  # the bundled model: grey crops [n, H, W]
    assert crops.shape == (2, spec.height, spec.width) and crops.dtype == np.uint8
    assert crops[0].mean() < 10 and crops[1].mean() > 245  # cut from the black and the white half
    assert faces.probabilities.size == 0 and faces.detect_ms >= 0.0


def test_no_faces_gives_empty_but_well_shaped_arrays() -> None:
    faces, crops = analyzer([])[0].prepare(frame_png())
    assert faces.boxes.shape == (0, 4) and faces.scores.shape == (0,)
    assert crops.shape == (0, CONTRACT.input.height, CONTRACT.input.width) and crops.dtype == np.uint8


def test_bad_frames_raise_service_errors() -> None:
    frames = analyzer([Face(BOXES[0], 0.9)], max_pixels=10_000)[0]
    with pytest.raises(EmptyBody):
        frames.prepare(b"")
    with pytest.raises(InvalidImage):
        frames.prepare(b"not an image at all")
    with pytest.raises(ImageTooLarge):
        frames.prepare(frame_png())  # 24,000 pixels


def test_with_probabilities_needs_one_row_per_face() -> None:
    faces = analyzer([Face(BOXES[0], 0.9), Face(BOXES[1], 0.7)])[0].prepare(frame_png())[0]
    with pytest.raises(ValueError, match="1 probability rows for 2 faces"):
        with_probabilities(faces, np.ones((1, CONTRACT.num_classes)))
    done = with_probabilities(faces, np.full((2, CONTRACT.num_classes), 0.5, np.float64))
    assert done.probabilities.dtype == np.float32 and done.probabilities.shape == (2, CONTRACT.num_classes)
    assert faces.probabilities.size == 0  # the original is unchanged


def test_face_records_json_shape_and_label_is_the_argmax() -> None:
    labels = CONTRACT.labels
    n = len(labels)
    probs = np.full((2, n), 0.1 / n, np.float32)
    probs[0, n - 1], probs[1, 0] = 0.7, 0.3
    boxes = np.array([[1.04, 2.06, 30.0, 31.0], [5.0, 6.0, 7.0, 8.0]], np.float32)
    frame = FrameFaces(64, 48, boxes, np.array([0.987654, 0.5], np.float32), probs)
    records = face_records(frame, CONTRACT)
    assert [set(r) for r in records] == [
        {"box", "score", "label", "probabilities", "readable", "unreadable_reason"}
    ] * 2  # no model_probabilities: the bundled config.json groups no labels
    assert records[0]["box"] == [1.0, 2.1, 30.0, 31.0]
    assert records[0]["score"] == 0.9877
    assert [r["label"] for r in records] == [labels[n - 1], labels[0]]
    assert list(records[0]["probabilities"]) == list(labels)
    assert records[1]["probabilities"][labels[0]] == pytest.approx(0.3)


def test_face_records_of_unreadable_faces_keep_probabilities_but_no_label() -> None:
    n = CONTRACT.num_classes
    probs = np.full((2, n), 1.0 / n, np.float32)
    probs[:, 0] += 0.5
    boxes = np.array([[0, 0, 30, 30], [40, 0, 8, 8]], np.float32)
    frame = FrameFaces(64, 48, boxes, np.array([0.9, 0.9], np.float32), probs, unreadable=(None, "too_small"))
    readable, small = face_records(frame, CONTRACT)
    assert (readable["label"], readable["readable"], readable["unreadable_reason"]) == (CONTRACT.labels[0], True, None)
    assert (small["label"], small["readable"], small["unreadable_reason"]) == (None, False, "too_small")
    assert small["probabilities"] == readable["probabilities"]  # what the model said, not an answer


def test_face_records_answer_in_the_contract_groups() -> None:
    labels = ("angry", "disgust", "happy", "sad", "neutral")
    grouped = replace(CONTRACT, labels=labels, answer=AnswerSpec((("angry", ("angry", "disgust")), ("sad", ("sad",)))))
    probs = np.array([[0.1, 0.2, 0.3, 0.15, 0.25]], np.float32)
    frame = FrameFaces(64, 48, np.array([[0, 0, 30, 30]], np.float32), np.array([0.9], np.float32), probs)
    (record,) = face_records(frame, grouped)
    assert list(record["probabilities"]) == ["angry", "sad", "other"]
    assert record["probabilities"] == pytest.approx({"angry": 0.3, "sad": 0.15, "other": 0.55})
    assert record["label"] == "other"  # happy + neutral outweigh each group
    assert list(record["model_probabilities"]) == list(labels)
    assert record["model_probabilities"]["happy"] == pytest.approx(0.3)


def test_prepare_judges_every_face_with_the_quality_rule() -> None:
    from serve.core.quality import QualityRule

    pixels = np.random.default_rng(1).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    pixels[:, 150:] = 128  # a flat region: no detail for the model
    faces = [Face((10.0, 10.0, 40.0, 40.0), 0.9), Face((60.0, 60.0, 10.0, 10.0), 0.9),
             Face((155.0, 10.0, 40.0, 40.0), 0.9), Face((10.0, 60.0, 40.0, 40.0), 0.5)]  # fmt: skip
    data = encode(Image.fromarray(pixels))
    frames = FrameAnalyzer(CONTRACT, FakeDetector(faces), 1_000_000, quality=QualityRule())
    prepared, _ = frames.prepare(data)
    assert prepared.reasons() == (None, "too_small", "blurred", "weak_detection")
    off = FrameAnalyzer(CONTRACT, FakeDetector(faces), 1_000_000, quality=QualityRule(0, 0, 0)).prepare(data)[0]
    assert off.reasons() == (None,) * 4
    assert with_probabilities(prepared, np.zeros((4, CONTRACT.num_classes))).unreadable == prepared.unreadable


def test_quality_rule_follows_the_settings() -> None:
    settings = load_settings(unreadable_min_face_px=20, unreadable_min_sharpness=0, unreadable_min_score=0.6)
    rule = quality_rule(settings)
    assert (rule.min_face_px, rule.min_sharpness, rule.min_score) == (20, 0, 0.6)
    default = quality_rule(load_settings())
    from serve.core.quality import QualityRule

    assert default == QualityRule()  # one home: the settings' defaults are the rule's


def test_detector_config_follows_the_settings() -> None:
    settings = load_settings(detector_threshold=0.6, detector_input_size=320, min_face_px=12, max_faces=5)
    config = detector_config(settings)
    assert (config.threshold, config.input_long_side, config.min_face_px, config.max_faces) == (0.6, 320, 12, 5)


def test_faces_with_landmarks_are_aligned_unless_told_not_to() -> None:
    from serve.core.detection.align import template_points

    box = (20.0, 10.0, 60.0, 60.0)
    points = template_points(48, 48) * 1.25 + [20.0, 12.0]  # a frontal face of ~60 px
    a, b, c, d, e = ((float(x), float(y)) for x, y in points)
    face = Face(box, 0.9, (a, b, c, d, e))
    pixels = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels))
    aligned = FrameAnalyzer(CONTRACT, FakeDetector([face]), 1_000_000).prepare(data)[1]
    boxed = FrameAnalyzer(CONTRACT, FakeDetector([face]), 1_000_000, align=False).prepare(data)[1]
    plain = FrameAnalyzer(CONTRACT, FakeDetector([Face(box, 0.9)]), 1_000_000).prepare(data)[1]
    assert aligned.shape == boxed.shape == (1, CONTRACT.input.height, CONTRACT.input.width)
    assert not np.array_equal(aligned, boxed)
    np.testing.assert_array_equal(boxed, plain)  # no landmarks: the box crop, as before
