"""The report's figures: each function takes report frames and returns a matplotlib Figure.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``),
never through pyplot, so no GUI backend is chosen, nothing is switched at
import, and a figure is freed with its last reference (``fig.savefig`` renders
it with Agg).

Accuracies are plotted in percent. Every selector keeps one colour in every
figure; random is the reference (black, dashed, square markers) and the
full-data reference cell is a grey dotted line. A figure with nothing to show
is still produced, with one axes carrying a note that says why.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from study.analysis.trials import FULL, RANDOM, ordered_regimes

RANDOM_STYLE = {"color": "black", "linestyle": "--", "marker": "s", "linewidth": 2.0, "zorder": 5}
FULL_STYLE = {"color": "0.45", "linestyle": ":", "linewidth": 1.8}
FULL_LABEL = "full data"
RANDOM_REF_LABEL = "random (reference)"


def palette(labels) -> dict[str, tuple]:
    """One colour per selector label, stable for a given set of labels."""
    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    others = sorted(set(labels) - {RANDOM, FULL})
    return {label: cmap(i % cmap.N) for i, label in enumerate(others)}


def style(label: str, colors: dict) -> dict:
    if label == RANDOM:
        return dict(RANDOM_STYLE)
    return {"color": colors.get(label, "tab:blue"), "linestyle": "-", "marker": "o", "linewidth": 1.5}


def empty_figure(title: str, note: str) -> Figure:
    fig = Figure(figsize=(7, 3), layout="constrained")
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True, fontsize=10, transform=ax.transAxes)
    return fig


def grid(rows: int, cols: int, min_width: float = 0.0, **kw) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(max(min_width, 4.4 * cols), 3.4 * rows + 0.4), layout="constrained")
    return fig, fig.subplots(rows, cols, squeeze=False, **kw)


def selector_labels(frame: pd.DataFrame) -> list[str]:
    """Labels in drawing order: random first (the reference), then the others by name."""
    labels = sorted(set(frame["label"]) - {FULL})
    return ([RANDOM] if RANDOM in labels else []) + [label for label in labels if label != RANDOM]


def band(ax, x, mean, std, color) -> None:
    std = np.nan_to_num(np.asarray(std, dtype=float))
    if np.any(std > 0):
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)


def selector_lines(ax, part: pd.DataFrame, x: str, y: str, err: str, colors: dict) -> None:
    """A line per selector of ``y`` over ``x`` with a +-``err`` band (fractions in the frame, percent drawn)."""
    for label in selector_labels(part):
        rows = part[part["label"] == label].sort_values(x)
        st = style(label, colors)
        ax.plot(rows[x], 100 * rows[y], label=label, **st)
        band(ax, rows[x].to_numpy(float), 100 * rows[y].to_numpy(float), 100 * rows[err].to_numpy(float),
             st["color"])


def log_axis(ax, values, label: str) -> None:
    values = sorted(set(values))
    if len(values) > 1 and min(values) > 0:
        ax.set_xscale("log")
    ax.set_xticks(values)
    ax.set_xticklabels([str(v) for v in values])
    ax.minorticks_off()
    ax.set_xlabel(label)


def accuracy_vs_ipc(summary: pd.DataFrame) -> Figure:
    """The paper's central figure: one panel per regime (a row per budget), a line per selector with a seed band."""
    return accuracy_panels(summary, "Test accuracy vs IPC (mean +- std over seeds)", "steps", "ipc",
                           "images per class (IPC)", "{regime}, {value} steps", full_line)


def accuracy_vs_budget(summary: pd.DataFrame) -> Figure:
    """The saturation test: accuracy vs compute budget at fixed IPC (a row per IPC, a panel per regime)."""
    return accuracy_panels(summary, "Test accuracy vs compute budget at fixed IPC", "ipc", "steps",
                           "budget (student steps)", "{regime}, IPC {value}", full_curve)


def accuracy_panels(summary: pd.DataFrame, suptitle: str, row: str, x: str, xlabel: str, title: str,
                    full_reference) -> Figure:
    """A panel per (value of ``row``, regime): a line per selector over ``x``, and the full-data reference."""
    subsets = summary[summary["ipc"] > 0] if not summary.empty else summary
    if subsets.empty:
        return empty_figure(suptitle, "No finished subset trials in this study.")
    # a budget row stays even where only the full-data cell ran; an IPC row exists only where subsets did
    row_values = sorted((summary if row == "steps" else subsets)[row].unique())
    ticks = (subsets if x == "ipc" else summary)[x]
    regimes = ordered_regimes(summary["regime"])
    colors = palette(summary["label"])
    fig, axes = grid(len(row_values), len(regimes), sharey=True)
    for i, value in enumerate(row_values):
        for j, regime in enumerate(regimes):
            ax = axes[i, j]
            part = subsets[(subsets["regime"] == regime) & (subsets[row] == value)]
            selector_lines(ax, part, x, "acc_mean", "acc_std", colors)
            full_reference(ax, summary[(summary["selector"] == FULL) & (summary["regime"] == regime)], value)
            log_axis(ax, ticks, xlabel)
            ax.set_title(title.format(regime=regime, value=value))
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
            if part.empty:
                ax.text(0.5, 0.5, "no trials", ha="center", va="center", transform=ax.transAxes)
    axes[0, -1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    fig.suptitle(suptitle)
    return fig


def full_line(ax, full: pd.DataFrame, steps: int) -> None:
    """The full-data accuracy at this budget, as a level with its seed band (IPC does not apply)."""
    full = full[full["steps"] == steps]
    if full.empty:
        return
    mean, std = 100 * float(full["acc_mean"].iloc[0]), 100 * float(full["acc_std"].iloc[0])
    ax.axhline(mean, label=FULL_LABEL, **FULL_STYLE)
    if not math.isnan(std) and std > 0:
        ax.axhspan(mean - std, mean + std, color=FULL_STYLE["color"], alpha=0.1, linewidth=0)


def full_curve(ax, full: pd.DataFrame, ipc: int) -> None:
    """The full-data accuracy over the budgets (the same curve in every IPC row)."""
    full = full.sort_values("steps")
    if not full.empty:
        ax.plot(full["steps"], 100 * full["acc_mean"], label=FULL_LABEL, marker="^", **FULL_STYLE)


def gain_vs_ipc(derived: pd.DataFrame) -> Figure:
    """Gain over random vs IPC per regime (a row per budget); the band is the gain's seed spread."""
    part_all = derived[~derived["selector"].isin([RANDOM, FULL]) & derived["gain"].notna()] if not derived.empty \
        else derived
    if part_all.empty:
        return empty_figure("Gain over random vs IPC",
                            "No selector has a random control under the same protocol in this study.")
    regimes, budgets = ordered_regimes(derived["regime"]), sorted(derived["steps"].unique())
    colors = palette(derived["label"])
    fig, axes = grid(len(budgets), len(regimes), sharey=True)
    for i, steps in enumerate(budgets):
        for j, regime in enumerate(regimes):
            ax = axes[i, j]
            part = part_all[(part_all["regime"] == regime) & (part_all["steps"] == steps)]
            ax.axhline(0.0, label=RANDOM_REF_LABEL, color="black", linestyle="--", linewidth=1.5)
            selector_lines(ax, part, "ipc", "gain", "spread", colors)
            log_axis(ax, part_all["ipc"], "images per class (IPC)")
            ax.set_title(f"{regime}, {steps} steps")
            ax.set_ylabel("gain over random (points)")
            ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    fig.suptitle("Gain over random vs IPC (band: seed spread of the gain)")
    return fig


def example_grid(examples: list[tuple[str, str, np.ndarray | None]]) -> Figure:
    """One panel per selector: its logged picture of selected (or distilled) images, one row per class."""
    if not examples:
        return empty_figure("Example images", "No subset trials in this study.")
    cols = min(4, len(examples))
    rows = math.ceil(len(examples) / cols)
    fig, axes = grid(rows, cols, min_width=6.0)
    flat = list(axes.ravel())
    for ax, (label, caption, image) in zip(flat, examples):
        ax.set_title(f"{label}\n{caption}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if image is None:
            ax.text(0.5, 0.5, "no picture logged", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
    for ax in flat[len(examples):]:
        fig.delaxes(ax)
    fig.suptitle("Example images per selector (seed 0, one row per class)")
    return fig
