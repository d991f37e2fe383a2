"""WS /v1/stream: the client sends encoded frames as binary messages; one JSON reply per frame, in order.

Replies: ``{"index", "width", "height", "faces": [...], "latency_ms"}``, ``{"index", "dropped": true}`` (the frame
waited while newer ones arrived: drop-oldest, serve.core.streaming) or ``{"index", "error": {code, message}}``
(a malformed frame; the stream goes on). A text message ``end`` asks the server to answer what it has and close.
Query ``?track=false`` turns off track ids (``track_id``) and the smoothed label (``smoothed_label``, over the
track's readable frames only: an unreadable face, ``"label": null``, adds nothing to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import APIRouter, WebSocket

from serve.core.frames import face_records
from serve.core.streaming import Reply, StreamSession
from serve.core.tracking import FaceTracker, track_faces
from serve.errors import BadRequest, ErrorInfo, PayloadTooLarge, ServiceError, from_info
from serve.http.auth import check_api_key, presented_key
from serve.http.state import get_state

router = APIRouter(tags=["frames"])
logger = logging.getLogger("emotion.stream")
ROUTE = "/v1/stream"


@router.websocket(ROUTE)
async def stream(websocket: WebSocket, track: bool = True) -> None:
    state = get_state(websocket)
    try:
        if state.settings.auth_enabled:
            check_api_key(presented_key(websocket.headers), state.key_digests)
    except ServiceError as exc:
        await websocket.close(code=1008, reason=exc.message[:120])
        return
    await websocket.accept()
    contract, limit, metrics = state.contract, state.settings.max_body_bytes, state.metrics
    tracker = FaceTracker() if track else None

    async def analyze(data: bytes) -> Reply:
        if not data:
            raise BadRequest("send each frame as a non-empty binary message holding a JPEG, PNG or WebP image")
        if len(data) > limit:
            raise PayloadTooLarge(f"the frame is {len(data)} bytes; the limit is {limit}")
        result = await state.pipeline.analyze(data)
        if isinstance(result, ErrorInfo):
            raise from_info(result)
        return {"width": result.width, "height": result.height, "faces": face_records(result, contract)}

    def on_reply(reply: Reply) -> None:
        outcome = "dropped" if reply.get("dropped") else reply["error"]["code"] if "error" in reply else "ok"
        metrics.frames.inc(tags={"route": ROUTE, "outcome": outcome})
        if "faces" in reply:
            metrics.faces.observe(len(reply["faces"]), tags={"route": ROUTE})
            if tracker is not None:
                track_faces(tracker, reply["faces"], contract.answer_labels)

    session = StreamSession(
        analyze, websocket.send_json, max_pending=state.settings.stream_max_pending,
        concurrency=state.settings.stream_concurrency, on_reply=on_reply,
    )  # fmt: skip
    closed = asyncio.Event()
    sender = asyncio.create_task(session.send_replies(closed))
    state.open_streams += 1
    metrics.open_streams.set(state.open_streams)
    graceful = False
    try:
        while not sender.done():
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            if message.get("text") == "end":
                graceful = True
                break
            await session.push(message.get("bytes") or b"")
    except Exception as exc:  # a broken connection: nothing more can be sent
        logger.info("stream ended: %s", type(exc).__name__)
    finally:
        closed.set()
        if graceful:
            with contextlib.suppress(Exception):
                await sender
                await websocket.close(code=1000)
        sender.cancel()
        await session.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        state.open_streams -= 1
        metrics.open_streams.set(state.open_streams)
        metrics.stream_dropped.observe(session.dropped)
