"""Study preparation as Ray tasks: the teacher once, then every selection once, all cached by content hash.

Trials then only read the cache, so concurrent trials never race to train the
same teacher, and a second study with the same inputs reuses everything.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter

import ray

from study.runs.config import TrialConfig
from study.core.regimes import REGIMES
from study.core.seeding import canonical_json
from study.selection import build_selector
from study.core.train import default_device
from study.runs.trial import context_for, prepare_selection, selection_key
from trainables.data_passes import scan_in_driver, teacher_pass_in_driver
from trainables.progress import progress_bar


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def cache_notes():
    """The cache's warnings (a damaged entry found and recomputed) inside a task, for the driver to say:
    what a Ray task logs goes to the worker's log file, which the user does not see."""
    handler, logger = _Lines(), logging.getLogger("study.core.cache")
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


@ray.remote
def prepare_teacher(cfg: TrialConfig, cache_dir: str | None) -> tuple[float, list[str]]:
    with cache_notes() as notes:
        acc = context_for(cfg, cache_dir, default_device()).teacher.test_acc
    return acc, notes


@ray.remote
def prepare_repeat(cfg: TrialConfig, repeat: int, cache_dir: str | None) -> tuple[float, list[str]]:
    start = time.perf_counter()
    with cache_notes() as notes:
        prepare_selection(cfg, repeat, cache_dir)
    return time.perf_counter() - start, notes


def needs_teacher(cells: list[TrialConfig]) -> bool:
    return any(REGIMES.get(c.protocol.regime).needs_teacher or selector_of(c).needs_teacher for c in cells)


def selector_of(cfg: TrialConfig):
    return build_selector(cfg.selector, **cfg.selector_params)


def likely_cost(cfg: TrialConfig) -> tuple[bool, int]:
    """Submission order, longest first, so no core idles at the end behind one long task: synthesising
    images (a DD method) costs far more than picking them, and both grow with IPC."""
    return selector_of(cfg).family == "dd", cfg.ipc


def prepare_study(cells: list[TrialConfig], cache_dir: str | None, say=print) -> float | None:
    """Train (or load) the teacher, then make each distinct selection, one task per repeat."""
    teacher_acc = None
    streamed = bool(cells) and scan_in_driver(cells[0])
    if cells and needs_teacher(cells):
        say("preparing: teacher ...")
        teacher_acc, notes = ray.get(prepare_teacher.remote(cells[0], cache_dir))
        for note in notes:
            say(note)
        say(f"preparing: teacher test accuracy {100 * teacher_acc:.1f}%")
        if streamed and any(selector_of(c).needs_teacher for c in cells):
            say("preparing: teacher outputs over the training split (Ray Data) ...")
            teacher_pass_in_driver(cells[0], cache_dir)
    distinct = {canonical_json(selection_key(c, selector_of(c), 0)): c for c in cells if not c.is_full_data}
    if distinct:
        say(f"preparing: {len(distinct)} distinct selection(s) x {cells[0].seeds} seed(s) ...")
        cells_by_cost = sorted(distinct.values(), key=likely_cost, reverse=True)
        pending = {prepare_repeat.remote(c, r, cache_dir): c for c in cells_by_cost for r in range(c.seeds)}
        total, seconds = len(pending), Counter()
        with progress_bar("selections") as bar:
            task = bar.add_task("selections", total=total)
            while pending:
                [ref], _ = ray.wait(list(pending))
                cfg = pending.pop(ref)
                took, notes = ray.get(ref)
                for note in notes:
                    say(note)
                seconds[cfg.selector] += took
                bar.update(task, completed=total - len(pending))
                if took > 10:
                    say(f"preparing: {cfg.selector} IPC {cfg.ipc} ({total - len(pending)}/{total}) {took:.0f} s")
        say("preparing: done; most task time in " + ", ".join(f"{name} {s:.0f} s" for name, s in seconds.most_common(3)))
    return teacher_acc
