"""CA2D alignment: does CAD-Prune predict the difficulty window that a search over windows finds best?

From cad_prune trials (:mod:`.trials`): a searched trial has
``selector_params.center`` (and ``.width``, default the selector's ``w``); its
window is [center - width/2, center + width/2] clipped to [0, 1], as
:class:`study.selection.cad.CADParams` draws it. The best searched window per
(regime, IPC, budget) is the one with the highest ``val_acc_mean`` (the search
metric; never test accuracy). CAD-Prune's predicted window is the CAD rule
(``CADParams.window``) applied to the per-class frontier u*_c recorded in a
trial's selection provenance with that trial's delta, beta and w (CAD's
defaults where the provenance lacks them), averaged over classes. Compute per
class = samples seen (steps x batch) / number of classes.
"""
from __future__ import annotations

import math
import statistics

import pandas as pd

from study.analysis.trials import order_cells
from study.selection.cad import CADParams

CAD_SELECTOR = "cad_prune"
RULE_PARAMS = ("delta", "beta", "w")
SEARCHED_COLUMNS = ["run_id", "regime", "ipc", "steps", "compute_per_class", "center", "width", "lo", "hi",
                    "val_acc_mean", "test_acc_mean"]
ALIGNMENT_COLUMNS = ["regime", "ipc", "steps", "compute_per_class", "searched", "best_run_id", "best_center",
                     "best_width", "best_lo", "best_hi", "best_val_acc", "pred_lo", "pred_hi", "pred_center",
                     "u_star_mean"]


def num_classes(row: dict, provenance: dict | None) -> float:
    if not pd.isna(row.get("train_size", math.nan)) and row.get("ipc"):
        return round(row["train_size"] / row["ipc"])
    if provenance and provenance.get("u_star"):
        return len(provenance["u_star"])
    return math.nan


def compute_per_class(row: dict, provenance: dict | None) -> float:
    seen = row.get("samples_seen", math.nan)
    if pd.isna(seen) and row.get("batch_size"):
        seen = row["steps"] * row["batch_size"]
    return seen / num_classes(row, provenance)


def predicted_window(provenance: dict) -> tuple[float, float, float]:
    """CAD-Prune's window from a selection's provenance: (mean lo, mean hi, mean u*) over classes."""
    p = provenance.get("params", {}) or {}
    cad = CADParams(**{k: p[k] for k in RULE_PARAMS if k in p})
    wins = [cad.window(float(u)) for u in provenance["u_star"]]
    return (statistics.fmean(lo for lo, _ in wins), statistics.fmean(hi for _, hi in wins),
            statistics.fmean(provenance["u_star"]))


def alignment(trials: pd.DataFrame, provenance: dict[str, dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(searched windows, one row per (regime, IPC, budget) with the best searched and the predicted window)."""
    if trials.empty:
        return pd.DataFrame(columns=SEARCHED_COLUMNS), pd.DataFrame(columns=ALIGNMENT_COLUMNS)
    cad = trials[(trials["selector"] == CAD_SELECTOR) & (trials["status"] == "FINISHED")]
    searched, groups = [], {}
    for r in cad.to_dict("records"):
        prov = provenance.get(r["run_id"])
        key = (r["regime"], r["ipc"], r["steps"])
        group = groups.setdefault(key, {"cpc": compute_per_class(r, prov), "prov": None})
        if prov and prov.get("u_star") and group["prov"] is None:
            group["prov"] = prov
        if r["_params"].get("center") is None:
            continue
        cad_params = CADParams(**r["_params"])
        lo, hi = cad_params.window(0.0)  # a set centre ignores u*
        searched.append({"run_id": r["run_id"], "regime": r["regime"], "ipc": r["ipc"], "steps": r["steps"],
                         "compute_per_class": group["cpc"], "center": float(cad_params.center),
                         "width": float(cad_params.window_width), "lo": lo, "hi": hi,
                         "val_acc_mean": r["val_acc_mean"], "test_acc_mean": r["test_acc_mean"]})
    searched = pd.DataFrame(searched, columns=SEARCHED_COLUMNS)
    rows = []
    for (regime, ipc, steps), group in groups.items():
        row = {"regime": regime, "ipc": ipc, "steps": steps, "compute_per_class": group["cpc"]}
        mine = searched[(searched["regime"] == regime) & (searched["ipc"] == ipc) & (searched["steps"] == steps)]
        row["searched"] = len(mine)
        if not mine.empty:
            top = mine.sort_values(["val_acc_mean", "run_id"], ascending=[False, True], kind="stable").iloc[0]
            row.update({"best_run_id": top["run_id"], "best_center": top["center"], "best_width": top["width"],
                        "best_lo": top["lo"], "best_hi": top["hi"], "best_val_acc": top["val_acc_mean"]})
        if group["prov"] is not None:
            lo, hi, u = predicted_window(group["prov"])
            row.update({"pred_lo": lo, "pred_hi": hi, "pred_center": (lo + hi) / 2, "u_star_mean": u})
        rows.append(row)
    table = pd.DataFrame(rows, columns=ALIGNMENT_COLUMNS)
    return order_cells(searched, ["run_id"]), order_cells(table)
