"""Issue 14's "none of these" answer and unreadable faces, end to end: the real Serve graph on a 7-class model whose
config.json groups its labels into the service's three emotions + ``other`` answers in those four labels through
``/v1/classify``, ``/v1/analyze`` and ``WS /v1/stream``, keeps the model's seven probabilities beside them, and
answers an unreadable face without a label.

The model is test_seven_classes.py's tiny ONNX network (class by mean grey level); only its config.json differs, as
shipping the real 7-class model will be only a model folder.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from models.contract import AnswerSpec, load_contract
from serve.core.quality import REASONS
from tests.integration.conftest import Service, private_service
from tests.integration.test_seven_classes import (
    GREYS,
    LABELS,
    a_photo,
    assert_seven,
    flat_png,
    grey_png,
    streamed_faces,
    write_seven_class_model,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

THREE = ("angry", "happy", "sad")
ANSWER = (*THREE, "other")


def write_grouped_model(folder: Path) -> Path:
    """The 7-class test model with ``answer``: angry, happy and sad answered as themselves, the rest as other."""
    write_seven_class_model(folder)
    contract = load_contract(folder)
    grouping = AnswerSpec(groups=tuple((label, (label,)) for label in THREE), other="other")
    replace(contract, answer=grouping).save(folder)  # checked again on load
    assert load_contract(folder).answer_labels == ANSWER
    return folder


@pytest.fixture(scope="module")
def grouped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with private_service(model_dir=str(write_grouped_model(tmp_path_factory.mktemp("grouped")))) as running:
        yield running


def assert_grouped(item: dict[str, Any], where: str = "answer") -> None:
    """Answer probabilities in ANSWER (sum 1), the model's own seven beside them, each group its labels' sum."""
    assert_seven(item, where, labels=ANSWER)
    raw = item["model_probabilities"]
    assert list(raw) == list(LABELS), where
    for label in THREE:
        assert math.isclose(item["probabilities"][label], raw[label], abs_tol=1e-6), where
    rest = sum(p for label, p in raw.items() if label not in THREE)
    assert math.isclose(item["probabilities"]["other"], rest, abs_tol=1e-5), where


def test_model_route_names_the_model_labels_and_the_answer_labels(grouped: Service) -> None:
    body = grouped.client.get("/v1/model").json()
    assert body["labels"] == list(LABELS) and body["answer_labels"] == list(ANSWER)
    assert body["answer"] == {"groups": {label: [label] for label in THREE}, "other": "other"}


def test_classify_answers_other_for_every_label_outside_the_groups(grouped: Service) -> None:
    for level, label in zip(GREYS, LABELS, strict=True):
        resp = grouped.client.post("/v1/classify", content=grey_png(level), headers={"content-type": "image/png"})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert_grouped(body, label)
        assert body["label"] == (label if label in THREE else "other"), (label, body)
        assert max(body["model_probabilities"], key=body["model_probabilities"].__getitem__) == label


def test_batch_answers_in_the_groups_in_input_order(grouped: Service) -> None:
    files = [("files", (f"{i}.png", grey_png(level), "image/png")) for i, level in enumerate(GREYS)]
    results = grouped.client.post("/v1/classify/batch", files=files).json()["results"]
    assert [r["label"] for r in results] == [label if label in THREE else "other" for label in LABELS]
    for r in results:
        assert_grouped(r, f"results[{r['index']}]")


def test_classify_answers_an_unreadable_upload_without_a_label(grouped: Service) -> None:
    blurred = grouped.client.post("/v1/classify", content=flat_png(), headers={"content-type": "image/png"})
    small = grouped.client.post("/v1/classify", content=grey_png(GREYS[3], size=12),
                                headers={"content-type": "image/png"})  # fmt: skip
    for resp, reason in ((blurred, "blurred"), (small, "too_small")):
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert (body["readable"], body["unreadable_reason"], body["label"]) == (False, reason, None), body
        assert_grouped(body, reason)  # what the model said is still there, in the answer labels


def test_analyze_answers_every_face_in_the_groups(grouped: Service) -> None:
    data, media = a_photo()
    resp = grouped.client.post("/v1/analyze", content=data, headers={"content-type": media})
    assert resp.status_code == 200, resp.text
    faces = resp.json()["faces"]
    assert faces, "the detector found no face in the photo"
    for i, face in enumerate(faces):
        assert_grouped(face, f"faces[{i}]")
        assert face["readable"] or face["unreadable_reason"] in REASONS


@pytest.mark.parametrize(("change", "reason"), [("blur", "blurred"), ("shrink", "too_small")])
def test_analyze_answers_a_blurred_or_tiny_face_without_a_label(grouped: Service, change: str, reason: str) -> None:
    from PIL import ImageFilter

    data, _ = a_photo()
    image = Image.open(io.BytesIO(data)).convert("RGB")
    # Measured on the photo a_photo picks (1024x486, one 153 px face): a Gaussian blur of radius 8 leaves its
    # 48x48 crop under the sharpness threshold; a tenth of the size makes its box 15 px.
    if change == "blur":
        image = image.filter(ImageFilter.GaussianBlur(radius=max(image.size) / 128))
    else:
        image = image.resize((image.width // 10, image.height // 10), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    resp = grouped.client.post("/v1/analyze", content=buf.getvalue(), headers={"content-type": "image/png"})
    assert resp.status_code == 200, resp.text
    faces = resp.json()["faces"]
    assert faces and [f["unreadable_reason"] for f in faces] == [reason] * len(faces), faces
    for face in faces:
        assert face["label"] is None and face["readable"] is False
        assert_grouped(face)


def test_stream_answers_in_the_groups_and_smooths_them(grouped: Service) -> None:
    for index, face in streamed_faces(grouped):
        assert_grouped(face, f"frame {index}")
        assert face["track_id"] >= 1
        assert face["smoothed_label"] in ANSWER or (face["smoothed_label"] is None and not face["readable"])
