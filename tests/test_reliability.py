"""Reliability (issue 9): bad input refused up front, faults survived, concurrent writers, determinism, atomic
writes. Real Ray, real MLflow servers, real processes killed by PID; tests/README.md lists every case.

Studies are tiny (digits, `random`, hard labels, 20 steps, one seed). Everything a test starts is stopped in a
``finally``; the study subprocesses get their own ``RAY_TMPDIR``, so the local Ray they start can be found (and
killed, if a test killed its driver) by that folder, and never meets anyone else's Ray.
"""
from __future__ import annotations

import http.server
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import ray
from mlflow.tracking import MlflowClient

from servers import (MlflowServer, free_port, gone, kill_group, mentioning, short_tmp, sqlite_uri, stop_processes,
                     tail, wait_for)
from study.scaling import main
from study.runs.spec import resolve_spec
from study.runs.checkpoints import checkpointed, replay
from study.runs.record import write_record
from study.runs.results_table import ResultsTable
from study.runs.sink import TrialSink
from study.runs.tracking import CONFIG_HASH, Tracker, default_tracking_uri

REPO = Path(__file__).resolve().parents[1]
TINY = ["--space", "smoke", "--selectors", "random", "--regimes", "hl", "--budgets", "20", "--seeds", "1",
        "--no-report"]


def tiny_cells(ipc: str, budgets: str = "20"):
    return resolve_spec("smoke", selectors="random", ipc=ipc, regimes="hl", budgets=budgets, seeds=1).cells()


# ------------------------------------------------------------------ helpers

@pytest.fixture
def ray_tmp():
    """A RAY_TMPDIR for study subprocesses; whatever Ray left there (a killed driver's raylet, GCS, workers) is
    killed by PID afterwards."""
    tmp = short_tmp("htrel-")
    try:
        yield tmp
    finally:
        stop_processes(mentioning(str(tmp)), signal.SIGKILL, timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def study_env(ray_tmp: Path, **extra) -> dict:
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1", **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def start_study(argv: list[str], ray_tmp: Path, log: Path, **env) -> subprocess.Popen:
    """``python -m study.scaling ARGV`` in its own process group (so a test can kill the driver and all it
    spawned that stayed in its group), output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "study.scaling", *argv], cwd=REPO, env=study_env(ray_tmp, **env),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        proc.wait()
        raise AssertionError(f"the study did not finish in {timeout:.0f} s:\n{tail(log, 60)}") from None


def study_runs(uri: str) -> tuple[MlflowClient, str, list]:
    """(client, parent run id, every child run of the one study in the ``hardtruths`` experiment)."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("hardtruths")
    parents = client.search_runs([exp.experiment_id], "tags.`hardtruths.kind` = 'study'")
    assert len(parents) == 1
    parent = parents[0].info.run_id
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=1000)
    return client, parent, runs


def assert_each_once(runs, cells) -> None:
    """Every cell has exactly one FINISHED child run, and no run is left RUNNING."""
    finished = [r.data.tags[CONFIG_HASH] for r in runs if r.info.status == "FINISHED"]
    assert sorted(finished) == sorted(c.hash for c in cells), finished
    assert not [r for r in runs if r.info.status == "RUNNING"]


def result_rows(out: Path) -> pd.DataFrame:
    path = out / "results.csv"
    if not path.exists() or not path.stat().st_size:
        return pd.DataFrame(columns=["config_hash", "status"])
    return pd.read_csv(path)


def fake_record(cfg, i: int) -> dict:
    """A finished trial's record as the trainable writes it (see study.runs.record), without training anything."""
    return {"config": cfg.to_dict(), "config_hash": cfg.hash, "label": cfg.label(), "status": "FINISHED",
            "metrics": {"test_acc_mean": 0.5 + i / 100, "test_acc_std": 0.0, "val_acc_mean": 0.5,
                        "wall_seconds": 1.0},
            "curves": {"val_acc": [(s, 0.1 * s) for s in range(1, 6)], "train_loss": [(s, 1.0 / s) for s in range(1, 6)]},
            "tags": {"writer": str(i)}}


# ------------------------------------------------------------------ 1. bad input, refused before compute

@pytest.mark.parametrize("argv, needle", [
    (["--dataset", "nope"], "Unknown dataset 'nope'; valid datasets are: digits"),
    (["--model", "nope"], "Unknown model 'nope'; valid models are: convnet"),
    (["--preset", "nope"], "Unknown preset 'nope'; valid presets are: digits"),
    (["--ipc", "500"], "at most 126, the smallest class of digits"),
    (["--set", "temperature"], "The override 'temperature' is malformed"),
    (["--preset", "fashion-mnist", "--dataset", "mnist", "--data-root", "{empty}"], "MNIST was not found under"),
    (["--address", "127.0.0.1:1"], "Nothing answers at the Ray address 127.0.0.1:1"),
    (["--gpus-per-trial", "1"], "this machine has no GPUs"),
    (["--workers-per-trial", "3"], "--workers-per-trial 3 must divide the batch size 64"),
    (["--set", "precision=fp8"], "Unknown precision 'fp8'; choose one of: auto, fp32, bf16"),
    (["--selectors", "random,dm", "--set", "selector_params.dm.iters=5"], "The selector 'dm' has no parameter(s) ['iters']"),
    (["--selectors", "random", "--set", "selector_params.dm.iterations=5"],
     "Parameters were set for the selector 'dm', which does not run here"),
], ids=["dataset", "model", "preset", "ipc-above-smallest-class", "malformed-override", "data-root-without-dataset",
        "ray-address-not-answering", "gpu-on-local-cpu-ray", "workers-not-dividing-batch", "unknown-precision",
        "unknown-selector-param", "param-for-absent-selector"])
def test_bad_input_refused_before_compute(argv, needle, tmp_path, capsys):
    """One sentence, exit 2, no traceback, in seconds, and before anything is written: no MLflow store, no
    output folder, no Ray (tests/test_scaling.py::test_bad_input_fails_before_compute has the other inputs)."""
    if "--gpus-per-trial" in argv:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    empty = tmp_path / "empty-data-root"
    empty.mkdir()
    out, cache = tmp_path / "out", tmp_path / "cache"
    with pytest.raises(SystemExit) as exit_info:
        main(TINY + [a.replace("{empty}", str(empty)) for a in argv] + ["--out", str(out), "--cache-dir", str(cache)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists(), "refused input must not open an MLflow run or write outputs"
    assert not cache.exists(), "nor prepare anything (no teacher, score or selection was computed)"
    assert not ray.is_initialized(), "nor start Ray"


# ------------------------------------------------------------------ 3. concurrency: one MLflow server, 16 writers

@pytest.fixture(scope="module")
def mlflow_sqlite_server(tmp_path_factory):
    """A real ``mlflow server`` over SQLite, stopped by PID at the end of the module."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    server = MlflowServer(sqlite_uri(folder / "mlflow.db"), folder)
    try:
        yield server.start()
    finally:
        stopped = server.stop()
        assert gone(stopped), f"MLflow server processes still alive: {stopped}"


def test_sixteen_writers_at_once_against_one_server(mlflow_sqlite_server, monkeypatch):
    """16 trials finishing at the same moment, each logged by its own thread through Tracker.log_trial (the
    whole child run: params, 10 curve points, metrics, tags, artifact, status): 16 runs, no duplicates, no
    errors, no 'database is locked'. (The study driver itself logs one trial at a time by design; the study
    form of this case is the slow test_sixteen_trials_at_once_study.)"""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # no HTTP retries: any error shows up
    # a loaded machine may answer a write slowly; slowness is not what this test is about, errors are
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "600")
    tracker = Tracker(mlflow_sqlite_server.uri, "concurrency")
    spec = resolve_spec("smoke", selectors="random", ipc=",".join(map(str, range(1, 17))), regimes="hl",
                        budgets="20", seeds=1)
    parent = tracker.study_run(spec.hash, "sixteen", spec.to_dict())
    cells = spec.cells()
    assert len(cells) == 16
    barrier, errors, run_ids = threading.Barrier(16), [], []

    def write(i, cfg):
        try:
            barrier.wait()
            run_ids.append(tracker.log_trial(parent, fake_record(cfg, i)))
        except Exception as err:  # noqa: BLE001 - every error is a failure of the test
            errors.append(repr(err))

    threads = [threading.Thread(target=write, args=(i, c)) for i, c in enumerate(cells)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    runs = tracker.children(parent)
    assert len(runs) == 16 and len(set(run_ids)) == 16
    assert_each_once(runs, cells)
    for r in runs:
        assert len(tracker.client.get_metric_history(r.info.run_id, "val_acc")) == 5
    assert "locked" not in tail(mlflow_sqlite_server.log, 1000).lower()


class Unavailable(http.server.BaseHTTPRequestHandler):
    """A tracking server that is away: every request is answered 503 and counted."""

    requests = 0

    def do_GET(self):  # noqa: N802 - the http.server hook's name
        type(self).requests += 1
        self.send_error(503)

    def log_message(self, *args):
        pass


def test_mlflow_client_gives_up_within_the_product_budget():
    """With the product's client settings, a call to a server that is away is tried 1 + MAX_RETRIES times and
    then fails, so it gives up after MLflow's own backoff (about 15 s at the defaults) where MLflow's own
    defaults would keep trying for about four minutes; a user's setting wins."""
    from unittest import mock

    from study.runs.tracking import CLIENT_SETTINGS, configure_client

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        with mock.patch.dict(os.environ, {"MLFLOW_HTTP_REQUEST_TIMEOUT": "7"}):
            for name in set(CLIENT_SETTINGS) - {"MLFLOW_HTTP_REQUEST_TIMEOUT"}:
                os.environ.pop(name, None)
            configure_client()
            assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
            retries = int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
            assert retries == int(CLIENT_SETTINGS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) == 3
            with pytest.raises(Exception, match="Max retries exceeded|too many 503"):
                MlflowClient(f"http://127.0.0.1:{server.server_port}").get_experiment_by_name("nope")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert Unavailable.requests == 1 + retries


def fake_checkpoint(storage: Path, record: dict, trial: str) -> Path:
    """A trial's checkpoint as Tune or Ray Train persists it under the study's storage: artifacts, then the
    record that lists them."""
    folder = storage / trial / "checkpoint_000000"
    folder.mkdir(parents=True)
    (folder / "selection.txt").write_text("1 2 3")
    return write_record(folder, record)


def test_checkpoint_replays_once_and_drops_a_cut_off_run(mlflow_sqlite_server, tmp_path):
    """The Tune checkpoints are read back: a finished trial whose driver was killed before it reached
    results.csv and MLflow, with its logging cut off (its run created, never finished, as when the server or the
    driver dies mid-call), is replayed from its checkpoint exactly once; the cut-off run is removed, and the
    results table gets the record back too. A checkpoint whose copy was cut off, a trial of another study
    sharing the folder, and a trial someone deleted from MLflow are not logged; a failed trial is in results.csv."""
    tracker = Tracker(mlflow_sqlite_server.uri, "replay")
    cells = tiny_cells("1,2,3")
    other = tiny_cells("4")[0]
    parent = tracker.study_run("replay-study", "replay", {})
    storage, results = tmp_path / "ray", ResultsTable(tmp_path)
    sink = TrialSink(tracker, parent, results)
    # cell 0: finished and logged normally; cell 1: finished, then the driver died while logging it
    first = fake_checkpoint(storage, fake_record(cells[0], 0), "study-x/trial_0")
    assert sink.ended(fake_record(cells[0], 0), first)
    assert results.finished_hashes() == {cells[0].hash}, "results.csv has a logged trial"
    fake_checkpoint(storage, fake_record(cells[1], 1), "train-trial_1")  # the Ray Train executor's layout
    cut = tracker.client.create_run(tracker.experiment_id, tags={"mlflow.parentRunId": parent,
                                                                 CONFIG_HASH: cells[1].hash})
    # cell 2: two copies cut off by a kill (an artifact short of its listed size; a truncated record)
    short = fake_checkpoint(storage, fake_record(cells[2], 2), "study-x/trial_2")
    (short / "selection.txt").write_text("1 2")
    torn = fake_checkpoint(storage, fake_record(cells[2], 2), "study-x/trial_2b")
    (torn / "record.json").write_text((torn / "record.json").read_text()[:40])
    fake_checkpoint(storage, fake_record(other, 3), "study-y/trial_0")  # another study, same folder
    assert set(checkpointed(storage)) == {cells[0].hash, cells[1].hash, other.hash}
    seen = []
    add = results.add
    results.add = lambda record: seen.append(record) or add(record)
    assert replay(tracker, parent, storage, results, [c.hash for c in cells]) == 1
    assert [r["config_hash"] for r in seen] == [cells[1].hash]
    runs = tracker.children(parent)
    assert_each_once(runs, cells[:2])
    assert len(runs) == 2 and cut.info.run_id not in {r.info.run_id for r in runs}
    assert tracker.client.get_run(cut.info.run_id).info.lifecycle_stage == "deleted"
    assert "selection.txt" in tracker.artifact_names([r for r in runs if r.data.tags[CONFIG_HASH] == cells[1].hash][0]
                                                      .info.run_id)
    assert ResultsTable(tmp_path).finished_hashes() == {cells[0].hash, cells[1].hash}
    assert not (tmp_path / "mlflow_journal").exists(), "no third copy of a trial"
    assert replay(tracker, parent, storage, results, [c.hash for c in cells]) == 0

    from study.runs.record import failure_record

    assert sink.ended(failure_record(cells[2], "boom"))
    assert ResultsTable(tmp_path).rows[cells[2].hash]["status"] == "FAILED"
    tracker.client.delete_run(next(r.info.run_id for r in runs if r.data.tags[CONFIG_HASH] == cells[0].hash))
    assert replay(tracker, parent, storage, results, [c.hash for c in cells]) == 0, "a deleted trial stays deleted"
    assert tracker.finished_hashes(parent) == {cells[1].hash}


# ------------------------------------------------------------------ 5. atomic writes under SIGKILL

WRITER = r"""
import sys, torch
from pathlib import Path
from study.core.cache import Cache
from study.runs.results_table import ResultsTable
root, out = Path(sys.argv[1]), Path(sys.argv[2])
cache, results = Cache(root), ResultsTable(out)
big = torch.arange(12_000_000, dtype=torch.float32)  # about 48 MB per entry
print("ready", flush=True)
i = 0
while True:
    i += 1
    cache.store("scores", {"entry": "big"}, {"x": big, "i": i}, code=[])
    for j in range(100):
        results.add({"config": {"selector": "random", "ipc": j, "note": "x" * 500}, "config_hash": f"h{j:03d}",
                    "status": "FINISHED", "metrics": {"test_acc_mean": i / 1000}, "tags": {}})
"""


def temporaries(*folders: Path) -> set[Path]:
    return {p for f in folders if f.exists() for p in f.rglob("*.tmp")}


def kill_at_a_write(pid: int, folders: tuple[Path, ...], before: set[Path], timeout: float = 30.0) -> None:
    """SIGKILL ``pid`` the moment a new temporary file shows in ``folders``: a kill timed by a fixed sleep
    missed every write in 2 of 4 full-suite runs, so the test proved nothing there. The write can still finish
    between the poll and the kill; the caller counts the kills that landed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not temporaries(*folders) - before:
        time.sleep(0.0005)
    os.kill(pid, signal.SIGKILL)


def test_sigkill_during_writes_leaves_no_truncated_trusted_file(tmp_path):
    """A process rewriting a 48 MB cache entry and results.csv in a loop is SIGKILLed, several times, each
    time as a temporary file appears: a kill that lands mid-write leaves only an orphaned temporary file (the
    evidence it landed there); the cache entry either loads whole or is refused and recomputed, never trusted
    truncated, and results.csv always parses, without torn or duplicated rows."""
    from study.core.cache import Cache

    root, out = tmp_path / "cache", tmp_path / "out"
    out.mkdir()
    torn = {root: 0, out: 0}
    for round_ in range(12):
        target = (root, out)[round_ % 2]  # the cache entry's writes and the results table's, in turn
        before = temporaries(target)
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(out)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            assert proc.stdout.readline().strip() == b"ready", proc.stdout.read()
            kill_at_a_write(proc.pid, (target,), before)
        finally:
            kill_group(proc.pid)
            proc.wait()
        torn[target] += bool(temporaries(target) - before)
        value = Cache(root).load("scores", {"entry": "big"}, code=[])
        if value is not None:  # trusted only if whole
            assert value["x"].numel() == 12_000_000 and float(value["x"][-1]) == 11_999_999.0
        if (out / "results.csv").exists():
            rows = pd.read_csv(out / "results.csv")
            assert rows["config_hash"].tolist() == [f"h{j:03d}" for j in range(len(rows))]
            assert rows["note"].map(len).eq(500).all()
        if min(torn.values()) >= 1 and round_ >= 3:
            break
    assert min(torn.values()) >= 1, f"kills that landed during a write in {round_ + 1} rounds: cache entry " \
        f"{torn[root]}, results.csv {torn[out]}; the test proved too little"
    recomputed = []
    value = Cache(root).get_or_compute("scores", {"entry": "big"}, lambda: recomputed.append(1) or {"x": None},
                                   code=[])
    assert recomputed or value["x"].numel() == 12_000_000


# ------------------------------------------------------------------ in-process Ray (faults, determinism)

@pytest.fixture(scope="module")
def module_ray():
    """A local Ray in this process (its own temp dir, 2 CPUs), shared by the in-process study tests."""
    import ray

    tmp = short_tmp("htrelray-")
    ray.init(num_cpus=2, log_to_driver=False, _temp_dir=str(tmp), configure_logging=True, logging_level="ERROR")
    try:
        yield tmp
    finally:
        ray.shutdown()
        stop_processes(mentioning(str(tmp)), signal.SIGKILL, timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def in_process_study(out: Path, cells, cache_dir, max_failures: int = 1, max_concurrent: int | None = 1, say=None):
    from trainables.tune_study import RunOptions, run_study

    spec = resolve_spec("smoke", selectors="random", ipc="1", regimes="hl", budgets="20", seeds=1)
    spec.cells = lambda: list(cells)
    tracker = Tracker(default_tracking_uri(out), "hardtruths")
    parent = tracker.study_run(spec.hash, out.name, spec.to_dict())
    lines = []
    run = run_study(spec, tracker, parent, RunOptions(out_dir=out, cache_dir=str(cache_dir),
                                                      max_failures=max_failures, max_concurrent=max_concurrent),
                    say=say or lines.append)
    return tracker, parent, run.results, lines


def tune_failures(out: Path) -> dict[str, int]:
    """Failures Tune recorded per trial (its error.txt has one 'Failure #' block per failed attempt), keyed by
    the trial's config hash (from its result, or from the cell index in the trial folder's name)."""
    counts = {}
    for err in (out / "ray").rglob("error.txt"):
        counts[err.parent.name] = err.read_text().count("Failure #")
    return counts


@pytest.mark.slow
def test_raising_trial_is_failed_with_error_and_retried(module_ray, tmp_path, cache_dir):
    """A trial that raises (width 0) with --max-failures 1: Tune runs it twice, MLflow holds it once, FAILED,
    with the error; the other trial finishes. (tests/test_scaling.py::test_failing_trial_is_recorded_and_others_
    finish checks the same without counting attempts.)"""
    good = tiny_cells("2")
    bad = good[0].with_choices({"model_kwargs": {"width": 0}})
    out = tmp_path / "raise"
    tracker, parent, results, _ = in_process_study(out, good + [bad], cache_dir, max_failures=1)
    runs = {r.data.tags[CONFIG_HASH]: r for r in tracker.children(parent)}
    assert len(tracker.children(parent)) == 2
    assert runs[bad.hash].info.status == "FAILED" and runs[good[0].hash].info.status == "FINISHED"
    assert "width" in runs[bad.hash].data.tags["error"] or "channels" in runs[bad.hash].data.tags["error"]
    failures = tune_failures(out)
    assert list(failures.values()) == [2], f"one trial, failed twice (first run + 1 retry): {failures}"
    assert dict(zip(results.frame()["config_hash"], results.frame()["status"])) == {
        bad.hash: "FAILED", good[0].hash: "FINISHED"}


@pytest.mark.slow
def test_killed_trial_worker_is_retried_and_logged_once(module_ray, tmp_path, cache_dir):
    """The Ray worker process running a trial (``ray::ImplicitFunc``, a child of this process's raylet) is
    SIGKILLed mid-trial: Tune retries the trial (--max-failures 1) and the study ends with every trial
    FINISHED exactly once in MLflow and in results.csv."""
    cells = tiny_cells("1,2,3", budgets="400")  # 400 steps: a trial lasts long enough to be caught running
    out = tmp_path / "kill-worker"
    killed, since = [], time.time()

    def killer():  # the first trial actor this study starts, 2 s into its life (loading data or training)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            for p in psutil.Process().children(recursive=True):
                try:
                    if (" ".join(p.cmdline()).startswith("ray::ImplicitFunc") and p.create_time() > since
                            and time.time() - p.create_time() > 2):
                        p.kill()
                        killed.append(p.pid)
                        return
                except psutil.NoSuchProcess:
                    continue
            time.sleep(0.2)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    tracker, parent, results, lines = in_process_study(out, cells, cache_dir, max_failures=1)
    thread.join(timeout=5)
    assert killed, "no trial worker was found to kill"
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == psutil.STATUS_ZOMBIE
    assert_each_once(tracker.children(parent), cells)
    assert len(tracker.children(parent)) == 3
    frame = results.frame()
    assert sorted(frame["config_hash"]) == sorted(c.hash for c in cells) and set(frame["status"]) == {"FINISHED"}
    failures = tune_failures(out)
    assert sum(failures.values()) == 1, f"exactly one attempt died and was retried: {failures}"


@pytest.mark.slow
def test_same_study_twice_is_bit_identical_and_a_damaged_cache_is_recomputed(module_ray, tmp_path, cache_dir):
    """Determinism: the same study twice on CPU gives bit-identical per-seed accuracies. Between the runs every
    cached selection is damaged (one byte flipped): the second run says so, one line per entry, recomputes them,
    and still matches bit for bit. (Executors: tests/test_scaling.py::test_both_executors_agree.)"""
    cells = tiny_cells("1,3")
    cache = tmp_path / "cache"
    first = in_process_study(tmp_path / "first", cells, cache, max_concurrent=2)[2].frame()
    entries = sorted((cache / "selections").glob("*.pt"))
    assert len(entries) == 2
    for p in entries:
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    _, _, results, lines = in_process_study(tmp_path / "second", cells, cache, max_concurrent=2)
    said = [line for line in lines if "does not match its recorded hash" in line]
    assert len(said) == 2 and all("\n" not in line for line in said), lines
    assert {str(p) for p in entries} == {line.split("Cache entry ")[1].split(" does")[0] for line in said}
    second = results.frame()
    cols = ["test_acc_seed0", "val_acc_mean"]
    a = first.set_index("config_hash").sort_index()[cols]
    b = second.set_index("config_hash").sort_index()[cols]
    assert a.index.tolist() == sorted(c.hash for c in cells)
    assert (a.values == b.values).all(), f"not bit-identical:\n{a}\n{b}"


# ------------------------------------------------------------------ 2. faults, with the study command itself

@pytest.mark.slow
def test_driver_killed_then_rerun_finishes_only_the_missing_trials(ray_tmp, tmp_path, cache_dir):
    """SIGKILL to the study driver's process group once results.csv has a finished row; the local Ray it
    started is killed by PID (found by its RAY_TMPDIR). The same command again runs only the missing trials:
    every trial FINISHED exactly once in MLflow and results.csv, the finished ones not rerun."""
    cells = tiny_cells("1,2,3,4")
    out = tmp_path / "study"
    argv = TINY + ["--ipc", "1,2,3,4", "--max-concurrent", "1", "--out", str(out), "--cache-dir", str(cache_dir)]
    log = tmp_path / "first.log"
    proc = start_study(argv, ray_tmp, log)
    try:
        wait_for(lambda: (result_rows(out)["status"] == "FINISHED").any(), 400, "a first finished trial", proc, log)
    finally:
        kill_group(proc.pid)
        proc.wait()
    leftovers = mentioning(str(ray_tmp))
    stop_processes(leftovers, signal.SIGKILL, timeout=10)
    assert gone(p.pid for p in leftovers)
    before = set(result_rows(out).query("status == 'FINISHED'")["config_hash"])
    assert 1 <= len(before) < len(cells), "the kill should land mid-study"

    log2 = tmp_path / "rerun.log"
    rerun = start_study(argv, ray_tmp, log2)
    assert finish(rerun, log2, 600) == 0, tail(log2, 60)
    text = log2.read_text()
    # The checkpoints may hand back a trial the killed driver finished but had not logged yet: it counts as finished.
    done = int(text.split(" cell(s) in the study, ")[1].split(" already finished")[0])
    assert done >= len(before)
    ran = [line for line in text.splitlines() if line.startswith("[") and "/4] random" in line]
    assert len(ran) == len(cells) - done, text
    _, _, runs = study_runs(default_tracking_uri(out))
    assert_each_once(runs, cells)
    assert all(r.info.status in ("FINISHED", "KILLED") for r in runs)
    rows = result_rows(out)
    assert sorted(rows["config_hash"]) == sorted(c.hash for c in cells) and set(rows["status"]) == {"FINISHED"}


@pytest.mark.slow
def test_mlflow_server_stopped_and_restarted_mid_study(ray_tmp, tmp_path, cache_dir):
    """The MLflow server is stopped (by PID) after the first trial is logged and started again (same port,
    same SQLite store) once the driver has given up on a trial, after MLflow's own retries within the
    product's budget (study.runs.tracking.CLIENT_SETTINGS, about 15 s). The study finishes, the trial is replayed
    from its Tune checkpoint, and the store holds every trial exactly once."""
    cells = tiny_cells("1,2,3,4", budgets="150")
    folder = tmp_path / "server"
    server = MlflowServer(sqlite_uri(folder / "mlflow.db"), folder)
    stopped: set[int] = set()
    out = tmp_path / "study"
    log = tmp_path / "study.log"
    try:
        server.start()
        argv = TINY + ["--ipc", "1,2,3,4", "--budgets", "150", "--max-concurrent", "1", "--out", str(out),
                       "--cache-dir", str(cache_dir), "--tracking-uri", server.uri]
        proc = start_study(argv, ray_tmp, log)
        try:
            wait_for(lambda: "[1/4]" in tail(log, 200), 400, "the first logged trial", proc, log)
            stopped |= server.stop()
            wait_for(lambda: "MLflow is unreachable" in tail(log, 400), 300, "a trial MLflow missed", proc, log)
            unlogged = re.search(r"MLflow is unreachable .*; trial (\w+) is logged", tail(log, 400)).group(1)
            assert unlogged in checkpointed(out / "ray"), "the trial MLflow missed is in its Tune checkpoint"
            assert unlogged in set(result_rows(out)["config_hash"]), "and in results.csv"
            server.start()
            assert finish(proc, log, 600) == 0, tail(log, 60)
        finally:
            kill_group(proc.pid)
            proc.wait()
        _, _, runs = study_runs(server.uri)
        assert_each_once(runs, cells)
        assert len(runs) == len(cells)
        assert not (out / "mlflow_journal").exists()
        assert re.search(r"logged \d+ trial\(s\) that finished while MLflow was unreachable", log.read_text())
        assert sorted(result_rows(out)["config_hash"]) == sorted(c.hash for c in cells)
    finally:
        stopped |= server.stop()
        assert gone(stopped)


@pytest.mark.slow
def test_sixteen_trials_at_once_study(ray_tmp, tmp_path, cache_dir, mlflow_sqlite_server):
    """16 cheap cells, --max-concurrent 16 with 0.1 CPU each, so all 16 run and finish together on 2 cores,
    logged to one MLflow server: 16 child runs, no duplicates, no lock or retry warnings."""
    cells = tiny_cells(",".join(map(str, range(1, 9))), budgets="5,6")
    assert len(cells) == 16
    out = tmp_path / "sixteen"
    log = tmp_path / "sixteen.log"
    argv = TINY + ["--ipc", ",".join(map(str, range(1, 9))), "--budgets", "5,6", "--max-concurrent", "16",
                   "--cpus-per-trial", "0.1", "--out", str(out), "--cache-dir", str(cache_dir),
                   "--tracking-uri", mlflow_sqlite_server.uri, "--experiment", "sixteen"]
    proc = start_study(argv, ray_tmp, log)
    try:
        assert finish(proc, log, 600) == 0, tail(log, 60)
    finally:
        kill_group(proc.pid)
        proc.wait()
    client = MlflowClient(mlflow_sqlite_server.uri)
    exp = client.get_experiment_by_name("sixteen")
    runs = client.search_runs([exp.experiment_id], "tags.`hardtruths.kind` = 'trial'", max_results=100)
    assert len(runs) == 16
    assert_each_once(runs, cells)
    text = log.read_text()
    assert "database is locked" not in text and "MLflow call" not in text and "MLflow is unreachable" not in text
    assert len(pd.read_csv(out / "results.csv")) == 16
