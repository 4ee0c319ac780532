"""Fixed cost per trial of each executor, and Ray's share of a study's wall time.

    python benchmarks/trial_overhead.py [--trials 6] [--steps 1] [--executors inline,ray-train] [--address HOST:PORT]

Runs the same small study (digits, random selector, ``--trials`` IPC values, hard labels, one seed) once
per executor in a fresh output folder and reads results.csv: ``wall_seconds`` is what ``run_trial`` took
(selection + training + evaluation). Everything else in the command's wall time (Ray start-up, Tune,
TorchTrainer workers, MLflow logging) is overhead; it prints the overhead per trial and Ray's share.
With ``--steps 1`` nearly all of a trial is overhead; raise it to see the share in a realistic study.
``--address`` measures on a running cluster (e.g. the fake autoscaling one of tests/test_autoscaling.py),
with ``--max-concurrent 1`` so the trials' fixed costs add up instead of overlapping.
"""
from __future__ import annotations

import argparse
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
    a = p.parse_args()
    cache = tempfile.mkdtemp(prefix="overhead-cache-")
    rows = [measure(e, a.trials, a.steps, cache, a.address) for e in a.executors.split(",")]
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
