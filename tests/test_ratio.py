"""Compute alignment: what each CAD trial logs about its scoring run, that scoring runs are shared between
selectors and regimes, and the report's best-ratio analysis on a hand-built table with a known answer."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from study.analysis.ratio import alignment, best_ratio, verdict_lines
from study.core.cache import Cache
from study.runs.config import TrialConfig
from study.runs.record import flatten, success_record
from study.runs.results_table import ResultsTable
from study.runs.tracking import Tracker, default_tracking_uri
from study.runs.trial import SELECTION_METRICS, get_selection, context_for, run_trial
from study.selection import build_selector
from tests.conftest import TEST_TEACHER

# 40 steps at batch 32 = 1,280 student images, under one epoch of digits; the scoring run (batch 64) is 20 steps
# at ratio 1 and 80 at ratio 4, both read at the floor of 4 checkpoints.
TINY = dict(dataset="digits", ipc=3, steps=40, batch_size=32, seeds=2, model_kwargs={"width": 16},
            teacher=TEST_TEACHER)
FAST = {"scoring_batch": 64}


def trial(selector: str, regime: str = "hl", **params) -> TrialConfig:
    return TrialConfig.from_dict(dict(selector=selector, regime=regime, selector_params={**FAST, **params}, **TINY))


def scoring_runs(cache_dir) -> int:
    return len(list((Cache(cache_dir).root / "cad-scoring").glob("*.pt")))


def test_each_cad_trial_logs_its_ratio_checkpoints_compute_and_difficulty(tmp_path, cache_dir, digits, digits_teacher):
    uri = default_tracking_uri(tmp_path)
    tracker = Tracker(uri, "alignment", artifact_root=str(tmp_path / "mlartifacts"))
    parent = tracker.study_run("ffff", "alignment-ffff", {"space": "alignment"})
    table = ResultsTable(tmp_path)
    configs = [trial("cad_prune", ratio=4.0), trial("ca2d", ratio=0.25, mipc=20, k=3)]
    for cfg in configs:
        record = success_record(run_trial(cfg, cache_dir, "cpu"), {})
        tracker.log_trial(parent, record)
        table.add(record)
    runs = tracker.trials_frame(parent).set_index("params.selector")
    on_disk = pd.read_csv(tmp_path / "results.csv").set_index("selector")
    n = len(digits.train_y)
    # (ratio, K, J, W, scoring steps, training images, EL2N images): 4 x 1,280 images = 80 steps of 64; 1/4 x 1,280
    # = 320 images, 5 steps, below the floor of 4 checkpoints only in epochs, so K = 4, J = K - W = 2
    expected = {"cad_prune": (4.0, 4, 2, 2, 80, 80 * 64, 4 * n), "ca2d": (0.25, 4, 2, 2, 5, 5 * 64, 4 * n)}
    keys = ("ratio", "K", "J", "W", "scoring_steps", "scoring_train_images", "scoring_el2n_images")
    for selector, values in expected.items():
        for key, value in zip(keys, values):
            assert runs.loc[selector, f"metrics.selection.{key}"] == value, (selector, key)
            assert on_disk.loc[selector, f"selection.{key}"] == value, (selector, key)
        assert runs.loc[selector, "params.selector_params.ratio"] == str(values[0])
        assert runs.loc[selector, "metrics.selection.student_images"] == 40 * 32
        assert 0 < runs.loc[selector, "metrics.selection.mean_difficulty"] < 1
        assert runs.loc[selector, "tags.selection.difficulty_axis"] == "aum"
        assert on_disk.loc[selector, "selection.mean_difficulty"] == runs.loc[selector, "metrics.selection.mean_difficulty"]
    assert {f"metrics.selection.{k}" for k in SELECTION_METRICS} <= set(runs.columns)


def test_scoring_runs_are_shared_by_both_selectors_every_regime_and_seed(cache_dir, digits_teacher):
    """One scoring run per (ratio, student images, scoring seed): cad_prune under hl trains it; ca2d under sl,
    with the same images seen, and every repeat of both find it; another ratio, or a budget that doubles the
    student's images, is a new run, and ratio 2 at half the budget is that same run again."""
    before = scoring_runs(cache_dir)

    def select(cfg: TrialConfig) -> None:
        ctx = context_for(cfg, cache_dir, "cpu")
        selector = build_selector(cfg.selector, **cfg.selector_params)
        for repeat in range(cfg.seeds):
            get_selection(ctx, selector, cfg, repeat)

    select(trial("cad_prune", ratio=2.0))
    assert scoring_runs(cache_dir) == before + 1
    select(trial("ca2d", "sl", ratio=2.0, mipc=20, k=3))
    select(trial("cad_prune", "sl", ratio=2.0))
    assert scoring_runs(cache_dir) == before + 1
    select(trial("cad_prune", ratio=8.0))
    assert scoring_runs(cache_dir) == before + 2
    doubled = TrialConfig.from_dict({**trial("cad_prune", ratio=1.0).to_dict(), "steps": 80})
    select(doubled)  # 1 x 2,560 images: the ratio-2 run at 40 steps
    assert scoring_runs(cache_dir) == before + 2


# ---------------------------------------------------------------- the report, on a hand-built study

HL_100 = {0.25: [0.4, 0.4, 0.4], 1.0: [0.5, 0.5, 0.9], 4.0: [0.8, 0.8, 0.2]}
HL_200 = {0.25: [0.3, 0.3, 0.3], 1.0: [0.5, 0.5, 0.5], 4.0: [0.7, 0.6, 0.65]}
# hl, 300 steps: ratios 1/4 and 1 share one scoring run (below the floor), so they tie on every seed
HL_300 = {0.25: [0.6, 0.6, 0.6], 1.0: [0.6, 0.6, 0.6], 4.0: [0.5, 0.5, 0.5]}
SL_100 = {None: [0.6, 0.6, 0.6], 0.25: [0.5, 0.55, 0.5], 4.0: [0.55, 0.5, 0.55]}  # None: r = 1, the default
RANDOM_ACC = {("hl", 100): 0.45, ("hl", 200): 0.55}


def hand_record(selector: str, regime: str, steps: int, accs: list[float], ratio: float | None = None) -> dict:
    cfg = TrialConfig.from_dict(dict(selector=selector, ipc=10, regime=regime, steps=steps, seeds=len(accs),
                                     selector_params={} if ratio is None else {"ratio": ratio}))
    metrics = {f"test_acc_seed{r}": a for r, a in enumerate(accs)}
    metrics.update(test_acc_mean=sum(accs) / len(accs), val_acc_mean=sum(accs) / len(accs))
    if selector == "cad_prune":
        floor = 1.0 if steps == 300 else 0.0
        metrics.update({"selection.mean_difficulty": 0.9 - 0.1 * (ratio or 1.0),
                        "selection.scoring_train_images": steps * 64 * max(ratio or 1.0, floor)})
    return {"config": cfg.to_dict(), "config_hash": cfg.hash, "label": cfg.label(), "status": "FINISHED",
            "metrics": metrics, "curves": {}, "tags": {}}


@pytest.fixture(scope="module")
def hand_report(tmp_path_factory):
    from study.report import build_report

    tmp = tmp_path_factory.mktemp("ratio-store")
    tracker = Tracker(default_tracking_uri(tmp), "alignment", artifact_root=str(tmp / "mlartifacts"))
    parent = tracker.study_run("eeee", "alignment-eeee", {"space": "alignment_grid"})
    for regime, steps, accs in (("hl", 100, HL_100), ("hl", 200, HL_200), ("hl", 300, HL_300), ("sl", 100, SL_100)):
        for ratio, seeds in accs.items():
            tracker.log_trial(parent, hand_record("cad_prune", regime, steps, seeds, ratio))
    for (regime, steps), acc in RANDOM_ACC.items():
        tracker.log_trial(parent, hand_record("random", regime, steps, [acc] * 3))
    tracker.log_trial(parent, hand_record("herding", "hl", 100, [0.7] * 3))
    return build_report(tracker, parent, tmp / "out", show=False)


def test_best_ratio_and_its_bootstrap_interval_match_the_hand_worked_answer(hand_report):
    table = hand_report.alignment.set_index(["regime", "steps"])
    assert list(hand_report.alignment["selector"].unique()) == ["cad_prune"]  # herding has no ratio, random neither
    # hl, 100 steps: means 0.4, 0.633, 0.6, so r = 1 is best; a resample without seed 2 (a chance of (2/3)^3 =
    # 30 %) makes r = 4 best (means 0.8 against 0.5), any other r = 1: the interval is [1, 4]
    hl = table.loc[("hl", 100)]
    assert (hl.best_ratio, hl.ratio_lo, hl.ratio_hi, hl.r1_inside) == (1.0, 1.0, 4.0, True)
    assert hl.best_acc == pytest.approx(1.9 / 3) and hl.acc_at_1 == pytest.approx(1.9 / 3) and hl.gap_at_1 == 0
    assert hl.random_acc == pytest.approx(0.45) and (hl.seeds, hl.ratios) == (3, 3)
    # hl, 200 steps: r = 4 wins on every seed, so on every resample: [4, 4], r = 1 outside, 15 points below
    hl = table.loc[("hl", 200)]
    assert (hl.best_ratio, hl.ratio_lo, hl.ratio_hi, hl.r1_inside) == (4.0, 4.0, 4.0, False)
    assert hl.gap_at_1 == pytest.approx(0.15) and hl.random_acc == pytest.approx(0.55)
    # sl: the trial without a ratio ran at the default r = 1, and wins on every seed; no random ran there
    sl = table.loc[("sl", 100)]
    assert (sl.best_ratio, sl.ratio_lo, sl.ratio_hi, sl.r1_inside) == (1.0, 1.0, 1.0, True)
    assert math.isnan(sl.random_acc)
    # hl, 300 steps: the tie goes to the smaller ratio, and the interval spans every ratio of its run
    hl = table.loc[("hl", 300)]
    assert (hl.best_ratio, hl.best_run_ratios, hl.ratio_lo, hl.ratio_hi, hl.r1_inside) == (0.25, "1/4,1", 0.25, 1.0, True)
    assert table.loc[("hl", 100)].best_run_ratios == "1"
    assert "Under hl, r = 1 lies inside the bootstrap interval of the best r in 2 of 3 cells." in hand_report.headline
    assert "Under sl, r = 1 lies inside the bootstrap interval of the best r in 1 of 1 cells." in hand_report.headline
    assert "Random at IPC 10 under hl: 45.0 % at 100 steps, 55.0 % at 200 steps; the last step, from 100 steps, " \
           "adds +10.0 points." in hand_report.headline
    assert not any(line.startswith("Random at IPC 10 under sl") for line in hand_report.headline)  # no random there


def test_the_bootstrap_is_seeded_and_resamples_seeds_jointly_over_ratios():
    ratios, acc = np.array([0.25, 1.0, 4.0]), np.array([HL_100[r] for r in (0.25, 1.0, 4.0)])
    assert best_ratio(ratios, acc) == best_ratio(ratios, acc) == (1.0, 1.0, 4.0)
    # r = 4 is best in 8 of 27 equally likely resamples: the 75 % quantile is still 1, the 80 % one is 4
    draws = [best_ratio(ratios, acc, resamples=20000, seed=s) for s in range(3)]
    assert all(d == (1.0, 1.0, 4.0) for d in draws)
    one_seed = np.array([[0.5], [0.6], [0.4]])
    assert best_ratio(ratios, one_seed) == (1.0, 1.0, 1.0)


def test_the_terminal_shows_the_alignment_table(hand_report, capsys, monkeypatch):
    from study.report import print_report

    monkeypatch.delenv("COLUMNS", raising=False)  # a pipe's console: 200 columns
    print_report(hand_report)
    out = capsys.readouterr().out
    assert "Compute alignment: the best scoring ratio r per cell" in out
    assert "1/4 (one run with 1/4,1) [1/4, 1]" in out


def test_alignment_tables_and_figure_are_written(hand_report):
    folder = hand_report.folder
    on_disk = pd.read_csv(folder / "alignment.csv")
    assert len(on_disk) == 4 and set(on_disk["best_ratio"]) == {0.25, 1.0, 4.0}
    curve = pd.read_csv(folder / "alignment_curve.csv")
    assert len(curve) == 12
    hl = curve[(curve["regime"] == "hl") & (curve["steps"] == 100)].set_index("ratio")
    assert hl.loc[4.0, "acc_mean"] == pytest.approx(0.6) and hl.loc[4.0, "n"] == 3
    assert hl.loc[4.0, "selection.mean_difficulty"] == pytest.approx(0.5)
    text = (folder / "alignment.md").read_text()
    assert "| cad_prune | 10 | hl | 200 steps | 3 | 4 [4, 4] | 65.0 | 50.0 | 15.0 | 55.0 | no |" in text
    assert "| cad_prune | 10 | hl | 100 steps | 3 | 1 [1, 4] |" in text
    assert "| cad_prune | 10 | hl | 300 steps | 3 | 1/4 (one run with 1/4,1) [1/4, 1] |" in text and "Under sl, r = 1 lies" in text
    assert (folder / "accuracy_vs_ratio.png").read_bytes()[:4] == b"\x89PNG"
    fig = hand_report.figures()["accuracy_vs_ratio"]
    axes = {ax.get_title(): ax for ax in fig.axes}
    assert set(axes) == {"cad_prune, IPC 10, hl", "cad_prune, IPC 10, sl"}
    hl = axes["cad_prune, IPC 10, hl"]
    lines = {line.get_label(): line for line in hl.lines}
    assert list(lines["100 steps"].get_xdata()) == [0.25, 1.0, 4.0]
    assert list(lines["100 steps"].get_ydata()) == pytest.approx([40.0, 190 / 3, 60.0])
    assert list(lines["random, 200 steps"].get_ydata()) == pytest.approx([55.0, 55.0])
    assert hl.get_xscale() == "log"
    assert not any(line.get_label().startswith("random") for line in axes["cad_prune, IPC 10, sl"].lines)


def test_a_study_without_ratios_has_no_alignment_section():
    from study.analysis.trials import trial_table

    record = hand_record("random", "hl", 100, [0.5, 0.5])
    rows = [{**flatten(record["config"]), **record["metrics"], "config_hash": record["config_hash"],
             "status": "FINISHED"}]
    table, curve = alignment(trial_table(rows))
    assert table.empty and curve.empty and verdict_lines(table) == []


def test_a_tiny_digits_alignment_study_reports_its_best_ratio(tmp_path, cache_dir, digits_teacher):
    """Real trials at three ratios and random, logged as a study logs them, read back by the report."""
    from study.report import build_report

    tracker = Tracker(default_tracking_uri(tmp_path), "alignment", artifact_root=str(tmp_path / "mlartifacts"))
    parent = tracker.study_run("abab", "alignment-abab", {"space": "alignment_grid"})
    for cfg in [trial("cad_prune", ratio=r) for r in (0.25, 1.0, 4.0)] + [
            TrialConfig.from_dict(dict(selector="random", regime="hl", **TINY))]:
        tracker.log_trial(parent, success_record(run_trial(cfg, cache_dir, "cpu"), {}))
    report = build_report(tracker, parent, tmp_path / "out", show=False)
    row = report.alignment.iloc[0]
    assert len(report.alignment) == 1 and (row.selector, row.ipc, row.regime, row.steps, row.seeds) == \
        ("cad_prune", 3, "hl", 40, 2)
    assert row.best_ratio in (0.25, 1.0, 4.0) and row.ratio_lo <= row.best_ratio <= row.ratio_hi
    assert row.random_acc == pytest.approx(report.summary.set_index("selector").loc["random", "acc_mean"])
    curve = report.alignment_curve.set_index("ratio")
    assert list(curve["selection.scoring_train_images"]) == [5 * 64, 20 * 64, 80 * 64]
    assert curve["selection.mean_difficulty"].between(0, 1).all()
    assert (report.folder / "accuracy_vs_ratio.png").exists()
    assert any(line.startswith("Under hl, r = 1 lies inside") for line in report.headline)
