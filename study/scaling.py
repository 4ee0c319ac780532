"""Run a whole scaling study: selectors x IPC x label regime x compute budget x seeds.

    python -m study.scaling                         # the `quick` space on digits, minutes on a laptop
    python -m study.scaling --space paper --preset fashion-mnist --dry-run
    python -m study.scaling --selectors random,herding --ipc 1,10 --regimes hl,sl_kd --budgets 500
    RAY_ADDRESS=ray://head:10001 python -m study.scaling --space paper --tracking-uri http://head:5000

Every trial is a child run under one MLflow parent run; results.csv and
summary.csv land in --out. Running the same command again runs only the trials
that have not finished.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from search_spaces import SPACES
from study.cli import add_resolution_args, friendly_errors, parser, print_config, read_config
from study.core.errors import StudyError
from study.runs.rerun import STALE_POLICIES
from study.runs.spec import StudySpec, resolve_spec, validate_spec

if TYPE_CHECKING:
    import pandas as pd


def parse(argv=None) -> argparse.Namespace:
    p = parser("python -m study.scaling", __doc__)
    g = p.add_argument_group("what to run")
    g.add_argument("--space", default="quick", help=f"study space: {', '.join(SPACES)}")
    add_resolution_args(g, "study spec", "a study's study_spec.json or --print-config output")
    g.add_argument("--model", default=None, help="student model: convnet, resnet18, timm:<name> (default: the preset's)")
    g.add_argument("--selectors", default=None, help="comma-separated selectors, or 'all' (default: the space's)")
    g.add_argument("--ipc", default=None, help="comma-separated images per class, e.g. 1,10,50 (default: the space's)")
    g.add_argument("--regimes", default=None, help="comma-separated label regimes: hl, sl, sl_kd (default: the space's)")
    g.add_argument("--budgets", default=None, help="comma-separated student budgets, in steps or, where the preset says so, epochs (default: the space's, "
                                                   "else the preset's)")
    g.add_argument("--seeds", type=int, default=None, help="repeats per trial (default: the space's)")
    g.add_argument("--num-samples", type=int, default=None, help="Optuna trials per cell group in optuna spaces "
                                                                 "(default: the space's)")
    r = p.add_argument_group("where and how")
    r.add_argument("--out", default=None, help="output folder (default: studies/<space>-<hash>)")
    r.add_argument("--cache-dir", default=None,
                   help="preparation cache (default: ~/.cache/hardtruths; on a cluster: shared storage)")
    r.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    r.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: SQLite in --out)")
    r.add_argument("--experiment", default="hardtruths", help="MLflow experiment name")
    r.add_argument("--executor", default="auto", choices=["auto", "inline", "ray-train"],
                   help="auto: Ray Train TorchTrainer when the cluster has GPUs, else inline in the Tune trial")
    r.add_argument("--max-concurrent", type=int, default=None,
                   help="concurrent trials (default: as many as the cluster fits)")
    r.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs each trial (each DDP worker) holds")
    r.add_argument("--gpus-per-trial", type=float, default=0.0, help="GPUs each trial holds; fractions allowed, e.g. 0.25")
    r.add_argument("--workers-per-trial", type=int, default=1, help="data-parallel (DDP) workers per trial, each "
                   "training on its share of every batch (ray-train executor; the batch size must divide evenly)")
    r.add_argument("--compile", action="store_true",
                   help="torch.compile each student (one seed at a time; pays off on GPUs with long budgets)")
    r.add_argument("--max-failures", type=int, default=1, help="retries of a failing trial")
    r.add_argument("--stale", default=None, choices=STALE_POLICIES,
                   help="what to do with trials that finished under an older version of the code: reuse their "
                        "results or rerun them (default: stop and ask, when there are any)")
    r.add_argument("--dry-run", action="store_true", help="check everything the run checks, print the trial table, "
                                                          "the protocol, the output folder and what already finished, "
                                                          "and exit")
    r.add_argument("--no-report", action="store_true", help="skip the report at the end")
    r.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    return p.parse_args(argv)


def spec_from_args(a: argparse.Namespace) -> StudySpec:
    from study.selection import SELECTORS

    overrides = list(a.overrides)
    if a.model:
        overrides.append(f"model={a.model}")
    if a.num_samples is not None:
        overrides.append(f"num_samples={a.num_samples}")
    return resolve_spec(a.space, a.preset, a.dataset, a.selectors, a.ipc, a.regimes, a.budgets, a.seeds,
                        overrides, a.data_root, all_selectors=SELECTORS.names(),
                        base=read_config(a.config) if a.config else None)


def check_workers(workers: int, batch_size: int) -> None:
    if workers < 1 or batch_size % workers:
        raise StudyError(f"--workers-per-trial {workers} must divide the batch size {batch_size}: each "
                         f"data-parallel worker trains on an equal share of every batch.")


def smallest_class(spec: StudySpec) -> int:
    from study.core.data import smallest_class as smallest

    return smallest(spec.protocol["dataset"], spec.protocol["data_root"])


def run_options(a: argparse.Namespace, out: Path):
    from trainables.tune_study import RunOptions

    return RunOptions(out_dir=out, cache_dir=a.cache_dir, executor=a.executor, max_concurrent=a.max_concurrent,
                      cpus_per_trial=a.cpus_per_trial, gpus_per_trial=a.gpus_per_trial,
                      workers_per_trial=a.workers_per_trial, max_failures=a.max_failures, address=a.address,
                      compile_model=a.compile, verbose=a.verbose, stale=a.stale)


def check_study(spec: StudySpec, options) -> None:
    """Everything a run refuses before its first trial, the dry run included: the spec against the dataset's
    smallest class (loaded once), the workers against the batch, the cluster and its GPUs."""
    from trainables.tune_study import preflight

    validate_spec(spec, smallest_class(spec))
    for batch_size in sorted({cfg.protocol.batch_size for cfg in spec.cells()}):
        check_workers(options.workers_per_trial, batch_size)
    preflight(options)


def finished_before(spec: StudySpec, out: Path, tracking_uri: str, experiment: str) -> dict[str, str]:
    """Config hash -> code version of the trials of this study that already finished; reads, creates nothing."""
    from study.runs.rerun import finished_versions
    from study.runs.results_table import ResultsTable
    from study.runs.tracking import existing_tracker

    tracker = existing_tracker(tracking_uri, experiment)
    parent = tracker.find_study(spec.hash) if tracker else None
    return finished_versions({c.hash for c in spec.cells()}, ResultsTable(out), tracker,
                             parent.info.run_id if parent else None)


def protocol_line(spec: StudySpec) -> str:
    settings = ", ".join(f"{k}={json.dumps(v)}" for k, v in spec.protocol.items() if k not in ("dataset", "data_root"))
    line = f"protocol (preset {spec.preset}) on {spec.protocol['dataset']}: {settings}"
    if spec.budget_unit == "epochs":
        line += f"; budgets {spec.budgets} in epochs over each cell's training set"
    for regime, changes in spec.per_regime.items():
        line += f"; under {regime}: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in changes.items())
    return line


def print_dry_run(spec: StudySpec, out: Path, executor: str, finished: str) -> None:
    cells = spec.cells()
    print(f"space {spec.space}, preset {spec.preset}, dataset {spec.protocol['dataset']}: "
          f"{spec.trial_count()} trials x {spec.seeds} seed(s)")
    print(protocol_line(spec))
    for c in cells:
        print(f"  {c.hash}  {c.label()}")
    if spec.kind == "optuna":
        print(f"  each of the {len(spec.searched_cells())} search groups runs {spec.samples_per_group()} Optuna "
              f"trials over {', '.join(spec.search)}; the {len(spec.reference_cells())} reference cells run once")
    print(f"total: {spec.trial_count()} trials, {finished}")
    print(f"output folder: {out}{'' if out.exists() else ' (not created yet)'}")
    print(f"executor: {executor}")


def summarise_results(frame: pd.DataFrame) -> pd.DataFrame:
    """summary.csv and the terminal table: the report's per-cell summary, from results.csv's rows."""
    from study.analysis.published import with_published
    from study.analysis.summary import summarise
    from study.analysis.trials import tidy, trial_table

    trials = trial_table(frame.to_dict("records"))
    return with_published(summarise(tidy(trials)), trials)


def teacher_metric(frame: pd.DataFrame) -> dict:
    """The teacher's test accuracy, for the parent run: a study's trials share one teacher (the protocol's)."""
    measured = frame["teacher_test_acc"].dropna() if "teacher_test_acc" in frame else []
    return {"teacher_test_acc": float(measured.iloc[0])} if len(measured) else {}


def print_summary(summary: pd.DataFrame) -> None:
    from rich.table import Table

    from study.analysis.published import paper_note
    from study.analysis.summary import mean_std
    from study.analysis.terminal import console as study_console

    console = study_console()
    for (regime, steps), part in summary.groupby(["regime", "steps"], sort=False):
        ipcs = sorted(part["ipc"].unique())
        table = Table(title=f"test accuracy %, regime {regime}, {steps} steps (mean +- std over seeds)")
        table.add_column("selector")
        for ipc in ipcs:
            table.add_column("full data" if ipc == 0 else f"IPC {ipc}", justify="right")
        for label, rows in part.groupby("label", sort=False):
            by_ipc = {r.ipc: mean_std(r.acc_mean, r.acc_std) + paper_note(r.paper_mean) for r in rows.itertuples()}
            table.add_row(label, *[by_ipc.get(i, "") for i in ipcs])
        console.print(table)


def make_report(tracker, parent: str, out: Path) -> None:
    """The study report (study.report); a failure there never fails the finished study."""
    from study.report import build_report

    try:
        build_report(tracker, parent, out)
    except Exception as err:  # noqa: BLE001 - the trials are safe in MLflow; the report can be regenerated
        print(f"the report failed ({type(err).__name__}: {err}); regenerate it with: python -m study.report "
              f"--tracking-uri {tracker.uri} --parent-run {parent} --out {out}", file=sys.stderr)


@friendly_errors
def main(argv=None) -> int:
    start = time.perf_counter()
    a = parse(argv)
    from study.runs.rerun import check_stale, describe, stale_hashes
    from study.runs.tracking import Tracker, configure_client, default_tracking_uri

    configure_client()
    spec = spec_from_args(a)
    if a.print_config:
        validate_spec(spec, smallest_class(spec))
        print_config(spec.to_dict())
        return 0
    out = Path(a.out or Path("studies") / f"{spec.space}-{spec.hash}")
    options = run_options(a, out)
    check_study(spec, options)
    uri = a.tracking_uri or default_tracking_uri(out)
    done = finished_before(spec, out, uri, a.experiment)
    stale = len(stale_hashes(done))
    if a.dry_run:
        from trainables.tune_study import planned_executor

        print_dry_run(spec, out, planned_executor(options), describe(len(done), stale, a.stale))
        return 0
    check_stale(stale, a.stale)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study_spec.json").write_text(json.dumps(spec.to_dict(), indent=1))
    tracker = Tracker(uri, a.experiment, artifact_root=None if a.tracking_uri else str((out / "mlartifacts").resolve()))
    parent = tracker.study_run(spec.hash, f"{spec.space}-{spec.hash}", spec.to_dict())
    print(f"study {spec.space}-{spec.hash}: {spec.trial_count()} trials; output in {out}; "
          f"MLflow {tracker.uri} (parent run {parent})", flush=True)
    print(protocol_line(spec), flush=True)

    from trainables.tune_study import run_study

    run = run_study(spec, tracker, parent, options)
    frame = run.results.frame()
    summary = summarise_results(frame)
    from study.core.cache import atomic_write_text

    atomic_write_text(out / "summary.csv", summary.to_csv(index=False))
    print_summary(summary)
    failed = int((frame["status"] == "FAILED").sum()) if not frame.empty else 0
    phases = dict(run.phases)
    if not a.no_report:
        clock = time.perf_counter()
        make_report(tracker, parent, out)
        phases["report_s"] = time.perf_counter() - clock
    phases["total_s"] = time.perf_counter() - start
    atomic_write_text(out / "phases.json", json.dumps(phases, indent=1))
    tracker.finish_study(parent, "FAILED" if failed else "FINISHED",
                         metrics={"trials_failed": failed, **teacher_metric(frame),
                                  **{f"phase_{k}": v for k, v in phases.items()}})
    print(f"results: {out / 'results.csv'}  summary: {out / 'summary.csv'}  failed trials: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
