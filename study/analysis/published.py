"""The paper's number beside each summary cell that reproduces one of its published cells
(search_spaces/published.py; the matching rule is study.runs.published's)."""
from __future__ import annotations

import math

import pandas as pd

from study.analysis.trials import parse_value
from study.runs.published import published_cell

PAPER_COLUMNS = ["paper_mean", "paper_std"]


def trial_config(row: dict) -> dict:
    """A trial row's config, nested again from its flat ``param.*`` columns (``model_kwargs.width``)."""
    config: dict = {}
    for key, text in row.items():
        if key.startswith("param.") and isinstance(text, str):
            *path, leaf = key[len("param."):].split(".")
            node = config
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = parse_value(text)
    return config


def with_published(summary: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """``summary`` with the published accuracy (fractions, as ``acc_mean``) of every cell whose trials reproduce
    a published cell, NaN elsewhere."""
    paper = {}
    finished = trials[trials["status"] == "FINISHED"] if not trials.empty else trials
    for row in finished.to_dict("records"):
        value = published_cell(trial_config(row))
        if value is not None:
            paper[(row["label"], row["ipc"], row["regime"], row["steps"])] = value
    keys = zip(summary["label"], summary["ipc"], summary["regime"], summary["steps"])
    found = [paper.get(key, (math.nan, math.nan)) for key in keys]
    return summary.assign(paper_mean=[m / 100 for m, _ in found], paper_std=[s / 100 for _, s in found])


def paper_note(mean: float) -> str:
    """``  paper: 18.6`` beside a cell the paper published, nothing elsewhere."""
    return "" if pd.isna(mean) else f"  paper: {100 * mean:.2f}"
