"""Selectors: known answers on constructed inputs (tests/test_registries.py runs the contract every registered
selector keeps)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from study.core.errors import StudyError
from study.selection import Selection, build_selector
from study.selection.artifacts import save_selection_artifacts
from study.selection.geometry import d2_order, herding_order, kcenter_order
from study.selection.score_based import ccs_budgets, equal_width_strata
from test_scores import digits_ctx, toy_context  # noqa: F401 (digits_ctx is a fixture)

def test_herding_follows_the_running_mean_not_the_distance_to_the_mean(tmp_path):
    points = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 3.0], [0.0, -3.0], [3.0, 3.0]])
    # Mean (0.6, 0.6). By distance to it alone the order would be 0, 1, 2, 4, 3; herding
    # takes 4 third because (p0 + p1 + p4) / 3 = (1, 1) lies closer to the mean than (p0 + p1 + p2) / 3.
    assert herding_order(points, 5).tolist() == [0, 1, 4, 3, 2]
    ctx = toy_context(tmp_path, [0] * 5, features=points)
    assert build_selector("herding").select(ctx, 3, seed=0).indices.tolist() == [0, 1, 4]


def test_kcenter_takes_the_centre_then_the_extreme_points():
    grid = torch.cartesian_prod(torch.linspace(-1, 1, 5), torch.linspace(-1, 1, 5))
    corners = torch.tensor([[10.0, 10.0], [-10.0, 10.0], [10.0, -10.0], [-10.0, -10.0]])
    points = torch.cat([grid, corners])
    order = kcenter_order(points, 5).tolist()
    assert points[order[0]].tolist() == [0.0, 0.0]
    assert sorted(order[1:]) == [25, 26, 27, 28]


def test_ccs_allocation_matches_a_hand_worked_example():
    # Smallest first: the empty stratum 2 gets 0; stratum 1 min(1, 8 // 4) = 1; stratum 3 min(3, 7 // 3) = 2;
    # stratum 0 min(5, 5 // 2) = 2; stratum 4 the remaining 3.
    assert ccs_budgets(np.array([5, 1, 0, 3, 10]), 8).tolist() == [2, 1, 0, 2, 3]
    assert ccs_budgets(np.array([2, 2, 2]), 5).tolist() == [1, 2, 2]
    assert equal_width_strata(np.array([0.0, 0.24, 0.25, 0.99, 1.0]), 4).tolist() == [0, 0, 1, 3, 3]


def test_ccs_drops_the_hardest_and_covers_the_rest(tmp_path):
    margins = -torch.arange(100.0)  # AUM score = -margin = 0 .. 99, one class
    ctx = toy_context(tmp_path, [0] * 100, dynamics={"logit_margin": margins[None].half()})
    picks = build_selector("ccs", beta=0.1, strata=5).select(ctx, 10, seed=0).indices
    assert picks.max() < 90  # the 10 hardest are gone
    assert torch.bincount(picks // 18, minlength=5).tolist() == [2, 2, 2, 2, 2]  # two per stratum of width 18


def test_moderate_keeps_the_band_around_the_median_distance(tmp_path):
    xs = torch.tensor([-9.0, -7, -5, -3, 0, 2, 4, 6, 8])  # median 0: distances 9 7 5 3 0 2 4 6 8
    features = torch.stack([xs, torch.zeros(9)], dim=1)
    ctx = toy_context(tmp_path, [0] * 9, features=features)
    # Sorted distances 0 2 3 4 [5] 6 7 8 9: the three around the median distance are 4, 5, 6.
    assert sorted(build_selector("moderate").select(ctx, 3, seed=0).indices.tolist()) == [2, 6, 7]


def test_keep_selects_the_easy_end_the_hard_end_or_a_window(tmp_path):
    margins = torch.arange(10.0)  # AUM score = -margin: sample 9 easiest, sample 0 hardest
    ctx = toy_context(tmp_path, [0] * 10, dynamics={"logit_margin": margins[None].half()})

    def picks(**params):
        return sorted(build_selector("aum", **params).select(ctx, 3, seed=0).indices.tolist())

    assert picks() == [0, 1, 2]
    assert picks(keep="easy") == [7, 8, 9]
    assert picks(keep="window", window=[0.1, 0.4]) == [6, 7, 8]  # percentiles 0.15, 0.25, 0.35
    assert picks(keep="window", window=(0.5, 0.5)) == [4, 5, 6]  # grown to the 3 nearest
    wide = build_selector("aum", keep="window", window=(0.0, 1.0))
    strata = wide.select(ctx, 2, seed=0).indices.tolist()
    assert sorted(s >= 5 for s in strata) == [False, True]  # one pick from each half of the range
    provenance = wide.select(ctx, 2, seed=0).provenance
    assert provenance["score"] == "aum" and provenance["params"]["window"] == [0.0, 1.0]


def test_d2_spreads_over_dense_hard_regions():
    a = torch.tensor([[1.0, 0.01 * i] for i in range(5)])
    b = torch.tensor([[0.01 * i, 1.0] for i in range(5)])
    features = torch.cat([a, b, torch.tensor([[-1.0, -1.0]])])
    scores = torch.tensor([1.0] * 5 + [0.9] * 5 + [0.0])
    first, second = d2_order(features, scores, 2, k=4, gamma_f=1.0, gamma_r=0.1)
    assert first < 5 and 5 <= second < 10  # the hard cluster, then the other one
    without_reverse_pass = d2_order(features, scores, 2, k=4, gamma_f=1.0, gamma_r=float("inf"))
    assert (without_reverse_pass < 5).all()


@pytest.mark.parametrize("name, params, message", [
    ("el2n", {"keep": "medium"}, "keep must be"),
    ("el2n", {"keep": "hard", "window": (0.1, 0.2)}, "only with keep='window'"),
    ("entropy", {"keep": "window", "window": (0.8, 0.2)}, "0 <= lo <= hi <= 1"),
    ("forgetting", {"epochs": 3}, r"The selector 'forgetting' has no parameter\(s\) \['epochs'\]; its parameters are: keep, window\."),
    ("el2n", {"epoch": 3}, "its parameters are: keep, window, fraction, seeds"),
    ("dm", {"x": 1}, "The selector 'dm' has no parameter"),
    ("ccs", {"score_params": {"span": 0, "x": 1}}, "no option"),
    ("ccs", {"score": "vibes"}, "Unknown score"),
    ("ccs", {"beta": 1.0}, "beta"),
    ("d2", {"k": 0}, "k >= 1"),
])
def test_bad_selector_options_fail_before_any_compute(name, params, message):
    with pytest.raises(StudyError, match=message):
        build_selector(name, **params)


def test_selection_artifacts_hold_indices_provenance_and_a_grid(digits_ctx, digits, tmp_path):
    selection = build_selector("random").select(digits_ctx, 3, seed=0)
    paths = save_selection_artifacts(selection, digits, tmp_path / "sel", per_class=4)
    assert [p.name for p in paths] == ["indices.npy", "provenance.json", "grid.png"]
    assert np.load(paths[0]).tolist() == selection.indices.tolist()
    with Image.open(paths[2]) as grid:  # 10 rows of 4 images of 8 x 8 pixels, 1-pixel padding
        assert grid.size == (4 * 9 + 1, 10 * 9 + 1)

    synthetic = Selection(selection.images, selection.labels, None, {"selector": "toy"})
    names = [p.name for p in save_selection_artifacts(synthetic, digits, tmp_path / "syn")]
    assert names == ["labels.npy", "provenance.json", "grid.png"]
