"""In-process inference per the model contract: the reference the services are measured and checked against.

Deliberately independent of ``serve/``: what a user would write with only ``config.json`` and onnxruntime.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from models.contract import DEFAULT_MODEL_DIR, RESAMPLING, ModelContract, load_contract


def preprocess(data: bytes, contract: ModelContract) -> np.ndarray:
    """Encoded image -> float32 ``[C, H, W]``: convert, resize, ``(x * scale - mean) / std``."""
    pre, spec = contract.preprocessing, contract.input
    img = Image.open(io.BytesIO(data)).convert(pre.color_mode)
    if img.size != (spec.width, spec.height):
        img = img.resize((spec.width, spec.height), RESAMPLING[pre.resize])
    x = np.asarray(img, dtype=np.float32) * np.float32(pre.scale)
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    mean = np.asarray(pre.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(pre.std, dtype=np.float32)[:, None, None]
    out: np.ndarray = ((x - mean) / std).astype(np.float32, copy=False)
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def make_session(model_path: Path, threads: int = 0, spinning: bool = True) -> ort.InferenceSession:
    """A CPU session; ``threads=0`` is onnxruntime's default (one per core)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


@dataclass
class Classifier:
    """One onnxruntime session plus the contract: bytes in, probabilities out."""

    contract: ModelContract
    session: ort.InferenceSession

    @classmethod
    def load(cls, model_dir: Path = DEFAULT_MODEL_DIR, threads: int = 0, spinning: bool = True) -> Classifier:
        contract = load_contract(model_dir)
        return cls(contract, make_session(Path(model_dir) / contract.onnx_file, threads, spinning))

    @property
    def labels(self) -> tuple[str, ...]:
        return self.contract.labels

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``[N, C, H, W]`` -> probabilities ``[N, classes]``: ``softmax(logits / T)``, the contract's
        calibrated temperature, as the service answers."""
        (logits,) = self.session.run([self.contract.output.name], {self.contract.input.name: batch})
        return softmax(np.asarray(logits, dtype=np.float64) / self.contract.output.temperature)

    def classify(self, images: list[bytes]) -> np.ndarray:
        return self.run(np.stack([preprocess(data, self.contract) for data in images]))
