"""The preprocessing deployment: whole frames (``/v1/analyze``, ``/v1/stream``): decode, detect faces, crop and
resize them to the contract, and send all faces of a frame to the model as one uint8 stack. Every detected face is
also judged by the unreadable rule here, where its pixels are. (Uploaded faces need no detection: the ingress
decodes them and calls the model itself.)
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from models.contract import load_contract
from serve.core.detection import CenterFaceDetector, DetectorConfig
from serve.core.frames import FrameAnalyzer, FrameFaces, with_probabilities
from serve.core.imaging import configure_pillow
from serve.core.quality import QualityRule
from serve.errors import ErrorInfo, ServiceError
from serve.runtime.metrics import stage_histogram


@serve.deployment(name="Preprocessor")  # options: deploy/serve_config.yaml
class Preprocessor:
    """Turns an encoded frame into its faces with the model's answers, a failure into its ErrorInfo.

    Args:
        model: handle to the EmotionModel deployment.
        model_dir: folder with config.json (the preprocessing contract).
        max_image_pixels: largest accepted width x height.
        detector: face detector settings for whole frames (``analyze``).
        threads: threads that decode frames and detect faces (EMOTION_PREPROCESS_THREADS).
        quality: the unreadable rule for detected faces (EMOTION_UNREADABLE_*; None: ``QualityRule()``).
    """

    def __init__(
        self,
        model: DeploymentHandle[Any],
        model_dir: str,
        max_image_pixels: int,
        detector: DetectorConfig | None = None,
        threads: int = 2,
        quality: QualityRule | None = None,
    ) -> None:
        self._model = model
        self._contract = load_contract(model_dir, require_onnx=False)
        configure_pillow(max_image_pixels)
        self._stage = stage_histogram()
        self._frames = FrameAnalyzer(self._contract, CenterFaceDetector(detector), max_image_pixels, quality=quality)
        # Decode + detection release the GIL; a small pool keeps them off the event loop without oversubscribing.
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="detect")

    async def analyze(self, frame: bytes) -> FrameFaces | ErrorInfo:
        """Every face of one frame with probabilities; all its faces go to the model as one batch."""
        try:
            faces, crops = await asyncio.get_running_loop().run_in_executor(self._pool, self._frames.prepare, frame)
        except ServiceError as exc:
            return exc.info()
        self._stage.observe(faces.detect_ms, tags={"stage": "detect"})
        if not len(crops):
            return with_probabilities(faces, np.zeros((0, self._contract.num_classes), np.float32))
        start = time.perf_counter()
        probs = await self._model.predict.remote(crops)
        self._stage.observe((time.perf_counter() - start) * 1000.0, tags={"stage": "model_call"})
        return with_probabilities(faces, probs)
