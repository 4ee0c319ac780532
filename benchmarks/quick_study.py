"""End to end: the default study's wall time, and where it goes.

    python benchmarks/quick_study.py [-- extra study.scaling arguments]

Runs ``python -m study.scaling`` (the ``quick`` space unless told otherwise) in a fresh output folder with a
fresh preparation cache, so nothing is reused, then splits its wall time with the study's own
``phases.json`` and ``results.csv``:

- start-up: from the command's start to Ray being up (imports, spec checks, MLflow store, ``ray.init``);
- preparation: teacher, scores and selections (Ray tasks);
- training: the trials' own seconds (``run_trial``: reading selections, training, evaluating), divided by
  the number of trials that ran at once;
- overhead: the rest of the trial phase (Ray Tune, the executor, MLflow logging, idle cores);
- report: tables and figures at the end.

The figure it is judged by is the overhead share of the wall time (target under 25%), and the wall time.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def main() -> None:
    extra = sys.argv[1:]
    if extra[:1] == ["--"]:
        extra = extra[1:]
    work = Path(tempfile.mkdtemp(prefix="quick-study-"))
    out, cache = work / "out", work / "cache"
    cmd = [sys.executable, "-m", "study.scaling", "--out", str(out), "--cache-dir", str(cache), *extra]
    print("running:", " ".join(cmd), flush=True)
    start = time.perf_counter()
    log = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (work / "study.log").write_text(log.stdout + log.stderr)
    print(f"the study's own output: {work / 'study.log'}")
    for line in log.stdout.splitlines():
        if line.startswith("preparing: done"):
            print(line)
    if log.returncode not in (0, 1):
        sys.exit(f"the study failed (exit {log.returncode}):\n{log.stderr[-2000:]}")
    phases = json.loads((out / "phases.json").read_text())
    results = pd.read_csv(out / "results.csv")
    concurrent = int(re.search(r"executor \S+, (\d+) concurrent", log.stdout).group(1))
    training = results["wall_seconds"].sum() / concurrent
    startup = wall - phases["total_s"] + phases.get("ray_start_s", 0.0)  # the interpreter's start counts too
    rest = phases["total_s"] - phases.get("ray_start_s", 0.0)
    overhead = rest - phases.get("prepare_s", 0.0) - training - phases.get("report_s", 0.0)
    rows = [("start-up (imports, MLflow store, Ray)", startup), ("preparation", phases.get("prepare_s", 0.0)),
            (f"training ({len(results)} trials, {concurrent} at once)", training),
            ("overhead (Tune, executor, MLflow, idle)", overhead), ("report", phases.get("report_s", 0.0))]
    print(f"\nwall time {wall:.0f} s ({wall / 60:.1f} min)")
    for name, seconds in rows:
        print(f"  {name:<42} {seconds:7.1f} s  {100 * seconds / wall:5.1f} %")
    print(f"\noverhead share {100 * overhead / wall:.1f} % (target < 25 %); "
          f"Ray start-up + overhead {100 * (startup + overhead) / wall:.1f} %")


if __name__ == "__main__":
    main()
