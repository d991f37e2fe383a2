"""Shared test helpers: sample images and the FER2013 test split (skipped with a clear message when absent)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from models.data import default_fer_dir


def encode(img: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture
def face_png() -> bytes:
    """A 48x48 grey gradient PNG: a valid image of the contract's size."""
    img = Image.linear_gradient("L").resize((48, 48))
    return encode(img)


@pytest.fixture(autouse=True)
def _isolated_emotion_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start from default settings whatever EMOTION_* the shell exports."""
    for key in list(os.environ):
        if key.startswith("EMOTION_") and key != "EMOTION_DATA_DIR":
            monkeypatch.delenv(key)


def fer_test_parquet() -> Path:
    return default_fer_dir() / "test.parquet"


def require_fer() -> Path:
    path = fer_test_parquet()
    if not path.is_file():
        pytest.skip(f"FER2013 test split not found at {path} (set EMOTION_DATA_DIR to the folder holding fer2013/)")
    return path
