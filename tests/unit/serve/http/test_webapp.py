"""The HTTP layer without Ray: create_app around an in-process pipeline (same decode + ONNX code as Serve)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from serve.core.imaging import decode_image
from serve.core.inference import OnnxClassifier
from serve.errors import ErrorInfo, ServiceError
from serve.http.state import ServiceState
from serve.http.webapp import ServiceMiddleware, create_app
from serve.runtime.metrics import null_ingress_metrics
from serve.runtime.settings import Settings, digest_key, load_settings
from tests.conftest import encode

CLF = OnnxClassifier(load_settings().model_dir)


class InProcessPipeline:
    def __init__(self, settings: Settings, gate: asyncio.Event | None = None) -> None:
        self.settings, self.gate = settings, gate

    async def classify(self, images: list[bytes]) -> list[np.ndarray | ErrorInfo]:
        if self.gate is not None:
            await self.gate.wait()
        out: list[np.ndarray | ErrorInfo] = []
        for data in images:
            try:
                pixels = decode_image(data, CLF.contract, max_pixels=self.settings.max_image_pixels)
                out.append(CLF.predict_proba(pixels[None])[0])
            except ServiceError as exc:
                out.append(exc.info())
        return out

    async def ready(self) -> bool:
        return True


def make_client(**overrides: object) -> TestClient:
    settings = load_settings(**overrides)
    state = ServiceState(
        pipeline=InProcessPipeline(settings), settings=settings, contract=CLF.contract, model_metrics={"a": 1},
        metrics=null_ingress_metrics(), key_digests=settings.key_digests(),
    )  # fmt: skip
    return TestClient(create_app(state), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with make_client(max_body_bytes=200_000, max_image_pixels=1_000_000, max_images_per_request=4) as c:
        yield c


def assert_error(resp: object, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text  # type: ignore[attr-defined]
    body = resp.json()  # type: ignore[attr-defined]
    assert body["error"]["code"] == code and body["error"]["message"] and body["request_id"]
    assert resp.headers["x-request-id"] == body["request_id"]  # type: ignore[attr-defined]


def test_classify_raw_and_multipart_agree(client: TestClient, face_png: bytes) -> None:
    raw = client.post("/v1/classify", content=face_png, headers={"content-type": "image/png"})
    multi = client.post("/v1/classify", files={"file": ("f.png", face_png, "image/png")})
    assert raw.status_code == multi.status_code == 200
    a, b = raw.json(), multi.json()
    assert a["label"] in CLF.labels and list(a["probabilities"]) == list(CLF.labels)
    assert a["probabilities"] == b["probabilities"]
    assert a["model"] == {"name": CLF.contract.name, "version": CLF.contract.version}


def test_batch_results_in_order_with_per_item_errors(client: TestClient, face_png: bytes) -> None:
    other = encode(Image.new("L", (48, 48), 200), "JPEG")
    files = [("files", ("a", face_png)), ("files", ("b", b"not an image")), ("files", ("c", other))]
    resp = client.post("/v1/classify/batch", files=files)
    assert resp.status_code == 200
    results = resp.json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert results[1]["error"]["code"] == "invalid_image" and "label" not in results[1]
    single = client.post("/v1/classify", content=other, headers={"content-type": "image/jpeg"}).json()
    assert results[2]["probabilities"] == single["probabilities"]


def test_client_request_id_is_echoed_when_sane(client: TestClient) -> None:
    assert client.get("/healthz", headers={"x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    assert client.get("/healthz", headers={"x-request-id": "bad id\x01"}).headers["x-request-id"] != "bad id"


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty_body"),
        ({"content": b"hello", "headers": {"content-type": "image/jpeg"}}, 422, "invalid_image"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"content": b"hello"}, 415, "unsupported_media_type"),
        ({"content": b"x" * 300_000, "headers": {"content-type": "image/png"}}, 413, "payload_too_large"),
        ({"files": {"image": ("f.png", b"abc")}}, 422, "missing_field"),
        ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}}, 400, "bad_request"),
    ],
)
def test_bad_single_requests(client: TestClient, kwargs: dict[str, object], status: int, code: str) -> None:
    assert_error(client.post("/v1/classify", **kwargs), status, code)  # type: ignore[arg-type]


def test_image_errors(client: TestClient) -> None:
    big = encode(Image.new("L", (1100, 1000)))
    resp = client.post("/v1/classify", content=big, headers={"content-type": "image/png"})
    assert_error(resp, 413, "image_too_large")
    png = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 100), dtype=np.uint8)))
    truncated = png[: len(png) // 2]
    resp = client.post("/v1/classify", content=truncated, headers={"content-type": "image/png"})
    assert_error(resp, 422, "invalid_image")


def test_bad_batch_requests(client: TestClient, face_png: bytes) -> None:
    assert_error(client.post("/v1/classify/batch", files=[("files", ("a", face_png))] * 5), 413, "too_many_images")
    assert_error(client.post("/v1/classify/batch", files=[("file", ("a", face_png))]), 422, "missing_field")
    resp = client.post("/v1/classify/batch", content=face_png, headers={"content-type": "image/png"})
    assert_error(resp, 415, "unsupported_media_type")
    resp = client.post("/v1/classify/batch", content=b"", headers={"content-type": "multipart/form-data; boundary=x"})
    assert_error(resp, 400, "empty_body")
    resp = client.post("/v1/classify/batch", files=[("files", ("a", b""))])
    assert resp.status_code == 200 and resp.json()["results"][0]["error"]["code"] == "empty_body"


def test_routing_errors_are_json(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/v1/classify"), 405, "method_not_allowed")


def test_auth() -> None:
    with make_client(auth="on", api_keys="k1,k2") as c:
        assert_error(c.post("/v1/classify", content=b"x"), 401, "unauthorized")
        assert c.post("/v1/classify", content=b"x").headers["www-authenticate"] == "Bearer"
        assert_error(c.get("/v1/model", headers={"authorization": "Bearer nope"}), 403, "forbidden")
        assert c.get("/v1/model", headers={"x-api-key": "k2"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
    assert digest_key("k1") != "k1"


def test_load_shedding_returns_503_with_retry_after() -> None:
    client = make_client(max_inflight_requests=1, retry_after_s=3)
    state = client.app.state.service  # type: ignore[attr-defined]
    state.ongoing = 1  # as if one request were in flight
    resp = client.get("/v1/model")
    assert_error(resp, 503, "overloaded")
    assert resp.headers["retry-after"] == "3"
    state.ongoing = 0
    assert client.get("/v1/model").status_code == 200


class Recorder:
    """A metric that keeps what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, dict[str, str]]] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.calls.append((value, tags or {}))

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.calls.append((value, tags or {}))


class Failing(InProcessPipeline):
    async def classify(self, images: list[bytes]) -> list[np.ndarray | ErrorInfo]:
        raise RuntimeError("a bug")


def recorded_state(pipeline: type[InProcessPipeline] = InProcessPipeline) -> tuple[ServiceState, Any]:
    """A state whose request counter and latency histogram keep what they are given (API key ``k1``)."""
    settings = load_settings(auth="on", api_keys="k1")
    metrics = null_ingress_metrics()
    metrics.requests, metrics.latency = Recorder(), Recorder()
    state = ServiceState(
        pipeline=pipeline(settings), settings=settings, contract=CLF.contract, model_metrics={"a": 1},
        metrics=metrics, key_digests=settings.key_digests(),
    )  # fmt: skip
    return state, metrics


def test_every_request_is_counted_by_route_template_and_status(face_png: bytes) -> None:
    state, metrics = recorded_state(Failing)
    key = {"x-api-key": "k1"}
    with TestClient(create_app(state), raise_server_exceptions=False) as c:
        assert c.get("/v1/model", headers=key).status_code == 200
        assert c.get("/no/such", headers=key).status_code == 404
        assert c.get("/v1/model").status_code == 401  # refused before routing: no route template
        resp = c.post("/v1/classify", content=face_png, headers={"content-type": "image/png", **key})
        assert_error(resp, 500, "internal_error")  # the pipeline raised: still answered, still counted
    assert [tags for _, tags in metrics.requests.calls] == [
        {"route": "/v1/model", "status": "200"}, {"route": "unmatched", "status": "404"},
        {"route": "unmatched", "status": "401"}, {"route": "/v1/classify", "status": "500"},
    ]  # fmt: skip
    assert [tags for _, tags in metrics.latency.calls] == [{"route": t["route"]} for _, t in metrics.requests.calls]
    assert all(ms >= 0 for ms, _ in metrics.latency.calls)
    assert state.ongoing == 0


def test_a_request_whose_client_left_is_counted_as_499_not_as_a_server_error() -> None:
    state, metrics = recorded_state()

    async def cancelled(scope: Any, receive: Any, send: Any) -> None:
        raise asyncio.CancelledError  # what Serve does to a request task when its client disconnects

    scope = {"type": "http", "method": "POST", "path": "/v1/classify", "headers": [(b"x-api-key", b"k1")]}
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(ServiceMiddleware(cancelled, state)(scope, None, None))  # type: ignore[arg-type]
    assert [tags for _, tags in metrics.requests.calls] == [{"route": "unmatched", "status": "499"}]
    assert state.ongoing == 0
