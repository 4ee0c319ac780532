"""Per-cell summaries and the metrics derived from them: pure pandas over a tidy table (:mod:`.trials`).

Accuracies are fractions in [0, 1]. ``A(s, k, r, S)`` is the mean test
accuracy of cell (s, k, r, S) over every seed of every finished trial in it,
and ``sd(...)`` its sample standard deviation over those seeds (ddof 1): the
seeds are pooled, never the per-trial means or deviations. ``sd`` is NaN for a
cell with fewer than two seeds; nothing is made up for it.

:func:`summarise` is the one summary of a study: the report's ``summary.*``,
summary.csv and the terminal table at the end of ``python -m study.scaling``.
Per cell: ``acc_mean``, ``acc_std``, ``n`` (seed rows) and ``trials``.

Derived metrics (``derive``), per cell (s, k, r, S):
- gain over random, under the identical protocol:
  ``gain = A(s, k, r, S) - A(random, k, r, S)``;
- seed spread of that gain: ``spread = sqrt(sd(s, k, r, S)^2 + sd(random, k, r, S)^2)``;
  ``gain_exceeds_spread = gain > spread`` (False where the spread is undefined);
- the same gain paired by seed: repeat i of a cell uses the same training seed as repeat i of random (and its
  own selection seed), so ``d_i = acc_i(s) - acc_i(random)`` over the seeds both have, ``paired_n`` of them,
  their mean ``paired_gain`` and its 95 % Student-t interval ``[paired_lo, paired_hi]``
  (``mean +- t(0.975, n - 1) sd(d) / sqrt(n)``, NaN below two pairs). Pairing removes the training-seed
  variation the two cells share, so the interval is narrower than ``spread`` where that variation dominates;
- fraction of full-data accuracy: ``frac_full = A(s, k, r, S) / A(full, r, S)``;
- label-robustness score, adapted from DD-Ranking's LRS (Li et al.,
  arXiv 2505.13300). DD-Ranking defines hard-label recovery
  HLR = Acc(real, hard) - Acc(syn, hard), improvement over random
  IOR = Acc(syn, any) - Acc(random, any) under the method's own evaluation,
  alpha = w IOR - (1 - w) HLR and LRS = (e^alpha - e^-1) / (e - e^-1),
  which maps alpha in [-1, 1] onto [0, 1]. Here, on fractions and at a fixed
  compute budget instead of "trained to convergence":
      HLR   = A(full, hl, S) - A(s, k, hl, S)
      IOR   = A(s, k, r, S) - A(random, k, r, S)          (= gain)
      alpha = w IOR - (1 - w) HLR,  w = 0.5 by default
      LRS   = (exp(alpha) - exp(-1)) / (exp(1) - exp(-1))
  so the hard-label term is always the subset's hard-label accuracy at the
  same IPC and budget, and the IOR term the regime's own gain over random.
  LRS is undefined (NaN) where the study has no hard-label cell for the
  subset or no hard-label full-data cell at that budget, and for the
  full-data cell itself. Random gets IOR = 0, so its LRS measures only how far
  a random subset is from full data under hard labels.

Protocol check (``protocol_check``): for every soft-label regime r and budget
S, ``gap = A(full, hl, S) - A(full, r, S)``; ``under_trained = gap > 0.01``
(more than 1 point). An under-trained soft-label protocol makes every subset
land at the same accuracy, which fakes "random is as good as a coreset"; a
gap of 1.5 points was measured to do so, hence 1 (benchmarks/README.md,
"Soft labels need enough steps"). ``fix_steps`` is the
budget that would fix an under-trained cell: the smallest larger budget of
the study where r passes (``fix_measured``), or else twice the largest budget
the study ran r at, a guess to try next (soft labels need more steps than
hard labels to pay off: benchmarks/README.md, same section).

Families (``family_table``): each selector is a coreset method (keeps real
images) or a DD method (synthesises images), from the ``family`` tag of its
runs. Per (regime, budget, IPC): random's accuracy, and the best coreset and
the best DD method by mean accuracy with their gains over random: the paper's
"DD vs coreset vs random under each label regime" read off one table.

Headline (``best_per_regime``): per regime, the selector (not random, not
full) with the highest mean gain over random across that regime's cells
(IPC x budget, ties broken by name), with the number of its cells where the
gain exceeds the seed spread.
"""
from __future__ import annotations

import math
import statistics

import pandas as pd
from scipy import stats

from study.analysis.trials import CELL, CORESET, DD, FULL, HL, RANDOM, order_cells, ordered_regimes

PROTOCOL_GAP = 0.01
LRS_WEIGHT = 0.5
SUMMARY_COLUMNS = CELL + ["acc_mean", "acc_std", "n", "trials"]



def mean_std(mean: float, std: float) -> str:
    """``91.2 +- 0.8`` in percent, or the mean alone where the spread is undefined (one seed)."""
    return f"{100 * mean:.1f}" if math.isnan(std) else f"{100 * mean:.1f} +- {100 * std:.1f}"

def summarise(tidy_frame: pd.DataFrame) -> pd.DataFrame:
    """Per cell: mean and sample std of the pooled seed accuracies (std NaN below two seeds), seed rows ``n``
    and distinct trials."""
    if tidy_frame.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    rows = []
    for key, part in tidy_frame.groupby(CELL, sort=False):
        accs = part["test_acc"].astype(float).tolist()
        rows.append({**dict(zip(CELL, key)), "acc_mean": statistics.fmean(accs),
                     "acc_std": statistics.stdev(accs) if len(accs) > 1 else math.nan,
                     "n": len(accs), "trials": part["run_id"].nunique()})
    return order_cells(pd.DataFrame(rows, columns=SUMMARY_COLUMNS), ["label"])


def lrs(ior: float, hlr: float, w: float = LRS_WEIGHT) -> float:
    """DD-Ranking's label-robust score on fractions: (exp(a) - exp(-1)) / (e - exp(-1)), a = w IOR - (1-w) HLR."""
    if pd.isna(ior) or pd.isna(hlr):
        return math.nan
    alpha = w * ior - (1 - w) * hlr
    return (math.exp(alpha) - math.exp(-1)) / (math.exp(1) - math.exp(-1))


DERIVED_COLUMNS = SUMMARY_COLUMNS + ["random_mean", "random_std", "gain", "spread", "gain_exceeds_spread",
                                     "paired_n", "paired_gain", "paired_lo", "paired_hi",
                                     "full_mean", "frac_full", "hl_acc", "full_hl_acc", "hlr", "ior", "lrs"]
PAIRED_COLUMNS = ["label", "ipc", "regime", "steps", "paired_n", "paired_gain", "paired_lo", "paired_hi"]


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of the mean of ``values``; the bounds are NaN below two values."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def paired_gains(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per cell: the seed-paired difference to random under the same (IPC, regime, budget) and its t-interval."""
    if per_seed.empty:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    rnd = {(k, r, S, seed): acc for k, r, S, seed, acc in per_seed.loc[per_seed["selector"] == RANDOM,
           ["ipc", "regime", "steps", "seed", "test_acc"]].itertuples(index=False)}
    rows = []
    for (label, ipc, regime, steps), part in per_seed[per_seed["selector"] != FULL].groupby(
            ["label", "ipc", "regime", "steps"], sort=False):
        diffs = [acc - rnd[(ipc, regime, steps, seed)] for seed, acc in zip(part["seed"], part["test_acc"])
                 if seed >= 0 and (ipc, regime, steps, seed) in rnd]
        mean, lo, hi = t_interval(diffs) if diffs else (math.nan, math.nan, math.nan)
        rows.append({"label": label, "ipc": ipc, "regime": regime, "steps": steps, "paired_n": len(diffs),
                     "paired_gain": mean, "paired_lo": lo, "paired_hi": hi})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def derive(summary: pd.DataFrame, w: float = LRS_WEIGHT, per_seed: pd.DataFrame | None = None) -> pd.DataFrame:
    """Gain over random, its seed spread, its seed-paired interval (from ``per_seed``, the tidy table), fraction of
    full-data accuracy and LRS per cell (see module doc)."""
    if summary.empty:
        return pd.DataFrame(columns=DERIVED_COLUMNS)
    paired = paired_gains(per_seed if per_seed is not None else pd.DataFrame())
    rnd = (summary[summary["selector"] == RANDOM].sort_values(["variant"], kind="stable")
           .drop_duplicates(["ipc", "regime", "steps"])
           [["ipc", "regime", "steps", "acc_mean", "acc_std"]]
           .rename(columns={"acc_mean": "random_mean", "acc_std": "random_std"}))
    full = (summary[summary["selector"] == FULL].drop_duplicates(["regime", "steps"])
            [["regime", "steps", "acc_mean"]].rename(columns={"acc_mean": "full_mean"}))
    hl = (summary[summary["regime"] == HL][["label", "ipc", "steps", "acc_mean"]]
          .rename(columns={"acc_mean": "hl_acc"}))
    full_hl = full[full["regime"] == HL][["steps", "full_mean"]].rename(columns={"full_mean": "full_hl_acc"})
    out = (summary.merge(rnd, on=["ipc", "regime", "steps"], how="left")
           .merge(full, on=["regime", "steps"], how="left")
           .merge(hl, on=["label", "ipc", "steps"], how="left")
           .merge(full_hl, on=["steps"], how="left")
           .merge(paired, on=["label", "ipc", "regime", "steps"], how="left"))
    out["paired_n"] = out["paired_n"].fillna(0).astype(int)
    out["gain"] = out["acc_mean"] - out["random_mean"]
    out["spread"] = [math.sqrt(a ** 2 + b ** 2) if not (pd.isna(a) or pd.isna(b)) else math.nan
                     for a, b in zip(out["acc_std"], out["random_std"])]
    out["gain_exceeds_spread"] = [bool(g > s) if not (pd.isna(g) or pd.isna(s)) else False
                                  for g, s in zip(out["gain"], out["spread"])]
    out["frac_full"] = out["acc_mean"] / out["full_mean"]
    out["hlr"] = out["full_hl_acc"] - out["hl_acc"]
    out["ior"] = out["gain"]
    out["lrs"] = [lrs(i, h, w) if s != FULL else math.nan for i, h, s in zip(out["ior"], out["hlr"], out["selector"])]
    return order_cells(out[DERIVED_COLUMNS], ["label"])


PROTOCOL_COLUMNS = ["regime", "steps", "full_acc", "full_hl_acc", "gap", "checked", "under_trained", "fix_steps",
                    "fix_measured"]


def protocol_check(summary: pd.DataFrame, threshold: float = PROTOCOL_GAP) -> pd.DataFrame:
    """Per soft-label regime and budget: the full-data accuracy gap to hard labels, whether it exceeds
    ``threshold``, and the budget that would fix it."""
    if summary.empty:
        return pd.DataFrame(columns=PROTOCOL_COLUMNS)
    full = summary[summary["selector"] == FULL].drop_duplicates(["regime", "steps"])
    acc = {(r, s): a for r, s, a in zip(full["regime"], full["steps"], full["acc_mean"])}
    rows = []
    for regime in ordered_regimes(summary["regime"]):
        if regime == HL:
            continue
        for steps in sorted(summary.loc[summary["regime"] == regime, "steps"].unique()):
            soft, hard = acc.get((regime, steps), math.nan), acc.get((HL, steps), math.nan)
            checked = not (pd.isna(soft) or pd.isna(hard))
            gap = hard - soft if checked else math.nan
            rows.append({"regime": regime, "steps": int(steps), "full_acc": soft, "full_hl_acc": hard, "gap": gap,
                         "checked": checked, "under_trained": bool(checked and gap > threshold + 1e-9)})
    return pd.DataFrame([{**row, **fixing_budget(row, rows)} for row in rows], columns=PROTOCOL_COLUMNS)


def fixing_budget(row: dict, rows: list[dict]) -> dict:
    """For an under-trained cell: the smallest larger budget where its regime passed, else twice the largest run."""
    if not row["under_trained"]:
        return {"fix_steps": math.nan, "fix_measured": False}
    same = [r for r in rows if r["regime"] == row["regime"]]
    passing = [r["steps"] for r in same if r["steps"] > row["steps"] and r["checked"] and not r["under_trained"]]
    if passing:
        return {"fix_steps": min(passing), "fix_measured": True}
    return {"fix_steps": 2 * max(r["steps"] for r in same), "fix_measured": False}


FAMILY_COLUMNS = ["regime", "steps", "ipc", "random", "best_coreset", "coreset_acc", "coreset_gain", "best_dd",
                  "dd_acc", "dd_gain"]


def family_table(derived: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Per (regime, budget, IPC): random, the best coreset and the best DD method (highest mean accuracy)."""
    if derived.empty:
        return pd.DataFrame(columns=FAMILY_COLUMNS)
    family = dict(zip(trials["label"], trials["family"]))
    rows = []
    for (regime, steps, ipc), cell in derived[derived["selector"] != FULL].groupby(["regime", "steps", "ipc"]):
        row = {"regime": regime, "steps": int(steps), "ipc": int(ipc), "random": cell["random_mean"].iloc[0]}
        for kind in (CORESET, DD):
            part = cell[(cell["selector"] != RANDOM) & (cell["label"].map(family) == kind)]
            best = part.sort_values(["acc_mean", "label"], ascending=[False, True], kind="stable").head(1)
            row[f"best_{kind}"] = best["label"].iloc[0] if len(best) else None
            row[f"{kind}_acc"] = best["acc_mean"].iloc[0] if len(best) else math.nan
            row[f"{kind}_gain"] = best["gain"].iloc[0] if len(best) else math.nan
        rows.append(row)
    return order_cells(pd.DataFrame(rows, columns=FAMILY_COLUMNS))


BEST_COLUMNS = ["regime", "best", "mean_gain", "cells", "cells_exceeding_spread", "cells_with_spread"]


def best_per_regime(derived: pd.DataFrame) -> pd.DataFrame:
    """Per regime: the selector with the highest mean gain over random, and in how many cells it beats the seed spread."""
    rows = []
    if derived.empty:
        return pd.DataFrame(columns=BEST_COLUMNS)
    for regime in ordered_regimes(derived["regime"]):
        part = derived[(derived["regime"] == regime) & ~derived["selector"].isin([RANDOM, FULL])
                       & derived["gain"].notna()]
        if part.empty:
            rows.append({"regime": regime, "best": None, "mean_gain": math.nan, "cells": 0,
                         "cells_exceeding_spread": 0, "cells_with_spread": 0})
            continue
        gains = {label: statistics.fmean(p["gain"]) for label, p in part.groupby("label")}
        best = sorted(gains, key=lambda k: (-gains[k], k))[0]
        mine = part[part["label"] == best]
        rows.append({"regime": regime, "best": best, "mean_gain": gains[best], "cells": len(mine),
                     "cells_exceeding_spread": int(mine["gain_exceeds_spread"].sum()),
                     "cells_with_spread": int(mine["spread"].notna().sum())})
    return pd.DataFrame(rows, columns=BEST_COLUMNS)
