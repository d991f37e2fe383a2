"""The FastAPI application: middleware (request id, auth, load shedding, metrics), error mapping, routers.

``create_app(state)`` is plain FastAPI: the Serve ingress builds it inside its replica with a ``Pipeline`` backed by
deployment handles, and unit tests build it with an in-process one. New routes (``/v1/analyze``, ``/v1/stream``)
are new modules under ``serve/http/routes/`` added to ``ROUTERS``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve import errors
from serve.http.auth import check_api_key, presented_key
from serve.http.routes import classify, demo, frames, stream, system
from serve.http.state import ServiceState, request_id

logger = logging.getLogger("emotion.ingress")

ROUTERS = (system.router, classify.router, frames.router, stream.router, demo.router)
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client left first; only ever a metric label
_PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"})


def error_response(error: errors.ServiceError, rid: str, state: ServiceState) -> JSONResponse:
    headers = {"X-Request-ID": rid} if state.echo_request_id else {}
    retry_after_s = state.settings.retry_after_s
    if error.status == 503:
        headers["Retry-After"] = str(retry_after_s)
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(errors.error_body(error, rid), status_code=error.status, headers=headers)


def create_app(state: ServiceState) -> FastAPI:
    """Build the HTTP application around a pipeline."""
    app = FastAPI(
        title="Emotion detection service",
        version="1",
        description="Classifies the emotion of face images. Errors are JSON `{error: {code, message}, request_id}`; "
        "see docs/api.md for every code.",
    )
    app.state.service = state
    for router in ROUTERS:
        app.include_router(router)
    _install_error_handlers(app, state)
    app.add_middleware(ServiceMiddleware, state=state)
    return app


def _install_error_handlers(app: FastAPI, state: ServiceState) -> None:
    async def on_service_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, errors.ServiceError)
        return error_response(exc, request_id(request), state)

    async def on_validation(request: Request, exc: Exception) -> Response:
        return error_response(errors.ValidationFailed(str(exc)[:500]), request_id(request), state)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(errors.from_status(exc.status_code, str(exc.detail)), request_id(request), state)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("request %s failed", request_id(request))
        return error_response(errors.InternalError("internal error"), request_id(request), state)

    app.add_exception_handler(errors.ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


class ServiceMiddleware:
    """Request id, auth, load shedding and metrics around every HTTP request (WebSockets pass through: the stream
    route checks its own key and admission).

    Pure ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware runs the app in a task group
    behind memory streams, a cost paid on every request of the single ingress event loop. A failure the app does
    not answer itself reaches ServerErrorMiddleware outside this one (the 500 handler) and is counted as 500."""

    def __init__(self, app: ASGIApp, state: ServiceState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state, settings = self.state, self.state.settings
        start = time.perf_counter()
        headers = Headers(scope=scope)
        client_id = headers.get("x-request-id", "")
        rid = client_id if _SANE_REQUEST_ID.match(client_id) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid  # what request.state.request_id reads
        status: int | None = None  # the response's, once it starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if state.echo_request_id:
                    MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        try:
            try:
                if settings.auth_enabled and scope["path"] not in _PUBLIC_PATHS:
                    check_api_key(presented_key(headers), state.key_digests)
                # Own bound on top of Serve's queues: shed load at once instead of letting latency grow.
                if state.ongoing >= settings.max_inflight_requests:
                    raise errors.Overloaded("the service is saturated; retry later")
                if state.admission is not None and scope["method"] == "POST" and scope["path"].startswith("/v1/"):
                    state.admission.check()  # cheap early 503: no routing, no body read
            except errors.ServiceError as exc:
                await error_response(exc, rid, state)(scope, receive, send_with_id)
                return
            # The ongoing gauge is re-set from this count every 2 s (Ingress: keep_gauges_exported); setting it
            # here too would cost two metric records per request.
            state.ongoing += 1
            try:
                await self.app(scope, receive, send_with_id)
            except asyncio.CancelledError:
                # The client went away before its answer started: not the service's error (an alert counts 5xx).
                status = status or CLIENT_CLOSED_REQUEST
                raise
            finally:
                state.ongoing -= 1
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            state.metrics.requests.inc(tags={"route": route, "status": str(status or 500)})
            state.metrics.latency.observe((time.perf_counter() - start) * 1000.0, tags={"route": route})
