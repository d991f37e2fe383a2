"""The model contract: ``config.json`` beside the ONNX file, read by training, evaluation and serving.

Everything about how to feed the model (labels, input tensor, preprocessing) is written down once, here in
``config.json``; no other module repeats it. This module is pure stdlib/numpy so serving can import it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

# The contract's ``preprocessing.resize`` names -> Pillow filters: one table for training, evaluation and serving.
RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}

CONFIG_FILE = "config.json"
# Inside a training checkpoint folder HF's own config.json is taken, so the contract travels under this name.
CHECKPOINT_CONTRACT_FILE = "emotion_contract.json"
METRICS_FILE = "metrics.json"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default"

ColorMode = Literal["L", "RGB"]
ResizeMethod = Literal["bilinear", "bicubic", "nearest", "lanczos"]


class ContractError(ValueError):
    """The model folder, its config.json or its ONNX file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class InputSpec:
    """The ONNX input tensor: name, layout and static per-sample shape."""

    name: str = "pixel_values"
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["float32"] = "float32"
    channels: int = 1
    height: int = 48
    width: int = 48


@dataclass(frozen=True)
class Preprocessing:
    """How a face image becomes the input tensor: ``((resize(img) * scale) - mean) / std`` per channel.

    ``face_margin`` is the fraction of the detected face box added on every side before the square crop,
    so that detector crops look like the training crops (FER2013 faces include forehead and chin).
    """

    color_mode: ColorMode = "L"
    resize: ResizeMethod = "bilinear"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    face_margin: float = 0.15


@dataclass(frozen=True)
class OutputSpec:
    """The ONNX output tensor: ``[batch, len(labels)]`` unnormalised class scores.

    ``flip_averaged``: the graph itself averages the logits of each image and its mirror image (test-time
    augmentation); informational, consumers have nothing to do.

    ``temperature``: the class probabilities are ``softmax(logits / temperature)``; it must be > 0. It is fitted
    on the validation split by ``emotion calibrate`` (temperature scaling, Guo et al. 2017: the mean
    cross-entropy is minimised, the argmax is unchanged). A config.json without it means 1.0 (plain softmax).
    """

    name: str = "logits"
    meaning: Literal["logits"] = "logits"
    flip_averaged: bool = False
    temperature: float = 1.0


@dataclass(frozen=True)
class AnswerSpec:
    """Which labels the service answers in, when they are not the model's own (config.json ``answer``).

    ``groups``: ``(answer label, (model labels...))`` pairs in answer order; an answer label's probability is the
    sum of its model labels' probabilities. ``other``: the answer label that collects the probability of every
    model label in no group (appended last; not emitted when every label is in a group). A 7-class model answered
    in the bundled model's three emotions is ``{"groups": {"angry": ["angry"], "happy": ["happy"], "sad": ["sad"]},
    "other": "other"}``: a neutral or surprised face then reads ``other`` instead of the nearest of the three.
    Checked against the model's labels by ``ModelContract`` (``check_answer``).
    """

    groups: tuple[tuple[str, tuple[str, ...]], ...]
    other: str | None = "other"


@dataclass(frozen=True)
class ModelContract:
    """Everything a consumer needs to run the model correctly. Serialised as ``config.json``."""

    name: str
    version: str
    labels: tuple[str, ...]
    input: InputSpec = field(default_factory=InputSpec)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    output: OutputSpec = field(default_factory=OutputSpec)
    onnx_file: str = "model.onnx"
    architecture: str = ""
    answer: AnswerSpec | None = None  # None: the service answers in ``labels`` (config.json without ``answer``)

    def __post_init__(self) -> None:
        if not self.labels:
            raise ContractError("config.json: 'labels' must name at least one class")
        if len(set(self.labels)) != len(self.labels):
            raise ContractError(f"config.json: 'labels' has duplicates: {list(self.labels)}")
        channels = self.input.channels
        expected = {"L": 1, "RGB": 3}[self.preprocessing.color_mode]
        if channels != expected:
            raise ContractError(
                f"config.json: input.channels={channels} does not match "
                f"preprocessing.color_mode={self.preprocessing.color_mode!r} ({expected} channel(s))"
            )
        for key in ("mean", "std"):
            values = getattr(self.preprocessing, key)
            if len(values) != channels:
                raise ContractError(f"config.json: preprocessing.{key}={list(values)} needs {channels} value(s)")
        if any(s <= 0 for s in self.preprocessing.std):
            raise ContractError(f"config.json: preprocessing.std={list(self.preprocessing.std)} must be > 0")
        if self.input.height <= 0 or self.input.width <= 0:
            raise ContractError(f"config.json: input size {self.input.height}x{self.input.width} must be positive")
        t = self.output.temperature
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
            raise ContractError(f"config.json: output.temperature={t!r} must be a finite number > 0")
        if self.answer is not None:
            check_answer(self.answer, self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @cached_property
    def answer_labels(self) -> tuple[str, ...]:
        """The labels of the service's answers, in answer order: ``labels`` unless config.json groups them."""
        if self.answer is None:
            return self.labels
        names = tuple(name for name, _ in self.answer.groups)
        return (*names, self.answer.other) if self.answer.other is not None and self._ungrouped() else names

    def _ungrouped(self) -> tuple[str, ...]:
        grouped = {m for _, members in self.answer.groups for m in members} if self.answer else set(self.labels)
        return tuple(label for label in self.labels if label not in grouped)

    @cached_property
    def grouping_matrix(self) -> np.ndarray:
        """float32 ``[num_classes, len(answer_labels)]`` 0/1 matrix: ``probs @ matrix`` sums each group's labels.

        The identity without ``answer``; every model label lands in exactly one column, so each row's sum is kept.
        """
        index = {label: i for i, label in enumerate(self.labels)}
        matrix = np.zeros((self.num_classes, len(self.answer_labels)), np.float32)
        members: list[tuple[str, ...]] = (
            [group for _, group in self.answer.groups] if self.answer else [(lab,) for lab in self.labels]
        )
        if self.answer is not None and len(self.answer_labels) > len(members):
            members.append(self._ungrouped())
        for column, group in enumerate(members):
            matrix[[index[label] for label in group], column] = 1.0
        return matrix

    def group(self, probs: np.ndarray) -> np.ndarray:
        """Model probabilities ``[..., num_classes]`` -> answer probabilities ``[..., len(answer_labels)]`` (float32;
        the same array when config.json has no ``answer``)."""
        if self.answer is None:
            return probs
        grouped: np.ndarray = (np.asarray(probs, np.float32) @ self.grouping_matrix).astype(np.float32)
        return grouped

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = list(self.labels)
        data.pop("answer")
        if self.answer is not None:  # absent, not null, without grouping: config.json files stay as they were
            data["answer"] = {"groups": {name: list(members) for name, members in self.answer.groups},
                              "other": self.answer.other}  # fmt: skip
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelContract:
        try:
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                labels=tuple(str(label) for label in data["labels"]),
                input=InputSpec(**data.get("input", {})),
                preprocessing=_preprocessing_from_dict(data.get("preprocessing", {})),
                output=_output_from_dict(data.get("output", {})),
                onnx_file=str(data.get("onnx_file", "model.onnx")),
                architecture=str(data.get("architecture", "")),
                answer=_answer_from_dict(data["answer"]) if data.get("answer") is not None else None,
            )
        except KeyError as exc:
            raise ContractError(f"config.json: missing key {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ContractError(f"config.json: {exc}") from None

    def save(self, model_dir: Path, filename: str = CONFIG_FILE) -> Path:
        path = Path(model_dir) / filename
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def check_answer(answer: AnswerSpec, labels: tuple[str, ...]) -> None:
    """Raise ContractError unless ``answer`` groups ``labels`` unambiguously: known labels, each in one group at
    most, distinct non-empty answer names, no answer named like a model label it does not hold."""
    where = "config.json: answer"
    if not answer.groups:
        raise ContractError(f"{where}.groups must name at least one group")
    seen: dict[str, str] = {}
    names = [name for name, _ in answer.groups]
    for name, members in answer.groups:
        if not isinstance(name, str) or not name:
            raise ContractError(f"{where}.groups: a group needs a non-empty name, got {name!r}")
        if not members:
            raise ContractError(f"{where}.groups.{name}: lists no model label")
        for label in members:
            if label not in labels:
                raise ContractError(f"{where}.groups.{name}: {label!r} is not a model label ({list(labels)})")
            if label in seen and seen[label] == name:
                raise ContractError(f"{where}.groups.{name} lists {label!r} twice")
            if label in seen:
                raise ContractError(f"{where}.groups: {seen[label]!r} and {name!r} both hold {label!r}")
            seen[label] = name
        # An answer "sad" made of "neutral" would read as the model's own sad: a model label names only itself.
        if name in labels and name not in members:
            raise ContractError(f"{where}.groups.{name}: named like the model label {name!r} but does not hold it")
    if len(set(names)) != len(names):
        raise ContractError(f"{where}.groups has duplicate names: {names}")
    other = answer.other
    if other is not None:
        if not isinstance(other, str) or not other:
            raise ContractError(f"{where}.other must be a non-empty name or null, got {other!r}")
        if other in labels or other in names:
            raise ContractError(f"{where}.other={other!r} is already a model label or a group name")
    elif len(seen) < len(labels):
        left = [label for label in labels if label not in seen]
        raise ContractError(f"{where}: {left} are in no group and answer.other is null: name an 'other' group")


def _answer_from_dict(data: Any) -> AnswerSpec:
    if not isinstance(data, dict) or not isinstance(data.get("groups"), dict) or set(data) - {"groups", "other"}:
        raise ContractError(
            'config.json: answer must be {"groups": {"<answer label>": ["<model label>", ...]}, "other": "<name>"}'
            f", got {data!r}"
        )
    groups = []
    for name, members in data["groups"].items():
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise ContractError(f"config.json: answer.groups.{name} must be a list of model labels, got {members!r}")
        groups.append((str(name), tuple(members)))
    return AnswerSpec(groups=tuple(groups), other=data.get("other", "other"))


def _output_from_dict(data: dict[str, Any]) -> OutputSpec:
    values = dict(data)
    t = values.get("temperature")
    if isinstance(t, int) and not isinstance(t, bool):
        values["temperature"] = float(t)  # JSON writes 2.0 as 2; anything else is left to the contract's check
    return OutputSpec(**values)


def _preprocessing_from_dict(data: dict[str, Any]) -> Preprocessing:
    values = dict(data)
    for key in ("mean", "std"):
        if key in values:
            values[key] = tuple(float(v) for v in values[key])
    return Preprocessing(**values)


def load_contract(model_dir: Path | str, filename: str = CONFIG_FILE, *, require_onnx: bool = True) -> ModelContract:
    """Read ``config.json`` from a model folder; raise ContractError naming the problem."""
    model_dir = Path(model_dir)
    path = model_dir / filename
    if not model_dir.is_dir():
        raise ContractError(f"model folder {str(model_dir)!r} does not exist")
    if not path.is_file():
        raise ContractError(f"model folder {str(model_dir)!r} has no {filename}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ContractError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ContractError(f"{path}: expected a JSON object")
    contract = ModelContract.from_dict(data)
    if require_onnx and not (model_dir / contract.onnx_file).is_file():
        raise ContractError(f"model folder {str(model_dir)!r} has no ONNX file {contract.onnx_file!r}")
    return contract


def load_metrics(model_dir: Path | str) -> dict[str, Any] | None:
    """The evaluation report shipped with the model, or None when there is none."""
    path = Path(model_dir) / METRICS_FILE
    if not path.is_file():
        return None
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def normalise(batch: np.ndarray, contract: ModelContract) -> np.ndarray:
    """uint8 ``[N, H, W]`` or ``[N, H, W, C]`` -> float32 C-contiguous ``[N, C, H, W]``: ``(x * scale - mean) / std``.

    The one implementation of the contract's preprocessing, for serving, evaluation, export and quantization.
    Raises TypeError for a batch that is not uint8 and ValueError for one of the wrong size or channel count.
    """
    if batch.dtype != np.uint8:
        raise TypeError(f"expected a uint8 batch, got {batch.dtype}")
    spec, pre = contract.input, contract.preprocessing
    hwc = batch.shape[1:] if batch.ndim == 4 else (*batch.shape[1:], 1)
    if batch.ndim not in (3, 4) or hwc != (spec.height, spec.width, spec.channels):
        needs = f"{spec.height}x{spec.width}x{spec.channels}"
        raise ValueError(f"batch has shape {batch.shape}; the contract needs {needs}")
    x = batch.astype(np.float32)
    x = x[:, None, :, :] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    mean = np.asarray(pre.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(pre.std, dtype=np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((x * np.float32(pre.scale) - mean) / std, dtype=np.float32)


def check_onnx_matches(contract: ModelContract, session: Any) -> None:
    """Raise ContractError unless an ``onnxruntime.InferenceSession`` has the tensors the contract names."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    spec = contract.input
    if spec.name not in inputs:
        raise ContractError(f"ONNX file has no input {spec.name!r} (it has {sorted(inputs)})")
    if contract.output.name not in outputs:
        raise ContractError(f"ONNX file has no output {contract.output.name!r} (it has {sorted(outputs)})")
    shape = inputs[spec.name].shape
    expected = [spec.channels, spec.height, spec.width]
    if len(shape) != 4 or any(isinstance(d, int) and d != e for d, e in zip(shape[1:], expected, strict=True)):
        raise ContractError(
            f"ONNX input {spec.name!r} has shape {shape}; config.json says [N, {', '.join(map(str, expected))}]"
        )
    out_shape = outputs[contract.output.name].shape
    if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != contract.num_classes):
        raise ContractError(
            f"ONNX output {contract.output.name!r} has shape {out_shape}; "
            f"config.json lists {contract.num_classes} labels"
        )
