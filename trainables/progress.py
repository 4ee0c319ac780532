"""The driver's progress: a line per finished trial, bars with done of all, elapsed and remaining time, and a
line whenever the number of trials waiting for nodes changes.

Bars are drawn only on a terminal; where the output is a file or a pipe the
printed lines alone say how far a study is.
"""
from __future__ import annotations

import time

import ray
from ray import tune
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from study.analysis.summary import mean_std
from study.analysis.terminal import console as study_console


def progress_bar(what: str, console: Console | None = None) -> Progress:
    console = console or study_console()
    return Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn("elapsed"), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True,
                    disable=not console.is_terminal)


class TrialLines:
    """The study's trials on the terminal: a line per trial that ends, and under the lines a bar with the trials
    done of all and their ETA. Used as a context: the bar shows from the first Tune run to the last.

    ``done_before`` counts the trials a rerun skips, so the bar and the lines count the whole study.
    """

    def __init__(self, total: int, done_before: int = 0, console: Console | None = None):
        self.total, self.done = total, done_before
        self.started = time.perf_counter()
        self.progress = progress_bar("trials", console)
        self.bar = self.progress.add_task("trials", total=total, completed=done_before)

    def __getstate__(self) -> dict:
        """Tune pickles its callbacks with the experiment's state; a live bar (a thread, a terminal) stays here."""
        return {k: v for k, v in self.__dict__.items() if k != "progress"}

    def __enter__(self) -> "TrialLines":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def ended(self, record: dict) -> None:
        self.done += 1
        m = record["metrics"]
        if record["status"] == "FINISHED":
            what = f"{mean_std(m['test_acc_mean'], m['test_acc_std'])} % test ({m['wall_seconds']:.1f} s)"
        else:
            what = "FAILED: " + record.get("error", "").strip().splitlines()[-1][:200]
        elapsed = time.perf_counter() - self.started
        print(f"[{self.done}/{self.total}] {record['label']}: {what}  [{elapsed:.0f} s]", flush=True)
        self.progress.update(self.bar, completed=self.done)


def pending_placement_groups() -> int:
    """Placement groups the cluster has not placed yet: what the autoscaler is asked to add nodes for."""
    return sum(pg["state"] == "PENDING" for pg in ray.util.placement_group_table().values())


class WaitingTrials(tune.Callback):
    """Says how many trials wait for nodes, whenever that changes (checked every ``every`` seconds).

    A trial of the inline executor waits as a PENDING Tune trial; one of the
    ray-train executor is already RUNNING in Tune (its driver needs a hundredth
    of a CPU) while its Train worker group's placement group waits. Both wait
    on a placement group, so the larger of the two counts is the number waiting.
    """

    def __init__(self, every: float = 5.0):
        self.every, self.checked, self.last = every, 0.0, None

    def on_step_begin(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self.checked < self.every:
            return
        self.checked = now
        running = sum(t.status == "RUNNING" for t in trials)
        waiting = max(sum(t.status == "PENDING" for t in trials), pending_placement_groups())
        state = (running, waiting)
        if state != self.last and (waiting or self.last):
            res = ray.cluster_resources()
            print(f"trials: {running} running, {waiting} waiting for nodes (PENDING); the cluster has "
                     f"{res.get('CPU', 0):g} CPU(s), {res.get('GPU', 0):g} GPU(s) now", flush=True)
        self.last = state
