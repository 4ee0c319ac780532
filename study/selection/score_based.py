"""Selectors that rank each class by one cached difficulty score (study.selection.scores) and keep part of its range.

Every difficulty selector takes ``keep``: ``"hard"`` (the highest scores,
what each score's paper keeps), ``"easy"`` (the lowest) or ``"window"`` with
``window=(lo, hi)``, a band of the within-class difficulty percentile
(0 = easiest, 1 = hardest) sampled stratified, one pick per equal-size
stratum, as CAD-Prune samples its window. A window holding fewer than IPC
samples grows to the IPC samples nearest to it, so ``(0.5, 0.5)`` is the IPC
samples around the median. Easy and hard are those degenerate windows at 0
and 1, so one rule serves all three; ties in a score are broken by dataset
index, which is deterministic and unrelated to difficulty.

Papers keep the hardest samples at mild pruning rates; at a few images per
class that is known to lose to random, and showing it is part of the study.
"""
from __future__ import annotations

import numpy as np

from study.core.errors import StudyError
from study.selection.scores import compute_scores, resolve_score_params, score_options
from study.selection.base import Selection, SelectionContext, Selector, check_ipc, from_indices, register_selector
from study.selection.difficulty import percentiles, stratified_window_pick

KEEP_WINDOWS = {"easy": (0.0, 0.0), "hard": (1.0, 1.0)}


def keep_window(keep: str, window, default: tuple[float, float]) -> tuple[float, float]:
    """The percentile window that ``keep`` (and ``window``, only with keep="window") stand for."""
    if keep not in (*KEEP_WINDOWS, "window"):
        raise StudyError(f"keep must be 'easy', 'hard' or 'window', not {keep!r}.")
    if keep != "window":
        if window is not None:
            raise StudyError(f"A window applies only with keep='window', not with keep={keep!r}.")
        return KEEP_WINDOWS[keep]
    try:
        lo, hi = (float(v) for v in (default if window is None else window))
    except (TypeError, ValueError):
        raise StudyError(f"window must be two numbers (lo, hi), not {window!r}.") from None
    if not 0 <= lo <= hi <= 1:
        raise StudyError(f"window must satisfy 0 <= lo <= hi <= 1, not {window!r}.")
    return lo, hi


def without_hardest(scores: np.ndarray, beta: float, ipc: int) -> np.ndarray:
    """Positions of ``scores`` from easiest up, the hardest ``beta`` fraction dropped (never below ``ipc`` left).

    CCS and D2 drop the hardest tail first because at high pruning rates it
    is dominated by mislabelled and ambiguous samples.
    """
    order = np.argsort(scores, kind="stable")
    cut = min(int(beta * len(scores)), len(scores) - ipc)
    return order[:len(scores) - cut]


def check_beta(beta: float) -> None:
    if not 0 <= beta < 1:
        raise StudyError(f"beta (the hardest fraction dropped) must be in [0, 1), not {beta}.")


class ScoreSelector(Selector):
    """Reads the selector's score once per selection; subclasses pick positions within each class."""

    needs_teacher = True
    stochastic = False
    score_name = ""

    def __init__(self, score_params: dict, **params):
        unknown = sorted(set(score_params) - set(score_options(self.score_name)))
        if unknown:
            valid = ", ".join([*params, *score_options(self.score_name)])
            raise StudyError(f"Selector {self.name!r} has no option(s) {unknown}; its options are: {valid}.")
        self.score_params = resolve_score_params(self.score_name, score_params)
        super().__init__(**params, **score_params)

    def provenance(self, ipc: int, seed: int, **extra) -> dict:
        return super().provenance(ipc, seed, score=self.score_name, score_params=self.score_params, **extra)

    def select(self, ctx: SelectionContext, ipc: int, seed: int) -> Selection:
        check_ipc(ctx, ipc)
        scores = compute_scores(ctx, self.score_name, **self.score_params).double().numpy()
        rng = np.random.default_rng(seed)
        picks = [members[self.pick(ctx, members, scores[members], ipc, rng)] for members in ctx.class_members()]
        return from_indices(ctx, np.concatenate(picks), self.provenance(ipc, seed))

    def pick(self, ctx: SelectionContext, members: np.ndarray, scores: np.ndarray, ipc: int,
             rng: np.random.Generator) -> np.ndarray:
        """Positions (into ``members``) of ``ipc`` distinct samples of one class, given their scores."""
        raise NotImplementedError


class DifficultySelector(ScoreSelector):
    """Keeps the easy end, the hard end or a stratified window of one class's difficulty percentiles."""

    default_keep = "hard"
    default_window = (0.0, 1.0)

    def __init__(self, keep: str | None = None, window=None, **score_params):
        keep = keep or self.default_keep
        self.window = keep_window(keep, window, self.default_window)
        self.stochastic = self.window[0] < self.window[1]
        super().__init__(score_params, keep=keep, window=list(self.window))

    def pick(self, ctx, members, scores, ipc, rng):
        return stratified_window_pick(percentiles(scores), *self.window, ipc, rng)


@register_selector("forgetting")
class Forgetting(DifficultySelector):
    """Toneva et al.: keep the most forgotten samples, never-learned ones first."""

    score_name = "forgetting"


@register_selector("el2n")
class EL2N(DifficultySelector):
    """Paul et al.: keep the highest early-training error norms."""

    score_name = "el2n"


@register_selector("grand")
class GraNd(DifficultySelector):
    """Paul et al.: keep the largest (last-layer) gradient norms."""

    score_name = "grand"


@register_selector("aum")
class AUM(DifficultySelector):
    """Pleiss et al.'s margin as a coreset score (as CCS's baselines use it): keep the lowest AUM."""

    score_name = "aum"


@register_selector("entropy")
class Entropy(DifficultySelector):
    """Coleman et al.: keep the samples the trained model is least sure about."""

    score_name = "entropy"


@register_selector("margin")
class Margin(DifficultySelector):
    score_name = "margin"


@register_selector("least_confidence")
class LeastConfidence(DifficultySelector):
    score_name = "least_confidence"


@register_selector("dyn_unc")
class DynUnc(DifficultySelector):
    """He et al.: keep the samples whose true-class probability fluctuates most during training."""

    score_name = "dyn_unc"


@register_selector("moderate")
class Moderate(DifficultySelector):
    """Moderate-DS (Xia et al.): the band of distances to the class median feature centred on their median.

    Neither the most typical nor the most atypical: the paper's point is that
    the median band is robust across pruning rates, so the default window is
    the IPC samples around the 50th percentile.
    """

    score_name = "centre_distance"
    default_keep = "window"
    default_window = (0.5, 0.5)


def equal_width_strata(scores: np.ndarray, strata: int) -> np.ndarray:
    """Stratum of each score when [min, max] is cut into ``strata`` ranges of equal width."""
    lo, hi = scores.min(), scores.max()
    if hi == lo:
        return np.zeros(len(scores), dtype=np.int64)
    return np.minimum(((scores - lo) / (hi - lo) * strata).astype(np.int64), strata - 1)


def ccs_budgets(sizes: np.ndarray, budget: int) -> np.ndarray:
    """CCS's allocation: strata from smallest up, each takes min(size, remaining budget // strata left).

    Small strata (the sparse ends of the difficulty range) get all they have,
    the rest is spread evenly, so coverage of the range comes first.
    """
    budgets = np.zeros(len(sizes), dtype=np.int64)
    for done, s in enumerate(np.argsort(sizes, kind="stable")):
        budgets[s] = min(int(sizes[s]), budget // (len(sizes) - done))
        budget -= budgets[s]
    return budgets


@register_selector("ccs")
class CCS(ScoreSelector):
    """Coverage-centric coreset selection (Zheng et al., ICLR 2023), per class.

    Drop the ``beta`` hardest, cut the remaining score range into ``strata``
    equal-width strata, allocate IPC with :func:`ccs_budgets`, sample
    uniformly inside each stratum. Defaults: AUM, the paper's main score;
    50 strata, the paper's; beta 0.1: the paper tunes beta per pruning rate
    (larger when pruning harder), 0.1 is a moderate cut for a few images per
    class, not a tuned value. CCS defines its own coverage of the difficulty
    range, so it takes ``beta`` instead of keep/window.
    """

    stochastic = True

    def __init__(self, score: str = "aum", beta: float = 0.1, strata: int = 50, **score_params):
        check_beta(beta)
        if int(strata) != strata or strata < 1:
            raise StudyError(f"CCS needs a positive whole number of strata, not {strata}.")
        self.score_name, self.beta, self.strata = score, beta, int(strata)
        super().__init__(score_params, score=score, beta=beta, strata=self.strata)

    def pick(self, ctx, members, scores, ipc, rng):
        kept = without_hardest(scores, self.beta, ipc)
        stratum = equal_width_strata(scores[kept], self.strata)
        budgets = ccs_budgets(np.bincount(stratum, minlength=self.strata), ipc)
        return np.concatenate([rng.choice(kept[stratum == s], size=b, replace=False)
                               for s, b in enumerate(budgets) if b])
