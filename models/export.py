"""Export a training checkpoint folder to an fp32 ONNX model folder (``model.onnx`` + ``config.json``).

The ONNX file takes ``pixel_values`` ``[batch, C, H, W]`` (dynamic batch) and returns ``logits``
``[batch, classes]``. After export, onnxruntime and PyTorch logits are compared at batch 1 and 32 on real
faces (when a dataset is given) or random inputs; the export fails when they differ by more than ``--atol``.
By default the graph averages the logits of each face and its mirror image (``--no-flip-average`` for one view):
+0.4 to +0.7 accuracy points on FER2013 for twice the compute.
``config.json`` is the checkpoint's contract: its ``output.temperature`` is carried over (1.0 for what
``emotion train`` writes, and for an ensemble, whose mean logits no member's temperature fits); ``emotion
calibrate`` fits one on the validation split.

    python -m models.export --checkpoint runs/vit/best --output runs/vit/onnx-fp32
    python -m models.export --checkpoint runs/a/best,runs/b/best --output runs/ab/onnx-fp32   # an ensemble
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.architectures import LogitsOnly
from models.cli_args import parse_arguments
from models.contract import CONFIG_FILE, ContractError, ModelContract, normalise
from models.data import DatasetError
from models.predictors import load_checkpoint, load_for_contract, make_session

logger = logging.getLogger(__name__)

OPSET = 18


def export_onnx(model: Any, contract: ModelContract, onnx_path: Path) -> Path:
    """Write ``model`` (wrapped in LogitsOnly, flip-averaged as the contract says) as a single-file fp32 ONNX
    graph with a dynamic batch axis."""
    spec = contract.input
    example = torch.zeros(2, spec.channels, spec.height, spec.width, dtype=torch.float32)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    # The TorchScript exporter (dynamo=False) gives one self-contained file and a stable graph for this
    # model; the dynamo exporter also works in torch 2.13 but writes external data unless told otherwise.
    with warnings.catch_warnings():
        # The tracer warns about the shape checks in DeiT's embeddings; the shapes are fixed by the contract.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
        _torch_export(model, example, onnx_path, contract)
    import onnx

    onnx.checker.check_model(str(onnx_path))
    return onnx_path


def _torch_export(model: Any, example: torch.Tensor, onnx_path: Path, contract: ModelContract) -> None:
    spec = contract.input
    torch.onnx.export(
        LogitsOnly(model, contract.output.flip_averaged).eval(),
        (example,),
        str(onnx_path),
        input_names=[spec.name],
        output_names=[contract.output.name],
        dynamic_axes={spec.name: {0: "batch"}, contract.output.name: {0: "batch"}},
        opset_version=OPSET,
        do_constant_folding=True,
        dynamo=False,
    )


def parity(model: Any, onnx_path: Path, x: np.ndarray, contract: ModelContract) -> float:
    """Max |logit difference| between PyTorch and onnxruntime on the float32 NCHW batch ``x``."""
    session = make_session(onnx_path, threads=1)
    with torch.inference_mode():
        expected = LogitsOnly(model, contract.output.flip_averaged).eval()(torch.from_numpy(x)).numpy()
    got = session.run([contract.output.name], {contract.input.name: x})[0]
    return float(np.abs(np.asarray(got) - expected).max())


def parity_inputs(contract: ModelContract, data_dir: Path | None, n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """``n`` preprocessed real faces from ``data_dir``'s test split when available, else random pixels."""
    if data_dir is not None:
        try:
            faces = load_for_contract(data_dir, "test", contract)
            rows = np.random.default_rng(seed).choice(len(faces), size=min(n, len(faces)), replace=False)
            return normalise(faces.images[np.sort(rows)], contract), f"{len(rows)} test faces"
        except DatasetError as exc:
            logger.warning("parity on random inputs: %s", exc)
    spec = contract.input
    shape = (n, spec.height, spec.width) if spec.channels == 1 else (n, spec.height, spec.width, spec.channels)
    pixels = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    return normalise(pixels, contract), f"{n} random images"


@dataclass
class ExportArguments:
    """Command-line arguments of ``emotion export``."""

    checkpoint: Path = field(metadata={
        "help": "training checkpoint folder, or a comma list of folders: exported as their ensemble"})
    output: Path = field(metadata={"help": "ONNX model folder to write"})
    data_dir: Path | None = field(default=None, metadata={"help": "dataset root for a parity check on real faces"})
    atol: float = field(default=1e-4, metadata={"help": "max allowed |logit difference| torch vs ORT"})
    onnx_file: str = field(default="model.onnx", metadata={"help": "name of the ONNX file in the output folder"})
    flip_average: bool = field(default=True, metadata={
        "help": "average each face's logits with its mirror image's inside the graph"})

    def __post_init__(self) -> None:
        if self.atol <= 0:
            raise ValueError(f"--atol={self.atol} must be > 0")


def export(args: ExportArguments) -> dict[str, float]:
    """Export, write config.json, and check parity; returns max |diff| per batch size. Raises on a failed check."""
    model, contract = load_checkpoint(args.checkpoint)
    contract = replace(contract, onnx_file=args.onnx_file,
                       output=replace(contract.output, flip_averaged=args.flip_average))
    onnx_path = export_onnx(model, contract, args.output / args.onnx_file)
    contract.save(args.output)
    logger.info("wrote %s (%.2f MB) and %s (temperature %g)", onnx_path, onnx_path.stat().st_size / 1e6,
                args.output / CONFIG_FILE, contract.output.temperature)
    x, what = parity_inputs(contract, args.data_dir, 32)
    diffs = {f"batch_{n}": parity(model, onnx_path, x[:n], contract) for n in (1, 32)}
    for name, diff in diffs.items():
        sys.stdout.write(f"parity torch vs onnxruntime ({what}), {name}: max |logit diff| = {diff:.3e}\n")
    worst = max(diffs.values())
    if not worst <= args.atol:  # also catches NaN
        raise ContractError(f"ONNX logits differ from PyTorch by {worst:.3e} > atol {args.atol:.1e}")
    return diffs


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_arguments(ExportArguments, argv, prog="emotion export", description=__doc__)
    try:
        export(args)
    except (ContractError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
