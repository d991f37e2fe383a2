"""The model deployment: one onnxruntime session per replica, requests batched with @serve.batch.

Batching is the replica's ``user_config`` (``serve.core.batching.BatchConfig``): size, wait, concurrent batches and
the session-run size all change without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
from ray import serve

from serve.core.batching import BatchConfig, apply_batch_config, count_images, split_sizes
from serve.core.inference import OnnxClassifier
from serve.runtime.metrics import keep_gauges_exported, model_metrics

logger = logging.getLogger("ray.serve")


@serve.deployment(name="EmotionModel")  # options: deploy/serve_config.yaml
class EmotionModel:
    """Runs the ONNX model on uint8 image stacks; many handle calls become one session run.

    Args:
        model_dir: folder with model.onnx + config.json.
        ort_threads: onnxruntime intra-op threads per session run.
        parallel_runs: session runs at once: a batch is cut into this many chunks that run side by side.
    """

    def __init__(self, model_dir: str, ort_threads: int = 1, parallel_runs: int = 1) -> None:
        start = time.perf_counter()
        self._clf = OnnxClassifier(model_dir, intra_op_threads=ort_threads, parallel_runs=parallel_runs)
        self._clf.warm_up()
        self._metrics = model_metrics()
        load_seconds = time.perf_counter() - start
        keep_gauges_exported([(self._metrics.load_seconds, lambda: load_seconds)])
        self._config: BatchConfig | None = None
        self.reconfigure({})  # BatchConfig's defaults until Serve passes a user_config
        logger.info("model %s %s loaded in %.2fs (%s)", self._clf.contract.name, self._clf.contract.version,
                    time.perf_counter() - start, "row by row: not batch-invariant" if self._clf.row_by_row
                    else "batched")  # fmt: skip

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = BatchConfig(**user_config)
        if self._config is None or config.max_concurrent_batches != self._config.max_concurrent_batches:
            # @serve.batch has no setter for this one: a new batcher takes new calls; the old one finishes its own.
            batcher = serve.batch(batch_size_fn=count_images, max_concurrent_batches=config.max_concurrent_batches)
            self._batched = batcher(self._run_stacks)
        apply_batch_config(self._batched, config)
        self._clf.run_batch_size = config.run_batch_size
        self._config = config

    async def ready(self) -> bool:
        return True  # the constructor only returns after a passing warm-up

    async def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``[n, H, W(, C)]`` -> float32 probabilities ``[n, num_classes]``."""
        assert self._config is not None
        if len(images) > self._config.max_batch_size:
            return await self._run(images)  # already a full batch: skip the queue
        result: np.ndarray = await self._batched(images)
        return result

    async def _run_stacks(self, stacks: list[np.ndarray]) -> list[np.ndarray]:
        """The batched function: many calls' stacks in one session run, split back per call."""
        probs = await self._run(np.concatenate(stacks) if len(stacks) > 1 else stacks[0])
        return np.split(probs, split_sizes([len(s) for s in stacks]))

    async def _run(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        # onnxruntime releases the GIL: run it off the event loop so new requests queue for the next batch.
        probs = await asyncio.to_thread(self._clf.predict_proba, batch)
        self._metrics.stage.observe((time.perf_counter() - start) * 1000.0, tags={"stage": "inference"})
        self._metrics.batch_size.observe(len(batch))
        counts = np.bincount(probs.argmax(axis=1), minlength=len(self._clf.labels))
        for label, count in zip(self._clf.labels, counts, strict=True):
            if count:
                self._metrics.predictions.inc(int(count), tags={"emotion": label})
        return probs
