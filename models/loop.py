"""The training loop shared by the teacher and student stages: data on the device, batches, the schedule,
per-epoch checkpoints with resume, and one epoch's progress bar. torch only; no transformers.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from models.augment import AugmentConfig, augment_batch
from models.contract import Preprocessing
from models.data import FaceDataset

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- data on device


@dataclass
class Tensors:
    x: torch.Tensor  # normalised float [N, C, H, W]
    y: torch.Tensor  # int64 [N]
    # Optional per-face teacher logits [N, classes] (cached by `emotion targets`): batches slice them with x and y.
    targets: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.targets is not None and self.targets.shape[0] != self.y.shape[0]:
            raise ValueError(f"{self.targets.shape[0]} cached logits for {self.y.shape[0]} training faces")


def to_tensors(ds: FaceDataset, pre: Preprocessing, device: torch.device) -> Tensors:
    images = torch.from_numpy(ds.images).float()
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    mean = torch.tensor(pre.mean).view(1, -1, 1, 1)
    std = torch.tensor(pre.std).view(1, -1, 1, 1)
    x = (images * pre.scale - mean) / std
    return Tensors(x.to(device), torch.from_numpy(ds.labels).to(device))


def batches(
    data: Tensors, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None, limit: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """``(x, y, targets)`` batches; ``targets`` is None when ``data`` carries none."""
    n = data.y.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for count, start in enumerate(range(0, n, batch_size)):
        if limit and count >= limit:
            return
        idx = order[start : start + batch_size].to(data.x.device)
        yield data.x[idx], data.y[idx], None if data.targets is None else data.targets[idx]


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
    return torch.cat([forward(x) for x, _, _ in batches(data, batch_size, shuffle=False)])


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


@dataclass(frozen=True)
class LoopConfig:
    """What one epoch needs to know besides the model: batch size, seed, augmentation, an optional batch cap."""

    batch_size: int
    seed: int
    augment: AugmentConfig
    max_batches_per_epoch: int = 0


def run_epochs(
    stage: Stage,
    train: Tensors,
    val: Tensors,
    args: LoopConfig,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]],
    eval_forward: Callable[[torch.Tensor], torch.Tensor],
    on_best: Callable[[], None],
    log: Callable[[dict[str, Any]], None],
) -> None:
    """Train ``stage`` from its resume point; ``loss_fn(x, y, targets) -> (loss, logits)`` on an augmented batch
    (``targets``: the batch's rows of ``train.targets``, or None)."""
    for epoch in range(stage.start_epoch, stage.epochs):
        # Seed per epoch so that a resumed run draws the same batches and augmentations as an uninterrupted one.
        generator = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        aug_gen = torch.Generator(device=train.x.device).manual_seed(args.seed * 1000 + epoch + 1)
        stage.model.train()
        total = min(stage.steps_per_epoch, args.max_batches_per_epoch or stage.steps_per_epoch)
        bar = tqdm(batches(train, args.batch_size, shuffle=True, generator=generator, limit=total), total=total,
                   desc=f"{stage.name} {epoch + 1}/{stage.epochs}", leave=False, dynamic_ncols=True)
        seen, loss_sum, correct, started = 0, 0.0, 0, time.perf_counter()
        for x, y, targets in bar:
            loss, logits = loss_fn(augment_batch(x, args.augment, aug_gen), y, targets)
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


def steps_for(n: int, args: LoopConfig) -> int:
    steps = math.ceil(n / args.batch_size)
    return min(steps, args.max_batches_per_epoch) if args.max_batches_per_epoch else steps
