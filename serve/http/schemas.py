"""The OpenAPI contract: response schemas and request bodies. Handlers build plain dicts of the same shape (no
per-request validation)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from serve.core.imaging import MEDIA_TYPES
from serve.core.quality import UnreadableReason
from serve.http.bodies import MULTIPART


class ModelRef(BaseModel):
    name: str
    version: str


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_image.")
    message: str = Field(description="Human-readable explanation.")


class ErrorResponse(BaseModel):
    error: ErrorDetail
    request_id: str


class Emotion(BaseModel):
    """The fields of every answer about one face (``serve.core.inference.Prediction``)."""

    label: str | None = Field(
        description="The most probable answer label (one of the keys of `probabilities`); null when `readable` is "
        "false: the service claims no emotion for a face it cannot read."
    )
    probabilities: dict[str, float] = Field(
        description="Probability of every answer label, in answer order, summing to 1: the model's labels, or, when "
        "its config.json groups them, each group's summed probability and `other` (the labels in no group). Given "
        "for unreadable faces too, as what the model computed, not as an answer."
    )
    model_probabilities: dict[str, float] | None = Field(
        None,
        description="Only when config.json groups labels: the probability of every model label, in model order "
        "(absent otherwise).",
    )
    readable: bool = Field(description="False when the face is too small, blurred or barely detected.")
    unreadable_reason: UnreadableReason | None = Field(
        description="Why the face cannot be read (the first failing rule: too_small, blurred, weak_detection); "
        "null when readable."
    )


class ClassifyResponse(Emotion):
    request_id: str
    model: ModelRef


class BatchItem(BaseModel):
    index: int = Field(description="Position of the image in the request.")
    label: str | None = Field(None, description="As in /v1/classify; also null when this image failed.")
    probabilities: dict[str, float] | None = None
    model_probabilities: dict[str, float] | None = None
    readable: bool | None = None
    unreadable_reason: UnreadableReason | None = None
    error: ErrorDetail | None = Field(None, description="Set instead of the emotion fields when this image failed.")


class BatchResponse(BaseModel):
    request_id: str
    model: ModelRef
    results: list[BatchItem] = Field(description="One entry per image, in input order.")


class ModelInfo(BaseModel):
    name: str
    version: str
    labels: list[str] = Field(description="The model's labels, in model order (`model_probabilities` keys).")
    answer_labels: list[str] = Field(
        description="The labels the service answers in (`label`, `probabilities` keys): `labels` unless config.json "
        "groups them, then the groups and `other`."
    )
    answer: dict[str, Any] | None = Field(
        description='config.json\'s grouping {"groups": {answer label: [model labels]}, "other": name}, or null.'
    )
    input: dict[str, Any] = Field(description="Input tensor and preprocessing contract (config.json).")
    metrics: dict[str, Any] | None = Field(description="The bundled model's evaluation report (metrics.json).")


class Health(BaseModel):
    status: str


class FaceResult(Emotion):
    box: list[float] = Field(description="[x, y, w, h] in pixels of the original (EXIF-upright) frame.")
    score: float = Field(description="Detection confidence (CenterFace heatmap peak).")
    track_id: int | None = Field(None, description="Stream only: stable id of this face across frames.")
    smoothed_label: str | None = Field(
        None,
        description="Stream only: argmax of the mean probabilities over the track's last readable frames (up to "
        "5); null while the track has no readable frame.",
    )


class AnalyzeResponse(BaseModel):
    request_id: str
    model: ModelRef
    width: int
    height: int
    faces: list[FaceResult] = Field(description="Every face found, best detection score first; [] for none.")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {  # every route's error answers
    400: {"model": ErrorResponse, "description": "empty_body, bad_request"},
    401: {"model": ErrorResponse, "description": "unauthorized (no API key)"},
    403: {"model": ErrorResponse, "description": "forbidden (wrong API key)"},
    413: {"model": ErrorResponse, "description": "payload_too_large, image_too_large, too_many_images"},
    415: {"model": ErrorResponse, "description": "unsupported_media_type"},
    422: {"model": ErrorResponse, "description": "invalid_image, missing_field, validation_error"},
    503: {"model": ErrorResponse, "description": "overloaded (with Retry-After), not_ready"},
}


def _multipart(field: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"schema": {"type": "object", "required": [field], "properties": {field: schema}}}


_FILE = {"type": "string", "format": "binary"}
_RAW_IMAGES = {kind: {"schema": _FILE} for kind in MEDIA_TYPES if kind != "image/jpg"}
SINGLE_IMAGE_BODY = {
    "requestBody": {"required": True, "content": {**_RAW_IMAGES, MULTIPART: _multipart("file", _FILE)}}
}
BATCH_BODY = {
    "requestBody": {"required": True, "content": {MULTIPART: _multipart("files", {"type": "array", "items": _FILE})}}
}
