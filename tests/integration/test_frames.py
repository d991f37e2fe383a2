"""Frames and streams through the real Serve graph: detector recall via /v1/analyze, both clips over WS /v1/stream,
bad frames and abrupt disconnects, and ``emotion analyze-video --url``.

Nothing here depends on the machine's speed (conftest.py: no queueing-delay bound, hang-guard deadlines only)."""

from __future__ import annotations

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidHandshake

from models.data import default_data_dir
from serve.core.detection.boxes import greedy_match, iou_matrix
from tests.integration.conftest import API_KEY, HANG_GUARD_S, Service

pytestmark = [pytest.mark.integration, pytest.mark.data, pytest.mark.timeout(900)]
CLIPS = {"pexels_wolfgang_langer_expressions.mp4": 472, "facenet_pytorch_walking_crowd.mp4": 105}
BARS = {"widerface_val": 0.93, "ufdd_val": 0.80, "facemask": 0.80}


def _data(*parts: str) -> Path:
    path = default_data_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found (set EMOTION_DATA_DIR)")
    return path


def _ws_url(service: Service, query: str = "") -> str:
    return service.url.replace("http://", "ws://") + "/v1/stream" + query


def _jpeg_frames(clip: Path) -> list[bytes]:
    from client.video import read_frames

    _, _, frames = read_frames(clip)
    out = []
    for _, _, rgb in frames:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def stream(service: Service, frames: list[bytes], window: int, query: str = "") -> tuple[list[dict[str, Any]], float]:
    """Send every frame (at most ``window`` unanswered; 0 = as fast as possible); all replies and the fps."""
    from websockets.sync.client import connect

    gate = threading.Semaphore(window) if window else None
    replies: list[dict[str, Any]] = []
    with connect(_ws_url(service, query), additional_headers={"x-api-key": API_KEY}, max_size=None) as ws:

        def send() -> None:
            for frame in frames:
                if gate:
                    gate.acquire()
                ws.send(frame)
            ws.send("end")

        start = time.perf_counter()
        threading.Thread(target=send, daemon=True).start()
        while True:
            try:
                message = ws.recv(timeout=HANG_GUARD_S)  # TimeoutError: a hang, not slowness
            except ConnectionClosedOK:  # the service answered everything, then closed (after "end")
                break
            replies.append(json.loads(message))
            if gate:
                gate.release()
        elapsed = time.perf_counter() - start
    return replies, len(replies) / elapsed


def test_frame_endpoint_recall_meets_the_bar(service: Service) -> None:
    import pyarrow.parquet as pq

    rows = pq.read_table(_data("faces", "boxes.parquet")).to_pylist()

    def one(row: dict[str, Any]) -> tuple[str, int, int, int]:
        resp = service.client.post("/v1/analyze", content=row["image"]["bytes"], headers={"content-type": "image/jpeg"})
        assert resp.status_code == 200, resp.text
        boxes = np.asarray([f["box"] for f in resp.json()["faces"]], float).reshape(-1, 4)
        truth = np.asarray(row["boxes"], float).reshape(-1, 4)
        tp = len(greedy_match(iou_matrix(boxes, truth), 0.5))
        return row["image"]["path"].split("/")[0], len(truth), tp, len(boxes) - tp

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, rows))
    report = {}
    for subset, bar in BARS.items():
        mine = [r for r in results if r[0] == subset]
        recall = sum(r[2] for r in mine) / sum(r[1] for r in mine)
        fp = sum(r[3] for r in mine) / len(mine)
        report[subset] = (round(recall, 3), round(fp, 3))
        assert recall >= bar and fp <= 0.5, report
    print("recall, FP/image through /v1/analyze:", report)


@pytest.mark.parametrize("clip", sorted(CLIPS))
def test_clip_streams_frame_by_frame_in_order(service: Service, clip: str) -> None:
    frames = _jpeg_frames(_data("video", clip))
    assert len(frames) == CLIPS[clip]
    replies, fps = stream(service, frames, window=4)
    assert [r["index"] for r in replies] == list(range(len(frames)))
    assert all("faces" in r or r.get("dropped") for r in replies), [r for r in replies if "error" in r][:3]
    answered = [r for r in replies if "faces" in r]
    assert sum(1 for r in answered if r["faces"]) >= 0.8 * len(answered)
    print(f"{clip}: {len(replies)} replies for {len(frames)} frames, "
          f"{sum(1 for r in replies if r.get('dropped'))} dropped, {fps:.1f} fps")  # fmt: skip


def test_a_fire_hose_gets_dropped_replies_never_silence(service: Service) -> None:
    frames = _jpeg_frames(_data("video", "facenet_pytorch_walking_crowd.mp4"))[:40]
    replies, _ = stream(service, frames, window=0, query="?track=false")
    assert [r["index"] for r in replies] == list(range(40))
    assert all("faces" in r or r.get("dropped") is True for r in replies)


def test_bad_frames_and_abrupt_disconnects_leave_the_service_healthy(service: Service) -> None:
    from websockets.sync.client import connect

    good = _jpeg_frames(_data("video", "facenet_pytorch_walking_crowd.mp4"))[:2]
    replies, _ = stream(service, [b"garbage", good[0], b"\xff\xd8\xff" + b"\0" * 100, b"", good[1]], window=1)
    assert [("error" in r, r["index"]) for r in replies] == [(True, 0), (False, 1), (True, 2), (True, 3), (False, 4)]
    for _ in range(3):  # gone mid-stream, replies unread
        ws = connect(_ws_url(service), additional_headers={"x-api-key": API_KEY})
        for frame in good * 3:
            ws.send(frame)
        ws.socket.close()
    # no API key: refused (a timeout would not count: it is not a refusal)
    with pytest.raises((InvalidHandshake, ConnectionClosed)), connect(_ws_url(service)) as ws:
        ws.send(good[0])
        ws.recv(timeout=HANG_GUARD_S)
    assert service.client.get("/healthz").status_code == 200
    replies, _ = stream(service, good, window=2)
    assert [("faces" in r) for r in replies] == [True, True]


@pytest.mark.parametrize("clip", sorted(CLIPS))
def test_video_command_through_the_service(service: Service, tmp_path: Path, clip: str) -> None:
    from client.video import main

    url = service.url.replace("http://", "ws://")
    assert main([str(_data("video", clip)), "--url", url, "--api-key", API_KEY, "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["replies"] == CLIPS[clip] and summary["in_order"] and summary["errors"] == 0
    assert (tmp_path / "emotion_timeline.png").stat().st_size > 10_000
    assert (tmp_path / "contact_sheet.png").is_file()
    assert len((tmp_path / "frames.jsonl").read_text().splitlines()) == CLIPS[clip]


def test_frame_metrics_are_exported(service: Service) -> None:
    frames = _jpeg_frames(_data("video", "facenet_pytorch_walking_crowd.mp4"))[:3]
    stream(service, frames, window=1)
    wanted = ["ray_emotion_stream_dropped_frames_bucket", "ray_emotion_faces_per_frame_bucket",
              "ray_emotion_frames_total", "ray_emotion_open_streams", 'stage="detect"']  # fmt: skip
    text = service.wait_for_metrics(lambda text: all(w in text for w in wanted))
    assert not [w for w in wanted if w not in text], [w for w in wanted if w not in text]
