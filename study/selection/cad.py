"""CAD-Prune (Hard Truths, Sec. 5): compute-aware difficulty from a compute-matched scoring run.

The paper's reading, as the clean-room reproduction ``andriotis/ca2d`` implements
it (``ca2d.py``; docs/cad.md lists every setting and where it comes from):

- **Scoring run.** The student's model is trained on the *full* training set
  under the paper's hard-label recipe (``sgd-step-v1``: SGD lr 0.01, momentum
  0.9, weight decay 5e-4, lr x0.1 at 151/300 of the run; DSA augmentation; batch
  256), compressed to a length of ``ratio`` x the images the trial's student
  will see (``ctx.protocol.steps * ctx.protocol.batch_size``), whatever the
  student's label regime (the reproduction's ASSUME 1). ``ratio = 1`` is the
  paper's compute match: K = images / N epochs over the full set.
- **Checkpoints.** After each of the K epochs, EL2N = ||softmax - onehot||_2
  on the clean training images gives one row of S (K x N). A run shorter than
  :func:`checkpoint_floor` epochs (Fashion-MNIST at IPC 10 sees half an
  epoch) is read at that many equal segments instead.
- **CAD (Eq. 1-2).** :func:`cad_from_scores`: U_k, the unbiased std of S over
  the J checkpoints k .. k+J-1, for k = 0 .. K-J (Dynamic Uncertainty's
  windows); CAD is the mean of the last W of the windows Dynamic Uncertainty
  averages (k <= K-J-1), so K >= J + W. J = K - W unless set (the
  reproduction's ASSUME 9; the paper gives J = 6, W = 2 for ImageNet-1K).
- **Selection.** CAD-Prune keeps, per class, the IPC images of highest CAD
  (``order="lowest"`` the lowest; ties by dataset index).

The run itself, and its cache shared by every CAD selector and regime, is
:mod:`study.selection.scoring_run`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from study.core.errors import StudyError
from study.core.seeding import derive_seed
from study.selection.base import Selection, SelectionContext, Selector, check_ipc, from_indices, register_selector
from study.selection.difficulty import difficulty_record
from study.selection.scoring_run import SCORING_BATCH, scoring_plan, scoring_run

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
class ScoringParams(Selector.Params):
    """The scoring run and CAD's windows. ``ratio``: the run's training images over the student's (1 = the
    paper's compute match); ``J`` (None = K - W) and ``W``: CAD's window length and count (Eq. 1-2);
    ``scoring_seeds``: runs CAD is averaged over; ``scoring_batch``: the run's batch (Tab. 4's 256)."""

    ratio: float = 1.0
    J: int | None = None
    W: int = 2
    scoring_seeds: int = 1
    scoring_batch: int = SCORING_BATCH

    def check(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not self.ratio > 0:
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
    runs = [scoring_run(ctx.data, ctx.protocol, ctx.cache, ctx.device, plan, derive_seed("cad-scoring", s))
            for s in range(p.scoring_seeds)]
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

    def select(self, ctx: SelectionContext, ipc: int, seed: int) -> Selection:
        check_ipc(ctx, ipc)
        cad, info = compute_cad(ctx, self.p)
        chosen = np.concatenate([members[ranked(cad[members], ipc, self.p.order)]
                                 for members in ctx.class_members()])
        return from_indices(ctx, chosen, self.provenance(ipc, seed, **info, **difficulty_record(ctx, chosen),
                                                         cad=np.round(cad[chosen], 6).tolist()))
