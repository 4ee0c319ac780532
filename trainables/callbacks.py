"""The study driver's Tune callback: every trial is a live MLflow run, and ends in the ledger and the terminal.

A trial's child run is created RUNNING when the trial starts, takes the
metrics the trial reports while it trains (with their training steps), and
ends FINISHED or FAILED with the trial's record. The callback runs in the
driver process only, so there is one writer to the tracking store whatever
the number of concurrent trials. A trial MLflow cannot take stays in its
checkpoint, from which study.runs.journal logs it later. In a
terminal a progress bar with the trials' ETA stays under the per-trial lines
(trainables.progress).
"""
from __future__ import annotations

import logging
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
from trainables.executors import PROGRESS_METRICS, PROGRESS_STEP
from trainables.progress import progress_bar

log = logging.getLogger(__name__)


class StudyLogger(tune.Callback):
    def __init__(self, tracker: Tracker, parent_id: str, ledger: Ledger, cells: list[TrialConfig], total: int,
                 done_before: int = 0, console: Console | None = None):
        self.tracker, self.parent_id, self.ledger, self.cells = tracker, parent_id, ledger, cells
        self.total, self.done, self.failed = total, done_before, 0
        self.live: dict[str, str] = {}  # Tune trial id -> its live MLflow run
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

    def on_trial_start(self, iteration, trials, trial, **info):
        """The trial's live run; without one (MLflow away) the trial is still logged when it ends, or replayed."""
        cfg = self.trial_config(trial)
        if trial.trial_id in self.live:  # a trial Tune restarts keeps its run
            return
        try:
            self.live[trial.trial_id] = self.tracker.start_trial(self.parent_id, cfg.to_dict(), cfg.hash, cfg.label())
        except Exception as err:  # MLflow raises many types for a server that is away
            log.warning("MLflow is unreachable (%s); trial %s is logged when it ends.", err, cfg.hash)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.live.get(trial.trial_id)
        if run_id is None or PROGRESS_STEP not in result:
            return
        try:
            self.tracker.log_progress(run_id, result[PROGRESS_STEP], result[PROGRESS_METRICS])
        except Exception as err:  # a gap in a live curve; the trial's record still has its curves
            log.warning("MLflow is unreachable (%s); a progress report of trial %s is dropped.", err, trial.trial_id)

    def log(self, record: dict, artifacts=None, trial=None) -> None:
        run_id = self.live.pop(trial.trial_id, None) if trial is not None else None
        record_trial(self.tracker, self.parent_id, self.ledger, record, artifacts, run_id)
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
            self.log(failure_record(self.trial_config(trial), "the trial reported no result"), trial=trial)
            return
        checkpoint = tune.Checkpoint(path)
        with checkpoint.as_directory() as folder:
            self.log(read_record(folder), folder, trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = trial.get_error() or "the trial failed without an error message"
        self.log(failure_record(self.trial_config(trial), str(error), {"tune_trial": trial.trial_id}), trial=trial)
