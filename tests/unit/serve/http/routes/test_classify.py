"""The classify routes' own work, with a scripted pipeline: what reaches it, the JSON built from its answers, and the
per-outcome image counter (decode + model behaviour end to end is tests/unit/serve/http/test_webapp.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.contract import DEFAULT_MODEL_DIR, AnswerSpec, ModelContract, load_contract
from serve.core.inference import FaceScores
from serve.errors import ErrorInfo
from serve.http.state import ServiceState
from serve.http.webapp import create_app
from serve.runtime.metrics import _NullMetric, null_ingress_metrics
from serve.runtime.settings import load_settings

CONTRACT = load_contract(DEFAULT_MODEL_DIR, require_onnx=False)
N = CONTRACT.num_classes
TOP_LAST = np.linspace(0.1, 1.0, N, dtype=np.float32) / np.linspace(0.1, 1.0, N).sum()


class Scripted:
    """Answers every image from ``answers`` (by its bytes) and records each call."""

    def __init__(self, answers: dict[bytes, FaceScores | np.ndarray | ErrorInfo]) -> None:
        self.answers, self.calls = answers, []

    async def classify(self, images: list[bytes]) -> list[FaceScores | np.ndarray | ErrorInfo]:
        self.calls.append(images)
        return [self.answers[data] for data in images]


class Incs(_NullMetric):
    def __init__(self) -> None:
        self.seen: list[tuple[int, str]] = []

    def inc(self, value: object = 1, tags: dict[str, str] | None = None, **kwargs: object) -> None:
        self.seen.append((int(value), (tags or {})["outcome"]))  # type: ignore[call-overload]


def client(pipeline: Scripted, images: Incs, contract: ModelContract = CONTRACT, **overrides: object) -> TestClient:
    settings = load_settings(**overrides)
    state = ServiceState(
        pipeline=pipeline, settings=settings, contract=contract, model_metrics=None,  # type: ignore[arg-type]
        metrics=dataclasses.replace(null_ingress_metrics(), images=images),
    )  # fmt: skip
    return TestClient(create_app(state), raise_server_exceptions=False)


def test_single_image_answer_and_error() -> None:
    pipeline, images = Scripted({b"ok": TOP_LAST, b"big": ErrorInfo("image_too_large", "too big")}), Incs()
    with client(pipeline, images) as c:
        body = c.post("/v1/classify", files={"file": ("f.png", b"ok", "image/png")}).json()
        failed = c.post("/v1/classify", content=b"big", headers={"content-type": "image/png"})
    assert pipeline.calls == [[b"ok"], [b"big"]]
    assert body["label"] == CONTRACT.labels[-1] and list(body["probabilities"]) == list(CONTRACT.labels)
    assert body["model"] == {"name": CONTRACT.name, "version": CONTRACT.version} and body["request_id"]
    assert failed.status_code == 413 and failed.json()["error"] == {"code": "image_too_large", "message": "too big"}
    assert images.seen == [(1, "ok"), (1, "image_too_large")]


def test_batch_results_keep_their_index_and_count_once_per_outcome() -> None:
    bad = ErrorInfo("invalid_image", "nope")
    pipeline, images = Scripted({b"a": TOP_LAST, b"x": bad, b"b": TOP_LAST[::-1].copy()}), Incs()
    files = [("files", (name, data)) for name, data in (("1", b"a"), ("2", b"x"), ("3", b"b"), ("4", b"x"))]
    with client(pipeline, images) as c:
        resp = c.post("/v1/classify/batch", files=files)
    assert resp.status_code == 200 and pipeline.calls == [[b"a", b"x", b"b", b"x"]]
    results = resp.json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert [r.get("label") for r in results] == [CONTRACT.labels[-1], None, CONTRACT.labels[0], None]
    assert results[1]["error"] == {"code": "invalid_image", "message": "nope"}
    assert sorted(images.seen) == [(2, "invalid_image"), (2, "ok")]


def test_an_oversized_body_never_reaches_the_pipeline() -> None:
    pipeline, images = Scripted({}), Incs()
    with client(pipeline, images, max_body_bytes=1024) as c:
        single = c.post("/v1/classify", content=b"x" * 2000, headers={"content-type": "image/png"})
        batch = c.post("/v1/classify/batch", files=[("files", ("a", b"x" * 2000))])
    assert [r.json()["error"]["code"] for r in (single, batch)] == ["payload_too_large"] * 2
    assert pipeline.calls == [] and images.seen == []


def test_an_unreadable_upload_is_answered_without_a_label() -> None:
    pipeline = Scripted({b"ok": FaceScores(TOP_LAST), b"blur": FaceScores(TOP_LAST, "blurred"), b"old": TOP_LAST})
    with client(pipeline, Incs()) as c:
        ok, blur, old = (c.post("/v1/classify", content=d, headers={"content-type": "image/png"}).json()
                         for d in (b"ok", b"blur", b"old"))  # fmt: skip
        batch = c.post("/v1/classify/batch", files=[("files", ("a", b"blur")), ("files", ("b", b"ok"))]).json()
    assert (ok["label"], ok["readable"], ok["unreadable_reason"]) == (CONTRACT.labels[-1], True, None)
    assert (blur["label"], blur["readable"], blur["unreadable_reason"]) == (None, False, "blurred")
    assert blur["probabilities"] == ok["probabilities"] and "model_probabilities" not in blur
    assert old == {**ok, "request_id": old["request_id"]}  # a bare probability row: a readable face
    first, second = batch["results"]
    assert (first["index"], first["label"], first["unreadable_reason"]) == (0, None, "blurred")
    assert (second["label"], second["readable"]) == (CONTRACT.labels[-1], True)


def test_a_grouping_contract_answers_in_its_groups_and_other() -> None:
    labels = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    seven = ModelContract(name="seven", version="1", labels=labels, answer=AnswerSpec(
        (("angry", ("angry",)), ("happy", ("happy",)), ("sad", ("sad",)))))  # fmt: skip
    neutral = np.array([0.1, 0.02, 0.03, 0.05, 0.2, 0.1, 0.5], np.float32)
    with client(Scripted({b"n": FaceScores(neutral)}), Incs(), contract=seven) as c:
        body = c.post("/v1/classify", content=b"n", headers={"content-type": "image/png"}).json()
    assert list(body["probabilities"]) == ["angry", "happy", "sad", "other"]
    assert body["probabilities"]["other"] == pytest.approx(0.65) and body["label"] == "other"
    assert sum(body["probabilities"].values()) == pytest.approx(1.0)
    assert body["model_probabilities"] == pytest.approx(dict(zip(labels, neutral.tolist(), strict=True)))
