"""Classification metrics from logits, in pure numpy: accuracy, cross-entropy, per-class P/R/F1, confusion matrix,
and calibration: expected calibration error (ECE) and the temperature fit of ``softmax(logits / T)``.

``classification_report`` returns a JSON-ready dict; ``format_report`` renders it as a text table and
``save_confusion_png`` draws the confusion matrix (matplotlib, imported lazily, Agg backend).

Run as a script on saved arrays: ``python -m models.metrics --logits l.npy --labels y.npy --label-names a,b,c``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


ECE_BINS = 15
# The temperature search interval: far wider than any sane calibration (a fit at an end is logged as suspicious).
TEMPERATURE_BOUNDS = (0.05, 20.0)


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable log-softmax of ``logits / temperature`` over the last axis (float64)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    out: np.ndarray = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return out


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` over the last axis (float64): the probabilities the contract defines."""
    out: np.ndarray = np.exp(log_softmax(logits, temperature))
    return out


def mean_cross_entropy(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean categorical cross-entropy (nats) of integer ``labels`` under softmax(``logits / temperature``)."""
    logp = log_softmax(logits, temperature)
    labels = np.asarray(labels, dtype=np.int64)
    return float(-logp[np.arange(len(labels)), labels].mean())


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error with ``bins`` equal-width confidence bins (Guo et al., 2017).

    A row's confidence is its largest probability and it is correct when that class (the first maximum) is its
    label; bin ``b`` holds the confidences in ``(b / bins, (b + 1) / bins]`` (the first bin also holds 0).
    ECE = sum over bins of ``n_b / N * |accuracy_b - mean confidence_b|``.

    >>> round(expected_calibration_error(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1])), 6)  # .1/2 + .6/2
    0.35
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0] or probs.shape[0] == 0:
        raise ValueError(f"need [N, C] probabilities and N labels, N > 0; got {probs.shape} and {labels.shape}")
    if bins < 1:
        raise ValueError(f"bins={bins} must be >= 1")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    gap = np.bincount(which, weights=correct - confidence, minlength=bins)  # per bin: n_b * (acc_b - conf_b)
    return float(np.abs(gap).sum() / len(labels))


def fit_temperature(
    logits: np.ndarray,
    labels: np.ndarray,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    tol: float = 1e-7,
) -> float:
    """The temperature ``T`` in ``bounds`` minimising the mean cross-entropy of softmax(``logits / T``).

    Golden-section search over ``log T``. The loss is convex in ``1 / T`` (a log-sum-exp minus a linear term),
    hence unimodal in ``log T``, so the search cannot stop in a local minimum; it stops when the bracket is
    narrower than ``tol`` in ``log T`` (a relative precision of ``tol`` on ``T``).
    """
    z = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or z.shape[0] != labels.shape[0] or z.shape[0] == 0:
        raise ValueError(f"need [N, C] logits and N labels, N > 0; got {z.shape} and {labels.shape}")
    low, high = bounds
    if not 0.0 < low < high:
        raise ValueError(f"temperature bounds {bounds} must satisfy 0 < low < high")

    def loss(log_t: float) -> float:
        return mean_cross_entropy(z, labels, float(np.exp(log_t)))

    a, b = float(np.log(low)), float(np.log(high))
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > tol:
        if fc <= fd:  # the minimum lies in [a, d]
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:  # in [c, b]
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    best = float(np.exp((a + b) / 2.0))
    if min(best / low, high / best) < 1.0 + 1e-3:
        logger.warning("fitted temperature %.4g is at the end of the search interval %s", best, bounds)
    return best


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(predictions) == np.asarray(labels)).mean())


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[true, predicted]`` counts, int64 ``[num_classes, num_classes]``."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    flat = labels * num_classes + predictions
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_scores(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, f1, support) per class; an undefined ratio (0/0) counts as 0, as in scikit-learn."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1, support.astype(np.int64)


def classification_report(
    logits: np.ndarray, labels: np.ndarray, label_names: Sequence[str], temperature: float = 1.0
) -> dict[str, Any]:
    """Every metric of one evaluation, JSON-ready.

    Args:
        logits: ``[N, C]`` unnormalised class scores.
        labels: ``[N]`` integer class indices into ``label_names``.
        label_names: the C class names, in logit order.
        temperature: the probabilities scored are softmax(``logits / temperature``) (the model contract's
            ``output.temperature``); accuracy and the per-class scores do not depend on it.

    Returns:
        ``{"n", "accuracy", "mean_cross_entropy", "macro_f1", "temperature", "ece", "per_class": {name:
        {precision, recall, f1, support}}, "confusion_matrix": [[...]], "labels": [...]}``; ``ece`` is the
        top-label expected calibration error with ``ECE_BINS`` bins.

    >>> r = classification_report(np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([0, 0]), ["a", "b"])
    >>> r["accuracy"], r["confusion_matrix"]
    (0.5, [[1, 1], [0, 0]])
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = len(label_names)
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(
            f"logits have shape {logits.shape}; expected [N, {num_classes}] for labels {list(label_names)}"
        )
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} logit rows but {labels.shape[0]} labels")
    if logits.shape[0] == 0:
        raise ValueError("cannot score an empty set")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}); got range [{labels.min()}, {labels.max()}]")
    predictions = logits.argmax(axis=1)
    cm = confusion_matrix(labels, predictions, num_classes)
    precision, recall, f1, support = per_class_scores(cm)
    return {
        "n": int(labels.shape[0]),
        "accuracy": accuracy(predictions, labels),
        "mean_cross_entropy": mean_cross_entropy(logits, labels, temperature),
        "macro_f1": float(f1.mean()),
        "temperature": float(temperature),
        "ece": expected_calibration_error(softmax(logits, temperature), labels),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(label_names)
        },
        "confusion_matrix": cm.tolist(),
        "labels": list(label_names),
    }


def format_report(report: dict[str, Any], title: str = "") -> str:
    """A fixed-width text table: headline numbers, per-class P/R/F1 and the confusion matrix."""
    names = list(report["labels"])
    width = max(10, *(len(n) + 2 for n in names))
    lines = [title] if title else []
    headline = (
        f"n={report['n']}  accuracy={report['accuracy']:.4f}  macro_f1={report['macro_f1']:.4f}  "
        f"mean_ce={report['mean_cross_entropy']:.4f}"
    )
    if "ece" in report:
        headline += f"  ece={report['ece']:.4f}  (temperature {report.get('temperature', 1.0):.4g})"
    lines.append(headline)
    lines.append(f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for name in names:
        s = report["per_class"][name]
        lines.append(f"{name:<{width}}{s['precision']:>10.4f}{s['recall']:>10.4f}{s['f1']:>10.4f}{s['support']:>10d}")
    lines.append("confusion (rows = true, columns = predicted)")
    lines.append(" " * width + "".join(f"{n[:9]:>10}" for n in names))
    for name, row in zip(names, report["confusion_matrix"], strict=True):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>10d}" for v in row))
    return "\n".join(lines)


def save_confusion_png(report: dict[str, Any], path: Path, title: str = "") -> Path:
    """Draw the report's confusion matrix (counts, with row-normalised shading) to a PNG file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["labels"])
    cm = np.asarray(report["confusion_matrix"], dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    shade = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = 1.2 + 0.6 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    try:
        im = ax.imshow(shade, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(im, ax=ax, label="fraction of true class")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(
                    j, i, f"{int(cm[i, j])}", ha="center", va="center", color="white" if shade[i, j] > 0.5 else "black"
                )
        ax.set_title(title or f"accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


@dataclass
class MetricsArguments:
    """Score saved logits: ``--logits`` (.npy [N, C]), ``--labels`` (.npy [N] int), ``--label-names`` a,b,c."""

    logits: Path
    labels: Path
    label_names: tuple[str, ...]
    output: Path | None = None
    png: Path | None = None
    temperature: float = 1.0


def _parse(argv: list[str] | None) -> MetricsArguments:
    parser = argparse.ArgumentParser(prog="python -m models.metrics", description=__doc__.splitlines()[0])
    parser.add_argument("--logits", type=Path, required=True, help=".npy file of [N, C] logits")
    parser.add_argument("--labels", type=Path, required=True, help=".npy file of [N] integer labels")
    parser.add_argument("--label-names", required=True, help="comma-separated class names in logit order")
    parser.add_argument("--output", type=Path, default=None, help="write the report JSON here")
    parser.add_argument("--png", type=Path, default=None, help="write the confusion-matrix PNG here")
    parser.add_argument("--temperature", type=float, default=1.0, help="score softmax(logits / T) (default: 1)")
    ns = parser.parse_args(argv)
    if not ns.temperature > 0:
        parser.error(f"--temperature={ns.temperature} must be > 0")
    names = tuple(s.strip() for s in ns.label_names.split(",") if s.strip())
    return MetricsArguments(ns.logits, ns.labels, names, ns.output, ns.png, ns.temperature)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse(argv)
    report = classification_report(np.load(args.logits), np.load(args.labels), args.label_names, args.temperature)
    if args.output is not None:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        logger.info("wrote %s", args.output)
    if args.png is not None:
        save_confusion_png(report, args.png)
        logger.info("wrote %s", args.png)
    sys.stdout.write(format_report(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
