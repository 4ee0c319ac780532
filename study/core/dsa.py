"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen 2021) as released, seeded from a generator.

The release (VICO-UoE/DatasetCondensation ``utils.py``: ``ParamDiffAug`` line 474, ``DiffAugment`` 495, the
``rand_*`` ops 524-641, ``AUGMENT_FNS`` 643) under the strategy ``color_crop_cutout_flip_scale_rotate`` in its
default mode ``'S'`` picks ONE of the six ops per call (per batch), uniformly, and applies it with per-image
parameters:

- ``color``: brightness ``x + (u - 0.5) * 1.0``, then saturation ``(x - mean_c) * (2u) + mean_c`` (mean over
  channels), then contrast ``(x - mean) * (u + 0.5) + mean`` (mean over the image), three draws in that order;
- ``crop``: an integer translation in [-s, s] rows and in [-s, s] columns, s = int(0.125 * side + 0.5),
  uncovered pixels zero (the release indexes into a 1-pixel zero pad);
- ``cutout``: a square of int(0.5 * side + 0.5) pixels set to zero, centred on an offset drawn in
  [0, side + 1 - size % 2), clipped to the image;
- ``flip``: a horizontal flip with probability 0.5;
- ``scale``: independent x and y factors in [1/1.2, 1.2] through ``affine_grid`` / ``grid_sample``;
- ``rotate``: an angle in [-15, 15] degrees, the same way.

``grid_sample`` runs bilinear with zero padding and ``align_corners=False`` (torch's default when the release was
written; andriotis/ca2d ``ca2d.py`` passes True, a half-pixel difference). The release applies DSA to *normalised*
tensors (its loaders end in ``Normalize``, utils.py:19-63), so its zero fill is the dataset's mean colour and its
brightness shift is in units of the channel's std. Students here see images in [0, 1] and normalise inside the
model, so :meth:`DSA.apply` maps a batch into normalised space, augments it there and maps it back: the model sees
exactly what the release's would.

Randomness. The release draws from torch's global generator. Without a seed (students' training) that is one stream
per process; with a seed (``DiffAugment(..., seed=s)``, Siamese mode) it reseeds the global generator with s, s +
1, ... before each draw and copies image 0's parameters to the whole batch, so a call on the real batch and a call
on the synthetic batch with the same s get the same op and the same parameters (DM draws s from the clock:
``main_DM.py:156-158``). Here every number comes from the ``torch.Generator`` passed in, in the release's order
(the op, then the op's draws); :meth:`DSA.draw` with ``n = 1`` is the Siamese form: one parameter set that
:meth:`DSA.apply` broadcasts over any batch it is given, as many times as the caller needs (DM's real and synthetic
images of a class).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class Settings:
    """``ParamDiffAug``'s values (utils.py): the released ranges."""

    flip_prob: float = 0.5
    scale: float = 1.2
    rotate_degrees: float = 15.0
    crop_pad: float = 0.125
    cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5


@dataclass(frozen=True)
class Draw:
    """One call's randomness: the op and its per-image parameters, each a tensor of ``n`` rows (``n = 1``: one
    set shared by every image, the Siamese form)."""

    op: str
    values: tuple[torch.Tensor, ...]


def shift(side: int, ratio: float) -> int:
    return int(side * ratio + 0.5)


def draw(n: int, size: tuple[int, int], g: torch.Generator, s: Settings = Settings()) -> Draw:
    """The op and its parameters for ``n`` images of ``size`` (h, w), from ``g`` in the release's order."""
    op = OPS[int(torch.randint(len(OPS), (1,), generator=g))]
    h, w = size
    if op == "color":
        values = tuple(torch.rand(n, generator=g) for _ in range(3))
    elif op == "crop":
        sh, sw = shift(h, s.crop_pad), shift(w, s.crop_pad)
        values = (torch.randint(-sh, sh + 1, (n,), generator=g), torch.randint(-sw, sw + 1, (n,), generator=g))
    elif op == "cutout":
        ch, cw = shift(h, s.cutout), shift(w, s.cutout)
        values = (torch.randint(0, h + 1 - ch % 2, (n,), generator=g),
                  torch.randint(0, w + 1 - cw % 2, (n,), generator=g))
    elif op == "flip":
        values = (torch.rand(n, generator=g),)
    elif op == "scale":
        values = tuple(torch.rand(n, generator=g) * (s.scale - 1 / s.scale) + 1 / s.scale for _ in range(2))
    else:
        values = ((torch.rand(n, generator=g) - 0.5) * 2 * math.radians(s.rotate_degrees),)
    return Draw(op, values)


def per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A parameter column shaped to broadcast over (B, C, H, W)."""
    return v.to(x.device, x.dtype if v.is_floating_point() else v.dtype).view(-1, 1, 1, 1)


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    theta = theta.to(x.device, x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Output pixel (i, j) = input (i + dy, j + dx), zero where that falls outside (the release's padded index)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    rows = (torch.arange(h, device=x.device) + dy.to(x.device).view(-1, 1) + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device) + dx.to(x.device).view(-1, 1) + 1).clamp(0, w + 1)
    out = padded.gather(2, rows.view(-1, 1, h, 1).expand(b, c, h, w + 2))
    return out.gather(3, cols.view(-1, 1, 1, w).expand(b, c, h, w))


def cut(x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Zero a ``size`` box whose rows run from cy - size // 2 (the release's clamped index grid; the offsets'
    range keeps the box overlapping the image, so clamping only trims it)."""
    h, w = x.shape[-2:]
    top = (cy - size[0] // 2).to(x.device).view(-1, 1, 1)
    left = (cx - size[1] // 2).to(x.device).view(-1, 1, 1)
    r = torch.arange(h, device=x.device).view(1, h, 1)
    c = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (r >= top) & (r < top + size[0]) & (c >= left) & (c < left + size[1])
    return x * (~inside).unsqueeze(1).to(x.dtype)


def augment(x: torch.Tensor, d: Draw, s: Settings = Settings()) -> torch.Tensor:
    """``x`` (normalised, as the release's) under the drawn op; differentiable in ``x``."""
    if d.op == "color":
        b, sat, con = (per_image(v, x) for v in d.values)
        x = x + (b - 0.5) * s.brightness
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (sat * s.saturation) + m
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - m) * (con + s.contrast) + m
    if d.op == "crop":
        return translate(x, *d.values)
    if d.op == "cutout":
        h, w = x.shape[-2:]
        return cut(x, *d.values, (shift(h, s.cutout), shift(w, s.cutout)))
    if d.op == "flip":
        return torch.where(per_image(d.values[0], x) < s.flip_prob, x.flip(3), x)
    n = len(d.values[0])
    theta = torch.zeros(n, 2, 3)
    if d.op == "scale":
        theta[:, 0, 0], theta[:, 1, 1] = d.values
    else:
        a = d.values[0]
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    return warp(x, theta)


@dataclass(frozen=True)
class DSA:
    """DSA views of images in [0, 1] for a model that normalises by ``mean`` / ``std`` (see the module note)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    settings: Settings = Settings()

    def draw(self, n: int, size: tuple[int, int], g: torch.Generator) -> Draw:
        return draw(n, size, g, self.settings)

    def apply(self, x: torch.Tensor, d: Draw) -> torch.Tensor:
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return augment((x - mean) / std, d, self.settings) * std + mean

    def views(self, x_uint8: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """A training batch's views: one op for the batch, parameters per image (the release's student training)."""
        x = x_uint8.float().div_(255)
        return self.apply(x, self.draw(x.shape[0], tuple(x.shape[-2:]), g))
