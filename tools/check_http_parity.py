"""Every FER2013 test image of the model's classes through a running service vs onnxruntime in-process.

    python tools/check_http_parity.py --url http://127.0.0.1:8000 [--data ../shared/data/fer2013/test.parquet]

Prints how many HTTP answers equal the in-process ones on the same bytes (the same label, and model probabilities
within 1e-6: both sides apply the contract's ``output.temperature``, config.json's label grouping and the default
unreadable rule, so a service started with other EMOTION_UNREADABLE_* settings can differ), and the HTTP accuracy
next to the accuracy in the bundled metrics.json. Exit code 1 on any mismatch. (The CI suite checks 300 images;
this is the full 3,979-image run.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq

from models.contract import DEFAULT_MODEL_DIR, load_metrics
from models.data import default_fer_dir
from serve.core.imaging import decode_face
from serve.core.inference import OnnxClassifier, answer
from serve.core.quality import measure_upload, unreadable_reason

PROBABILITY_ATOL = 1e-6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--data", type=Path, default=default_fer_dir() / "test.parquet")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--chunk", type=int, default=32)
    args = parser.parse_args(argv)

    clf = OnnxClassifier(args.model_dir)
    rows = [(r["image"]["bytes"], r["label"]) for r in pq.read_table(args.data).to_pylist() if r["label"] in clf.labels]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    http_labels: list[str | None] = []
    local_labels: list[str | None] = []
    close: list[bool] = []
    worst = 0.0
    with httpx.Client(base_url=args.url, timeout=60, headers=headers) as client:
        for start in range(0, len(rows), args.chunk):
            chunk = rows[start : start + args.chunk]
            files = [("files", (f"{i}.jpg", data, "image/jpeg")) for i, (data, _) in enumerate(chunk)]
            response = client.post("/v1/classify/batch", files=files)
            response.raise_for_status()
            results = response.json()["results"]
            http_labels += [item.get("label", "<error>") for item in results]
            decoded = [decode_face(data, clf.contract, max_pixels=10**7) for data, _ in chunk]
            probs = clf.predict_proba(np.stack([pixels for pixels, _ in decoded]))
            verdicts = [unreadable_reason(measure_upload(size, pixels)) for pixels, size in decoded]
            local_labels += [answer(row, clf.contract, v).label for row, v in zip(probs, verdicts, strict=True)]
            for item, row in zip(results, probs, strict=True):
                got = item.get("model_probabilities") or item.get("probabilities") or {}
                diff = max((abs(float(got[k]) - float(p)) for k, p in zip(clf.labels, row, strict=True) if k in got),
                           default=float("inf"))  # fmt: skip
                worst = max(worst, diff)
                close.append(set(got) == set(clf.labels) and diff <= PROBABILITY_ATOL)
    truth = [label for _, label in rows]
    same = sum(a == b and ok for a, b, ok in zip(http_labels, local_labels, close, strict=True))
    accuracy = float(np.mean([a == b for a, b in zip(http_labels, truth, strict=True)]))
    card = (load_metrics(args.model_dir) or {}).get("accuracy")
    sys.stdout.write(f"n={len(rows)} http==in-process {same}/{len(rows)} (max |probability diff| {worst:.1e}, "
                     f"temperature {clf.contract.output.temperature:g}); http accuracy {accuracy:.4f}; "
                     f"metrics.json accuracy {card}\n")  # fmt: skip
    return 0 if same == len(rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
