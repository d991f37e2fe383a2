"""Pure inference: normalise a uint8 batch per the model contract, run onnxruntime, softmax, label mapping.

The probabilities are ``softmax(logits / T)`` with the contract's calibrated ``output.temperature`` T
(``emotion calibrate`` fits it on the validation split); the top label is the argmax of the logits either way.

``OnnxClassifier`` is shared by the model deployment and ``emotion predict``, so the service and the in-process
CLI compute the same numbers from the same pixels. Probabilities cross handles in the model's label order;
``answer`` turns them into what the service replies (config.json's label grouping, the unreadable verdict).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.contract import ModelContract, check_onnx_matches, load_contract, load_metrics, normalise
from serve.core.quality import UnreadableReason

SessionFactory = Callable[[str, Any], Any]


@dataclass(frozen=True)
class Prediction:
    """One face's answer: the top label and the probability of every answer label, in answer order.

    Attributes:
        label: the most probable answer label; None for a face the quality rule flags (no emotion is claimed).
        probabilities: every answer label's probability (the model's labels, or config.json's groups + ``other``).
        model_probabilities: every model label's probability, only when config.json groups labels (else None).
        unreadable_reason: why the face cannot be read (``serve.core.quality``), None for a readable face.
    """

    label: str | None
    probabilities: dict[str, float]
    model_probabilities: dict[str, float] | None = None
    unreadable_reason: UnreadableReason | None = None

    def to_json(self) -> dict[str, Any]:
        """The emotion fields of every answer about one face: ``label``, ``probabilities``, ``model_probabilities``
        (only with a grouping), ``readable``, ``unreadable_reason``."""
        out: dict[str, Any] = {"label": self.label, "probabilities": self.probabilities}
        if self.model_probabilities is not None:
            out["model_probabilities"] = self.model_probabilities
        out["readable"] = self.unreadable_reason is None
        out["unreadable_reason"] = self.unreadable_reason
        return out


@dataclass(frozen=True)
class FaceScores:
    """What the preprocessor returns for one uploaded face (``/v1/classify``): small and picklable.

    Attributes:
        probabilities: float32 ``[num_classes]`` in the model's label order (temperature applied, not grouped).
        unreadable: the quality rule's verdict on the upload, None for a readable face.
    """

    probabilities: np.ndarray
    unreadable: UnreadableReason | None = None


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(logits / temperature)`` in float64 for stable probabilities, returned as float32."""
    z = logits.astype(np.float64) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    probs: np.ndarray = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return probs


def to_prediction(probs: np.ndarray, labels: Sequence[str]) -> Prediction:
    """One row of probabilities -> the label (first maximum, contract order) and a label -> p map."""
    return Prediction(
        label=labels[int(np.argmax(probs))],
        probabilities={label: float(p) for label, p in zip(labels, probs, strict=True)},
    )


def answer(probs: np.ndarray, contract: ModelContract, unreadable: UnreadableReason | None = None) -> Prediction:
    """The service's answer for one face from its model probabilities (model label order): the one place where
    config.json's ``answer`` grouping is applied and an unreadable face loses its label.

    Without ``answer`` in config.json this is ``to_prediction(probs, contract.labels)`` plus the readable fields.
    The label is the argmax of the grouped probabilities: with a grouping, ``other`` wins when the labels outside
    the groups together outweigh each group.
    """
    grouped = to_prediction(contract.group(probs), contract.answer_labels)
    raw = None if contract.answer is None else to_prediction(probs, contract.labels).probabilities
    return Prediction(
        label=None if unreadable else grouped.label, probabilities=grouped.probabilities, model_probabilities=raw,
        unreadable_reason=unreadable,
    )  # fmt: skip


def _ort_session(path: str, intra_op_threads: int) -> Any:
    import onnxruntime as ort  # imported here: nothing heavy at import time

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning threads speed up one caller but burn the cores the request path needs under concurrency.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxClassifier:
    """An onnxruntime session plus its contract.

    Args:
        model_dir: folder with ``config.json`` and the ONNX file.
        intra_op_threads: onnxruntime threads for this session (set explicitly: ORT ignores OMP_NUM_THREADS).
        parallel_runs: split a batch into up to this many chunks and run them at the same time on the one session
            (``Run`` is thread-safe); concurrent callers share these workers, so at most this many runs are in
            flight. For this small model, 2 single-threaded runs measured faster than one run on 2 intra-op threads
            (8 faces: 10.8 ms vs 13.1 ms, 18.9 ms on one thread; docs/decisions.md).
        run_batch_size: most faces in one session run; a larger batch is cut into runs of about this size (the
            model deployment sets it from its ``user_config``: ``serve.core.batching.BatchConfig``).
        session_factory: ``(onnx_path, threads) -> session``; tests pass a fake.

        row_by_row: run each image alone; None = decide with ``is_batch_invariant()`` at load.

    Raises:
        models.contract.ContractError: missing files, bad config.json, or an ONNX file that does not match it.
    """

    def __init__(
        self,
        model_dir: Path | str,
        *,
        intra_op_threads: int = 1,
        parallel_runs: int = 1,
        run_batch_size: int = 8,
        session_factory: SessionFactory | None = None,
        row_by_row: bool | None = None,
    ) -> None:
        if parallel_runs < 1:
            raise ValueError(f"parallel_runs={parallel_runs} must be >= 1")
        if run_batch_size < 1:
            raise ValueError(f"run_batch_size={run_batch_size} must be >= 1")
        self.model_dir = Path(model_dir)
        self.parallel_runs = parallel_runs
        self.run_batch_size = run_batch_size
        self._workers = ThreadPoolExecutor(parallel_runs, "onnx-run") if parallel_runs > 1 else None
        self.contract = load_contract(self.model_dir)
        self.metrics = load_metrics(self.model_dir)
        factory = session_factory or _ort_session
        self._session = factory(str(self.model_dir / self.contract.onnx_file), intra_op_threads)
        check_onnx_matches(self.contract, self._session)
        # A face must get the same answer whatever it is batched with. Dynamic int8 quantization computes
        # activation scales over the whole batch, so such a model is run one image per session call.
        self.row_by_row = not self.is_batch_invariant() if row_by_row is None else row_by_row

    @property
    def labels(self) -> tuple[str, ...]:
        return self.contract.labels

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """uint8 images ``[N, H, W(, C)]`` -> float32 probabilities ``[N, num_classes]`` (temperature applied)."""
        x = normalise(batch, self.contract)
        if not len(x):
            return self._run_rows(x)
        # Contiguous chunks keep the output order; a batch-invariant model gives every face the same answer
        # whatever chunk it lands in (a model that is not is run row by row anyway).
        runs = max(-(-len(x) // self.run_batch_size), min(self.parallel_runs, len(x)))
        chunks = np.array_split(x, runs)
        if self._workers is None or runs == 1:
            return np.concatenate([self._run_rows(chunk) for chunk in chunks])
        return np.concatenate(list(self._workers.map(self._run_rows, chunks)))

    def _run_rows(self, x: np.ndarray) -> np.ndarray:
        if self.row_by_row and len(x) > 1:
            return np.concatenate([self._probs(x[i : i + 1]) for i in range(len(x))])
        return self._probs(x)

    def _probs(self, x: np.ndarray) -> np.ndarray:
        (logits,) = self._session.run([self.contract.output.name], {self.contract.input.name: x})
        return softmax(np.asarray(logits), self.contract.output.temperature)

    def is_batch_invariant(self, n: int = 4, atol: float = 1e-6) -> bool:
        """True when rows computed together equal rows computed alone (seeded random images)."""
        spec = self.contract.input
        shape = (n, spec.height, spec.width) if spec.channels == 1 else (n, spec.height, spec.width, spec.channels)
        x = normalise(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8), self.contract)
        alone = np.concatenate([self._probs(x[i : i + 1]) for i in range(n)])
        return bool(np.allclose(self._probs(x), alone, rtol=0.0, atol=atol))

    def predict(self, batch: np.ndarray) -> list[Prediction]:
        return [to_prediction(row, self.labels) for row in self.predict_proba(batch)]

    def warm_up(self) -> None:
        """One inference on a blank image: proves the session runs and pays first-call costs up front."""
        spec = self.contract.input
        shape = (1, spec.height, spec.width) if spec.channels == 1 else (1, spec.height, spec.width, spec.channels)
        probs = self.predict_proba(np.zeros(shape, dtype=np.uint8))
        if probs.shape != (1, self.contract.num_classes) or not np.all(np.isfinite(probs)):
            raise RuntimeError(f"warm-up inference returned {probs.shape} / non-finite values")
