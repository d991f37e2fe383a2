"""Batch augmentation on tensors (no per-image Python loop): random affine + flip, brightness/contrast, erasing.

Operating on the whole batch on the training device keeps a 2-core CPU busy with the model, not with PIL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of each augmentation; zero turns one off."""

    flip: bool = True
    rotate_deg: float = 10.0
    scale: float = 0.1
    translate: float = 0.1
    brightness: float = 0.2
    contrast: float = 0.2
    erase_prob: float = 0.25


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment normalised images ``[N, C, H, W]``; returns a new tensor of the same shape."""
    n = x.shape[0]
    dev = x.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, device=dev, generator=generator) * (high - low) + low

    angle = uniform(-cfg.rotate_deg, cfg.rotate_deg) * math.pi / 180.0
    scale = uniform(1.0 - cfg.scale, 1.0 + cfg.scale)
    flip = torch.ones(n, device=dev)
    if cfg.flip:
        flip = torch.where(torch.rand(n, device=dev, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * flip
    theta[:, 1, 1] = cos
    theta[:, 0, 2] = uniform(-cfg.translate, cfg.translate) * 2
    theta[:, 1, 2] = uniform(-cfg.translate, cfg.translate) * 2
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    if cfg.contrast or cfg.brightness:
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        contrast = uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast).view(n, 1, 1, 1)
        brightness = uniform(-cfg.brightness, cfg.brightness).view(n, 1, 1, 1)
        out = (out - mean) * contrast + mean + brightness

    if cfg.erase_prob > 0:
        out = _random_erase(out, cfg.erase_prob, generator)
    return out


def _random_erase(x: torch.Tensor, prob: float, generator: torch.Generator | None) -> torch.Tensor:
    n, _, h, w = x.shape
    dev = x.device
    apply = torch.rand(n, device=dev, generator=generator) < prob
    eh = (torch.rand(n, device=dev, generator=generator) * 0.3 + 0.1) * h
    ew = (torch.rand(n, device=dev, generator=generator) * 0.3 + 0.1) * w
    top = torch.rand(n, device=dev, generator=generator) * (h - eh)
    left = torch.rand(n, device=dev, generator=generator) * (w - ew)
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    inside = (
        (rows >= top.view(n, 1, 1))
        & (rows < (top + eh).view(n, 1, 1))
        & (cols >= left.view(n, 1, 1))
        & (cols < (left + ew).view(n, 1, 1))
        & apply.view(n, 1, 1)
    )
    return x.masked_fill(inside.unsqueeze(1), 0.0)
