"""Calibrate an ONNX model folder's probabilities: fit one softmax temperature on the validation split.

Temperature scaling (Guo et al., 2017): the probabilities become ``softmax(logits / T)`` with the one ``T > 0``
that minimises their mean cross-entropy on the validation split, the seeded stratified share of ``train`` that
training holds out and ``emotion quantize`` scores on (``--val-fraction`` / ``--seed`` as there). The argmax, and
so every accuracy number, is unchanged. ``T`` is fitted on the raw logits, so running the command again gives the
same ``T``.

It writes ``T`` into ``<model>/config.json`` as ``output.temperature`` (every other key and its order kept), and
rewrites ``<model>/metrics.json`` as ``emotion evaluate`` reports the test split at the new temperature, plus a
``calibration`` block: ``T``, the validation and test expected calibration error (top-label, 15 equal-width
bins) and mean cross-entropy before (``T = 1``) and after.

    emotion calibrate --model models/default --data-dir ../shared/data/fer2013 --threads 2
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.cli_args import parse_arguments
from models.contract import CONFIG_FILE, METRICS_FILE, ContractError, ModelContract, load_contract, normalise
from models.data import DatasetError, FaceDataset, default_fer_dir
from models.evaluate import report_from_logits
from models.metrics import ECE_BINS, expected_calibration_error, fit_temperature, mean_cross_entropy, softmax
from models.predictors import is_checkpoint, load_for_contract, onnx_predictor, predict_logits, validation_split

logger = logging.getLogger(__name__)

# Digits of the temperature written to config.json; the "after" numbers are computed with the rounded value.
TEMPERATURE_DECIMALS = 4


@dataclass
class CalibrateArguments:
    """Command-line arguments of ``emotion calibrate``."""

    model: Path = field(metadata={"help": "ONNX model folder (config.json + the ONNX file); updated in place"})
    data_dir: Path = field(default_factory=default_fer_dir, metadata={"help": "dataset root (train and test)"})
    val_fraction: float = field(default=0.1, metadata={"help": "validation share of train, as in training"})
    seed: int = field(default=42, metadata={"help": "validation split seed, as in training (--split-seed)"})
    batch_size: int = field(default=64, metadata={"help": "rows per inference call"})
    threads: int = field(default=1, metadata={"help": "onnxruntime intra-op threads (0 = library default)"})

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction={self.val_fraction} must be between 0 and 1")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size={self.batch_size} must be >= 1")
        if self.threads < 0:
            raise ValueError(f"--threads={self.threads} must be >= 0")


def calibration_scores(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, Any]:
    """ECE and mean cross-entropy of one split before (``T = 1``) and after temperature scaling."""
    return {
        "n": len(labels),
        "ece_before": expected_calibration_error(softmax(logits), labels),
        "ece_after": expected_calibration_error(softmax(logits, temperature), labels),
        "mean_cross_entropy_before": mean_cross_entropy(logits, labels),
        "mean_cross_entropy_after": mean_cross_entropy(logits, labels, temperature),
    }


def write_temperature(model_dir: Path, temperature: float) -> Path:
    """Set ``output.temperature`` in ``model_dir/config.json``, keeping every other key, its value and order.

    The new text is checked as a contract before it replaces the file (written beside it, then renamed).
    """
    path = Path(model_dir) / CONFIG_FILE
    data = json.loads(path.read_text())
    data.setdefault("output", {})["temperature"] = temperature
    text = json.dumps(data, indent=2) + "\n"
    ModelContract.from_dict(json.loads(text))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _logits(predict: Any, data: FaceDataset, contract: ModelContract, batch_size: int) -> np.ndarray:
    return predict_logits(predict, normalise(data.images, contract), batch_size)


def calibrate(args: CalibrateArguments) -> dict[str, Any]:
    """Fit the temperature, write config.json and metrics.json; returns the ``calibration`` block."""
    model_dir = Path(args.model)
    if is_checkpoint(model_dir):
        raise ContractError(f"{model_dir} is a training checkpoint; calibrate an ONNX model folder (emotion export)")
    contract = load_contract(model_dir)
    predict = onnx_predictor(model_dir, contract, args.threads)
    val = validation_split(args.data_dir, contract, args.val_fraction, args.seed)
    test = load_for_contract(args.data_dir, "test", contract)
    logger.info("validation: %d faces %s; test: %d faces", len(val), val.class_counts(), len(test))
    val_logits = _logits(predict, val, contract, args.batch_size)
    test_logits = _logits(predict, test, contract, args.batch_size)

    temperature = round(fit_temperature(val_logits, val.labels), TEMPERATURE_DECIMALS)
    calibration: dict[str, Any] = {
        "method": "temperature scaling: probabilities = softmax(logits / temperature), the temperature minimising "
        "the mean cross-entropy on the validation split (golden-section search over log T)",
        "temperature": temperature,
        "previous_temperature": contract.output.temperature,
        "fitted_on": {"split": "validation", "from": "train", "val_fraction": args.val_fraction, "seed": args.seed},
        "ece_bins": ECE_BINS,
        "validation": calibration_scores(val_logits, val.labels, temperature),
        "test": calibration_scores(test_logits, test.labels, temperature),
    }
    calibrated = replace(contract, output=replace(contract.output, temperature=temperature))
    report = report_from_logits(
        test_logits, test, calibrated, model={"path": str(model_dir), "kind": "onnx"}, data_dir=args.data_dir,
        split="test", batch_size=args.batch_size,
    )  # fmt: skip
    report["model"]["path"] = model_dir.resolve().name  # relative, as emotion quantize writes it: folders move
    report["dataset"]["path"] = Path(args.data_dir).resolve().name

    write_temperature(model_dir, temperature)
    metrics_path = model_dir / METRICS_FILE
    metrics: dict[str, Any] = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics.update(report)  # keys already there keep their place
    metrics["calibration"] = calibration
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    logger.info("wrote temperature %s to %s and the calibration to %s", temperature, model_dir / CONFIG_FILE,
                metrics_path)  # fmt: skip
    return calibration


def format_calibration(calibration: dict[str, Any]) -> str:
    """The calibration block as a few lines of text."""
    lines = [f"temperature {calibration['temperature']} (fitted on {calibration['validation']['n']} validation faces; "
             f"ECE with {calibration['ece_bins']} bins)"]  # fmt: skip
    for split in ("validation", "test"):
        s = calibration[split]
        lines.append(
            f"{split:<10} n={s['n']:<5} ECE {s['ece_before']:.4f} -> {s['ece_after']:.4f}   "
            f"mean CE {s['mean_cross_entropy_before']:.4f} -> {s['mean_cross_entropy_after']:.4f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_arguments(CalibrateArguments, argv, prog="emotion calibrate", description=__doc__)
    try:
        calibration = calibrate(args)
    except (ContractError, DatasetError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    sys.stdout.write(format_calibration(calibration) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
