"""Quantize an fp32 ONNX model folder to int8, compare the variants, and ship the best batch-invariant one.

Variants (all from the same ``quant_pre_process``-ed graph):

* ``dynamic``: ``quantize_dynamic`` (int8 weights, uint8 activations whose scale is computed per call over the
  WHOLE input tensor, so a face's logits depend on the other faces in its batch);
* ``static`` / ``static_per_channel``: ``quantize_static`` QDQ with scales calibrated on the validation split,
  fixed at run time, hence batch-invariant.

Per-row dynamic int8 (``MatMulNBits`` 8-bit, and a per-row ``MatMulInteger`` graph rewrite) was measured for 0.4.0
(``models/default/quantization.md``): batch-invariant, but only about 1/2.5 of the fp32 file, so it could never
ship at the default ``--min-compression`` and is no longer built.

Every variant is scored on the validation split carved from ``train`` exactly as training carves it, timed
in-process, and checked for batch invariance (batch-64 vs batch-1 logits of the same faces). The shipped model
is the most accurate batch-invariant int8 variant at most 1/``--min-compression`` (3.5) of the fp32 file, ties
(within ``--accuracy-tolerance``) going to the fastest at batch 1; its folder gets ``model.onnx``, ``config.json``,
``metrics.json`` (test split) and ``quantization.{json,md}``.

The shipped ``config.json`` is the fp32 folder's contract with the new file name: its ``output.temperature`` is
carried over unchanged (int8 logits stay within a few hundredths of fp32's). ``emotion calibrate`` on the shipped
folder fits the int8 file's own temperature.

    python -m models.quantize --model runs/vit/onnx-fp32 --output models/default --test
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.cli_args import parse_arguments
from models.contract import CONFIG_FILE, METRICS_FILE, ContractError, ModelContract, load_contract, normalise
from models.data import DatasetError, FaceDataset, default_fer_dir
from models.evaluate import evaluate
from models.metrics import classification_report
from models.predictors import onnx_predictor, predict_logits, validation_split

logger = logging.getLogger(__name__)

VARIANTS = ("dynamic", "static", "static_per_channel")
INVARIANCE_ATOL = 1e-4


@dataclass
class QuantizeArguments:
    """Command-line arguments of ``emotion quantize``."""

    model: Path = field(metadata={"help": "fp32 ONNX model folder (from emotion export)"})
    output: Path = field(metadata={"help": "model folder to write the chosen int8 model to"})
    data_dir: Path = field(default_factory=default_fer_dir, metadata={"help": "dataset root"})
    val_fraction: float = field(default=0.1, metadata={"help": "as in training"})
    seed: int = field(default=42, metadata={"help": "as in training"})
    calibration_size: int = field(default=512, metadata={"help": "validation faces used to calibrate static"})
    variants: tuple[str, ...] = field(default=VARIANTS, metadata={"help": "comma-separated subset of the default"})
    test: bool = field(default=False, metadata={"help": "also score every variant on the test split"})
    threads: int = field(default=1, metadata={"help": "onnxruntime intra-op threads for scoring and timing"})
    batch_size: int = 64
    accuracy_tolerance: float = 0.005
    min_compression: float = field(default=3.5, metadata={"help": "fp32 size / int8 size must reach this"})
    keep_candidates: Path | None = field(default=None, metadata={"help": "keep every variant's file in this folder"})
    bench_seconds: float = field(default=1.0, metadata={"help": "minimum timing per variant and batch size"})

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise ValueError(f"--variants {list(self.variants)}: choose from {list(VARIANTS)}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction={self.val_fraction} must be between 0 and 1")
        if self.min_compression < 1.0:
            raise ValueError(f"--min-compression={self.min_compression} must be >= 1 (fp32 size / int8 size)")
        if self.calibration_size < 1 or self.batch_size < 1 or self.threads < 1:
            raise ValueError("--calibration-size, --batch-size and --threads must be >= 1")
        if self.output.resolve() == self.model.resolve():
            raise ValueError(f"--output {self.output} must differ from --model (the fp32 folder)")


class _FacesReader:
    """A ``CalibrationDataReader``: one preprocessed face batch per ``get_next()``, then None."""

    def __init__(self, input_name: str, x: np.ndarray, batch_size: int = 32) -> None:
        self._batches: Iterator[np.ndarray] = iter([x[i : i + batch_size] for i in range(0, len(x), batch_size)])
        self._name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._name: batch}


def build_variant(variant: str, prepped: Path, out: Path, contract: ModelContract, calib: np.ndarray) -> Path:
    """Write one int8 variant of the pre-processed fp32 graph ``prepped`` to ``out``."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    if variant == "dynamic":
        quantize_dynamic(prepped, out, weight_type=QuantType.QInt8)
    elif variant in ("static", "static_per_channel"):
        quantize_static(
            prepped,
            out,
            _FacesReader(contract.input.name, calib),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=variant == "static_per_channel",
            # Only the matrix products: quantizing residual Adds and LayerNorm inputs costs ViT accuracy for no speed.
            op_types_to_quantize=["MatMul", "Gemm", "Conv"],
            calibrate_method=CalibrationMethod.MinMax,
        )
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return out


def latency(
    run: Callable[[np.ndarray], Any], x: np.ndarray, min_seconds: float = 0.5, min_runs: int = 5
) -> tuple[float, float]:
    """(median, minimum) wall time in ms of ``run(x)`` after two warm-up calls.

    The minimum is what the choice uses: on a shared machine other processes only ever add time.
    """
    for _ in range(2):
        run(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times)), float(np.min(times))


def batch_invariance(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> tuple[float, int]:
    """(max |logit diff|, flipped argmaxes) between one batch of all of ``x`` and ``x`` one row at a time."""
    together = predict(x)
    alone = predict_logits(predict, x, 1)
    return float(np.abs(together - alone).max()), int((together.argmax(1) != alone.argmax(1)).sum())


def measure(
    name: str, onnx_path: Path, contract: ModelContract, val: FaceDataset, args: QuantizeArguments
) -> dict[str, Any]:
    """One row of the quantization table for ``onnx_path``."""
    x_val = normalise(val.images, contract)
    folder = onnx_path.parent
    predict = onnx_predictor(folder, replace(contract, onnx_file=onnx_path.name), args.threads)
    report = classification_report(predict_logits(predict, x_val, args.batch_size), val.labels, contract.labels)
    diff, flips = batch_invariance(predict, x_val[:64])
    ms1, ms1_min = latency(predict, x_val[:1], args.bench_seconds)
    ms32, _ = latency(predict, x_val[:32], args.bench_seconds)
    row: dict[str, Any] = {
        "variant": name,
        "size_bytes": onnx_path.stat().st_size,
        "val_accuracy": report["accuracy"],
        "val_macro_f1": report["macro_f1"],
        "ms_batch1": ms1,
        "img_s_batch1": 1e3 / ms1,
        "ms_batch1_min": ms1_min,
        "ms_batch32": ms32,
        "img_s_batch32": 32e3 / ms32,
        "invariance_max_diff": diff,
        "invariance_flips": flips,
        "batch_invariant": diff <= INVARIANCE_ATOL and flips == 0,
    }
    logger.info("%s: %s", name, {k: v for k, v in row.items() if k != "variant"})
    return row


def choose(rows: list[dict[str, Any]], tolerance: float, min_compression: float = 3.5) -> dict[str, Any]:
    """The batch-invariant int8 row, at most 1/``min_compression`` of the fp32 file, with the best validation
    accuracy; near-ties go to the fastest at batch 1."""
    fp32_bytes = next(r["size_bytes"] for r in rows if r["variant"] == "fp32")
    ok = [
        r for r in rows
        if r["variant"] != "fp32" and r["batch_invariant"] and r["size_bytes"] * min_compression <= fp32_bytes
    ]  # fmt: skip
    if not ok:
        raise ContractError(
            f"no int8 variant is batch-invariant and at most 1/{min_compression} of the fp32 file "
            f"({fp32_bytes / 1e6:.2f} MB); refusing to ship one (see the table)"
        )
    best = max(r["val_accuracy"] for r in ok)
    return min((r for r in ok if r["val_accuracy"] >= best - tolerance), key=lambda r: r["ms_batch1_min"])


def format_table(rows: list[dict[str, Any]], chosen: str) -> str:
    """The markdown table printed to stdout and written to quantization.md."""
    has_test = any("test_accuracy" in r for r in rows)
    head = "| variant | size MB | val acc | val macro-F1 |" + (" test acc | test macro-F1 |" if has_test else "")
    head += " b1 ms | b1 img/s | b32 ms | b32 img/s | b1-vs-b64 max diff | flips |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        mark = " (shipped)" if r["variant"] == chosen else ""
        cells = [
            f"{r['variant']}{mark}",
            f"{r['size_bytes'] / 1e6:.2f}",
            f"{r['val_accuracy']:.4f}",
            f"{r['val_macro_f1']:.4f}",
        ]
        if has_test:
            cells += [f"{r.get('test_accuracy', float('nan')):.4f}", f"{r.get('test_macro_f1', float('nan')):.4f}"]
        cells += [
            f"{r['ms_batch1']:.2f}",
            f"{r['img_s_batch1']:.0f}",
            f"{r['ms_batch32']:.2f}",
            f"{r['img_s_batch32']:.0f}",
            f"{r['invariance_max_diff']:.1e}",
            str(r["invariance_flips"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def quantize(args: QuantizeArguments) -> dict[str, Any]:
    """Build, measure and choose; write the shipped folder. Returns the quantization summary."""
    from onnxruntime.quantization import quant_pre_process

    contract = load_contract(args.model)
    fp32_path = args.model / contract.onnx_file
    val = validation_split(args.data_dir, contract, args.val_fraction, args.seed)
    logger.info("validation split: %d faces %s", len(val), val.class_counts())
    calib_rows = np.sort(np.random.default_rng(args.seed).permutation(len(val))[: args.calibration_size])
    calib = normalise(val.images[calib_rows], contract)
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        work = args.keep_candidates or Path(tmp)
        prepped = work / "prepped" / "model.onnx"
        prepped.parent.mkdir(parents=True, exist_ok=True)
        quant_pre_process(fp32_path, prepped)
        paths = {"fp32": fp32_path}
        for variant in args.variants:
            paths[variant] = build_variant(variant, prepped, work / variant / "model.onnx", contract, calib)
        rows = [measure(name, path, contract, val, args) for name, path in paths.items()]
        if args.test:
            for row in rows:
                folder = _candidate_folder(paths[row["variant"]], contract)
                test = evaluate(
                    folder, args.data_dir, "test", batch_size=args.batch_size, threads=args.threads, dedup=False
                )
                row["test_accuracy"], row["test_macro_f1"] = test["accuracy"], test["macro_f1"]
        chosen = choose(rows, args.accuracy_tolerance, args.min_compression)
        shipped = _ship(paths[chosen["variant"]], contract, chosen["variant"], args)
    summary: dict[str, Any] = {
        "source": str(args.model),
        "chosen": chosen["variant"],
        "rule": (
            "most accurate batch-invariant int8 variant on validation, at most 1/min_compression of the fp32 file; "
            "within accuracy_tolerance of it, the fastest at batch 1 (minimum time)"
        ),
        "invariance_atol": INVARIANCE_ATOL,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(args).items()},
        "validation": {"n": len(val), "calibration_n": len(calib)},
        "temperature": contract.output.temperature,
        "rows": rows,
    }
    table = format_table(rows, chosen["variant"])
    (shipped / "quantization.json").write_text(json.dumps(summary, indent=2) + "\n")
    (shipped / "quantization.md").write_text(
        f"# Quantization of {args.model}\n\n{table}\n\nShipped: {chosen['variant']}.\n"
    )
    sys.stdout.write(table + "\n")
    return summary


def _candidate_folder(onnx_path: Path, contract: ModelContract) -> Path:
    """Make ``onnx_path``'s folder a model folder (config.json) so evaluate() can read it."""
    if not (onnx_path.parent / CONFIG_FILE).is_file():
        replace(contract, onnx_file=onnx_path.name).save(onnx_path.parent)
    return onnx_path.parent


def _ship(onnx_path: Path, contract: ModelContract, variant: str, args: QuantizeArguments) -> Path:
    """Copy the chosen file into the output folder with its config.json and the test-split metrics.json."""
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, out / "model.onnx")
    architecture = f"{contract.architecture}; int8 {variant}".lstrip("; ")
    # The temperature is carried over from the fp32 contract (emotion calibrate refits it on the shipped file).
    replace(contract, onnx_file="model.onnx", architecture=architecture).save(out)
    try:
        report = evaluate(out, args.data_dir, "test", batch_size=args.batch_size, threads=args.threads)
    except DatasetError as exc:
        logger.warning("no test split, so no %s: %s", METRICS_FILE, exc)
        return out
    report["model"]["path"] = out.name  # relative: the folder is moved and bundled
    report["dataset"]["path"] = args.data_dir.name
    (out / METRICS_FILE).write_text(json.dumps(report, indent=2) + "\n")
    logger.info("shipped %s to %s (test accuracy %.4f)", variant, out, report["accuracy"])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # onnxruntime's quantizers log every node they skip at INFO.
    logging.getLogger("onnxruntime").setLevel(logging.WARNING)
    args = parse_arguments(QuantizeArguments, argv, prog="emotion quantize", description=__doc__)
    try:
        quantize(args)
    except (ContractError, DatasetError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
