"""Trial tables: a study's trials read from MLflow's child runs or from results.csv, typed once.

Both sources are read into the same *trial row*: the flat config (``selector``,
``ipc``, ``selector_params.center``, ...) with typed values, ``config_hash``,
``status``, the tag ``family`` and the trial metrics (``test_acc_mean``,
``test_acc_seed{r}``, ...); rows read from MLflow add ``run_id`` and
``end_time``. That is results.csv's own row format, so :func:`run_rows` is the
only translation, and :func:`trial_table` and :func:`tidy` serve the report,
summary.csv and the terminal table alike.

A *cell* is (selector variant, IPC, label regime, budget in steps). The
full-data reference cell ``full`` (IPC 0) exists once per (regime, budget).

- ``trial_table``: one row per trial (every status), typed axes, the trial
  metrics, each param as text (``param.*``), and the per-seed accuracies and
  typed selector parameters as dicts (``_seeds``, ``_val_seeds``, ``_params``).
- ``tidy``: one row per finished trial *and seed* (long format of the
  ``test_acc_seed{r}`` metrics), column ``test_acc``.
"""
from __future__ import annotations

import ast
import json
import math

import pandas as pd

from study.runs.config import TrialConfig

RANDOM, FULL, HL = "random", "full", "hl"
CORESET, DD = "coreset", "dd"
REGIME_ORDER = ("hl", "sl", "sl_kd")
CELL = ["label", "selector", "variant", "ipc", "regime", "steps"]
ORDER = ["regime", "steps", "selector", "variant", "ipc"]
TRIAL_METRICS = ["test_acc_mean", "test_acc_std", "val_acc_mean", "wall_seconds", "select_seconds", "flops",
                 "samples_seen", "epochs_equivalent", "train_size", "teacher_test_acc",
                 # a scoring-run selector's (study.runs.trial.SELECTION_METRICS), for the alignment report
                 "selection.mean_difficulty", "selection.scoring_train_images", "selection.scoring_el2n_images"]
SEED_METRIC = "test_acc_seed"
VAL_SEED_METRIC = "val_acc_seed"
SELECTOR_PARAM = "selector_params."
CONFIG_KEYS = frozenset(TrialConfig().to_dict())
KIND_TAG = "hardtruths.kind"


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


def is_nan(value) -> bool:
    """NaN is how a DataFrame fills a column a row lacks."""
    return isinstance(value, float) and math.isnan(value)


def present(value) -> bool:
    return value is not None and not is_nan(value)


def variant_text(value) -> str:
    """A selector parameter as a variant writes it; a whole float as an integer, because a table turns a
    column of integers into floats when a row lacks it (results.csv's rows)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


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
    return ",".join(f"{k}={variant_text(v)}" for k, v in sorted(params.items()))


def run_rows(runs: pd.DataFrame) -> list[dict]:
    """Trial rows from MLflow child runs (``Tracker.trials_frame``), each param parsed once into its type."""
    rows = []
    for r in runs.to_dict("records"):
        tags = {k[len("tags."):]: v for k, v in r.items() if k.startswith("tags.") and isinstance(v, str)}
        if tags.get(KIND_TAG, "trial") != "trial":
            continue
        params = {k[len("params."):]: parse_value(v) for k, v in r.items()
                  if k.startswith("params.") and isinstance(v, str)}
        metrics = {k[len("metrics."):]: v for k, v in r.items() if k.startswith("metrics.") and present(v)}
        rows.append({**tags, **params, **metrics, "run_id": r["run_id"], "status": r["status"],
                     "end_time": r.get("end_time")})
    return rows


def trial_table(rows: list[dict]) -> pd.DataFrame:
    """One row per trial from trial rows (:func:`run_rows`, or results.csv's rows), with typed axes.

    ``label`` is the selector name, or ``selector[params]`` when the study ran
    that selector with more than one set of parameters. When two FINISHED
    runs share a config hash, the one that ended last is kept. A results.csv row
    has no run id: its config hash stands for it.
    """
    cols = ["run_id", "status", "config_hash", "label", "selector", "family", "variant", "ipc", "regime", "steps",
            "dataset", "model", "batch_size", "seeds"] + TRIAL_METRICS
    if not rows:
        return pd.DataFrame(columns=cols)
    table = []
    for r in rows:
        config = {k: v for k, v in r.items() if k.split(".", 1)[0] in CONFIG_KEYS and not is_nan(v)}
        params = {k[len(SELECTOR_PARAM):]: v for k, v in config.items() if k.startswith(SELECTOR_PARAM)}
        row = {"run_id": r.get("run_id") or r["config_hash"], "status": r["status"], "end_time": r.get("end_time"),
               "config_hash": r.get("config_hash") or "", "selector": config["selector"],
               "family": r["family"] if present(r.get("family")) else CORESET, "variant": variant_of(params),
               "ipc": int(config["ipc"]), "regime": config["regime"], "steps": int(config["steps"]),
               "dataset": config.get("dataset"), "model": config.get("model"),
               "batch_size": int(config["batch_size"]), "seeds": int(config["seeds"])}
        row.update({m: float(r[m]) if present(r.get(m)) else math.nan for m in TRIAL_METRICS})
        row["_seeds"] = {int(k[len(SEED_METRIC):]): float(v) for k, v in r.items()
                         if k.startswith(SEED_METRIC) and present(v)}
        row["_val_seeds"] = {int(k[len(VAL_SEED_METRIC):]): float(v) for k, v in r.items()
                             if k.startswith(VAL_SEED_METRIC) and present(v)}
        row["_params"] = params
        row.update({f"param.{k}": str(v) for k, v in sorted(config.items())})
        table.append(row)
    frame = pd.DataFrame(table)
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
    frame = frame[cols + ["_seeds", "_val_seeds", "_params"] + params_cols]
    return order_cells(frame, ["run_id"])


def tidy(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per finished trial and seed: the long format of ``test_acc_seed{r}`` (column ``test_acc``)."""
    head = ["run_id", "config_hash", "label", "selector", "variant", "ipc", "regime", "steps", "seed", "test_acc"]
    internal = ["_seeds", "_val_seeds", "_params", "status"]
    done = trials[trials["status"] == "FINISHED"] if not trials.empty else trials
    rows = []
    for r in done.to_dict("records"):
        base = {k: v for k, v in r.items() if k not in internal}
        seeds = r["_seeds"] or {}
        if not seeds and not pd.isna(r["test_acc_mean"]):
            seeds = {-1: r["test_acc_mean"]}  # no per-seed metrics: the trial mean stands for one unknown seed
        rows += [{**base, "seed": seed, "test_acc": acc} for seed, acc in sorted(seeds.items())]
    rest = [c for c in (list(trials.columns) if not trials.empty else []) if c not in head + internal]
    if not rows:
        return pd.DataFrame(columns=head + rest)
    frame = pd.DataFrame(rows)[head + rest]
    frame["seed"] = frame["seed"].astype("int64")
    return order_cells(frame, ["run_id", "seed"])
