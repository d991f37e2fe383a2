"""Real photos through the service's own frame path (decode -> detect -> crop -> classify), in-process, per subset.

    python -m tools.real_photos [--data DIR] [--model models/default] [--crop box aligned ...] [--videos]
                                [--labels reports/real_photos/labels.csv] [--out reports/real_photos]
    python -m tools.real_photos --registration [--fer-limit N]   # FER2013 registration vs service crops
    python -m tools.real_photos --sheets /tmp/sheets             # numbered contact sheets for hand labelling

Every photo of ``faces/boxes.parquet`` (under ``--data``, default ``$EMOTION_DATA_DIR`` or ``../shared/data``) is
decoded with ``serve.core.detection.crop.decode_frame``, its faces found by CenterFace with the service's
``EMOTION_DETECTOR_*`` settings, each face cropped by ``crop_faces`` in every ``--crop`` mode and classified by
``OnnxClassifier``: the numbers ``/v1/analyze`` returns. Crop modes: ``box`` (square box crop, the contract's
``face_margin``), ``aligned`` (landmark alignment onto FER2013's registration, box crop as fallback: the service),
``box-mX`` (box crop with margin X instead of the contract's). Prints the markdown tables and writes them
(``table.md``) and ``results.json`` to ``--out`` (``--save-faces``: also ``faces.json``, every face).

``--labels``: a CSV of hand labels (path, frame, x, y, w, h, label); each row is matched to a detected face of the
same photo/frame (IoU >= 0.5) and the model's accuracy on it is reported per crop mode. ``--videos`` adds the two
clips of ``video/`` (every ``--video-step``-th frame).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from models.contract import DEFAULT_MODEL_DIR, ModelContract, Preprocessing
from models.data import default_data_dir
from serve.core.detection import CenterFaceDetector, DetectorConfig, Face
from serve.core.detection.align import FER2013_TEMPLATE, eye_angle, face_alignment, similarity
from serve.core.detection.boxes import iou_matrix
from serve.core.detection.crop import crop_faces, crop_square, decode_frame, square_region
from serve.core.frames import detector_config
from serve.core.imaging import decode_image
from serve.core.inference import OnnxClassifier
from serve.core.quality import REASONS, FaceQuality, QualityRule, measure, unreadable_reason

logger = logging.getLogger("emotion.real_photos")
SUBSETS = ("facemask", "widerface_val", "ufdd_val")
CLIPS = ("pexels_wolfgang_langer_expressions.mp4", "facenet_pytorch_walking_crowd.mp4")
LABEL_CLASSES = ("angry", "happy", "sad", "neutral/other", "unreadable")
SURE = 0.8  # "sad with p >= SURE"


@dataclass
class FaceRecord:
    """One detected face: where it is, and per crop mode the model's probabilities."""

    subset: str
    path: str
    frame: int | None
    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...] | None
    probs: dict[str, list[float]] = field(default_factory=dict)
    quality: dict[str, dict[str, float]] = field(default_factory=dict)

    def reason(self, mode: str, rule: QualityRule) -> str | None:
        """``quality.unreadable_reason`` of this face as cut in ``mode``."""
        q = self.quality[mode]
        return unreadable_reason(FaceQuality(q["face_px"], q["sharpness"], q["score"]), rule)

    def to_json(self) -> dict[str, Any]:
        return {
            "subset": self.subset, "path": self.path, "frame": self.frame,
            "box": [round(v, 1) for v in self.box], "score": round(self.score, 4),
            "landmarks": None if self.landmarks is None else [[round(x, 1), round(y, 1)] for x, y in self.landmarks],
            "probabilities": {m: [round(p, 4) for p in ps] for m, ps in self.probs.items()},
            "quality": self.quality,
        }  # fmt: skip


# ---------------------------------------------------------------------------------------------------------- inputs


def photos(parquet: Path, limit_per_subset: int = 0) -> Iterator[tuple[str, str, bytes]]:
    """(subset, path, encoded bytes) of every photo of boxes.parquet (or the first n of each subset), in file order."""
    import pyarrow.parquet as pq

    seen: Counter[str] = Counter()
    for row in pq.read_table(parquet, columns=["image"]).to_pylist():
        path = row["image"]["path"]
        subset = path.split("/", 1)[0]
        seen[subset] += 1
        if not limit_per_subset or seen[subset] <= limit_per_subset:
            yield subset, path, row["image"]["bytes"]


def video_frames(path: Path, step: int) -> Iterator[tuple[int, np.ndarray]]:
    """(index, RGB uint8) of every ``step``-th frame, decoded with PyAV."""
    import av

    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i % step == 0:
                yield i, frame.to_ndarray(format="rgb24")


def contract_for(contract: ModelContract, mode: str) -> ModelContract:
    """The contract a crop mode cuts with: ``box-mX`` replaces ``face_margin`` by X."""
    if mode.startswith("box-m"):
        pre: Preprocessing = replace(contract.preprocessing, face_margin=float(mode.removeprefix("box-m")))
        return replace(contract, preprocessing=pre)
    if mode not in ("box", "aligned"):
        raise ValueError(f"unknown crop mode {mode!r}: box, aligned or box-m<margin>")
    return contract


def crops_for(image: Image.Image, faces: Sequence[Face], contract: ModelContract, mode: str) -> np.ndarray:
    """What ``FrameAnalyzer.prepare_image`` cuts for these faces, in one crop mode (``aligned`` = the service)."""
    boxes = np.asarray([f.box for f in faces], dtype=np.float32).reshape(-1, 4).tolist()
    landmarks = [f.landmarks for f in faces] if mode == "aligned" else None
    return crop_faces(image, boxes, contract_for(contract, mode), landmarks)


class Runner:
    """Detect once per image, crop in every mode, classify all crops of a mode in one call at the end."""

    def __init__(self, model_dir: Path, detector: DetectorConfig, modes: Sequence[str], max_pixels: int) -> None:
        self.classifier = OnnxClassifier(model_dir, run_batch_size=64)
        self.detector = CenterFaceDetector(detector)
        self.modes, self.max_pixels = tuple(modes), max_pixels
        self.records: list[FaceRecord] = []
        self._crops: dict[str, list[np.ndarray]] = {m: [] for m in self.modes}

    def add(self, subset: str, path: str, frame: int | None, image: Image.Image) -> None:
        faces = self.detector.detect(np.asarray(image))
        records = [FaceRecord(subset, path, frame, f.box, f.score, f.landmarks) for f in faces]
        self.records.extend(records)
        for mode in self.modes:
            crops = crops_for(image, faces, self.classifier.contract, mode)
            self._crops[mode].extend(crops)
            for record, face, crop in zip(records, faces, crops, strict=True):
                q = measure(face.box, crop, face.score)
                record.quality[mode] = {"face_px": round(q.face_px, 1), "sharpness": round(q.sharpness, 1),
                                        "score": round(q.score, 4)}  # fmt: skip

    def add_bytes(self, subset: str, path: str, data: bytes) -> None:
        self.add(subset, path, None, decode_frame(data, max_pixels=self.max_pixels))

    def classify(self) -> list[FaceRecord]:
        for mode in self.modes:
            if not self._crops[mode]:
                continue
            probs = self.classifier.predict_proba(np.stack(self._crops[mode]))
            for record, row in zip(self.records, probs.tolist(), strict=True):
                record.probs[mode] = row
        return self.records


# ---------------------------------------------------------------------------------------------------------- tables


def summarise(records: Sequence[FaceRecord], mode: str, labels: Sequence[str]) -> dict[str, Any]:
    """faces, share labelled sad, share sad with p >= SURE, median top probability, label distribution."""
    probs = np.asarray([r.probs[mode] for r in records], dtype=np.float64).reshape(-1, len(labels))
    top = probs.argmax(axis=1) if len(probs) else np.zeros(0, int)
    sad = labels.index("sad") if "sad" in labels else -1
    n = len(probs)
    return {
        "faces": n,
        "sad": float(np.mean(top == sad)) if n else 0.0,
        "sad_sure": float(np.mean((top == sad) & (probs.max(axis=1) >= SURE))) if n else 0.0,
        "median_top_p": float(np.median(probs.max(axis=1))) if n else 0.0,
        "distribution": {lab: float(np.mean(top == i)) if n else 0.0 for i, lab in enumerate(labels)},
    }


def groups(records: Sequence[FaceRecord]) -> dict[str, list[FaceRecord]]:
    """Subsets of the photos in a fixed order, then "all photos", then each video clip."""
    out: dict[str, list[FaceRecord]] = {}
    photos_ = [r for r in records if r.frame is None]
    for subset in SUBSETS:
        out[subset] = [r for r in photos_ if r.subset == subset]
    out["all photos"] = photos_
    for clip in sorted({r.subset for r in records if r.frame is not None}):
        out[clip] = [r for r in records if r.subset == clip]
    return {k: v for k, v in out.items() if v}


def table(summary: dict[str, dict[str, dict[str, Any]]], labels: Sequence[str]) -> str:
    head = "| set | crop | faces | % sad | % sad p >= 0.8 | median top p | " + " / ".join(labels) + " % |\n"
    lines = [head + "|---|---|---:|---:|---:|---:|---|"]
    for name, per_mode in summary.items():
        for mode, s in per_mode.items():
            dist = " / ".join(f"{100 * s['distribution'][lab]:.1f}" for lab in labels)
            lines.append(
                f"| {name} | {mode} | {s['faces']} | {100 * s['sad']:.1f} | {100 * s['sad_sure']:.1f} | "
                f"{s['median_top_p']:.3f} | {dist} |"
            )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class Label:
    path: str
    frame: int | None
    box: tuple[float, float, float, float]
    label: str


def read_labels(path: Path) -> list[Label]:
    out = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["label"] not in LABEL_CLASSES:
                raise ValueError(f"{path}: unknown label {row['label']!r} (one of {LABEL_CLASSES})")
            frame = int(row["frame"]) if row.get("frame") else None
            box = (float(row["x"]), float(row["y"]), float(row["w"]), float(row["h"]))
            out.append(Label(row["path"], frame, box, row["label"]))
    return out


def match_labels(labels: Sequence[Label], records: Sequence[FaceRecord]) -> list[tuple[Label, FaceRecord | None]]:
    """Each label with the detected face of the same photo/frame it overlaps best (IoU >= 0.5), or None."""
    by_image: dict[tuple[str, int | None], list[FaceRecord]] = {}
    for r in records:
        by_image.setdefault((r.path, r.frame), []).append(r)
    out: list[tuple[Label, FaceRecord | None]] = []
    for lab in labels:
        cands = by_image.get((lab.path, lab.frame), [])
        if not cands:
            out.append((lab, None))
            continue
        iou = iou_matrix(np.asarray([lab.box]), np.asarray([c.box for c in cands]))[0]
        best = int(np.argmax(iou))
        out.append((lab, cands[best] if iou[best] >= 0.5 else None))
    return out


def labelled_report(
    matched: Sequence[tuple[Label, FaceRecord | None]], modes: Sequence[str], labels: Sequence[str]
) -> dict[str, Any]:
    """Per crop mode: accuracy on faces labelled with a model class (overall, per class, macro), and for the other
    labels what the model said (distribution, median top probability)."""
    found = [(lab, rec) for lab, rec in matched if rec is not None]
    report: dict[str, Any] = {"labelled": len(matched), "matched": len(found),
                              "counts": dict(Counter(lab.label for lab, _ in found))}  # fmt: skip
    for mode in modes:
        res: dict[str, Any] = {}
        hits: list[bool] = []
        for cls in LABEL_CLASSES:
            rows = [rec for lab, rec in found if lab.label == cls]
            if not rows:
                continue
            probs = np.asarray([r.probs[mode] for r in rows])
            said = [labels[i] for i in probs.argmax(axis=1)]
            entry: dict[str, Any] = {
                "n": len(rows),
                "said": {lab: said.count(lab) for lab in labels},
                "median_top_p": float(np.median(probs.max(axis=1))),
            }
            if cls in labels:
                entry["accuracy"] = said.count(cls) / len(rows)
                hits.extend(s == cls for s in said)
            res[cls] = entry
        scored = [c for c in labels if c in res]
        res["accuracy"] = float(np.mean(hits)) if hits else None
        res["macro_recall"] = float(np.mean([res[c]["accuracy"] for c in scored])) if scored else None
        report[mode] = res
    return report


def labelled_table(report: dict[str, Any], modes: Sequence[str], labels: Sequence[str]) -> str:
    lines = [
        f"Labelled faces: {report['labelled']}, matched to a detection: {report['matched']} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(report['counts'].items()))}).\n",
        "| label | n | crop | model said (" + " / ".join(labels) + ") | accuracy | median top p |",
        "|---|---:|---|---|---:|---:|",
    ]
    for cls in LABEL_CLASSES:
        for mode in modes:
            e = report[mode].get(cls)
            if e is None:
                continue
            acc = f"{100 * e['accuracy']:.1f} %" if "accuracy" in e else "-"
            said = " / ".join(str(e["said"][lab]) for lab in labels)
            lines.append(f"| {cls} | {e['n']} | {mode} | {said} | {acc} | {e['median_top_p']:.3f} |")
    for mode in modes:
        r = report[mode]
        if r["accuracy"] is not None:
            lines.append(
                f"| **angry+happy+sad** | {sum(report[mode][c]['n'] for c in labels if c in report[mode])} | {mode} "
                f"| | **{100 * r['accuracy']:.1f} %** (macro recall {100 * r['macro_recall']:.1f} %) | |"
            )
    return "\n".join(lines) + "\n"


def quality_split(
    matched: Sequence[tuple[Label, FaceRecord | None]], mode: str, rule: QualityRule
) -> dict[str, dict[str, int]]:
    """How ``quality.unreadable_reason`` splits the labelled faces: {hand label: {reason or "readable": count}}."""
    out: dict[str, Counter[str]] = {}
    for lab, rec in matched:
        if rec is not None:
            out.setdefault(lab.label, Counter())[rec.reason(mode, rule) or "readable"] += 1
    return {k: dict(v) for k, v in out.items()}


# ------------------------------------------------------------------------------------------------------ registration


def _stats(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(v)), "q25": float(np.percentile(v, 25)), "q75": float(np.percentile(v, 75)),
            "mean": float(v.mean()), "sd": float(v.std())}  # fmt: skip


def geometry(points: np.ndarray) -> dict[str, dict[str, float]]:
    """Registration measures of ``[n, 5, 2]`` landmarks in 48x48-frame pixels."""
    le, re, nose = points[:, 0], points[:, 1], points[:, 2]
    mid, mouth = (le + re) / 2, (points[:, 3] + points[:, 4]) / 2
    return {
        "left_eye_x": _stats(le[:, 0]), "left_eye_y": _stats(le[:, 1]),
        "right_eye_x": _stats(re[:, 0]), "right_eye_y": _stats(re[:, 1]),
        "inter_ocular": _stats(np.hypot(*(re - le).T)),
        "eye_angle_deg": _stats(np.asarray([eye_angle(p) for p in points])),
        "abs_eye_angle_deg": _stats(np.abs([eye_angle(p) for p in points])),
        "eye_mid_x": _stats(mid[:, 0]), "eye_mid_y": _stats(mid[:, 1]),
        "nose_y": _stats(nose[:, 1]), "mouth_y": _stats(mouth[:, 1]),
        "eye_to_mouth": _stats(np.hypot(*(mouth - mid).T)),
    }  # fmt: skip


def procrustes_template(points: np.ndarray, rounds: int = 5) -> np.ndarray:
    """Per-point median of every face fitted (similarity) onto the running template, mirror-symmetrised, 48 px."""
    mirror = [1, 0, 2, 4, 3]

    def symmetric(t: np.ndarray) -> np.ndarray:
        flipped = t[mirror].copy()
        flipped[:, 0] = 48.0 - flipped[:, 0]
        return np.asarray((t + flipped) / 2)

    template = symmetric(np.median(points, axis=0))
    for _ in range(rounds):
        fitted = []
        for p in points:
            m = similarity(p, template)
            fitted.append(p @ m[:, :2].T + m[:, 2])
        template = symmetric(np.median(np.asarray(fitted), axis=0))
    return template


def registration(opts: argparse.Namespace, contract: ModelContract, photo_records: list[FaceRecord]) -> dict[str, Any]:
    """FER2013 test faces upscaled 4x and edge-padded, through CenterFace: where their landmarks and boxes sit in
    the 48x48 frame; then the same for the service's crops of the real photos (box crop and aligned)."""
    import pyarrow.parquet as pq

    up, pad = 4, 64
    detector = CenterFaceDetector(DetectorConfig(input_long_side=0, threshold=opts.fer_threshold))
    classifier = OnnxClassifier(opts.model, run_batch_size=64)
    rows = [r for r in pq.read_table(opts.data / "fer2013" / "test.parquet").to_pylist()
            if r["label"] in contract.labels]  # fmt: skip
    if opts.fer_limit:
        rows = rows[:: max(1, len(rows) // opts.fer_limit)][: opts.fer_limit]
    pts, boxes, truth, found = [], [], [], []
    originals = [decode_image(r["image"]["bytes"], contract, max_pixels=10_000) for r in rows]  # /v1/classify's path
    all_truth = np.asarray([contract.labels.index(r["label"]) for r in rows])
    crops: dict[str, list[np.ndarray]] = {"box": [], "aligned": []}
    start = time.perf_counter()
    for i, row in enumerate(rows):
        grey = Image.open(io.BytesIO(row["image"]["bytes"])).convert("L")
        big = np.pad(np.asarray(grey.resize((48 * up, 48 * up), Image.Resampling.BICUBIC)), pad, mode="edge")
        rgb = np.repeat(big[:, :, None], 3, axis=2)
        faces = detector.detect(rgb)[:1]
        if not faces:
            continue
        face = faces[0]
        assert face.landmarks is not None
        pts.append((np.asarray(face.landmarks) - pad) / up)
        b = np.asarray(face.box, dtype=np.float64)
        boxes.append(np.concatenate([(b[:2] - pad) / up, b[2:] / up]))
        truth.append(contract.labels.index(row["label"]))
        found.append(i)
        image = Image.fromarray(rgb)
        for mode in crops:
            crops[mode].extend(crops_for(image, faces, contract, mode))
    logger.info("FER2013: %d of %d faces found in %.0f s", len(pts), len(rows), time.perf_counter() - start)
    points, box_arr, y = np.asarray(pts), np.asarray(boxes), np.asarray(truth)
    original = classifier.predict_proba(np.stack(originals)).argmax(1)
    acc = {
        f"all {len(rows)}, original 48x48 (/v1/classify path)": float(np.mean(original == all_truth)),
        f"the {len(found)} detected, original 48x48": float(np.mean(original[found] == y)),
    }
    for mode, cs in crops.items():
        acc[f"detected, {mode} crop"] = float(np.mean(classifier.predict_proba(np.stack(cs)).argmax(1) == y))
    template = procrustes_template(points)

    def crop_frame(record: FaceRecord, mode: str) -> np.ndarray:
        marks = np.asarray(record.landmarks, dtype=np.float64)
        if mode == "aligned":
            m = face_alignment(record.landmarks, record.box, 48, 48)
            if m is not None:
                return np.asarray(marks @ m[:, :2].T + m[:, 2])
        left, top, right, _ = square_region(record.box, contract.preprocessing.face_margin)
        return np.asarray((marks - [left, top]) * 48.0 / (right - left))

    service: dict[str, Any] = {}
    for subset in (*SUBSETS, "all photos"):
        recs = [r for r in photo_records if r.landmarks is not None and subset in (r.subset, "all photos")]
        service[subset] = {m: geometry(np.asarray([crop_frame(r, m) for r in recs])) for m in ("box", "aligned")}
        service[subset]["n"] = len(recs)
    fallback = sum(face_alignment(r.landmarks, r.box, 48, 48) is None for r in photo_records)
    return {
        "fer": {"faces": len(rows), "found": len(pts), "threshold": opts.fer_threshold, "upscale": up, "pad": pad,
                "geometry": geometry(points),
                "box": {k: _stats(v) for k, v in zip(("x", "y", "w", "h"), box_arr.T, strict=True)},
                "implied_margin": _stats((48.0 / box_arr[:, 2:].max(axis=1) - 1.0) / 2.0),
                "accuracy": acc, "template_px": template.round(2).tolist(),
                "shipped_template_px": (np.asarray(FER2013_TEMPLATE) * 48).round(2).tolist()},
        "service": service, "aligned_fallback": {"faces": len(photo_records), "box_crop_fallback": int(fallback)},
    }  # fmt: skip


def registration_markdown(reg: dict[str, Any]) -> str:
    fer, service = reg["fer"], reg["service"]
    rows = [("inter_ocular", "inter-ocular distance (px)"), ("eye_to_mouth", "eye midpoint to mouth centre (px)"),
            ("eye_mid_x", "eye midpoint x"), ("eye_mid_y", "eye midpoint y"), ("left_eye_x", "left eye x"),
            ("left_eye_y", "left eye y"), ("right_eye_x", "right eye x"), ("right_eye_y", "right eye y"),
            ("nose_y", "nose y"), ("mouth_y", "mouth centre y"), ("eye_angle_deg", "eye-line angle (deg)"),
            ("abs_eye_angle_deg", "abs eye-line angle (deg)")]  # fmt: skip

    def cell(s: dict[str, float]) -> str:
        return f"{s['median']:.1f} [{s['q25']:.1f}, {s['q75']:.1f}]"

    cols = [("FER2013 test", fer["geometry"])]
    for subset in ("all photos", *SUBSETS):
        for mode in ("box", "aligned"):
            cols.append((f"{subset} {mode} (n={service[subset]['n']})", service[subset][mode]))
    out = ["| measure (48x48 frame, median [IQR]) | " + " | ".join(c for c, _ in cols) + " |",
           "|---" * (len(cols) + 1) + "|"]  # fmt: skip
    for key, name in rows:
        out.append(f"| {name} | " + " | ".join(cell(g[key]) for _, g in cols) + " |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------------- sheets


def write_sheets(records: Sequence[FaceRecord], images: dict[tuple[str, int | None], Image.Image], out: Path,
                 per_sheet: int = 20, columns: int = 5, tile: int = 128) -> None:  # fmt: skip
    """Numbered contact sheets (colour, box + 25 % margin, ``tile`` px) and ``index.csv`` (number -> photo, box)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "index.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["n", "path", "frame", "x", "y", "w", "h", "face_px"])
        for n, r in enumerate(records):
            writer.writerow([n, r.path, "" if r.frame is None else r.frame, *(f"{v:.1f}" for v in r.box),
                             f"{min(r.box[2:]):.0f}"])  # fmt: skip
    for first in range(0, len(records), per_sheet):
        chunk = records[first : first + per_sheet]
        rows = math.ceil(len(chunk) / columns)
        sheet = Image.new("RGB", (columns * tile, rows * tile), "black")
        draw = ImageDraw.Draw(sheet)
        for k, r in enumerate(chunk):
            pixels = np.asarray(images[(r.path, r.frame)])
            face = Image.fromarray(crop_square(pixels, square_region(r.box, 0.25))).resize((tile, tile))
            x, y = (k % columns) * tile, (k // columns) * tile
            sheet.paste(face, (x, y))
            text = f"{first + k} {min(r.box[2:]):.0f}px"
            draw.rectangle((x, y, x + 8 * len(text), y + 12), fill="black")
            draw.text((x + 2, y), text, fill="yellow")
        sheet.save(out / f"sheet_{first // per_sheet:03d}.png")


# ---------------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.real_photos", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="folder holding faces/, fer2013/, video/")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="model folder (config.json + ONNX)")
    parser.add_argument("--crop", nargs="+", default=["box", "aligned"], help="crop modes: box, aligned, box-m<margin>")
    parser.add_argument("--labels", type=Path, help="hand labels CSV (path, frame, x, y, w, h, label)")
    parser.add_argument("--videos", action="store_true", help="also every --video-step-th frame of the video clips")
    parser.add_argument("--video-step", type=int, default=10)
    parser.add_argument("--limit", type=int, default=0, help="photos per subset (quick runs; 0 = all)")
    parser.add_argument("--registration", action="store_true", help="measure FER2013's registration (alignment.md)")
    parser.add_argument("--fer-limit", type=int, default=0, help="FER2013 test faces for --registration (0 = all)")
    parser.add_argument("--fer-threshold", type=float, default=0.3, help="detector threshold on upscaled FER faces")
    parser.add_argument("--sheets", type=Path, help="write numbered contact sheets of every face here")
    parser.add_argument("--out", type=Path, help="folder for results.json and table.md")
    parser.add_argument("--save-faces", action="store_true", help="also write every face to --out/faces.json")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from serve.runtime.settings import load_settings

    settings = load_settings(model_dir=str(opts.model))
    modes = list(dict.fromkeys(opts.crop + (["box", "aligned"] if opts.registration else [])))
    for mode in modes:
        contract_for(_contract(opts.model), mode)  # an unknown mode fails before any work
    runner = Runner(opts.model, detector_config(settings), modes, settings.max_image_pixels)
    keep = opts.sheets is not None
    images: dict[tuple[str, int | None], Image.Image] = {}
    start = time.perf_counter()
    for subset, path, data in photos(opts.data / "faces" / "boxes.parquet", opts.limit):
        runner.add_bytes(subset, path, data)
        if keep:
            images[(path, None)] = decode_frame(data, max_pixels=settings.max_image_pixels)
    logger.info("photos: %d faces in %.0f s", len(runner.records), time.perf_counter() - start)
    if opts.videos:
        for clip in CLIPS:
            for index, rgb in video_frames(opts.data / "video" / clip, opts.video_step):
                image = Image.fromarray(rgb)
                runner.add(clip, f"video/{clip}", index, image)
                if keep:
                    images[(f"video/{clip}", index)] = image
    records = runner.classify()
    labels = runner.classifier.labels
    if opts.sheets:
        write_sheets(records, images, opts.sheets)
        logger.info("wrote %d faces on sheets in %s", len(records), opts.sheets)
    served = "aligned" if "aligned" in modes else modes[0]
    rule = QualityRule()
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for name, recs in groups(records).items():
        summary[name] = {mode: summarise(recs, mode, labels) for mode in modes}
        readable = [r for r in recs if r.reason(served, rule) is None]
        summary[name][f"{served}, readable"] = summarise(readable, served, labels)
    contract = runner.classifier.contract
    results: dict[str, Any] = {
        "model": f"{contract.name} {contract.version}", "detector": vars(detector_config(settings)),
        "modes": modes, "quality_rule": vars(rule), "summary": summary,
    }  # fmt: skip
    text = "## Per subset\n\n" + table(summary, labels)
    text += f"\n`{served}, readable`: only the faces that pass `serve.core.quality` {vars(rule)}.\n"
    if opts.labels:
        matched = match_labels(read_labels(opts.labels), records)
        results["labelled"] = labelled_report(matched, modes, labels)
        text += "\n## Hand-labelled faces\n\n" + labelled_table(results["labelled"], modes, labels)
        results["quality_split"] = quality_split(matched, served, rule)
        text += f"\n## Unreadable rule {vars(rule)} on the labelled faces ({served} crops)\n\n"
        kinds = ("readable", *REASONS)
        text += "| hand label | " + " | ".join(kinds) + " |\n|---" + "|---:" * len(kinds) + "|\n"
        for cls in LABEL_CLASSES:
            split = results["quality_split"].get(cls, {})
            text += f"| {cls} | " + " | ".join(str(split.get(k, 0)) for k in kinds) + " |\n"
    if opts.registration:
        photo_records = [r for r in records if r.frame is None]
        results["registration"] = registration(opts, _contract(opts.model), photo_records)
        reg_md = registration_markdown(results["registration"])
        text += "\n## Registration\n\n" + reg_md
        fer = results["registration"]["fer"]
        text += f"\nFER2013 accuracy: {json.dumps(fer['accuracy'])}\n\nderived template (48 px): {fer['template_px']}\n"
    print(text)
    if opts.out:
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        if opts.save_faces:
            (opts.out / "faces.json").write_text(json.dumps([r.to_json() for r in records]) + "\n")
        (opts.out / "table.md").write_text(text)
        logger.info("wrote %s", opts.out)
    return 0


def _contract(model_dir: Path) -> ModelContract:
    from models.contract import load_contract

    return load_contract(model_dir)


if __name__ == "__main__":
    raise SystemExit(main())
