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
    """Per-sample RandomResizedCrop boxes as (cx, cy, w, h) fractions of the image. ``ratio`` bounds w / h as
    fractions, which is the ratio in pixels on the square images every loader here produces; a box too wide or
    too tall for the image is clipped to it (torchvision redraws it instead)."""
    area = torch.empty(n).uniform_(*scale, generator=g)
    r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g).exp()
    bw = (area * r).sqrt().clamp(max=1.0)
    bh = (area / r).sqrt().clamp(max=1.0)
    cx = bw / 2 + torch.rand(n, generator=g) * (1 - bw)
    cy = bh / 2 + torch.rand(n, generator=g) * (1 - bh)
    return torch.stack([cx, cy, bw, bh], dim=1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int] | None = None,
                 supersample: int = 1) -> torch.Tensor:
    """Crop each image to its box (cx, cy, w, h as fractions) and resize it, with one grid_sample call.

    ``supersample`` s samples s x s points per output pixel and averages them: a box up to s times the output's
    side then shrinks without aliasing (what torchvision's ``antialias=True`` is for)."""
    b = x.shape[0]
    boxes = boxes.to(x.device, x.dtype)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = boxes[:, 2]
    theta[:, 1, 1] = boxes[:, 3]
    theta[:, 0, 2] = boxes[:, 0] * 2 - 1
    theta[:, 1, 2] = boxes[:, 1] * 2 - 1
    h, w = size or x.shape[2:]
    grid = F.affine_grid(theta, (b, x.shape[1], h * supersample, w * supersample), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return F.avg_pool2d(out, supersample) if supersample > 1 else out


def patch_crop(x: torch.Tensor, boxes: torch.Tensor, factor: int) -> torch.Tensor:
    """Boxes cut at 1/``factor`` of each side (an f x f mosaic's tile), antialiased: a box is at most ``factor``
    times the tile's side."""
    return resized_crop(x, boxes, (x.shape[-2] // factor, x.shape[-1] // factor), supersample=factor)


def pad_centre(x: torch.Tensor, size: tuple[int, int], fill: tuple[float, ...]) -> torch.Tensor:
    """Centre ``x`` on a canvas of ``size`` painted in ``fill`` (one colour per channel, or one for all)."""
    b, c, h, w = x.shape
    H, W = size
    colour = torch.as_tensor(fill, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    canvas = colour.expand(b, c, H, W).clone()
    top, left = (H - h) // 2, (W - w) // 2
    canvas[:, :, top:top + h, left:left + w] = x
    return canvas


def shuffle_patches(x: torch.Tensor, factor: int, g: torch.Generator) -> torch.Tensor:
    """RDED's ShufflePatches, per sample: the f column strips in a random order, then the f row strips.
    Tiles move whole, so a view holds exactly the tiles of its image."""
    b, _, h, w = x.shape
    for dim, side in ((3, w), (2, h)):
        strip = side // factor
        order = torch.rand(b, factor, generator=g).argsort(1)
        source = (order.repeat_interleave(strip, 1) * strip + torch.arange(strip).repeat(factor)).to(x.device)
        shape = [b, 1, 1, 1]
        shape[dim] = side
        x = x.gather(dim, source.view(shape).expand(x.shape))
    return x


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


def stitched_views(factor: int, flip: bool) -> Augment:
    """The views a set of f x f mosaics trains under, as RDED's evaluation draws them: the mosaic's rows and columns
    shuffled, a crop of at least 1/f of its area resized to full size, a flip (where the dataset flips)."""
    return Augment(shuffle_patches=factor, random_resized_crop=True, crop_scale=(1 / factor, 1.0), flip=flip)


def patch_views(factor: int, scale: tuple[float, float], fill: tuple[float, ...], flip: bool = False) -> Augment:
    """The views RDED's observer scores: a square crop cut at 1/f of the side, padded back to full size in ``fill``
    (the dataset's mean colour, which the model normalises to zero)."""
    return Augment(random_resized_crop=True, crop_scale=tuple(scale), crop_ratio=(1.0, 1.0), patch_pad=factor,
                   fill=tuple(fill), flip=flip)


def augment_batch(x_uint8: torch.Tensor, spec: Augment, g: torch.Generator) -> torch.Tensor:
    """uint8 images -> float views in [0, 1] under ``spec`` (see :class:`~study.core.data.Augment` for the order)."""
    x = x_uint8.float().div_(255)
    if spec.shuffle_patches > 1:
        x = shuffle_patches(x, spec.shuffle_patches, g)
    if spec.random_resized_crop:
        x = patch_crop(x, crop_boxes(x.shape[0], g, spec.crop_scale, spec.crop_ratio), spec.patch_pad)
        if spec.patch_pad > 1:
            x = pad_centre(x, x_uint8.shape[-2:], spec.fill)
    elif spec.crop_padding:
        x = random_crop(x, spec.crop_padding, g)
    if spec.flip:
        x = random_flip(x, g)
    return x
