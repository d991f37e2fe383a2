"""WS /v1/stream through the real FastAPI app: order, per-frame errors, tracking, disconnects (conftest.py)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.unit.serve.http.routes.conftest import jpeg


def test_stream_answers_every_frame_in_order_with_errors_for_bad_ones(frames_client: TestClient) -> None:
    frames = [jpeg(), b"not an image", jpeg((64, 48)), b""]
    with frames_client.websocket_connect("/v1/stream") as ws:
        for frame in frames:
            ws.send_bytes(frame)
        ws.send_text("end")
        replies = [ws.receive_json() for _ in frames]
    assert [r["index"] for r in replies] == [0, 1, 2, 3]
    assert replies[1]["error"]["code"] == "invalid_image"
    assert replies[3]["error"]["code"] == "bad_request"
    assert replies[0]["faces"][0]["track_id"] == 1 and replies[2]["faces"][0]["track_id"] == 1
    assert "latency_ms" in replies[0] and replies[2]["width"] == 64


def test_stream_without_tracking_and_after_an_abrupt_disconnect(frames_client: TestClient) -> None:
    with frames_client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(jpeg())
        ws.close()  # gone before its reply
    with frames_client.websocket_connect("/v1/stream?track=false") as ws:
        ws.send_bytes(jpeg())
        reply = ws.receive_json()
    assert reply["index"] == 0 and "track_id" not in reply["faces"][0]
    assert frames_client.get("/healthz").status_code == 200


def test_stream_refuses_a_frame_over_the_body_limit(frames_client: TestClient) -> None:
    with frames_client.websocket_connect("/v1/stream") as ws:
        ws.send_bytes(b"\xff" * 300_001)  # the fixture's max_body_bytes is 300,000
        ws.send_bytes(jpeg())
        ws.send_text("end")
        replies = [ws.receive_json(), ws.receive_json()]
    assert replies[0]["error"]["code"] == "payload_too_large" and replies[1]["faces"]


def test_a_burst_of_frames_far_over_the_bounds_is_answered_in_full(frames_client: TestClient) -> None:
    # More frames than pending + in flight + unsent replies (12 by default), sent before reading anything: every
    # frame still gets exactly one reply, in order, most of them drop-oldest answers.
    frame = jpeg()
    with frames_client.websocket_connect("/v1/stream?track=false") as ws:
        for _ in range(30):
            ws.send_bytes(frame)
        ws.send_text("end")
        replies = [ws.receive_json() for _ in range(30)]
    assert [r["index"] for r in replies] == list(range(30))
    assert all(r.get("dropped") or "faces" in r for r in replies)
