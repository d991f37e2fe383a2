"""Reading request bodies within limits, in memory: raw image bodies and multipart/form-data.

Starlette's form parser spools file parts over 1 MB to a temporary file; images must never touch the disk, so
multipart bodies are parsed here with python-multipart's low-level parser straight from the bounded bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from serve.core.imaging import MEDIA_TYPES
from serve.errors import BadRequest, EmptyBody, MissingField, PayloadTooLarge, TooManyImages, UnsupportedMediaType

MULTIPART = "multipart/form-data"


@dataclass
class Part:
    """One multipart part, fully in memory."""

    name: str = ""
    filename: str | None = None
    content_type: str | None = None
    data: bytearray = field(default_factory=bytearray)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413 payload_too_large) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_multipart(body: bytes, content_type: str, max_parts: int) -> list[Part]:
    """Split a multipart/form-data body into parts; BadRequest if it is malformed, TooManyImages past max_parts."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart/form-data without a boundary parameter")
    parts: list[Part] = []
    header: dict[str, bytearray] = {"field": bytearray(), "value": bytearray()}
    headers: dict[bytes, bytes] = {}

    def on_part_begin() -> None:
        if len(parts) >= max_parts:
            raise TooManyImages(f"more than {max_parts} parts in one request")
        headers.clear()
        parts.append(Part())

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data += data[start:end]

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        headers[bytes(header["field"]).lower()] = bytes(header["value"])
        header["field"], header["value"] = bytearray(), bytearray()

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        part = parts[-1]
        part.name = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        part.filename = filename.decode("utf-8", "replace") if filename is not None else None
        ctype = headers.get(b"content-type")
        part.content_type = ctype.decode("latin-1") if ctype else None

    ended = []  # the closing boundary was seen: without it the last part may be cut off mid-image

    callbacks = {
        "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_end": lambda: ended.append(True),
    }  # fmt: skip
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except (TooManyImages, BadRequest):
        raise
    except Exception as exc:
        raise BadRequest(f"malformed multipart body ({type(exc).__name__})") from None
    if not ended:
        raise BadRequest("truncated multipart body: the closing boundary is missing")
    return parts


def _parts_named(body: bytes, content_type: str, name: str, max_images: int) -> list[bytes]:
    # Parse a little past the image limit so that "too many images" is reported as such, not as a parse error.
    parts = parse_multipart(body, content_type, max_parts=max_images + 16)
    images = [bytes(p.data) for p in parts if p.name == name]
    if not images:
        seen = sorted({p.name for p in parts})
        raise MissingField(f"multipart body has no field {name!r} (fields present: {seen})")
    if len(images) > max_images:
        raise TooManyImages(f"{len(images)} images in one request; the limit is {max_images}")
    return images


def single_image(body: bytes, content_type: str | None) -> bytes:
    """The image of a /v1/classify request: a raw image body or the multipart field ``file``."""
    kind = media_type(content_type)
    if kind in MEDIA_TYPES:
        if not body:
            raise EmptyBody("the request body is empty")
        return body
    if kind == MULTIPART:
        if not body:
            raise EmptyBody("the request body is empty")
        return _parts_named(body, content_type or "", "file", max_images=1)[0]
    raise UnsupportedMediaType(f"Content-Type {kind or '(none)'!r} is not accepted; send {_accepted()}")


async def read_single_image(request: Request, limit: int) -> bytes:
    """The one image of a /v1/classify or /v1/analyze request, its body bounded by ``limit`` bytes."""
    return single_image(await read_body(request, limit), request.headers.get("content-type"))


def many_images(body: bytes, content_type: str | None, max_images: int) -> list[bytes]:
    """The images of a /v1/classify/batch request: repeated multipart field ``files``."""
    kind = media_type(content_type)
    if kind != MULTIPART:
        raise UnsupportedMediaType(f"Content-Type {kind or '(none)'!r} is not accepted; send {MULTIPART}")
    if not body:
        raise EmptyBody("the request body is empty")
    return _parts_named(body, content_type or "", "files", max_images=max_images)


def _accepted() -> str:
    return ", ".join([*sorted(k for k in MEDIA_TYPES if k != "image/jpg"), MULTIPART])
