"""The Preprocessor deployment's class with a fake model handle and a fake face detector (no cluster). Uploads are
decoded by the ingress: tests/unit/serve/core/test_uploads.py."""

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


def test_analyze_carries_each_face_s_unreadable_reason(make: Any) -> None:
    pre, _ = make([Face((10.0, 10.0, 30.0, 30.0), 0.9), Face((50.0, 20.0, 20.0, 20.0), 0.5)])
    rgb = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    result = asyncio.run(pre.analyze(encode(Image.fromarray(rgb))))
    assert isinstance(result, FrameFaces) and result.reasons() == (None, "weak_detection")


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
