"""POST /v1/analyze and WS /v1/stream without Ray: create_app around an in-process detection + model pipeline."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from serve.core.frames import FrameFaces, InProcessFrames, detector_config
from serve.errors import ErrorInfo
from serve.http.state import ServiceState
from serve.http.webapp import create_app
from serve.runtime.metrics import null_ingress_metrics
from serve.runtime.settings import Settings, load_settings
from tests.conftest import encode


class Pipeline(InProcessFrames):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.model_dir, detector_config(settings), settings.max_image_pixels)

    async def classify(self, images: list[bytes]) -> list[np.ndarray | ErrorInfo]:
        raise NotImplementedError

    async def ready(self) -> bool:
        return True


class StubFaces(Pipeline):
    """Two fixed 'faces' for every decodable frame, whatever it shows."""

    async def analyze(self, frame: bytes) -> FrameFaces | ErrorInfo:
        result = await super().analyze(frame)
        if isinstance(result, ErrorInfo):
            return result
        boxes = np.array([[10, 10, 40, 40], [100, 20, 30, 30]], np.float32)
        probs = np.tile(np.eye(self.classifier.contract.num_classes, dtype=np.float32)[:1], (2, 1))
        return FrameFaces(result.width, result.height, boxes, np.array([0.9, 0.8], np.float32), probs)


def make_client(pipeline_cls: type[Pipeline] = Pipeline, **overrides: object) -> TestClient:
    settings = load_settings(**overrides)
    state = ServiceState(
        pipeline=pipeline_cls(settings), settings=settings, contract=pipeline_cls(settings).classifier.contract,
        model_metrics=None, metrics=null_ingress_metrics(), key_digests=settings.key_digests(),
    )  # fmt: skip
    return TestClient(create_app(state), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with make_client(StubFaces, max_body_bytes=300_000) as c:
        yield c


def _jpeg(size: tuple[int, int] = (160, 120)) -> bytes:
    return encode(Image.linear_gradient("L").convert("RGB").resize(size), "JPEG")


def test_analyze_returns_every_face_in_original_coordinates(client: TestClient) -> None:
    resp = client.post("/v1/analyze", content=_jpeg(), headers={"content-type": "image/jpeg"})
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


def test_analyze_rejects_bad_frames(client: TestClient) -> None:
    resp = client.post("/v1/analyze", content=b"garbage", headers={"content-type": "image/jpeg"})
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_image"
    resp = client.post("/v1/analyze", content=b"x", headers={"content-type": "text/plain"})
    assert resp.status_code == 415


def test_stream_answers_every_frame_in_order_with_errors_for_bad_ones(client: TestClient) -> None:
    frames = [_jpeg(), b"not an image", _jpeg((64, 48)), b""]
    with client.websocket_connect("/v1/stream") as ws:
        for frame in frames:
            ws.send_bytes(frame)
        ws.send_text("end")
        replies = [ws.receive_json() for _ in frames]
    assert [r["index"] for r in replies] == [0, 1, 2, 3]
    assert replies[1]["error"]["code"] == "invalid_image"
    assert replies[3]["error"]["code"] == "bad_request"
    assert replies[0]["faces"][0]["track_id"] == 1 and replies[2]["faces"][0]["track_id"] == 1
    assert "latency_ms" in replies[0] and replies[2]["width"] == 64


def test_stream_without_tracking_and_after_an_abrupt_disconnect(client: TestClient) -> None:
    with client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(_jpeg())
        ws.close()  # gone before its reply
    with client.websocket_connect("/v1/stream?track=false") as ws:
        ws.send_bytes(_jpeg())
        reply = ws.receive_json()
    assert reply["index"] == 0 and "track_id" not in reply["faces"][0]
    assert client.get("/healthz").status_code == 200


def test_demo_page_is_served(client: TestClient) -> None:
    page = client.get("/demo")
    assert page.status_code == 200 and "/v1/stream" in client.get("/demo/demo.js").text
    assert "demo.js" in page.text
