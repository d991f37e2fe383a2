"""The Preprocessor deployment's class with a fake model handle and a fake face detector (no cluster)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from models.contract import DEFAULT_MODEL_DIR, load_contract
from serve.core.detection import Face
from serve.core.frames import FrameFaces
from serve.core.imaging import decode_image
from serve.core.inference import FaceScores
from serve.core.quality import QualityRule
from serve.deployments import preprocessor as pre_module
from serve.errors import ErrorInfo
from serve.runtime.metrics import _NullMetric
from tests.conftest import encode

CONTRACT = load_contract(DEFAULT_MODEL_DIR, require_onnx=False)
Preprocessor: Any = pre_module.Preprocessor.func_or_class


class Method:
    """``handle.method``: ``.remote(...)`` returns an awaitable, like a DeploymentResponse."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn, self.calls = fn, []

    def remote(self, *args: Any) -> Any:
        self.calls.append(args)
        return self.fn(*args)


class FakeModel:
    def __init__(self) -> None:
        self.predict = Method(self._predict)

    async def _predict(self, stack: np.ndarray) -> np.ndarray:
        """Row i holds i everywhere, so the caller's reordering shows."""
        return np.repeat(np.arange(len(stack), dtype=np.float32)[:, None], CONTRACT.num_classes, axis=1)


class FakeDetector:
    name = "fake"

    def __init__(self, faces: list[Face]) -> None:
        self.faces = faces

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return self.faces


@pytest.fixture
def make(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[Any, FakeModel]]]:
    monkeypatch.setattr(pre_module, "stage_histogram", _NullMetric)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # the replica sets it process-wide
    made: list[Any] = []

    def build(faces: list[Face] | None = None, quality: QualityRule | None = None) -> tuple[Any, FakeModel]:
        monkeypatch.setattr(pre_module, "CenterFaceDetector", lambda config: FakeDetector(faces or []))
        model = FakeModel()
        made.append(Preprocessor(model, str(DEFAULT_MODEL_DIR), 10_000, None, 1, quality))
        return made[-1], model

    yield build
    for pre in made:
        pre._pool.shutdown()


def test_classify_answers_every_image_in_order(make: Any, face_png: bytes) -> None:
    pre, model = make()
    other = encode(Image.new("RGB", (64, 64), "white"), "JPEG")
    huge = encode(Image.new("L", (200, 200)))
    results = asyncio.run(pre.classify([face_png, b"garbage", b"", other, huge]))
    assert [r.code if isinstance(r, ErrorInfo) else "ok" for r in results] == [
        "ok", "invalid_image", "empty_body", "ok", "image_too_large",
    ]  # fmt: skip
    assert results[0].probabilities[0] == 0.0 and results[3].probabilities[0] == 1.0  # rows go back to their images
    ((stack,),) = model.predict.calls  # one model call for the whole request
    assert stack.dtype == np.uint8 and stack.shape == (2, CONTRACT.input.height, CONTRACT.input.width)
    np.testing.assert_array_equal(stack[0], decode_image(face_png, CONTRACT, max_pixels=10_000))


def noise(size: int) -> bytes:
    return encode(Image.fromarray(np.random.default_rng(size).integers(0, 256, (size, size), dtype=np.uint8)))


def test_classify_judges_each_upload_by_its_size_and_sharpness(make: Any, face_png: bytes) -> None:
    pre, model = make()
    results = asyncio.run(pre.classify([noise(48), noise(12), face_png, noise(90)]))
    assert all(isinstance(r, FaceScores) for r in results)
    # 12 px upload: too small; a smooth gradient: no detail left at 48x48. No detection score: no weak_detection.
    assert [r.unreadable for r in results] == [None, "too_small", "blurred", None]
    assert len(model.predict.calls) == 1  # unreadable faces are still classified (their probabilities are kept)
    lenient, _ = make(quality=QualityRule(min_face_px=0, min_sharpness=0))
    assert [r.unreadable for r in asyncio.run(lenient.classify([noise(12), face_png]))] == [None, None]


def test_analyze_carries_each_face_s_unreadable_reason(make: Any) -> None:
    pre, _ = make([Face((10.0, 10.0, 30.0, 30.0), 0.9), Face((50.0, 20.0, 20.0, 20.0), 0.5)])
    rgb = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    result = asyncio.run(pre.analyze(encode(Image.fromarray(rgb))))
    assert isinstance(result, FrameFaces) and result.reasons() == (None, "weak_detection")


def test_classify_does_not_call_the_model_when_every_image_is_bad(make: Any) -> None:
    pre, model = make()
    results = asyncio.run(pre.classify([b"x", b"y"]))
    assert [r.code for r in results] == ["invalid_image", "invalid_image"]
    assert model.predict.calls == []


def test_analyze_sends_all_faces_of_a_frame_in_one_call(make: Any) -> None:
    pre, model = make([Face((10.0, 10.0, 30.0, 30.0), 0.9), Face((50.0, 20.0, 20.0, 20.0), 0.8)])
    result = asyncio.run(pre.analyze(encode(Image.new("RGB", (90, 60), "grey"))))
    assert isinstance(result, FrameFaces) and (result.width, result.height) == (90, 60)
    assert result.probabilities.shape == (2, CONTRACT.num_classes)
    ((crops,),) = model.predict.calls
    assert crops.shape == (2, CONTRACT.input.height, CONTRACT.input.width) and crops.dtype == np.uint8


def test_analyze_without_faces_or_with_a_bad_frame_skips_the_model(make: Any) -> None:
    pre, model = make([])
    result = asyncio.run(pre.analyze(encode(Image.new("RGB", (90, 60)))))
    assert isinstance(result, FrameFaces) and result.probabilities.shape == (0, CONTRACT.num_classes)
    bad = asyncio.run(pre.analyze(b"not a frame"))
    assert isinstance(bad, ErrorInfo) and bad.code == "invalid_image"
    assert model.predict.calls == []
