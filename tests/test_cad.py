"""CAD-Prune and CA2D: the window follows the compute budget and the IPC; CA2D's output is complete."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from study.core.cache import Cache
from study.core.errors import StudyError
from study.core.protocol import Protocol
from study.selection import SelectionContext, build_selector
from study.selection import cad as cad_module
from study.selection.difficulty import class_percentiles, stratified_window_pick
from study.selection.cad import (
    CADParams, auto_width, cad_proxy, cad_proxy_key, class_accuracy, late_steps, proxy_subset, reference_axis,
)
from study.core.augment import patch_crop, patch_views, stitched_views

# A real proxy that learns digits in a few hundred steps: convnet width 32, AdamW, batch 64, hard labels.
PROXY = {"batch_size": 64, "model_kwargs": {"width": 32}}
FAST = {"proxy_seeds": 2, "checkpoints": 2}
BUDGETS = (10, 40, 120, 400)  # steps, at IPC 10
IPCS = (10, 2, 1)  # at 400 steps


@pytest.fixture(scope="module")
def cad_cache(tmp_path_factory):
    return Cache(tmp_path_factory.mktemp("cad"))


def ctx_for(digits, cache, steps, teacher) -> SelectionContext:
    return SelectionContext(digits, cache, "cpu", Protocol(steps=steps, **PROXY), lambda: teacher)


@pytest.fixture(scope="module")
def cad_runs(digits, cad_cache, digits_teacher, one_thread):
    """CAD-Prune selections for every (steps, ipc) the trend tests read, proxies trained once and cached."""
    cells = {(s, 10) for s in BUDGETS} | {(400, i) for i in IPCS}
    out = {}
    for steps, ipc in sorted(cells):
        sel = build_selector("cad_prune", **FAST).select(ctx_for(digits, cad_cache, steps, digits_teacher), ipc,
                                                        seed=0)
        out[steps, ipc] = sel
        print(f"cad_prune steps={steps} ipc={ipc}: mean difficulty {sel.provenance['mean_difficulty']:.3f}, "
              f"mean u* {np.mean(sel.provenance['u_star']):.3f}")
    return out


def centre(sel) -> float:
    return float(np.mean([(lo + hi) / 2 for lo, hi in sel.provenance["windows"]]))


def test_window_moves_to_harder_samples_as_the_budget_grows(cad_runs):
    sels = [cad_runs[s, 10] for s in BUDGETS]
    diff = [s.provenance["mean_difficulty"] for s in sels]
    assert all(a < b for a, b in zip(diff, diff[1:])), diff
    assert diff[-1] - diff[0] > 0.3, diff
    frontier = [np.mean(s.provenance["u_star"]) for s in sels]
    assert all(a < b for a, b in zip(frontier, frontier[1:])), frontier
    centres = [centre(s) for s in sels]
    assert all(a < b for a, b in zip(centres, centres[1:])), centres


def test_window_moves_to_easier_samples_as_the_ipc_shrinks(cad_runs):
    """The window's hard edge follows the frontier; its width (4 IPC / class size) shrinks with the IPC too."""
    frontier = [np.mean(cad_runs[400, i].provenance["u_star"]) for i in IPCS]
    assert frontier[0] > frontier[1] > frontier[2] and frontier[0] - frontier[2] > 0.15, frontier
    edge = [np.mean([hi for _, hi in cad_runs[400, i].provenance["windows"]]) for i in IPCS]
    assert edge[0] > edge[1] > edge[2], edge


def test_cad_prune_output_and_provenance(cad_runs, digits):
    sel = cad_runs[400, 10]
    assert not sel.is_synthetic and len(sel) == 100
    assert sel.labels.tolist() == digits.train_y[sel.indices].tolist()
    assert torch.bincount(sel.labels, minlength=10).tolist() == [10] * 10
    assert len(set(sel.indices.tolist())) == 100
    p = sel.provenance
    assert p["selector"] == "cad_prune" and p["budget"]["steps"] == 400 and p["params"]["delta"] == 0.05
    d = np.array(p["difficulty"]).reshape(10, 10)
    for c, (lo, hi) in enumerate(p["windows"]):  # a window 4 IPC wide holds 10 picks
        assert np.all((d[c] >= lo - 1e-4) & (d[c] <= hi + 1e-4)), (c, lo, hi, d[c])


def test_proxy_scores_are_cached_and_a_set_window_is_kept(cad_runs, digits, cad_cache, digits_teacher, monkeypatch):
    def no_training(*a, **k):
        raise AssertionError("the proxy should come from the cache")

    monkeypatch.setattr(cad_module, "train_student", no_training)
    ctx = ctx_for(digits, cad_cache, 400, digits_teacher)
    sel = build_selector("cad_prune", lo=0.8, width=0.1, **FAST).select(ctx, 10, seed=1)
    assert all(w == [0.8, 0.9] for w in sel.provenance["windows"])
    d = np.array(sel.provenance["difficulty"])
    assert d.min() >= 0.8 - 1e-4 and d.max() <= 0.9 + 1e-4
    easy = build_selector("cad_prune", lo=0.0, width=0.2, **FAST).select(ctx, 10, seed=1)
    assert easy.provenance["mean_difficulty"] < 0.2 < 0.8 < sel.provenance["mean_difficulty"]
    # the rule's window is recorded beside the one kept: the prediction for this budget
    assert easy.provenance["rule_windows"] == cad_runs[400, 10].provenance["windows"]
    scores = cad_proxy(ctx, 10, **FAST)
    assert scores["u_star"].shape == (digits.num_classes,) and len(scores["states"]) == 2 * 2
    assert scores["u_star"].tolist() == pytest.approx(cad_runs[400, 10].provenance["u_star"], abs=1e-4)


def test_the_axis_is_the_same_at_every_budget(cad_runs, digits, cad_cache, digits_teacher):
    """A sample's difficulty is its place on the teacher's axis, whatever budget the proxy ran at."""
    axes = [reference_axis(ctx_for(digits, cad_cache, s, digits_teacher), "aum") for s in (10, 400)]
    assert np.array_equal(axes[0], axes[1])
    seen = {}
    for steps in BUDGETS:
        p = cad_runs[steps, 10].provenance
        for i, u in zip(cad_runs[steps, 10].indices.tolist(), p["difficulty"]):
            assert seen.setdefault(i, u) == u
            assert u == pytest.approx(axes[0][i], abs=1e-4)
    assert len(seen) > 200  # the budgets' windows overlap little: many samples, each checked against the axis


def test_window_rule_and_stratified_sampling():
    rule = CADParams(delta=0.1, beta=0.05, w=0.3)
    assert rule.window(0.2, 10, 100) == pytest.approx((0.0, 0.3))  # slid up to keep its width
    assert rule.window(0.5, 10, 100) == pytest.approx((0.3, 0.6))
    assert CADParams(delta=0.0, w=0.3).window(0.99, 10, 100) == pytest.approx((0.65, 0.95))
    assert CADParams().window(0.5, 10, 100) == pytest.approx((0.15, 0.55))  # w = 4 * 10 / 100
    assert auto_width(50, 6000) == 0.1 and auto_width(10, 100) == pytest.approx(0.4)
    assert CADParams(lo=0.3, width=0.2).window(0.9, 10, 100) == pytest.approx((0.3, 0.5))
    assert CADParams(position=1.0, width=0.2).window(0.1, 10, 100) == pytest.approx((0.75, 0.95))
    assert CADParams(position=0.5, width=0.2, beta=0.0).window(0.1, 10, 100) == pytest.approx((0.4, 0.6))
    assert late_steps(100, 3, 0.3) == [80, 90, 100] and late_steps(7, 1, 0.3) == [7]
    rng = np.random.default_rng(0)
    u = (np.arange(100) + 0.5) / 100
    pos = stratified_window_pick(u, 0.2, 0.6, 8, rng)
    assert np.all((u[pos] >= 0.2) & (u[pos] <= 0.6))
    assert len(set((np.floor((u[pos] - 0.2) / 0.05)).astype(int))) == 8  # one per stratum of the window
    near = stratified_window_pick(u, 0.5, 0.51, 5, rng)  # the window holds one member: grow to the 5 nearest
    assert sorted(u[near].round(3)) == [0.485, 0.495, 0.505, 0.515, 0.525]
    y = np.array([0, 1, 0, 1, 0])
    assert class_percentiles(np.array([3.0, 1.0, 1.0, 2.0, 2.0]), y, 2).round(3).tolist() == \
        [0.833, 0.25, 0.167, 0.75, 0.5]


@pytest.mark.parametrize("params", [{"beta": 1.0}, {"w": 0.0}, {"proxy_seeds": 0}, {"lo": 0.5}, {"width": 0.2},
                                    {"late": 0.0}, {"lo": 0.1, "position": 0.1, "width": 0.2},
                                    {"position": 1.5, "width": 0.1}, {"axis": "nonsense"}, {"center": 0.5}])
def test_bad_cad_parameters_fail_in_one_sentence(params):
    with pytest.raises(StudyError):
        build_selector("cad_prune", **params)


@pytest.mark.parametrize("selector", ["cad_prune", "ca2d", "ca2d_coreset"])
def test_a_window_past_the_axis_is_refused_not_clipped(selector):
    with pytest.raises(StudyError) as err:
        build_selector(selector, lo=0.9, width=0.2, beta=0.0)
    message = str(err.value)
    assert message.count(". ") == 0 and "[0.9, 1.1]" in message and "lo <= 0.8" in message
    with pytest.raises(StudyError, match=r"beta drops the hardest 0.05"):
        build_selector(selector, lo=0.8, width=0.2)  # the default beta keeps the hardest 5 % out
    assert build_selector(selector, lo=0.8, width=0.2, beta=0.0).cad.window(0.5, 10, 100) == pytest.approx((0.8, 1.0))


def test_defaults_live_in_one_place():
    """The design's delta 0.05 and w = max(4k/N_c, 0.1), read by every CAD selector from CADParams."""
    defaults = CADParams().as_dict()
    assert defaults["delta"] == 0.05 and defaults["w"] is None and defaults["beta"] == 0.05
    for name in ("cad_prune", "ca2d", "ca2d_coreset"):
        params = build_selector(name).params
        assert {k: params[k] for k in defaults} == defaults


@pytest.mark.parametrize("factor", [1, 2])
def test_ca2d_images_come_from_the_window_with_complete_provenance(cad_runs, digits, cad_cache, digits_teacher,
                                                                   factor):
    ipc = 3
    ctx = ctx_for(digits, cad_cache, 120, digits_teacher)
    # a window wide enough to hold the ipc*f^2 patches, so every patch must come from inside it
    sel = build_selector("ca2d", factor=factor, k=3, lo=0.2, width=0.6, **FAST).select(ctx, ipc, seed=2)
    f2 = factor * factor
    assert sel.is_synthetic and sel.images.dtype == torch.uint8
    assert sel.images.shape == (10 * ipc, *digits.image_shape)
    assert sel.labels.tolist() == np.repeat(np.arange(10), ipc).tolist()
    p = sel.provenance
    assert p["selector"] == "ca2d" and p["factor"] == factor and p["budget"]["steps"] == 120
    src = torch.tensor(p["patch_source"])
    boxes = torch.tensor(p["patch_box"])
    u = np.array(p["patch_difficulty"])
    assert src.shape == (10 * ipc, f2) and boxes.shape == (10 * ipc, f2, 4) and u.shape == (10 * ipc, f2)
    assert np.array(p["patch_loss"]).shape == (10 * ipc, f2)
    assert torch.equal(digits.train_y[src], sel.labels[:, None].expand(-1, f2))
    assert np.allclose(u, reference_axis(ctx, "aum")[src.numpy()], atol=1e-4)  # a patch sits where its image does
    for c, (lo, hi) in enumerate(p["windows"]):
        assert (lo, hi) == pytest.approx((0.2, 0.8))
        block = u[c * ipc:(c + 1) * ipc]
        assert np.all((block >= lo) & (block <= hi)), (c, block)
    h = digits.image_shape[1] // factor
    tile = patch_crop(digits.train_x[src[4, f2 - 1]][None].float() / 255, boxes[4, f2 - 1][None], factor)[0]
    r, col = divmod(f2 - 1, factor)
    got = sel.images[4, :, r * h:(r + 1) * h, col * h:(col + 1) * h].float() / 255
    assert (got - tile).abs().max() < 4 / 255
    # the proxy that measured u* was trained on the views it scored: square crops, tiles padded in the mean colour
    views = patch_views(factor, (0.08, 1.0), digits.mean, digits.augment.flip)
    assert ctx.cache.load("cad-proxy", cad_proxy_key(ctx, ipc, 2, 2, 0.3, views), code=["study.selection.cad"],
                          warn=False) is not None
    assert sel.views == (stitched_views(factor, digits.augment.flip) if factor > 1 else None)


def test_ca2d_default_window_follows_the_budget(cad_runs, digits, cad_cache, digits_teacher, one_thread):
    lo_budget = build_selector("ca2d", k=3, **FAST).select(ctx_for(digits, cad_cache, 10, digits_teacher), 10, seed=0)
    hi_budget = build_selector("ca2d", k=3, **FAST).select(ctx_for(digits, cad_cache, 400, digits_teacher), 10, seed=0)
    print(f"ca2d mean patch difficulty: 10 steps {lo_budget.provenance['mean_difficulty']:.3f}, "
          f"400 steps {hi_budget.provenance['mean_difficulty']:.3f}")
    assert lo_budget.provenance["mean_difficulty"] < hi_budget.provenance["mean_difficulty"]


def test_ca2d_coreset_returns_real_images_from_the_window(cad_runs, digits, cad_cache, digits_teacher):
    ctx = ctx_for(digits, cad_cache, 400, digits_teacher)
    sel = build_selector("ca2d_coreset", m=60, **FAST).select(ctx, 10, seed=0)
    assert not sel.is_synthetic and len(sel) == 100
    assert torch.equal(sel.images, digits.train_x[sel.indices])
    p = sel.provenance
    assert p["factor"] == 1 and min(p["candidates_per_class"]) >= 60
    assert "k" not in p["params"] and p["params"]["m"] == 60
    assert [s[0] for s in p["patch_source"]] == sel.indices.tolist()
    u = np.array(p["patch_difficulty"]).reshape(10, 10)
    for c, (lo, hi) in enumerate(p["windows"]):
        assert np.all((u[c] >= lo) & (u[c] <= hi))
    # same budget, same frontier rule and axis as CAD-Prune: a comparably hard selection
    assert abs(p["mean_difficulty"] - cad_runs[400, 10].provenance["mean_difficulty"]) < 0.1


def test_compute_aware_selectors_declare_what_they_read():
    for name in ("cad_prune", "ca2d", "ca2d_coreset"):
        assert build_selector(name).budget_aware and build_selector(name).needs_teacher  # the axis is the teacher's
    assert build_selector("rded").needs_teacher
    assert build_selector("rded").family == build_selector("ca2d").family == "dd"
    assert build_selector("ca2d_coreset").family == "coreset"


def test_the_frontier_is_read_per_class_on_a_stratified_sample():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    logits = torch.eye(3)[[0, 1, 0, 1, 0, 0]]  # predicts 0, 1, 0, 1, 0, 0
    assert class_accuracy(logits, labels, 4).tolist() == pytest.approx([2 / 3, 1 / 2, 0, 0])
    y = np.repeat(np.arange(3), [5, 50, 500])
    sample = proxy_subset(y, 3, 20, seed=0)
    assert np.bincount(y[sample]).tolist() == [5, 20, 20] and len(set(sample)) == len(sample)
    assert np.array_equal(sample, proxy_subset(y, 3, 20, seed=0))
