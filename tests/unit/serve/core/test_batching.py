"""Batching knobs (user_config) and the helpers that split a concatenated batch back into its calls."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from serve.core.batching import BatchConfig, CoalesceConfig, apply_batch_config, count_images, split_sizes


@pytest.mark.parametrize(
    "values",
    [
        {"max_batch_size": 0}, {"max_batch_size": 1025}, {"batch_wait_timeout_s": -0.001},
        {"batch_wait_timeout_s": 1.5}, {"max_concurrent_batches": 0}, {"max_concurrent_batches": 65},
        {"run_batch_size": 0}, {"max_batch_size": "many"}, {"max_batch_sise": 8},
    ],
)  # fmt: skip
def test_batch_config_rejects_out_of_range_and_unknown_keys(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        BatchConfig(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("values", [{"max_images": 0}, {"max_images": 1025}, {"max_calls_in_flight": 0}, {"slots": 2}])
def test_coalesce_config_rejects_out_of_range_and_unknown_keys(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CoalesceConfig(**values)  # type: ignore[arg-type]


def test_configs_accept_their_bounds_and_are_frozen() -> None:
    config = BatchConfig(max_batch_size=1024, batch_wait_timeout_s=1.0, max_concurrent_batches=1, run_batch_size=1)
    assert config.max_batch_size == 1024
    assert CoalesceConfig(max_images=1, max_calls_in_flight=64).max_images == 1
    with pytest.raises(ValidationError):
        config.max_batch_size = 2  # type: ignore[misc]


def test_apply_batch_config_calls_the_batcher_setters() -> None:
    calls: list[tuple[str, object]] = []

    class Batched:
        def set_max_batch_size(self, value: int) -> None:
            calls.append(("size", value))

        def set_batch_wait_timeout_s(self, value: float) -> None:
            calls.append(("wait", value))

    apply_batch_config(Batched(), BatchConfig(max_batch_size=7, batch_wait_timeout_s=0.25))
    assert sorted(calls) == [("size", 7), ("wait", 0.25)]


def test_count_images_counts_images_not_calls() -> None:
    stacks = [np.zeros((3, 48, 48), np.uint8), np.zeros((1, 48, 48), np.uint8)]
    assert count_images(stacks) == 4
    assert count_images([[b"a"], [b"b", b"c"], []]) == 3
    assert count_images([]) == 0


@pytest.mark.parametrize("sizes", [[5], [3, 1, 2], [2, 0, 3], [0, 4], [1, 1, 1, 1]])
def test_split_sizes_round_trips_a_concatenated_batch(sizes: list[int]) -> None:
    stacks = [np.full((n, 2), i, np.float32) for i, n in enumerate(sizes)]
    pieces = np.split(np.concatenate(stacks), split_sizes(sizes))
    assert len(pieces) == len(stacks)
    for piece, stack in zip(pieces, stacks, strict=True):
        np.testing.assert_array_equal(piece, stack)
