"""Frame decoding (EXIF, limits, bad bytes) and contract crops (square, margin, colour mode, size, edges)."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from models.contract import InputSpec, ModelContract, Preprocessing
from serve.core.detection.align import template_points
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


def _face_image() -> tuple[Image.Image, list[tuple[float, float]]]:
    """A 200x200 grey frame with a tilted 'face': two black eye dots and a black mouth dot; its landmarks."""
    img = Image.new("RGB", (200, 200), (128, 128, 128))
    angle, scale = np.radians(25.0), 2.5
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * scale
    points = template_points(48, 48) @ rot.T + [60.0, 30.0]
    pixels = np.asarray(img).copy()
    yy, xx = np.mgrid[0:200, 0:200]
    for px, py in points[[0, 1, 2]]:
        pixels[(xx + 0.5 - px) ** 2 + (yy + 0.5 - py) ** 2 <= 20] = 0
    return Image.fromarray(pixels), [(float(x), float(y)) for x, y in points]


def test_crop_faces_aligns_faces_that_have_landmarks() -> None:
    img, landmarks = _face_image()
    box = (40.0, 40.0, 110.0, 120.0)
    boxed = crop_faces(img, [box], GREY)
    aligned = crop_faces(img, [box], GREY, [landmarks])
    assert aligned.shape == boxed.shape == (1, 48, 48) and aligned.dtype == np.uint8
    assert not np.array_equal(aligned, boxed)
    for x, y in template_points(48, 48)[:3]:  # the dots land on the template's eyes and nose
        assert aligned[0, int(y), int(x)] < 60


def test_crop_faces_falls_back_to_the_box_crop() -> None:
    img, landmarks = _face_image()
    boxes = [(40.0, 40.0, 110.0, 120.0), (10.0, 10.0, 30.0, 30.0)]
    boxed = crop_faces(img, boxes, GREY)
    mixed = crop_faces(img, boxes, GREY, [None, landmarks])  # no landmarks; landmarks implausible for a 30 px box
    np.testing.assert_array_equal(mixed, boxed)
    with pytest.raises(ValueError, match="1 landmark sets for 2 boxes"):
        crop_faces(img, boxes, GREY, [landmarks])


def test_crop_faces_aligns_rgb_too() -> None:
    img, landmarks = _face_image()
    crops = crop_faces(img, [(40.0, 40.0, 110.0, 120.0)], RGB, [landmarks])
    assert crops.shape == (1, 32, 32, 3)
