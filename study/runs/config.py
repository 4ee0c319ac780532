"""The trial configuration: one cell of a study, hashed by content.

A trial is (dataset, student, selector, IPC, label regime, budget, recipe,
method parameters); its ``seeds`` repeats run inside the trial. The hash
leaves out nothing that changes the result and nothing else, so a rerun finds
finished trials by hash. Seeds are paired across cells: repeat r uses the same
subset for a selector whatever the regime or budget, and the same student
initialisation whatever the selector, so differences between cells are not
drowned in seed noise.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields

from study.core.errors import StudyError
from study.core.protocol import Protocol, TeacherSpec
from study.core.seeding import content_hash, derive_seed

FULL_DATA_IPC = 0
LATER_DEFAULTS = {"augment": "dataset", "epochs": None}  # protocol settings newer than the first studies


@dataclass(frozen=True)
class TrialConfig:
    dataset: str = "digits"
    selector: str = "random"
    selector_params: dict = field(default_factory=dict)
    ipc: int = 10
    seeds: int = 2
    protocol: Protocol = field(default_factory=Protocol)
    teacher: TeacherSpec = field(default_factory=lambda: TeacherSpec(model_kwargs={"width": 64}))
    data_root: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "TrialConfig":
        """Read the flat form of :meth:`to_dict` (a record, a search space's cell, a test's few settings)."""
        own = {f.name for f in fields(cls)} - {"protocol"}
        unknown = sorted(set(d) - own - set(Protocol.names()))
        if unknown:
            valid = sorted(own | set(Protocol.names()))
            raise StudyError(f"Unknown trial setting(s) {unknown}; valid settings are: {', '.join(valid)}.")
        settings = {k: v for k, v in d.items() if k in own}
        if isinstance(settings.get("teacher"), dict):
            settings["teacher"] = TeacherSpec(**settings["teacher"])
        return cls(protocol=Protocol(**{k: v for k, v in d.items() if k in Protocol.names()}), **settings)

    def to_dict(self) -> dict:
        """Flat: the protocol's settings stand beside the trial's own, as MLflow params and results.csv show them."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "protocol"}
        return {**d, **self.protocol.to_dict(), "teacher": self.teacher.to_dict()}

    def with_choices(self, choices: dict) -> "TrialConfig":
        """This config with a search's choices set; a dotted key (``selector_params.center``) sets one entry of
        a dict setting."""
        d = copy.deepcopy(self.to_dict())
        for key, value in choices.items():
            head, _, sub = key.partition(".")
            d[head] = {**d.get(head, {}), sub: value} if sub else value
        return TrialConfig.from_dict(d)

    def identity(self) -> dict:
        """Everything that determines the outcome (the data root is where data lives, not what it is). Settings
        added later are left out at their defaults, so trials from before they existed keep their hashes; the
        side an ImageFolder tree is decoded at (HARDTRUTHS_IMAGEFOLDER_SIZE) is in when it is not the default."""
        from study.core import data

        d = self.to_dict()
        d.pop("data_root")
        for key, default in LATER_DEFAULTS.items():
            if d[key] == default:
                del d[key]
        if self.dataset.startswith("imagefolder:") and data.IMAGEFOLDER_SIZE != data.DEFAULT_IMAGEFOLDER_SIZE:
            d["image_size"] = data.IMAGEFOLDER_SIZE
        return d

    @property
    def hash(self) -> str:
        return content_hash(self.identity())

    @property
    def is_full_data(self) -> bool:
        return self.selector == "full"

    def selection_seed(self, repeat: int) -> int:
        return derive_seed("select", self.dataset, self.selector, self.selector_params, self.ipc, repeat)

    def train_seed(self, repeat: int) -> int:
        return derive_seed("train", self.dataset, self.protocol.model, self.protocol.model_kwargs, repeat)

    def label(self) -> str:
        """The run's name: its cell, then its selector parameters (what an Optuna search chose), so the runs
        of one searched cell can be told apart."""
        ipc = "full" if self.is_full_data else f"ipc={self.ipc}"
        params = "".join(f" {k}={v:.3g}" if isinstance(v, float) else f" {k}={v}"
                         for k, v in sorted(self.selector_params.items()))
        epochs = f" ({self.protocol.epochs} epochs)" if self.protocol.epochs is not None else ""
        return f"{self.selector} {ipc} {self.protocol.regime} steps={self.protocol.steps}{epochs}{params}"
