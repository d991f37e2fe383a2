"""Labelled face datasets: FER2013-style parquet files or an image-folder tree, decoded into uint8 arrays.

Two layouts are understood, chosen automatically per split:

* parquet: ``<root>/<split>.parquet`` with columns ``image`` ({bytes, path}) and ``label`` (class name),
  the Hugging Face ``datasets`` layout of ``../shared/data/fer2013``;
* image folder: ``<root>/<split>/<label>/*.png|jpg|jpeg|webp|bmp``.

Rows of classes that were not asked for are dropped, never relabelled. Undecodable images are skipped and
counted, never fatal. Pure numpy/Pillow/pyarrow: no torch, so ONNX evaluation does not need the train extra.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from models.contract import RESAMPLING

logger = logging.getLogger(__name__)

DEFAULT_CLASSES: tuple[str, ...] = ("angry", "happy", "sad")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
DATA_DIR_ENV = "EMOTION_DATA_DIR"
class DatasetError(ValueError):
    """A dataset path, layout or class selection is unusable."""


@dataclass
class FaceDataset:
    """Decoded faces of one split: ``images`` is uint8 ``[N, H, W]`` (L) or ``[N, H, W, 3]`` (RGB)."""

    images: np.ndarray
    labels: np.ndarray
    label_names: tuple[str, ...]
    paths: list[str]
    skipped: int = 0
    dropped_by_class: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: np.ndarray) -> FaceDataset:
        return FaceDataset(
            images=self.images[indices],
            labels=self.labels[indices],
            label_names=self.label_names,
            paths=[self.paths[i] for i in indices],
        )

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.label_names))
        return {name: int(c) for name, c in zip(self.label_names, counts, strict=True)}


def default_data_dir() -> Path:
    """``$EMOTION_DATA_DIR``, else ``../shared/data`` beside the repository."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def default_fer_dir() -> Path:
    return default_data_dir() / "fer2013"


def parse_classes(spec: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"angry,happy,sad"`` -> tuple; ``"all"`` -> None (every class in the data); None -> the default three."""
    if spec is None:
        return DEFAULT_CLASSES
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [s for s in items if s]
    if items == ["all"]:
        return None
    if not items:
        raise DatasetError("the class list is empty; name classes like 'angry,happy,sad' or use 'all'")
    if len(set(items)) != len(items):
        raise DatasetError(f"the class list {items} repeats a class")
    return tuple(items)


def load_split(
    root: Path | str,
    split: str,
    classes: Sequence[str] | None = DEFAULT_CLASSES,
    *,
    color_mode: str = "L",
    size: tuple[int, int] = (48, 48),
    resize: str = "bilinear",
) -> FaceDataset:
    """Load one split (``train``, ``test``, ...) from ``root``, keeping only ``classes`` (None = all, sorted).

    Images whose size differs from ``size`` (height, width) are resized with ``resize``; colour is converted to
    ``color_mode``. Raises DatasetError for a missing path/split or a class the data does not contain.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(
            f"dataset path {str(root)!r} does not exist "
            f"(set --data-dir or ${DATA_DIR_ENV} to the folder that holds fer2013/)"
        )
    parquet = root / f"{split}.parquet"
    folder = root / split
    if parquet.is_file():
        records = _parquet_records(parquet)
    elif folder.is_dir():
        records = _folder_records(folder)
    else:
        raise DatasetError(
            f"no split {split!r} under {str(root)!r}: expected {parquet.name} or a folder {split}/<label>/"
        )
    return _decode(records, classes, color_mode=color_mode, size=size, resize=resize, where=f"{root}/{split}")


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split of row indices into (train, validation); each class keeps its share."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction={val_fraction} must be between 0 and 1")
    rng = np.random.default_rng(seed)
    train_parts, val_parts = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_val = max(1, round(len(idx) * val_fraction))
        val_parts.append(idx[:n_val])
        train_parts.append(idx[n_val:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(val_parts))


def pixel_hashes(images: np.ndarray) -> list[bytes]:
    """A digest of each image's pixels, to find exact duplicates whatever their file encoding."""
    return [hashlib.blake2b(img.tobytes(), digest_size=16).digest() for img in images]


def overlap_mask(test: FaceDataset, train: FaceDataset) -> np.ndarray:
    """True for every test image whose exact pixels also occur in the train split."""
    seen = set(pixel_hashes(train.images))
    return np.array([h in seen for h in pixel_hashes(test.images)], dtype=bool)


def _parquet_records(path: Path) -> Iterable[tuple[str, str, bytes]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["image", "label"])
    missing = {"image", "label"} - set(table.column_names)
    if missing:
        raise DatasetError(f"{path}: missing column(s) {sorted(missing)}")
    for row in table.to_pylist():
        image = row["image"] or {}
        yield str(row["label"]), str(image.get("path") or ""), image.get("bytes") or b""


def _folder_records(folder: Path) -> Iterable[tuple[str, str, bytes]]:
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
    if not class_dirs:
        raise DatasetError(f"{folder}: no class folders (<split>/<label>/*.png)")
    for class_dir in class_dirs:
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                yield class_dir.name, str(file.relative_to(folder.parent)), file.read_bytes()


def _decode(
    records: Iterable[tuple[str, str, bytes]],
    classes: Sequence[str] | None,
    *,
    color_mode: str,
    size: tuple[int, int],
    resize: str,
    where: str,
) -> FaceDataset:
    rows = list(records)
    available = sorted({label for label, _, _ in rows})
    if classes is None:
        label_names = tuple(available)
    else:
        unknown = [c for c in classes if c not in available]
        if unknown:
            raise DatasetError(f"unknown class(es) {unknown} in {where}; available: {available}")
        label_names = tuple(classes)
    index = {name: i for i, name in enumerate(label_names)}
    height, width = size
    images, labels, paths = [], [], []
    dropped: dict[str, int] = {}
    skipped = 0
    for label, path, data in rows:
        if label not in index:
            dropped[label] = dropped.get(label, 0) + 1
            continue
        try:
            with Image.open(io.BytesIO(data)) as raw:
                img = raw.convert(color_mode)
                if img.size != (width, height):
                    img = img.resize((width, height), RESAMPLING[resize])
                pixels = np.asarray(img, dtype=np.uint8)
        except Exception as exc:  # any decoder failure means "corrupt": counted and skipped, never fatal
            skipped += 1
            logger.warning("skipping unreadable image %s (%s)", path or "<no path>", exc)
            continue
        images.append(pixels)
        labels.append(index[label])
        paths.append(path)
    if not images:
        raise DatasetError(f"no readable images of classes {list(label_names)} in {where}")
    if skipped:
        logger.warning("%s: skipped %d unreadable image(s)", where, skipped)
    return FaceDataset(
        images=np.stack(images),
        labels=np.asarray(labels, dtype=np.int64),
        label_names=label_names,
        paths=paths,
        skipped=skipped,
        dropped_by_class=dropped,
    )
