"""POST /v1/analyze through the real FastAPI app with an in-process frame pipeline (conftest.py)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import encode
from tests.unit.serve.http.routes.conftest import jpeg, make_client


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
