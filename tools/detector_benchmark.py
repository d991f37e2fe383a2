"""Measure face detectors on ``faces/boxes.parquet``: recall at IoU >= 0.5 per subset, false positives per image,
and milliseconds per 640x480 frame. Writes ``results.json`` and a markdown table (``README.md``) to ``--out``.

    python -m tools.detector_benchmark [--data ../shared/data] [--out reports/detection] [--only NAME ...]

Timing shares the machine's cores with whatever else runs: each candidate is timed alternately with the shipped
setting, and the table gives both the median ms and the ratio to the shipped setting from the same rounds.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from models.data import default_data_dir
from serve.core.detection.base import DetectorConfig, FaceDetector
from serve.core.detection.boxes import greedy_match, iou_matrix
from serve.core.detection.centerface import CenterFaceDetector
from tools import detector_candidates as candidates

logger = logging.getLogger("emotion.detection.evaluate")
SUBSETS = ("widerface_val", "ufdd_val", "facemask")
SHIPPED = "centerface long640 thr0.45"


@dataclass
class Sample:
    subset: str
    rgb: np.ndarray
    boxes: np.ndarray


@dataclass
class Score:
    faces: dict[str, int] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    false_pos: dict[str, int] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)

    def add(self, subset: str, gt: int, tp: int, fp: int) -> None:
        for table, value in ((self.faces, gt), (self.hits, tp), (self.false_pos, fp), (self.images, 1)):
            table[subset] = table.get(subset, 0) + value

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            s: {"recall": self.hits[s] / max(self.faces[s], 1), "fp_per_image": self.false_pos[s] / self.images[s]}
            for s in SUBSETS
            if s in self.images
        }


def load_samples(parquet: Path, limit_per_subset: int | None = None) -> list[Sample]:
    """Decode every image (EXIF-upright, RGB) with its ground-truth xywh boxes."""
    import pyarrow.parquet as pq

    samples, seen = [], dict.fromkeys(SUBSETS, 0)
    for row in pq.read_table(parquet).to_pylist():
        subset = row["image"]["path"].split("/", 1)[0]
        if limit_per_subset is not None and seen[subset] >= limit_per_subset:
            continue
        seen[subset] += 1
        img = ImageOps.exif_transpose(Image.open(io.BytesIO(row["image"]["bytes"]))).convert("RGB")
        samples.append(Sample(subset, np.asarray(img), np.asarray(row["boxes"], dtype=np.float64).reshape(-1, 4)))
    return samples


def score(detector: FaceDetector, samples: list[Sample], iou_threshold: float = 0.5) -> Score:
    """Greedy one-to-one matching of detections to ground truth at ``iou_threshold``."""
    result = Score()
    for sample in samples:
        faces = detector.detect(sample.rgb)
        boxes = np.asarray([f.box for f in faces], dtype=np.float64).reshape(-1, 4)
        tp = len(greedy_match(iou_matrix(boxes, sample.boxes), iou_threshold))
        result.add(sample.subset, len(sample.boxes), tp, len(boxes) - tp)
    return result


def time_per_frame(detector: FaceDetector, frames: list[np.ndarray]) -> float:
    """Median milliseconds of one detect() call over the frames (after one warm-up call)."""
    detector.detect(frames[0])
    times = []
    for frame in frames:
        start = time.perf_counter()
        detector.detect(frame)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _centerface(long_side: int, threshold: float, flip: bool = False) -> Callable[[], FaceDetector]:
    config = DetectorConfig(input_long_side=long_side, threshold=threshold, flip_tta=flip, min_face_px=0)
    return lambda: CenterFaceDetector(config)


def catalogue() -> dict[str, Callable[[], FaceDetector]]:
    """Every measured setting by name; candidates whose package is missing are left out."""
    found: dict[str, Callable[[], FaceDetector]] = {
        "centerface native thr0.5": _centerface(0, 0.5),
        "centerface native thr0.3": _centerface(0, 0.3),
        "centerface long640 thr0.5": _centerface(640, 0.5),
        SHIPPED: _centerface(640, 0.45),
        "centerface long640 thr0.4": _centerface(640, 0.4),
        "centerface long640 thr0.45 flip-tta": _centerface(640, 0.45, flip=True),
        "centerface long800 thr0.45": _centerface(800, 0.45),
        "centerface long800 thr0.5": _centerface(800, 0.5),
    }
    present = candidates.available()
    if "yunet" in present:
        for long_side, thr in ((640, 0.5), (640, 0.7), (1024, 0.5)):
            found[f"yunet long{long_side} thr{thr}"] = lambda ls=long_side, t=thr: candidates.build(  # type: ignore[misc]
                "yunet", long_side=ls, threshold=t
            )
    if "blazeface" in present:
        found["blazeface full-range thr0.5"] = lambda: candidates.build("blazeface", model_selection=1)
    return found


def markdown(results: dict[str, dict[str, object]]) -> str:
    head = "| detector setting | " + " | ".join(f"recall {s}" for s in SUBSETS)
    head += " | FP/image (wider / ufdd / facemask) | ms per 640x480 frame | x shipped |\n"
    lines = [head + "|---" * (len(SUBSETS) + 4) + "|"]
    for name, res in results.items():
        summ: dict[str, dict[str, float]] = res["subsets"]  # type: ignore[assignment]
        recalls = " | ".join(f"{summ[s]['recall']:.3f}" for s in SUBSETS)
        fps = " / ".join(f"{summ[s]['fp_per_image']:.2f}" for s in SUBSETS)
        bold = "**" if name == SHIPPED else ""
        lines.append(f"| {bold}{name}{bold} | {recalls} | {fps} | {res['ms']:.1f} | {res['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.detector_benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="folder holding faces/boxes.parquet")
    parser.add_argument("--out", type=Path, default=Path("reports/detection"))
    parser.add_argument("--only", nargs="*", help="setting names to run (default: all)")
    parser.add_argument("--limit", type=int, help="images per subset (quick runs)")
    parser.add_argument("--timing-frames", type=int, default=20)
    parser.add_argument("--fresh", action="store_true", help="drop earlier results in --out instead of merging")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    samples = load_samples(opts.data / "faces" / "boxes.parquet", opts.limit)
    frames = [np.asarray(Image.fromarray(s.rgb).resize((640, 480))) for s in samples[:: max(1, len(samples) // 20)]]
    frames = frames[: opts.timing_frames]
    shipped = catalogue()[SHIPPED]()
    previous = opts.out / "results.json"
    results: dict[str, dict[str, object]] = {}
    if previous.is_file() and not opts.fresh:
        results = json.loads(previous.read_text())  # settings measured in another run (or another venv) stay
    for name, factory in catalogue().items():
        if opts.only and name not in opts.only:
            continue
        detector = factory()
        summary = score(detector, samples).summary()
        ms = [time_per_frame(detector, frames) for _ in range(2)]
        ref = [time_per_frame(shipped, frames) for _ in range(2)]
        results[name] = {
            "subsets": summary,
            "ms": statistics.median(ms),
            "ratio": statistics.median(ms) / statistics.median(ref),
        }
        logger.info("%s: %s, %.1f ms", name, json.dumps(summary), results[name]["ms"])
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (opts.out / "table.md").write_text(markdown(results))
    logger.info("wrote %s", opts.out / "table.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
