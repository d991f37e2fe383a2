"""The real Serve app over HTTP: predictions, every documented error, batching, metrics, auth.

Nothing here depends on the machine's speed (conftest.py: no queueing-delay bound, hang-guard deadlines only)."""

from __future__ import annotations

import io
import json
import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from models.data import DEFAULT_CLASSES
from serve.core.imaging import decode_face
from serve.core.inference import OnnxClassifier, answer
from serve.core.quality import measure_upload, unreadable_reason
from serve.runtime.metrics import EXPORTED_NAMES
from serve.runtime.settings import load_settings
from tests.conftest import encode, require_fer
from tests.integration.conftest import API_KEY, HANG_GUARD_S, Service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
N_FACES = 300


def load_fer_faces(n: int) -> list[tuple[str, bytes]]:
    import pyarrow.parquet as pq

    rows = pq.read_table(require_fer(), columns=["image", "label"]).to_pylist()
    wanted = [(r["label"], r["image"]["bytes"]) for r in rows if r["label"] in DEFAULT_CLASSES]
    step = max(1, len(wanted) // n)
    return wanted[::step][:n]


@pytest.mark.data
def test_fer_predictions_equal_in_process_onnxruntime(service: Service) -> None:
    faces = load_fer_faces(N_FACES)
    clf = OnnxClassifier(load_settings().model_dir)

    def post(item: tuple[str, bytes]) -> httpx.Response:
        return service.client.post("/v1/classify", content=item[1], headers={"content-type": "image/jpeg"})

    with ThreadPoolExecutor(8) as pool:  # concurrent: the service batches these
        responses = list(pool.map(post, faces))
    correct = 0
    for (label, data), resp in zip(faces, responses, strict=True):
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pixels, size = decode_face(data, clf.contract, max_pixels=4_000_000)
        probs = clf.predict_proba(pixels[None])[0]
        expected = answer(probs, clf.contract, unreadable_reason(measure_upload(size, pixels)))
        assert body["label"] == expected.label and body["unreadable_reason"] == expected.unreadable_reason
        assert np.allclose([body["probabilities"][k] for k in clf.labels], probs, rtol=0, atol=1e-6)
        correct += body["label"] == label
    accuracy = correct / len(faces)
    assert 0.0 <= accuracy <= 1.0

    def batched(text: str) -> bool:
        batches = service.metric_total(text, "ray_emotion_batch_size_count")
        return batches - service.metric_total(text, "ray_emotion_batch_size_bucket", le="1.0") > 0

    text = service.wait_for_metrics(batched)  # the export can lag behind the requests: poll, do not sleep
    assert batched(text), "no batch larger than 1 was realised under 8 concurrent clients"


@pytest.mark.data
def test_batch_endpoint_matches_single(service: Service) -> None:
    faces = [data for _, data in load_fer_faces(8)][:6]
    files = [("files", (f"{i}.jpg", d, "image/jpeg")) for i, d in enumerate(faces)] + [("files", ("x", b"junk"))]
    resp = service.client.post("/v1/classify/batch", files=files)
    assert resp.status_code == 200
    results = resp.json()["results"]
    assert [r["index"] for r in results] == list(range(7)) and results[6]["error"]["code"] == "invalid_image"
    for data, result in zip(faces, results, strict=False):
        single = service.client.post("/v1/classify", content=data, headers={"content-type": "image/jpeg"}).json()
        assert single["probabilities"] == pytest.approx(result["probabilities"], abs=1e-6)


def _png(size: tuple[int, int], mode: str = "L") -> bytes:
    return encode(Image.new(mode, size))


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (30_000, 30_000)).save(buf, format="PNG")
    return buf.getvalue()


NOISE = encode(Image.effect_noise((200, 200), 50))
FACE = encode(Image.linear_gradient("L").resize((48, 48)))
BAD_SINGLE = [
    ("empty_body", {"content": b"", "headers": {"content-type": "image/png"}}, 400),
    ("random_bytes", {"content": b"\x13\x37" * 500, "headers": {"content-type": "image/jpeg"}}, 422),
    ("truncated", {"content": NOISE[:900], "headers": {"content-type": "image/png"}}, 422),
    ("unsupported_type", {"content": FACE, "headers": {"content-type": "application/json"}}, 415),
    ("gif", {"content": encode(Image.new("L", (48, 48)), "GIF"), "headers": {"content-type": "image/png"}}, 422),
    ("too_many_pixels", {"content": _png((2100, 2000)), "headers": {"content-type": "image/png"}}, 413),
    ("bomb", {"content": _bomb(), "headers": {"content-type": "image/png"}}, 413),
    ("too_many_bytes", {"content": b"\xff\xd8\xff" + b"0" * 2_100_000, "headers": {"content-type": "image/jpeg"}}, 413),
    ("wrong_field", {"files": {"image": ("f.png", FACE, "image/png")}}, 422),
]  # fmt: skip
CODES = {"empty_body": "empty_body", "random_bytes": "invalid_image", "truncated": "invalid_image",
         "unsupported_type": "unsupported_media_type", "gif": "invalid_image", "too_many_pixels": "image_too_large",
         "bomb": "image_too_large", "too_many_bytes": "payload_too_large", "wrong_field": "missing_field"}  # fmt: skip


@pytest.mark.parametrize(("name", "kwargs", "status"), BAD_SINGLE, ids=[b[0] for b in BAD_SINGLE])
def test_bad_input_gets_its_documented_status_and_code(
    service: Service, name: str, kwargs: dict[str, object], status: int
) -> None:
    resp = service.client.post("/v1/classify", **kwargs)  # type: ignore[arg-type]
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"]["code"] == CODES[name]
    assert resp.headers["x-request-id"] == body["request_id"]


def test_bad_batches(service: Service) -> None:
    resp = service.client.post("/v1/classify/batch", files=[("files", ("f", FACE))] * 9)
    assert (resp.status_code, resp.json()["error"]["code"]) == (413, "too_many_images")
    resp = service.client.post("/v1/classify/batch", files=[("file", ("f", FACE))])
    assert (resp.status_code, resp.json()["error"]["code"]) == (422, "missing_field")
    assert service.client.get("/readyz").status_code == 200


def test_auth_and_request_ids(service: Service) -> None:
    with httpx.Client(base_url=service.url, timeout=HANG_GUARD_S) as bare:  # no API key unless given
        anon = bare.post("/v1/classify", content=FACE, headers={"content-type": "image/png"})
        assert (anon.status_code, anon.json()["error"]["code"]) == (401, "unauthorized")
        wrong = bare.get("/v1/model", headers={"authorization": "Bearer wrong"})
        assert (wrong.status_code, wrong.json()["error"]["code"]) == (403, "forbidden")
        ok = bare.get("/v1/model", headers={"authorization": f"Bearer {API_KEY}", "x-request-id": "rid-42"})
        assert ok.status_code == 200 and ok.headers.get_list("x-request-id") == ["rid-42"]
        assert bare.get("/healthz").status_code == 200


def test_documented_metric_names_are_exported(service: Service) -> None:
    from websockets.sync.client import connect

    service.client.post("/v1/classify", content=FACE, headers={"content-type": "image/png"})
    # The frame and stream metrics exist once a stream has carried a frame (and ended).
    ws_url = service.url.replace("http://", "ws://") + "/v1/stream"
    with connect(ws_url, additional_headers={"x-api-key": API_KEY}) as ws:
        ws.send(FACE)
        ws.send("end")
        assert "index" in json.loads(ws.recv(timeout=HANG_GUARD_S))

    def exported(text: str) -> bool:
        ok = service.metric_total(text, "ray_emotion_requests_total", route="/v1/classify", status="200") >= 1
        return ok and all(name in text for name in EXPORTED_NAMES)

    text = service.wait_for_metrics(exported)
    missing = [name for name in EXPORTED_NAMES if name not in text]
    assert not missing, f"not exported: {missing}"
    assert service.metric_total(text, "ray_emotion_requests_total", route="/v1/classify", status="200") >= 1


def test_replicas_run_at_the_callers_cpu_priority(service: Service) -> None:
    # Ray lowers every worker to nice 15 by default; the service's replicas must not lose the cores to the
    # processes around them (serve/runtime/fastmode.py).
    replicas = [p for p in psutil.process_iter(["cmdline"]) if "ray::ServeReplica" in " ".join(p.info["cmdline"] or [])]
    assert replicas, "no Serve replica process found"
    assert {p.nice() for p in replicas} == {os.nice(0)}
