"""Label regimes: how a student is supervised on its training set.

``hl``     cross-entropy on hard labels.
``sl``     fixed soft labels: the teacher's softmax at temperature T on each
           stored (unaugmented) image, computed once and reused for every view.
``sl_kd``  knowledge distillation: the teacher sees the exact augmented (and
           mixed) view at every step.

With CutMix, hard losses mix the two labels by area, and ``sl`` mixes the two
stored target distributions by area; ``sl_kd`` needs no mixing because the
teacher sees the mixed image itself. Soft losses are KL(teacher/T || student/T)
scaled by T^2 (Hinton's rule) unless ``t2_scale`` is off: without it SGD
under-trains every soft-label student (measured: benchmarks/README.md, "T^2 on soft losses").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from study.core.augment import Mix
from study.core.protocol import Protocol
from study.core.registry import Registry

REGIMES: Registry[type] = Registry("label regime")


def list_regimes() -> list[str]:
    return REGIMES.names()


def soft_kl(student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float, t2_scale: bool) -> torch.Tensor:
    log_q = F.log_softmax(student_logits / temperature, dim=1)
    loss = F.kl_div(log_q, target_probs, reduction="batchmean")
    return loss * temperature**2 if t2_scale else loss


@torch.no_grad()
def teacher_probs(teacher: nn.Module, views: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.softmax(teacher(views).float() / temperature, dim=1)


class Regime:
    """Base: subclasses say whether they need a teacher and how a batch's loss is formed."""

    needs_teacher = True

    def __init__(self, protocol: Protocol, teacher: nn.Module | None = None, stored_images: torch.Tensor | None = None,
                 batch_size: int = 1024):
        self.teacher, self.temperature, self.t2_scale = teacher, protocol.temperature, protocol.t2_scale
        if self.needs_teacher and teacher is None:
            raise ValueError(f"label regime {type(self).__name__} needs a teacher")

    def loss(self, logits: torch.Tensor, views: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
             mix: Mix | None) -> torch.Tensor:
        raise NotImplementedError


@REGIMES.register("hl")
class HardLabels(Regime):
    needs_teacher = False

    def loss(self, logits, views, labels, index, mix):
        if mix is None:
            return F.cross_entropy(logits, labels)
        return mix.lam * F.cross_entropy(logits, labels) + (1 - mix.lam) * F.cross_entropy(logits, labels[mix.perm])


@REGIMES.register("sl")
class FixedSoftLabels(Regime):
    def __init__(self, protocol, teacher=None, stored_images=None, batch_size=1024):
        super().__init__(protocol, teacher)
        views = stored_images.float().div(255)
        self.targets = torch.cat([teacher_probs(teacher, chunk, self.temperature) for chunk in views.split(batch_size)])

    def loss(self, logits, views, labels, index, mix):
        target = self.targets[index]
        if mix is not None:
            target = mix.lam * target + (1 - mix.lam) * target[mix.perm]
        return soft_kl(logits, target, self.temperature, self.t2_scale)


@REGIMES.register("sl_kd")
class KnowledgeDistillation(Regime):
    def loss(self, logits, views, labels, index, mix):
        return soft_kl(logits, teacher_probs(self.teacher, views, self.temperature), self.temperature, self.t2_scale)


def build_regime(protocol: Protocol, **kwargs) -> Regime:
    """The label regime ``protocol`` names, at its temperature and T^2 setting."""
    return REGIMES.get(protocol.regime)(protocol, **kwargs)
