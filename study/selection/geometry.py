"""Selectors that read the geometry of the teacher's penultimate features: herding, k-center, D2-pruning.

All three work per class on ``ctx.features`` and are deterministic: the
greedy rules have no random step (k-center starts from the sample nearest
the class mean instead of a random one), so a seed changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from study.core.errors import StudyError
from study.selection.base import Selector, register_selector
from study.selection.score_based import ScoreSelector, ScoredParams, check_beta, without_hardest


def herding_order(features: torch.Tensor, count: int) -> np.ndarray:
    """Welling's herding, the textbook rule iCaRL also uses: each step adds the sample that brings the
    mean of the chosen features closest to the class mean."""
    mean = features.mean(0)
    total = torch.zeros_like(mean)
    taken = torch.zeros(len(features), dtype=torch.bool)
    order = []
    for t in range(1, count + 1):
        gap = ((total + features) / t - mean).norm(dim=1).masked_fill(taken, float("inf"))
        i = int(gap.argmin())
        order.append(i)
        taken[i] = True
        total += features[i]
    return np.array(order, dtype=np.int64)


def kcenter_order(features: torch.Tensor, count: int) -> np.ndarray:
    """Sener & Savarese's k-center greedy: each step adds the sample farthest from all chosen ones.

    It starts from the sample nearest the class mean rather than a random one,
    so that IPC 1 gives the most central sample and the result needs no seed.
    """
    first = int((features - features.mean(0)).norm(dim=1).argmin())
    order = [first]
    nearest = (features - features[first]).norm(dim=1)
    nearest[first] = float("-inf")
    for _ in range(count - 1):
        i = int(nearest.argmax())
        order.append(i)
        nearest = torch.minimum(nearest, (features - features[i]).norm(dim=1))
        nearest[i] = float("-inf")
    return np.array(order, dtype=np.int64)


class FeatureSelector(Selector):
    needs_teacher = True

    def order(self, features: torch.Tensor, count: int) -> np.ndarray:
        raise NotImplementedError

    def choose(self, ctx, members, ipc, rng):
        return members[self.order(ctx.features[members].double(), ipc)]


@register_selector("herding")
class Herding(FeatureSelector):
    def order(self, features, count):
        return herding_order(features, count)


@register_selector("kcenter")
class KCenter(FeatureSelector):
    def order(self, features, count):
        return kcenter_order(features, count)


def d2_order(features: torch.Tensor, scores: torch.Tensor, count: int, k: int, gamma_f: float,
             gamma_r: float) -> np.ndarray:
    """D2-pruning's message passing on a kNN graph (Maharana et al., ICLR 2024).

    Forward: each node's score becomes s_i + sum_{j in kNN(i)} exp(-gamma_f d_ij) s_j,
    so hard samples in dense regions rank first. Selection: take the highest,
    then lower each of its neighbours by exp(-gamma_r d) times its score, so
    the next picks come from elsewhere. Features are L2-normalised so that the
    kernel widths mean the same for every model; scores are shifted to start
    at zero because the forward pass adds them up.
    """
    f = F.normalize(features.float(), dim=1)
    s = scores.double() - scores.min()
    dist = torch.cdist(f, f).double().fill_diagonal_(float("inf"))
    near, nbr = dist.topk(min(k, len(f) - 1), dim=1, largest=False)
    density = s + (torch.exp(-gamma_f * near) * s[nbr]).sum(1)
    damp = torch.exp(-gamma_r * near)
    order = []
    for _ in range(count):
        v = int(density.argmax())
        order.append(v)
        density[nbr[v]] -= damp[v] * density[v]
        density[v] = float("-inf")
    return np.array(order, dtype=np.int64)


@register_selector("d2")
class D2Pruning(ScoreSelector):
    """D2-pruning per class, after dropping the ``beta`` hardest as its code does (following CCS).

    Defaults: k = 5 neighbours and gamma_r = 0.1 from the authors' CIFAR-10
    command; gamma_f = 1, the unscaled kernel their forward pass uses; beta 0.1
    as for CCS. Their CIFAR-10 runs score with forgetting after a 200-epoch
    teacher; here teachers often run a handful of epochs, where forgetting
    counts are mostly zero and the graph would carry no signal, so the default
    score is AUM. Like CCS, D2 balances difficulty with coverage on its own,
    so it takes ``beta`` instead of keep/window.
    """

    @dataclass(frozen=True)
    class Params(ScoredParams):
        beta: float = 0.1
        k: int = 5
        gamma_f: float = 1.0
        gamma_r: float = 0.1

        def check(self) -> None:
            super().check()
            check_beta(self.beta)
            if int(self.k) != self.k or self.k < 1 or self.gamma_f < 0 or self.gamma_r < 0:
                raise StudyError(f"D2 needs k >= 1 neighbours and non-negative kernel widths; got k={self.k}, "
                                 f"gamma_f={self.gamma_f}, gamma_r={self.gamma_r}.")

    def pick(self, ctx, members, scores, ipc, rng):
        p = self.p
        kept = without_hardest(scores, p.beta, ipc)
        return kept[d2_order(ctx.features[members[kept]], torch.from_numpy(scores[kept]), ipc, int(p.k),
                             p.gamma_f, p.gamma_r)]
