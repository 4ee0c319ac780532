"""What every selector shares: the context it reads, the selection it returns, the per-class bookkeeping.

A selector turns the full training split into a small training set. Coreset
methods return indices; DD methods return new images with provenance. Both
come back as a :class:`Selection` holding uint8 images and labels, so training
never needs to know which kind produced them. Following DeepCore, selectors
are classes with their parameters as constructor arguments; unlike DeepCore,
every random choice comes from the ``seed`` argument.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import Callable

import numpy as np
import torch

from study.core.cache import Cache
from study.core.data import Augment, Dataset
from study.core.errors import StudyError
from study.core.protocol import Protocol
from study.core.registry import Registry
from study.core.teacher import teacher_outputs


@dataclass
class SelectionContext:
    """Everything a selector may read. The teacher is built only when a selector asks for it."""

    data: Dataset
    cache: Cache
    device: str = "cpu"
    protocol: Protocol = field(default_factory=Protocol)  # the student's, which a compute-aware selector aligns to
    teacher_factory: Callable[[], object] | None = None

    @cached_property
    def teacher(self):
        if self.teacher_factory is None:
            raise StudyError("This selector needs a teacher, but none was configured.")
        return self.teacher_factory()

    @cached_property
    def teacher_outputs(self) -> dict[str, torch.Tensor]:
        """The teacher's ``logits`` and ``features`` of the clean training images (a cached full-set pass)."""
        return teacher_outputs(self.data, self.teacher, self.cache, self.device)

    @property
    def features(self) -> torch.Tensor:
        """Penultimate teacher features of the clean training images, shape (N, D)."""
        return self.teacher_outputs["features"]

    @property
    def labels(self) -> torch.Tensor:
        return self.data.train_y

    def class_members(self) -> list[np.ndarray]:
        y = self.data.train_y.numpy()
        return [np.flatnonzero(y == c) for c in range(self.data.num_classes)]


@dataclass
class Selection:
    """A training set. ``views`` are the views it must be trained under when the dataset's would misrepresent it
    (RDED's f x f mosaics); None means the dataset's own."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor | None
    provenance: dict
    views: Augment | None = None

    @property
    def is_synthetic(self) -> bool:
        return self.indices is None

    def __len__(self) -> int:
        return len(self.labels)


def check_ipc(ctx: SelectionContext, ipc: int) -> None:
    smallest = int(ctx.data.class_counts().min())
    if not 1 <= ipc <= smallest:
        raise StudyError(f"IPC must be between 1 and {smallest} (the smallest class of {ctx.data.name}), not {ipc}.")


def from_indices(ctx: SelectionContext, indices, provenance: dict) -> Selection:
    idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
    return Selection(ctx.data.train_x[idx], ctx.data.train_y[idx], idx, provenance)


class Selector:
    """Base class: subclasses implement ``choose`` per class, or override ``select`` entirely."""

    name = "selector"
    family = "coreset"  # "coreset" (returns indices) or "dd" (synthesises images); reports group by it
    stochastic = True
    needs_teacher = False
    needs_batchnorm_teacher = False
    budget_aware = False
    Params: type | None = None  # a frozen dataclass of the selector's parameters, with their defaults

    def __init__(self, **params):
        if self.Params is None:
            self.params = params
            return
        names = [f.name for f in fields(self.Params)]
        unknown = sorted(set(params) - set(names))
        if unknown:
            raise StudyError(f"{self.name} does not take the parameter(s) {unknown}; its parameters are: "
                             f"{', '.join(names)}.")
        self.p = self.Params(**params)
        if hasattr(self.p, "check"):
            self.p.check()
        self.params = asdict(self.p)

    def settings_over(self, defaults: dict, method: str) -> dict:
        """The method's settings: its defaults overridden by ``params``; a parameter it does not know is refused."""
        unknown = sorted(set(self.params) - set(defaults))
        if unknown:
            raise StudyError(f"{method} does not take the parameter(s) {unknown}; its parameters are: "
                             f"{', '.join(defaults)}.")
        return {**defaults, **self.params}

    def provenance(self, ipc: int, seed: int, **extra) -> dict:
        return {"selector": self.name, "params": self.params, "ipc": ipc, "seed": seed, **extra}

    def select(self, ctx: SelectionContext, ipc: int, seed: int) -> Selection:
        check_ipc(ctx, ipc)
        rng = np.random.default_rng(seed)
        picks = [self.choose(ctx, members, ipc, rng) for members in ctx.class_members()]
        return from_indices(ctx, np.concatenate(picks), self.provenance(ipc, seed))

    def choose(self, ctx: SelectionContext, members: np.ndarray, ipc: int, rng: np.random.Generator) -> np.ndarray:
        """Return ``ipc`` distinct entries of ``members`` (dataset indices of one class)."""
        raise NotImplementedError


SELECTORS: Registry[type[Selector]] = Registry("selector")


def register_selector(name: str):
    def add(cls):
        cls.name = name
        return SELECTORS.register(name)(cls)

    return add
