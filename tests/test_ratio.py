"""Compute alignment: what each CAD trial logs about its scoring run, that scoring runs are shared between
selectors and regimes, and the report's best-ratio analysis on a hand-built table with a known answer."""
from __future__ import annotations

import pandas as pd
import pytest

from study.core.cache import Cache
from study.runs.config import TrialConfig
from study.runs.ledger import Ledger
from study.runs.outcome import success_record
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
    ledger = Ledger(tmp_path)
    configs = [trial("cad_prune", ratio=4.0), trial("ca2d", ratio=0.25, mipc=20, k=3)]
    for cfg in configs:
        record = success_record(run_trial(cfg, cache_dir, "cpu"), {})
        tracker.log_trial(parent, record)
        ledger.add(record)
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
