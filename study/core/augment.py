"""Batched augmentation of device-resident images, with per-sample randomness.

Random parameters come from a CPU ``torch.Generator`` seeded by the trial (cheap,
and identical on every device); the pixels are transformed wherever they live.
torchvision's v2 transforms draw one set of parameters per call, so on a
batched tensor every image would get the same crop. Here each sample gets its
own crop offsets, flip and resized-crop box, drawn from an explicit generator,
with plain tensor ops on whatever device holds the batch: no DataLoader
workers, no host round trips.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from study.core.data import Augment


def random_crop(x: torch.Tensor, padding: int, g: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and take a random crop of the original size from each image."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    oy = torch.randint(0, 2 * padding + 1, (b, 1), generator=g).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (b, 1), generator=g).to(x.device)
    rows = (oy + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(-1, x.shape[1], -1, padded.shape[3])
    cropped = padded.gather(2, rows)
    cols = (ox + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(-1, x.shape[1], h, -1)
    return cropped.gather(3, cols)


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=g).to(x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def crop_boxes(n: int, g: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Per-sample RandomResizedCrop boxes as (cx, cy, w, h) fractions of the image."""
    area = torch.empty(n).uniform_(*scale, generator=g)
    r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g).exp()
    bw = (area * r).sqrt().clamp(max=1.0)
    bh = (area / r).sqrt().clamp(max=1.0)
    cx = bw / 2 + torch.rand(n, generator=g) * (1 - bw)
    cy = bh / 2 + torch.rand(n, generator=g) * (1 - bh)
    return torch.stack([cx, cy, bw, bh], dim=1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Crop each image to its box (cx, cy, w, h as fractions) and resize it, with one grid_sample call."""
    b = x.shape[0]
    boxes = boxes.to(x.device, x.dtype)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = boxes[:, 2]
    theta[:, 1, 1] = boxes[:, 3]
    theta[:, 0, 2] = boxes[:, 0] * 2 - 1
    theta[:, 1, 2] = boxes[:, 1] * 2 - 1
    out_size = (b, x.shape[1], *(size or x.shape[2:]))
    grid = F.affine_grid(theta, out_size, align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


@dataclass
class Mix:
    """A CutMix pairing: sample i was pasted with a box of sample ``perm[i]``; ``lam`` is i's own area share."""

    perm: torch.Tensor
    lam: float


def cutmix(x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, Mix]:
    """One box per batch, partner by permutation, lam ~ Beta(1, 1) corrected to the box's true area (Yun et al., 2019)."""
    b, _, h, w = x.shape
    lam = float(torch.rand(1, generator=g))
    perm = torch.randperm(b, generator=g).to(x.device)
    cut = (1 - lam) ** 0.5
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(torch.randint(h, (1,), generator=g)), int(torch.randint(w, (1,), generator=g))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    mixed = x.clone()
    mixed[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    return mixed, Mix(perm, 1 - (y1 - y0) * (x1 - x0) / (h * w))


def augment_batch(x_uint8: torch.Tensor, spec: Augment, g: torch.Generator) -> torch.Tensor:
    """uint8 images -> float views in [0, 1] under the dataset's augmentation spec."""
    x = x_uint8.float().div_(255)
    if spec.random_resized_crop:
        x = resized_crop(x, crop_boxes(x.shape[0], g))
    elif spec.crop_padding:
        x = random_crop(x, spec.crop_padding, g)
    if spec.flip:
        x = random_flip(x, g)
    return x
