"""Step load: single-face users added in steps until the service saturates; checks it sheds rather than times out.

Each step adds ``--step-users`` closed-loop users and holds for ``--step-seconds``, or, with ``--step-requests N``,
until N more requests have been answered (any outcome): a run by count, which does not depend on the machine's
speed (``--step-timeout`` then ends a step that stalls, as a failure: a hang guard). 503 + Retry-After is counted
as shed (``POST /v1/classify [shed]`` rows); timeouts and any other 5xx are failures (exit code 1). Users honour
Retry-After (sleep, capped at 5 s); ``--ignore-retry-after`` makes them retry at once (a retry storm: what refusing
costs the service). At the end a per-step table (users, requests/s, shed/s, failures, p95) and the saturation step
(served throughput stops growing by >= 5%) are logged and written to ``<--csv prefix>_steps.json``.
``--require-shed`` also fails the run when the service never shed (give enough users to pass
EMOTION_MAX_INFLIGHT_REQUESTS, default 256).

    locust -f loadtests/step_load.py -H http://127.0.0.1:8000 --headless --step-users 32 --step-seconds 15 \
        --max-users 384 --require-shed --csv reports/loadtests/step_load --html reports/loadtests/step_load.html
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from locust import LoadTestShape, events
from locust.env import Environment

from loadtests import single_face
from loadtests.base import SHED_SUFFIX, on

logger = logging.getLogger(__name__)


@on(events.init_command_line_parser)
def _add_arguments(parser: Any) -> None:
    parser.add_argument("--step-users", type=int, default=16, help="users added per step")
    parser.add_argument("--step-seconds", type=float, default=15.0, help="seconds each step lasts")
    parser.add_argument(
        "--step-requests", type=int, default=0, help="instead: a step lasts until this many more requests are answered"
    )
    parser.add_argument(
        "--step-timeout", type=float, default=300.0, help="with --step-requests: a step still short after this many "
        "seconds ends the run, as a failure (a hang guard)",
    )  # fmt: skip
    parser.add_argument("--max-users", type=int, default=320, help="stop after the step that reaches this")
    parser.add_argument("--require-shed", action="store_true", help="fail unless at least one request was shed")
    parser.add_argument("--ignore-retry-after", action="store_true", help="retry at once after a 503")


class StepLoadUser(single_face.SingleFaceUser):
    def on_start(self) -> None:
        super().on_start()
        self.honour_retry_after = not getattr(self.environment.parsed_options, "ignore_retry_after", False)


@dataclass
class Step:
    users: int
    requests_per_s: float
    shed_per_s: float
    failures: int
    p95_ms: float | None


@dataclass
class _Totals:
    time: float
    requests: int
    shed: int
    failures: int


class StepLoadShape(LoadTestShape):
    steps: list[Step]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.steps = []
        self.stalled = False  # --step-requests: a step did not get its requests within --step-timeout
        self._stage = -1
        self._stage_began = (0.0, 0)  # (run time, requests answered) when the current step began
        self._last: _Totals | None = None

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options if self.runner else None
        step_users = int(getattr(options, "step_users", 16))
        max_users = int(getattr(options, "max_users", 320))
        run_time = self.elapsed()
        stage = self._next_stage(options, run_time)
        if stage is None:
            return None
        if stage != self._stage:
            self._close_step(run_time, step_users * max(self._stage + 1, 1))
            self._stage = stage
            self._stage_began = (run_time, self._answered())
        users = step_users * (stage + 1)
        if users > max_users:
            return None
        return users, float(step_users)

    def _next_stage(self, options: Any, run_time: float) -> int | None:
        """The step to be in now (by time, or by requests answered); None when a step stalled."""
        step_requests = int(getattr(options, "step_requests", 0) or 0)
        if not step_requests:
            return int(run_time // float(getattr(options, "step_seconds", 15.0)))
        began_at, answered_before = self._stage_began
        if self._stage < 0 or self._answered() - answered_before >= step_requests:
            return self._stage + 1
        timeout = float(getattr(options, "step_timeout", 300.0))
        if run_time - began_at > timeout:
            logger.error("step %d: fewer than %d requests answered in %g s (--step-timeout)",
                         self._stage + 1, step_requests, timeout)  # fmt: skip
            self.stalled = True
            return None
        return self._stage

    def _answered(self) -> int:
        return self.runner.stats.total.num_requests if self.runner is not None else 0

    def elapsed(self) -> float:
        return time.perf_counter() - float(self.start_time)

    def _close_step(self, now: float, users: int) -> None:
        if self.runner is None:
            return
        stats = self.runner.stats
        shed = sum(e.num_requests for (name, _), e in stats.entries.items() if name.endswith(SHED_SUFFIX))
        totals = _Totals(now, stats.total.num_requests, shed, stats.total.num_failures)
        last, self._last = self._last, totals
        if last is None or now <= last.time:
            return
        span = now - last.time
        p95 = stats.total.get_current_response_time_percentile(0.95)
        self.steps.append(
            Step(
                users=users,
                requests_per_s=round((totals.requests - last.requests) / span, 1),
                shed_per_s=round((totals.shed - last.shed) / span, 1),
                failures=totals.failures - last.failures,
                p95_ms=p95,
            )
        )


def saturation(steps: list[Step], growth: float = 1.05) -> Step | None:
    """The first step whose throughput (excluding shed) did not grow by ``growth`` over the previous step."""
    for prev, step in itertools.pairwise(steps):
        if step.requests_per_s - step.shed_per_s < growth * (prev.requests_per_s - prev.shed_per_s):
            return prev
    return None


@on(events.quitting)
def _report(environment: Environment, **_kwargs: Any) -> None:
    shape = environment.shape_class
    if not isinstance(shape, StepLoadShape) or environment.runner is None:
        return
    steps, sat = shape.steps, saturation(shape.steps)
    for step in steps:
        logger.info("step %s", asdict(step))
    shed_total = sum(
        e.num_requests for (name, _), e in environment.runner.stats.entries.items() if name.endswith(SHED_SUFFIX)
    )
    logger.info("saturation: %s; shed requests: %d", asdict(sat) if sat else "not reached", shed_total)
    options = environment.parsed_options
    if options is not None and getattr(options, "require_shed", False) and shed_total == 0:
        logger.error("--require-shed: the service never answered 503 + Retry-After")
        environment.process_exit_code = 1
    if shape.stalled:
        environment.process_exit_code = 1
    prefix = getattr(options, "csv_prefix", None)
    if prefix:
        summary = {"steps": [asdict(s) for s in steps], "saturation": asdict(sat) if sat else None, "shed": shed_total}
        Path(f"{prefix}_steps.json").write_text(json.dumps(summary, indent=2) + "\n")
