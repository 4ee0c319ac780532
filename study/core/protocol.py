"""How a student is trained, as one frozen value: the only place its settings are spelled.

A trial's :class:`~study.runs.config.TrialConfig` holds one, a compute-aware
selector's proxy trains under the trial's own, and a teacher's run is one too
(:meth:`TeacherSpec.protocol`). Two runs with equal protocols, data and seed
train the same student, so the protocol is also what cache keys and
provenance record. ``regime`` and the budget (``steps``; ``epochs`` too where
a preset counts budgets in epochs, :func:`steps_for`) are the study's axes; the
rest comes from the dataset preset. ``augment`` names the views a student sees:
``"dataset"``, the dataset's own :class:`~study.core.data.Augment`, or
``"dsa"``, DSA as released (:mod:`study.core.dsa`, the paper's Tab. 4
protocols). Either way a training set that brings its own views (a stitched
set's, ``Selection.views``) trains under those.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

AXES = ("regime", "steps", "epochs")
AUGMENTS = ("dataset", "dsa")
BUDGET_UNITS = ("steps", "epochs")


@dataclass(frozen=True)
class Protocol:
    model: str = "convnet"
    model_kwargs: dict = field(default_factory=lambda: {"width": 64})
    regime: str = "hl"
    steps: int = 1000
    batch_size: int = 64
    recipe: str = "adamw-v1"
    lr: float | None = None
    temperature: float = 4.0
    t2_scale: bool = True
    cutmix_prob: float = 0.0
    precision: str = "auto"
    augment: str = "dataset"
    epochs: int | None = None  # the budget as an epoch preset states it (steps are derived); None: steps

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "Protocol":
        return replace(self, **changes)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def batch_size_for(batch_size: int | dict, ipc: int) -> int:
    """A preset's batch size for a cell of ``ipc`` images per class. A table by IPC (keys may be strings, as JSON
    writes them) ties the batch to the set's size as RDED's scripts do (``argument.py:233-258``: 10 / 50 / 100 at
    IPC 1 / 10 / 50 for ten classes): a cell takes the entry of the largest listed IPC not above its own (the
    smallest listed below them all), the full-data reference (IPC 0) the ``full`` entry, else the largest."""
    if not isinstance(batch_size, dict):
        return batch_size
    table = {k: v for k, v in batch_size.items() if str(k) != "full"}
    by_ipc = sorted((int(k), int(v)) for k, v in table.items())
    if ipc == 0:
        return int(batch_size.get("full", by_ipc[-1][1]))
    fitting = [v for k, v in by_ipc if k <= ipc]
    return fitting[-1] if fitting else by_ipc[0][1]


def steps_for(budget: int, unit: str, ipc: int, classes: int, batch_size: int) -> tuple[int, int, int | None]:
    """(steps, batch, epochs) of a cell whose budget a preset states in ``unit``. In ``"steps"`` the budget is
    the steps, at the preset's batch, whatever the set's size. In ``"epochs"`` (the paper's unit: 300 epochs
    over the subset, Tab. 4) it is passes over a training set of ``ipc * classes`` images: the batch is
    ``min(batch_size, ipc * classes)``, so a batch never exceeds the set and an epoch is one pass of
    ``ceil(ipc * classes / batch)`` steps, and compute grows with IPC as in the paper."""
    if unit == "steps":
        return budget, batch_size, None
    size = ipc * classes
    batch = min(batch_size, size)
    return budget * -(-size // batch), batch, budget


@dataclass(frozen=True)
class TeacherSpec:
    """A full-data model, trained for whole epochs under hard labels (or loaded from ``path``)."""

    model: str = "convnet"
    model_kwargs: dict = field(default_factory=dict)
    recipe: str = "adamw-v1"
    lr: float | None = None
    epochs: int = 50
    batch_size: int = 64
    seed: int = 0
    path: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def steps_per_epoch(self, train_size: int) -> int:
        return -(-train_size // self.batch_size)

    def protocol(self, train_size: int) -> Protocol:
        """The teacher's run as a student protocol: ``epochs`` passes over ``train_size`` images."""
        return Protocol(model=self.model, model_kwargs=self.model_kwargs, regime="hl", recipe=self.recipe,
                        lr=self.lr, batch_size=self.batch_size, steps=self.epochs * self.steps_per_epoch(train_size))
