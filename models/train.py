"""Train the emotion ViT: a CNN teacher first, then a DeiT student distilled from it (DeiT-style).

    emotion train --output-dir runs/default            # the recipe of the bundled model (see MODEL_CARD.md)
    emotion train --output-dir runs/default            # again after an interruption: resumes from the last epoch

Every epoch is checkpointed (``<output>/<stage>/last.pt``); the best student by validation accuracy is saved
as a transformers folder (``<output>/best``) with the model contract beside it, ready for ``emotion export``.
The test split is read once, at the very end, for the final report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from models.architectures import LEVIT_PRESETS, VIT_PRESETS, TeacherCNN, build_student
from models.augment import AugmentConfig, augment_batch
from models.contract import CHECKPOINT_CONTRACT_FILE, InputSpec, ModelContract, Preprocessing
from models.data import FaceDataset, default_fer_dir, load_split, parse_classes, stratified_split

logger = logging.getLogger(__name__)


@dataclass
class TrainArgs:
    """Every knob of a training run; saved as ``args.json`` in the output folder."""

    data_dir: str = field(default_factory=lambda: str(default_fer_dir()), metadata={"help": "dataset root"})
    classes: str = field(default="angry,happy,sad", metadata={"help": "comma list, or 'all'"})
    output_dir: str = field(default="runs/default", metadata={"help": "checkpoints, logs, best model"})
    seed: int = 42
    val_fraction: float = 0.1
    image_size: int = 48
    preset: str = field(default="tiny-p6", metadata={"help": f"ViT size: {sorted(VIT_PRESETS)}"})
    pretrained_dir: str | None = field(default=None, metadata={"help": "local DeiT checkpoint folder to start from"})
    epochs: int = 40
    batch_size: int = 128
    lr: float = 1e-4
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    label_smoothing: float = 0.1
    drop_path: float = 0.1
    distill: str = field(default="hard", metadata={"help": "hard | soft | none"})
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    teacher_epochs: int = 30
    teacher_checkpoint: str | None = field(
        default=None, metadata={"help": "state dict of an already trained teacher (skips the teacher stage)"}
    )
    teacher_lr: float = 2e-3
    teacher_weight_decay: float = 5e-4
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    threads: int = 0
    device: str = "auto"
    max_batches_per_epoch: int = 0
    wandb: bool = True
    wandb_project: str = "emotion-vit"
    model_name: str = "emotion-vit"
    model_version: str = "0.1.0"

    def __post_init__(self) -> None:
        if self.distill not in {"hard", "soft", "none"}:
            raise ValueError(f"--distill={self.distill!r}: choose hard, soft or none")
        presets = sorted(VIT_PRESETS) + sorted(LEVIT_PRESETS)
        if self.preset not in presets and self.pretrained_dir is None:
            raise ValueError(f"--preset={self.preset!r}: choose one of {presets}")
        if self.epochs < 1:
            raise ValueError(f"--epochs={self.epochs} must be >= 1")


# ----------------------------------------------------------------------------------------------- data on device


@dataclass
class Tensors:
    x: torch.Tensor  # normalised float [N, C, H, W]
    y: torch.Tensor  # int64 [N]


def to_tensors(ds: FaceDataset, pre: Preprocessing, device: torch.device) -> Tensors:
    images = torch.from_numpy(ds.images).float()
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    mean = torch.tensor(pre.mean).view(1, -1, 1, 1)
    std = torch.tensor(pre.std).view(1, -1, 1, 1)
    x = (images * pre.scale - mean) / std
    return Tensors(x.to(device), torch.from_numpy(ds.labels).to(device))


def batches(
    data: Tensors, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None, limit: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = data.y.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for count, start in enumerate(range(0, n, batch_size)):
        if limit and count >= limit:
            return
        idx = order[start : start + batch_size].to(data.x.device)
        yield data.x[idx], data.y[idx]


# ----------------------------------------------------------------------------------------------- schedule and loop


def cosine_with_warmup(total_steps: int, warmup_steps: int, base_lr: float, min_lr: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return (min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))) / base_lr

    return factor


@torch.no_grad()
def predict_logits(
    forward: Callable[[torch.Tensor], torch.Tensor], data: Tensors, batch_size: int = 512
) -> torch.Tensor:
    return torch.cat([forward(x) for x, _ in batches(data, batch_size, shuffle=False)])


def evaluate_logits(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    return {"loss": float(F.cross_entropy(logits, y)), "accuracy": float((logits.argmax(1) == y).float().mean())}


class Stage:
    """One training stage (teacher or student) with per-epoch checkpoints and resume."""

    def __init__(self, name: str, root: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epochs: int,
                 steps_per_epoch: int, schedule: Callable[[int], float]) -> None:
        self.name, self.dir, self.model, self.optimizer, self.epochs = name, root / name, model, optimizer, epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self.steps_per_epoch = steps_per_epoch
        self.start_epoch, self.best_accuracy = 0, -1.0
        self.history: list[dict[str, Any]] = []
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def done(self) -> bool:
        return self.start_epoch >= self.epochs

    def resume(self) -> None:
        path = self.dir / "last.pt"
        if not path.is_file():
            return
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch, self.best_accuracy = state["epoch"] + 1, state["best_accuracy"]
        self.history = state["history"]
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])
        logger.info("%s: resumed after epoch %d (best val accuracy %.4f)", self.name, state["epoch"] + 1,
                    self.best_accuracy)

    def checkpoint(self, epoch: int) -> None:
        state = {
            "epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "best_accuracy": self.best_accuracy, "history": self.history,
            "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
        }
        tmp = self.dir / "last.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.dir / "last.pt")  # atomic: an interruption never leaves a half-written checkpoint


def run_epochs(
    stage: Stage,
    train: Tensors,
    val: Tensors,
    args: TrainArgs,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    eval_forward: Callable[[torch.Tensor], torch.Tensor],
    on_best: Callable[[], None],
    log: Callable[[dict[str, Any]], None],
) -> None:
    """Train ``stage`` from its resume point; ``loss_fn(x, y) -> (loss, logits)`` on an augmented batch."""
    for epoch in range(stage.start_epoch, stage.epochs):
        # Seed per epoch so that a resumed run draws the same batches and augmentations as an uninterrupted one.
        generator = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        aug_gen = torch.Generator(device=train.x.device).manual_seed(args.seed * 1000 + epoch + 1)
        stage.model.train()
        total = min(stage.steps_per_epoch, args.max_batches_per_epoch or stage.steps_per_epoch)
        bar = tqdm(batches(train, args.batch_size, shuffle=True, generator=generator, limit=total), total=total,
                   desc=f"{stage.name} {epoch + 1}/{stage.epochs}", leave=False, dynamic_ncols=True)
        seen, loss_sum, correct, started = 0, 0.0, 0, time.perf_counter()
        for x, y in bar:
            loss, logits = loss_fn(augment_batch(x, args.augment, aug_gen), y)
            stage.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(stage.model.parameters(), 1.0)
            stage.optimizer.step()
            stage.scheduler.step()
            seen += y.shape[0]
            loss_sum += float(loss.detach()) * y.shape[0]
            correct += int((logits.argmax(1) == y).sum())
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        stage.model.eval()
        metrics = evaluate_logits(predict_logits(eval_forward, val), val.y)
        row = {"stage": stage.name, "epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
               "val_loss": metrics["loss"], "val_accuracy": metrics["accuracy"],
               "lr": stage.scheduler.get_last_lr()[0], "epoch_seconds": time.perf_counter() - started}
        stage.history.append(row)
        improved = metrics["accuracy"] > stage.best_accuracy
        if improved:
            stage.best_accuracy = metrics["accuracy"]
            on_best()
        stage.checkpoint(epoch)
        log(row)
        logger.info("%s epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f%s (%.0f s)", stage.name,
                    epoch + 1, stage.epochs, row["train_loss"], row["train_accuracy"], row["val_loss"],
                    row["val_accuracy"], " *" if improved else "", row["epoch_seconds"])
    stage.start_epoch = stage.epochs


def steps_for(n: int, args: TrainArgs) -> int:
    steps = math.ceil(n / args.batch_size)
    return min(steps, args.max_batches_per_epoch) if args.max_batches_per_epoch else steps


# ----------------------------------------------------------------------------------------------- the two stages


def train_teacher(args: TrainArgs, out: Path, train: Tensors, val: Tensors, channels: int, classes: int,
                  log: Callable[[dict[str, Any]], None]) -> nn.Module:
    torch.manual_seed(args.seed)
    teacher = TeacherCNN(channels, classes).to(train.x.device)
    if args.teacher_checkpoint:
        teacher.load_state_dict(torch.load(args.teacher_checkpoint, map_location=train.x.device))
        teacher.eval()
        accuracy = evaluate_logits(predict_logits(teacher, val), val.y)["accuracy"]
        logger.info("teacher: loaded %s (val accuracy %.4f)", args.teacher_checkpoint, accuracy)
        return teacher
    steps = steps_for(train.y.shape[0], args)
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=args.teacher_lr, weight_decay=args.teacher_weight_decay)
    schedule = cosine_with_warmup(steps * args.teacher_epochs, steps, args.teacher_lr, args.min_lr)
    stage = Stage("teacher", out, teacher, optimizer, args.teacher_epochs, steps, schedule)
    stage.resume()
    best_path = stage.dir / "best.pt"

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = teacher(x)
        return F.cross_entropy(logits, y, label_smoothing=args.label_smoothing), logits

    run_epochs(stage, train, val, args, loss_fn, teacher, lambda: torch.save(teacher.state_dict(), best_path), log)
    teacher.load_state_dict(torch.load(best_path, map_location=train.x.device))
    teacher.eval()
    logger.info("teacher: best val accuracy %.4f", stage.best_accuracy)
    return teacher


def train_student(args: TrainArgs, out: Path, train: Tensors, val: Tensors, contract: ModelContract,
                  teacher: nn.Module | None, log: Callable[[dict[str, Any]], None]) -> tuple[Any, float]:
    torch.manual_seed(args.seed + 1)
    student = build_student(args.preset, contract.labels, image_size=args.image_size,
                            num_channels=contract.input.channels, drop_path=args.drop_path,
                            pretrained_dir=args.pretrained_dir).to(train.x.device)
    logger.info("student %s: %.2f M parameters", args.preset, sum(p.numel() for p in student.parameters()) / 1e6)
    steps = steps_for(train.y.shape[0], args)
    decay = [p for n, p in student.named_parameters() if p.ndim > 1 and "embeddings" not in n]
    no_decay = [p for n, p in student.named_parameters() if not (p.ndim > 1 and "embeddings" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    schedule = cosine_with_warmup(steps * args.epochs, int(steps * args.warmup_epochs), args.lr, args.min_lr)
    stage = Stage("student", out, student, optimizer, args.epochs, steps, schedule)
    stage.resume()
    best_dir = out / "best"

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = student(pixel_values=x)
        ce = F.cross_entropy(output.cls_logits, y, label_smoothing=args.label_smoothing)
        if teacher is None:
            # Without a teacher both heads learn the labels.
            ce_dist = F.cross_entropy(output.distillation_logits, y, label_smoothing=args.label_smoothing)
            return 0.5 * (ce + ce_dist), output.logits
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

    run_epochs(stage, train, val, args, loss_fn, lambda x: student(pixel_values=x).logits, save_best, log)
    return student, stage.best_accuracy


# ----------------------------------------------------------------------------------------------- command line


def _add_field(parser: argparse.ArgumentParser, name: str, f: dataclasses.Field[Any], default: Any) -> None:
    flag = "--" + name.replace("_", "-")
    helptext = f.metadata.get("help", "")
    if isinstance(default, bool):
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=helptext)
    else:
        kind = type(default) if default is not None else str
        parser.add_argument(flag, type=kind, default=default, help=f"{helptext} (default: {default})".strip())


def parse_args(argv: list[str] | None) -> TrainArgs:
    parser = argparse.ArgumentParser(prog="emotion train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainArgs()
    for f in dataclasses.fields(TrainArgs):
        if f.name == "augment":
            for af in dataclasses.fields(AugmentConfig):
                _add_field(parser, f"aug_{af.name}", af, getattr(defaults.augment, af.name))
        else:
            _add_field(parser, f.name, f, getattr(defaults, f.name))
    ns = vars(parser.parse_args(argv))
    augment = AugmentConfig(**{af.name: ns.pop(f"aug_{af.name}") for af in dataclasses.fields(AugmentConfig)})
    return TrainArgs(**ns, augment=augment)


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps(dataclasses.asdict(args), indent=2))

    classes = parse_classes(args.classes)
    full_train = load_split(args.data_dir, "train", classes, size=(args.image_size, args.image_size))
    train_idx, val_idx = stratified_split(full_train.labels, args.val_fraction, args.seed)
    contract = ModelContract(
        name=args.model_name, version=args.model_version, labels=full_train.label_names,
        input=InputSpec(channels=1, height=args.image_size, width=args.image_size), preprocessing=Preprocessing(),
        architecture=f"DeiT ({args.preset}) distilled from a CNN teacher ({args.distill})",
    )
    train = to_tensors(full_train.subset(train_idx), contract.preprocessing, device)
    val = to_tensors(full_train.subset(val_idx), contract.preprocessing, device)
    logger.info("data: %d train / %d validation faces of %s on %s (skipped %d unreadable)", len(train_idx),
                len(val_idx), list(contract.labels), device, full_train.skipped)

    log = RunLog(args, out)
    teacher = None
    if args.distill != "none":
        teacher = train_teacher(args, out, train, val, contract.input.channels, contract.num_classes, log)
    _, best_val = train_student(args, out, train, val, contract, teacher, log)

    # Final evaluation: the best student on the held-out test split, read only now.
    import transformers

    architecture = json.loads((out / "best" / "config.json").read_text())["architectures"][0]
    best = getattr(transformers, architecture).from_pretrained(out / "best", local_files_only=True).to(device).eval()
    test_ds = load_split(args.data_dir, "test", contract.labels, size=(args.image_size, args.image_size))
    test = to_tensors(test_ds, contract.preprocessing, device)
    logits = predict_logits(lambda x: best(pixel_values=x).logits, test)
    summary = {"best_val_accuracy": best_val, **{f"test_{k}": v for k, v in evaluate_logits(logits, test.y).items()}}
    if teacher is not None:
        summary["teacher_test_accuracy"] = evaluate_logits(predict_logits(teacher, test), test.y)["accuracy"]
    (out / "final_report.json").write_text(json.dumps(summary, indent=2))
    log.finish(summary, test.y.tolist(), logits.argmax(1).tolist(), contract.labels)
    logger.info("done: %s; best model in %s (next: emotion export --checkpoint %s)", summary, out / "best",
                out / "best")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
