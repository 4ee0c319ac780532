"""Study preparation as Ray tasks: the teacher once, then every selection once, all cached by content hash.

Trials then only read the cache, so concurrent trials never race to train the
same teacher, and a second study with the same inputs reuses everything.

Each task asks Ray for what it uses (:func:`task_resources`): a selection
task what a trial asks for (its proxy models train like a student), the
teacher a whole GPU where the study uses GPUs and the CPUs of the largest node
that could run it, as threads. Nothing else runs while the teacher trains, and
Ray would otherwise give a task one CPU and ``OMP_NUM_THREADS=1``. A task
given a GPU that torch cannot see (a CPU-only torch build, no driver) fails
with one sentence, which the driver raises as it is, instead of training on
the CPU.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter

import ray
import torch

from study.runs.config import TrialConfig
from study.core.regimes import REGIMES
from study.core.errors import StudyError
from study.core.seeding import canonical_json
from study.selection import SELECTORS, build_selector
from study.core.train import default_device
from study.runs.trial import context_for, prepare_selection, selection_key
from trainables.data_passes import prepare_tree_in_driver, teacher_pass_in_driver
from trainables.executors import check_gpu
from trainables.progress import progress_bar


class _Lines(logging.Handler):
    def __init__(self, level: int, sink):
        super().__init__(level)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink(record.getMessage())


@contextlib.contextmanager
def logged(name: str, level: int, sink):
    """Hand what the logger ``name`` logs at ``level`` or above to ``sink``: what a Ray task logs goes to the
    worker's log file, which the user does not see."""
    handler, logger = _Lines(level, sink), logging.getLogger(name)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@contextlib.contextmanager
def cache_notes():
    """The cache's warnings (a damaged entry found and recomputed) inside a task, for the driver to say."""
    lines: list[str] = []
    with logged("study.core.cache", logging.WARNING, lines.append):
        yield lines


@ray.remote(num_returns="streaming")
def prepare_teacher(cfg: TrialConfig, cache_dir: str | None):
    """Yields the teacher's progress lines (one an epoch) as they come, then its test accuracy and the cache's
    notes: a teacher trains for minutes here and hours on ImageNet, and the driver would otherwise say nothing
    all that time. The training runs in a thread of this task, which sets its own torch threads (Ray gives a
    task ``OMP_NUM_THREADS=1``)."""
    lines: queue.SimpleQueue = queue.SimpleQueue()
    outcome: dict = {}

    def train() -> None:
        assigned = ray.get_runtime_context().get_assigned_resources()
        torch.set_num_threads(max(1, int(assigned.get("CPU", 1))))
        try:
            check_gpu(assigned.get("GPU", 0), "teacher task")
            with cache_notes() as notes, logged("study.core.teacher", logging.INFO, lines.put):
                outcome["result"] = context_for(cfg, cache_dir, default_device()).teacher.test_acc, notes
        except BaseException as err:  # raised again in the task, as a failed task
            outcome["error"] = err
        finally:
            lines.put(None)

    thread = threading.Thread(target=train, name="teacher")
    thread.start()
    for line in iter(lines.get, None):  # Ray's generator tasks take no 'yield from' of a plain iterator
        yield line
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    yield outcome["result"]


@ray.remote
def prepare_repeat(cfg: TrialConfig, repeat: int, cache_dir: str | None) -> tuple[float, list[str]]:
    start = time.perf_counter()
    check_gpu(ray.get_runtime_context().get_assigned_resources().get("GPU", 0), "selection task")
    with cache_notes() as notes:
        prepare_selection(cfg, repeat, cache_dir)
    return time.perf_counter() - start, notes


def task_result(ref):
    """``ray.get``, with a StudyError raised in the task raised here as itself: one sentence, no remote traceback."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, StudyError):
            raise err.cause from None
        raise


def needs_teacher(cells: list[TrialConfig]) -> bool:
    return any(REGIMES.get(c.protocol.regime).needs_teacher or selector_class(c).needs_teacher for c in cells)


def selector_of(cfg: TrialConfig):
    return build_selector(cfg.selector, **cfg.selector_params)


def selector_class(cfg: TrialConfig):
    """The selector's class: what it needs (a teacher) and what it is (a DD method), also for a search group whose
    parameters Optuna has not chosen yet, which cannot be built."""
    return SELECTORS.resolve(cfg.selector)[0]


def likely_cost(cfg: TrialConfig) -> tuple[bool, int]:
    """Submission order, longest first, so no core idles at the end behind one long task: synthesising
    images (a DD method) costs far more than picking them, and both grow with IPC."""
    return selector_class(cfg).family == "dd", cfg.ipc


def largest_node_cpus(with_gpu: bool) -> float:
    """CPUs of the largest alive node (with a GPU, if asked); 0 where there is none yet (autoscaling from zero)."""
    return max([n["Resources"].get("CPU", 0) for n in ray.nodes()
                if n["Alive"] and (not with_gpu or n["Resources"].get("GPU", 0) > 0)], default=0)


def task_resources(cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0) -> tuple[dict, dict]:
    """Ray options of the teacher task and of the selection tasks (see the module's docstring)."""
    gpu = gpus_per_trial > 0 or ray.cluster_resources().get("GPU", 0) > 0
    teacher = {"num_cpus": max(cpus_per_trial, largest_node_cpus(gpu)), "num_gpus": 1 if gpu else 0}
    return teacher, {"num_cpus": cpus_per_trial, "num_gpus": gpus_per_trial}


def prepare_study(cells: list[TrialConfig], cache_dir: str | None, say=print, cpus_per_trial: float = 1.0,
                  gpus_per_trial: float = 0.0, selections: list[TrialConfig] | None = None) -> float | None:
    """Train (or load) the teacher the cells need, then make each distinct selection of ``selections`` (default:
    the cells'), one task per repeat."""
    teacher_acc = None
    teacher_options, selection_options = task_resources(cpus_per_trial, gpus_per_trial)
    reads_outputs = any(selector_class(c).needs_teacher for c in cells)
    streamed = bool(cells) and prepare_tree_in_driver(cells[0], cache_dir, reads_outputs)
    if cells and needs_teacher(cells):
        say(f"preparing: teacher ({teacher_options['num_cpus']:g} CPU threads, {teacher_options['num_gpus']} GPU) ...")
        for ref in prepare_teacher.options(**teacher_options).remote(cells[0], cache_dir):
            item = task_result(ref)
            if isinstance(item, str):
                say(f"preparing: {item}")
            else:
                teacher_acc, notes = item
        for note in notes:
            say(note)
        say(f"preparing: teacher test accuracy {100 * teacher_acc:.1f}%")
        if streamed and reads_outputs and not cells[0].teacher.path:
            say("preparing: teacher outputs over the training split (Ray Data) ...")
            teacher_pass_in_driver(cells[0], cache_dir)
    distinct = {canonical_json(selection_key(c, selector_of(c), 0)): c
                for c in (cells if selections is None else selections) if not c.is_full_data}
    if distinct:
        say(f"preparing: {len(distinct)} distinct selection(s) x {cells[0].seeds} seed(s) ...")
        cells_by_cost = sorted(distinct.values(), key=likely_cost, reverse=True)
        # every selection's first repeat before any second one: repeats share their selection's cached work
        # (a proxy, features), so two of them side by side would leave one waiting on the other's cache lock
        repeats = sorted(((c, r) for c in cells_by_cost for r in range(c.seeds)), key=lambda cr: cr[1])
        pending = {prepare_repeat.options(**selection_options).remote(c, r, cache_dir): c for c, r in repeats}
        total, seconds = len(pending), Counter()
        with progress_bar("selections") as bar:
            task = bar.add_task("selections", total=total)
            while pending:
                [ref], _ = ray.wait(list(pending))
                cfg = pending.pop(ref)
                took, notes = task_result(ref)
                for note in notes:
                    say(note)
                seconds[cfg.selector] += took
                bar.update(task, completed=total - len(pending))
                if took > 10:
                    say(f"preparing: {cfg.selector} IPC {cfg.ipc} ({total - len(pending)}/{total}) {took:.0f} s")
        say("preparing: done; most task time in " + ", ".join(f"{name} {s:.0f} s" for name, s in seconds.most_common(3)))
    return teacher_acc
