"""CA2D alignment: does the best difficulty window move with the compute budget, and does CAD-Prune predict it?

Every window lies on the selector's one reference axis per (dataset, teacher)
(:func:`study.selection.cad.reference_axis`), so windows at different budgets
compare. From the trials of the CAD selectors (:data:`CAD_SELECTORS`):

- a *varied* trial sets its window (``lo`` or ``position``, and ``width``; a
  sweep or an Optuna search); :class:`CADParams` turns its parameters into the
  window, the selector's own rule, not a copy;
- a *rule* trial runs the selector's defaults: its window is CAD-Prune's
  prediction for that budget. The prediction and u* are read from a trial's
  selection provenance (``rule_windows``, ``u_star``: what the selector
  computed), preferring the rule trial's, averaged over classes.

Per (selector, regime, IPC, budget) the best window is the varied trial with
the highest mean validation accuracy (the search's metric; never test
accuracy), and again per seed on that seed's validation accuracy: the spread of
those per-seed best centres is the seed spread. The table sets the test
accuracy of the predicted window, of the best searched window and of random
(same regime, IPC, budget) side by side.

Per (selector, regime, IPC), :func:`correlations` gives Spearman's rank
correlation between the budget and the per-seed best centres, with a
percentile bootstrap interval over those (budget, centre) pairs. Compute per
class = samples seen (steps x batch) / number of classes.
"""
from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
from scipy import stats

from study.analysis.trials import RANDOM, order_cells
from study.selection.cad import CADParams

CAD_SELECTORS = ("cad_prune", "ca2d", "ca2d_coreset")
SEARCHED_COLUMNS = ["run_id", "selector", "regime", "ipc", "steps", "compute_per_class", "lo", "width", "center",
                    "val_acc_mean", "test_acc_mean"]
ALIGNMENT_COLUMNS = ["selector", "regime", "ipc", "steps", "compute_per_class", "searched", "best_run_id",
                     "best_lo", "best_width", "best_center", "best_val_acc", "best_test_acc", "seed_centers",
                     "seed_center_mean", "seed_center_std", "pred_lo", "pred_hi", "pred_center", "u_star_mean",
                     "pred_test_acc", "random_test_acc"]
CORRELATION_COLUMNS = ["selector", "regime", "ipc", "budgets", "points", "spearman", "ci_low", "ci_high",
                       "p_value"]
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


def num_classes(row: dict) -> float:
    if not pd.isna(row.get("train_size", math.nan)) and row.get("ipc"):
        return round(row["train_size"] / row["ipc"])
    return math.nan


def compute_per_class(row: dict) -> float:
    seen = row.get("samples_seen", math.nan)
    if pd.isna(seen) and row.get("batch_size"):
        seen = row["steps"] * row["batch_size"]
    return seen / num_classes(row)


def set_window(params: dict) -> tuple[float, float] | None:
    """(lo, width) of a trial that set its window, None for one that ran CAD's rule."""
    cad = CADParams.build(**{k: v for k, v in params.items() if k in CADParams().as_dict()})
    if not cad.is_set:
        return None
    lo, hi = cad.window(0.0, 1, 1)  # a set window depends on neither u* nor the class
    return lo, hi - lo


def predicted(provenance: dict) -> dict:
    """CAD's rule window and frontier from a selection's provenance, averaged over classes."""
    rule = provenance["rule_windows"]
    lo, hi = statistics.fmean(w[0] for w in rule), statistics.fmean(w[1] for w in rule)
    return {"pred_lo": lo, "pred_hi": hi, "pred_center": (lo + hi) / 2,
            "u_star_mean": statistics.fmean(provenance["u_star"])}


def best_by_seed(rows: pd.DataFrame) -> list[float]:
    """The centre of the best window for each seed, chosen on that seed's validation accuracy."""
    per_seed: dict[int, tuple[float, str, float]] = {}
    for r in rows.to_dict("records"):
        for seed, val in (r["_val_seeds"] or {}).items():
            key = (-val, r["run_id"])
            if seed not in per_seed or key < per_seed[seed][:2]:
                per_seed[seed] = (-val, r["run_id"], r["center"])
    return [per_seed[s][2] for s in sorted(per_seed)]


def alignment(trials: pd.DataFrame, provenance: dict[str, dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(varied windows, one row per (selector, regime, IPC, budget) with the best, predicted and random)."""
    if trials.empty:
        return pd.DataFrame(columns=SEARCHED_COLUMNS), pd.DataFrame(columns=ALIGNMENT_COLUMNS)
    done = trials[trials["status"] == "FINISHED"]
    cad = done[done["selector"].isin(CAD_SELECTORS)]
    random = {(r["regime"], r["ipc"], r["steps"]): r["test_acc_mean"]
              for r in done[(done["selector"] == RANDOM) & (done["variant"] == "")].to_dict("records")}
    searched, groups = [], {}
    for r in cad.to_dict("records"):
        key = (r["selector"], r["regime"], r["ipc"], r["steps"])
        group = groups.setdefault(key, {"cpc": compute_per_class(r), "pred": None, "pred_acc": math.nan})
        window = set_window(r["_params"])
        prov = provenance.get(r["run_id"]) or {}
        if prov.get("rule_windows") and (window is None or group["pred"] is None):
            group["pred"] = predicted(prov)
        if window is None:
            group["pred_acc"] = r["test_acc_mean"]
            continue
        lo, width = window
        searched.append({"run_id": r["run_id"], "selector": r["selector"], "regime": r["regime"], "ipc": r["ipc"],
                         "steps": r["steps"], "compute_per_class": group["cpc"], "lo": lo, "width": width,
                         "center": lo + width / 2, "val_acc_mean": r["val_acc_mean"],
                         "test_acc_mean": r["test_acc_mean"], "_val_seeds": r["_val_seeds"]})
    varied = pd.DataFrame(searched, columns=SEARCHED_COLUMNS + ["_val_seeds"])
    rows = []
    for (selector, regime, ipc, steps), group in groups.items():
        row = {"selector": selector, "regime": regime, "ipc": ipc, "steps": steps, "compute_per_class": group["cpc"],
               "pred_test_acc": group["pred_acc"], "random_test_acc": random.get((regime, ipc, steps), math.nan),
               **(group["pred"] or {})}
        mine = varied[(varied["selector"] == selector) & (varied["regime"] == regime) & (varied["ipc"] == ipc)
                      & (varied["steps"] == steps)]
        row["searched"] = len(mine)
        if not mine.empty:
            top = mine.sort_values(["val_acc_mean", "run_id"], ascending=[False, True], kind="stable").iloc[0]
            centers = best_by_seed(mine)
            row.update({"best_run_id": top["run_id"], "best_lo": top["lo"], "best_width": top["width"],
                        "best_center": top["center"], "best_val_acc": top["val_acc_mean"],
                        "best_test_acc": top["test_acc_mean"], "seed_centers": centers,
                        "seed_center_mean": statistics.fmean(centers) if centers else math.nan,
                        "seed_center_std": statistics.stdev(centers) if len(centers) > 1 else math.nan})
        rows.append(row)
    table = pd.DataFrame(rows, columns=ALIGNMENT_COLUMNS)
    return (order_cells(varied.drop(columns=["_val_seeds"]), ["run_id"]),
            order_cells(table.sort_values(["selector"], kind="stable")))


def spearman_with_interval(budgets: np.ndarray, centers: np.ndarray, seed: int = 0) -> dict:
    """Spearman's rho between budget and best centre, its p-value, and a percentile bootstrap interval over the
    (budget, centre) pairs (NaN where fewer than 3 pairs or fewer than 2 distinct budgets or centres)."""
    out = {"points": len(budgets), "budgets": len(set(budgets)), "spearman": math.nan, "ci_low": math.nan,
           "ci_high": math.nan, "p_value": math.nan}
    if len(budgets) < 3 or len(set(budgets)) < 2 or len(set(centers)) < 2:
        return out
    result = stats.spearmanr(budgets, centers)
    out.update({"spearman": float(result.statistic), "p_value": float(result.pvalue)})

    def rho(x, y):
        if len(np.unique(x)) < 2 or len(np.unique(y)) < 2:
            return 0.0  # a resample with one budget or one centre says nothing about an order
        return stats.spearmanr(x, y).statistic

    boot = stats.bootstrap((budgets, centers), rho, paired=True, vectorized=False, n_resamples=BOOTSTRAP_RESAMPLES,
                           confidence_level=CONFIDENCE, method="percentile", random_state=seed)
    out.update({"ci_low": float(boot.confidence_interval.low), "ci_high": float(boot.confidence_interval.high)})
    return out


def correlations(table: pd.DataFrame) -> pd.DataFrame:
    """Per (selector, regime, IPC): the rank correlation between budget and the per-seed best centres."""
    rows = []
    if table.empty:
        return pd.DataFrame(columns=CORRELATION_COLUMNS)
    for (selector, regime, ipc), part in table.groupby(["selector", "regime", "ipc"], sort=False):
        pairs = [(steps, c) for steps, centers in zip(part["steps"], part["seed_centers"])
                 if isinstance(centers, list) for c in centers]
        if not pairs:
            continue
        budgets, centers = (np.array(v, dtype=float) for v in zip(*pairs))
        rows.append({"selector": selector, "regime": regime, "ipc": ipc,
                     **spearman_with_interval(budgets, centers)})
    frame = pd.DataFrame(rows, columns=CORRELATION_COLUMNS)
    return order_cells(frame.sort_values(["selector"], kind="stable"))

