"""Evaluate a model folder on one split of a dataset and write a JSON report plus a confusion-matrix PNG.

The model is either an ONNX model folder (``config.json`` + the ONNX file; run with onnxruntime, torch is never
imported) or a training checkpoint folder (HF ``config.json`` + ``emotion_contract.json``; run with torch).
Classes, input size and preprocessing come from the model's contract, never from the command line.

For the ``test`` split, when the dataset also has a ``train`` split, the report adds the same metrics on the
test images whose pixels do not occur in train (FER2013 has 568 such exact duplicates).

    python -m models.evaluate --model models/default --split test --output runs/eval/test.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.contract import CHECKPOINT_CONTRACT_FILE, ContractError, ModelContract, check_onnx_matches, load_contract
from models.data import DatasetError, FaceDataset, default_fer_dir, load_split, overlap_mask
from models.metrics import classification_report, format_report, save_confusion_png

logger = logging.getLogger(__name__)

Predictor = Callable[[np.ndarray], np.ndarray]


def preprocess(images: np.ndarray, contract: ModelContract) -> np.ndarray:
    """uint8 ``[N, H, W]`` or ``[N, H, W, C]`` -> float32 NCHW ``(x * scale - mean) / std``, as the contract says."""
    p = contract.preprocessing
    x = images.astype(np.float32)
    x = x[:, None, :, :] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    if x.shape[1:] != (contract.input.channels, contract.input.height, contract.input.width):
        raise ContractError(
            f"images of shape {tuple(x.shape[1:])} (C, H, W) do not fit the contract input "
            f"{(contract.input.channels, contract.input.height, contract.input.width)}"
        )
    mean = np.asarray(p.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(p.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((x * np.float32(p.scale) - mean) / std, dtype=np.float32)


def make_session(onnx_path: Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session with a fixed thread count (0 = onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])


def onnx_predictor(model_dir: Path, contract: ModelContract, threads: int = 1) -> Predictor:
    """``x -> logits`` through the folder's ONNX file; raises ContractError when the file and config.json disagree."""
    session = make_session(model_dir / contract.onnx_file, threads)
    check_onnx_matches(contract, session)

    def predict(x: np.ndarray) -> np.ndarray:
        out = session.run([contract.output.name], {contract.input.name: x})[0]
        return np.asarray(out, dtype=np.float32)

    return predict


def is_checkpoint(model_dir: Path) -> bool:
    return (Path(model_dir) / CHECKPOINT_CONTRACT_FILE).is_file()


def load_model(model_dir: Path | str, threads: int = 1) -> tuple[ModelContract, Predictor, str]:
    """(contract, predictor, kind) for an ONNX model folder (kind "onnx") or a checkpoint folder (kind "checkpoint")."""
    model_dir = Path(model_dir)
    if is_checkpoint(model_dir):
        from models.export import checkpoint_predictor  # torch only on this path

        contract, predict = checkpoint_predictor(model_dir, threads)
        return contract, predict, "checkpoint"
    contract = load_contract(model_dir)
    return contract, onnx_predictor(model_dir, contract, threads), "onnx"


def predict_logits(predict: Predictor, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Run ``predict`` over ``x`` in batches of ``batch_size`` rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    parts = [predict(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return np.concatenate(parts, axis=0)


def load_for_contract(data_dir: Path, split: str, contract: ModelContract) -> FaceDataset:
    """The split's faces of the contract's classes, decoded at the contract's size and colour mode."""
    return load_split(
        data_dir,
        split,
        contract.labels,
        color_mode=contract.preprocessing.color_mode,
        size=(contract.input.height, contract.input.width),
        resize=contract.preprocessing.resize,
    )


def train_overlap(data_dir: Path, test: FaceDataset, contract: ModelContract) -> np.ndarray | None:
    """Mask of test faces whose pixels occur in ``train`` (any class), or None when there is no train split."""
    try:
        train = load_split(
            data_dir,
            "train",
            None,
            color_mode=contract.preprocessing.color_mode,
            size=(contract.input.height, contract.input.width),
            resize=contract.preprocessing.resize,
        )
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
    logits = predict_logits(predict, preprocess(data.images, contract), batch_size)
    report: dict[str, Any] = {
        "model": {"path": str(model_dir), "kind": kind, "name": contract.name, "version": contract.version},
        "dataset": {
            "path": str(data_dir),
            "split": split,
            "skipped_corrupt": data.skipped,
            "dropped_by_class": data.dropped_by_class,
        },
        "batch_size": batch_size,
        **classification_report(logits, data.labels, contract.labels),
    }
    report["skipped_corrupt"] = data.skipped
    if dedup and split == "test":
        mask = train_overlap(data_dir, data, contract)
        if mask is not None:
            keep = ~mask
            report["dedup"] = {
                "excluded_in_train": int(mask.sum()),
                **classification_report(logits[keep], data.labels[keep], contract.labels),
            }
    return report


@dataclass
class EvaluateArguments:
    """Command-line arguments of ``emotion evaluate``."""

    model: Path
    data_dir: Path
    split: str = "test"
    output: Path | None = None
    batch_size: int = 64
    threads: int = 1
    dedup: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size={self.batch_size} must be >= 1")
        if self.threads < 0:
            raise ValueError(f"--threads={self.threads} must be >= 0")


def _parse(argv: list[str] | None) -> EvaluateArguments:
    parser = argparse.ArgumentParser(prog="emotion evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="ONNX model folder or training checkpoint folder")
    parser.add_argument("--data-dir", type=Path, default=None, help="dataset root (default: $EMOTION_DATA_DIR/fer2013)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--output", type=Path, default=None, help="report JSON (default: <model>/eval-<split>.json)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (0 = library default)")
    parser.add_argument("--no-dedup", action="store_true", help="skip the test-minus-train-duplicates metrics")
    ns = parser.parse_args(argv)
    return EvaluateArguments(
        model=ns.model,
        data_dir=ns.data_dir or default_fer_dir(),
        split=ns.split,
        output=ns.output,
        batch_size=ns.batch_size,
        threads=ns.threads,
        dedup=not ns.no_dedup,
    )


def write_report(report: dict[str, Any], output: Path) -> Path:
    """Write the report JSON and, beside it, ``<stem>.png`` with the confusion matrix; returns the PNG path."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    title = f"{report['model']['name']} on {report['dataset']['split']}: acc {report['accuracy']:.3f}"
    return save_confusion_png(report, output.with_suffix(".png"), title=title)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = _parse(argv)
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
