"""Shared by the frame, stream and demo route tests: an in-process frame pipeline (real detector + model, or two
fixed faces) behind the real FastAPI app."""


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
def frames_client() -> Iterator[TestClient]:
    with make_client(StubFaces, max_body_bytes=300_000) as c:
        yield c


def jpeg(size: tuple[int, int] = (160, 120)) -> bytes:
    return encode(Image.linear_gradient("L").convert("RGB").resize(size), "JPEG")
