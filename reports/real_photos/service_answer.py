"""What the service now answers on the real photos: ``tools.real_photos``'s faces, with the unreadable rule applied
as ``/v1/analyze`` applies it (an unreadable face has no label, so it is not "sad").

    python -m tools.real_photos --crop aligned --videos --labels reports/real_photos/labels.csv --save-faces \\
        --out /tmp/rp_after
    PYTHONPATH=. python reports/real_photos/service_answer.py /tmp/rp_after [--labels reports/real_photos/labels.csv]

Reads ``faces.json`` (every face: box, score, aligned-crop probabilities and quality measures), judges each face
with ``serve.core.quality`` at the service's default thresholds, and prints two markdown tables: per subset, the
share of all faces answered sad (and sad with p >= 0.8) and the share answered unreadable; per hand label, what the
service answered (angry / happy / sad / unreadable) and its accuracy, the unreadable class included.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from serve.core.quality import FaceQuality, QualityRule, unreadable_reason
from tools.real_photos import LABEL_CLASSES, SURE, FaceRecord, groups, match_labels, read_labels

LABELS = ("angry", "happy", "sad")
ANSWERS = (*LABELS, "unreadable")
MODE = "aligned"


def load_records(path: Path) -> list[FaceRecord]:
    records = []
    for f in json.loads(path.read_text()):
        marks = None if f["landmarks"] is None else tuple(tuple(p) for p in f["landmarks"])
        records.append(FaceRecord(f["subset"], f["path"], f["frame"], tuple(f["box"]), f["score"], marks,
                                  f["probabilities"], f["quality"]))  # fmt: skip
    return records


def service_answer(record: FaceRecord, rule: QualityRule) -> tuple[str, float]:
    """(answer, top probability): ``unreadable`` for a flagged face, else the top label."""
    q = record.quality[MODE]
    probs = record.probs[MODE]
    if unreadable_reason(FaceQuality(q["face_px"], q["sharpness"], q["score"]), rule) is not None:
        return "unreadable", max(probs)
    top = max(range(len(probs)), key=probs.__getitem__)
    return LABELS[top], probs[top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="--out folder of a tools.real_photos --save-faces run")
    parser.add_argument("--labels", type=Path, help="hand labels CSV")
    opts = parser.parse_args()
    rule = QualityRule()
    records = load_records(opts.run / "faces.json")
    print(f"Unreadable rule {vars(rule)}, {MODE} crops.\n")
    print("| set | faces | % sad | % sad p >= 0.8 | % unreadable | angry / happy / sad / unreadable % |")
    print("|---|---:|---:|---:|---:|---|")
    for name, recs in groups(records).items():
        said = [service_answer(r, rule) for r in recs]
        n = len(said)
        count = Counter(a for a, _ in said)
        sure = sum(a == "sad" and p >= SURE for a, p in said)
        dist = " / ".join(f"{100 * count[a] / n:.1f}" for a in ANSWERS)
        print(f"| {name} | {n} | {100 * count['sad'] / n:.1f} | {100 * sure / n:.1f} | "
              f"{100 * count['unreadable'] / n:.1f} | {dist} |")  # fmt: skip
    if opts.labels:
        matched = [(lab, rec) for lab, rec in match_labels(read_labels(opts.labels), records) if rec is not None]
        print("\n| hand label | n | service said (angry / happy / sad / unreadable) | accuracy |")
        print("|---|---:|---|---:|")
        hits = {"3": [0, 0], "4": [0, 0]}
        for cls in LABEL_CLASSES:
            said = [service_answer(rec, rule)[0] for lab, rec in matched if lab.label == cls]
            if not said:
                continue
            right = cls if cls in ANSWERS else None
            ok = sum(s == right for s in said)
            acc = f"{100 * ok / len(said):.1f} %" if right else "- (no right answer)"
            print(f"| {cls} | {len(said)} | {' / '.join(str(said.count(a)) for a in ANSWERS)} | {acc} |")
            if right:
                hits["4"][0] += ok
                hits["4"][1] += len(said)
                if right in LABELS:
                    hits["3"][0] += ok
                    hits["3"][1] += len(said)
        for key, what in (("3", "angry + happy + sad"), ("4", "angry + happy + sad + unreadable")):
            ok, n = hits[key]
            print(f"| **{what}** | {n} | | **{100 * ok / n:.1f} %** |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
