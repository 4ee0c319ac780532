"""Derived metrics of a study: pure pandas functions over the child runs read from MLflow.

Accuracies are fractions in [0, 1]. A *cell* is (selector variant, IPC, label
regime, budget in steps); ``A(s, k, r, S)`` is the mean test accuracy of cell
(s, k, r, S) over every seed of every finished trial in it, and ``sd(...)``
its sample standard deviation over those seeds (ddof 1; undefined for one
seed). The full-data reference cell ``full`` (IPC 0) exists once per
(regime, budget).

Tables
- ``trial_table``: one row per child run (every status), typed axes.
- ``tidy``: one row per finished trial *and seed* (long format of the
  ``test_acc_seed{r}`` metrics), column ``test_acc``.
- ``summarise``: per cell ``acc_mean``, ``acc_std``, ``n`` (seed rows) and
  ``trials``.

Derived metrics (``derive``), per cell (s, k, r, S):
- gain over random, under the identical protocol:
  ``gain = A(s, k, r, S) - A(random, k, r, S)``;
- seed spread of that gain: ``spread = sqrt(sd(s, k, r, S)^2 + sd(random, k, r, S)^2)``;
  ``gain_exceeds_spread = gain > spread`` (False where the spread is undefined);
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
S, ``gap = A(full, hl, S) - A(full, r, S)``; ``under_trained = gap > 0.03``
(more than 3 points). An under-trained soft-label protocol makes every subset
land at the same accuracy, which fakes "random is as good as a coreset".

Families (``family_table``): each selector is a coreset method (keeps real
images) or a DD method (synthesises images), from the ``family`` tag of its
runs. Per (regime, budget, IPC): random's accuracy, and the best coreset and
the best DD method by mean accuracy with their gains over random: the paper's
"DD vs coreset vs random under each label regime" read off one table.

Headline (``best_per_regime``): per regime, the selector (not random, not
full) with the highest mean gain over random across that regime's cells
(IPC x budget, ties broken by name), with the number of its cells where the
gain exceeds the seed spread.

CA2D alignment (``alignment``), from cad_prune trials: a searched trial has
``selector_params.center`` (and ``.width``, default the selector's ``w``);
its window is [center - width/2, center + width/2] clipped to [0, 1]. The
best searched window per (regime, IPC, budget) is the one with the highest
``val_acc_mean`` (the search metric; never test accuracy). CAD-Prune's
predicted window is the CAD rule (``study.selectors.cad.cad_window``) applied
to the per-class frontier u*_c recorded in a trial's selection provenance
with that trial's delta, beta and w, averaged over classes. Compute per
class = samples seen (steps x batch) / number of classes.
"""
from __future__ import annotations

import ast
import json
import math

import pandas as pd

RANDOM, FULL, HL = "random", "full", "hl"
CORESET, DD = "coreset", "dd"
REGIME_ORDER = ("hl", "sl", "sl_kd")
CELL = ["label", "selector", "variant", "ipc", "regime", "steps"]
ORDER = ["regime", "steps", "selector", "variant", "ipc"]
TRIAL_METRICS = ["test_acc_mean", "test_acc_std", "val_acc_mean", "wall_seconds", "flops", "samples_seen",
                 "epochs_equivalent", "train_size", "teacher_test_acc"]
CURVES = ("val_acc", "train_loss")
PROTOCOL_GAP = 0.03
LRS_WEIGHT = 0.5


# ---------------------------------------------------------------- small helpers

def parse_value(text):
    """A param as logged (``str(value)``) back to a Python value where it reads as one."""
    if not isinstance(text, str):
        return text
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError):
            continue
    return text


def exact_mean(values) -> float:
    v = [float(x) for x in values]
    return math.fsum(v) / len(v) if v else math.nan


def sample_std(values) -> float:
    """sqrt(sum((x - mean)^2) / (n - 1)), with exact sums; NaN for fewer than two values."""
    v = [float(x) for x in values]
    if len(v) < 2:
        return math.nan
    m = math.fsum(v) / len(v)
    return math.sqrt(math.fsum((x - m) ** 2 for x in v) / (len(v) - 1))


def regime_sort_key(regime: str) -> tuple:
    return (REGIME_ORDER.index(regime) if regime in REGIME_ORDER else len(REGIME_ORDER), regime)


def ordered_regimes(values) -> list[str]:
    return sorted(set(values), key=regime_sort_key)


def order_cells(frame: pd.DataFrame, extra: list[str] | None = None) -> pd.DataFrame:
    if frame.empty:
        return frame.reset_index(drop=True)
    keys = [k for k in ORDER + (extra or []) if k in frame.columns]
    out = frame.assign(_r=frame["regime"].map(lambda r: regime_sort_key(r)[0])) if "regime" in frame else frame
    keys = ["_r" if k == "regime" else k for k in keys]
    out = out.sort_values(keys + (["regime"] if "regime" in frame else []), kind="stable")
    return out.drop(columns=["_r"], errors="ignore").reset_index(drop=True)


def variant_of(params: dict) -> str:
    """The selector's own parameters as ``k=v`` pairs (sorted), '' when it runs with its defaults."""
    pairs = sorted((k.split(".", 1)[1], v) for k, v in params.items() if k.startswith("selector_params."))
    return ",".join(f"{k}={v}" for k, v in pairs)


# ---------------------------------------------------------------- tables

def trial_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per child run (``Tracker.trials_frame``) with typed axes, the trial metrics and every param.

    ``label`` is the selector name, or ``selector[params]`` when the study ran
    that selector with more than one set of parameters. When two FINISHED
    runs share a config hash, the one that ended last is kept.
    """
    cols = ["run_id", "status", "config_hash", "label", "selector", "family", "variant", "ipc", "regime", "steps",
            "dataset", "model", "batch_size", "seeds"] + TRIAL_METRICS
    if runs.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for r in runs.to_dict("records"):
        params = {k[len("params."):]: v for k, v in r.items() if k.startswith("params.") and isinstance(v, str)}
        tags = {k[len("tags."):]: v for k, v in r.items() if k.startswith("tags.") and isinstance(v, str)}
        if tags.get("hardtruths.kind", "trial") != "trial":
            continue

        def axis(name, cast=str):
            value = parse_value(tags.get(name, params.get(name)))
            return cast(value) if value is not None else None

        row = {"run_id": r["run_id"], "status": r["status"], "end_time": r.get("end_time"),
               "config_hash": tags.get("config_hash", ""), "selector": axis("selector"),
               "family": tags.get("family", CORESET),
               "variant": variant_of(params), "ipc": axis("ipc", int), "regime": axis("regime"),
               "steps": axis("steps", int), "dataset": axis("dataset"), "model": axis("model"),
               "batch_size": axis("batch_size", int), "seeds": axis("seeds", int)}
        for m in TRIAL_METRICS:
            v = r.get(f"metrics.{m}")
            row[m] = float(v) if v is not None and not pd.isna(v) else math.nan
        seeds = {}
        for k, v in r.items():
            if k.startswith("metrics.test_acc_seed") and v is not None and not pd.isna(v):
                seeds[int(k[len("metrics.test_acc_seed"):])] = float(v)
        row["_seeds"] = seeds
        row.update({f"param.{k}": v for k, v in sorted(params.items())})
        rows.append(row)
    frame = pd.DataFrame(rows)
    # the full-data reference ignores IPC: a study that lists `full` among its selectors runs it once per IPC,
    # so it is filed under IPC 0 and only the first finished run per (regime, budget) is kept
    is_full = frame["selector"] == FULL
    frame.loc[is_full, "ipc"] = 0
    repeat = frame[is_full & (frame["status"] == "FINISHED")].duplicated(["regime", "steps", "variant"])
    frame = frame.drop(index=repeat[repeat].index)
    finished = frame[frame["status"] == "FINISHED"]
    dup = finished[finished.duplicated("config_hash", keep=False) & (finished["config_hash"] != "")]
    if not dup.empty:
        drop = (dup.sort_values(["end_time", "run_id"], kind="stable")
                .duplicated("config_hash", keep="last"))
        frame = frame.drop(index=drop[drop].index)
    variants = frame.groupby("selector")["variant"].nunique()
    frame["label"] = [s if variants[s] <= 1 or not v else f"{s}[{v}]" for s, v in zip(frame["selector"], frame["variant"])]
    params_cols = sorted(c for c in frame.columns if c.startswith("param."))
    frame = frame[cols + ["_seeds"] + params_cols]
    return order_cells(frame, ["run_id"])


def tidy(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per finished trial and seed: the long format of ``test_acc_seed{r}`` (column ``test_acc``)."""
    head = ["run_id", "config_hash", "label", "selector", "variant", "ipc", "regime", "steps", "seed", "test_acc"]
    done = trials[trials["status"] == "FINISHED"] if not trials.empty else trials
    rows = []
    for r in done.to_dict("records"):
        base = {k: v for k, v in r.items() if k not in ("_seeds", "status")}
        seeds = r["_seeds"] or {}
        if not seeds and not pd.isna(r["test_acc_mean"]):
            seeds = {-1: r["test_acc_mean"]}  # no per-seed metrics: the trial mean stands for one unknown seed
        rows += [{**base, "seed": seed, "test_acc": acc} for seed, acc in sorted(seeds.items())]
    rest = [c for c in (list(trials.columns) if not trials.empty else []) if c not in head + ["_seeds", "status"]]
    if not rows:
        return pd.DataFrame(columns=head + rest)
    frame = pd.DataFrame(rows)[head + rest]
    frame["seed"] = frame["seed"].astype("int64")
    return order_cells(frame, ["run_id", "seed"])


SUMMARY_COLUMNS = CELL + ["acc_mean", "acc_std", "n", "trials"]


def summarise(tidy_frame: pd.DataFrame) -> pd.DataFrame:
    """Per cell: mean and sample std of the seed accuracies, seed rows ``n`` and distinct trials."""
    if tidy_frame.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    rows = []
    for key, part in tidy_frame.groupby(CELL, sort=False):
        accs = part["test_acc"].tolist()
        rows.append({**dict(zip(CELL, key)), "acc_mean": exact_mean(accs), "acc_std": sample_std(accs),
                     "n": len(accs), "trials": part["run_id"].nunique()})
    return order_cells(pd.DataFrame(rows, columns=SUMMARY_COLUMNS), ["label"])


def lrs(ior: float, hlr: float, w: float = LRS_WEIGHT) -> float:
    """DD-Ranking's label-robust score on fractions: (exp(a) - exp(-1)) / (e - exp(-1)), a = w IOR - (1-w) HLR."""
    if pd.isna(ior) or pd.isna(hlr):
        return math.nan
    alpha = w * ior - (1 - w) * hlr
    return (math.exp(alpha) - math.exp(-1)) / (math.exp(1) - math.exp(-1))


DERIVED_COLUMNS = SUMMARY_COLUMNS + ["random_mean", "random_std", "gain", "spread", "gain_exceeds_spread",
                                     "full_mean", "frac_full", "hl_acc", "full_hl_acc", "hlr", "ior", "lrs"]


def derive(summary: pd.DataFrame, w: float = LRS_WEIGHT) -> pd.DataFrame:
    """Gain over random, its seed spread, fraction of full-data accuracy and LRS per cell (see module doc)."""
    if summary.empty:
        return pd.DataFrame(columns=DERIVED_COLUMNS)
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
           .merge(full_hl, on=["steps"], how="left"))
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


PROTOCOL_COLUMNS = ["regime", "steps", "full_acc", "full_hl_acc", "gap", "checked", "under_trained"]


def protocol_check(summary: pd.DataFrame, threshold: float = PROTOCOL_GAP) -> pd.DataFrame:
    """Per soft-label regime and budget: the full-data accuracy gap to hard labels, and whether it exceeds 3 points."""
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
                         "checked": checked, "under_trained": bool(checked and gap > threshold)})
    return pd.DataFrame(rows, columns=PROTOCOL_COLUMNS)


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


def family_lines(families: pd.DataFrame) -> list[str]:
    """One sentence per regime: the mean gain over random of the best coreset and of the best DD method."""
    lines = []
    for regime in ordered_regimes(families["regime"]) if not families.empty else []:
        part = families[families["regime"] == regime]
        gains = {kind: part[f"{kind}_gain"].dropna() for kind in (CORESET, DD)}
        said = [f"best {name} {100 * exact_mean(gains[kind]):+.1f} points over random ({len(gains[kind])} cells)"
                for kind, name in ((DD, "DD method"), (CORESET, "coreset")) if len(gains[kind])]
        if said:
            lines.append(f"{regime}: " + ", ".join(said) + ".")
    return lines


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
        gains = {label: exact_mean(p["gain"]) for label, p in part.groupby("label")}
        best = sorted(gains, key=lambda k: (-gains[k], k))[0]
        mine = part[part["label"] == best]
        rows.append({"regime": regime, "best": best, "mean_gain": gains[best], "cells": len(mine),
                     "cells_exceeding_spread": int(mine["gain_exceeds_spread"].sum()),
                     "cells_with_spread": int(mine["spread"].notna().sum())})
    return pd.DataFrame(rows, columns=BEST_COLUMNS)


def headline(best: pd.DataFrame, protocol: pd.DataFrame, failed: int = 0,
             families: pd.DataFrame | None = None) -> list[str]:
    """The report's conclusions as sentences, the protocol check first."""
    lines = []
    bad = protocol[protocol["under_trained"]] if not protocol.empty else protocol
    for r in bad.itertuples():
        lines.append(f"PROTOCOL WARNING: under {r.regime} at {r.steps} steps the full-data accuracy is "
                     f"{100 * r.full_acc:.1f}%, {100 * r.gap:.1f} points below hard labels ({100 * r.full_hl_acc:.1f}%): "
                     f"the protocol under-trains under soft labels, so its soft-label comparisons cannot be trusted.")
    unchecked = protocol[~protocol["checked"]] if not protocol.empty else protocol
    for r in unchecked.itertuples():
        lines.append(f"Protocol not checked for {r.regime} at {r.steps} steps: the study has no full-data reference "
                     f"under {'hard labels' if pd.isna(r.full_hl_acc) else r.regime} at that budget.")
    if not protocol.empty and protocol["checked"].all() and not protocol["under_trained"].any():
        lines.append("Protocol check passed: at every budget, soft-label full-data accuracy is within "
                     f"{100 * PROTOCOL_GAP:.0f} points of hard labels.")
    suspect = set(bad["regime"]) if not bad.empty else set()
    for r in best.itertuples():
        if not isinstance(r.best, str):
            lines.append(f"{r.regime}: no selector to compare with random.")
            continue
        spread = (f"the gain exceeds the seed spread in {r.cells_exceeding_spread}/{r.cells} cells"
                  if r.cells_with_spread else "no seed spread to compare with (one seed)")
        note = " (not trustworthy: the soft-label protocol under-trains)" if r.regime in suspect else ""
        lines.append(f"{r.regime}: best selector {r.best}, {100 * r.mean_gain:+.1f} points over random "
                     f"(mean over {r.cells} cells); {spread}{note}.")
    lines += family_lines(families if families is not None else pd.DataFrame())
    if failed:
        lines.append(f"{failed} trial(s) failed; their cells are missing from the tables.")
    return lines


# ---------------------------------------------------------------- CA2D alignment

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
    from study.selectors.cad import cad_window

    p = provenance.get("params", {}) or {}
    delta, beta, w = p.get("delta", 0.0), p.get("beta", 0.05), p.get("w", 0.3)
    wins = [cad_window(float(u), delta, beta, w) for u in provenance["u_star"]]
    return exact_mean(lo for lo, _ in wins), exact_mean(hi for _, hi in wins), exact_mean(provenance["u_star"])


def alignment(trials: pd.DataFrame, provenance: dict[str, dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(searched windows, one row per (regime, IPC, budget) with the best searched and the predicted window)."""
    if trials.empty:
        return pd.DataFrame(columns=SEARCHED_COLUMNS), pd.DataFrame(columns=ALIGNMENT_COLUMNS)
    cad = trials[(trials["selector"] == "cad_prune") & (trials["status"] == "FINISHED")]
    searched, groups = [], {}
    for r in cad.to_dict("records"):
        prov = provenance.get(r["run_id"])
        key = (r["regime"], r["ipc"], r["steps"])
        group = groups.setdefault(key, {"cpc": compute_per_class(r, prov), "prov": None})
        if prov and prov.get("u_star") and group["prov"] is None:
            group["prov"] = prov
        center = parse_value(r.get("param.selector_params.center"))
        if center is None or (isinstance(center, float) and math.isnan(center)):
            continue
        width = parse_value(r.get("param.selector_params.width"))
        if width is None or (isinstance(width, float) and math.isnan(width)):
            width = parse_value(r.get("param.selector_params.w")) or 0.3
        center, width = float(center), float(width)
        searched.append({"run_id": r["run_id"], "regime": r["regime"], "ipc": r["ipc"], "steps": r["steps"],
                         "compute_per_class": group["cpc"], "center": center, "width": width,
                         "lo": max(0.0, center - width / 2), "hi": min(1.0, center + width / 2),
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
