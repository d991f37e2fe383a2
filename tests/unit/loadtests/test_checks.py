"""The answer validators the locust scenarios and the benchmark share: they must reject what the API forbids."""

from __future__ import annotations

from typing import Any

import pytest

from loadtests.checks import InvalidResponse, check_analyze, check_batch, check_classify, check_prediction

LABELS = ("angry", "happy", "sad")


def face(
    label: str | None = "happy", readable: bool = True, reason: str | None = None, **probs: float
) -> dict[str, Any]:
    probabilities = {"angry": 0.1, "happy": 0.7, "sad": 0.2} | probs
    return {"label": label, "probabilities": probabilities, "readable": readable, "unreadable_reason": reason}


def test_a_readable_face_returns_its_label() -> None:
    assert check_prediction(face(), LABELS) == "happy"


def test_an_unreadable_face_has_no_label_and_says_why() -> None:
    assert check_prediction(face(None, readable=False, reason="blurred"), LABELS) is None


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (face("sad"), "not the most probable"),
        (face("neutral"), "not one of"),
        (face(None), "not one of"),  # readable, yet no label
        (face("happy", readable=False, reason="too_small"), "label null"),
        (face(None, readable=False), "a reason"),
        (face(happy=0.9), "not a distribution"),
        ({"label": "happy", "probabilities": {"happy": 1.0}}, "exactly the keys"),
        ("happy", "expected an object"),
    ],
)
def test_wrong_answers_are_rejected(item: Any, message: str) -> None:
    with pytest.raises(InvalidResponse, match=message):
        check_prediction(item, LABELS)


def test_classify_needs_a_request_id_and_the_model() -> None:
    body = face() | {"request_id": "r1", "model": {"name": "m", "version": "1"}}
    assert check_classify(body, LABELS) == "happy"
    with pytest.raises(InvalidResponse, match="request_id"):
        check_classify(face(), LABELS)


def test_batch_results_come_in_order_and_without_errors() -> None:
    results = [face() | {"index": 0}, face(None, readable=False, reason="blurred") | {"index": 1}]
    assert check_batch({"results": results}, 2, LABELS) == ["happy", None]
    with pytest.raises(InvalidResponse, match="index"):
        check_batch({"results": results[::-1]}, 2, LABELS)
    with pytest.raises(InvalidResponse, match="error for a valid image"):
        check_batch({"results": [{"index": 0, "error": {"code": "bad"}}]}, 1, LABELS)


def test_analyze_counts_faces_with_boxes() -> None:
    assert check_analyze({"faces": [face() | {"box": [0, 0, 10, 10]}]}, LABELS) == 1
    with pytest.raises(InvalidResponse, match="box"):
        check_analyze({"faces": [face()]}, LABELS)
