"""Export a training checkpoint folder to an fp32 ONNX model folder (``model.onnx`` + ``config.json``).

The ONNX file takes ``pixel_values`` ``[batch, C, H, W]`` (dynamic batch) and returns ``logits``
``[batch, classes]``. After export, onnxruntime and PyTorch logits are compared at batch 1 and 32 on real
faces (when a dataset is given) or random inputs; the export fails when they differ by more than ``--atol``.
By default the graph averages the logits of each face and its mirror image (``--no-flip-average`` for one view):
+0.4 to +0.7 accuracy points on FER2013 for twice the compute.

    python -m models.export --checkpoint runs/vit/best --output runs/vit/onnx-fp32
    python -m models.export --checkpoint runs/a/best,runs/b/best --output runs/ab/onnx-fp32   # an ensemble
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.architectures import LogitsOnly, StudentEnsemble, load_student
from models.contract import CHECKPOINT_CONTRACT_FILE, CONFIG_FILE, ContractError, ModelContract, load_contract

logger = logging.getLogger(__name__)

OPSET = 18


def load_checkpoint(checkpoint: Path | str) -> tuple[Any, ModelContract]:
    """(the model in eval mode, its contract) from a folder written by ``save_pretrained`` + the contract, or from
    a comma list of such folders: their ensemble (mean logits), which must share one input/output contract."""
    dirs = [part.strip() for part in str(checkpoint).split(",") if part.strip()]
    loaded = [_load_one(d) for d in dirs]
    if not loaded:
        raise ContractError("no checkpoint folder given")
    if len(loaded) == 1:
        return loaded[0]
    first = loaded[0][1]
    for d, (_, contract) in zip(dirs[1:], loaded[1:], strict=True):
        if (contract.labels, contract.input, contract.preprocessing) != (first.labels, first.input,
                                                                         first.preprocessing):
            raise ContractError(f"checkpoint {d!r}: its labels/input/preprocessing differ from {dirs[0]!r}'s")
    members = "; ".join(contract.architecture for _, contract in loaded)
    contract = replace(first, architecture=f"ensemble of {len(loaded)} students, mean logits: {members}")
    return StudentEnsemble([model for model, _ in loaded]).eval(), contract


def _load_one(checkpoint_dir: Path | str) -> tuple[Any, ModelContract]:
    checkpoint_dir = Path(checkpoint_dir)
    contract = load_contract(checkpoint_dir, CHECKPOINT_CONTRACT_FILE, require_onnx=False)
    hf_config_path = checkpoint_dir / CONFIG_FILE
    if not hf_config_path.is_file():
        raise ContractError(f"checkpoint {str(checkpoint_dir)!r} has no HF {CONFIG_FILE}")
    try:
        model = load_student(checkpoint_dir)
    except ValueError as exc:
        raise ContractError(f"{hf_config_path}: {exc}") from None
    id2label = model.config.id2label
    hf_labels = tuple(id2label[i] for i in range(len(id2label)))
    if hf_labels != contract.labels:
        raise ContractError(
            f"checkpoint {str(checkpoint_dir)!r}: HF id2label {list(hf_labels)} differs from "
            f"{CHECKPOINT_CONTRACT_FILE} labels {list(contract.labels)}"
        )
    model.eval()
    return model, contract


def checkpoint_predictor(checkpoint_dir: Path | str, threads: int = 1) -> tuple[ModelContract, Any]:
    """(contract, ``x -> logits`` numpy function) running the checkpoint in PyTorch."""
    if threads > 0:
        torch.set_num_threads(threads)
    model, contract = load_checkpoint(checkpoint_dir)
    wrapped = LogitsOnly(model).eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits: np.ndarray = wrapped(torch.from_numpy(x)).float().numpy()
        return logits

    return contract, predict


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
    from models.evaluate import make_session

    session = make_session(onnx_path, threads=1)
    with torch.inference_mode():
        expected = LogitsOnly(model, contract.output.flip_averaged).eval()(torch.from_numpy(x)).numpy()
    got = session.run([contract.output.name], {contract.input.name: x})[0]
    return float(np.abs(np.asarray(got) - expected).max())


def parity_inputs(contract: ModelContract, data_dir: Path | None, n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """``n`` preprocessed real faces from ``data_dir``'s test split when available, else random pixels."""
    from models.data import DatasetError
    from models.evaluate import load_for_contract, preprocess

    if data_dir is not None:
        try:
            faces = load_for_contract(data_dir, "test", contract)
            rows = np.random.default_rng(seed).choice(len(faces), size=min(n, len(faces)), replace=False)
            return preprocess(faces.images[np.sort(rows)], contract), f"{len(rows)} test faces"
        except DatasetError as exc:
            logger.warning("parity on random inputs: %s", exc)
    spec = contract.input
    shape = (n, spec.height, spec.width) if spec.channels == 1 else (n, spec.height, spec.width, spec.channels)
    pixels = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    return preprocess(pixels, contract), f"{n} random images"


@dataclass
class ExportArguments:
    """Command-line arguments of ``emotion export``."""

    checkpoint: Path
    output: Path
    data_dir: Path | None = None
    atol: float = 1e-4
    onnx_file: str = "model.onnx"
    flip_average: bool = True

    def __post_init__(self) -> None:
        if self.atol <= 0:
            raise ValueError(f"--atol={self.atol} must be > 0")


def _parse(argv: list[str] | None) -> ExportArguments:
    parser = argparse.ArgumentParser(prog="emotion export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="training checkpoint folder, or a comma list of folders: exported as their ensemble")
    parser.add_argument("--output", type=Path, required=True, help="ONNX model folder to write")
    parser.add_argument("--data-dir", type=Path, default=None, help="dataset root for a parity check on real faces")
    parser.add_argument("--atol", type=float, default=1e-4, help="max allowed |logit difference| torch vs ORT")
    parser.add_argument("--flip-average", action=argparse.BooleanOptionalAction, default=True,
                        help="average each face's logits with its mirror image's inside the graph (default: on)")
    ns = parser.parse_args(argv)
    return ExportArguments(ns.checkpoint, ns.output, ns.data_dir, ns.atol, flip_average=ns.flip_average)


def export(args: ExportArguments) -> dict[str, float]:
    """Export, write config.json, and check parity; returns max |diff| per batch size. Raises on a failed check."""
    model, contract = load_checkpoint(args.checkpoint)
    contract = replace(contract, onnx_file=args.onnx_file,
                       output=replace(contract.output, flip_averaged=args.flip_average))
    onnx_path = export_onnx(model, contract, args.output / args.onnx_file)
    contract.save(args.output)
    logger.info("wrote %s (%.2f MB) and %s", onnx_path, onnx_path.stat().st_size / 1e6, args.output / CONFIG_FILE)
    x, what = parity_inputs(contract, args.data_dir, 32)
    diffs = {f"batch_{n}": parity(model, onnx_path, x[:n], contract) for n in (1, 32)}
    for name, diff in diffs.items():
        sys.stdout.write(f"parity torch vs onnxruntime ({what}), {name}: max |logit diff| = {diff:.3e}\n")
    worst = max(diffs.values())
    if not worst <= args.atol:  # also catches NaN
        raise ContractError(f"ONNX logits differ from PyTorch by {worst:.3e} > atol {args.atol:.1e}")
    return diffs


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        export(_parse(argv))
    except (ContractError, ValueError) as exc:
        logger.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
