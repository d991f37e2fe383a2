"""The abstract locust user every HTTP scenario derives from: posts a payload and validates the answer.

Outcomes per request: 200 with a body that passes the scenario's check -> success; 503 with ``Retry-After`` ->
success under the name ``<name> [shed]`` (load shedding is the intended answer to overload); anything else
(timeouts, connection errors, other statuses, invalid bodies) -> failure.

Options every scenario gets (single-process runs):

* ``--requests-per-user N``: each user sends N requests (``video_stream.py``: N frames) and stops; locust stops
  (headless: quits) once every user has, and exits 1 when the run ended before that (``-t`` reached, Ctrl+C).
  A run measured by count does not depend on how fast the machine is; ``-t`` then only guards against a hang.
* ``--request-timeout S`` (10 s): a request, or a stream frame's answer, slower than this is a timeout failure.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from weakref import WeakKeyDictionary

import gevent
from locust import FastHttpUser, events
from locust.env import Environment
from locust.exception import StopUser

from loadtests.checks import InvalidResponse, check_error
from models.contract import DEFAULT_MODEL_DIR, ModelContract, load_contract

SHED_SUFFIX = " [shed]"
DEFAULT_REQUEST_TIMEOUT_S = 10.0
F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger(__name__)


def on(event: Any) -> Callable[[F], F]:
    """``@on(events.quitting)``: a typed stand-in for locust's untyped ``add_listener`` decorator."""

    def register(listener: F) -> F:
        event.add_listener(listener)
        return listener

    return register


@on(events.init_command_line_parser)
def _add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--requests-per-user", type=int, default=0, metavar="N",
        help="each user sends N requests (video: N frames), then stops; locust stops once every user has "
        "and exits 1 if the run ended first (-t is then only a hang guard); 0 = no bound (default)",
    )  # fmt: skip
    parser.add_argument(
        "--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S, metavar="SECONDS",
        help="a request (or a stream frame's answer) slower than this counts as a timeout failure",
    )  # fmt: skip


def request_timeout(environment: Environment) -> float:
    return float(getattr(environment.parsed_options, "request_timeout", None) or DEFAULT_REQUEST_TIMEOUT_S)


class _Run:
    """One run's ``--requests-per-user`` and its users that stopped by themselves (``completed``: whole budget)."""

    def __init__(self, environment: Environment) -> None:
        wanted = max(int(getattr(environment.parsed_options, "requests_per_user", 0) or 0), 0)
        if wanted and environment.shape_class is not None:
            logger.warning("--requests-per-user is ignored: the load shape %s decides the users",
                           type(environment.shape_class).__name__)  # fmt: skip
            wanted = 0
        self.budget = wanted
        self.stopped = self.completed = self.expected = 0


_runs: WeakKeyDictionary[Environment, _Run] = WeakKeyDictionary()


def _run(environment: Environment) -> _Run:
    if environment not in _runs:
        _runs[environment] = _Run(environment)
    return _runs[environment]


@on(events.test_start)
def _new_run(environment: Environment, **_kwargs: Any) -> None:
    _runs[environment] = _Run(environment)


def requests_per_user(environment: Environment) -> int:
    """``--requests-per-user``, or 0 (no bound; always 0 under a load shape such as step_load.py's)."""
    return _run(environment).budget


def user_finished(environment: Environment, completed: bool) -> None:
    """A budgeted user stops by itself (``completed``: it sent all its requests); once every user of the run has,
    stop the run: quit when headless, so that the stats are written and the exit code says what happened."""
    progress = _run(environment)
    progress.stopped += 1
    progress.completed += completed
    runner = environment.runner
    if runner is None:  # run_single_user: the StopUser that follows ends it
        return
    progress.expected = max(progress.expected, runner.target_user_count)
    if progress.stopped >= progress.expected:
        gevent.spawn(_end_run, environment, progress)  # not from this user's greenlet: stopping kills it


def _end_run(environment: Environment, progress: _Run) -> None:
    runner = environment.runner
    if runner is None:
        return
    logger.info("%d of %d users sent their %d requests: stopping", progress.completed, progress.expected,
                progress.budget)  # fmt: skip
    options = environment.parsed_options
    if options is None or getattr(options, "headless", False):
        runner.quit()
    else:
        runner.stop()


@on(events.quitting)
def _check_budget(environment: Environment, **_kwargs: Any) -> None:
    progress = _runs.get(environment)
    if progress is None or not progress.budget or environment.runner is None:
        return
    expected = max(progress.expected, environment.runner.target_user_count)
    if progress.completed < expected:
        logger.error("--requests-per-user %d: only %d of %d users sent all their requests before the run ended",
                     progress.budget, progress.completed, expected)  # fmt: skip
        environment.process_exit_code = 1


class RequestBudget:
    """Mixin for users: ``count_request()`` after each request; at ``--requests-per-user`` the user stops."""

    environment: Any  # set by locust.User.__init__ (untyped there)
    _requests_sent = 0

    def budget_left(self) -> int | None:
        """Requests this user may still send, or None when unbounded."""
        budget = requests_per_user(self.environment)
        return max(budget - self._requests_sent, 0) if budget else None

    def count_request(self) -> None:
        """Count one request sent; raises StopUser (after ``finish``) when it was this user's last one."""
        self._requests_sent += 1
        if self.budget_left() == 0:
            self.finish(completed=True)

    def finish(self, completed: bool) -> NoReturn:
        """Stop this user now (raises StopUser); ``completed``: it sent its whole budget. Unbounded runs too."""
        if requests_per_user(self.environment):
            user_finished(self.environment, completed)
        raise StopUser()


def model_dir() -> Path:
    """The model the service is configured with: ``EMOTION_MODEL_DIR``, else the bundled model."""
    return Path(os.environ.get("EMOTION_MODEL_DIR", DEFAULT_MODEL_DIR))


@cache
def local_contract() -> ModelContract:
    return load_contract(model_dir(), require_onnx=False)


class EmotionUser(RequestBudget, FastHttpUser):
    """Shared request + validation logic. Subclasses add ``@task`` methods that call ``post_checked``."""

    abstract = True
    network_timeout = DEFAULT_REQUEST_TIMEOUT_S  # slower is a timeout: a failure, never a shed (--request-timeout)
    connection_timeout = 5.0
    labels: tuple[str, ...] = ()
    same_model = False  # the service runs the model in model_dir(): in-process answers are comparable
    honour_retry_after = False  # sleep for Retry-After (capped at 5 s) after a shed answer, as polite clients do

    def __init__(self, environment: Environment) -> None:
        self.network_timeout = request_timeout(environment)  # read by FastHttpUser.__init__ for its client
        super().__init__(environment)

    def on_start(self) -> None:
        contract = local_contract()
        self.labels = contract.answer_labels
        info: dict[str, Any] = {}

        def read_model(body: Any) -> None:
            info.update(body)

        self.request_checked("GET", "/v1/model", None, "", read_model)
        served = info.get("answer_labels", info.get("labels"))
        if isinstance(served, list) and served:
            self.labels = tuple(str(label) for label in served)
        self.same_model = (info.get("name"), info.get("version")) == (contract.name, contract.version)

    def post_checked(self, path: str, body: bytes, content_type: str, check: Callable[[Any], object]) -> None:
        """POST ``body``; ``check(parsed_json)`` raises ``InvalidResponse`` (or any ValueError) for a wrong answer.

        Counts towards ``--requests-per-user``: after this user's last request it raises StopUser."""
        self.request_checked("POST", path, body, content_type, check)
        self.count_request()

    def request_checked(
        self, method: str, path: str, body: bytes | None, content_type: str, check: Callable[[Any], object]
    ) -> None:
        name = f"{method} {path}"
        headers = {"content-type": content_type} if content_type else {}
        # locust's annotation omits bytes, which its docstring and geventhttpclient accept
        request = self.client.request(method, path, data=body, headers=headers, name=name, catch_response=True)  # type: ignore[arg-type]
        with request as resp:
            if not resp.status_code:  # no HTTP answer: timeout, refused or reset connection
                error = getattr(resp, "error", None) or resp.request_meta.get("exception")
                resp.failure(f"{type(error).__name__}: {error}")
            elif resp.status_code == 503 and (retry_after := resp.headers.get("retry-after")) is not None:
                resp.request_meta["name"] = name + SHED_SUFFIX
                resp.success()
                if self.honour_retry_after:
                    gevent.sleep(min(_seconds(retry_after), 5.0))
            elif resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code} {_error_code(resp.text)}")
            else:
                try:
                    check(resp.json())
                except (InvalidResponse, ValueError, TypeError, AttributeError) as exc:
                    resp.failure(f"invalid response: {exc}")
                else:
                    resp.success()


def _seconds(retry_after: str) -> float:
    try:
        return max(0.0, float(retry_after))
    except ValueError:  # an HTTP date: not worth parsing for a load test
        return 1.0


def _error_code(text: str | None) -> str:
    import json

    try:
        return check_error(json.loads(text or ""))
    except (InvalidResponse, ValueError):
        return "(no error body)"
