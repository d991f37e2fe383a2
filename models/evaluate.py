"""Evaluate a model folder on one split of a dataset and write a JSON report plus a confusion-matrix PNG.

The model is either an ONNX model folder (``config.json`` + the ONNX file; run with onnxruntime, torch is never
imported) or a training checkpoint folder (HF ``config.json`` + ``emotion_contract.json``; run with torch).
Classes, input size and preprocessing come from the model's contract, never from the command line.

For the ``test`` split, when the dataset also has a ``train`` split, the report adds the same metrics on the
test images whose pixels do not occur in train (FER2013 has 568 such exact duplicates). Cross-entropy and the
expected calibration error (``ece``, 15 bins) score the probabilities as served: softmax(logits / T) with the
contract's ``output.temperature`` T (recorded as ``temperature``).

    python -m models.evaluate --model models/default --split test --output runs/eval/test.json
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.cli_args import parse_arguments
from models.contract import ContractError, ModelContract, normalise
from models.data import DatasetError, FaceDataset, default_fer_dir, overlap_mask
from models.metrics import classification_report, format_report, save_confusion_png
from models.predictors import load_for_contract, load_model, make_session, predict_logits

# ``preprocess`` is the old name of ``models.contract.normalise``; it and the ORT helpers stay importable from here.
preprocess = normalise
__all__ = [
    "EvaluateArguments", "evaluate", "load_for_contract", "main", "make_session", "preprocess", "report_from_logits",
    "write_report",
]  # fmt: skip

logger = logging.getLogger(__name__)


def train_overlap(data_dir: Path, test: FaceDataset, contract: ModelContract) -> np.ndarray | None:
    """Mask of test faces whose pixels occur in ``train`` (any class), or None when there is no train split."""
    try:
        train = load_for_contract(data_dir, "train", contract, all_classes=True)
    except DatasetError as exc:
        logger.info("no deduplicated test metrics: %s", exc)
        return None
    return overlap_mask(test, train)


def evaluate(
    model_dir: Path | str,
    data_dir: Path | str,
    split: str = "test",
    *,
    batch_size: int = 64,
    threads: int = 1,
    dedup: bool = True,
) -> dict[str, Any]:
    """Evaluate one model folder on one split; returns the report dict (see the module docstring).

    Args:
        model_dir: an ONNX model folder or a training checkpoint folder.
        data_dir: the dataset root (``<root>/<split>.parquet`` or ``<root>/<split>/<label>/``).
        split: which split to score.
        batch_size: rows per inference call.
        threads: onnxruntime / torch intra-op threads.
        dedup: for ``split == "test"``, also score the test faces not found in ``train``.
    """
    model_dir, data_dir = Path(model_dir), Path(data_dir)
    contract, predict, kind = load_model(model_dir, threads)
    data = load_for_contract(data_dir, split, contract)
    logger.info("%s: %d faces of %s (%d unreadable skipped)", split, len(data), list(contract.labels), data.skipped)
    logits = predict_logits(predict, normalise(data.images, contract), batch_size)
    return report_from_logits(
        logits, data, contract, model={"path": str(model_dir), "kind": kind}, data_dir=data_dir, split=split,
        batch_size=batch_size, dedup=dedup,
    )  # fmt: skip


def report_from_logits(
    logits: np.ndarray,
    data: FaceDataset,
    contract: ModelContract,
    *,
    model: dict[str, Any],
    data_dir: Path,
    split: str,
    batch_size: int,
    dedup: bool = True,
) -> dict[str, Any]:
    """The report of ``evaluate`` from the logits of ``data`` (one split); probabilities (cross-entropy, ECE) are
    scored at the contract's ``output.temperature``, as served. ``model`` holds the report's ``path`` and ``kind``."""
    temperature = contract.output.temperature
    report: dict[str, Any] = {
        "model": {**model, "name": contract.name, "version": contract.version},
        "dataset": {
            "path": str(data_dir),
            "split": split,
            "skipped_corrupt": data.skipped,
            "dropped_by_class": data.dropped_by_class,
        },
        "batch_size": batch_size,
        **classification_report(logits, data.labels, contract.labels, temperature),
    }
    report["skipped_corrupt"] = data.skipped
    if dedup and split == "test":
        mask = train_overlap(data_dir, data, contract)
        if mask is not None:
            keep = ~mask
            report["dedup"] = {
                "excluded_in_train": int(mask.sum()),
                **classification_report(logits[keep], data.labels[keep], contract.labels, temperature),
            }
    return report


@dataclass
class EvaluateArguments:
    """Command-line arguments of ``emotion evaluate``."""

    model: Path = field(metadata={"help": "ONNX model folder or training checkpoint folder"})
    data_dir: Path = field(default_factory=default_fer_dir, metadata={"help": "dataset root"})
    split: str = field(default="test", metadata={"help": "split to score"})
    output: Path | None = field(default=None, metadata={"help": "report JSON (default: <model>/eval-<split>.json)"})
    batch_size: int = field(default=64, metadata={"help": "rows per inference call"})
    threads: int = field(default=1, metadata={"help": "intra-op threads (0 = library default)"})
    dedup: bool = field(default=True, metadata={"help": "also score the test faces that do not occur in train"})

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size={self.batch_size} must be >= 1")
        if self.threads < 0:
            raise ValueError(f"--threads={self.threads} must be >= 0")


def write_report(report: dict[str, Any], output: Path) -> Path:
    """Write the report JSON and, beside it, ``<stem>.png`` with the confusion matrix; returns the PNG path."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    title = f"{report['model']['name']} on {report['dataset']['split']}: acc {report['accuracy']:.3f}"
    return save_confusion_png(report, output.with_suffix(".png"), title=title)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_arguments(EvaluateArguments, argv, prog="emotion evaluate", description=__doc__)
    try:
        report = evaluate(
            args.model, args.data_dir, args.split, batch_size=args.batch_size, threads=args.threads, dedup=args.dedup
        )
    except (ContractError, DatasetError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    output = args.output or args.model / f"eval-{args.split}.json"
    png = write_report(report, output)
    logger.info("wrote %s and %s", output, png)
    sys.stdout.write(format_report(report, title=f"{args.model} / {args.split}") + "\n")
    if "dedup" in report:
        sys.stdout.write(format_report(report["dedup"], title="without test faces that occur in train") + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
