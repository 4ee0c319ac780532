"""The Tune trainable, and the two ways it trains a trial's students: inline in the Tune trial, or in a Ray
Train TorchTrainer.

Both call :func:`execute`, which runs ``study.runs.trial.run_trial`` and writes the
record and artifacts into a folder that becomes the trial's checkpoint. The
inline path saves Ray Train's fixed start-up cost (seconds per trial) on CPU
laptops; the TorchTrainer path is what a GPU cluster uses. The folder is a
temporary one: Tune and Ray Train copy a reported checkpoint into the study's
storage before ``report`` returns, so it is removed right after.

On an autoscaling cluster a TorchTrainer's workers wait for nodes that are
still booting (a cloud GPU node takes minutes). Ray Train gives its worker
group ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` (60 s by default) to get its
placement group, then counts a controller failure and, within
``controller_failure_limit``, asks again. We give it :data:`WORKER_START_S` per
try and :data:`WORKER_START_TRIES` tries, so a trial waits up to an hour for a
node before it fails; a request no node type of the cluster's autoscaling
config can ever hold is refused by Ray Train at once. Failures of the training
itself are not retried (``max_failures=0``): the study's ``--max-failures``
reruns a failed trial through Tune.

The distributed backend follows the worker, not the request: NCCL where torch
sees CUDA in every worker, gloo otherwise, so a trial never dies in
``ProcessGroupNCCL`` on a node without CUDA. A trial that asked for a GPU and
landed on such a node fails with one sentence saying so instead of silently
training on the CPU, whose wall times would then be recorded as GPU ones.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import torch
from ray import tune
from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend

from study.core.errors import StudyError
from study.runs.config import TrialConfig
from study.core.data_parallel import world
from study.runs.record import success_record, write_trial_folder
from study.core.train import default_device
from study.runs.trial import cached_dataset, run_trial

SUMMARY_KEYS = ("test_acc_mean", "test_acc_std", "val_acc_mean", "wall_seconds")


TRIAL_FOLDER_PREFIX = "hardtruths-trial-"
PROGRESS_STEP = "progress_step"  # marks a report made while training: no final metrics, no checkpoint
PROGRESS_METRICS = "progress"  # that report's metrics, apart from the keys Tune adds to every report
WORKER_START_S = 300
WORKER_START_TRIES = 12


def keep_train_coordinator_on_driver_node() -> None:
    """Create Ray Train's autoscaling coordinator on the driver's node before any trial starts.

    Every Train controller asks for one cluster-wide, detached actor ("AutoscalingCoordinator") and creates it,
    with a hard affinity, on its own node when it does not exist yet. Our controllers run inside Tune trials,
    on worker nodes, so the first trial would pin it to a worker node for good, and the autoscaler never
    removes a node that hosts a live actor (tests/test_autoscaling.py saw exactly that). Created here first,
    it lives on the head, where the driver runs; later controllers find it by name. The function is Ray's
    private one (pinned by constraints.txt); if Ray moves it, the import fails loudly here.
    """
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator)

    get_or_create_autoscaling_coordinator()


def cuda_present() -> bool:
    return torch.cuda.is_available()


class _WorkerBackend(_TorchBackend):
    """Ray's torch backend with the process group's backend chosen from what the workers have."""

    def on_start(self, worker_group, backend_config: TorchConfig):
        backend = "nccl" if all(worker_group.execute(cuda_present)) else "gloo"
        super().on_start(worker_group, dataclasses.replace(backend_config, backend=backend))


@dataclasses.dataclass
class WorkerTorchConfig(TorchConfig):
    backend: str = "nccl where the workers have CUDA, else gloo"

    @property
    def backend_cls(self):
        return _WorkerBackend


def check_gpu(gpus: float) -> None:
    """Refuse, in one sentence, a trial that asked for a GPU on a node where torch sees none."""
    if gpus > 0 and not torch.cuda.is_available():
        import ray

        where = ray.util.get_node_ip_address() if ray.is_initialized() else "this machine"
        raise StudyError(f"This trial asked for {gpus:g} GPU(s) but runs on node {where}, where torch sees no CUDA "
                         f"device (a node type that declares GPUs needs NVIDIA drivers and a CUDA build of torch), "
                         f"so it was not trained on the CPU instead.")


def execute(cfg: TrialConfig, cache_dir: str | None, tags: dict, folder: Path, threads: int | None = None,
            compile_model: bool = False, record: bool = True, report=None) -> dict | None:
    """Run one trial, write its full record into ``folder`` and return the summary metrics Tune reports
    (nothing when ``record`` is off: a data-parallel worker other than rank 0). ``report(metrics)`` is Tune's
    or Ray Train's, for the reports made while training."""
    if threads:
        torch.set_num_threads(threads)
    device = default_device()
    progress = None if report is None else (lambda step, metrics: report({PROGRESS_STEP: step, PROGRESS_METRICS: metrics}))
    outcome = run_trial(cfg, cache_dir, device, compile_model=compile_model, progress=progress)
    if not record:
        return None
    import ray

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    record = success_record(outcome, {**tags, "ray_node": node, "device": device, "workers": str(world()[1])})
    write_trial_folder(outcome, record, folder, cached_dataset(cfg.dataset, cfg.data_root))
    metrics = {k: record["metrics"][k] for k in SUMMARY_KEYS}
    return {**metrics, "config_hash": cfg.hash}


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker body: every rank trains (DDP over the workers, see study.core.data_parallel); rank 0
    records the trial and reports it with its folder as the checkpoint."""
    import ray.train

    check_gpu(loop_config["gpus"])
    rank = ray.train.get_context().get_world_rank()

    def report(metrics: dict) -> None:  # every rank reports (Ray Train waits for all); Tune hears rank 0's
        ray.train.report(metrics if rank == 0 else {})

    with tempfile.TemporaryDirectory(prefix=TRIAL_FOLDER_PREFIX) as folder:
        metrics = execute(loop_config["trial"], loop_config["cache_dir"], loop_config["tags"], Path(folder),
                          loop_config.get("threads"), loop_config["compile"], record=rank == 0, report=report)
        if metrics:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report({})


def run_with_torch_trainer(cfg: TrialConfig, cache_dir: str | None, tags: dict, resources: dict,
                           storage_path: str, name: str, compile_model: bool = False) -> None:
    # The Train controller notices a finished worker group only at its next poll (every 2 s by default); a
    # study's trials are short, so poll often. Its preemption watcher (one more actor process per trial) lets
    # workers checkpoint before a spot node goes away; a trial here checkpoints only its final record, so a
    # preempted trial reruns whole either way. Train passes these settings on to its controller and workers.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(WORKER_START_S))
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    gpus = resources.get("GPU", 0)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"trial": cfg, "cache_dir": cache_dir, "tags": tags, "gpus": gpus,
                           "threads": int(resources.get("CPU", 1)), "compile": compile_model},
        torch_config=WorkerTorchConfig(),
        scaling_config=ScalingConfig(num_workers=resources["workers"], use_gpu=gpus > 0,
                                     resources_per_worker={k: v for k, v in resources.items() if k in ("CPU", "GPU")}),
        run_config=RunConfig(name=name, storage_path=storage_path, callbacks=[TuneReportCallback()],
                             failure_config=FailureConfig(max_failures=0,
                                                          controller_failure_limit=WORKER_START_TRIES - 1)),
    )
    trainer.fit()


def study_trial(config: dict, cells: list[TrialConfig], options: dict) -> None:
    """Tune's function trainable: run ``cells[config['cell']]``, with the search's choices set, on the study's
    executor."""
    cell = cells[config["cell"]]
    cfg = cell.with_choices({k: v for k, v in config.items() if k != "cell"})
    tags = {"executor": options["executor"], "tune_trial": tune.get_context().get_trial_id(), "search_group": cell.hash}
    if options["executor"] == "ray-train":
        run_with_torch_trainer(cfg, options["cache_dir"], tags, options["resources"], options["storage_path"],
                               f"train-{tune.get_context().get_trial_id()}", options["compile"])
        return
    check_gpu(options["resources"].get("GPU", 0))
    with tempfile.TemporaryDirectory(prefix=TRIAL_FOLDER_PREFIX) as folder:
        metrics = execute(cfg, options["cache_dir"], tags, Path(folder), int(options["resources"].get("CPU", 1)),
                          options["compile"], report=tune.report)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
