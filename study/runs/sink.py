"""Where a trial's events go: a live MLflow run while it trains, then results.csv and MLflow when it ends.

The study driver is the only writer, whatever the number of concurrent
trials. A trial's child run is created RUNNING when the trial starts and takes
the metrics the trial reports while it trains (with their training steps);
when the trial ends its record goes to results.csv first and then into that
run, which ends FINISHED or FAILED. MLflow being away loses nothing: a trial
without a live run is logged when it ends, and one MLflow cannot take when it
ends stays in its Tune checkpoint, from which study.runs.checkpoints logs it later.
"""
from __future__ import annotations

import logging
from pathlib import Path

from study.runs.config import TrialConfig
from study.runs.results_table import ResultsTable

log = logging.getLogger(__name__)


class TrialSink:
    """A study's trials into its results table and its MLflow parent run; trials are named by a key the caller
    chooses (the Tune trial id), so a trial that is restarted keeps its live run."""

    def __init__(self, tracker, parent_id: str, results: ResultsTable):
        self.tracker, self.parent_id, self.results = tracker, parent_id, results
        self.live: dict[str, str] = {}  # trial key -> its live MLflow run

    def started(self, key: str, cfg: TrialConfig) -> None:
        if key in self.live:
            return
        try:
            self.live[key] = self.tracker.start_trial(self.parent_id, cfg.to_dict(), cfg.hash, cfg.label())
        except Exception as err:  # MLflow raises many types for a server that is away
            log.warning("MLflow is unreachable (%s); trial %s is logged when it ends.", err, cfg.hash)

    def progressed(self, key: str, step: int, metrics: dict) -> None:
        run_id = self.live.get(key)
        if run_id is None:
            return
        try:
            self.tracker.log_progress(run_id, step, metrics)
        except Exception as err:  # a gap in a live curve; the trial's record still has its curves
            log.warning("MLflow is unreachable (%s); a progress report of trial %s is dropped.", err, key)

    def ended(self, record: dict, artifacts: Path | None = None, key: str | None = None) -> bool:
        """results.csv first, then MLflow (into the trial's live run when it has one); True if MLflow has the
        trial. A finished trial MLflow cannot take is left to study.runs.checkpoints.replay, which finds it in
        its checkpoint (and deletes the live run the outage left RUNNING)."""
        run_id = self.live.pop(key, None) if key is not None else None
        self.results.add(record)
        try:
            self.tracker.log_trial(self.parent_id, record, artifacts, run_id)
        except Exception as err:  # MLflow raises many types for a server that is away; the record is safe on disk
            log.warning("MLflow is unreachable (%s); trial %s is logged from its checkpoint once MLflow answers.",
                        err, record["config_hash"])
            return False
        return True
