"""The networks: the ViT student (transformers DeiT with a distillation token) and the CNN teacher.

Presets are named so that the training command, the checkpoint and the model card all say the same thing.
``hybrid-*`` presets replace DeiT's one-layer patch embedding with a small convolutional stem (the ViT paper's
"hybrid"; Xiao et al. 2021, "Early convolutions help transformers see better"): from scratch on 16,000 faces a
plain patch embedding learns slowly. The stem is recorded in the transformers config (``conv_stem``), so a saved
checkpoint rebuilds itself with ``load_student``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class VitPreset:
    """Size of a DeiT student for small grayscale faces."""

    patch_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    mlp_ratio: int = 4
    # (width, stride) of each 3x3 conv + BatchNorm + ReLU layer before the patch projection; () = plain DeiT.
    conv_stem: tuple[tuple[int, int], ...] = ()


_STEM_12X12 = ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1))

VIT_PRESETS: dict[str, VitPreset] = {
    # The bundled model's members are hybrid-small and hybrid-tiny; the micro presets are for the tests.
    # A plain DeiT (patch embedding only), 48x48 input: patch 4 -> 144 tokens (+ class and distillation tokens).
    "micro-p4": VitPreset(patch_size=4, hidden_size=64, num_hidden_layers=2, num_attention_heads=2),  # tests
    # Conv stem to 12x12 (stride 4), then a 2x2 patch projection: 6x6 tokens. patch_size = the total stride.
    "hybrid-tiny": VitPreset(patch_size=8, hidden_size=192, num_hidden_layers=6, num_attention_heads=3,
                             conv_stem=_STEM_12X12),
    "hybrid-small": VitPreset(patch_size=8, hidden_size=192, num_hidden_layers=4, num_attention_heads=3,
                              conv_stem=_STEM_12X12),
    "hybrid-micro": VitPreset(patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,  # tests
                              conv_stem=((8, 2), (16, 2))),
}


def build_student(
    preset: str,
    labels: tuple[str, ...],
    *,
    image_size: int,
    num_channels: int,
    drop_path: float = 0.1,
    pretrained_dir: str | None = None,
) -> Any:
    """A ``DeiTForImageClassificationWithTeacher`` from scratch, or loaded from a local checkpoint folder.

    The labels are stored in the model config (``id2label``) so the checkpoint names its own classes.
    """
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    id2label = dict(enumerate(labels))
    label2id = {name: i for i, name in id2label.items()}
    if pretrained_dir is not None:
        # Heads are re-initialised when the classes differ.
        return load_student(
            pretrained_dir, num_labels=len(labels), id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True
        )
    if preset not in VIT_PRESETS:
        raise ValueError(f"unknown ViT preset {preset!r}; choose one of {sorted(VIT_PRESETS)}")
    p = VIT_PRESETS[preset]
    if image_size % p.patch_size:
        raise ValueError(f"image_size={image_size} is not a multiple of patch_size={p.patch_size} ({preset})")
    config = DeiTConfig(  # type: ignore[call-arg]  # transformers' typed config omits inherited kwargs
        image_size=image_size,
        patch_size=p.patch_size,
        num_channels=num_channels,
        hidden_size=p.hidden_size,
        num_hidden_layers=p.num_hidden_layers,
        num_attention_heads=p.num_attention_heads,
        intermediate_size=p.hidden_size * p.mlp_ratio,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=drop_path,
        num_labels=len(labels),
        id2label=id2label,
        label2id=label2id,
    )
    if p.conv_stem:
        stride = math.prod(s for _, s in p.conv_stem)
        if p.patch_size % stride:
            raise ValueError(f"{preset}: patch_size={p.patch_size} is not a multiple of the stem's stride {stride}")
        config.conv_stem = [list(layer) for layer in p.conv_stem]
    model = (hybrid_class() if p.conv_stem else DeiTForImageClassificationWithTeacher)(config)
    # transformers starts the class/distillation tokens and position embeddings at zero, so both heads read the
    # same token and the model starts position-blind; DeiT's reference code draws them from a truncated normal.
    emb = model.deit.embeddings
    for param in (emb.cls_token, emb.distillation_token, emb.position_embeddings):
        nn.init.trunc_normal_(param, std=config.initializer_range)
    return model


class ConvStem(nn.Module):
    """3x3 conv + BatchNorm + ReLU layers, then a patch projection to the transformer width (kernel = stride)."""

    def __init__(self, num_channels: int, layers: list[list[int]], hidden_size: int, patch_size: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in, stride = num_channels, 1
        for width, s in layers:
            blocks += [nn.Conv2d(c_in, width, 3, s, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            c_in, stride = width, stride * s
        self.layers = nn.Sequential(*blocks)
        rest = patch_size // stride
        self.proj = nn.Conv2d(c_in, hidden_size, rest, rest)

    @property
    def weight(self) -> torch.Tensor:
        return self.proj.weight  # transformers reads projection.weight.dtype to cast its input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.layers(x))  # type: ignore[no-any-return]


def attach_conv_stem(model: Any) -> Any:
    """Swap DeiT's patch projection for the ``conv_stem`` its config names (no-op for a plain DeiT)."""
    config = model.config
    layers = getattr(config, "conv_stem", None)
    if layers:
        embeddings = model.deit.embeddings.patch_embeddings
        embeddings.projection = ConvStem(config.num_channels, layers, config.hidden_size, config.patch_size)
    return model


@functools.cache
def hybrid_class() -> Any:
    """``DeiTForImageClassificationWithTeacher`` whose patch embedding is the config's ``conv_stem``.

    A subclass, so that ``save_pretrained`` / ``from_pretrained`` (and their weight-name mapping) work unchanged.
    """
    from transformers import DeiTForImageClassificationWithTeacher

    class DeiTHybridForImageClassificationWithTeacher(DeiTForImageClassificationWithTeacher):
        def __init__(self, config: Any) -> None:
            super().__init__(config)  # type: ignore[no-untyped-call]
            attach_conv_stem(self)

    return DeiTHybridForImageClassificationWithTeacher


def load_student(checkpoint_dir: Path | str, **overrides: Any) -> Any:
    """A student saved with ``save_pretrained``, from a local folder only (no hub access at run time); ``overrides``
    go to ``from_pretrained`` (e.g. new labels)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(checkpoint_dir, local_files_only=True)
    name = (config.architectures or [""])[0]
    hybrid = hybrid_class()
    architecture = hybrid if name == hybrid.__name__ else getattr(transformers, name, None)
    if architecture is None:
        raise ValueError(f"{checkpoint_dir}: unknown architectures {config.architectures}")
    return architecture.from_pretrained(checkpoint_dir, local_files_only=True, **overrides)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TeacherCNN(nn.Module):
    """A VGG-style CNN (about 1.2 M parameters) that learns FER quickly; used only to teach the ViT."""

    def __init__(self, num_channels: int, num_classes: int, widths: tuple[int, ...] = (64, 128, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = num_channels
        for width in widths:
            layers += [_conv_block(c_in, width), nn.MaxPool2d(2)]
            c_in = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # type: ignore[no-any-return]


@dataclass
class EnsembleOutput:
    logits: torch.Tensor


class StudentEnsemble(nn.Module):
    """Several students as one model: the mean of their logits (``.logits``, as transformers' outputs have).

    Exported as one ONNX graph, so serving and every evaluation see a single model with a single contract.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("a student ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, pixel_values: torch.Tensor) -> EnsembleOutput:
        logits = torch.stack([member(pixel_values=pixel_values).logits for member in self.members]).mean(0)
        return EnsembleOutput(logits)


class TeacherEnsemble(nn.Module):
    """Mean logits of several teachers, optionally over each face and its mirror image too.

    A stronger, smoother teacher than any one member: its targets are what the student learns from.
    """

    def __init__(self, members: list[nn.Module], flip_average: bool = False) -> None:
        super().__init__()
        if not members:
            raise ValueError("a teacher ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.flip_average = flip_average

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def mean_logits(views: torch.Tensor) -> torch.Tensor:
            return torch.stack([member(views) for member in self.members]).mean(0)

        return mirror_averaged(mean_logits, x) if self.flip_average else mean_logits(x)


def mirror_averaged(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The mean of ``forward``'s logits for each image and its mirror image, both views run as one batch of 2N."""
    n = x.shape[0]
    logits = forward(torch.cat([x, torch.flip(x, dims=[3])], dim=0))
    return (logits[:n] + logits[n:]) * 0.5


class LogitsOnly(nn.Module):
    """Export wrapper: pixel_values -> logits (DeiT-with-teacher averages its class and distillation heads).

    With ``flip_average`` the logits are the mean over the image and its mirror image (test-time augmentation
    folded into the graph, so every runtime gets it): both views go through the model as one batch of 2N rows.
    """

    def __init__(self, model: nn.Module, flip_average: bool = False) -> None:
        super().__init__()
        self.model = model
        self.flip_average = flip_average

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        def logits(views: torch.Tensor) -> torch.Tensor:
            return self.model(pixel_values=views).logits  # type: ignore[no-any-return]

        return mirror_averaged(logits, pixel_values) if self.flip_average else logits(pixel_values)
