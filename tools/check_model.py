"""Independent check of a model folder's test accuracy: imports nothing from this project.

Reads only ``<model>/config.json``, the ONNX file it names and ``<data>/test.parquet``; keeps the rows whose label
is one of the contract's labels, preprocesses as the contract says, and prints accuracy, macro-F1, the temperature
(``output.temperature``, 1.0 when absent) and the top-label expected calibration error (15 equal-width bins) of
``softmax(logits / temperature)``. Its numbers must equal ``models.evaluate``'s; a disagreement means one of the two
reads the contract wrongly.

    python tools/check_model.py --model models/default --data ../shared/data/fer2013/test.parquet
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
from PIL import Image

logger = logging.getLogger("check_model")

RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass
class CheckArguments:
    """A model folder, a parquet split, and the batch size."""

    model: Path
    data: Path
    batch_size: int = 64


def load_faces(parquet: Path, labels: list[str], cfg: dict[str, object]) -> tuple[np.ndarray, np.ndarray]:
    """(float32 NCHW inputs, int labels) of the rows whose label is in ``labels``; unreadable images skipped."""
    pre = cfg["preprocessing"]
    spec = cfg["input"]
    assert isinstance(pre, dict) and isinstance(spec, dict)
    size = (int(spec["width"]), int(spec["height"]))
    index = {name: i for i, name in enumerate(labels)}
    images, ys = [], []
    for row in pq.read_table(parquet, columns=["image", "label"]).to_pylist():
        if row["label"] not in index:
            continue
        try:
            with Image.open(io.BytesIO(row["image"]["bytes"])) as raw:
                img = raw.convert(str(pre["color_mode"]))
                if img.size != size:
                    img = img.resize(size, RESAMPLING[str(pre["resize"])])
                pixels = np.asarray(img, dtype=np.uint8)
        except Exception:
            continue
        images.append(pixels if pixels.ndim == 3 else pixels[:, :, None])
        ys.append(index[row["label"]])
    x = np.stack(images).astype(np.float32).transpose(0, 3, 1, 2)
    mean = np.asarray(pre["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(pre["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    x = (x * np.float32(pre["scale"]) - mean) / std
    return np.ascontiguousarray(x, dtype=np.float32), np.asarray(ys, dtype=np.int64)


def accuracy_and_macro_f1(y: np.ndarray, pred: np.ndarray, k: int) -> tuple[float, float]:
    f1s = []
    for c in range(k):
        tp = float(np.sum((pred == c) & (y == c)))
        p = tp / max(float(np.sum(pred == c)), 1.0) if np.any(pred == c) else 0.0
        r = tp / float(np.sum(y == c)) if np.any(y == c) else 0.0
        f1s.append(2 * p * r / (p + r) if p + r > 0 else 0.0)
    return float(np.mean(pred == y)), float(np.mean(f1s))


def calibration_error(logits: np.ndarray, y: np.ndarray, temperature: float, bins: int = 15) -> float:
    """Top-label ECE of softmax(logits / temperature): bins (k/bins, (k+1)/bins], weighted |accuracy - confidence|."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    conf, hit = p.max(axis=1), (p.argmax(axis=1) == y)
    total = 0.0
    for k in range(bins):
        lo, hi = k / bins, (k + 1) / bins
        inside = (conf > lo) & (conf <= hi) if k else conf <= hi
        if inside.any():
            total += float(inside.sum()) / len(y) * abs(float(hit[inside].mean()) - float(conf[inside].mean()))
    return total


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="folder with config.json and the ONNX file")
    parser.add_argument("--data", type=Path, required=True, help="test.parquet")
    parser.add_argument("--batch-size", type=int, default=64)
    ns = parser.parse_args(argv)
    args = CheckArguments(ns.model, ns.data, ns.batch_size)
    cfg = json.loads((args.model / "config.json").read_text())
    labels = [str(x) for x in cfg["labels"]]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(args.model / cfg.get("onnx_file", "model.onnx")), options, providers=["CPUExecutionProvider"]
    )
    x, y = load_faces(args.data, labels, cfg)
    feed, fetch = cfg["input"]["name"], cfg["output"]["name"]
    logits = np.concatenate(
        [session.run([fetch], {feed: x[i : i + args.batch_size]})[0] for i in range(0, len(x), args.batch_size)]
    )
    acc, macro_f1 = accuracy_and_macro_f1(y, logits.argmax(axis=1), len(labels))
    temperature = float(cfg.get("output", {}).get("temperature", 1.0))
    ece = calibration_error(np.asarray(logits), y, temperature)
    logger.info("scored %d faces of %s", len(y), labels)
    sys.stdout.write(
        f"n={len(y)} accuracy={acc:.6f} macro_f1={macro_f1:.6f} temperature={temperature:g} ece={ece:.6f}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
