"""RDED (Sun et al., CVPR 2024): observer-scored random crops, the easiest kept, f x f stitched.

Per class: ``m`` candidate real images (capped by the class size), ``k``
RandomResizedCrop boxes each (study.core.augment.crop_boxes) cut at the patch size
``H/f`` with one batched grid_sample (study.core.augment.resized_crop). Each crop is
scored by the observer's (the teacher's) cross-entropy on a *view* of it:

- ``score_view="pad"`` (default, as issue 5 specifies): the patch zero-padded
  to the full image size, patch in the centre;
- ``score_view="resize"`` (RDED's released code): the same box cut at the full
  image size.

The lowest-loss crop of every candidate is kept (``per_image`` of them when a
small class has fewer candidates than the patches it needs), then the
``ipc * f^2`` lowest-loss crops of the class, in ascending loss, are stitched
into ``ipc`` images of f x f patches.

Layout (what tests and provenance rely on): the class's patches are put in a
sequence of slots; slot ``s`` goes to image ``s // f^2`` of the class, grid
position ``p = s % f^2`` = row ``p // f``, column ``p % f``. RDED fills the
slots in ascending observer loss; CA2D fills them in a random order. Output
images are grouped by class (class 0's ``ipc`` images first).

Provenance, per output image and grid position ``p``: ``patch_source``
(dataset index of the source image), ``patch_box`` (cx, cy, w, h as fractions
of the source image), ``patch_loss`` (observer cross-entropy).

The core (:func:`crop_candidates`, :func:`observer_losses`,
:func:`rded_patches`, :func:`stitch`) takes any callable that maps float
images in [0, 1] to logits, so tests can inject a scripted observer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from study.core.augment import crop_boxes, resized_crop
from study.core.errors import StudyError
from study.selection.base import Selection, SelectionContext, Selector, check_ipc, register_selector
from study.core.seeding import generator

Observer = Callable[[torch.Tensor], torch.Tensor]
SCORE_VIEWS = ("pad", "resize")
FULL_BOX = (0.5, 0.5, 1.0, 1.0)


def default_factor(image_size: int) -> int:
    """f=2 for images of 28 px and larger (RDED's choice); f=1 below, where a 4x4 patch of an 8x8 digit is a blob."""
    return 2 if image_size >= 28 else 1


def check_rded_params(factor: int | None, k: int, m: int, score_view: str, scale) -> None:
    if factor is not None and (int(factor) != factor or factor < 1):
        raise StudyError(f"The stitching factor f must be a positive integer (1 = whole images), not {factor}.")
    if k < 1 or m < 1:
        raise StudyError(f"RDED needs at least one candidate (m) and one crop per candidate (k); got m={m}, k={k}.")
    if score_view not in SCORE_VIEWS:
        raise StudyError(f"score_view must be one of {', '.join(SCORE_VIEWS)}, not {score_view!r}.")
    lo, hi = scale
    if not 0 < lo <= hi <= 1:
        raise StudyError(f"The crop scale range must satisfy 0 < min <= max <= 1, not {tuple(scale)}.")


def patch_size(shape, factor: int) -> tuple[int, int]:
    h, w = shape[-2:]
    if h % factor or w % factor:
        raise StudyError(f"Images of {h}x{w} cannot be split into {factor}x{factor} patches; choose f dividing both sides.")
    return h // factor, w // factor


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def crop_candidates(images: torch.Tensor, boxes: torch.Tensor, factor: int, score_view: str = "pad",
                    device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Cut ``boxes`` (n, k, 4) from uint8 ``images`` (n, C, H, W).

    Returns (patches, views): patches (n*k, C, H/f, W/f) and the full-size views
    the observer scores (n*k, C, H, W), both float in [0, 1], crop-major within
    each image (crop j of image i is row i*k + j).
    """
    n, k = boxes.shape[:2]
    h, w = patch_size(images.shape, factor)
    H, W = images.shape[-2:]
    x = images.to(device).float().div_(255).repeat_interleave(k, dim=0)
    flat = boxes.reshape(n * k, 4)
    patches = resized_crop(x, flat, (h, w))
    if score_view == "resize":
        views = resized_crop(x, flat, (H, W)) if factor > 1 else patches
    else:
        top, left = (H - h) // 2, (W - w) // 2
        views = F.pad(patches, (left, W - w - left, top, H - h - top))
    return patches, views


@torch.no_grad()
def observer_losses(observer: Observer, views: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Per-view cross-entropy of the observer, on the CPU."""
    labels = labels.to(views.device)
    out = [F.cross_entropy(observer(v).float(), y, reduction="none").cpu()
           for v, y in zip(views.split(batch_size), labels.split(batch_size))]
    return torch.cat(out) if out else torch.empty(0)


def stitch(patches: torch.Tensor, factor: int) -> torch.Tensor:
    """(n*f^2, C, h, w) patches in slot order -> (n, C, f*h, f*w) images (slot p of an image = row p//f, col p%f)."""
    s, c, h, w = patches.shape
    n = s // (factor * factor)
    grid = patches.reshape(n, factor, factor, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(n, c, factor * h, factor * w)


@dataclass
class Patches:
    """Scored crops of one class: the kept crop(s) per candidate image, flattened, in candidate order."""

    pixels: torch.Tensor  # (P, C, h, w) float in [0, 1], on the device that cut them
    views: torch.Tensor  # (P, C, H, W) the observer's views of the same crops
    source: torch.Tensor  # (P,) dataset index of each patch's source image
    boxes: torch.Tensor  # (P, 4) crop box (cx, cy, w, h) as fractions
    loss: torch.Tensor  # (P,) observer cross-entropy


def best_crops(images: torch.Tensor, labels: torch.Tensor, sources: torch.Tensor, observer: Observer, *,
               k: int = 5, factor: int = 2, g: torch.Generator | None = None, boxes: torch.Tensor | None = None,
               scale=(0.08, 1.0), score_view: str = "pad", per_image: int = 1, device="cpu",
               chunk: int = 128) -> Patches:
    """Crop, score and keep the ``per_image`` lowest-loss crops of every candidate image.

    ``boxes`` (n, k, 4) overrides the random boxes (drawn from ``g`` otherwise).
    """
    n = len(images)
    if boxes is None:
        boxes = crop_boxes(n * k, g, scale=scale).view(n, k, 4)
    k = boxes.shape[1]
    per_image = min(per_image, k)
    kept = {key: [] for key in ("pixels", "views", "source", "boxes", "loss")}
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        b = boxes[sl]
        patches, views = crop_candidates(images[sl], b, factor, score_view, device)
        losses = observer_losses(observer, views, labels[sl].repeat_interleave(k)).view(-1, k)
        order = losses.argsort(dim=1, stable=True)[:, :per_image]
        rows = (torch.arange(len(b))[:, None] * k + order).reshape(-1)
        kept["pixels"].append(patches[rows.to(patches.device)])
        kept["views"].append(views[rows.to(views.device)])
        kept["source"].append(sources[sl].repeat_interleave(per_image))
        kept["boxes"].append(b.reshape(-1, 4)[rows])
        kept["loss"].append(losses.reshape(-1)[rows])
    return Patches(**{key: torch.cat(v) for key, v in kept.items()})


def rded_patches(images: torch.Tensor, labels: torch.Tensor, observer: Observer, ipc: int, *,
                 sources: torch.Tensor | None = None, k: int = 5, factor: int = 2, g: torch.Generator | None = None,
                 boxes: torch.Tensor | None = None, scale=(0.08, 1.0), score_view: str = "pad", device="cpu"):
    """RDED for one class: the ``ipc * f^2`` lowest-loss best crops of ``images``, stitched in ascending loss.

    Returns (stitched float images (ipc, C, H, W), Patches in slot order).
    """
    need = ipc * factor * factor
    n = len(images)
    per_image = math.ceil(need / n)
    kk = boxes.shape[1] if boxes is not None else k
    if per_image > kk:
        raise StudyError(f"{need} patches are needed from {n} candidates with {kk} crops each; "
                         f"raise k or m, or lower the IPC or f.")
    sources = torch.arange(n) if sources is None else sources
    cand = best_crops(images, labels, sources, observer, k=k, factor=factor, g=g, boxes=boxes, scale=scale,
                      score_view=score_view, per_image=per_image, device=device)
    order = cand.loss.argsort(stable=True)[:need]
    chosen = Patches(cand.pixels[order.to(cand.pixels.device)], cand.views[order.to(cand.views.device)],
                     cand.source[order], cand.boxes[order], cand.loss[order])
    return stitch(chosen.pixels, factor), chosen


def patch_provenance(patches: list[Patches], factor: int) -> dict:
    """Per output image and grid position: source dataset index, crop box, observer loss (JSON-friendly lists)."""
    f2 = factor * factor
    source = torch.cat([p.source for p in patches]).view(-1, f2)
    boxes = torch.cat([p.boxes for p in patches]).view(-1, f2, 4)
    loss = torch.cat([p.loss for p in patches]).view(-1, f2)
    return {
        "layout": "slot p of an image is grid row p // f, column p % f; images grouped by class",
        "patch_source": source.tolist(),
        "patch_box": boxes.float().mul(1e4).round().div(1e4).tolist(),
        "patch_loss": loss.float().mul(1e4).round().div(1e4).tolist(),
    }


class PatchSelector(Selector):
    """Shared plumbing of RDED and CA2D: parameters, candidates, observer and output assembly."""

    family = "dd"
    needs_teacher = True

    def __init__(self, m: int = 300, k: int = 5, factor: int | None = None, score_view: str = "pad",
                 scale: tuple[float, float] = (0.08, 1.0), **extra):
        scale = tuple(scale)
        check_rded_params(factor, k, m, score_view, scale)
        super().__init__(m=m, k=k, factor=factor, score_view=score_view, scale=list(scale), **extra)
        self.m, self.k, self.score_view, self.scale = m, k, score_view, scale
        self._factor = factor

    def factor_for(self, ctx: SelectionContext) -> int:
        return self._factor or default_factor(min(ctx.data.image_shape[1:]))

    def candidates(self, members: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
        return np.sort(rng.choice(members, size=min(m, len(members)), replace=False))

    def observer(self, ctx: SelectionContext) -> Observer:
        return ctx.teacher.model.to(ctx.device).eval()

    def assemble(self, ctx, images: list[torch.Tensor], patches: list[Patches], factor: int, ipc: int, seed: int,
                 **extra) -> Selection:
        x = to_uint8(torch.cat(images).cpu())
        y = torch.arange(ctx.data.num_classes).repeat_interleave(ipc)
        prov = self.provenance(ipc, seed, factor=factor, **patch_provenance(patches, factor), **extra)
        return Selection(x, y, None, prov)


@register_selector("rded")
class RDED(PatchSelector):
    """Per class: m candidates, k crops each, observer cross-entropy, the easiest ipc*f^2 crops stitched f x f."""

    def select(self, ctx: SelectionContext, ipc: int, seed: int) -> Selection:
        check_ipc(ctx, ipc)
        factor = self.factor_for(ctx)
        patch_size(ctx.data.image_shape, factor)
        rng, g = np.random.default_rng(seed), generator(seed)
        observer = self.observer(ctx)
        images, patches = [], []
        for c, members in enumerate(ctx.class_members()):
            cand = torch.as_tensor(self.candidates(members, self.m, rng))
            labels = torch.full((len(cand),), c, dtype=torch.long)
            stitched, chosen = rded_patches(ctx.data.train_x[cand], labels, observer, ipc, sources=cand, k=self.k,
                                            factor=factor, g=g, scale=self.scale, score_view=self.score_view,
                                            device=ctx.device)
            images.append(stitched)
            patches.append(chosen)
        return self.assemble(ctx, images, patches, factor, ipc, seed)
