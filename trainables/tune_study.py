"""Run a resolved study on Ray: preparation tasks, then Ray Tune over the cells.

A grid space is Tune's own variant generation (``tune.grid_search`` over the
indices of the cells still to run; finished cells are dropped before Tune
starts, so a rerun starts no trial for them). Tune keeps up to
``TUNE_MAX_PENDING_TRIALS_PG`` (auto: 200, or 1.1 x the cluster's CPUs) trials
of its own generator pending at once, so the autoscaler sees every waiting
trial's demand and adds nodes for all of them together. An optuna space runs
one TPE search per cell group over the space's parameters, at most
:func:`optuna_concurrency` trials at once (for any other searcher Tune keeps
exactly that many pending); trials it already finished are handed to Optuna as
evaluated points and not rerun. Trials are named after their cell.
"""
from __future__ import annotations

import os
import re
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna
import ray
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from study.runs.config import TrialConfig
from study.core.data import listed_folders
from study.core.environment import study_environment
from study.core.listing import published_listings
from study.core.errors import StudyError
from study.core.seeding import derive_seed
from study.runs.checkpoints import replay
from study.runs.provenance import code_version
from study.runs.rerun import check_stale, describe, finished_versions, stale_hashes
from study.runs.results_table import ResultsTable
from study.runs.sink import TrialSink
from study.runs.spec import SEARCH_TYPES, StudySpec
from study.runs.tracking import Tracker
from trainables.callbacks import StudyCallback
from trainables.prepare import prepare_study
from trainables.executors import keep_train_coordinator_on_driver_node, study_trial
from trainables.placement import TRIAL_DRIVER, check_placeable, node_types, trial_request, unplaceable_after
from trainables.progress import TrialLines, WaitingTrials

# The Optuna trials a new point must not repeat: finished ones, and those still training.
MEASURED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)

# Tune's classic output (silent at verbose=0) and no per-trial CSV/JSON/TensorBoard files: MLflow is the record.
# A trial's reports while it trains carry progress, not the searched metric (see trainables.executors), so Tune
# must not insist on the metric in every report; the searcher hears the final one only (FinalResultSearch).
TUNE_ENVIRONMENT = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
                    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}


class FinalResultSearch(OptunaSearch):
    """Optuna's search, told only of a trial's final result: the progress reports made while it trains lack the
    metric, and go to MLflow instead.

    It never starts a point it has measured or is measuring. TPE over listed choices repeats points, and a
    trial is deterministic in its config (its seeds come from the config), so a repeat would spend a student's
    training on a number already known. A repeat of a finished point is told that point's value, a repeat of a
    running one is dropped, and Optuna is asked again; after ``MAX_ASKS`` repeats in a row the space counts as
    spent and the search ends early."""

    MAX_ASKS = 100

    def __init__(self, search: dict, points: list[tuple[dict, float]], **kwargs):
        """``search``: the spec's searched parameters (study.runs.spec.SEARCH_TYPES); ``points``: (parameters,
        value) of the group's finished trials. An ordered parameter is searched over its choices' positions."""
        self.ordered = {key: dist["choices"] for key, dist in search.items() if dist["type"] == "ordered"}
        super().__init__(space={"cell": optuna.distributions.CategoricalDistribution([0]),
                                **{key: optuna_distribution(dist) for key, dist in search.items()}},
                         points_to_evaluate=[{"cell": 0, **self.positions(p)} for p, _ in points] or None,
                         evaluated_rewards=[value for _, value in points] or None, **kwargs)

    def positions(self, params: dict) -> dict:
        return {key: position(self.ordered[key], value) if key in self.ordered else value
                for key, value in params.items()}

    def suggest(self, trial_id: str) -> dict | str | None:
        for _ in range(self.MAX_ASKS):
            config = super().suggest(trial_id)
            asked = self._ot_trials[trial_id]
            repeat = next((t for t in self._ot_study.get_trials(deepcopy=False, states=MEASURED)
                           if t.number != asked.number and t.params == asked.params), None)
            if repeat is None:
                return {key: self.ordered[key][value] if key in self.ordered else value
                        for key, value in config.items()}
            del self._ot_trials[trial_id]
            if repeat.state == optuna.trial.TrialState.COMPLETE:
                self._ot_study.tell(asked, repeat.value)
            else:
                self._ot_study.tell(asked, state=optuna.trial.TrialState.FAIL)
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)


@dataclass
class RunOptions:
    out_dir: Path
    cache_dir: str | None = None
    executor: str = "auto"
    max_concurrent: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    workers_per_trial: int = 1
    max_failures: int = 0
    address: str | None = None
    compile_model: bool = False
    verbose: bool = False
    stale: str | None = None  # trials finished under older code: "reuse", "rerun", or None to refuse them


@dataclass(frozen=True)
class StudyRun:
    """What :func:`run_study` hands back: the study's results table, and the seconds its phases took
    (``ray_start_s``, ``prepare_s``, ``trials_s``; none for a study with nothing left to run)."""
    results: ResultsTable
    phases: dict[str, float]


def check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Refuse, in seconds, a Ray address where nothing listens (``ray.init`` would retry it for minutes)."""
    if not address or address in ("auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        return  # not host:port; ray.init says what is wrong with it
    host = host.strip("[]")
    hosts = [host]
    if host in ("localhost", "127.0.0.1", "::1"):  # Ray dials these on the machine's own address instead
        hosts.append(ray.util.get_node_ip_address())
    for candidate in hosts:
        try:
            socket.create_connection((candidate, int(port)), timeout=timeout).close()
            return
        except OSError as err:
            reason = err.strerror or type(err).__name__
    raise StudyError(f"Nothing answers at the Ray address {address} ({reason}); start the cluster "
                     f"(ray start --head) or fix --address / RAY_ADDRESS.")


def check_executor(options: RunOptions) -> None:
    if options.workers_per_trial > 1 and options.executor == "inline":
        raise StudyError("--workers-per-trial above 1 needs the ray-train executor.")


def preflight(options: RunOptions) -> None:
    """What can be refused before the study opens its MLflow run: an executor that cannot run the workers, an
    unreachable cluster, GPUs on a machine without any (only for a local Ray; a cluster's autoscaler may still
    add GPU nodes)."""
    check_executor(options)
    address = options.address or os.environ.get("RAY_ADDRESS")
    check_reachable(address)
    if options.gpus_per_trial > 0 and not address:
        import torch

        if torch.cuda.device_count() == 0:
            raise StudyError(f"--gpus-per-trial {options.gpus_per_trial} was asked for, but this machine has no GPUs.")


def planned_executor(options: RunOptions) -> str:
    """The executor :func:`resolve_executor` will pick, said before Ray starts (a dry run prints it)."""
    if options.executor != "auto":
        return options.executor
    if options.gpus_per_trial > 0 or options.workers_per_trial > 1:
        return "ray-train"
    if remote(options):
        return "auto: ray-train if the cluster has GPU nodes, else inline"
    import torch

    return "ray-train" if torch.cuda.device_count() else "inline"


def connect(options: RunOptions) -> bool:
    """Join the cluster at --address / RAY_ADDRESS, or start a local Ray; True if this call started it. Every
    worker of the job gets the driver's study settings (study.core.environment)."""
    address = options.address or os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return False
    check_reachable(address)
    kwargs = {"log_to_driver": options.verbose, "configure_logging": True,
              "logging_level": "INFO" if options.verbose else "ERROR",
              "runtime_env": {"env_vars": study_environment()}}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise StudyError(f"Could not reach a Ray cluster at {address or 'a new local instance'} ({err}).") from None
    return True


def remote(options: RunOptions) -> bool:
    return bool(options.address or os.environ.get("RAY_ADDRESS"))


def resolve_executor(options: RunOptions, say=print) -> str:
    gpus = ray.cluster_resources().get("GPU", 0)
    if options.gpus_per_trial > 0 and gpus == 0:
        if not remote(options):
            raise StudyError(f"--gpus-per-trial {options.gpus_per_trial} was asked for, but this machine has no GPUs.")
        say("the cluster has no GPU node yet; trials will wait for the autoscaler to add one")
    check_executor(options)
    if options.executor == "auto":
        return "ray-train" if gpus > 0 or options.gpus_per_trial > 0 or options.workers_per_trial > 1 else "inline"
    return options.executor


def concurrency(options: RunOptions) -> int | None:
    """Trials at once: what fits the nodes that exist now on a fixed local Ray; on a cluster, as many as the
    autoscaler can place (None), since sizing by the nodes present at start would never scale up."""
    if options.max_concurrent:
        return options.max_concurrent
    if remote(options):
        return None
    per_trial_cpus = options.cpus_per_trial * options.workers_per_trial
    return max(1, int(ray.cluster_resources().get("CPU", 1) // max(per_trial_cpus, 1e-3)))


def trainable_for(executor: str, options: RunOptions, cells: list[TrialConfig], storage: str):
    resources = {"CPU": options.cpus_per_trial, "GPU": options.gpus_per_trial, "workers": options.workers_per_trial}
    settings = {"executor": executor, "cache_dir": options.cache_dir, "resources": resources,
                "storage_path": storage, "compile": options.compile_model}
    fn = tune.with_parameters(study_trial, cells=cells, options=settings)
    if executor == "ray-train":
        return tune.with_resources(fn, {"cpu": TRIAL_DRIVER["CPU"]})
    return tune.with_resources(fn, {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial})


def position(choices: list, value) -> int:
    """The position of a finished trial's ``value`` among ordered choices; a number read back from a CSV may
    differ from its choice in the last digits, so it takes the closest."""
    if value in choices:
        return choices.index(value)
    return min(range(len(choices)), key=lambda i: abs(choices[i] - value))


def optuna_distribution(spec: dict):
    kind = spec["type"]
    if kind == "uniform":
        return optuna.distributions.FloatDistribution(spec["low"], spec["high"])
    if kind == "loguniform":
        return optuna.distributions.FloatDistribution(spec["low"], spec["high"], log=True)
    if kind == "int":
        return optuna.distributions.IntDistribution(spec["low"], spec["high"])
    if kind == "categorical":
        return optuna.distributions.CategoricalDistribution(spec["choices"])
    if kind == "ordered":
        return optuna.distributions.IntDistribution(0, len(spec["choices"]) - 1)
    raise StudyError(f"Unknown search distribution {kind!r}; use one of {', '.join(SEARCH_TYPES)}.")


# Trials of one Optuna search at once when --max-concurrent does not say: TPE proposes from finished trials,
# so many in flight make it closer to random search, while one at a time would leave a cluster idle.
OPTUNA_CLUSTER_CONCURRENCY = 8


def optuna_concurrency(max_concurrent: int | None) -> int:
    return max_concurrent or OPTUNA_CLUSTER_CONCURRENCY


class TrialNames:
    """Tune's trial names and folders: the trial's cell (selector, IPC, regime, steps, search choices), not
    Tune's ``cell=0``. Tune pickles it with the experiment, so it holds the cells, not a closure."""

    def __init__(self, cells: list[TrialConfig]):
        self.cells = cells

    def __call__(self, trial) -> str:
        config = trial.config
        return self.cells[config["cell"]].with_choices({k: v for k, v in config.items() if k != "cell"}).label()

    def folder(self, trial) -> str:
        return f"{re.sub(r'[^A-Za-z0-9.=+-]+', '_', self(trial))[:120]}_{trial.trial_id}"


def run_tuner(trainable, name: str, storage: str, callback: StudyCallback, max_failures: int, **tune_config) -> None:
    """One Tune run, its trials named after the callback's cells."""
    names = TrialNames(callback.cells)
    param_space = tune_config.pop("param_space", None)
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(reuse_actors=True, trial_name_creator=names,
                                    trial_dirname_creator=names.folder, **tune_config),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0,
                                  callbacks=[callback, WaitingTrials(unplaceable_after=unplaceable_after())],
                                  failure_config=tune.FailureConfig(max_failures=max_failures)),
    )
    tuner.fit()


def run_study(spec: StudySpec, tracker: Tracker, parent_id: str, options: RunOptions, say=print) -> StudyRun:
    """Run every unfinished cell of ``spec``; finished ones (by config hash, in MLflow or results.csv) are skipped."""
    for name, value in TUNE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results = ResultsTable(options.out_dir)
    cells = spec.cells()
    hashes = [c.hash for c in cells]
    replay(tracker, parent_id, storage_dir(options), results, hashes, say)
    killed = tracker.close_stale(parent_id)
    if killed:
        say(f"marked {killed} trial run(s) left running by an interrupted study as KILLED; they will run again")
    finished = finished_versions(set(hashes), results, tracker, parent_id)
    stale = stale_hashes(finished)
    check_stale(len(stale), options.stale)
    if stale and options.stale == "rerun":
        tracker.retire(parent_id, stale, f"run again under code version {code_version()}")
        results.drop(stale)
        finished = {h: v for h, v in finished.items() if h not in stale}
    pending = [c for c in cells if c.hash not in finished]
    say(f"{len(cells)} cell(s) in the study, {describe(len(cells) - len(pending), len(stale), options.stale)}")
    if spec.kind == "grid" and not pending:
        return StudyRun(results, {})
    phases: dict[str, float] = {}
    with published_listings(listed_folders(spec.protocol["dataset"])):
        with timed(phases, "ray_start_s"):
            started = connect(options)
        try:
            phases.update(run_on_ray(spec, cells, pending, TrialSink(tracker, parent_id, results), options, say))
        finally:
            if started:
                ray.shutdown()
    replay(tracker, parent_id, storage_dir(options), results, hashes, say)
    return StudyRun(results, phases)


def storage_dir(options: RunOptions) -> Path:
    """Where Tune and Ray Train keep the study's trials, their checkpoints (each trial's record) included."""
    return Path(options.out_dir, "ray").resolve()


def run_on_ray(spec, cells, pending, sink: TrialSink, options: RunOptions, say) -> dict[str, float]:
    """Prepare and run the study's pending trials; returns the seconds spent preparing and running them."""
    executor = resolve_executor(options, say)
    check_placeable(trial_request(executor, options.cpus_per_trial, options.gpus_per_trial, options.workers_per_trial),
                    node_types())
    if executor == "ray-train":
        keep_train_coordinator_on_driver_node()
    max_concurrent = concurrency(options)
    res = ray.cluster_resources()
    say(f"executor {executor}, {max_concurrent or 'unbounded'} concurrent trial(s), cluster has "
        f"{res.get('CPU', 0):.0f} CPU(s) and {res.get('GPU', 0):.0f} GPU(s)")
    phases: dict[str, float] = {}
    with timed(phases, "prepare_s"):
        prepared = pending if spec.kind == "grid" else cells
        # a searched group's selection is made (and cached) in its trials, once Optuna has chosen the point
        prepare_study(prepared, options.cache_dir, say, options.cpus_per_trial, options.gpus_per_trial,
                      selections=spec.selections_known_ahead(prepared))
    with timed(phases, "trials_s"):
        if spec.kind == "grid":
            with TrialLines(len(cells), done_before=len(cells) - len(pending)) as view:
                run_grid(executor, options, pending, f"study-{spec.hash}", StudyCallback(pending, sink, view),
                         max_concurrent)
        else:
            run_searches(spec, pending, sink, executor, options, max_concurrent)
    return phases


def run_searches(spec: StudySpec, pending: list[TrialConfig], sink: TrialSink, executor: str, options: RunOptions,
                 max_concurrent: int | None) -> None:
    """One Optuna search per cell group, told the group's finished trials, then the unfinished reference cells."""
    storage = str(storage_dir(options))
    groups = spec.searched_cells()
    references = [c for c in spec.reference_cells() if c in pending]
    earlier = [searched_points(sink.results, cell, spec) for cell in groups]
    samples = spec.samples_per_group()
    done = len(spec.reference_cells()) - len(references) + sum(min(len(e), samples) for e in earlier)
    with TrialLines(spec.trial_count(), done_before=done) as view:
        for group, (cell, points) in enumerate(zip(groups, earlier)):
            remaining = samples - len(points)
            if remaining <= 0:
                continue
            searcher = FinalResultSearch(spec.search, points, metric=spec.metric, mode=spec.mode,
                                         sampler=tpe_sampler(spec, group, len(points)))
            run_tuner(trainable_for(executor, options, [cell], storage), f"study-{spec.hash}-group{group}", storage,
                      StudyCallback([cell], sink, view), options.max_failures, num_samples=remaining,
                      search_alg=ConcurrencyLimiter(searcher, max_concurrent=optuna_concurrency(max_concurrent)))
        if references:
            run_grid(executor, options, references, f"study-{spec.hash}-references",
                     StudyCallback(references, sink, view), max_concurrent)


def tpe_sampler(spec: StudySpec, group: int, resumed_from: int) -> optuna.samplers.TPESampler:
    """TPE that models the space after a quarter of the group's samples (Optuna's default start-up is 10 random
    points, most of a 16-trial search); a resumed search draws afresh, not the sequence that made its points."""
    return optuna.samplers.TPESampler(seed=derive_seed("optuna", spec.hash, group, resumed_from),
                                      n_startup_trials=max(2, spec.samples_per_group() // 4))


def run_grid(executor: str, options: RunOptions, cells: list[TrialConfig], name: str, callback: StudyCallback,
             max_concurrent: int | None) -> None:
    """Each cell once, through Tune's own variant generation, so every pending trial is visible to the autoscaler."""
    storage = str(storage_dir(options))
    run_tuner(trainable_for(executor, options, cells, storage), name, storage, callback, options.max_failures,
              param_space={"cell": tune.grid_search(list(range(len(cells))))}, max_concurrent_trials=max_concurrent)


@contextmanager
def timed(phases: dict[str, float], phase: str):
    """Add the seconds the block takes to ``phases`` as ``phase``, also when it raises."""
    clock = time.perf_counter()
    try:
        yield
    finally:
        phases[phase] = time.perf_counter() - clock


def searched_points(results: ResultsTable, cell: TrialConfig, spec: StudySpec) -> list[tuple[dict, float]]:
    """Optuna choices and rewards of this group's finished trials, read back from results.csv."""
    return [({k: row[k] for k in spec.search}, row[spec.metric]) for row in results.rows.values()
            if row.get("status") == "FINISHED" and row.get("search_group") == cell.hash]
