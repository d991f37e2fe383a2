"""serve.core.uploads: every upload decoded to the contract and judged, or its error; rows paired back in order."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models.contract import DEFAULT_MODEL_DIR, load_contract
from serve.core.imaging import decode_image
from serve.core.inference import FaceScores
from serve.core.quality import QualityRule
from serve.core.uploads import UploadReader
from serve.errors import ErrorInfo
from tests.conftest import encode

CONTRACT = load_contract(DEFAULT_MODEL_DIR, require_onnx=False)
READER = UploadReader(CONTRACT, max_pixels=10_000)


def noise(size: int) -> bytes:
    return encode(Image.fromarray(np.random.default_rng(size).integers(0, 256, (size, size), dtype=np.uint8)))


def codes(results: list[FaceScores | ErrorInfo]) -> list[str]:
    return [r.code if isinstance(r, ErrorInfo) else "ok" for r in results]


def test_every_upload_is_decoded_or_its_error_in_input_order(face_png: bytes) -> None:
    other = encode(Image.new("RGB", (64, 64), "white"), "JPEG")
    huge = encode(Image.new("L", (200, 200)))
    decoded = READER.read_all([face_png, b"garbage", b"", other, huge])
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape == (2, CONTRACT.input.height, CONTRACT.input.width)
    np.testing.assert_array_equal(decoded.pixels[0], decode_image(face_png, CONTRACT, max_pixels=10_000))
    rows = np.repeat(np.arange(2, dtype=np.float32)[:, None], CONTRACT.num_classes, axis=1)
    results = decoded.answer(rows)
    assert codes(results) == ["ok", "invalid_image", "empty_body", "ok", "image_too_large"]
    assert results[0].probabilities[0] == 0.0 and results[3].probabilities[0] == 1.0  # rows go back to their images


def test_each_upload_is_judged_by_its_size_and_sharpness(face_png: bytes) -> None:
    decoded = READER.read_all([noise(48), noise(12), face_png, noise(90)])
    # 12 px upload: too small; a smooth gradient: no detail left at 48x48. No detection score: no weak_detection.
    assert decoded.outcomes == [None, "too_small", "blurred", None]
    results = decoded.answer(np.zeros((4, CONTRACT.num_classes), np.float32))
    assert [r.unreadable for r in results if isinstance(r, FaceScores)] == [None, "too_small", "blurred", None]
    lenient = UploadReader(CONTRACT, max_pixels=10_000, quality=QualityRule(min_face_px=0, min_sharpness=0))
    assert lenient.read_all([noise(12), face_png]).outcomes == [None, None]


def test_nothing_decoded_leaves_an_empty_stack_of_the_contracts_shape() -> None:
    decoded = READER.read_all([b"x", b"y"])
    assert decoded.pixels.shape == (0, CONTRACT.input.height, CONTRACT.input.width)
    assert codes(decoded.answer(np.zeros((0, CONTRACT.num_classes), np.float32))) == ["invalid_image"] * 2


def test_probabilities_must_match_the_decoded_faces(face_png: bytes) -> None:
    with pytest.raises(ValueError, match="2 rows of probabilities for 1 decoded faces"):
        READER.read_all([face_png]).answer(np.zeros((2, CONTRACT.num_classes), np.float32))
