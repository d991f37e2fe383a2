"""Request payloads for load tests and the benchmark: real FER2013 faces, real photos, real video frames.

Everything is read lazily (first call) and cached, so importing a locustfile stays cheap. Pure stdlib, numpy,
Pillow and pyarrow; no locust import, so the benchmark's asyncio client can share it.
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pyarrow.parquet as pq

from models.data import default_data_dir

DEFAULT_VIDEO = "pexels_wolfgang_langer_expressions.mp4"


@dataclass(frozen=True)
class Face:
    """One encoded FER2013 test image and its (7-class) dataset label."""

    data: bytes
    label: str


@dataclass(frozen=True)
class Photo:
    """One encoded real photograph and its annotated face boxes ``[x, y, w, h]``."""

    data: bytes
    path: str
    boxes: tuple[tuple[int, int, int, int], ...]


def content_type(data: bytes) -> str:
    """The image MIME type from the file's magic bytes (JPEG, PNG or WebP)."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


@cache
def fer_faces(limit: int = 2000) -> tuple[Face, ...]:
    """The first ``limit`` FER2013 test images (48x48 grayscale JPEGs), in file order."""
    path = default_data_dir() / "fer2013" / "test.parquet"
    table = pq.read_table(path, columns=["image", "label"]).slice(0, limit)
    images = table.column("image").to_pylist()
    labels = table.column("label").to_pylist()
    return tuple(Face(img["bytes"], str(label)) for img, label in zip(images, labels, strict=True))


@cache
def photos() -> tuple[Photo, ...]:
    """All real photographs of ``faces/boxes.parquet`` (306 images, 688 annotated faces)."""
    table = pq.read_table(default_data_dir() / "faces" / "boxes.parquet")
    rows = table.to_pylist()
    return tuple(
        Photo(row["image"]["bytes"], row["image"]["path"], tuple((b[0], b[1], b[2], b[3]) for b in row["boxes"]))
        for row in rows
    )


@cache
def video_frames(name: str = DEFAULT_VIDEO, limit: int = 240, quality: int = 80) -> tuple[bytes, ...]:
    """The first ``limit`` frames of a clip in ``video/``, each re-encoded as a JPEG (what a browser would send)."""
    import av  # the dev extra; only the video-stream scenario needs it

    path = Path(default_data_dir()) / "video" / name
    frames: list[bytes] = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            buf = io.BytesIO()
            image = frame.to_image()  # type: ignore[no-untyped-call]
            image.save(buf, format="JPEG", quality=quality)
            frames.append(buf.getvalue())
            if len(frames) >= limit:
                break
    return tuple(frames)


def multipart(field: str, files: list[bytes]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with one part per file under ``field``; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for i, data in enumerate(files):
        ctype = content_type(data)
        ext = ctype.split("/")[1]
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{i}.{ext}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode()
        )
        parts.append(data)
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
