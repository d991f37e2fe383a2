"""Health, readiness and model information."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serve.errors import NotReady
from serve.http.schemas import ErrorResponse, Health, ModelInfo
from serve.http.state import get_state

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=Health, summary="Liveness: the HTTP server answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: the model is loaded and its warm-up inference passed",
    responses={503: {"model": ErrorResponse, "description": "not_ready"}},
)
async def readyz(request: Request) -> dict[str, str]:
    try:
        ready = await get_state(request).pipeline.ready()
    except Exception:
        ready = False
    if not ready:
        raise NotReady("the model is not loaded or has not passed warm-up yet")
    return {"status": "ready"}


@router.get("/v1/model", response_model=ModelInfo, summary="The served model: labels, input contract, metrics")
async def model_info(request: Request) -> JSONResponse:
    state = get_state(request)
    contract = state.contract.to_dict()
    body: dict[str, Any] = {
        "name": state.contract.name,
        "version": state.contract.version,
        "labels": list(state.contract.labels),
        "answer_labels": list(state.contract.answer_labels),
        "answer": contract.get("answer"),
        "input": {"tensor": contract["input"], "preprocessing": contract["preprocessing"]},
        "metrics": state.model_metrics,
    }
    return JSONResponse(body)
