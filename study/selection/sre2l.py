"""SRe2L's recovery (Yin, Xing & Shen, NeurIPS 2023) as a DD selector (``sre2l``).

Images start as Gaussian noise in the teacher's normalised input space and are
optimised so that the teacher (in eval mode) classifies them as their target
class while the mean and variance of every BatchNorm layer's input, over the
batch, match that layer's running statistics:

    loss = CE(teacher(x), y) + r_bn * sum_l w_l (||var_l(x) - running_var_l||_2 + ||mean_l(x) - running_mean_l||_2)

with w_1 = ``first_bn_multiplier`` and w_l = 1 after it. Before every forward
the batch is rolled by a random jitter and, where the dataset flips, mirrored.
Adam (betas 0.5 / 0.9) with a cosine schedule to zero, pixels clipped to the
valid range after every step. As released, one image per class forms a batch
(``recover_cifar.py``: targets ``arange(classes)`` per IPC index), so its
statistics are those of a batch holding each class once; the ``ipc`` batches
are independent, and here they run as one forward whose loss is the sum of
theirs (the teacher in eval mode treats samples independently and Adam is
element-wise, so this equals ``ipc`` separate runs).

Settings follow the release's CIFAR recovery (``SRe2L/*small_dataset/recover_cifar.py``,
``recover_cifar.sh``): lr 0.25, r_bn 0.01, first_bn_multiplier 10, 1000
iterations. The jitter scales with the image: ``size // 8`` pixels (4 at 32 px
as released, 3 at 28 px, 1 at 8 px). docs/sre2l.md lists every setting against
the release. Soft labels are not part of the set: they come from the label
regime, as for every other set (SRe2L's relabel step is our ``sl`` / ``sl_kd``).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from study.core.errors import StudyError
from study.core.models import batchnorm_layers
from study.core.seeding import generator
from study.selection.base import Selection, SelectionContext, Selector, check_ipc, register_selector

def no_batchnorm_sentence(model_name: str) -> str:
    return (f"SRe2L recovers images from a BatchNorm teacher's running statistics, but the teacher {model_name!r} "
            f"has no BatchNorm layer; set teacher.model=convnet_bn (or another model with BatchNorm).")


class BatchStatistics:
    """Forward hooks on a model's BatchNorm layers that record, per group of the batch, how far the mean and
    variance of each layer's input lie from the layer's running statistics (the release's ``BNFeatureHook``)."""

    def __init__(self, model: nn.Module, groups: int):
        self.layers = batchnorm_layers(model)
        self.groups = groups
        self.gaps: list[torch.Tensor] = []
        self.handles = [layer.register_forward_hook(self.record) for layer in self.layers]

    def record(self, layer, inputs, output) -> None:
        x = inputs[0]
        x = x.reshape(self.groups, -1, *x.shape[1:]).transpose(1, 2).flatten(2)  # (groups, C, n*H*W)
        mean, var = x.mean(2), x.var(2, unbiased=False)
        self.gaps.append((var - layer.running_var).norm(dim=1) + (mean - layer.running_mean).norm(dim=1))

    def take(self) -> torch.Tensor:
        """(layers, groups) gaps of the last forward."""
        gaps, self.gaps = torch.stack(self.gaps), []
        return gaps

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def logits_of(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A study backbone's logits for already normalised images (the Classifier normalises before it)."""
    return backbone.head(backbone.features(x))


@torch.no_grad()
def batch_statistics_gap(backbone: nn.Module, x: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """(layers, groups): each BN layer's gap between the batch statistics of ``x`` (normalised input, split into
    ``groups`` equal consecutive groups) and the layer's running statistics."""
    stats = BatchStatistics(backbone, groups)
    try:
        logits_of(backbone.eval(), x)
        return stats.take()
    finally:
        stats.close()


def jitter_views(x: torch.Tensor, groups: int, jitter: int, flip: bool, g: torch.Generator) -> torch.Tensor:
    """Each group rolled by its own random (dy, dx) in [0, jitter] and, with ``flip``, mirrored with chance 1/2,
    as the release does once per batch."""
    out = []
    for part in x.chunk(groups):
        dy, dx = (int(v) for v in torch.randint(0, jitter + 1, (2,), generator=g))
        part = torch.roll(part, shifts=(dy, dx), dims=(2, 3))
        if flip and float(torch.rand(1, generator=g)) < 0.5:
            part = part.flip(3)
        out.append(part)
    return torch.cat(out)


def recover(teacher: nn.Module, mean, std, shape, num_classes: int, ipc: int, seed: int, *, iterations: int,
            lr: float, r_bn: float, first_bn_multiplier: float, jitter: int, flip: bool, device="cpu"):
    """Return (uint8 images grouped by class, labels, per-layer gap of the noise, per-layer gap at the end,
    loss curve). ``teacher`` is a study Classifier: its backbone is fed normalised images directly."""
    backbone = copy.deepcopy(teacher.backbone).to(device).eval()  # a private copy: frozen here, untouched there
    for p in backbone.parameters():
        p.requires_grad_(False)
    g = generator(seed)
    mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(std, device=device).view(1, -1, 1, 1)
    lo, hi = (0 - mean) / std, (1 - mean) / std
    # group i (one image per class) is the release's i-th batch; stored class by class at the end
    targets = torch.arange(num_classes, device=device).repeat(ipc)
    x = torch.randn((ipc * num_classes, *shape), generator=g).to(device).requires_grad_(True)
    start_gap = batch_statistics_gap(backbone, x.detach(), ipc).mean(1)
    optimizer = torch.optim.Adam([x], lr=lr, betas=(0.5, 0.9), eps=1e-8)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                 lambda it: 0.5 * (1 + math.cos(math.pi * it / max(1, iterations))))
    weights = torch.ones(len(batchnorm_layers(backbone)), device=device)
    weights[0] = first_bn_multiplier
    stats, losses = BatchStatistics(backbone, ipc), []
    try:
        for _ in range(iterations):
            logits = logits_of(backbone, jitter_views(x, ipc, jitter, flip, g))
            ce = F.cross_entropy(logits, targets, reduction="none").view(ipc, num_classes).mean(1)
            loss = (ce + r_bn * (weights[:, None] * stats.take()).sum(0)).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, hi), lo))
            losses.append(loss.item() / ipc)
    finally:
        stats.close()
    order = torch.arange(ipc * num_classes).view(ipc, num_classes).T.reshape(-1)  # class-major
    with torch.no_grad():
        end_gap = batch_statistics_gap(backbone, x.detach(), ipc).mean(1)
        pixels = (x.detach()[order] * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    return pixels, targets[order].cpu(), start_gap.cpu(), end_gap.cpu(), losses


@register_selector("sre2l")
class SRe2L(Selector):
    family = "dd"
    needs_teacher = True
    needs_batchnorm_teacher = True

    @dataclass(frozen=True)
    class Params(Selector.Params):
        iterations: int = 1000
        lr: float = 0.25
        r_bn: float = 0.01
        first_bn_multiplier: float = 10.0
        jitter: int | None = None  # None: size // 8 of the dataset's images
        flip: bool | None = None  # None: as the dataset flips

        def check(self) -> None:
            if int(self.iterations) != self.iterations or self.iterations < 0:
                raise StudyError(f"SRe2L needs a non-negative whole number of iterations, not {self.iterations}.")
            if self.lr <= 0 or self.r_bn < 0 or self.first_bn_multiplier < 0:
                raise StudyError(f"SRe2L's lr must be positive and r_bn, first_bn_multiplier non-negative; got "
                                 f"lr={self.lr}, r_bn={self.r_bn}, first_bn_multiplier={self.first_bn_multiplier}.")
            if self.jitter is not None and (int(self.jitter) != self.jitter or self.jitter < 0):
                raise StudyError(f"SRe2L's jitter is a non-negative number of pixels, not {self.jitter}.")

    def resolved(self, ctx: SelectionContext) -> dict:
        """The settings with the image-dependent defaults filled in: jitter size // 8, flip as the dataset."""
        s = asdict(self.p)
        s["iterations"] = int(s["iterations"])
        if s["jitter"] is None:
            s["jitter"] = max(1, min(ctx.data.image_shape[1:]) // 8)
        if s["flip"] is None:
            s["flip"] = ctx.data.augment.flip
        return s

    def select(self, ctx: SelectionContext, ipc: int, seed: int) -> Selection:
        check_ipc(ctx, ipc)
        teacher = ctx.teacher
        if not batchnorm_layers(teacher.model):
            raise StudyError(no_batchnorm_sentence(teacher.spec.model))
        settings = self.resolved(ctx)
        start = time.perf_counter()
        data = ctx.data
        images, labels, gap_start, gap_end, losses = recover(
            teacher.model, data.mean, data.std, data.image_shape, data.num_classes, ipc, seed, device=ctx.device,
            **settings)
        return Selection(images, labels, None, self.provenance(
            ipc, seed, settings=settings, bn_gap_noise=gap_start.tolist(), bn_gap_final=gap_end.tolist(),
            loss_first=losses[:1], loss_last=losses[-1:], loss_curve=losses[:: max(1, len(losses) // 50)],
            seconds=time.perf_counter() - start, device=ctx.device))
