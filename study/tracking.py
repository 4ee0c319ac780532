"""Everything the project says to MLflow goes through this module.

A study is one parent run (the resolved study spec and study-level artifacts);
each trial is a child run tagged with ``mlflow.parentRunId`` and carrying every
config field as a param, the axes as tags (so the MLflow UI can filter and
group by selector, IPC, regime and budget), per-step validation curves,
final metrics and its artifacts. Only the study driver writes, one process,
so a local SQLite store never sees concurrent writers; calls that fail
because a server is briefly away are retried with a growing wait.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable

from study.errors import StudyError

log = logging.getLogger(__name__)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
logging.getLogger("alembic").setLevel(logging.WARNING)

STUDY_HASH = "hardtruths.study_hash"
CONFIG_HASH = "config_hash"
KIND = "hardtruths.kind"
AXIS_TAGS = ("dataset", "model", "selector", "ipc", "regime", "steps")


def default_tracking_uri(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'teacher': {'epochs': 5}} -> {'teacher.epochs': 5}: every config field becomes one MLflow param."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


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


class Tracker:
    """A thin, retrying wrapper over ``MlflowClient`` bound to one experiment."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: str | None = None,
                 retries: int = 5, retry_wait: float = 2.0):
        check_server(tracking_uri)
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.retries, self.retry_wait = retries, retry_wait
        found = self.call(self.client.get_experiment_by_name, experiment)
        self.experiment_id = found.experiment_id if found else self.call(
            self.client.create_experiment, experiment, artifact_location=artifact_root)

    def call(self, fn, *args, **kwargs):
        """Run an MLflow call, retrying while a server is briefly away."""
        for attempt in range(self.retries):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # MLflow raises many types for a lost connection
                if attempt == self.retries - 1 or not self.transient(err):
                    raise
                log.warning("MLflow call %s failed (%s); retrying.", getattr(fn, "__name__", fn), err)
                time.sleep(self.retry_wait * (attempt + 1))

    @staticmethod
    def transient(err: Exception) -> bool:
        text = f"{type(err).__name__} {err}"
        return any(s in text for s in ("Connection", "connection", "Timeout", "timed out", "503", "502",
                                       "locked", "Max retries"))

    def study_run(self, study_hash: str, name: str, spec: dict) -> str:
        """The parent run of this study: reused when the same study runs again, created otherwise."""
        found = self.call(self.client.search_runs, [self.experiment_id],
                          filter_string=f"tags.`{STUDY_HASH}` = '{study_hash}' and tags.`{KIND}` = 'study'",
                          max_results=1)
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.call(self.client.update_run, run_id, status="RUNNING")
            return run_id
        run = self.call(self.client.create_run, self.experiment_id, run_name=name,
                        tags={STUDY_HASH: study_hash, KIND: "study"})
        self.log_params(run.info.run_id, flatten(spec))
        self.call(self.client.log_text, run.info.run_id, json.dumps(spec, indent=1, default=str), "study_spec.json")
        return run.info.run_id

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for batch in chunks(items, 100):
            self.call(self.client.log_batch, run_id, params=batch)

    def children(self, parent_id: str, status: str | None = None) -> list:
        flt = f"tags.`mlflow.parentRunId` = '{parent_id}'"
        if status:
            flt += f" and attributes.status = '{status}'"
        runs, token = [], None
        while True:
            page = self.call(self.client.search_runs, [self.experiment_id], filter_string=flt, max_results=1000,
                             page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def finished_hashes(self, parent_id: str) -> set[str]:
        return {r.data.tags.get(CONFIG_HASH) for r in self.children(parent_id, "FINISHED")}

    def close_stale(self, parent_id: str) -> int:
        """Children left RUNNING by a killed driver are marked KILLED, so each trial has one FINISHED run."""
        stale = self.children(parent_id, "RUNNING")
        for run in stale:
            self.call(self.client.set_terminated, run.info.run_id, status="KILLED")
        return len(stale)

    def log_trial(self, parent_id: str, record: dict, artifacts: Path | None = None) -> str:
        """One child run per trial, from the record the trainable produced (see trainables.record)."""
        from mlflow.entities import Metric, RunTag

        cfg = record["config"]
        tags = {"mlflow.parentRunId": parent_id, KIND: "trial", CONFIG_HASH: record["config_hash"],
                **{k: str(cfg[k]) for k in AXIS_TAGS}, **{k: str(v) for k, v in record.get("tags", {}).items()}}
        run = self.call(self.client.create_run, self.experiment_id, run_name=record.get("label"), tags=tags)
        run_id = run.info.run_id
        self.log_params(run_id, flatten(cfg))
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in record.get("metrics", {}).items()]
        metrics += [Metric(name, float(v), now, int(step)) for name, curve in record.get("curves", {}).items()
                    for step, v in curve]
        for batch in chunks(metrics, 1000):
            self.call(self.client.log_batch, run_id, metrics=batch, tags=[RunTag("status_note", record["status"])])
        self.call(self.client.log_text, run_id, json.dumps(cfg, indent=1, default=str), "config.json")
        if artifacts is not None and Path(artifacts).exists():
            self.call(self.client.log_artifacts, run_id, str(artifacts))
        if record["status"] == "FAILED":
            self.call(self.client.set_tag, run_id, "error", str(record.get("error", ""))[:5000])
            self.call(self.client.log_text, run_id, str(record.get("error", "")), "error.txt")
        self.call(self.client.set_terminated, run_id, status=record["status"])
        return run_id

    def finish_study(self, parent_id: str, status: str = "FINISHED", artifacts: Path | None = None,
                     metrics: dict | None = None) -> None:
        from mlflow.entities import Metric

        if metrics:
            now = int(time.time() * 1000)
            self.call(self.client.log_batch, parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        if artifacts is not None and Path(artifacts).exists():
            self.call(self.client.log_artifacts, parent_id, str(artifacts))
        self.call(self.client.set_terminated, parent_id, status=status)
