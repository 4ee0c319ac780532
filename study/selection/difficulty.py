"""Difficulty percentiles, stratified picks inside a difficulty window, and the one fixed difficulty axis.

Shared by every selector that keeps a part of a score's range (the
score-based coresets, ``difficulty_window``) and by the CAD selectors, whose
provenance places their picks on the fixed axis so that selections made at
different budgets or scoring ratios compare.
"""
from __future__ import annotations

import numpy as np

from study.core.errors import StudyError
from study.selection.scores import compute_scores

# The fixed axis: the teacher's area under the margin, recorded while it trained (no extra compute), one per
# (dataset, teacher) whatever the budget.
REFERENCE_AXIS = "aum"


def class_percentiles(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Within-class percentile of ``scores`` (higher score -> higher u), as (rank + 0.5) / n in (0, 1)."""
    u = np.empty(len(scores), dtype=np.float64)
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        u[idx] = percentiles(scores[idx])
    return u


def percentiles(scores: np.ndarray) -> np.ndarray:
    order = np.argsort(scores, kind="stable")
    u = np.empty(len(scores), dtype=np.float64)
    u[order] = (np.arange(len(scores)) + 0.5) / max(1, len(scores))
    return u


def stratified_window_pick(u: np.ndarray, lo: float, hi: float, count: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of ``count`` entries of ``u`` inside [lo, hi], one drawn from each of ``count`` equal-size strata.

    The members inside the window, ordered by difficulty, are split into
    ``count`` contiguous strata and one member is drawn uniformly from each, so
    the picks cover the window evenly. When fewer than ``count`` members fall
    inside, the window grows to the ``count`` members nearest to it.
    """
    if count > len(u):
        raise StudyError(f"Cannot pick {count} samples from {len(u)}.")
    dist = np.maximum(lo - u, 0.0) + np.maximum(u - hi, 0.0)
    inside = int((dist == 0).sum())
    pool = np.lexsort((u, dist))[:max(count, inside)]
    pool = pool[np.argsort(u[pool], kind="stable")]
    return np.array([rng.choice(stratum) for stratum in np.array_split(pool, count)], dtype=np.int64)


def reference_axis(ctx, axis: str = REFERENCE_AXIS) -> np.ndarray:
    """Every training sample's within-class percentile (0 = easiest, 1 = hardest) of the cached score ``axis``;
    the same whatever the budget or IPC."""
    scores = compute_scores(ctx, axis).double().numpy()
    return class_percentiles(scores, ctx.data.train_y.numpy(), ctx.data.num_classes)


def difficulty_record(ctx, chosen: np.ndarray) -> dict:
    """The provenance of a selection's place on the fixed axis: its mean percentile, or why there is none (a
    teacher loaded from weights recorded no training dynamics)."""
    if "logit_margin" not in ctx.teacher.dynamics:
        return {"difficulty_axis": None, "mean_difficulty": None}
    return {"difficulty_axis": REFERENCE_AXIS, "mean_difficulty": float(reference_axis(ctx)[chosen].mean())}
