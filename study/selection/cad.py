"""CAD-Prune (Hard Truths, Sec. 5): compute-aware difficulty from a compute-matched scoring run.

The paper's reading, as the clean-room reproduction ``andriotis/ca2d`` implements
it (``ca2d.py``; docs/cad.md lists every setting and where it comes from):

- **Scoring run.** The student's model is trained on the *full* training set
  under the paper's hard-label recipe (``sgd-step-v1``: SGD lr 0.01, momentum
  0.9, weight decay 5e-4, lr x0.1 at half the run; DSA augmentation; batch
  256), compressed to a length of ``ratio`` x the images the trial's student
  will see (``ctx.protocol.steps * ctx.protocol.batch_size``), whatever the
  student's label regime (the reproduction's ASSUME 1). ``ratio = 1`` is the
  paper's compute match: K = images / N epochs over the full set.
- **Checkpoints.** After each of the K epochs, EL2N = ||softmax - onehot||_2
  on the clean training images gives one row of S (K x N). A run shorter than
  :func:`checkpoint_floor` epochs (Fashion-MNIST at IPC 10 sees half an
  epoch) is cut into that many equal segments instead, and a run of fewer
  steps than that is lengthened to one step per segment.
- **CAD (Eq. 1-2).** :func:`cad_from_scores`: U_k, the unbiased std of S over
  the J checkpoints k .. k+J-1, for k = 0 .. K-J (Dynamic Uncertainty's
  windows); CAD is the mean of the last W of the windows Dynamic Uncertainty
  averages (k <= K-J-1), so K >= J + W. J = K - W unless set (the
  reproduction's ASSUME 9; the paper gives J = 6, W = 2 for ImageNet-1K).
- **Selection.** CAD-Prune keeps, per class, the IPC images of highest CAD
  (``order="lowest"`` the lowest; ties by dataset index).

Scores are cached per (split, scoring protocol, checkpoints, seed): the
scoring protocol holds the student's model and the run's own length, not the
trial's label regime, so one run serves every selector (``cad_prune``,
``ca2d``, ``rcad``) and every regime that asks for the same length. A
compressed schedule makes a longer run's prefix a different run, so nothing
is read off another run's prefix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from study.core.errors import StudyError
from study.core.evaluate import predict_logits
from study.core.images import materialise
from study.core.protocol import Protocol
from study.core.seeding import derive_seed
from study.core.teacher import sample_dynamics
from study.core.train import train_student
from study.selection.base import Selection, SelectionContext, Selector, check_ipc, from_indices, register_selector
from study.selection.difficulty import difficulty_record

# The paper's small-scale hard-label protocol (Tab. 4), which the scoring run compresses (ASSUME 1).
SCORING_RECIPE = "sgd-step-v1"
SCORING_AUGMENT = "dsa"
SCORING_BATCH = 256
MIN_J = 2  # an unbiased std needs two points
ORDERS = ("highest", "lowest")


def checkpoint_floor(J: int | None, W: int) -> int:
    """The fewest checkpoints CAD can be computed from: J + W (J at least 2 points for a std). At the defaults
    (J = K - W, W = 2) that is 4: two windows of two checkpoints each, the last checkpoint unused."""
    return (J or MIN_J) + W


def resolve_J(K: int, J: int | None, W: int) -> int:
    return K - W if J is None else J


def cad_from_scores(S: torch.Tensor, J: int | None = None, W: int = 2) -> torch.Tensor:
    """CAD (Eq. 1-2) of a (K, N) score history: the mean of the last W of the K - J windows k = 0 .. K-J-1, each
    the unbiased std of S[k : k + J]. J = None means K - W."""
    K = S.shape[0]
    J = resolve_J(K, J, W)
    if W < 1 or J < MIN_J or K < J + W:
        raise StudyError(f"CAD needs W >= 1 windows of J >= {MIN_J} checkpoints and K >= J + W checkpoints; "
                         f"got K={K}, J={J}, W={W}.")
    U = S.double().unfold(0, J, 1).std(dim=-1)  # (K - J + 1, N): U[k] over S[k .. k+J-1]
    return U[K - J - W:K - J].mean(0)


@dataclass(frozen=True)
class ScoringPlan:
    """The scoring run's shape: its steps at ``batch_size``, the steps after which EL2N is read, and K as the
    paper counts it (images seen / N, the full-set epochs)."""

    steps: int
    batch_size: int
    checkpoints: tuple[int, ...]
    epochs: float

    @property
    def train_images(self) -> int:
        return self.steps * self.batch_size


def scoring_plan(images: float, train_size: int, batch_size: int, floor: int) -> ScoringPlan:
    """A run of ``images`` training images (at least one step per checkpoint), read after every epoch, or at
    ``floor`` equal segments when it is shorter than ``floor`` epochs."""
    steps = max(math.ceil(images / batch_size), floor)
    epochs = steps * batch_size / train_size
    count = max(floor, round(epochs))
    return ScoringPlan(steps, batch_size, tuple(round(i * steps / count) for i in range(1, count + 1)), epochs)


def scoring_protocol(student: Protocol, plan: ScoringPlan) -> Protocol:
    """The paper's HL recipe on the student's model, at the plan's length; nothing of the student's label
    regime, so every regime shares the run."""
    return Protocol(model=student.model, model_kwargs=student.model_kwargs, regime="hl", steps=plan.steps,
                    batch_size=plan.batch_size, recipe=SCORING_RECIPE, augment=SCORING_AUGMENT,
                    precision=student.precision)


def scoring_run(ctx: SelectionContext, plan: ScoringPlan, seed: int) -> dict:
    """The cached run: ``S`` (K, N) EL2N of the clean training images at each checkpoint, and its cost."""
    protocol = scoring_protocol(ctx.protocol, plan)
    key = {"kind": "cad-scoring", "split": ctx.data.summary(), "protocol": protocol.to_dict(),
           "checkpoints": list(plan.checkpoints), "seed": seed}

    def compute() -> dict:
        x, y = materialise(ctx.data.train_x), ctx.data.train_y
        wanted, rows = set(plan.checkpoints), []

        def record(step: int, model) -> None:
            if step in wanted:
                with torch.no_grad():
                    rows.append(sample_dynamics(predict_logits(model, x, ctx.device), y)["el2n"])

        train_student(x, y, ctx.data, protocol, seed=seed, device=ctx.device, eval_points=1, on_checkpoint=record,
                      checkpoint_every=1)
        return {"S": torch.stack(rows).float(), "train_images": plan.train_images,
                "el2n_images": len(plan.checkpoints) * len(y)}

    return ctx.cache.get_or_compute("cad-scoring", key, compute)


@dataclass(frozen=True)
class ScoringParams:
    """The scoring run and CAD's windows. ``ratio``: the run's training images over the student's (1 = the
    paper's compute match); ``J`` (None = K - W) and ``W``: CAD's window length and count (Eq. 1-2);
    ``scoring_seeds``: runs CAD is averaged over; ``scoring_batch``: the run's batch (Tab. 4's 256)."""

    ratio: float = 1.0
    J: int | None = None
    W: int = 2
    scoring_seeds: int = 1
    scoring_batch: int = SCORING_BATCH

    def check(self) -> None:
        if not self.ratio > 0:
            raise StudyError(f"ratio (the scoring run's images over the student's) must be positive, not {self.ratio}.")
        if self.W < 1 or (self.J is not None and self.J < MIN_J):
            raise StudyError(f"CAD needs W >= 1 windows of J >= {MIN_J} checkpoints (or J=None for K - W); "
                             f"got J={self.J}, W={self.W}.")
        if self.scoring_seeds < 1 or self.scoring_batch < 1:
            raise StudyError(f"CAD needs scoring_seeds >= 1 and scoring_batch >= 1; got {self.scoring_seeds} "
                             f"and {self.scoring_batch}.")


@dataclass(frozen=True)
class CADParams(ScoringParams):
    """``order``: keep the highest CAD (the paper's) or the lowest."""

    order: str = "highest"

    def check(self) -> None:
        ScoringParams.check(self)
        if self.order not in ORDERS:
            raise StudyError(f"order must be one of {', '.join(ORDERS)}, not {self.order!r}.")


def compute_cad(ctx: SelectionContext, p: ScoringParams) -> tuple[np.ndarray, dict]:
    """(N,) CAD of every training image, averaged over the scoring seeds, and what its provenance records."""
    student_images = ctx.protocol.steps * ctx.protocol.batch_size
    plan = scoring_plan(p.ratio * student_images, len(ctx.data.train_y), p.scoring_batch, checkpoint_floor(p.J, p.W))
    K = len(plan.checkpoints)
    runs = [scoring_run(ctx, plan, derive_seed("cad-scoring", s)) for s in range(p.scoring_seeds)]
    cad = torch.stack([cad_from_scores(run["S"], p.J, p.W) for run in runs]).mean(0).numpy()
    info = {"ratio": p.ratio, "student_images": student_images, "scoring_epochs": round(plan.epochs, 4), "K": K,
            "J": resolve_J(K, p.J, p.W), "W": p.W, "scoring_steps": plan.steps,
            "scoring_train_images": sum(r["train_images"] for r in runs),
            "scoring_el2n_images": sum(r["el2n_images"] for r in runs)}
    return cad, info


def ranked(values: np.ndarray, count: int, order: str) -> np.ndarray:
    """Positions of the ``count`` highest (or lowest) ``values``, best first; ties by position."""
    keys = -values if order == "highest" else values
    return np.argsort(keys, kind="stable")[:count]


@register_selector("cad_prune")
class CADPrune(Selector):
    """Per class: the IPC images of highest CAD (Sec. 5)."""

    Params = CADParams
    budget_aware = True
    needs_teacher = True  # the provenance's fixed difficulty axis is the teacher's
    stochastic = False

    def select(self, ctx: SelectionContext, ipc: int, seed: int) -> Selection:
        check_ipc(ctx, ipc)
        cad, info = compute_cad(ctx, self.p)
        chosen = np.concatenate([members[ranked(cad[members], ipc, self.p.order)]
                                 for members in ctx.class_members()])
        return from_indices(ctx, chosen, self.provenance(ipc, seed, **info, **difficulty_record(ctx, chosen),
                                                         cad=np.round(cad[chosen], 6).tolist()))
