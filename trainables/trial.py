"""The Tune function trainable: one trial = one study cell, with Optuna's choices applied on top."""
from __future__ import annotations

import copy

from ray import tune

from study.config import TrialConfig
from trainables.executors import execute, run_with_torch_trainer


def apply_choices(cell: dict, choices: dict) -> dict:
    """Set Optuna's dotted choices (``selector_params.center``) inside a copy of the cell's config."""
    cfg = copy.deepcopy(cell)
    for key, value in choices.items():
        head, _, sub = key.partition(".")
        if sub:
            cfg[head] = {**cfg.get(head, {}), sub: value}
        else:
            cfg[head] = value
    return cfg


def study_trial(config: dict, cells: list[dict], options: dict) -> None:
    """Run ``cells[config['cell']]`` (plus any searched parameters) with the study's executor."""
    choices = {k: v for k, v in config.items() if k != "cell"}
    cfg = apply_choices(cells[config["cell"]], choices)
    tags = {"executor": options["executor"], "tune_trial": tune.get_context().get_trial_id(),
            "search_group": TrialConfig.from_dict(cells[config["cell"]]).hash}
    if options["executor"] == "ray-train":
        run_with_torch_trainer(cfg, options["cache_dir"], tags, options["resources"], options["storage_path"],
                               f"train-{tune.get_context().get_trial_id()}", options["compile"])
        return
    metrics, folder = execute(cfg, options["cache_dir"], tags, int(options["resources"].get("CPU", 1)),
                              options["compile"])
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
