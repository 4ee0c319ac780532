"""Issue 7, part 2: a real multi-node run on this machine.

A Ray head and a second Ray node (``ray start --head`` / ``ray start --address``, one CPU each, their own
resources ``node_a`` / ``node_b``) on loopback, an ``mlflow server`` on 127.0.0.1 backed by a real PostgreSQL
(started here with initdb/postgres as an unprivileged user; SQLite only where PostgreSQL or psycopg2 is
missing), and the study command pointed at them with ``--address`` and ``--tracking-uri``. Every process the
test starts is stopped by PID at the end, and the test checks those PIDs are gone. See tests/servers.py.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from servers import (MlflowServer, Postgres, RayNode, gone, mentioning, postgres_available, ray_nodes, short_tmp,
                     sqlite_uri, stop_processes, tail)
from study.runs.spec import resolve_spec
from study.runs.tracking import CONFIG_HASH

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_study_on_two_ray_nodes_logs_every_trial_to_one_mlflow_server(tmp_path, cache_dir):
    started: list = []  # every service, stopped in reverse order whatever happens
    stopped: set[int] = set()
    ray_tmp = short_tmp("htmn-")
    try:
        if postgres_available():
            db = Postgres()
            started.append(db)
            backend = db.start().uri
        else:  # pragma: no cover - the CI machine has PostgreSQL 15 and psycopg2-binary
            backend = sqlite_uri(tmp_path / "mlflow.db")
        server = MlflowServer(backend, tmp_path / "mlflow")
        started.append(server)
        server.start()
        head = RayNode(ray_tmp, num_cpus=1, resources={"node_a": 1})
        started.append(head)
        head.start()
        worker = RayNode(ray_tmp, num_cpus=1, resources={"node_b": 1}, address=head.address)
        started.append(worker)
        worker.start()
        nodes = ray_nodes(head.address)
        assert len([n for n in nodes if n["alive"]]) == 2
        assert {r for n in nodes for r in n["resources"]} >= {"node_a", "node_b"}

        ipc = "1,2,3,4"
        cells = resolve_spec("smoke", selectors="random", ipc=ipc, regimes="hl", budgets="1000", seeds=1).cells()
        out = tmp_path / "study"
        cmd = [sys.executable, "-m", "study.scaling", "--space", "smoke", "--selectors", "random", "--ipc", ipc,
               "--regimes", "hl", "--budgets", "1000", "--seeds", "1", "--no-report", "--max-concurrent", "2",
               "--address", head.address, "--tracking-uri", server.uri, "--out", str(out),
               "--cache-dir", str(cache_dir)]
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_ADDRESS", None)
        log = tmp_path / "study.log"
        with open(log, "wb") as f:
            result = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=600)
        assert result.returncode == 0, tail(log, 60)

        client = MlflowClient(server.uri)  # over HTTP
        exp = client.get_experiment_by_name("hardtruths")
        runs = client.search_runs([exp.experiment_id], "tags.`hardtruths.kind` = 'trial'", max_results=100)
        assert sorted(r.data.tags[CONFIG_HASH] for r in runs) == sorted(c.hash for c in cells)
        assert all(r.info.status == "FINISHED" for r in runs)
        node_ids = {n["node_id"] for n in nodes}
        used = {r.data.tags["ray_node"] for r in runs}
        assert used <= node_ids and len(used) == 2, f"trials ran on {used}, the cluster has {node_ids}"
        assert "Nothing answers" not in log.read_text()
    finally:
        for service in reversed(started):
            stopped |= service.stop()
        leftovers = mentioning(str(ray_tmp))
        stop_processes(leftovers, timeout=10)
        with contextlib.suppress(shutil.Error, OSError):  # keep Ray's logs with the test's files (no sockets)
            shutil.copytree(ray_tmp, tmp_path / "ray-logs", ignore=shutil.ignore_patterns("*.sock", "sockets"))
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert stopped and gone(stopped), f"still running: {[p for p in stopped if not gone([p])]}"
    assert not leftovers, f"processes of this Ray cluster outlived its nodes: {leftovers}"


def test_workers_started_by_another_raylet_get_the_drivers_study_settings(tmp_path):
    """A Ray node started on its own (as `ray up` starts them) has other settings than the study's driver; the
    workers of the study's job must see the driver's, not their node's: the decoded side, the bad-image policy
    and the cache root where the driver wrote the tree's scan. The driver is a process of its own, as a study's
    is (this process never joins the cluster)."""
    ray_tmp = short_tmp("htenv-")
    head = RayNode(ray_tmp, num_cpus=1, env={"HARDTRUTHS_IMAGEFOLDER_SIZE": "96", "HARDTRUTHS_BAD_IMAGES": "fail",
                                            "HARDTRUTHS_CACHE": str(tmp_path / "node-cache")})
    driver = (
        "import json, ray\n"
        "from trainables.tune_study import RunOptions, connect\n"
        "@ray.remote(num_cpus=1)\n"
        "def seen():\n"
        "    from study.core import cache, data\n"
        "    return [data.IMAGEFOLDER_SIZE, data.BAD_IMAGES, str(cache.DEFAULT_ROOT)]\n"
        f"assert connect(RunOptions(out_dir={str(tmp_path)!r}, address={{address!r}}))\n"
        "print(json.dumps(ray.get(seen.remote(), timeout=120)))\n"
        "ray.shutdown()\n")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HARDTRUTHS_IMAGEFOLDER_SIZE": "48",
           "HARDTRUTHS_BAD_IMAGES": "skip", "HARDTRUTHS_CACHE": str(tmp_path / "driver-cache")}
    env.pop("RAY_ADDRESS", None)
    try:
        head.start()
        done = subprocess.run([sys.executable, "-c", driver.format(address=head.address)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
    finally:
        stopped = head.stop()
        stop_processes(mentioning(str(ray_tmp)), timeout=10)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [48, "skip", str(tmp_path / "driver-cache")]
    assert stopped and gone(stopped)
