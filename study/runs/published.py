"""Which published cell (search_spaces/published.py) a trial's config reproduces, if any.

A trial matches a published cell when it trains the paper's student on the
paper's dataset under the protocol of the preset that follows the paper, for
its regime (the settings below, ``per_regime`` included, and one of the
preset's epoch budgets), with the selector at its defaults. A trial that
changed any of them (a narrower ConvNet, another recipe, budgets in steps)
answers another question and gets no paper number.
"""
from __future__ import annotations

from search_spaces import PRESETS
from search_spaces.published import MODELS, PUBLISHED
from study.core.protocol import Protocol

MATCHED = ("dataset", "model", "model_kwargs", "recipe", "lr", "augment", "temperature", "t2_scale", "cutmix_prob")


def paper_protocol(preset: str, regime: str) -> dict:
    """The settings a trial of ``regime`` must have to stand for the paper's cell under ``preset``."""
    p = PRESETS[preset]
    settings = {**Protocol().to_dict(), **p, **p.get("per_regime", {}).get(regime, {})}
    return {k: settings.get(k) for k in MATCHED}


def published_cell(config: dict) -> tuple[float, float] | None:
    """(mean, std) in percent of the paper's cell this trial config reproduces, or None."""
    if config.get("selector_params"):
        return None
    for (dataset, model, preset, selector, ipc, regime), value in PUBLISHED.items():
        if (config.get("selector"), config.get("ipc"), config.get("regime")) != (selector, ipc, regime):
            continue
        name, kwargs = MODELS[model]
        wanted = paper_protocol(preset, regime)
        own = {k: config.get(k) for k in MATCHED}
        if (wanted == own and (name, kwargs, dataset) == (own["model"], own["model_kwargs"], own["dataset"])
                and config.get("epochs") in PRESETS[preset]["budgets"]):
            return value
    return None
