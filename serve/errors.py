"""A flat tree of client-facing errors, each with a stable machine-readable code and one HTTP status.

Pure module (no Ray, no FastAPI): the ingress maps ``ServiceError`` to a response in one place
(``serve.deployments.ingress``), and replicas return ``ErrorInfo`` values for per-image failures instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class ErrorInfo:
    """A per-item failure that crosses a handle: small, picklable, no traceback."""

    code: str
    message: str


class ServiceError(Exception):
    """Base of every error a client may see."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def info(self) -> ErrorInfo:
        return ErrorInfo(self.code, self.message)


class EmptyBody(ServiceError):
    """The request carried no bytes where an image was expected."""

    code, status = "empty_body", 400


class BadRequest(ServiceError):
    """The request is malformed (e.g. a broken multipart body)."""

    code, status = "bad_request", 400


class InvalidImage(ServiceError):
    """The bytes are not a readable JPEG/PNG/WebP image (random, truncated or corrupt)."""

    code, status = "invalid_image", 422


class UnsupportedMediaType(ServiceError):
    """The Content-Type is not one the route accepts."""

    code, status = "unsupported_media_type", 415


class ImageTooLarge(ServiceError):
    """The image's width x height exceeds the pixel limit (also catches decompression bombs)."""

    code, status = "image_too_large", 413


class PayloadTooLarge(ServiceError):
    """The request body exceeds the byte limit."""

    code, status = "payload_too_large", 413


class TooManyImages(ServiceError):
    """A batch request carries more images than allowed."""

    code, status = "too_many_images", 413


class MissingField(ServiceError):
    """A multipart body lacks the expected form field."""

    code, status = "missing_field", 422


class ValidationFailed(ServiceError):
    """A query/header/body parameter failed validation."""

    code, status = "validation_error", 422


class Unauthorized(ServiceError):
    """No API key was presented."""

    code, status = "unauthorized", 401


class Forbidden(ServiceError):
    """The API key presented is not valid."""

    code, status = "forbidden", 403


class NotFound(ServiceError):
    """No such route."""

    code, status = "not_found", 404


class MethodNotAllowed(ServiceError):
    """The route exists but not for this HTTP method."""

    code, status = "method_not_allowed", 405


class Overloaded(ServiceError):
    """The service is saturated (bounded queues are full); retry after the Retry-After delay."""

    code, status = "overloaded", 503


class NotReady(ServiceError):
    """The model is not loaded or its warm-up inference has not passed yet."""

    code, status = "not_ready", 503


class InternalError(ServiceError):
    """An unexpected failure; never caused by client input."""


ALL_ERRORS: tuple[type[ServiceError], ...] = (
    EmptyBody, BadRequest, InvalidImage, UnsupportedMediaType, ImageTooLarge, PayloadTooLarge, TooManyImages,
    MissingField, ValidationFailed, Unauthorized, Forbidden, NotFound, MethodNotAllowed, Overloaded, NotReady,
    InternalError,
)  # fmt: skip
_BY_CODE = {cls.code: cls for cls in ALL_ERRORS}
_BY_STATUS = {404: NotFound, 405: MethodNotAllowed, 401: Unauthorized, 403: Forbidden, 413: PayloadTooLarge}


def from_info(info: ErrorInfo) -> ServiceError:
    """Rebuild the exception for a per-item ErrorInfo (to find its HTTP status)."""
    return _BY_CODE.get(info.code, InternalError)(info.message)


def from_status(status: int, message: str) -> ServiceError:
    """The error for a framework-raised HTTP status (404 route, 405 method, ...)."""
    cls = _BY_STATUS.get(status, BadRequest if 400 <= status < 500 else InternalError)
    return cls(message)


def error_body(error: ServiceError, request_id: str) -> dict[str, object]:
    """The JSON body of every error response."""
    return {"error": {"code": error.code, "message": error.message}, "request_id": request_id}
