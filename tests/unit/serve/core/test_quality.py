"""serve.core.quality: the measures (size, sharpness, detection score) and the unreadable rule's reasons and order."""

from __future__ import annotations

import numpy as np
import pytest

from serve.core.quality import (
    BLURRED,
    REASONS,
    TOO_SMALL,
    WEAK_DETECTION,
    FaceQuality,
    QualityRule,
    measure,
    measure_upload,
    sharpness,
    unreadable_reason,
)


def test_sharpness_is_zero_for_a_flat_crop_and_grows_with_detail() -> None:
    assert sharpness(np.full((48, 48), 90, np.uint8)) == 0.0
    checker = (np.indices((48, 48)).sum(axis=0) % 2 * 255).astype(np.uint8)
    ramp = np.tile(np.arange(48, dtype=np.uint8) * 5, (48, 1))
    assert sharpness(ramp) == pytest.approx(0.0)  # a linear ramp has no second derivative
    assert sharpness(checker) > 1e4
    rgb = np.repeat(checker[:, :, None], 3, axis=2)
    assert sharpness(rgb) == pytest.approx(sharpness(checker))
    with pytest.raises(ValueError, match="at least 3x3"):
        sharpness(np.zeros((2, 10), np.uint8))


def test_blurring_lowers_sharpness() -> None:
    from PIL import Image, ImageFilter

    pixels = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    blurred = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(2)))
    assert sharpness(blurred) < sharpness(pixels) / 10


def test_measure_reads_box_crop_and_score() -> None:
    q = measure((0, 0, 30, 40), np.zeros((48, 48), np.uint8), 0.7)
    assert q == FaceQuality(face_px=30.0, sharpness=0.0, score=pytest.approx(0.7))


@pytest.mark.parametrize(
    ("quality", "reason"),
    [
        (FaceQuality(10.0, 500.0, 0.9), TOO_SMALL),
        (FaceQuality(10.0, 1.0, 0.5), TOO_SMALL),  # the first failing rule names the reason
        (FaceQuality(100.0, 1.0, 0.5), BLURRED),
        (FaceQuality(100.0, 500.0, 0.5), WEAK_DETECTION),
        (FaceQuality(100.0, 500.0, 0.9), None),
        (FaceQuality(20.0, 50.0, 0.6), None),  # exactly on the thresholds passes
    ],
)
def test_unreadable_reason(quality: FaceQuality, reason: str | None) -> None:
    rule = QualityRule(min_face_px=20, min_sharpness=50, min_score=0.6)
    assert unreadable_reason(quality, rule) == reason
    assert reason is None or reason in REASONS


def test_the_default_rule() -> None:
    assert QualityRule() == QualityRule(min_face_px=16.0, min_sharpness=80.0, min_score=0.55)
    assert unreadable_reason(FaceQuality(200.0, 1e3, 0.9)) is None
    assert unreadable_reason(FaceQuality(12.0, 1e3, 0.9)) == TOO_SMALL


def test_rule_fails_fast_on_nonsense() -> None:
    with pytest.raises(ValueError):
        QualityRule(min_score=1.0)
    with pytest.raises(ValueError):
        QualityRule(min_face_px=-1)


def test_an_uploaded_crop_is_judged_by_its_own_size_and_never_by_a_score() -> None:
    sharp = (np.indices((48, 48)).sum(axis=0) % 2 * 255).astype(np.uint8)
    q = measure_upload((12, 30), sharp)
    assert (q.face_px, q.score) == (12.0, None) and q.sharpness > 1e4
    assert unreadable_reason(q) == TOO_SMALL
    assert unreadable_reason(measure_upload((48, 48), sharp)) is None  # no detection: weak_detection cannot apply
    assert unreadable_reason(measure_upload((48, 48), np.full((48, 48), 7, np.uint8))) == BLURRED


def test_zero_thresholds_turn_the_rule_off() -> None:
    assert unreadable_reason(FaceQuality(0.0, 0.0, 0.0), QualityRule(0, 0, 0)) is None
