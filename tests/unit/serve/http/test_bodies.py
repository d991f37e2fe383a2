"""Bounded body reading from a bare ASGI receive channel, and in-memory multipart parsing."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from serve.errors import (
    BadRequest,
    EmptyBody,
    MissingField,
    PayloadTooLarge,
    TooManyImages,
    UnsupportedMediaType,
)  # fmt: skip
from serve.http.bodies import many_images, parse_multipart, read_body, read_single_image, single_image


class Receive:
    """An ASGI receive callable that hands out ``chunks`` and counts how many were asked for."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks, self.calls = chunks, 0

    async def __call__(self) -> dict[str, object]:
        self.calls += 1
        if self.calls > len(self.chunks):
            raise AssertionError("the body was read past its end")
        return {"type": "http.request", "body": self.chunks[self.calls - 1], "more_body": self.calls < len(self.chunks)}


def request(receive: Receive, headers: dict[str, str] | None = None) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw}, receive)


def multipart(*fields: tuple[str, bytes], boundary: str = "b0undary") -> tuple[bytes, str]:
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="f{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, (name, data) in enumerate(fields)
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_read_body_joins_the_chunks_up_to_the_limit() -> None:
    assert asyncio.run(read_body(request(Receive([b"ab", b"cd", b""])), limit=4)) == b"abcd"


def test_a_declared_oversized_body_is_refused_before_reading() -> None:
    receive = Receive([b"x" * 10])
    with pytest.raises(PayloadTooLarge, match="5000 bytes"):
        asyncio.run(read_body(request(receive, {"content-length": "5000"}), limit=1000))
    assert receive.calls == 0


@pytest.mark.parametrize("headers", [{}, {"content-length": "10"}])  # none, or one that lies
def test_a_streamed_body_is_cut_off_once_past_the_limit(headers: dict[str, str]) -> None:
    receive = Receive([b"x" * 400] * 10)
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_body(request(receive, headers), limit=1000))
    assert receive.calls == 3  # stopped at the chunk that crossed the limit


def test_read_single_image_bounds_and_unwraps(face_png: bytes) -> None:
    body, ctype = multipart(("file", face_png))
    got = asyncio.run(read_single_image(request(Receive([body]), {"content-type": ctype}), limit=len(body)))
    assert got == face_png
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_single_image(request(Receive([body]), {"content-type": ctype}), limit=len(body) - 1))


def test_single_image_raw_or_multipart_file(face_png: bytes) -> None:
    assert single_image(face_png, "image/PNG; charset=binary") == face_png
    assert single_image(*multipart(("other", b"x"), ("file", face_png))) == face_png
    with pytest.raises(EmptyBody):
        single_image(b"", "image/jpeg")
    for ctype in ("text/plain", None):
        with pytest.raises(UnsupportedMediaType, match="image/png"):
            single_image(face_png, ctype)
    with pytest.raises(MissingField, match="'file'"):
        single_image(*multipart(("files", face_png)))
    with pytest.raises(TooManyImages):
        single_image(*multipart(("file", face_png), ("file", face_png)))


def test_many_images_keeps_the_repeated_files_in_order() -> None:
    body, ctype = multipart(("files", b"one"), ("note", b"skip me"), ("files", b"two"), ("files", b"three"))
    assert many_images(body, ctype, max_images=3) == [b"one", b"two", b"three"]


def test_many_images_errors() -> None:
    with pytest.raises(MissingField, match=r"'files'.*\['file', 'x'\]"):
        many_images(*multipart(("file", b"a"), ("x", b"b")), max_images=4)
    with pytest.raises(TooManyImages, match="5 images"):
        many_images(*multipart(*[("files", b"a")] * 5), max_images=4)
    with pytest.raises(TooManyImages):  # far past the limit: still "too many", not a parse error
        many_images(*multipart(*[("files", b"a")] * 100), max_images=4)
    with pytest.raises(UnsupportedMediaType):
        many_images(b"a", "image/png", max_images=4)
    with pytest.raises(EmptyBody):
        many_images(b"", "multipart/form-data; boundary=x", max_images=4)


def test_bad_boundaries_are_bad_requests() -> None:
    body, _ = multipart(("files", b"a"), boundary="right")
    with pytest.raises(BadRequest, match="boundary"):
        many_images(body, "multipart/form-data", max_images=4)
    with pytest.raises(BadRequest, match="malformed"):
        many_images(body, "multipart/form-data; boundary=wrong", max_images=4)


def test_a_body_cut_before_its_closing_boundary_is_a_bad_request() -> None:
    body, ctype = multipart(("files", b"abcdef"))
    with pytest.raises(BadRequest, match="truncated"):
        many_images(body[: body.rindex(b"--b0undary--")], ctype, max_images=4)
    assert many_images(body, ctype, max_images=4) == [b"abcdef"]


def test_parse_multipart_keeps_part_headers() -> None:
    body, ctype = multipart(("files", b"\x00\r\n--not-a-boundary"))
    (part,) = parse_multipart(body, ctype, max_parts=1)
    assert (part.name, part.filename, part.content_type) == ("files", "f0.png", "image/png")
    assert bytes(part.data) == b"\x00\r\n--not-a-boundary"
