"""Issue 18: the study on an autoscaling cluster, and Ray's token authentication, on this machine.

The cluster is Ray's own autoscaler over Ray's fake multi-node provider (``RAY_FAKE_CLUSTER=1 ray start
--head --autoscaling-config=...``, see tests/servers.py): it starts with the head alone, which has no CPU,
and adds real raylets on this machine as trials ask for them. Node types may declare a GPU without one
behind it, which is how a GPU trial on a node without CUDA is tested. Every process a test starts is stopped
by PID (the head's process tree holds the nodes the autoscaler added), never with ``ray stop``.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from servers import (RAY_HOST, RayNode, fake_autoscaling_config, gone, mentioning, ray_nodes, short_tmp,
                     stop_processes, tail)

REPO = Path(__file__).resolve().parents[1]
IDLE_S = 15


class NodeWatch:
    """Polls the cluster's GCS every second: when each worker node joined and left, relative to ``start``."""

    def __init__(self, address: str, head: str):
        self.address, self.head, self.start = address, head, time.monotonic()
        self.joined: dict[str, float] = {}
        self.alive: set[str] = set()
        self.most = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)

    def poll(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(Exception):
                self.alive = {n["node_id"] for n in ray_nodes(self.address) if n["alive"]} - {self.head}
                for node in self.alive:
                    self.joined.setdefault(node, time.monotonic() - self.start)
                self.most = max(self.most, len(self.alive))
            self.stopping.wait(1.0)

    def __enter__(self) -> "NodeWatch":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(timeout=15)


@contextlib.contextmanager
def fake_cluster(tmp_path: Path, worker_types: dict):
    """A head with no CPU and the given worker types, none of them started; stopped by PID afterwards."""
    ray_tmp = short_tmp("htas-")
    head = RayNode(ray_tmp, num_cpus=0, autoscaling=fake_autoscaling_config(worker_types, idle_timeout_s=IDLE_S))
    stopped: set[int] = set()
    try:
        head.start()
        yield head
    finally:
        stopped |= head.stop()
        leftovers = mentioning(str(ray_tmp))
        stop_processes(leftovers, timeout=10)
        with contextlib.suppress(shutil.Error, OSError):
            shutil.copytree(ray_tmp, tmp_path / "ray-logs", ignore=shutil.ignore_patterns("*.sock", "sockets"))
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert stopped and gone(stopped), f"still running: {[p for p in stopped if not gone([p])]}"
    assert not leftovers, f"processes of this Ray cluster outlived its head: {leftovers}"


def study(head: RayNode, out: Path, cache: Path, *args: str) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "study.scaling", "--space", "smoke", "--regimes", "hl", "--seeds", "1",
           "--no-report", "--executor", "ray-train", "--address", head.address, "--out", str(out),
           "--cache-dir", str(cache), *args]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    log = out.parent / f"{out.name}.log"
    with open(log, "wb") as f:
        result = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=1500)
    return result.returncode, log.read_text(errors="replace")


def pending_demands(head: RayNode) -> list[str]:
    """The autoscaler's "Pending Demands" lines, in order, from its monitor log."""
    logs = sorted(head.temp_dir.glob("session_*/logs/monitor.log"))
    text = logs[-1].read_text(errors="replace") if logs else ""
    return [line.strip() for block in re.findall(r"Pending Demands:\n((?: .*\n)+)", text)
            for line in block.splitlines() if "no resource demands" not in line]


def occupants(head: RayNode, nodes: set[str]) -> str:
    """What Ray's state API sees on ``nodes``, and the cluster's objects and placement groups: why a node that
    the autoscaler should remove may not count as idle."""
    from ray.util.state import list_actors, list_objects, list_placement_groups, list_workers

    api = f"http://{RAY_HOST}:{head.dashboard_port}"
    lines = []
    for node in sorted(nodes):
        actors = list_actors(address=api, filters=[("node_id", "=", node), ("state", "=", "ALIVE")],
                             raise_on_missing_output=False)
        workers = [w for w in list_workers(address=api, filters=[("node_id", "=", node)], raise_on_missing_output=False)
                   if w.is_alive]
        lines.append(f"node {node[-6:]}: actors {[a.class_name for a in actors]}, "
                     f"workers {[(w.worker_type, w.pid) for w in workers]}")
    objects = list_objects(address=api, raise_on_missing_output=False)
    lines.append(f"objects: {[(o.ip, o.type, o.reference_type, o.object_size, o.call_site) for o in objects]}")
    groups = list_placement_groups(address=api, raise_on_missing_output=False)
    lines.append(f"placement groups: {[(g.name, g.state) for g in groups if g.state != 'REMOVED']}")
    return "\n".join(lines)


def head_id(head: RayNode) -> str:
    (node,) = [n["node_id"] for n in ray_nodes(head.address) if n["alive"]]
    return node


@pytest.mark.slow
def test_study_scales_from_zero_workers_and_back(tmp_path, cache_dir):
    # two CPUs a node: one trial's Train worker and the Tune trials' drivers (a hundredth of a CPU each); the
    # GPU trial's driver and its one-CPU worker must fit on the one GPU node once the CPU nodes have gone
    types = {"cpu": {"resources": {"CPU": 2}, "max_workers": 2},
             "gpu": {"resources": {"CPU": 2, "GPU": 1}, "max_workers": 1}}
    clock = time.monotonic()
    with fake_cluster(tmp_path, types) as head:
        head_node = head_id(head)
        with NodeWatch(head.address, head_node) as watch:
            rc, log = study(head, tmp_path / "study", cache_dir, "--selectors", "random", "--ipc", "1,2,3",
                            "--budgets", "200")
        assert rc == 0, log[-5000:]
        results = pd.read_csv(tmp_path / "study" / "results.csv")
        assert len(results) == 3 and (results["status"] == "FINISHED").all()
        assert watch.most >= 2, f"the autoscaler added {watch.most} worker node(s) at most"
        used = set(results["ray_node"])
        assert head_node not in used and used <= set(watch.joined), f"trials ran on {used}"
        assert "waiting for nodes (PENDING)" in log
        demands = pending_demands(head)
        print(f"\nworker nodes joined at {sorted(round(t, 1) for t in watch.joined.values())} s; "
              f"at most {watch.most} at once; study {rc=}")
        print("pending demands the autoscaler saw:", *dict.fromkeys(demands), sep="\n  ")

        # a GPU trial on a node type that declares a GPU but has no CUDA: one clear sentence, no NCCL crash
        rc, log = study(head, tmp_path / "gpu", cache_dir, "--selectors", "random", "--ipc", "1", "--budgets", "20",
                        "--gpus-per-trial", "1")
        assert rc == 1
        assert "asked for 1 GPU(s) but runs on node" in log and "torch sees no CUDA device" in log, log[-3000:]
        assert "ProcessGroupNCCL" not in log

        with NodeWatch(head.address, head_node) as idle:
            deadline = time.monotonic() + IDLE_S + 120
            while time.monotonic() < deadline and (not idle.joined or idle.alive):
                time.sleep(2)
            assert not idle.alive, (f"worker nodes still up {IDLE_S} s after going idle: {idle.alive}\n"
                                    f"{occupants(head, idle.alive)}")
            print(f"idle worker nodes all removed {time.monotonic() - idle.start:.0f} s after the last study")
    print(f"wall time of the test: {time.monotonic() - clock:.0f} s")


@pytest.mark.slow
def test_trials_wait_longer_than_a_minute_for_the_one_node(tmp_path, cache_dir):
    """One worker node holds one trial's Train worker at a time: the last trial waits for the others, longer
    than Ray Train's default 60 s start-up timeout, and still finishes."""
    clock = time.monotonic()
    with fake_cluster(tmp_path, {"cpu": {"resources": {"CPU": 2}, "max_workers": 1}}) as head:
        # ~30 s of training per trial on a quiet 2-core machine (3 ms a step and seed), so the last waits ~90 s
        rc, log = study(head, tmp_path / "study", cache_dir, "--selectors", "random", "--ipc", "1,2,3,4",
                        "--budgets", "5000", "--seeds", "2")
    assert rc == 0, log[-5000:]
    results = pd.read_csv(tmp_path / "study" / "results.csv")
    assert len(results) == 4 and (results["status"] == "FINISHED").all()
    finished = [int(m) for m in re.findall(r"^\[\d+/4\] .*\[(\d+) s\]$", log, re.M)]
    waited = results["wall_seconds"].sum() - results["wall_seconds"].max()  # a lower bound for the last one
    print(f"\ntrials finished at {finished} s; the last waited at least {waited:.0f} s; "
          f"wall time of the test: {time.monotonic() - clock:.0f} s")
    assert len(finished) == 4 and finished[-1] - finished[0] > 0
    assert waited > 60, f"the trials ran too fast ({waited:.0f} s) to show a wait longer than 60 s"


@pytest.mark.slow
def test_trial_no_node_type_can_hold_is_refused(tmp_path, cache_dir):
    """Issue 31: a GPU node type with one CPU, and trials asking for one CPU and one GPU. Each trial's Tune driver
    (a hundredth of a CPU) would take part of a node's only CPU, so its worker could never be placed beside it:
    the study ends before its first trial with one sentence naming the shape, instead of waiting for ever."""
    with fake_cluster(tmp_path, {"gpu": {"resources": {"CPU": 1, "GPU": 1}, "max_workers": 2}}) as head:
        clock = time.monotonic()
        rc, log = study(head, tmp_path / "study", cache_dir, "--selectors", "random", "--ipc", "1,2", "--budgets",
                        "20", "--gpus-per-trial", "1", "--cpus-per-trial", "1")
        took = time.monotonic() - clock
        nodes = [n for n in ray_nodes(head.address) if n["alive"]]
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    print(f"\nthe study ended after {took:.0f} s with exit {rc}: {errors}")
    assert rc == 2, log[-3000:]
    assert errors == ["error: No node type of this cluster can hold a trial: it asks for {CPU: 1, GPU: 1} for each of "
                      "its 1 Train worker(s), one of them beside {CPU: 0.01} for its Tune driver on the same node, and "
                      "the node types are gpu {CPU: 1, GPU: 1}; ask for at most 0.99 CPU(s) per worker "
                      "(--cpus-per-trial) or give the node type more CPUs."], log[-3000:]
    assert "Traceback" not in log
    assert len(nodes) == 1, "refused before a node was started for it"


@pytest.mark.slow
def test_trial_waiting_with_no_node_coming_is_named(tmp_path, cache_dir, monkeypatch):
    """One CPU node (the autoscaler may add no other) and two trials whose workers take 1.5 of its 2 CPUs: the
    second one's worker waits with no node starting, is named once (HARDTRUTHS_UNPLACEABLE_S=1 here), and runs
    when the first has finished."""
    monkeypatch.setenv("HARDTRUTHS_UNPLACEABLE_S", "1")
    with fake_cluster(tmp_path, {"cpu": {"resources": {"CPU": 2}, "max_workers": 1}}) as head:
        rc, log = study(head, tmp_path / "study", cache_dir, "--selectors", "random", "--ipc", "1,2", "--budgets",
                        "20", "--cpus-per-trial", "1.5")
    named = [line for line in log.splitlines() if line.startswith("A trial's request")]
    print("\n" + "\n".join(named))
    assert rc == 0, log[-3000:]
    assert len(pd.read_csv(tmp_path / "study" / "results.csv")) == 2
    assert len(named) == 1 and named[0].startswith("A trial's request {CPU: 1.5} has waited "), log[-3000:]


@pytest.mark.slow
def test_token_auth_refuses_a_client_without_the_token(tmp_path):
    """A head with RAY_AUTH_MODE=token (as cluster.yaml starts every node): the job API that `ray job submit`
    uses answers 401 without the token and 200 with it; a driver without the token is refused too."""
    token = "ht" + os.urandom(16).hex()
    token_file = tmp_path / "auth_token"
    token_file.write_text(token)
    ray_tmp = short_tmp("htauth-")
    head = RayNode(ray_tmp, num_cpus=1, env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)})
    stopped: set[int] = set()
    try:
        head.start()
        jobs = f"http://{RAY_HOST}:{head.dashboard_port}/api/jobs/"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(jobs, timeout=5)
                status = 200
            except urllib.error.HTTPError as err:
                status = err.code
            except OSError:
                status = None
            if status is not None or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert status == 401, f"without the token the job API answered {status}"
        request = urllib.request.Request(jobs, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as r:
            assert r.status == 200
        probe = "import ray; ray.init(address='%s', log_to_driver=False); print('CONNECTED')" % head.address
        home = tmp_path / "home"  # no ~/.ray/auth_token there
        home.mkdir()
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        without = subprocess.run([sys.executable, "-c", probe], env={**base, "HOME": str(home), "RAY_AUTH_MODE": "token"},
                                 capture_output=True, text=True, timeout=120)
        assert "CONNECTED" not in without.stdout, "a driver without the token was let in"
        with_token = subprocess.run([sys.executable, "-c", probe], env={**base, "HOME": str(home), "RAY_AUTH_MODE": "token",
                                                                        "RAY_AUTH_TOKEN": token},
                                    capture_output=True, text=True, timeout=120)
        assert "CONNECTED" in with_token.stdout, with_token.stderr[-2000:]
    finally:
        stopped |= head.stop()
        leftovers = mentioning(str(ray_tmp))
        stop_processes(leftovers, timeout=10)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert stopped and gone(stopped) and not leftovers


def test_library_leaves_ray_authentication_alone():
    """Only tests switch token authentication off (conftest.py); the product never sets RAY_AUTH_MODE."""
    for path in [*REPO.glob("study/**/*.py"), *REPO.glob("trainables/*.py"), *REPO.glob("search_spaces/*.py")]:
        assert "RAY_AUTH_MODE" not in path.read_text(), path
