"""CAD-Prune, CA2D, R-CAD and facility location: known answers for CAD and the greedy, and real scoring runs on
digits (a few dozen steps) for the caching and the pools."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from study.core.cache import Cache
from study.core.errors import StudyError
from study.core.protocol import Protocol
from study.selection import SelectionContext, build_selector
from study.selection.ca2d import candidate_pools
from study.selection.cad import CADParams, cad_from_scores, checkpoint_floor, compute_cad
from study.selection.scoring_run import scoring_plan, scoring_protocol
from study.selection.difficulty import reference_axis
from study.selection.facility import facility_order, facility_value

# The student's budget: 40 steps at batch 32 = 1,280 images, under one epoch of digits' ~1,400, so the scoring
# run (batch 64) falls back to the floor of 4 checkpoints; `ratio` 4 gives 3.6 epochs, still 4 checkpoints.
STUDENT = Protocol(steps=40, batch_size=32, model_kwargs={"width": 16})
FAST = {"scoring_batch": 64}


@pytest.fixture(scope="module")
def cad_cache(tmp_path_factory):
    return Cache(tmp_path_factory.mktemp("cad"))


def ctx_for(digits, cache, teacher, **protocol) -> SelectionContext:
    return SelectionContext(digits, cache, "cpu", STUDENT.replace(**protocol), lambda: teacher)


def runs_in(cache: Cache) -> int:
    return len(list((cache.root / "cad-scoring").glob("*.pt")))


def test_cad_matches_a_hand_worked_history():
    # Two samples over K = 5 checkpoints. An unbiased std of two values is |a - b| / sqrt(2).
    S = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 4.0], [6.0, 6.0], [10.0, 0.0]])
    # J = 2, W = 2: windows k = 0 .. 3; Dynamic Uncertainty averages k <= K - J - 1 = 2, CAD the last two of
    # those (k = 1, 2): sample 0 (|1-3| + |3-6|) / 2 / sqrt(2), sample 1 (2 + 2) / 2 / sqrt(2). The window k = 3
    # (over the last checkpoint: 6 -> 10 and 6 -> 0) is not used.
    assert cad_from_scores(S, J=2, W=2).tolist() == pytest.approx([5 / (2 * math.sqrt(2)), math.sqrt(2)])
    # J = None is K - W = 3: windows k = 0, 1. Sample 0: std(0, 1, 3) = sqrt(7/3), std(1, 3, 6) = sqrt(19/3);
    # sample 1: std(0, 2, 4) = std(2, 4, 6) = 2.
    assert cad_from_scores(S, W=2).tolist() == pytest.approx([(math.sqrt(7 / 3) + math.sqrt(19 / 3)) / 2, 2.0])
    # W = 1, J = 4: the one window k = 0, over checkpoints 0 .. 3
    assert cad_from_scores(S, J=4, W=1).tolist() == pytest.approx([torch.tensor([0.0, 1, 3, 6]).std().item(),
                                                                   torch.tensor([0.0, 2, 4, 6]).std().item()])
    with pytest.raises(StudyError, match="K >= J \\+ W"):
        cad_from_scores(S, J=4, W=2)


def test_the_scoring_run_is_the_students_images_in_epochs_with_a_floor():
    assert checkpoint_floor(None, 2) == 4 and checkpoint_floor(6, 2) == 8
    # CIFAR-100 (50,000 images), 300 epochs over IPC 10 / 50 x 100 classes: K = 6 / 30 epochs, as the paper's
    plan = scoring_plan(300 * 10 * 100, 50_000, 256, 4)
    assert plan.steps == 1172 and len(plan.checkpoints) == 6 and plan.checkpoints[-1] == 1172
    assert plan.checkpoints[0] == 195  # one epoch: 50,000 / 256 = 195.3 steps
    assert len(scoring_plan(300 * 50 * 100, 50_000, 256, 4).checkpoints) == 30
    # Fashion-MNIST at IPC 10: 30,000 images, half an epoch of 59,000: four equal segments
    plan = scoring_plan(300 * 10 * 10, 59_000, 256, 4)
    assert plan.steps == 118 and plan.checkpoints == (30, 59, 88, 118) and plan.epochs == pytest.approx(0.512, 1e-3)
    # a run of fewer steps than checkpoints gets one step per checkpoint
    assert scoring_plan(100, 59_000, 256, 4).checkpoints == (1, 2, 3, 4)


def test_the_scoring_protocol_is_the_papers_hl_recipe_whatever_the_regime():
    plan = scoring_plan(1280, 1400, 64, 4)
    hl = scoring_protocol(STUDENT, plan)
    assert hl == scoring_protocol(STUDENT.replace(regime="sl", temperature=20.0, recipe="adamw-v1"), plan)
    assert (hl.regime, hl.recipe, hl.augment, hl.batch_size, hl.steps) == ("hl", "sgd-step-v1", "dsa", 64, 20)
    assert (hl.model, hl.model_kwargs) == (STUDENT.model, STUDENT.model_kwargs)


def test_cad_prune_keeps_the_highest_cad_from_one_cached_run(digits, cad_cache, digits_teacher):
    ctx = ctx_for(digits, cad_cache, digits_teacher)
    sel = build_selector("cad_prune", **FAST).select(ctx, 5, seed=0)
    assert runs_in(cad_cache) == 1
    cad, info = compute_cad(ctx, CADParams(**FAST))
    for c, members in enumerate(ctx.class_members()):
        kept = sel.indices[sel.labels == c].numpy()
        assert sorted(cad[kept]) == sorted(np.sort(cad[members])[-5:]), c
    p = sel.provenance
    n = len(digits.train_y)
    assert (p["K"], p["J"], p["W"], p["ratio"], p["scoring_steps"]) == (4, 2, 2, 1.0, 20)
    assert p["student_images"] == 1280 and p["scoring_train_images"] == 20 * 64 and p["scoring_el2n_images"] == 4 * n
    assert p["mean_difficulty"] == pytest.approx(reference_axis(ctx)[sel.indices.numpy()].mean())
    lowest = build_selector("cad_prune", order="lowest", **FAST).select(ctx, 5, seed=0)
    for c in range(10):
        assert cad[lowest.indices[lowest.labels == c].numpy()].max() < cad[sel.indices[sel.labels == c].numpy()].min()
    # every regime, and R-CAD and CA2D, read the same run; a changed length is a new run
    for regime in ("sl", "sl_kd"):
        build_selector("cad_prune", **FAST).select(ctx_for(digits, cad_cache, digits_teacher, regime=regime), 5, 0)
    build_selector("rcad", **FAST).select(ctx, 5, seed=0)
    assert runs_in(cad_cache) == 1
    build_selector("cad_prune", ratio=4, **FAST).select(ctx, 5, seed=0)
    assert runs_in(cad_cache) == 2


def test_cad_averages_its_scoring_seeds(digits, cad_cache, digits_teacher):
    ctx = ctx_for(digits, cad_cache, digits_teacher)
    one, _ = compute_cad(ctx, CADParams(**FAST))
    two, info = compute_cad(ctx, CADParams(scoring_seeds=2, **FAST))
    assert info["scoring_train_images"] == 2 * 20 * 64 and not np.allclose(one, two)


def test_ca2d_pools_are_the_top_mipc_by_cad():
    cad = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.6])
    members = [np.array([0, 1, 2, 3, 4]), np.array([5, 6, 7])]
    assert [p.tolist() for p in candidate_pools(cad, members, 3, "highest")] == [[0, 2, 4], [5, 6, 7]]
    assert [p.tolist() for p in candidate_pools(cad, members, 2, "lowest")] == [[1, 3], [5, 7]]


def test_ca2d_stitches_crops_of_the_highest_cad_images_only(digits, cad_cache, digits_teacher):
    ctx = ctx_for(digits, cad_cache, digits_teacher)
    sel = build_selector("ca2d", mipc=20, k=3, **FAST).select(ctx, 3, seed=0)
    cad, _ = compute_cad(ctx, CADParams(**FAST))
    assert sel.is_synthetic and sel.images.shape == (30, *digits.image_shape) and sel.provenance["factor"] == 1
    sources = np.asarray(sel.provenance["patch_source"]).reshape(10, 3)
    for c, members in enumerate(ctx.class_members()):
        pool = set(members[np.argsort(-cad[members], kind="stable")[:20]].tolist())
        assert set(sources[c].tolist()) <= pool, c
        assert sel.provenance["pool_cad"][c][0] == pytest.approx(np.sort(cad[members])[-20], abs=1e-6)
    assert sel.provenance["K"] == 4 and runs_in(cad_cache) >= 1


def brute_force(features: torch.Tensor, weights: torch.Tensor, count: int) -> tuple[float, tuple]:
    return max((facility_value(features, weights, a), a) for a in itertools.combinations(range(len(features)), count))


def at(*degrees) -> torch.Tensor:
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], 1)


def test_facility_location_greedy_finds_the_optimum_of_a_hand_made_class():
    # Three bundles of directions at least 90 degrees apart, so a pick covers only its own bundle (cos clipped at 0)
    features = at(-20, 0, 20, 110, 120, 240)
    ones = torch.ones(6)
    order = facility_order(features, ones, 3)
    assert order.tolist() == [1, 3, 5]  # the big bundle's centre, the pair (a tie: the lower), the single one
    assert facility_value(features, ones, order) == pytest.approx(brute_force(features, ones, 3)[0])
    # CAD weights pull the pick of the big bundle towards its heavy member: 20 degrees now covers most demand
    weights = torch.tensor([0.1, 0.1, 5.0, 1.0, 1.0, 1.0])
    order = facility_order(features, weights, 3)
    assert order[0] == 2 and facility_value(features, weights, order) == pytest.approx(
        brute_force(features, weights, 3)[0])
    random = torch.randn(9, 4, generator=torch.Generator().manual_seed(0))
    w = torch.rand(9, generator=torch.Generator().manual_seed(1))
    greedy = facility_value(random, w, facility_order(random, w, 3))
    assert greedy >= (1 - 1 / math.e) * brute_force(random, w, 3)[0]


@pytest.mark.parametrize("name,params,message", [
    ("cad_prune", {"ratio": 0}, "ratio"),
    ("cad_prune", {"ratio": None}, "must be positive"),
    ("ca2d", {"ratio": "1"}, "must be positive"),
    ("cad_prune", {"J": 1}, "J >= 2"),
    ("cad_prune", {"order": "middle"}, "order must be one of"),
    ("cad_prune", {"delta": 0.1}, "has no parameter"),
    ("ca2d", {"mipc": 0}, "mipc"),
    ("ca2d", {"k": 0}, "at least one crop"),
    ("rcad", {"order": "lowest"}, "has no parameter"),
    ("difficulty_window", {"width": 0}, "0 < width <= 1"),
    ("difficulty_window", {"axis": "nope"}, "not a score"),
])
def test_bad_parameters_fail_in_one_sentence(name, params, message):
    with pytest.raises(StudyError, match=message):
        build_selector(name, **params)


def test_selectors_declare_what_they_read():
    for name in ("cad_prune", "ca2d", "rcad"):
        assert build_selector(name).budget_aware and build_selector(name).needs_teacher, name
    assert not build_selector("facility_location").budget_aware
    assert build_selector("ca2d").family == build_selector("rded").family == "dd"
    assert build_selector("cad_prune").family == build_selector("rcad").family == "coreset"


def test_difficulty_window_draws_inside_its_window(digits, cad_cache, digits_teacher):
    ctx = ctx_for(digits, cad_cache, digits_teacher)
    sel = build_selector("difficulty_window", position=0.25, width=0.4).select(ctx, 5, seed=0)
    lo, hi = sel.provenance["window"]
    assert (lo, hi) == pytest.approx((0.15, 0.55))
    u = reference_axis(ctx)[sel.indices.numpy()]
    assert np.all((u >= lo) & (u <= hi)) and sel.provenance["mean_difficulty"] == pytest.approx(u.mean())
