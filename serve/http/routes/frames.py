"""POST /v1/analyze: every face of one camera frame with its box, detection score, emotion and probabilities (or
``"readable": false`` and why, for a face the model cannot read)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serve.core.frames import face_records
from serve.errors import ErrorInfo, from_info
from serve.http.bodies import read_single_image
from serve.http.schemas import ERROR_RESPONSES, SINGLE_IMAGE_BODY, AnalyzeResponse
from serve.http.state import get_state, request_id

router = APIRouter(prefix="/v1", tags=["frames"])
ROUTE = "/v1/analyze"


@router.post(
    "/analyze",
    response_model=AnalyzeResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=SINGLE_IMAGE_BODY,
    summary="Find every face of a frame and classify each (raw image body or multipart field `file`)",
)
async def analyze(request: Request) -> JSONResponse:
    state = get_state(request)
    image = await read_single_image(request, state.settings.max_body_bytes)
    result = await state.pipeline.analyze(image)
    if isinstance(result, ErrorInfo):
        state.metrics.frames.inc(tags={"route": ROUTE, "outcome": result.code})
        raise from_info(result)
    state.metrics.frames.inc(tags={"route": ROUTE, "outcome": "ok"})
    state.metrics.faces.observe(len(result.boxes), tags={"route": ROUTE})
    body_out: dict[str, Any] = {
        "request_id": request_id(request), "model": state.model_ref, "width": result.width, "height": result.height,
        "faces": face_records(result, state.contract),
    }  # fmt: skip
    return JSONResponse(body_out)
