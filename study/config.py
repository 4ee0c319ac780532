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

from dataclasses import asdict, dataclass, field, fields

from study.errors import StudyError
from study.seeding import content_hash, derive_seed

FULL_DATA_IPC = 0


@dataclass
class TrialConfig:
    dataset: str = "digits"
    model: str = "convnet"
    model_kwargs: dict = field(default_factory=lambda: {"width": 64})
    selector: str = "random"
    selector_params: dict = field(default_factory=dict)
    ipc: int = 10
    regime: str = "hl"
    steps: int = 1000
    batch_size: int = 64
    recipe: str = "adamw-v1"
    lr: float | None = None
    temperature: float = 4.0
    t2_scale: bool = True
    cutmix_prob: float = 0.0
    precision: str = "auto"
    seeds: int = 2
    teacher: dict = field(default_factory=lambda: {"model": "convnet", "model_kwargs": {"width": 64}, "epochs": 50})
    data_root: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "TrialConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise StudyError(f"Unknown trial setting(s) {unknown}; valid settings are: {', '.join(sorted(names))}.")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> dict:
        """Everything that determines the outcome (the data root is where data lives, not what it is)."""
        d = self.to_dict()
        d.pop("data_root")
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
        return derive_seed("train", self.dataset, self.model, self.model_kwargs, repeat)

    def label(self) -> str:
        ipc = "full" if self.is_full_data else f"ipc={self.ipc}"
        return f"{self.selector} {ipc} {self.regime} steps={self.steps}"
