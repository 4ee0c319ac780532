"""The Tune function trainable: one trial = one study cell, with the search's choices applied on top."""
from __future__ import annotations

from ray import tune

from study.config import TrialConfig
from trainables.executors import execute, run_with_torch_trainer


def study_trial(config: dict, cells: list[TrialConfig], options: dict) -> None:
    """Run ``cells[config['cell']]`` (plus any searched parameters) with the study's executor."""
    cell = cells[config["cell"]]
    cfg = cell.with_choices({k: v for k, v in config.items() if k != "cell"})
    tags = {"executor": options["executor"], "tune_trial": tune.get_context().get_trial_id(), "search_group": cell.hash}
    if options["executor"] == "ray-train":
        run_with_torch_trainer(cfg, options["cache_dir"], tags, options["resources"], options["storage_path"],
                               f"train-{tune.get_context().get_trial_id()}", options["compile"])
        return
    metrics, folder = execute(cfg, options["cache_dir"], tags, int(options["resources"].get("CPU", 1)),
                              options["compile"])
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
