"""CAD-Prune: compute-aware difficulty pruning (our reconstruction, see DESIGN.md and docs/alignment.md).

Difficulty axis (:func:`reference_axis`): one per (dataset, teacher). Every
sample's difficulty u is its within-class percentile (0 = easiest, 1 =
hardest) of a fixed reference score, by default the teacher's area under the
margin (AUM, recorded while the teacher trained; cached like every score). The
axis does not depend on the budget, so windows chosen at different budgets,
by the rule or by a search, lie on one scale and compare.

Budget-aware frontier (:func:`cad_proxy`): a cheap proxy is trained with the
student's own protocol (``ctx.protocol``: model, recipe, label regime, steps,
batch size) on a class-balanced random subset of the target IPC, for
``proxy_seeds`` seeds, and read at late checkpoints. The frontier u*_c is the
fraction of class c the proxies get right: the easiest u*_c of the class (on
the axis) is what that much compute learns. It is a per-class fraction, so the
proxies are read on a fixed class-stratified sample of the training split
(:data:`FRONTIER_PER_CLASS`), not on all of it. The proxy never orders samples.

Window: CAD's rule keeps [u_hi - w, u_hi], u_hi = min(u*_c + delta, 1 - beta)
(beta drops the likely-mislabelled tail); a window that would start below 0
keeps its width and starts at 0 (the provenance records it). ``lo`` / ``width``
(or ``position`` / ``width``, how a search places a window of a given width in
the room it has) set the window directly, the same for every class; beta still
bounds it, and a window past 1 - beta is refused, never clipped. IPC samples
are drawn stratified inside the window.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Callable

import numpy as np
import torch
from torch import nn

from study.core.data import Augment
from study.core.evaluate import predict_logits
from study.core.errors import StudyError
from study.core.models import model_for
from study.core.regimes import REGIMES
from study.selection.base import (
    Selection, SelectionContext, Selector, check_ipc, from_indices, register_selector,
)
from study.core.seeding import derive_seed
from study.selection.difficulty import class_percentiles, stratified_window_pick
from study.selection.scores import SCORERS, compute_scores
from study.core.train import train_student


# ---------------------------------------------------------------- the proxy (scorer)

# The frontier's sample: at 1,000 images a class, a per-class fraction is off by at most 3.1 points (95 %), and
# reading three proxies at three checkpoints costs a sixth of what all of Fashion-MNIST's 59 k images did.
FRONTIER_PER_CLASS = 1000


def proxy_subset(labels: np.ndarray, num_classes: int, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` random indices of each class (all of a smaller class), sorted."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(labels == c) for c in range(num_classes)]
    return np.sort(np.concatenate([rng.choice(m, size=min(per_class, len(m)), replace=False) for m in members]))


def late_steps(steps: int, checkpoints: int, late: float) -> list[int]:
    """``checkpoints`` steps spread evenly over the last ``late`` fraction of training, ending at the last step."""
    first = steps * (1 - late)
    if checkpoints == 1:
        return [steps]
    points = np.linspace(first + (steps - first) / checkpoints, steps, checkpoints)
    return sorted({max(1, int(round(p))) for p in points})


def class_accuracy(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C,) fraction of each class's samples that ``logits`` get right."""
    correct = (logits.argmax(1) == labels).double()
    return torch.zeros(num_classes, dtype=torch.double).index_add_(0, labels, correct) / labels.bincount(
        minlength=num_classes).clamp(min=1)


def train_proxies(ctx: SelectionContext, ipc: int, proxy_seeds: int, checkpoints: int, late: float,
                  on_model: Callable[[nn.Module], None], views: Augment | None = None) -> None:
    """Train ``proxy_seeds`` proxies under ctx.protocol (on ``views`` in place of the dataset's, when given) and
    call ``on_model`` at each late checkpoint."""
    protocol = ctx.protocol
    teacher = ctx.teacher.model if REGIMES.get(protocol.regime).needs_teacher else None
    y = ctx.data.train_y.numpy()
    wanted = set(late_steps(protocol.steps, checkpoints, late))
    for s in range(proxy_seeds):
        subset = torch.as_tensor(proxy_subset(y, ctx.data.num_classes, ipc, derive_seed("cad-subset", ctx.data.name, ipc, s)))

        def record(step: int, model: nn.Module) -> None:
            if step in wanted:
                on_model(model)

        train_student(ctx.data.train_x[subset], ctx.data.train_y[subset], ctx.data, protocol, teacher=teacher,
                      seed=derive_seed("cad-proxy", ctx.data.name, ipc, s), device=ctx.device, eval_points=1,
                      on_checkpoint=record, checkpoint_every=1, views=views)


def cad_proxy_key(ctx: SelectionContext, ipc: int, proxy_seeds: int, checkpoints: int, late: float,
                  views: Augment | None = None) -> dict:
    key = {"kind": "cad_proxy", "version": 2, "frontier_per_class": FRONTIER_PER_CLASS, "split": ctx.data.summary(),
           "ipc": ipc, "budget": ctx.protocol.to_dict(), "proxy_seeds": proxy_seeds, "checkpoints": checkpoints,
           "late": late}
    if views is not None:
        key["views"] = asdict(views)
    if REGIMES.get(ctx.protocol.regime).needs_teacher:
        key["teacher"] = ctx.teacher.spec.to_dict()
    return key


def cad_proxy(ctx: SelectionContext, ipc: int, proxy_seeds: int = 3, checkpoints: int = 3, late: float = 0.3,
              views: Augment | None = None) -> dict:
    """Cached proxies: ``u_star`` (C,), each class's fraction right on the frontier sample, averaged over late
    checkpoints and seeds, and their ``states``; ``views`` are the proxies' training views (the dataset's if None)."""

    def compute() -> dict:
        data = ctx.data
        sample = torch.as_tensor(proxy_subset(data.train_y.numpy(), data.num_classes, FRONTIER_PER_CLASS,
                                              derive_seed("cad-frontier", data.name)))
        images, labels = data.train_x[sample], data.train_y[sample]
        accuracy, states = [], []

        def on_model(model: nn.Module) -> None:
            accuracy.append(class_accuracy(predict_logits(model, images, ctx.device).cpu(), labels, data.num_classes))
            states.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})

        train_proxies(ctx, ipc, proxy_seeds, checkpoints, late, on_model, views)
        return {"u_star": torch.stack(accuracy).mean(0), "states": states}

    return ctx.cache.get_or_compute("cad-proxy", cad_proxy_key(ctx, ipc, proxy_seeds, checkpoints, late, views),
                                    compute, code=[__name__])


def proxy_models(ctx: SelectionContext, states: list[dict]) -> list[nn.Module]:
    models = []
    for state in states:
        model = model_for(ctx.data, ctx.protocol.model, **ctx.protocol.model_kwargs)
        model.load_state_dict(state)
        models.append(model.to(ctx.device).eval())
    return models


@torch.no_grad()
def proxy_accuracy(models: list[nn.Module], views: torch.Tensor, label: int, batch_size: int = 512) -> float:
    """The proxies' mean accuracy on float views in [0, 1] that all belong to class ``label`` (CA2D's patches)."""
    right = [torch.cat([model(v).argmax(1).cpu() for v in views.split(batch_size)]).eq(label).double().mean()
             for model in models]
    return float(torch.stack(right).mean())


# ---------------------------------------------------------------- the axis, the window, the selector

def reference_axis(ctx: SelectionContext, axis: str) -> np.ndarray:
    """Every training sample's within-class percentile of the reference score ``axis`` (cached per dataset and
    teacher by :func:`compute_scores`); the same whatever the budget or IPC."""
    scores = compute_scores(ctx, axis).double().numpy()
    return class_percentiles(scores, ctx.data.train_y.numpy(), ctx.data.num_classes)


def auto_width(ipc: int, class_size: int) -> float:
    """The design's window width: four times the kept share of the class, at least a tenth of it."""
    return max(4 * ipc / class_size, 0.1)


# Part of every CAD-based selection's cache key: sets cached while windows were placed on the per-budget proxy's
# own ranking, with the old defaults, are stale.
AXIS_IDENTITY = "windows-on-teacher-aum-axis"


@dataclass(frozen=True)
class CADParams(Selector.Params):
    """The knobs shared by CAD-Prune and CA2D, checked up front; the one place their defaults live.

    delta = 0.05 and w = max(4k/N_c, 0.1) (``w=None``) are the design's; the
    reason for each is in docs/alignment.md.
    """

    delta: float = 0.05
    beta: float = 0.05
    w: float | None = None
    proxy_seeds: int = 3
    checkpoints: int = 3
    late: float = 0.3
    lo: float | None = None
    width: float | None = None
    position: float | None = None
    axis: str = "aum"

    @classmethod
    def build(cls, **params) -> "CADParams":
        """CADParams from keyword settings; an unknown name is refused in one sentence."""
        unknown = sorted(set(params) - {f.name for f in fields(cls)})
        if unknown:
            raise StudyError(f"CAD has no setting(s) {unknown}; its settings are: "
                             f"{', '.join(f.name for f in fields(cls))}.")
        return cls(**params)

    def __post_init__(self):
        if not 0 <= self.beta < 1:
            raise StudyError(f"beta (the hardest fraction dropped) must be in [0, 1), not {self.beta}.")
        if self.w is not None and not 0 < self.w <= 1:
            raise StudyError(f"The window width w must be in (0, 1] (or None for max(4 IPC / class size, 0.1)), "
                             f"not {self.w}.")
        if not -1 <= self.delta <= 1:
            raise StudyError(f"delta (the shift past the frontier) must be in [-1, 1], not {self.delta}.")
        if self.proxy_seeds < 1 or self.checkpoints < 1 or not 0 < self.late <= 1:
            raise StudyError(f"CAD needs proxy_seeds >= 1, checkpoints >= 1 and 0 < late <= 1; got "
                             f"{self.proxy_seeds}, {self.checkpoints}, {self.late}.")
        if self.axis not in SCORERS:
            raise StudyError(f"The difficulty axis {self.axis!r} is not a score; scores are: {', '.join(SCORERS.names())}.")
        self.check_set_window()

    def check_set_window(self) -> None:
        if self.lo is None and self.position is None and self.width is None:
            return
        if self.width is None or (self.lo is None) == (self.position is None):
            raise StudyError("A window set directly needs its width and exactly one of lo (its start) or position "
                             f"(its place in [0, 1]); got lo={self.lo}, position={self.position}, width={self.width}.")
        room = 1 - self.beta
        if not 0 < self.width <= room:
            raise StudyError(f"The window width must be in (0, 1 - beta = {room:g}], not {self.width}.")
        if self.position is not None and not 0 <= self.position <= 1:
            raise StudyError(f"The window position must be in [0, 1], not {self.position}.")
        if self.lo is not None and not 0 <= self.lo <= room - self.width + 1e-9:
            raise StudyError(f"The window [{self.lo:g}, {self.lo + self.width:g}] lies outside [0, 1 - beta = "
                             f"{room:g}] (beta drops the hardest {self.beta:g} of each class); choose "
                             f"0 <= lo <= {room - self.width:g}, or a smaller beta.")

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def is_set(self) -> bool:
        """True when the window is set directly (the alignment search), False when CAD's rule places it."""
        return self.width is not None

    def rule_window(self, u_star: float, ipc: int, class_size: int) -> tuple[float, float]:
        """CAD's own window for frontier ``u_star``: [u_hi - w, u_hi], slid up to start at 0 where it would not."""
        room = 1 - self.beta
        w = min(self.w if self.w is not None else auto_width(ipc, class_size), room)
        hi = max(min(u_star + self.delta, room), w)
        return hi - w, hi

    def window(self, u_star: float, ipc: int, class_size: int) -> tuple[float, float]:
        """The window this selector keeps: the one set directly, else the rule's."""
        if not self.is_set:
            return self.rule_window(u_star, ipc, class_size)
        lo = self.lo if self.lo is not None else self.position * (1 - self.beta - self.width)
        return lo, lo + self.width

    def width_for(self, ipc: int, class_size: int) -> float:
        lo, hi = self.window(1.0, ipc, class_size)
        return hi - lo


def rounded(window: tuple[float, float]) -> list[float]:
    return [round(window[0], 4), round(window[1], 4)]


@register_selector("cad_prune")
class CADPrune(Selector):
    """Per class: the CAD window on the reference axis, IPC samples drawn stratified inside it."""

    budget_aware = True
    needs_teacher = True  # the reference axis is the teacher's
    identity = AXIS_IDENTITY

    Params = CADParams

    def __init__(self, **params):
        super().__init__(**params)
        self.cad = self.p

    def frontier(self, ctx: SelectionContext, ipc: int) -> np.ndarray:
        """u*_c per class: the fraction of class c the budget-matched proxies get right."""
        return cad_proxy(ctx, ipc, self.cad.proxy_seeds, self.cad.checkpoints, self.cad.late)["u_star"].numpy()

    def select(self, ctx: SelectionContext, ipc: int, seed: int) -> Selection:
        check_ipc(ctx, ipc)
        u, u_star = reference_axis(ctx, self.cad.axis), self.frontier(ctx, ipc)
        rng = np.random.default_rng(seed)
        picks, windows, rule = [], [], []
        for c, members in enumerate(ctx.class_members()):
            lo, hi = self.cad.window(float(u_star[c]), ipc, len(members))
            windows.append(rounded((lo, hi)))
            rule.append(rounded(self.cad.rule_window(float(u_star[c]), ipc, len(members))))
            picks.append(members[stratified_window_pick(u[members], lo, hi, ipc, rng)])
        chosen = np.concatenate(picks)
        return from_indices(ctx, chosen, self.provenance(
            ipc, seed, budget=ctx.protocol.to_dict(), axis=self.cad.axis, u_star=np.round(u_star, 4).tolist(),
            windows=windows, rule_windows=rule, mean_difficulty=float(u[chosen].mean()),
            difficulty=np.round(u[chosen], 4).tolist()))
