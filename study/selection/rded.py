"""RDED (Sun et al., CVPR 2024) as released: observer-scored square crops, the easiest kept, f x f stitched.

Per class: ``m`` candidate real images (the release's ``mipc``, capped by the
class size), ``k`` square random-resized crops each (its ``num_crop``; scale
``scale``, antialiased) cut at the tile size ``H/f``. The observer (the
teacher) scores each crop by cross-entropy on a *view* of it:

- ``score_view="pad"`` (default, as released): the tile centred on a
  full-size canvas in the dataset's mean colour (zero once normalised);
- ``score_view="resize"`` (ours, not in the release): the same box cut at the
  full image size.

The lowest-loss crop of every candidate is kept (``per_image`` of them when a
small class has fewer candidates than the tiles it needs: the release would
come up short there), the ``ipc * f^2`` lowest-loss crops of the class are
ranked in ascending loss and stitched into ``ipc`` images.

Factor: f = 1 below 128 px, f = 2 from 128 px (the released scripts: f = 1 for
CIFAR-10/100 and Tiny-ImageNet, f = 2 for the ImageNet family at 128-224 px);
the ``factor`` parameter overrides it. A set made with f > 1 brings its own
training views (:func:`study.core.augment.stitched_views`), which every regime
then trains it under. docs/rded.md lists each setting against the release.

Layout (what tests and provenance rely on): an image's tiles are its slots,
slot ``p`` at grid row ``p // f``, column ``p % f``. RDED fills slot ``p`` of
image ``i`` of a class with its ``(p * ipc + i)``-th easiest tile, as the
release does (:func:`released_order`); CA2D, through the same
:class:`PatchPipeline`, does too.
Output images are grouped by class (class 0's ``ipc`` images first).

Provenance, per output image and slot ``p``: ``patch_source`` (dataset index
of the source image), ``patch_box`` (cx, cy, w, h as fractions of the source
image), ``patch_loss`` (observer cross-entropy).

The core (:func:`crop_candidates`, :func:`observer_losses`,
:func:`rded_patches`, :func:`stitch`) takes any callable that maps float
images in [0, 1] to logits, so tests can inject a scripted observer.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from study.core.augment import crop_boxes, pad_centre, patch_crop, resized_crop, stitched_views
from study.core.errors import StudyError
from study.core.evaluate import eval_chunk
from study.core.images import take
from study.core.passes import read_pass, run_pass
from study.selection.base import Selection, SelectionContext, Selector, check_ipc, register_selector
from study.core.seeding import generator

Observer = Callable[[torch.Tensor], torch.Tensor]
SCORE_VIEWS = ("pad", "resize")
FULL_BOX = (0.5, 0.5, 1.0, 1.0)
SQUARE = (1.0, 1.0)


def default_factor(image_size: int) -> int:
    """f=2 from 128 px, f=1 below, as the released scripts choose. A student trained on 2x2 mosaics of 28-px
    garments fell below chance on Fashion-MNIST: tiles of small images are too small to carry their class."""
    return 2 if image_size >= 128 else 1


def patch_size(shape, factor: int) -> tuple[int, int]:
    h, w = shape[-2:]
    if h % factor or w % factor:
        raise StudyError(f"Images of {h}x{w} cannot be split into {factor}x{factor} patches; choose f dividing both sides.")
    return h // factor, w // factor


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def crop_candidates(images: torch.Tensor, boxes: torch.Tensor, factor: int, fill: tuple[float, ...],
                    score_view: str = "pad", device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Cut ``boxes`` (n, k, 4) from uint8 ``images`` (n, C, H, W); ``fill`` is the padding colour in [0, 1].

    Returns (patches, views): patches (n*k, C, H/f, W/f) and the full-size views
    the observer scores (n*k, C, H, W), both float in [0, 1], crop-major within
    each image (crop j of image i is row i*k + j).
    """
    n, k = boxes.shape[:2]
    patch_size(images.shape, factor)
    H, W = images.shape[-2:]
    x = images.to(device).float().div_(255).repeat_interleave(k, dim=0)
    flat = boxes.reshape(n * k, 4)
    patches = patch_crop(x, flat, factor)
    if factor == 1:
        return patches, patches
    if score_view == "resize":
        return patches, resized_crop(x, flat, (H, W))
    return patches, pad_centre(patches, (H, W), fill)


@torch.no_grad()
def observer_losses(observer: Observer, views: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Per-view cross-entropy of the observer, on the CPU."""
    labels = labels.to(views.device)
    out = [F.cross_entropy(observer(v).float(), y, reduction="none").cpu()
           for v, y in zip(views.split(batch_size), labels.split(batch_size))]
    return torch.cat(out) if out else torch.empty(0)


def released_order(ipc: int, factor: int) -> torch.Tensor:
    """Positions in a ranked list of ``ipc * f^2`` tiles, image by image and slot by slot, as the release stitches
    them: slot p of image i takes tile p * ipc + i, so each image holds one tile of every rank band."""
    return torch.arange(ipc * factor * factor).view(factor * factor, ipc).T.reshape(-1)


def stitch(patches: torch.Tensor, factor: int) -> torch.Tensor:
    """(n*f^2, C, h, w) tiles, image by image -> (n, C, f*h, f*w) images (slot p of an image = row p//f, col p%f)."""
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

    def take(self, rows: torch.Tensor) -> "Patches":
        return Patches(self.pixels[rows.to(self.pixels.device)], self.views[rows.to(self.views.device)],
                       self.source[rows], self.boxes[rows], self.loss[rows])


def lowest_crops(losses: torch.Tensor, per_image: int) -> torch.Tensor:
    """Rows (image i's crop j is row i * k + j) of each image's ``per_image`` lowest-loss crops, in ascending loss."""
    order = losses.argsort(dim=1, stable=True)[:, :per_image]
    return (torch.arange(len(losses))[:, None] * losses.shape[1] + order).reshape(-1)


def crops_per_image(need: int, n: int, k: int) -> int:
    """How many crops each of ``n`` candidates must give for ``need`` tiles; refused when more than its ``k``."""
    per_image = math.ceil(need / n)
    if per_image > k:
        raise StudyError(f"{need} patches are needed from {n} candidates with {k} crops each; "
                         f"raise k or m, or lower the IPC or f.")
    return per_image


def best_crops(images: torch.Tensor, labels: torch.Tensor, sources: torch.Tensor, observer: Observer, *,
               fill: tuple[float, ...], k: int = 5, factor: int = 1, g: torch.Generator | None = None,
               boxes: torch.Tensor | None = None, scale=(0.08, 1.0), score_view: str = "pad", per_image: int = 1,
               device="cpu", chunk: int = 128) -> Patches:
    """Crop, score and keep the ``per_image`` lowest-loss crops of every candidate image.

    ``boxes`` (n, k, 4) overrides the random square boxes (drawn from ``g`` otherwise).
    """
    n = len(images)
    if boxes is None:
        boxes = crop_boxes(n * k, g, scale=scale, ratio=SQUARE).view(n, k, 4)
    k = boxes.shape[1]
    per_image = min(per_image, k)
    kept = {key: [] for key in ("pixels", "views", "source", "boxes", "loss")}
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        b = boxes[sl]
        patches, views = crop_candidates(images[sl], b, factor, fill, score_view, device)
        losses = observer_losses(observer, views, labels[sl].repeat_interleave(k)).view(-1, k)
        rows = lowest_crops(losses, per_image)
        kept["pixels"].append(patches[rows.to(patches.device)])
        kept["views"].append(views[rows.to(views.device)])
        kept["source"].append(sources[sl].repeat_interleave(per_image))
        kept["boxes"].append(b.reshape(-1, 4)[rows])
        kept["loss"].append(losses.reshape(-1)[rows])
    return Patches(**{key: torch.cat(v) for key, v in kept.items()})


def rded_patches(images: torch.Tensor, labels: torch.Tensor, observer: Observer, ipc: int, *,
                 fill: tuple[float, ...], sources: torch.Tensor | None = None, k: int = 5, factor: int = 1,
                 g: torch.Generator | None = None, boxes: torch.Tensor | None = None, scale=(0.08, 1.0),
                 score_view: str = "pad", device="cpu"):
    """RDED for one class: the ``ipc * f^2`` lowest-loss best crops of ``images``, stitched in the released order.

    Returns (stitched float images (ipc, C, H, W), Patches image by image, slot by slot).
    """
    need = ipc * factor * factor
    per_image = crops_per_image(need, len(images), boxes.shape[1] if boxes is not None else k)
    sources = torch.arange(len(images)) if sources is None else sources
    cand = best_crops(images, labels, sources, observer, fill=fill, k=k, factor=factor, g=g, boxes=boxes,
                      scale=scale, score_view=score_view, per_image=per_image, device=device)
    ranked = cand.loss.argsort(stable=True)[:need]
    chosen = cand.take(ranked[released_order(ipc, factor)])
    return stitch(chosen.pixels, factor), chosen


def patch_provenance(patches: list[Patches], factor: int) -> dict:
    """Per output image and grid position: source dataset index, crop box, observer loss (JSON-friendly lists)."""
    f2 = factor * factor
    source = torch.cat([p.source for p in patches]).view(-1, f2)
    boxes = torch.cat([p.boxes for p in patches]).view(-1, f2, 4)
    loss = torch.cat([p.loss for p in patches]).view(-1, f2)
    return {
        "layout": "slot p of an image is grid row p // f, column p % f; images grouped by class; slot p of image i "
                  "holds the class's (p * ipc + i)-th easiest tile",
        "patch_source": source.tolist(),
        "patch_box": boxes.float().mul(1e4).round().div(1e4).tolist(),
        "patch_loss": loss.float().mul(1e4).round().div(1e4).tolist(),
    }


@dataclass(frozen=True)
class PatchParams(Selector.Params):
    """RDED's crop-and-score settings; a selector that runs the pipeline has these among its parameters."""

    k: int = 5
    factor: int | None = None  # None: default_factor of the image size
    score_view: str = "pad"
    scale: tuple[float, float] = (0.08, 1.0)

    def check(self) -> None:
        factor = self.factor
        if factor is not None and (int(factor) != factor or factor < 1):
            raise StudyError(f"The stitching factor f must be a positive integer (1 = whole images), not {factor}.")
        if self.k < 1:
            raise StudyError(f"RDED needs at least one crop per candidate (k), not k={self.k}.")
        if self.score_view not in SCORE_VIEWS:
            raise StudyError(f"score_view must be one of {', '.join(SCORE_VIEWS)}, not {self.score_view!r}.")
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise StudyError(f"The crop scale range must satisfy 0 < min <= max <= 1, not {tuple(self.scale)}.")


@dataclass(frozen=True)
class CropLosses:
    """A pass's work: the observer's cross-entropy on each of a candidate's ``k`` crops, row ``r`` of the pass
    cut at ``boxes[r]`` and scored against ``labels[r]``."""

    observer: torch.nn.Module
    boxes: torch.Tensor  # (n, k, 4)
    labels: torch.Tensor  # (n,)
    factor: int
    fill: tuple[float, ...]
    score_view: str

    def bind(self, device: str):
        observer = self.observer.to(device).eval()

        def losses(images: torch.Tensor, ok: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
            boxes, k = self.boxes[index], self.boxes.shape[1]
            _, views = crop_candidates(images, boxes, self.factor, self.fill, self.score_view, device)
            return {"loss": observer_losses(observer, views, self.labels[index].repeat_interleave(k)).view(-1, k).numpy()}

        return losses


class PatchPipeline:
    """RDED's released crop / score / select / stitch over whatever candidate pools a selector hands it (RDED's
    random ``m`` a class, CA2D's highest-CAD ``mipc``). A selector holds one, built from its own (checked)
    :class:`PatchParams`.

    Every class's candidates are scored in one pass (study.core.passes: Ray Data when the preparation's driver
    runs it, else in this process), which decodes each candidate once and keeps only its crops' losses; only
    the images whose crops are kept are decoded again, to cut them. The boxes are drawn class by class from
    ``g`` as :func:`rded_patches` draws them, so a seed picks the same crops either way."""

    def __init__(self, p: PatchParams):
        self.k, self.score_view = int(p.k), p.score_view
        self.scale = tuple(p.scale)
        self.factor = p.factor

    def factor_for(self, ctx: SelectionContext) -> int:
        return int(self.factor or default_factor(min(ctx.data.image_shape[1:])))

    def observer(self, ctx: SelectionContext) -> Observer:
        return ctx.teacher.model.to(ctx.device).eval()

    def synthesise(self, ctx: SelectionContext, cands: list[torch.Tensor], ipc: int, g: torch.Generator,
                   provenance: dict) -> Selection:
        """``ipc`` stitched images a class from class c's candidates ``cands[c]`` (dataset indices), with
        ``provenance`` (the selector's) completed by the factor, the training views and the patches' own."""
        factor = self.factor_for(ctx)
        patch_size(ctx.data.image_shape, factor)
        need = ipc * factor * factor
        boxes = [crop_boxes(len(cand) * self.k, g, scale=self.scale, ratio=SQUARE).view(len(cand), self.k, 4)
                 for cand in cands]
        per_image = [crops_per_image(need, len(cand), self.k) for cand in cands]
        losses = self.crop_losses(ctx, cands, boxes, factor).split([len(cand) for cand in cands])
        images, patches = [], []
        for cand, box, loss, per in zip(cands, boxes, losses, per_image):
            kept = lowest_crops(loss, per)
            ranked = kept[loss.reshape(-1)[kept].argsort(stable=True)[:need][released_order(ipc, factor)]]
            source, box = cand[ranked // self.k], box.reshape(-1, 4)[ranked]
            pixels, views = crop_candidates(ctx.data.train_x[source], box[:, None], factor, ctx.data.mean,
                                            self.score_view, ctx.device)
            patches.append(Patches(pixels, views, source, box, loss.reshape(-1)[ranked]))
            images.append(stitch(pixels, factor))
        x = to_uint8(torch.cat(images).cpu())
        y = torch.arange(ctx.data.num_classes).repeat_interleave(ipc)
        views = stitched_views(factor, ctx.data.augment.flip) if factor > 1 else None
        prov = {**provenance, "factor": factor, "views": asdict(views) if views else None,
                **patch_provenance(patches, factor)}
        return Selection(x, y, None, prov, views)

    def crop_losses(self, ctx: SelectionContext, cands: list[torch.Tensor], boxes: list[torch.Tensor],
                    factor: int) -> torch.Tensor:
        """(candidates, k) observer losses of every class's candidates, class after class, from one pass."""
        sources = torch.cat(cands).numpy()
        labels = torch.cat([torch.full((len(cand),), c, dtype=torch.long) for c, cand in enumerate(cands)])
        work = CropLosses(self.observer(ctx).cpu(), torch.cat(boxes), labels, factor, tuple(ctx.data.mean),
                          self.score_view)
        ctx.cache.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=ctx.cache.root, prefix=".rded-pass-") as tmp:
            run_pass(take(ctx.data.train_x, sources), work, Path(tmp), batch_size=eval_chunk(ctx.device),
                     device=ctx.device)
            return torch.from_numpy(read_pass(Path(tmp), ["loss"])["loss"])


@register_selector("rded")
class RDED(Selector):
    """Per class: m random candidates, k square crops each, observer cross-entropy, the easiest ipc*f^2 crops
    stitched f x f in the released order."""

    family = "dd"
    needs_teacher = True

    @dataclass(frozen=True)
    class Params(PatchParams):
        m: int = 300  # candidates a class, the release's mipc

        def check(self) -> None:
            super().check()
            if self.m < 1:
                raise StudyError(f"RDED needs at least one candidate a class (m), not m={self.m}.")

    def __init__(self, **params):
        super().__init__(**params)
        self.pipeline = PatchPipeline(self.p)

    def select(self, ctx: SelectionContext, ipc: int, seed: int) -> Selection:
        check_ipc(ctx, ipc)
        rng, g = np.random.default_rng(seed), generator(seed)
        cands = [torch.as_tensor(self.candidates(members, self.p.m, rng)) for members in ctx.class_members()]
        return self.pipeline.synthesise(ctx, cands, ipc, g, self.provenance(ipc, seed))

    @staticmethod
    def candidates(members: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
        """``m`` random members of a class (all of a smaller one), sorted."""
        return np.sort(rng.choice(members, size=min(m, len(members)), replace=False))
