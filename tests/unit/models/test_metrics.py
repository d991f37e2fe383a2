"""models.metrics on hand-computed inputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from models.metrics import (
    classification_report,
    confusion_matrix,
    format_report,
    log_softmax,
    mean_cross_entropy,
    save_confusion_png,
)


def test_log_softmax_is_stable_for_huge_logits() -> None:
    out = log_softmax(np.array([[1000.0, 0.0], [-1000.0, -1000.0]]))
    assert np.all(np.isfinite(out))
    assert out[0, 0] == pytest.approx(0.0) and out[1, 0] == pytest.approx(math.log(0.5))


def test_mean_cross_entropy_known_values() -> None:
    logits = np.array([[0.0, 0.0], [math.log(3.0), 0.0]])  # p(class 0) = 0.5, 0.75
    assert mean_cross_entropy(logits, np.array([0, 0])) == pytest.approx(-(math.log(0.5) + math.log(0.75)) / 2)


def test_confusion_matrix_rows_are_true_classes() -> None:
    cm = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_report_per_class_and_macro_f1() -> None:
    labels = np.array([0, 0, 1, 2])
    logits = np.eye(3)[[0, 1, 1, 1]]
    r = classification_report(logits, labels, ["a", "b", "c"])
    assert r["n"] == 4 and r["accuracy"] == 0.5
    assert r["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert r["per_class"]["b"]["precision"] == pytest.approx(1 / 3) and r["per_class"]["b"]["recall"] == 1.0
    assert r["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}  # 0/0 counts as 0
    assert r["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0.0) / 3)


def test_report_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="expected"):
        classification_report(np.zeros((2, 2)), np.array([0, 1]), ["a", "b", "c"])
    with pytest.raises(ValueError, match="labels must lie"):
        classification_report(np.zeros((1, 2)), np.array([2]), ["a", "b"])


def test_text_table_and_png(tmp_path: Path) -> None:
    r = classification_report(np.eye(2)[[0, 1, 1]], np.array([0, 1, 0]), ["angry", "happy"])
    text = format_report(r)
    assert "accuracy=0.6667" in text and "angry" in text
    png = save_confusion_png(r, tmp_path / "cm.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
