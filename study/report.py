"""The study report: tables, figures and a headline, from the trials recorded in MLflow.

    python -m study.report --out studies/quick-1a2b3c4d            # the latest study in <out>/mlflow.db
    python -m study.report --experiment hardtruths --tracking-uri http://head:5000 --parent-run <id> --out rep
    python -m study.report --results ipc10/results.csv ipc50/results.csv --out combined   # studies side by side

``study.scaling`` calls :func:`build_report` at its end (unless --no-report).
The report is written to ``<out>/report/`` and logged as artifacts (folder
``report/``) of the study's parent run:

- ``tidy.parquet`` / ``tidy.csv``: one row per finished trial and seed;
- ``summary.*``: mean, std, count per (selector, IPC, regime, budget), and
  ``paper_mean`` / ``paper_std`` where the cell reproduces a published one
  (search_spaces/published.py);
- ``derived.*``: gain over random, seed spread, fraction of full-data
  accuracy, HLR / IOR / LRS (formulas in :mod:`study.analysis.summary`);
- ``protocol.csv``: the full-data soft- vs hard-label check;
- ``families.csv``: random vs the best coreset vs the best DD method per
  (regime, budget, IPC);
- ``best.csv``, ``headline.md``;
- ``gains.md``: every cell's accuracy over its seeds and its seed-paired difference to random with the 95 %
  t-interval (and the published value where there is one), the table a results note quotes;
- figures: ``accuracy_vs_ipc.png``, ``accuracy_vs_budget.png``,
  ``gain_vs_ipc.png``, ``examples.png``;
- for a study that varies CAD's scoring ratio (:mod:`study.analysis.ratio`):
  ``alignment.csv`` / ``alignment.md`` (the best r per cell, its bootstrap
  interval, r = 1 against it), ``alignment_curve.csv`` and
  ``accuracy_vs_ratio.png``, and a sentence per regime in the headline.

Tables depend only on what MLflow holds, so regenerating the report of a past
study gives the same tables. ``--results`` builds the same tables and figures
(less ``examples.png``: the pictures live in MLflow) from results.csv files instead:
the way to put two studies that ran different columns of one table (IPC 10 in
one session, IPC 50 in the next) into one report.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from study.analysis import summary as S
from study.analysis.ratio import (TEXT_HEAD, accuracy_vs_ratio, alignment, markdown, saturation_lines, text_rows,
                                  verdict_lines)
from study.analysis.prose import headline
from study.analysis.published import with_published
from study.analysis.trials import regime_sort_key, run_rows, tidy, trial_table
from study.cli import friendly_errors, parser
from study.core.errors import StudyError
from study.runs.tracking import Tracker, configure_client, find_parent, tracker_for_run

EXAMPLE_ARTIFACT = "selection_seed0.png"
FIGURES = ("accuracy_vs_ipc", "accuracy_vs_budget", "gain_vs_ipc", "examples")
TABLES = ("tidy", "summary", "derived")


@dataclass
class Report:
    folder: Path
    parent_run_id: str
    trials: pd.DataFrame
    tidy: pd.DataFrame
    summary: pd.DataFrame
    derived: pd.DataFrame
    protocol: pd.DataFrame
    best: pd.DataFrame
    families: pd.DataFrame
    examples: list = field(default_factory=list)
    headline: list[str] = field(default_factory=list)
    alignment: pd.DataFrame = field(default_factory=pd.DataFrame)  # empty unless the study varies CAD's ratio
    alignment_curve: pd.DataFrame = field(default_factory=pd.DataFrame)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return int((self.trials["status"] == "FAILED").sum()) if not self.trials.empty else 0

    def figures(self) -> dict:
        """The report's figures as matplotlib Figures (study.analysis.figures)."""
        from study.analysis import figures as F

        figures = {"accuracy_vs_ipc": F.accuracy_vs_ipc(self.summary),
                   "accuracy_vs_budget": F.accuracy_vs_budget(self.summary),
                   "gain_vs_ipc": F.gain_vs_ipc(self.derived)}
        if self.examples:  # pictures live in MLflow: a report built from results.csv files has none
            figures["examples"] = F.example_grid(self.examples)
        if not self.alignment_curve.empty:
            figures["accuracy_vs_ratio"] = accuracy_vs_ratio(self.alignment_curve)
        return figures


# ---------------------------------------------------------------- reading artifacts

def example_trial(rows: pd.DataFrame) -> dict:
    """The trial whose picture stands for a selector: IPC nearest 10, then hard labels, the smallest budget."""
    ranked = rows.assign(_d=[abs(math.log(i / 10)) for i in rows["ipc"]],
                         _r=[regime_sort_key(r)[0] for r in rows["regime"]])
    return ranked.sort_values(["_d", "ipc", "_r", "regime", "steps", "run_id"], kind="stable").iloc[0].to_dict()


def read_examples(tracker: Tracker, trials: pd.DataFrame, tmp: Path) -> list[tuple[str, str, object]]:
    import matplotlib.image as mpimg

    if trials.empty:
        return []
    done = trials[(trials["status"] == "FINISHED") & (trials["ipc"] > 0)]
    out = []
    for label in sorted(done["label"].unique()):
        row = example_trial(done[done["label"] == label])
        path = tracker.download_artifact(row["run_id"], EXAMPLE_ARTIFACT, tmp / f"ex-{row['run_id']}")
        image = mpimg.imread(path) if path is not None else None
        out.append((label, f"IPC {row['ipc']}, {row['regime']}, {row['steps']} steps", image))
    return out


# ---------------------------------------------------------------- building and writing

def analyse(trials: pd.DataFrame, examples: list | None = None, folder: Path = Path("report"),
            parent_run_id: str = "") -> Report:
    """Every table and the headline from the trial table (no I/O)."""
    per_seed = tidy(trials)
    summary = with_published(S.summarise(per_seed), trials)
    derived = S.derive(summary, per_seed=per_seed)
    protocol = S.protocol_check(summary)
    best = S.best_per_regime(derived)
    families = S.family_table(derived, trials)
    failed = int((trials["status"] == "FAILED").sum()) if not trials.empty else 0
    aligned, curve = alignment(trials)
    return Report(Path(folder), parent_run_id, trials, per_seed, summary, derived, protocol, best, families,
                  examples or [], headline(best, protocol, failed, families) + alignment_lines(aligned), aligned,
                  curve)


def alignment_lines(table: pd.DataFrame) -> list[str]:
    """The compute-alignment verdict per regime, then whether random saturates over the budgets."""
    return verdict_lines(table) + saturation_lines(table)


GAINS_HEAD = ["regime", "budget (steps)", "IPC", "selector", "test acc % (seeds)", "paired diff to random [95% t]",
              "paper"]


def gains_markdown(derived: pd.DataFrame, summary: pd.DataFrame) -> str:
    """``gains.md``: a row per cell, in the report's cell order, in percent to two decimals."""
    paper = {} if "paper_mean" not in summary else {
        (r["label"], r["ipc"], r["regime"], r["steps"]): r["paper_mean"] for r in summary.to_dict("records")}

    def p2(value, sign: str = "") -> str:
        return f"{100 * value:{sign}.2f}"

    lines = ["| " + " | ".join(GAINS_HEAD) + " |", "|" + "---|" * len(GAINS_HEAD)]
    for r in derived.to_dict("records"):
        acc = p2(r["acc_mean"]) + ("" if pd.isna(r["acc_std"]) else f" ± {p2(r['acc_std'])}") + f" ({r['n']})"
        paired = "" if r["selector"] in ("random", "full") or not r["paired_n"] else p2(r["paired_gain"], "+") + (
            "" if pd.isna(r["paired_lo"]) else f" [{p2(r['paired_lo'], '+')}, {p2(r['paired_hi'], '+')}]")
        published = paper.get((r["label"], r["ipc"], r["regime"], r["steps"]), math.nan)
        ipc = "full" if r["selector"] == "full" else str(r["ipc"])
        lines.append("| " + " | ".join([r["regime"], str(r["steps"]), ipc, r["label"], acc, paired,
                                        "" if pd.isna(published) else p2(published)]) + " |")
    return "# Accuracy and gain over random per cell\n\n" + "\n".join(lines) + "\n"


def write_table(frame: pd.DataFrame, folder: Path, name: str, parquet: bool = True) -> list[Path]:
    paths = [folder / f"{name}.csv"]
    frame.to_csv(paths[0], index=False)
    if parquet:
        paths.append(folder / f"{name}.parquet")
        frame.to_parquet(paths[1], index=False)
    return paths


def write(report: Report, figures: bool = True) -> dict[str, Path]:
    folder = report.folder
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for name in TABLES:
        for path in write_table(getattr(report, name), folder, name):
            files[path.name] = path
    for name in ("protocol", "best", "families"):
        files[f"{name}.csv"] = write_table(getattr(report, name), folder, name, parquet=False)[0]
    if not report.alignment.empty:
        for name in ("alignment", "alignment_curve"):
            files[f"{name}.csv"] = write_table(getattr(report, name), folder, name, parquet=False)[0]
        files["alignment.md"] = folder / "alignment.md"
        files["alignment.md"].write_text("# Compute alignment: the best scoring ratio r per cell\n\n"
                                         + markdown(report.alignment) + "\n"
                                         + "".join(f"- {line}\n" for line in alignment_lines(report.alignment)))
    files["gains.md"] = folder / "gains.md"
    files["gains.md"].write_text(gains_markdown(report.derived, report.summary))
    headline = folder / "headline.md"
    headline.write_text("# Study headline\n\n" + "".join(f"- {line}\n" for line in report.headline))
    files["headline.md"] = headline
    for name, fig in (report.figures() if figures else {}).items():
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        files[path.name] = path
    report.files = files
    return files


def report_from_results(paths: list[str | Path], out_dir: str | Path, *, show: bool = True) -> Report:
    """The report of the trials in one or more results.csv files, written to ``<out_dir>/report/``."""
    rows = []
    for path in map(Path, paths):
        if not path.is_file():
            raise StudyError(f"There is no results table at {path}; --results takes the results.csv a study wrote.")
        rows += pd.read_csv(path).to_dict("records")
    report = analyse(trial_table(rows), folder=Path(out_dir) / "report")
    write(report)
    if show:
        print_report(report)
    return report


def build_report(tracker_or_uri: Tracker | str, parent_run_id: str, out_dir: str | Path, *, log: bool = True,
                 show: bool = True, figures: bool = True) -> Report:
    """Read a study's trials from MLflow, write ``<out_dir>/report/`` and log it to the parent run.

    ``log=False`` keeps the report off MLflow, ``show=False`` prints nothing,
    ``figures=False`` writes the tables only.
    """
    tracker = tracker_or_uri if isinstance(tracker_or_uri, Tracker) else tracker_for_run(str(tracker_or_uri),
                                                                                        parent_run_id)
    trials = trial_table(run_rows(tracker.trials_frame(parent_run_id)))
    with tempfile.TemporaryDirectory(prefix="hardtruths-report-") as tmp:
        examples = read_examples(tracker, trials, Path(tmp))
    report = analyse(trials, examples, Path(out_dir) / "report", parent_run_id)
    write(report, figures)
    if log:
        tracker.log_artifacts(parent_run_id, report.folder, "report")
    if show:
        print_report(report)
    return report


# ---------------------------------------------------------------- terminal

def pct(value, signed: bool = False) -> str:
    if value is None or pd.isna(value):
        return "-"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def print_report(report: Report, console=None) -> None:
    from rich.table import Table

    from study.analysis.terminal import console as study_console

    console = console or study_console()
    if not report.protocol.empty:
        table = Table(title="Protocol check: full-data accuracy %, soft vs hard labels at the same budget")
        for col in ("regime", "steps", "full data", "full data (hl)", "gap (points)", "verdict"):
            table.add_column(col, justify="left" if col in ("regime", "verdict") else "right")
        for r in report.protocol.itertuples():
            verdict = ("[red]under-trained[/red]" if r.under_trained else "ok") if r.checked else "not checked"
            table.add_row(r.regime, str(r.steps), pct(r.full_acc), pct(r.full_hl_acc), pct(r.gap), verdict)
        console.print(table)
    if not report.best.empty:
        table = Table(title="Headline: best selector per label regime")
        for col in ("regime", "best selector", "gain over random (points, mean)", "gain > seed spread (cells)"):
            table.add_column(col, justify="left" if col in ("regime", "best selector") else "right")
        for r in report.best.itertuples():
            table.add_row(r.regime, r.best if isinstance(r.best, str) else "-", pct(r.mean_gain, signed=True),
                          f"{r.cells_exceeding_spread}/{r.cells}" if r.cells_with_spread
                          else "n/a (one seed)" if isinstance(r.best, str) else "-")
        console.print(table)
    if not report.families.empty and report.families["best_dd"].notna().any():
        table = Table(title="DD vs coreset vs random: test accuracy % and gain over random (best per family)")
        for col in ("regime", "steps", "IPC", "random", "best coreset", "best DD method"):
            table.add_column(col, justify="left" if col.startswith(("regime", "best")) else "right")
        for r in report.families.itertuples():
            table.add_row(r.regime, str(r.steps), str(r.ipc), pct(r.random),
                          *(f"{name} {pct(acc)} ({pct(gain, signed=True)})" if name else "-"
                            for name, acc, gain in ((r.best_coreset, r.coreset_acc, r.coreset_gain),
                                                    (r.best_dd, r.dd_acc, r.dd_gain))))
        console.print(table)
    print_published(report, console)
    if not report.alignment.empty:
        table = Table(title="Compute alignment: the best scoring ratio r per cell (test accuracy %)")
        for i, col in enumerate(TEXT_HEAD):
            table.add_column(col, justify="left" if i in (0, 2, 3, 5) else "right")
        for row in text_rows(report.alignment):
            table.add_row(*row)
        console.print(table)
    for line in report.headline:
        console.print(f"[bold red]{line}[/bold red]" if line.startswith("PROTOCOL") else line, highlight=False)
    console.print(f"report: {report.folder}", highlight=False)


def print_published(report: Report, console) -> None:
    """The cells that reproduce a published one, beside the paper's number (search_spaces/published.py)."""
    from rich.table import Table

    from study.analysis.summary import mean_std

    matched = report.summary[report.summary["paper_mean"].notna()] if not report.summary.empty else report.summary
    if matched.empty:
        return
    table = Table(title="Against the paper: test accuracy % (mean +- std over seeds)")
    for col in ("selector", "regime", "IPC", "steps", "this study", "paper", "difference (points)"):
        table.add_column(col, justify="left" if col in ("selector", "regime") else "right")
    for r in matched.itertuples():
        table.add_row(r.label, r.regime, str(r.ipc), str(r.steps), mean_std(r.acc_mean, r.acc_std),
                      f"paper: {mean_std(r.paper_mean, r.paper_std)}", pct(r.acc_mean - r.paper_mean, signed=True))
    console.print(table)


# ---------------------------------------------------------------- command line

def parse(argv=None) -> argparse.Namespace:
    p = parser("python -m study.report", __doc__)
    p.add_argument("--experiment", default="hardtruths", help="MLflow experiment name")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: sqlite <out>/mlflow.db, else $MLFLOW_TRACKING_URI)")
    p.add_argument("--parent-run", default=None, help="the study's parent run id (default: the latest study)")
    p.add_argument("--out", default=None, help="study output folder; the report goes to <out>/report "
                                               "(default: studies/<parent run name>)")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    p.add_argument("--results", nargs="+", metavar="CSV", default=None,
                   help="build the report from these results.csv files instead of MLflow (with --out), for "
                        "instance two studies that ran different IPCs of one table (default: none, read MLflow)")
    return p.parse_args(argv)


def resolve_uri(a: argparse.Namespace) -> str:
    if a.tracking_uri:
        return a.tracking_uri
    if a.out and (Path(a.out) / "mlflow.db").exists():
        from study.runs.tracking import default_tracking_uri

        return default_tracking_uri(a.out)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    raise StudyError("Say where the study's MLflow store is: --tracking-uri URI, or --out DIR with DIR/mlflow.db "
                     "(the default store of python -m study.scaling).")


@friendly_errors
def main(argv=None) -> int:
    a = parse(argv)
    if a.results:
        if not a.out:
            raise StudyError("Say where the combined report goes: --results needs --out DIR.")
        report_from_results(a.results, a.out)
        return 0
    configure_client()
    tracker, parent = find_parent(resolve_uri(a), a.experiment, a.parent_run)
    out = Path(a.out) if a.out else Path("studies") / tracker.run_name(parent)
    build_report(tracker, parent, out, log=not a.no_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
