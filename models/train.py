"""Train the emotion ViT: a CNN teacher first, then a DeiT student distilled from it (DeiT-style).

    emotion train --output-dir runs/default            # the 2-core CPU budget: ~30 min teacher + ~55 min student
    emotion train --output-dir runs/default            # again after an interruption: resumes from the last epoch
    emotion train --teacher-logits runs/targets/t040.npz --distill soft   # distil from cached teacher logits

The defaults fit about 90 minutes on 2 CPU cores (8 teacher epochs of ~220 s, 17 student epochs of ~190 s).
The bundled model's recipe (a 4-teacher ensemble, 3 students, a GPU) is in models/default/MODEL_CARD.md; the
prepared GPU-lease recipe is models/recipes/gpu.sh.

``--teacher-logits FILE`` (from ``emotion targets``, ``models/targets.py``) replaces the teacher by its logits
computed once per training face: no teacher stage and no teacher pass per step. The file must hold this run's
labels and training faces (same ``--data-dir``, ``--classes``, ``--val-fraction`` and ``--split-seed``).

Every epoch is checkpointed (``<output>/<stage>/last.pt``); the best student by validation accuracy is saved
as a transformers folder (``<output>/best``) with the model contract beside it, ready for ``emotion export``.
The test split is read once, at the very end, for the final report.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.architectures import (
    VIT_PRESETS,
    LogitsOnly,
    TeacherCNN,
    TeacherEnsemble,
    build_student,
    load_student,
)
from models.augment import AugmentConfig
from models.cli_args import parse_arguments
from models.contract import CHECKPOINT_CONTRACT_FILE, InputSpec, ModelContract, Preprocessing
from models.data import default_fer_dir, load_split
from models.loop import (
    LoopConfig,
    Stage,
    Tensors,
    cosine_with_warmup,
    evaluate_logits,
    predict_logits,
    run_epochs,
    steps_for,
    to_tensors,
)
from models.targets import CachedTargets, load_teachers, pick_device, training_split

logger = logging.getLogger(__name__)


@dataclass
class TrainArgs:
    """Every knob of a training run; saved as ``args.json`` in the output folder."""

    data_dir: str = field(default_factory=lambda: str(default_fer_dir()), metadata={"help": "dataset root"})
    classes: str = field(default="angry,happy,sad", metadata={"help": "comma list, or 'all'"})
    output_dir: str = field(default="runs/default", metadata={"help": "checkpoints, logs, best model"})
    seed: int = 42
    split_seed: int = field(default=42, metadata={"help": "seed of the validation split (kept apart from --seed so "
                                                          "that runs with other seeds validate on the same faces)"})
    val_fraction: float = 0.1
    image_size: int = 48
    preset: str = field(default="hybrid-small", metadata={"help": f"ViT size: {sorted(VIT_PRESETS)}"})
    pretrained_dir: str | None = field(default=None, metadata={"help": "local DeiT checkpoint folder to start from"})
    epochs: int = 17
    batch_size: int = 128
    lr: float = 5e-4
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    drop_path: float = 0.1
    distill: str = field(default="hard", metadata={"help": "hard | soft | none"})
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    teacher_epochs: int = 8
    teacher_checkpoint: str | None = field(
        default=None, metadata={"help": "state dict of an already trained teacher, or a comma list of several "
                                        "(an ensemble: their mean logits teach); skips the teacher stage"}
    )
    teacher_flip: bool = field(default=False, metadata={
        "help": "teacher targets averaged over each face and its mirror (2x teacher compute)"})
    teacher_only: bool = field(default=False, metadata={
        "help": "train the teacher stage only (members of an ensemble are trained this way, one run per seed)"})
    teacher_logits: str | None = field(default=None, metadata={
        "help": "an .npz of cached teacher logits from emotion targets: distil from them, no teacher runs (its "
                "labels and faces must be this run's: same --data-dir, --classes, --val-fraction, --split-seed)"})
    teacher_lr: float = 2e-3
    teacher_weight_decay: float = 5e-4
    augment: AugmentConfig = field(default_factory=AugmentConfig, metadata={"prefix": "aug"})  # --aug-* flags
    threads: int = 0
    device: str = "auto"
    max_batches_per_epoch: int = 0
    wandb: bool = True
    wandb_project: str = "emotion-vit"
    model_name: str = "emotion-vit"
    model_version: str = "0.4.0"

    @property
    def loop(self) -> LoopConfig:
        return LoopConfig(self.batch_size, self.seed, self.augment, self.max_batches_per_epoch)

    def __post_init__(self) -> None:
        if self.distill not in {"hard", "soft", "none"}:
            raise ValueError(f"--distill={self.distill!r}: choose hard, soft or none")
        if self.preset not in VIT_PRESETS and self.pretrained_dir is None:
            raise ValueError(f"--preset={self.preset!r}: choose one of {sorted(VIT_PRESETS)}")
        if self.teacher_only and self.distill == "none":
            raise ValueError("--teacher-only needs a teacher: drop --distill=none")
        if self.epochs < 1:
            raise ValueError(f"--epochs={self.epochs} must be >= 1")
        if self.teacher_logits is not None:
            clash = [flag for flag, on in (("--teacher-checkpoint", self.teacher_checkpoint is not None),
                                           ("--teacher-only", self.teacher_only), ("--teacher-flip", self.teacher_flip),
                                           ("--distill=none", self.distill == "none")) if on]  # fmt: skip
            if clash:
                raise ValueError(f"--teacher-logits replaces the teacher; drop {', '.join(clash)} (flip-average when "
                                 f"computing the logits: emotion targets --teacher-flip)")  # fmt: skip


# ----------------------------------------------------------------------------------------------- the two stages


def train_teacher(args: TrainArgs, out: Path, train: Tensors, val: Tensors, channels: int, classes: int,
                  log: Callable[[dict[str, Any]], None]) -> nn.Module:
    torch.manual_seed(args.seed)
    if args.teacher_checkpoint:
        loaded = load_teachers(args.teacher_checkpoint, channels, classes, args.teacher_flip, train.x.device)
        accuracy = evaluate_logits(predict_logits(loaded, val), val.y)["accuracy"]
        logger.info("teacher: loaded %s (val accuracy %.4f)", args.teacher_checkpoint, accuracy)
        return loaded
    teacher = TeacherCNN(channels, classes).to(train.x.device)
    steps = steps_for(train.y.shape[0], args.loop)
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=args.teacher_lr, weight_decay=args.teacher_weight_decay)
    schedule = cosine_with_warmup(steps * args.teacher_epochs, steps, args.teacher_lr, args.min_lr)
    stage = Stage("teacher", out, teacher, optimizer, args.teacher_epochs, steps, schedule)
    stage.resume()
    best_path = stage.dir / "best.pt"

    def loss_fn(x: torch.Tensor, y: torch.Tensor, _targets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        logits = teacher(x)
        return F.cross_entropy(logits, y, label_smoothing=args.label_smoothing), logits

    run_epochs(stage, train, val, args.loop, loss_fn, teacher, lambda: torch.save(teacher.state_dict(), best_path), log)
    teacher.load_state_dict(torch.load(best_path, map_location=train.x.device))
    teacher.eval()
    logger.info("teacher: best val accuracy %.4f", stage.best_accuracy)
    return TeacherEnsemble([teacher], flip_average=True).eval() if args.teacher_flip else teacher


def train_student(args: TrainArgs, out: Path, train: Tensors, val: Tensors, contract: ModelContract,
                  teacher: nn.Module | None, log: Callable[[dict[str, Any]], None]) -> tuple[Any, float]:
    """Train the student; it distils from ``train.targets`` (cached teacher logits) when present, else from
    ``teacher`` run on each augmented batch, else learns the labels alone."""
    torch.manual_seed(args.seed + 1)
    student = build_student(args.preset, contract.labels, image_size=args.image_size,
                            num_channels=contract.input.channels, drop_path=args.drop_path,
                            pretrained_dir=args.pretrained_dir).to(train.x.device)
    logger.info("student %s: %.2f M parameters", args.preset, sum(p.numel() for p in student.parameters()) / 1e6)
    steps = steps_for(train.y.shape[0], args.loop)
    decay = [p for n, p in student.named_parameters() if p.ndim > 1 and "embeddings" not in n]
    no_decay = [p for n, p in student.named_parameters() if not (p.ndim > 1 and "embeddings" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    schedule = cosine_with_warmup(steps * args.epochs, int(steps * args.warmup_epochs), args.lr, args.min_lr)
    stage = Stage("student", out, student, optimizer, args.epochs, steps, schedule)
    stage.resume()
    best_dir = out / "best"

    def loss_fn(x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        output = student(pixel_values=x)
        ce = F.cross_entropy(output.cls_logits, y, label_smoothing=args.label_smoothing)
        if teacher is None and targets is None:
            # Without a teacher both heads learn the labels.
            ce_dist = F.cross_entropy(output.distillation_logits, y, label_smoothing=args.label_smoothing)
            return 0.5 * (ce + ce_dist), output.logits
        if targets is not None:
            t_logits = targets
        else:
            assert teacher is not None
            with torch.no_grad():
                t_logits = teacher(x)
        if args.distill == "hard":
            kd = F.cross_entropy(output.distillation_logits, t_logits.argmax(1))
        else:
            t = args.distill_temperature
            kd = F.kl_div(F.log_softmax(output.distillation_logits / t, 1), F.log_softmax(t_logits / t, 1),
                          reduction="batchmean", log_target=True) * t * t
        return (1 - args.distill_alpha) * ce + args.distill_alpha * kd, output.logits

    def save_best() -> None:
        student.save_pretrained(best_dir)
        contract.save(best_dir, CHECKPOINT_CONTRACT_FILE)

    run_epochs(stage, train, val, args.loop, loss_fn, lambda x: student(pixel_values=x).logits, save_best, log)
    return student, stage.best_accuracy


# ----------------------------------------------------------------------------------------------- command line


class RunLog:
    """Per-epoch rows to ``history.jsonl`` and, unless disabled, to Weights & Biases (offline by default)."""

    def __init__(self, args: TrainArgs, out: Path) -> None:
        self.path = out / "history.jsonl"
        self.wandb: Any = None
        if args.wandb:
            import wandb

            os.environ.setdefault("WANDB_MODE", "offline")  # never reach the network unless the user asks
            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb = wandb.init(project=args.wandb_project, dir=str(out), config=dataclasses.asdict(args),
                                    name=out.name, resume="allow", id=_run_id(out))

    def __call__(self, row: dict[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log({f"{row['stage']}/{k}": v for k, v in row.items() if k != "stage"})

    def finish(self, summary: dict[str, Any], y_true: list[int], y_pred: list[int], labels: tuple[str, ...]) -> None:
        if self.wandb is None:
            return
        import wandb

        self.wandb.summary.update(summary)
        self.wandb.log({"test/confusion_matrix": wandb.plot.confusion_matrix(
            y_true=y_true, preds=y_pred, class_names=list(labels))})
        self.wandb.finish()


def _run_id(out: Path) -> str:
    path = out / "wandb_run_id"
    if not path.is_file():
        path.write_text(f"{out.name}-{int(time.time())}")
    return path.read_text().strip()


def _family(preset: str) -> str:
    if preset in VIT_PRESETS and VIT_PRESETS[preset].conv_stem:
        return "DeiT with a convolutional stem"
    return "DeiT"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_arguments(TrainArgs, argv, prog="emotion train", description=__doc__)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls: several times faster, well within noise
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps(dataclasses.asdict(args), indent=2))

    split = training_split(args.data_dir, args.classes, args.image_size, args.val_fraction, args.split_seed)
    full_train, train_idx, val_idx = split.faces, split.train_idx, split.val_idx
    cached = None
    if args.teacher_logits:  # checked before any training: a file of other faces or labels is refused here
        cached = CachedTargets.load(args.teacher_logits)
        cached.check_matches(full_train.label_names, split)
        logger.info("teacher: cached logits of %s from %s (train accuracy %.4f)", cached.source, args.teacher_logits,
                    cached.accuracy())  # fmt: skip
    if args.distill == "none":
        taught = "trained on the labels alone"
    elif cached is not None:
        taught = f"distilled from cached logits of {cached.source} ({args.distill})"
    else:
        taught = f"distilled from a CNN teacher ({args.distill})"
    contract = ModelContract(
        name=args.model_name, version=args.model_version, labels=full_train.label_names,
        input=InputSpec(channels=1, height=args.image_size, width=args.image_size), preprocessing=Preprocessing(),
        architecture=f"{_family(args.preset)} ({args.preset}) {taught}",
    )
    train = to_tensors(full_train.subset(train_idx), contract.preprocessing, device)
    val = to_tensors(full_train.subset(val_idx), contract.preprocessing, device)
    logger.info("data: %d train / %d validation faces of %s on %s (skipped %d unreadable)", len(train_idx),
                len(val_idx), list(contract.labels), device, full_train.skipped)

    log = RunLog(args, out)
    teacher = None
    if cached is not None:
        teacher_logits = torch.from_numpy(cached.logits).to(device)
    elif args.distill != "none":
        teacher = train_teacher(args, out, train, val, contract.input.channels, contract.num_classes, log)
    best_val = None
    if not args.teacher_only:
        if cached is not None:
            train = Tensors(train.x, train.y, targets=teacher_logits)
        _, best_val = train_student(args, out, train, val, contract, teacher, log)

    # Final evaluation on the held-out test split, read only now, after the last training step.
    test_ds = load_split(args.data_dir, "test", contract.labels, size=(args.image_size, args.image_size))
    test = to_tensors(test_ds, contract.preprocessing, device)
    summary: dict[str, Any] = {}
    if cached is not None:  # no teacher to run on the test faces: what the cached logits say about train
        summary["teacher"] = {"cached_logits": args.teacher_logits, "source": cached.meta.get("source", {}),
                              "train_accuracy": cached.accuracy(), "val_accuracy": cached.meta.get("val_accuracy")}
    if teacher is not None:
        logits = predict_logits(teacher, test)  # a --teacher-only run reports its teacher
        summary["teacher_test_accuracy"] = evaluate_logits(logits, test.y)["accuracy"]
    if not args.teacher_only:
        best = load_student(out / "best").to(device).eval()
        logits = predict_logits(lambda x: best(pixel_values=x).logits, test)
        summary["best_val_accuracy"] = best_val
        summary.update({f"test_{k}": v for k, v in evaluate_logits(logits, test.y).items()})
        flipped = predict_logits(LogitsOnly(best, flip_average=True), test)
        summary["test_flip_averaged_accuracy"] = evaluate_logits(flipped, test.y)["accuracy"]
    (out / "final_report.json").write_text(json.dumps(summary, indent=2))
    log.finish(summary, test.y.tolist(), logits.argmax(1).tolist(), contract.labels)
    if args.teacher_only:
        logger.info("done: %s; teacher in %s", summary, out / "teacher" / "best.pt")
    else:
        logger.info("done: %s; best model in %s (next: emotion export --checkpoint %s)", summary, out / "best",
                    out / "best")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
