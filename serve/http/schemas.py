"""Response schemas for the OpenAPI page. Handlers build plain dicts of the same shape (no per-request validation)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ModelRef(BaseModel):
    name: str
    version: str


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_image.")
    message: str = Field(description="Human-readable explanation.")


class ErrorResponse(BaseModel):
    error: ErrorDetail
    request_id: str


class ClassifyResponse(BaseModel):
    request_id: str
    label: str = Field(description="The most probable emotion.")
    probabilities: dict[str, float] = Field(description="Probability of every label in the model's label order.")
    model: ModelRef


class BatchItem(BaseModel):
    index: int = Field(description="Position of the image in the request.")
    label: str | None = None
    probabilities: dict[str, float] | None = None
    error: ErrorDetail | None = Field(None, description="Set instead of label/probabilities when this image failed.")


class BatchResponse(BaseModel):
    request_id: str
    model: ModelRef
    results: list[BatchItem] = Field(description="One entry per image, in input order.")


class ModelInfo(BaseModel):
    name: str
    version: str
    labels: list[str]
    input: dict[str, Any] = Field(description="Input tensor and preprocessing contract (config.json).")
    metrics: dict[str, Any] | None = Field(description="The bundled model's evaluation report (metrics.json).")


class Health(BaseModel):
    status: str
