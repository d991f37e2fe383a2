"""The EmotionModel deployment's class with the bundled model, without a cluster (Ray metrics stubbed out)."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import ray.serve
from pydantic import ValidationError

from models.contract import DEFAULT_MODEL_DIR, load_contract
from serve.deployments import model as model_module
from serve.runtime.metrics import ModelMetrics, _NullMetric

EmotionModel: Any = model_module.EmotionModel.func_or_class
FACES = np.random.default_rng(7).integers(0, 256, (5, 48, 48), dtype=np.uint8)


class Recorder(_NullMetric):
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def inc(self, value: object = 1, tags: dict[str, str] | None = None, **kwargs: object) -> None:
        self.counts[(tags or {}).get("emotion", "")] += int(value)  # type: ignore[call-overload]


@pytest.fixture(autouse=True)
def no_ray_runtime(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    predictions, null = Recorder(), _NullMetric()
    monkeypatch.setattr(model_module, "model_metrics", lambda: ModelMetrics(null, null, predictions, null))
    monkeypatch.setattr(model_module, "keep_gauges_exported", lambda gauges: None)
    # @serve.batch reads the replica's max_ongoing_requests (to warn) from the replica context.
    context = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=64))
    monkeypatch.setattr(ray.serve, "get_replica_context", lambda: context)
    return predictions


def run(coro_fn: Any) -> Any:
    """Build the model and run ``coro_fn(model)`` in one event loop (@serve.batch binds to the loop it runs in)."""

    async def main() -> Any:
        return await coro_fn(EmotionModel(str(DEFAULT_MODEL_DIR), 1, 2))

    return asyncio.run(main())


def test_predict_gives_each_face_the_same_row_alone_or_batched(no_ray_runtime: Recorder) -> None:
    async def scenario(model: Any) -> tuple[np.ndarray, ...]:
        alone = np.concatenate([await model.predict(FACES[i : i + 1]) for i in range(len(FACES))])
        together = np.concatenate(await asyncio.gather(*(model.predict(FACES[i : i + 1]) for i in range(len(FACES)))))
        stacked = await model.predict(FACES)
        split = np.concatenate(await model._run_stacks([FACES[:2], FACES[2:3], FACES[3:]]))
        return alone, together, stacked, split

    alone, *others = run(scenario)
    n_classes = load_contract(DEFAULT_MODEL_DIR).num_classes
    assert alone.dtype == np.float32 and alone.shape == (len(FACES), n_classes)
    np.testing.assert_allclose(alone.sum(axis=1), 1.0, atol=1e-5)
    for probs in others:
        assert probs.dtype == np.float32
        np.testing.assert_allclose(probs, alone, rtol=0, atol=1e-6)
    assert sum(no_ray_runtime.counts.values()) == 4 * len(FACES)  # every prediction counted under its label


def test_a_stack_bigger_than_a_batch_skips_the_queue() -> None:
    async def scenario(model: Any) -> np.ndarray:
        model.reconfigure({"max_batch_size": 2})

        async def refuse(images: np.ndarray) -> np.ndarray:
            raise AssertionError("queued a stack that is already a full batch")

        model._batched = refuse
        out: np.ndarray = await model.predict(FACES)
        return out

    assert run(scenario).shape[0] == len(FACES)


def test_reconfigure_applies_batching_knobs_and_rejects_bad_values() -> None:
    async def scenario(model: Any) -> None:
        first = model._batched
        model.reconfigure({"max_batch_size": 4, "batch_wait_timeout_s": 0.01, "run_batch_size": 3})
        assert model._batched is first  # same concurrency: the batcher is kept and retuned
        assert (model._batched._get_max_batch_size(), model._batched._get_batch_wait_timeout_s()) == (4, 0.01)
        assert model._clf.run_batch_size == 3
        model.reconfigure({"max_batch_size": 4, "max_concurrent_batches": 5})
        assert model._batched is not first and model._batched._get_max_batch_size() == 4
        assert model._clf.run_batch_size == 8  # back to BatchConfig's default: a user_config is the whole config
        for bad in ({"max_batch_size": 0}, {"run_batch_size": -1}, {"max_concurrent_batches": 0}, {"typo": 1}):
            with pytest.raises(ValidationError):
                model.reconfigure(bad)
        assert model._batched._get_max_batch_size() == 4  # unchanged by a rejected config
        assert await model.ready() is True
        assert (await model.predict(FACES[:1])).shape[0] == 1

    run(scenario)
