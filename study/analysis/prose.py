"""The report's conclusions in sentences, from the tables of :mod:`.summary`."""
from __future__ import annotations

import statistics

import pandas as pd

from study.analysis.summary import PROTOCOL_GAP
from study.analysis.trials import CORESET, DD, ordered_regimes


def versus_random(gain: float) -> str:
    """A mean gain in words: a selector below random is said to be below it, not "-15.7 points over" it."""
    return f"{100 * gain:+.1f} points over random" if gain >= 0 else f"{100 * -gain:.1f} points below random"


def family_lines(families: pd.DataFrame) -> list[str]:
    """One sentence per regime: the mean gain over random of the best coreset and of the best DD method."""
    lines = []
    for regime in ordered_regimes(families["regime"]) if not families.empty else []:
        part = families[families["regime"] == regime]
        gains = {kind: part[f"{kind}_gain"].dropna() for kind in (CORESET, DD)}
        said = [f"best {name} {versus_random(statistics.fmean(gains[kind]))} "
                f"({len(gains[kind])} cells)" for kind, name in ((DD, "DD method"), (CORESET, "coreset"))
                if len(gains[kind])]
        if said:
            lines.append(f"{regime}: " + ", ".join(said) + ".")
    return lines


def headline(best: pd.DataFrame, protocol: pd.DataFrame, failed: int = 0,
             families: pd.DataFrame | None = None) -> list[str]:
    """The report's conclusions as sentences, the protocol check first."""
    lines = []
    bad = protocol[protocol["under_trained"]] if not protocol.empty else protocol
    for r in bad.itertuples():
        fix = (f"this study's {r.fix_steps:.0f}-step budget brings it within {100 * PROTOCOL_GAP:.0f} point"
               if r.fix_measured else
               f"no budget of this study closes the gap; try {r.fix_steps:.0f} steps or more")
        lines.append(f"PROTOCOL WARNING: under {r.regime} at {r.steps} steps the full-data accuracy is "
                     f"{100 * r.full_acc:.1f}%, {100 * r.gap:.1f} points below hard labels ({100 * r.full_hl_acc:.1f}%): "
                     f"the protocol under-trains under soft labels, so its soft-label comparisons cannot be trusted; "
                     f"{fix}.")
    unchecked = protocol[~protocol["checked"]] if not protocol.empty else protocol
    for r in unchecked.itertuples():
        lines.append(f"Protocol not checked for {r.regime} at {r.steps} steps: the study has no full-data reference "
                     f"under {'hard labels' if pd.isna(r.full_hl_acc) else r.regime} at that budget.")
    if not protocol.empty and protocol["checked"].all() and not protocol["under_trained"].any():
        lines.append("Protocol check passed: at every budget, soft-label full-data accuracy is within "
                     f"{100 * PROTOCOL_GAP:.0f} point of hard labels.")
    suspect = set(bad["regime"]) if not bad.empty else set()
    for r in best.itertuples():
        if not isinstance(r.best, str):
            lines.append(f"{r.regime}: no selector to compare with random.")
            continue
        spread = (f"the gain exceeds the seed spread in {r.cells_exceeding_spread}/{r.cells} cells"
                  if r.cells_with_spread else "no seed spread to compare with (one seed)")
        note = " (not trustworthy: the soft-label protocol under-trains)" if r.regime in suspect else ""
        lines.append(f"{r.regime}: best selector {r.best}, {versus_random(r.mean_gain)} "
                     f"(mean over {r.cells} cells); {spread}{note}.")
    lines += family_lines(families if families is not None else pd.DataFrame())
    if failed:
        lines.append(f"{failed} trial(s) failed; their cells are missing from the tables.")
    return lines
