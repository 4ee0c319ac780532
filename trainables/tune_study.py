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
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import ray
from ray import tune
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from study.runs.config import TrialConfig
from study.core.data import listed_folders
from study.core.environment import study_environment
from study.core.listing import published_listings
from study.core.errors import StudyError
from study.runs.history import check_stale, describe, finished_versions, stale_hashes
from study.runs.journal import replay
from study.runs.provenance import code_version
from study.runs.ledger import Ledger
from study.runs.spec import StudySpec
from study.runs.tracking import Tracker
from trainables.callbacks import StudyLogger
from trainables.prepare import prepare_study
from trainables.executors import keep_train_coordinator_on_driver_node, study_trial
from trainables.placement import TRIAL_DRIVER, check_placeable, node_types, trial_request, unplaceable_after
from trainables.progress import WaitingTrials

# Tune's classic output (silent at verbose=0) and no per-trial CSV/JSON/TensorBoard files: MLflow is the record.
# A trial's reports while it trains carry progress, not the searched metric (see trainables.executors), so Tune
# must not insist on the metric in every report; the searcher hears the final one only (FinalResultSearch).
TUNE_ENVIRONMENT = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
                    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}


class FinalResultSearch(OptunaSearch):
    """Optuna's search, told only of a trial's final result: the progress reports made while it trains lack the
    metric, and go to MLflow instead."""

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
    phases: dict = field(default_factory=dict)  # filled in: seconds spent starting Ray, preparing, running trials


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
    raise StudyError(f"Unknown search distribution {kind!r}; use uniform, loguniform, int or categorical.")


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


def run_tuner(trainable, name: str, storage: str, logger: StudyLogger, max_failures: int, **tune_config) -> None:
    """One Tune run; the logger's progress bar goes away with it, also when it is interrupted."""
    names = TrialNames(logger.cells)
    param_space = tune_config.pop("param_space", None)
    tuner = tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(reuse_actors=True, trial_name_creator=names,
                                    trial_dirname_creator=names.folder, **tune_config),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0,
                                  callbacks=[logger, WaitingTrials(unplaceable_after=unplaceable_after())],
                                  failure_config=tune.FailureConfig(max_failures=max_failures)),
    )
    try:
        tuner.fit()
    finally:
        logger.progress.stop()


def run_study(spec: StudySpec, tracker: Tracker, parent_id: str, options: RunOptions, say=print) -> Ledger:
    """Run every unfinished cell of ``spec``; finished ones (by config hash, in MLflow or the ledger) are skipped."""
    for name, value in TUNE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ledger = Ledger(options.out_dir)
    cells = spec.cells()
    hashes = [c.hash for c in cells]
    replay(tracker, parent_id, storage_dir(options), ledger, hashes, say)
    killed = tracker.close_stale(parent_id)
    if killed:
        say(f"marked {killed} trial run(s) left running by an interrupted study as KILLED; they will run again")
    finished = finished_versions(set(hashes), ledger, tracker, parent_id)
    stale = stale_hashes(finished)
    check_stale(len(stale), options.stale)
    if stale and options.stale == "rerun":
        tracker.retire(parent_id, stale, f"run again under code version {code_version()}")
        ledger.drop(stale)
        finished = {h: v for h, v in finished.items() if h not in stale}
    pending = [c for c in cells if c.hash not in finished]
    say(f"{len(cells)} cell(s) in the study, {describe(len(cells) - len(pending), len(stale), options.stale)}")
    if spec.kind == "grid" and not pending:
        return ledger
    with published_listings(listed_folders(spec.protocol["dataset"])):
        clock = time.perf_counter()
        started = connect(options)
        options.phases["ray_start_s"] = time.perf_counter() - clock
        try:
            run_on_ray(spec, cells, pending, ledger, tracker, parent_id, options, say)
        finally:
            if started:
                ray.shutdown()
    replay(tracker, parent_id, storage_dir(options), ledger, hashes, say)
    return ledger


def storage_dir(options: RunOptions) -> Path:
    """Where Tune and Ray Train keep the study's trials, their checkpoints (each trial's record) included."""
    return Path(options.out_dir, "ray").resolve()


def run_on_ray(spec, cells, pending, ledger, tracker, parent_id, options: RunOptions, say) -> None:
    executor = resolve_executor(options, say)
    check_placeable(trial_request(executor, options.cpus_per_trial, options.gpus_per_trial, options.workers_per_trial),
                    node_types())
    if executor == "ray-train":
        keep_train_coordinator_on_driver_node()
    storage = str(storage_dir(options))
    max_concurrent = concurrency(options)
    res = ray.cluster_resources()
    say(f"executor {executor}, {max_concurrent or 'unbounded'} concurrent trial(s), cluster has "
        f"{res.get('CPU', 0):.0f} CPU(s) and {res.get('GPU', 0):.0f} GPU(s)")
    if spec.kind == "grid":
        timed(options, "prepare_s", prepare_study, pending, options.cache_dir, say, options.cpus_per_trial,
              options.gpus_per_trial)
        logger = StudyLogger(tracker, parent_id, ledger, pending, total=len(cells), done_before=len(cells) - len(pending))
        timed(options, "trials_s", run_grid, executor, options, pending, f"study-{spec.hash}", logger, max_concurrent)
        return

    timed(options, "prepare_s", prepare_study, cells, options.cache_dir, say, options.cpus_per_trial,
          options.gpus_per_trial)
    clock = time.perf_counter()
    groups = spec.searched_cells()
    references = [c for c in spec.reference_cells() if c in pending]
    logger = StudyLogger(tracker, parent_id, ledger, [], total=spec.trial_count(),
                         done_before=len(spec.reference_cells()) - len(references))
    space = {k: optuna_distribution(v) for k, v in spec.search.items()}
    for group, cell in enumerate(groups):
        earlier = searched_points(ledger, cell, spec)
        remaining = spec.num_samples - len(earlier)
        logger.done += len(earlier)
        if remaining <= 0:
            continue
        logger.cells = [cell]
        searcher = FinalResultSearch(space={"cell": optuna.distributions.CategoricalDistribution([0]), **space},
                                metric=spec.metric, mode=spec.mode, seed=group,
                                points_to_evaluate=[{"cell": 0, **p} for p, _ in earlier] or None,
                                evaluated_rewards=[r for _, r in earlier] or None)
        run_tuner(trainable_for(executor, options, logger.cells, storage), f"study-{spec.hash}-group{group}", storage,
                  logger, options.max_failures, num_samples=remaining,
                  search_alg=ConcurrencyLimiter(searcher, max_concurrent=optuna_concurrency(max_concurrent)))
    if references:
        logger.cells = references
        run_grid(executor, options, references, f"study-{spec.hash}-references", logger, max_concurrent)
    options.phases["trials_s"] = time.perf_counter() - clock


def run_grid(executor: str, options: RunOptions, cells: list[TrialConfig], name: str, logger: StudyLogger,
             max_concurrent: int | None) -> None:
    """Each cell once, through Tune's own variant generation, so every pending trial is visible to the autoscaler."""
    storage = str(storage_dir(options))
    run_tuner(trainable_for(executor, options, cells, storage), name, storage, logger, options.max_failures,
              param_space={"cell": tune.grid_search(list(range(len(cells))))}, max_concurrent_trials=max_concurrent)


def timed(options: RunOptions, phase: str, fn, *args, **kwargs):
    clock = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        options.phases[phase] = time.perf_counter() - clock


def searched_points(ledger: Ledger, cell: TrialConfig, spec: StudySpec) -> list[tuple[dict, float]]:
    """Optuna choices and rewards of this group's finished trials, read back from the ledger."""
    return [({k: row[k] for k in spec.search}, row[spec.metric]) for row in ledger.rows.values()
            if row.get("status") == "FINISHED" and row.get("search_group") == cell.hash]
