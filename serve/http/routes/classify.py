"""POST /v1/classify (one face) and POST /v1/classify/batch (many faces, results in input order)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serve.core.inference import FaceScores, answer
from serve.errors import ErrorInfo, from_info
from serve.http.bodies import many_images, read_body, read_single_image
from serve.http.schemas import BATCH_BODY, ERROR_RESPONSES, SINGLE_IMAGE_BODY, BatchResponse, ClassifyResponse
from serve.http.state import ServiceState, get_state, request_id

router = APIRouter(prefix="/v1", tags=["classify"])


def _result(state: ServiceState, item: FaceScores | np.ndarray) -> dict[str, Any]:
    scores = item if isinstance(item, FaceScores) else FaceScores(np.asarray(item))
    return answer(scores.probabilities, state.contract, scores.unreadable).to_json()


def _count(state: ServiceState, results: Sequence[FaceScores | np.ndarray | ErrorInfo]) -> None:
    # One counter update per outcome, not per image: each update costs tens of microseconds in Ray's metrics.
    outcomes = Counter(item.code if isinstance(item, ErrorInfo) else "ok" for item in results)
    for outcome, count in outcomes.items():
        state.metrics.images.inc(count, tags={"outcome": outcome})


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=SINGLE_IMAGE_BODY,
    summary="Classify one face image (raw image body or multipart field `file`)",
)
async def classify(request: Request) -> JSONResponse:
    state = get_state(request)
    image = await read_single_image(request, state.settings.max_body_bytes)
    (result,) = await state.pipeline.classify([image])
    _count(state, [result])
    if isinstance(result, ErrorInfo):
        raise from_info(result)
    return JSONResponse({"request_id": request_id(request), **_result(state, result), "model": state.model_ref})


@router.post(
    "/classify/batch",
    response_model=BatchResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=BATCH_BODY,
    summary="Classify many face images (repeated multipart field `files`); results in input order",
)
async def classify_batch(request: Request) -> JSONResponse:
    state = get_state(request)
    body = await read_body(request, state.settings.max_body_bytes)
    images = many_images(body, request.headers.get("content-type"), state.settings.max_images_per_request)
    results = await state.pipeline.classify(images)
    _count(state, results)
    items: list[dict[str, Any]] = [
        {"index": i, "error": {"code": r.code, "message": r.message}}
        if isinstance(r, ErrorInfo)
        else {"index": i, **_result(state, r)}
        for i, r in enumerate(results)
    ]
    return JSONResponse({"request_id": request_id(request), "model": state.model_ref, "results": items})
