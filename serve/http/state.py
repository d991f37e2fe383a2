"""What the HTTP routes share: the pipeline protocol and the per-replica service state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from starlette.requests import HTTPConnection

from models.contract import ModelContract
from serve.core.admission import Admission
from serve.core.frames import FrameFaces
from serve.core.inference import FaceScores
from serve.errors import ErrorInfo
from serve.runtime.metrics import IngressMetrics
from serve.runtime.settings import Settings


class Pipeline(Protocol):
    """What the routes need from the deployment graph: the Ingress deployment in Serve, in-process fakes in tests."""

    async def classify(self, images: list[bytes]) -> Sequence[FaceScores | np.ndarray | ErrorInfo]:
        """FaceScores (probabilities in model label order + the unreadable verdict) or an ErrorInfo per image, in
        input order. A bare float32 array is a face's probabilities with no verdict (readable), as simple fakes
        return them."""
        ...

    async def analyze(self, frame: bytes) -> FrameFaces | ErrorInfo:
        """Every face of one frame with its probabilities, or an ErrorInfo for a bad frame."""
        ...

    async def ready(self) -> bool:
        """True once the model is loaded and its warm-up inference passed."""
        ...


@dataclass
class ServiceState:
    """Per-replica state; routes read it with ``get_state(request)``."""

    pipeline: Pipeline
    settings: Settings
    contract: ModelContract
    model_metrics: dict[str, Any] | None
    metrics: IngressMetrics
    key_digests: tuple[str, ...] = ()
    # Serve's proxy already puts X-Request-ID (the client's, or its own) on every response it forwards.
    echo_request_id: bool = True
    ongoing: int = 0
    open_streams: int = 0
    # The ingress's admission guard: the HTTP middleware sheds /v1/ requests before reading their bodies.
    admission: Admission | None = None

    @property
    def model_ref(self) -> dict[str, str]:
        return {"name": self.contract.name, "version": self.contract.version}


def get_state(conn: HTTPConnection) -> ServiceState:
    """The ServiceState of the app serving this request or WebSocket."""
    state: ServiceState = conn.app.state.service
    return state


def request_id(conn: HTTPConnection) -> str:
    rid: str | None = getattr(conn.state, "request_id", None)
    return rid or "-"
