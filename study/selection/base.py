"""What every selector shares: the context it reads, the selection it returns, the per-class bookkeeping.

A selector turns the full training split into a small training set. Coreset
methods return indices; DD methods return new images with provenance. Both
come back as a :class:`Selection` holding uint8 images and labels, so training
never needs to know which kind produced them. Following DeepCore, selectors
are classes; their parameters are a frozen dataclass (``Params``) checked once
when the selector is built, and every random choice comes from the ``seed``
argument of ``select``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import Callable, ClassVar

import numpy as np
import torch

from study.core.cache import Cache
from study.core.data import Augment, Dataset
from study.core.errors import StudyError
from study.core.protocol import Protocol
from study.core.registry import Registry
from study.core.seeding import canonical_json
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


@dataclass(frozen=True)
class Params:
    """A selector's parameters: fields with their defaults. A subclass may override :meth:`check`."""

    def check(self) -> None:
        """Raise StudyError for a value the method cannot run with (called once, when the selector is built)."""


def build_params(selector: str, cls: type[Params], given: dict) -> Params:
    """``cls`` from the parameters a user gave; the one place a selector's parameters are refused."""
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise StudyError(f"The selector {selector!r} has no parameter(s) {unknown}; its parameters are: "
                         f"{', '.join(names) or 'none'}.")
    params = cls(**given)
    params.check()
    return params


class Selector:
    """A selection method. Subclasses declare ``Params`` and implement ``choose`` per class, or ``select``.

    The class attributes below are the whole contract the harness reads: what
    goes into a selection's cache key, which teacher a study must train, how
    reports group the method.
    """

    name: ClassVar[str] = "selector"
    family: ClassVar[str] = "coreset"
    """"coreset" returns indices of real images; "dd" synthesises new ones. Reports group by it."""
    needs_teacher: ClassVar[bool] = False
    """The selection reads the teacher (features, scores, an observer), so the teacher is in its cache key."""
    needs_batchnorm_teacher: ClassVar[bool] = False
    """Only a teacher with BatchNorm layers will do (SRe2L recovers from their statistics); checked up front."""
    budget_aware: ClassVar[bool] = False
    """The selection reads the student's protocol (``ctx.protocol``), so the budget is in its cache key."""
    Params: ClassVar[type[Params]] = Params

    def __init__(self, **params):
        self.p = build_params(self.name, self.Params, params)
        self.params: dict = json.loads(canonical_json(asdict(self.p)))  # resolved, as JSON keeps it

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
