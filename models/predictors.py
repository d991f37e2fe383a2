"""How a model folder becomes a predictor ``x -> logits``, and the faces that feed it.

An ONNX model folder (``config.json`` + the ONNX file) runs in onnxruntime; a training checkpoint folder (HF
``config.json`` + ``emotion_contract.json``, or a comma list of such folders: their ensemble) runs in PyTorch,
which is imported only on that path. ``evaluate``, ``export``, ``quantize`` and ``calibrate`` all take their
sessions, models and contract-sized faces (and the validation split) from here; the preprocessing itself is
``models.contract.normalise``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from models.contract import (
    CHECKPOINT_CONTRACT_FILE,
    CONFIG_FILE,
    ContractError,
    ModelContract,
    check_onnx_matches,
    load_contract,
)
from models.data import FaceDataset, load_split, stratified_split

Predictor = Callable[[np.ndarray], np.ndarray]


def load_for_contract(data_dir: Path, split: str, contract: ModelContract, *, all_classes: bool = False) -> FaceDataset:
    """The split's faces of the contract's classes (``all_classes``: of every class), decoded at the contract's
    size and colour mode."""
    return load_split(
        data_dir,
        split,
        None if all_classes else contract.labels,
        color_mode=contract.preprocessing.color_mode,
        size=(contract.input.height, contract.input.width),
        resize=contract.preprocessing.resize,
    )


def validation_split(data_dir: Path, contract: ModelContract, val_fraction: float = 0.1, seed: int = 42) -> FaceDataset:
    """The training run's validation faces: ``stratified_split`` of ``train`` with the same fraction and seed
    (``emotion train``'s ``--val-fraction`` / ``--split-seed``); quantization and calibration both use it."""
    train = load_for_contract(data_dir, "train", contract)
    _, val_idx = stratified_split(train.labels, val_fraction, seed)
    return train.subset(val_idx)


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


def predict_logits(predict: Predictor, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Run ``predict`` over ``x`` in batches of ``batch_size`` rows."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    parts = [predict(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return np.concatenate(parts, axis=0)


def is_checkpoint(model_dir: Path) -> bool:
    return (Path(model_dir) / CHECKPOINT_CONTRACT_FILE).is_file()


def load_model(model_dir: Path | str, threads: int = 1) -> tuple[ModelContract, Predictor, str]:
    """(contract, predictor, kind) for an ONNX model folder (kind "onnx") or a checkpoint folder (kind "checkpoint")."""
    model_dir = Path(model_dir)
    if is_checkpoint(model_dir):
        contract, predict = checkpoint_predictor(model_dir, threads)
        return contract, predict, "checkpoint"
    contract = load_contract(model_dir)
    return contract, onnx_predictor(model_dir, contract, threads), "onnx"


# ----------------------------------------------------------------------------------------------- torch only


def load_checkpoint(checkpoint: Path | str) -> tuple[Any, ModelContract]:
    """(the model in eval mode, its contract) from a folder written by ``save_pretrained`` + the contract, or from
    a comma list of such folders: their ensemble (mean logits), which must share one input/output contract."""
    from models.architectures import StudentEnsemble

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
    # The mean logits are a new function: no member's temperature applies to them (emotion calibrate fits one).
    contract = replace(first, architecture=f"ensemble of {len(loaded)} students, mean logits: {members}",
                       output=replace(first.output, temperature=1.0))
    return StudentEnsemble([model for model, _ in loaded]).eval(), contract


def _load_one(checkpoint_dir: Path | str) -> tuple[Any, ModelContract]:
    from models.architectures import load_student

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


def checkpoint_predictor(checkpoint_dir: Path | str, threads: int = 1) -> tuple[ModelContract, Predictor]:
    """(contract, ``x -> logits`` numpy function) running the checkpoint in PyTorch."""
    import torch

    from models.architectures import LogitsOnly

    if threads > 0:
        torch.set_num_threads(threads)
    model, contract = load_checkpoint(checkpoint_dir)
    wrapped = LogitsOnly(model).eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits: np.ndarray = wrapped(torch.from_numpy(x)).float().numpy()
        return logits

    return contract, predict
