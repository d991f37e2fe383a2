"""POST /v1/analyze (and the unreadable answer through WS /v1/stream) through the real FastAPI app with an in-process
frame pipeline (conftest.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from serve.core.frames import FrameFaces
from serve.errors import ErrorInfo
from tests.conftest import encode
from tests.unit.serve.http.routes.conftest import StubFaces, jpeg, make_client


def test_analyze_returns_every_face_in_original_coordinates(frames_client: TestClient) -> None:
    resp = frames_client.post("/v1/analyze", content=jpeg(), headers={"content-type": "image/jpeg"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["width"], body["height"]) == (160, 120)
    assert [f["box"] for f in body["faces"]] == [[10, 10, 40, 40], [100, 20, 30, 30]]
    face = body["faces"][0]
    assert face["score"] == pytest.approx(0.9) and face["label"] in face["probabilities"]
    assert body["request_id"] and body["model"]["name"]


def test_a_frame_without_faces_is_a_valid_empty_answer() -> None:
    with make_client() as real:  # the real detector on a blank frame
        files = {"file": ("f.png", encode(Image.new("RGB", (320, 240), "grey")), "image/png")}
        resp = real.post("/v1/analyze", files=files)
    assert resp.status_code == 200, resp.text
    assert resp.json()["faces"] == []


def test_analyze_rejects_bad_frames(frames_client: TestClient) -> None:
    resp = frames_client.post("/v1/analyze", content=b"garbage", headers={"content-type": "image/jpeg"})
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_image"
    resp = frames_client.post("/v1/analyze", content=b"x", headers={"content-type": "text/plain"})
    assert resp.status_code == 415


class UnreadableSecond(StubFaces):
    """The two stub faces, the second judged blurred by the preprocessor."""

    async def analyze(self, frame: bytes) -> FrameFaces | ErrorInfo:
        result = await super().analyze(frame)
        return result if isinstance(result, ErrorInfo) else replace(result, unreadable=(None, "blurred"))


def assert_unreadable_answer(faces: list[dict[str, Any]], labels: tuple[str, ...]) -> None:
    readable, blurred = faces
    assert (readable["readable"], readable["unreadable_reason"], readable["label"]) == (True, None, labels[0])
    assert (blurred["readable"], blurred["unreadable_reason"], blurred["label"]) == (False, "blurred", None)
    assert list(blurred["probabilities"]) == list(labels)  # kept, in label order: what the model said
    assert "model_probabilities" not in blurred  # the bundled contract groups no labels


def test_analyze_answers_an_unreadable_face_without_a_label() -> None:
    with make_client(UnreadableSecond) as c:
        body = c.post("/v1/analyze", content=jpeg(), headers={"content-type": "image/jpeg"}).json()
        labels = tuple(c.get("/v1/model").json()["labels"])
    assert_unreadable_answer(body["faces"], labels)


def test_stream_answers_an_unreadable_face_without_a_label_and_smooths_only_readable_frames() -> None:
    with make_client(UnreadableSecond) as c, c.websocket_connect("/v1/stream") as ws:
        labels = tuple(c.get("/v1/model").json()["labels"])
        for _ in range(2):
            ws.send_bytes(jpeg())
        ws.send_text("end")
        replies = [ws.receive_json() for _ in range(2)]
    for reply in replies:
        assert_unreadable_answer(reply["faces"], labels)
        readable, blurred = reply["faces"]
        assert readable["smoothed_label"] == labels[0] and readable["track_id"] == 1
        assert blurred["smoothed_label"] is None and blurred["track_id"] == 2  # tracked, never smoothed
