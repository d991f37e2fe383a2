"""GET /demo: the browser demo page (pick an image -> /v1/analyze, or the webcam -> WS /v1/stream)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(tags=["demo"], include_in_schema=False)
STATIC = Path(__file__).resolve().parents[1] / "static"


@router.get("/demo")
async def demo_page() -> FileResponse:
    return FileResponse(STATIC / "demo.html", media_type="text/html")


@router.get("/demo/demo.js")
async def demo_script() -> FileResponse:
    return FileResponse(STATIC / "demo.js", media_type="text/javascript")
