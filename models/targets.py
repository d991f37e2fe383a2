"""Cached distillation targets: a teacher's logits for every training face, computed once (``emotion targets``).

    emotion targets --model models/default --output runs/targets/t040.npz            # the shipped 0.4.0 ensemble
    emotion targets --teacher-checkpoint runs/t11/teacher/best.pt,runs/t12/teacher/best.pt --teacher-flip \\
        --classes all --output runs/targets/t7.npz                                     # CNN teachers
    emotion train --teacher-logits runs/targets/t040.npz --distill soft ...            # no teacher runs in training

The faces are ``emotion train``'s training faces exactly (``training_split``: the ``--classes`` of the ``train``
split, then ``stratified_split`` with ``--val-fraction`` and ``--split-seed``), in the same order. The teacher is
either a model folder (an ONNX folder such as ``models/default``, run by onnxruntime with its own contract's
preprocessing: the 0.4.0 graph gives its flip-averaged ensemble logits; or a student checkpoint folder) or CNN
teacher state dicts (``emotion train --teacher-only``; a comma list is their ensemble, ``--teacher-flip`` averages
each face with its mirror image), fed exactly as ``emotion train`` feeds its teacher.

The ``.npz`` file holds ``logits`` float32 ``[N, classes]`` (columns in ``labels`` order), ``indices`` (the rows
of the class-filtered ``train`` split), ``ids`` (each face's ``image.path``), ``y`` (its label index), ``labels``
and ``meta`` (JSON: the source model's name/version/kind/paths, the split settings, teacher accuracy on the train
and validation faces). ``emotion train --teacher-logits`` refuses a file whose labels or rows are not the run's.

Cached logits are those of the un-augmented face, while the student sees an augmented view of it (flips, small
affine, brightness/contrast, erasing): exact for flips when the teacher is flip-averaged, an approximation for the
rest (DeiT's distillation runs the teacher on the student's augmented view). In exchange, a distillation epoch
costs no teacher pass at all: the 0.4.0 ensemble is 6 passes per face.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.cli_args import parse_arguments
from models.contract import ModelContract, Preprocessing, normalise
from models.data import DatasetError, FaceDataset, default_fer_dir, load_split, parse_classes, stratified_split

if TYPE_CHECKING:  # torch is imported only where a CNN teacher runs: ONNX teachers need no torch
    import torch

logger = logging.getLogger(__name__)

FORMAT = "emotion-targets/1"
_ARRAYS = ("logits", "indices", "ids", "y", "labels", "meta")


class TargetsError(ValueError):
    """A targets file is unreadable, or does not belong to this run (labels, faces)."""


# ----------------------------------------------------------------------------------------------- the training faces


@dataclass
class TrainingSplit:
    """The class-filtered ``train`` split and its seeded (train, validation) row indices, as ``emotion train``
    carves them."""

    faces: FaceDataset
    train_idx: np.ndarray
    val_idx: np.ndarray

    @property
    def train_ids(self) -> list[str]:
        return [self.faces.paths[i] for i in self.train_idx]


def training_split(data_dir: Path | str, classes: str | Sequence[str] | None, image_size: int,
                   val_fraction: float, split_seed: int) -> TrainingSplit:
    """The one definition of the training faces: ``emotion train`` and ``emotion targets`` both call it."""
    faces = load_split(data_dir, "train", parse_classes(classes), size=(image_size, image_size))
    train_idx, val_idx = stratified_split(faces.labels, val_fraction, split_seed)
    return TrainingSplit(faces, train_idx, val_idx)


# ----------------------------------------------------------------------------------------------- the file


@dataclass
class CachedTargets:
    """Teacher logits of a run's training faces (one row per face, in training-split order)."""

    logits: np.ndarray  # float32 [N, C]
    indices: np.ndarray  # int64 [N]: rows of the class-filtered train split
    ids: list[str]  # image.path of each face
    y: np.ndarray  # int64 [N]: label index of each face
    labels: tuple[str, ...]  # the columns of logits, the run's label order
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.indices)
        if self.logits.ndim != 2 or self.logits.shape != (n, len(self.labels)):
            raise TargetsError(f"logits have shape {self.logits.shape}; expected [{n}, {len(self.labels)}] "
                               f"({n} faces, labels {list(self.labels)})")  # fmt: skip
        if len(self.ids) != n or len(self.y) != n:
            raise TargetsError(f"{n} indices but {len(self.ids)} ids and {len(self.y)} labels")
        if not np.all(np.isfinite(self.logits)):
            raise TargetsError("logits contain NaN or infinity")

    @property
    def source(self) -> str:
        src = self.meta.get("source", {})
        return f"{src.get('name', '?')} {src.get('version', '?')}"

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(
            tmp, logits=self.logits.astype(np.float32), indices=self.indices.astype(np.int64),
            ids=np.asarray(self.ids, dtype=np.str_), y=self.y.astype(np.int64),
            labels=np.asarray(self.labels, dtype=np.str_), meta=np.asarray(json.dumps({"format": FORMAT, **self.meta})),
        )  # fmt: skip
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path | str) -> CachedTargets:
        path = Path(path)
        if not path.is_file():
            raise TargetsError(f"{path}: no such targets file (make one with emotion targets)")
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in _ARRAYS if k not in data.files]
                if missing:
                    raise TargetsError(f"{path}: not an emotion targets file (no {', '.join(missing)})")
                arrays = {k: data[k] for k in _ARRAYS}
        except (OSError, ValueError) as exc:
            if isinstance(exc, TargetsError):
                raise
            raise TargetsError(f"{path}: not a readable .npz targets file ({exc})") from None
        meta = json.loads(str(arrays["meta"]))
        if meta.get("format") != FORMAT:
            raise TargetsError(f"{path}: format {meta.get('format')!r}, this code reads {FORMAT!r}")
        try:
            return cls(logits=arrays["logits"].astype(np.float32), indices=arrays["indices"].astype(np.int64),
                       ids=[str(s) for s in arrays["ids"]], y=arrays["y"].astype(np.int64),
                       labels=tuple(str(s) for s in arrays["labels"]), meta=meta)  # fmt: skip
        except TargetsError as exc:
            raise TargetsError(f"{path}: {exc}") from None

    def check_matches(self, labels: Sequence[str], split: TrainingSplit, where: str = "--teacher-logits") -> None:
        """Raise TargetsError unless these are logits of ``split``'s training faces with ``labels`` as columns."""
        made = self.meta.get("split", {})
        how = (f"it was made with --classes {made.get('classes')!r} --val-fraction {made.get('val_fraction')} "
               f"--split-seed {made.get('split_seed')} from {made.get('data_dir')!r}")  # fmt: skip
        if tuple(labels) != self.labels:
            raise TargetsError(f"{where}: its labels {list(self.labels)} are not this run's {list(labels)} "
                               f"(--classes); {how}")  # fmt: skip
        ids, idx, y = split.train_ids, split.train_idx, split.faces.labels[split.train_idx]
        if len(idx) != len(self.indices):
            raise TargetsError(f"{where}: it holds {len(self.indices)} faces, this run trains on {len(idx)}; {how}")
        same = (self.indices == idx) & (np.asarray(self.ids) == np.asarray(ids)) & (self.y == y)
        if not same.all():
            row = int(np.flatnonzero(~same)[0])
            raise TargetsError(
                f"{where}: its faces are not this run's training faces ({int((~same).sum())} of {len(idx)} rows "
                f"differ; first at row {row}: file {self.ids[row]!r} (label {self.y[row]}), run {ids[row]!r} "
                f"(label {y[row]})); {how}"
            )

    def accuracy(self, rows: np.ndarray | None = None) -> float:
        """Top-1 accuracy of the cached logits against the faces' labels (all rows, or ``rows``)."""
        logits, y = (self.logits, self.y) if rows is None else (self.logits[rows], self.y[rows])
        return float((logits.argmax(1) == y).mean()) if len(y) else float("nan")


# ----------------------------------------------------------------------------------------------- teachers


def load_teachers(paths: str, channels: int, classes: int, flip: bool, device: torch.device) -> torch.nn.Module:
    """One CNN teacher, or the ensemble of the comma-separated state dicts in ``paths`` (torch ``nn.Module``)."""
    import torch

    from models.architectures import TeacherCNN, TeacherEnsemble

    members: list[torch.nn.Module] = []
    for path in (p.strip() for p in paths.split(",") if p.strip()):
        if not Path(path).is_file():
            raise FileNotFoundError(f"--teacher-checkpoint: {path} does not exist")
        member = TeacherCNN(channels, classes).to(device)
        member.load_state_dict(torch.load(path, map_location=device))
        members.append(member.eval())
    if len(members) == 1 and not flip:
        return members[0]
    return TeacherEnsemble(members, flip_average=flip).eval()


def pick_device(choice: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else as torch names it (a ``torch.device``)."""
    import torch

    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def _digest(paths: Sequence[str]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:12]


# ----------------------------------------------------------------------------------------------- computing them


@dataclass
class TargetsArgs:
    """Command-line arguments of ``emotion targets``."""

    output: Path = field(metadata={"help": "the .npz file to write"})
    model: Path | None = field(default=None, metadata={
        "help": "teacher model folder: ONNX (config.json + the ONNX file, e.g. models/default) or a student "
                "checkpoint folder"})
    teacher_checkpoint: str | None = field(default=None, metadata={
        "help": "CNN teacher state dict(s) from emotion train --teacher-only; a comma list is their ensemble"})
    teacher_flip: bool = field(default=False, metadata={
        "help": "CNN teachers: average each face's logits with its mirror image's"})
    data_dir: Path = field(default_factory=default_fer_dir, metadata={"help": "dataset root, as in training"})
    classes: str = field(default="angry,happy,sad", metadata={"help": "as in training: comma list, or 'all'"})
    val_fraction: float = field(default=0.1, metadata={"help": "as in training"})
    split_seed: int = field(default=42, metadata={"help": "as in training"})
    image_size: int = field(default=48, metadata={"help": "as in training (CNN teachers are fed at this size)"})
    batch_size: int = 256
    threads: int = field(default=0, metadata={"help": "onnxruntime / torch CPU threads (0 = library default)"})
    device: str = field(default="auto", metadata={"help": "CNN teachers: auto | cpu | cuda"})

    def __post_init__(self) -> None:
        if (self.model is None) == (self.teacher_checkpoint is None):
            raise ValueError("give exactly one teacher: --model DIR or --teacher-checkpoint A.pt[,B.pt...]")
        if self.teacher_flip and self.model is not None:
            raise ValueError("--teacher-flip is for --teacher-checkpoint; a model folder's graph decides its views")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size={self.batch_size} must be >= 1")


def compute_targets(args: TargetsArgs) -> CachedTargets:
    """The teacher's logits for every training face of the run that ``args`` describes."""
    started = time.perf_counter()
    split = training_split(args.data_dir, args.classes, args.image_size, args.val_fraction, args.split_seed)
    labels = split.faces.label_names
    rows = np.concatenate([split.train_idx, split.val_idx])  # validation too: the teacher's honest accuracy
    if args.model is not None:
        logits, source = _model_logits(args, split, rows, labels)
    else:
        logits, source = _teacher_logits(args, split, rows, len(labels))
    n = len(split.train_idx)
    targets = CachedTargets(
        logits=logits[:n], indices=split.train_idx, ids=split.train_ids, y=split.faces.labels[split.train_idx],
        labels=labels, meta={"source": source},
    )  # fmt: skip
    val_accuracy = float((logits[n:].argmax(1) == split.faces.labels[split.val_idx]).mean())
    targets.meta.update({
        "split": {"data_dir": str(args.data_dir), "classes": args.classes, "val_fraction": args.val_fraction,
                  "split_seed": args.split_seed, "image_size": args.image_size, "skipped": split.faces.skipped},
        "train_accuracy": targets.accuracy(), "val_accuracy": val_accuracy, "n_val": len(split.val_idx),
        "seconds": round(time.perf_counter() - started, 1),
    })  # fmt: skip
    return targets


def _model_logits(args: TargetsArgs, split: TrainingSplit, rows: np.ndarray,
                  labels: tuple[str, ...]) -> tuple[np.ndarray, dict[str, Any]]:
    from models.predictors import load_model, predict_logits

    assert args.model is not None
    contract, predict, kind = load_model(args.model, args.threads)
    if set(contract.labels) != set(labels) or len(contract.labels) != len(labels):
        raise TargetsError(f"--model {args.model} has labels {list(contract.labels)}; this run's --classes "
                           f"{args.classes!r} are {list(labels)}: a teacher must have the run's classes")  # fmt: skip
    images = _images_for(contract, split, args)
    logits = predict_logits(predict, normalise(images[rows], contract), args.batch_size)
    columns = [contract.labels.index(label) for label in labels]  # the model's order -> the run's
    source = {"kind": kind, "name": contract.name, "version": contract.version, "path": str(args.model),
              "architecture": contract.architecture, "flip_averaged": contract.output.flip_averaged,
              "model_labels": list(contract.labels)}  # fmt: skip
    return np.ascontiguousarray(logits[:, columns], dtype=np.float32), source


def _images_for(contract: ModelContract, split: TrainingSplit, args: TargetsArgs) -> np.ndarray:
    """The training split's faces decoded as the model's contract says (same rows, same order)."""
    pre, spec = contract.preprocessing, contract.input
    if (pre.color_mode, pre.resize, spec.height, spec.width) == ("L", "bilinear", args.image_size, args.image_size):
        return split.faces.images  # what training decoded is what the model wants
    faces = load_split(args.data_dir, "train", split.faces.label_names, color_mode=pre.color_mode,
                       size=(spec.height, spec.width), resize=pre.resize)  # fmt: skip
    if faces.paths != split.faces.paths:
        raise DatasetError(f"{args.data_dir}: decoding at the model's contract kept other faces than training does")
    return faces.images


def _teacher_logits(args: TargetsArgs, split: TrainingSplit, rows: np.ndarray,
                    classes: int) -> tuple[np.ndarray, dict[str, Any]]:
    import torch

    from models.loop import predict_logits, to_tensors

    assert args.teacher_checkpoint is not None
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    teacher = load_teachers(args.teacher_checkpoint, 1, classes, args.teacher_flip, device)
    # Exactly what emotion train's teacher sees: the training contract's default preprocessing, on the device.
    data = to_tensors(split.faces.subset(rows), Preprocessing(), device)
    logits = predict_logits(teacher, data, args.batch_size).float().cpu().numpy()
    paths = [p.strip() for p in args.teacher_checkpoint.split(",") if p.strip()]
    source = {"kind": "cnn-teachers", "name": f"cnn-teachers-x{len(paths)}", "version": _digest(paths),
              "paths": paths, "flip_averaged": args.teacher_flip}  # fmt: skip
    return np.ascontiguousarray(logits, dtype=np.float32), source


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_arguments(TargetsArgs, argv, prog="emotion targets", description=__doc__)
    try:
        targets = compute_targets(args)
    except (TargetsError, DatasetError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2
    path = targets.save(args.output)
    meta = targets.meta
    logger.info("wrote %s: %d faces x %d logits from %s (train accuracy %.4f, validation %.4f on %d faces; %.0f s)",
                path, *targets.logits.shape, targets.source, meta["train_accuracy"], meta["val_accuracy"],
                meta["n_val"], meta["seconds"])  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
