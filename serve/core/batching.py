"""Runtime-tunable batching knobs (``user_config``), validated the same way for every deployment."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field


class BatchConfig(BaseModel):
    """``user_config`` of a batching deployment; ``reconfigure`` applies it without a restart."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: Annotated[int, Field(ge=1, le=1024, description="Most images in one batch.")] = 16
    # 0: a batch is whatever is queued at that moment (Serve forms a batch first, then waits for a run slot).
    # Upstream calls already carry coalesced images (the ingress merges requests while its calls are busy), so
    # waiting for more only delays them (A/B, reports/benchmark/ab/ab9.md: model wait 5 ms -> 0, single images at
    # 8 clients 225 -> 265 req/s, p99 50 -> 44 ms).
    batch_wait_timeout_s: Annotated[float, Field(ge=0.0, le=1.0, description="Wait for a batch to fill.")] = 0.0
    # 2: one batch runs while the next one forms (the session's parallel runs already split a batch in two).
    max_concurrent_batches: Annotated[int, Field(ge=1, le=64, description="Batches running at once.")] = 2
    # 8: this model's cost per face is lowest at 4-8 faces (one thread, model 0.3.0: 2.49 ms per face at 8, 2.58 at
    # 16, 2.64 at 32; A/B reports/benchmark/ab/ab12.md: 32-image requests 599 -> 610 img/s), so a big batch runs as
    # several session runs of about this size.
    run_batch_size: Annotated[int, Field(ge=1, le=1024, description="Most faces in one session run.")] = 8


class CoalesceConfig(BaseModel):
    """``user_config`` of the ingress: how concurrent upload requests share one model call (``serve.core.coalesce``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_images: Annotated[int, Field(ge=1, le=1024, description="Most images in one call.")] = 32
    # 2: A/B (reports/benchmark/ab/ab14.md): open loop 100 req/s served 93 -> 99.6 req/s, p99 668 -> 88 ms against
    # @serve.batch (8 slots, 2 ms wait); 8 closed-loop clients 127 -> 123 req/s (noise); 4 slots: 108 req/s.
    max_calls_in_flight: Annotated[int, Field(ge=1, le=64, description="Calls in flight; others wait.")] = 2


def apply_batch_config(batched_method: Any, config: BatchConfig) -> None:
    """Push a BatchConfig into an @serve.batch method (its setters are not visible to type checkers)."""
    batched_method.set_max_batch_size(config.max_batch_size)
    batched_method.set_batch_wait_timeout_s(config.batch_wait_timeout_s)


def count_images(items: Sequence[Sequence[Any]]) -> int:
    """``batch_size_fn`` for @serve.batch: a queued call carries many images; count images, not calls."""
    return sum(len(item) for item in items)


def split_sizes(sizes: Sequence[int]) -> list[int]:
    """Cut points to split a concatenated batch back into its calls."""
    cuts, total = [], 0
    for size in sizes[:-1]:
        total += size
        cuts.append(total)
    return cuts
