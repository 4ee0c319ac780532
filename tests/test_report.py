"""The study report on a real MLflow SQLite store filled through the real MLflow API with known metrics.

Accuracies are multiples of 1/64 and each cell's three seeds are
(c - 1/32, c, c + 1/32), so means, stds and gains are exact in binary and
the hand-computed values below must match the report exactly.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from study.analysis.summary import lrs, paired_gains
from study.runs.config import TrialConfig
from study.runs.results_table import ResultsTable
from study.report import FIGURES, build_report, main, print_report
from study.scaling import print_summary, summarise_results
from study.runs.tracking import Tracker, default_tracking_uri, find_parent

ROOT = Path(__file__).resolve().parents[1]

D = 1 / 32
CENTRES = {
    ("random", 1, "hl", 100): 0.25, ("random", 10, "hl", 100): 0.5,
    ("herding", 1, "hl", 100): 0.375, ("herding", 10, "hl", 100): 0.5625,
    ("random", 1, "hl", 200): 0.3125, ("random", 10, "hl", 200): 0.5625,
    ("herding", 1, "hl", 200): 0.40625, ("herding", 10, "hl", 200): 0.625,
    ("random", 1, "sl_kd", 100): 0.5, ("random", 10, "sl_kd", 100): 0.75,
    ("herding", 1, "sl_kd", 100): 0.515625, ("herding", 10, "sl_kd", 100): 0.765625,
    ("random", 1, "sl_kd", 200): 0.5625, ("random", 10, "sl_kd", 200): 0.78125,
    ("herding", 1, "sl_kd", 200): 0.5625, ("herding", 10, "sl_kd", 200): 0.8125,
    ("full", 0, "hl", 100): 0.875, ("full", 0, "sl_kd", 100): 0.875,
    ("full", 0, "hl", 200): 0.90625, ("full", 0, "sl_kd", 200): 0.8984375,  # 0.8 points: passes the 1-point check
}
PICTURES = {("herding", 10, "hl", 100), ("random", 10, "hl", 100)}


def record(selector, ipc, regime, steps, accs, params=None, val=None, status="FINISHED", val_seeds=None):
    cfg = TrialConfig.from_dict(dict(selector=selector, ipc=ipc, regime=regime, steps=steps, seeds=len(accs),
                                     selector_params=params or {}))
    mean = math.fsum(accs) / len(accs) if accs else 0.0
    metrics = {f"test_acc_seed{r}": a for r, a in enumerate(accs)}
    metrics.update({f"val_acc_seed{r}": a for r, a in enumerate(val_seeds or [])})
    if status == "FINISHED":
        metrics.update(test_acc_mean=mean, test_acc_std=D, val_acc_mean=mean if val is None else val,
                       samples_seen=steps * cfg.protocol.batch_size, train_size=10 * ipc if ipc else 1500,
                       wall_seconds=1.5, flops=1e9, epochs_equivalent=steps * cfg.protocol.batch_size / 1500)
    return {"config": cfg.to_dict(), "config_hash": cfg.hash, "label": cfg.label(), "status": status,
            "metrics": metrics, "curves": {"val_acc": [(steps, mean)], "train_loss": [(1, 2.3), (steps, 0.4)]},
            "tags": {"executor": "inline"}, "error": "boom" if status == "FAILED" else ""}


def picture_folder(tmp_path, name, value):
    folder = tmp_path / "art" / name
    folder.mkdir(parents=True)
    mpimg.imsave(folder / "selection_seed0.png", np.full((20, 16), value, dtype=float), cmap="gray", vmin=0, vmax=1)
    return folder


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("store")
    uri = default_tracking_uri(tmp)
    tracker = Tracker(uri, "hardtruths", artifact_root=str(tmp / "mlartifacts"))
    main_parent = tracker.study_run("aaaa", "quick-aaaa", {"space": "quick"})
    for i, ((sel, ipc, regime, steps), c) in enumerate(sorted(CENTRES.items())):
        art = picture_folder(tmp, f"pic{i}", 0.25 + 0.5 * (sel == "herding")) if (sel, ipc, regime, steps) in PICTURES \
            else None
        tracker.log_trial(main_parent, record(sel, ipc, regime, steps, [c - D, c, c + D]), art)
    tracker.log_trial(main_parent, record("herding", 5, "hl", 100, [], status="FAILED"))
    tracker.finish_study(main_parent, "FAILED")

    later = tracker.study_run("bbbb", "smoke-bbbb", {"space": "smoke"})
    tracker.log_trial(later, record("random", 10, "hl", 100, [0.5, 0.5]))
    tracker.finish_study(later)

    # the protocol check: soft full-data accuracy 4 points below hard labels at 100 steps, 1 point at 200
    proto = Tracker(uri, "protocol", artifact_root=str(tmp / "mlartifacts"))
    proto_parent = proto.study_run("cccc", "protocol-cccc", {"space": "smoke"})
    for sel, ipc, regime, steps, acc in [("random", 1, "sl_kd", 100, 0.5), ("herding", 1, "sl_kd", 100, 0.5),
                                         ("full", 0, "hl", 100, 0.80), ("full", 0, "sl_kd", 100, 0.76),
                                         ("full", 0, "hl", 200, 0.85), ("full", 0, "sl_kd", 200, 0.84),
                                         ("full", 5, "hl", 200, 0.85)]:  # `full` listed as a selector: per IPC
        proto.log_trial(proto_parent, record(sel, ipc, regime, steps, [acc, acc]))

    # families: DM (a DD method, tagged so by the trial) against random and two coresets, under hl and sl_kd
    fam = Tracker(uri, "families", artifact_root=str(tmp / "mlartifacts"))
    fam_parent = fam.study_run("dddd", "families-dddd", {"space": "quick"})
    for (sel, regime), (acc1, acc10) in FAMILY_ACCS.items():
        for ipc, acc in ((1, acc1), (10, acc10)):
            rec = record(sel, ipc, regime, 100, [acc - D, acc, acc + D])
            rec["tags"]["family"] = "dd" if sel == "dm" else "coreset"
            fam.log_trial(fam_parent, rec)
    return {"tmp": tmp, "uri": uri, "tracker": tracker, "main": main_parent, "later": later,
            "protocol": (proto, proto_parent), "families": (fam, fam_parent)}


FAMILY_ACCS = {("random", "hl"): (0.25, 0.5), ("herding", "hl"): (0.375, 0.5), ("kcenter", "hl"): (0.3125, 0.5625),
               ("dm", "hl"): (0.5, 0.625), ("random", "sl_kd"): (0.5, 0.75), ("herding", "sl_kd"): (0.5, 0.75),
               ("kcenter", "sl_kd"): (0.4375, 0.8125), ("dm", "sl_kd"): (0.5625, 0.75)}


@pytest.fixture(scope="module")
def report(store, tmp_path_factory):
    return build_report(store["tracker"], store["main"], tmp_path_factory.mktemp("out"), show=False)


def cell(frame, label, ipc, regime, steps):
    rows = frame[(frame["label"] == label) & (frame["ipc"] == ipc) & (frame["regime"] == regime)
                 & (frame["steps"] == steps)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_tidy_table_has_one_row_per_trial_and_seed(report):
    tidy = report.tidy
    assert len(tidy) == 3 * len(CENTRES)
    assert set(tidy["seed"]) == {0, 1, 2}
    assert tidy["run_id"].nunique() == len(CENTRES)
    row = tidy[(tidy["label"] == "herding") & (tidy["ipc"] == 10) & (tidy["regime"] == "hl") & (tidy["steps"] == 100)
               & (tidy["seed"] == 2)]
    assert row["test_acc"].tolist() == [0.5625 + D]
    assert {"param.model_kwargs.width", "param.teacher.epochs", "samples_seen", "config_hash"} <= set(tidy.columns)
    assert report.failed == 1


def test_summary_equals_hand_computed_values(report):
    assert len(report.summary) == len(CENTRES)
    for (sel, ipc, regime, steps), c in CENTRES.items():
        row = cell(report.summary, sel, ipc, regime, steps)
        assert row["acc_mean"] == c
        assert row["acc_std"] == D  # sqrt(((-D)^2 + 0 + D^2) / 2)
        assert row["n"] == 3 and row["trials"] == 1


def test_summary_csv_and_terminal_table_agree_with_the_report(report, tmp_path, capsys):
    """results.csv's rows, in memory or read back from the file, give the report's summary; one seed has no std."""
    results = ResultsTable(tmp_path)
    for (sel, ipc, regime, steps), c in CENTRES.items():
        results.add(record(sel, ipc, regime, steps, [c - D, c, c + D]))
    results.add(record("herding", 5, "hl", 100, [], status="FAILED"))
    for frame in (results.frame(), ResultsTable(tmp_path).frame()):
        pd.testing.assert_frame_equal(summarise_results(frame), report.summary)
    results.add(record("herding", 5, "hl", 100, [0.171875]))
    summary = summarise_results(ResultsTable(tmp_path).frame())
    assert math.isnan(cell(summary, "herding", 5, "hl", 100)["acc_std"])
    print_summary(summary)
    out = " ".join(capsys.readouterr().out.split())
    assert "17.2" in out and "17.2 +-" not in out and "56.2 +- 3.1" in out


def test_derived_metrics_equal_hand_computed_values(report):
    derived = report.derived
    # one cell by hand: herding IPC 10, hl, 100 steps
    row = cell(derived, "herding", 10, "hl", 100)
    assert row["gain"] == 0.0625
    assert row["frac_full"] == 0.5625 / 0.875
    assert row["spread"] == math.sqrt(2 * D ** 2)
    assert bool(row["gain_exceeds_spread"]) is True
    assert row["hlr"] == 0.875 - 0.5625
    alpha = 0.5 * 0.0625 - 0.5 * 0.3125
    assert row["lrs"] == (math.exp(alpha) - math.exp(-1)) / (math.exp(1) - math.exp(-1))
    # a soft-label cell: IOR from sl_kd, HLR from the same subset under hard labels
    row = cell(derived, "herding", 10, "sl_kd", 100)
    assert row["gain"] == 0.015625 and not row["gain_exceeds_spread"]
    alpha = 0.5 * 0.015625 - 0.5 * (0.875 - 0.5625)
    assert row["lrs"] == (math.exp(alpha) - math.exp(-1)) / (math.exp(1) - math.exp(-1))
    # every cell
    full = {(r, s): c for (sel, _, r, s), c in CENTRES.items() if sel == "full"}
    for (sel, ipc, regime, steps), c in CENTRES.items():
        row = cell(derived, sel, ipc, regime, steps)
        assert row["frac_full"] == c / full[(regime, steps)]
        if sel == "full":
            assert math.isnan(row["gain"]) and math.isnan(row["lrs"])
            continue
        gain = c - CENTRES[("random", ipc, regime, steps)]
        hlr = full[("hl", steps)] - CENTRES[(sel, ipc, "hl", steps)]
        assert row["gain"] == gain and row["ior"] == gain and row["hlr"] == hlr
        assert bool(row["gain_exceeds_spread"]) == (gain > math.sqrt(2 * D ** 2))
        assert row["lrs"] == lrs(gain, hlr) == (
            (math.exp(0.5 * gain - 0.5 * hlr) - math.exp(-1)) / (math.exp(1) - math.exp(-1)))
    best = report.best.set_index("regime")
    assert best.loc["hl", "best"] == "herding"
    assert best.loc["hl", "mean_gain"] == (0.125 + 0.0625 + 0.09375 + 0.0625) / 4
    assert best.loc["hl", "cells_exceeding_spread"] == 4
    assert best.loc["sl_kd", "mean_gain"] == (0.015625 + 0.015625 + 0 + 0.03125) / 4
    assert best.loc["sl_kd", "cells_exceeding_spread"] == 0

    # every seed of the fixture sits at (c - D, c, c + D): the paired differences are all equal, a zero-width interval
    row = cell(derived, "herding", 10, "hl", 100)
    assert row["paired_n"] == 3 and row["paired_gain"] == row["paired_lo"] == row["paired_hi"] == 0.0625
    gains = (report.folder / "gains.md").read_text().splitlines()
    assert "| hl | 100 | 10 | herding | 56.25 ± 3.12 (3) | +6.25 [+6.25, +6.25] |  |" in gains
    assert "| hl | 100 | full | full | 87.50 ± 3.12 (3) |  |  |" in gains


def test_paired_gain_is_the_t_interval_of_per_seed_differences():
    """Differences 0.01, 0.02, 0.03 (seeds 0-2): mean 0.02, sd 0.01, half-width t(0.975, 2) 0.01 / sqrt(3); a seed
    random lacks (3) is not paired, and a cell with one pair has no interval."""
    rows = [("random", 10, s, a) for s, a in enumerate([0.50, 0.60, 0.70])]
    rows += [("herding", 10, s, a) for s, a in enumerate([0.51, 0.62, 0.73, 0.99])]
    rows += [("random", 50, 0, 0.8), ("herding", 50, 0, 0.9)]
    tidy = pd.DataFrame([{"label": sel, "selector": sel, "ipc": k, "regime": "hl", "steps": 300, "seed": s,
                          "test_acc": a} for sel, k, s, a in rows])
    out = paired_gains(tidy).set_index(["label", "ipc"])
    half = 4.302652729749464 * 0.01 / math.sqrt(3)
    row = out.loc[("herding", 10)]
    assert row["paired_n"] == 3
    assert row["paired_gain"] == pytest.approx(0.02)
    assert (row["paired_lo"], row["paired_hi"]) == (pytest.approx(0.02 - half), pytest.approx(0.02 + half))
    one = out.loc[("herding", 50)]
    assert one["paired_n"] == 1 and one["paired_gain"] == pytest.approx(0.1) and math.isnan(one["paired_lo"])
    assert out.loc[("random", 10)]["paired_gain"] == 0 and out.loc[("random", 10)]["paired_hi"] == 0

def test_headline_and_terminal_summary(report, capsys, monkeypatch):
    """Printed to a pipe, as into a study's log: each headline sentence whole on its line, no table cell cut."""
    monkeypatch.delenv("COLUMNS", raising=False)
    print_report(report)
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines()]
    assert any(line.startswith("Protocol check passed") for line in lines)
    assert "hl: best selector herding, +8.6 points over random (mean over 4 cells); the gain exceeds the seed " \
           "spread in 4/4 cells." in lines
    assert "sl_kd: best selector herding, +1.6 points over random (mean over 4 cells); the gain exceeds the seed " \
           "spread in 0/4 cells." in lines
    assert "1 trial(s) failed; their cells are missing from the tables." in lines
    assert "…" not in out


def test_every_figure_is_written_and_logged(store, report):
    for name in FIGURES:
        path = report.folder / f"{name}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    for name in ("tidy.parquet", "tidy.csv", "summary.csv", "summary.parquet", "derived.csv", "protocol.csv"):
        assert (report.folder / name).stat().st_size > 0
    logged = set(store["tracker"].artifact_names(store["main"], "report"))
    assert {f"report/{n}.png" for n in FIGURES} | {"report/tidy.parquet", "report/summary.csv"} <= logged


def labels_of(ax):
    return [line.get_label() for line in ax.lines]


def test_accuracy_figures_have_expected_panels_and_lines(report):
    figs = report.figures()
    axes = figs["accuracy_vs_ipc"].axes
    assert len(axes) == 4
    assert {ax.get_title() for ax in axes} == {f"{r}, {s} steps" for r in ("hl", "sl_kd") for s in (100, 200)}
    for ax in axes:
        regime, steps = ax.get_title().split(", ")[0], int(ax.get_title().split(", ")[1].split()[0])
        assert labels_of(ax) == ["random", "herding", "full data"]
        rnd, her, full = ax.lines
        assert rnd.get_linestyle() == "--" and rnd.get_color() == "black"
        assert list(her.get_xdata()) == [1, 10]
        assert list(her.get_ydata()) == [100 * CENTRES[("herding", i, regime, steps)] for i in (1, 10)]
        assert set(full.get_ydata()) == {100 * CENTRES[("full", 0, regime, steps)]}
        assert len(ax.collections) >= 2  # seed bands
    axes = figs["accuracy_vs_budget"].axes
    assert len(axes) == 4
    assert {ax.get_title() for ax in axes} == {f"{r}, IPC {i}" for r in ("hl", "sl_kd") for i in (1, 10)}
    for ax in axes:
        assert labels_of(ax) == ["random", "herding", "full data"]
        assert [list(line.get_xdata()) for line in ax.lines] == [[100, 200]] * 3
    axes = figs["gain_vs_ipc"].axes
    assert len(axes) == 4
    for ax in axes:
        assert labels_of(ax) == ["random (reference)", "herding"]
    hl100 = next(ax for ax in axes if ax.get_title() == "hl, 100 steps")
    assert list(hl100.lines[1].get_ydata()) == [12.5, 6.25]
    ex = figs["examples"]
    assert [ax.get_title().split("\n")[0] for ax in ex.axes] == ["herding", "random"]
    assert all(len(ax.images) == 1 for ax in ex.axes)


def test_figures_leave_pyplot_and_the_backend_alone(tmp_path):
    """The figures are built with matplotlib's object API: importing them and drawing one picks no backend."""
    code = ("import sys; import matplotlib; from study.analysis import figures\n"
            "figures.empty_figure('t', 'n').savefig(sys.argv[1])\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f.png")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "TkAgg"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "f.png").stat().st_size > 0


def test_protocol_check_fires_at_4_points_and_not_at_1(store, tmp_path):
    tracker, parent = store["protocol"]
    report = build_report(tracker, parent, tmp_path, show=False, figures=False)
    check = report.protocol.set_index("steps")
    assert list(check["regime"]) == ["sl_kd", "sl_kd"] and check["checked"].all()
    assert check.loc[100, "gap"] == pytest.approx(0.04) and check.loc[200, "gap"] == pytest.approx(0.01)
    assert bool(check.loc[100, "under_trained"]) is True and bool(check.loc[200, "under_trained"]) is False
    warnings = [line for line in report.headline if line.startswith("PROTOCOL WARNING")]
    assert len(warnings) == 1 and warnings == report.headline[:1]
    assert "under sl_kd at 100 steps" in warnings[0] and "4.0 points below hard labels" in warnings[0]
    assert "the protocol under-trains under soft labels" in warnings[0] and "cannot be trusted" in warnings[0]
    assert "this study's 200-step budget brings it within 1 point" in warnings[0]
    assert check.loc[100, "fix_steps"] == 200 and bool(check.loc[100, "fix_measured"])
    assert "not trustworthy" in next(line for line in report.headline if line.startswith("sl_kd:"))
    assert not any("Protocol check passed" in line for line in report.headline)
    full = report.summary[report.summary["selector"] == "full"]
    assert sorted(zip(full["regime"], full["steps"], full["ipc"], full["n"])) == [
        ("hl", 100, 0, 2), ("hl", 200, 0, 2), ("sl_kd", 100, 0, 2), ("sl_kd", 200, 0, 2)]


def test_family_table_sets_the_best_dd_method_against_the_best_coreset_and_random(store, tmp_path, capsys):
    tracker, parent = store["families"]
    report = build_report(tracker, parent, tmp_path, figures=False)
    table = report.families.set_index(["regime", "ipc"])
    assert list(table.index) == [("hl", 1), ("hl", 10), ("sl_kd", 1), ("sl_kd", 10)]
    assert list(table["best_coreset"]) == ["herding", "kcenter", "herding", "kcenter"]
    assert list(table["best_dd"]) == ["dm"] * 4
    assert list(table["random"]) == [0.25, 0.5, 0.5, 0.75]
    assert list(table["dd_gain"]) == [0.25, 0.125, 0.0625, 0.0]
    assert list(table["coreset_gain"]) == [0.125, 0.0625, 0.0, 0.0625]
    assert "hl: best DD method +18.8 points over random (2 cells), best coreset +9.4 points over random (2 cells)." \
        in report.headline
    assert "sl_kd: best DD method +3.1 points over random (2 cells), best coreset +3.1 points" \
        in next(line for line in report.headline if line.startswith("sl_kd: best DD"))
    assert (report.folder / "families.csv").exists()
    assert "DD vs coreset vs random" in capsys.readouterr().out


def test_regenerating_a_past_study_gives_identical_tables(store, report, tmp_path):
    again = build_report(store["uri"], store["main"], tmp_path / "again", show=False, log=False, figures=False)
    assert main(["--experiment", "hardtruths", "--tracking-uri", store["uri"], "--parent-run", store["main"],
                 "--out", str(tmp_path / "cli"), "--no-log"]) == 0
    for folder in (again.folder, tmp_path / "cli" / "report"):
        for name in ("tidy.csv", "summary.csv", "derived.csv", "protocol.csv", "best.csv", "families.csv"):
            assert (folder / name).read_bytes() == (report.folder / name).read_bytes(), name
        for name in ("tidy", "summary", "derived"):
            pd.testing.assert_frame_equal(pd.read_parquet(folder / f"{name}.parquet"),
                                          pd.read_parquet(report.folder / f"{name}.parquet"))


def test_cli_finds_the_latest_study_and_refuses_unknown_experiments(store, capsys):
    tracker, parent = find_parent(store["uri"], "hardtruths")
    assert parent == store["later"]
    with pytest.raises(SystemExit) as err:
        main(["--experiment", "nope", "--tracking-uri", store["uri"], "--out", str(store["tmp"] / "x")])
    assert err.value.code == 2 and "no experiment 'nope'" in capsys.readouterr().err


def test_protocol_check_flags_a_1_5_point_gap_and_names_a_budget_to_try():
    """Fashion-MNIST's case from issue 16: sl_kd full data 79.2 vs hl 80.7 at 300 steps, the study's only budget."""
    from study.analysis.prose import headline
    from study.analysis.summary import protocol_check

    rows = [("full", 0, "hl", 300, 0.807), ("full", 0, "sl_kd", 300, 0.792), ("full", 0, "sl", 300, 0.800)]
    summary = pd.DataFrame([dict(selector=s, ipc=i, regime=r, steps=n, acc_mean=a) for s, i, r, n, a in rows])
    check = protocol_check(summary).set_index("regime")
    assert check.loc["sl_kd", "gap"] == pytest.approx(0.015) and bool(check.loc["sl_kd", "under_trained"])
    assert check.loc["sl_kd", "fix_steps"] == 600 and not bool(check.loc["sl_kd", "fix_measured"])
    assert not bool(check.loc["sl", "under_trained"]) and math.isnan(check.loc["sl", "fix_steps"])  # 0.7 points
    lines = headline(pd.DataFrame(columns=["regime"]), check.reset_index())
    assert len(lines) == 1 and "under sl_kd at 300 steps" in lines[0] and "1.5 points below" in lines[0]
    assert "no budget of this study closes the gap; try 600 steps or more" in lines[0]


def test_a_selector_below_random_is_said_to_be_below_it():
    from study.analysis.prose import versus_random

    assert versus_random(-0.157) == "15.7 points below random"
    assert versus_random(0.016) == "+1.6 points over random"


def test_results_files_of_two_studies_give_one_report_with_the_mlflow_tables(report, tmp_path, capsys):
    """Two results.csv files that split the cells by IPC (two studies) combine into the report MLflow gives."""
    for ipcs, name in (({0, 1}, "a"), ({10}, "b")):
        results = ResultsTable(tmp_path / name)
        for (sel, ipc, regime, steps), c in CENTRES.items():
            if ipc in ipcs:
                results.add(record(sel, ipc, regime, steps, [c - D, c, c + D]))
    out = tmp_path / "combined"
    assert main(["--results", str(tmp_path / "a" / "results.csv"), str(tmp_path / "b" / "results.csv"),
                 "--out", str(out)]) == 0
    for name in ("summary.csv", "derived.csv", "protocol.csv", "gains.md"):
        assert (out / "report" / name).read_bytes() == (report.folder / name).read_bytes(), name
    assert (out / "report" / "accuracy_vs_ipc.png").exists() and not (out / "report" / "examples.png").exists()
    with pytest.raises(SystemExit) as err:
        main(["--results", str(tmp_path / "nope.csv"), "--out", str(out)])
    assert err.value.code == 2 and "There is no results table at" in capsys.readouterr().err
