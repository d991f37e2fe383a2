"""POST /v1/analyze: every face of one camera frame with its box, detection score, emotion and probabilities."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from serve.core.frames import FramePipeline, face_records
from serve.errors import ErrorInfo, NotFound, from_info
from serve.http.bodies import read_body, single_image
from serve.http.routes.classify import _ERRORS, _SINGLE_BODY
from serve.http.schemas import ModelRef
from serve.http.state import ServiceState, get_state, request_id

router = APIRouter(prefix="/v1", tags=["frames"])
ROUTE = "/v1/analyze"


class FaceResult(BaseModel):
    box: list[float] = Field(description="[x, y, w, h] in pixels of the original (EXIF-upright) frame.")
    score: float = Field(description="Detection confidence (CenterFace heatmap peak).")
    label: str
    probabilities: dict[str, float]
    track_id: int | None = Field(None, description="Stream only: stable id of this face across frames.")


class AnalyzeResponse(BaseModel):
    request_id: str
    model: ModelRef
    width: int
    height: int
    faces: list[FaceResult] = Field(description="Every face found, best detection score first; [] for none.")


def frame_pipeline(state: ServiceState) -> FramePipeline:
    if not isinstance(state.pipeline, FramePipeline):
        raise NotFound("frame analysis is not available in this deployment")
    return state.pipeline


@router.post(
    "/analyze",
    response_model=AnalyzeResponse,
    responses=_ERRORS,
    openapi_extra=_SINGLE_BODY,
    summary="Find every face of a frame and classify each (raw image body or multipart field `file`)",
)
async def analyze(request: Request) -> JSONResponse:
    state = get_state(request)
    pipeline = frame_pipeline(state)
    body = await read_body(request, state.settings.max_body_bytes)
    image = single_image(body, request.headers.get("content-type"))
    result = await pipeline.analyze(image)
    if isinstance(result, ErrorInfo):
        pipeline.frame_metrics.frames.inc(tags={"route": ROUTE, "outcome": result.code})
        raise from_info(result)
    pipeline.frame_metrics.frames.inc(tags={"route": ROUTE, "outcome": "ok"})
    pipeline.frame_metrics.faces.observe(len(result.boxes), tags={"route": ROUTE})
    body_out: dict[str, Any] = {
        "request_id": request_id(request), "model": state.model_ref, "width": result.width, "height": result.height,
        "faces": face_records(result, state.contract.labels),
    }  # fmt: skip
    return JSONResponse(body_out)
