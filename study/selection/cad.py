"""CAD-Prune: compute-aware difficulty pruning (our reconstruction, see DESIGN.md).

Scorer (:func:`cad_proxy`): a cheap proxy is trained with the student's own
protocol (``ctx.protocol``: model, recipe, label regime, steps, batch size) on a
class-balanced random subset of the target IPC, for ``proxy_seeds`` seeds.
At the late checkpoints (the last ``late`` fraction of training,
``checkpoints`` of them) the proxy scores every training sample by its
probability margin p_y - max_{c != y} p_c and its correctness; both are
averaged over checkpoints and seeds and cached by content hash (with the
proxies' weights, which CA2D uses to score patches).

Selector (``cad_prune``): difficulty u is the within-class percentile of
-margin (0 = easiest, 1 = hardest). The frontier u*_c is the fraction of class
c the proxy gets right. Each class keeps a window [u_hi - w, u_hi] with
u_hi = min(u*_c + delta, 1 - beta) (beta drops the likely-mislabelled tail),
and IPC samples are drawn stratified inside it. Little compute per class ->
low proxy accuracy -> small u* -> easy samples; more compute -> harder ones.
``center`` / ``width`` override the window directly, the same for every class
(delta and beta are then ignored): that is what the alignment search varies.
"""
from __future__ import annotations

from dataclasses import asdict
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
from study.core.train import train_student


def cad_window(u_star: float, delta: float, beta: float, w: float,
               center: float | None = None, width: float | None = None) -> tuple[float, float]:
    """The difficulty window [lo, hi]: CAD's rule, or a window set directly by (center, width)."""
    if center is not None:
        width = w if width is None else width
        return max(0.0, center - width / 2), min(1.0, center + width / 2)
    hi = min(u_star + delta, 1.0 - beta)
    return max(0.0, hi - w), hi


# ---------------------------------------------------------------- the proxy (scorer)

def proxy_subset(labels: np.ndarray, num_classes: int, ipc: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), size=ipc, replace=False)
                                   for c in range(num_classes)]))


def late_steps(steps: int, checkpoints: int, late: float) -> list[int]:
    """``checkpoints`` steps spread evenly over the last ``late`` fraction of training, ending at the last step."""
    first = steps * (1 - late)
    if checkpoints == 1:
        return [steps]
    points = np.linspace(first + (steps - first) / checkpoints, steps, checkpoints)
    return sorted({max(1, int(round(p))) for p in points})


def margin_and_correct(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = logits.float().softmax(1)
    true_p = probs.gather(1, labels[:, None]).squeeze(1)
    other_p = probs.scatter(1, labels[:, None], -1.0).amax(1)
    return true_p - other_p, (logits.argmax(1) == labels).float()


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
    key = {"kind": "cad_proxy", "version": 1, "split": ctx.data.summary(), "ipc": ipc, "budget": ctx.protocol.to_dict(),
           "proxy_seeds": proxy_seeds, "checkpoints": checkpoints, "late": late}
    if views is not None:
        key["views"] = asdict(views)
    if REGIMES.get(ctx.protocol.regime).needs_teacher:
        key["teacher"] = ctx.teacher.spec.to_dict()
    return key


def cad_proxy(ctx: SelectionContext, ipc: int, proxy_seeds: int = 3, checkpoints: int = 3, late: float = 0.3,
              views: Augment | None = None) -> dict:
    """Cached proxy scores: ``margin`` and ``correct`` (N,) of the whole training images, averaged over late
    checkpoints and seeds, and ``states``; ``views`` are the proxies' training views (the dataset's if None)."""

    def compute() -> dict:
        margins, correct, states = [], [], []

        def on_model(model: nn.Module) -> None:
            mg, ok = margin_and_correct(predict_logits(model, ctx.data.train_x, ctx.device), ctx.data.train_y)
            margins.append(mg)
            correct.append(ok)
            states.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})

        train_proxies(ctx, ipc, proxy_seeds, checkpoints, late, on_model, views)
        return {"margin": torch.stack(margins).mean(0), "correct": torch.stack(correct).mean(0), "states": states}

    return ctx.cache.get_or_compute("cad-proxy", cad_proxy_key(ctx, ipc, proxy_seeds, checkpoints, late, views),
                                    compute)


def proxy_models(ctx: SelectionContext, states: list[dict]) -> list[nn.Module]:
    models = []
    for state in states:
        model = model_for(ctx.data, ctx.protocol.model, **ctx.protocol.model_kwargs)
        model.load_state_dict(state)
        models.append(model.to(ctx.device).eval())
    return models


@torch.no_grad()
def proxy_scores(models: list[nn.Module], views: torch.Tensor, labels: torch.Tensor,
                 batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean margin and correctness of the proxies on float views in [0, 1] (used by CA2D on patches)."""
    margins, correct = [], []
    for model in models:
        logits = torch.cat([model(v).float().cpu() for v in views.split(batch_size)])
        mg, ok = margin_and_correct(logits, labels.cpu())
        margins.append(mg)
        correct.append(ok)
    return torch.stack(margins).mean(0), torch.stack(correct).mean(0)


# ---------------------------------------------------------------- the selector

class CADParams:
    """The knobs shared by CAD-Prune and CA2D, checked up front."""

    def __init__(self, delta=0.0, beta=0.05, w=0.3, proxy_seeds=3, checkpoints=3, late=0.3, center=None, width=None):
        if not 0 <= beta < 1:
            raise StudyError(f"beta (the hardest fraction dropped) must be in [0, 1), not {beta}.")
        if not 0 < w <= 1:
            raise StudyError(f"The window width w must be in (0, 1], not {w}.")
        if not -1 <= delta <= 1:
            raise StudyError(f"delta (the shift past the frontier) must be in [-1, 1], not {delta}.")
        if proxy_seeds < 1 or checkpoints < 1 or not 0 < late <= 1:
            raise StudyError(f"CAD needs proxy_seeds >= 1, checkpoints >= 1 and 0 < late <= 1; got "
                             f"{proxy_seeds}, {checkpoints}, {late}.")
        if center is not None and not 0 <= center <= 1:
            raise StudyError(f"The window centre must be in [0, 1], not {center}.")
        if width is not None and not 0 < width <= 1:
            raise StudyError(f"The window width must be in (0, 1], not {width}.")
        if width is not None and center is None:
            raise StudyError("A window width override needs a centre too (center=...).")
        self.delta, self.beta, self.w = delta, beta, w
        self.proxy_seeds, self.checkpoints, self.late = proxy_seeds, checkpoints, late
        self.center, self.width = center, width

    def as_dict(self) -> dict:
        return dict(vars(self))

    def window(self, u_star: float) -> tuple[float, float]:
        return cad_window(u_star, self.delta, self.beta, self.w, self.center, self.width)

    @property
    def window_width(self) -> float:
        return self.width if (self.center is not None and self.width is not None) else self.w


@register_selector("cad_prune")
class CADPrune(Selector):
    """Per class: the CAD window from the budget-matched proxy, IPC samples drawn stratified inside it."""

    budget_aware = True

    def __init__(self, delta: float = 0.0, beta: float = 0.05, w: float = 0.3, proxy_seeds: int = 3,
                 checkpoints: int = 3, late: float = 0.3, center: float | None = None, width: float | None = None):
        self.cad = CADParams(delta, beta, w, proxy_seeds, checkpoints, late, center, width)
        super().__init__(**self.cad.as_dict())

    def difficulty(self, ctx: SelectionContext, ipc: int) -> tuple[np.ndarray, np.ndarray]:
        """(u per training sample, u* per class) for this IPC and ctx.protocol."""
        scores = cad_proxy(ctx, ipc, self.cad.proxy_seeds, self.cad.checkpoints, self.cad.late)
        y = ctx.data.train_y.numpy()
        u = class_percentiles(-scores["margin"].double().numpy(), y, ctx.data.num_classes)
        correct = scores["correct"].double().numpy()
        u_star = np.array([correct[y == c].mean() for c in range(ctx.data.num_classes)])
        return u, u_star

    def select(self, ctx: SelectionContext, ipc: int, seed: int) -> Selection:
        check_ipc(ctx, ipc)
        u, u_star = self.difficulty(ctx, ipc)
        rng = np.random.default_rng(seed)
        picks, windows = [], []
        for c, members in enumerate(ctx.class_members()):
            lo, hi = self.cad.window(float(u_star[c]))
            windows.append([round(lo, 4), round(hi, 4)])
            picks.append(members[stratified_window_pick(u[members], lo, hi, ipc, rng)])
        chosen = np.concatenate(picks)
        return from_indices(ctx, chosen, self.provenance(
            ipc, seed, budget=ctx.protocol.to_dict(), u_star=np.round(u_star, 4).tolist(), windows=windows,
            mean_difficulty=float(u[chosen].mean()), difficulty=np.round(u[chosen], 4).tolist()))
