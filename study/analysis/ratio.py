"""Compute alignment: is CAD's best scoring run the one that sees as many images as the student (ratio r = 1)?

The paper's CAD (docs/cad.md) scores the training set with a run of r x the
student's training images, r = 1 by its rule. A study that varies
``selector_params.ratio`` (the ``alignment_grid`` and ``ca2d_alignment``
spaces, docs/alignment.md) answers, per *ratio cell* (selector, its other
parameters, IPC, regime, budget) with two or more ratios:

- the best r: the ratio of highest mean test accuracy over seeds (ties: the
  smallest r). A trial without a ratio ran at the default, 1; two trials at
  one ratio (a search that chose it twice, or the r = 1 reference beside it)
  are averaged seed by seed.
- its bootstrap interval: the seeds are drawn with replacement
  (:data:`RESAMPLES` times, an RNG seeded with :data:`BOOTSTRAP_SEED`), the
  same draw for every r, since repeat k trains with the same seed at every
  ratio (``TrialConfig.train_seed``), and the best r recomputed; the interval
  is the 2.5 and 97.5 % quantiles of those best ratios (the inverse empirical
  CDF, so its ends are ratios of the grid).
- ratios that share one scoring run count as one: below the run's floor
  (4 steps of 256, docs/alignment.md) every small ratio gets the same run,
  so CAD-Prune's selections at those ratios are one selection. The runs are
  told apart by the trials' ``selection.scoring_train_images``; an interval
  that reaches one of them spans them all, and ``best_run_ratios`` lists the
  ratios that share the best r's run.
- r = 1 against it: the accuracy at r = 1, its gap to the best, whether r = 1
  lies inside the interval, and random's accuracy in the same (IPC, regime,
  budget).

Accuracies are fractions; the figure draws percent. With 3 seeds a resample
is one of 10 multisets, so the interval is coarse: it says which ratios some
seeds prefer, not a fine confidence bound.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from study.analysis.trials import RANDOM, order_cells, ordered_regimes, parse_value, variant_of

RATIO = "ratio"
DEFAULT_RATIO = 1.0
RESAMPLES = 2000
BOOTSTRAP_SEED = 0
QUANTILES = (0.025, 0.975)
CELL = ["selector", "variant", "ipc", "regime", "steps"]
ALIGNMENT_COLUMNS = CELL + ["epochs", "seeds", "ratios", "best_ratio", "best_run_ratios", "ratio_lo", "ratio_hi",
                            "best_acc", "acc_at_1", "gap_at_1", "r1_inside", "random_acc"]
SCORING_IMAGES = "selection.scoring_train_images"
CURVE_METRICS = ["selection.mean_difficulty", SCORING_IMAGES, "selection.scoring_el2n_images"]
CURVE_COLUMNS = CELL + ["epochs", RATIO, "acc_mean", "acc_std", "n", "random_acc"] + CURVE_METRICS


def ratio_text(r: float) -> str:
    """A ratio as the grid states it: 4, 1, 1/4, 1/16."""
    return str(Fraction(r).limit_denominator(1024))


def epochs_of(row: dict) -> float:
    value = parse_value(row.get("param.epochs"))
    return float(value) if isinstance(value, (int, float)) else math.nan


def ratio_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The finished trials of every selector that some trial of the study ran with a ``ratio``: their ratio
    (1 where unset) and their other parameters as ``variant``."""
    if trials.empty:
        return pd.DataFrame()
    done = trials[trials["status"] == "FINISHED"]
    selectors = {s for s, p in zip(done["selector"], done["_params"]) if RATIO in p}
    rows = []
    for r in done[done["selector"].isin(selectors)].to_dict("records"):
        params = dict(r["_params"])
        ratio = params.pop(RATIO, None)
        rows.append({**r, RATIO: float(DEFAULT_RATIO if ratio is None else ratio), "variant": variant_of(params),
                     "epochs": epochs_of(r)})
    return pd.DataFrame(rows)


def scoring_runs(cell: pd.DataFrame, ratios: np.ndarray) -> np.ndarray:
    """An id per ratio, equal for ratios whose scoring runs saw the same training images (the same run), and
    a ratio of its own where the trials did not log it."""
    images = cell.groupby(RATIO)[SCORING_IMAGES].mean() if SCORING_IMAGES in cell else pd.Series(dtype=float)
    return np.array([images[r] if r in images and images[r] == images[r] else -(i + 1.0)
                     for i, r in enumerate(ratios)])


def seed_matrix(cell: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(ratios ascending, accuracy (ratio, seed)): each ratio's trials averaged seed by seed, NaN where a
    ratio lacks a seed."""
    ratios = np.array(sorted(cell[RATIO].unique()))
    seeds = sorted({s for seeds in cell["_seeds"] for s in seeds})
    acc = np.full((len(ratios), len(seeds)), np.nan)
    for i, r in enumerate(ratios):
        for j, s in enumerate(seeds):
            values = [d[s] for d in cell.loc[cell[RATIO] == r, "_seeds"] if s in d]
            if values:
                acc[i, j] = float(np.mean(values))
    return ratios, acc


def column_means(acc: np.ndarray) -> np.ndarray:
    """Means over the last axis ignoring NaN, -inf where a row has no value (never the best)."""
    have = ~np.isnan(acc)
    counts = have.sum(-1)
    return np.where(counts > 0, np.where(have, acc, 0.0).sum(-1) / np.maximum(counts, 1), -np.inf)


def best_ratio(ratios: np.ndarray, acc: np.ndarray, runs: np.ndarray | None = None, resamples: int = RESAMPLES,
               seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(best r, interval low, interval high) of one cell's (ratio, seed) accuracies (module doc); ``runs``
    (:func:`scoring_runs`) makes ratios of one scoring run count as one."""
    runs = np.arange(len(ratios)) if runs is None else np.asarray(runs)
    low = np.array([ratios[runs == g].min() for g in runs])
    high = np.array([ratios[runs == g].max() for g in runs])
    best = ratios[np.argmax(column_means(acc))]
    draws = np.random.default_rng(seed).integers(0, acc.shape[1], size=(resamples, acc.shape[1]))
    boot = np.argmax(column_means(acc[:, draws]), axis=0)  # acc[:, draws]: (ratio, resample, seed)
    lo = np.quantile(low[boot], QUANTILES[0], method="inverted_cdf")
    hi = np.quantile(high[boot], QUANTILES[1], method="inverted_cdf")
    return float(best), float(lo), float(hi)


def random_accuracy(trials: pd.DataFrame) -> dict:
    """(IPC, regime, steps) -> random's mean test accuracy over its pooled seeds."""
    done = trials[(trials["status"] == "FINISHED") & (trials["selector"] == RANDOM)] if not trials.empty else trials
    pooled: dict = {}
    for r in done.to_dict("records"):
        pooled.setdefault((r["ipc"], r["regime"], r["steps"]), []).extend(r["_seeds"].values())
    return {k: float(np.mean(v)) for k, v in pooled.items() if v}


def alignment(trials: pd.DataFrame, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per ratio cell: the best r, its interval and r = 1 against it; per cell and ratio: the curve)."""
    found = ratio_trials(trials)
    if found.empty:
        return pd.DataFrame(columns=ALIGNMENT_COLUMNS), pd.DataFrame(columns=CURVE_COLUMNS)
    rnd = random_accuracy(trials)
    cells, curve = [], []
    for key, cell in found.groupby(CELL, sort=False):
        ratios, acc = seed_matrix(cell)
        if len(ratios) < 2 or not np.isfinite(column_means(acc)).any():
            continue
        base = {**dict(zip(CELL, key)), "epochs": float(cell["epochs"].iloc[0])}
        random_acc = rnd.get((base["ipc"], base["regime"], base["steps"]), math.nan)
        means = column_means(acc)
        for i, r in enumerate(ratios):
            part = cell[cell[RATIO] == r]
            row = acc[i][~np.isnan(acc[i])]
            curve.append({**base, RATIO: float(r), "acc_mean": means[i], "n": len(row), "random_acc": random_acc,
                          "acc_std": float(np.std(row, ddof=1)) if len(row) > 1 else math.nan,
                          **{m: float(part[m].mean()) if m in part else math.nan for m in CURVE_METRICS}})
        runs = scoring_runs(cell, ratios)
        best, lo, hi = best_ratio(ratios, acc, runs, resamples, seed)
        shared = ",".join(ratio_text(r) for r in ratios[runs == runs[ratios == best][0]])
        ran_1 = bool((ratios == 1.0).any())
        at_1 = float(means[ratios == 1.0][0]) if ran_1 else math.nan
        cells.append({**base, "seeds": acc.shape[1], "ratios": len(ratios), "best_ratio": best,
                      "best_run_ratios": shared, "ratio_lo": lo, "ratio_hi": hi, "best_acc": float(means.max()),
                      "acc_at_1": at_1, "gap_at_1": float(means.max()) - at_1,
                      "r1_inside": bool(lo <= 1.0 <= hi) if ran_1 else None, "random_acc": random_acc})
    return (order_cells(pd.DataFrame(cells, columns=ALIGNMENT_COLUMNS)),
            order_cells(pd.DataFrame(curve, columns=CURVE_COLUMNS), [RATIO]))


def verdict_lines(table: pd.DataFrame) -> list[str]:
    """One sentence per regime: in how many of its cells that ran r = 1 does r = 1 lie inside the interval."""
    lines = []
    for regime in ordered_regimes(table["regime"]) if not table.empty else []:
        part = table[(table["regime"] == regime) & table["r1_inside"].notna()]
        if part.empty:
            lines.append(f"Under {regime}, no cell that varies the scoring ratio ran r = 1.")
            continue
        inside = int(part["r1_inside"].astype(bool).sum())
        lines.append(f"Under {regime}, r = 1 lies inside the bootstrap interval of the best r in {inside} of "
                     f"{len(part)} cells.")
    return lines


def saturation_lines(table: pd.DataFrame) -> list[str]:
    """Per (IPC, regime): random's accuracy at the smallest and largest budget of the ratio cells and what the
    last budget step adds, so the report says whether its budgets run from far from saturated to saturated."""
    lines = []
    known = table.dropna(subset=["random_acc"]).drop_duplicates(["ipc", "regime", "steps"]) if not table.empty \
        else table
    for (ipc, regime), part in known.groupby(["ipc", "regime"], sort=False):
        part = part.sort_values("steps")
        if len(part) < 2:
            continue
        first, before, last = part.iloc[0], part.iloc[-2], part.iloc[-1]
        lines.append(f"Random at IPC {ipc} under {regime}: {pct(first.random_acc)} % at "
                     f"{budget_text(first.steps, first.epochs)}, {pct(last.random_acc)} % at "
                     f"{budget_text(last.steps, last.epochs)}; the last step, from "
                     f"{budget_text(before.steps, before.epochs)}, adds "
                     f"{100 * (last.random_acc - before.random_acc):+.1f} points.")
    return lines


def pct(value: float) -> str:
    return "-" if value != value else f"{100 * value:.1f}"


def budget_text(steps: int, epochs: float) -> str:
    return f"{steps} steps" if epochs != epochs else f"{epochs:g} epochs ({steps} steps)"


TEXT_HEAD = ["selector", "IPC", "regime", "budget", "seeds", "best r [95% interval]", "acc at best r",
             "acc at r = 1", "best - (r = 1) (points)", "random", "r = 1 inside"]


def text_rows(table: pd.DataFrame) -> list[list[str]]:
    """The alignment table as text (:data:`TEXT_HEAD`), for alignment.md and the terminal: accuracies in
    percent, ratios as the grid states them."""
    rows = []
    for r in table.itertuples():
        name = r.selector + (f" [{r.variant}]" if r.variant else "")
        gap = "-" if r.gap_at_1 != r.gap_at_1 else f"{100 * r.gap_at_1:.1f}"
        shared = f" (one run with {r.best_run_ratios})" if "," in r.best_run_ratios else ""
        inside = "-" if r.r1_inside is None or r.r1_inside != r.r1_inside else ("yes" if r.r1_inside else "no")
        rows.append([name, str(r.ipc), r.regime, budget_text(r.steps, r.epochs), str(r.seeds),
                     f"{ratio_text(r.best_ratio)}{shared} [{ratio_text(r.ratio_lo)}, {ratio_text(r.ratio_hi)}]",
                     pct(r.best_acc), pct(r.acc_at_1), gap, pct(r.random_acc), inside])
    return rows


def markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(TEXT_HEAD) + " |", "|" + "---|" * len(TEXT_HEAD)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in text_rows(table)]) + "\n"


def budget_key(steps: int, epochs: float) -> float:
    """What a budget's colour follows: its epochs where the study counts them (one colour at every IPC), else its
    steps."""
    return steps if epochs != epochs else epochs


def accuracy_vs_ratio(curve: pd.DataFrame) -> Figure:
    """A panel per (selector, IPC) row and regime column: test accuracy over r (log axis), a line per budget
    with its seed band, random at that budget as a dashed line of the same colour, r = 1 dotted grey."""
    panels = curve[["selector", "variant", "ipc"]].drop_duplicates().to_dict("records")
    regimes = ordered_regimes(curve["regime"])
    fig = Figure(figsize=(4.8 * len(regimes), 3.4 * len(panels) + 0.5), layout="constrained")
    axes = fig.subplots(len(panels), len(regimes), squeeze=False)
    budgets = sorted({budget_key(s, e) for s, e in zip(curve["steps"], curve["epochs"])})
    colors = dict(zip(budgets, colormaps["viridis"](np.linspace(0.0, 0.85, len(budgets)))))
    ratios = sorted(curve[RATIO].unique())
    for i, panel in enumerate(panels):
        for j, regime in enumerate(regimes):
            ax = axes[i, j]
            part = curve[(curve["selector"] == panel["selector"]) & (curve["variant"] == panel["variant"])
                         & (curve["ipc"] == panel["ipc"]) & (curve["regime"] == regime)]
            for steps, line in part.groupby("steps"):
                line = line.sort_values(RATIO)
                epochs = float(line["epochs"].iloc[0])
                color = colors[budget_key(steps, epochs)]
                label = budget_text(int(steps), epochs)
                mean, std = 100 * line["acc_mean"].to_numpy(float), 100 * np.nan_to_num(line["acc_std"].to_numpy(float))
                ax.plot(line[RATIO], mean, marker="o", color=color, label=label)
                ax.fill_between(line[RATIO], mean - std, mean + std, color=color, alpha=0.12, linewidth=0)
                if line["random_acc"].notna().any():
                    ax.axhline(100 * float(line["random_acc"].iloc[0]), color=color, linestyle="--",
                               linewidth=1.2, label=f"random, {label}")
            ax.axvline(1.0, color="0.5", linestyle=":", linewidth=1.2)
            ax.set_xscale("log", base=2)
            ax.set_xticks(ratios, [ratio_text(r) for r in ratios])
            ax.minorticks_off()
            name = panel["selector"] + (f" [{panel['variant']}]" if panel["variant"] else "")
            ax.set_title(f"{name}, IPC {panel['ipc']}, {regime}")
            ax.set_xlabel("scoring ratio r (scoring run's images / student's)")
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
            if part.empty:
                ax.text(0.5, 0.5, "no trials", ha="center", va="center", transform=ax.transAxes)
            else:
                handles = [h for h in ax.get_lines() if not h.get_label().startswith(("random", "_"))]
                ax.legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle("Test accuracy vs the scoring run's compute ratio r\n(mean +- std over seeds; dashed: random at "
                 "that budget; dotted: r = 1)")
    return fig
