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

from dataclasses import asdict, dataclass, field, make_dataclass
from typing import Any, ClassVar

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


@dataclass(frozen=True)
class KeepParams(Selector.Params):
    """What part of each class's difficulty range a selector keeps (see the module's docstring)."""

    keep: str = "hard"
    window: tuple[float, float] | None = None  # only with keep="window"; None: default_window
    default_window: ClassVar[tuple[float, float]] = (0.0, 1.0)

    def check(self) -> None:
        self.bounds()

    def bounds(self) -> tuple[float, float]:
        return keep_window(self.keep, self.window, self.default_window)


@dataclass(frozen=True)
class ScoredParams(Selector.Params):
    """A selector that ranks by a score of its choice: the score's name and that score's own parameters."""

    score: str = "aum"
    score_params: dict = field(default_factory=dict)

    def check(self) -> None:
        self.scored()

    def scored(self) -> tuple[str, dict]:
        """The score ranked by and its parameters, resolved."""
        return self.score, resolve_score_params(self.score, self.score_params)


def with_score(base: type, score: str) -> type:
    """``base`` with the parameters of the score ``score`` (study.selection.scores) as further fields, so a
    selector built on one score takes that score's parameters beside its own."""
    options = score_options(score)

    def scored(self) -> tuple[str, dict]:
        return score, resolve_score_params(score, {k: v for k, v in asdict(self).items() if k in options})

    extra = [(name, Any, field(default=default)) for name, default in options.items()]
    return make_dataclass(f"{base.__name__}With_{score}", extra, bases=(base,), frozen=True,
                          namespace={"scored": scored})


class ScoreSelector(Selector):
    """Reads one cached score per selection (its Params's ``scored()``); subclasses pick positions within each
    class."""

    needs_teacher = True

    def provenance(self, ipc: int, seed: int, **extra) -> dict:
        name, params = self.p.scored()
        return super().provenance(ipc, seed, score=name, score_params=params, **extra)

    def select(self, ctx: SelectionContext, ipc: int, seed: int) -> Selection:
        check_ipc(ctx, ipc)
        name, params = self.p.scored()
        scores = compute_scores(ctx, name, **params).double().numpy()
        rng = np.random.default_rng(seed)
        picks = [members[self.pick(ctx, members, scores[members], ipc, rng)] for members in ctx.class_members()]
        return from_indices(ctx, np.concatenate(picks), self.provenance(ipc, seed))

    def pick(self, ctx: SelectionContext, members: np.ndarray, scores: np.ndarray, ipc: int,
             rng: np.random.Generator) -> np.ndarray:
        """Positions (into ``members``) of ``ipc`` distinct samples of one class, given their scores."""
        raise NotImplementedError


class DifficultySelector(ScoreSelector):
    """Keeps the easy end, the hard end or a stratified window of one class's difficulty percentiles of one
    score; its parameters are ``keep``, ``window`` and that score's own (``Params = with_score(KeepParams,
    SCORE)``)."""

    def pick(self, ctx, members, scores, ipc, rng):
        return stratified_window_pick(percentiles(scores), *self.p.bounds(), ipc, rng)


@register_selector("forgetting")
class Forgetting(DifficultySelector):
    """Toneva et al.: keep the most forgotten samples, never-learned ones first."""

    Params = with_score(KeepParams, "forgetting")


@register_selector("el2n")
class EL2N(DifficultySelector):
    """Paul et al.: keep the highest early-training error norms."""

    Params = with_score(KeepParams, "el2n")


@register_selector("grand")
class GraNd(DifficultySelector):
    """Paul et al.: keep the largest (last-layer) gradient norms."""

    Params = with_score(KeepParams, "grand")


@register_selector("aum")
class AUM(DifficultySelector):
    """Pleiss et al.'s margin as a coreset score (as CCS's baselines use it): keep the lowest AUM."""

    Params = with_score(KeepParams, "aum")


@register_selector("entropy")
class Entropy(DifficultySelector):
    """Coleman et al.: keep the samples the trained model is least sure about."""

    Params = with_score(KeepParams, "entropy")


@register_selector("margin")
class Margin(DifficultySelector):
    Params = with_score(KeepParams, "margin")


@register_selector("least_confidence")
class LeastConfidence(DifficultySelector):
    Params = with_score(KeepParams, "least_confidence")


@register_selector("dyn_unc")
class DynUnc(DifficultySelector):
    """He et al.: keep the samples whose true-class probability fluctuates most during training."""

    Params = with_score(KeepParams, "dyn_unc")


@register_selector("moderate")
class Moderate(DifficultySelector):
    """Moderate-DS (Xia et al.): the band of distances to the class median feature centred on their median.

    Neither the most typical nor the most atypical: the paper's point is that
    the median band is robust across pruning rates, so the default window is
    the IPC samples around the 50th percentile.
    """

    @dataclass(frozen=True)
    class MedianBand(KeepParams):
        keep: str = "window"
        default_window: ClassVar[tuple[float, float]] = (0.5, 0.5)

    Params = with_score(MedianBand, "centre_distance")


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
    range, so it takes ``beta`` instead of keep/window, and its score is a parameter (``score`` and
    ``score_params``).
    """

    @dataclass(frozen=True)
    class Params(ScoredParams):
        beta: float = 0.1
        strata: int = 50

        def check(self) -> None:
            super().check()
            check_beta(self.beta)
            if int(self.strata) != self.strata or self.strata < 1:
                raise StudyError(f"CCS needs a positive whole number of strata, not {self.strata}.")

    def pick(self, ctx, members, scores, ipc, rng):
        strata = int(self.p.strata)
        kept = without_hardest(scores, self.p.beta, ipc)
        stratum = equal_width_strata(scores[kept], strata)
        budgets = ccs_budgets(np.bincount(stratum, minlength=strata), ipc)
        return np.concatenate([rng.choice(kept[stratum == s], size=b, replace=False)
                               for s, b in enumerate(budgets) if b])
