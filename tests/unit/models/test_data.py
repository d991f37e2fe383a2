"""models.data: both layouts, class filtering, corrupt images, the stratified split and the overlap mask."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.data import DatasetError, load_split, overlap_mask, stratified_split


def test_parquet_layout_keeps_asked_classes_in_order(make_parquet: Callable[..., Path]) -> None:
    root = make_parquet("train", {"angry": 3, "happy": 2, "fear": 4})
    data = load_split(root, "train", ("happy", "angry"), size=(12, 12))
    assert data.label_names == ("happy", "angry")
    assert data.images.shape == (5, 12, 12) and data.images.dtype == np.uint8
    assert data.class_counts() == {"happy": 2, "angry": 3}
    assert data.dropped_by_class == {"fear": 4}


def test_all_classes_are_sorted(make_parquet: Callable[..., Path]) -> None:
    root = make_parquet("test", {"sad": 1, "angry": 1})
    assert load_split(root, "test", None, size=(12, 12)).label_names == ("angry", "sad")


def test_image_folder_layout_resizes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label, n in (("angry", 2), ("sad", 3)):
        (tmp_path / "val" / label).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 256, size=(20, 20), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "val" / label / f"{i}.jpg")
    (tmp_path / "val" / "sad" / "notes.txt").write_text("ignored")
    data = load_split(tmp_path, "val", ("angry", "sad"), size=(12, 12))
    assert data.images.shape == (5, 12, 12)
    assert data.labels.tolist() == [0, 0, 1, 1, 1]


def test_unknown_class_is_an_error(make_parquet: Callable[..., Path]) -> None:
    root = make_parquet("train", {"angry": 1})
    with pytest.raises(DatasetError, match="unknown class"):
        load_split(root, "train", ("angry", "contempt"), size=(12, 12))


def test_missing_path_and_split_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_split(tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match="no split 'train'"):
        load_split(tmp_path, "train")


def test_corrupt_image_is_skipped_and_counted(make_parquet: Callable[..., Path]) -> None:
    root = make_parquet("train", {"angry": 2, "sad": 1}, corrupt=2)
    data = load_split(root, "train", ("angry", "sad"), size=(12, 12))
    assert len(data) == 3
    assert data.skipped == 2


def test_stratified_split_proportions_and_seed() -> None:
    labels = np.repeat([0, 1, 2], [100, 50, 10])
    train, val = stratified_split(labels, 0.1, seed=42)
    assert np.bincount(labels[val]).tolist() == [10, 5, 1]
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(labels)
    again = stratified_split(labels, 0.1, seed=42)
    assert np.array_equal(val, again[1]) and np.array_equal(train, again[0])
    assert not np.array_equal(val, stratified_split(labels, 0.1, seed=7)[1])
    with pytest.raises(DatasetError):
        stratified_split(labels, 1.0, seed=0)


def test_overlap_mask_finds_exact_pixel_duplicates(make_parquet: Callable[..., Path], tmp_path: Path) -> None:
    root = make_parquet("train", {"angry": 4}, seed=3)
    train = load_split(root, "train", ("angry",), size=(12, 12))
    test = train.subset(np.array([1, 3]))
    test.images = np.concatenate([test.images, 255 - train.images[:1]])
    assert overlap_mask(test, train).tolist() == [True, True, False]
