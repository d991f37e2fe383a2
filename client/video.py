"""``emotion analyze-video FILE``: every frame's faces and emotions, in-process or through the running service.

Writes to ``--out``: ``frames.jsonl`` (one line per frame: index, time, faces with track ids, or dropped, error or
lost), ``contact_sheet.png`` (annotated frames spread over the clip), ``emotion_timeline.png`` (each tracked face's
emotion probabilities over time) and ``summary.json`` (frames, replies, dropped, errors, fps). Needs the ``video``
extra (PyAV, matplotlib). ``--url ws://127.0.0.1:8000`` streams the frames over ``/v1/stream`` instead,
reconnecting when the connection is lost (``client.stream``); ``summary.json`` then also counts lost frames and
reconnects, and the exit status is 1 if any frame was lost.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from client.drawing import annotate, contact_sheet, emotion_plot
from client.stream import ReconnectPolicy, StreamStats, stream_frames
from serve.core.frames import InProcessFrames, detector_config, face_records, quality_rule
from serve.core.tracking import FaceTracker, track_faces


def read_frames(path: Path) -> tuple[int, float, Iterator[tuple[int, float, np.ndarray]]]:
    """(frame count or 0, fps, iterator of (index, time_s, RGB uint8 frame)) decoded with PyAV."""
    import av

    container = av.open(str(path))
    stream = container.streams.video[0]
    fps = float(stream.average_rate or 25)

    def frames() -> Iterator[tuple[int, float, np.ndarray]]:
        with container:
            for i, frame in enumerate(container.decode(stream)):
                yield i, float(frame.time if frame.time is not None else i / fps), frame.to_ndarray(format="rgb24")

    return int(stream.frames or 0), fps, frames()


def _in_process(opts: argparse.Namespace, frames: Iterator[tuple[int, float, np.ndarray]]) -> Iterator[dict[str, Any]]:
    from serve.runtime.settings import load_settings

    settings = load_settings(**({"model_dir": opts.model_dir} if opts.model_dir else {}))

    analyzer = InProcessFrames(settings.model_dir, detector_config(settings), threads=opts.threads,
                               quality=quality_rule(settings))  # fmt: skip
    contract = analyzer.classifier.contract
    tracker = FaceTracker()
    for index, time_s, rgb in frames:
        start = time.perf_counter()
        faces = face_records(analyzer.analyze_rgb(rgb), contract)
        track_faces(tracker, faces, contract.answer_labels)
        latency = round((time.perf_counter() - start) * 1000.0, 1)
        yield {"index": index, "time_s": time_s, "faces": faces, "latency_ms": latency, "_rgb": rgb}


def _through_service(
    opts: argparse.Namespace, frames: Iterator[tuple[int, float, np.ndarray]], stats: StreamStats
) -> Iterator[dict[str, Any]]:
    """Replies from WS /v1/stream; a lost connection is opened again and its unanswered frames sent again
    (client.stream), so every frame comes back answered, dropped or lost."""
    from websockets.sync.client import connect

    headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else None
    url = opts.url.rstrip("/") + "/v1/stream"
    kept: dict[int, tuple[float, np.ndarray]] = {}

    def encoded() -> Iterator[tuple[int, bytes]]:
        for index, time_s, rgb in frames:
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
            kept[index] = (time_s, rgb)
            yield index, buf.getvalue()

    policy = ReconnectPolicy(max_reconnects=opts.reconnects)
    replies = stream_frames(lambda: connect(url, additional_headers=headers, max_size=None), encoded(),
                            window=opts.window, policy=policy, stats=stats)  # fmt: skip
    for reply in replies:
        time_s, rgb = kept.pop(reply["index"], (0.0, None))
        yield {**reply, "time_s": time_s, "_rgb": rgb}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emotion analyze-video", description=__doc__.split("\n")[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("--out", type=Path, default=Path("reports/video"), help="output folder")
    parser.add_argument("--url", help="service base URL (ws://host:port); default: analyse in-process")
    parser.add_argument("--api-key", help="API key for the service (Authorization: Bearer)")
    parser.add_argument("--window", type=int, default=4, help="frames in flight through the service (0 = no limit)")
    parser.add_argument("--reconnects", type=int, default=10,
                        help="times a lost stream connection is opened again (its unanswered frames resent)")
    parser.add_argument("--model-dir", type=Path, help="in-process model folder (default EMOTION_MODEL_DIR)")
    parser.add_argument("--threads", type=int, default=1, help="in-process onnxruntime threads")
    parser.add_argument("--sheet", type=int, default=12, help="frames on the contact sheet")
    opts = parser.parse_args(argv)
    try:
        total, _, frames = read_frames(opts.video)
    except ImportError:
        print("emotion analyze-video: needs PyAV and matplotlib: pip install 'emotion-service[client]'",
              file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"emotion analyze-video: cannot read {opts.video}: {exc}", file=sys.stderr)
        return 1
    opts.out.mkdir(parents=True, exist_ok=True)
    step = max(1, total // max(1, opts.sheet))
    records: list[dict[str, Any]] = []
    sheet: list[tuple[int, Image.Image]] = []
    labels: tuple[str, ...] = ()
    start = time.perf_counter()
    stats = StreamStats()
    replies = _through_service(opts, frames, stats) if opts.url else _in_process(opts, frames)
    with (opts.out / "frames.jsonl").open("w") as out:
        for record in tqdm(replies, total=total or None, unit="frame", desc=opts.video.name):
            rgb = record.pop("_rgb")
            if record.get("faces"):
                labels = tuple(record["faces"][0]["probabilities"])
            if record["index"] % step == 0 and len(sheet) < opts.sheet and rgb is not None:
                sheet.append((record["index"], annotate(Image.fromarray(rgb), record.get("faces", []))))
            out.write(json.dumps(record) + "\n")
            records.append(record)
    elapsed = time.perf_counter() - start
    contact_sheet(sheet, opts.out / "contact_sheet.png")
    emotion_plot(records, labels, opts.out / "emotion_timeline.png")
    summary = {
        "video": str(opts.video), "mode": "service" if opts.url else "in-process", "frames": total,
        "replies": len(records), "in_order": [r["index"] for r in records] == list(range(len(records))),
        "dropped": sum(1 for r in records if r.get("dropped")), "errors": sum(1 for r in records if "error" in r),
        "lost": stats.lost, "reconnects": stats.reconnects, "resent": stats.resent, "connection_ends": stats.closes,
        "faces": sum(len(r.get("faces", [])) for r in records), "seconds": round(elapsed, 2),
        "fps": round(len(records) / elapsed, 2) if elapsed else 0.0,
    }  # fmt: skip
    (opts.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 1 if stats.lost else 0


if __name__ == "__main__":
    sys.exit(main())
