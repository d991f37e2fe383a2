"""Pure image decoding: bytes -> validated, EXIF-upright, contract-sized uint8 array. No Ray, no ONNX.

The output is what crosses the handle to the model: ``[H, W]`` (colour mode L) or ``[H, W, 3]`` (RGB) uint8,
2.3 KB for a 48x48 face, instead of a float tensor. Normalisation happens per batch in the model replica.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.contract import RESAMPLING, ModelContract
from serve.errors import EmptyBody, ImageTooLarge, InvalidImage

# Only these decoders are ever run on client bytes: a smaller attack surface than Pillow's ~40 formats.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
MEDIA_TYPES = {"image/jpeg": "JPEG", "image/jpg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}


def configure_pillow(max_image_pixels: int) -> None:
    """Set Pillow's own decompression-bomb guard (process-wide) to the service's pixel limit."""
    Image.MAX_IMAGE_PIXELS = max_image_pixels


def decode_image(data: bytes, contract: ModelContract, *, max_pixels: int) -> np.ndarray:
    """Decode one face image and resize it to the model contract.

    Args:
        data: the encoded image (JPEG, PNG or WebP).
        contract: the model contract (colour mode, input size, resize filter).
        max_pixels: largest accepted width x height, checked from the header before any pixel is decoded.

    Returns:
        uint8 ``[H, W]`` for colour mode L, ``[H, W, C]`` otherwise.

    Raises:
        EmptyBody, InvalidImage, ImageTooLarge.
    """
    return _to_contract(open_image(data, max_pixels=max_pixels), contract)


def decode_face(data: bytes, contract: ModelContract, *, max_pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``decode_image`` plus the upload's EXIF-upright (width, height): how large the face was before resizing,
    which the unreadable rule needs (``serve.core.quality.measure_upload``). Same errors."""
    img = open_image(data, max_pixels=max_pixels)
    return _to_contract(img, contract), img.size


def open_image(data: bytes, *, max_pixels: int, what: str = "image") -> Image.Image:
    """Decode client bytes into an EXIF-upright Pillow image; ``what`` names it in error messages.

    Raises:
        EmptyBody, InvalidImage, ImageTooLarge (checked from the header, before any pixel is decoded).
    """
    if not data:
        raise EmptyBody(f"the {what} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = img.size
            if width * height > max_pixels:
                raise ImageTooLarge(f"{what} is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
            if width < 1 or height < 1:
                raise InvalidImage(f"{what} has no pixels ({width}x{height})")
            # exif_transpose decodes the pixels: any truncation or corruption surfaces here, inside the guard.
            return ImageOps.exif_transpose(img)
    except (ImageTooLarge, InvalidImage):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"{what} exceeds the pixel limit of {max_pixels}") from None
    except UnidentifiedImageError:
        raise InvalidImage("not a JPEG, PNG or WebP image") from None
    except Exception as exc:
        raise InvalidImage(f"the {what} could not be decoded ({type(exc).__name__})") from None


def _to_contract(img: Image.Image, contract: ModelContract) -> np.ndarray:
    if img.mode != contract.preprocessing.color_mode:
        img = img.convert(contract.preprocessing.color_mode)
    size = (contract.input.width, contract.input.height)
    if img.size != size:
        img = img.resize(size, RESAMPLING[contract.preprocessing.resize])
    return np.asarray(img, dtype=np.uint8)


def sniff_format(data: bytes) -> str | None:
    """The image format from magic bytes, or None. Used to pick a Content-Type, never to trust one."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None
