"""The abstract locust user every HTTP scenario derives from: posts a payload and validates the answer.

Outcomes per request: 200 with a body that passes the scenario's check -> success; 503 with ``Retry-After`` ->
success under the name ``<name> [shed]`` (load shedding is the intended answer to overload); anything else
(timeouts, connection errors, other statuses, invalid bodies) -> failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import gevent
from locust import FastHttpUser

from loadtests.checks import InvalidResponse, check_error
from models.contract import DEFAULT_MODEL_DIR, ModelContract, load_contract

SHED_SUFFIX = " [shed]"
F = TypeVar("F", bound=Callable[..., Any])


def on(event: Any) -> Callable[[F], F]:
    """``@on(events.quitting)``: a typed stand-in for locust's untyped ``add_listener`` decorator."""

    def register(listener: F) -> F:
        event.add_listener(listener)
        return listener

    return register


def model_dir() -> Path:
    """The model the service is configured with: ``EMOTION_MODEL_DIR``, else the bundled model."""
    return Path(os.environ.get("EMOTION_MODEL_DIR", DEFAULT_MODEL_DIR))


@cache
def local_contract() -> ModelContract:
    return load_contract(model_dir(), require_onnx=False)


class EmotionUser(FastHttpUser):
    """Shared request + validation logic. Subclasses add ``@task`` methods that call ``post_checked``."""

    abstract = True
    network_timeout = 10.0  # a request slower than this is a timeout: a failure, never a shed
    connection_timeout = 5.0
    labels: tuple[str, ...] = ()
    same_model = False  # the service runs the model in model_dir(): in-process answers are comparable
    honour_retry_after = False  # sleep for Retry-After (capped at 5 s) after a shed answer, as polite clients do

    def on_start(self) -> None:
        contract = local_contract()
        self.labels = contract.labels
        info: dict[str, Any] = {}

        def read_model(body: Any) -> None:
            info.update(body)

        self.request_checked("GET", "/v1/model", None, "", read_model)
        served = info.get("labels")
        if isinstance(served, list) and served:
            self.labels = tuple(str(label) for label in served)
        self.same_model = (info.get("name"), info.get("version")) == (contract.name, contract.version)

    def post_checked(self, path: str, body: bytes, content_type: str, check: Callable[[Any], object]) -> None:
        """POST ``body``; ``check(parsed_json)`` raises ``InvalidResponse`` (or any ValueError) for a wrong answer."""
        self.request_checked("POST", path, body, content_type, check)

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
