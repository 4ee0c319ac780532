"""Fixed cost per trial of each executor, and Ray's share of a study's wall time.

    python benchmarks/trial_overhead.py [--trials 6] [--steps 1] [--executors inline,ray-train] [--address HOST:PORT]

Runs the same small study (digits, random selector, ``--trials`` IPC values, hard labels, one seed) once
per executor in a fresh output folder and reads results.csv: ``wall_seconds`` is what ``run_trial`` took
(selection + training + evaluation). Everything else in the command's wall time (Ray start-up, Tune,
TorchTrainer workers, MLflow logging) is overhead; it prints the overhead per trial and Ray's share.
With ``--steps 1`` nearly all of a trial is overhead; raise it to see the share in a realistic study.
``--address`` measures on a running cluster, ``--fake-cluster`` on one it starts and stops itself: Ray's fake
autoscaling provider with a head without CPUs and one worker node of 2 CPUs kept up (tests/servers.py, as in
tests/test_autoscaling.py). Both run with ``--max-concurrent 1`` so the trials' fixed costs add up instead of
overlapping.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from study.scaling import main as scaling


def measure(executor: str, trials: int, steps: int, cache: str, address: str | None = None) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"overhead-{executor}-"))
    ipcs = ",".join(str(i) for i in range(1, trials + 1))
    argv = ["--space", "smoke", "--selectors", "random", "--ipc", ipcs, "--regimes", "hl", "--budgets", str(steps),
            "--seeds", "1", "--executor", executor, "--out", str(out), "--cache-dir", cache, "--no-report"]
    if address:
        argv += ["--address", address, "--max-concurrent", "1"]
    start = time.perf_counter()
    scaling(argv)
    wall = time.perf_counter() - start
    inside = pd.read_csv(out / "results.csv")["wall_seconds"].sum()
    return {"executor": executor, "trials": trials, "wall_s": wall, "in_trials_s": inside,
            "overhead_per_trial_s": (wall - inside) / trials, "ray_share": 1 - inside / wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--executors", default="inline,ray-train")
    p.add_argument("--address", default=None)
    p.add_argument("--fake-cluster", action="store_true")
    a = p.parse_args()
    cache = tempfile.mkdtemp(prefix="overhead-cache-")
    with fake_cluster() if a.fake_cluster else contextlib.nullcontext(a.address) as address:
        rows = [measure(e, a.trials, a.steps, cache, address) for e in a.executors.split(",")]
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))


@contextlib.contextmanager
def fake_cluster():
    """The address of a fake autoscaling cluster whose one worker node is already up, with token authentication
    as on a real cluster (this process gets the token too); stopped by PID after."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from servers import RayNode, fake_autoscaling_config, ray_nodes, short_tmp, wait_for

    temp = short_tmp("htoverhead-")
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(16))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    os.environ.update(auth)
    types = {"cpu": {"resources": {"CPU": 2}, "min_workers": 1, "max_workers": 1}}
    head = RayNode(temp, num_cpus=0, autoscaling=fake_autoscaling_config(types), env=auth).start()
    try:
        wait_for(lambda: len(ray_nodes(head.address)) > 1, 180, "the fake cluster's worker node", every=1)
        yield head.address
    finally:
        head.stop()
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
