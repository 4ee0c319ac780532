"""The study driver's Tune callback: every finished or failed trial goes to MLflow, the ledger and the terminal.

It runs in the driver process only, so there is one writer to the tracking
store whatever the number of concurrent trials. A trial MLflow cannot take
stays in its checkpoint, from which study.runs.journal logs it later. In a
terminal a progress bar with the trials' ETA stays under the per-trial lines
(trainables.progress).
"""
from __future__ import annotations

import time

from ray import tune
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY
from rich.console import Console

from study.analysis.summary import mean_std
from study.runs.config import TrialConfig
from study.runs.journal import record_trial
from study.runs.ledger import Ledger
from study.runs.outcome import failure_record
from study.runs.records import read_record
from study.runs.tracking import Tracker
from trainables.progress import progress_bar


class StudyLogger(tune.Callback):
    def __init__(self, tracker: Tracker, parent_id: str, ledger: Ledger, cells: list[TrialConfig], total: int,
                 done_before: int = 0, console: Console | None = None):
        self.tracker, self.parent_id, self.ledger, self.cells = tracker, parent_id, ledger, cells
        self.total, self.done, self.failed = total, done_before, 0
        self.started = time.perf_counter()
        self.progress = progress_bar("trials", console)
        self.bar = self.progress.add_task("trials", total=total, completed=done_before)

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks with the experiment's state; a live bar (a thread, a terminal) stays here."""
        return {k: v for k, v in self.__dict__.items() if k != "progress"}

    def setup(self, **info):
        """Tune starts a run of trials (one per search group in an optuna space): show the bar from here."""
        self.progress.update(self.bar, completed=self.done)
        self.progress.start()

    def trial_config(self, trial) -> TrialConfig:
        return self.cells[trial.config["cell"]].with_choices({k: v for k, v in trial.config.items() if k != "cell"})

    def log(self, record: dict, artifacts=None) -> None:
        record_trial(self.tracker, self.parent_id, self.ledger, record, artifacts)
        self.done += 1
        m = record["metrics"]
        if record["status"] == "FINISHED":
            what = (f"{mean_std(m['test_acc_mean'], m['test_acc_std'])} % test "
                    f"({m['wall_seconds']:.1f} s)")
        else:
            self.failed += 1
            what = "FAILED: " + record.get("error", "").strip().splitlines()[-1][:200]
        elapsed = time.perf_counter() - self.started
        print(f"[{self.done}/{self.total}] {record['label']}: {what}  [{elapsed:.0f} s]", flush=True)
        self.progress.update(self.bar, completed=self.done)

    def on_trial_complete(self, iteration, trials, trial, **info):
        path = trial.last_result.get(CHECKPOINT_PATH_KEY) or (trial.checkpoint.path if trial.checkpoint else None)
        if path is None:
            self.log(failure_record(self.trial_config(trial), "the trial reported no result"))
            return
        checkpoint = tune.Checkpoint(path)
        with checkpoint.as_directory() as folder:
            self.log(read_record(folder), folder)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = trial.get_error() or "the trial failed without an error message"
        self.log(failure_record(self.trial_config(trial), str(error), {"tune_trial": trial.trial_id}))
