"""Frame decoding (EXIF, limits, bad bytes) and contract crops (square, margin, colour mode, size, edges)."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from models.contract import InputSpec, ModelContract, Preprocessing
from serve.core.detection.crop import crop_faces, crop_square, decode_frame, square_region
from serve.errors import EmptyBody, ImageTooLarge, InvalidImage

GREY = ModelContract(name="t", version="1", labels=("a", "b"))
RGB_PRE = Preprocessing(color_mode="RGB", mean=(0.5,) * 3, std=(0.5,) * 3, face_margin=0.0)
RGB = replace(GREY, input=InputSpec(channels=3, height=32, width=32), preprocessing=RGB_PRE)


def _jpeg(img: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


def test_decode_frame_honours_exif_orientation() -> None:
    img = Image.new("RGB", (60, 40), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    frame = decode_frame(_jpeg(img, exif=exif), max_pixels=10_000)
    assert frame.size == (40, 60)
    assert frame.mode == "RGB"


@pytest.mark.parametrize(
    ("data", "error"),
    [(b"", EmptyBody), (b"not an image", InvalidImage), (_jpeg(Image.new("RGB", (200, 200)))[:300], InvalidImage)],
)
def test_decode_frame_rejects_bad_bytes(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_frame(data, max_pixels=1_000_000)


def test_decode_frame_checks_the_pixel_limit_first() -> None:
    with pytest.raises(ImageTooLarge, match="limit is 100"):
        decode_frame(_jpeg(Image.new("RGB", (20, 20))), max_pixels=100)


def test_square_region_adds_the_margin_on_every_side() -> None:
    assert square_region((10, 20, 40, 60), 0.15) == (-9, 11, 69, 89)  # side 60 * 1.3 = 78 around (30, 50)
    assert square_region((0, 0, 10, 10), 0.0) == (0, 0, 10, 10)


def test_crop_square_repeats_edge_pixels_outside_the_image() -> None:
    pixels = np.arange(16, dtype=np.uint8).reshape(4, 4)
    out = crop_square(pixels, (-1, -1, 2, 2))
    np.testing.assert_array_equal(out, [[0, 0, 1], [0, 0, 1], [4, 4, 5]])
    assert crop_square(pixels, (10, 10, 12, 12)).tolist() == [[15, 15], [15, 15]]


def test_crop_faces_follows_the_grey_contract() -> None:
    img = Image.new("RGB", (200, 100), (255, 255, 255))
    img.paste((0, 0, 0), (20, 20, 60, 60))
    crops = crop_faces(img, [(20, 20, 40, 40), (150, 50, 10, 30)], GREY)
    assert crops.shape == (2, 48, 48)
    assert crops.dtype == np.uint8
    assert crops[0, 24, 24] == 0 and crops[0, 0, 0] == 255  # face in the middle, margin around it


def test_crop_faces_rgb_contract_and_no_faces() -> None:
    img = Image.new("RGB", (64, 64), (10, 200, 30))
    crops = crop_faces(img, [(0, 0, 64, 64)], RGB)
    assert crops.shape == (1, 32, 32, 3)
    assert tuple(crops[0, 5, 5]) == (10, 200, 30)
    assert crop_faces(img, [], RGB).shape == (0, 32, 32, 3)
