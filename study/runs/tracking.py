"""Everything the project says to MLflow goes through this module.

A study is one parent run (the resolved study spec and study-level artifacts);
each trial is a child run tagged with ``mlflow.parentRunId`` and carrying every
config field as a param, the axes as tags (so the MLflow UI can filter and
group by selector, IPC, regime and budget), per-step validation curves,
final metrics and its artifacts. Only the study driver writes, one process,
and MLflow gives every SQLite session a 20 s busy timeout, so a local store
never reports itself locked. A server that is away is retried by MLflow's own
HTTP client, within the bounded budget :func:`configure_client` sets; a trial
that still cannot be logged stays in its Tune checkpoint, from which
study.runs.checkpoints logs it later.
"""
from __future__ import annotations

import getpass
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from study.core.errors import StudyError
from study.runs.provenance import PROJECT, UNKNOWN, git_dirty
from study.runs.record import flatten

logging.getLogger("alembic").setLevel(logging.WARNING)

STUDY_HASH = "hardtruths.study_hash"
CONFIG_HASH = "config_hash"
KIND = "hardtruths.kind"
AXIS_TAGS = ("dataset", "model", "selector", "ipc", "regime", "steps")
AXIS_METRICS = ("ipc", "steps")  # tags are strings and sort 1, 100, 20; the UI sorts metrics as numbers
CODE_VERSION = "code_version"
GIT_DIRTY = "hardtruths.git_dirty"
# The MLflow UI opens an experiment of this kind on its runs table, not on the GenAI overview.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}

# MLflow's HTTP client retries a failed request itself; by default 7 times, sleeping 0, 4, 8, ... s up to
# 120 s between tries (about 4 minutes) and waiting up to 120 s for each answer, while the driver's Tune loop
# waits. This budget gives up on a refused connection or a 5xx after about 12-15 s (3 retries, sleeps of
# 0, 4 and 8 s, plus up to 1 s of jitter each) and on a silent server after about 75 s (4 tries of 15 s).
# A trial whose logging gives up is not lost: it is logged from its Tune checkpoint later (study.runs.checkpoints).
CLIENT_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # MLflow's INFO lines (creating the store's tables, ...) are not the study's
}


def configure_client() -> None:
    """Give MLflow's client the product's settings (:data:`CLIENT_SETTINGS`) unless the user set them; the
    command-line entry points call this before they talk to MLflow. MLflow reads its logging level once, when
    it is imported, so the level is also set on its logger for an MLflow imported earlier."""
    for name, value in CLIENT_SETTINGS.items():
        os.environ.setdefault(name, value)
    logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())


@lru_cache(maxsize=4)
def source_tags(source: str) -> dict:
    """MLflow's system tags for a run this process creates: who ran it, from which entry point, and the git
    commit of the project's tree when it is one, with :data:`GIT_DIRTY` saying whether the tree had changes not
    committed. MlflowClient.create_run adds none of them itself."""
    from mlflow.utils.git_utils import get_git_commit
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER

    tags = {MLFLOW_SOURCE_NAME: source, MLFLOW_SOURCE_TYPE: "LOCAL", MLFLOW_USER: getpass.getuser()}
    commit = get_git_commit(str(PROJECT))
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    dirty = git_dirty()
    if dirty is not None:
        tags[GIT_DIRTY] = str(dirty).lower()
    return tags


def default_tracking_uri(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"



def check_server(uri: str, timeout: float = 5.0) -> None:
    """Refuse an http(s) tracking URI that does not answer, before any compute."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as resp:
            resp.read()
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as err:
        raise StudyError(f"The MLflow tracking server at {uri} does not answer ({err}); start it or fix --tracking-uri.") from None


def chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]



def open_experiment(tracking_uri: str, experiment: str) -> "Tracker":
    """A Tracker on an experiment that must already exist (reading never creates one)."""
    check_server(tracking_uri)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    if client.get_experiment_by_name(experiment) is None:
        names = sorted(e.name for e in client.search_experiments())
        raise StudyError(f"The MLflow store {tracking_uri} has no experiment {experiment!r}; "
                         f"it has: {', '.join(names) or 'none'}.")
    return Tracker(tracking_uri, experiment)


def existing_tracker(tracking_uri: str, experiment: str) -> "Tracker | None":
    """A Tracker on an experiment that already exists, or None; nothing is created (a dry run reads through
    this, and a SQLite store that is not there stays not there)."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        return None
    check_server(tracking_uri)
    from mlflow.tracking import MlflowClient

    if MlflowClient(tracking_uri).get_experiment_by_name(experiment) is None:
        return None
    return Tracker(tracking_uri, experiment)


def tracker_for_run(tracking_uri: str, run_id: str) -> "Tracker":
    """A Tracker on the experiment that holds ``run_id``."""
    check_server(tracking_uri)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception:
        raise StudyError(f"The MLflow store {tracking_uri} has no run {run_id!r}.") from None
    return Tracker(tracking_uri, client.get_experiment(run.info.experiment_id).name)


def find_parent(tracking_uri: str, experiment: str, parent_run: str | None = None) -> tuple["Tracker", str]:
    """(tracker, parent run id): the given study run, or the latest one in the experiment."""
    tracker = open_experiment(tracking_uri, experiment)
    return tracker, tracker.find_parent(parent_run)


class Tracker:
    """A thin wrapper over ``MlflowClient`` bound to one experiment."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: str | None = None,
                 source: str = "study.scaling"):
        check_server(tracking_uri)
        from mlflow.tracking import MlflowClient

        self.uri, self.source = tracking_uri, source
        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self.client.create_experiment(
            experiment, artifact_location=artifact_root, tags=EXPERIMENT_KIND)
        if found and not EXPERIMENT_KIND.items() <= found.tags.items():
            for key, value in EXPERIMENT_KIND.items():
                self.client.set_experiment_tag(self.experiment_id, key, value)

    def find_study(self, study_hash: str):
        """The parent run of the study with this hash, or None."""
        found = self.client.search_runs([self.experiment_id],
                                        filter_string=f"tags.`{STUDY_HASH}` = '{study_hash}' and "
                                                      f"tags.`{KIND}` = 'study'", max_results=1)
        return found[0] if found else None

    def study_run(self, study_hash: str, name: str, spec: dict) -> str:
        """The parent run of this study: reused when the same study runs again, created otherwise."""
        found = self.find_study(study_hash)
        if found:
            run_id = found.info.run_id
            if found.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={STUDY_HASH: study_hash, KIND: "study", **source_tags(self.source)})
        self.log_params(run.info.run_id, flatten(spec))
        self.client.log_text(run.info.run_id, json.dumps(spec, indent=1, default=str), "study_spec.json")
        return run.info.run_id

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for batch in chunks(items, 100):
            self.client.log_batch(run_id, params=batch)

    def children(self, parent_id: str, status: str | None = None, deleted: bool = False) -> list:
        """The study's trial runs (with ``status`` only, if given); the deleted ones instead if ``deleted``."""
        from mlflow.entities import ViewType

        flt = f"tags.`mlflow.parentRunId` = '{parent_id}'"
        if status:
            flt += f" and attributes.status = '{status}'"
        view = ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=flt, run_view_type=view,
                                           max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def finished_hashes(self, parent_id: str) -> set[str]:
        return set(self.finished_versions(parent_id))

    def finished_versions(self, parent_id: str) -> dict[str, str]:
        """Config hash -> code version of each finished trial (:data:`UNKNOWN` for trials logged before
        trials carried one)."""
        return {r.data.tags.get(CONFIG_HASH): r.data.tags.get(CODE_VERSION, UNKNOWN)
                for r in self.children(parent_id, "FINISHED")}

    def retire(self, parent_id: str, hashes: set[str], note: str) -> int:
        """Delete (MLflow's soft delete: the UI can restore them) the finished runs of trials that run again,
        so each trial keeps one FINISHED run; ``note`` says why, as a tag on each."""
        runs = [r for r in self.children(parent_id, "FINISHED") if r.data.tags.get(CONFIG_HASH) in hashes]
        for run in runs:
            self.client.set_tag(run.info.run_id, "hardtruths.retired", note)
            self.client.delete_run(run.info.run_id)
        return len(runs)

    def deleted_hashes(self, parent_id: str) -> set[str]:
        """Trials that were logged in full and then deleted from MLflow by someone: not to be logged again."""
        return {r.data.tags.get(CONFIG_HASH) for r in self.children(parent_id, "FINISHED", deleted=True)}

    def drop_unfinished(self, parent_id: str, config_hash: str) -> int:
        """Delete this trial's runs left RUNNING, as a log_trial cut off by an outage or a kill leaves them."""
        runs = [r for r in self.children(parent_id, "RUNNING") if r.data.tags.get(CONFIG_HASH) == config_hash]
        for run in runs:
            self.client.delete_run(run.info.run_id)
        return len(runs)

    def close_stale(self, parent_id: str) -> int:
        """Children left RUNNING by a killed driver are marked KILLED, so each trial has one FINISHED run."""
        stale = self.children(parent_id, "RUNNING")
        for run in stale:
            self.client.set_terminated(run.info.run_id, status="KILLED")
        return len(stale)

    def trial_tags(self, parent_id: str, cfg: dict, config_hash: str) -> dict:
        return {"mlflow.parentRunId": parent_id, KIND: "trial", CONFIG_HASH: config_hash, **source_tags(self.source),
                **{k: str(cfg[k]) for k in AXIS_TAGS}}

    def start_trial(self, parent_id: str, cfg: dict, config_hash: str, label: str) -> str:
        """A trial's live run, created RUNNING as the trial starts, with its config as params; the metrics
        come as it trains (:meth:`log_progress`) and the rest when it ends (:meth:`log_trial`)."""
        from mlflow.entities import Metric

        run = self.client.create_run(self.experiment_id, run_name=label,
                                     tags=self.trial_tags(parent_id, cfg, config_hash))
        self.log_params(run.info.run_id, flatten(cfg))
        now = int(time.time() * 1000)
        self.client.log_batch(run.info.run_id, metrics=[Metric(k, float(cfg[k]), now, 0) for k in AXIS_METRICS])
        return run.info.run_id

    def log_progress(self, run_id: str, step: int, metrics: dict) -> None:
        """Metrics of a trial still training, at training step ``step``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, int(step)) for k, v in metrics.items()])

    def log_trial(self, parent_id: str, record: dict, artifacts: Path | None = None, run_id: str | None = None) -> str:
        """A trial's record (see study.runs.record) into its live run ``run_id``, or into a new child run that
        spans the trial's own start and end when the record has them (a trial logged from its checkpoint)."""
        from mlflow.entities import Metric, RunTag

        cfg = record["config"]
        tags = {k: str(v) for k, v in record.get("tags", {}).items()}
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=record.get("label"),
                                         tags={**self.trial_tags(parent_id, cfg, record["config_hash"]), **tags},
                                         start_time=record.get("start_ms"))
            run_id, logged, axes = run.info.run_id, {}, {k: cfg[k] for k in AXIS_METRICS}
        else:  # the live run has the params and axes it was started with
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            logged, axes = self.client.get_run(run_id).data.params, {}
        self.log_params(run_id, {k: v for k, v in flatten(cfg).items() if k not in logged})
        now = record.get("end_ms") or int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in {**axes, **record.get("metrics", {})}.items()]
        metrics += [Metric(name, float(v), now, int(step)) for name, curve in record.get("curves", {}).items()
                    for step, v in curve]
        for batch in chunks(metrics, 1000):
            self.client.log_batch(run_id, metrics=batch, tags=[RunTag("status_note", record["status"])])
        self.log_inputs(run_id, record.get("inputs", []))
        self.client.log_text(run_id, json.dumps(cfg, indent=1, default=str), "config.json")
        if artifacts is not None and Path(artifacts).exists():
            self.client.log_artifacts(run_id, str(artifacts))
        if record["status"] == "FAILED":
            self.client.set_tag(run_id, "error", str(record.get("error", ""))[:5000])
            self.client.log_text(run_id, str(record.get("error", "")), "error.txt")
        self.client.set_terminated(run_id, status=record["status"], end_time=record.get("end_ms"))
        return run_id

    def log_inputs(self, run_id: str, inputs: list[dict]) -> None:
        """A trial's data (see study.runs.record.training_inputs) as MLflow dataset inputs: the UI's Datasets
        column, filterable by name and digest."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        datasets = [DatasetInput(Dataset(name=i["name"], digest=i["digest"], source_type="hardtruths",
                                         source=json.dumps({"dataset": i["source"]}),
                                         profile=json.dumps(i["profile"])),
                                 tags=[InputTag(MLFLOW_DATASET_CONTEXT, i["context"])]) for i in inputs]
        if datasets:
            self.client.log_inputs(run_id, datasets=datasets)

    # ---------------------------------------------------------------- reading (reports)

    def find_parent(self, parent_run: str | None = None) -> str:
        """The study (parent) run: ``parent_run`` checked to be one, or the latest study run of the experiment."""
        if parent_run:
            try:
                run = self.client.get_run(parent_run)
            except Exception:
                raise StudyError(f"There is no run {parent_run!r} in the MLflow store {self.uri}.") from None
            if run.info.experiment_id != self.experiment_id or run.data.tags.get(KIND) != "study":
                raise StudyError(f"Run {parent_run} is not a study (parent) run of this experiment; "
                                 f"leave --parent-run out to use the latest study.")
            return parent_run
        found = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{KIND}` = 'study'",
                                        order_by=["attributes.start_time DESC"], max_results=1)
        if not found:
            raise StudyError(f"The experiment has no study run in {self.uri}; run python -m study.scaling first.")
        return found[0].info.run_id

    def run_name(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.run_name or run_id

    def trials_frame(self, parent_id: str) -> "pd.DataFrame":
        """Every child run of a study as one row: run_id, run_name, status, start_time, end_time, then
        ``tags.<k>``, ``params.<k>`` and ``metrics.<k>`` (latest value of each metric) columns.
        Rows are ordered by (start_time, run_id), columns by name after the fixed ones."""
        import pandas as pd

        rows = []
        for r in self.children(parent_id):
            row = {"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
                   "start_time": r.info.start_time, "end_time": r.info.end_time}
            row.update({f"tags.{k}": v for k, v in r.data.tags.items()})
            row.update({f"params.{k}": v for k, v in r.data.params.items()})
            row.update({f"metrics.{k}": float(v) for k, v in r.data.metrics.items()})
            rows.append(row)
        fixed = ["run_id", "run_name", "status", "start_time", "end_time"]
        if not rows:
            return pd.DataFrame(columns=fixed)
        frame = pd.DataFrame(rows)
        frame = frame[fixed + sorted(c for c in frame.columns if c not in fixed)]
        return frame.sort_values(["start_time", "run_id"], kind="stable").reset_index(drop=True)

    def artifact_names(self, run_id: str, path: str | None = None) -> list[str]:
        return [f.path for f in self.client.list_artifacts(run_id, path)]

    def download_artifact(self, run_id: str, path: str, dst: str | Path) -> Path | None:
        """Download one artifact of a run into ``dst``; None when the run has no such artifact."""
        folder = str(Path(path).parent) if "/" in path else None
        if path not in self.artifact_names(run_id, folder):
            return None
        Path(dst).mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(dst)))

    def log_artifacts(self, run_id: str, folder: Path, artifact_path: str | None = None) -> None:
        """Log a folder (e.g. a study's report) as artifacts of a run that may already be finished."""
        self.client.log_artifacts(run_id, str(folder), artifact_path)

    def finish_study(self, parent_id: str, status: str = "FINISHED", artifacts: Path | None = None,
                     metrics: dict | None = None) -> None:
        from mlflow.entities import Metric

        if metrics:
            now = int(time.time() * 1000)
            self.client.log_batch(parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        if artifacts is not None and Path(artifacts).exists():
            self.client.log_artifacts(parent_id, str(artifacts))
        self.client.set_terminated(parent_id, status=status)
