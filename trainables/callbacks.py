"""The study driver's Tune callback: it hands each trial's events to the sink (study.runs.sink: live MLflow runs,
results.csv) and to the view (trainables.progress.TrialLines: terminal lines and the progress bar).

One callback serves one Tune run, whose cells it is built with: Tune's trial
config names a cell by its index and adds a search's choices. The callback
runs in the driver process only, so the sink has one writer.
"""
from __future__ import annotations

from ray import tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

from study.runs.config import TrialConfig
from study.runs.record import failure_record, read_record
from study.runs.sink import TrialSink
from trainables.executors import PROGRESS_METRICS, PROGRESS_STEP
from trainables.progress import TrialLines


class StudyCallback(tune.Callback):
    def __init__(self, cells: list[TrialConfig], sink: TrialSink, view: TrialLines):
        self.cells, self.sink, self.view = tuple(cells), sink, view

    def trial_config(self, trial) -> TrialConfig:
        return self.cells[trial.config["cell"]].with_choices({k: v for k, v in trial.config.items() if k != "cell"})

    def on_trial_start(self, iteration, trials, trial, **info):
        self.sink.started(trial.trial_id, self.trial_config(trial))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if PROGRESS_STEP in result:
            self.sink.progressed(trial.trial_id, result[PROGRESS_STEP], result[PROGRESS_METRICS])

    def on_trial_complete(self, iteration, trials, trial, **info):
        path = trial.last_result.get(CHECKPOINT_PATH_KEY) or (trial.checkpoint.path if trial.checkpoint else None)
        if path is None:
            self.ended(trial, failure_record(self.trial_config(trial), "the trial reported no result"))
            return
        with tune.Checkpoint(path).as_directory() as folder:
            self.ended(trial, read_record(folder), folder)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = trial.get_error() or "the trial failed without an error message"
        self.ended(trial, failure_record(self.trial_config(trial), str(error), {"tune_trial": trial.trial_id}))

    def ended(self, trial, record: dict, artifacts=None) -> None:
        self.sink.ended(record, artifacts, trial.trial_id)
        self.view.ended(record)
