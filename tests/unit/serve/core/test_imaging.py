from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from models.contract import ModelContract
from serve.core.imaging import decode_face, decode_image
from serve.errors import EmptyBody, ImageTooLarge, InvalidImage
from tests.conftest import encode

CONTRACT = ModelContract(name="t", version="0", labels=("angry", "happy", "sad"))
LIMIT = 4_000_000


def decode(data: bytes, limit: int = LIMIT) -> np.ndarray:
    return decode_image(data, CONTRACT, max_pixels=limit)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims a size, with no pixel data: decoding it must never be attempted."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_decodes_each_format_to_contract_size(fmt: str) -> None:
    img = Image.new("RGB", (120, 90), (200, 30, 30))
    out = decode(encode(img, fmt))
    assert out.shape == (48, 48) and out.dtype == np.uint8


def test_grey_48x48_passes_through_unchanged() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    assert np.array_equal(decode(encode(Image.fromarray(pixels))), pixels)


def test_resize_matches_pillow_bilinear_on_converted_image() -> None:
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (100, 80, 3), dtype=np.uint8))
    expected = np.asarray(img.convert("L").resize((48, 48), Image.Resampling.BILINEAR))
    assert np.array_equal(decode(encode(img)), expected)


def test_exif_orientation_is_honoured() -> None:
    pixels = np.zeros((48, 48), dtype=np.uint8)
    pixels[:, 24:] = 255  # right half white
    img = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180 degrees
    out = decode(encode(img, "JPEG", exif=exif.tobytes(), quality=100))
    assert out[:, :20].mean() > 200 and out[:, 28:].mean() < 50


def test_empty_bytes() -> None:
    with pytest.raises(EmptyBody):
        decode(b"")


@pytest.mark.parametrize("data", [b"hello", b"\x00" * 100, b"\xff\xd8\xff" + b"garbage" * 10, b"GIF89a...."])
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        decode(data)


def test_truncated_image(face_png: bytes) -> None:
    big = encode(Image.fromarray(np.random.default_rng(2).integers(0, 256, (200, 200), dtype=np.uint8)))
    for cut in (20, len(big) // 2, len(big) * 3 // 4):
        with pytest.raises(InvalidImage):
            decode(big[:cut])


def test_other_formats_are_refused_even_if_pillow_reads_them() -> None:
    with pytest.raises(InvalidImage):
        decode(encode(Image.new("L", (48, 48)), "BMP"))
    with pytest.raises(InvalidImage):
        decode(encode(Image.new("L", (48, 48)), "GIF"))


def test_pixel_limit_is_checked_from_the_header() -> None:
    with pytest.raises(ImageTooLarge):
        decode(png_header_only(100_000, 100_000))
    with pytest.raises(ImageTooLarge):
        decode(encode(Image.new("L", (100, 100))), limit=9_999)


def test_decompression_bomb_png() -> None:
    # 20000 x 20000 of zeros compresses to a few hundred KB; the header check refuses it before decoding.
    img = Image.new("1", (20_000, 20_000))
    data = encode(img, "PNG", optimize=False)
    assert len(data) < 2_000_000
    with pytest.raises(ImageTooLarge):
        decode(data)


def test_rgba_and_palette_images_convert() -> None:
    rgba = Image.new("RGBA", (60, 60), (10, 20, 30, 0))
    pal = Image.new("P", (60, 60))
    assert decode(encode(rgba)).shape == (48, 48)
    assert decode(encode(pal)).shape == (48, 48)


def test_exotic_header_values_are_invalid_not_crashes() -> None:
    for data in (png_header_only(0, 10), png_header_only(48, 48), b"RIFF\x00\x00\x00\x00WEBPVP8 "):
        with pytest.raises((InvalidImage, ImageTooLarge)):
            decode(data)


def test_decode_face_also_gives_the_upright_upload_size() -> None:
    pixels, size = decode_face(encode(Image.new("RGB", (120, 90), "white")), CONTRACT, max_pixels=LIMIT)
    assert pixels.shape == (48, 48) and size == (120, 90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the upright image is 90 wide, 120 high
    buf = io.BytesIO()
    Image.new("RGB", (120, 90)).save(buf, format="JPEG", exif=exif)
    assert decode_face(buf.getvalue(), CONTRACT, max_pixels=LIMIT)[1] == (90, 120)
